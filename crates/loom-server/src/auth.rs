//! The API key check: with `LOOM_API_KEY` set, a request needs `Authorization: Bearer <key>`.
//!
//! [`crate::routes`] layers [`require_key`] on every route but `/healthz`. The key is compared
//! in constant time and never logged.

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
    match given {
        Some(given) if same_key(given, key) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
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
