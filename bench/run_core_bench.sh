#!/usr/bin/env bash
# run_core_bench.sh: the C core (bin/bench_core) against the PyTorch baseline
# (bench/torch_baseline.py) on one checkpoint, interleaved C, torch, C, torch ... so that drift
# of the machine hits both alike; then a markdown table of the medians and an accuracy check
# (log_prob and latents of the same images from both). torch runs in eager mode (the plain
# baseline) and, with JIT=1, also traced + frozen + optimize_for_inference.
#
#   bench/run_core_bench.sh                  # defaults below
#   ROUNDS=5 SECONDS_PER=3 BATCHES=1,16,64 THREADS=2 bench/run_core_bench.sh
#   C_BASE=/tmp/old/bin/bench_core bench/run_core_bench.sh   # also an older build, same rounds
#   C_BF16=1 bench/run_core_bench.sh         # also this build with --precision bf16 (AVX512_BF16 CPUs)
#
# With C_BASE (a bench_core built from another commit, e.g. `git archive OLD | tar -x -C DIR &&
# make -C DIR bin/bench_core`), that build runs in every round right after this one, and the
# table gains its images/s and this build's speed-up over it.
# Writes everything to bench/out/ (gitignored); the table also goes to bench/out/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-/usr/bin/python3}             # Debian's python: python3-torch, python3-numpy
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-2}          # timed seconds per op and batch size, each round
MIN_ITERS=${MIN_ITERS:-5}
BATCHES=${BATCHES:-1,16,64}
THREADS=${THREADS:-2}
JIT=${JIT:-1}                          # 1: also time torch.jit (traced, frozen, optimize_for_inference)
C_BASE=${C_BASE:-}                     # optional: an older bin/bench_core to compare with
C_BF16=${C_BF16:-0}                    # 1: also this build at --precision bf16, every round
OUT=bench/out
MODEL=${MODEL:-$OUT/bench28.safetensors}
CFG='{"height":28,"width":28,"channels":1,"num_scales":3,"res_blocks":4,"features":[32,64,64],"alpha":0.05,"bn_eps":1e-5,"flow_batchnorm":true,"flow_bn_eps":1e-4}'
mkdir -p "$OUT"

make -s bin/bench_core
make -s bin/realnvp >/dev/null 2>&1 || echo "note: bin/realnvp does not build yet; using fallbacks" >&2

# ---- the checkpoint: realnvp init, else bench_core --init (the same library call), else torch
if [ ! -f "$MODEL" ]; then
    printf '%s\n' "$CFG" > "$OUT/bench28.json"
    if [ -x bin/realnvp ] && bin/realnvp init --config "$OUT/bench28.json" --seed 1 -o "$MODEL"; then
        echo "model: $MODEL from bin/realnvp init --seed 1"
    elif bin/bench_core --init "$CFG" --seed 1 -o "$MODEL"; then
        echo "model: $MODEL from bin/bench_core --init (rnvp_model_init, seed 1)"
    else
        "$PY" bench/torch_baseline.py --init-random "$MODEL" --config "$CFG" --seed 1
        echo "model: $MODEL from torch_baseline.py --init-random (seed 1)"
    fi
fi

# ---- speed, interleaved
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS: C" >&2
    bin/bench_core --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" \
        --seconds "$SECONDS_PER" --json > "$OUT/c_$r.json"
    if [ -n "$C_BASE" ]; then
        echo "round $r/$ROUNDS: C base ($C_BASE)" >&2
        "$C_BASE" --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" \
            --seconds "$SECONDS_PER" --json > "$OUT/cbase_$r.json"
    else
        rm -f "$OUT/cbase_$r.json"
    fi
    if [ "$C_BF16" = 1 ]; then
        echo "round $r/$ROUNDS: C bf16" >&2
        bin/bench_core --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" \
            --seconds "$SECONDS_PER" --precision bf16 --json > "$OUT/cbf16_$r.json"
    else
        rm -f "$OUT/cbf16_$r.json"
    fi
    echo "round $r/$ROUNDS: torch" >&2
    "$PY" bench/torch_baseline.py --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" \
        --iters "$MIN_ITERS" --seconds "$SECONDS_PER" --json > "$OUT/torch_$r.json"
    if [ "$JIT" = 1 ]; then
        echo "round $r/$ROUNDS: torch jit" >&2
        "$PY" bench/torch_baseline.py --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" \
            --iters "$MIN_ITERS" --seconds "$SECONDS_PER" --jit --json > "$OUT/torchjit_$r.json"
    else
        rm -f "$OUT"/torchjit_*.json
    fi
done

# ---- what the convolutions' sgemms alone would allow
bin/bench_core --model "$MODEL" --threads "$THREADS" --batches "$BATCHES" --seconds "$SECONDS_PER" \
    --gemm-ceiling --json > "$OUT/ceiling.json"

# ---- accuracy: the same 16 images (numpy seed 0) through both
"$PY" bench/torch_baseline.py --model "$MODEL" --check random --out "$OUT/check_torch.json" \
    --write-images "$OUT/check"
bin/bench_core --model "$MODEL" --check-raw "$OUT/check/images.u8" --n 16 \
    --z-out "$OUT/check/z_c.f32" > "$OUT/check_c.json"
CLI_JSON=""
if [ -x bin/realnvp ]; then
    if bin/realnvp log-prob --model "$MODEL" --json "$OUT"/check/img*.png > "$OUT/check_cli.json" 2>"$OUT/check_cli.err"; then
        CLI_JSON="$OUT/check_cli.json"
    else
        echo "note: bin/realnvp log-prob failed: $(head -c 300 "$OUT/check_cli.err")" >&2
    fi
fi

"$PY" - "$OUT" "$ROUNDS" "$MODEL" "$CLI_JSON" <<'EOF' | tee "$OUT/table.md"
import json, os, re, sys
import numpy as np
out, rounds, model, cli = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
C = [json.load(open(f"{out}/c_{r}.json")) for r in range(1, rounds + 1)]
T = [json.load(open(f"{out}/torch_{r}.json")) for r in range(1, rounds + 1)]
import os
J = [json.load(open(f"{out}/torchjit_{r}.json")) for r in range(1, rounds + 1)
     if os.path.exists(f"{out}/torchjit_{r}.json")]

B = [json.load(open(f"{out}/cbase_{r}.json")) for r in range(1, rounds + 1)
     if os.path.exists(f"{out}/cbase_{r}.json")]
F = [json.load(open(f"{out}/cbf16_{r}.json")) for r in range(1, rounds + 1)
     if os.path.exists(f"{out}/cbf16_{r}.json")]

def cells(runs):
    d = {}
    for run in runs:
        for row in run["results"]:
            d.setdefault((row["op"], row["batch"]), []).append(row)
    return d
c, t, j, bb, ff = cells(C), cells(T), cells(J), cells(B), cells(F)
c0, t0 = C[0], T[0]
print(f"Model `{model}`: {c0['dim']} dims, {c0['params']} parameters, "
      f"{c0['flops_per_image'] / 1e9:.3f} GFLOP per image (forward). "
      f"C: realnvp {c0['version']}, OpenBLAS core {c0['blas_core']}, {c0['threads']} threads. "
      f"torch {t0['torch_version']} (oneDNN {t0.get('mkldnn')}, OpenBLAS core {t0.get('openblas_core')}), "
      f"{t0['threads']} threads. "
      f"Median of {rounds} interleaved rounds, each the median of its timed calls.\n")
hj = "torch jit images/s | C / torch jit | " if J else ""
hb = "C base images/s | C / C base | " if B else ""
hf = "C bf16 images/s | bf16 / C | " + ("bf16 / torch jit | " if J else "") if F else ""
print(f"| op | batch | C images/s | torch images/s | C / torch | {hj}{hb}{hf}C ms/batch | C GFLOP/s | C spread | torch spread |")
print("|---|---:|---:|---:|---:|" + ("---:|---:|" if J else "") + ("---:|---:|" if B else "")
      + (("---:|---:|" + ("---:|" if J else "")) if F else "") + "---:|---:|---:|---:|")
for key in sorted(c, key=lambda k: (["log_prob", "encode", "decode", "sample"].index(k[0]), k[1])):
    cr, tr = c[key], t.get(key, [])
    ci = [r["images_per_s"] for r in cr]
    ti = [r["images_per_s"] for r in tr]
    cm = float(np.median(ci))
    tm = float(np.median(ti)) if ti else float("nan")
    cms = float(np.median([r["ms_per_batch"] for r in cr]))
    gf = float(np.median([r["gflops"] for r in cr]))
    sp = lambda v: f"{min(v):.1f}-{max(v):.1f}" if v else "-"
    cj = ""
    if J:
        ji = [r["images_per_s"] for r in j.get(key, [])]
        jm = float(np.median(ji)) if ji else float("nan")
        cj = f"{jm:.1f} | {cm / jm:.2f}x | "
    cb = ""
    if B:
        bi = [r["images_per_s"] for r in bb.get(key, [])]
        bm = float(np.median(bi)) if bi else float("nan")
        cb = f"{bm:.1f} | {cm / bm:.2f}x | "
    cf = ""
    if F:
        fi = [r["images_per_s"] for r in ff.get(key, [])]
        fm = float(np.median(fi)) if fi else float("nan")
        cf = f"{fm:.1f} | {fm / cm:.2f}x | " + (f"{fm / jm:.2f}x | " if J else "")
    print(f"| {key[0]} | {key[1]} | {cm:.1f} | {tm:.1f} | {cm / tm:.2f}x | {cj}{cb}{cf}{cms:.2f} | {gf:.1f} | {sp(ci)} | {sp(ti)} |")
ctx = {}
for run in C:
    for row in run["results"]:
        ctx[row["batch"]] = row["ctx_bytes"]
print()
print("Peak RSS (whole process, max over rounds): C "
      f"{max(r['peak_rss_mb'] for r in C):.1f} MB, torch {max(r['peak_rss_mb'] for r in T):.1f} MB"
      + (f", torch jit {max(r['peak_rss_mb'] for r in J):.1f} MB" if J else "")
      + (f", C base {max(r['peak_rss_mb'] for r in B):.1f} MB" if B else "") + ". "
      "C context workspace: " + ", ".join(f"batch {b}: {v / 2**20:.2f} MB" for b, v in sorted(ctx.items())) + ".")

ce = json.load(open(f"{out}/ceiling.json"))
print()
print(f"sgemm-only ceiling (`bench_core --gemm-ceiling`, OpenBLAS core {ce['blas_core']}): "
      + ", ".join(f"batch {r['batch']}: {r['images_per_s']:.1f} images/s" for r in ce["results"])
      + " (the C core's speed if everything but its convolutions' sgemms took no time).")

# accuracy
tj = json.load(open(f"{out}/check_torch.json"))
cj = json.load(open(f"{out}/check_c.json"))
a = np.array(tj["log_prob"]); b = np.array(cj["log_prob"]); a64 = np.array(tj["log_prob_float64"])
zt = np.fromfile(f"{out}/check/z_torch.f32", "<f4"); zc = np.fromfile(f"{out}/check/z_c.f32", "<f4")
print()
print(f"Accuracy on {len(a)} images (numpy seed 0; 8 noise, 8 smooth), u = 0.5: "
      f"log_prob max relative difference C vs torch {np.max(np.abs(a - b) / np.abs(a)):.2e} "
      f"(vs torch float64 {np.max(np.abs(a64 - b) / np.abs(a64)):.2e}); "
      f"latents max |z_C - z_torch| {np.max(np.abs(zt - zc)):.2e} (max |z| {np.max(np.abs(zt)):.1f}); "
      f"C decode(encode(x)) pixel mismatches: {cj['roundtrip_mismatches']}; "
      f"log_prob range {a.min():.1f} .. {a.max():.1f} nats.")
if cli:
    try:
        txt = open(cli).read()
        try:
            js = json.loads(txt)
        except ValueError:
            js = [json.loads(l) for l in txt.splitlines() if l.strip()]
        vals = []
        def walk(o):
            if isinstance(o, dict):
                for k, v in o.items():
                    if k == "log_prob" and isinstance(v, (int, float)):
                        vals.append(float(v))
                    elif k == "log_prob" and isinstance(v, list):
                        vals.extend(float(x) for x in v)
                    else:
                        walk(v)
            elif isinstance(o, list):
                for x in o:
                    walk(x)
        walk(js)
        if len(vals) == len(a):
            v = np.array(vals)
            print(f"`realnvp log-prob --json` on the same images as PNGs: max relative difference vs torch "
                  f"{np.max(np.abs(a - v) / np.abs(a)):.2e}.")
        else:
            print(f"(`realnvp log-prob --json` gave {len(vals)} log_prob values for {len(a)} PNGs; not compared)")
    except Exception as e:
        print(f"(could not read {cli}: {e})")
EOF
