//! The API key check: with `LOOM_API_KEY` set, a request needs `Authorization: Bearer <key>`,
//! or `?token=` with a short-lived token from `POST /v1/tokens` (for clients that cannot set
//! headers: a browser `EventSource` or WebSocket).
//!
//! [`crate::routes`] layers [`require_key`] on every route but `/healthz`. The key is compared
//! in constant time; neither the key nor tokens are logged (no request URI is logged).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::ServerState;

/// Passes the request on when no key is configured or it carries the right one; 401
/// `unauthorized` otherwise.
pub(crate) async fn require_key(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.config().api_key else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match given {
        Some(given) => same_key(given, key),
        None => query_token(&request).is_some_and(|t| state.tokens().is_valid(t)),
    };
    if authorized {
        next.run(request).await
    } else if crate::dialect::speaks_openai(request.uri().path()) {
        crate::dialect::OpenAiError(ApiError::Unauthorized).into_response()
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// The `token` query parameter (tokens are hex: no decoding needed).
fn query_token(request: &Request) -> Option<&str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Equal keys, in time that does not depend on where they differ.
fn same_key(given: &str, key: &str) -> bool {
    given.as_bytes().ct_eq(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn only_the_same_key_matches() {
        assert!(same_key("s3cret", "s3cret"));
        assert!(!same_key("s3cres", "s3cret"));
        assert!(!same_key("s3cret-", "s3cret"));
        assert!(!same_key("", "s3cret"));
    }
}
