#!/usr/bin/env bash
# run_server_bench.sh: bin/realnvp-server under load (bin/bench_server posting single-image PNGs
# to /log_prob at concurrency 1, 16, 64) with batching, with --max-batch 1, and the core's own
# log_prob images/s at batch 1 and 64 (bin/bench_core) as the ceiling, and `bin/realnvp log-prob`
# (default options) over a folder of NPNGS PNGs timed as a whole command, interleaved over ROUNDS
# rounds; prints a markdown table of medians, the issue's three target checks, one client's p50
# with batching (--max-delay-us DELAY; 0 is the server's default) next to --max-batch 1, and
# 64 clients' images/s next to the CLI's with the non-2xx answers counted once /readyz is 200.
# Concurrency 1 and 64 are always measured (added to CONC when missing).
# Leaves out other endpoints (log_prob is the issue's load) and machines other than loopback.
#
#   bench/run_server_bench.sh                      # defaults below, about 4 minutes
#   ROUNDS=3 SECONDS_PER=5 CONC="1 16 64" THREADS=2 bench/run_server_bench.sh
#   DELAY=2000 bench/run_server_bench.sh           # the batching server with an opt-in 2 ms delay
#
# Writes bench/out/server_*.json and bench/out/server_table.md (bench/out is gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-5}
WARMUP=${WARMUP:-1}
CONC=${CONC:-1 16 64}
THREADS=${THREADS:-2}                 # compute (BLAS) threads of the server and of bench_core
DELAY=${DELAY:-0}                     # --max-delay-us of the batching server (the server's default: 0)
NPNGS=${NPNGS:-512}                   # PNGs in the folder that bin/realnvp log-prob scores
PNG_MODEL=${PNG_MODEL:-models/fashion-mnist/model.safetensors}   # the folder's images are its samples (28x28x1)
PY=${PY:-python3}
OUT=bench/out
MODEL=${MODEL:-$OUT/bench28.safetensors}
CFG='{"height":28,"width":28,"channels":1,"num_scales":3,"res_blocks":4,"features":[32,64,64],"alpha":0.05,"bn_eps":1e-5,"flow_batchnorm":true,"flow_bn_eps":1e-4}'
mkdir -p "$OUT"
case " $CONC " in *" 1 "*) ;; *) CONC="1 $CONC";; esac
case " $CONC " in *" 64 "*) ;; *) CONC="$CONC 64";; esac

make -s bin/realnvp bin/realnvp-server bin/bench_core bin/bench_server bin/attack

if [ ! -f "$MODEL" ]; then
    printf '%s\n' "$CFG" > "$OUT/bench28.json"
    bin/realnvp init --config "$OUT/bench28.json" --seed 1 -o "$MODEL"
fi
IMG=$OUT/server_img.png
bin/realnvp sample --model "$MODEL" -n 1 --seed 7 -o "$IMG"
rm -f "$OUT"/server_*.json
PNGDIR=$OUT/server_pngs_$NPNGS
if [ "$(ls "$PNGDIR"/*.png 2>/dev/null | wc -l)" -ne "$NPNGS" ]; then
    rm -rf "$PNGDIR"
    bin/attack --make-pngs "$PNGDIR" --model "$PNG_MODEL" --count "$NPNGS" --seed 1
fi

SRV_PID=
stop_server() {
    if [ -n "$SRV_PID" ]; then kill -TERM "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; fi
}
trap stop_server EXIT

# start_server NAME FLAGS...: starts on a free port, sets PORT, returns once /readyz is 200
start_server() {
    local name=$1; shift
    bin/realnvp-server --model "$MODEL" --port 0 --compute-threads "$THREADS" --access-log off "$@" 2>"$OUT/server_$name.log" &
    SRV_PID=$!
    for _ in $(seq 1 3000); do
        PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$OUT/server_$name.log" | grep -o '[0-9]*$' || true)
        if [ -n "$PORT" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz")" = 200 ]; then
            return 0
        fi
        sleep 0.02
    done
    echo "server $name did not become ready:" >&2; cat "$OUT/server_$name.log" >&2; exit 1
}

for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: core" >&2
    bin/bench_core --model "$MODEL" --threads "$THREADS" --batches 1,64 --ops log_prob --seconds "$SECONDS_PER" --json \
        > "$OUT/server_core_$r.json"
    echo "round $r/$ROUNDS: bin/realnvp log-prob over $NPNGS PNGs" >&2
    t0=$(date +%s.%N)
    bin/realnvp log-prob --model "$MODEL" "$PNGDIR"/*.png > "$OUT/server_cli_out.txt"
    t1=$(date +%s.%N)
    # the table has a header line and one line per image
    awk -v a="$t0" -v b="$t1" -v n="$(( $(wc -l < "$OUT/server_cli_out.txt") - 1 ))" \
        'BEGIN { printf "{\"images\": %d, \"seconds\": %.4f}\n", n, b - a }' > "$OUT/server_cli_$r.json"
    for mode in batched single; do
        if [ $mode = batched ]; then start_server $mode --max-batch 64 --max-delay-us "$DELAY"
        else start_server $mode --max-batch 1 --max-delay-us 0; fi
        for c in $CONC; do
            echo "round $r/$ROUNDS: server $mode, concurrency $c" >&2
            bin/bench_server --port "$PORT" --png "$IMG" --concurrency "$c" --seconds "$SECONDS_PER" --warmup "$WARMUP" \
                --json > "$OUT/server_${mode}_c${c}_$r.json" || true   # non-200s are in the table
        done
        stop_server
    done
done

"$PY" - "$OUT" "$ROUNDS" "$CONC" "$DELAY" "$NPNGS" <<'EOF'
import json, statistics, sys
out, rounds, conc, delay = sys.argv[1], int(sys.argv[2]), [int(c) for c in sys.argv[3].split()], int(sys.argv[4])
npngs = int(sys.argv[5])
med = statistics.median
def load(p): return json.load(open(p))
core = {1: [], 64: []}
for r in range(1, rounds + 1):
    for x in load(f"{out}/server_core_{r}.json")["results"]:
        if x["op"] == "log_prob": core[x["batch"]].append(x)
c1_ips = med(x["images_per_s"] for x in core[1]); c1_ms = med(x["ms_per_batch"] for x in core[1])
c64_ips = med(x["images_per_s"] for x in core[64])
cell = {}
for mode in ("batched", "single"):
    for c in conc:
        rs = [load(f"{out}/server_{mode}_c{c}_{r}.json") for r in range(1, rounds + 1)]
        cell[mode, c] = {k: med(x[k] for x in rs) for k in ("images_per_s", "p50_ms", "p99_ms")}
        cell[mode, c]["errors"] = sum(x["errors"] + x["non200"] for x in rs)
        cell[mode, c]["non2xx_all"] = sum(x.get("non2xx_all", 0) for x in rs)
cli = [load(f"{out}/server_cli_{r}.json") for r in range(1, rounds + 1)]
cli_s = med(x["seconds"] for x in cli)
cli_ips = med(x["images"] / x["seconds"] for x in cli)
lines = [f"POST /log_prob, one 28x28x1 PNG per request (model: 3 scales, 4 res blocks, features 32/64/64, "
         f"about 1 GFLOP/image); medians of {rounds} rounds; servers started, then measured once /readyz is 200", "",
         "| setup | concurrency | images/s | p50 ms | p99 ms | errors | non-2xx after ready |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for mode, label in (("batched", f"server, --max-batch 64 --max-delay-us {delay}"), ("single", "server, --max-batch 1")):
    for c in conc:
        x = cell[mode, c]
        lines.append(f"| {label} | {c} | {x['images_per_s']:.1f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['errors']} "
                     f"| {x['non2xx_all']} |")
lines.append(f"| core alone (bench_core log_prob), batch 1 | - | {c1_ips:.1f} | {c1_ms:.2f} | - | - | - |")
lines.append(f"| core alone (bench_core log_prob), batch 64: ceiling | - | {c64_ips:.1f} | - | - | - | - |")
lines.append(f"| bin/realnvp log-prob, {npngs} PNGs, default options, whole command ({cli_s:.2f} s) | - | {cli_ips:.1f} "
             f"| - | - | - | - |")
lines.append("")
top = max(conc)
b, s = cell["batched", top], cell["single", top]
lines.append(f"- concurrency {top}: batched = {b['images_per_s'] / c64_ips * 100:.0f}% of the core's batch-64 ceiling "
             f"(target >= 80%), {b['images_per_s'] / s['images_per_s']:.2f}x --max-batch 1 (target >= 3x)")
if 1 in conc:
    bound = c1_ms + delay / 1000 + 1
    lines.append(f"- concurrency 1: batched p50 {cell['batched', 1]['p50_ms']:.2f} ms vs single-image compute "
                 f"{c1_ms:.2f} ms + max delay {delay / 1000:.2f} ms + 1 ms = {bound:.2f} ms (target: at most that)")
b1, s1 = cell["batched", 1], cell["single", 1]
lines.append(f"- one client, p50 side by side: batching server (--max-batch 64 --max-delay-us {delay}) {b1['p50_ms']:.2f} ms, "
             f"--max-batch 1 {s1['p50_ms']:.2f} ms ({b1['p50_ms'] - s1['p50_ms']:+.2f} ms, {b1['p50_ms'] / s1['p50_ms']:.2f}x)")
b64, s64 = cell["batched", 64], cell["single", 64]
lines.append(f"- 64 single-image clients: batching server {b64['images_per_s']:.1f} images/s "
             f"({b64['images_per_s'] / cli_ips:.2f}x `bin/realnvp log-prob` over {npngs} PNGs, {cli_ips:.1f} images/s "
             f"with its model load and PNG reads), --max-batch 1 {s64['images_per_s']:.1f} images/s; non-2xx answers after "
             f"/readyz was 200 (warm-up included, all rounds): {b64['non2xx_all']} batching, {s64['non2xx_all']} --max-batch 1")
text = "\n".join(lines) + "\n"
open(f"{out}/server_table.md", "w").write(text)
print(text, end="")
EOF
