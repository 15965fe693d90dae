"""realnvp_torch.safetensors: the checkpoint file's bytes (docs/model.md 5), read and written without the package.
Leaves out dtypes other than F32 (skipped only under train.* names, as 5.4 allows) and memory mapping."""
import json
import os
import struct

import numpy as np

MAX_HEADER = 100 << 20   # docs/model.md 5.5: a header over 100 MiB is refused


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r} in the safetensors header")
        d[k] = v
    return d


def read(path):
    """Returns (metadata {str: str}, {name: np.ndarray float32}) in the file's header order.
    Checks the structure docs/model.md 5.1 and 5.5 describe: header length and JSON, string
    metadata, F32 dtypes, offsets inside the data and matching the shape, no overlaps, finite
    values. Entries named train.* of another dtype are checked for their offsets and skipped."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > len(buf) - 8 or n > MAX_HEADER:
        raise ValueError(f"{path}: header length {n} past the end of the file (or over 100 MiB)")
    header = json.loads(buf[8:8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    data = memoryview(buf)[8 + n:]
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: __metadata__ missing, or a value is not a string")
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            b, e = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: {name}: malformed entry") from None
        if not 0 <= b <= e <= len(data):
            raise ValueError(f"{path}: {name}: data_offsets [{b}, {e}] outside the data ({len(data)} bytes)")
        if e > b:
            spans.append((b, e, name))
        if dtype != "F32":
            if name.startswith("train."):
                continue
            raise ValueError(f"{path}: {name}: dtype {dtype}, expected F32")
        count = int(np.prod(shape)) if shape else 1
        if e - b != 4 * count:
            raise ValueError(f"{path}: {name}: data_offsets [{b}, {e}] do not fit shape {shape}")
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(shape).astype(np.float32)
        if not name.startswith("train.") and not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: {name}: non-finite value")
        tensors[name] = arr
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: {n0} and {n1} overlap")
    return meta, tensors


def write(path, tensors, meta):
    """tensors: {name: array-like}, written as F32 in the dict's order, packed from offset 0;
    meta: {str: str} in its order (docs/model.md 5.7 puts format, version, config first). The
    header is padded with spaces to a multiple of 8 bytes. Atomic: a temporary file, flushed,
    then renamed, so an existing file survives a failed write."""
    header = {"__metadata__": {str(k): str(v) for k, v in meta.items()}}
    off, blobs = 0, []
    for name, t in tensors.items():
        a = np.ascontiguousarray(np.asarray(t), dtype="<f4")
        blob = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(blob)]}
        off += len(blob)
        blobs.append(blob)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hj)))
            f.write(hj)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
