//! Bad input never reaches Redis as a key, and entries Loom cannot read end a stream with an
//! error naming the entry — never a panic, never a skip.

mod support;

use std::sync::Arc;

use loom_core::{ChunkType, ErrorCode, Invoker, RunOptions};
use loom_redis::{Publisher, Worker, WorkerOptions};
use serde_json::json;
use support::*;

const HOSTILE: &[&str] = &["", "*", "a*", "{x}", "a}b", "a:b", "a b", "a\nb", "a\u{1}b"];

#[tokio::test]
async fn hostile_names_are_rejected_before_they_become_keys() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let invoker = client.invoker();
    let long = "x".repeat(129);
    for name in HOSTILE.iter().copied().chain([long.as_str()]) {
        let err = invoker
            .stream(name, json!({}), RunOptions::default())
            .await
            .unwrap_err();
        assert!(err.is_bad_input(), "{name:?}: {err}");
        let err = Invoker::stream(&invoker, name, json!({}), RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadInput);
        assert!(!invoker.knows(name));
        let run = RunOptions {
            run_id: Some(name.to_owned()),
            ..RunOptions::default()
        };
        assert!(invoker
            .stream("echo", json!({}), run)
            .await
            .unwrap_err()
            .is_bad_input());
        assert!(client.tail(name, None).await.unwrap_err().is_bad_input());
        assert!(client.cancel(name).await.unwrap_err().is_bad_input());
        assert!(Publisher::start(&client, name, "owner")
            .unwrap_err()
            .is_bad_input());
        assert!(loom_redis::validate_name(name).is_err());
    }
    // A worker asked to serve a hostile or unknown actor type fails at once.
    let probe = Arc::new(Probe::default());
    for actor in ["a:b", "nope"] {
        let options = WorkerOptions {
            actors: vec![actor.to_owned()],
            ..WorkerOptions::default()
        };
        let worker = Worker::new(client.clone(), runtime(&probe), options);
        let err = within(5, worker.run(std::future::pending()))
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), ErrorCode::BadInput | ErrorCode::NotFound),
            "{err}"
        );
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.plain())
        .unwrap();
    assert!(
        keys.iter().all(|k| !k.starts_with(client.keys().prefix())),
        "{keys:?}"
    );
}

#[tokio::test]
async fn an_undecodable_entry_ends_the_read_with_an_error_naming_it() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut plain = server.plain();
    let run_id = loom_core::new_run_id();
    let key = client.keys().stream(&run_id);
    let add = |plain: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(fields)
            .query(plain)
            .unwrap()
    };
    add(
        &mut plain,
        &[("type", "start"), ("data", "{}"), ("seq", "0")],
    );
    add(
        &mut plain,
        &[
            ("type", "data"),
            ("data", "{\"token\":\"a\"}"),
            ("seq", "1"),
        ],
    );
    // The seed's plain client wrote this: no seq, data not JSON.
    let junk = add(&mut plain, &[("type", "data"), ("data", "hello")]);
    add(
        &mut plain,
        &[("type", "complete"), ("data", "{}"), ("seq", "3")],
    );

    let chunks = collect(10, client.tail(&run_id, None).await.unwrap()).await;
    assert_eq!(chunks.len(), 3);
    let last = &chunks[2];
    assert_eq!(last.kind, ChunkType::Error);
    assert_eq!(last.seq, 2);
    let error = last.error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains(&junk), "{}", error.message);

    // A jump in seq is not skipped over either.
    let run_id = loom_core::new_run_id();
    let key = client.keys().stream(&run_id);
    let add = |plain: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(fields)
            .query(plain)
            .unwrap()
    };
    add(
        &mut plain,
        &[("type", "start"), ("data", "{}"), ("seq", "0")],
    );
    let jump = add(&mut plain, &[("type", "data"), ("data", "1"), ("seq", "5")]);
    let chunks = collect(10, client.tail(&run_id, None).await.unwrap()).await;
    assert_eq!(chunks.len(), 2);
    let error = chunks[1].error.as_ref().unwrap();
    assert_eq!(error.code, ErrorCode::Internal);
    assert!(error.message.contains(&jump), "{}", error.message);
}

#[tokio::test]
async fn an_unreadable_request_is_dropped_without_stopping_the_worker() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut plain = server.plain();
    let queue = client.keys().queue("echo", 0);
    let _: String = redis::cmd("XADD")
        .arg(&queue)
        .arg("*")
        .arg(&[("run_id", "a:b"), ("actor", "echo"), ("input", "{")])
        .query(&mut plain)
        .unwrap();
    // The worker goes on serving.
    let chunks = client
        .invoker()
        .stream("echo", json!({ "ok": true }), RunOptions::default())
        .await
        .unwrap();
    let chunks = collect(10, chunks).await;
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    assert!(worker.is_running());
    worker.stop().await;
}

#[tokio::test]
async fn a_forged_request_for_an_actor_the_worker_does_not_serve_is_refused() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    // The runtime has `echo`, but this worker serves only `ticker`.
    let worker = RunningWorker::spawn(
        &client,
        runtime(&probe),
        WorkerOptions {
            actors: vec!["ticker".to_owned()],
            ..WorkerOptions::default()
        },
    );
    let mut plain = server.plain();
    let run_id = "forged-0123456789";
    let _: String = redis::cmd("XADD")
        .arg(client.keys().queue("ticker", 0))
        .arg("*")
        .arg(&[
            ("run_id", run_id),
            ("actor", "echo"),
            ("input", r#"{"secret":1}"#),
            ("timeout_ms", "5000"),
        ])
        .query(&mut plain)
        .unwrap();
    let entries = client.invoker().attach(run_id, None).await.unwrap();
    let chunks: Vec<_> = within(10, futures::StreamExt::collect::<Vec<_>>(entries)).await;
    let last = &chunks.last().unwrap().chunk;
    assert_eq!(last.kind, ChunkType::Error, "{chunks:?}");
    assert_eq!(last.error.as_ref().unwrap().code, ErrorCode::NotFound);
    assert!(
        chunks
            .iter()
            .all(|e| e.chunk.data != Some(json!({ "secret": 1 }))),
        "echo never ran"
    );
    worker.stop().await;
}

/// Another client's request entries whose names are valid but whose other fields are not:
/// each ends its own run at once with `bad_input` saying why, and the worker serves on.
#[tokio::test]
async fn an_unreadable_request_naming_its_run_ends_that_run_with_bad_input() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let mut plain = server.plain();
    let cases: [(&str, &[u8], &[u8]); 4] = [
        ("'input'", b"{\"cut", b"5000"),
        ("'input'", b"\"a\xFFb\"", b"5000"),
        ("'timeout_ms'", b"{}", b"soon"),
        ("'timeout_ms'", b"{}", b"-1"),
    ];
    for (named, input, timeout_ms) in cases {
        let run_id = loom_core::new_run_id();
        let _: String = redis::cmd("XADD")
            .arg(client.keys().queue("echo", 0))
            .arg("*")
            .arg("run_id")
            .arg(&run_id)
            .arg("actor")
            .arg("echo")
            .arg("input")
            .arg(input)
            .arg("timeout_ms")
            .arg(timeout_ms)
            .query(&mut plain)
            .unwrap();
        let entries = client.invoker().attach(&run_id, None).await.unwrap();
        let chunks: Vec<_> = within(10, futures::StreamExt::collect::<Vec<_>>(entries)).await;
        let chunks: Vec<_> = chunks.into_iter().map(|e| e.chunk).collect();
        assert_contract(&chunks);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        let error = chunks[1].error.as_ref().expect("an error");
        assert_eq!(error.code, ErrorCode::BadInput, "{error:?}");
        assert!(
            error.message.starts_with("unreadable request:") && error.message.contains(named),
            "{named}: {}",
            error.message
        );
    }
    assert_eq!(probe.starts.load(std::sync::atomic::Ordering::SeqCst), 0);
    let invoker = client.invoker();
    let done = invoker.run("echo", json!({ "ok": true }), RunOptions::default());
    assert_eq!(within(10, done).await.unwrap(), json!({ "ok": true }));
    worker.stop().await;
}

/// Entries another client wrote into a run's stream that are not chunks, or not the next
/// chunk: each ends the read with `internal` naming the entry, after every chunk before it.
#[tokio::test]
async fn malformed_stream_entries_end_the_read_naming_the_entry_after_what_came_before() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut plain = server.plain();
    let cases: [&[(&str, &[u8])]; 7] = [
        &[
            ("type", b"data"),
            ("data", b"{\"token\":\"cu"),
            ("seq", b"2"),
        ],
        &[("type", b"data"), ("data", b"\"a\xFF\""), ("seq", b"2")],
        &[("type", b"bogus"), ("data", b"{}"), ("seq", b"2")],
        &[("type", b"data"), ("data", b"{}"), ("seq", b"two")],
        &[("data", b"{}"), ("seq", b"2")],
        &[("type", b"error"), ("error", b"not json"), ("seq", b"2")],
        // A rewrite of seq 1 with other text: never hidden as a "duplicate".
        &[
            ("type", b"data"),
            ("data", b"{\"token\":\"B\"}"),
            ("seq", b"1"),
        ],
    ];
    for fields in cases {
        let run_id = loom_core::new_run_id();
        let key = client.keys().stream(&run_id);
        let mut add = |fields: &[(&str, &[u8])]| -> String {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&key).arg("*");
            for (name, value) in fields {
                cmd.arg(*name).arg(*value);
            }
            cmd.query(&mut plain).unwrap()
        };
        add(&[("type", b"start"), ("data", b"{}"), ("seq", b"0")]);
        add(&[
            ("type", b"data"),
            ("data", b"{\"token\":\"A\"}"),
            ("seq", b"1"),
        ]);
        let junk = add(fields);
        add(&[("type", b"complete"), ("data", b"{}"), ("seq", b"3")]);

        let chunks = collect(10, client.tail(&run_id, None).await.unwrap()).await;
        assert_contract(&chunks);
        assert_eq!(chunks.len(), 3, "{fields:?}: {chunks:?}");
        assert_eq!(chunks[1].token(), Some("A"));
        let error = chunks[2].error.as_ref().expect("an error");
        assert_eq!(error.code, ErrorCode::Internal, "{fields:?}");
        assert!(
            error.message.contains(&junk),
            "{fields:?}: {}",
            error.message
        );
    }
}

/// A 16 MB chunk written by another client is read whole, and the run goes on after it.
#[tokio::test]
async fn an_oversized_entry_is_read_whole_and_the_run_goes_on() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let mut plain = server.plain();
    let run_id = loom_core::new_run_id();
    let key = client.keys().stream(&run_id);
    let big = "x".repeat(16 * 1024 * 1024);
    let data = serde_json::to_string(&json!({ "token": big })).unwrap();
    for (seq, kind, data) in [
        ("0", "start", "{}"),
        ("1", "data", data.as_str()),
        ("2", "complete", "{}"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg(&[("type", kind), ("data", data), ("seq", seq)])
            .query(&mut plain)
            .unwrap();
    }
    let chunks = collect(20, client.tail(&run_id, None).await.unwrap()).await;
    assert_contract(&chunks);
    assert_eq!(chunks[1].token().map(str::len), Some(big.len()));
    assert_eq!(chunks[2].kind, ChunkType::Complete);
}
