//! The state every handler shares: the [`Engine`] and the concurrent-stream cap.

use std::sync::Arc;

use loom_core::Runtime;
use loom_workflow::Workflow;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Gauges;
use crate::runs::Engine;
use crate::tokens::Tokens;

/// What [`crate::router`] and [`crate::serve`] run on; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    streams: Arc<Semaphore>,
    stream_cap: usize,
    tokens: Tokens,
}

impl ServerState {
    /// A server for `runtime`'s actors and `workflows`, configured by `config`.
    pub fn new(runtime: Runtime, workflows: Vec<Workflow>, config: ServerConfig) -> Self {
        let stream_cap = config.max_streams.min(Semaphore::MAX_PERMITS);
        let streams = Arc::new(Semaphore::new(stream_cap));
        Self {
            inner: Arc::new(Inner {
                engine: Engine::new(runtime, workflows, config),
                streams,
                stream_cap,
                tokens: Tokens::default(),
            }),
        }
    }

    /// The engine that starts and keeps runs.
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        self.inner.engine.config()
    }

    /// A place under the concurrent-stream cap, or 429 `too_many_streams`.
    pub(crate) fn stream_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                limit: self.config().max_streams,
            })
    }

    /// The short-lived tokens of `POST /v1/tokens`.
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// `/metrics`' exposition text.
    pub(crate) fn metrics_text(&self) -> String {
        let gauges = Gauges {
            active_runs: self.engine().store().running().len(),
            open_streams: self.inner.stream_cap - self.inner.streams.available_permits(),
        };
        self.engine().metrics().render(gauges)
    }

    /// Starts the graceful shutdown: no new runs, every running one cancelled (its readers
    /// get the terminal `error/cancelled`).
    pub fn shutdown(&self) {
        self.inner.engine.shutdown();
    }
}
