#!/usr/bin/env bash
# test_mpi.sh: data-parallel training with MPI: 2 processes = 1 process, resume with another count, a killed process.
# Leaves out the passes' arithmetic (tests/test_equiv.c simulates the processes without MPI).
#
# Skips (exit 0, with a message) when bin/realnvp-train was built without MPI (no mpicc, or
# make asan, which builds with USE_MPI=0 to keep Open MPI's own allocations out of LeakSanitizer).
# Checks, on 8x8 images, --batch 64, 20 steps:
#   1. mpirun -np 2 matches one process: every step's loss within 1e-5 relative, and every
#      parameter tensor (running statistics included) within 1e-5 of its scale: max |a - b| <=
#      1e-5 max(max |a|, 0.02), 0.02 being the most Adam moves a parameter in 20 steps of lr 1e-3
#      (a bias that starts at 0 is small, and float32 sums in another order differ in the last
#      bits of its gradient).
#   2. --resume with another process count continues the same run: 10 steps on 2 processes then
#      10 on 1 (and 1 then 2) end within 1e-3 of the uninterrupted run's loss (not bit-exact).
#   3. a process killed (SIGKILL) ends the job: mpirun exits non-zero within 60 s and the last
#      checkpoint is intact (a 1-process --resume continues from it).
set -u
cd "$(dirname "$0")/.."
BIN=bin/realnvp-train
if ! $BIN --version | grep -q "MPI: yes"; then
  echo "test_mpi: SKIPPED: $BIN was built without MPI (install libopenmpi-dev and rebuild; make asan builds without it)"
  exit 0
fi
if ! command -v mpirun >/dev/null; then
  echo "test_mpi: SKIPPED: mpirun not found (Debian: openmpi-bin)"; exit 0
fi
# CI runs as root; Open MPI refuses that unless told; shared-memory single-copy needs ptrace,
# which containers often forbid
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_btl=self,vader OMPI_MCA_plm_rsh_agent=
T=$(mktemp -d /tmp/realnvp-mpi.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAILED: $*"; fail=1; }

# 512 8x8 images: smooth blobs plus noise, as an IDX file
python3 - "$T/train.idx" <<'PY'
import math, random, struct, sys
random.seed(5)
n, s = 512, 8
out = bytearray(struct.pack(">IIII", 0x803, n, s, s))
for k in range(n):
    cx, cy, r = random.uniform(1, 6), random.uniform(1, 6), random.uniform(1.5, 4)
    for i in range(s):
        for j in range(s):
            v = 230 * math.exp(-((i - cy) ** 2 + (j - cx) ** 2) / (r * r)) + random.uniform(0, 25)
            out.append(max(0, min(255, int(v))))
open(sys.argv[1], "wb").write(out)
PY
COMMON="--data $T/train.idx --scales 2 --res-blocks 1 --features 8 --batch 64 --threads 1 --seed 3 --log-every 1 --eval-every 0 --eval-images 16 --val-fraction 0.1"
MPIRUN="mpirun -np 2"

run() {   # run LOG CMD...: runs with a 300 s limit; its status
  local log=$1; shift
  timeout 300 "$@" >"$log" 2>&1
}

# ---- 1. two processes = one
run "$T/one.log" $BIN $COMMON --steps 20 --out "$T/one" || { bad "one process failed: $(tail -3 "$T/one.log")"; }
run "$T/two.log" $MPIRUN $BIN $COMMON --steps 20 --out "$T/two" || { bad "mpirun -np 2 failed: $(tail -5 "$T/two.log")"; }
grep -q "2 processes (MPI)" "$T/two.log" || bad "the 2-process run did not say it runs 2 processes"

compare() {   # compare A B LOSS_TOL PARAM_TOL FIRST_STEP: checkpoints and metrics
  python3 - "$@" <<'PY'
import json, struct, sys
a, b, ltol, ptol, first = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
def tensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32": continue
        s, e = v["data_offsets"]
        out[k] = struct.unpack("<%df" % ((e - s) // 4), raw[base + s:base + e])
    return out
def losses(path):
    d = {}
    for line in open(path):
        j = json.loads(line)
        if "train_bpd" in j: d[j["step"]] = j["train_bpd"]
    return d
ta, tb = tensors(a + "/checkpoint.safetensors"), tensors(b + "/checkpoint.safetensors")
la, lb = losses(a + "/metrics.jsonl"), losses(b + "/metrics.jsonl")
free = ()
worst_l = worst_p = 0.0; bad = []
steps = [s for s in sorted(la) if s >= first]
if len(steps) < 5 or any(s not in lb for s in steps): bad.append("metrics: steps %s vs %s" % (sorted(la), sorted(lb)))
for s in steps:
    if s in lb:
        e = abs(la[s] - lb[s]) / abs(la[s]); worst_l = max(worst_l, e)
        if e > ltol: bad.append("loss at step %d: %.9g vs %.9g" % (s, la[s], lb[s]))
nchk = 0; per = []
for k, va in ta.items():
    if k.startswith("train."): continue
    vb = tb[k]
    scale = max(max(abs(x) for x in va), 0.02)   # 0.02 = 20 steps x lr 1e-3: the most Adam moves a parameter
    d = max(abs(x - y) for x, y in zip(va, vb))
    e = d / scale; worst_p = max(worst_p, e); nchk += len(va); per.append((e, k))
    if e > ptol: bad.append("%s: max difference %.3g, largest value %.3g" % (k, d, scale))
per.sort(reverse=True)
print("    worst tensors: " + ", ".join("%s %.1e" % (k, e) for e, k in per[:4]))
print("    %d steps' losses: max relative difference %.2e; %d parameters: max %.2e" % (len(steps), worst_l, nchk, worst_p))
if bad: print("    " + "\n    ".join(bad[:10])); sys.exit(1)
PY
}
if [ $fail -eq 0 ]; then
  if compare "$T/one" "$T/two" 1e-5 1e-5 1; then ok "mpirun -np 2 --batch 64 = one process over 20 steps"
  else bad "2 processes differ from one"; fi
fi

# ---- 2. resume with another process count
run "$T/r21a.log" $MPIRUN $BIN $COMMON --steps 10 --out "$T/r21" &&
run "$T/r21b.log" $BIN $COMMON --resume --steps 20 --out "$T/r21" || bad "2 then 1 processes: $(tail -3 "$T/r21b.log")"
run "$T/r12a.log" $BIN $COMMON --steps 10 --out "$T/r12" &&
run "$T/r12b.log" $MPIRUN $BIN $COMMON --resume --steps 20 --out "$T/r12" || bad "1 then 2 processes: $(tail -3 "$T/r12b.log")"
grep -q "resuming at step 10" "$T/r12b.log" || bad "the 2-process resume did not start at step 10"
if [ $fail -eq 0 ]; then
  compare "$T/one" "$T/r21" 1e-3 1e-2 11 && ok "10 steps on 2 processes, --resume on 1: the same run" || bad "2 -> 1 resume"
  compare "$T/one" "$T/r12" 1e-3 1e-2 11 && ok "10 steps on 1 process, --resume on 2: the same run" || bad "1 -> 2 resume"
fi

# ---- 3. a killed process
$MPIRUN $BIN $COMMON --steps 1000000 --save-every 1 --out "$T/kill" >"$T/kill.log" 2>&1 &
mp=$!
for _ in $(seq 1 600); do [ -f "$T/kill/checkpoint.safetensors" ] && break; sleep 0.1; done
sleep 1.5
victim=$(pgrep -f "realnvp-train.*$T/kill" | grep -v "^$mp\$" | tail -1)
if [ -z "$victim" ] || [ ! -f "$T/kill/checkpoint.safetensors" ]; then
  bad "no checkpoint or process to kill: $(tail -3 "$T/kill.log")"; kill $mp 2>/dev/null
else
  kill -KILL "$victim"
  end=$((SECONDS + 60)); while kill -0 $mp 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if kill -0 $mp 2>/dev/null; then bad "mpirun still running 60 s after a process was killed"; kill -KILL $mp
  else
    wait $mp; st=$?
    [ $st -ne 0 ] && ok "a killed process ends the job (mpirun status $st)" || bad "mpirun exited 0 after a process was killed"
  fi
  pkill -KILL -f "realnvp-train.*$T/kill" 2>/dev/null
  step=$(python3 -c "import json,struct,sys; r=open(sys.argv[1],'rb').read(); n=struct.unpack('<Q',r[:8])[0]; print(json.loads(json.loads(r[8:8+n])['__metadata__']['train_state'])['step'])" "$T/kill/checkpoint.safetensors" 2>/dev/null)
  if [ -n "$step" ] && run "$T/kill2.log" $BIN $COMMON --resume --steps $((step + 2)) --out "$T/kill"; then
    ok "the last checkpoint (step $step) is intact: a 1-process --resume continues from it"
  else bad "the checkpoint after the kill does not resume: $(tail -3 "$T/kill2.log")"; fi
fi
[ $fail -eq 0 ] && echo "test_mpi: all passed" || echo "test_mpi: FAILED"
exit $fail
