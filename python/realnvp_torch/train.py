"""python3 -m realnvp_torch.train: bin/realnvp-train in PyTorch, on CUDA or the CPU, one process or torchrun's (DDP).
Leaves out PNG-folder data, --config, curve.svg and best.safetensors (model.safetensors is the latest model).

Writes in --out: model.safetensors (the model, inference tensors only: bin/realnvp and bin/realnvp-server load it),
checkpoint.safetensors (the model + train.adam_m/train.adam_v + train_state/train_options, the layout bin/realnvp-train
writes, so either trainer can --resume the other's), metrics.jsonl and samples_t0.7.png.

Same run as the C trainer: options of the same names and defaults, the same initialisation, data order, dequantisation
noise and flips for a seed (realnvp_torch/rng.py), the same loss (mean bits/dim with batch statistics), L2 on weight_g
and scale, global-norm clipping, Adam, the learning-rate schedule (warm-up, then constant, cosine or linear decay), and
the same exactly-zero gradients set to 0; evaluation on the test set with the C trainer's seeded noise.
--batch is the global batch: process r of P takes images B*r/P .. B*(r+1)/P - 1 of every batch, and every batch norm
(the s/t networks' and the flow's) all-reduces its sums and count across the processes, so P processes compute the
step one process would (up to float32 summation order).
"""
import argparse
import concurrent.futures
import datetime
import faulthandler
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from . import __version__, data, rng
from .model import RealNVP, config_json, world_size

# name, type, default, help, architecture (fixed by a checkpoint on --resume); the C trainer's
# options (train/options.c) with its defaults, then the twin's own
OPTIONS = [
    ("data", str, "/usr/share/datasets/fashion-mnist",
     "training data: a Fashion-MNIST/MNIST folder (train-images-idx3-ubyte[.gz], t10k-...), a CIFAR-10 binary "
     "folder (data_batch_N.bin, test_batch.bin), or one IDX image file or CIFAR-10 .bin", 0),
    ("test", str, "", "test set (IDX file or CIFAR-10 .bin); default: the data folder's own test set, else a "
     "held-out split", 0),
    ("val-fraction", float, 0.05, "fraction of the training images held out for evaluation when there is no test set", 0),
    ("scales", int, 3, "number of scales S (H and W divisible by 2^(S-1))", 1),
    ("res-blocks", int, 4, "residual blocks K in each s/t network", 1),
    ("features", str, "32,64,64", "features F per scale, comma-separated (one value repeats for every scale)", 1),
    ("flow-batchnorm", int, 1, "flow batch norm after every coupling (0 or 1)", 1),
    ("kernel", int, 3, "kernel of in_conv and the block convolutions (odd)", 1),
    ("alpha", float, 0.05, "logit pre-processing alpha", 1),
    ("lr", float, 1e-3, "Adam learning rate", 0),
    ("beta1", float, 0.9, "Adam beta1", 0),
    ("beta2", float, 0.999, "Adam beta2", 0),
    ("adam-eps", float, 1e-8, "Adam epsilon", 0),
    ("batch", int, 64, "images per step over all processes (at least 2: batch norm uses batch statistics)", 0),
    ("l2", float, 5e-5, "L2 penalty l2*sum(p^2) on every weight_g and scale, added to the bits/dim loss", 0),
    ("clip", float, 100.0, "global gradient-norm clipping threshold (0: off)", 0),
    ("warmup", int, 0, "linear learning-rate warm-up over this many steps", 0),
    ("lr-schedule", str, "constant", "learning rate after warm-up and --decay-start: constant, cosine or linear decay "
     "to --lr-min at the last step (the formula: bin/realnvp-train --help, docs/training.md)", 0),
    ("decay-start", int, 0, "the decay starts after step max(this, --warmup) (0: right after warm-up)", 0),
    ("lr-min", float, 0.0, "learning rate the decay reaches at the last step", 0),
    ("flip", str, "auto", "horizontal-flip augmentation: on, off, auto (on for Fashion-MNIST/MNIST folders and "
     "CIFAR-10)", 0),
    ("threads", int, 0, "CPU threads per process (0: the cores shared evenly by the processes on the machine)", 0),
    ("seed", int, 1, "seed of the initialisation, data order, noise and flips (the C trainer's streams)", 0),
    ("steps", int, 0, "train until this step (overrides --epochs when > 0)", 0),
    ("epochs", int, 20, "train for this many epochs (full passes over the training images)", 0),
    ("eval-every", int, 2000, "evaluate (test bits/dim, model.safetensors) every N steps and at the end (0: only at "
     "the end)", 0),
    ("eval-images", int, 0, "test images per evaluation (0: all)", 0),
    ("log-every", int, 100, "append a metrics line every N steps", 0),
    ("save-every", int, 600, "write the resumable checkpoint every N seconds (and at every evaluation and exit)", 0),
    ("out", str, "runs/torch", "output folder: model.safetensors, checkpoint.safetensors, metrics.jsonl, samples", 0),
]
TWIN_OPTIONS = [
    ("device", str, "auto", "auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N", 0),
    ("eval-batch", int, 100, "images per evaluation batch", 0),
]
C_KEYS = [o[0] for o in OPTIONS]
SCHEDULES = ("constant", "cosine", "linear")
CKPT, MODEL, METRICS = "checkpoint.safetensors", "model.safetensors", "metrics.jsonl"


def say(msg):
    print(f"realnvp_torch.train: {msg}", file=sys.stderr, flush=True)


def parse(argv):
    """Options given on the command line only (the others come from defaults or a checkpoint)."""
    ap = argparse.ArgumentParser(prog="python3 -m realnvp_torch.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 argument_default=argparse.SUPPRESS)
    for name, typ, default, hlp, _ in OPTIONS + TWIN_OPTIONS:
        ap.add_argument("--" + name, type=typ, metavar=typ.__name__.upper(), help=f"{hlp} [default: {default}]")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors (this trainer's "
                    "or bin/realnvp-train's): its options are the base, flags given here override all but the architecture")
    ap.add_argument("--version", action="version", version=f"realnvp_torch {__version__} (torch {torch.__version__})")
    return vars(ap.parse_args(argv))


def resolve(given, saved):
    """defaults < a checkpoint's train_options < the command line (architecture: the checkpoint's)."""
    o = {name: default for name, _, default, _, _ in OPTIONS + TWIN_OPTIONS}
    types = {name: typ for name, typ, _, _, _ in OPTIONS + TWIN_OPTIONS}
    arch = {name for name, _, _, _, a in OPTIONS if a}
    for k, v in (saved or {}).items():
        if k in o:
            o[k] = types[k](int(v) if types[k] is int and isinstance(v, bool) else v)
    for k, v in given.items():
        k = k.replace("_", "-")
        if k == "resume":
            continue
        if saved is not None and k in arch:
            say(f"note: --{k} is ignored on --resume (the checkpoint fixes the architecture)")
            continue
        o[k] = v
    if o["flip"] not in ("on", "off", "auto"):
        raise SystemExit(f"realnvp_torch.train: --flip must be on, off or auto, not '{o['flip']}'")
    if o["batch"] < 2:
        raise SystemExit("realnvp_torch.train: --batch must be at least 2 (batch norm uses batch statistics)")
    if o["lr-schedule"] not in SCHEDULES:
        raise SystemExit(f"realnvp_torch.train: --lr-schedule must be constant, cosine or linear, not '{o['lr-schedule']}'")
    if o["lr-schedule"] != "constant" and o["lr-min"] > o["lr"]:
        raise SystemExit(f"realnvp_torch.train: --lr-min {o['lr-min']:g} is above --lr {o['lr']:g}: the "
                         f"{o['lr-schedule']} decay would raise the learning rate")
    return o


def c_options_json(o):
    """train_options as bin/realnvp-train writes it (its keys and JSON types; seed a string)."""
    out = {}
    for name, typ, _, _, _ in OPTIONS:
        v = o[name]
        if name == "seed":
            v = str(v & rng.M64)
        elif name == "flow-batchnorm":
            v = bool(v)
        out[name] = v
    return json.dumps(out, separators=(",", ":"))

# ---------------------------------------------------------------- processes and devices


def setup_processes(o):
    """(rank, size, local size, device). torchrun's WORLD_SIZE > 1: init the process group
    (nccl on CUDA, gloo on the CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    dev = o["device"]
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("realnvp_torch.train: --device cuda, but torch sees no CUDA device")
        if dev == "cuda":
            dev = f"cuda:{local % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(dev))
    if size > 1:
        dist.init_process_group("nccl" if dev.startswith("cuda") else "gloo")
    threads = o["threads"] or max(1, (os.cpu_count() or 1) // max(1, local_size))
    torch.set_num_threads(threads)
    return rank, size, torch.device(dev), threads


def any_rank(flag):
    """True on every process when flag is true on any (a stop signal on one stops all)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, model, opt, params, run, o, dataset):
    """The model + train.adam_m / train.adam_v over every model tensor in the order of 5.4
    (zeros for running statistics), and train_state / train_options: bin/realnvp-train's layout."""
    ms, vs = [], []
    for name, t in model.tensors().items():
        p = params.get(name)
        st = opt.state.get(p) if p is not None else None
        if st and "exp_avg" in st:
            ms.append(st["exp_avg"].detach().float().cpu().reshape(-1).numpy())
            vs.append(st["exp_avg_sq"].detach().float().cpu().reshape(-1).numpy())
        else:
            ms.append(np.zeros(t.size, np.float32))
            vs.append(np.zeros(t.size, np.float32))
    state = {"step": run["step"], "epoch": round(run["step"] / run["spe"], 6),
             "best_test_bits_per_dim": run["best"] if math.isfinite(run["best"]) else -1.0,
             "train_seconds": round(run["seconds"] + time.time() - run["t0"], 3), "seed": str(o["seed"] & rng.M64)}
    meta = {"train_state": json.dumps(state, separators=(",", ":")), "train_options": c_options_json(o),
            "dataset": dataset,
            "torch_options": json.dumps({k: o[k] for k, _, _, _, _ in TWIN_OPTIONS}, separators=(",", ":"))}
    model.save(path, meta, {"train.adam_m": np.concatenate(ms), "train.adam_v": np.concatenate(vs)})


def load_checkpoint(path, model, opt, params):
    """Model tensors, Adam's moments and the step from a checkpoint of either trainer. Returns
    (train_state dict, train_options dict, torch_options dict)."""
    from . import safetensors
    meta, t = safetensors.read(path)
    if "train_state" not in meta or "train.adam_m" not in t:
        raise SystemExit(f"realnvp_torch.train: {path}: no train_state/train.adam_m: not a resumable checkpoint "
                         "(model.safetensors and best.safetensors hold the model only)")
    model.load_tensors(t)
    state = json.loads(meta["train_state"])
    off, am, av = 0, t["train.adam_m"].reshape(-1), t["train.adam_v"].reshape(-1)
    for name, arr in model.tensors().items():
        n = arr.size
        p = params.get(name)
        if p is not None:
            opt.state[p] = {"step": torch.tensor(float(state["step"])),
                            "exp_avg": torch.from_numpy(am[off:off + n].copy()).reshape(p.shape).to(p.device, p.dtype),
                            "exp_avg_sq": torch.from_numpy(av[off:off + n].copy()).reshape(p.shape).to(p.device, p.dtype)}
        off += n
    if off != am.size:
        raise SystemExit(f"realnvp_torch.train: {path}: train.adam_m has {am.size} values, the model {off}")
    return state, json.loads(meta.get("train_options", "{}")), json.loads(meta.get("torch_options", "{}"))

# ---------------------------------------------------------------- the run


class Batches:
    """The global batch of step t, as train/main.c train_step builds it: images perm_e[pos*B ..]
    of epoch e's permutation, each flipped or not, plus its uniforms, divided by 256 and rounded
    to float32; this process's share only. The next step's batch is prepared in a thread."""

    def __init__(self, px, batch, seed, flip, b0, nb, spe):
        self.px, self.B, self.seed, self.flip, self.b0, self.nb, self.spe = px, batch, seed, flip, b0, nb, spe
        self.D = int(np.prod(px.shape[1:]))
        self.perms = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.ahead = None

    def _perm(self, e):
        if e not in self.perms:
            self.perms = {e: rng.epoch_perm(self.px.shape[0], self.seed, e)}
        return self.perms[e]

    def make(self, t):
        e, pos = divmod(t, self.spe)
        idx = self._perm(e)[pos * self.B + self.b0:pos * self.B + self.b0 + self.nb]
        flips, u = rng.step_noise(self.seed, t, self.B, self.D, self.flip)
        img = self.px[idx].astype(np.float64)
        f = flips[self.b0:self.b0 + self.nb]
        img[f] = img[f][..., ::-1]
        xt = (img + u[self.b0:self.b0 + self.nb].reshape(img.shape)) / 256.0
        return torch.from_numpy(xt.astype(np.float32))

    def get(self, t):
        x = self.ahead[1].result() if self.ahead and self.ahead[0] == t else self.make(t)
        self.ahead = (t + 1, self.pool.submit(self.make, t + 1))
        return x


def free_gradients(model):
    """(tensor, start) of the gradients the loss does not depend on, exactly 0 (zero_free_gradients,
    train/flow_train.c): biases of in_conv, conv_a, conv_b (batch norms follow them) and, with flow
    batch norm, the t half of out_conv's bias. Round-off there would become Adam steps whose
    direction depends on the summation order."""
    out = []
    for c in model.flow:
        out.append((c.net.in_conv.bias, 0))
        for b in c.net.blocks:
            out += [(b.conv_a.bias, 0), (b.conv_b.bias, 0)]
        if c.flow_bn is not None:
            out.append((c.net.out_conv.bias, c.Ct))
    return out


def scheduled_lr(o, t, total):
    """The learning rate of step t (1-based, the step logged after it) of a run ending at step total: tr_lr
    (train/optim.c), the same formula in the same order. With s = max(decay-start, warmup): lr * t / warmup before
    the warm-up's end; lr up to step s (and always when constant or total <= s); then p = min(1, (t - s) / (total -
    s)), cosine lr_min + (lr - lr_min) (1 + cos(pi p)) / 2 or linear lr - (lr - lr_min) p: lr_min at step total."""
    w = t / o["warmup"] if o["warmup"] > 0 and t < o["warmup"] else 1.0
    s = max(o["decay-start"], o["warmup"])
    if o["lr-schedule"] == "constant" or t <= s or total <= s:
        return o["lr"] * w
    p = min(1.0, (t - s) / (total - s))
    lo, hi = o["lr-min"], o["lr"]
    base = lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * p)) if o["lr-schedule"] == "cosine" else hi - (hi - lo) * p
    return base * w


def schedule_line(o, step, total):
    """The learning-rate schedule in one line, as bin/realnvp-train prints it at the start."""
    s = max(o["decay-start"], o["warmup"])
    wu = f", linear warm-up over steps 1..{o['warmup']}" if o["warmup"] > 0 else ""
    if o["lr-schedule"] == "constant":
        return f"learning rate {o['lr']:g}{wu}, then constant"
    if s >= total:
        return (f"learning rate {o['lr']:g}{wu}; no {o['lr-schedule']} decay: it would start after step {s}, the run "
                f"ends at step {total}")
    return (f"learning rate {o['lr']:g}{wu}; {o['lr-schedule']} decay over steps {s + 1}..{total} to {o['lr-min']:g} "
            f"(step {step + 1}: {scheduled_lr(o, step + 1, total):.4g})")


def optimizer_step(opt, plist, decayed, free, o, t, total):
    """L2, clipping and Adam as tr_adam_step (train/optim.c); t is the 1-based step, total the run's last step
    (for the learning-rate schedule). Returns the gradient norm before clipping and the learning rate."""
    with torch.no_grad():
        for p, start in free:
            p.grad[start:] = 0
        for p in decayed:
            p.grad.add_(p, alpha=2 * o["l2"])
        gn = math.sqrt(float(sum((p.grad.double() ** 2).sum() for p in plist)))
        cs = o["clip"] / gn if o["clip"] > 0 and gn > o["clip"] else 1.0
        for p in plist:
            g = p.grad * cs if cs != 1.0 else p.grad
            p.grad.copy_(torch.where(torch.isfinite(g), g, torch.zeros_like(g)))
    lr = scheduled_lr(o, t, total)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return gn, lr


def evaluate(model, test, limit, eval_batch, device):
    """Test bits/dim over the first `limit` test images (0: all) in eval mode, with the C
    trainer's evaluation noise (the same at every evaluation)."""
    n = test.n if limit <= 0 or limit >= test.n else limit
    D = int(np.prod(test.px.shape[1:]))
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, eval_batch):
            b = min(eval_batch, n - i)
            u = rng.eval_noise(i, b, D).reshape((b,) + test.px.shape[1:])
            lp = model.log_prob(torch.from_numpy(test.px[i:i + b]), torch.from_numpy(u))
            total += float(model.bits_per_dim(lp).sum())
    model.train()
    return total / n


def main(argv=None):
    # SIGUSR1 prints every thread's Python stack to stderr: where a run that seems stuck is
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    given = parse(sys.argv[1:] if argv is None else argv)
    out = given.get("out", dict((n, d) for n, _, d, _, _ in OPTIONS)["out"])
    ckpt = os.path.join(out, CKPT)
    saved = None
    if given.get("resume"):
        if not os.path.exists(ckpt):
            raise SystemExit(f"realnvp_torch.train: --resume: {ckpt} does not exist")
        from . import safetensors
        meta, _ = safetensors.read(ckpt)
        saved = {**json.loads(meta.get("train_options", "{}")), **json.loads(meta.get("torch_options", "{}"))}
        saved["out"] = out
    o = resolve(given, saved)
    rank, size, device, threads = setup_processes(o)
    rank0 = rank == 0

    train, test, kind = data.open_data(o["data"])
    if o["test"]:
        test = data.load_file(o["test"])
    if test is None:
        train, test = data.hold_out(train, o["val-fraction"])
    if test.px.shape[1:] != train.px.shape[1:]:
        raise SystemExit(f"realnvp_torch.train: test images are {test.px.shape[1:]}, training images {train.px.shape[1:]}")
    flip = o["flip"] == "on" or (o["flip"] == "auto" and kind in ("idx-dir", "cifar10"))
    if train.n < o["batch"]:
        raise SystemExit(f"realnvp_torch.train: {train.name}: {train.n} training images, fewer than one batch of "
                         f"{o['batch']}")
    if o["batch"] < size:
        raise SystemExit(f"realnvp_torch.train: --batch {o['batch']} is smaller than the {size} processes")
    _, C, H, W = train.px.shape

    feats = [int(f) for f in str(o["features"]).split(",")]
    if len(feats) == 1:
        feats *= o["scales"]
    cfg = {"height": H, "width": W, "channels": C, "num_scales": o["scales"], "res_blocks": o["res-blocks"],
           "features": feats, "alpha": o["alpha"], "bn_eps": 1e-5, "flow_batchnorm": bool(o["flow-batchnorm"]),
           "flow_bn_eps": 1e-4}
    if o["kernel"] != 3:
        cfg["kernel"] = o["kernel"]
    if saved is not None:
        from . import safetensors
        cfg = json.loads(safetensors.read(ckpt)[0]["config"])
        if (cfg["height"], cfg["width"], cfg["channels"]) != (H, W, C):
            raise SystemExit(f"realnvp_torch.train: the checkpoint's model is {cfg['width']} x {cfg['height']} x "
                             f"{cfg['channels']}, the data {W} x {H} x {C}")
    model = RealNVP(cfg)
    model.init_params(o["seed"])
    model.to(device).train()
    params = dict(model.named_parameters())
    plist = list(params.values())
    decayed = [p for n, p in params.items() if n.endswith(".weight_g") or n.endswith(".scale")]
    opt = torch.optim.Adam(plist, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["adam-eps"])
    run = {"step": 0, "best": math.inf, "seconds": 0.0, "t0": time.time()}
    if saved is not None:
        state, _, _ = load_checkpoint(ckpt, model, opt, params)
        run["step"] = int(state["step"])
        run["best"] = state["best_test_bits_per_dim"] if state.get("best_test_bits_per_dim", -1) > 0 else math.inf
        run["seconds"] = float(state.get("train_seconds", 0.0))
    net = model
    if size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    B = o["batch"]
    b0, nb = B * rank // size, B * (rank + 1) // size - B * rank // size
    spe = train.n // B
    run["spe"] = spe
    total = o["steps"] if o["steps"] > 0 else o["epochs"] * spe
    batches = Batches(train.px, B, o["seed"], flip, b0, nb, spe)
    free = free_gradients(model)
    D = model.D
    if rank0:
        os.makedirs(out, exist_ok=True)
        metrics = os.path.join(out, METRICS)
        if saved is None and os.path.exists(metrics):
            os.remove(metrics)
        elif saved is not None and os.path.exists(metrics):
            keep = [l for l in open(metrics) if l.strip() and json.loads(l).get("step", 0) <= run["step"]]
            with open(metrics, "w") as f:
                f.writelines(keep)
        print(f"realnvp_torch.train {__version__} (torch {torch.__version__}): {kind} {train.name} ({train.n} train, "
              f"{test.n} test images of {W} x {H} x {C}), flips {'on' if flip else 'off'}")
        print(f"model {config_json(cfg)}: {sum(p.numel() for p in plist)} parameters; batch {B}, device {device}, "
              f"{threads} threads, {spe} steps/epoch, {'resuming at' if saved else 'starting at'} step {run['step']} "
              f"of {total}")
        print(schedule_line(o, run["step"], total))
        if size > 1:
            print(f"{size} processes (torch.distributed, {dist.get_backend()}), {nb} images of each batch on rank 0")
        sys.stdout.flush()

    stop = {"sig": 0}

    def on_signal(sig, _frame):
        stop["sig"] = sig
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def save_all(test_bpd=None):
        if not rank0:
            return
        save_checkpoint(ckpt, model, opt, params, run, o, train.name)
        meta = {"dataset": train.name, "steps": str(run["step"]),
                "created": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}
        desc = f"realnvp_torch {__version__} (torch {torch.__version__}): step {run['step']}"
        if test_bpd is not None:
            meta["test_bits_per_dim"] = f"{test_bpd:.6f}"
            n_eval = o["eval-images"] if 0 < o["eval-images"] < test.n else test.n
            desc += f", test bits/dim {test_bpd:.4f} over {n_eval} images (seeded dequantisation)"
        meta["description"] = desc
        model.save(os.path.join(out, MODEL), meta)

    def metrics_line(d):
        """One line of metrics.jsonl, the C trainer's keys."""
        with open(os.path.join(out, METRICS), "a") as f:
            f.write(json.dumps(d, separators=(",", ":")) + "\n")

    def do_eval():
        bpd = evaluate(model, test, o["eval-images"], o["eval-batch"], device)
        run["best"] = min(run["best"], bpd)
        metrics_line({"step": run["step"], "epoch": round(run["step"] / spe, 4), "test_bpd": round(bpd, 6),
                      "time": round(run["seconds"] + time.time() - run["t0"], 1)})
        print(f"step {run['step']}: test {bpd:.4f} bits/dim", flush=True)
        return bpd

    last_save = last_print = time.time()
    win_loss, win_n, win_t0, win_start = 0.0, 0, time.time(), run["step"]
    nan_steps, test_bpd, rc = 0, None, 0
    while run["step"] < total:
        if any_rank(stop["sig"] != 0):
            break
        t = run["step"]
        xt = batches.get(t).to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        lp = net(xt)
        local = -lp.sum() / (B * D * math.log(2.0))
        (local * size).backward()    # DDP averages the processes' gradients: this makes it their sum
        gn, lr = optimizer_step(opt, plist, decayed, free, o, t + 1, total)
        loss = local.detach()
        if size > 1:
            dist.all_reduce(loss)
        loss = float(loss)
        run["step"] += 1
        if not math.isfinite(loss) or not math.isfinite(gn):
            nan_steps += 1
            if nan_steps > 20:
                if rank0:
                    say(f"the loss is not finite for 20 steps at step {run['step']}: stopping (lower --lr or raise "
                        "--warmup); the last checkpoint is intact")
                rc = 1
                break
        else:
            win_loss += loss
            win_n += 1
        if not rank0:
            continue
        now = time.time()
        ips = (run["step"] - win_start) * B / max(now - win_t0, 1e-9)
        if now - last_print > 30 or run["step"] == total or run["step"] % o["log-every"] == 0:
            print(f"step {run['step']}/{total} epoch {run['step'] / spe:.2f}  {ips:.1f} img/s  train "
                  f"{win_loss / max(win_n, 1):.4f} bpd  lr {lr:.3g}", flush=True)
            last_print = now
        if run["step"] % o["log-every"] == 0:
            metrics_line({"step": run["step"], "epoch": round(run["step"] / spe, 4),
                          "train_bpd": round(win_loss / win_n, 6) if win_n else None,
                          "images_per_s": round(ips, 2), "lr": float(f"{lr:.6g}"),
                          "time": round(run["seconds"] + now - run["t0"], 1)})
            win_loss, win_n, win_t0, win_start = 0.0, 0, time.time(), run["step"]
        if o["eval-every"] > 0 and run["step"] % o["eval-every"] == 0:
            test_bpd = do_eval()
            save_all(test_bpd)
            last_save = time.time()
        elif time.time() - last_save > o["save-every"]:
            save_all(test_bpd)
            last_save = time.time()
    stopped = run["step"] < total and rc == 0
    for sig in (signal.SIGINT, signal.SIGTERM):   # from here on a signal ends the process as usual
        signal.signal(sig, signal.SIG_DFL)
    if rank0:
        if not stopped and rc == 0 and (o["eval-every"] == 0 or run["step"] % o["eval-every"] != 0):
            test_bpd = do_eval()
        save_all(test_bpd)
        model.eval()
        with torch.no_grad():
            data.png_write_grid(os.path.join(out, "samples_t0.7.png"),
                                model.sample(64, 0.7, seed=1234).cpu().numpy(), 8)
        how = "done" if not stopped else f"stopped by signal {stop['sig']}"
        print(f"{how} at step {run['step']}: {ckpt}, {os.path.join(out, MODEL)}"
              + (f" (test bits/dim {test_bpd:.4f})" if test_bpd is not None else ""), flush=True)
    if size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(main())
