//! Who may call the API.
//!
//! **The API key.** With `LOOM_API_KEY` set, a request needs `Authorization: Bearer <key>`,
//! or, on a `GET` (a browser `EventSource` or WebSocket, which cannot set headers), `?token=`
//! with a short-lived token from `POST /v1/tokens` — which itself takes only the key, so a
//! leaked token cannot make more. [`crate::routes`] layers [`require_key`] on every route but
//! `/healthz`. The key is compared in constant time; neither the key nor tokens are logged
//! (no request URI is logged).
//!
//! **Browsers.** A page of another site can make a browser send requests to a server on the
//! user's machine, key or not: an `<img>` that starts a run, a form post, a WebSocket (which
//! CORS does not cover), or — by DNS rebinding — reads of every run. [`same_site`] refuses
//! (`403 forbidden`) what a browser says it sends for another site (`Sec-Fetch-Site`, else an
//! `Origin` that is not the server's own) unless `--cors-origin` lets that origin in, and
//! [`loopback_host`] makes a server listening on loopback answer only to loopback host names
//! and those it is told of (`--allow-host`, the hosts of `--cors-origin`).
//! Clients that are not browsers send neither header and are not concerned.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::{HeaderName, HeaderValue, Method};
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
        .and_then(bearer);
    let authorized = match given {
        Some(given) => same_key(given, key),
        None if request.method() == Method::GET => {
            query_token(&request).is_some_and(|t| state.tokens().is_valid(t))
        }
        None => false,
    };
    if authorized {
        next.run(request).await
    } else {
        refuse(&request, ApiError::Unauthorized)
    }
}

/// The credentials of an `Authorization` value of the `Bearer` scheme, whose name is
/// case-insensitive (RFC 9110 §11.1) and may be followed by more than one space.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// Refuses (`403`) a request a browser sends for a page of another site, unless the server's
/// CORS origins let that page's origin in: `Sec-Fetch-Site` `cross-site` or `same-site` (a
/// page on another port of the same host is another origin too), or without that header, an
/// `Origin` other than the server's own (`Host`).
pub(crate) async fn same_site(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let origin = text(ORIGIN);
    let foreign = match text(HeaderName::from_static("sec-fetch-site")) {
        Some(site) => matches!(site, "cross-site" | "same-site"),
        None => origin.is_some_and(|origin| authority(origin) != text(HOST)),
    };
    let origins = &state.config().cors_origins;
    let allowed =
        origins.iter().any(|o| o == "*") || origin.is_some_and(|o| origins.iter().any(|a| a == o));
    if foreign && !allowed {
        let err = ApiError::Forbidden(
            "a request from a page of another site (allow its origin with --cors-origin)".into(),
        );
        return refuse(&request, err);
    }
    next.run(request).await
}

/// For a server listening on a loopback address: refuses (`403`) a request whose `Host` is
/// not a loopback name (`localhost`, `127.0.0.1`, `[::1]`), one of the configured
/// `allowed_hosts`, or the host of a CORS origin (any port): only a page that had its own name
/// point at this machine (DNS rebinding) sends it another one.
pub(crate) async fn loopback_host(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next().and_then(|v| v.to_str().ok());
    if hosts.next().is_some() {
        // RFC 9112 §3.2: a request with two is refused; judging one would let the other in.
        return refuse(
            &request,
            ApiError::BadRequest("more than one Host header".into()),
        );
    }
    if let Some(host) = host {
        let name = host_name(host);
        let config = state.config();
        let known = |other: &str| host_name(other).eq_ignore_ascii_case(name);
        let answered = name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            || config.allowed_hosts.iter().any(|h| known(h))
            || config
                .cors_origins
                .iter()
                .filter_map(|o| authority(o))
                .any(known);
        if !answered {
            let err = ApiError::Forbidden(format!(
                "this server listens on loopback and answers to {host:?} only if --allow-host names it"
            ));
            return refuse(&request, err);
        }
    }
    next.run(request).await
}

/// The `host[:port]` of an origin (`scheme://host[:port]`).
fn authority(origin: &str) -> Option<&str> {
    origin.split_once("://").map(|(_, authority)| authority)
}

/// The name in a `host[:port]` (an IPv6 address without its brackets).
fn host_name(authority: &str) -> &str {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => authority,
    };
    name.trim_start_matches('[').trim_end_matches(']')
}

/// `err` in the shape of the route's dialect.
fn refuse(request: &Request, err: ApiError) -> Response {
    if crate::dialect::speaks_openai(request.uri().path()) {
        crate::dialect::OpenAiError(err).into_response()
    } else {
        err.into_response()
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
