#!/usr/bin/python3
# gen_golden.py: writes tests/data/golden.json (the oracle of tests/test_golden.c) from the
# committed checkpoints and PNGs, with the numpy reference realnvp_ref.py. Leaves out the C code:
# nothing here calls or reads it, except `--make-data`, which runs `bin/realnvp init` once to
# make the random checkpoints (any file that follows docs/model.md would do) and draws the test images.
#
# Usage (from the repository root):
#   /usr/bin/python3 tests/reference/gen_golden.py --make-data   # checkpoints + PNGs (once)
#   /usr/bin/python3 tests/reference/gen_golden.py               # golden.json from tests/data
import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realnvp_ref as ref  # noqa: E402

DATA = "tests/data"

# name -> (config, init seed, images). Non-square sizes catch H/W mix-ups; the three models cover
# grey and RGB, with and without flow batch norm, 2 and 3 scales, 0 and 1 residual blocks and a
# 5x5 in_conv (the project's `kernel` config extension; the files follow docs/model.md).
MODELS = {
    "grey8": ({"height": 8, "width": 8, "channels": 1, "num_scales": 2, "res_blocks": 1,
               "features": [8, 8], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": True,
               "flow_bn_eps": 1e-4}, 11,
              ["grey8_gradient", "grey8_checker", "grey8_noise", "grey8_black", "grey8_white", "grey8_ring"]),
    "rgb6x8": ({"height": 6, "width": 8, "channels": 3, "num_scales": 2, "res_blocks": 1,
                "features": [4, 6], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": False,
                "flow_bn_eps": 1e-4}, 12,
               ["rgb6x8_gradient", "rgb6x8_noise", "rgb6x8_flat", "rgb6x8_stripes"]),
    "grey16x8_s3": ({"height": 16, "width": 8, "channels": 1, "num_scales": 3, "res_blocks": 0,
                     "features": [4, 4, 4], "alpha": 0.05, "bn_eps": 1e-5, "flow_batchnorm": True,
                     "flow_bn_eps": 1e-4, "kernel": 5}, 13,
                    ["grey16x8_noise", "grey16x8_gradient", "grey16x8_bar"]),
}

def make_image(name, c, h, w):
    """Deterministic test pictures, (C, H, W) uint8."""
    rng = np.random.RandomState(sum(map(ord, name)))
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    kind = name.split("_")[1]
    if kind == "gradient":
        img = np.stack([(i * 255 // (h - 1) + k * 40 + j * 9) % 256 for k in range(c)])
    elif kind == "checker":
        img = np.stack([((i + j) % 2) * 255] * c)
    elif kind == "noise":
        img = rng.randint(0, 256, size=(c, h, w))
    elif kind == "black":
        img = np.zeros((c, h, w))
    elif kind == "white":
        img = np.full((c, h, w), 255)
    elif kind == "ring":
        r = np.hypot(i - (h - 1) / 2, j - (w - 1) / 2)
        img = np.stack([np.where(np.abs(r - 2.5) < 1, 230, 20)] * c)
    elif kind == "flat":
        img = np.stack([np.full((h, w), v) for v in (200, 30, 90)])
    elif kind == "stripes":
        img = np.stack([np.where((j // 2 + k) % 3 == 0, 250, 5) for k in range(c)])
    elif kind == "bar":
        img = np.where((j >= 3) & (j <= 4) & (i >= 2) & (i <= 13), 240, 10)[None] + rng.randint(0, 6, size=(1, h, w))
    else:
        raise ValueError(name)
    return np.asarray(img, dtype=np.uint8)

def make_data():
    os.makedirs(DATA, exist_ok=True)
    for name, (cfg, seed, images) in MODELS.items():
        cpath = os.path.join(DATA, name + ".config.json")
        with open(cpath, "w") as f:
            json.dump(cfg, f)
            f.write("\n")
        subprocess.run(["bin/realnvp", "init", "--config", cpath, "--seed", str(seed), "-o",
                        os.path.join(DATA, name + ".safetensors")], check=True)
        for im in images:
            ref.write_png(os.path.join(DATA, im + ".png"), make_image(im, cfg["channels"], cfg["height"], cfg["width"]))

def self_check(m, pixels):
    """The reference checks itself before it is trusted: L_flow against log|det| of the flow's
    Jacobian by central differences (float64), on one image per model."""
    alpha = m.cfg["alpha"]
    q = alpha + (1 - 2 * alpha) * (pixels[:1].astype(np.float64) + 0.5) / 256.0
    y = np.log(q) - np.log(1 - q)
    _, l_flow, _ = m.flow(y)
    eps = 1e-5
    eye = np.eye(m.D).reshape((m.D,) + y.shape[1:])
    jac = (m.flow(y + eps * eye)[0] - m.flow(y - eps * eye)[0]) / (2 * eps)   # row i: dz/dy_i
    sign, logdet = np.linalg.slogdet(jac)
    assert sign != 0 and abs(logdet - l_flow[0]) < 1e-6 * max(1.0, abs(logdet)), (logdet, l_flow[0])
    return abs(logdet - l_flow[0])

def gen_golden():
    out = {"generator": "tests/reference/gen_golden.py with realnvp_ref.py (numpy float64)",
           "spec": "docs/model.md (realnvp version 1)", "u": 0.5, "models": []}
    for name, (_, _, images) in MODELS.items():
        m = ref.Model(os.path.join(DATA, name + ".safetensors"))
        pix = np.stack([ref.read_png(os.path.join(DATA, im + ".png")) for im in images])
        print("%-14s self-check: |log|det J| - L_flow| = %.2e" % (name, self_check(m, pix)))
        z, lp, bpd, layout = m.encode(pix)
        entry = {"checkpoint": name + ".safetensors", "D": m.D, "layout": layout, "images": []}
        for k, im in enumerate(images):
            entry["images"].append({"file": im + ".png", "log_prob": float(lp[k]), "bits_per_dim": float(bpd[k]),
                                    "latents": [float("%.10g" % v) for v in z[k]]})
            print("%-14s %-22s log_prob %.10g  bits/dim %.8f" % (name, im, lp[k], bpd[k]))
        out["models"].append(entry)
    with open(os.path.join(DATA, "golden.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

if __name__ == "__main__":
    if "--make-data" in sys.argv[1:]:
        make_data()
    gen_golden()
