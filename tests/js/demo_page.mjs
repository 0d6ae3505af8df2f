// The main demo's page (examples/cluster) in a headless Chromium, used as a
// person would: publish through the form, stop the node that holds the
// page's stream, publish on, and read what the page says it received.
//
// usage: node demo_page.mjs URL CHROMIUM SCREENSHOT.png
// Prints JSON lines: {"step": ...} as it goes, then {"result": {...}}.

import { chromium } from "playwright-core";

const [url, executablePath, screenshot] = process.argv.slice(2);
const say = value => console.log(JSON.stringify(value));
const deadline = (ms, what) => ({ timeout: ms, polling: 100, what });

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("pageerror", err => say({ pageerror: String(err) }));
  await page.goto(url);
  const state = () => page.evaluate(() => window.demoState());
  const waitFor = async (predicate, ms, what, arg) => {
    try {
      await page.waitForFunction(predicate, arg, deadline(ms, what));
    } catch (err) {
      say({ timeout: what, state: await state() });
      throw err;
    }
  };

  await waitFor(() => window.demoState().holder !== null, 10000, "the stream opens");
  say({ step: "connected", state: await state() });

  // Three events through the form, each through a different node.
  for (const via of ["0", "1", "2"]) {
    await page.selectOption("#via", via);
    await page.fill("#msg", "form via node-" + via);
    await page.click("#publish");
  }
  await waitFor(() => window.demoState().received.length >= 5, 10000, "five numbered events");
  const before = await state();
  say({ step: "before stop", state: before });

  // Stop (drain) the node that holds this page's stream.
  // Publish at once, while the stream is down: the page can only get these
  // from the history when it resumes.
  await page.click(`[data-node="${before.holder}"] .stop`);
  await page.selectOption("#via", "auto");
  for (let i = 0; i < 3; i++) {
    await page.fill("#msg", "while moving " + i);
    await page.click("#publish");
  }
  await waitFor(
    holder => window.demoState().moves >= 1 && window.demoState().holder !== holder,
    15000, "the stream moves to another node", before.holder);
  const moved = await state();
  say({ step: "moved", state: moved });

  // Publish on through the form and let the ticker run a few more times.
  for (let i = 0; i < 3; i++) {
    await page.fill("#msg", "after the move " + i);
    await page.click("#publish");
  }
  await waitFor(
    count => window.demoState().received.length >= count + 5,
    15000, "five more events after the move", moved.received.length);
  await page.uncheck("#auto");
  // Let publishes already on their way land, then compare with the
  // cluster's own count of numbers handed out.
  await page.waitForTimeout(1500);
  const cluster = await page.evaluate(async () => (await fetch("/cluster")).json());
  const after = await state();
  const shown = await page.evaluate(() => ({
    missing: document.getElementById("missing").textContent,
    dups: document.getElementById("dups").textContent,
    moves: document.getElementById("moves").textContent,
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  say({
    result: {
      holder_before: before.holder,
      holder_after: after.holder,
      received: after.received,
      missing: after.missing,
      dups: after.dups,
      moves: after.moves,
      resets: after.resets,
      seq: cluster.seq,
      replayed: cluster.nodes.reduce((sum, n) => sum + n.replayed, 0),
      stopped: cluster.nodes.filter(n => n.state !== "up").map(n => n.id),
      shown,
    },
  });
} finally {
  await browser.close();
}
