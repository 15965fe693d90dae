#!/usr/bin/env bash
# run_train_bench.sh: training speed of the C trainer (bin/bench_train) against the same model in
# PyTorch (bench/torch_train.py), interleaved C, torch, C, torch ... so that drift of the machine
# hits both alike; then a check that both compute the same training loss and gradient on one
# checkpoint and batch, and a markdown table of the medians. Leaves out the trainer's data
# loading, checkpoints and evaluation (the timed step is forward + backward + L2 + clip + Adam).
#
#   bench/run_train_bench.sh                       # defaults below: the shipped architecture
#   ROUNDS=3 SECONDS_PER=20 THREADS=2 BATCH=64 bench/run_train_bench.sh
#   ONLY_CHECK=1 bench/run_train_bench.sh           # redo the check, reuse the last timings
#   BEFORE_CONV=avx2 bench/run_train_bench.sh       # each round also times C with REALNVP_CONV=avx2
#                                                   # (the kernels before Winograd): before / after
#   BEFORE_WINOGRAD=avx2 bench/run_train_bench.sh   # ... with REALNVP_WINOGRAD=avx2 (the AVX2
#                                                   # Winograd kernels on an AVX-512 CPU)
#   BEFORE_BIN=/tmp/old/bin/bench_train bench/run_train_bench.sh   # ... an older build instead
#                                                   # (git archive OLD | tar -x -C /tmp/old &&
#                                                   # make -C /tmp/old bin/bench_train)
#   ARCH='--scales 3 --res-blocks 4 --features 32,64,64 --flow-batchnorm 1' CFG='{...}' \
#       bench/run_train_bench.sh                    # another architecture; CFG: the same as JSON
#                                                   # (for the loss/gradient check)
#
# Writes everything to bench/out/ (gitignored); the table also goes to bench/out/train_table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-/usr/bin/python3}           # Debian's python: python3-torch, python3-numpy
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-20}       # timed seconds per run (after the warm-up), each round
WARMUP=${WARMUP:-1}                  # untimed steps first (allocations, oneDNN primitives)
MIN_STEPS=${MIN_STEPS:-3}            # timed steps at least, however long they take
THREADS=${THREADS:-2}
BATCH=${BATCH:-64}
CHECK_N=${CHECK_N:-16}               # images in the loss/gradient check's batch
# the shipped architecture (models/fashion-mnist): keep in step with its training command
ARCH=${ARCH:---scales 3 --res-blocks 2 --features 32,32,32 --flow-batchnorm 1}
[ -n "${CFG:-}" ] || CFG='{"height":28,"width":28,"channels":1,"num_scales":3,"res_blocks":2,"features":[32,32,32],"alpha":0.05,"bn_eps":1e-5,"flow_batchnorm":true,"flow_bn_eps":1e-4}'
OUT=${OUT:-bench/out}                 # results (bench/out is gitignored)
mkdir -p "$OUT"
T0=$(date +%s)

make -s bin/bench_train bin/realnvp
# private copies: other people's builds relink bin/ while this runs (several engineers, one tree)
cp bin/bench_train "$OUT/bench_train.bin"
cp bin/realnvp "$OUT/realnvp.bin"
[ "${ONLY_CHECK:-0}" = 1 ] && ROUNDS_RUN=0 || ROUNDS_RUN=$ROUNDS   # ONLY_CHECK=1: reuse the timings
[ "$ROUNDS_RUN" = 0 ] || rm -f "$OUT"/train_c_*.json "$OUT"/train_torch_*.json "$OUT"/train_cb_*.json
BEFORE_CONV=${BEFORE_CONV:-}          # REALNVP_CONV of a "before" C run in each round, empty: none
BEFORE_WINOGRAD=${BEFORE_WINOGRAD:-}  # REALNVP_WINOGRAD of that run (with or without BEFORE_CONV)
BEFORE=${BEFORE_CONV:+REALNVP_CONV=$BEFORE_CONV}${BEFORE_WINOGRAD:+ REALNVP_WINOGRAD=$BEFORE_WINOGRAD}
BEFORE_BIN=${BEFORE_BIN:-}            # an older bench_train for that run (default: this build)
if [ -n "$BEFORE_BIN" ]; then
    cp "$BEFORE_BIN" "$OUT/bench_train_before.bin"
    BEFORE="${BEFORE:+$BEFORE, }$BEFORE_BIN"
fi

# ---- speed, interleaved (both sides: OpenBLAS kernels chosen the same way, see
# rnvp_blas_select_core and torch_baseline.openblas_select_core; THREADS threads; same batch)
# shellcheck disable=SC2086
for r in $(seq 1 "$ROUNDS_RUN"); do
    if [ -n "$BEFORE" ]; then
        echo "round $r/$ROUNDS: C, $BEFORE ($(($(date +%s) - T0)) s)" >&2
        env ${BEFORE_CONV:+REALNVP_CONV=$BEFORE_CONV} ${BEFORE_WINOGRAD:+REALNVP_WINOGRAD=$BEFORE_WINOGRAD} \
            "$OUT/bench_train${BEFORE_BIN:+_before}.bin" --threads "$THREADS" --batch "$BATCH" \
            --seconds "$SECONDS_PER" --warmup "$WARMUP" --min-steps "$MIN_STEPS" --seed "$r" $ARCH \
            > "$OUT/train_cb_$r.json"
    fi
    echo "round $r/$ROUNDS: C ($(($(date +%s) - T0)) s)" >&2
    "$OUT/bench_train.bin" --threads "$THREADS" --batch "$BATCH" --seconds "$SECONDS_PER" \
        --warmup "$WARMUP" --min-steps "$MIN_STEPS" --seed "$r" $ARCH > "$OUT/train_c_$r.json"
    echo "round $r/$ROUNDS: torch ($(($(date +%s) - T0)) s)" >&2
    "$PY" bench/torch_train.py --threads "$THREADS" --batch "$BATCH" --seconds "$SECONDS_PER" \
        --warmup "$WARMUP" --min-steps "$MIN_STEPS" --seed "$r" $ARCH > "$OUT/train_torch_$r.json"
done

# ---- correctness: one checkpoint (realnvp init: couplings that do real work), one batch,
# training-mode loss and gradient from both
echo "check: loss and gradient on $CHECK_N images ($(($(date +%s) - T0)) s)" >&2
printf '%s\n' "$CFG" > "$OUT/train_check.json"
"$OUT/realnvp.bin" init --config "$OUT/train_check.json" --seed 1 -o "$OUT/train_check.safetensors" 2>/dev/null
CHECK_RC=0
"$PY" bench/torch_train.py --check "$OUT/train_check.safetensors" --c-bin "$OUT/bench_train.bin" \
    --n "$CHECK_N" --threads "$THREADS" --out "$OUT/train_check_result.json" > /dev/null || CHECK_RC=$?

"$PY" - "$OUT" "$ROUNDS" "$(($(date +%s) - T0))" "$BEFORE" <<'EOF' | tee "$OUT/train_table.md"
import json, os, sys
import numpy as np
out, rounds, elapsed, before = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = [json.load(open(f"{out}/train_c_{r}.json")) for r in range(1, rounds + 1)]
t = [json.load(open(f"{out}/train_torch_{r}.json")) for r in range(1, rounds + 1)]
med = lambda xs: float(np.median(xs))
ci, ti = [x["images_per_s"] for x in c], [x["images_per_s"] for x in t]
cc, tc = [x["cpu_ms_per_image"] for x in c], [x["cpu_ms_per_image"] for x in t]
cfg = c[0]["config"]
print(f"Training step (forward + backward + L2 + clipping + Adam), batch {c[0]['batch']}, "
      f"{c[0]['threads']} threads, config {json.dumps(cfg, separators=(',', ':'))}, "
      f"{c[0]['params']} parameters; {rounds} interleaved rounds, each side timed for at least "
      f"{min(x['steps'] for x in c + t)} steps per round; this invocation of the script took {elapsed} s.")
print(f"C: OpenBLAS {c[0]['blas_core']}; torch {t[0]['torch_version']} (oneDNN {t[0]['mkldnn']}, "
      f"OpenBLAS {t[0]['openblas_core']}). Data: {c[0]['data']}.\n")
print("| round | C images/s | torch images/s | C / torch | C CPU ms/image | torch CPU ms/image | torch / C CPU |")
print("|---|---|---|---|---|---|---|")
for r in range(rounds):
    print(f"| {r + 1} | {ci[r]:.2f} | {ti[r]:.2f} | {ci[r] / ti[r]:.2f}x | {cc[r]:.1f} | {tc[r]:.1f} | "
          f"{tc[r] / cc[r]:.2f}x |")
ratios = [a / b for a, b in zip(ci, ti)]
cratios = [b / a for a, b in zip(cc, tc)]
print(f"| **median** | **{med(ci):.2f}** | **{med(ti):.2f}** | **{med(ratios):.2f}x** | "
      f"**{med(cc):.1f}** | **{med(tc):.1f}** | **{med(cratios):.2f}x** |")
print()
if before and all(os.path.exists(f"{out}/train_cb_{r}.json") for r in range(1, rounds + 1)):
    b = [json.load(open(f"{out}/train_cb_{r}.json")) for r in range(1, rounds + 1)]
    bi, bc = [x["images_per_s"] for x in b], [x["cpu_ms_per_image"] for x in b]
    print(f"Before ({before}) and after (the default kernels) in the same rounds, run "
          f"before / after / torch in each round:\n")
    print(f"| round | before images/s | after images/s | torch images/s | after / before | before / torch | "
          f"after / torch | CPU ms/image before / after / torch |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [(bi[r], ci[r], ti[r], bc[r], cc[r], tc[r]) for r in range(rounds)]
    for r, (x, y, z, u, v, w) in enumerate(rows):
        print(f"| {r + 1} | {x:.2f} | {y:.2f} | {z:.2f} | {y / x:.2f}x | {x / z:.2f}x | {y / z:.2f}x | "
              f"{u:.1f} / {v:.1f} / {w:.1f} |")
    print(f"| **median** | **{med(bi):.2f}** | **{med(ci):.2f}** | **{med(ti):.2f}** | "
          f"**{med([y / x for x, y, *_ in rows]):.2f}x** | **{med([x / z for x, y, z, *_ in rows]):.2f}x** | "
          f"**{med([y / z for x, y, z, *_ in rows]):.2f}x** | **{med(bc):.1f} / {med(cc):.1f} / {med(tc):.1f}** |")
    print()
print("| memory | C | torch |")
print("|---|---|---|")
print(f"| peak RSS (max over rounds) | {max(x['peak_rss_mb'] for x in c):.0f} MB | "
      f"{max(x['peak_rss_mb'] for x in t):.0f} MB |")
print(f"| RSS after setup, before the first step | {med([x['rss_setup_mb'] for x in c]):.0f} MB | "
      f"{med([x['rss_setup_mb'] for x in t]):.0f} MB |")
print(f"| training workspace (tr_ws_bytes) | {c[0]['workspace_mb']:.0f} MB | - |")
print(f"| parameters + gradient + Adam moments | {c[0]['state_mb']:.1f} MB | - |")
print()
print("C / torch: ratio of images/s (wall clock) in the same round; torch / C CPU: ratio of CPU time "
      "per image (all threads), less sensitive to a busy machine. Medians over steps within a run, "
      "then over rounds.")
try:
    k = json.load(open(f"{out}/train_check_result.json"))
    print()
    print(f"Check (same checkpoint, same {k['n']} images, training mode): loss C {k['c_loss']:.9f}, "
          f"torch float32 {k['torch32_loss']:.9f}, torch float64 {k['torch64_loss']:.9f} bits/dim; "
          f"relative difference C vs float64 {k['loss_rel_c_vs_torch64']:.1e}. Gradients of "
          f"{k['grad_tensors']} tensors: ||g_C - g_64|| / ||g_64|| over all = "
          f"{k['grad_rel_all_c']:.1e} (torch float32: {k['grad_rel_all_torch32']:.1e}); worst "
          f"tensor {k['grad_err_max_c']:.1e} (torch float32: {k['grad_err_max_torch32']:.1e}; C vs "
          f"torch float32 {k['grad_err_max_c_vs_torch32']:.1e}). "
          f"{'PASSED' if k['passed'] else 'FAILED'}.")
except (OSError, KeyError, ValueError) as e:
    print(f"\nCheck: no result ({e})")
EOF
exit "$CHECK_RC"
