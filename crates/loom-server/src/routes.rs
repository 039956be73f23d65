//! The routes of DESIGN.md §3 ("HTTP API") and their handlers.
//!
//! Handlers turn a request into a [`StartRequest`] or a run lookup, then hand the run's log to
//! [`crate::sse`] (streams) or read it to the end (`/run`). Every failure before a stream
//! starts is an [`ApiError`].

use std::ops::ControlFlow;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use loom_core::{ChunkType, StreamChunk};
use serde_json::{json, Value};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::auth::{require_key, same_site};
use crate::backend::Through;
use crate::dialect;
use crate::error::ApiError;
use crate::extract::{
    cursor, input_or_empty, parse_timeout, Envelope, JoinQuery, LoomJson, LoomPath, RunRequest,
    StreamQuery, TraceParent,
};
use crate::runlog::RunTarget;
use crate::runs::StartRequest;
use crate::sse::{self, Overtaken, StreamGuards, RUN_ID_HEADER};
use crate::state::ServerState;
use crate::store::DisconnectPolicy;
use crate::tokens::TOKEN_TTL;

/// The HTTP API on `state`: every route of DESIGN.md §3 implemented here.
pub fn router(state: ServerState) -> Router {
    let body_limit = state.config().body_limit;
    let api = Router::new()
        .route("/v1/actors", get(list_actors))
        .route("/v1/workflows", get(list_workflows))
        .route("/v1/actors/{actor}/run", post(run_actor))
        .route(
            "/v1/actors/{actor}/stream",
            // Not `HEAD`, which a GET route answers too: a link checker's look must not start
            // a run.
            post(stream_actor)
                .get(stream_actor_get)
                .head(|| async { ([(header::ALLOW, "GET,POST")], ApiError::MethodNotAllowed) }),
        )
        .route("/v1/workflows/{name}/stream", post(stream_workflow))
        .route("/v1/runs", post(create_run).get(list_runs))
        .route("/v1/runs/{id}", get(run_status).delete(cancel_run))
        .route("/v1/runs/{id}/stream", get(join_run))
        .route("/v1/actors/{actor}/ws", get(crate::ws::actor_ws))
        .route("/v1/chat/completions", post(dialect::chat::completions))
        .route("/v1/models", get(dialect::chat::models))
        .route("/v1/models/{*id}", get(dialect::chat::model))
        .route("/v1/ag-ui/{*agent}", post(dialect::ag_ui::run))
        .route(
            "/v1/ai-sdk/{*agent}",
            post(dialect::ai_sdk::send).get(dialect::ai_sdk::resume),
        )
        .route("/v1/responses", post(dialect::responses::create))
        .route("/v1/responses/{id}", get(dialect::responses::retrieve))
        .route(
            "/v1/responses/{id}/cancel",
            post(dialect::responses::cancel),
        )
        .route("/metrics", get(metrics))
        .route("/v1/tokens", post(issue_token))
        .route_layer(from_fn_with_state(state.clone(), require_key))
        .route_layer(from_fn_with_state(state.clone(), same_site));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::console::routes())
        .merge(api)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit));
    let router = match cors(&state.config().cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// The CORS layer for `origins` (`*`: any); none when the list is empty (CORS off).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let valid = origins.iter().filter_map(|o| match HeaderValue::from_str(o) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring a CORS origin that is not a header value");
                None
            }
        });
        AllowOrigin::list(valid.collect::<Vec<_>>())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // Whatever a page's client sends (`Last-Event-ID`, `traceparent`, the openai
            // SDK's `x-stainless-*`): the origins are what CORS restricts here.
            .allow_headers(AllowHeaders::mirror_request())
            // `Retry-After` too: a page's client honours it on a 429 or a 503.
            .expose_headers([RUN_ID_HEADER, header::RETRY_AFTER]),
    )
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn metrics(State(state): State<ServerState>) -> Response {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, state.metrics_text()).into_response()
}

/// `POST /v1/tokens`: a short-lived token for `?token=`, `201 {token, expires_in}`.
async fn issue_token(State(state): State<ServerState>) -> Response {
    let body = json!({ "token": state.tokens().issue(), "expires_in": TOKEN_TTL.as_secs() });
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn list_actors(State(state): State<ServerState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "actors": state.runs().actors().await? })))
}

async fn list_workflows(State(state): State<ServerState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "workflows": state.runs().workflows().await? }),
    ))
}

/// `POST /v1/actors/{type}/run`: the run's `complete` data, or its error as a status.
async fn run_actor(
    State(state): State<ServerState>,
    LoomPath(actor): LoomPath,
    TraceParent(traceparent): TraceParent,
    LoomJson(envelope): LoomJson<Envelope>,
) -> Result<Response, ApiError> {
    let grace = state.config().disconnect_grace;
    let run = state
        .runs()
        .start(StartRequest {
            target: RunTarget::named(&actor),
            input: input_or_empty(envelope.input),
            timeout: parse_timeout(envelope.timeout.as_deref())?,
            policy: envelope.on_disconnect.policy(grace),
            traceparent,
        })
        .await?;
    // Dropped with this handler when the client goes away: the run is then cancelled like a
    // direct stream's.
    let _attachment = run.attach().await?;
    // Only the terminal matters, and a log always keeps it.
    let mut last = None;
    run.read_through(None, |read| {
        if let Through::Chunks(chunks, _) = read {
            last = chunks.last().cloned();
        }
        ControlFlow::Continue(())
    })
    .await?;
    let terminal: StreamChunk = last
        .filter(|c| c.kind.is_terminal())
        .and_then(|c| serde_json::from_slice(&c.json).ok())
        .ok_or_else(|| ApiError::ShuttingDown)?;
    match terminal.kind {
        ChunkType::Complete => {
            let mut response = Json(terminal.data.unwrap_or(Value::Null)).into_response();
            if let Ok(id) = run.id().parse() {
                response.headers_mut().insert(RUN_ID_HEADER, id);
            }
            Ok(response)
        }
        _ => Err(ApiError::Run(terminal.error_info().into())),
    }
}

/// `POST /v1/actors/{type}/stream`.
async fn stream_actor(
    State(state): State<ServerState>,
    LoomPath(actor): LoomPath,
    TraceParent(traceparent): TraceParent,
    LoomJson(envelope): LoomJson<Envelope>,
) -> Result<Response, ApiError> {
    direct_stream(&state, RunTarget::named(&actor), envelope, traceparent).await
}

/// `GET /v1/actors/{type}/stream?input=…` for a browser `EventSource`. A request with
/// `Last-Event-ID` is a reconnect, which never starts the actor again: it gets 204, which stops
/// `EventSource`; the run itself is resumed at `GET /v1/runs/{id}/stream`.
async fn stream_actor_get(
    State(state): State<ServerState>,
    LoomPath(actor): LoomPath,
    TraceParent(traceparent): TraceParent,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if headers.contains_key("last-event-id") {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let envelope = query.into_envelope()?;
    direct_stream(&state, RunTarget::named(&actor), envelope, traceparent).await
}

/// `POST /v1/workflows/{name}/stream`.
async fn stream_workflow(
    State(state): State<ServerState>,
    LoomPath(name): LoomPath,
    TraceParent(traceparent): TraceParent,
    LoomJson(envelope): LoomJson<Envelope>,
) -> Result<Response, ApiError> {
    direct_stream(&state, RunTarget::Workflow(name), envelope, traceparent).await
}

/// A run started for this response and streamed from its first chunk.
async fn direct_stream(
    state: &ServerState,
    target: RunTarget,
    envelope: Envelope,
    traceparent: Option<String>,
) -> Result<Response, ApiError> {
    let timeout = parse_timeout(envelope.timeout.as_deref())?;
    let permit = state.stream_permit()?;
    let run = state
        .runs()
        .start(StartRequest {
            target,
            input: input_or_empty(envelope.input),
            timeout,
            policy: envelope
                .on_disconnect
                .policy(state.config().disconnect_grace),
            traceparent,
        })
        .await?;
    let guards = StreamGuards {
        _attachment: run.attach().await?,
        _permit: permit,
    };
    let Some(feed) = run.open(None).await? else {
        // Only a cursor can be at the terminal chunk.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(sse::response(
        state,
        run.id(),
        (Vec::new(), feed),
        guards,
        Overtaken::Leave,
        sse::frames,
    ))
}

/// `POST /v1/runs`: a detached run, `201 {run_id, stream_url}`.
async fn create_run(
    State(state): State<ServerState>,
    TraceParent(traceparent): TraceParent,
    LoomJson(request): LoomJson<RunRequest>,
) -> Result<Response, ApiError> {
    let target = match (request.actor, request.workflow) {
        (Some(actor), None) => RunTarget::named(&actor),
        (None, Some(workflow)) => RunTarget::Workflow(workflow),
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of \"actor\" and \"workflow\"".into(),
            ))
        }
    };
    let run = state
        .runs()
        .start(StartRequest {
            target,
            input: input_or_empty(request.input),
            timeout: parse_timeout(request.timeout.as_deref())?,
            policy: DisconnectPolicy::Continue,
            traceparent,
        })
        .await?;
    let run_id = run.id();
    let body = json!({ "run_id": run_id, "stream_url": format!("/v1/runs/{run_id}/stream") });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_runs(State(state): State<ServerState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "runs": state.runs().recent().await? })))
}

async fn run_status(
    State(state): State<ServerState>,
    LoomPath(id): LoomPath,
) -> Result<Response, ApiError> {
    let run = state.runs().find(&id).await?;
    Ok(Json(run.info().await?).into_response())
}

/// How long `DELETE /v1/runs/{id}` waits for the run to end before it answers.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// `DELETE /v1/runs/{id}`: cancels the run (idempotent); `202` with its status once it has
/// ended (`cancelled`, or how it ended first), or still `running` when it did not end within
/// [`CANCEL_WAIT`] (a worker slow to hear of the cancel).
async fn cancel_run(
    State(state): State<ServerState>,
    LoomPath(id): LoomPath,
) -> Result<Response, ApiError> {
    let run = state.runs().find(&id).await?;
    run.cancel().await?;
    let reached = run.info().await?.last_seq;
    let ended = run.read_through(reached, |_| ControlFlow::Continue(()));
    if let Ok(Err(e)) = tokio::time::timeout(CANCEL_WAIT, ended).await {
        return Err(e);
    }
    Ok((StatusCode::ACCEPTED, Json(run.info().await?)).into_response())
}

/// `GET /v1/runs/{id}/stream`: joins a run from a cursor (DESIGN.md §3's cursor table).
async fn join_run(
    State(state): State<ServerState>,
    LoomPath(id): LoomPath,
    headers: HeaderMap,
    query: Result<Query<JoinQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let cursor = cursor(&query, &headers)?;
    let run = state.runs().find(&id).await?;
    if let Some(format) = &query.format {
        return dialect::rejoin(&state, &run, format, cursor, query.thread_id).await;
    }
    // Attach before looking, so a direct run's grace timer sees this reader.
    let attachment = run.attach().await?;
    let Some(feed) = run.open(cursor).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let guards = StreamGuards {
        _attachment: attachment,
        _permit: state.stream_permit()?,
    };
    if cursor.is_some() {
        state.metrics().resumed();
    }
    Ok(sse::response(
        &state,
        &id,
        (Vec::new(), feed),
        guards,
        Overtaken::Leave,
        sse::frames,
    ))
}
