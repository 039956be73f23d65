//! [`AiConfig`]: where the AI service sends requests and how patiently.
//!
//! Read from the environment by [`AiConfig::from_env`] (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
//! `LOOM_MODEL`, `LOOM_AI_IDLE_TIMEOUT`) or built in code. The API key lives in an [`ApiKey`],
//! whose `Debug` never shows it, so a config can be logged whole.

use std::fmt;
use std::time::Duration;

use crate::AiError;

/// The OpenAI API, used when only `OPENAI_API_KEY` is set.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The model asked for when neither the request nor `LOOM_MODEL` names one.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// The model name the offline provider reports.
pub const OFFLINE_MODEL: &str = "loom-offline";

/// A secret API key. Its `Debug` prints `ApiKey(***)`; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Which provider answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// An OpenAI-compatible server (OpenAI, Ollama, vLLM, llama.cpp's server, LiteLLM):
    /// requests go to `POST {base_url}/chat/completions`.
    OpenAi {
        /// The API base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
        base_url: String,
    },
    /// The built-in offline provider: deterministic text, no network.
    Offline,
}

/// How the service retries a request that failed before its first token: a 429 or 5xx
/// answer, a connection that failed, a stream cut before its first token — not a server that
/// stayed silent for the idle timeout (asking again would only multiply the wait).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The wait before the first retry; it doubles on each further retry.
    pub initial_backoff: Duration,
    /// The longest wait; a server's `Retry-After` asking for longer ends the request with
    /// its error at once: a server asking for an hour must not hang a user's run.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Whether `err`, after `retry` retries, is tried again: a retryable failure, retries
    /// left, and no `Retry-After` longer than [`max_backoff`](Self::max_backoff) (a server
    /// asking for an hour is not asked again sooner, and not waited for either).
    pub fn retries(&self, err: &AiError, retry: u32) -> bool {
        err.is_retryable()
            && retry < self.max_retries
            && err
                .retry_after()
                .is_none_or(|wait| wait <= self.max_backoff)
    }

    /// The wait before retry number `retry` (0-based): the server's `Retry-After` when it
    /// sent one, otherwise the exponential backoff; capped at [`max_backoff`](Self::max_backoff)
    /// either way.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = retry_after.unwrap_or_else(|| {
            self.initial_backoff
                .saturating_mul(2u32.saturating_pow(retry.min(16)))
        });
        backoff.min(self.max_backoff)
    }
}

/// The AI service's configuration.
#[derive(Clone)]
pub struct AiConfig {
    /// Which provider answers.
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer …` when set (local servers usually need none).
    pub api_key: Option<ApiKey>,
    /// The default model; a request may name another.
    pub model: String,
    /// The longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The longest wait for the response headers (after the connection's own
    /// [`connect_timeout`](Self::connect_timeout)) and then for each next piece of the body.
    /// A generating model sends a token every few tens of milliseconds, so a minute of
    /// silence means the server is stuck, while a slow first token on a loaded server still
    /// fits. Only waiting for the server counts: a caller that reads slowly (a pager, a slow
    /// client) is backpressure, not silence. A keep-alive comment is a piece of the body: a
    /// server that sends them while its model thinks (a proxy such as OpenRouter) is not
    /// silent, and the run's own deadline bounds it.
    pub idle_timeout: Duration,
    /// Retries of 429 and 5xx answers and of connection failures, before the first token.
    pub retry: RetryPolicy,
    /// The offline provider's pause between tokens: slow enough to watch and to stop.
    pub offline_token_delay: Duration,
}

impl Default for AiConfig {
    /// The offline provider.
    fn default() -> Self {
        Self::offline()
    }
}

impl AiConfig {
    /// The offline provider, with its default pace of 20 ms per token.
    pub fn offline() -> Self {
        Self {
            endpoint: Endpoint::Offline,
            api_key: None,
            model: OFFLINE_MODEL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            offline_token_delay: Duration::from_millis(20),
        }
    }

    /// An OpenAI-compatible server at `base_url` (e.g. `http://127.0.0.1:11434/v1`), with
    /// no key and the default model.
    pub fn openai_compatible(base_url: impl Into<String>) -> Self {
        Self {
            endpoint: Endpoint::OpenAi {
                base_url: base_url.into(),
            },
            model: DEFAULT_MODEL.to_owned(),
            ..Self::offline()
        }
    }

    /// The configuration the environment describes:
    ///
    /// - neither `OPENAI_BASE_URL` nor `OPENAI_API_KEY` set (or both empty): the offline
    ///   provider, so a fresh machine works with no setup;
    /// - otherwise `OPENAI_BASE_URL` (default [`DEFAULT_BASE_URL`]) with `OPENAI_API_KEY`;
    /// - `LOOM_MODEL` names the default model either way;
    /// - `LOOM_AI_IDLE_TIMEOUT` sets [`idle_timeout`](Self::idle_timeout), as `90s`, `5m` or
    ///   `1m 30s` (a model on a CPU may think for minutes before its first token).
    ///
    /// # Errors
    ///
    /// [`AiError::Config`] for an `LOOM_AI_IDLE_TIMEOUT` that is no duration, zero or over a
    /// week (read as [`loom_core::parse_timeout`] reads it).
    pub fn from_env() -> Result<Self, AiError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    ///
    /// # Errors
    ///
    /// As [`from_env`](Self::from_env).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AiError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let base_url = var("OPENAI_BASE_URL");
        let api_key = var("OPENAI_API_KEY");
        let mut config = if base_url.is_none() && api_key.is_none() {
            Self::offline()
        } else {
            let mut config =
                Self::openai_compatible(base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()));
            config.api_key = api_key.map(ApiKey::new);
            config
        };
        if let Some(model) = var("LOOM_MODEL") {
            config.model = model;
        }
        if let Some(timeout) = var("LOOM_AI_IDLE_TIMEOUT") {
            // The syntax of `--timeout` and workflow files' `timeout:`.
            config.idle_timeout = loom_core::parse_timeout(&timeout).map_err(|e| {
                AiError::Config(format!(
                    "LOOM_AI_IDLE_TIMEOUT={timeout:?}: {e} (e.g. 90s, 5m or 1m 30s)"
                ))
            })?;
        }
        Ok(config)
    }

    /// Sets the API key.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(ApiKey::new(key));
        self
    }

    /// Sets the default model.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the idle timeout.
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the offline provider's pause between tokens.
    pub fn with_offline_token_delay(mut self, delay: Duration) -> Self {
        self.offline_token_delay = delay;
        self
    }

    /// Whether the offline provider answers.
    pub fn is_offline(&self) -> bool {
        self.endpoint == Endpoint::Offline
    }
}

impl fmt::Debug for AiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AiConfig")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("retry", &self.retry)
            .field("offline_token_delay", &self.offline_token_delay)
            .finish()
    }
}
