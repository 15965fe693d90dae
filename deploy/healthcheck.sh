#!/bin/bash
# healthcheck.sh: the container's HEALTHCHECK: GET /healthz on 127.0.0.1:$REALNVP_PORT with bash's
# /dev/tcp, exit 0 on "200". Leaves out curl (not in debian:bookworm-slim) and TLS (the server has none).
port=${REALNVP_PORT:-8080}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t "${HEALTHCHECK_READ_TIMEOUT:-2}" status <&3 || exit 1
case $status in
    "HTTP/1."[01]" 200"*) exit 0 ;;
    *) echo "healthcheck: /healthz answered: ${status%$'\r'}" >&2; exit 1 ;;
esac
