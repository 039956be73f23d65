//! A client that is not Rust: `curl -N` reads a stream and resumes it with `Last-Event-ID`,
//! as the README shows (`.ci/run` installs curl when missing).

mod support;

use serde_json::json;
use support::*;

/// Runs `curl` with `args` and returns its stdout (headers included with `-i`).
async fn curl(args: &[&str]) -> String {
    let output = within(tokio::process::Command::new("curl").args(args).output())
        .await
        .expect("curl runs (install it: .ci/run does)");
    assert!(output.status.success(), "curl {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test]
async fn curl_streams_a_run_and_resumes_it_with_last_event_id() {
    let server = TestServer::default_config().await;
    let url = server.url("/v1/actors/echo/stream");
    let out = curl(&["-sN", "-i", "-d", r#"{"input":{"a":1}}"#, &url]).await;
    let (head, body) = out.split_once("\r\n\r\n").expect("headers, then the body");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("loom-run-id: "))
        .expect("Loom-Run-Id header")
        .trim();
    let start = json!({ "type": "start", "seq": 0, "data": { "run_id": id, "actor": "echo" } });
    let complete = r#"{"type":"complete","seq":1,"data":{"a":1}}"#;
    assert_eq!(
        body,
        format!(
            "id: 0\nevent: start\ndata: {start}\n\nid: 1\nevent: complete\ndata: {complete}\n\n"
        )
    );

    let run = server.url(&format!("/v1/runs/{id}/stream"));
    let resumed = curl(&["-sN", "-H", "Last-Event-ID: 0", &run]).await;
    assert_eq!(
        resumed,
        format!("id: 1\nevent: complete\ndata: {complete}\n\n")
    );
    let after_the_end = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Last-Event-ID: 1",
        &run,
    ])
    .await;
    assert_eq!(after_the_end, "204");
}
