#!/usr/bin/env bash
# health.sh: GET /healthz (the process is alive) and GET /readyz (200 once the model is loaded,
# 503 while loading or draining). Neither needs the API key. Exit status 0 only when ready.
# Leaves out metrics (metrics.sh).
set -uo pipefail
. "$(dirname "$0")/common.sh"
curl -sS "$URL/healthz"
curl -sS --fail-with-body "$URL/readyz"
