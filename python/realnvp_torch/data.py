"""realnvp_torch.data: data sets as train/data.c reads them (IDX, CIFAR-10 batches, the held-out split); PNG writing.
Leaves out labels and reading PNG folders (bin/realnvp-train reads those)."""
import gzip
import math
import os
import struct
import zlib

import numpy as np

IDX_TRAIN = ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte")
IDX_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")
CIFAR_RECORD = 1 + 3072   # a label byte, then 3 x 32 x 32 pixels (R, G, B planes)


class DataSet:
    """Images uint8 (n, C, H, W) and the name the trainer reports (a path)."""

    def __init__(self, px, name):
        self.px, self.name = px, name

    @property
    def n(self):
        return self.px.shape[0]


def load_idx(path):
    """An IDX image file (magic 0x803; gzip or raw) -> uint8 (n, 1, h, w)."""
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        buf = f.read()
    if len(buf) < 16:
        raise ValueError(f"{path}: file ends in the 16-byte IDX header")
    magic, n, h, w = struct.unpack(">IIII", buf[:16])
    if magic != 0x803:
        raise ValueError(f"{path}: IDX magic is {magic:#010x}, expected 0x00000803 (an image file, not labels)")
    if len(buf) != 16 + n * h * w:
        raise ValueError(f"{path}: {len(buf) - 16} pixel bytes, the header says {n} images of {h} x {w}")
    return np.frombuffer(buf, dtype=np.uint8, offset=16).reshape(n, 1, h, w).copy()


def find_idx(d, stem):
    """d/stem.gz or d/stem, whichever exists, else None."""
    for suf in (".gz", ""):
        p = os.path.join(d, stem + suf)
        if os.path.exists(p):
            return p
    return None


def load_cifar(paths):
    """CIFAR-10 binary batches -> uint8 (n, 3, 32, 32), records concatenated in order."""
    parts = []
    for p in paths:
        with open(p, "rb") as f:
            buf = f.read()
        if not buf or len(buf) % CIFAR_RECORD:
            raise ValueError(f"{p}: {len(buf)} bytes is not a whole number of CIFAR-10 records "
                             f"(1 label + 3072 pixel bytes each)")
        parts.append(np.frombuffer(buf, dtype=np.uint8).reshape(-1, CIFAR_RECORD)[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(parts)


def load_file(path):
    """One file: a CIFAR-10 batch (*.bin) or an IDX image file."""
    if path.endswith(".bin"):
        return DataSet(load_cifar([path]), path)
    return DataSet(load_idx(path), path)


def open_data(path):
    """(train DataSet, test DataSet or None, kind) as tr_data_open reads `path`: a folder with
    Fashion-MNIST/MNIST IDX files (kind 'idx-dir'; the t10k file is the test set), a CIFAR-10
    folder (data_batch_1.bin .. data_batch_5.bin, fewer allowed, and test_batch.bin; 'cifar10'),
    or one file ('idx' or 'cifar10')."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if not os.path.isdir(path):
        return load_file(path), None, "cifar10" if path.endswith(".bin") else "idx"
    for name in IDX_TRAIN:
        p = os.path.join(path, name)
        if os.path.exists(p):
            train = DataSet(load_idx(p), p)
            test = None
            for tn in IDX_TEST:
                tp = os.path.join(path, tn)
                if os.path.exists(tp):
                    test = DataSet(load_idx(tp), tp)
                    if test.px.shape[1:] != train.px.shape[1:]:
                        raise ValueError(f"{tp}: images are {test.px.shape[3]} x {test.px.shape[2]}, "
                                         f"the training images {train.px.shape[3]} x {train.px.shape[2]}")
                    break
            return train, test, "idx-dir"
    if os.path.exists(os.path.join(path, "data_batch_1.bin")):
        batches = []
        for b in range(1, 6):
            p = os.path.join(path, f"data_batch_{b}.bin")
            if not os.path.exists(p):
                break   # fewer batches is fine (smaller experiments)
            batches.append(p)
        train = DataSet(load_cifar(batches), path)
        tp = os.path.join(path, "test_batch.bin")
        test = DataSet(load_cifar([tp]), tp) if os.path.exists(tp) else None
        return train, test, "cifar10"
    raise ValueError(f"{path}: neither Fashion-MNIST/MNIST IDX files (train-images-idx3-ubyte[.gz]) nor CIFAR-10 "
                     "batches (data_batch_1.bin); PNG folders need bin/realnvp-train")


def hold_out(train, fraction):
    """tr_data_split: the last ceil(n * fraction) images (at least 1) become the test set."""
    k = max(1, int(math.ceil(train.n * fraction)))
    if k >= train.n:
        raise ValueError(f"{train.name}: cannot hold out {k} of {train.n} images")
    test = DataSet(train.px[train.n - k:], f"{train.name} (last {k} held out)")
    return DataSet(train.px[:train.n - k], train.name), test

# ---------------------------------------------------------------- PNG writing


def png_bytes(img):
    """img uint8 (C, H, W), C 1 or 3 -> an 8-bit grey or RGB PNG, not interlaced."""
    C, H, W = img.shape
    hwc = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(1, 2, 0))
    raw = b"".join(b"\x00" + hwc[i].tobytes() for i in range(H))

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", W, H, 8, 0 if C == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def png_write(path, img):
    with open(path, "wb") as f:
        f.write(png_bytes(img))


def png_write_grid(path, imgs, cols=None):
    """Several images (n, C, H, W) as one grid laid out as rnvp_png_write_grid does: `cols`
    columns (default ceil(sqrt(n)), at most n), 2-pixel white borders between tiles, empty
    tiles white."""
    n, C, H, W = imgs.shape
    cols = min(cols or int(math.ceil(math.sqrt(n))), n)
    rows = (n + cols - 1) // cols
    g = np.full((C, rows * (H + 2) - 2, cols * (W + 2) - 2), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        g[:, r * (H + 2):r * (H + 2) + H, c * (W + 2):c * (W + 2) + W] = imgs[i]
    png_write(path, g)
