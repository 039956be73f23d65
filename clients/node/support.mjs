// A real `loom serve` for the client tests, with a fake OpenAI-compatible upstream for
// chat-agent, stopped after the tests. Every wait is bounded.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const LOOM = process.env.LOOM_BIN ?? path.join(ROOT, "target/debug/loom");
const LIMIT_MS = 30_000;

/**
 * What the fake upstream streams for `request`: two tokens, the finish, the usage, [DONE];
 * asked about the weather with no tool result yet, a call of `get_weather` instead.
 */
function upstreamEvents(request) {
  const base = { id: "chatcmpl-up", object: "chat.completion.chunk", created: 1, model: "fake" };
  const chunk = (delta, finish = null) => ({ ...base, choices: [{ index: 0, delta, finish_reason: finish }] });
  const messages = request?.messages ?? [];
  const asked = String(messages.at(-1)?.content ?? "").includes("weather");
  const events = asked && !messages.some((m) => m.role === "tool")
    ? [
        chunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "get_weather", arguments: "" } }] }),
        chunk({ tool_calls: [{ index: 0, function: { arguments: '{"city":"Paris"}' } }] }),
        chunk({}, "tool_calls"),
      ]
    : [chunk({ content: "Hello" }), chunk({ content: " world" }), chunk({}, "stop")];
  events.push({ ...base, choices: [], usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
  return events.map((e) => JSON.stringify(e)).concat(["[DONE]"]);
}

/** Starts the upstream and `loom serve`; resolves to `{ base, stop }`. */
export async function startLoom(env = {}) {
  const upstream = createServer((req, res) => {
    let body = "";
    req.on("data", (data) => (body += data));
    req.on("end", () => {
      let request;
      try {
        request = JSON.parse(body);
      } catch {
        request = undefined;
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      for (const event of upstreamEvents(request)) res.write(`data: ${event}\n\n`);
      res.end();
    });
  });
  await new Promise((resolve) => upstream.listen(0, "127.0.0.1", resolve));
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("OPENAI_") && !k.startsWith("LOOM_")),
  );
  const child = spawn(
    LOOM,
    ["serve", "--addr", "127.0.0.1:0", "--workflows", path.join(ROOT, "examples/workflows")],
    {
      env: { ...clean, OPENAI_BASE_URL: `http://127.0.0.1:${upstream.address().port}/v1`, ...env },
      stdio: ["ignore", "ignore", "pipe"],
    },
  );
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("loom serve did not start")), LIMIT_MS);
    let buffered = "";
    child.stderr.on("data", (data) => {
      buffered += data;
      // Only a whole address: stderr may arrive cut anywhere.
      const match = buffered.match(/loom: serving on (http:\/\/\S+)\s/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on("exit", (code) => reject(new Error(`loom serve exited with ${code}`)));
  });
  const stop = async () => {
    const exited = new Promise((resolve) => child.on("exit", resolve));
    child.kill("SIGTERM");
    await exited;
    upstream.close();
  };
  return { base, stop };
}

/** Reads SSE frames (`id`, `data` as JSON) from a fetch response until `until` holds or the end. */
export async function readFrames(response, until = () => false) {
  const frames = [];
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const bytes of response.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const text = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const frame = {};
      for (const line of text.split("\n")) {
        if (line.startsWith("id: ")) frame.id = Number(line.slice(4));
        else if (line.startsWith("data: ")) frame.data = line.slice(6);
      }
      if (frame.data === undefined) continue;
      try {
        frame.data = JSON.parse(frame.data);
      } catch {
        // `[DONE]` and other plain text stay text.
      }
      frames.push(frame);
      if (until(frame)) return frames;
    }
  }
  return frames;
}
