#!/usr/bin/env bash
# log_prob.sh: POST /log_prob: the log-likelihood (nats) and bits/dim of one or more PNGs.
# Leaves out encoding (encode.sh). One file is sent as an image/png body, several as
# multipart/form-data (each result is named after its file).
#   clients/curl/log_prob.sh shirt.png                    # u = 0.5, deterministic
#   clients/curl/log_prob.sh a.png b.png                  # several at once (one request)
#   SAMPLES=8 SEED=1 clients/curl/log_prob.sh a.png       # mean over 8 seeded dequantization draws
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || { echo "usage: $0 IMG.png [IMG.png ...]" >&2; exit 2; }
Q=""
[ -n "${SAMPLES:-}" ] && Q="?samples=$SAMPLES${SEED:+&seed=$SEED}"
if [ $# -eq 1 ]; then
    "${CURL[@]}" -H "Content-Type: image/png" --data-binary "@$1" "$URL/log_prob$Q"
else
    parts=()
    for f in "$@"; do parts+=(-F "image=@$f;type=image/png"); done
    "${CURL[@]}" "${parts[@]}" "$URL/log_prob$Q"
fi
