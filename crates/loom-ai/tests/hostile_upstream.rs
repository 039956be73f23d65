//! A hostile OpenAI-compatible upstream, end to end through `chat-agent`: a 100 MB line, a
//! line that never ends, and invalid UTF-8. Each run ends with one terminal chunk, keeps the
//! tokens that came before the fault, and reads no more than the SSE event limit.

mod support;

use std::time::Duration;

use loom_core::{ChunkType, ErrorCode, StreamChunk};
use serde_json::json;
use support::wire::{self, frame};
use support::{chat_runtime, run_chat, RawServer};

/// The parser refuses an event past 8 MiB; the client may have a few socket buffers more in
/// flight, never the whole line.
const READ_BOUND: usize = 32 * 1024 * 1024;

const MIB: usize = 1024 * 1024;

/// The text of the `data` tokens, and the terminal chunk.
fn tokens_and_end(chunks: &[StreamChunk]) -> (String, &StreamChunk) {
    let text = chunks
        .iter()
        .filter(|c| c.kind == ChunkType::Data)
        .filter_map(|c| c.data.as_ref()?.get("token")?.as_str())
        .collect();
    let end = chunks.last().expect("a terminal chunk");
    assert_eq!(
        chunks.iter().filter(|c| c.is_terminal()).count(),
        1,
        "{chunks:?}"
    );
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, i as u64);
    }
    (text, end)
}

fn assert_upstream_too_large(end: &StreamChunk) {
    assert_eq!(end.kind, ChunkType::Error, "{end:?}");
    let error = end.error.as_ref().expect("error");
    assert_eq!(error.code, ErrorCode::Upstream, "{error:?}");
    assert!(error.message.contains("larger than"), "{}", error.message);
}

#[tokio::test]
async fn a_100_mb_line_ends_the_run_as_upstream_after_its_tokens_without_reading_it_all() {
    let before = frame(&wire::text_chunk("before")).into_bytes();
    let server = RawServer::start_with(
        move || {
            let head = [before.clone(), b"data: ".to_vec()];
            let line = std::iter::repeat_n(vec![b'x'; MIB], 100);
            head.into_iter().chain(line).chain([b"\n\n".to_vec()])
        },
        Duration::ZERO,
    )
    .await;
    let chunks = run_chat(&chat_runtime(server.service()), json!({ "prompt": "x" })).await;
    let (text, end) = tokens_and_end(&chunks);
    assert_eq!(text, "before");
    assert_upstream_too_large(end);
    assert!(
        server.written() < READ_BOUND,
        "the client took {} bytes",
        server.written()
    );
}

#[tokio::test]
async fn a_line_that_never_ends_ends_the_run_as_upstream() {
    let before = frame(&wire::text_chunk("partial")).into_bytes();
    let server = RawServer::start_with(
        move || {
            let head = [before.clone(), b"data: {\"choices\":[".to_vec()];
            head.into_iter()
                .chain(std::iter::repeat(vec![b' '; 64 * 1024]))
        },
        Duration::from_micros(50),
    )
    .await;
    let chunks = run_chat(&chat_runtime(server.service()), json!({ "prompt": "x" })).await;
    let (text, end) = tokens_and_end(&chunks);
    assert_eq!(text, "partial");
    assert_upstream_too_large(end);
    assert!(server.written() < READ_BOUND);
}

#[tokio::test]
async fn invalid_utf8_in_tokens_is_replaced_and_the_run_completes_with_the_same_text() {
    // `\xFF` and a truncated two-byte character, the second split across two reads.
    let token = |bytes: &[u8]| {
        let mut line = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
        line.extend_from_slice(bytes);
        line.extend_from_slice(b"\"},\"finish_reason\":null}]}\n\n");
        line
    };
    let first = token(b"a\xFFb");
    let second = token(b"c\xC3");
    let (split_a, split_b) = second.split_at(second.len() - 30);
    let pieces = vec![
        first,
        split_a.to_vec(),
        split_b.to_vec(),
        frame(&wire::finish_chunk("stop")).into_bytes(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let server = RawServer::start(pieces, Duration::from_millis(2)).await;
    let chunks = run_chat(&chat_runtime(server.service()), json!({ "prompt": "x" })).await;
    let (text, end) = tokens_and_end(&chunks);
    assert_eq!(text, "a\u{FFFD}bc\u{FFFD}");
    assert_eq!(end.kind, ChunkType::Complete, "{end:?}");
    assert_eq!(end.data.as_ref().unwrap()["text"], json!(text));
}
