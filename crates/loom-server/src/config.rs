//! The server's knobs, with the defaults of DESIGN.md §3; [`crate::ServerState`] takes them.

use std::fmt;
use std::time::Duration;

use crate::runlog::LogLimits;

/// How long a direct stream's run survives its client going away (DESIGN.md §3).
pub const DEFAULT_DISCONNECT_GRACE: Duration = Duration::from_secs(10);

/// How often an idle SSE stream gets a `: keep-alive` comment.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How long a finished run's log is kept after its terminal chunk (the stream TTL).
pub const DEFAULT_RUN_TTL: Duration = Duration::from_secs(3600);

/// The largest request body, in bytes (larger: 413 `too_large`).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The most finished runs kept readable; past it the one that finished first is forgotten
/// before its TTL. With the log bounds this caps the memory finished runs hold.
pub const DEFAULT_MAX_FINISHED_RUNS: usize = 1_000;

/// The most SSE streams open at once (more: 429 `too_many_streams`).
pub const DEFAULT_MAX_STREAMS: usize = 10_000;

/// The default cap on runs running at once in this process (embedded mode).
pub const DEFAULT_MAX_RUNS: usize = 10_000;

/// How long a client may take to send a request's headers before its connection is closed.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's configuration. `Debug` never shows the API key.
#[derive(Clone)]
pub struct ServerConfig {
    /// The bearer token every route but `/healthz` needs (`LOOM_API_KEY`); none: open.
    pub api_key: Option<String>,
    /// How long a direct stream's run survives its client going away.
    pub disconnect_grace: Duration,
    /// The interval of `: keep-alive` comments on an idle stream.
    pub keep_alive: Duration,
    /// How long a client may take to send a request's headers (HTTP/1) before its connection
    /// is closed, and then its JSON body (`408 request_timeout`), so that connections that
    /// never finish a request cannot pile up or hold a shutdown.
    pub header_timeout: Duration,
    /// How long a finished run stays readable.
    pub run_ttl: Duration,
    /// The most finished runs kept readable (the oldest go first, before their TTL).
    pub max_finished_runs: usize,
    /// The largest request body, in bytes.
    pub body_limit: usize,
    /// The most SSE streams open at once.
    pub max_streams: usize,
    /// The most runs running at once in this process (embedded mode: in front of workers the
    /// workers' concurrency bounds them); a run past it is `429 too_many_runs`.
    pub max_runs: usize,
    /// How much of a run each embedded log keeps.
    pub log_limits: LogLimits,
    /// Origins browsers may call the API from (`*`: any); empty, the default: CORS off.
    pub cors_origins: Vec<String>,
    /// Host names a server listening on loopback answers to besides the loopback ones and
    /// those of `cors_origins` (a reverse proxy that passes its own `Host` on); any port.
    pub allowed_hosts: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            disconnect_grace: DEFAULT_DISCONNECT_GRACE,
            keep_alive: DEFAULT_KEEP_ALIVE,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            run_ttl: DEFAULT_RUN_TTL,
            max_finished_runs: DEFAULT_MAX_FINISHED_RUNS,
            body_limit: DEFAULT_BODY_LIMIT,
            max_streams: DEFAULT_MAX_STREAMS,
            max_runs: DEFAULT_MAX_RUNS,
            log_limits: LogLimits::default(),
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("disconnect_grace", &self.disconnect_grace)
            .field("keep_alive", &self.keep_alive)
            .field("header_timeout", &self.header_timeout)
            .field("run_ttl", &self.run_ttl)
            .field("max_finished_runs", &self.max_finished_runs)
            .field("body_limit", &self.body_limit)
            .field("max_streams", &self.max_streams)
            .field("max_runs", &self.max_runs)
            .field("log_limits", &self.log_limits)
            .field("cors_origins", &self.cors_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_api_key() {
        let config = ServerConfig {
            api_key: Some("s3cret-key".into()),
            ..ServerConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret-key"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }
}
