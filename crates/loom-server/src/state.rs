//! The state every handler shares: where runs happen ([`Runs`]), the configuration, the
//! metrics and the concurrent-stream cap.

use std::sync::Arc;
use std::time::Duration;

use loom_core::{Registry, Runtime};
use loom_workflow::Workflow;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::Runs;
use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics};
use crate::remote::RemoteRuns;
use crate::runs::Engine;
use crate::tokens::Tokens;

/// What [`crate::router`] and [`crate::serve`] run on; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runs: Runs,
    config: ServerConfig,
    metrics: Arc<Metrics>,
    streams: Arc<Semaphore>,
    stream_cap: usize,
    tokens: Tokens,
}

/// How much longer than the disconnect grace [`ServerState::drained`] waits, for the last
/// readers to close and for Redis to take the cancels.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

impl ServerState {
    /// A server that runs `runtime`'s actors and `workflows` in this process (the embedded
    /// mode), configured by `config`.
    pub fn new(runtime: Runtime, workflows: Vec<Workflow>, config: ServerConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::new(runtime, workflows, config.clone(), Arc::clone(&metrics));
        Self::with(Runs::Local(engine), config, metrics)
    }

    /// A server in front of the workers of the Redis behind `client` (distributed mode): it
    /// queues every run and serves the Redis chunk streams. `registry` describes the actor
    /// types workers serve, and `workflows`, if given, the workflows they serve (for their
    /// steps, input checks and deadlines); what a run may use is what live workers advertise.
    pub fn distributed(
        client: loom_redis::Client,
        registry: Registry,
        workflows: Vec<Workflow>,
        config: ServerConfig,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let remote = RemoteRuns::new(client, registry, workflows, Arc::clone(&metrics));
        Self::with(Runs::Remote(remote), config, metrics)
    }

    fn with(runs: Runs, config: ServerConfig, metrics: Arc<Metrics>) -> Self {
        let stream_cap = config.max_streams.min(Semaphore::MAX_PERMITS);
        let streams = Arc::new(Semaphore::new(stream_cap));
        let tokens = Tokens::new(config.api_key.as_deref());
        Self {
            inner: Arc::new(Inner {
                runs,
                config,
                metrics,
                streams,
                stream_cap,
                tokens,
            }),
        }
    }

    /// Where runs happen.
    pub(crate) fn runs(&self) -> &Runs {
        &self.inner.runs
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The counters `/metrics` shows.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// A place under the concurrent-stream cap, or 429 `too_many_streams`.
    pub(crate) fn stream_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyStreams {
                limit: self.config().max_streams,
            })
    }

    /// Once no stream is open (every stream permit is back): after
    /// [`shutdown`](Self::shutdown), when each has sent its end.
    pub(crate) async fn streams_closed(&self) {
        let all = u32::try_from(self.inner.stream_cap).unwrap_or(u32::MAX);
        let _ = self.inner.streams.acquire_many(all).await;
    }

    /// The short-lived tokens of `POST /v1/tokens`.
    pub(crate) fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    /// `/metrics`' exposition text.
    pub(crate) fn metrics_text(&self) -> String {
        let gauges = Gauges {
            active_runs: self.runs().active_runs(),
            open_streams: self.inner.stream_cap - self.inner.streams.available_permits(),
        };
        self.inner.metrics.render(gauges)
    }

    /// Starts the graceful shutdown: no new runs; embedded runs are cancelled (their readers
    /// get the terminal `error/cancelled`); in distributed mode the runs go on on their
    /// workers and this server's streams close without a terminal chunk.
    pub fn shutdown(&self) {
        self.inner.runs.shutdown();
    }

    /// After [`shutdown`](Self::shutdown), once the streams are closed: in distributed mode,
    /// waits out the disconnect grace of each direct run whose last reader was on this server
    /// (at most [`ServerConfig::disconnect_grace`](crate::ServerConfig) and a few seconds more),
    /// cancelling those whose clients did not resume through another server.
    pub async fn drained(&self) {
        let bound = self.config().disconnect_grace + DRAIN_MARGIN;
        if tokio::time::timeout(bound, self.inner.runs.drained())
            .await
            .is_err()
        {
            tracing::warn!("stopped waiting for the disconnect graces of runs whose clients left");
        }
    }
}
