//! Redis ACLs: Loom works as a user confined to its key prefix and its channel, without the
//! dangerous commands, and a wrong password is a clear error at connect time. The ACL here is
//! the one `docs/security.md` recommends.

mod support;

use std::sync::Arc;

use futures::StreamExt;
use loom_core::{ChunkType, ErrorCode};
use loom_redis::{Client, ClientOptions, WorkerOptions};
use support::*;

/// The URL of `server` as `user:password`.
fn as_user(server: &RedisServer, user: &str, password: &str) -> String {
    server
        .url()
        .replacen("redis://", &format!("redis://{user}:{password}@"), 1)
}

/// Creates `loom` (confined to `prefix`) and `admin`, and turns the default user off.
fn confine(server: &RedisServer, prefix: &str) -> redis::Connection {
    let mut plain = server.plain();
    let pattern = format!("{prefix}*");
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("loom")
        .arg("on")
        .arg(">s3cret")
        .arg(format!("~{pattern}"))
        .arg(format!("&{pattern}"))
        .arg("+@all")
        .arg("-@dangerous")
        .arg("+client|unblock")
        .exec(&mut plain)
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "admin", "on", ">adminpw", "~*", "&*", "+@all"])
        .exec(&mut plain)
        .unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "default", "off"])
        .exec(&mut plain)
        .unwrap();
    let admin = redis::Client::open(as_user(server, "admin", "adminpw")).unwrap();
    admin.get_connection().unwrap()
}

/// A client of `server` as `loom`, and a worker on it.
async fn loom_with_worker(server: &RedisServer, options: ClientOptions) -> (Client, RunningWorker) {
    let url = as_user(server, "loom", "s3cret");
    let client = within(10, Client::connect_with(&url, options))
        .await
        .expect("connect as loom");
    let probe = Arc::new(Probe::default());
    let worker = RunningWorker::spawn(&client, runtime(&probe), WorkerOptions::default());
    (client, worker)
}

#[tokio::test]
async fn a_user_confined_to_the_prefix_without_dangerous_commands_runs_everything() {
    let server = RedisServer::start_own();
    let options = fast_options();
    let mut admin = confine(&server, &options.prefix);
    let (client, worker) = loom_with_worker(&server, options).await;

    // A run to its end, and its replay.
    let chunks = ticker(&client, 5, 1).await;
    let run_id = chunks.run_id().to_owned();
    let chunks = collect(10, chunks).await;
    assert_contract(&chunks);
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    let replay = collect(10, client.tail(&run_id, None).await.unwrap()).await;
    assert_eq!(replay, chunks);

    // A cancel travels over the prefix's pub/sub channel.
    let mut long = ticker(&client, 100_000, 10).await;
    within(10, long.next()).await.expect("start");
    long.cancel();
    let rest = collect(10, long).await;
    let error = rest.last().unwrap().error.as_ref().expect("an error");
    assert_eq!(error.code, ErrorCode::Cancelled);

    assert!(within(10, client.served_actors())
        .await
        .unwrap()
        .iter()
        .any(|a| a == "ticker"));
    worker.stop().await;

    let denied: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut admin).unwrap();
    assert!(denied.is_empty(), "Redis refused commands: {denied:?}");
}

#[tokio::test]
async fn a_user_refused_client_setname_still_has_its_runs_written() {
    let server = RedisServer::start_own();
    let options = fast_options();
    let mut admin = confine(&server, &options.prefix);
    // Writer connections name themselves `loom-writer`; a stricter ACL may refuse that.
    redis::cmd("ACL")
        .arg(&["SETUSER", "loom", "-client|setname"])
        .exec(&mut admin)
        .unwrap();
    let (client, worker) = loom_with_worker(&server, options).await;
    let chunks = collect(10, ticker(&client, 5, 1).await).await;
    assert_contract(&chunks);
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Complete);
    worker.stop().await;

    let denied: String = format!(
        "{:?}",
        redis::cmd("ACL")
            .arg("LOG")
            .query::<redis::Value>(&mut admin)
            .unwrap()
    );
    assert!(
        denied.to_lowercase().contains("setname"),
        "the writer did not try to name its connection: {denied}"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_when_connecting() {
    let server = RedisServer::start_own();
    let options = fast_options();
    let _admin = confine(&server, &options.prefix);
    let url = as_user(&server, "loom", "wrong");
    let error = within(10, Client::connect_with(&url, options.clone()))
        .await
        .expect_err("the connection is refused");
    let message = error.to_string();
    assert!(message.contains("authentication failed"), "{message}");
    assert!(!message.contains("wrong"), "the password leaked: {message}");

    // No password: the default user is off, so the server refuses it.
    let url = server.url().replacen("redis://", "redis://loom@", 1);
    let error = within(10, Client::connect_with(&url, options))
        .await
        .expect_err("the connection is refused");
    assert!(
        error.to_string().contains("Authentication required"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tls_url_is_refused_as_bad_input_because_this_build_has_no_tls() {
    let error = within(10, Client::connect("rediss://127.0.0.1:6390/"))
        .await
        .expect_err("refused");
    assert_eq!(error.code(), ErrorCode::BadInput, "{error}");
    assert!(error.to_string().contains("TLS"), "{error}");
}

/// A worker whose user may not run scripts, or read or claim the queues, fails at once with
/// Redis's refusal, rather than staying up serving nothing while callers wait: regression
/// test for the worker that said it was serving and never ran a request.
#[tokio::test]
async fn a_worker_refused_a_command_it_needs_fails_at_once() {
    let server = RedisServer::start_own();
    let options = fast_options();
    let _admin = confine(&server, &options.prefix);
    let mut plain = redis::Client::open(as_user(&server, "admin", "adminpw"))
        .unwrap()
        .get_connection()
        .unwrap();
    for refused in ["-evalsha", "-xreadgroup", "-xautoclaim"] {
        // The recommended user, less one command (`ACL SETUSER` adds to what it has).
        redis::cmd("ACL")
            .arg(&[
                "SETUSER",
                "loom",
                "+@all",
                "-@dangerous",
                "+client|unblock",
                refused,
            ])
            .exec(&mut plain)
            .unwrap();
        let url = as_user(&server, "loom", "s3cret");
        let client = within(10, Client::connect_with(&url, options.clone()))
            .await
            .expect("connect as loom");
        let probe = Arc::new(Probe::default());
        let worker = loom_redis::Worker::new(client, runtime(&probe), WorkerOptions::default());
        let err = within(5, worker.run(std::future::pending()))
            .await
            .expect_err("refused");
        assert!(err.is_no_permission(), "{refused}: {err}");
        let command = refused.trim_start_matches('-');
        assert!(err.to_string().contains(command), "{refused}: {err}");
    }
}
