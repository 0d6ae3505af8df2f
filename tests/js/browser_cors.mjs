// A real browser's EventSource, cross-origin with credentials, for
// tests/browser_cors.rs: headless Chromium driven by playwright-core.
//
// usage: node browser_cors.mjs CHROMIUM CONFIG_JSON
//
// CONFIG_JSON: {"node": "http://127.0.0.1:N", "scenarios": [{"name", "page",
// "token", "topic"}]}. For each scenario, in order: a fresh browser context
// with the cookie `sse_token=<token>` on the node's origin, the page
// `page` loaded (another origin), and in it
// `new EventSource(node + "/events?topic=<topic>", {withCredentials: true})`.
// Prints one JSON line per thing the page sees, each with "scenario":
// {"type":"open"}, {"type":"connected"|"message", "data"},
// {"type":"error","readyState"}, then {"type":"done"} once a message with
// data "end" arrived, the browser gave up (readyState 2, CLOSED), or 10 s
// passed ({"type":"done","timeout":true}).
import { chromium } from 'playwright-core';

const [executablePath, configJson] = process.argv.slice(2);
const config = JSON.parse(configJson);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // The tests run as root in CI, where Chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
try {
  for (const scenario of config.scenarios) {
    const context = await browser.newContext();
    await context.addCookies([
      { name: 'sse_token', value: scenario.token, url: config.node + '/', sameSite: 'Lax' },
    ]);
    const page = await context.newPage();
    await page.exposeFunction('report', (obj) => out({ scenario: scenario.name, ...obj }));
    await page.goto(scenario.page);
    const url = `${config.node}/events?topic=${encodeURIComponent(scenario.topic)}`;
    const outcome = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const es = new EventSource(url, { withCredentials: true });
          const finish = (how) => {
            es.close();
            resolve(how);
          };
          const timer = setTimeout(() => finish({ timeout: true }), 10000);
          es.onopen = () => window.report({ type: 'open' });
          es.onerror = () => {
            window.report({ type: 'error', readyState: es.readyState });
            if (es.readyState === EventSource.CLOSED) {
              clearTimeout(timer);
              finish({ timeout: false });
            }
          };
          es.addEventListener('connected', (e) => window.report({ type: 'connected', data: e.data }));
          es.onmessage = (e) => {
            window.report({ type: 'message', data: e.data });
            if (e.data === 'end') {
              clearTimeout(timer);
              finish({ timeout: false });
            }
          };
        }),
      url,
    );
    out({ scenario: scenario.name, type: 'done', ...outcome });
    await context.close();
  }
} finally {
  await browser.close();
}
