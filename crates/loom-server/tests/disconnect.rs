//! Disconnect is not cancel (DESIGN.md §3, §4): direct streams, detached runs, re-attaching,
//! and the graceful shutdown's terminal chunks.

mod support;

use std::time::Duration;

use loom_server::ServerConfig;
use serde_json::json;
use support::*;

fn short_grace(grace_ms: u64) -> ServerConfig {
    ServerConfig {
        disconnect_grace: Duration::from_millis(grace_ms),
        ..ServerConfig::default()
    }
}

/// Opens a direct stream, reads its `start` chunk, and returns the run id and the reader.
async fn open_direct(server: &TestServer, body: serde_json::Value) -> (String, SseReader) {
    let response = server.post("/v1/actors/batch/stream", &body).await;
    assert_eq!(response.status(), 200);
    let id = run_id_of(&response);
    let mut reader = SseReader::new(response);
    let start = reader.next_chunk().await.expect("start chunk");
    assert_eq!(start.data.unwrap()["data"]["run_id"], id.as_str());
    (id, reader)
}

#[tokio::test]
async fn a_direct_stream_is_cancelled_after_its_client_drops() {
    let server = TestServer::start(short_grace(100)).await;
    let (id, reader) = open_direct(&server, json!({ "input": slow_batch(1000, 20) })).await;
    drop(reader);
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "cancelled");
}

#[tokio::test]
async fn on_disconnect_continue_keeps_a_direct_stream_running() {
    let server = TestServer::start(short_grace(50)).await;
    // 20 batches of 20 ms: it outlives the grace several times over.
    let body = json!({ "input": slow_batch(20, 20), "on_disconnect": "continue" });
    let (id, reader) = open_direct(&server, body).await;
    drop(reader);
    let status = server.finished(&id).await;
    assert_eq!(status["status"], "complete");
}

#[tokio::test]
async fn a_direct_stream_re_attached_within_the_grace_survives_its_clients_drop() {
    let server = TestServer::start(short_grace(2_000)).await;
    let (id, mut reader) = open_direct(&server, json!({ "input": slow_batch(40, 100) })).await;
    let cut = reader.next_chunk().await.unwrap().id.unwrap();
    drop(reader);
    let rejoin = server.resume(&format!("/v1/runs/{id}/stream"), cut).await;
    let frames = SseReader::new(rejoin).rest().await;
    // 40 batches of 100 ms: the run outlives the 2 s grace, so only the re-attached reader
    // kept it alive.
    assert_eq!(frames.first().unwrap().id, Some(cut + 1));
    assert_eq!(frames.last().unwrap().event.as_deref(), Some("complete"));
    assert_eq!(server.status(&id).await["status"], "complete");
}

#[tokio::test]
async fn a_detached_run_outlives_its_reader() {
    let server = TestServer::start(short_grace(10)).await;
    let id = server
        .detached(json!({ "actor": "batch", "input": slow_batch(10, 20) }))
        .await;
    let mut reader = SseReader::new(server.get(&format!("/v1/runs/{id}/stream")).await);
    reader.next_chunk().await.expect("start");
    drop(reader);
    assert_eq!(server.finished(&id).await["status"], "complete");
}

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_with_error_cancelled() {
    let mut server = TestServer::default_config().await;
    let (direct_id, mut direct) =
        open_direct(&server, json!({ "input": slow_batch(1000, 20) })).await;
    let detached = server
        .detached(json!({ "actor": "batch", "input": slow_batch(1000, 20) }))
        .await;
    let mut joined = SseReader::new(server.get(&format!("/v1/runs/{detached}/stream")).await);
    joined.next_chunk().await.expect("start");

    let (_, (direct_rest, joined_rest)) = tokio::join!(server.shut_down(), async {
        tokio::join!(direct.rest(), joined.rest())
    });
    for (id, rest) in [(direct_id, direct_rest), (detached, joined_rest)] {
        let last = rest.last().unwrap_or_else(|| panic!("{id}: no terminal"));
        assert_eq!(last.event.as_deref(), Some("error"), "{id}");
        let error = &last.data.as_ref().unwrap()["error"];
        assert_eq!(error["code"], "cancelled");
        // The shutdown is named, not a client.
        assert_eq!(
            error["message"], "cancelled: the server is shutting down",
            "{id}"
        );
    }
}
