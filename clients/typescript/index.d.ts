// Types of loom-client (index.js). Wire names stay snake_case, as on the wire.

/**
 * The codes of a Loom error (DESIGN.md §3): a chunk's, a run's on `execute`, and the HTTP
 * API's; `no_run_id` and `unavailable` (status 0) are the client's own, and so is `http_error`:
 * an HTTP error whose body is not Loom's (a proxy's page), the body as its message.
 */
export type ErrorCode =
  | "bad_input" | "not_found" | "timeout" | "cancelled" | "upstream" | "worker_lost"
  | "internal" | "bad_request" | "unauthorized" | "cursor_expired" | "too_large"
  | "too_many_streams" | "too_many_runs" | "queue_full" | "forbidden" | "unavailable" | "no_run_id"
  | "http_error" | (string & {});

/** A chunk's error. */
export interface ErrorInfo {
  code: ErrorCode;
  message: string;
  retryable?: boolean;
}

/** A progress report. */
export interface Progress {
  current: number;
  total?: number;
  message?: string;
}

interface ChunkBase {
  seq: number;
  /** The team member that produced the chunk. */
  actor?: string;
  /** The workflow step the chunk belongs to. */
  step?: string;
  /** A workflow marker: action-start, action-complete, action-retry, action-failed. */
  event?: "action-start" | "action-complete" | "action-retry" | "action-failed";
  /** On a re-run's `start`: its attempt number (its output supersedes the attempt before). */
  attempt?: number;
}

export interface StartChunk extends ChunkBase {
  type: "start";
  data: { run_id: string; actor: string };
}
export interface ProgressChunk extends ChunkBase {
  type: "progress";
  progress: Progress;
}
export interface DataChunk extends ChunkBase {
  type: "data";
  /** `{ token }` for an LLM token, `{ tool_call }` for a tool-call delta, else the actor's data. */
  data: any;
}
export interface CompleteChunk extends ChunkBase {
  type: "complete";
  data: any;
}
export interface ErrorChunk extends ChunkBase {
  type: "error";
  error: ErrorInfo;
}
/** One element of a run's stream, ordered by a gapless `seq` from 0. */
export type StreamChunk = StartChunk | ProgressChunk | DataChunk | CompleteChunk | ErrorChunk;

/**
 * An HTTP error: its status, and the `code` and `message` of its body (e.g. 404 `not_found`,
 * 410 `cursor_expired`, 409 `cancelled` from `execute`). Status 0: the client's own (`unavailable`
 * when re-attaching failed, with the last failure as `cause`; `no_run_id`).
 */
export class LoomError extends Error {
  readonly status: number;
  readonly code: ErrorCode;
  /** The seconds the server asked to wait (`Retry-After`, e.g. on 429 `too_many_streams`). */
  readonly retryAfter?: number;
  constructor(status: number, code: string, message: string);
}

/**
 * A live run: iterate it (once) for its chunks; leaving the loop early cancels a run it
 * started (the loop waits up to 2 s for that DELETE; `await cancel()` waits for it). A dropped
 * connection is re-attached (network errors, 5xx and 429 are tried again, up to 8 times in a
 * row, honouring `Retry-After`); when the loop fails on its own it throws and does not cancel the run.
 */
export interface RunStream extends AsyncIterable<StreamChunk> {
  /**
   * The run id, once the server has answered (its `Loom-Run-Id` header; where a cross-origin
   * response hides it, the run's `start` chunk, so only once the loop has read it).
   */
  readonly runId: Promise<string>;
  /**
   * Asks the run to stop (one DELETE, sent again only if it failed); the loop then ends with
   * an `error/cancelled` chunk.
   */
  cancel(): Promise<void>;
}

export interface StreamOptions {
  /**
   * Aborting it ends the loop at once — it throws the signal's reason (an `AbortError`, or a
   * `TimeoutError` from `AbortSignal.timeout`) — and cancels the run (aborted before the server
   * has answered, the DELETE follows its answer if that comes within 2 s; a run whose DELETE
   * never went is cancelled by the server after its disconnect grace).
   */
  signal?: AbortSignal;
  /** The run's deadline, e.g. "30s", or a number of seconds. */
  timeout?: string | number;
}

export interface ActorInfo {
  name: string;
  description: string | null;
  streams: boolean | null;
}
export interface WorkflowInfo {
  name: string;
  description: string | null;
  steps: string[] | null;
}
export interface RunInfo {
  run_id: string;
  actor: string | null;
  workflow: string | null;
  status: "running" | "complete" | "error" | "cancelled";
  error_code: ErrorCode | null;
  created_at: string;
  last_seq: number | null;
}

export interface ExecuteOptions {
  /** Aborting it rejects at once; the server cancels the run after its disconnect grace. */
  signal?: AbortSignal;
  /** The run's deadline, e.g. "30s", or a number of seconds (past it: a 504 `timeout` LoomError). */
  timeout?: string | number;
}

export interface Actor {
  stream(input?: unknown, options?: StreamOptions): RunStream;
  /**
   * The run's result, or a LoomError with its error (422 `bad_input`, 409 `cancelled`, 504
   * `timeout`, …).
   */
  execute(input?: unknown, options?: ExecuteOptions): Promise<any>;
}
export interface Workflow {
  stream(input?: unknown, options?: StreamOptions): RunStream;
  /** The workflow's result, as an actor's `execute` (it runs as the type `workflows/<name>`). */
  execute(input?: unknown, options?: ExecuteOptions): Promise<any>;
}

export interface Runs {
  create(request: { actor: string; input?: unknown; timeout?: string | number } | { workflow: string; input?: unknown; timeout?: string | number }): Promise<{ run_id: string; stream_url: string }>;
  get(id: string): Promise<RunInfo>;
  list(): Promise<RunInfo[]>;
  /** Cancels the run (idempotent): its status once it has ended (`cancelled`, or how it ended first), or `running` if it did not end within 2 s. */
  cancel(id: string): Promise<RunInfo>;
  /**
   * Joins a run after `from` (exclusive), or from its start; leaving the loop or aborting
   * `signal` ends it without cancelling the run. A `from` at or past a finished run's terminal
   * ends the loop at once (204); one before what the server's log still holds is a 410
   * `cursor_expired` LoomError.
   */
  stream(id: string, options?: { from?: number; signal?: AbortSignal }): RunStream;
}

export class Loom {
  constructor(options: { baseUrl: string; apiKey?: string; fetch?: typeof fetch });
  readonly runs: Runs;
  actor(type: string): Actor;
  workflow(name: string): Workflow;
  actors(): Promise<ActorInfo[]>;
  workflows(): Promise<WorkflowInfo[]>;
}
