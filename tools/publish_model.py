#!/usr/bin/python3
"""publish_model.py: copies a training run's best model, sample grids and curve into models/NAME/ and writes its model card.
Leaves out training itself (bin/realnvp-train) and evaluation (the numbers come from the run's own files).

Usage (from the repository root):
  tools/publish_model.py --run RUN_DIR --out models/fashion-mnist [--state] [--note TEXT] [--history FILE]

Reads RUN_DIR/best.safetensors (metadata: test_bits_per_dim, steps, created, dataset),
RUN_DIR/checkpoint.safetensors (metadata: train_state, train_options) and RUN_DIR/metrics.jsonl,
and writes OUT/model.safetensors, OUT/samples_t1.0.png, OUT/samples_t0.7.png, OUT/curve.svg and
OUT/README.md. --state also copies the resumable checkpoint (about 3x the model), best.safetensors and metrics.jsonl to OUT/train-state/
so a later session can continue the same run exactly with `realnvp-train --resume`.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile

DEFAULT_RE = re.compile(r"^  --([a-z0-9-]+) .*\[default: ([^]]*)\]$")


def train_defaults(exe):
    """{option: default string} from `realnvp-train --help` (its option table), so they cannot drift."""
    out = subprocess.run([exe, "--help"], check=True, capture_output=True, text=True).stdout
    return {m.group(1): m.group(2) for m in map(DEFAULT_RE.match, out.splitlines()) if m}


def is_default(value, default):
    if default == "none":
        default = ""
    if isinstance(value, bool):
        return str(int(value)) == default
    if isinstance(value, (int, float)):
        try:
            d = float(default)
        except ValueError:
            return False
        return abs(value - d) <= 1e-12 * max(abs(d), 1e-300)
    return str(value) == default


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def atomic_copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".publish.")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)   # mkstemp makes 0600; the Docker image's non-root user must read the model
    os.replace(tmp, dst)


def command(opts, defaults):
    parts = ["bin/realnvp-train"]
    for k, v in opts.items():
        if k == "out":
            parts.append("--out runs/%s" % os.path.basename(str(v).rstrip("/")))
            continue
        if k in defaults and is_default(v, defaults[k]):
            continue
        if isinstance(v, bool):
            parts.append("--%s %d" % (k, int(v)))
        elif isinstance(v, float):
            parts.append("--%s %g" % (k, v))
        else:
            parts.append("--%s %s" % (k, v))
    return " ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--state", action="store_true", help="also copy checkpoint.safetensors to OUT/train-state/")
    ap.add_argument("--note", default="", help="a paragraph added to the card (machine, status of the run)")
    ap.add_argument("--exe", default="bin/realnvp")
    ap.add_argument("--train-exe", default="bin/realnvp-train", help="read for its option defaults (--help)")
    ap.add_argument("--history", default="", help="a markdown file listing every start of the run (the exact commands, "
                    "resumes included), put in the card and copied to OUT/train-state/HISTORY.md")
    a = ap.parse_args()

    best, ckpt = os.path.join(a.run, "best.safetensors"), os.path.join(a.run, "checkpoint.safetensors")
    for p in (best, ckpt, os.path.join(a.run, "metrics.jsonl")):
        if not os.path.exists(p):
            sys.exit("publish_model: %s is missing (has the run reached its first evaluation?)" % p)
    bm = header(best)["__metadata__"]
    cm = header(ckpt)["__metadata__"]
    state = json.loads(cm["train_state"])
    opts = json.loads(cm["train_options"])
    metrics = [json.loads(l) for l in open(os.path.join(a.run, "metrics.jsonl")) if l.strip()]
    evals = [m for m in metrics if "test_bpd" in m]
    ips = [m["images_per_s"] for m in metrics if "images_per_s" in m and m.get("step", 0) > 200]
    atomic_copy(best, os.path.join(a.out, "model.safetensors"))
    # the published file's info, under the path a reader of the card uses
    info = subprocess.run([a.exe, "info", os.path.join(a.out, "model.safetensors")], check=True,
                          capture_output=True, text=True).stdout
    for n in ("samples_t1.0.png", "samples_t0.7.png", "curve.svg"):
        if os.path.exists(os.path.join(a.run, n)):
            atomic_copy(os.path.join(a.run, n), os.path.join(a.out, n))
    if a.state:
        atomic_copy(ckpt, os.path.join(a.out, "train-state", "checkpoint.safetensors"))
        atomic_copy(best, os.path.join(a.out, "train-state", "best.safetensors"))
        atomic_copy(os.path.join(a.run, "metrics.jsonl"), os.path.join(a.out, "train-state", "metrics.jsonl"))

    if a.history:
        atomic_copy(a.history, os.path.join(a.out, "train-state", "HISTORY.md"))
        history = open(a.history).read().split("\n", 1)[1].strip()   # without its title
    else:
        history = "```sh\n%s\n```" % command(opts, train_defaults(a.train_exe))
    params = re.search(r"^parameters\s+(\d+)", info, re.M)
    flops = re.search(r"^FLOPs/image\s+([0-9.e+]+)", info, re.M)
    params = int(params.group(1)) if params else 0
    flops = float(flops.group(1)) if flops else 0.0
    cfg = json.loads(bm.get("config", cm["config"]))
    hours = state["train_seconds"] / 3600.0
    train_at = {m["step"]: m["train_bpd"] for m in metrics if "train_bpd" in m}   # the running train bits/dim logged at that step
    rows = "\n".join("| %d | %.2f | %.4f | %.4f |" % (m["step"], m["epoch"], train_at.get(m["step"], float("nan")), m["test_bpd"])
                     for m in evals)
    card = """# {name}: Real NVP on Fashion-MNIST

A Real NVP flow ([model definition](../../docs/model.md)) trained by `bin/realnvp-train` on
the 60,000 Fashion-MNIST training images (Debian's `dataset-fashion-mnist`,
`{dataset}`), 28x28 grey, horizontal flips on. This is the model `make run` serves.

| | |
|---|---|
| test bits/dim | **{tbpd:.4f}** (all 10,000 test images, dequantization noise from a fixed seed) |
| at step | {bstep} |
| run so far | step {step}, epoch {epoch:.2f}, {hours:.2f} h of training |
| config | `{cfgj}` |
| training speed | median {ips:.0f} images/s (2 threads, shared 2-vCPU machine) |
| parameters | {params:,} |
| FLOPs per image | {gflops:.3f} GFLOP forward (log p, encode, decode); a training step about 3x that per image |
| compute | {hours:.2f} h wall-clock of the trainer (metrics.jsonl `time`, every resume); CPU time was not recorded, at most 2 threads x the wall-clock |
| file | `model.safetensors` (inference tensors only; `best.safetensors` of the run), created {created} |

{note}

## Samples

Temperature 1.0 and 0.7 (the run's last evaluation):

![samples at T = 1.0](samples_t1.0.png) ![samples at T = 0.7](samples_t0.7.png)

## Training curve

![training curve](curve.svg)

| step | epoch | train bits/dim | test bits/dim |
|---:|---:|---:|---:|
{rows}

## How it was made

{history}

Adam (lr 1e-3, betas 0.9/0.999), batch 64, L2 5e-5 on the weight-norm gains and scales,
gradient clipping at global norm 100; full test-set evaluation every {ee} steps, where the best
checkpoint is kept. `models/fashion-mnist/train-state/checkpoint.safetensors` (when present) is
the run's resumable state: copy it (and `metrics.jsonl` beside it) to `runs/{outname}/` and add `--resume`
to continue exactly. `tools/publish_model.py` wrote this card from the run's files.

## Compared with published Fashion-MNIST results

Test bits/dim on Fashion-MNIST (lower is better); only figures with a source.

| model | parameters | test bits/dim | source |
|---|---:|---:|---|
| this model (Real NVP, 3 scales, 2 residual blocks, 32 features) | {params:,} | {tbpd:.4f} | this card |
| Glow | about 69 M | 3.141 | Kirichenko, Izmailov and Wilson, "Why normalizing flows fail to detect out-of-distribution data", NeurIPS 2020 (arXiv:2006.08545), their Fashion-MNIST Glow |

## `realnvp info`

```
{info}```
""".format(name=os.path.basename(a.out.rstrip("/")), dataset=bm.get("dataset", "?"), tbpd=float(bm["test_bits_per_dim"]),
           bstep=bm.get("steps", "?"), step=state["step"], epoch=state["epoch"], hours=hours,
           cfgj=json.dumps(cfg, separators=(",", ":")), ips=statistics.median(ips) if ips else float("nan"),
           created=bm.get("created", "?"), note=a.note, rows=rows, cmd=command(opts, train_defaults(a.train_exe)), ee=opts.get("eval-every"),
           outname=os.path.basename(str(opts.get("out", "train")).rstrip("/")), info=info, history=history,
           params=params, gflops=flops / 1e9)
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(card)
    print("publish_model: %s: test %.4f bits/dim at step %s" % (a.out, float(bm["test_bits_per_dim"]), bm.get("steps")))


if __name__ == "__main__":
    main()
