//! Why a run failed: the stable wire [`ErrorCode`] and the [`ActorError`] actors return.
//!
//! Every failure, from a bad input to a panic, reaches the consumer as exactly one `error`
//! chunk carrying an [`ErrorCode`]; the runtime converts an [`ActorError`] into that chunk.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable, snake_case error code carried by every `error` chunk (DESIGN.md §3).
///
/// Other programs match on these strings, so a variant is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The run was cancelled by its caller.
    Cancelled,
    /// The run passed its deadline.
    Timeout,
    /// The actor itself reported a failure.
    ActorFailed,
    /// The worker running a remote run disappeared and no other worker took it over.
    WorkerLost,
    /// The input was malformed or did not match what the actor expects.
    BadInput,
    /// An actor, run or stream with that name or id does not exist.
    NotFound,
    /// An upstream service (an LLM endpoint, Redis) failed.
    Upstream,
    /// A bug or an unexpected condition inside Loom (a panic, an undecodable entry).
    Internal,
}

impl ErrorCode {
    /// Whether running the same request again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Timeout | Self::WorkerLost | Self::Upstream)
    }

    /// The wire name of the code, e.g. `"bad_input"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::ActorFailed => "actor_failed",
            Self::WorkerLost => "worker_lost",
            Self::BadInput => "bad_input",
            Self::NotFound => "not_found",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error an actor returns (or the runtime creates) when a run fails.
///
/// Its parts are read through [`code`](Self::code), [`message`](Self::message),
/// [`is_retryable`](Self::is_retryable) and [`std::error::Error::source`]; they are set only
/// through the constructors, so an error always carries a code and a message.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActorError {
    code: ErrorCode,
    message: String,
    /// Whether a retry may succeed; defaults to [`ErrorCode::is_retryable`].
    retryable: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ActorError {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: code.is_retryable(),
            source: None,
        }
    }

    /// `bad_input`: the caller sent something the actor cannot use.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadInput, message)
    }

    /// `actor_failed`: the actor's own logic failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ActorFailed, message)
    }

    /// `internal`: a bug or unexpected condition.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// `cancelled`: the caller asked the run to stop.
    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "cancelled by client")
    }

    /// `not_found`: no actor, run or stream with that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Overrides whether the failure is worth retrying.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether running the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}
