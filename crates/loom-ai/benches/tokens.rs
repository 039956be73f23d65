//! `tokens`: tokens/s parsed from a recorded-style 10,000-token OpenAI stream that a loopback
//! server replays at full speed, through `AiService::stream_completion`, through
//! `async-openai`'s `create_stream` reading the same bytes from the same server, and through
//! bare byte-splitting of those bytes on `"\n\n"` (no JSON) as the ceiling.
//!
//! Run with `cargo bench -p loom-ai --bench tokens`. Criterion reports each; the closing
//! lines print the three rates and the ratio ours / async-openai (target > 1).

#[path = "../tests/support/wire.rs"]
mod wire;

use std::hint::black_box;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use loom_ai::{AiConfig, AiService, CompletionRequest, RetryPolicy, TokenEvent};

const TOKENS: usize = 10_000;

/// Serves `body` as the answer to every `POST /v1/chat/completions`, on its own thread.
fn serve(body: Bytes) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let app = Router::new().route(
                "/v1/chat/completions",
                post(move || {
                    let body = body.clone();
                    async move { ([("content-type", "text/event-stream")], body) }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("server address");
    format!("http://{addr}/v1")
}

async fn ours(ai: &AiService) -> usize {
    let mut stream = ai.stream_completion(CompletionRequest::prompt("replay"));
    let mut n = 0;
    while let Some(event) = stream.next().await {
        if let TokenEvent::Text(text) = event.expect("token") {
            black_box(&text);
            n += 1;
        }
    }
    n
}

async fn async_openai(
    client: &async_openai::Client<OpenAIConfig>,
    request: &CreateChatCompletionRequest,
) -> usize {
    let mut stream = client
        .chat()
        .create_stream(request.clone())
        .await
        .expect("stream");
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        for choice in &chunk.choices {
            if let Some(text) = &choice.delta.content {
                if !text.is_empty() {
                    black_box(text);
                    n += 1;
                }
            }
        }
    }
    n
}

/// The ceiling: the same request and bytes, split on `"\n\n"` and nothing else.
async fn bare(http: &reqwest::Client, url: &str) -> usize {
    let mut response = http
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"replay"}],"stream":true}"#)
        .send()
        .await
        .expect("send");
    let finder = memchr::memmem::Finder::new(b"\n\n");
    let mut events = 0;
    let mut last_was_lf = false;
    while let Some(bytes) = response.chunk().await.expect("chunk") {
        if last_was_lf && bytes.first() == Some(&b'\n') {
            events += 1;
        }
        events += finder.find_iter(&bytes).count();
        last_was_lf = bytes.last() == Some(&b'\n');
    }
    events
}

fn main() {
    let tokens = wire::recorded_tokens(TOKENS);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let body = Bytes::from(wire::openai_stream(&tokens, Some((12, TOKENS as u64))));
    // role chunk + tokens + finish chunk + usage chunk + [DONE]
    let expected_events = TOKENS + 4;
    let base = serve(body.clone());
    let url = format!("{base}/chat/completions");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let ai = AiService::new(
        AiConfig::openai_compatible(base.clone())
            .with_api_key("bench")
            .with_retry(RetryPolicy::none()),
    )
    .expect("service");
    let client = async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(base.clone())
            .with_api_key("bench"),
    );
    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("replay")
            .build()
            .expect("message")
            .into()])
        .build()
        .expect("request");
    let http = reqwest::Client::new();

    // Every path must see the whole stream, or the comparison means nothing.
    assert_eq!(rt.block_on(ours(&ai)), TOKENS);
    assert_eq!(rt.block_on(async_openai(&client, &request)), TOKENS);
    assert_eq!(rt.block_on(bare(&http, &url)), expected_events);
    println!("stream: {TOKENS} tokens, {} bytes", body.len());

    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("tokens");
    group.throughput(Throughput::Elements(TOKENS as u64));
    group.bench_function("bare_split", |b| b.to_async(&rt).iter(|| bare(&http, &url)));
    group.bench_function("loom_stream_completion", |b| {
        b.to_async(&rt).iter(|| ours(&ai))
    });
    group.bench_function("async_openai_create_stream", |b| {
        b.to_async(&rt).iter(|| async_openai(&client, &request))
    });
    group.finish();
    criterion.final_summary();

    // The ratio, from interleaved rounds in this same process (best of each).
    let (mut best_bare, mut best_ours, mut best_theirs) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..10 {
        let t = Instant::now();
        rt.block_on(bare(&http, &url));
        best_bare = best_bare.min(t.elapsed());
        let t = Instant::now();
        rt.block_on(ours(&ai));
        best_ours = best_ours.min(t.elapsed());
        let t = Instant::now();
        rt.block_on(async_openai(&client, &request));
        best_theirs = best_theirs.min(t.elapsed());
    }
    let rate = |d: Duration| TOKENS as f64 / d.as_secs_f64();
    println!(
        "bare \"\\n\\n\" split (ceiling):   {:>12.0} tokens/s",
        rate(best_bare)
    );
    println!(
        "loom-ai stream_completion:    {:>12.0} tokens/s",
        rate(best_ours)
    );
    println!(
        "async-openai create_stream:   {:>12.0} tokens/s",
        rate(best_theirs)
    );
    println!(
        "ratio loom-ai / async-openai: {:>12.2} (target > 1)",
        rate(best_ours) / rate(best_theirs)
    );
    println!(
        "ratio loom-ai / bare split:   {:>12.2}",
        rate(best_ours) / rate(best_bare)
    );
}
