// loom-client against a real `loom serve` (started by the test, with a fake OpenAI-compatible
// upstream for chat-agent): the seed's four use cases, cancel, resume, joining, errors.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
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
  }, (e) => e === abort.signal.reason && e.name === "AbortError");
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

/**
 * An HTTP proxy to the server that records each request and lets `route(req, res, forward)`
 * answer it: `forward()` sends it on and resolves to the server's response.
 */
async function proxy(route) {
  const target = new URL(server.base);
  const seen = [];
  const sockets = new Set();
  const box = http.createServer((req, res) => {
    const cursor = req.headers["last-event-id"];
    seen.push({ method: req.method, url: req.url, cursor, at: Date.now() });
    const forward = () =>
      new Promise((resolve, reject) => {
        const out = http.request(
          { host: target.hostname, port: target.port, method: req.method, path: req.url,
            headers: req.headers },
          resolve,
        );
        out.on("error", reject);
        req.pipe(out);
      });
    Promise.resolve(route(req, res, forward)).catch(() => res.destroy());
  });
  box.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise((resolve) => box.listen(0, "127.0.0.1", resolve));
  return {
    loom: new Loom({ baseUrl: `http://127.0.0.1:${box.address().port}` }),
    seen,
    count: (method, pattern) => seen.filter((r) => r.method === method && pattern.test(r.url)).length,
    close() {
      for (const socket of sockets) socket.destroy();
      box.close();
    },
  };
}

/** Passes the server's response on as it is. */
function pass(res, upstream) {
  res.writeHead(upstream.statusCode, upstream.headers);
  upstream.pipe(res);
}

/**
 * Sends the frames of an SSE response through `each(frame, index)` (the frame's LF text,
 * without its blank line) until it returns false.
 */
async function eachFrame(upstream, each) {
  upstream.setEncoding("utf8");
  let buffer = "";
  let index = 0;
  for await (const text of upstream) {
    buffer += text;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if ((await each(frame, index++)) === false) return;
    }
  }
}

/** Writes `text` to `res` and resolves once it has left. */
function write(res, text) {
  return new Promise((resolve) => res.write(text, resolve));
}

/** A JSON error answer, as the server gives it. */
function refuse(res, status, code, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify({ error: { code, message: `refused by the test (${status})` } }));
}

const DIRECT = /^\/v1\/actors\/[^/]+\/stream$/;
const REATTACH = /^\/v1\/runs\/[^/]+\/stream$/;
const RUN = /^\/v1\/runs\/[^/]+$/;

/**
 * A proxy that forwards everything but cuts each direct stream after `frames` frames; `reattach`
 * answers the re-attaches (by their number from 0), or null to forward them.
 */
function cutting(frames, reattach = () => null) {
  let reattaches = 0;
  return proxy(async (req, res, forward) => {
    if (req.method === "GET" && REATTACH.test(req.url)) {
      const answer = reattach(reattaches++);
      if (answer) return refuse(res, ...answer);
    }
    const upstream = await forward();
    if (!(req.method === "POST" && DIRECT.test(req.url))) return pass(res, upstream);
    res.writeHead(upstream.statusCode, upstream.headers);
    await eachFrame(upstream, async (frame, i) => {
      await write(res, `${frame}\n\n`);
      return i + 1 < frames;
    });
    res.destroy();
    upstream.destroy();
  });
}

test("a re-attach answered 503, then 429 with Retry-After, is tried again: every chunk once, run not cancelled", async () => {
  const through = await cutting(6, (n) =>
    n === 0 ? [503, "unavailable"] : n === 1 ? [429, "too_many_streams", { "retry-after": "1" }] : null,
  );
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    const chunks = await collect(stream);
    assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i), "nothing lost or twice");
    assert.equal(chunks.at(-1).type, "complete");
    const gets = through.seen.filter((r) => r.method === "GET" && REATTACH.test(r.url));
    assert.equal(gets.length, 3);
    assert.deepEqual(gets.map((r) => r.cursor), ["5", "5", "5"]);
    assert.ok(gets[2].at - gets[1].at >= 900, "Retry-After: 1 is honoured");
    assert.equal(through.count("DELETE", RUN), 0);
    assert.equal((await loom.runs.get(await stream.runId)).status, "complete");
  } finally {
    through.close();
  }
});

test("a re-attach answered 404 throws at once, and a loop that fails on its own sends no DELETE", async () => {
  const through = await cutting(3, () => [404, "not_found"]);
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    await assert.rejects(collect(stream), (e) => e instanceof LoomError && e.status === 404);
    assert.equal(through.count("GET", REATTACH), 1, "no second try");
    assert.equal(through.count("DELETE", RUN), 0);
  } finally {
    through.close();
  }
});

test("re-attaches that keep failing end the loop once the budget is spent, with no DELETE", async () => {
  const through = await cutting(3, () => [503, "unavailable"]);
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    await assert.rejects(
      collect(stream),
      (e) => e instanceof LoomError && e.code === "unavailable" && e.cause?.status === 503,
    );
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2 + 2 + 2 s of waits: about 9 s, a restarting server's time.
    assert.equal(through.count("GET", REATTACH), 8);
    assert.equal(through.count("DELETE", RUN), 0);
  } finally {
    through.close();
  }
});

test("aborting during the wait before a re-attach ends the loop at once, with one DELETE", async () => {
  const abort = new AbortController();
  const through = await cutting(3, () => {
    setTimeout(() => abort.abort(), 50);
    return [503, "unavailable", { "retry-after": "5" }];
  });
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" }, { signal: abort.signal });
    await assert.rejects(collect(stream), (e) => e.name === "AbortError");
    const waited = Date.now() - through.seen.find((r) => r.method === "GET").at;
    assert.ok(waited < 2_000, `the wait ended with the abort (after ${waited} ms)`);
    await stream.cancel();
    assert.equal(through.count("GET", REATTACH), 1);
    assert.equal(through.count("DELETE", RUN), 1, "abort, the loop's end and cancel() send one DELETE");
    const id = await stream.runId;
    await until(async () => (await loom.runs.get(id)).status === "cancelled");
  } finally {
    through.close();
  }
});

test("a frame that is not JSON ends the loop with its SyntaxError, with no re-attach and no DELETE", async () => {
  const through = await proxy(async (req, res, forward) => {
    const upstream = await forward();
    if (!(req.method === "POST" && DIRECT.test(req.url))) return pass(res, upstream);
    res.writeHead(upstream.statusCode, upstream.headers);
    await eachFrame(upstream, async (frame, i) => {
      await write(res, i === 2 ? "id: 2\nevent: data\ndata: {not json\n\n" : `${frame}\n\n`);
    });
    res.end();
  });
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    const chunks = [];
    await assert.rejects(async () => {
      for await (const chunk of stream) chunks.push(chunk);
    }, SyntaxError);
    assert.deepEqual(chunks.map((c) => c.seq), [0, 1]);
    assert.equal(through.count("GET", REATTACH), 0);
    assert.equal(through.count("DELETE", RUN), 0);
  } finally {
    through.close();
  }
});

test("SSE lines end in CRLF, CR or LF (a CRLF split over two reads), comments, multi-line data, a frame without id", async () => {
  const pause = () => new Promise((r) => setTimeout(r, 2));
  const stray = { type: "data", seq: 999, data: { token: "(not in the log)" } };
  const through = await proxy(async (req, res, forward) => {
    const upstream = await forward();
    if (!(req.method === "POST" && DIRECT.test(req.url))) return pass(res, upstream);
    res.writeHead(upstream.statusCode, upstream.headers);
    await eachFrame(upstream, async (frame, i) => {
      // Data split over two lines (at the JSON's first comma), `id:3` without its space.
      const lines = frame.split("\n").flatMap((line) => {
        if (line.startsWith("id: ") && i % 2) return [`id:${line.slice(4)}`];
        if (!line.startsWith("data: ")) return [line];
        const comma = line.indexOf(",");
        return [line.slice(0, comma + 1), `data:${line.slice(comma + 1)}`];
      });
      const eol = ["\r\n", "\r", "\n"][i % 3];
      for (const line of [": a comment", ...lines, ""]) {
        await write(res, line + eol.slice(0, 1));
        await pause();
        if (eol === "\r\n") {
          // The LF of a CRLF in a read of its own: the CR alone must wait for it.
          await write(res, "\n");
          await pause();
        }
      }
      if (i === 4) {
        await write(res, `event: data\r\ndata: ${JSON.stringify(stray)}\r\n\r\n`);
        return false;
      }
    });
    // Cut after the frame without id: the re-attach must resume after seq 4, not 999.
    res.destroy();
    upstream.destroy();
  });
  try {
    const chunks = await collect(through.loom.actor("team-demo").stream({ prompt: "Loom" }));
    assert.deepEqual(chunks[5], stray);
    const logged = chunks.filter((c) => c.seq !== 999);
    assert.deepEqual(logged.map((c) => c.seq), logged.map((_, i) => i), "nothing lost or twice");
    assert.equal(logged.at(-1).type, "complete");
    assert.deepEqual(through.seen.filter((r) => r.method === "GET").map((r) => r.cursor), ["4"]);
  } finally {
    through.close();
  }
});

test("aborting runs.stream(id, { signal }) ends the loop but leaves the run to complete", async () => {
  const { run_id } = await loom.runs.create({
    actor: "batch",
    input: { count: 1000, batch_size: 100, delay_ms: 30 },
  });
  const abort = new AbortController();
  const stream = loom.runs.stream(run_id, { signal: abort.signal });
  await assert.rejects(async () => {
    for await (const chunk of stream) {
      if (chunk.type === "progress") abort.abort();
    }
  }, (e) => e === abort.signal.reason && e.name === "AbortError");
  await until(async () => (await loom.runs.get(run_id)).status === "complete");
});

test("the loop's end removes its listener from the signal", async () => {
  const abort = new AbortController();
  const listening = new Set();
  const { signal } = abort;
  signal.addEventListener = (type, listener, options) => {
    listening.add(listener);
    EventTarget.prototype.addEventListener.call(signal, type, listener, options);
  };
  signal.removeEventListener = (type, listener, options) => {
    listening.delete(listener);
    EventTarget.prototype.removeEventListener.call(signal, type, listener, options);
  };
  const chunks = await collect(loom.actor("echo").stream({ a: 1 }, { signal }));
  assert.equal(chunks.at(-1).type, "complete");
  assert.equal(listening.size, 0);
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

  // A workflow runs to its result too.
  const report = await loom.workflow("batch-report").execute({ count: 3 });
  assert.ok(report && typeof report === "object", JSON.stringify(report));
  // A body that is not Loom's (a proxy's `{"error":"…"}`) is `http_error`, never a missing code.
  const proxied = new Loom({
    baseUrl: "http://proxy.invalid",
    fetch: async () => new Response(JSON.stringify({ error: "boom" }), { status: 500 }),
  });
  await assert.rejects(
    proxied.actors(),
    (e) => e instanceof LoomError && e.status === 500 && e.code === "http_error" && e.message.includes("boom"),
  );
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("breaking out of the loop returns though its DELETE goes unanswered, and the DELETE is sent", async () => {
  // A server that takes the DELETE and never answers it (overloaded, or the network went away).
  const through = await proxy(async (req, res, forward) => {
    if (req.method === "DELETE") return;
    pass(res, await forward());
  });
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    const left = (async () => {
      for await (const chunk of stream) {
        if (chunk.seq === 2) break;
      }
      return "left";
    })();
    const started = Date.now();
    const outcome = await Promise.race([left, sleep(8_000).then(() => "still in the loop")]);
    assert.equal(outcome, "left");
    assert.ok(Date.now() - started < 6_000);
    assert.equal(through.count("DELETE", RUN), 1);
  } finally {
    through.close();
  }
});

test("aborting before the server has answered still cancels the run it started, at once", async () => {
  // The response that names the run is late (a busy server, a slow queue in distributed mode).
  const through = await proxy(async (req, res, forward) => {
    const upstream = await forward();
    if (req.method === "POST" && DIRECT.test(req.url)) await sleep(1_500);
    pass(res, upstream);
  });
  try {
    const abort = new AbortController();
    const stream = through.loom
      .actor("batch")
      .stream({ count: 1000, batch_size: 1, delay_ms: 50 }, { signal: abort.signal });
    setTimeout(() => abort.abort(), 100);
    const started = Date.now();
    await assert.rejects(collect(stream), (e) => e === abort.signal.reason);
    assert.ok(Date.now() - started < 1_000, "the loop ends with the abort, not with the answer");
    // Not after the server's disconnect grace (10 s): the DELETE goes once the run is named.
    await until(() => through.count("DELETE", RUN) === 1);
    const id = await stream.runId;
    const run = await until(async () => {
      const info = await loom.runs.get(id);
      return info.status !== "running" && info;
    });
    assert.equal(run.status, "cancelled");
  } finally {
    through.close();
  }
});

test("an aborted signal sends no request at all", async () => {
  const through = await proxy(async (req, res, forward) => pass(res, await forward()));
  try {
    const stream = through.loom.actor("echo").stream({}, { signal: AbortSignal.abort() });
    await assert.rejects(collect(stream), (e) => e.name === "AbortError");
    await sleep(200);
    assert.deepEqual(through.seen, []);
  } finally {
    through.close();
  }
});

test("without a Loom-Run-Id header (a cross-origin answer that does not expose it), the start chunk names the run", async () => {
  // Like `cutting(4)`, but the direct stream's answer loses its loom-run-id header.
  const through = await proxy(async (req, res, forward) => {
    const upstream = await forward();
    if (!(req.method === "POST" && DIRECT.test(req.url))) return pass(res, upstream);
    const { "loom-run-id": _, ...headers } = upstream.headers;
    res.writeHead(upstream.statusCode, headers);
    await eachFrame(upstream, async (frame, i) => {
      await write(res, `${frame}\n\n`);
      return i + 1 < 4;
    });
    res.destroy();
    upstream.destroy();
  });
  try {
    const stream = through.loom.actor("team-demo").stream({ prompt: "Loom" });
    const chunks = await collect(stream);
    const id = chunks[0].data.run_id;
    assert.equal(await stream.runId, id);
    assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i), "nothing lost or twice");
    assert.equal(chunks.at(-1).type, "complete");
    const gets = through.seen.filter((r) => r.method === "GET");
    assert.deepEqual(gets.map((r) => [r.url, r.cursor]), [[`/v1/runs/${id}/stream`, "3"]]);
  } finally {
    through.close();
  }
});

test("an empty read between a CR and its LF does not split the line's frame", async () => {
  // A fetch (a polyfill, a service worker) whose body reads come as "…\r", "", "\n…", with
  // CRLF line ends and each chunk's data over two lines.
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  const splitting = async (url, init) => {
    const response = await fetch(url, init);
    if (!response.headers.get("content-type")?.startsWith("text/event-stream")) return response;
    const pieces = new TransformStream({
      transform(bytes, controller) {
        const text = decoder
          .decode(bytes, { stream: true })
          .replace(/^data: (\{[^,\n]*,)/gm, "data: $1\ndata:")
          .replace(/\n/g, "\r\n");
        for (const piece of text.split(/(?<=\r)/)) {
          controller.enqueue(encoder.encode(piece));
          if (piece.endsWith("\r")) controller.enqueue(new Uint8Array(0));
        }
      },
    });
    return new Response(response.body.pipeThrough(pieces), response);
  };
  const through = new Loom({ baseUrl: server.base, fetch: splitting });
  const chunks = await collect(through.actor("team-demo").stream({ prompt: "Loom" }));
  assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i));
  assert.equal(chunks.at(-1).type, "complete");
});

test("a second loop over one stream is refused, and the first goes on", async () => {
  const stream = loom.actor("team-demo").stream({ prompt: "Loom" });
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunks.length === 2) {
      await assert.rejects(async () => {
        for await (const _ of stream) assert.fail("a second loop got a chunk");
      }, TypeError);
    }
  }
  assert.deepEqual(chunks.map((c) => c.seq), chunks.map((_, i) => i));
  assert.equal(chunks.at(-1).type, "complete");
});

test("execute of a run cancelled meanwhile is a 409 cancelled LoomError", async () => {
  const since = Date.now() - 1_000;
  const running = loom.actor("batch").execute({ count: 1000, batch_size: 10, delay_ms: 50 });
  running.catch(() => {});
  const run = await until(async () => {
    const [newest] = await loom.runs.list();
    const fresh = newest?.actor === "batch" && Date.parse(newest.created_at) >= since;
    return fresh && newest.status === "running" && newest;
  });
  await loom.runs.cancel(run.run_id);
  await assert.rejects(running, (e) => e instanceof LoomError && e.status === 409 && e.code === "cancelled");
});

test("a reader the log left behind gets 410 cursor_expired as a LoomError, with no DELETE", async () => {
  const through = await proxy(async (req, res, forward) => pass(res, await forward()));
  try {
    // 200,001 chunks (about 20 MB: more than the sockets on the way hold, so the server's
    // writer cannot keep up for it), twenty times what an embedded log keeps: a reader paused
    // at seq 1 until the run has ended is left behind, disconnected, and told 410 when it
    // re-attaches.
    const stream = through.loom.actor("batch").stream({ count: 100_000, batch_size: 1, delay_ms: 0 });
    const seqs = [];
    await assert.rejects(async () => {
      for await (const chunk of stream) {
        seqs.push(chunk.seq);
        if (chunk.seq === 1) {
          const id = await stream.runId;
          await until(async () => (await loom.runs.get(id)).status !== "running");
        }
      }
    }, (e) => e instanceof LoomError && e.status === 410 && e.code === "cursor_expired");
    assert.deepEqual(seqs, seqs.map((_, i) => i), "nothing skipped before the error");
    const gets = through.seen.filter((r) => r.method === "GET" && REATTACH.test(r.url));
    // (The server's own reader of a direct stream may fall behind before it sent anything.)
    assert.deepEqual(gets.map((r) => r.cursor), [seqs.length ? String(seqs.at(-1)) : undefined]);
    assert.equal(through.count("DELETE", RUN), 0);
  } finally {
    through.close();
  }
});

test("execute takes a timeout and a signal", async () => {
  const slow = { count: 40, batch_size: 1, delay_ms: 100 };
  await assert.rejects(
    loom.actor("batch").execute(slow, { timeout: "300ms" }),
    (e) => e instanceof LoomError && e.status === 504 && e.code === "timeout",
  );
  const abort = new AbortController();
  setTimeout(() => abort.abort(), 100);
  const started = Date.now();
  await assert.rejects(loom.actor("batch").execute(slow, { signal: abort.signal }), (e) => e.name === "AbortError");
  assert.ok(Date.now() - started < 2_000);
});
