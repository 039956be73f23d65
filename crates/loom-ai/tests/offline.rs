//! The offline provider: the default with no configuration, deterministic, token by token
//! at a watchable pace, honest about usage and `max_tokens`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use loom_ai::{AiConfig, AiService, CompletionRequest, FinishReason, TokenEvent, OFFLINE_MODEL};
use support::{drain, within};

fn fast() -> AiService {
    AiService::new(AiConfig::offline().with_offline_token_delay(Duration::ZERO)).expect("ai")
}

#[test]
fn no_base_url_and_no_key_means_offline() {
    let config = AiConfig::from_lookup(|_| None).expect("config");
    assert!(config.is_offline());
    assert_eq!(config.model, OFFLINE_MODEL);
    let config =
        AiConfig::from_lookup(|name| (name == "OPENAI_API_KEY").then(String::new)).expect("config");
    assert!(config.is_offline(), "an empty key counts as unset");
}

#[test]
fn a_key_alone_means_the_openai_api_and_loom_model_names_the_model() {
    let config = AiConfig::from_lookup(|name| match name {
        "OPENAI_API_KEY" => Some("sk-x".into()),
        "LOOM_MODEL" => Some("gpt-4.1".into()),
        _ => None,
    })
    .expect("config");
    assert!(!config.is_offline());
    assert_eq!(
        config.endpoint,
        loom_ai::Endpoint::OpenAi {
            base_url: loom_ai::DEFAULT_BASE_URL.into()
        }
    );
    assert_eq!(config.model, "gpt-4.1");
    let ai = AiService::new(config).expect("ai");
    assert!(!ai.is_offline());
}

#[test]
fn a_base_url_alone_means_that_server_without_a_key() {
    let config = AiConfig::from_lookup(|name| {
        (name == "OPENAI_BASE_URL").then(|| "http://127.0.0.1:11434/v1".to_owned())
    })
    .expect("config");
    assert!(!config.is_offline());
    assert!(config.api_key.is_none());
}

#[test]
fn loom_ai_idle_timeout_sets_the_idle_timeout_and_nonsense_is_refused() {
    let with = |value: &'static str| {
        AiConfig::from_lookup(move |name| (name == "LOOM_AI_IDLE_TIMEOUT").then(|| value.into()))
    };
    assert_eq!(
        with("5m").expect("config").idle_timeout,
        Duration::from_secs(300)
    );
    assert_eq!(
        with(" 1m 30s ").expect("config").idle_timeout,
        Duration::from_secs(90)
    );
    // A bare number is seconds, as the CLI's `--timeout` reads it.
    assert_eq!(
        with("30").expect("config").idle_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(
        with("").expect("unset").idle_timeout,
        AiConfig::offline().idle_timeout
    );
    for bad in ["soon", "0s", "0", "-5"] {
        let err = with(bad).expect_err(bad).to_string();
        assert!(
            err.contains("LOOM_AI_IDLE_TIMEOUT") && err.contains("90s"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn the_answer_is_deterministic_and_counted_honestly() {
    let ai = fast();
    let (text, events, error) =
        drain(ai.stream_completion(CompletionRequest::prompt("hi there"))).await;
    assert!(error.is_none());
    let (again, _, _) = drain(ai.stream_completion(CompletionRequest::prompt("hi there"))).await;
    assert_eq!(text, again);
    assert!(text.contains("hi there"));
    let tokens = text.split_whitespace().count() as u64;
    match &events[..] {
        [TokenEvent::Finish(FinishReason::Stop), TokenEvent::Usage(usage)] => {
            assert_eq!(usage.completion_tokens, tokens);
            assert_eq!(usage.prompt_tokens, 2);
            assert_eq!(usage.total_tokens, tokens + 2);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[tokio::test]
async fn a_long_story_is_a_few_hundred_tokens() {
    let mut stream = fast().stream_completion(CompletionRequest::prompt("Write a long story"));
    let mut tokens = 0;
    while let Some(event) = within(stream.next()).await {
        if let TokenEvent::Text(_) = event.expect("ok") {
            tokens += 1;
        }
    }
    assert!((200..=600).contains(&tokens), "{tokens} tokens");
}

#[tokio::test]
async fn max_tokens_stops_with_length() {
    let request = CompletionRequest::prompt("Write a long story").with_max_tokens(5);
    let (text, events, _) = drain(fast().stream_completion(request)).await;
    assert_eq!(text.split_whitespace().count(), 5);
    assert_eq!(events[0], TokenEvent::Finish(FinishReason::Length));
}

#[tokio::test]
async fn tokens_arrive_one_by_one_at_the_configured_pace() {
    let ai =
        AiService::new(AiConfig::offline().with_offline_token_delay(Duration::from_millis(20)))
            .expect("ai");
    let mut stream = ai.stream_completion(CompletionRequest::prompt("hi"));
    let started = Instant::now();
    for _ in 0..5 {
        assert!(matches!(
            within(stream.next()).await,
            Some(Ok(TokenEvent::Text(_)))
        ));
    }
    // A lower bound only: the pace is a sleep between tokens, not a burst at the end.
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[test]
fn the_offline_service_says_so() {
    assert!(AiService::offline().is_offline());
    assert!(format!("{:?}", AiService::offline()).contains("Offline"));
}
