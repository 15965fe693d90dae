#!/usr/bin/env bash
# decode.sh: POST /decode: images from latents. LATENTS.json is {"latents": [[D numbers], ...]}
# (what encode.sh prints works as is; "-" reads standard input). Writes one PNG (a grid for
# several vectors). Leaves out the JSON form: add ?format=json for one base64 PNG per vector.
#   clients/curl/decode.sh z.json out.png
#   COLS=4 clients/curl/decode.sh z.json grid.png
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -eq 2 ] || { echo "usage: $0 LATENTS.json|- OUT.png" >&2; exit 2; }
"${CURL[@]}" -H "Content-Type: application/json" --data-binary "@$1" -o "$2" "$URL/decode${COLS:+?cols=$COLS}"
echo "wrote $2" >&2
