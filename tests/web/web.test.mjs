// web.test.mjs: drives the server's browser demo (GET /) in Debian's headless Chromium with playwright-core:
// the API key prompt, samples drawn on load, the built-in Fashion-MNIST test images (scoring and interpolation in one
// click), uploads (scoring with the OOD score, interpolation), the model card, and the model choice of a server with
// several models (simulated by intercepting /info, and for real with --model-repository when the server has it).
// Leaves out the JSON API itself (test_server.c).
//
// Run from the repository root after `make`: `make test-web` (or `node --test tests/web/`).
// Needs /usr/bin/chromium (Debian's chromium) and `npm ci` in tests/web; when Chromium is missing the
// tests are skipped with a message saying so. SCREENSHOT=path.png also saves a screenshot of the first test's page.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ROOT, CHROMIUM, freePort, waitReady, launchChromium } from "./lib.mjs";

const KEY = "web-test-key-123";
const BUNDLED = path.join(ROOT, "models/fashion-mnist/model.safetensors");   // 28x28x1: the page offers its test images
const FMNIST = "/usr/share/datasets/fashion-mnist";
const SKIP = !existsSync(CHROMIUM) && `Chromium not found at ${CHROMIUM} (apt-get install chromium): browser test skipped`;
const exe = (n) => path.join(ROOT, "bin", n);

// starts bin/realnvp-server on a free port and a Chromium page; run(page, base, errors) does the checking
async function withServer(args, run) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const srv = spawn(exe("realnvp-server"), [...args, "--port", String(port), "--access-log", "off"],
    { stdio: ["ignore", "ignore", "inherit"] });
  let browser;
  try {
    await waitReady(base, 20000);
    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    await run(page, base);
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close();
    srv.kill("SIGTERM");
    await new Promise((r) => srv.once("exit", r));
  }
}

// the sample grid drawn without any click: n images, all decoded at the model's size
const gridDrawn = (page, n, size) => page.waitForFunction(([n, size]) => {
  const imgs = [...document.querySelectorAll("#gallery img")];
  return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth === size && i.naturalHeight === size);
}, [n, size]);

test("demo page: API key prompt, samples on load, uploads", { timeout: 120000, skip: SKIP }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "rnvp-web-"));
  const model = path.join(dir, "m.safetensors");
  writeFileSync(path.join(dir, "cfg.json"), JSON.stringify({ height: 16, width: 16, channels: 1, num_scales: 2, res_blocks: 1,
    features: [8, 8], alpha: 0.05, bn_eps: 1e-5, flow_batchnorm: true, flow_bn_eps: 1e-4 }));
  execFileSync(exe("realnvp"), ["init", "--config", path.join(dir, "cfg.json"), "--seed", "1", "-o", model]);
  for (const [name, seed] of [["a.png", "2"], ["b.png", "3"], ["c.png", "4"]])
    execFileSync(exe("realnvp"), ["sample", "--model", model, "-n", "1", "--seed", seed, "--temp", "1", "-o", path.join(dir, name)]);
  writeFileSync(path.join(dir, "key"), KEY + "\n");
  try {
    await withServer(["--model", model, "--api-key-file", path.join(dir, "key")], async (page, base) => {
      await page.goto(base + "/");
      assert.equal(await page.title(), "realnvp");

      // the server needs a key: the page asks for it first, and draws nothing yet
      await page.waitForSelector("#key-prompt:not([hidden])");
      assert.equal(await page.isHidden("#app"), true);
      assert.equal(await page.$$eval("#gallery img", (l) => l.length), 0);
      assert.equal(await page.evaluate(() => document.activeElement.id), "key-input");

      // a wrong key (sent with Enter) gives a clear message and the prompt again, not a broken page
      await page.fill("#key-input", "not-the-key");
      await page.press("#key-input", "Enter");
      await page.waitForFunction(() => document.getElementById("key-err").textContent.length > 0);
      assert.match(await page.textContent("#key-err"), /did not accept this key \(401/);
      assert.equal(await page.isVisible("#key-prompt"), true);
      assert.equal(await page.evaluate(() => sessionStorage.getItem("realnvp-api-key")), null);

      // the right key: the model card and the sample grid, without any click on Sample
      await page.fill("#key-input", KEY);
      await page.click("#key-btn");
      await gridDrawn(page, 16, 16);
      assert.equal(await page.isHidden("#key-prompt"), true);
      assert.match(await page.textContent("#card-dl"), /16 × 16 × 1 \(D = 256\)/);
      assert.match(await page.textContent("#model-line"), /16×16×1/);
      assert.equal(await page.evaluate(() => sessionStorage.getItem("realnvp-api-key")), KEY);
      // the built-in test images are 28x28x1: not offered for this model
      assert.equal(await page.isHidden("#tests"), true);

      // the key is kept for the tab: a reload draws the grid without asking again
      await page.reload();
      await gridDrawn(page, 16, 16);
      assert.equal(await page.isHidden("#key-prompt"), true);

      // samples: n images appear and decode
      await page.fill("#n", "12");
      await page.fill("#seed", "7");
      await page.click("#sample-btn");
      await gridDrawn(page, 12, 16);
      // the same seed gives the same first image again; another seed a different one
      const first = await page.getAttribute("#gallery img", "src");
      await page.click("#sample-btn");
      await page.waitForFunction(() => !document.getElementById("sample-btn").disabled);
      assert.equal(await page.getAttribute("#gallery img", "src"), first);
      await page.fill("#seed", "8");
      await page.click("#sample-btn");
      await page.waitForFunction((f) => document.querySelector("#gallery img").src !== f, first);

      // scoring: three PNGs give three rows of numbers, with the OOD score = bits/dim - PNG bits/dim
      await page.setInputFiles("#score-files", ["a.png", "b.png", "c.png"].map((n) => path.join(dir, n)));
      await page.waitForSelector("#score-table:not([hidden]) tbody tr:nth-child(3)");
      const rows = await page.$$eval("#score-table tbody tr", (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
      assert.equal(rows.length, 3);
      for (const r of rows) {
        const [bpd, png, ood] = r.slice(2).map(Number);
        assert.ok(bpd > 0 && png > 0, `row ${r}`);
        assert.ok(Math.abs(bpd - png - ood) < 2e-3, `ood ${ood} != ${bpd} - ${png}`);
      }
      assert.deepEqual(rows.map((r) => r[0]), ["a.png", "b.png", "c.png"]);

      // a wrong-size image gets the server's 422 reason on the page
      writeFileSync(path.join(dir, "cfg8.json"), JSON.stringify({ height: 8, width: 8, channels: 1, num_scales: 1, res_blocks: 1,
        features: [4], alpha: 0.05, bn_eps: 1e-5, flow_batchnorm: false, flow_bn_eps: 1e-4 }));
      execFileSync(exe("realnvp"), ["init", "--config", path.join(dir, "cfg8.json"), "--seed", "1", "-o", path.join(dir, "m8")]);
      execFileSync(exe("realnvp"), ["sample", "--model", path.join(dir, "m8"), "-n", "1", "-o", path.join(dir, "small.png")]);
      await page.setInputFiles("#score-files", [path.join(dir, "small.png")]);
      await page.waitForFunction(() => document.getElementById("score-err").textContent.length > 0);
      assert.match(await page.textContent("#score-err"), /422.*expects 16x16x1/);

      // interpolation of uploads: a strip of `steps` tiles with 2-pixel borders
      await page.setInputFiles("#interp-a", path.join(dir, "a.png"));
      await page.setInputFiles("#interp-b", path.join(dir, "b.png"));
      await page.fill("#steps", "6");
      await page.selectOption("#mode", "spherical");
      await page.click("#interp-btn");
      await page.waitForFunction(() => { const s = document.getElementById("strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
      const [w, h] = await page.$eval("#strip", (s) => [s.naturalWidth, s.naturalHeight]);
      assert.equal(w, 6 * 16 + 5 * 2);
      assert.equal(h, 16);

      // a key that stops working later (here: replaced by hand) brings the prompt back with the server's refusal
      await page.evaluate(() => sessionStorage.setItem("realnvp-api-key", "rotated"));
      await page.click("#sample-btn");
      await page.waitForSelector("#key-prompt:not([hidden])");
      assert.match(await page.textContent("#key-err"), /did not accept this key/);

      if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("demo page: Fashion-MNIST showcase (samples on load, one-click scoring and interpolation)", { timeout: 120000, skip: SKIP }, async () => {
  await withServer(["--model", BUNDLED], async (page, base) => {
    const requests = [];
    page.on("request", (r) => requests.push(r.method() + " " + new URL(r.url()).pathname));
    await page.goto(base + "/");
    // no key needed: no prompt; 16 samples of 28x28 drawn by the page itself (GET /sample, no click)
    await gridDrawn(page, 16, 28);
    assert.equal(await page.isHidden("#key-prompt"), true);
    assert.ok(requests.includes("GET /sample"), requests.join(", "));
    assert.match(await page.getAttribute("#gallery img", "alt"), /sample 1/);

    // eight built-in test images, all decoded at 28x28, each a button named after its class and test index
    assert.equal(await page.isVisible("#tests"), true);
    const picks = await page.$$eval("#picks button", (bs) => bs.map((b) => {
      const i = b.querySelector("img");
      return { alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, pressed: b.getAttribute("aria-pressed") };
    }));
    assert.equal(picks.length, 8);
    for (const p of picks) {
      assert.deepEqual([p.w, p.h, p.pressed], [28, 28, "false"]);
      assert.match(p.alt, /\(test image \d+\)$/);
    }

    // one click scores: the page shows what POST /log_prob answers for the same PNG, to the digits it displays
    const before = requests.length;
    await page.click("#picks button:nth-child(1)");
    await page.waitForSelector("#test-bpd");
    assert.ok(requests.slice(before).includes("POST /log_prob"));
    const src = await page.getAttribute("#picks button:nth-child(1) img", "src");
    const png = Buffer.from(src.slice(src.indexOf(",") + 1), "base64");
    const direct = (await (await fetch(base + "/log_prob", { method: "POST", headers: { "Content-Type": "image/png" }, body: png })).json()).results[0];
    assert.equal(await page.textContent("#test-bpd"), direct.bits_per_dim.toFixed(4));
    assert.equal(await page.textContent("#test-logp"), direct.log_prob.toFixed(2));
    // compared with the model card's test bits/dim
    const info = await (await fetch(base + "/info")).json();
    const typical = Number(info.metadata.test_bits_per_dim).toFixed(2);
    assert.match(await page.textContent("#test-result"), new RegExp(`typical test image: ~${typical.replace(".", "\\.")} bits/dim`));
    assert.equal(await page.isDisabled("#test-interp-btn"), true);

    // the keyboard selects a second image (B): it is scored too, and the interpolation button turns on
    await page.focus("#picks button:nth-child(8)");
    await page.keyboard.press("Enter");
    const label8 = await page.$eval("#picks button:nth-child(8) img", (i) => i.alt);
    await page.waitForFunction((l) => document.getElementById("test-result").textContent.includes(l), label8);
    assert.deepEqual(await page.$$eval("#picks button", (bs) => bs.map((b) => b.getAttribute("aria-pressed") + b.querySelector(".badge").textContent)),
      ["trueA", "false", "false", "false", "false", "false", "false", "trueB"]);
    assert.equal(await page.isEnabled("#test-interp-btn"), true);

    // interpolate A -> B: a strip of 8 tiles of 28x28 with 2-pixel borders
    await page.click("#test-interp-btn");
    await page.waitForFunction(() => { const s = document.getElementById("test-strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
    assert.deepEqual(await page.$eval("#test-strip", (s) => [s.naturalWidth, s.naturalHeight]), [8 * 28 + 7 * 2, 28]);
    assert.match(await page.getAttribute("#test-strip", "alt"), /^8 images from .* to .*/);
    assert.equal(await page.textContent("#test-err"), "");
  });
});

test("demo page: a server with several models (model_required) gets a model choice and model=NAME on every call",
  { timeout: 120000, skip: SKIP }, async () => {
  await withServer(["--model", BUNDLED], async (page, base) => {
    // this server serves one model and refuses an unknown parameter, so the test plays the multi-model server:
    // /info without model= answers model_required; other calls lose their model= before reaching the real server
    const calls = [];
    await page.route((u) => u.pathname !== "/", async (route) => {
      const u = new URL(route.request().url());
      const m = u.searchParams.get("model");
      calls.push([u.pathname, m]);
      if (u.pathname === "/info" && m === null)
        return route.fulfill({ status: 400, contentType: "application/json", body: JSON.stringify({ error: {
          code: "model_required", message: "this server serves several models; add ?model=NAME", models: ["fashion-mnist", "other"] } }) });
      u.searchParams.delete("model");
      return route.continue({ url: u.toString() });
    });
    await page.goto(base + "/");
    await gridDrawn(page, 16, 28);
    assert.equal(await page.isVisible("#model-pick"), true);
    assert.deepEqual(await page.$$eval("#model-select option", (o) => o.map((x) => x.value)), ["fashion-mnist", "other"]);
    assert.equal(await page.inputValue("#model-select"), "fashion-mnist");
    await page.click("#picks button:nth-child(2)");
    await page.waitForSelector("#test-bpd");
    // after the first /info, every call named the model
    assert.deepEqual(calls[0], ["/info", null]);
    assert.ok(calls.slice(1).length >= 3);
    for (const [p, m] of calls.slice(1)) assert.equal(m, "fashion-mnist", `${p} without model=`);
    assert.ok(calls.some(([p]) => p === "/sample") && calls.some(([p]) => p === "/log_prob"));

    // choosing another model reloads the card and the samples with it
    const n = calls.length;
    const sampled = page.waitForResponse((r) => new URL(r.url()).pathname === "/sample");
    await page.selectOption("#model-select", "other");
    await sampled;
    assert.deepEqual(calls.slice(n).map(([p, m]) => p + "?" + m).slice(0, 2), ["/info?other", "/sample?other"]);
    // the previous model's selection and score are gone
    assert.deepEqual(await page.$$eval("#picks button[aria-pressed=true]", (l) => l.length), 0);
    assert.equal(await page.$$eval("#test-bpd", (l) => l.length), 0);
  });
});

// the same against a real server with a model repository of two models, when this build has --model-repository
const REPO = (() => { try { return execFileSync(exe("realnvp-server"), ["--help"]).toString().includes("--model-repository"); } catch (e) { return false; } })();
test("demo page: a model repository of two models, chosen on the page", { timeout: 120000,
  skip: SKIP || (!REPO && "this realnvp-server has no --model-repository: check skipped") }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "rnvp-web-repo-"));
  try {
    for (const m of ["fashion-mnist", "tiny"]) mkdirSync(path.join(dir, m));
    copyFileSync(BUNDLED, path.join(dir, "fashion-mnist", "model.safetensors"));
    writeFileSync(path.join(dir, "cfg.json"), JSON.stringify({ height: 16, width: 16, channels: 1, num_scales: 2, res_blocks: 1,
      features: [8, 8], alpha: 0.05, bn_eps: 1e-5, flow_batchnorm: true, flow_bn_eps: 1e-4 }));
    execFileSync(exe("realnvp"), ["init", "--config", path.join(dir, "cfg.json"), "--seed", "1", "-o", path.join(dir, "tiny", "model.safetensors")]);
    await withServer(["--model-repository", dir], async (page, base) => {
      assert.equal((await fetch(base + "/info")).status, 400);   // the server asks for a model
      await page.goto(base + "/");
      await gridDrawn(page, 16, 28);
      assert.deepEqual(await page.$$eval("#model-select option", (o) => o.map((x) => x.value)), ["fashion-mnist", "tiny"]);
      assert.match(await page.textContent("#model-line"), /^fashion-mnist · 28×28×1/);
      await page.click("#picks button:nth-child(3)");
      await page.waitForSelector("#test-bpd");
      await page.selectOption("#model-select", "tiny");
      await gridDrawn(page, 16, 16);
      assert.match(await page.textContent("#model-line"), /^tiny · 16×16×1/);
      assert.equal(await page.isHidden("#tests"), true);   // 16x16: no Fashion-MNIST test images
      assert.equal(await page.textContent("#card-err"), "");
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("demo page: the built-in test images are the t10k images tools/demo-images.py names",
  { skip: !existsSync(path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) && `no Fashion-MNIST at ${FMNIST}: check skipped` }, () => {
  execFileSync("python3", [path.join(ROOT, "tools/demo-images.py"), "--check", "--data", FMNIST]);
});
