//! Property tests of every dialect's mapping: for any chunk sequence the runtime can produce
//! (tokens from the run, team members or workflow steps, tool-call deltas, progress, workflow
//! markers, a re-run's `start`, then one terminal chunk), each dialect's stream is valid by its
//! own rules and ends with its finish or error event. `PROPTEST_CASES` sets how many sequences
//! (2,000 by default; run with 100,000 before changing a mapping).

use std::collections::BTreeSet;

use loom_core::{ActorError, ChunkType, Event, Progress, StreamChunk};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::ag_ui::AgUiMapping;
use super::ai_sdk::AiSdkMapping;
use super::chat::{ChatMapping, Delta};
use super::responses::{Head, ResponsesMapping};

/// One step of a run, before numbering.
#[derive(Debug, Clone)]
enum Step {
    Token(Option<&'static str>, Option<&'static str>, String),
    ToolCall(u64, String),
    Progress(Option<&'static str>),
    Marker(Event, &'static str),
    Rerun,
    Data,
}

fn step() -> impl Strategy<Value = Step> {
    let who = prop_oneof![Just(None), Just(Some("writer")), Just(Some("critic"))];
    let step_name = prop_oneof![Just("a"), Just("b")];
    prop_oneof![
        6 => (who.clone(), prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))], "[a-z ]{0,4}")
            .prop_map(|(actor, step, text)| Step::Token(actor, step, text)),
        1 => (0u64..2, "[{}a-z\":]{0,4}").prop_map(|(i, args)| Step::ToolCall(i, args)),
        1 => who.prop_map(Step::Progress),
        2 => (prop_oneof![
                Just(Event::ActionStart),
                Just(Event::ActionComplete),
                Just(Event::ActionRetry),
                Just(Event::ActionFailed)
            ], step_name)
            .prop_map(|(event, step)| Step::Marker(event, step)),
        1 => Just(Step::Rerun),
        1 => Just(Step::Data),
    ]
}

/// A run: `start`, the steps numbered gaplessly, then `complete` or an error.
fn run() -> impl Strategy<Value = Vec<StreamChunk>> {
    (proptest::collection::vec(step(), 0..40), 0u8..4).prop_map(|(steps, end)| {
        let mut chunks = vec![StreamChunk::new(ChunkType::Start, 0)];
        let mut attempt = 1;
        for step in steps {
            let seq = chunks.len() as u64;
            let chunk = match step {
                Step::Token(actor, step, text) => {
                    let mut c = StreamChunk::new(ChunkType::Data, seq);
                    c.data = Some(json!({ "token": text }));
                    c.actor = actor.map(Into::into);
                    c.step = step.map(Into::into);
                    c
                }
                Step::ToolCall(index, arguments) => {
                    let mut c = StreamChunk::new(ChunkType::Data, seq);
                    c.data = Some(json!({ "tool_call": {
                        "index": index, "id": format!("call_{index}"), "name": "f",
                        "arguments": arguments,
                    }}));
                    c
                }
                Step::Progress(actor) => {
                    let mut c = StreamChunk::new(ChunkType::Progress, seq);
                    c.progress = Some(Box::new(Progress {
                        current: seq,
                        total: None,
                        message: None,
                    }));
                    c.actor = actor.map(Into::into);
                    c
                }
                Step::Marker(event, step) => {
                    let kind = match event {
                        Event::ActionComplete | Event::ActionFailed => ChunkType::Data,
                        _ => ChunkType::Progress,
                    };
                    let mut c = StreamChunk::new(kind, seq);
                    c.event = Some(event);
                    c.step = Some(step.into());
                    if kind == ChunkType::Data {
                        c.data = Some(json!({ "ok": true }));
                    } else {
                        c.progress = Some(Box::new(Progress {
                            current: 0,
                            total: None,
                            message: None,
                        }));
                    }
                    c
                }
                Step::Rerun => {
                    attempt += 1;
                    let mut c = StreamChunk::new(ChunkType::Start, seq);
                    c.attempt = Some(attempt);
                    c
                }
                Step::Data => {
                    let mut c = StreamChunk::new(ChunkType::Data, seq);
                    c.data = Some(json!({ "rows": seq }));
                    c
                }
            };
            chunks.push(chunk);
        }
        let seq = chunks.len() as u64;
        chunks.push(match end {
            0 => StreamChunk::error(seq, &ActorError::cancelled()),
            1 => StreamChunk::error(seq, &ActorError::failed("boom")),
            _ => {
                let mut c = StreamChunk::new(ChunkType::Complete, seq);
                c.data = Some(json!({ "text": "done", "usage": null }));
                c
            }
        });
        chunks
    })
}

fn kind(event: &Value) -> &str {
    event["type"].as_str().unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn chat_ends_with_exactly_one_finish_or_error(chunks in run()) {
        let mut mapping = ChatMapping::default();
        let deltas: Vec<Delta> = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        let ends = deltas
            .iter()
            .filter(|d| matches!(d, Delta::Finish { .. } | Delta::Error(_)))
            .count();
        prop_assert_eq!(ends, 1);
        let ended = matches!(deltas.last(), Some(Delta::Finish { .. } | Delta::Error(_)));
        prop_assert!(ended, "the last delta ends the completion");
    }

    #[test]
    fn responses_open_items_before_deltas_and_end_once(chunks in run()) {
        let mut mapping = ResponsesMapping::new(Head::for_tests());
        let events: Vec<Value> = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        prop_assert_eq!(kind(&events[0]), "response.created");
        let mut open = BTreeSet::new();
        for event in &events {
            match kind(event) {
                "response.output_item.added" => {
                    prop_assert!(open.insert(event["output_index"].as_u64()));
                }
                "response.output_text.delta" | "response.function_call_arguments.delta" => {
                    prop_assert!(open.contains(&event["output_index"].as_u64()));
                }
                "response.output_item.done" => {
                    prop_assert!(open.remove(&event["output_index"].as_u64()));
                }
                _ => {}
            }
        }
        prop_assert!(open.is_empty(), "every item closed");
        let last = kind(events.last().unwrap());
        prop_assert!(matches!(last, "response.completed" | "response.failed" | "response.incomplete"));
        let ends = events
            .iter()
            .filter(|e| matches!(kind(e), "response.completed" | "response.failed" | "response.incomplete"))
            .count();
        prop_assert_eq!(ends, 1);
    }

    #[test]
    fn ag_ui_keeps_the_order_its_client_verifies(chunks in run()) {
        let mut mapping = AgUiMapping::new("t", "r");
        let events: Vec<Value> = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        prop_assert_eq!(kind(&events[0]), "RUN_STARTED");
        let (mut messages, mut steps, mut calls) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (i, event) in events.iter().enumerate() {
            let id = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
            match kind(event) {
                "RUN_STARTED" => prop_assert_eq!(i, 0),
                "TEXT_MESSAGE_START" => prop_assert!(messages.insert(id("messageId"))),
                "TEXT_MESSAGE_CONTENT" => {
                    prop_assert!(messages.contains(&id("messageId")));
                    prop_assert!(!id("delta").is_empty(), "no empty deltas");
                }
                "TEXT_MESSAGE_END" => prop_assert!(messages.remove(&id("messageId"))),
                "STEP_STARTED" => prop_assert!(steps.insert(id("stepName")), "a step active twice"),
                "STEP_FINISHED" => prop_assert!(steps.remove(&id("stepName"))),
                "TOOL_CALL_START" => prop_assert!(calls.insert(id("toolCallId"))),
                "TOOL_CALL_ARGS" => prop_assert!(calls.contains(&id("toolCallId"))),
                "TOOL_CALL_END" => prop_assert!(calls.remove(&id("toolCallId"))),
                "RUN_FINISHED" => {
                    prop_assert!(messages.is_empty() && steps.is_empty() && calls.is_empty());
                    prop_assert_eq!(i, events.len() - 1);
                }
                "RUN_ERROR" => prop_assert_eq!(i, events.len() - 1),
                _ => {}
            }
        }
        prop_assert!(matches!(kind(events.last().unwrap()), "RUN_FINISHED" | "RUN_ERROR"));
    }

    #[test]
    fn ai_sdk_parts_refer_to_open_parts_and_end_with_done(chunks in run()) {
        let mut mapping = AiSdkMapping::new("r");
        let parts: Vec<Value> = chunks.iter().flat_map(|c| mapping.map(c)).collect();
        prop_assert_eq!(kind(&parts[0]), "start");
        let mut texts = BTreeSet::new();
        let mut calls = BTreeSet::new();
        for part in &parts[..parts.len() - 1] {
            let id = |key: &str| part[key].as_str().unwrap_or_default().to_owned();
            match kind(part) {
                "text-start" => prop_assert!(texts.insert(id("id"))),
                "text-delta" => prop_assert!(texts.contains(&id("id"))),
                "text-end" => prop_assert!(texts.remove(&id("id"))),
                "tool-input-start" => prop_assert!(calls.insert(id("toolCallId"))),
                "tool-input-delta" => prop_assert!(calls.contains(&id("toolCallId"))),
                "tool-input-available" | "tool-input-error" => prop_assert!(calls.remove(&id("toolCallId"))),
                t => prop_assert!(t.is_empty() || t.starts_with("data-loom-") || matches!(t, "start" | "start-step" | "finish-step" | "finish" | "error"), "{}", t),
            }
        }
        prop_assert!(texts.is_empty(), "every text part ended");
        prop_assert_eq!(parts.last(), Some(&json!("[DONE]")));
        let end = kind(&parts[parts.len() - 2]);
        prop_assert!(matches!(end, "finish" | "error"));
    }
}
