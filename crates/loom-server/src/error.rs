//! The one error type of the HTTP API and its response: a status and
//! `{"error":{"code":…,"message":…}}` (DESIGN.md §3, "HTTP API").
//!
//! Handlers, extractors and [`crate::runs`] return [`ApiError`]; once an SSE response has
//! started, failures are chunks instead.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use loom_core::{ActorError, ErrorCode};
use serde_json::json;

use crate::runlog::CursorExpired;

/// Why a request failed, with the status and `code` each maps to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `bad_request`: the body or query is not JSON, or the envelope is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`: `LOOM_API_KEY` is set and the request has no or the wrong key.
    #[error("missing or wrong API key (send Authorization: Bearer <key>)")]
    Unauthorized,
    /// 403 `forbidden`: a browser sent the request for a page of another site that CORS does
    /// not let in, or by a host name a server listening on loopback does not answer to.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: an unknown actor, workflow or run.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists, not with this method.
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// 408 `request_timeout`: the request's body did not arrive in time
    /// ([`ServerConfig::header_timeout`](crate::ServerConfig::header_timeout)).
    #[error("the request body did not arrive within {secs} s")]
    BodyTimeout {
        /// The time it had, in seconds.
        secs: u64,
    },
    /// 410 `cursor_expired`: the log no longer holds the cursor.
    #[error(transparent)]
    CursorExpired(#[from] CursorExpired),
    /// 413 `too_large`: the body is over the limit.
    #[error("the request body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 429 `too_many_streams`: the concurrent-stream cap is reached.
    #[error("too many open streams (the limit is {limit}); retry later")]
    TooManyStreams {
        /// The cap.
        limit: usize,
    },
    /// 429 `too_many_runs`: the cap on runs running at once is reached.
    #[error("too many runs running (the limit is {limit}); retry later")]
    TooManyRuns {
        /// The cap.
        limit: usize,
    },
    /// 429 `queue_full`: in front of workers, the actor type's queue holds the most requests
    /// it may (`--max-queued`).
    #[error("{0}")]
    QueueFull(String),
    /// 503 `unavailable`: the server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// 503 `unavailable` with `Retry-After`: Redis cannot be reached (distributed mode).
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// 503 `unavailable` with `Retry-After`: no live worker serves an actor type or workflow
    /// that exists (distributed mode).
    #[error("{0}")]
    NoWorker(String),
    /// A run that ended with an error (on `/run`), or could not start: its code decides the
    /// status (`bad_input` → 422, `not_found` → 404, `cancelled` → 409, `upstream` → 502,
    /// `worker_lost` → 503, `timeout` → 504, any other → 500).
    #[error(transparent)]
    Run(#[from] ActorError),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::CursorExpired(_) => StatusCode::GONE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyStreams { .. } | Self::TooManyRuns { .. } | Self::QueueFull(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ShuttingDown | Self::Unavailable(_) | Self::NoWorker(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Run(err) => match err.code() {
                ErrorCode::BadInput => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                // Stopped on purpose (`DELETE`, a shutdown): no fault, and not to be retried.
                ErrorCode::Cancelled => StatusCode::CONFLICT,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::Upstream => StatusCode::BAD_GATEWAY,
                // No worker took the run, or its worker died and none took it over: the
                // service is short of workers for now, not at fault.
                ErrorCode::WorkerLost => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The error body's message. The code has its own field: a run's error says only its
    /// message.
    pub fn message(&self) -> String {
        match self {
            Self::Run(err) => err.message().to_owned(),
            other => other.to_string(),
        }
    }

    /// Whether sending the same request again may succeed: a busy or unavailable server, or a
    /// run that failed in a way that may pass (DESIGN.md §3: `timeout`, `worker_lost`,
    /// `upstream`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::TooManyStreams { .. }
            | Self::TooManyRuns { .. }
            | Self::QueueFull(_)
            | Self::ShuttingDown
            | Self::Unavailable(_)
            | Self::NoWorker(_) => true,
            Self::Run(err) => err.is_retryable(),
            _ => false,
        }
    }

    /// The stable `code` of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTimeout { .. } => "request_timeout",
            Self::CursorExpired(_) => "cursor_expired",
            Self::TooLarge { .. } => "too_large",
            Self::TooManyStreams { .. } => "too_many_streams",
            Self::TooManyRuns { .. } => "too_many_runs",
            Self::QueueFull(_) => "queue_full",
            Self::ShuttingDown | Self::Unavailable(_) | Self::NoWorker(_) => "unavailable",
            Self::Run(err) => err.code().as_str(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request rejected");
        }
        let body = json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut response = (status, Json(body)).into_response();
        // What passes: a full queue or cap, no worker yet, Redis not answering (a restart, a
        // cluster's failover). The official clients retry on it.
        if status == StatusCode::TOO_MANY_REQUESTS
            || matches!(self, Self::NoWorker(_) | Self::Unavailable(_))
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // RFC 9110 §11.6.1: a 401 names the scheme it wants (the API key as a bearer token).
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_error_code_gives_its_status() {
        let status = |code| ApiError::Run(ActorError::new(code, "m")).status().as_u16();
        assert_eq!(status(ErrorCode::BadInput), 422);
        assert_eq!(status(ErrorCode::Timeout), 504);
        assert_eq!(status(ErrorCode::Upstream), 502);
        assert_eq!(status(ErrorCode::WorkerLost), 503);
        assert_eq!(status(ErrorCode::Internal), 500);
    }
}
