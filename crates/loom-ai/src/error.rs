//! [`AiError`]: why a completion failed, and how that maps onto Loom's wire [`ErrorCode`].
//!
//! The AI service never puts the API key into an error: messages quoted from the server are
//! scrubbed of it before they are stored (see `OpenAiClient`), and no variant holds a header.

use std::time::Duration;

use loom_core::{ActorError, ErrorCode};

/// What can go wrong while asking an LLM for a completion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AiError {
    /// The server answered with an HTTP error status. `message` is the server's own
    /// explanation (from an OpenAI-style `{"error":{"message":…}}` body when there is one).
    #[error("the AI server answered {status}: {message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The server's message.
        message: String,
        /// The delay the server asked for before a retry (`Retry-After`), if any.
        retry_after: Option<Duration>,
    },
    /// The server reported an error inside the token stream (an `{"error":{…}}` event).
    #[error("the AI server reported an error in the stream: {message}")]
    Stream {
        /// The server's message.
        message: String,
    },
    /// The stream broke before it was complete: the connection failed or closed without
    /// `data: [DONE]` or a `finish_reason`. Tokens yielded before stay yielded.
    #[error("the token stream broke: {message}")]
    Interrupted {
        /// What happened.
        message: String,
    },
    /// The server could not be reached.
    #[error("could not reach the AI server: {message}")]
    Connect {
        /// What happened.
        message: String,
    },
    /// Connecting, or waiting for the next bytes, took longer than configured.
    #[error("the AI server did not answer within {after:?} ({phase})")]
    Timeout {
        /// Which wait timed out: `"connect"`, `"waiting for the response"` or `"idle"`.
        phase: &'static str,
        /// The configured limit.
        after: Duration,
    },
    /// The server sent something that is not an OpenAI-compatible chat completion chunk.
    #[error("could not decode the AI server's response: {message}")]
    Decode {
        /// What was wrong.
        message: String,
    },
    /// The request cannot be sent as it is (no messages, an empty model name).
    #[error("invalid completion request: {0}")]
    BadRequest(String),
    /// The service is misconfigured (an unusable base URL).
    #[error("invalid AI service configuration: {0}")]
    Config(String),
}

impl AiError {
    /// The same error with every trace of `secret` (the API key) removed from its message:
    /// servers and proxies may echo the key back, in an error status, inside the stream, or
    /// in a quoted undecodable event whose cut falls in the middle of the key.
    pub(crate) fn without_secret(self, secret: &str) -> Self {
        let clean = |text: String| scrub(text, secret);
        match self {
            Self::Status {
                status,
                message,
                retry_after,
            } => Self::Status {
                status,
                message: clean(message),
                retry_after,
            },
            Self::Stream { message } => Self::Stream {
                message: clean(message),
            },
            Self::Interrupted { message } => Self::Interrupted {
                message: clean(message),
            },
            Self::Connect { message } => Self::Connect {
                message: clean(message),
            },
            Self::Decode { message } => Self::Decode {
                message: clean(message),
            },
            Self::BadRequest(message) => Self::BadRequest(clean(message)),
            Self::Config(message) => Self::Config(clean(message)),
            other @ Self::Timeout { .. } => other,
        }
    }

    /// The Loom wire code for this error.
    ///
    /// HTTP 400/404/413/422 mean the request itself (model, limits, messages) was refused,
    /// so they are `bad_input`; every other status, and any failure of the server or of the
    /// connection — a server that stays silent too — is `upstream` (`timeout` is a run's
    /// own deadline).
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Status {
                status: 400 | 404 | 413 | 422,
                ..
            } => ErrorCode::BadInput,
            Self::BadRequest(_) => ErrorCode::BadInput,
            Self::Config(_) => ErrorCode::Internal,
            _ => ErrorCode::Upstream,
        }
    }

    /// Whether sending the same request again may succeed: 429, 5xx, connection failures
    /// and timeouts. The service retries these itself, but only before the first token.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Connect { .. } | Self::Timeout { .. } | Self::Interrupted { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, for [`AiError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The delay the server asked for before a retry, for [`AiError::Status`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<AiError> for ActorError {
    fn from(err: AiError) -> Self {
        let retryable = err.is_retryable();
        ActorError::new(err.code(), err.to_string())
            .with_retryable(retryable)
            .with_source(err)
    }
}

/// Replaces `secret` in `text` with `***`, and any cut-off start of it too (a quote that was
/// truncated in the middle of the key).
pub(crate) fn scrub(text: String, secret: &str) -> String {
    /// A shorter start is too likely to be innocent text (`sk-`).
    const MIN_START: usize = 6;
    let secret = secret.as_bytes();
    if secret.len() < MIN_START || !text.contains(&*String::from_utf8_lossy(&secret[..MIN_START])) {
        return text;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let matched = bytes[i..]
            .iter()
            .zip(secret)
            .take_while(|(a, b)| a == b)
            .count();
        if matched >= MIN_START {
            out.extend_from_slice(b"***");
            i += matched;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only whole ASCII runs were replaced, so the rest is the original UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
