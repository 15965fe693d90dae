#!/usr/bin/env bash
# metrics.sh: GET /metrics: Prometheus text format (requests by endpoint and status, images,
# queue depth, batch-size, queue-wait and compute-time histograms). No API key needed.
# Leaves out scraping configuration (point Prometheus at /metrics).
#   clients/curl/metrics.sh | grep '^realnvp_batch_size'
set -euo pipefail
. "$(dirname "$0")/common.sh"
curl -sS --fail-with-body "$URL/metrics"
