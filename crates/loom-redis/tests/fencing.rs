//! Fencing: a writer that no longer owns its run (another attempt's token in the lease) writes
//! nothing more and its run stops; nothing is appended after a terminal chunk, even by a
//! writer that still holds the lease.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::SinkExt;
use loom_core::{ChunkType, ErrorCode, Output, StreamChunk};
use loom_redis::{Client, Publisher, WorkerOptions};
use serde_json::json;
use support::*;
use tokio::task::JoinHandle;

fn conn(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connect")
}

fn set_lease(conn: &mut redis::Connection, client: &Client, run_id: &str, owner: &str, ms: u64) {
    redis::cmd("SET")
        .arg(client.keys().lease(run_id))
        .arg(owner)
        .arg("PX")
        .arg(ms)
        .query::<()>(conn)
        .expect("SET lease");
}

fn start_chunk(run_id: &str) -> StreamChunk {
    let mut start = StreamChunk::new(ChunkType::Start, 0);
    start.data = Some(json!({ "run_id": run_id, "actor": "ticker" }));
    start
}

/// Publishes, in a task of its own, what is sent on the channel returned.
fn publishing(
    publisher: Publisher,
) -> (
    mpsc::Sender<StreamChunk>,
    JoinHandle<Result<(), loom_redis::Error>>,
) {
    let (tx, rx) = mpsc::channel(0);
    (tx, tokio::spawn(publisher.publish(rx)))
}

/// Sends token chunks from `seq` on until the writer refuses them (it stopped reading).
async fn send_until_refused(tx: &mut mpsc::Sender<StreamChunk>, mut seq: u64) {
    within(10, async {
        while tx.send(Output::token("late").into_chunk(seq)).await.is_ok() {
            seq += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until the stream `key` has `n` entries.
async fn wait_for_len(conn: &mut redis::Connection, key: &str, n: usize) {
    within(10, async {
        while entries(conn, key).len() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The owner token of the first attempt in these tests.
const FIRST: &str = "w1:1:0-1";

/// A run on a server of the test's whose lease [`FIRST`] holds for a minute, and that
/// attempt's writer, which has written the run's `start`.
struct Started {
    _server: RedisServer,
    client: Client,
    conn: redis::Connection,
    run_id: String,
    key: String,
    tx: mpsc::Sender<StreamChunk>,
    writer: JoinHandle<Result<(), loom_redis::Error>>,
}

async fn started() -> Started {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut conn = conn(&server);
    let run_id = loom_core::new_run_id();
    let key = client.keys().stream(&run_id);
    set_lease(&mut conn, &client, &run_id, FIRST, 60_000);
    let (mut tx, writer) =
        publishing(Publisher::start(&client, &run_id, FIRST).expect("publisher"));
    within(5, tx.send(start_chunk(&run_id)))
        .await
        .expect("send start");
    wait_for_len(&mut conn, &key, 1).await;
    Started {
        _server: server,
        client,
        conn,
        run_id,
        key,
        tx,
        writer,
    }
}

#[tokio::test]
async fn a_writer_whose_lease_another_attempt_took_is_fenced_and_writes_nothing() {
    let mut run = started().await;

    // Attempt 2 (another worker) takes the run over.
    set_lease(&mut run.conn, &run.client, &run.run_id, "w2:2:0-1", 60_000);
    send_until_refused(&mut run.tx, 1).await;
    within(10, run.writer)
        .await
        .expect("joined")
        .expect("a fenced writer stops without an error");

    let written = entries(&mut run.conn, &run.key);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].1[0], ("type".to_owned(), "start".to_owned()));
    let lease: Option<String> = redis::cmd("GET")
        .arg(run.client.keys().lease(&run.run_id))
        .query(&mut run.conn)
        .expect("GET lease");
    assert_eq!(
        lease.as_deref(),
        Some("w2:2:0-1"),
        "the new owner's lease is kept"
    );
}

#[tokio::test]
async fn a_worker_stops_a_run_whose_lease_another_attempt_took_and_writes_nothing_more() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut conn = conn(&server);
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let mut chunks = ticker(&client, 1000, 20).await;
    let run_id = chunks.run_id().to_owned();
    let key = client.keys().stream(&run_id);
    within(10, futures::StreamExt::next(&mut chunks))
        .await
        .expect("start");
    set_lease(&mut conn, &client, &run_id, "other:2:0-1", 60_000);

    within(10, async {
        while probe.stopped_at.lock().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let fenced_at = entries(&mut conn, &key).len();
    // Once the worker has stopped, none of its writers can write: what is in the stream then
    // is all it ever wrote.
    worker.stop().await;
    let written = entries(&mut conn, &key);
    assert_eq!(written.len(), fenced_at, "nothing written after the fence");
    assert!(
        written
            .iter()
            .all(|(_, f)| f[0].1 != "complete" && f[0].1 != "error"),
        "the fenced worker wrote no terminal: {written:?}"
    );
    drop(chunks);
}

#[tokio::test]
async fn nothing_is_appended_after_a_worker_lost_terminal_even_by_a_live_lease_holder() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut conn = conn(&server);
    let run_id = loom_core::new_run_id();
    let key = client.keys().stream(&run_id);
    // The old worker's lease lapses (its heartbeat stalled) while its publisher lives on.
    set_lease(&mut conn, &client, &run_id, FIRST, 300);
    let (mut tx, publishing) =
        publishing(Publisher::start(&client, &run_id, FIRST).expect("publisher"));
    within(5, tx.send(start_chunk(&run_id)))
        .await
        .expect("send start");
    wait_for_len(&mut conn, &key, 1).await;

    // A reader ends the run with error/worker_lost (the END_RUN script).
    let seen = collect(15, client.tail(&run_id, None).await.expect("tail")).await;
    let last = seen.last().expect("chunks");
    assert_eq!(
        last.error.as_ref().map(|e| e.code),
        Some(ErrorCode::WorkerLost),
        "{seen:?}"
    );

    // The old worker comes back holding its lease again: still nothing after the terminal.
    set_lease(&mut conn, &client, &run_id, FIRST, 60_000);
    send_until_refused(&mut tx, 1).await;
    within(10, publishing)
        .await
        .expect("joined")
        .expect("a fenced writer stops without an error");

    let written = entries(&mut conn, &key);
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[1].1[0], ("type".to_owned(), "error".to_owned()));
    assert!(written[1].1[3].1.contains("worker_lost"), "{written:?}");
}

/// Has the writer of [`started`] write `tokens` tokens ("a", `seq` 1 on) after its `start`,
/// and waits until they are in stream `key` and the writer is done.
async fn write_tokens_and_stop(
    conn: &mut redis::Connection,
    key: &str,
    mut tx: mpsc::Sender<StreamChunk>,
    writer: JoinHandle<Result<(), loom_redis::Error>>,
    tokens: u64,
) {
    for seq in 1..=tokens {
        within(5, tx.send(Output::token("a").into_chunk(seq)))
            .await
            .expect("send");
    }
    wait_for_len(conn, key, 1 + tokens as usize).await;
    drop(tx);
    within(10, writer).await.expect("joined").expect("written");
}

/// The `seq` of each entry of stream `key`, in order.
fn seqs_of(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    entries(conn, key)
        .into_iter()
        .map(|(_, fields)| {
            fields
                .into_iter()
                .find(|(name, _)| name == "seq")
                .map(|(_, seq)| seq)
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn a_writer_whose_seqs_another_attempt_wrote_first_is_fenced_not_taken_for_written() {
    let mut run = started().await;
    write_tokens_and_stop(&mut run.conn, &run.key, run.tx, run.writer, 3).await;

    // A second attempt holds the lease, but continues from an older look at the stream
    // (seq 2 on): its first batch finds seq 2 taken by the first attempt's chunks. That is
    // not this batch written before, so it writes nothing more.
    set_lease(&mut run.conn, &run.client, &run.run_id, "w2:2:0-1", 60_000);
    let (mut tx, second) =
        publishing(Publisher::start(&run.client, &run.run_id, "w2:2:0-1").expect("publisher"));
    within(5, tx.send(Output::token("b").into_chunk(2)))
        .await
        .expect("send");
    send_until_refused(&mut tx, 3).await;
    within(10, second)
        .await
        .expect("joined")
        .expect("a fenced writer stops without an error");
    assert_eq!(seqs_of(&mut run.conn, &run.key), ["0", "1", "2", "3"]);
}

#[tokio::test]
async fn a_batch_sent_again_after_its_reply_was_lost_is_not_written_twice_and_the_run_goes_on() {
    let mut run = started().await;
    write_tokens_and_stop(&mut run.conn, &run.key, run.tx, run.writer, 1).await;

    // The same attempt sends its last batch (seq 1) again, as after a lost reply: it is
    // recognised as written, and what follows is appended once.
    let (mut tx, again) =
        publishing(Publisher::start(&run.client, &run.run_id, FIRST).expect("publisher"));
    within(5, tx.send(Output::token("a").into_chunk(1)))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    within(5, tx.send(Output::token("b").into_chunk(2)))
        .await
        .expect("the writer goes on after the batch it found written");
    wait_for_len(&mut run.conn, &run.key, 3).await;
    drop(tx);
    within(10, again).await.expect("joined").expect("written");
    assert_eq!(seqs_of(&mut run.conn, &run.key), ["0", "1", "2"]);
}
