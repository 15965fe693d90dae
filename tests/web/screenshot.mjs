// screenshot.mjs: the README's picture of the demo page: serves a real model, lets the page draw its samples on load,
// scores and interpolates two of its built-in Fashion-MNIST test images, optionally scores and interpolates uploaded
// PNGs, and saves a full-page screenshot. Leaves out checking (web.test.mjs does that).
//
// Usage (repository root, after make and `npm ci` in tests/web):
//   node tests/web/screenshot.mjs MODEL OUT.png [A.png B.png [MORE.png ...]]
// The uploads, when given, are all scored and A.png and B.png are interpolated.
import { spawn } from "node:child_process";
import path from "node:path";
import { ROOT, freePort, waitReady, launchChromium } from "./lib.mjs";

const [model, out, ...pngs] = process.argv.slice(2);
if (!model || !out || pngs.length === 1) {
  console.error("usage: node tests/web/screenshot.mjs MODEL OUT.png [A.png B.png [MORE.png ...]]");
  process.exit(2);
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const srv = spawn(path.join(ROOT, "bin/realnvp-server"), ["--model", model, "--port", String(port), "--access-log", "off"],
  { stdio: ["ignore", "ignore", "inherit"] });
let browser;
try {
  await waitReady(base, 30000);
  browser = await launchChromium();
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + "/");
  await page.waitForFunction(() => document.querySelectorAll("#card-dl dd").length > 5);
  // the samples the page draws by itself
  await page.waitForFunction(() => document.querySelectorAll("#gallery img").length > 0 &&
    [...document.querySelectorAll("#gallery img")].every((i) => i.complete && i.naturalWidth > 0));
  // two built-in test images (the ankle boot, then the sneaker: the last one clicked is scored) and their interpolation
  if (await page.isVisible("#tests")) {
    await page.click('#picks button:has-text("ankle boot")');
    await page.click('#picks button:has-text("sneaker")');
    await page.waitForFunction(() => /sneaker/.test(document.getElementById("test-result").textContent) &&
      !document.getElementById("test-result").hasAttribute("aria-busy"));
    await page.click("#test-interp-btn");
    await page.waitForFunction(() => { const s = document.getElementById("test-strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
  }
  if (pngs.length) {
    await page.setInputFiles("#score-files", pngs.map((p) => path.resolve(p)));
    await page.waitForSelector(`#score-table:not([hidden]) tbody tr:nth-child(${pngs.length})`);
    await page.setInputFiles("#interp-a", path.resolve(pngs[0]));
    await page.setInputFiles("#interp-b", path.resolve(pngs[1]));
    await page.fill("#steps", "8");
    await page.selectOption("#mode", "spherical");
    await page.click("#interp-btn");
    await page.waitForFunction(() => { const s = document.getElementById("strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
  }
  await page.screenshot({ path: out, fullPage: true });
  console.log(`screenshot.mjs: wrote ${out}`);
} finally {
  if (browser) await browser.close();
  srv.kill("SIGTERM");
}
