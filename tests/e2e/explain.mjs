// End-to-end check of the HINT Gradio app in headless Chromium (driven by tests/test_app_e2e.py).
//
//   APP_URL=http://127.0.0.1:7860 OUT_DIR=/tmp/shots IMAGE=cat.jpg [MODE=explain|unreachable] \
//   [CHROMIUM=/usr/bin/chromium] node tests/e2e/explain.mjs
//
// MODE=explain: upload IMAGE, click Explain, wait for the overlays; check the prediction, the concept
// names, the magenta box pixels (and, with BIG_IMAGE, the upload size limit) in an overlay, the neuron bar
// charts (this image's and the bank's), the concept search, one ablation through the network, one
// neuron look-up and one neuron's exemplars opened from the charts' list; screenshots under OUT_DIR. MODE=unreachable: the page must say "service unreachable".
// Prints one JSON line of findings; exits 1 with a message when a check fails.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const APP_URL = process.env.APP_URL || "http://127.0.0.1:7860";
const OUT_DIR = process.env.OUT_DIR || fs.mkdtempSync(path.join(os.tmpdir(), "hint-e2e-"));
const IMAGE = process.env.IMAGE;
const MODE = process.env.MODE || "explain";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 90000);

const findings = { mode: MODE };
function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

// Count pixels of the box colour (pure magenta) in an <img>, read back through a canvas.
async function magentaPixels(page, selector) {
  return page.$eval(selector, async (img) => {
    if (!img.complete) await new Promise((r) => img.addEventListener("load", r, { once: true }));
    const c = document.createElement("canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] > 240 && d[i + 1] < 20 && d[i + 2] > 240) n++;
    return { n, width: c.width, height: c.height };
  });
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "hint-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
  ],
});
let code = 0;
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(TIMEOUT);
try {
  await page.goto(APP_URL, { waitUntil: "domcontentloaded" });
  await page.locator("#explain").waitFor();

  if (MODE === "unreachable") {
    // Said on load (the app pings the endpoint) and again after an attempt to explain.
    await page.getByText("service unreachable", { exact: false }).first().waitFor();
    if (IMAGE) {
      await page.locator("#image input[type=file]").setInputFiles(IMAGE);
      await page.locator("#image img").first().waitFor();
      await page.locator("#explain").click();
      // The toast and the status line both say it once the request has failed.
      await page.waitForFunction(
        () => (document.body.innerText.match(/service unreachable/g) || []).length >= 2 &&
          !/processing/.test(document.querySelector("#status").innerText),
      );
    }
    const status = await page.locator("#status").innerText();
    findings.status = status;
    check(/service unreachable/i.test(status), `status says "${status}"`);
    check(/make serve/.test(status), "status tells how to start the service");
    check(!/Traceback/.test(await page.content()), "no stack trace in the page");
    await page.screenshot({ path: path.join(OUT_DIR, "unreachable.png"), fullPage: true });
  } else {
    check(IMAGE && fs.existsSync(IMAGE), `IMAGE ${IMAGE} exists`);
    if (process.env.BIG_IMAGE) {
      // Over the upload limit: Gradio refuses it with a readable toast, nothing is uploaded.
      await page.locator("#image input[type=file]").setInputFiles(process.env.BIG_IMAGE);
      const toast = page.getByText("exceed the maximum allowed size", { exact: false }).first();
      await toast.waitFor();
      findings.tooBig = (await toast.innerText()).trim();
      check((await page.locator("#image img").count()) === 0, "the oversized image was not taken");
      await page.locator("[data-testid='toast-close']").first().click().catch(() => {});
    }
    await page.locator("#image input[type=file]").setInputFiles(IMAGE);
    await page.locator("#image img").first().waitFor();
    await page.locator("#explain").click();

    // The overlays (one gallery image per chosen concept) and the prediction.
    await page.locator("#overlays img").first().waitFor({ timeout: TIMEOUT });
    await page.waitForFunction(() => document.querySelectorAll("#overlays img").length >= 2);
    findings.prediction = (await page.locator("#prediction h3").first().innerText()).trim();
    findings.chain = (await page.locator("#prediction").innerText()).split("\n").find((l) => l.includes("›")) || "";
    findings.status = (await page.locator("#status").innerText()).trim();
    findings.chips = (await page.locator("#picker").innerText()).trim();
    findings.overlays = await page.locator("#overlays img").count();
    findings.box = await magentaPixels(page, "#overlays img");
    check(findings.box.n > 50, `an overlay has box-coloured pixels (${findings.box.n})`);
    check(/›/.test(findings.chain), "the WordNet chain is shown");

    // The neuron bar charts of the focused concept (matplotlib PNGs): this image's and the bank's.
    await page.locator("#image-neurons img").first().waitFor();
    await page.locator("#neurons img").first().waitFor();
    findings.focus = (await page.locator("#focus input").first().inputValue()).trim();
    findings.conceptTable = (await page.locator("#concept-table").innerText()).replace(/\s+/g, " ").slice(0, 400);

    // The concept picker covers every built concept and is searchable by name.
    const pick = page.locator("#picker input").first();
    await pick.click();
    await pick.fill("retriev");
    const option = page.locator("ul[role=listbox] li", { hasText: "retriever" }).first();
    await option.waitFor();
    findings.searched = (await option.innerText()).trim();
    await pick.fill("person");
    const person = page.locator("ul[role=listbox] li", { hasText: /(^|\s)person\s+·/ }).first();
    await person.waitFor();
    findings.unreliable = (await person.innerText()).trim();
    await pick.fill("");
    await page.keyboard.press("Escape");

    // Live ablation: click the slider a quarter of the way → about 5 neurons removed.
    const range = page.locator("#ablate input[type=range]");
    await range.scrollIntoViewIfNeeded();
    const box = await range.boundingBox();
    await page.mouse.click(box.x + box.width * 0.26, box.y + box.height / 2);
    await page.locator("#after img").first().waitFor({ timeout: TIMEOUT });
    await page.locator("#ablation").getByText("probe score", { exact: false }).first().waitFor();
    const ablationText = (await page.locator("#ablation").innerText()).trim();
    findings.ablation = ablationText.split("\n")[0];
    findings.ablationScore = ablationText.split("\n").find((l) => l.includes("probe score")) || "";
    check(/Class .*→/.test(findings.ablation), `ablation text shows the class change: ${findings.ablation}`);
    check(/→/.test(findings.ablationScore), `ablation text shows the score change: ${findings.ablationScore}`);

    // Neuron look-up.
    await page.locator("#neuron-no input").fill("45");
    await page.getByRole("button", { name: "Look up" }).click();
    await page.waitForFunction(() => {
      const t = document.querySelector("#neuron-table");
      return t && /n\d{8}/.test(t.innerText);
    });
    findings.neuronTable = (await page.locator("#neuron-table").innerText()).replace(/\s+/g, " ").slice(0, 300);

    // Exemplars: a neuron of the charts opened from the list under them -> its label and its image patches.
    await page.locator("#open-neuron input").first().click();
    const first = page.locator("ul[role=listbox] li").first();
    await first.waitFor();
    findings.opened = (await first.innerText()).trim();
    await first.click();
    const opened = findings.opened.match(/^#(\d+)/)[1];
    await page.waitForFunction((n) => {
      const label = document.querySelector("#neuron-label");
      return label && label.innerText.includes(`Neuron #${n}`) && document.querySelectorAll("#neuron-grid img").length >= 9;
    }, opened);
    findings.neuronNo = await page.locator("#neuron-no input").first().inputValue();
    findings.neuronLabel = (await page.locator("#neuron-label").innerText()).replace(/\s+/g, " ").trim();
    findings.exemplars = await page.locator("#neuron-grid img").count();
    await page.locator("#neuron-lookup").scrollIntoViewIfNeeded();
    await page.locator("#neuron-lookup").screenshot({ path: path.join(OUT_DIR, "neuron-grid.png") });
    check(!/Traceback/.test(await page.content()), "no stack trace in the page");

    await page.locator("#overlays").scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(OUT_DIR, "explain.png"), fullPage: true });
    await page.locator("#overlays").screenshot({ path: path.join(OUT_DIR, "overlays.png") });
  }
} catch (e) {
  code = 1;
  findings.error = String(e && e.message ? e.message : e).split("\n").slice(0, 6).join(" ");
  await page.screenshot({ path: path.join(OUT_DIR, `${MODE}-failure.png`), fullPage: true }).catch(() => {});
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(findings));
process.exit(code);
