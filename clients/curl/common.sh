# shellcheck shell=bash disable=SC2034
# common.sh: settings shared by the curl examples (sourced, not run).
# Leaves out anything but the base URL and the optional API key.
#   REALNVP_URL      server address (default http://127.0.0.1:8080)
#   REALNVP_API_KEY  sent as "Authorization: Bearer KEY" when set (servers started with --api-key-file)
URL=${REALNVP_URL:-http://127.0.0.1:8080}
AUTH=()
if [ -n "${REALNVP_API_KEY:-}" ]; then AUTH=(-H "Authorization: Bearer $REALNVP_API_KEY"); fi
# --fail-with-body: exit 22 on 4xx/5xx but still print the JSON error
CURL=(curl -sS --fail-with-body "${AUTH[@]}")
