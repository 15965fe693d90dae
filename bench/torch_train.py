#!/usr/bin/python3
"""torch_train.py: the Real NVP of docs/model.md in PyTorch, training mode, as the
speed and correctness reference for the C trainer (bench/run_train_bench.sh runs both).

Leaves out the training loop's data order, checkpoints and evaluation: it times steps only
(python/realnvp_torch/train.py is the whole trainer). The model is the PyTorch twin's
(python/realnvp_torch, imported from ../python) in training mode: weight-normalised
convolutions (w = g * v / ||v||, as torch.nn.utils.weight_norm), batch norms with batch
statistics (torch's fused kernel; running averages of the biased variance), the flow batch
norm with batch statistics over the transformed elements (mean and biased variance across N,
H, W) and its log-det, the loss of docs/model.md section 3 in bits/dim. Reuses torch_baseline.py's
OpenBLAS kernel choice.

Run with the Debian python (/usr/bin/python3: python3-torch, python3-numpy).

  [--threads 2] [--batch 64] [--seconds 25] [--min-steps 5] [--warmup 2]
  [--scales 3 --res-blocks 2 --features 32,32,32 --flow-batchnorm 1] [--data DIR|random]
        times training steps: zero grad, loss (bits/dim) + L2 5e-5 on weight_g and scale,
        backward, clip_grad_norm_(100), Adam(lr 1e-3) step; a new batch of dequantized images
        (xt = (v + u) / 256, v random Fashion-MNIST training images, u ~ U[0,1)) before each
        step, outside the timer. JSON: median step time (wall clock), images/s, median CPU time
        of a step (time.process_time: every thread), RSS after setup, peak RSS.
        Initialisation as the C trainer's tr_init_params, from its stream (RealNVP.init_params:
        He-normal v, g = ||v||, out_conv g = 0.01, scale 1, batch norms 1/0).
  --check MODEL --c-bin bin/bench_train [--n 64] [--out FILE.json]
        loads the checkpoint MODEL into the training model, makes a fixed batch (the first n
        Fashion-MNIST test images, noise from numpy seed 0; random pixels without the data
        set), has the C trainer compute its training-mode loss and gradient on the same batch
        (bench_train --check-xt), and compares: loss (float32 and float64 torch) and, per
        trained tensor, ||g_C - g_64|| / max(||g_64||, 1e-3 ||whole g_64||) against torch in
        float64 (and the same for torch in float32, the float32 noise level). Exit status 1
        when the loss differs by more than 1e-4 relative or a tensor's error exceeds both 1e-3
        and 1.5 times torch float32's error on that tensor.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from torch_baseline import openblas_core, openblas_select_core  # noqa: E402
from realnvp_torch.data import find_idx, load_idx  # noqa: E402
from realnvp_torch.model import RealNVP  # noqa: E402
from realnvp_torch.safetensors import read as st_read  # noqa: E402

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

# ---------------------------------------------------------------- helpers


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cur_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)

# ---------------------------------------------------------------- benchmark


def decayed(name):
    return name.endswith(".weight_g") or name.endswith(".scale")


def bench(a, cfg):
    torch.manual_seed(a.seed)
    model = RealNVP(cfg).init_params(a.seed)
    model.train()
    params = dict(model.named_parameters())
    plist = list(params.values())
    l2_params = [p for n, p in params.items() if decayed(n)]
    opt = torch.optim.Adam(plist, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    px = None
    if a.data != "random":
        path = find_idx(a.data, "train-images-idx3-ubyte")
        if path is None:
            raise SystemExit(f"torch_train.py: no train-images-idx3-ubyte[.gz] in {a.data}")
        px = load_idx(path)
    rng = np.random.default_rng(a.seed)
    B, D = a.batch, model.D

    def batch():
        if px is not None:
            v = px[rng.integers(0, px.shape[0], B)].astype(np.float64)
        else:
            v = rng.integers(0, 256, (B, model.C, model.H, model.W)).astype(np.float64)
        return torch.from_numpy((v + rng.random(v.shape)) / 256.0)

    def step(xt):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(xt)
        pen = 5e-5 * sum((p * p).sum() for p in l2_params)
        (loss + pen).backward()
        torch.nn.utils.clip_grad_norm_(plist, 100.0)
        opt.step()
        return float(loss)

    rss_setup = cur_rss_mb()
    times, cpus, first, last, i, start = [], [], None, None, 0, None
    while True:
        if i == a.warmup:
            start = time.perf_counter()
        if i >= a.warmup and len(times) >= a.min_steps and time.perf_counter() - start >= a.seconds:
            break
        xt = batch()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(xt)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if not math.isfinite(loss):
            raise SystemExit(f"torch_train.py: loss {loss} at step {i + 1}")
        first = loss if first is None else first
        last = loss
        if i >= a.warmup:
            times.append(dt)
            cpus.append(dc)
        i += 1
    med = float(np.median(times))
    nparams = sum(p.numel() for p in plist) + sum(
        b.numel() for n, b in model.named_buffers() if "running" in n)
    return {"impl": "torch", "torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(), "openblas_core": openblas_core(),
            "batch": B, "config": cfg, "params": nparams,
            "data": a.data if px is not None else "random pixels",
            "warmup_steps": a.warmup, "steps": len(times), "median_step_s": med,
            "images_per_s": B / med, "median_step_cpu_s": float(np.median(cpus)),
            "cpu_ms_per_image": 1e3 * float(np.median(cpus)) / B, "first_loss": first, "last_loss": last,
            "rss_setup_mb": rss_setup, "peak_rss_mb": peak_rss_mb(), "step_s": times, "step_cpu_s": cpus}

# ---------------------------------------------------------------- check against the C trainer


def check(a):
    meta, t = st_read(a.check)
    cfg = json.loads(meta["config"])
    out_dir = os.path.dirname(os.path.abspath(a.out)) if a.out else os.path.dirname(os.path.abspath(a.check))
    n = a.n
    rng = np.random.default_rng(0)
    path = find_idx(a.data, "t10k-images-idx3-ubyte") if a.data != "random" else None
    if path is not None:
        v = load_idx(path)[:n].astype(np.float64)
        src = path
    else:
        v = rng.integers(0, 256, (n, cfg["channels"], cfg["height"], cfg["width"])).astype(np.float64)
        src = "random pixels"
    xt32 = ((v + rng.random(v.shape)) / 256.0).astype(np.float32)
    xt_path = os.path.join(out_dir, "check_xt.f32")
    grad_path = os.path.join(out_dir, "check_grad_c.safetensors")
    xt32.astype("<f4").tofile(xt_path)
    # the C trainer on the same checkpoint and batch
    c = subprocess.run([a.c_bin, "--model", a.check, "--check-xt", xt_path, "--n", str(n),
                        "--grad-out", grad_path, "--threads", str(a.threads)],
                       capture_output=True, text=True)
    if c.returncode != 0:
        raise SystemExit(f"torch_train.py: {a.c_bin} failed: {c.stderr.strip()}")
    cres = json.loads(c.stdout)
    _, gc = st_read(grad_path)
    res = {"model": a.check, "n": n, "images": src, "c_loss": cres["loss_bits_per_dim"],
           "c_loss_forward_only": cres["loss_forward_only"]}
    xt = torch.from_numpy(xt32.astype(np.float64))   # the same float32 values
    grads = {}
    for dt in (torch.float32, torch.float64):
        m = RealNVP(cfg, t).to(dt)
        m.train()
        params = dict(m.named_parameters())
        loss = m.loss(xt)
        loss.backward()
        tag = "torch32" if dt == torch.float32 else "torch64"
        res[f"{tag}_loss"] = float(loss)
        # weight_g is (o, 1, 1, 1) in torch, (o) in the file
        grads[tag] = {nm: p.grad.detach().double().reshape(-1).numpy() for nm, p in params.items()}
    if set(grads["torch64"]) != set(gc):
        missing = sorted(set(grads["torch64"]) ^ {k[5:] if k.startswith("grad.") else k for k in gc})
        if missing:
            raise SystemExit(f"torch_train.py: gradient tensor sets differ: {missing[:5]}")
    gc = {k[5:]: v.astype(np.float64).reshape(-1) for k, v in gc.items()}
    ref = res["torch64_loss"]
    res["loss_rel_c_vs_torch64"] = abs(res["c_loss"] - ref) / abs(ref)
    res["loss_rel_torch32_vs_torch64"] = abs(res["torch32_loss"] - ref) / abs(ref)
    res["loss_rel_c_vs_torch32"] = abs(res["c_loss"] - res["torch32_loss"]) / abs(res["torch32_loss"])

    # Per tensor: ||g_C - g_64|| / max(||g_64||, 1e-3 ||whole g_64||). The floor is for the
    # tensors whose exact gradient is zero or nearly so (conv biases in front of a batch norm,
    # weight_g of conv_a in front of bn_b: batch norm cancels their effect), where both float32
    # results are pure round-off. The same measure of torch's float32 gradient shows the
    # float32 noise level.
    g64 = grads["torch64"]
    names = sorted(g64)
    gall = float(np.linalg.norm(np.concatenate([g64[k] for k in names])))

    def err(x, k):
        return float(np.linalg.norm(x - g64[k]) / max(np.linalg.norm(g64[k]), 1e-3 * gall))
    per = {k: err(gc[k], k) for k in names}
    per32 = {k: err(grads["torch32"][k], k) for k in names}
    kinds, kinds32 = {}, {}
    for k in names:
        kind = ("bn." if ".bn_" in k else "") + k.split(".")[-1]
        kinds[kind] = max(kinds.get(kind, 0.0), per[k])
        kinds32[kind] = max(kinds32.get(kind, 0.0), per32[k])
    whole_c = np.concatenate([gc[k] for k in names])
    whole_t32 = np.concatenate([grads["torch32"][k] for k in names])
    whole_t = np.concatenate([g64[k] for k in names])
    res["grad_tensors"] = len(names)
    res["grad_norm_torch64"] = gall
    res["grad_rel_all_c"] = float(np.linalg.norm(whole_c - whole_t) / gall)
    res["grad_rel_all_torch32"] = float(np.linalg.norm(whole_t32 - whole_t) / gall)
    res["grad_err_max_c"] = max(per.values())
    res["grad_err_median_c"] = float(np.median(list(per.values())))
    res["grad_err_max_torch32"] = max(per32.values())
    res["grad_err_median_torch32"] = float(np.median(list(per32.values())))
    res["grad_err_max_by_kind_c"] = kinds
    res["grad_err_max_by_kind_torch32"] = kinds32
    res["grad_worst_c"] = sorted(per.items(), key=lambda kv: -kv[1])[:5]
    # C against torch's float32 directly (the same measure, float32 vs float32)
    res["grad_err_max_c_vs_torch32"] = max(
        float(np.linalg.norm(gc[k] - grads["torch32"][k]) / max(np.linalg.norm(g64[k]), 1e-3 * gall))
        for k in names)
    # passes when the loss agrees to 1e-4 and every tensor's gradient is within 1e-3 of float64,
    # or, where float32 itself is not that accurate (small batches, 7x7 batch norms), no worse
    # than 1.5 times torch's own float32 gradient
    res["passed"] = bool(res["loss_rel_c_vs_torch64"] <= 1e-4 and all(
        per[k] <= max(1e-3, 1.5 * per32[k]) for k in names))
    return res

# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--min-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--scales", type=int, default=3)
    ap.add_argument("--res-blocks", type=int, default=2)
    ap.add_argument("--features", default="32,32,32")
    ap.add_argument("--flow-batchnorm", type=int, default=1)
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--data", default=DEFAULT_DATA if os.path.isdir(DEFAULT_DATA) else "random")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--check", metavar="MODEL")
    ap.add_argument("--c-bin", default="bin/bench_train")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", metavar="FILE.json")
    a = ap.parse_args()
    openblas_select_core()
    torch.set_num_threads(a.threads)
    if a.check:
        res = check(a)
    else:
        feats = [int(f) for f in a.features.split(",")]
        if len(feats) == 1:
            feats *= a.scales
        cfg = {"height": 28, "width": 28, "channels": 1, "num_scales": a.scales,
               "res_blocks": a.res_blocks, "features": feats, "alpha": 0.05, "bn_eps": 1e-5,
               "flow_batchnorm": bool(a.flow_batchnorm), "flow_bn_eps": 1e-4, "kernel": a.kernel}
        res = bench(a, cfg)
    s = json.dumps(res, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(s + "\n")
    print(s)
    return 0 if res.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
