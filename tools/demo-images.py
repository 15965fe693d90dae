#!/usr/bin/env python3
"""demo-images.py: the demo page's built-in Fashion-MNIST test images, as PNG data URIs written into server/web/index.html.

Takes the first test image of eight classes (the t10k set, indices below) from Debian's dataset-fashion-mnist IDX
files, encodes each as a 28x28 8-bit grey PNG with the standard library (zlib level 9, no filters), and replaces the
lines between the `demo-images:begin` and `demo-images:end` markers of the page with a JavaScript array of
{index, label, png} objects. Leaves out everything else: the page, the build (the Makefile embeds the page as it is)
and the dataset (run it once by hand; the page then works offline and on machines without the dataset).

Usage (repository root):
  python3 tools/demo-images.py                 # rewrite server/web/index.html in place
  python3 tools/demo-images.py --check         # exit 1 when the page's block differs from what would be written
  python3 tools/demo-images.py --data DIR --page FILE
"""
import argparse
import base64
import gzip
import os
import struct
import sys
import zlib

CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# the classes offered, in this order (coat and shirt are left out: at 28x28 they look like the pullover)
PICK = [0, 1, 2, 3, 5, 7, 8, 9]
BEGIN, END = "/* demo-images:begin", "/* demo-images:end */"


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def png_grey(w, h, pixels):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def block(data_dir):
    (n, h, w), images = read_idx(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"))
    (_,), labels = read_idx(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"))
    first = {}
    for i, lab in enumerate(labels):
        first.setdefault(lab, i)
    lines = [BEGIN + ": written by tools/demo-images.py from the Fashion-MNIST t10k files; do not edit by hand.",
             "   The first test image (0-based index in t10k) of each class listed. */",
             "const TEST_IMAGES = ["]
    for c in PICK:
        i = first[c]
        png = png_grey(w, h, images[i * w * h:(i + 1) * w * h])
        lines.append('  { index: %d, label: "%s", png: "data:image/png;base64,%s" },'
                     % (i, CLASSES[c], base64.b64encode(png).decode("ascii")))
    lines += ["];", END]
    return "\n".join(lines)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="folder of the t10k IDX files (.gz)")
    ap.add_argument("--page", default=os.path.join(root, "server/web/index.html"))
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when the page differs")
    a = ap.parse_args()
    page = open(a.page, encoding="utf-8").read()
    b, e = page.find(BEGIN), page.find(END)
    if b < 0 or e < b:
        sys.exit(f"demo-images.py: {a.page} has no '{BEGIN} ... {END}' block")
    new = page[:b] + block(a.data) + page[e + len(END):]
    if a.check:
        if new != page:
            sys.exit(f"demo-images.py: {a.page}: the test images differ from {a.data}")
        print("demo-images.py: up to date")
        return
    if new != page:
        with open(a.page + ".tmp", "w", encoding="utf-8") as f:
            f.write(new)
        os.replace(a.page + ".tmp", a.page)
    print(f"demo-images.py: wrote {len(PICK)} test images into {a.page}")


if __name__ == "__main__":
    main()
