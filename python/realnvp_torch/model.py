"""realnvp_torch.model: the Real NVP of docs/model.md as an nn.Module (train and eval mode, inverse, sampling, tensors).
Leaves out the training loop (train.py), data (data.py) and the file's bytes (safetensors.py)."""
import json
import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from . import rng
from . import safetensors

MOMENTUM = 0.1        # running averages: r <- 0.9 r + 0.1 batch value (docs/model.md 2.5, 2.6)
INIT_OUT_G = 0.01     # tr_init_params (train/flow_train.c): out_conv's weight_g
INIT_SCALE = 1.0      # and every coupling's scale

# ---------------------------------------------------------------- config (docs/model.md 5.3)

CONFIG_KEYS = ("height", "width", "channels", "num_scales", "res_blocks", "features", "alpha",
               "bn_eps", "flow_batchnorm", "flow_bn_eps")


def validate_config(cfg):
    """Raises ValueError naming the key when cfg breaks a rule of docs/model.md 5.3."""
    for k in CONFIG_KEYS:
        if k not in cfg:
            raise ValueError(f"config: missing key {k}")
    S = cfg["num_scales"]
    ints = {"height": (2, 4096), "width": (2, 4096), "num_scales": (1, 8), "res_blocks": (0, 64)}
    for k, (lo, hi) in ints.items():
        v = cfg[k]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"config: {k} = {v!r}, expected an integer {lo}..{hi}")
    if cfg["channels"] not in (1, 3) or isinstance(cfg["channels"], bool):
        raise ValueError(f"config: channels = {cfg['channels']!r}, expected 1 or 3")
    for k in ("height", "width"):
        if cfg[k] % (1 << (S - 1)):
            raise ValueError(f"config: {k} {cfg[k]} is not divisible by 2^(num_scales-1) = {1 << (S - 1)}")
    f = cfg["features"]
    if not isinstance(f, list) or len(f) != S or not all(
            isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4096 for x in f):
        raise ValueError(f"config: features = {f!r}, expected {S} integers 1..4096")
    if not 0 <= cfg["alpha"] < 0.5:
        raise ValueError(f"config: alpha = {cfg['alpha']}, expected 0 <= alpha < 0.5")
    for k in ("bn_eps", "flow_bn_eps"):
        if not 0 < cfg[k] < 1:
            raise ValueError(f"config: {k} = {cfg[k]}, expected 0 < {k} < 1")
    if cfg["flow_batchnorm"] not in (True, False, 0, 1):
        raise ValueError(f"config: flow_batchnorm = {cfg['flow_batchnorm']!r}, expected true or false")
    kern = cfg.get("kernel", 3)
    if isinstance(kern, bool) or not isinstance(kern, int) or kern % 2 == 0 or not 1 <= kern <= 15:
        raise ValueError(f"config: kernel = {kern!r}, expected an odd integer 1..15")


def config_json(cfg):
    """The config string as the C writer prints it (rnvp_config_to_json): the key order of 5.3,
    numbers to 9 significant digits, kernel only when it is not 3."""
    kern = cfg.get("kernel", 3)
    return ("{" + f'"height":{cfg["height"]},"width":{cfg["width"]},"channels":{cfg["channels"]},'
            f'"num_scales":{cfg["num_scales"]},"res_blocks":{cfg["res_blocks"]},'
            f'"features":[{",".join(str(int(x)) for x in cfg["features"])}],'
            f'"alpha":{cfg["alpha"]:.9g},"bn_eps":{cfg["bn_eps"]:.9g},'
            f'"flow_batchnorm":{"true" if cfg["flow_batchnorm"] else "false"},'
            f'"flow_bn_eps":{cfg["flow_bn_eps"]:.9g}' + (f',"kernel":{kern}' if kern != 3 else "") + "}")

# ---------------------------------------------------------------- layout (docs/model.md 2, 2.7, 5.4)


def coupling_layout(cfg):
    """Forward-order list of couplings: dicts with kind ('checker'|'channel'), parity, the
    channel count C the coupling sees, H, W, scale index s."""
    S = cfg["num_scales"]
    C, H, W = cfg["channels"], cfg["height"], cfg["width"]
    out = []
    for s in range(S):
        if s < S - 1:
            for q in (0, 1, 0):
                out.append(dict(kind="checker", parity=q, C=C, H=H, W=W, s=s))
            for q in (0, 1, 0):
                out.append(dict(kind="channel", parity=q, C=4 * C, H=H // 2, W=W // 2, s=s))
            C, H, W = 2 * C, H // 2, W // 2
        else:
            for q in (0, 1, 0, 1):
                out.append(dict(kind="checker", parity=q, C=C, H=H, W=W, s=s))
    return out


def latent_parts(cfg):
    """[(offset, C, H, W)] of z_0 .. z_{S-1}."""
    S = cfg["num_scales"]
    C, H, W = cfg["channels"], cfg["height"], cfg["width"]
    parts, off = [], 0
    for s in range(S):
        if s < S - 1:
            parts.append((off, 2 * C, H // 2, W // 2))
            off += 2 * C * (H // 2) * (W // 2)
            C, H, W = 2 * C, H // 2, W // 2
        else:
            parts.append((off, C, H, W))
            off += C * H * W
    return parts


def ct_cin(c):
    """(transformed channels Ct, net input channels C_in) of a coupling_layout entry."""
    if c["kind"] == "checker":
        return c["C"], c["C"] + 1
    return c["C"] // 2, c["C"] // 2


def squeeze(x):
    """out[c*4 + dh*2 + dw][i][j] = in[c][2i + dh][2j + dw] (docs/model.md 2.1)."""
    N, C, H, W = x.shape
    x = x.reshape(N, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(N, 4 * C, H // 2, W // 2)


def unsqueeze(x):
    N, C4, h, w = x.shape
    C = C4 // 4
    x = x.reshape(N, C, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(N, C, 2 * h, 2 * w)


def split_indices(C):
    """docs/model.md 2.2 on 4C squeezed channels: (kept channels, factored-out channels, the
    inverse permutation of keep + fact)."""
    keep = [c * 4 + 0 for c in range(C)] + [c * 4 + 3 for c in range(C)]
    fact = [c * 4 + 1 for c in range(C)] + [c * 4 + 2 for c in range(C)]
    inv = [0] * (4 * C)
    for pos, ch in enumerate(keep + fact):
        inv[ch] = pos
    return keep, fact, inv


def conv_names(cfg):
    """[(coupling k, tensor prefix, C_out, C_in, default kernel)] of every convolution, in the
    order of docs/model.md 5.4."""
    out = []
    kern = cfg.get("kernel", 3)
    for k, c in enumerate(coupling_layout(cfg)):
        Fs = cfg["features"][c["s"]]
        Ct, Cin = ct_cin(c)
        p = f"flow.{k}.net"
        out.append((k, p + ".in_conv", Fs, Cin, kern))
        for j in range(cfg["res_blocks"]):
            out.append((k, f"{p}.blocks.{j}.conv_a", Fs, Fs, kern))
            out.append((k, f"{p}.blocks.{j}.conv_b", Fs, Fs, kern))
        out.append((k, p + ".out_conv", 2 * Ct, Fs, 1))
    return out


def expected_shapes(cfg, tensors=None):
    """{name: shape} docs/model.md 5.4 requires, in its order; kernel sizes from the weight_v
    tensors present in `tensors` (if given), else the config's kernel and 1x1 out_conv."""
    def k_of(name, default):
        a = tensors.get(name) if tensors is not None else None
        return tuple(a.shape[2:]) if a is not None and a.ndim == 4 else (default, default)
    need = {}
    K = cfg["res_blocks"]
    kern = cfg.get("kernel", 3)
    for k, c in enumerate(coupling_layout(cfg)):
        Fs = cfg["features"][c["s"]]
        Ct, Cin = ct_cin(c)
        p = f"flow.{k}.net"

        def conv(name, o, i, kk):
            need[name + ".weight_v"] = (o, i) + k_of(name + ".weight_v", kk)
            need[name + ".weight_g"] = (o,)
            need[name + ".bias"] = (o,)

        def bn(name, n):
            for f in ("weight", "bias", "running_mean", "running_var"):
                need[f"{name}.{f}"] = (n,)
        conv(p + ".in_conv", Fs, Cin, kern)
        for j in range(K):
            bn(f"{p}.blocks.{j}.bn_a", Fs)
            conv(f"{p}.blocks.{j}.conv_a", Fs, Fs, kern)
            bn(f"{p}.blocks.{j}.bn_b", Fs)
            conv(f"{p}.blocks.{j}.conv_b", Fs, Fs, kern)
        bn(p + ".bn_out", Fs)
        conv(p + ".out_conv", 2 * Ct, Fs, 1)
        need[f"flow.{k}.scale"] = (Ct,)
        if cfg["flow_batchnorm"]:
            need[f"flow.{k}.flow_bn.running_mean"] = (Ct,)
            need[f"flow.{k}.flow_bn.running_var"] = (Ct,)
    return need


def check_tensors(cfg, tensors):
    """Raises ValueError when a tensor is missing, of the wrong shape, unknown (other than
    train.*), has an even or out-of-range kernel, or a running_var is negative (5.5)."""
    need = expected_shapes(cfg, tensors)
    for name, shape in need.items():
        if name not in tensors:
            raise ValueError(f"missing tensor {name}")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{name}: shape {list(tensors[name].shape)}, expected {list(shape)}")
        if name.endswith(".weight_v") and not all(d % 2 == 1 and 1 <= d <= 15 for d in shape[2:]):
            raise ValueError(f"{name}: kernel {shape[2]}x{shape[3]}, expected odd sides 1..15")
        if name.endswith("running_var") and np.any(np.asarray(tensors[name]) < 0):
            raise ValueError(f"{name}: negative value")
    for name in tensors:
        if name not in need and not name.startswith("train."):
            raise ValueError(f"unknown tensor {name}")
    return need

# ---------------------------------------------------------------- data parallelism


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of every process's gradient of it (each
    process's loss depends on the global sum)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, g):
        g = g.clone()
        dist.all_reduce(g)
        return g


def _sum_all(x):
    return _AllReduceSum.apply(x) if world_size() > 1 else x


def batch_stats(x, mask=None, n_per_image=None):
    """Per-channel mean and biased variance of x (N, C, H, W) over N, H, W, or over the
    positions where mask (1, 1, H, W) is 1 (n_per_image of them), across every process of a
    torch.distributed run: the sums and the count are all-reduced, then the squared deviations
    (two passes, as the C trainer does), so that P processes compute what one process would
    on the whole batch."""
    dims = (0, 2, 3)
    cnt = x.shape[0] * (n_per_image if mask is not None else x.shape[2] * x.shape[3])
    s1 = (x * mask if mask is not None else x).sum(dim=dims)
    red = _sum_all(torch.cat([s1, s1.new_full((1,), float(cnt))]))
    n = red[-1].detach()
    mean = red[:-1] / n
    d = x - mean.view(1, -1, 1, 1)
    if mask is not None:
        d = d * mask
    var = _sum_all((d * d).sum(dim=dims)) / n
    return mean, var


def _update_running(rm, rv, mean, var):
    """r <- 0.9 r + 0.1 batch value, in double then rounded (running_update, train/layers.c)."""
    with torch.no_grad():
        rm.copy_(((1 - MOMENTUM) * rm.double() + MOMENTUM * mean.detach().double()).to(rm.dtype))
        rv.copy_(((1 - MOMENTUM) * rv.double() + MOMENTUM * var.detach().double()).to(rv.dtype))

# ---------------------------------------------------------------- modules


class WNConv(nn.Module):
    """A convolution (stride 1, zero padding kh/2, kw/2, bias) with weight normalisation
    w = weight_g * weight_v / ||weight_v[o]|| (docs/model.md 2.6); weight_g has the file's
    shape [C_out]. Training computes w in the parameters' dtype as torch.nn.utils.weight_norm
    does; eval mode computes it in double (as the C core does) and, without autograd, keeps
    it until a parameter changes."""

    def __init__(self, cin, cout, kh, kw=None):
        super().__init__()
        kw = kh if kw is None else kw
        self.weight_v = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.weight_g = nn.Parameter(torch.ones(cout))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.padding = (kh // 2, kw // 2)
        self._cache = None

    def weight(self):
        v, g = self.weight_v, self.weight_g
        if self.training:
            return torch._weight_norm(v, g.view(-1, 1, 1, 1), 0)
        grad = torch.is_grad_enabled() or torch.jit.is_tracing()   # a trace records the computation
        key = (v._version, g._version, v.data_ptr(), g.data_ptr(), v.dtype, v.device)
        if not grad and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        v64 = v.double()
        n = v64.flatten(1).norm(dim=1)
        scale = torch.where(n > 0, g.double() / n.clamp_min(1e-300), torch.zeros_like(n))
        w = (v64 * scale.view(-1, 1, 1, 1)).to(v.dtype)
        if not grad:
            self._cache = (key, w)
        return w

    def train(self, mode=True):
        self._cache = None
        return super().train(mode)

    def forward(self, x):
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class BatchNorm(nn.Module):
    """Batch norm over channels with weight, bias, running_mean, running_var (docs/model.md
    2.6). Training: the batch's mean and biased variance over N, H, W (all processes'), running
    averages of the biased variance; eval: the running statistics."""

    def __init__(self, n, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        if world_size() > 1:
            mean, var = batch_stats(x)
            out = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        else:
            # one process: torch's fused kernel (the same values as nn.BatchNorm2d); the running
            # statistics are updated here with the biased variance, unlike nn.BatchNorm2d
            out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        _update_running(self.running_mean, self.running_var, mean, var)
        return out


class FlowBatchNorm(nn.Module):
    """The flow batch norm of docs/model.md 2.5 (no learned scale or shift), on the elements a
    coupling transformed: running_mean, running_var over its Ct channels."""

    def __init__(self, ct, eps):
        super().__init__()
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(ct))
        self.register_buffer("running_var", torch.ones(ct))

    def forward(self, v, mask, n_trans):
        """v (N, Ct, H, W); mask (1, 1, H, W) of the transformed positions, or None for all.
        Returns the normalised v (to be used where mask is 1) and its log-det per image."""
        if not self.training:
            sd = torch.sqrt(self.running_var.double() + self.eps).to(v.dtype)
            ld = -torch.log(sd.double()).sum() * float(n_trans)
            return (v - self.running_mean.view(1, -1, 1, 1)) / sd.view(1, -1, 1, 1), ld
        if world_size() > 1:
            mean, var = batch_stats(v, mask, n_trans)
        else:
            # the same arithmetic as bench/torch_train.py has always done on one process
            dims = (0, 2, 3)
            cnt = v.shape[0] * n_trans
            if mask is None:
                mean = v.mean(dim=dims)
                var = (v - mean.view(1, -1, 1, 1)).square().mean(dim=dims)
            else:
                mean = (v * mask).sum(dim=dims) / cnt
                var = ((v - mean.view(1, -1, 1, 1)) * mask).square().sum(dim=dims) / cnt
        _update_running(self.running_mean, self.running_var, mean, var)
        out = (v - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        return out, -0.5 * n_trans * torch.log(var + self.eps).sum()


class ResBlock(nn.Module):
    def __init__(self, Fs, kh, kw, eps):
        super().__init__()
        self.bn_a = BatchNorm(Fs, eps)
        self.conv_a = WNConv(Fs, Fs, kh, kw)
        self.bn_b = BatchNorm(Fs, eps)
        self.conv_b = WNConv(Fs, Fs, kh, kw)

    def forward(self, h):
        return h + self.conv_b(F.relu(self.bn_b(self.conv_a(F.relu(self.bn_a(h))))))


class STNet(nn.Module):
    """docs/model.md 2.6: in_conv, K residual blocks, bn_out, relu, out_conv (s_raw then t)."""

    def __init__(self, cin, Fs, cout, K, eps, kernels):
        super().__init__()
        self.in_conv = WNConv(cin, Fs, *kernels[0])
        self.blocks = nn.ModuleList([ResBlock(Fs, *kernels[1 + 2 * j], eps) for j in range(K)])
        self.bn_out = BatchNorm(Fs, eps)
        self.out_conv = WNConv(Fs, cout, *kernels[-1])

    def forward(self, x):
        h = self.in_conv(x)
        for b in self.blocks:
            h = b(h)
        return self.out_conv(F.relu(self.bn_out(h)))


class Coupling(nn.Module):
    """One coupling (docs/model.md 2.3 checkerboard, 2.4 channel) and its flow batch norm (2.5).
    forward: x -> (y, log-det per image); inverse: y -> x (running statistics)."""

    def __init__(self, lay, cfg, kernels):
        super().__init__()
        self.kind, self.parity = lay["kind"], lay["parity"]
        H, W = lay["H"], lay["W"]
        self.Ct, cin = ct_cin(lay)
        self.net = STNet(cin, cfg["features"][lay["s"]], 2 * self.Ct, cfg["res_blocks"], cfg["bn_eps"], kernels)
        self.scale = nn.Parameter(torch.full((self.Ct,), INIT_SCALE))
        self.flow_bn = FlowBatchNorm(self.Ct, cfg["flow_bn_eps"]) if cfg["flow_batchnorm"] else None
        if self.kind == "checker":
            i = torch.arange(H).reshape(H, 1)
            j = torch.arange(W).reshape(1, W)
            b = ((i + j + self.parity) % 2 == 0).float().reshape(1, 1, H, W)
            self.register_buffer("mask", b, persistent=False)
            self.register_buffer("nmask", 1.0 - b, persistent=False)
            self.n_trans = int((b == 0).sum())       # transformed positions per channel
        else:
            self.n_trans = H * W

    def _st(self, xin):
        o = self.net(xin)
        return self.scale.view(1, -1, 1, 1) * torch.tanh(o[:, :self.Ct]), o[:, self.Ct:]

    def _halves(self, x):
        h = x.shape[1] // 2
        return (x[:, :h], x[:, h:]) if self.parity == 0 else (x[:, h:], x[:, :h])

    def _join(self, cond, trans):
        return torch.cat([cond, trans] if self.parity == 0 else [trans, cond], dim=1)

    def _sum(self, v):
        """Per-image sum of log-scales: accumulated in double at inference (as the C core); in
        the model's dtype in training, with the flow batch norm's log-det added in that dtype
        too (as bench/torch_train.py always has: its check's numbers stay the same; the
        difference is round-off). flow_forward adds the couplings' log-dets in double."""
        if self.training:
            return v.sum(dim=(1, 2, 3))
        return v.sum(dim=(1, 2, 3), dtype=torch.float64)

    def forward(self, x):
        if self.kind == "checker":
            b, nb = self.mask, self.nmask
            s, t = self._st(torch.cat([x * b, b.expand(x.shape[0], 1, -1, -1)], dim=1))
            y = b * x + nb * (x * torch.exp(s) + t)
            ld = self._sum(s * nb)
            if self.flow_bn is not None:
                yn, l2 = self.flow_bn(y, nb, self.n_trans)
                y = b * y + nb * yn
                ld = ld + l2
            return y, ld
        cond, trans = self._halves(x)
        s, t = self._st(cond)
        trans = trans * torch.exp(s) + t
        ld = self._sum(s)
        if self.flow_bn is not None:
            trans, l2 = self.flow_bn(trans, None, self.n_trans)
            ld = ld + l2
        return self._join(cond, trans), ld

    def inverse(self, y):
        fbn = self.flow_bn
        if fbn is not None:
            sd = torch.sqrt(fbn.running_var.double() + fbn.eps).to(y.dtype).view(1, -1, 1, 1)
            mean = fbn.running_mean.view(1, -1, 1, 1)
        if self.kind == "checker":
            b, nb = self.mask, self.nmask
            if fbn is not None:
                y = b * y + nb * (y * sd + mean)
            s, t = self._st(torch.cat([y * b, b.expand(y.shape[0], 1, -1, -1)], dim=1))
            return b * y + nb * ((y - t) * torch.exp(-s))
        cond, trans = self._halves(y)
        if fbn is not None:
            trans = trans * sd + mean
        s, t = self._st(cond)
        return self._join(cond, (trans - t) * torch.exp(-s))


class RealNVP(nn.Module):
    """The whole model. Its state_dict's names are the checkpoint's tensor names (5.4), so
    `tensors()` and `load_tensors()` map it to the file one to one. In train() mode every batch
    norm uses the batch's statistics (all processes' under torch.distributed) and updates the
    running averages; in eval() mode the running statistics, as the C core and the server do.

    pixels are uint8 (N, C, H, W); xt dequantized images in (0, 1); y the logit; z (N, D) the
    latents in the layout of 2.7; log-probabilities float64 nats of the discrete image (3)."""

    def __init__(self, cfg, tensors=None):
        super().__init__()
        validate_config(cfg)
        self.cfg = dict(cfg)
        self.S = cfg["num_scales"]
        self.C, self.H, self.W = cfg["channels"], cfg["height"], cfg["width"]
        self.D = self.C * self.H * self.W
        self.alpha = cfg["alpha"]
        self.parts = latent_parts(cfg)
        shapes = expected_shapes(cfg, tensors)
        lay = coupling_layout(cfg)
        self.layout = lay
        couplings = []
        for k, c in enumerate(lay):
            p = f"flow.{k}.net"
            names = [p + ".in_conv"] + [f"{p}.blocks.{j}.conv_{x}" for j in range(cfg["res_blocks"])
                                        for x in "ab"] + [p + ".out_conv"]
            couplings.append(Coupling(c, cfg, [shapes[n + ".weight_v"][2:] for n in names]))
        self.flow = nn.ModuleList(couplings)
        C = self.C
        for s in range(self.S - 1):
            keep, fact, inv = split_indices(C)
            self.register_buffer(f"_keep{s}", torch.tensor(keep), persistent=False)
            self.register_buffer(f"_fact{s}", torch.tensor(fact), persistent=False)
            self.register_buffer(f"_inv{s}", torch.tensor(inv), persistent=False)
            C *= 2
        if tensors is not None:
            self.load_tensors(tensors)
        else:
            self.init_params(1)

    # -- parameters and the file (docs/model.md 5)
    @property
    def dtype(self):
        return self.flow[0].scale.dtype

    @property
    def device(self):
        return self.flow[0].scale.device

    def tensor_names(self):
        return list(expected_shapes(self.cfg, self.state_dict()).keys())

    def tensors(self):
        """{name: float32 numpy array} of every model tensor, in the order of 5.4."""
        sd = self.state_dict()
        return {n: sd[n].detach().to("cpu", torch.float32).numpy().copy() for n in self.tensor_names()}

    def load_tensors(self, tensors):
        """Copies a checkpoint's tensors ({name: array}) into the model (train.* ignored)."""
        check_tensors(self.cfg, tensors)
        sd = self.state_dict()
        with torch.no_grad():
            for n in expected_shapes(self.cfg, tensors):
                sd[n].copy_(torch.as_tensor(np.asarray(tensors[n], dtype=np.float32)).reshape(sd[n].shape))
        return self

    def init_params(self, seed):
        """The C trainer's initialisation (tr_init_params, train/flow_train.c) from the same
        stream, so a seed gives the same initial model: weight_v He-normal (sd sqrt(2/K), K =
        C_in*kh*kw, Box-Muller pairs), weight_g = ||v|| (out_conv: 0.01), biases 0, batch norms
        weight 1 bias 0, running mean 0 var 1, scale 1, flow batch norm 0 / 1."""
        stream = rng.init_stream(seed)
        sd = self.state_dict()
        with torch.no_grad():
            for n, t in sd.items():
                if n.endswith(".weight") or n.endswith("running_var") or n.endswith(".scale"):
                    t.fill_(1.0)
                else:
                    t.zero_()
            for k, name, cout, cin, _ in conv_names(self.cfg):
                v = sd[name + ".weight_v"]
                K = cin * v.shape[2] * v.shape[3]
                P = (K + 1) // 2
                a, b = rng.gauss_pairs(stream.take(2 * cout * P).reshape(cout, 2 * P))
                vals = np.empty((cout, 2 * P))
                vals[:, 0::2], vals[:, 1::2] = a, b
                vv = (math.sqrt(2.0 / K) * vals[:, :K]).astype(np.float32)
                if name.endswith(".out_conv"):
                    g = np.full(cout, INIT_OUT_G, dtype=np.float32)
                else:
                    g = np.sqrt((vv.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)
                v.copy_(torch.from_numpy(vv.reshape(v.shape)))
                sd[name + ".weight_g"].copy_(torch.from_numpy(g))
        return self

    @classmethod
    def load(cls, path, map_location=None):
        """(model in eval mode, metadata) from a checkpoint file."""
        m, meta, _ = load_model(path, map_location)
        return m, meta

    def save(self, path, meta=None, extra_tensors=None):
        """Writes the model (5.7: format, version, config first, then `meta`; tensors in the
        order of 5.4, then `extra_tensors`, e.g. train.*) for the C core and the server."""
        md = {"format": "realnvp", "version": "1", "config": config_json(self.cfg)}
        for k, v in (meta or {}).items():
            if k not in md:
                md[k] = str(v)
        t = self.tensors()
        t.update(extra_tensors or {})
        safetensors.write(path, t, md)

    # -- pre-processing (1)
    def logit(self, xt):
        """xt (N, C, H, W) in (0, 1) -> y (model dtype), L_pre (N,) float64; computed in double."""
        a = self.alpha
        p = a + (1 - 2 * a) * xt.to(torch.float64)
        y = torch.log(p) - torch.log1p(-p)
        lpre = (math.log(1 - 2 * a) - torch.log(p) - torch.log1p(-p)).sum(dim=(1, 2, 3))
        return y.to(self.dtype), lpre

    def dequantize(self, pixels, u=0.5):
        """xt = (v + u) / 256 in double; u a number (0.5: the deterministic default) or an array
        of the pixels' shape."""
        pixels = torch.as_tensor(pixels).to(self.device)
        if not isinstance(u, (int, float)):
            u = torch.as_tensor(u).to(self.device, torch.float64)
        return (pixels.to(torch.float64) + u) / 256.0

    def preprocess(self, pixels, u=0.5):
        return self.logit(self.dequantize(pixels, u))

    # -- the flow (2)
    def flow_forward(self, y, ld=None):
        """y (N, C, H, W) -> z (N, D) model dtype, L_flow (N,) float64 (added to ld if given)."""
        N = y.shape[0]
        if ld is None:
            ld = torch.zeros(N, dtype=torch.float64, device=y.device)
        zs, h, k = [], y, 0
        for s in range(self.S):
            last = s == self.S - 1
            for i in range(4 if last else 6):
                if not last and i == 3:
                    h = squeeze(h)
                h, l = self.flow[k](h)
                ld = ld + l
                k += 1
            if not last:
                zs.append(h[:, getattr(self, f"_fact{s}")].reshape(N, -1))
                h = h[:, getattr(self, f"_keep{s}")]
            else:
                zs.append(h.reshape(N, -1))
        return torch.cat(zs, dim=1), ld

    def flow_inverse(self, z):
        """z (N, D) -> y; uses the running statistics (call eval() first)."""
        if self.training:
            raise RuntimeError("RealNVP.flow_inverse needs eval() mode (running statistics)")
        N = z.shape[0]
        z = z.to(self.device, self.dtype)
        off, C, H, W = self.parts[-1]
        h = z[:, off:off + C * H * W].reshape(N, C, H, W)
        k = len(self.flow)
        for s in range(self.S - 1, -1, -1):
            if s < self.S - 1:
                off, Cz, Hz, Wz = self.parts[s]
                zp = z[:, off:off + Cz * Hz * Wz].reshape(N, Cz, Hz, Wz)
                h = torch.cat([h, zp], dim=1)[:, getattr(self, f"_inv{s}")]
                for _ in range(3):
                    k -= 1
                    h = self.flow[k].inverse(h)
                h = unsqueeze(h)
                for _ in range(3):
                    k -= 1
                    h = self.flow[k].inverse(h)
            else:
                for _ in range(4):
                    k -= 1
                    h = self.flow[k].inverse(h)
        return h

    # -- log-likelihood (3)
    def log_prob_xt(self, xt):
        """log_prob (N,) float64 nats of dequantized images xt: log N(z) + L_flow + L_pre - D ln 256."""
        y, lpre = self.logit(xt)
        return self._assemble(*self.flow_forward(y, lpre), 0.0)[1]   # bench/torch_train.py's order of sums

    def _assemble(self, z, lflow, lpre):
        zd = z.to(torch.float64)
        logpz = -0.5 * (zd * zd).sum(dim=1) - 0.5 * self.D * math.log(2 * math.pi)
        return z, logpz + lflow + lpre - self.D * math.log(256.0)

    def forward(self, xt):
        """The training forward (what DistributedDataParallel calls): log_prob_xt."""
        return self.log_prob_xt(xt)

    def loss(self, xt):
        """The batch mean of bits/dim (the trainer's loss, without its L2 penalty)."""
        return self.bits_per_dim(self.log_prob_xt(xt)).mean()

    def encode(self, pixels, u=0.5):
        """-> z (N, D), log_prob (N,) float64 (u = 0.5: realnvp encode, /encode)."""
        y, lpre = self.preprocess(pixels, u)
        return self._assemble(*self.flow_forward(y), lpre)

    def log_prob(self, pixels, u=0.5):
        return self.encode(pixels, u)[1]

    def bits_per_dim(self, lp):
        return -lp / (self.D * math.log(2.0))

    # -- inverse and sampling (4)
    def decode(self, z):
        """z (N, D) -> pixels uint8 (N, C, H, W) (4.2)."""
        y = self.flow_inverse(z).to(torch.float64)
        xt = ((torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)).nan_to_num(0.0).clamp(0.0, 1.0)
        return torch.clamp(torch.floor(256.0 * xt), max=255).to(torch.uint8)

    def sample_latents(self, n, temp=1.0, seed=None, generator=None):
        """z ~ N(0, temp^2 I): with seed, the C library's stream (rnvp_sample_latents: the same
        latents as `realnvp sample --seed`), else torch.randn with `generator`."""
        if seed is not None:
            return torch.from_numpy(rng.sample_latents(n, self.D, temp, seed)).to(self.device, self.dtype)
        return torch.randn(n, self.D, generator=generator, dtype=self.dtype).to(self.device) * temp

    def sample(self, n, temp=1.0, seed=None, generator=None):
        return self.decode(self.sample_latents(n, temp, seed, generator))


def load_model(path, map_location=None):
    """(model in eval mode, metadata, tensors) -- the tensors as read, numpy float32."""
    meta, tensors = safetensors.read(path)
    if meta.get("format") != "realnvp" or meta.get("version") != "1":
        raise ValueError(f"{path}: metadata format/version is {meta.get('format')}/{meta.get('version')}, "
                         "expected realnvp/1")
    if "config" not in meta:
        raise ValueError(f"{path}: metadata has no config")
    m = RealNVP(json.loads(meta["config"]), tensors)
    if map_location is not None:
        m = m.to(map_location)
    return m.eval(), meta, tensors
