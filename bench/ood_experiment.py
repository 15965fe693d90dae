#!/usr/bin/python3
"""ood_experiment.py: scores Fashion-MNIST test images and out-of-distribution sets with bin/realnvp log-prob
and prints the AUROC of bits_per_dim and of ood_score for each set. Leaves out training (bin/realnvp-train).

Usage (from the repository root, after make):
  /usr/bin/python3 bench/ood_experiment.py [--model models/fashion-mnist/model.safetensors]
      [--n-in 10000] [--n-ood 2000] [--out docs/ood-results.md]

In-distribution: the Fashion-MNIST test images (/usr/share/datasets/fashion-mnist, Debian's
dataset-fashion-mnist). Out-of-distribution sets, all 28x28 grey, built here from what Debian ships:
  vflip      the test images upside down
  invert     the test images with intensities inverted (255 - v)
  noise      uniform random pixels 0..255
  constant   one random grey level per image
  digits     scikit-learn's 8x8 handwritten digits (python3-sklearn), 0..16 scaled to 0..255,
             bilinearly resized to 28x28
  (digits is skipped, with a note, when python3-sklearn is missing)
Every image is written as a PNG and scored by the CLI (u = 0.5), so the numbers are exactly what
`realnvp log-prob --json` and `POST /log_prob` report. AUROC is the probability that a random
out-of-distribution image scores higher than a random test image (ties count one half); 0.5 is
chance, 1.0 perfect, below 0.5 means the score ranks the OOD set as MORE typical.
"""
import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

FMNIST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        magic, n, h, w = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, "not an IDX image file: %s" % path
        return np.frombuffer(f.read(n * h * w), dtype=np.uint8).reshape(n, h, w)


def write_png(path, img):
    """8-bit grey PNG, no filter, zlib default (the CLI re-encodes for png_bits_per_dim)."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[i].tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


def resize_bilinear(img, size):
    """img (h, w) float -> (size, size), align-corners bilinear."""
    h, w = img.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    a = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    b = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return a * (1 - fy) + b * fy


def auroc(score_in, score_out):
    """Mann-Whitney U / (n_in n_out), ties one half."""
    s = np.concatenate([score_in, score_out])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    r_out = ranks[len(score_in):].sum()
    n1, n0 = len(score_out), len(score_in)
    return (r_out - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def score(exe, model, imgs, tmp, tag, threads):
    d = os.path.join(tmp, tag)
    os.makedirs(d, exist_ok=True)
    paths = []
    for i, im in enumerate(imgs):
        p = os.path.join(d, "%05d.png" % i)
        write_png(p, im)
        paths.append(p)
    bpd, png, ood = [], [], []
    for k in range(0, len(paths), 1000):  # keep argv short
        out = subprocess.run([exe, "--threads", str(threads), "log-prob", "--model", model, "--json", "--batch", "100"]
                             + paths[k:k + 1000], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            j = json.loads(line)
            bpd.append(j["bits_per_dim"])
            png.append(j["png_bits_per_dim"])
            ood.append(j["ood_score"])
    return np.array(bpd), np.array(png), np.array(ood)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/fashion-mnist/model.safetensors")
    ap.add_argument("--exe", default="bin/realnvp")
    ap.add_argument("--n-in", type=int, default=10000)
    ap.add_argument("--n-ood", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    test = read_idx(FMNIST)[:a.n_in]
    pick = test[rng.permutation(len(test))[:a.n_ood]]
    sets = {
        "vflip (test images upside down)": pick[:, ::-1, :].copy(),
        "invert (255 - v)": (255 - pick).astype(np.uint8),
        "noise (uniform 0..255)": rng.integers(0, 256, size=(a.n_ood, 28, 28), dtype=np.uint8),
        "constant (one grey level)": np.repeat(rng.integers(0, 256, size=(a.n_ood, 1, 1)), 28 * 28).reshape(-1, 28, 28).astype(np.uint8),
    }
    try:
        from sklearn.datasets import load_digits
        dg = load_digits().images  # (1797, 8, 8), 0..16
        dg = dg[rng.permutation(len(dg))[:a.n_ood]]
        sets["digits (sklearn 8x8, resized)"] = np.stack(
            [np.clip(np.rint(resize_bilinear(im * 255.0 / 16.0, 28)), 0, 255).astype(np.uint8) for im in dg])
    except ImportError:
        print("note: python3-sklearn is missing; the digits set is skipped", file=sys.stderr)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        b_in, p_in, o_in = score(a.exe, a.model, test, tmp, "in", a.threads)
        rows = []
        for name, imgs in sets.items():
            b, p, o = score(a.exe, a.model, imgs, tmp, name.split()[0], a.threads)
            rows.append((name, len(imgs), b.mean(), p.mean(), o.mean(), auroc(b_in, b), auroc(o_in, o)))
    lines = ["| set | images | mean bits/dim | mean png bits/dim | mean ood_score | AUROC bits/dim | AUROC ood_score |",
             "|---|---:|---:|---:|---:|---:|---:|",
             "| Fashion-MNIST test (in-distribution) | %d | %.3f | %.3f | %.3f | - | - |" % (len(test), b_in.mean(), p_in.mean(), o_in.mean())]
    for r in rows:
        lines.append("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f |" % r)
    table = "\n".join(lines)
    print(table)
    print("\n(model %s, %.0f s)" % (a.model, time.time() - t0))
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
