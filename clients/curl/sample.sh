#!/usr/bin/env bash
# sample.sh: GET /sample: N new images at temperature TEMP as one PNG grid. The seed used is in
# the X-Realnvp-Seed response header (printed), so a grid can be reproduced. Leaves out the JSON
# form (format=json, latents=1; see docs/api.md).
#   clients/curl/sample.sh out.png                     # 16 images, temp 0.7, random seed
#   N=64 TEMP=0.8 SEED=42 COLS=8 clients/curl/sample.sh grid.png
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -eq 1 ] || { echo "usage: $0 OUT.png" >&2; exit 2; }
Q="n=${N:-16}&temp=${TEMP:-0.7}${SEED:+&seed=$SEED}${COLS:+&cols=$COLS}"
"${CURL[@]}" -D - -o "$1" "$URL/sample?$Q" | grep -i '^x-realnvp-seed' >&2 || true
echo "wrote $1" >&2
