#!/usr/bin/python3
"""torch_baseline.py: an independent PyTorch implementation of the Real NVP model of
docs/model.md, inference only, used as the speed and accuracy reference for the
C core (bench/run_core_bench.sh runs both side by side).

It shares no code with the C library: the model, the safetensors reader and writer and the
PNG writer are the PyTorch twin's (python/realnvp_torch, imported from ../python) in eval mode
(running statistics; weight norm computed in double once and kept while the weights do not
change; kernel sizes read from the weights), NCHW tensors. This script adds the timing, the
OpenBLAS kernel choice, random checkpoints, the check images and the self-test.

Run with the Debian python (/usr/bin/python3: python3-torch, python3-numpy).

  --model PATH --threads 2 --batches 1,16,64 --iters K [--seconds S] [--json]
        images/s (median over at least K timed calls, and at least S seconds) of log_prob,
        encode, decode, sample at each batch size; torch's version and threads. Eager mode
        (the modules as built); --jit: traced, frozen, optimize_for_inference (oneDNN)
  --model PATH --check random|IMG_DIR --out FILE.json [--write-images DIR] [--z-out FILE]
        log_prob (u = 0.5) of a deterministic image set (random: numpy seed 0, see
        check_images); writes JSON (and, with --write-images, the images as images.u8 and
        PNGs) so the C core can be scored on the same pixels
  --init-random PATH --config JSON [--seed N]
        writes a random checkpoint in the docs/model.md format whose couplings all do real work
  --selftest
        invertibility and log-det-vs-autograd-Jacobian checks on tiny configs
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from realnvp_torch.data import png_write  # noqa: E402
from realnvp_torch.model import RealNVP, coupling_layout, ct_cin, squeeze, unsqueeze  # noqa: E402
from realnvp_torch.model import load_model as rt_load_model  # noqa: E402
from realnvp_torch.safetensors import write as st_write  # noqa: E402

# ---------------------------------------------------------------- OpenBLAS kernels

_GENERIC_CORES = {"prescott", "core2", "nehalem", "unknown", "katmai", "atom"}


def openblas_core():
    """The kernel set of the OpenBLAS that torch loaded (Debian's torch takes its BLAS from
    libblas.so.3 = OpenBLAS; it runs the convolutions oneDNN does not take), or None."""
    import ctypes
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        return None


def openblas_select_core():
    """The same treatment the C core gives itself (rnvp_blas_select_core): on a CPU that
    OpenBLAS does not recognise it falls back to SSE3 kernels; if the CPU has AVX2 and FMA,
    re-execute with OPENBLAS_CORETYPE=Haswell. Skipped when OPENBLAS_CORETYPE or
    REALNVP_NO_REEXEC is set, so the comparison stays like for like."""
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("REALNVP_NO_REEXEC"):
        return
    core = openblas_core()
    if core is None or core.lower() not in _GENERIC_CORES:
        return
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return
    if "avx2" in flags and "fma" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
        os.execv(sys.executable, [sys.executable] + sys.argv)

# ---------------------------------------------------------------- the model (python/realnvp_torch)

def load_model(path):
    """(model in eval mode, metadata, tensors) of a checkpoint: the PyTorch twin's RealNVP."""
    return rt_load_model(path)


# ---------------------------------------------------------------- random checkpoints

def random_tensors(cfg, seed, kernel=3):
    """Random weights in the docs/model.md layout that make every coupling do real work: unit-gain
    convs, non-trivial batch norm statistics, out_conv big enough that s and t matter."""
    rng = np.random.default_rng(seed)
    t = {}
    K = cfg["res_blocks"]
    for k, c in enumerate(coupling_layout(cfg)):
        Fs = cfg["features"][c["s"]]
        Ct, Cin = ct_cin(c)
        p = f"flow.{k}.net"

        def conv(name, o, i, ks, gain):
            t[name + ".weight_v"] = rng.standard_normal((o, i, ks, ks)).astype(np.float32)
            t[name + ".weight_g"] = (gain * rng.uniform(0.5, 1.5, o)).astype(np.float32)
            t[name + ".bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)

        def bn(name, n):
            t[name + ".weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            t[name + ".bias"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
            t[name + ".running_mean"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
            t[name + ".running_var"] = rng.uniform(0.5, 2.0, n).astype(np.float32)
        conv(p + ".in_conv", Fs, Cin, kernel, 1.0)
        for j in range(K):
            bn(f"{p}.blocks.{j}.bn_a", Fs)
            conv(f"{p}.blocks.{j}.conv_a", Fs, Fs, kernel, 1.0)
            bn(f"{p}.blocks.{j}.bn_b", Fs)
            conv(f"{p}.blocks.{j}.conv_b", Fs, Fs, kernel, 0.3)
        bn(p + ".bn_out", Fs)
        conv(p + ".out_conv", 2 * Ct, Fs, 1, 0.3)
        t[f"flow.{k}.scale"] = rng.uniform(0.3, 1.0, Ct).astype(np.float32)
        if cfg["flow_batchnorm"]:
            t[f"flow.{k}.flow_bn.running_mean"] = (0.1 * rng.standard_normal(Ct)).astype(np.float32)
            t[f"flow.{k}.flow_bn.running_var"] = rng.uniform(0.5, 2.0, Ct).astype(np.float32)
    return t


def write_random_checkpoint(path, cfg, seed):
    t = random_tensors(cfg, seed)
    meta = {"format": "realnvp", "version": "1",
            "config": json.dumps(cfg, separators=(",", ":")),
            "description": f"random weights from torch_baseline.py --init-random, seed {seed}"}
    st_write(path, t, meta)

# ---------------------------------------------------------------- images

def check_images(C, H, W, n=16):
    """A deterministic image set from numpy seed 0: n/2 uniform-noise images and n/2 smooth
    ones (sums of random low-frequency waves), uint8 (n, C, H, W)."""
    rng = np.random.default_rng(0)
    out = np.empty((n, C, H, W), dtype=np.uint8)
    half = n // 2
    out[:half] = rng.integers(0, 256, size=(half, C, H, W), dtype=np.uint8)
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for m in range(half, n):
        for c in range(C):
            img = np.zeros((H, W))
            for _ in range(3):
                fi, fj = rng.uniform(0, 3, 2)
                ph = rng.uniform(0, 2 * np.pi)
                img += np.cos(2 * np.pi * (fi * ii / H + fj * jj / W) + ph)
            img = (img - img.min()) / max(img.max() - img.min(), 1e-9)
            out[m, c] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def read_png_dir(d, C, H, W):
    from PIL import Image  # python3-pil; only for --check DIR
    names = sorted(f for f in os.listdir(d) if f.lower().endswith(".png"))
    imgs = []
    for f in names:
        im = Image.open(os.path.join(d, f))
        im = im.convert("L" if C == 1 else "RGB")
        a = np.asarray(im, dtype=np.uint8)
        if a.shape[:2] != (H, W):
            raise ValueError(f"{f}: {a.shape[1]}x{a.shape[0]}, model wants {W}x{H}")
        imgs.append(a.reshape(H, W, C).transpose(2, 0, 1))
    return names, np.stack(imgs)

# ---------------------------------------------------------------- benchmark

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Enc(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, px):
        return self.m.encode(px)


class _Dec(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, z):
        return self.m.decode(z)


def jit_compile(model, px, z):
    """encode and decode traced for this batch size, frozen and passed through
    torch.jit.optimize_for_inference (oneDNN convolutions for every shape, batch norms folded
    into the convolutions where the graph allows). Checked against eager mode."""
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(_Enc(model).eval(), px)))
        dec = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(_Dec(model).eval(), z)))
        z0, lp0 = model.encode(px)
        z1, lp1 = enc(px)
        rel = float(((lp1 - lp0).abs() / lp0.abs()).max())
        if rel > 1e-5 or not torch.equal(dec(z0), model.decode(z0)):
            raise RuntimeError(f"jit-compiled model disagrees with eager mode (log_prob rel {rel:.1e})")
    return enc, dec


def bench(model, batches, iters, warmup=2, want=("log_prob", "encode", "decode", "sample"),
          seconds=0.0, jit=False):
    """Per op and batch: `warmup` calls, then timed calls until at least `iters` calls and
    `seconds` seconds; the median call time gives images/s."""
    C, H, W, D = model.C, model.H, model.W, model.D
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n in batches:
        rng = np.random.default_rng(n)
        px = torch.from_numpy(rng.integers(0, 256, size=(n, C, H, W), dtype=np.uint8))
        z = torch.randn(n, D, generator=gen)
        if jit:
            enc, dec = jit_compile(model, px, z)
            ops = {
                "log_prob": lambda: enc(px)[1],
                "encode": lambda: enc(px),
                "decode": lambda: dec(z),
                "sample": lambda: dec(torch.randn(n, D, generator=gen)),
            }
        else:
            ops = {
                "log_prob": lambda: model.log_prob(px),
                "encode": lambda: model.encode(px),
                "decode": lambda: model.decode(z),
                "sample": lambda: model.sample(n, 1.0, generator=gen),
            }
        for op, fn in ops.items():
            if op not in want:
                continue
            for _ in range(warmup):
                fn()
            times = []
            start = time.perf_counter()
            while len(times) < iters or time.perf_counter() - start < seconds:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            rows.append({"op": op, "batch": n, "images_per_s": n / med,
                         "ms_per_batch": med * 1e3, "repeats": len(times)})
    return rows

# ---------------------------------------------------------------- self-test

def selftest():
    """Invertibility and log-det checks in float64 on tiny configs."""
    torch.manual_seed(0)
    ok = True
    cfgs = [
        {"height": 4, "width": 4, "channels": 1, "num_scales": 2, "res_blocks": 1,
         "features": [4, 4], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": True,
         "flow_bn_eps": 1e-4},
        {"height": 4, "width": 4, "channels": 3, "num_scales": 2, "res_blocks": 2,
         "features": [5, 6], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": False,
         "flow_bn_eps": 1e-4},
        {"height": 8, "width": 4, "channels": 1, "num_scales": 3, "res_blocks": 1,
         "features": [3, 4, 5], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": True,
         "flow_bn_eps": 1e-4},
    ]
    for ci, cfg in enumerate(cfgs):
        m = RealNVP(cfg, random_tensors(cfg, 7 + ci)).double().eval()
        C, H, W, D = m.C, m.H, m.W, m.D
        with torch.no_grad():
            # float flow invertibility
            y = torch.randn(3, C, H, W, dtype=torch.float64)
            z, ld = m.flow_forward(y)
            y2 = m.flow_inverse(z)
            err = float((y2 - y).abs().max())
            print(f"cfg{ci}: flow inverse max |y - f^-1(f(y))| = {err:.2e}")
            ok &= err < 1e-9
            # every coupling does real work: it moves its input
            h = y
            moved = []
            for cp in m.flow:
                if cp.kind == "channel":
                    break
                h2, _ = cp(h)
                moved.append(float((h2 - h).abs().mean()))
                h = h2
            print(f"cfg{ci}: mean |coupling(x) - x| of the first couplings: "
                  + " ".join(f"{v:.3f}" for v in moved))
            ok &= min(moved) > 1e-2
            # pixels round-trip through encode/decode
            px = torch.from_numpy(np.random.default_rng(ci).integers(0, 256, (5, C, H, W), dtype=np.uint8))
            zz, lp = m.encode(px)
            back = m.decode(zz)
            ok &= bool(torch.equal(back, px))
            print(f"cfg{ci}: decode(encode(x)) == x: {bool(torch.equal(back, px))}")
            # squeeze/split bookkeeping
            t = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
            sq = squeeze(t)
            ok &= bool(torch.equal(unsqueeze(sq), t))
            ok &= float(sq[1, 1 * 4 + 1 * 2 + 1, 1, 2]) == float(t[1, 1, 3, 5])
        # log-det vs autograd Jacobian, per image
        for i in range(2):
            y0 = torch.randn(1, C, H, W, dtype=torch.float64)
            fun = lambda v: m.flow_forward(v.reshape(1, C, H, W))[0].reshape(-1)
            J = torch.autograd.functional.jacobian(fun, y0.reshape(-1))
            sign, logabs = torch.linalg.slogdet(J)
            with torch.no_grad():
                ld = float(m.flow_forward(y0)[1][0])
            d = abs(float(logabs) - ld)
            print(f"cfg{ci} img{i}: log|det J| autograd {float(logabs):.10f}  flow {ld:.10f}  diff {d:.1e}")
            ok &= d < 1e-8 and float(sign) > 0
        # pre-processing log-det vs autograd (diagonal Jacobian)
        px = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (1, C, H, W), dtype=np.uint8))
        xt = ((px.double() + 0.5) / 256).requires_grad_(True)
        a = m.alpha
        p = a + (1 - 2 * a) * xt
        yy = torch.log(p) - torch.log(1 - p)
        g, = torch.autograd.grad(yy.sum(), xt)
        lpre_ad = float(torch.log(g).sum())
        _, lpre = m.preprocess(px)
        d = abs(lpre_ad - float(lpre[0]))
        print(f"cfg{ci}: L_pre autograd {lpre_ad:.10f} closed form {float(lpre[0]):.10f} diff {d:.1e}")
        ok &= d < 1e-9
        # log_prob assembled independently
        with torch.no_grad():
            z, lflow = m.flow_forward(m.preprocess(px)[0])
            ref = (torch.distributions.Normal(0.0, 1.0).log_prob(z).sum() + lflow[0] + lpre[0]
                   - D * math.log(256))
            d = abs(float(ref) - float(m.log_prob(px)[0]))
            print(f"cfg{ci}: log_prob {float(ref):.8f} vs Normal.log_prob assembly, diff {d:.1e}")
            ok &= d < 1e-8
    # float32 round trip on the benchmark config
    cfg = {"height": 28, "width": 28, "channels": 1, "num_scales": 3, "res_blocks": 4,
           "features": [32, 64, 64], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": True,
           "flow_bn_eps": 1e-4}
    m = RealNVP(cfg, random_tensors(cfg, 1)).eval()
    with torch.no_grad():
        px = torch.from_numpy(check_images(1, 28, 28))
        z, lp = m.encode(px)
        back = m.decode(z)
        nbad = int((back != px).sum())
        m64 = RealNVP(cfg, random_tensors(cfg, 1)).double().eval()
        lp64 = m64.log_prob(px)
        rel = float(((lp - lp64).abs() / lp64.abs()).max())
    print(f"bench28 float32: decode(encode(x)) pixel mismatches {nbad} of {px.numel()}; "
          f"log_prob float32 vs float64 max rel diff {rel:.1e}")
    ok &= nbad == 0 and rel < 1e-5
    print("selftest", "PASSED" if ok else "FAILED")
    return 0 if ok else 1

# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="time each op and batch for at least this long (besides --iters)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--jit", action="store_true",
                    help="time torch.jit.trace + freeze + optimize_for_inference instead of eager mode")
    ap.add_argument("--ops", default="log_prob,encode,decode,sample")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--check", metavar="random|IMG_DIR")
    ap.add_argument("--check-raw", metavar="FILE.u8",
                    help="log_prob in float64 only, of the (N, C, H, W) uint8 images in FILE (u = 0.5), to --out")
    ap.add_argument("--out", metavar="FILE.json")
    ap.add_argument("--write-images", metavar="DIR")
    ap.add_argument("--init-random", metavar="PATH")
    ap.add_argument("--config", help="config JSON for --init-random")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    openblas_select_core()

    torch.set_num_threads(a.threads)
    if a.selftest:
        return selftest()
    if a.init_random:
        if not a.config:
            ap.error("--init-random needs --config")
        write_random_checkpoint(a.init_random, json.loads(a.config), a.seed)
        print(f"wrote {a.init_random}")
        return 0
    if not a.model:
        ap.error("--model is required")
    model, meta, _ = load_model(a.model)
    C, H, W = model.C, model.H, model.W

    if a.check_raw:
        imgs = np.fromfile(a.check_raw, dtype=np.uint8).reshape(-1, C, H, W)
        m64 = model.double()
        lp64 = []
        with torch.inference_mode():
            for i in range(0, len(imgs), 500):
                lp64 += [float(v) for v in m64.log_prob(torch.from_numpy(imgs[i:i + 500]))]
        with open(a.out, "w") as f:
            json.dump({"model": a.model, "n": len(imgs), "log_prob_float64": lp64}, f)
        return 0
    if a.check:
        if a.check == "random":
            names = [f"img{i:02d}.png" for i in range(16)]
            imgs = check_images(C, H, W)
        else:
            names, imgs = read_png_dir(a.check, C, H, W)
        with torch.inference_mode():
            z, lp = model.encode(torch.from_numpy(imgs))
            lp64 = model.double().log_prob(torch.from_numpy(imgs))
            model.float()
        res = {"model": a.model, "images": names, "log_prob": [float(v) for v in lp],
               "bits_per_dim": [float(v) for v in model.bits_per_dim(lp)],
               "log_prob_float64": [float(v) for v in lp64]}
        if a.write_images:
            os.makedirs(a.write_images, exist_ok=True)
            imgs.tofile(os.path.join(a.write_images, "images.u8"))
            z.numpy().astype("<f4").tofile(os.path.join(a.write_images, "z_torch.f32"))
            if a.check == "random":
                for nm, im in zip(names, imgs):
                    png_write(os.path.join(a.write_images, nm), im)
        s = json.dumps(res, indent=1)
        if a.out:
            with open(a.out, "w") as f:
                f.write(s + "\n")
        else:
            print(s)
        return 0

    batches = [int(b) for b in a.batches.split(",") if b]
    with torch.inference_mode():
        rows = bench(model, batches, a.iters, a.warmup, set(a.ops.split(",")), a.seconds, a.jit)
    res = {"impl": "torch", "torch_version": torch.__version__, "threads": torch.get_num_threads(),
           "mkldnn": torch.backends.mkldnn.is_available(), "mode": "jit" if a.jit else "eager",
           "openblas_core": openblas_core(),
           "model": a.model, "results": rows, "peak_rss_mb": peak_rss_mb()}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"torch {torch.__version__} ({res['mode']}), {torch.get_num_threads()} threads, "
              f"OpenBLAS core {res['openblas_core']}, model {a.model}")
        print(f"{'op':<10}{'batch':>6}{'images/s':>12}{'ms/batch':>11}")
        for r in rows:
            print(f"{r['op']:<10}{r['batch']:>6}{r['images_per_s']:>12.1f}{r['ms_per_batch']:>11.3f}")
        print(f"peak RSS {res['peak_rss_mb']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
