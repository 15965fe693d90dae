#!/usr/bin/env python3
# make_seeds.py: writes the small seed corpora of the PNG, latents, multipart and query fuzzers
# (tests/fuzz/corpus_*/). Leaves out the checkpoint loader's seeds (copied test checkpoints).
import os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)


def png(w, h, depth, color, rows, extra=b"", interlace=0, plte=None, trns=None):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    raw = b"".join(b"\x00" + r for r in rows)
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write(sub, name, data):
    d = os.path.join(HERE, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# PNG: every colour type and depth the decoder converts, 8x8 or 6x8 so the model shapes match
g8 = [bytes((x * 30 + y * 3) & 255 for x in range(8)) for y in range(8)]
write("corpus_png", "grey8.png", png(8, 8, 8, 0, g8))
write("corpus_png", "grey28.png", png(28, 28, 8, 0, [bytes((x * y) & 255 for x in range(28)) for y in range(28)]))
write("corpus_png", "grey1bit.png", png(8, 8, 1, 0, [bytes([0xA5 ^ y]) for y in range(8)]))
write("corpus_png", "grey16.png", png(8, 8, 16, 0, [b"".join(struct.pack(">H", x * 8000 + y) for x in range(8)) for y in range(8)]))
write("corpus_png", "greyalpha.png", png(8, 8, 8, 4, [bytes(v for x in range(8) for v in (x * 20, 255 - y)) for y in range(8)]))
write("corpus_png", "rgb6x8.png", png(6, 8, 8, 2, [bytes(v for x in range(6) for v in (x * 40, y * 30, 99)) for y in range(8)]))
write("corpus_png", "rgba16.png", png(6, 8, 16, 6, [b"".join(struct.pack(">HHHH", x * 9000, y * 7000, 5, 65535) for x in range(6)) for y in range(8)]))
write("corpus_png", "palette4.png", png(6, 8, 4, 3, [bytes([0x01, 0x23, 0x30]) for y in range(8)],
                                        plte=bytes(range(12)), trns=b"\x80"))
write("corpus_png", "interlaced.png", png(8, 8, 8, 0, g8, interlace=1))
write("corpus_png", "text_chunk.png", png(8, 8, 8, 0, g8, extra=chunk(b"tEXt", b"Comment\x00seed")))

# latents: fuzz_latents.c parses for D = 8 in two parts of 1x2x2 (offsets 0 and 4)
write("corpus_latents", "flat.json", b'{"latents": [0.5, -1, 2e-3, 0, 1, 2, 3, 4]}')
write("corpus_latents", "nested.json", b'{"latents": [[1, 2, 3, 4, 5, 6, 7, 8], [-0.25, 1e30, 0, 7, 0, 0, 0, 0]]}')
write("corpus_latents", "layout.json", b'{"latents": [[0,0,0,0,0,0,0,0]], "layout": [{"offset": 0, "channels": 1, '
                                       b'"height": 2, "width": 2}, {"offset": 4, "channels": 1, "height": 2, "width": 2}]}')
write("corpus_latents", "nan.json", b'{"latents": [NaN, 1, 2, 3, 4, 5, 6, Infinity]}')
write("corpus_latents", "bad.json", b'{"latents": [[1, "x", null, 4, 5, 6, 7, 8]], "latents": 1}')

# multipart: the first line is the Content-Type value
def mp(boundary, parts, ct=None):
    body = b""
    for name, data in parts:
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"images\"; filename=\"" + name +
                 b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n")
    body += b"--" + boundary + b"--\r\n"
    return (ct or b"multipart/form-data; boundary=" + boundary) + b"\n" + body

write("corpus_multipart", "one.txt", mp(b"XyZ", [(b"a.png", b"\x89PNG....")]))
write("corpus_multipart", "two.txt", mp(b"----b0undary", [(b"a.png", b"AAAA"), (b"b\\\"q.png", b"")]))
write("corpus_multipart", "quoted.txt", mp(b"q q", [(b"x", b"--q q-not")], ct=b'Multipart/Form-Data; charset=x; boundary="q q"'))
write("corpus_multipart", "preamble.txt", b"multipart/form-data; boundary=b\npreamble\r\n--b \t\r\n\r\nno headers\r\n--b--")

# query strings (without the '?')
write("corpus_query", "sample.txt", b"n=16&temp=0.7&seed=42&format=json&latents=1&cols=4")
write("corpus_query", "escapes.txt", b"n=%31%36&temp=+1e-3&format=p%6Eg&&seed=18446744073709551615")
write("corpus_query", "bad.txt", b"n=1&n=2&=x&a%zz=1&k")

# Open Inference Protocol requests: the first line is "HLEN DECODER" (HLEN -1: no Inference-Header-Content-Length);
# fuzz_oip.c parses for C 2, H 2, W 3 (D = 12), at most 8 tensors
def oip(name, header, binary=b"", decoder=0, hlen=True):
    h = header.encode()
    write("corpus_oip", name, b"%d %d\n" % (len(h) if hlen else -1, decoder) + h + binary)

img = ", ".join(str(k * 11) for k in range(24))
oip("json_flat.txt", '{"id": "42", "inputs": [{"name": "image", "shape": [2, 2, 3, 2], "datatype": "UINT8", "data": [%s]}], '
    '"outputs": [{"name": "log_prob"}, {"name": "latents", "parameters": {"binary_data": true}}]}' % img, hlen=False)
oip("json_nested.txt", '{"inputs": [{"name": "image", "shape": [1, 2, 3, 2], "datatype": "UINT8", '
    '"data": [[[[0, 1], [2, 3], [4, 5]], [[6, 7], [8, 9], [10, 255]]]]}], "parameters": {"samples": 3, "seed": 9}}', hlen=False)
oip("binary.txt", '{"inputs": [{"name": "image", "shape": [1, 2, 3, 2], "datatype": "UINT8", '
    '"parameters": {"binary_data_size": 12}}], "parameters": {"binary_data_output": true}}', bytes(range(12)))
oip("decoder_binary.txt", '{"inputs": [{"name": "latents", "shape": [1, 12], "datatype": "FP32", '
    '"parameters": {"binary_data_size": 48}}], "outputs": [{"name": "image", "parameters": {"binary_data": true}}]}',
    struct.pack("<12f", *[k / 3 - 2 for k in range(12)]), decoder=1)
oip("decoder_json.txt", '{"inputs": [{"name": "latents", "shape": [2, 12], "datatype": "FP32", '
    '"data": [[0.5, -1, 2e-3, 0, 1, 2, 3, 4, 5, 6, 7, 8], [1e30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -3.25]]}]}', decoder=1, hlen=False)
oip("bad_nan.txt", '{"inputs": [{"name": "latents", "shape": [1, 12], "datatype": "FP32", '
    '"parameters": {"binary_data_size": 48}}]}', struct.pack("<12f", *([0.0] * 11 + [float("nan")])), decoder=1)
# DECODER 2: the repository extension's bodies (index, load, unload)
oip("repo_index.txt", '{"ready": true}', decoder=2, hlen=False)
oip("repo_load.txt", '{"parameters": {"config": "{}"}}', decoder=2, hlen=False)
