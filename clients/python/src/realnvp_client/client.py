"""realnvp_client.client: a typed client for bin/realnvp-server (docs/api.md), standard library only:
RealNVPClient with one method per endpoint, RealNVPError, and the command line (python3 -m
realnvp_client). Leaves out retries beyond one wait on 503 + Retry-After, TLS settings and async use.

    python3 -m realnvp_client log-prob a.png b.png
    python3 -m realnvp_client sample -n 16 --temp 0.7 --seed 42 -o grid.png
    python3 -m realnvp_client encode a.png -o z.json
    python3 -m realnvp_client decode z.json -o back.png
    python3 -m realnvp_client interpolate a.png b.png --steps 8 -o strip.png
    python3 -m realnvp_client info

Server address: --url or REALNVP_URL (default http://127.0.0.1:8080); API key: --api-key or
REALNVP_API_KEY (sent as "Authorization: Bearer KEY").
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

#: a PNG given as a file path, or as (name, bytes)
PNG = Union[str, "os.PathLike[str]", Tuple[str, bytes]]


@dataclass
class LogProb:
    """One image's result of POST /log_prob (docs/api.md)."""
    name: str
    log_prob: float
    bits_per_dim: float
    png_bits_per_dim: Optional[float] = None
    ood_score: Optional[float] = None


@dataclass
class Encoded:
    """POST /encode: per-image results and latent codes (one list of D floats per image)."""
    model: str
    dim: int
    layout: List[Dict[str, int]]
    results: List[LogProb]
    latents: List[List[float]]


@dataclass
class Sample:
    """GET /sample: the PNG grid, or (format=json) one PNG per image, and the seed used."""
    seed: Optional[int]
    png: Optional[bytes] = None
    images: List[bytes] = field(default_factory=list)
    latents: Optional[List[List[float]]] = None


class RealNVPError(Exception):
    """An error reply: HTTP status, the server's error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class RealNVPClient:
    """One server. Every method raises RealNVPError with the server's reason on a 4xx/5xx."""

    # the native endpoints that serve one model (?model=NAME when the server has several)
    _MODEL_PATHS = ("/log_prob", "/encode", "/decode", "/interpolate", "/sample", "/info")

    def __init__(self, url: str = "http://127.0.0.1:8080", api_key: Optional[str] = None, timeout: float = 60.0,
                 model: Optional[str] = None):
        """model: the model to use on a server with several (--model-repository); None: its only one."""
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.model = model

    # ---- transport ----
    def _request(self, method, path, params=None, body=None, content_type=None, retry=True):
        url = self.url + path
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if self.model is not None and path in self._MODEL_PATHS:
            params["model"] = self.model
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("Authorization", "Bearer " + self.api_key)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            if e.code == 503 and retry and e.headers.get("Retry-After"):
                time.sleep(min(float(e.headers["Retry-After"]), 30))
                return self._request(method, path, params, body, content_type, retry=False)
            try:
                err = json.loads(data)["error"]
                if isinstance(err, str):   # the /v2 endpoints: {"error": "..."}
                    raise RealNVPError(e.code, "v2", err) from None
                raise RealNVPError(e.code, err.get("code", "?"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise RealNVPError(e.code, "http", data[:200].decode("utf-8", "replace")) from None

    def _json(self, *a, **k):
        _, _, data = self._request(*a, **k)
        return json.loads(data)

    @staticmethod
    def _multipart(files):
        """files: list of (name, bytes). Returns (body, content type)."""
        boundary = "realnvp-" + uuid.uuid4().hex
        out = []
        for name, data in files:
            safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
            out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe}"\r\n'
                       f"Content-Type: image/png\r\n\r\n".encode())
            out.append(data)
            out.append(b"\r\n")
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out), "multipart/form-data; boundary=" + boundary

    def _images_raw(self, path, pngs, params=None):
        """POST of PNGs (file paths or (name, bytes)) as multipart/form-data: (status, headers, body)."""
        files = []
        for p in pngs:
            if isinstance(p, (tuple, list)):
                files.append((p[0], p[1]))
            else:
                with open(p, "rb") as f:
                    files.append((os.path.basename(p), f.read()))
        body, ct = self._multipart(files)
        return self._request("POST", path, params, body, ct)

    def _images(self, path, pngs, params=None):
        return json.loads(self._images_raw(path, pngs, params)[2])

    # ---- endpoints ----
    def health(self) -> Dict[str, Any]:
        """GET /healthz: {"status": "ok"} while the process runs."""
        return self._json("GET", "/healthz")

    def ready(self) -> bool:
        """GET /readyz: True once the model is loaded and the server is not draining."""
        try:
            self._json("GET", "/readyz", retry=False)
            return True
        except RealNVPError as e:
            if e.status == 503:
                return False
            raise

    def info(self) -> Dict[str, Any]:
        """GET /info: the model's config, dim, layout, parameters, metadata and the server's limits."""
        return self._json("GET", "/info")

    def models(self, ready_only: bool = False) -> List[Dict[str, Any]]:
        """POST /v2/repository/index: every model of the repository, with version and state (READY,
        UNAVAILABLE) and the reason when it is not loaded."""
        body = json.dumps({"ready": True}).encode() if ready_only else b""
        return self._json("POST", "/v2/repository/index", body=body, content_type="application/json")

    def load_model(self, name: str) -> None:
        """POST /v2/repository/models/{name}/load: (re)load a model from the repository; the old copy
        serves until the new one is built, and serves on when the load fails (RealNVPError says why)."""
        self._request("POST", "/v2/repository/models/" + urllib.parse.quote(name, safe="") + "/load", body=b"",
                      retry=False)

    def unload_model(self, name: str) -> None:
        """POST /v2/repository/models/{name}/unload: stop serving a model until it is loaded again."""
        self._request("POST", "/v2/repository/models/" + urllib.parse.quote(name, safe="") + "/unload", body=b"",
                      retry=False)

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text."""
        return self._request("GET", "/metrics")[2].decode()

    def log_prob(self, pngs: Sequence[PNG], samples: Optional[int] = None, seed: Optional[int] = None) -> List[LogProb]:
        """POST /log_prob: exact log-likelihood (nats) and bits/dim of each PNG, in order."""
        r = self._images("/log_prob", pngs, {"samples": samples, "seed": seed})
        return [_log_prob(x) for x in r["results"]]

    def encode(self, pngs: Sequence[PNG]) -> Encoded:
        """POST /encode: latent codes of the PNGs."""
        r = self._images("/encode", pngs)
        return Encoded(r["model"], r["dim"], r["layout"], [_log_prob(x) for x in r["results"]], r["latents"])

    def decode(self, latents: Sequence[Sequence[float]], cols: Optional[int] = None) -> bytes:
        """POST /decode: one PNG (a grid for several vectors) from lists of D floats."""
        body = json.dumps({"latents": [list(v) for v in latents]}, allow_nan=False).encode()
        return self._request("POST", "/decode", {"cols": cols}, body, "application/json")[2]

    def decode_each(self, latents: Sequence[Sequence[float]]) -> List[bytes]:
        """POST /decode?format=json: one PNG per latent vector."""
        body = json.dumps({"latents": [list(v) for v in latents]}, allow_nan=False).encode()
        r = self._json("POST", "/decode", {"format": "json"}, body, "application/json")
        return [base64.b64decode(s) for s in r["images"]]

    def sample(self, n: int = 16, temp: float = 0.7, seed: Optional[int] = None, cols: Optional[int] = None) -> Sample:
        """GET /sample: a PNG grid of n samples at temperature temp, and the seed used."""
        _, headers, data = self._request("GET", "/sample", {"n": n, "temp": temp, "seed": seed, "cols": cols})
        seed_used = {k.lower(): v for k, v in headers.items()}.get("x-realnvp-seed")
        return Sample(seed=int(seed_used) if seed_used else None, png=data)

    def sample_each(self, n: int = 16, temp: float = 0.7, seed: Optional[int] = None, latents: bool = False) -> Sample:
        """GET /sample?format=json: one PNG per sample and, with latents=True, their latent codes."""
        r = self._json("GET", "/sample", {"n": n, "temp": temp, "seed": seed, "format": "json",
                                          "latents": 1 if latents else None})
        return Sample(seed=r["seed"], images=[base64.b64decode(s) for s in r["images"]], latents=r.get("latents"))

    def interpolate(self, a: PNG, b: PNG, steps: int = 8, spherical: bool = False) -> bytes:
        """POST /interpolate: a PNG strip of `steps` images between a and b (both ends included)."""
        _, _, data = self._images_raw("/interpolate", [a, b],
                                      {"steps": steps, "mode": "spherical" if spherical else "linear"})
        return data


def _log_prob(x: Dict[str, Any]) -> LogProb:
    return LogProb(x["name"], x["log_prob"], x["bits_per_dim"], x.get("png_bits_per_dim"), x.get("ood_score"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="realnvp-client", description="Client for realnvp-server (docs/api.md).")
    ap.add_argument("--url", default=os.environ.get("REALNVP_URL", "http://127.0.0.1:8080"),
                    help="server address (env REALNVP_URL; default %(default)s)")
    ap.add_argument("--api-key", default=os.environ.get("REALNVP_API_KEY"),
                    help="API key (env REALNVP_API_KEY), sent as Authorization: Bearer KEY")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
    ap.add_argument("--model", help="the model to use when the server serves several (?model=NAME)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("log-prob", help="score PNGs: log_prob (nats) and bits/dim, one JSON line each")
    p.add_argument("png", nargs="+")
    p.add_argument("--samples", type=int, help="average this many seeded dequantization draws (default: u = 0.5)")
    p.add_argument("--seed", type=int, help="seed of the draws (with --samples)")
    p = sub.add_parser("encode", help="latents of PNGs as JSON (the input decode takes)")
    p.add_argument("png", nargs="+")
    p.add_argument("-o", "--output", help="write the JSON here (default: standard output)")
    p = sub.add_parser("decode", help="PNG from a latents JSON file ({\"latents\": [[D numbers], ...]}; - for stdin)")
    p.add_argument("latents")
    p.add_argument("-o", "--output", required=True, help="the PNG to write (a grid for several vectors)")
    p.add_argument("--cols", type=int)
    p = sub.add_parser("sample", help="new images as a PNG grid")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--temp", type=float, default=0.7)
    p.add_argument("--seed", type=int)
    p.add_argument("--cols", type=int)
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("interpolate", help="a PNG strip between two images' latent codes")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--spherical", action="store_true", help="slerp instead of a straight line")
    p.add_argument("-o", "--output", required=True)
    sub.add_parser("info", help="model and server information")
    sub.add_parser("models", help="the repository's models, versions and states, one JSON line each")
    p = sub.add_parser("load", help="(re)load a model of the server's repository")
    p.add_argument("name")
    p = sub.add_parser("unload", help="stop serving a model of the server's repository")
    p.add_argument("name")
    sub.add_parser("health", help="liveness and readiness (exit 1 when not ready)")
    a = ap.parse_args(argv)
    c = RealNVPClient(a.url, a.api_key, a.timeout, a.model)
    try:
        if a.cmd == "log-prob":
            for r in c.log_prob(a.png, a.samples, a.seed):
                print(json.dumps({k: v for k, v in r.__dict__.items() if v is not None}))
        elif a.cmd == "encode":
            e = c.encode(a.png)
            text = json.dumps({"model": e.model, "dim": e.dim, "layout": e.layout,
                               "results": [{k: v for k, v in r.__dict__.items() if v is not None} for r in e.results],
                               "latents": e.latents})
            if a.output:
                with open(a.output, "w") as f:
                    f.write(text + "\n")
            else:
                print(text)
        elif a.cmd == "decode":
            src = sys.stdin if a.latents == "-" else open(a.latents)
            with src:
                doc = json.load(src)
            lat = doc["latents"] if isinstance(doc, dict) and "latents" in doc else doc
            if lat and not isinstance(lat[0], list):
                lat = [lat]
            with open(a.output, "wb") as f:
                f.write(c.decode(lat, a.cols))
            print(f"wrote {a.output} ({len(lat)} images)", file=sys.stderr)
        elif a.cmd == "sample":
            smp = c.sample(a.n, a.temp, a.seed, a.cols)
            with open(a.output, "wb") as f:
                f.write(smp.png)
            print(f"wrote {a.output} ({a.n} images, seed {smp.seed})", file=sys.stderr)
        elif a.cmd == "interpolate":
            with open(a.output, "wb") as f:
                f.write(c.interpolate(a.a, a.b, a.steps, a.spherical))
            print(f"wrote {a.output} ({a.steps} images)", file=sys.stderr)
        elif a.cmd == "info":
            print(json.dumps(c.info(), indent=2))
        elif a.cmd == "models":
            for m in c.models():
                print(json.dumps(m))
        elif a.cmd in ("load", "unload"):
            (c.load_model if a.cmd == "load" else c.unload_model)(a.name)
            print(f"{a.cmd}ed {a.name}", file=sys.stderr)
        elif a.cmd == "health":
            print(json.dumps(c.health()))
            ok = c.ready()
            print("ready" if ok else "not ready")
            return 0 if ok else 1
    except RealNVPError as e:
        print(f"realnvp_client: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as e:
        print(f"realnvp_client: {e}", file=sys.stderr)
        return 1
    return 0

