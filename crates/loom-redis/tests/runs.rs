//! What servers share through Redis about runs: entry ids that are `seq`s (so a cursor is found
//! without reading from the start), run records, the recent-run index and the reader tally.

mod support;

use std::sync::Arc;

use loom_core::{ChunkType, RunOptions};
use loom_redis::{EntryId, WorkerOptions};
use serde_json::json;
use support::*;

#[tokio::test]
async fn the_chunk_of_seq_n_is_entry_n_1_and_a_reader_resumes_after_any_seq() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let stream = ticker(&client, 5, 0).await;
    let run_id = stream.run_id().to_owned();
    let chunks = within(10, collect(20, stream)).await;
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);

    let mut conn = server.plain();
    let ids: Vec<String> = entries(&mut conn, &client.keys().stream(&run_id))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let expected: Vec<String> = (0..chunks.len() as u64).map(|n| format!("{n}-1")).collect();
    assert_eq!(ids, expected);

    // Joining after seq 3 yields exactly the chunks with a greater seq.
    let joined = client
        .invoker()
        .attach(&run_id, Some(EntryId::of_seq(3)))
        .await
        .unwrap();
    let rest: Vec<_> = within(10, futures::StreamExt::collect::<Vec<_>>(joined)).await;
    let seqs: Vec<u64> = rest.iter().map(|e| e.chunk.seq).collect();
    let want: Vec<u64> = (4..chunks.len() as u64).collect();
    assert_eq!(seqs, want);
    assert_eq!(rest[0].id, Some(EntryId::of_seq(4)));
    worker.stop().await;
}

/// A run that ended is known exactly as long as its chunks: its record and reader set get
/// the stream's TTL with the terminal (their own, from queueing, adds the run's deadline), so
/// an expired run is never shown running. A cursor ahead of a live run's last entry waits for
/// the run to get there, and ends with nothing — not a false error — if the run ends first.
#[tokio::test]
async fn an_ended_runs_record_expires_with_its_stream_and_a_cursor_ahead_waits_for_the_run() {
    let server = RedisServer::start();
    let options = fast_options();
    let stream_ttl = options.stream_ttl.as_secs() as i64;
    let client = client(&server, options).await;
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let invoker = client.invoker();
    let stream = ticker(&client, 5, 100).await;
    let run_id = stream.run_id().to_owned();
    // Both joined before the run gets to seq 3: one is reached, the other never is.
    let ahead = invoker
        .attach(&run_id, Some(EntryId::of_seq(3)))
        .await
        .unwrap();
    let beyond = invoker
        .attach(&run_id, Some(EntryId::of_seq(50)))
        .await
        .unwrap();
    let chunks = within(10, collect(20, stream)).await;
    let last = chunks.last().unwrap().seq;
    let ahead: Vec<_> = within(10, futures::StreamExt::collect::<Vec<_>>(ahead)).await;
    let seqs: Vec<u64> = ahead.iter().map(|e| e.chunk.seq).collect();
    assert_eq!(seqs, (4..=last).collect::<Vec<_>>());
    // Soon after the run's end: no worker can take it further.
    let beyond: Vec<_> = within(4, futures::StreamExt::collect::<Vec<_>>(beyond)).await;
    assert!(beyond.is_empty(), "{beyond:?}");
    // Past the end of the finished run: nothing, at once.
    let past = invoker
        .attach(&run_id, Some(EntryId::of_seq(last + 5)))
        .await
        .unwrap();
    let past: Vec<_> = within(2, futures::StreamExt::collect::<Vec<_>>(past)).await;
    assert!(past.is_empty(), "{past:?}");

    let mut conn = server.plain();
    let record: i64 = redis::cmd("TTL")
        .arg(client.keys().run(&run_id))
        .query(&mut conn)
        .unwrap();
    assert!(record > 0 && record <= stream_ttl, "record TTL {record} s");
    worker.stop().await;
}

#[tokio::test]
async fn a_queued_run_has_a_record_at_once_and_its_last_chunk_once_it_ends() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let invoker = client.invoker();
    let first = invoker
        .submit("echo", json!({ "n": 1 }), &RunOptions::default())
        .await
        .unwrap();
    // The index orders runs by the millisecond they were queued.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let second = invoker
        .submit("echo", json!({ "n": 2 }), &RunOptions::default())
        .await
        .unwrap();

    // Queued, no worker yet: known, with nothing written.
    let record = client.run_record(&first.run_id).await.unwrap().unwrap();
    assert_eq!(record.actor.as_deref(), Some("echo"));
    assert!(record.created_ms.is_some());
    assert_eq!(record.last, None);
    assert!(client.run_record("no-such-run").await.unwrap().is_none());
    assert!(client.run_record("bad:id").await.is_err());

    let recent = recent_run_ids(&client).await;
    assert_eq!(recent, [second.run_id.clone(), first.run_id.clone()]);

    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    let done = within(10, async {
        loop {
            let record = client.run_record(&first.run_id).await.unwrap().unwrap();
            if record.terminal().is_some() {
                return record;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let terminal = done.terminal().unwrap();
    assert_eq!(terminal.kind, ChunkType::Complete);
    assert_eq!(terminal.data, Some(json!({ "n": 1 })));
    worker.stop().await;
}

#[tokio::test]
async fn the_reader_tally_counts_readers_and_joins_across_clients() {
    let server = RedisServer::start();
    let options = fast_options();
    let a = client(&server, options.clone()).await;
    let b = client(&server, options).await;
    let run = a
        .invoker()
        .submit("echo", json!({}), &RunOptions::default())
        .await
        .unwrap();
    let id = &run.run_id;
    assert_eq!(a.readers(id).await.unwrap().grace_ms, None);
    a.set_disconnect_grace(id, 10_000).await.unwrap();
    let joined = a.reader_joined(id, "ra").await.unwrap();
    assert_eq!((joined.readers, joined.joins), (1, 1));
    assert_eq!(joined.grace_ms, Some(10_000));
    let other = b.reader_joined(id, "rb").await.unwrap();
    assert_eq!((other.readers, other.joins), (2, 2));
    // Sent again (its reply was lost): still one reader.
    let again = b.reader_joined(id, "rb").await.unwrap();
    assert_eq!(again.readers, 2);
    let left = a.reader_left(id, "ra").await.unwrap();
    assert_eq!(left.readers, 1);
    // Leaving again, or a reader whose join never arrived leaving: nothing changes.
    assert_eq!(a.reader_left(id, "ra").await.unwrap().readers, 1);
    assert_eq!(a.reader_left(id, "never").await.unwrap().readers, 1);
    let left = b.reader_left(id, "rb").await.unwrap();
    assert_eq!(left.readers, 0);
    assert!(left.joins >= 2);
    // A record that is gone (expired) is not made again by a reader leaving late: it would
    // have no TTL and stay forever.
    let mut conn = server.plain();
    let _: () = redis::cmd("DEL")
        .arg(a.keys().run(id))
        .query(&mut conn)
        .unwrap();
    let late = a.reader_left(id, "ra").await.unwrap();
    assert_eq!((late.readers, late.joins, late.grace_ms), (0, 0, None));
    let exists: bool = redis::cmd("EXISTS")
        .arg(a.keys().run(id))
        .query(&mut conn)
        .unwrap();
    assert!(!exists, "the record came back");
}

#[tokio::test]
async fn a_run_with_a_deadline_of_forever_is_queued_and_its_record_still_expires() {
    let server = RedisServer::start();
    let client = client(&server, fast_options()).await;
    let options = RunOptions {
        timeout: Some(std::time::Duration::MAX),
        ..RunOptions::default()
    };
    let run = client
        .invoker()
        .submit("echo", json!({}), &options)
        .await
        .expect("queued");
    let ttl: i64 = redis::cmd("TTL")
        .arg(client.keys().run(&run.run_id))
        .query(&mut server.plain())
        .unwrap();
    assert!(ttl > 0, "the record has no TTL: {ttl}");
}
