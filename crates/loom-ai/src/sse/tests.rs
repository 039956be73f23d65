//! The SSE parser on the awkward cases: every split point, every line ending, comments,
//! `event:` lines, multi-line data, a BOM, the end of the stream, and its size limit.

use super::{SseError, SseParser, MAX_EVENT_BYTES};

/// (event type, data) of every event in `pieces`, fed one piece at a time, then `finish`.
fn parse(pieces: &[&[u8]]) -> Vec<(Option<String>, String)> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        parser.feed(piece).expect("feed");
        while let Some(event) = parser.next_event() {
            out.push((event.event.map(str::to_owned), event.data.to_owned()));
        }
    }
    if let Some(event) = parser.finish() {
        out.push((event.event.map(str::to_owned), event.data.to_owned()));
    }
    out
}

fn data(events: &[(Option<String>, String)]) -> Vec<&str> {
    events.iter().map(|(_, d)| d.as_str()).collect()
}

/// Parses `input` split at every pair of byte positions and checks each gives `expected`.
fn assert_every_split(input: &[u8], expected: &[(Option<&str>, &str)]) {
    let expected: Vec<(Option<String>, String)> = expected
        .iter()
        .map(|(e, d)| (e.map(str::to_owned), (*d).to_owned()))
        .collect();
    assert_eq!(parse(&[input]), expected, "unsplit");
    for i in 0..=input.len() {
        for j in i..=input.len() {
            let got = parse(&[&input[..i], &input[i..j], &input[j..]]);
            assert_eq!(got, expected, "split at {i} and {j}");
        }
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(parse(&bytes), expected, "one byte per read");
}

#[test]
fn an_event_is_held_back_until_its_blank_line() {
    let mut parser = SseParser::new();
    parser.feed(b"data: hel").expect("feed");
    assert!(parser.next_event().is_none());
    parser.feed(b"lo\r\n\r\n").expect("feed");
    assert_eq!(parser.next_event().map(|e| e.data), Some("hello"));
}

#[test]
fn events_split_at_any_byte_come_out_whole() {
    assert_every_split(
        b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n",
        &[(None, "{\"a\":1}"), (None, "{\"b\":2}")],
    );
}

#[test]
fn a_read_ending_inside_a_multibyte_character_is_decoded_once_complete() {
    // "é" is 2 bytes, "東" 3, "🚀" 4: every split lands inside one of them somewhere.
    let input = "data: café 東京 🚀\n\n".as_bytes();
    assert_every_split(input, &[(None, "café 東京 🚀")]);
}

#[test]
fn crlf_cr_and_lf_line_endings_are_all_line_endings() {
    let expected = [(None, "one"), (None, "two"), (None, "three")];
    assert_every_split(b"data: one\r\n\r\ndata: two\r\rdata: three\n\n", &expected);
    assert_every_split(
        b"data: one\r\n\r\ndata: two\r\n\r\ndata: three\r\n\r\n",
        &expected,
    );
}

#[test]
fn a_cr_ending_one_read_and_a_lf_starting_the_next_are_one_line_end() {
    // Were the "\n" taken for a blank line, "a" and "b" would come out as two events.
    let events = parse(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
    assert_eq!(data(&events), ["a\nb"]);
    let events = parse(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
    assert_eq!(data(&events), ["a", "b"]);
}

#[test]
fn comments_and_keep_alives_are_skipped() {
    assert_every_split(
        b": keep-alive\n\n:\ndata: x\n: in the middle\n\n: ping\r\n\r\n",
        &[(None, "x")],
    );
}

#[test]
fn event_lines_set_the_type_of_their_event_only() {
    assert_every_split(
        b"event: error\ndata: {\"error\":{}}\n\ndata: plain\n\n",
        &[(Some("error"), "{\"error\":{}}"), (None, "plain")],
    );
}

#[test]
fn multi_line_data_joins_with_newlines() {
    assert_every_split(
        b"data: {\"a\":\ndata:  1}\ndata\n\n",
        &[(None, "{\"a\":\n 1}\n")],
    );
}

#[test]
fn one_space_after_the_colon_is_dropped_and_no_more() {
    assert_eq!(data(&parse(&[b"data:x\n\ndata:  y\n\n"])), ["x", " y"]);
}

#[test]
fn id_retry_and_unknown_fields_are_ignored() {
    assert_eq!(
        data(&parse(&[
            b"id: 7\nretry: 100\nfoo: bar\ndata: x\n\nid: 8\n\n"
        ])),
        ["x"]
    );
}

#[test]
fn a_blank_line_without_data_dispatches_nothing() {
    assert!(parse(&[b"\n\n\r\n\revent: x\n\n"]).is_empty());
}

#[test]
fn an_empty_data_field_is_still_an_event() {
    assert_eq!(data(&parse(&[b"data:\n\n"])), [""]);
}

#[test]
fn a_leading_byte_order_mark_is_dropped_even_when_split() {
    let input = b"\xEF\xBB\xBFdata: x\n\n";
    assert_every_split(input, &[(None, "x")]);
}

#[test]
fn at_the_end_complete_data_lines_count_and_an_unfinished_line_does_not() {
    assert_eq!(data(&parse(&[b"data: a\n\ndata: b\n"])), ["a", "b"]);
    assert_eq!(data(&parse(&[b"data: a\n\ndata: {\"cut"])), ["a"]);
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    assert_eq!(data(&parse(&[b"data: a\xFFb\n\n"])), ["a\u{FFFD}b"]);
}

#[test]
fn a_line_that_never_ends_is_refused_past_the_limit() {
    let mut parser = SseParser::new();
    parser.feed(b"data: ").expect("feed");
    let block = vec![b'x'; 1024 * 1024];
    let mut result = Ok(());
    for _ in 0..=MAX_EVENT_BYTES / block.len() {
        result = parser.feed(&block);
        assert!(parser.next_event().is_none());
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(SseError::EventTooLarge));
}

#[test]
fn a_long_line_in_small_reads_is_not_rescanned_from_its_start() {
    // Behaviour, not speed: a 200 KiB line fed 1 byte at a time still parses correctly.
    let payload = "y".repeat(200 * 1024);
    let input = format!("data: {payload}\n\n");
    let mut parser = SseParser::new();
    let mut got = Vec::new();
    for byte in input.as_bytes().chunks(1) {
        parser.feed(byte).expect("feed");
        while let Some(event) = parser.next_event() {
            got.push(event.data.len());
        }
    }
    assert_eq!(got, [payload.len()]);
}

#[test]
fn an_openai_stream_parses_event_by_event() {
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\
                data: [DONE]\n\n";
    let events = parse(&[body.as_bytes()]);
    assert_eq!(events.len(), 4);
    assert_eq!(events[3].1, "[DONE]");
}

mod properties {
    use proptest::prelude::*;

    use super::parse;

    /// An event: an optional type and its data lines.
    fn event() -> impl Strategy<Value = (Option<String>, Vec<String>)> {
        (
            proptest::option::of("[a-z]{1,6}"),
            proptest::collection::vec("[a-zA-Z0-9 :{}\"]{1,12}", 1..4),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any events, any line endings, cut into any pieces: the same events.
        #[test]
        fn any_stream_cut_anywhere_gives_the_same_events(
            events in proptest::collection::vec(event(), 0..6),
            ending in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut text = String::new();
            for (kind, lines) in &events {
                if let Some(kind) = kind {
                    text.push_str(&format!("event: {kind}{ending}"));
                }
                for line in lines {
                    text.push_str(&format!("data: {line}{ending}"));
                }
                text.push_str(ending);
            }
            let bytes = text.as_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in at {
                pieces.push(&bytes[from..cut]);
                from = cut;
            }
            pieces.push(&bytes[from..]);
            let expected: Vec<(Option<String>, String)> = events
                .iter()
                .map(|(kind, lines)| (kind.clone(), lines.join("\n")))
                .collect();
            prop_assert_eq!(parse(&pieces), expected);
        }
    }
}
