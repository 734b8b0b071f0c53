// The operator console end to end in headless Chromium: sign in with a token minted by
// `sealpost cluster console`, find a sent message by id and read its timeline, then watch
// a node go down (`sealpost cluster stop-node`) and come back (`start-node`) in the nodes
// table. Run by scripts/browser-test, which starts the `sealpost dev` cluster and sends the
// message; every wait here is bounded.
//
// Environment: CONSOLE_URL, CONSOLE_TOKEN, MESSAGE_ID, SEALPOST_BIN, SEALPOST_CLIENT_CONFIG,
// CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (optional).
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const url = env("CONSOLE_URL");
const token = env("CONSOLE_TOKEN");
const messageId = env("MESSAGE_ID");
const bin = env("SEALPOST_BIN");
const shots = process.env.SCREENSHOT_DIR;
/** Bound on each wait for the page, in milliseconds. */
const WAIT_MS = 30_000;

const sealpost = (...args) =>
  execFileSync(bin, args, { encoding: "utf8", timeout: WAIT_MS, stdio: ["ignore", "pipe", "pipe"] });

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  args: ["--no-sandbox"],
  timeout: WAIT_MS,
});
let failed = false;
const page = await browser.newPage();
page.setDefaultTimeout(WAIT_MS);
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
try {
  await page.goto(url);

  // A wrong token is refused with the reason; the real one signs in.
  const tail = token.endsWith("0000") ? "1111" : "0000";
  await page.fill("#token", token.slice(0, -4) + tail);
  await page.click("#sign-in");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("does not verify"));
  assert.equal(await page.isVisible("#app"), false, "a bad token must not open the console");
  await page.fill("#token", token);
  await page.click("#sign-in");
  await page.waitForSelector("#app", { state: "visible" });
  const who = await page.textContent("#who");
  const served = Number(/on node (\d+)/.exec(who)?.[1]);
  assert.ok(served > 0, `the console names its node: ${who}`);
  console.log(`ok  signed in (${who})`);

  // Every node up, with one leader.
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#nodes tbody tr")];
    return rows.length === 3 && rows.every((r) => r.dataset.state === "up");
  });
  const roles = await page.$$eval("#nodes tbody tr td:nth-child(4)", (tds) => tds.map((t) => t.textContent));
  assert.equal(roles.filter((r) => r === "leader").length, 1, `one leader: ${roles}`);
  console.log(`ok  three nodes up: ${roles.join(", ")}`);

  // The message, found by id, with its timeline.
  await page.fill("#message-id", messageId);
  await page.click("#find-message");
  // Sent, then routed here or relayed to the receiver's provider.
  await page.waitForSelector("#timeline li:nth-child(2)");
  const events = await page.$$eval("#timeline li", (lis) => lis.map((l) => l.dataset.event));
  assert.equal(events[0], "sent", `the timeline starts with sent: ${events}`);
  assert.match(await page.textContent("#message-summary"), new RegExp(messageId));
  console.log(`ok  message ${messageId}: ${events.join(" -> ")}`);
  if (shots) await page.screenshot({ path: `${shots}/console-timeline.png`, fullPage: true });

  // An unknown id is an error the page shows, not a blank.
  await page.fill("#message-id", "not-a-message-id");
  await page.click("#find-message");
  await page.waitForFunction(() => document.querySelector("#message-error").textContent.length > 0);
  console.log(`ok  a bad id is refused: ${await page.textContent("#message-error")}`);

  // A node other than the one serving the console goes down, then comes back.
  const victim = served === 3 ? 2 : 3;
  sealpost("cluster", "stop-node", "--node", String(victim));
  await page.waitForSelector(`#nodes tbody tr[data-node-id="${victim}"][data-state="down"]`);
  console.log(`ok  node ${victim} shows down`);
  if (shots) await page.screenshot({ path: `${shots}/console-node-down.png`, fullPage: true });
  sealpost("cluster", "start-node", "--node", String(victim));
  await page.waitForSelector(`#nodes tbody tr[data-node-id="${victim}"][data-state="up"]`);
  console.log(`ok  node ${victim} is back up`);

  // The charts have samples.
  await page.waitForFunction(() => document.querySelectorAll("#chart-throughput polyline").length === 1);
  console.log(`ok  charts drawn: ${await page.textContent("#chart-note")}`);
  assert.deepEqual(problems, [], "the page ran without script errors");
} catch (e) {
  failed = true;
  console.error(`FAILED: ${e.stack || e}`);
  if (shots) await page.screenshot({ path: `${shots}/console-failure.png`, fullPage: true }).catch(() => {});
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
