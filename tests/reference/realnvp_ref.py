#!/usr/bin/python3
# realnvp_ref.py: an independent float64 numpy implementation of docs/model.md
# (forward direction only: log_prob, bits/dim, latents) with its own safetensors and PNG readers.
# Leaves out decoding, sampling and training. Shares no code with core/ or bench/torch_baseline.py.
#
# Usage:  /usr/bin/python3 tests/reference/realnvp_ref.py MODEL.safetensors IMG.png...
#         prints one JSON object per image: file, log_prob, bits_per_dim.
# Needs only python3 and python3-numpy (Debian). Convolutions are cross-correlations with zero
# padding k//2 (as in PyTorch and the paper's TensorFlow code).
import json
import math
import struct
import sys
import zlib

import numpy as np

# ---------------------------------------------------------------- safetensors (docs/model.md section 5)

def read_safetensors(path):
    """(metadata dict, {name: float64 array}) of a checkpoint; train.* tensors are skipped."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__")
    tensors = {}
    for name, e in header.items():
        if name.startswith("train."):
            continue
        assert e["dtype"] == "F32", name
        b, end = e["data_offsets"]
        a = np.frombuffer(data[b:end], dtype="<f4").astype(np.float64)
        tensors[name] = a.reshape(e["shape"])
    return meta, tensors

# ---------------------------------------------------------------- PNG (8-bit grey or RGB, not interlaced)

PNG_SIG = b"\x89PNG\r\n\x1a\n"

def read_png(path):
    """(C, H, W) uint8 array of an 8-bit grey (C=1) or RGB (C=3) non-interlaced PNG."""
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:8] == PNG_SIG, "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        kind, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", raw[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, "bad CRC"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (0, 2) and interlace == 0, "only 8-bit grey/RGB, not interlaced"
    c = 1 if ctype == 0 else 3
    rows = zlib.decompress(idat)
    stride = w * c
    out = np.zeros((h, stride), dtype=np.int64)
    prev = np.zeros(stride, dtype=np.int64)
    for i in range(h):
        ftype = rows[i * (stride + 1)]
        line = np.frombuffer(rows[i * (stride + 1) + 1:(i + 1) * (stride + 1)], dtype=np.uint8).astype(np.int64)
        cur = np.zeros(stride, dtype=np.int64)
        for x in range(stride):
            a = cur[x - c] if x >= c else 0
            b = prev[x]
            d = prev[x - c] if x >= c else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:
                p = a + b - d
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else d)
            else:
                raise ValueError("bad PNG filter %d" % ftype)
            cur[x] = (line[x] + pred) & 255
        out[i] = cur
        prev = cur
    return out.reshape(h, w, c).transpose(2, 0, 1).astype(np.uint8)

def write_png(path, img):
    """Write a (C, H, W) uint8 array, C = 1 or 3, as an 8-bit PNG (filter 0 on every row)."""
    c, h, w = img.shape
    rows = img.transpose(1, 2, 0).reshape(h, w * c)
    raw = b"".join(b"\x00" + bytes(r.astype(np.uint8)) for r in rows)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(PNG_SIG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

# ---------------------------------------------------------------- the s/t network (docs/model.md 2.6)

def conv(x, p, name):
    """Weight-normalised 'same' convolution: x (N, Ci, H, W) -> (N, Co, H, W)."""
    v, g, bias = p[name + ".weight_v"], p[name + ".weight_g"], p[name + ".bias"]
    w = g[:, None, None, None] * v / np.sqrt((v ** 2).sum(axis=(1, 2, 3)))[:, None, None, None]
    n, _, h, wd = x.shape
    kh, kw = w.shape[2], w.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, w.shape[0], h, wd))
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("oi,nihw->nohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
    return out + bias[None, :, None, None]

def bn(x, p, name, eps):
    """Inference batch norm with running statistics, per channel."""
    def c(a):
        return p[name + "." + a][None, :, None, None]
    return c("weight") * (x - c("running_mean")) / np.sqrt(c("running_var") + eps) + c("bias")

def relu(x):
    return np.maximum(x, 0.0)

def st_net(x, p, k, cfg):
    pre = "flow.%d.net." % k
    eps = cfg["bn_eps"]
    h = conv(x, p, pre + "in_conv")
    for j in range(cfg["res_blocks"]):
        b = pre + "blocks.%d." % j
        t = conv(relu(bn(h, p, b + "bn_a", eps)), p, b + "conv_a")
        h = h + conv(relu(bn(t, p, b + "bn_b", eps)), p, b + "conv_b")
    return conv(relu(bn(h, p, pre + "bn_out", eps)), p, pre + "out_conv")

# ---------------------------------------------------------------- couplings (docs/model.md 2.3 - 2.5)

def flow_bn(x, sel, p, k, cfg):
    """Flow batch norm on the transformed elements: x (N, Ct, H, W), sel (H, W) 1 where
    transformed. Returns (x, log-det per image)."""
    mean = p["flow.%d.flow_bn.running_mean" % k][None, :, None, None]
    var = p["flow.%d.flow_bn.running_var" % k] + cfg["flow_bn_eps"]
    y = np.where(sel[None, None] > 0, (x - mean) / np.sqrt(var)[None, :, None, None], x)
    return y, -0.5 * sel.sum() * np.log(var).sum()

def checkerboard(x, parity, p, k, cfg):
    n, c, h, w = x.shape
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    b = ((i + j + parity) % 2 == 0).astype(np.float64)          # 1 = conditioning
    inp = np.concatenate([x * b, np.broadcast_to(b, (n, 1, h, w))], axis=1)
    out = st_net(inp, p, k, cfg)
    s = p["flow.%d.scale" % k][None, :, None, None] * np.tanh(out[:, :c])
    t = out[:, c:]
    y = b * x + (1 - b) * (x * np.exp(s) + t)
    ld = ((1 - b) * s).sum(axis=(1, 2, 3))
    if cfg["flow_batchnorm"]:
        y, l2 = flow_bn(y, 1 - b, p, k, cfg)
        ld = ld + l2
    return y, ld

def channel(x, parity, p, k, cfg):
    n, c, h, w = x.shape
    half = c // 2
    xa, xb = x[:, :half], x[:, half:]
    cond, tr = (xa, xb) if parity == 0 else (xb, xa)
    out = st_net(cond, p, k, cfg)
    s = p["flow.%d.scale" % k][None, :, None, None] * np.tanh(out[:, :half])
    tr = tr * np.exp(s) + out[:, half:]
    ld = s.sum(axis=(1, 2, 3))
    if cfg["flow_batchnorm"]:
        tr, l2 = flow_bn(tr, np.ones((h, w)), p, k, cfg)
        ld = ld + l2
    y = np.concatenate([cond, tr] if parity == 0 else [tr, cond], axis=1)
    return y, ld

def squeeze(x):
    """out[c*4 + dh*2 + dw][i][j] = in[c][2i + dh][2j + dw] (docs/model.md 2.1)."""
    n, c, h, w = x.shape
    out = np.zeros((n, 4 * c, h // 2, w // 2))
    for ch in range(c):
        for dh in range(2):
            for dw in range(2):
                out[:, ch * 4 + dh * 2 + dw] = x[:, ch, dh::2, dw::2]
    return out

# ---------------------------------------------------------------- the whole model (docs/model.md 1 - 3)

class Model:
    def __init__(self, path):
        self.meta, self.p = read_safetensors(path)
        assert self.meta["format"] == "realnvp" and self.meta["version"] == "1"
        self.cfg = json.loads(self.meta["config"])
        c = self.cfg
        self.D = c["channels"] * c["height"] * c["width"]

    def flow(self, y):
        """The flow f (docs/model.md 2): y (N, C, H, W) -> (z (N, D), L_flow (N), latent layout)."""
        cfg, p = self.cfg, self.p
        n = y.shape[0]
        h, l_flow, zs, layout, k = y, np.zeros(n), [], [], 0
        S = cfg["num_scales"]
        for s in range(S):
            if s < S - 1:
                for parity in (0, 1, 0):
                    h, ld = checkerboard(h, parity, p, k, cfg)
                    l_flow, k = l_flow + ld, k + 1
                h = squeeze(h)
                for parity in (0, 1, 0):
                    h, ld = channel(h, parity, p, k, cfg)
                    l_flow, k = l_flow + ld, k + 1
                cs = h.shape[1] // 4
                keep = [c * 4 + 0 for c in range(cs)] + [c * 4 + 3 for c in range(cs)]
                drop = [c * 4 + 1 for c in range(cs)] + [c * 4 + 2 for c in range(cs)]
                z = h[:, drop]
                h = h[:, keep]
            else:
                for parity in (0, 1, 0, 1):
                    h, ld = checkerboard(h, parity, p, k, cfg)
                    l_flow, k = l_flow + ld, k + 1
                z = h
            layout.append([sum(a.shape[1] for a in zs), z.shape[1], z.shape[2], z.shape[3]])
            zs.append(z.reshape(n, -1))
        z = np.concatenate(zs, axis=1)
        assert z.shape[1] == self.D and k == 6 * (S - 1) + 4
        return z, l_flow, layout

    def encode(self, pixels, u=0.5):
        """pixels (N, C, H, W) 0..255 -> (z (N, D), log_prob (N), bits_per_dim (N), layout)."""
        alpha = self.cfg["alpha"]
        xt = (pixels.astype(np.float64) + u) / 256.0
        q = alpha + (1 - 2 * alpha) * xt
        y = np.log(q) - np.log(1 - q)
        l_pre = (math.log(1 - 2 * alpha) - np.log(q) - np.log(1 - q)).sum(axis=(1, 2, 3))
        z, l_flow, layout = self.flow(y)
        log_py = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(axis=1) + l_flow
        log_prob = log_py + l_pre - self.D * math.log(256)
        bpd = -log_prob / (self.D * math.log(2))
        return z, log_prob, bpd, layout

def main(argv):
    if len(argv) < 3 or argv[1] in ("-h", "--help"):
        sys.stderr.write("usage: realnvp_ref.py MODEL.safetensors IMG.png...\n")
        return 2
    m = Model(argv[1])
    for f in argv[2:]:
        img = read_png(f)
        _, lp, bpd, _ = m.encode(img[None])
        print(json.dumps({"file": f, "log_prob": float(lp[0]), "bits_per_dim": float(bpd[0])}))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv))
