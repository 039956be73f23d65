// The official AG-UI client, `@ag-ui/client`'s HttpAgent, against a real `loom serve`. The
// client validates every event's schema and the order of events itself.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { HttpAgent } from "@ag-ui/client";
import { readFrames, startLoom } from "../support.mjs";

let loom;
before(async () => {
  loom = await startLoom();
});
after(async () => {
  await loom.stop();
});

/** Runs `agent` with a user message; returns the result, new messages and every event. */
async function run(agentName, content, parameters = {}) {
  const agent = new HttpAgent({
    url: `${loom.base}/v1/ag-ui/${agentName}`,
    threadId: "thread-1",
    initialMessages: [{ id: "u1", role: "user", content }],
  });
  const events = [];
  const { result, newMessages } = await agent.runAgent(parameters, {
    onEvent: ({ event }) => {
      events.push(event);
    },
  });
  return { result, newMessages, events };
}

test("a chat-agent reply is one text message between RUN_STARTED and RUN_FINISHED", async () => {
  const { result, newMessages, events } = await run("chat-agent", "hi");
  assert.deepEqual(
    events.map((e) => e.type),
    ["RUN_STARTED", "TEXT_MESSAGE_START", "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_CONTENT",
      "TEXT_MESSAGE_END", "RUN_FINISHED"],
  );
  assert.equal(events[0].threadId, "thread-1");
  assert.equal(newMessages.length, 1);
  assert.equal(newMessages[0].role, "assistant");
  assert.equal(newMessages[0].content, "Hello world");
  assert.equal(result.text, "Hello world");
  assert.equal(result.usage.total_tokens, 5);
});

test("a team's members are steps, each with its own named message", async () => {
  const { newMessages, events } = await run("team-demo", "Loom");
  const started = events.filter((e) => e.type === "STEP_STARTED").map((e) => e.stepName);
  assert.deepEqual(started.sort(), ["analyst", "researcher", "writer"]);
  const finished = events.filter((e) => e.type === "STEP_FINISHED").map((e) => e.stepName);
  assert.deepEqual(finished.sort(), ["analyst", "researcher", "writer"]);
  const byName = Object.fromEntries(newMessages.map((m) => [m.name, m.content]));
  assert.equal(
    byName.writer,
    "Draft: Loom let users watch work happen, stop it at will, and trust what they see.",
  );
  assert.equal(Object.keys(byName).length, 3);
});

test("a workflow's steps start and finish in order, progress comes as CUSTOM events", async () => {
  const { result, events } = await run("workflows/batch-report", '{"count": 300}');
  const steps = events
    .filter((e) => e.type === "STEP_STARTED" || e.type === "STEP_FINISHED")
    .map((e) => `${e.type}:${e.stepName}`);
  assert.deepEqual(steps, [
    "STEP_STARTED:process", "STEP_FINISHED:process", "STEP_STARTED:report", "STEP_FINISHED:report",
  ]);
  assert.ok(events.some((e) => e.type === "CUSTOM" && e.name === "loom.progress"));
  assert.equal(result.steps.process.processed, 300);
});

test("a team that is a workflow step: its members are steps inside it, finished before it", async () => {
  const { events } = await run("workflows/team-review", '{"topic": "Loom"}');
  const order = events
    .filter((e) => e.type === "STEP_STARTED" || e.type === "STEP_FINISHED")
    .map((e) => `${e.type}:${e.stepName}`);
  for (const member of ["researcher", "analyst", "writer"]) {
    const name = `team-draft/${member}`;
    const started = order.indexOf(`STEP_STARTED:${name}`);
    const finished = order.indexOf(`STEP_FINISHED:${name}`);
    assert.ok(started >= 0 && started < finished, `${name}: ${order}`);
    assert.ok(finished < order.indexOf("STEP_FINISHED:team-draft"), `${name}: ${order}`);
  }
  assert.ok(order.indexOf("STEP_FINISHED:team-draft") < order.indexOf("STEP_STARTED:edit"), order);
});

test("a failing run ends with RUN_ERROR carrying its code; an unknown agent is a 404", async () => {
  const events = [];
  const agent = new HttpAgent({ url: `${loom.base}/v1/ag-ui/batch`, threadId: "t" });
  // The client hands RUN_ERROR to its subscribers; the run ends there.
  await agent.runAgent(
    { forwardedProps: { input: { count: "many" } } },
    { onEvent: ({ event }) => { events.push(event); } },
  );
  const last = events.at(-1);
  assert.equal(last.type, "RUN_ERROR");
  assert.equal(last.code, "bad_input");
  await assert.rejects(run("nobody", "x"), /404/);
});

test("a dropped stream re-attaches with Last-Event-ID, nothing lost or repeated", async () => {
  const response = await fetch(`${loom.base}/v1/ag-ui/team-demo`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream" },
    body: JSON.stringify({ threadId: "t2", runId: "r", messages: [{ id: "u", role: "user", content: "Loom" }] }),
  });
  const runId = response.headers.get("loom-run-id");
  const first = await readFrames(response, (f) => f.id === 9);
  await response.body.cancel();
  const rest = await readFrames(
    await fetch(`${loom.base}/v1/runs/${runId}/stream?format=ag-ui&thread_id=t2`, {
      headers: { "last-event-id": "9" },
    }),
  );
  const frames = first.concat(rest);
  assert.deepEqual(frames.map((f) => f.id), frames.map((_, i) => i));
  assert.equal(frames.at(-1).data.type, "RUN_FINISHED");
  assert.equal(frames.at(-1).data.threadId, "t2");
});

test("with LOOM_API_KEY set, HttpAgent sends the key as a header", async () => {
  const locked = await startLoom({ LOOM_API_KEY: "s3cret" });
  try {
    const agent = (key) =>
      new HttpAgent({
        url: `${locked.base}/v1/ag-ui/echo`,
        headers: { authorization: `Bearer ${key}` },
        initialMessages: [{ id: "u1", role: "user", content: '{"said": "hi"}' }],
      });
    await assert.rejects(agent("wrong").runAgent(), /401/);
    const { result } = await agent("s3cret").runAgent();
    assert.deepEqual(result, { said: "hi" });
  } finally {
    await locked.stop();
  }
});
