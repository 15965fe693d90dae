#!/usr/bin/env bash
# conv_share.sh: where bench_core's CPU time goes, from perf samples: the convolutions (functions
# of core/conv.c, core/winograd.c and core/winograd4.c, and OpenBLAS), the thread pool and the
# kernel (core/tpool.c, futex waits, page faults) and the rest of the flow (the couplings'
# element-wise passes, squeeze, split, the prior, libm). Needs perf (Debian: linux-perf); leaves
# out timing itself (bench_core / run_core_bench.sh).
#
#   bench/conv_share.sh                        # the 1 GFLOP model, log_prob, batches 1,16,64
#   MODEL=models/fashion-mnist/model.safetensors OPS=log_prob,sample bench/conv_share.sh
#   PRECISION=bf16 bench/conv_share.sh        # bench_core --precision bf16 (AVX512_BF16 CPUs)
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-bench/out/bench28.safetensors}   # bench/run_core_bench.sh makes it
BATCHES=${BATCHES:-1,16,64}
OPS=${OPS:-log_prob}
THREADS=${THREADS:-2}
SECONDS_PER=${SECONDS_PER:-3}
OUT=bench/out
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "conv_share.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
make -s bin/bench_core
[ -f "$MODEL" ] || { echo "conv_share.sh: $MODEL is missing (bench/run_core_bench.sh writes it)" >&2; exit 1; }

# the functions each group is made of, from the objects' symbol tables (static ones included)
nm build/core/conv.o build/core/winograd.o build/core/winograd4.o | awk '$2 ~ /^[tT]$/ {print $3}' | sort -u > "$OUT/conv_share.conv"
nm build/core/tpool.o | awk '$2 ~ /^[tT]$/ {print $3}' | sort -u > "$OUT/conv_share.pool"

echo "| op | batch | convolutions | thread pool and kernel | rest of the flow | samples |"
echo "|---|---:|---:|---:|---:|---:|"
IFS=, read -ra ops <<< "$OPS"
IFS=, read -ra bs <<< "$BATCHES"
for op in "${ops[@]}"; do
    for b in "${bs[@]}"; do
        data="$OUT/conv_share.$op.$b.data"
        perf record -q -F 999 -o "$data" bin/bench_core --model "$MODEL" --threads "$THREADS" --batches "$b" \
            --seconds "$SECONDS_PER" --ops "$op" --precision "${PRECISION:-fp32}" > /dev/null 2>&1
        # one line per (dso, symbol): samples, dso, symbol
        perf report -i "$data" --no-children --sort dso,sym --stdio -F sample,dso,sym 2>/dev/null |
            awk -v op="$op" -v b="$b" -v convf="$OUT/conv_share.conv" -v poolf="$OUT/conv_share.pool" '
                BEGIN { while ((getline s < convf) > 0) conv[s] = 1; while ((getline s < poolf) > 0) pool[s] = 1 }
                /^#/ || NF < 3 { next }
                {
                    n = $1; dso = $2; sym = $NF
                    if (dso ~ /openblas|blas/ || sym in conv) c += n
                    else if (sym in pool || dso ~ /kernel/ || sym ~ /futex|condvar|pthread_cond/) p += n   # the pool, its futexes, the kernel
                    else o += n
                    t += n
                }
                END {
                    if (!t) { printf "| %s | %s | - | - | - | 0 |\n", op, b; exit }
                    printf "| %s | %s | %.1f%% | %.1f%% | %.1f%% | %d |\n", op, b, 100 * c / t, 100 * p / t, 100 * o / t, t
                }'
    done
done
