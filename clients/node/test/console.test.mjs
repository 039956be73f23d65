// The web console at `/` in headless Chromium (Debian's `chromium`, driven by playwright-core
// over the DevTools protocol): start chat-agent and see its tokens and completion, cancel a
// long run, watch a workflow's steps tick, use an API key. Screenshots go to target/.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { ROOT, startLoom } from "../support.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const SHOTS = path.join(ROOT, "target");
let loom;
let browser;

before(async () => {
  loom = await startLoom();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  mkdirSync(SHOTS, { recursive: true });
});
after(async () => {
  await browser?.close();
  await loom.stop();
});

async function open(base, options = {}) {
  const page = await browser.newPage(options);
  page.setDefaultTimeout(20_000);
  await page.goto(`${base}/`);
  return page;
}

async function start(page, target, input) {
  await page.selectOption("#target", target);
  await page.fill("#input", input);
  await page.click("#start");
}

test("chat-agent: tokens arrive in the lane and the run completes", async () => {
  const page = await browser.newPage();
  page.setDefaultTimeout(20_000);
  // A clean load: no request of the page fails (a missing icon included), no script error.
  const failures = [];
  page.on("response", (r) => { if (r.status() >= 400) failures.push(`${r.status()} ${r.url()}`); });
  page.on("pageerror", (e) => failures.push(String(e)));
  await page.goto(`${loom.base}/`);
  await page.waitForSelector("#target option[value='actor:chat-agent']", { state: "attached" });
  await page.selectOption("#target", "actor:chat-agent");
  assert.equal(await page.textContent("#input-label"), "Prompt", "a prompt field for chat-agent");
  await start(page, "actor:chat-agent", "hi");
  await page.waitForSelector("#run-state.complete");
  assert.equal(await page.textContent("#lanes .text"), "Hello world");
  assert.match(await page.textContent("#result"), /"text": "Hello world"/);
  await page.screenshot({ path: path.join(SHOTS, "console-chat.png"), fullPage: true });
  assert.deepEqual(failures, []);
  await page.close();
});

test("a team streams into one lane per member", async () => {
  const page = await open(loom.base);
  await page.waitForSelector("#target option[value='actor:team-demo']", { state: "attached" });
  await start(page, "actor:team-demo", '{"prompt": "Loom"}');
  await page.waitForSelector("#run-state.complete");
  const lanes = await page.$$eval(".lane", (els) => els.map((el) => [el.querySelector("h3").textContent, el.querySelector(".text").textContent]));
  assert.deepEqual(lanes.map(([name]) => name).sort(), ["analyst", "researcher", "writer"]);
  const writer = lanes.find(([name]) => name === "writer")[1];
  assert.equal(writer, "Draft: Loom let users watch work happen, stop it at will, and trust what they see.");
  await page.screenshot({ path: path.join(SHOTS, "console-team.png"), fullPage: true });
  await page.close();
});

test("a long run is cancelled with the Cancel button", async () => {
  const page = await open(loom.base);
  await page.waitForSelector("#target option[value='actor:batch']", { state: "attached" });
  await start(page, "actor:batch", '{"count": 2000, "batch_size": 10, "delay_ms": 50}');
  await page.waitForSelector("#bars progress");
  await page.click("#cancel");
  await page.waitForSelector("#run-state.cancelled");
  assert.match(await page.textContent("#result"), /"code": "cancelled"/);
  await page.close();
});

test("a workflow's steps tick with durations, and the run is listed to re-open", async () => {
  const page = await open(loom.base, { viewport: { width: 390, height: 844 } });
  await page.waitForSelector("#target option[value='workflow:batch-report']", { state: "attached" });
  await start(page, "workflow:batch-report", '{"count": 300}');
  await page.waitForSelector("#run-state.complete");
  const steps = await page.$$eval("#steps li", (items) => items.map((li) => [li.className, li.firstChild.textContent, li.lastChild.textContent]));
  assert.deepEqual(steps.map(([state, name]) => [state, name]), [["done", "process"], ["done", "report"]]);
  assert.ok(steps.every(([, , took]) => /^\d+\.\d s$/.test(took)), JSON.stringify(steps));
  await page.screenshot({ path: path.join(SHOTS, "console-workflow-phone.png"), fullPage: true });
  // Re-open the newest run from the list: it replays to the same end, the steps' outcomes
  // without durations (a replay comes in a burst; chunks carry no times).
  await page.waitForSelector("#runs li button");
  await page.click("#runs li button");
  await page.waitForSelector("#run-state.complete");
  const replayed = await page.$$eval("#steps li.done", (items) => items.map((li) => li.lastChild.textContent));
  assert.deepEqual(replayed, ["", ""]);
  await page.close();
});

test("a refused start says so in the run panel instead of showing the run before", async () => {
  const page = await open(loom.base);
  await page.waitForSelector("#target option[value='actor:echo']", { state: "attached" });
  await start(page, "actor:echo", '{"said": "before"}');
  await page.waitForSelector("#run-state.complete");
  await start(page, "workflow:batch-report", '{"count": "lots"}');
  await page.waitForSelector("#run-state.refused");
  assert.match(await page.textContent("#result"), /bad_input: .*count/);
  assert.equal(await page.textContent("#run-id"), "–");
  assert.equal(await page.$$eval(".lane", (els) => els.length), 0, "the run before is gone");
  await start(page, "actor:echo", "{not json");
  await page.waitForFunction(() => /not JSON/.test(document.getElementById("result").textContent));
  // Refused while another run streams: that run's stream is let go without a script error.
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await start(page, "actor:batch", '{"count": 2000, "batch_size": 10, "delay_ms": 50}');
  await page.waitForSelector("#bars progress");
  await start(page, "actor:echo", "{not json");
  await page.waitForSelector("#run-state.refused");
  await page.waitForTimeout(300);
  assert.deepEqual(errors, []);
  await page.close();
});

test("a cancelled workflow's running step is marked failed, and a reload rejoins the run", async () => {
  const page = await open(loom.base);
  await page.waitForSelector("#target option[value='workflow:batch-report']", { state: "attached" });
  await start(page, "workflow:batch-report", '{"count": 100000, "batch_size": 1}');
  await page.waitForSelector("#steps li.running");
  const id = await page.textContent("#run-id");
  // The run goes on across a reload (it is detached), and the page follows it again.
  await page.reload();
  await page.waitForFunction((want) => document.getElementById("run-id").textContent === want, id);
  await page.waitForSelector("#run-state.running");
  await page.waitForSelector("#steps li.running");
  await page.click("#cancel");
  await page.waitForSelector("#run-state.cancelled");
  const steps = await page.$$eval("#steps li", (items) => items.map((li) => [li.className, li.firstChild.textContent]));
  assert.deepEqual(steps, [["failed", "process"]]);
  await page.close();
});

test("a finished run whose log dropped its start still shows how it ended", async () => {
  const page = await open(loom.base);
  await page.waitForSelector("#target option[value='actor:batch']", { state: "attached" });
  // More chunks than the server's log keeps (10,000), as fast as they come, detached.
  const id = await page.evaluate(async () => {
    const created = await fetch("/v1/runs", {
      method: "POST",
      body: JSON.stringify({ actor: "batch", input: { count: 20000, batch_size: 1, delay_ms: 0 } }),
    });
    const { run_id } = await created.json();
    for (;;) {
      const info = await (await fetch(`/v1/runs/${run_id}`)).json();
      if (info.status !== "running") return run_id;
      await new Promise((done) => setTimeout(done, 100));
    }
  });
  await page.reload();
  // The newest run heads the list.
  await page.waitForSelector("#runs li button");
  await page.click("#runs li button");
  await page.waitForSelector("#run-state.complete");
  assert.match(await page.textContent("#run-id"), new RegExp(id));
  assert.match(await page.textContent("#status"), /cursor_expired: .* the run ended: complete/);
  await page.close();
});

test("with LOOM_API_KEY the page asks for the key and then works", async () => {
  const locked = await startLoom({ LOOM_API_KEY: "s3cret" });
  try {
    const page = await open(locked.base, { colorScheme: "dark" });
    await page.waitForSelector("#key-form:not([hidden])");
    assert.match(await page.textContent("#status"), /needs an API key/);
    // A wrong key is said to be wrong, and not kept.
    await page.fill("#key", "nope");
    await page.click("#key-form button");
    await page.waitForFunction(() => /refused that API key/.test(document.getElementById("status").textContent));
    assert.equal(await page.evaluate(() => localStorage.getItem("loom-key")), null);
    await page.fill("#key", "s3cret");
    await page.click("#key-form button");
    await page.waitForSelector("#target option[value='actor:echo']", { state: "attached" });
    await start(page, "actor:echo", '{"said": "hi"}');
    await page.waitForSelector("#run-state.complete");
    assert.match(await page.textContent("#result"), /"said": "hi"/);
    await page.screenshot({ path: path.join(SHOTS, "console-dark.png"), fullPage: true });
    await page.close();
  } finally {
    await locked.stop();
  }
});
