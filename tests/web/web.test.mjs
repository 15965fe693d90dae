// web.test.mjs: drives the server's browser demo (GET /) in Debian's headless Chromium with playwright-core:
// model card, samples, scoring with the OOD score, interpolation, the API key. Leaves out the JSON API itself (test_server.c).
//
// Run from the repository root after `make`: `make test-web` (or `node --test tests/web/`).
// Needs /usr/bin/chromium (Debian's chromium) and `npm ci` in tests/web; when Chromium is missing the
// test is skipped with a message saying so. SCREENSHOT=path.png also saves a screenshot of the page.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ROOT, CHROMIUM, freePort, waitReady, launchChromium } from "./lib.mjs";

const KEY = "web-test-key-123";

test("browser demo", { timeout: 120000, skip: !existsSync(CHROMIUM) && `Chromium not found at ${CHROMIUM} (apt-get install chromium): browser test skipped` }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "rnvp-web-"));
  const exe = (n) => path.join(ROOT, "bin", n);
  const model = path.join(dir, "m.safetensors");
  writeFileSync(path.join(dir, "cfg.json"), JSON.stringify({ height: 16, width: 16, channels: 1, num_scales: 2, res_blocks: 1,
    features: [8, 8], alpha: 0.05, bn_eps: 1e-5, flow_batchnorm: true, flow_bn_eps: 1e-4 }));
  execFileSync(exe("realnvp"), ["init", "--config", path.join(dir, "cfg.json"), "--seed", "1", "-o", model]);
  for (const [name, seed] of [["a.png", "2"], ["b.png", "3"], ["c.png", "4"]])
    execFileSync(exe("realnvp"), ["sample", "--model", model, "-n", "1", "--seed", seed, "--temp", "1", "-o", path.join(dir, name)]);
  writeFileSync(path.join(dir, "key"), KEY + "\n");
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const srv = spawn(exe("realnvp-server"), ["--model", model, "--port", String(port), "--api-key-file", path.join(dir, "key"),
    "--access-log", "off"], { stdio: ["ignore", "ignore", "inherit"] });
  let browser;
  try {
    await waitReady(base, 20000);
    browser = await launchChromium();
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    await page.goto(base + "/");
    assert.equal(await page.title(), "realnvp");

    // without the key the API refuses, and the page says so
    await page.waitForFunction(() => document.getElementById("card-err").textContent.length > 0);
    assert.match(await page.textContent("#card-err"), /401/);

    // the key typed into the page unlocks the model card
    await page.fill("#api-key", KEY);
    await page.dispatchEvent("#api-key", "change");
    await page.waitForFunction(() => document.querySelectorAll("#card-dl dd").length > 5);
    const card = await page.textContent("#card-dl");
    assert.match(card, /16 × 16 × 1 \(D = 256\)/);
    assert.match(await page.textContent("#model-line"), /16×16×1/);

    // samples: n images appear and decode
    await page.fill("#n", "12");
    await page.fill("#seed", "7");
    await page.click("#sample-btn");
    await page.waitForFunction(() => document.querySelectorAll("#gallery img").length === 12 &&
      [...document.querySelectorAll("#gallery img")].every((i) => i.complete && i.naturalWidth === 16));
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

    // interpolation: a strip of `steps` tiles with 2-pixel borders
    await page.setInputFiles("#interp-a", path.join(dir, "a.png"));
    await page.setInputFiles("#interp-b", path.join(dir, "b.png"));
    await page.fill("#steps", "6");
    await page.selectOption("#mode", "spherical");
    await page.click("#interp-btn");
    await page.waitForFunction(() => { const s = document.getElementById("strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
    const [w, h] = await page.$eval("#strip", (s) => [s.naturalWidth, s.naturalHeight]);
    assert.equal(w, 6 * 16 + 5 * 2);
    assert.equal(h, 16);

    if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    assert.deepEqual(pageErrors, []);
  } finally {
    if (browser) await browser.close();
    srv.kill("SIGTERM");
    await new Promise((r) => srv.once("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
});
