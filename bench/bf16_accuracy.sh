#!/usr/bin/env bash
# bf16_accuracy.sh: precision bf16 against fp32 side by side, for an operator deciding whether to
# turn it on: the error of log p against float64 (PyTorch's twin in double) and the bits/dim on
# the Fashion-MNIST test set (10,000 images, u = 0.5), decode(encode(x)) mismatches, and the
# speed of both (bin/bench_core, interleaved rounds, medians). Leaves out CPUs without
# AVX512_BF16 (bench_core refuses --precision bf16 there, and so does this script).
#
#   bench/bf16_accuracy.sh                        # the shipped model, 3 rounds
#   MODEL=bench/out/bench28.safetensors ROUNDS=5 bench/bf16_accuracy.sh
#
# Needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), python3-torch and
# python3-numpy. Writes bench/out/bf16_*.json and the table to bench/out/bf16.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-/usr/bin/python3}
MODEL=${MODEL:-models/fashion-mnist/model.safetensors}
DATA=${DATA:-/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz}
N=${N:-10000}
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-2}
BATCHES=${BATCHES:-1,16,64}
THREADS=${THREADS:-2}
OUT=bench/out
mkdir -p "$OUT"
make -s bin/bench_core

[ -f "$DATA" ] || { echo "bf16_accuracy: $DATA not found (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
bin/bench_core --model "$MODEL" --threads 1 --batches 1 --seconds 0.01 --ops log_prob --precision bf16 \
    >/dev/null || { echo "bf16_accuracy: this CPU or build cannot run precision bf16" >&2; exit 1; }

# ---- accuracy: the test images as raw (N, 1, 28, 28) bytes, float64 / fp32 / bf16 log p
RAW=$OUT/bf16_test.u8
"$PY" - "$DATA" "$RAW" "$N" <<'EOF'
import gzip, sys
import numpy as np
raw = gzip.open(sys.argv[1]).read()
imgs = np.frombuffer(raw, dtype=np.uint8, offset=16)[: int(sys.argv[3]) * 784]
imgs.tofile(sys.argv[2])
EOF
echo "accuracy: float64 (torch twin) ..." >&2
"$PY" bench/torch_baseline.py --model "$MODEL" --threads "$THREADS" --check-raw "$RAW" --out "$OUT/bf16_f64.json"
for p in fp32 bf16; do
    echo "accuracy: C $p ..." >&2
    bin/bench_core --model "$MODEL" --threads "$THREADS" --check-raw "$RAW" --n "$N" --precision "$p" \
        > "$OUT/bf16_c_$p.json"
done

# ---- speed, interleaved fp32, bf16, fp32, ...
for r in $(seq 1 "$ROUNDS"); do
    for p in fp32 bf16; do
        echo "speed: round $r/$ROUNDS, $p" >&2
        bin/bench_core --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" --seconds "$SECONDS_PER" \
            --precision "$p" --json > "$OUT/bf16_speed_${p}_$r.json"
    done
done

"$PY" - "$OUT" "$ROUNDS" "$MODEL" <<'EOF' | tee "$OUT/bf16.md"
import json, math, sys
import numpy as np
out, rounds, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
f64 = np.array(json.load(open(f"{out}/bf16_f64.json"))["log_prob_float64"])
C = {p: json.load(open(f"{out}/bf16_c_{p}.json")) for p in ("fp32", "bf16")}
D = 784
print(f"Model `{model}`, the {len(f64)} Fashion-MNIST test images (u = 0.5); float64: the PyTorch twin in double.\n")
print("| precision | log p rel. error vs float64: median | max | mean bits/dim | bits/dim - float64's | decode(encode(x)) pixels off |")
print("|---|---:|---:|---:|---:|---:|")
bpd64 = float(np.mean(-f64 / (D * math.log(2))))
for p in ("fp32", "bf16"):
    lp = np.array(C[p]["log_prob"])
    rel = np.abs(lp - f64) / np.abs(f64)
    bpd = float(np.mean(-lp / (D * math.log(2))))
    print(f"| {p} | {np.median(rel):.2e} | {rel.max():.2e} | {bpd:.6f} | {bpd - bpd64:+.2e} | "
          f"{C[p]['roundtrip_mismatches']} of {len(f64) * D} |")
print(f"| float64 | | | {bpd64:.6f} | | |\n")

def cells(p):
    d = {}
    for r in range(1, rounds + 1):
        for row in json.load(open(f"{out}/bf16_speed_{p}_{r}.json"))["results"]:
            d.setdefault((row["op"], row["batch"]), []).append(row["images_per_s"])
    return d
s32, s16 = cells("fp32"), cells("bf16")
print(f"Speed: bin/bench_core, images/s, median of {rounds} interleaved rounds.\n")
print("| op | batch | fp32 | bf16 | bf16 / fp32 |")
print("|---|---:|---:|---:|---:|")
for key in sorted(s32, key=lambda k: (["log_prob", "encode", "decode", "sample"].index(k[0]), k[1])):
    a, b = float(np.median(s32[key])), float(np.median(s16[key]))
    print(f"| {key[0]} | {key[1]} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
EOF
