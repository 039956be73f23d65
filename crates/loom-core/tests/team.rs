//! Teams: members run concurrently, chunks are tagged, one terminal chunk for the team.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;

use loom_core::{ChunkType, ErrorCode, Output, RunOptions, Team};
use serde_json::{json, Value};
use support::*;
use tokio::sync::oneshot;

#[tokio::test]
async fn a_team_without_members_completes_with_no_results() {
    let team = Team::new("nobody", "no members");
    let chunks = collect(stream_of(team, RunOptions::default())).await;
    assert_contract(&chunks);
    let last = chunks.last().expect("a terminal chunk");
    assert_eq!(last.kind, ChunkType::Complete, "{chunks:?}");
    assert_eq!(last.data, Some(json!({ "members": {} })));
}

#[tokio::test]
async fn a_team_merges_member_streams_tagged_with_their_actor() {
    // The gate proves interleaving: alpha cannot finish until beta has produced a chunk.
    let (gate_tx, gate_rx) = oneshot::channel::<()>();
    let gate_rx = Mutex::new(Some(gate_rx));
    let gate_tx = Mutex::new(Some(gate_tx));
    let alpha = fn_actor("alpha", move |_, _| {
        let gate = gate_rx.lock().expect("not poisoned").take();
        async_stream::try_stream! {
            yield Output::token("a1");
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            yield Output::token("a2");
            yield Output::complete(json!("alpha done"));
        }
    });
    let beta = fn_actor("beta", move |_, _| {
        let gate = gate_tx.lock().expect("not poisoned").take();
        async_stream::try_stream! {
            yield Output::token("b1");
            if let Some(gate) = gate {
                let _ = gate.send(());
            }
            yield Output::complete(json!("beta done"));
        }
    });
    let team = Team::new("duo", "two members").member(alpha).member(beta);
    let chunks = collect(stream_of(team, RunOptions::default())).await;
    assert_contract(&chunks);

    let tokens: Vec<(String, String)> = chunks
        .iter()
        .filter_map(|c| Some((c.actor.as_deref()?.to_owned(), c.token()?.to_owned())))
        .collect();
    let pos = |t: &str| {
        tokens
            .iter()
            .position(|(_, tok)| tok == t)
            .expect("token present")
    };
    assert!(pos("b1") < pos("a2"), "members interleave: {tokens:?}");
    assert!(
        tokens
            .iter()
            .all(|(actor, tok)| actor.as_bytes()[0] == tok.as_bytes()[0]),
        "each token is tagged with the member that said it: {tokens:?}"
    );
    let complete = chunks.last().expect("terminal");
    assert_eq!(complete.kind, ChunkType::Complete);
    assert_eq!(
        complete.data,
        Some(json!({ "members": { "alpha": "alpha done", "beta": "beta done" } }))
    );
}

#[tokio::test]
async fn busy_members_take_turns() {
    // Neither member ever waits: a merge that always polled the same member first would
    // forward all of one member's tokens before the other's.
    let busy = |name: &'static str| {
        fn_actor(name, move |_, _| {
            async_stream::try_stream! {
                for _ in 0..50 {
                    yield Output::token(name);
                }
                yield Output::complete(Value::Null);
            }
        })
    };
    let team = Team::new("pair", "two busy members")
        .member(busy("left"))
        .member(busy("right"));
    let chunks = collect(stream_of(team, RunOptions::default())).await;
    assert_contract(&chunks);
    let said: Vec<(&str, &str)> = chunks
        .iter()
        .filter_map(|c| Some((c.actor.as_deref()?, c.token()?)))
        .collect();
    assert_eq!(said.len(), 100, "every token is forwarded, tagged");
    assert!(
        said.iter().all(|(member, token)| member == token),
        "{said:?}"
    );
    assert!(
        said.windows(2).all(|two| two[0].0 != two[1].0),
        "members alternate: {said:?}"
    );
}

#[tokio::test]
async fn a_failing_member_fails_the_team_and_cancels_the_others() {
    let (hanger, hanger_dropped) = Hanger::new("steady", 1);
    let failing = fn_actor("flaky", |_, _| {
        async_stream::try_stream! {
            yield Output::token("x");
            Err(failed("model refused"))?;
            yield Output::complete(Value::Null);
        }
    });
    let team = Team::new("pair", "").member(hanger).member(failing);
    let chunks = collect(stream_of(team, RunOptions::default())).await;
    assert_contract(&chunks);
    let error = chunks
        .last()
        .and_then(|c| c.error.clone())
        .expect("an error chunk");
    assert_eq!(error.code, ErrorCode::ActorFailed);
    assert!(
        error.message.contains("flaky") && error.message.contains("model refused"),
        "{}",
        error.message
    );
    tokio::time::timeout(LIMIT, hanger_dropped)
        .await
        .expect("in time")
        .expect("the other member was cancelled");
}

/// A member's panic, or its stream ending without a result, is the team's error naming
/// the member, and the team's deadline stops a member that never ends.
#[tokio::test]
async fn a_member_that_breaks_the_contract_fails_the_team_by_name() {
    type Case = (&'static str, fn() -> Team);
    let cases: [Case; 3] = [
        ("the actor panicked: member blew up", || {
            let boom = fn_actor("boom", |_, _| {
                async_stream::try_stream! {
                    yield Output::token("x");
                    if true {
                        panic!("member blew up");
                    }
                    yield Output::complete(Value::Null);
                }
            });
            Team::new("t", "").member(boom)
        }),
        ("ended without a complete output", || {
            let quiet = fn_actor("quiet", |_, _| {
                async_stream::try_stream! {
                    yield Output::token("x");
                }
            });
            Team::new("t", "").member(quiet)
        }),
        ("deadline", || {
            let (hanger, _dropped) = Hanger::new("stuck", 1);
            Team::new("t", "").member(hanger)
        }),
    ];
    for (expected, team) in cases {
        let options = RunOptions {
            timeout: Some(std::time::Duration::from_millis(200)),
            ..RunOptions::default()
        };
        let chunks = collect(stream_of(team(), options)).await;
        assert_contract(&chunks);
        let member = chunks[1]
            .actor
            .as_deref()
            .expect("a tagged chunk before the end");
        let error = chunks
            .last()
            .and_then(|c| c.error.clone())
            .expect("an error chunk");
        assert!(
            error.message.contains(expected),
            "{expected}: {}",
            error.message
        );
        if expected == "deadline" {
            assert_eq!(error.code, ErrorCode::Timeout);
        } else {
            assert_eq!(error.code, ErrorCode::Internal);
            let named = format!("team member '{member}' failed: ");
            assert!(error.message.starts_with(&named), "{}", error.message);
        }
    }
}

#[tokio::test]
async fn dropping_a_team_stream_cancels_every_member() {
    let (one, one_dropped) = Hanger::new("one", 1);
    let (two, two_dropped) = Hanger::new("two", 1);
    let team = Team::new("pair", "").member(one).member(two);
    let mut stream = stream_of(team, RunOptions::default());
    next(&mut stream).await;
    next(&mut stream).await;
    drop(stream);
    for dropped in [one_dropped, two_dropped] {
        tokio::time::timeout(LIMIT, dropped)
            .await
            .expect("in time")
            .expect("member dropped");
    }
}

#[tokio::test]
async fn team_demo_runs_three_attributed_members() {
    let stream = runtime()
        .stream(
            "team-demo",
            json!({ "topic": "rust" }),
            RunOptions::default(),
        )
        .expect("team-demo is built in");
    let chunks = collect(stream).await;
    assert_contract(&chunks);
    let actors: BTreeSet<_> = chunks.iter().filter_map(|c| c.actor.clone()).collect();
    assert_eq!(
        actors,
        BTreeSet::from(["analyst".into(), "researcher".into(), "writer".into()])
    );
    let members = &chunks
        .last()
        .and_then(|c| c.data.clone())
        .expect("complete data")["members"];
    assert!(members["writer"]["text"]
        .as_str()
        .is_some_and(|t| t.contains("rust")));
}

/// Two members of one name: each has its own tag and its own result, and the team counts
/// both.
#[tokio::test]
async fn members_of_one_name_are_told_apart() {
    let writer = |said: &'static str| {
        fn_actor("writer", move |_, _| {
            async_stream::try_stream! {
                yield Output::token(said);
                yield Output::complete(json!(said));
            }
        })
    };
    let team = Team::new("t", "")
        .member(writer("one"))
        .member(writer("two"));
    let chunks = collect(stream_of(team, RunOptions::default())).await;
    assert_contract(&chunks);
    let tagged: Vec<(String, String)> = chunks
        .iter()
        .filter_map(|c| Some((c.actor.as_deref()?.to_owned(), c.token()?.to_owned())))
        .collect();
    assert!(
        tagged.contains(&("writer".into(), "one".into()))
            && tagged.contains(&("writer#2".into(), "two".into())),
        "{tagged:?}"
    );
    let finished: Vec<_> = chunks.iter().filter_map(|c| c.progress.clone()).collect();
    assert_eq!(
        finished.last().map(|p| (p.current, p.total)),
        Some((2, Some(2)))
    );
    assert_eq!(
        chunks.last().and_then(|c| c.data.clone()),
        Some(json!({ "members": { "writer": "one", "writer#2": "two" } }))
    );
}
