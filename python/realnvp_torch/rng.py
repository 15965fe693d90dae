"""realnvp_torch.rng: the C code's splitmix64 streams in NumPy (initial weights, data order, noise, flips, samples).
Leaves out torch's own generators (training uses none; RealNVP.sample uses one only without a seed)."""
import numpy as np

GAMMA = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
_G = np.uint64(GAMMA)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _fin(z):
    """splitmix64's output function on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def splitmix64(state, n, skip=0):
    """Outputs skip+1 .. skip+n of rnvpi_splitmix64 from `state` (a Python int or a uint64
    array of states, one row each): splitmix64 adds GAMMA to its state and hashes it, so output
    k is a function of state + k * GAMMA and a stream can be drawn all at once."""
    k = np.arange(skip + 1, skip + n + 1, dtype=np.uint64)
    s = np.asarray(state, dtype=np.uint64) if not isinstance(state, int) else np.uint64(state & M64)
    with np.errstate(over="ignore"):
        return _fin(s[..., None] + k * _G) if np.ndim(s) else _fin(s + k * _G)


def to_uniform(bits):
    """rnvpi_uniform: ((x >> 11) + 0.5) / 2^53, in (0, 1), float64."""
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def gauss_pairs(bits):
    """rnvpi_gauss2 on consecutive pairs of outputs (Box-Muller): returns a, b for each pair."""
    u = to_uniform(bits)
    u1, u2 = u[..., 0::2], u[..., 1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    return r * np.cos(6.283185307179586 * u2), r * np.sin(6.283185307179586 * u2)


def mix(a, b):
    """train/main.c mix(a, b): the second output of splitmix64 from a ^ (b * GAMMA + c). b may be
    a uint64 array."""
    with np.errstate(over="ignore"):
        if isinstance(b, int):
            s = (a ^ ((b * GAMMA + 0x632BE59BD9B4E019) & M64)) & M64
            return int(splitmix64(s, 1, skip=1)[0])
        b = np.asarray(b, dtype=np.uint64)
        s = np.uint64(a & M64) ^ (b * _G + np.uint64(0x632BE59BD9B4E019))
        return _fin(s + np.uint64(2) * _G)


def epoch_perm(n, seed, epoch):
    """The C trainer's order of the training images in epoch e: Fisher-Yates from (seed, e)."""
    s = mix((seed ^ 0xA5A5A5A5) & M64, epoch)
    perm = list(range(n))
    if n > 1:
        r = splitmix64(s, n - 1)
        js = (r % np.arange(n, 1, -1, dtype=np.uint64)).tolist()   # i = n-1 .. 1: j = r % (i + 1)
        for i, j in zip(range(n - 1, 0, -1), js):
            perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


def step_noise(seed, step, batch, d, flip):
    """The draws of step `step` (0-based) for a global batch of `batch` images of d values: per
    image a flip bit (when flips are on) then d uniforms in (0, 1), as train/main.c train_step
    takes them. Returns (flips bool (batch,), u float64 (batch, d))."""
    s = mix((seed ^ 0x5DEECE66D) & M64, step)
    f = 1 if flip else 0
    bits = splitmix64(s, batch * (d + f)).reshape(batch, d + f)
    flips = (bits[:, 0] >> np.uint64(63)).astype(bool) if flip else np.zeros(batch, dtype=bool)
    return flips, to_uniform(bits[:, f:])


def eval_noise(first, n, d):
    """The C trainer's evaluation noise for test images first .. first+n-1 (the same at every
    evaluation): image i's stream mix(0xE7A1, i), d uniforms, rounded to float32."""
    states = mix(0xE7A1, np.arange(first, first + n, dtype=np.uint64))
    return to_uniform(splitmix64(states, d)).astype(np.float32)


def sample_latents(n, d, temp, seed, first=0):
    """rnvp_sample_latents: image i's normals from the stream seed ^ (0xD1B54A32D192ED03 (i+1)),
    one output discarded, Box-Muller pairs (the last sine dropped when d is odd), times temp,
    rounded to float32. The same seed gives `realnvp sample --seed`'s latents."""
    i = np.arange(first + 1, first + n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        states = np.uint64(seed & M64) ^ (np.uint64(0xD1B54A32D192ED03) * i)
    pairs = (d + 1) // 2
    a, b = gauss_pairs(splitmix64(states, 2 * pairs, skip=1))
    z = np.empty((n, 2 * pairs), dtype=np.float64)
    z[:, 0::2], z[:, 1::2] = a, b
    return (temp * z[:, :d]).astype(np.float32)


def init_stream(seed):
    """A reader of the stream tr_init_params draws from (seed, one output discarded)."""
    return _Stream(seed & M64, 1)


class _Stream:
    def __init__(self, state, used):
        self.state, self.used = state, used

    def take(self, n):
        out = splitmix64(self.state, n, skip=self.used)
        self.used += n
        return out
