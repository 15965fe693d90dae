#!/usr/bin/env python3
"""realnvp_client.py: a client for bin/realnvp-server (docs/api.md), Python standard library only:
a RealNVPClient class and a small CLI (score PNGs, sample to a file, encode, decode, info, health).
Leaves out retries beyond one wait on 503 + Retry-After, TLS settings and async use.

    python3 clients/python/realnvp_client.py log-prob a.png b.png
    python3 clients/python/realnvp_client.py sample -n 16 --temp 0.7 --seed 42 -o grid.png
    python3 clients/python/realnvp_client.py encode a.png -o z.json
    python3 clients/python/realnvp_client.py decode z.json -o back.png
    python3 clients/python/realnvp_client.py info

Server address: --url or REALNVP_URL (default http://127.0.0.1:8080); API key: --api-key or
REALNVP_API_KEY (sent as "Authorization: Bearer KEY").
"""
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


class RealNVPError(Exception):
    """An error reply: HTTP status, the server's error code and message."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class RealNVPClient:
    def __init__(self, url="http://127.0.0.1:8080", api_key=None, timeout=60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    # ---- transport ----
    def _request(self, method, path, params=None, body=None, content_type=None, retry=True):
        url = self.url + path
        params = {k: v for k, v in (params or {}).items() if v is not None}
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

    def _images(self, path, pngs, params=None):
        """pngs: list of file paths or (name, bytes)."""
        files = []
        for p in pngs:
            if isinstance(p, (tuple, list)):
                files.append((p[0], p[1]))
            else:
                with open(p, "rb") as f:
                    files.append((os.path.basename(p), f.read()))
        body, ct = self._multipart(files)
        return self._json("POST", path, params, body, ct)

    # ---- endpoints ----
    def health(self):
        return self._json("GET", "/healthz")

    def ready(self):
        try:
            self._json("GET", "/readyz", retry=False)
            return True
        except RealNVPError as e:
            if e.status == 503:
                return False
            raise

    def info(self):
        return self._json("GET", "/info")

    def metrics(self):
        return self._request("GET", "/metrics")[2].decode()

    def log_prob(self, pngs, samples=None, seed=None):
        """[{"name", "log_prob", "bits_per_dim"}] for PNG files (or (name, bytes) pairs)."""
        return self._images("/log_prob", pngs, {"samples": samples, "seed": seed})["results"]

    def encode(self, pngs):
        """The whole reply: results, dim, layout and latents (one list of D floats per image)."""
        return self._images("/encode", pngs)

    def decode(self, latents, cols=None):
        """One PNG (bytes; a grid for several vectors) from a list of D-float lists."""
        body = json.dumps({"latents": latents}, allow_nan=False).encode()
        return self._request("POST", "/decode", {"cols": cols}, body, "application/json")[2]

    def decode_each(self, latents):
        """One PNG (bytes) per latent vector."""
        body = json.dumps({"latents": latents}, allow_nan=False).encode()
        r = self._json("POST", "/decode", {"format": "json"}, body, "application/json")
        return [base64.b64decode(s) for s in r["images"]]

    def sample(self, n=16, temp=0.7, seed=None, cols=None):
        """(PNG grid bytes, seed used)."""
        _, headers, data = self._request("GET", "/sample", {"n": n, "temp": temp, "seed": seed, "cols": cols})
        seed_used = {k.lower(): v for k, v in headers.items()}.get("x-realnvp-seed")
        return data, int(seed_used) if seed_used else None

    def sample_json(self, n=16, temp=0.7, seed=None, latents=False):
        """The JSON reply: seed, images (base64 PNGs) and, with latents=True, latents."""
        return self._json("GET", "/sample", {"n": n, "temp": temp, "seed": seed, "format": "json",
                                             "latents": 1 if latents else None})


def main(argv=None):
    ap = argparse.ArgumentParser(prog="realnvp_client.py", description="Client for realnvp-server (docs/api.md).")
    ap.add_argument("--url", default=os.environ.get("REALNVP_URL", "http://127.0.0.1:8080"),
                    help="server address (env REALNVP_URL; default %(default)s)")
    ap.add_argument("--api-key", default=os.environ.get("REALNVP_API_KEY"),
                    help="API key (env REALNVP_API_KEY), sent as Authorization: Bearer KEY")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default %(default)s)")
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
    sub.add_parser("info", help="model and server information")
    sub.add_parser("health", help="liveness and readiness (exit 1 when not ready)")
    a = ap.parse_args(argv)
    c = RealNVPClient(a.url, a.api_key, a.timeout)
    try:
        if a.cmd == "log-prob":
            for r in c.log_prob(a.png, a.samples, a.seed):
                print(json.dumps(r))
        elif a.cmd == "encode":
            text = json.dumps(c.encode(a.png))
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
            png, seed = c.sample(a.n, a.temp, a.seed, a.cols)
            with open(a.output, "wb") as f:
                f.write(png)
            print(f"wrote {a.output} ({a.n} images, seed {seed})", file=sys.stderr)
        elif a.cmd == "info":
            print(json.dumps(c.info(), indent=2))
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


if __name__ == "__main__":
    sys.exit(main())
