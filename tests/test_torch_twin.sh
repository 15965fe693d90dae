#!/usr/bin/env bash
# test_torch_twin.sh: the PyTorch twin (python/realnvp_torch) against the C core and the C trainer.
# Leaves out GPUs (CPU and gloo only) and long training.
#
# Skips (exit 0, with a message) only when /usr/bin/python3 cannot import torch (Debian: python3-torch).
# Checks:
#   1. a model the twin trains 5 steps (synthetic CIFAR-10 batches, 32x32 RGB) is served by the C
#      core: bin/realnvp log-prob and encode (u = 0.5) on PNGs = the twin's log_prob (1e-4 relative)
#      and latents (1e-4 absolute);
#   2. the bundled models/fashion-mnist/model.safetensors in the twin: the same on 28x28 images; and
#      bin/realnvp sample --seed 42 gives the twin's sample(seed=42) (pixels; float32 round-off may
#      move one by 1 at a bin's edge);
#   3. torch.distributed.run with 2 processes (gloo) = 1 process, the same global batch, 10 steps:
#      every step's loss within 1e-5 relative, every tensor within 1e-4 of its scale (max |a - b| <=
#      1e-4 max(max |a|, 0.02)), the same test bits/dim (1e-5);
#   4. the twin = bin/realnvp-train for the same options and seed (8x8 IDX, 10 steps; the same
#      initialisation, data order, noise, flips, and learning-rate schedule: constant to step 5,
#      cosine to 1e-4 at step 10): every step's loss within 1e-5 relative and
#      logged lr within 1e-5 relative (the C trainer's lr checked against the formula at steps 1, 5,
#      8, 10), the test bits/dim within 1e-5, every tensor within 1e-3 of its scale;
#   5. each resumes the other's checkpoint: C 5 steps + twin 5 = twin 5 + C 5 = C 10 (losses and lr
#      1e-5; the schedule, constant until the first part's last step, comes from the checkpoint).
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "test_torch_twin: SKIPPED: $PY cannot import torch (Debian: apt-get install python3-torch)"
  exit 0
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
T=$(mktemp -d /tmp/realnvp-twin.XXXXXX)
trap 'rm -rf "$T"' EXIT
t0=$(date +%s)
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAILED: $*"; fail=1; }
run() {   # run LOG CMD...: runs with a ${LIMIT:-300} s limit; its status
  local log=$1; shift
  timeout "${LIMIT:-300}" "$@" >"$log" 2>&1
}

# ---- data: 512 8x8 grey images (IDX), 160 32x32 RGB images (CIFAR-10 batches), PNGs to score
"$PY" - "$T" <<'PY'
import os, struct, sys
import numpy as np
from realnvp_torch.data import png_write
T = sys.argv[1]
rng = np.random.default_rng(5)

def blobs(n, c, s):
    ii, jj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    out = np.empty((n, c, s, s), np.uint8)
    for k in range(n):
        cx, cy, r = rng.uniform(1, s - 2, 2).tolist() + [rng.uniform(s / 5, s / 2)]
        base = 230 * np.exp(-((ii - cy) ** 2 + (jj - cx) ** 2) / (r * r))
        for ch in range(c):
            out[k, ch] = np.clip(base * rng.uniform(0.5, 1) + rng.uniform(0, 25, (s, s)), 0, 255).astype(np.uint8)
    return out
g = blobs(512, 1, 8)
with open(f"{T}/train.idx", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, 512, 8, 8) + g.tobytes())
os.makedirs(f"{T}/cifar")
rgb = blobs(160, 3, 32)
for name, part in (("data_batch_1.bin", rgb[:128]), ("test_batch.bin", rgb[128:])):
    rec = np.concatenate([np.zeros((len(part), 1), np.uint8), part.reshape(len(part), -1)], axis=1)
    rec.tofile(f"{T}/cifar/{name}")
# images to score: 4 test images, a flat one, one of uniform noise
def pngs(d, imgs):
    os.makedirs(d)
    for i, im in enumerate(imgs):
        png_write(f"{d}/img{i}.png", im)
    np.savez(f"{d}/pixels.npz", **{f"img{i}": im for i, im in enumerate(imgs)})
pngs(f"{T}/rgb", list(rgb[128:132]) + [np.full((3, 32, 32), 128, np.uint8),
                                       rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)])
fm = []
p = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
if os.path.exists(p):
    from realnvp_torch.data import load_idx
    fm = list(load_idx(p)[:6])
pngs(f"{T}/fm", fm + list(blobs(2, 1, 28)) + [rng.integers(0, 256, (1, 28, 28), dtype=np.uint8)])
PY
[ -f "$T/train.idx" ] || { echo "test_torch_twin: FAILED: could not make the test data"; exit 1; }

# compare_c MODEL DIR: the C core's log-prob and encode on DIR/*.png against the twin's
compare_c() {
  local model=$1 dir=$2
  bin/realnvp log-prob --model "$model" --json "$dir"/*.png > "$T/lp.jsonl" 2>"$T/lp.err" || { bad "realnvp log-prob: $(cat "$T/lp.err")"; return; }
  bin/realnvp encode --model "$model" "$dir"/*.png > "$T/enc.json" 2>"$T/enc.err" || { bad "realnvp encode: $(cat "$T/enc.err")"; return; }
  "$PY" - "$model" "$T/lp.jsonl" "$T/enc.json" <<'PY'
import json, os, sys
import numpy as np, torch
from realnvp_torch import load_model
model, meta, _ = load_model(sys.argv[1])
rows = [json.loads(l) for l in open(sys.argv[2])]
enc = json.load(open(sys.argv[3]))
files = enc["files"]
assert [r["file"] for r in rows] == files

pixels = np.load(os.path.join(os.path.dirname(files[0]), "pixels.npz"))   # what the PNGs hold
px = torch.from_numpy(np.stack([pixels[os.path.basename(f)[:-4]] for f in files]))
with torch.no_grad():
    z, lp = model.encode(px)
c_lp = np.array([r["log_prob"] for r in rows])
c_z = np.array(enc["latents"])
rel = float(np.max(np.abs(lp.numpy() - c_lp) / np.abs(c_lp)))
zabs = float(np.max(np.abs(z.numpy().astype(np.float64) - c_z)))
lay = [[p["offset"], p["channels"], p["height"], p["width"]] for p in enc["layout"]]
same_layout = lay == [list(p) for p in model.parts]
print(f"{len(files)} images, log_prob {c_lp.min():.1f} .. {c_lp.max():.1f}: max relative difference {rel:.1e}; "
      f"latents max |z_twin - z_C| {zabs:.1e}; layout {'same' if same_layout else 'DIFFERS'}")
sys.exit(0 if rel <= 1e-4 and zabs <= 1e-4 and same_layout else 1)
PY
}

# ---- 1. a model the twin trained, served by the C core
echo "1. twin-trained model (CIFAR-10 format, 32x32 RGB, 5 steps) in the C core"
if run "$T/t1.log" "$PY" -m realnvp_torch.train --data "$T/cifar" --out "$T/t1" --scales 2 --res-blocks 1 \
     --features 4 --batch 16 --steps 5 --threads 2 --eval-every 0 --log-every 1 --device cpu; then
  grep -q "cifar10" "$T/t1.log" && grep -q "flips on" "$T/t1.log" || bad "the twin did not read CIFAR-10 with flips: $(head -2 "$T/t1.log")"
  if bin/realnvp info "$T/t1/model.safetensors" > "$T/info.txt" 2>&1; then ok "bin/realnvp info loads the twin's model.safetensors ($(grep -c . "$T/info.txt") lines)"
  else bad "bin/realnvp info: $(tail -1 "$T/info.txt")"; fi
  if out=$(compare_c "$T/t1/model.safetensors" "$T/rgb"); then ok "$out"; else bad "$out"; fi
else
  bad "the twin's training failed: $(tail -5 "$T/t1.log")"
fi

# ---- 2. the bundled model in the twin
echo "2. the bundled model (C-trained) in the twin"
if out=$(compare_c models/fashion-mnist/model.safetensors "$T/fm"); then ok "$out"; else bad "$out"; fi

echo "   samples: bin/realnvp sample --seed 42 = the twin's sample(seed=42)"
if bin/realnvp sample --model models/fashion-mnist/model.safetensors -n 16 --temp 0.7 --seed 42 -o "$T/c_grid.png" 2>"$T/s.err" &&
   out=$("$PY" - "$T" <<'PY'
import struct, sys, zlib
import numpy as np, torch
from realnvp_torch import RealNVP
from realnvp_torch.data import png_write_grid

def pixels(b):
    """8-bit grey PNG -> (h, w) uint8: every filter type, one or more IDAT chunks."""
    w, h = struct.unpack(">II", b[16:24])
    pos, idat = 8, b""
    while pos < len(b):
        n = struct.unpack(">I", b[pos:pos + 4])[0]
        if b[pos + 4:pos + 8] == b"IDAT":
            idat += b[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw, prev, rows = zlib.decompress(idat), bytearray(w), []
    for i in range(h):
        f, line = raw[i * (w + 1)], bytearray(raw[i * (w + 1) + 1:(i + 1) * (w + 1)])
        for x in range(w):
            a, up, c = (line[x - 1] if x else 0), prev[x], (prev[x - 1] if x else 0)
            p = a + up - c
            pred = [0, a, up, (a + up) // 2,
                    a if abs(p - a) <= abs(p - up) and abs(p - a) <= abs(p - c) else up if abs(p - up) <= abs(p - c) else c][f]
            line[x] = (line[x] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), np.uint8).reshape(h, w)
T = sys.argv[1]
m, _ = RealNVP.load("models/fashion-mnist/model.safetensors")
with torch.no_grad():
    png_write_grid(f"{T}/t_grid.png", m.sample(16, 0.7, seed=42).numpy())
a, b = pixels(open(f"{T}/c_grid.png", "rb").read()), pixels(open(f"{T}/t_grid.png", "rb").read())
d = np.abs(a.astype(int) - b.astype(int)) if a.shape == b.shape else None
print(f"16 samples, a {a.shape[1]}x{a.shape[0]} grid: " + ("sizes differ" if d is None else
      f"{int((d > 0).sum())} of {a.size} pixels differ, by at most {int(d.max())}"))
sys.exit(0 if d is not None and (d > 0).mean() <= 0.005 and d.max() <= 1 else 1)
PY
); then ok "$out"; else bad "samples: ${out:-$(cat "$T/s.err")}"; fi

# ---- 3. two processes = one
# the schedule: its decay starts after step 5, where section 5's first parts end (theirs: constant)
COMMON="--data $T/train.idx --scales 2 --res-blocks 1 --features 8 --batch 64 --seed 3 --log-every 1 --eval-every 0 --eval-images 32 --val-fraction 0.1 --lr-schedule cosine --decay-start 5 --lr-min 1e-4"
# compare A B LOSS_TOL PARAM_TOL [EXPECT]: the runs' metrics.jsonl (every step's train_bpd and lr, test_bpd) and
# checkpoints; EXPECT: a JSON object {step: lr} that B's lr must match (1e-5 relative, as the lr of A and B)
compare() {
  "$PY" - "$@" <<'PY'
import json, sys
import numpy as np
from realnvp_torch import read_safetensors
a, b, ltol, ptol = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
expect = {int(k): v for k, v in json.loads(sys.argv[5]).items()} if len(sys.argv) > 5 else {}
def metrics(d):
    tr, lr, te = {}, {}, None
    for l in open(f"{d}/metrics.jsonl"):
        j = json.loads(l)
        if j.get("train_bpd") is not None:
            tr[j["step"]] = j["train_bpd"]
            lr[j["step"]] = j["lr"]
        if "test_bpd" in j:
            te = j["test_bpd"]
    return tr, lr, te
(ta, la, ea), (tb, lb, eb) = metrics(a), metrics(b)
if sorted(ta) != sorted(tb) or not ta:
    print(f"the runs logged different steps: {sorted(ta)} vs {sorted(tb)}"); sys.exit(1)
bad_lr = [(s, la[s], lb[s]) for s in sorted(la) if abs(la[s] - lb[s]) > 1e-5 * lb[s]]
bad_lr += [(s, lb.get(s), v) for s, v in sorted(expect.items()) if s not in lb or abs(lb[s] - v) > 1e-5 * v]
if bad_lr:
    print("the logged lr differs (step, lr, lr): " + ", ".join(f"{s}: {x} {y}" for s, x, y in bad_lr)); sys.exit(1)
lrel = max(abs(ta[s] - tb[s]) / abs(tb[s]) for s in ta)
erel = abs(ea - eb) / abs(eb)
_, pa = read_safetensors(f"{a}/checkpoint.safetensors")
_, pb = read_safetensors(f"{b}/checkpoint.safetensors")
model = [k for k in pb if not k.startswith("train.")]
if sorted(k for k in pa if not k.startswith("train.")) != sorted(model):
    print("the checkpoints hold different tensors"); sys.exit(1)
worst = max((float(np.max(np.abs(pa[k] - pb[k]))) / max(float(np.max(np.abs(pb[k]))), 0.02), k) for k in model)
print(f"{len(ta)} steps: lr the same ({' '.join(f'{lb[s]:.3g}' for s in sorted(lb))}), "
      f"loss max relative difference {lrel:.1e}, test bits/dim {ea:.6f} vs {eb:.6f} "
      f"({erel:.1e}); {len(model)} tensors, worst {worst[0]:.1e} of its scale ({worst[1]})")
sys.exit(0 if lrel <= ltol and erel <= ltol and worst[0] <= ptol else 1)
PY
}
echo "3. torch.distributed.run --nproc_per_node 2 (gloo) = one process"
run "$T/one.log" "$PY" -m realnvp_torch.train $COMMON --threads 1 --steps 10 --out "$T/one" || bad "one process failed: $(tail -5 "$T/one.log")"
# --redirects 1 --tee 1: Debian's torch 1.13 on Python 3.11 fails with torchrun's default "0" (Std.from_str);
# a free port of our own, so that another run on the machine does not meet this one
# On a time-out the workers first print their Python stacks (SIGUSR1, faulthandler) into the log, and
# the log's end, the processes and the sockets are shown: where it hung
two() {
  local port pid i
  port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  rm -rf "$T/two"
  "$PY" -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "$port" \
      --redirects 1 --tee 1 -m realnvp_torch.train $COMMON --threads 1 --steps 10 --out "$T/two" >"$T/two.log" 2>&1 &
  pid=$!
  for ((i = 0; i < ${TWIN_TWO_LIMIT:-180} * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" && return 0
      tail -30 "$T/two.log" | sed 's/^/    | /'
      return 1
    fi
    sleep 0.1
  done
  echo "  the 2-process run did not end within ${TWIN_TWO_LIMIT:-180} s; its workers' stacks, the processes and sockets:"
  pkill -USR1 -P "$pid" -f realnvp_torch.train
  sleep 3
  ps -o pid,ppid,stat,etime,time,args -e | grep -E "realnvp|torch" | grep -v grep | cut -c1-160 | sed 's/^/    /'
  ss -tanp 2>/dev/null | grep -c . | sed 's/^/    sockets: /'
  ss -s 2>/dev/null | sed -n 2p | sed 's/^/    /'
  kill -TERM "$pid" 2>/dev/null; sleep 5; pkill -KILL -P "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  tail -150 "$T/two.log" | sed "s/^/    | /"
  return 1
}
# Debian's torch 1.13 (gloo) has, rarely and only under heavy load, left both workers hanging after their
# last step (in its barrier/teardown), until the time limit: such a run is started once more, said here;
# the comparison below is the same either way, and a second failure fails the test
if ! two; then
  echo "  note: the 2-process run failed or did not finish within ${TWIN_TWO_LIMIT:-180} s (above); once more"
  two || bad "2 processes failed twice (above)"
fi
grep -q "2 processes (torch.distributed, gloo)" "$T/two.log" || bad "the 2-process run did not say it ran 2 processes: $(head -5 "$T/two.log")"
if out=$(compare "$T/two" "$T/one" 1e-5 1e-4); then ok "$out"; else bad "$out"; fi

# ---- 4. the twin = the C trainer
echo "4. the twin = bin/realnvp-train (same options and seed)"
run "$T/c.log" bin/realnvp-train $COMMON --threads 1 --steps 10 --out "$T/c" || bad "bin/realnvp-train failed: $(tail -3 "$T/c.log")"
# C's lr by the formula: 1e-3 to step 5, then 1e-4 + 9e-4 (1 + cos(pi (t - 5) / 5)) / 2
LR_EXPECT='{"1": 1e-3, "5": 1e-3, "8": 4.109424e-4, "10": 1e-4}'
if out=$(compare "$T/one" "$T/c" 1e-5 1e-3 "$LR_EXPECT"); then ok "$out"; else bad "$out"; fi

# ---- 5. resuming each other's checkpoints
echo "5. --resume across the two trainers"
run "$T/r1.log" bin/realnvp-train $COMMON --threads 1 --steps 5 --out "$T/c_then_py" &&
  run "$T/r2.log" "$PY" -m realnvp_torch.train --out "$T/c_then_py" --resume --steps 10 || bad "C then twin failed: $(tail -3 "$T/r2.log")"
if out=$(compare "$T/c_then_py" "$T/c" 1e-5 1e-3); then ok "C 5 steps, twin --resume to 10: $out"; else bad "C then twin: $out"; fi
run "$T/r3.log" "$PY" -m realnvp_torch.train $COMMON --threads 1 --steps 5 --out "$T/py_then_c" &&
  run "$T/r4.log" bin/realnvp-train --out "$T/py_then_c" --resume --steps 10 || bad "twin then C failed: $(tail -3 "$T/r4.log")"
if out=$(compare "$T/py_then_c" "$T/c" 1e-5 1e-3); then ok "twin 5 steps, C --resume to 10: $out"; else bad "twin then C: $out"; fi

echo "test_torch_twin: $([ $fail = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - t0 )) s"
exit $fail
