// loom-client against a real `loom serve` (started by the test, with a fake OpenAI-compatible
// upstream for chat-agent): the seed's four use cases, cancel, resume, joining, errors.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Loom, LoomError } from "loom-client";
import { startLoom } from "../../node/support.mjs";

let server;
let loom;
before(async () => {
  server = await startLoom();
  loom = new Loom({ baseUrl: server.base });
});
after(async () => {
  await server.stop();
});

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

async function until(check) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, "timed out waiting");
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("tokens: a chat-agent reply streams token by token", async () => {
  const stream = loom.actor("chat-agent").stream({ prompt: "hi" });
  const chunks = await collect(stream);
  assert.equal(await stream.runId, chunks[0].data.run_id);
  const tokens = chunks.filter((c) => c.type === "data").map((c) => c.data.token);
  assert.deepEqual(tokens, ["Hello", " world"]);
  assert.equal(chunks.at(-1).type, "complete");
  assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i));
});

test("workflow steps: each step starts and completes, in order", async () => {
  const chunks = await collect(loom.workflow("batch-report").stream({ count: 300 }));
  const marks = chunks.filter((c) => c.event).map((c) => `${c.event}:${c.step}`);
  assert.deepEqual(marks, [
    "action-start:process", "action-complete:process", "action-start:report", "action-complete:report",
  ]);
  assert.equal(chunks.at(-1).type, "complete");
});

test("batch progress: one progress chunk per batch", async () => {
  const chunks = await collect(
    loom.actor("batch").stream({ count: 300, batch_size: 100, delay_ms: 0 }),
  );
  const progress = chunks.filter((c) => c.type === "progress").map((c) => c.progress);
  assert.deepEqual(progress.map((p) => [p.current, p.total]), [[1, 3], [2, 3], [3, 3]]);
});

test("team attribution: every token names its member", async () => {
  const chunks = await collect(loom.actor("team-demo").stream({ prompt: "Loom" }));
  const byMember = {};
  for (const c of chunks) {
    if (c.type === "data" && c.data.token) byMember[c.actor] = (byMember[c.actor] ?? "") + c.data.token;
  }
  assert.deepEqual(Object.keys(byMember).sort(), ["analyst", "researcher", "writer"]);
  assert.equal(
    byMember.writer,
    "Draft: Loom let users watch work happen, stop it at will, and trust what they see.",
  );
});

test("breaking out of the loop cancels the run", async () => {
  const stream = loom.actor("team-demo").stream({ prompt: "Loom" });
  let seen = 0;
  for await (const chunk of stream) {
    if (++seen === 3) break;
  }
  const id = await stream.runId;
  const status = await until(async () => {
    const run = await loom.runs.get(id);
    return run.status !== "running" && run;
  });
  assert.equal(status.status, "cancelled");
});

test("cancel() and an aborted signal end the loop with error/cancelled", async () => {
  const stream = loom.actor("team-demo").stream({ prompt: "Loom" });
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunks.length === 2) await stream.cancel();
  }
  assert.equal(chunks.at(-1).type, "error");
  assert.equal(chunks.at(-1).error.code, "cancelled");

  const abort = new AbortController();
  const aborted = loom.actor("team-demo").stream({ prompt: "Loom" }, { signal: abort.signal });
  await assert.rejects(async () => {
    for await (const chunk of aborted) {
      if (chunk.seq === 2) abort.abort();
    }
  });
  const id = await aborted.runId;
  await until(async () => (await loom.runs.get(id)).status === "cancelled");
});

test("a connection killed mid-stream is re-attached: every chunk once, in order", async () => {
  // A TCP proxy the test can cut: every connection through it is destroyed once, mid-stream.
  const target = new URL(server.base);
  const sockets = new Set();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  try {
    const through = new Loom({ baseUrl: `http://127.0.0.1:${proxy.address().port}` });
    const chunks = [];
    let cut = false;
    for await (const chunk of through.actor("team-demo").stream({ prompt: "Loom" })) {
      chunks.push(chunk);
      if (!cut && chunks.length === 10) {
        cut = true;
        for (const socket of sockets) socket.destroy();
      }
    }
    assert.ok(cut);
    assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i), "nothing lost or twice");
    assert.equal(chunks.at(-1).type, "complete");
  } finally {
    proxy.close();
  }
});

test("a detached run is joined from a seq, exclusive as on the wire", async () => {
  const { run_id, stream_url } = await loom.runs.create({
    actor: "batch",
    input: { count: 500, batch_size: 100, delay_ms: 20 },
  });
  assert.equal(stream_url, `/v1/runs/${run_id}/stream`);
  const listed = await loom.runs.list();
  assert.equal(listed[0].run_id, run_id);
  const chunks = await collect(loom.runs.stream(run_id, { from: 2 }));
  assert.equal(chunks[0].seq, 3);
  assert.equal(chunks.at(-1).type, "complete");
  assert.equal((await loom.runs.get(run_id)).status, "complete");
});

test("execute, the lists, and errors: LoomError for HTTP, an error chunk for a failing run", async () => {
  assert.deepEqual(await loom.actor("echo").execute({ a: 1 }), { a: 1 });
  assert.ok((await loom.actors()).some((a) => a.name === "chat-agent"));
  assert.ok((await loom.workflows()).some((w) => w.name === "batch-report"));

  const unknown = loom.actor("nobody").stream({});
  await assert.rejects(collect(unknown), (e) => e instanceof LoomError && e.status === 404 && e.code === "not_found");
  await assert.rejects(unknown.runId, LoomError);
  await assert.rejects(
    loom.actor("batch").execute({ count: "many" }),
    (e) => e instanceof LoomError && e.status === 422 && e.code === "bad_input",
  );
  const failing = await collect(loom.actor("batch").stream({ count: "many" }));
  assert.equal(failing.at(-1).type, "error");
  assert.equal(failing.at(-1).error.code, "bad_input");
});

test("with LOOM_API_KEY set, the key is sent; a wrong one is a 401 LoomError", async () => {
  const locked = await startLoom({ LOOM_API_KEY: "s3cret" });
  try {
    const wrong = new Loom({ baseUrl: locked.base, apiKey: "nope" });
    await assert.rejects(wrong.actors(), (e) => e.status === 401 && e.code === "unauthorized");
    const right = new Loom({ baseUrl: locked.base, apiKey: "s3cret" });
    const chunks = await collect(right.actor("echo").stream({ ok: true }));
    assert.deepEqual(chunks.at(-1).data, { ok: true });
  } finally {
    await locked.stop();
  }
});

test("npm install of this folder in an empty one, then the seed's loop, in plain Node", async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { execFile } = await import("node:child_process");
  const { promisify } = await import("node:util");
  // Not the *Sync forms: the fake upstream runs in this process and must keep answering.
  const run = promisify(execFile);
  const { tmpdir } = await import("node:os");
  const path = await import("node:path");
  const dir = mkdtempSync(path.join(tmpdir(), "loom-client-user-"));
  try {
    const here = path.resolve(import.meta.dirname, "..");
    await run("npm", ["install", "--no-audit", "--no-fund", "--silent", here], { cwd: dir });
    writeFileSync(
      path.join(dir, "main.mjs"),
      [
        'import { Loom } from "loom-client";',
        "const loom = new Loom({ baseUrl: process.argv[2] });",
        'for await (const chunk of loom.actor("chat-agent").stream({ prompt: "hi" })) {',
        '  if (chunk.type === "error") { console.error(chunk.error.message); break; }',
        "  console.log(chunk.type, JSON.stringify(chunk.data ?? chunk.progress ?? null));",
        "}",
      ].join("\n"),
    );
    const { stdout: out } = await run("node", ["main.mjs", server.base], { cwd: dir, timeout: 30_000 });
    const lines = out.trim().split("\n");
    assert.equal(lines[0].split(" ")[0], "start");
    assert.equal(lines[1], 'data {"token":"Hello"}');
    assert.match(lines.at(-1), /^complete /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
