// loom-client: Loom runs from Node 20+ and browsers, with `fetch` alone.
//
//   const loom = new Loom({ baseUrl: "http://127.0.0.1:8080" });
//   for await (const chunk of loom.actor("chat-agent").stream({ prompt: "hi" })) { … }
//
// A stream is a live run: breaking out of the loop, aborting its signal or `cancel()` sends
// `DELETE /v1/runs/{id}` (an abort before the server has answered waits, a bounded time, for
// the answer that names the run); a dropped connection is re-attached at `/v1/runs/{id}/stream`
// with `Last-Event-ID`, so the loop sees every chunk once. A loop that fails on its own (it
// cannot re-attach, a frame is not JSON) sends no DELETE: the server cancels a run whose client
// is gone after its disconnect grace. Wire names stay snake_case as on the wire (DESIGN.md §3).
// Types: index.d.ts.

/**
 * An HTTP error from Loom: `status`, and `code` and `message` from its JSON body; `retryAfter`
 * (seconds) when the response had a `Retry-After`.
 */
export class LoomError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "LoomError";
    this.status = status;
    this.code = code;
  }
}

/**
 * How many re-attaches in a row may fail (no chunk between them) before the loop throws: with
 * waits of 0.1, 0.2, 0.4, 0.8, 1.6 s, then 2 s, about 9 s in all — a server restarting, within
 * a server's default disconnect grace (10 s), after which a direct run is cancelled anyway.
 */
const MAX_REATTACH = 8;
/** The longest wait between two failed re-attaches (unless `Retry-After` asks for longer). */
const MAX_BACKOFF_MS = 2_000;
/** The longest wait before a re-attach, whatever `Retry-After` asks. */
const MAX_WAIT_MS = 5_000;
/**
 * How long leaving a loop (`break`) waits for its DELETE before it returns anyway (the DELETE
 * goes on; `await stream.cancel()` waits for it), and how long an abort waits for the answer
 * that names a run it started, so that it can cancel it.
 */
const CANCEL_WAIT_MS = 2_000;

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

  /** A workflow by name, to `stream` or `execute`. */
  workflow(name) {
    // Its stream has a route of its own; `execute` goes where an actor type goes, as
    // `workflows/<name>` (DESIGN.md §3a).
    return new Target(this, `/v1/workflows/${encodeURIComponent(name)}`, this.actor(`workflows/${name}`).path);
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
  let body;
  try {
    body = JSON.parse(text)?.error;
  } catch {
    // Not JSON: a proxy's page, say.
  }
  // Loom's shape is `{"error":{"code","message"}}`; anything else (a proxy's `{"error":"…"}`)
  // is `http_error` with the body as its message.
  const error =
    typeof body?.code === "string"
      ? new LoomError(response.status, body.code, String(body.message ?? ""))
      : new LoomError(response.status, "http_error", text || response.statusText);
  const after = response.headers.get("retry-after")?.trim();
  if (after && /^\d+$/.test(after)) error.retryAfter = Number(after);
  return error;
}

class Target {
  constructor(loom, path, runPath = path) {
    this.loom = loom;
    this.path = path;
    this.runPath = runPath;
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

  /**
   * Runs the actor to its end: its result, or a LoomError with the run's error (409
   * `cancelled`, 504 `timeout`, 422 `bad_input`, …). Aborting `signal` abandons the request;
   * the server then cancels the run after its disconnect grace.
   */
  async execute(input = {}, { signal, timeout } = {}) {
    const body = { input };
    if (timeout !== undefined) body.timeout = timeout;
    const response = await this.loom.request("POST", `${this.runPath}/run`, { body, signal });
    return response.json();
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
    this.iterated = false;
    this.opened = false;
    this.cancelling = undefined;
    this.abort = new AbortController();
    this.id = runId;
    let resolve, reject;
    this.runId = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.runId.catch(() => {});
    let named = false;
    /** Settles `runId` once: with `id`, or with the error `failed`. */
    this.name = (id, failed) => {
      if (named) return;
      named = true;
      if (failed) return reject(failed);
      this.id = id;
      resolve(id);
    };
    // The first response is requested at once (unless `signal` has aborted already), so
    // `runId` resolves without iterating. Its request has a signal of its own: see below.
    const opening = new AbortController();
    const first = signal?.aborted
      ? Promise.reject(signal.reason)
      : open
        ? open(opening.signal)
        : this.attach(opening.signal);
    this.first = first.then(
      (response) => {
        this.opened = true;
        // A cross-origin response shows the header only if the server exposes it; else the
        // run's `start` chunk names the run (see the loop).
        const id = runId ?? response.headers.get("loom-run-id");
        if (id) this.name(id);
        else if (this.abort.signal.aborted) this.name(undefined, unnamed());
        return response;
      },
      (error) => {
        this.opened = true;
        this.name(undefined, error);
        throw error;
      },
    );
    this.first.catch(() => {});
    // When the loop stops, so does the opening request; but a run this stream started can be
    // cancelled only once the server has named it, so its answer is awaited (a bounded time)
    // first.
    const stopOpening = () => {
      const reason = this.abort.signal.reason;
      if (this.opened || !this.cancelOnExit) return opening.abort(reason);
      const timer = setTimeout(() => opening.abort(reason), CANCEL_WAIT_MS);
      const done = () => {
        clearTimeout(timer);
        opening.abort(reason);
      };
      this.first.then(done, done);
    };
    this.abort.signal.addEventListener("abort", stopOpening, { once: true });
    this.unlisten = () => {};
    if (signal) {
      // A run this stream started is cancelled; a run it only joined is left to go on.
      const stop = () => {
        this.abort.abort(signal.reason);
        if (this.cancelOnExit) this.cancel().catch(() => {});
      };
      if (signal.aborted) stop();
      else {
        signal.addEventListener("abort", stop, { once: true });
        this.unlisten = () => signal.removeEventListener("abort", stop);
      }
    }
  }

  /**
   * Asks the run to stop (one DELETE, sent again only if it failed); the loop then ends with
   * `error/cancelled`.
   */
  async cancel() {
    this.cancelling ??= this.sendCancel().catch((error) => {
      this.cancelling = undefined;
      throw error;
    });
    return this.cancelling;
  }

  async sendCancel() {
    const id = this.id ?? (await this.runId);
    if (this.ended) return;
    await this.loom.runs.cancel(id);
  }

  attach(signal = this.abort.signal) {
    if (this.id == null) return Promise.reject(unnamed());
    const headers = this.cursor === undefined ? {} : { "last-event-id": String(this.cursor) };
    return this.loom.request("GET", `/v1/runs/${encodeURIComponent(this.id)}/stream`, {
      headers,
      signal,
    });
  }

  [Symbol.asyncIterator]() {
    // One loop per stream: a second would share (and end) the first one's connection.
    if (this.iterated) throw new TypeError("a RunStream can be iterated only once");
    this.iterated = true;
    return this.chunks();
  }

  async *chunks() {
    const aborted = this.abort.signal;
    // The caller stops the loop (break, return, its signal) while it is suspended at a yield or
    // by aborting; anything else that ends it early is the loop's own failure.
    let suspended = false;
    let failed = false;
    try {
      let response = await orAbort(this.first, aborted);
      let failures = 0;
      let retryAfter = 0;
      let lastError;
      for (;;) {
        if (response?.status === 204) {
          this.ended = true;
          return;
        }
        if (response) {
          const reader = response.body.getReader();
          try {
            const parse = frames(reader);
            for (;;) {
              if (aborted.aborted) throw aborted.reason;
              let next;
              try {
                next = await parse.next();
              } catch (error) {
                if (aborted.aborted) throw aborted.reason;
                // fetch reports a lost connection as a TypeError; anything else is not a drop.
                if (!(error instanceof TypeError)) throw error;
                lastError = error;
                break;
              }
              if (next.done) break;
              const { id, data } = next.value;
              const chunk = data ? JSON.parse(data) : undefined;
              // Only a frame's `id:` moves the cursor: a frame without one is not in the log.
              if (id) this.cursor = id;
              if (chunk === undefined) continue;
              failures = 0;
              if (chunk.type === "start" && this.id == null) {
                const named = chunk.data?.run_id;
                if (typeof named === "string" && named) this.name(named);
                else this.name(undefined, unnamed());
              }
              if (chunk.type === "complete" || chunk.type === "error") this.ended = true;
              suspended = true;
              yield chunk;
              suspended = false;
              if (this.ended) return;
            }
          } finally {
            reader.cancel().catch(() => {});
          }
        }
        // The connection dropped before the terminal chunk, or re-attaching failed: re-attach
        // after the cursor.
        if (++failures > MAX_REATTACH) {
          const message = "the stream dropped and could not be re-attached";
          const error = new LoomError(0, "unavailable", message);
          if (lastError) error.cause = lastError;
          throw error;
        }
        const backoff = Math.max(Math.min(100 * 2 ** (failures - 1), MAX_BACKOFF_MS), retryAfter * 1000);
        await sleep(Math.min(backoff, MAX_WAIT_MS), aborted);
        if (aborted.aborted) throw aborted.reason;
        retryAfter = 0;
        try {
          response = await this.attach();
        } catch (error) {
          if (aborted.aborted) throw aborted.reason;
          if (!retryable(error)) throw error;
          lastError = error;
          retryAfter = error.retryAfter ?? 0;
          response = undefined;
        }
      }
    } catch (error) {
      failed = !suspended && !aborted.aborted;
      throw error;
    } finally {
      this.unlisten();
      // Aborted already: by the caller's signal, which has sent the DELETE itself.
      const stopped = aborted.aborted;
      this.abort.abort();
      if (this.opened) this.name(undefined, unnamed());
      // A loop that failed on its own leaves the run to the server's disconnect grace. One the
      // caller left (`break`) waits for the DELETE, but not for a server that does not answer.
      if (!failed && !this.ended && this.cancelOnExit) {
        const cancelling = this.cancel().catch(() => {});
        if (!stopped) await within(cancelling, CANCEL_WAIT_MS);
      }
    }
  }
}

/** The error of a stream whose run id is unknown (see the `first` response). */
function unnamed() {
  return new LoomError(
    0,
    "no_run_id",
    "the server's answer did not name the run (no Loom-Run-Id header, which a cross-origin " +
      "response shows only when exposed, and no start chunk): it cannot be re-attached or cancelled",
  );
}

/** `promise`, or the rejection with `signal`'s reason as soon as it aborts. */
function orAbort(promise, signal) {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const stop = () => reject(signal.reason);
    signal.addEventListener("abort", stop, { once: true });
    promise
      .finally(() => signal.removeEventListener("abort", stop))
      .then(resolve, reject);
  });
}

/** `promise`, or undefined after `ms`, whichever comes first (the timer does not outlive it). */
function within(promise, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** A network error, a 5xx or a 429: worth another try. */
function retryable(error) {
  if (error instanceof TypeError) return true;
  return error instanceof LoomError && (error.status >= 500 || error.status === 429);
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * The frames of an SSE body read from `reader`: `{ id, event, data }`, each field undefined when
 * the frame has none; multi-line `data:` joined with "\n". LF, CRLF and CR end lines; comments
 * are skipped; a frame the body ends before its blank line is dropped.
 */
async function* frames(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  let frame = {};
  // A CR that ended the last read ended its line; an LF that opens this read is its other half.
  let afterCR = false;
  for (;;) {
    const { done, value: bytes } = await reader.read();
    if (done) return;
    let text = decoder.decode(bytes, { stream: true });
    // An empty read (or half a character) changes nothing, not even a pending CR.
    if (!text) continue;
    if (afterCR) {
      if (text.startsWith("\n")) text = text.slice(1);
      afterCR = false;
    }
    buffer += text;
    const eol = /\r\n|\r|\n/g;
    let start = 0;
    for (let match; (match = eol.exec(buffer)); ) {
      const line = buffer.slice(start, match.index);
      start = eol.lastIndex;
      if (line === "") {
        if (Object.keys(frame).length > 0) yield frame;
        frame = {};
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let content = colon < 0 ? "" : line.slice(colon + 1);
      if (content.startsWith(" ")) content = content.slice(1);
      if (field === "data") {
        frame.data = frame.data === undefined ? content : `${frame.data}\n${content}`;
      } else if (field === "id" && !content.includes("\0")) {
        frame.id = content;
      } else if (field === "event") {
        frame.event = content;
      }
    }
    afterCR = start === buffer.length && buffer.endsWith("\r");
    buffer = buffer.slice(start);
  }
}
