#!/usr/bin/python3
"""torch_train.py: the Real NVP of docs/model.md in PyTorch, training mode, as the
speed and correctness reference for the C trainer (bench/run_train_bench.sh runs both).

Leaves out the training loop's data order, checkpoints and evaluation: it times steps only.
Reuses torch_baseline.py's layout helpers, squeeze/split, safetensors reader and OpenBLAS
kernel choice; the modules here are trainable: weight-normalised convolutions
(torch.nn.utils.weight_norm: w = g * v / ||v||), BatchNorm2d in training mode (batch
statistics), the flow batch norm with batch statistics over the transformed elements (mean
and biased variance across N, H, W) and its log-det, the loss of docs/model.md section 3 in bits/dim.

Run with the Debian python (/usr/bin/python3: python3-torch, python3-numpy).

  [--threads 2] [--batch 64] [--seconds 25] [--min-steps 5] [--warmup 2]
  [--scales 3 --res-blocks 2 --features 32,32,32 --flow-batchnorm 1] [--data DIR|random]
        times training steps: zero grad, loss (bits/dim) + L2 5e-5 on weight_g and scale,
        backward, clip_grad_norm_(100), Adam(lr 1e-3) step; a new batch of dequantized images
        (xt = (v + u) / 256, v random Fashion-MNIST training images, u ~ U[0,1)) before each
        step, outside the timer. JSON: median step time (wall clock), images/s, median CPU time
        of a step (time.process_time: every thread), RSS after setup, peak RSS.
        Initialisation as the C trainer's tr_init_params (He-normal v, g = ||v||, out_conv
        g = 0.01, scale 1, batch norms 1/0).
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
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_baseline import (coupling_layout, ct_cin, openblas_core, openblas_select_core,  # noqa: E402
                            split_indices, squeeze, st_read)

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"

# ---------------------------------------------------------------- modules (training mode)


class WNConv(nn.Module):
    """A convolution with weight normalisation over (in, kh, kw) of each output channel; its
    parameters are named like the tensors of docs/model.md 5.4: weight_v, weight_g, bias."""

    def __init__(self, cin, cout, k, gen, g=None):
        super().__init__()
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)
        with torch.no_grad():
            K = cin * k * k
            conv.weight.copy_(torch.randn(cout, cin, k, k, generator=gen) * math.sqrt(2.0 / K))
            conv.bias.zero_()
        self.conv = nn.utils.weight_norm(conv, name="weight", dim=0)
        if g is not None:
            with torch.no_grad():
                self.conv.weight_g.fill_(g)

    def forward(self, x):
        return self.conv(x)

    def load(self, t, p):
        with torch.no_grad():
            self.conv.weight_v.copy_(torch.from_numpy(t[p + ".weight_v"]))
            self.conv.weight_g.copy_(torch.from_numpy(t[p + ".weight_g"]).reshape(-1, 1, 1, 1))
            self.conv.bias.copy_(torch.from_numpy(t[p + ".bias"]))

    def named(self, p):
        return {p + ".weight_v": self.conv.weight_v, p + ".weight_g": self.conv.weight_g,
                p + ".bias": self.conv.bias}


def load_bn(bn, t, p):
    with torch.no_grad():
        for f in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, f).copy_(torch.from_numpy(t[f"{p}.{f}"]))


class ResBlock(nn.Module):
    def __init__(self, Fs, k, eps, gen):
        super().__init__()
        self.bn_a = nn.BatchNorm2d(Fs, eps=eps, momentum=0.1)
        self.conv_a = WNConv(Fs, Fs, k, gen)
        self.bn_b = nn.BatchNorm2d(Fs, eps=eps, momentum=0.1)
        self.conv_b = WNConv(Fs, Fs, k, gen)

    def forward(self, h):
        return h + self.conv_b(F.relu(self.bn_b(self.conv_a(F.relu(self.bn_a(h))))))


class STNet(nn.Module):
    def __init__(self, cin, Fs, cout, K, k, eps, gen):
        super().__init__()
        self.in_conv = WNConv(cin, Fs, k, gen)
        self.blocks = nn.ModuleList([ResBlock(Fs, k, eps, gen) for _ in range(K)])
        self.bn_out = nn.BatchNorm2d(Fs, eps=eps, momentum=0.1)
        self.out_conv = WNConv(Fs, cout, 1, gen, g=0.01)

    def forward(self, x):
        h = self.in_conv(x)
        for b in self.blocks:
            h = b(h)
        return self.out_conv(F.relu(self.bn_out(h)))


class Coupling(nn.Module):
    """One coupling (docs/model.md 2.3 / 2.4) and its flow batch norm (2.5) in training mode.
    forward: x -> (y, log-det per image)."""

    def __init__(self, lay, cfg, gen):
        super().__init__()
        self.kind, self.parity = lay["kind"], lay["parity"]
        C, H, W = lay["C"], lay["H"], lay["W"]
        self.Ct, Cin = ct_cin(lay)
        Fs = cfg["features"][lay["s"]]
        self.net = STNet(Cin, Fs, 2 * self.Ct, cfg["res_blocks"], cfg.get("kernel", 3),
                         cfg["bn_eps"], gen)
        self.scale = nn.Parameter(torch.ones(self.Ct))
        self.fbn = bool(cfg["flow_batchnorm"])
        self.fbn_eps = cfg["flow_bn_eps"]
        self.register_buffer("fbn_mean", torch.zeros(self.Ct))
        self.register_buffer("fbn_var", torch.ones(self.Ct))
        if self.kind == "checker":
            i = torch.arange(H).reshape(H, 1)
            j = torch.arange(W).reshape(1, W)
            b = ((i + j + self.parity) % 2 == 0).float().reshape(1, 1, H, W)
            self.register_buffer("mask", b)
            self.register_buffer("nmask", 1.0 - b)
            self.n_trans = int((b == 0).sum())
        else:
            self.n_trans = H * W

    def _st(self, xin):
        o = self.net(xin)
        return self.scale.view(1, -1, 1, 1) * torch.tanh(o[:, :self.Ct]), o[:, self.Ct:]

    def _fbn(self, v, nb):
        """Batch statistics over the transformed elements (nb: their mask, or None for all).
        Returns the normalised v and the log-det per image."""
        dims = (0, 2, 3)
        cnt = v.shape[0] * self.n_trans
        if nb is None:
            mean = v.mean(dim=dims)
            var = (v - mean.view(1, -1, 1, 1)).square().mean(dim=dims)
        else:
            mean = (v * nb).sum(dim=dims) / cnt
            var = ((v - mean.view(1, -1, 1, 1)) * nb).square().sum(dim=dims) / cnt
        if self.training:
            with torch.no_grad():
                self.fbn_mean.mul_(0.9).add_(0.1 * mean)
                self.fbn_var.mul_(0.9).add_(0.1 * var)
        inv = torch.rsqrt(var + self.fbn_eps)
        out = (v - mean.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
        ld = -0.5 * self.n_trans * torch.log(var + self.fbn_eps).sum()
        return out, ld

    def forward(self, x):
        if self.kind == "checker":
            b, nb = self.mask, self.nmask
            s, t = self._st(torch.cat([x * b, b.expand(x.shape[0], 1, -1, -1)], dim=1))
            y = b * x + nb * (x * torch.exp(s) + t)
            ld = (s * nb).sum(dim=(1, 2, 3))
            if self.fbn:
                yn, l2 = self._fbn(y, nb)
                y = b * y + nb * yn
                ld = ld + l2
            return y, ld
        h = x.shape[1] // 2
        cond, trans = (x[:, :h], x[:, h:]) if self.parity == 0 else (x[:, h:], x[:, :h])
        s, t = self._st(cond)
        trans = trans * torch.exp(s) + t
        ld = s.sum(dim=(1, 2, 3))
        if self.fbn:
            trans, l2 = self._fbn(trans, None)
            ld = ld + l2
        y = torch.cat([cond, trans] if self.parity == 0 else [trans, cond], dim=1)
        return y, ld


class TrainRealNVP(nn.Module):
    def __init__(self, cfg, seed=1):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.S = cfg["num_scales"]
        self.C, self.H, self.W = cfg["channels"], cfg["height"], cfg["width"]
        self.D = self.C * self.H * self.W
        self.alpha = cfg["alpha"]
        self.flow = nn.ModuleList([Coupling(l, cfg, gen) for l in coupling_layout(cfg)])
        self.keeps, self.facts = [], []
        C = self.C
        for _ in range(self.S - 1):
            keep, fact, _ = split_indices(C)
            self.keeps.append(torch.tensor(keep))
            self.facts.append(torch.tensor(fact))
            C *= 2

    def named_spec_params(self):
        """{tensor name (docs/model.md 5.4): parameter} of every trained tensor."""
        out = {}
        for k, c in enumerate(self.flow):
            p = f"flow.{k}.net"
            out.update(c.net.in_conv.named(p + ".in_conv"))
            for j, b in enumerate(c.net.blocks):
                for nm in ("bn_a", "bn_b"):
                    bn = getattr(b, nm)
                    out[f"{p}.blocks.{j}.{nm}.weight"] = bn.weight
                    out[f"{p}.blocks.{j}.{nm}.bias"] = bn.bias
                out.update(b.conv_a.named(f"{p}.blocks.{j}.conv_a"))
                out.update(b.conv_b.named(f"{p}.blocks.{j}.conv_b"))
            out[p + ".bn_out.weight"] = c.net.bn_out.weight
            out[p + ".bn_out.bias"] = c.net.bn_out.bias
            out.update(c.net.out_conv.named(p + ".out_conv"))
            out[f"flow.{k}.scale"] = c.scale
        return out

    def load(self, t):
        """Parameters and running statistics from a checkpoint's tensors (docs/model.md names)."""
        for k, c in enumerate(self.flow):
            p = f"flow.{k}.net"
            c.net.in_conv.load(t, p + ".in_conv")
            for j, b in enumerate(c.net.blocks):
                load_bn(b.bn_a, t, f"{p}.blocks.{j}.bn_a")
                load_bn(b.bn_b, t, f"{p}.blocks.{j}.bn_b")
                b.conv_a.load(t, f"{p}.blocks.{j}.conv_a")
                b.conv_b.load(t, f"{p}.blocks.{j}.conv_b")
            load_bn(c.net.bn_out, t, p + ".bn_out")
            c.net.out_conv.load(t, p + ".out_conv")
            with torch.no_grad():
                c.scale.copy_(torch.from_numpy(t[f"flow.{k}.scale"]))
                if c.fbn:
                    c.fbn_mean.copy_(torch.from_numpy(t[f"flow.{k}.flow_bn.running_mean"]))
                    c.fbn_var.copy_(torch.from_numpy(t[f"flow.{k}.flow_bn.running_var"]))

    def forward(self, xt):
        """xt (N, C, H, W) float64 dequantized images in (0, 1) -> loss: the batch mean of
        -log_prob in bits/dim (docs/model.md section 3), with batch statistics in training mode."""
        N = xt.shape[0]
        a = self.alpha
        p = a + (1 - 2 * a) * xt
        y = (torch.log(p) - torch.log1p(-p)).to(self.dtype)
        lpre = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).sum(dim=(1, 2, 3))
        ld = lpre
        h, k, zs = y, 0, []
        for s in range(self.S):
            n_here = 6 if s < self.S - 1 else 4
            for i in range(n_here):
                if s < self.S - 1 and i == 3:
                    h = squeeze(h)
                h, l = self.flow[k](h)
                ld = ld + l.to(torch.float64)
                k += 1
            if s < self.S - 1:
                zs.append(h[:, self.facts[s]].reshape(N, -1))
                h = h[:, self.keeps[s]]
            else:
                zs.append(h.reshape(N, -1))
        z = torch.cat(zs, dim=1).to(torch.float64)
        logpz = -0.5 * (z * z).sum(dim=1) - 0.5 * self.D * math.log(2 * math.pi)
        log_prob = logpz + ld - self.D * math.log(256.0)
        return (-log_prob / (self.D * math.log(2.0))).mean()

    @property
    def dtype(self):
        return self.flow[0].scale.dtype

# ---------------------------------------------------------------- data


def load_idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        buf = f.read()
    magic, n, h, w = np.frombuffer(buf[:16], dtype=">u4")
    if magic != 0x803:
        raise ValueError(f"{path}: not an IDX image file (magic {magic:#x})")
    return np.frombuffer(buf[16:16 + n * h * w], dtype=np.uint8).reshape(n, 1, h, w)


def find_idx(d, stem):
    for suf in (".gz", ""):
        p = os.path.join(d, stem + suf)
        if os.path.exists(p):
            return p
    return None


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
    model = TrainRealNVP(cfg, a.seed)
    model.train()
    params = model.named_spec_params()
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
        loss = model(xt)
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
        b.numel() for n, b in model.named_buffers() if "running" in n or "fbn_" in n)
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
        m = TrainRealNVP(cfg).to(dt)
        m.load(t)
        m.train()
        params = m.named_spec_params()
        loss = m(xt)
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
