//! # loom-server: every Loom run on the network
//!
//! An HTTP server (axum) that starts actors and workflows, writes every run to a log addressed
//! by `seq`, and serves that log as Server-Sent Events: several readers per run, resume from any
//! cursor, detached runs, cancel. Routes and formats are DESIGN.md §3 ("SSE", "The run log",
//! "HTTP API"). Runs happen in this process with in-memory logs ([`ServerState::new`], the
//! embedded default), or on workers through Redis, whose chunk streams are the logs
//! ([`ServerState::distributed`]): then any number of servers serve, resume and cancel any
//! run.
//!
//! ```no_run
//! use loom_core::{Extensions, Registry, Runtime};
//! use loom_server::{serve, ServerConfig, ServerState};
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let runtime = Runtime::new(Registry::with_builtins(), Extensions::new());
//! let state = ServerState::new(runtime, Vec::new(), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! ## Main types
//! - [`ServerState`]: where runs happen (embedded or distributed), the configuration, the
//!   metrics and the stream cap; [`router`] serves it, [`serve`] serves it on a listener with
//!   graceful shutdown.
//! - [`ServerConfig`]: API key, disconnect grace, keep-alive interval, run TTL, body limit,
//!   stream cap, log bounds, CORS origins (off by default).
//! - [`RunLog`]: one run's chunks and status; [`Reader`]: a cursor into it that waits for more.
//! - [`ApiError`]: every error response, `{"error":{"code":…,"message":…}}`.
//!
//! ## Routes
//! | route | what |
//! |---|---|
//! | `GET /` | the web console (static files, no key needed; the page asks for the key) |
//! | `GET /healthz` | `{"status":"ok"}`, no key needed |
//! | `GET /v1/actors` · `GET /v1/workflows` | registered actors (and whether they stream) · loaded workflows |
//! | `POST /v1/actors/{type}/run` | run to the end; the `complete` data as JSON (`bad_input` → 422) |
//! | `POST /v1/actors/{type}/stream` · `GET …/stream?input=<json>&on_disconnect=…` | SSE of a new run (`Loom-Run-Id` header) |
//! | `POST /v1/workflows/{name}/stream` | SSE of a new workflow run |
//! | `POST /v1/runs` `{"actor"\|"workflow", "input", "timeout"}` | a detached run: `201 {run_id, stream_url}` |
//! | `GET /v1/runs` · `GET /v1/runs/{id}` | recent runs, newest first · one run's status |
//! | `GET /v1/runs/{id}/stream` | SSE from a cursor (`Last-Event-ID` or `?from=`, exclusive) |
//! | `DELETE /v1/runs/{id}` | cancel (idempotent), `202` with the status once the run ended (at most 2 s) |
//! | `GET /v1/actors/{type}/ws` | WebSocket: `{"action":"start","input":…}` / `{"action":"cancel"}` in, chunks as JSON text frames out |
//! | `POST /v1/tokens` | a short-lived token (5 min) for `?token=`, for clients that cannot set headers |
//! | `GET /metrics` | Prometheus: active runs and streams, chunks sent, resumes, dropped slow readers, outcomes by code, time to first chunk, run duration |
//!
//! The actor and workflow routes take the envelope `{"input", "on_disconnect":
//! "cancel"|"continue", "timeout": "30s"}` (a `timeout` may also be a number of seconds); bodies
//! are JSON whatever their `Content-Type`.
//! A `GET …/actors/{type}/stream` carrying `Last-Event-ID` is an `EventSource` reconnecting: it
//! gets `204` and never starts the actor again (resume at `GET /v1/runs/{id}/stream`).
//!
//! ## How the run log works
//! Each run has one producer, a task that drives its `ChunkStream` into its [`RunLog`]; a
//! reader holds only a cursor and reads "every chunk with `seq` > cursor", waiting on a watch
//! channel when there is none yet. So a producer never waits for a reader, and a reader that
//! falls behind just reads further back in the log. The log is bounded in chunks and bytes
//! ([`LogLimits`]); past the bound the oldest are dropped, and a cursor before them is
//! `410 cursor_expired` (a streaming reader overtaken that way is disconnected and gets the 410
//! when it resumes). A cursor at or past a finished run's terminal is `204`. A finished run is
//! kept for the run TTL (default an hour), then forgotten (`404`); at most
//! [`DEFAULT_MAX_FINISHED_RUNS`] finished runs are kept (configurable), the oldest going first.
//! All logs share one budget ([`LogLimits::max_total_bytes`], 128 MiB by default): past it,
//! finished logs give back their chunks first (the oldest first, down to their terminal
//! chunk, so their status and end stay), then a running log that writes trims itself to its
//! share, the total over the number of running logs. So the logs hold about that budget
//! together whatever the number of runs.
//!
//! In distributed mode the same holds with the Redis chunk stream as the log: the cursor is
//! still a `seq` over HTTP (`?from=12`, `Last-Event-ID: 12`), and the server reads from the
//! entry that holds it (the chunk of `seq` N is the entry with id `<N>-1`, the form `loom
//! stream tail --from` takes), which Redis finds without reading from the stream's start; the
//! readers of a run are counted in Redis by every server (module `remote`).
//!
//! ## Layout
//! - `backend` — the one interface the routes use: where runs happen (`Runs`), one run
//!   (`RunRef`), a reader's feed of chunks (`Feed`);
//! - `runs`, `store`, `runlog` — the embedded engine, its runs and their logs;
//! - `remote` — distributed mode;
//! - `routes`, `sse`, `ws`, `extract`, `error`, `auth`, `tokens`, `metrics` — HTTP.
//!
//! A direct stream's run is cancelled when its last reader has been gone for the disconnect
//! grace (default 10 s), unless the request said `"on_disconnect":"continue"`; detached runs
//! run until `DELETE` or their deadline. Cancel goes through the run's cancellation token, so
//! the terminal `error/cancelled` lands in the log and every reader sees it; the log takes one
//! terminal only, so a late completion never overwrites `cancelled`.

mod auth;
mod backend;
mod config;
mod console;
mod dialect;
mod error;
mod extract;
mod metrics;
mod remote;
mod routes;
mod runlog;
mod runs;
mod sse;
mod state;
mod store;
mod tokens;
mod ws;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

pub use config::{
    ServerConfig, DEFAULT_BODY_LIMIT, DEFAULT_DISCONNECT_GRACE, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEP_ALIVE, DEFAULT_MAX_FINISHED_RUNS, DEFAULT_MAX_RUNS, DEFAULT_MAX_STREAMS,
    DEFAULT_RUN_TTL,
};
pub use error::ApiError;
pub use routes::router;
pub use runlog::{
    CursorExpired, LogBudget, LogLimits, LoggedChunk, Read, Reader, RunInfo, RunLog, RunStatus,
    RunTarget, CHUNK_OVERHEAD, DEFAULT_MAX_BYTES, DEFAULT_MAX_CHUNKS, DEFAULT_MAX_TOTAL_BYTES,
};
pub use state::ServerState;
pub use store::MAX_RECENT_RUNS;
pub use tokens::TOKEN_TTL;

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down gracefully: no new
/// connections or runs; embedded runs are cancelled and open streams end with their terminal
/// `error/cancelled` chunk; in distributed mode the runs go on on their workers, open
/// streams close without a terminal chunk (a dialect's with its error event), and the server waits out the disconnect grace of the
/// direct runs whose clients it had ([`ServerState::drained`]); a client that does not read
/// its stream's end within [`SHUTDOWN_DRAIN`] is not waited for. On a loopback address it
/// answers only to loopback host names (`localhost`, `127.0.0.1`, `[::1]`) and those of
/// [`ServerConfig::allowed_hosts`] and its CORS origins: a page that points its own name at
/// this machine (DNS rebinding) gets `403`. A connection that has not sent a request's
/// headers within [`ServerConfig::header_timeout`], or no byte at all, is closed (hyper's
/// HTTP/1 header timeout, which `axum::serve` leaves off).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = router(state.clone());
    if listener.local_addr()?.ip().is_loopback() {
        let guard = axum::middleware::from_fn_with_state(state.clone(), auth::loopback_host);
        app = app.layer(guard);
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config().header_timeout);
    // WebSockets over HTTP/2 (RFC 8441), as `axum::serve` allows them.
    builder.http2().enable_connect_protocol();
    let connections = GracefulShutdown::new();
    // Connections still waiting for their first byte stop waiting at shutdown.
    let closing = loom_core::CancellationToken::new();
    let header_timeout = state.config().header_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (builder, service) = (builder.clone(), TowerToHyperService::new(app.clone()));
        let (watcher, closing) = (connections.watcher(), closing.clone());
        tokio::spawn(async move {
            // hyper's header timer starts at the request's first byte: a connection that
            // never sends one is closed after the same time here.
            // (`peek`, as `readable` may be ready before any byte came.)
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(1))) {
                        return;
                    }
                }
                () = closing.cancelled() => return,
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: cancelling running runs");
    state.shutdown();
    closing.cancel();
    // The streams end (a WebSocket's too, which left its HTTP connection when it upgraded):
    // a client that stopped reading cannot take its stream's end, and is not waited for.
    let streams_ended = async {
        connections.shutdown().await;
        state.streams_closed().await;
    };
    if tokio::time::timeout(SHUTDOWN_DRAIN, streams_ended)
        .await
        .is_err()
    {
        tracing::warn!(
            "stopped waiting for open streams after {SHUTDOWN_DRAIN:?}: their clients are not \
             reading"
        );
    }
    state.drained().await;
    Ok(())
}

/// The longest a graceful shutdown waits for its open streams to take their end.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// After a failed `accept`: a connection that failed before it was accepted is the peer's
/// business; anything else (out of file descriptors) is logged, and accepting waits a
/// second before it tries again rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; trying again in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
