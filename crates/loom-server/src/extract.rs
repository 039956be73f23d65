//! What requests carry: the [`LoomJson`] body extractor, the request envelope, the detached
//! run request and the query strings, each turned into typed values for [`crate::routes`].
//!
//! Bodies are read as JSON whatever their `Content-Type` (curl's `-d` sends a form type), an
//! empty body is an empty envelope, an unknown field is a 400 that names it, and a body over
//! the limit is a 413.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::ServerState;
use crate::store::DisconnectPolicy;

#[cfg(test)]
mod properties;

/// A JSON body, parsed whatever its `Content-Type`; rejections are [`ApiError`]s, in
/// OpenAI's error shape on the OpenAI routes.
#[derive(Debug)]
pub(crate) struct LoomJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ServerState> for LoomJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ServerState) -> Result<Self, Response> {
        let openai = crate::dialect::speaks_openai(request.uri().path());
        Self::parse(request, state).await.map_err(|err| {
            if openai {
                crate::dialect::OpenAiError(err).into_response()
            } else {
                err.into_response()
            }
        })
    }
}

impl<T: DeserializeOwned> LoomJson<T> {
    async fn parse(request: Request, state: &ServerState) -> Result<Self, ApiError> {
        // A body declared too large is refused before any of it is waited for.
        let limit = state.config().body_limit;
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ApiError::TooLarge { limit });
        }
        // A body that never finishes would hold its connection (and a shutdown) for ever.
        let wait = state.config().header_timeout;
        let read = tokio::time::timeout(wait, Bytes::from_request(request, state));
        let bytes = read
            .await
            .map_err(|_| ApiError::BodyTimeout {
                secs: wait.as_secs(),
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge { limit }
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        let text: &[u8] = if bytes.trim_ascii().is_empty() {
            b"{}"
        } else {
            &bytes
        };
        // Every body is an object: serde would also take a struct as an array of its fields,
        // so a raw array posted where the envelope goes would run as one.
        if !text.trim_ascii_start().starts_with(b"{") {
            return Err(ApiError::BadRequest(
                "the body is not a valid request: a JSON object is expected".into(),
            ));
        }
        serde_json::from_slice(text)
            .map(LoomJson)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a valid request: {e}")))
    }
}

/// A route's one path parameter (an actor type, a workflow, a run id); one that is not UTF-8
/// once decoded is a 400 in Loom's error shape (OpenAI's on the OpenAI routes), not axum's
/// plain text.
#[derive(Debug)]
pub(crate) struct LoomPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for LoomPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let err = ApiError::BadRequest(rejection.body_text());
                Err(if crate::dialect::speaks_openai(parts.uri.path()) {
                    crate::dialect::OpenAiError(err).into_response()
                } else {
                    err.into_response()
                })
            }
        }
    }
}

/// The request's W3C `traceparent` header, if it has one that is text: the parent of the
/// run's span (an invalid trace context is ignored there, never an error).
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceParent(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for TraceParent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get(loom_core::trace::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ))
    }
}

/// What happens to a direct stream's run when its client goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnDisconnect {
    /// Cancel it after the grace period unless a reader re-attaches (the default).
    #[default]
    Cancel,
    /// Let it run on.
    Continue,
}

impl OnDisconnect {
    /// The run's policy, with the server's grace period.
    pub(crate) fn policy(self, grace: Duration) -> DisconnectPolicy {
        match self {
            Self::Cancel => DisconnectPolicy::CancelAfter(grace),
            Self::Continue => DisconnectPolicy::Continue,
        }
    }
}

/// The body of the actor and workflow routes: `{"input", "on_disconnect", "timeout"}`, every
/// field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Envelope {
    /// The actor's input (default `{}`; an explicit `null` is the input `null`).
    #[serde(default, deserialize_with = "present")]
    pub input: Option<Value>,
    /// What a client going away does.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// The run's deadline, e.g. `"30s"`, or a number of seconds.
    #[serde(default, deserialize_with = "duration_text")]
    pub timeout: Option<String>,
}

/// A duration given as text (`"30s"`) or as a JSON number of seconds (`30`, `1.5`), as the
/// text of that number: [`parse_timeout`] reads both.
pub(crate) fn duration_text<'de, D: serde::Deserializer<'de>>(
    field: D,
) -> Result<Option<String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration like \"30s\" or a number of seconds")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(text.to_owned()))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    field.deserialize_any(Text)
}

/// A field that is present is `Some`, even when it is `null` (serde's own `Option` reads a
/// `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(field).map(Some)
}

/// The body of `POST /v1/runs`: an actor or a workflow, its input and deadline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunRequest {
    /// The actor type to run.
    pub actor: Option<String>,
    /// The workflow to run.
    pub workflow: Option<String>,
    /// Its input (default `{}`; an explicit `null` is the input `null`).
    #[serde(default, deserialize_with = "present")]
    pub input: Option<Value>,
    /// The run's deadline, e.g. `"10m"`, or a number of seconds.
    #[serde(default, deserialize_with = "duration_text")]
    pub timeout: Option<String>,
}

/// The query of `GET /v1/actors/{type}/stream`: the envelope for a browser `EventSource`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    /// The input, as JSON text.
    pub input: Option<String>,
    /// What a client going away does.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// The run's deadline.
    pub timeout: Option<String>,
    /// A short-lived token, checked by [`crate::auth`].
    #[serde(rename = "token")]
    _token: Option<String>,
}

impl StreamQuery {
    /// The envelope this query stands for; input that is not JSON is a 400.
    pub(crate) fn into_envelope(self) -> Result<Envelope, ApiError> {
        let input = self
            .input
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("?input is not valid JSON: {e}")))?;
        Ok(Envelope {
            input,
            on_disconnect: self.on_disconnect,
            timeout: self.timeout,
        })
    }
}

/// The query of `GET /v1/runs/{id}/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinQuery {
    /// Read the chunks after this `seq` (with a `format`: the events after this number).
    pub from: Option<u64>,
    /// Serve the run in a client dialect: `ag-ui`, `ai-sdk` or `openai-responses` (DESIGN.md §3a).
    pub format: Option<String>,
    /// The AG-UI thread id the events repeat (default: the run id).
    pub thread_id: Option<String>,
    /// A short-lived token, checked by [`crate::auth`].
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// The input, `{}` when absent (an explicit `null` stays `null`).
pub(crate) fn input_or_empty(input: Option<Value>) -> Value {
    input.unwrap_or_else(|| Value::Object(Default::default()))
}

/// Parses a deadline like `"30s"`; a bad one is a 400.
pub(crate) fn parse_timeout(timeout: Option<&str>) -> Result<Option<Duration>, ApiError> {
    timeout
        .map(loom_workflow::parse_timeout)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("bad timeout: {e}")))
}

/// The reader's cursor: `Last-Event-ID: N`, else `?from=N`, else none (from the start).
///
/// The header wins: a browser's `EventSource` opened on `…?from=5` reconnects to that same
/// URL with `Last-Event-ID` set to the last id it saw, which is where it must go on from.
pub(crate) fn cursor(query: &JoinQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(query.from);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest("Last-Event-ID is not a seq".into()))
}
