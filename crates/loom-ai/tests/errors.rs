//! Errors: HTTP statuses with the server's message, retries before the first token only,
//! timeouts, and the API key kept out of errors and `Debug`.

mod support;

use std::time::Duration;

use loom_ai::{AiConfig, AiError, AiService, CompletionRequest, RetryPolicy};
use loom_core::{ActorError, ErrorCode};
use support::wire::{self, frame};
use support::{drain, drain_prompt, within, FakeServer, Reply};

const KEY: &str = "sk-proj-SECRET-9f8e7d6c5b4a";

async fn first_error(ai: &AiService) -> AiError {
    let (_, _, error) = drain(ai.stream_completion(CompletionRequest::prompt("x"))).await;
    error.expect("an error")
}

#[tokio::test]
async fn a_4xx_is_surfaced_with_its_status_and_the_servers_message_and_not_retried() {
    let server = FakeServer::start(vec![Reply::error(
        404,
        "The model `gpt-9` does not exist or you do not have access to it.",
    )])
    .await;
    let error = first_error(&server.service()).await;
    assert_eq!(error.status(), Some(404));
    assert!(error.to_string().contains("404"), "{error}");
    assert!(error
        .to_string()
        .contains("The model `gpt-9` does not exist"));
    assert_eq!(error.code(), ErrorCode::BadInput);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_401_is_an_upstream_error() {
    let server = FakeServer::start(vec![Reply::error(401, "Invalid authentication")]).await;
    let error = first_error(&server.service()).await;
    assert_eq!(error.status(), Some(401));
    assert_eq!(error.code(), ErrorCode::Upstream);
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn a_status_with_a_plain_body_quotes_the_body() {
    let server = FakeServer::start(vec![Reply::Status {
        status: 400,
        body: "bad things".into(),
        headers: Vec::new(),
    }])
    .await;
    let error = first_error(&server.service()).await;
    assert!(error.to_string().contains("bad things"), "{error}");
}

/// A proxy's HTML error page is named by its title, not quoted as markup.
#[tokio::test]
async fn an_html_error_page_is_named_by_its_title() {
    let page = "<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title>\
                </head><body><center><h1>503</h1></center><hr><center>nginx</center></body></html>";
    let server = FakeServer::start(vec![Reply::Status {
        status: 401,
        body: page.into(),
        headers: Vec::new(),
    }])
    .await;
    let error = first_error(&server.service()).await;
    assert_eq!(
        error.to_string(),
        "the AI server answered 401: 503 Service Temporarily Unavailable (an HTML page)"
    );
}

/// A huge error body (a proxy's, an echo of the request) is read only so far, and the message
/// quoted from it is bounded: the run's `error` chunk stays small.
#[tokio::test]
async fn a_huge_error_body_gives_a_bounded_message() {
    let server = FakeServer::start(vec![Reply::error(400, &"x".repeat(10 << 20))]).await;
    let error = first_error(&server.service()).await;
    assert_eq!(error.status(), Some(400));
    let message = error.to_string();
    assert!(
        message.contains("xxxx") && message.len() < 4096,
        "{} bytes",
        message.len()
    );
}

/// A server that ignored `stream: true` answers 200 with one JSON object: the run fails at
/// once, saying so and quoting the server, instead of as a broken stream that is retried.
#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_a_clear_error() {
    let server = FakeServer::start(vec![Reply::Status {
        status: 200,
        body: r#"{"error":{"message":"streaming is not supported by this model"}}"#.into(),
        headers: Vec::new(),
    }])
    .await;
    let error = first_error(&server.service()).await;
    assert!(matches!(error, AiError::Decode { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("application/json, not an event stream")
            && message.contains("streaming is not supported by this model"),
        "{message}"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.requests().len(), 1);
}

/// `localhost:11434/v1` (the scheme forgotten) parses as a URL whose scheme is `localhost`:
/// refused when the service is made, not retried as a connection failure on every run.
#[test]
fn a_base_url_without_http_is_refused() {
    for url in ["localhost:11434/v1", "ftp://example.com/v1"] {
        let made = AiService::new(AiConfig::openai_compatible(url));
        let Err(error) = made else {
            panic!("{url} was taken");
        };
        assert!(matches!(error, AiError::Config(_)), "{url}: {error:?}");
        assert!(error.to_string().contains("http://"), "{error}");
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let ok = Reply::sse(wire::openai_stream(&["fine"], None));
    let limited = Reply::error(429, "Rate limit reached").with_header("retry-after", "0.15");
    let server = FakeServer::start(vec![limited, ok]).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "fine");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    // The fake server's policy backs off 10 ms; 150 ms apart means Retry-After won.
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(145), "retried after {gap:?}");
}

/// A server asking to be left alone for longer than the policy waits is not asked again
/// sooner (which cost a minute of capped retries against a server that asked for an hour):
/// its answer ends the request at once.
#[tokio::test]
async fn a_retry_after_longer_than_the_policy_waits_ends_the_request_at_once() {
    let ok = Reply::sse(wire::openai_stream(&["fine"], None));
    let limited = Reply::error(429, "slow down").with_header("retry-after", "3600");
    let server = FakeServer::start(vec![limited, ok]).await;
    // max_backoff is 200 ms in the fake server's config.
    let (text, _, error) = drain_prompt(server.service()).await;
    let error = error.expect("the 429");
    assert_eq!(error.status(), Some(429), "{error:?}");
    assert!(text.is_empty());
    assert_eq!(server.requests().len(), 1, "not asked again");
}

#[tokio::test]
async fn a_5xx_is_retried_with_backoff_then_given_up() {
    let server = FakeServer::start(vec![Reply::error(503, "overloaded")]).await;
    let ai = AiService::new(server.config().with_retry(RetryPolicy {
        max_retries: 2,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
    }))
    .expect("ai");
    let error = first_error(&ai).await;
    assert_eq!(error.status(), Some(503));
    assert!(error.to_string().contains("overloaded"));
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one try and two retries");
    let first_gap = requests[1].at - requests[0].at;
    let second_gap = requests[2].at - requests[1].at;
    assert!(first_gap >= Duration::from_millis(50), "{first_gap:?}");
    assert!(
        second_gap >= Duration::from_millis(100),
        "doubled: {second_gap:?}"
    );
}

#[test]
fn backoff_doubles_and_is_capped() {
    let policy = RetryPolicy {
        max_retries: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    };
    assert_eq!(policy.delay(0, None), Duration::from_millis(100));
    assert_eq!(policy.delay(2, None), Duration::from_millis(400));
    assert_eq!(policy.delay(9, None), Duration::from_secs(1));
    assert_eq!(
        policy.delay(0, Some(Duration::from_secs(5))),
        Duration::from_secs(1)
    );
}

#[tokio::test]
async fn a_stream_that_breaks_after_tokens_is_not_retried_and_keeps_its_tokens() {
    let broken = Reply::sse(
        [
            frame(&wire::role_chunk()),
            frame(&wire::text_chunk("half")),
            frame(&wire::text_chunk(" a")),
        ]
        .concat(),
    );
    let server =
        FakeServer::start(vec![broken, Reply::sse(wire::openai_stream(&["x"], None))]).await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert_eq!(text, "half a");
    let error = error.expect("an error");
    assert_eq!(error.code(), ErrorCode::Upstream);
    assert_eq!(server.requests().len(), 1, "no retry after the first token");
}

/// A stream that breaks after its 200 but before its first token (only the role chunk came)
/// is sent again like a failed request: nothing was said that a retry could repeat.
#[tokio::test]
async fn a_stream_that_breaks_before_its_first_token_is_retried() {
    let broken = Reply::sse(frame(&wire::role_chunk()));
    let server = FakeServer::start(vec![
        broken,
        Reply::sse(wire::openai_stream(&["fine"], None)),
    ])
    .await;
    let (text, _, error) = drain_prompt(server.service()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "fine");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let config =
        AiConfig::openai_compatible(format!("http://{addr}/v1")).with_retry(RetryPolicy::none());
    let error = first_error(&AiService::new(config).expect("ai")).await;
    assert!(matches!(error, AiError::Connect { .. }), "{error:?}");
    assert_eq!(error.code(), ErrorCode::Upstream);
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_idle_timeout() {
    let server = FakeServer::start(vec![Reply::Silence]).await;
    let ai = AiService::new(
        server
            .config()
            .with_retry(RetryPolicy::none())
            .with_connect_timeout(Duration::from_millis(100))
            .with_idle_timeout(Duration::from_millis(200)),
    )
    .expect("ai");
    let error = first_error(&ai).await;
    assert!(matches!(error, AiError::Timeout { .. }), "{error:?}");
    // A silent server is the upstream's failure; `timeout` is a run's own deadline.
    assert_eq!(error.code(), ErrorCode::Upstream);
    // The wait it says is the one it waited: connecting and the idle timeout.
    assert!(error.to_string().contains("300ms"), "{error}");
}

#[tokio::test]
async fn a_stream_that_stalls_mid_way_ends_as_upstream_after_its_tokens() {
    let stalled = Reply::Sse {
        pieces: vec![
            frame(&wire::text_chunk("slow")),
            frame(&wire::text_chunk("er")),
        ],
        pause: Duration::from_secs(30),
        hold_open: false,
    };
    let server = FakeServer::start(vec![stalled]).await;
    let ai = AiService::new(
        server
            .config()
            .with_idle_timeout(Duration::from_millis(200)),
    )
    .expect("ai");
    let (text, _, error) = drain(ai.stream_completion(CompletionRequest::prompt("x"))).await;
    assert_eq!(text, "slow");
    let error = error.expect("an error");
    // DESIGN §4: a stream that breaks mid-way is `upstream`; `timeout` is the run's deadline.
    assert_eq!(error.code(), ErrorCode::Upstream, "{error:?}");
    assert!(error.to_string().contains("no data"), "{error}");
}

/// The idle timeout is the server's silence, not the caller's: a consumer that stops reading
/// for longer (a pipe into a pager, a slow client) gets the rest of the answer when it reads
/// on. reqwest's own read timeout counted from the last data even while nobody read.
#[tokio::test]
async fn a_consumer_pausing_past_the_idle_timeout_gets_the_whole_answer() {
    let tokens = ["one ", "two ", "three"];
    let server = FakeServer::start(vec![Reply::pieces(
        vec![
            frame(&wire::text_chunk(tokens[0])),
            frame(&wire::text_chunk(tokens[1])),
            frame(&wire::text_chunk(tokens[2])),
            frame(&wire::finish_chunk("stop")),
            "data: [DONE]\n\n".to_owned(),
        ],
        Duration::from_millis(20),
    )])
    .await;
    let ai = AiService::new(
        server
            .config()
            .with_idle_timeout(Duration::from_millis(200)),
    )
    .expect("ai");
    let mut stream = ai.stream_completion(CompletionRequest::prompt("x"));
    let mut text = String::new();
    while let Some(item) = within(futures::StreamExt::next(&mut stream)).await {
        if let loom_ai::TokenEvent::Text(t) = item.expect("no error") {
            text.push_str(&t);
            // Three times the idle timeout between two reads, the server long done.
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    }
    assert_eq!(text, tokens.concat());
}

/// A server silent for the whole idle timeout — before its headers, or after them with no
/// event — is not asked again: retrying would multiply the wait by the retries.
#[tokio::test]
async fn a_server_silent_for_the_idle_timeout_is_not_retried() {
    let quiet_stream = || Reply::Sse {
        pieces: vec![String::new(), frame(&wire::text_chunk("late"))],
        pause: Duration::from_secs(30),
        hold_open: false,
    };
    for replies in [
        vec![Reply::Silence, Reply::Silence],
        vec![quiet_stream(), quiet_stream()],
    ] {
        let server = FakeServer::start(replies).await;
        let ai = AiService::new(
            server
                .config()
                .with_retry(RetryPolicy {
                    initial_backoff: Duration::from_millis(10),
                    ..RetryPolicy::default()
                })
                .with_connect_timeout(Duration::from_millis(100))
                .with_idle_timeout(Duration::from_millis(200)),
        )
        .expect("ai");
        let error = first_error(&ai).await;
        assert!(
            matches!(error, AiError::Timeout { .. } | AiError::Interrupted { .. }),
            "{error:?}"
        );
        assert_eq!(server.requests().len(), 1, "{error}");
    }
}

#[tokio::test]
async fn the_api_key_is_in_no_debug_output_and_no_error() {
    // A server that echoes the key back in its error message.
    let server = FakeServer::start(vec![Reply::error(
        401,
        &format!("Incorrect API key provided: {KEY}."),
    )])
    .await;
    let config = server.config().with_api_key(KEY);
    assert!(!format!("{config:?}").contains(KEY));
    assert!(!format!("{:?}", config.api_key).contains(KEY));
    let ai = AiService::new(config).expect("ai");
    assert!(!format!("{ai:?}").contains(KEY));
    let error = first_error(&ai).await;
    assert_eq!(
        server.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str()),
        "the key is sent"
    );
    assert!(!error.to_string().contains(KEY), "{error}");
    assert!(!format!("{error:?}").contains(KEY));
    let actor_error = ActorError::from(error);
    assert!(!format!("{actor_error:?}").contains(KEY));
    assert!(actor_error
        .message()
        .contains("Incorrect API key provided: ***"));
}

#[tokio::test]
async fn the_api_key_is_scrubbed_from_errors_sent_inside_the_stream() {
    let in_stream = format!(
        "data: {}\n\ndata: {{\"error\":{{\"message\":\"Incorrect API key provided: {KEY}\"}}}}\n\n",
        wire::text_chunk("a")
    );
    // An undecodable event long enough that the quote's cut falls inside the key.
    let undecodable = format!("data: <{}{KEY}>\n\n", "x".repeat(185));
    for body in [in_stream, undecodable] {
        let server = FakeServer::start(vec![Reply::sse(body)]).await;
        let ai = AiService::new(server.config().with_api_key(KEY)).expect("ai");
        let error = first_error(&ai).await;
        let text = format!("{error} {error:?}");
        assert!(!text.contains(KEY), "{text}");
        assert!(
            !text.contains(&KEY[..8]),
            "no cut-off start of the key either: {text}"
        );
        assert_eq!(error.code(), ErrorCode::Upstream, "{error:?}");
    }
}

#[test]
fn ai_errors_map_to_actor_errors_with_their_code() {
    let error = AiError::Status {
        status: 500,
        message: "boom".into(),
        retry_after: None,
    };
    let actor_error = ActorError::from(error);
    assert_eq!(actor_error.code(), ErrorCode::Upstream);
    assert!(actor_error.is_retryable());
    assert!(actor_error.message().contains("boom"));
}

/// A server that sends the finish reason and then holds the connection open, with no usage and
/// no `[DONE]`: the answer is whole, and it ends soon after (it waited the idle timeout).
#[tokio::test]
async fn an_answer_finished_but_left_open_ends_without_waiting_the_idle_timeout() {
    let server = FakeServer::start(vec![Reply::hold_open(vec![
        frame(&wire::text_chunk("whole")),
        frame(&wire::finish_chunk("stop")),
    ])])
    .await;
    let ai =
        AiService::new(server.config().with_idle_timeout(Duration::from_secs(600))).expect("ai");
    let (text, events, error) = within(drain_prompt(ai)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text, "whole");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, loom_ai::TokenEvent::Finish { .. })),
        "{events:?}"
    );
}

/// An API key that cannot be a header (a newline pasted with it) is a configuration error
/// when the service is made, not a failure of every run (reported as `internal`).
#[test]
fn an_api_key_that_cannot_be_a_header_is_refused_when_the_service_is_made() {
    let config = AiConfig::openai_compatible("http://127.0.0.1:9/v1").with_api_key("sk-abc\n");
    let error = AiService::new(config).expect_err("refused");
    assert!(matches!(error, AiError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("OPENAI_API_KEY"), "{error}");
}
