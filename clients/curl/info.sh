#!/usr/bin/env bash
# info.sh: GET /info: the model's config, D, latent layout, metadata, server version and limits.
# Leaves out health (health.sh) and metrics (metrics.sh).
#   clients/curl/info.sh | python3 -m json.tool
set -euo pipefail
. "$(dirname "$0")/common.sh"
"${CURL[@]}" "$URL/info"
