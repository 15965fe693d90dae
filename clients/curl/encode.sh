#!/usr/bin/env bash
# encode.sh: POST /encode: the latent vector z (D numbers) of each PNG, with log_prob and the
# layout (offset and shape of each z_s). Leaves out decoding: pipe the output to decode.sh.
#   clients/curl/encode.sh a.png b.png > z.json
#   clients/curl/encode.sh a.png | clients/curl/decode.sh - back.png    # round trip
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMG.png [IMG.png ...]" >&2; exit 2; }
parts=()
for f in "$@"; do parts+=(-F "image=@$f;type=image/png"); done
"${CURL[@]}" "${parts[@]}" "$URL/encode"
