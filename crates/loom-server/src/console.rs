//! The web console at `/`: one page, its script and style, and `loom-client` (the TypeScript
//! client, `clients/typescript/index.js`) as the module the page imports. Static files, built
//! into the binary, served without the API key (the page asks for it and sends it itself).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::ServerState;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");
const CLIENT: &str = include_str!("../../../clients/typescript/index.js");

/// `GET /`, `/console.js`, `/console.css` and `/loom-client.js`.
pub(crate) fn routes() -> Router<ServerState> {
    // No page of another site may frame the console (and its key) to steer clicks on it.
    let file = |content_type: &'static str, body: &'static str| {
        get(move || async move {
            let headers = [
                (header::CONTENT_TYPE, content_type),
                (header::X_FRAME_OPTIONS, "DENY"),
                (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            ];
            (headers, body).into_response()
        })
    };
    Router::new()
        .route("/", file("text/html; charset=utf-8", INDEX))
        .route(
            "/console.js",
            file("text/javascript; charset=utf-8", SCRIPT),
        )
        .route("/console.css", file("text/css; charset=utf-8", STYLE))
        .route(
            "/loom-client.js",
            file("text/javascript; charset=utf-8", CLIENT),
        )
}
