// loom-client: Loom runs from Node 20+ and browsers, with `fetch` alone.
//
//   const loom = new Loom({ baseUrl: "http://127.0.0.1:8080" });
//   for await (const chunk of loom.actor("chat-agent").stream({ prompt: "hi" })) { … }
//
// A stream is a live run: breaking out of the loop, aborting its signal or `cancel()` sends
// `DELETE /v1/runs/{id}`; a dropped connection is re-attached at `/v1/runs/{id}/stream` with
// `Last-Event-ID`, so the loop sees every chunk once. Wire names stay snake_case as on the
// wire (DESIGN.md §3). Types: index.d.ts.

/** An HTTP error from Loom: `status`, and `code` and `message` from its JSON body. */
export class LoomError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "LoomError";
    this.status = status;
    this.code = code;
  }
}

/** How many times a dropped stream is re-attached before the loop throws. */
const MAX_REATTACH = 5;

export class Loom {
  /** @param {{ baseUrl: string, apiKey?: string, fetch?: typeof fetch }} options */
  constructor({ baseUrl, apiKey, fetch: fetchImpl } = {}) {
    if (!baseUrl) throw new TypeError("new Loom({ baseUrl }) needs the server's base URL");
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.fetch = fetchImpl ?? globalThis.fetch.bind(globalThis);
    this.runs = new Runs(this);
  }

  /** An actor by type, to `stream` or `execute`. */
  actor(type) {
    return new Target(this, `/v1/actors/${encodeURIComponent(type)}`);
  }

  /** A workflow by name, to `stream`. */
  workflow(name) {
    return new Target(this, `/v1/workflows/${encodeURIComponent(name)}`);
  }

  /** The registered actors: `[{ name, description, streams }]`. */
  async actors() {
    return (await this.json("GET", "/v1/actors")).actors;
  }

  /** The loaded workflows: `[{ name, description, steps }]`. */
  async workflows() {
    return (await this.json("GET", "/v1/workflows")).workflows;
  }

  /** @internal A request with the key; LoomError unless the status is 2xx. */
  async request(method, path, { body, headers = {}, signal } = {}) {
    const all = { ...headers };
    if (this.apiKey) all.authorization = `Bearer ${this.apiKey}`;
    if (body !== undefined) all["content-type"] = "application/json";
    const response = await this.fetch(this.baseUrl + path, {
      method,
      headers: all,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** @internal The JSON body of a request. */
  async json(method, path, body) {
    const response = await this.request(method, path, { body });
    return response.status === 204 ? null : response.json();
  }
}

async function errorOf(response) {
  const text = await response.text().catch(() => "");
  try {
    const { error } = JSON.parse(text);
    return new LoomError(response.status, error.code, error.message);
  } catch {
    return new LoomError(response.status, "http_error", text || response.statusText);
  }
}

class Target {
  constructor(loom, path) {
    this.loom = loom;
    this.path = path;
  }

  /** A new run of this actor or workflow, streamed; returns at once. */
  stream(input = {}, { signal, timeout } = {}) {
    const body = { input };
    if (timeout !== undefined) body.timeout = timeout;
    return new RunStream(this.loom, {
      open: (s) => this.loom.request("POST", `${this.path}/stream`, { body, signal: s }),
      signal,
    });
  }

  /** Runs the actor to its end: its result, or a LoomError with the run's error. */
  async execute(input = {}) {
    return this.loom.json("POST", `${this.path}/run`, { input });
  }
}

class Runs {
  constructor(loom) {
    this.loom = loom;
  }

  /** A detached run: `{ actor | workflow, input, timeout? }` → `{ run_id, stream_url }`. */
  async create(request) {
    return this.loom.json("POST", "/v1/runs", request);
  }

  /** A run's status. */
  async get(id) {
    return this.loom.json("GET", `/v1/runs/${encodeURIComponent(id)}`);
  }

  /** The recent runs, newest first. */
  async list() {
    return (await this.loom.json("GET", "/v1/runs")).runs;
  }

  /** Cancels a run (idempotent); its status. */
  async cancel(id) {
    return this.loom.json("DELETE", `/v1/runs/${encodeURIComponent(id)}`);
  }

  /**
   * Joins a run: its chunks after `from` (exclusive, as on the wire), or from its start.
   * Leaving the loop early does not cancel a run you only joined.
   */
  stream(id, { from, signal } = {}) {
    return new RunStream(this.loom, {
      runId: id,
      cursor: from,
      signal,
      cancelOnExit: false,
    });
  }
}

/**
 * A live run: an async iterable of its chunks with `runId` (a promise) and `cancel()`.
 */
class RunStream {
  constructor(loom, { open, runId, cursor, signal, cancelOnExit = true }) {
    this.loom = loom;
    this.cursor = cursor;
    this.signal = signal;
    this.cancelOnExit = cancelOnExit;
    this.ended = false;
    this.abort = new AbortController();
    this.id = runId;
    let resolve, reject;
    this.runId = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.runId.catch(() => {});
    // The first response is requested at once, so `runId` resolves without iterating.
    this.first = (open ? open(this.abort.signal) : this.attach()).then(
      (response) => {
        this.id ??= response.headers.get("loom-run-id");
        resolve(this.id);
        return response;
      },
      (error) => {
        reject(error);
        throw error;
      },
    );
    this.first.catch(() => {});
    if (signal) {
      const stop = () => {
        this.abort.abort(signal.reason);
        this.cancel().catch(() => {});
      };
      if (signal.aborted) stop();
      else signal.addEventListener("abort", stop, { once: true });
    }
  }

  /** Asks the run to stop (DELETE; idempotent); the loop then ends with `error/cancelled`. */
  async cancel() {
    const id = this.id ?? (await this.runId);
    if (this.ended) return;
    await this.loom.runs.cancel(id);
  }

  attach() {
    const headers = this.cursor === undefined ? {} : { "last-event-id": String(this.cursor) };
    return this.loom.request("GET", `/v1/runs/${encodeURIComponent(this.id)}/stream`, {
      headers,
      signal: this.abort.signal,
    });
  }

  async *[Symbol.asyncIterator]() {
    let response = await this.first;
    let failures = 0;
    try {
      for (;;) {
        if (response.status === 204) {
          this.ended = true;
          return;
        }
        try {
          for await (const chunk of frames(response.body)) {
            this.cursor = chunk.seq;
            failures = 0;
            if (chunk.type === "complete" || chunk.type === "error") this.ended = true;
            yield chunk;
            if (this.ended) return;
          }
        } catch (error) {
          if (this.signal?.aborted || this.abort.signal.aborted) throw error;
        }
        // The connection dropped before the terminal chunk: re-attach after the last seq.
        if (++failures > MAX_REATTACH) {
          throw new LoomError(0, "unavailable", "the stream dropped and could not be re-attached");
        }
        await new Promise((r) => setTimeout(r, 100 * 2 ** (failures - 1)));
        response = await this.attach();
      }
    } finally {
      this.abort.abort();
      if (!this.ended && this.cancelOnExit) await this.cancel().catch(() => {});
    }
  }
}

/** The chunks of an SSE body (`id`, `event`, `data` frames; comments skipped). */
async function* frames(body) {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const bytes of body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(line.startsWith("data: ") ? 6 : 5))
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}
