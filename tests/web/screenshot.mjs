// screenshot.mjs: the README's picture of the demo page: serves a real model, samples, scores and interpolates
// some PNGs in headless Chromium and saves a full-page screenshot. Leaves out checking (web.test.mjs does that).
//
// Usage (repository root, after make and `npm ci` in tests/web):
//   node tests/web/screenshot.mjs MODEL OUT.png A.png B.png [MORE.png ...]
// A.png and B.png are interpolated; all the PNGs are scored.
import { spawn } from "node:child_process";
import path from "node:path";
import { ROOT, freePort, waitReady, launchChromium } from "./lib.mjs";

const [model, out, ...pngs] = process.argv.slice(2);
if (!model || !out || pngs.length < 2) {
  console.error("usage: node tests/web/screenshot.mjs MODEL OUT.png A.png B.png [MORE.png ...]");
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
  await page.fill("#n", "24");
  await page.fill("#seed", "1");
  await page.click("#sample-btn");
  await page.waitForFunction(() => document.querySelectorAll("#gallery img").length === 24 &&
    [...document.querySelectorAll("#gallery img")].every((i) => i.complete && i.naturalWidth > 0));
  await page.setInputFiles("#score-files", pngs.map((p) => path.resolve(p)));
  await page.waitForSelector(`#score-table:not([hidden]) tbody tr:nth-child(${pngs.length})`);
  await page.setInputFiles("#interp-a", path.resolve(pngs[0]));
  await page.setInputFiles("#interp-b", path.resolve(pngs[1]));
  await page.fill("#steps", "8");
  await page.selectOption("#mode", "spherical");
  await page.click("#interp-btn");
  await page.waitForFunction(() => { const s = document.getElementById("strip"); return !s.hidden && s.complete && s.naturalWidth > 0; });
  await page.screenshot({ path: out, fullPage: true });
  console.log(`screenshot.mjs: wrote ${out}`);
} finally {
  if (browser) await browser.close();
  srv.kill("SIGTERM");
}
