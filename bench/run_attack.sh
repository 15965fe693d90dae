#!/usr/bin/env bash
# run_attack.sh: hostile load against bin/realnvp-server. For each attack (bin/attack, bench/attack.c)
# it starts a fresh server with the default flags (only --port 0 and the model given; a fresh
# process because VmHWM is per process lifetime), runs the attack for at most SECONDS_PER (30 at
# most), prints one markdown row (peak RSS as VmHWM and as the largest VmRSS sampled every 20 ms,
# next to the k8s memory limit from deploy/k8s/deployment.yaml; GET /healthz latency from a probe
# every 50 ms on fresh connections, with failures counted against the liveness probe's timeout;
# the statuses the attack got), then stops the server with SIGTERM and notes how it exited.
# Leaves out other hosts (127.0.0.1 only) and building anything but bin/attack's PNGs.
#
#   bench/run_attack.sh                                    # all attacks a..f, about 2.5 minutes
#   ATTACKS="a d" SECONDS_PER=10 bench/run_attack.sh
#   SERVER=/path/to/realnvp-server MODEL=models/fashion-mnist/model.safetensors bench/run_attack.sh
#
# Server logs: bench/out/attack_server_X.log (bench/out is gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER=${SERVER:-bin/realnvp-server}
MODEL=${MODEL:-models/fashion-mnist/model.safetensors}
ATTACKS=${ATTACKS:-a b c d e f}
SECONDS_PER=${SECONDS_PER:-20}
ATTACK=${ATTACK_BIN:-bin/attack}
RSS_CAP_MIB=${RSS_CAP_MIB:-3072}   # an attack stops early past this (the machine is shared)
OUT=bench/out
PNGS=$OUT/attack_pngs
mkdir -p "$OUT"

[ -x "$ATTACK" ] || make -s "$ATTACK"
[ -x "$SERVER" ] || { echo "run_attack.sh: $SERVER not found (make all, or SERVER=...)" >&2; exit 1; }

# the k8s container's memory limit and liveness timeout, as deployed
DEP=deploy/k8s/deployment.yaml
LIMIT=$(grep -E '^\s*limits:.*memory:' "$DEP" | head -n 1 | sed -E 's/.*memory: *"?([0-9A-Za-z]+)"?.*/\1/')
case "$LIMIT" in
    *Gi) LIMIT_MIB=$(( ${LIMIT%Gi} * 1024 ));;
    *Mi) LIMIT_MIB=${LIMIT%Mi};;
    *G) LIMIT_MIB=$(( ${LIMIT%G} * 1000000000 / 1048576 ));;
    *M) LIMIT_MIB=$(( ${LIMIT%M} * 1000000 / 1048576 ));;
    *) LIMIT=unknown LIMIT_MIB=1000000;;
esac
LIVE_TIMEOUT_S=$(awk '/livenessProbe:/{l=1} l&&/timeoutSeconds:/{gsub(/[^0-9]/,"",$2); print $2; exit}' "$DEP")
LIVE_TIMEOUT_S=${LIVE_TIMEOUT_S:-3}

# 256 real-looking 28x28 grey PNGs: samples of the served model (attacks d and e upload them)
if [ "$(ls "$PNGS"/*.png 2>/dev/null | wc -l)" -lt 256 ]; then
    "$ATTACK" --make-pngs "$PNGS" --model "$MODEL" --count 256 --seed 1
fi

SRV_PID=
stop_server() {   # SIGTERM, up to 45 s (the default drain timeout is 30 s), then SIGKILL; sets STOP_NOTE
    STOP_NOTE=
    [ -n "$SRV_PID" ] || return 0
    local t0=$SECONDS rc=0
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for _ in $(seq 1 450); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SRV_PID" 2>/dev/null; then
        kill -KILL "$SRV_PID" 2>/dev/null || true
        STOP_NOTE="did not exit within 45 s of SIGTERM: SIGKILLed"
    fi
    wait "$SRV_PID" 2>/dev/null || rc=$?
    [ -n "$STOP_NOTE" ] || STOP_NOTE="exit $rc $(( SECONDS - t0 )) s after SIGTERM"
    SRV_PID=
}
trap 'stop_server' EXIT

start_server() {   # $1: log file; sets SRV_PID, PORT
    "$SERVER" --model "$MODEL" --port 0 2>"$1" &
    SRV_PID=$!
    for _ in $(seq 1 1500); do
        PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$1" | grep -o '[0-9]*$' || true)
        [ -n "$PORT" ] && return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.02
    done
    echo "run_attack.sh: the server did not start:" >&2; cat "$1" >&2; exit 1
}

echo "realnvp-server ($SERVER, default flags, --port 0; tree $(git describe --always --dirty 2>/dev/null || echo '?')) with $MODEL; ${SECONDS_PER} s per attack (b: 15 s hold);"
echo "a fresh server per attack; probe GET /healthz every 50 ms, failure = error, non-200 or slower than the"
echo "k8s liveness timeout (${LIVE_TIMEOUT_S} s, $DEP); k8s memory limit $LIMIT ($DEP); $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$ATTACK" --header
NOTES=()
for a in $ATTACKS; do
    log=$OUT/attack_server_$a.log
    start_server "$log"
    "$ATTACK" --port "$PORT" --pid "$SRV_PID" --attack "$a" --seconds "$SECONDS_PER" --png-dir "$PNGS" \
        --probe-timeout-ms $(( LIVE_TIMEOUT_S * 1000 )) --limit "$LIMIT" --limit-mib "$LIMIT_MIB" --rss-cap-mib "$RSS_CAP_MIB" \
        || echo "| $a | attack failed (status $?) | | | | | | |"
    stop_server
    NOTES+=("$a: $STOP_NOTE; server stderr $(wc -l < "$log") lines ($log)")
done
echo
echo "server shutdown after each attack:"
for n in "${NOTES[@]}"; do echo "- $n"; done
