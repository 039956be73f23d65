//! Remote runs keep the stream contract: same chunks as a local run, replay from any entry id,
//! several readers, the wire fields of DESIGN.md §3, TTL after the terminal, deadlines.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use loom_core::{ChunkType, ErrorCode, RunOptions};
use loom_redis::{Client, ClientOptions, WorkerOptions};
use serde_json::json;
use support::*;

#[tokio::test]
async fn local_and_remote_runs_give_the_same_chunks() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let runtime = runtime(&probe);
    let worker = RunningWorker::spawn(&client, runtime.clone(), WorkerOptions::default());
    let invoker = client.invoker();

    let cases = [
        (
            "batch",
            json!({ "count": 250, "batch_size": 50, "delay_ms": 0 }),
        ),
        ("echo", json!({ "hello": ["world", null, 1.5] })),
        ("echo", json!(null)),
        ("ticker", json!({ "count": 40, "delay_ms": 1 })),
        ("batch", json!({ "batch_size": 0 })),
        ("team-demo", json!({ "topic": "x" })),
    ];
    for (actor, input) in cases {
        let run_id = loom_core::new_run_id();
        let options = || RunOptions {
            run_id: Some(run_id.clone()),
            ..RunOptions::default()
        };
        let local = collect(30, runtime.stream(actor, input.clone(), options()).unwrap()).await;
        let remote = invoker
            .stream(actor, input.clone(), options())
            .await
            .unwrap();
        assert_eq!(remote.run_id(), run_id);
        let remote = collect(30, remote).await;
        assert_contract(&remote);
        if actor == "team-demo" {
            // Members interleave by timing: the same chunks, but maybe in another order.
            let key = |c: &loom_core::StreamChunk| {
                let mut c = c.clone();
                c.seq = 0;
                c.to_json()
            };
            let mut l: Vec<_> = local.iter().map(key).collect();
            let mut r: Vec<_> = remote.iter().map(key).collect();
            l.sort();
            r.sort();
            assert_eq!(l, r);
        } else {
            assert_eq!(local, remote, "{actor} {input}");
        }
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_malformed_url_is_bad_input_and_an_unreachable_server_is_upstream() {
    let err = loom_redis::Client::connect("http://nope")
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(
        err.to_string().contains("must start with redis://"),
        "{err}"
    );
    let err = loom_redis::Client::connect("redis://127.0.0.1:1,,redis://127.0.0.1:2")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("entry 2 of 3 in the list): it is empty"),
        "{err}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = within(
        20,
        loom_redis::Client::connect(&format!("redis://127.0.0.1:{port}/")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Upstream, "{err}");
    // A URL naming something that answers, but not in RESP (a web server): bad input, named as
    // such, not a parser's complaint about its bytes.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = web.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = web.accept().await {
            let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, answer).await;
        }
    });
    let err = within(20, loom_redis::Client::connect(&format!("redis://{addr}/")))
        .await
        .unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("does not speak Redis"), "{err}");
}

#[tokio::test]
async fn entries_carry_design_fields_in_order_and_get_a_ttl_after_the_terminal() {
    let server = RedisServer::start();
    let mut options = fast_options();
    options.stream_ttl = Duration::from_secs(777);
    let client = client(&server, options).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let chunks = client
        .invoker()
        .stream("ticker", json!({ "count": 3 }), RunOptions::default())
        .await
        .unwrap();
    let run_id = chunks.run_id().to_owned();
    let chunks = collect(30, chunks).await;
    assert_eq!(chunks.len(), 5);

    let mut plain = server.plain();
    let key = client.keys().stream(&run_id);
    // `<prefix>stream:{<bucket tag>}:<run id>`.
    let tagged = key
        .strip_prefix(&format!("{}stream:{{", client.keys().prefix()))
        .and_then(|k| k.strip_suffix(&format!("}}:{run_id}")));
    assert!(tagged.is_some_and(|t| t.starts_with('b')), "{key}");
    let entries = entries(&mut plain, &key);
    assert_eq!(entries.len(), 5);
    let names = |i: usize| {
        entries[i]
            .1
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(0), ["type", "data", "seq"]);
    assert_eq!(names(1), ["type", "data", "seq"]);
    assert_eq!(entries[1].1[0].1, "data");
    assert_eq!(entries[1].1[1].1, r#"{"token":"t0"}"#);
    assert_eq!(entries[1].1[2].1, "1");
    assert_eq!(entries[4].1[0].1, "complete");

    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut plain).unwrap();
    assert!(ttl > 700 && ttl <= 777, "ttl {ttl}");
    let lease: bool = redis::cmd("EXISTS")
        .arg(client.keys().lease(&run_id))
        .query(&mut plain)
        .unwrap();
    assert!(!lease, "the lease is deleted with the terminal chunk");
    // The request is acknowledged and removed from its queue (just after the terminal chunk
    // is written, which the reader may see first).
    within(5, async {
        loop {
            let queued: u64 = redis::cmd("XLEN")
                .arg(client.keys().queue("ticker", 0))
                .query(&mut plain)
                .unwrap();
            if queued == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_stream_replays_from_any_entry_id_and_serves_two_readers() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let (run_id, first, second) = read_twice(&client).await;
    // From the terminal entry, or `$` after the end: nothing, at once.
    let last = first[31].id.unwrap().to_string();
    assert!(collect(2, client.tail(&run_id, Some(&last)).await.unwrap())
        .await
        .is_empty());
    assert!(collect(2, client.tail(&run_id, Some("$")).await.unwrap())
        .await
        .is_empty());
    // Past the last entry: no such entry, refused as bad input.
    assert!(client
        .tail(&run_id, Some("99999999999999-0"))
        .await
        .unwrap_err()
        .is_bad_input());
    // From the start again, after it ended.
    assert_eq!(
        collect(10, client.tail(&run_id, Some("0")).await.unwrap()).await,
        second
    );

    // Unknown stream and bad ids are typed errors.
    let missing = client
        .tail(&loom_core::new_run_id(), None)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);
    let bad = client.tail(&run_id, Some("12-x")).await.unwrap_err();
    assert!(bad.is_bad_input());
    worker.stop().await;
}

#[tokio::test]
async fn a_remote_run_past_its_deadline_ends_with_timeout() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());

    let options = RunOptions {
        timeout: Some(Duration::from_millis(300)),
        ..RunOptions::default()
    };
    let chunks = client
        .invoker()
        .stream(
            "ticker",
            json!({ "count": 1000, "delay_ms": 20 }),
            options.clone(),
        )
        .await
        .unwrap();
    let chunks = collect(10, chunks).await;
    assert_contract(&chunks);
    let last = chunks.last().unwrap();
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::Timeout);
    worker.stop().await;

    // With no worker at all, the reader itself ends it at the deadline (plus grace).
    let chunks = client
        .invoker()
        .stream("ticker", json!({ "count": 1 }), options)
        .await
        .unwrap();
    let chunks = collect(10, chunks).await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].error.as_ref().unwrap().code, ErrorCode::Timeout);
}

#[tokio::test]
async fn a_database_number_in_the_url_is_used_by_every_connection() {
    let server = RedisServer::start_own();
    let url = format!("{}3", server.url());
    let client = within(10, Client::connect_with(&url, fast_options()))
        .await
        .expect("connect");
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    // The worker's blocking read and the reader's take their own connections: they must
    // read database 3 too, or the run is never taken or never seen.
    let run = ticker(&client, 3, 1).await;
    let key = client.keys().stream(run.run_id());
    let chunks = collect(20, run).await;
    assert_contract(&chunks);
    assert_eq!(chunks.last().map(|c| c.kind), Some(ChunkType::Complete));
    let mut plain = server.plain();
    let exists = |conn: &mut redis::Connection, db: i64| -> i64 {
        redis::cmd("SELECT").arg(db).exec(conn).expect("SELECT");
        redis::cmd("EXISTS").arg(&key).query(conn).expect("EXISTS")
    };
    assert_eq!(exists(&mut plain, 3), 1);
    assert_eq!(exists(&mut plain, 0), 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_unix_socket_url_works_for_every_connection() {
    let socket = std::env::temp_dir().join(format!("loom-test-{}.sock", uuid::Uuid::new_v4()));
    let path = socket.to_str().expect("a UTF-8 path").to_owned();
    let server =
        RedisServer::start_own_with(&["--save", "", "--appendonly", "no", "--unixsocket", &path]);
    let client = within(
        10,
        Client::connect_with(&format!("unix://{path}"), fast_options()),
    )
    .await
    .expect("connect over the socket");
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let chunks = collect(20, ticker(&client, 3, 1).await).await;
    assert_contract(&chunks);
    assert_eq!(chunks.last().map(|c| c.kind), Some(ChunkType::Complete));
    worker.stop().await;
    drop(server);
    let _ = std::fs::remove_file(&socket);
}

/// A `redis-server` of the test's own whose slow log keeps every command, for [`xreads`].
fn logging_every_command() -> RedisServer {
    RedisServer::start_own_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--slowlog-log-slower-than",
        "0",
        "--slowlog-max-len",
        "1000000",
    ])
}

/// The `COUNT` of each `XREAD` in `server`'s slow log (it logs every command here), and how
/// many streams it named.
fn xreads(server: &RedisServer) -> Vec<(usize, usize)> {
    let mut conn = server.plain();
    let log: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .query(&mut conn)
        .unwrap();
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let mut named = Vec::new();
    for entry in log {
        let redis::Value::Array(entry) = entry else {
            continue;
        };
        let Some(redis::Value::Array(args)) = entry.get(3) else {
            continue;
        };
        if args.first().map(text).as_deref() != Some("XREAD") {
            continue;
        }
        // A long command is logged as its first 31 arguments and "... (N more arguments)".
        let mut total = args.len();
        if let Some(more) = args.last().map(text) {
            if let Some(n) = more.strip_prefix("... (").and_then(|m| m.split(' ').next()) {
                total += n.parse::<usize>().unwrap() - 1;
            }
        }
        // XREAD COUNT n BLOCK ms STREAMS, then the keys and as many ids.
        let count = args.get(2).map(text).and_then(|n| n.parse().ok());
        named.push((count.unwrap_or(0), total.saturating_sub(6) / 2));
    }
    named
}

#[tokio::test]
async fn a_process_reading_many_streams_waits_on_bells_and_misses_nothing() {
    let server = logging_every_command();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::with_concurrency(&client, &probe, 128);
    // A stream read alone is read directly: nobody keeps a bell, so its writes ring none.
    let alone = ticker(&client, 3, 0).await;
    let run_id = alone.run_id().to_owned();
    assert_completes(&collect(10, alone).await);
    let bell = client.keys().bell(&run_id);
    let mut plain = server.plain();
    let exists: bool = redis::cmd("EXISTS").arg(&bell).query(&mut plain).unwrap();
    assert!(!exists, "{bell} exists with no reader waiting on it");
    // More streams than one reader names in an `XREAD`, started one after the other, each
    // ticking 30 times: a chunk arrives every few hundred microseconds, on one stream or
    // another, for about a second.
    let streams = 100;
    let mut live = Vec::with_capacity(streams);
    for _ in 0..streams {
        live.push(ticker(&client, 30, 30).await);
    }
    // The first stream's reader takes nothing until the others are done: the hub leaves it
    // out while its channel is full, and must read it again from where it stopped.
    let kept = client.keys().bell(live[1].run_id());
    let first = live.remove(0);
    let mut all = futures::future::join_all(live.into_iter().map(|c| collect(60, c))).await;
    all.push(collect(60, first).await);
    for chunks in all {
        assert_completes(&chunks);
        assert_contract(&chunks);
    }
    worker.stop().await;
    // The bells the reader waited on are kept with a TTL, and go once nobody renews them.
    let ttl: i64 = redis::cmd("PTTL").arg(&kept).query(&mut plain).unwrap();
    assert!(ttl > 0, "{kept}: PTTL {ttl}");
    // Once it reads more than a few dozen, the reader's `XREAD`s name the bells and the few
    // streams they named, not every stream (only the switch and the periodic full read do).
    let named: Vec<usize> = xreads(&server).into_iter().map(|(_, n)| n).collect();
    let wide = named.iter().filter(|n| **n > 64).count();
    let narrow = named.iter().filter(|n| **n <= 32).count();
    assert!(
        narrow > 4 * wide.max(1),
        "{wide} XREADs named more than 64 streams, {narrow} at most 32: {named:?}"
    );
}

#[tokio::test]
async fn many_long_streams_replayed_at_once_arrive_whole_in_replies_of_bounded_size() {
    let server = logging_every_command();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::with_concurrency(&client, &probe, 128);
    let streams = 100;
    let mut runs = Vec::with_capacity(streams);
    for _ in 0..streams {
        runs.push(ticker(&client, 1000, 0).await);
    }
    let ids: Vec<String> = runs.iter().map(|c| c.run_id().to_owned()).collect();
    let first = futures::future::join_all(runs.into_iter().map(|c| collect(60, c))).await;
    for chunks in &first {
        assert_completes(chunks);
    }
    worker.stop().await;
    // Every stream again from its start, all at once, by one more process: 100,000 entries
    // waiting, more per stream than one `XREAD` of all of them asks for. The streams join
    // that process's reads as their tails open: most times one read names more than 64 of
    // them (its budget must then cut its COUNT), but a read may start before half of them
    // joined; up to three processes try.
    let mut wide = Vec::new();
    for _ in 0..3 {
        let _: () = redis::cmd("SLOWLOG")
            .arg("RESET")
            .query(&mut server.plain())
            .unwrap();
        let options = ClientOptions {
            prefix: client.keys().prefix().to_owned(),
            ..fast_options()
        };
        let again = support::client(&server, options).await;
        let tails = futures::future::join_all(ids.iter().map(|id| again.tail(id, None))).await;
        let read = futures::future::join_all(
            tails
                .into_iter()
                .map(|tail| collect(60, tail.expect("tail"))),
        )
        .await;
        // Each as it was read live: 1,002 chunks, or more where a worker starved past its
        // lease on a loaded machine re-ran the run.
        for (chunks, live) in read.iter().zip(&first) {
            assert!(chunks.len() >= 1002, "{}", chunks.len());
            assert_eq!(chunks, live);
            assert_contract(chunks);
        }
        // No `XREAD` asked for more than its budget in all (or 16 a stream).
        let asked = xreads(&server);
        for &(count, named) in &asked {
            assert!(
                count * named <= (64 * 1024).max(16 * named),
                "COUNT {count} over {named} streams"
            );
        }
        wide = asked.into_iter().filter(|(_, named)| *named > 64).collect();
        if !wide.is_empty() {
            break;
        }
    }
    assert!(!wide.is_empty(), "no read named more than 64 streams");
}

#[tokio::test]
async fn streams_written_without_ringing_their_bell_are_read_all_the_same() {
    let server = RedisServer::start();
    // `read_block` 500 ms: how often a process reading on bells reads every stream.
    let client = client(&server, fast_options()).await;
    let mut plain = server.plain();
    let keys = client.keys();
    let ids: Vec<String> = (0..80).map(|_| loom_core::new_run_id()).collect();
    let add = |plain: &mut redis::Connection, id: &str, seq: u64, kind: &str, data: &str| {
        let _: String = redis::cmd("XADD")
            .arg(keys.stream(id))
            .arg(format!("{}-1", seq + 1))
            .arg(&["type", kind, "data", data, "seq", &seq.to_string()])
            .query(plain)
            .unwrap();
    };
    for id in &ids {
        // A live lease: the readers wait for the run rather than call its worker lost.
        let _: () = redis::cmd("SET")
            .arg(keys.lease(id))
            .arg("someone")
            .arg("PX")
            .arg(60_000)
            .query(&mut plain)
            .unwrap();
        add(&mut plain, id, 0, "start", "{}");
    }
    let mut tails = Vec::new();
    for id in &ids {
        tails.push(client.tail(id, None).await.unwrap());
    }
    // Every reader has its start, so all 80 streams are joined and read on their bells.
    for tail in &mut tails {
        let start = within(10, tail.next()).await.unwrap();
        assert_eq!(start.kind, ChunkType::Start);
    }
    // Written as a client that does not ring the bells would write: only the hub's read of
    // every stream once per `read_block` can find these.
    for id in &ids {
        add(&mut plain, id, 1, "data", r#"{"token":"x"}"#);
        add(&mut plain, id, 2, "complete", "{}");
    }
    let rest = futures::future::join_all(tails.into_iter().map(|t| collect(10, t))).await;
    for chunks in rest {
        let kinds: Vec<ChunkType> = chunks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChunkType::Data, ChunkType::Complete], "{chunks:?}");
    }
}

#[tokio::test]
async fn bells_redis_refuses_to_keep_cost_the_readers_nothing_but_the_saving() {
    let server = RedisServer::start_own();
    let client = client(&server, fast_options()).await;
    let mut plain = server.plain();
    // Every bucket's bell is a key of another type: ringing and keeping one fail.
    let mut bells = std::collections::HashSet::new();
    while bells.len() < loom_redis::BUCKETS {
        bells.insert(client.keys().bell(&loom_core::new_run_id()));
    }
    for bell in &bells {
        let _: () = redis::cmd("SET")
            .arg(bell)
            .arg("not a stream")
            .query(&mut plain)
            .unwrap();
    }
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::with_concurrency(&client, &probe, 128);
    // Enough streams that the reader would wait on bells: it reads them directly instead,
    // and the writes that cannot ring are written all the same.
    let mut live = Vec::new();
    for _ in 0..80 {
        live.push(ticker(&client, 20, 10).await);
    }
    let all = futures::future::join_all(live.into_iter().map(|c| collect(20, c))).await;
    for chunks in all {
        assert_completes(&chunks);
        assert_contract(&chunks);
    }
    worker.stop().await;
}
