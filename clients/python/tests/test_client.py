#!/usr/bin/env python3
"""test_client.py: the realnvp_client package against a real bin/realnvp-server on 127.0.0.1 (a
free port, the 8x8 test model): every method, errors and the API key, results checked against
bin/realnvp. Leaves out load (bench/) and the server's own edge cases (tests/test_server.c)."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python", "src"))
from realnvp_client import LogProb, RealNVPClient, RealNVPError  # noqa: E402

MODEL = os.path.join(ROOT, "tests", "data", "grey8.safetensors")
PNGS = [os.path.join(ROOT, "tests", "data", f"grey8_{n}.png") for n in ("gradient", "ring", "checker")]
CLI = os.path.join(ROOT, "bin", "realnvp")


def start_server(*args):
    """(process, base url, stderr path): bin/realnvp-server on a free port, once it listens."""
    err = tempfile.NamedTemporaryFile(prefix="rnvp_pyclient_", suffix=".err", delete=False)
    model = [] if "--model-repository" in args else ["--model", MODEL]
    p = subprocess.Popen([os.path.join(ROOT, "bin", "realnvp-server"), *model, "--port", "0",
                          "--access-log", "off", *args], stderr=err, stdout=subprocess.DEVNULL)
    for _ in range(1000):
        with open(err.name) as f:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", f.read())
        if m:
            return p, m.group(1), err.name
        if p.poll() is not None:
            break
        time.sleep(0.01)
    p.kill()
    raise RuntimeError("the server did not start: " + open(err.name).read())


def stop_server(p, errpath):
    p.terminate()
    p.wait(timeout=60)
    os.unlink(errpath)


def cli_log_prob(path):
    out = subprocess.run([CLI, "log-prob", "--json", "--model", MODEL, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[0])


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.url, cls.err = start_server()
        cls.c = RealNVPClient(cls.url)

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.proc, cls.err)

    def test_health_ready_info_metrics(self):
        self.assertEqual(self.c.health(), {"status": "ok"})
        self.assertTrue(self.c.ready())
        info = self.c.info()
        self.assertEqual((info["width"], info["height"], info["channels"], info["dim"]), (8, 8, 1, 64))
        self.assertIn("realnvp_requests_total", self.c.metrics())

    def test_log_prob_matches_cli(self):
        res = self.c.log_prob(PNGS)
        self.assertEqual([r.name for r in res], [os.path.basename(p) for p in PNGS])
        for r, p in zip(res, PNGS):
            self.assertIsInstance(r, LogProb)
            want = cli_log_prob(p)
            self.assertAlmostEqual(r.log_prob, want["log_prob"], delta=1e-5 * abs(want["log_prob"]))
            self.assertAlmostEqual(r.bits_per_dim, want["bits_per_dim"], delta=1e-5 * abs(want["bits_per_dim"]))
            self.assertAlmostEqual(r.png_bits_per_dim, want["png_bits_per_dim"], places=9)
        # (name, bytes) pairs work too, and seeded draws are reproducible
        with open(PNGS[0], "rb") as f:
            data = f.read()
        a = self.c.log_prob([("x.png", data)], samples=4, seed=11)
        b = self.c.log_prob([("x.png", data)], samples=4, seed=11)
        self.assertEqual(a[0].name, "x.png")
        self.assertEqual(a, b)

    def test_encode_decode_round_trip(self):
        e = self.c.encode(PNGS[:2])
        self.assertEqual(e.dim, 64)
        self.assertEqual(len(e.latents), 2)
        self.assertEqual(len(e.latents[0]), 64)
        self.assertEqual(sum(p["channels"] * p["height"] * p["width"] for p in e.layout), 64)
        with tempfile.TemporaryDirectory() as d:
            for i, png in enumerate(self.c.decode_each(e.latents)):
                back = os.path.join(d, f"back{i}.png")
                with open(back, "wb") as f:
                    f.write(png)
                # the flow is exact: the decoded image scores as the original
                self.assertAlmostEqual(cli_log_prob(back)["log_prob"], cli_log_prob(PNGS[i])["log_prob"], places=6)
        grid = self.c.decode(e.latents, cols=2)
        self.assertTrue(grid.startswith(b"\x89PNG"))

    def test_sample_and_interpolate(self):
        s = self.c.sample(n=4, temp=0.5, seed=9)
        self.assertEqual(s.seed, 9)
        self.assertTrue(s.png.startswith(b"\x89PNG"))
        self.assertEqual(self.c.sample(n=4, temp=0.5, seed=9).png, s.png)
        each = self.c.sample_each(n=3, temp=0.5, seed=9, latents=True)
        self.assertEqual((len(each.images), len(each.latents), len(each.latents[0])), (3, 3, 64))
        # decoding the returned latents gives the same images
        self.assertEqual(self.c.decode_each(each.latents), each.images)
        strip = self.c.interpolate(PNGS[0], PNGS[1], steps=4, spherical=True)
        self.assertTrue(strip.startswith(b"\x89PNG"))

    def test_errors(self):
        with self.assertRaises(RealNVPError) as cm:
            self.c.log_prob([os.path.join(ROOT, "tests", "data", "grey16x8_bar.png")])
        self.assertEqual((cm.exception.status, cm.exception.code), (422, "wrong_image_size"))
        with self.assertRaises(RealNVPError) as cm:
            self.c.sample(n=0)
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "bad_parameter"))
        with self.assertRaises(RealNVPError) as cm:
            self.c.decode([[0.0] * 63])
        self.assertEqual(cm.exception.code, "bad_latents")

    def test_cli(self):
        script = os.path.join(ROOT, "clients", "python", "realnvp_client.py")
        out = subprocess.run([sys.executable, script, "--url", self.url, "log-prob", PNGS[0]], capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(json.loads(out)["name"], os.path.basename(PNGS[0]))
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "clients", "python", "src"))
        r = subprocess.run([sys.executable, "-m", "realnvp_client", "--url", self.url, "info"], capture_output=True,
                           text=True, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["dim"], 64)


class ApiKeyTest(unittest.TestCase):
    def test_key(self):
        with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
            f.write("s3cret\n")
        p, url, err = start_server("--api-key-file", f.name)
        try:
            with self.assertRaises(RealNVPError) as cm:
                RealNVPClient(url).info()
            self.assertEqual(cm.exception.status, 401)
            self.assertEqual(RealNVPClient(url, api_key="s3cret").info()["dim"], 64)
            self.assertTrue(RealNVPClient(url).ready())   # health stays open
        finally:
            stop_server(p, err)
            os.unlink(f.name)


class RepositoryTest(unittest.TestCase):
    """A server with two models (--model-repository): model=, the index, unload and load."""

    def test_models(self):
        import shutil
        repo = tempfile.mkdtemp(prefix="rnvp_pyclient_repo_")
        for name, src in (("grey", MODEL), ("rgb", os.path.join(ROOT, "tests", "data", "rgb6x8.safetensors"))):
            os.makedirs(os.path.join(repo, name, "1"))
            shutil.copy(src, os.path.join(repo, name, "1", "model.safetensors"))
        p, url, err = start_server("--model-repository", repo)
        try:
            with self.assertRaises(RealNVPError) as cm:
                RealNVPClient(url).info()   # two models, none named
            self.assertEqual((cm.exception.status, cm.exception.code), (400, "model_required"))
            grey, rgb = RealNVPClient(url, model="grey"), RealNVPClient(url, model="rgb")
            self.assertEqual(grey.info()["dim"], 64)
            self.assertEqual(rgb.info()["channels"], 3)
            want = cli_log_prob(PNGS[0])
            self.assertAlmostEqual(grey.log_prob([PNGS[0]])[0].log_prob, want["log_prob"], delta=1e-5 * abs(want["log_prob"]))
            self.assertEqual(sorted((m["name"], m["state"]) for m in grey.models()), [("grey", "READY"), ("rgb", "READY")])
            rgb.unload_model("rgb")
            with self.assertRaises(RealNVPError) as cm:
                rgb.info()
            self.assertEqual(cm.exception.code, "model_not_ready")
            self.assertEqual(RealNVPClient(url).info()["model"], "grey")   # the only one left
            rgb.load_model("rgb")
            self.assertEqual(rgb.info()["channels"], 3)
            with self.assertRaises(RealNVPError) as cm:
                rgb.load_model("nope")
            self.assertEqual((cm.exception.status, cm.exception.code), (404, "v2"))
            script = os.path.join(ROOT, "clients", "python", "realnvp_client.py")
            out = subprocess.run([sys.executable, script, "--url", url, "--model", "grey", "log-prob", PNGS[0]],
                                 capture_output=True, text=True, check=True).stdout
            self.assertEqual(json.loads(out)["name"], os.path.basename(PNGS[0]))
            out = subprocess.run([sys.executable, script, "--url", url, "models"], capture_output=True, text=True,
                                 check=True).stdout
            self.assertEqual(len(out.splitlines()), 2)
        finally:
            stop_server(p, err)
            shutil.rmtree(repo)


if __name__ == "__main__":
    unittest.main(verbosity=2)
