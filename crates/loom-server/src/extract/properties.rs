//! Property tests of HTTP body decoding: any bytes sent as the body of any route — Loom's own
//! envelopes and each dialect's request — decode or are a 400 with a message, never a panic,
//! however deep or broken; and a valid envelope, with its fields in any order and any
//! whitespace, decodes to exactly what was sent (which found that floats lost their last
//! digit: serde_json now parses with `float_roundtrip`). `PROPTEST_CASES` sets how many bodies
//! (2,000 by default).

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use loom_core::{Extensions, Registry, Runtime};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::{Envelope, LoomJson, OnDisconnect, RunRequest};
use crate::config::ServerConfig;
use crate::dialect::{ag_ui, ai_sdk, chat, responses};
use crate::error::ApiError;
use crate::state::ServerState;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig::with_cases(cases)
}

thread_local! {
    /// One runtime and one server state per test thread, for every body decoded on it.
    static SERVER: (tokio::runtime::Runtime, ServerState) = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let state = runtime.block_on(async {
            ServerState::new(
                Runtime::new(Registry::new(), Extensions::new()),
                Vec::new(),
                ServerConfig::default(),
            )
        });
        (runtime, state)
    };
}

/// Decodes `body` as a `T` the way a route does.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    SERVER.with(|(runtime, state)| {
        let request = Request::new(Body::from(body.to_vec()));
        runtime.block_on(async {
            LoomJson::<T>::parse(request, state)
                .await
                .map(|LoomJson(value)| value)
        })
    })
}

/// `Ok`, or a 400 whose message says what is wrong.
fn decodes_or_is_a_400<T: DeserializeOwned>(body: &[u8]) -> Result<(), TestCaseError> {
    if let Err(error) = decode::<T>(body) {
        let message = error.to_string();
        let status = error.into_response().status();
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", message);
        prop_assert!(!message.is_empty());
    }
    Ok(())
}

/// Every body type a route decodes.
fn every_body_type(body: &[u8]) -> Result<(), TestCaseError> {
    decodes_or_is_a_400::<Envelope>(body)?;
    decodes_or_is_a_400::<RunRequest>(body)?;
    decodes_or_is_a_400::<chat::ChatRequest>(body)?;
    decodes_or_is_a_400::<responses::CreateResponse>(body)?;
    decodes_or_is_a_400::<ag_ui::RunAgentInput>(body)?;
    decodes_or_is_a_400::<ai_sdk::ChatBody>(body)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Text that looks like JSON: the characters JSON is made of, in any order.
fn json_like() -> impl Strategy<Value = String> {
    "[\\[\\]{}\",:0-9a-z\\\\ \n\ttrufalsenul.eE+-]{0,300}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_or_are_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        every_body_type(&body)?;
    }

    #[test]
    fn json_like_text_decodes_or_is_a_400(body in json_like()) {
        every_body_type(body.as_bytes())?;
    }

    #[test]
    fn any_json_value_decodes_or_is_a_400(value in json_value()) {
        every_body_type(value.to_string().as_bytes())?;
        every_body_type(json!({ "input": value, "messages": [value] }).to_string().as_bytes())?;
    }

    #[test]
    fn nesting_of_any_depth_is_never_a_crash(
        depth in prop_oneof![20 => 0usize..1_000, 1 => 1_000usize..200_000],
        open in "[\\[{]",
    ) {
        let (open, close) = if open == "[" { ("[", "]") } else { ("{\"a\":", "}") };
        let body = format!("{{\"input\":{}1{}}}", open.repeat(depth), close.repeat(depth));
        every_body_type(body.as_bytes())?;
    }

    #[test]
    fn a_valid_envelope_in_any_order_and_spacing_decodes_to_what_was_sent(
        input in proptest::option::of(json_value()),
        on_disconnect in proptest::option::of(prop_oneof![Just("cancel"), Just("continue")]),
        timeout in proptest::option::of("[1-9][0-9]{0,3}(ms|s|m)"),
        order in Just([0usize, 1, 2]).prop_shuffle(),
        space in "[ \t\r\n]{0,3}",
    ) {
        let mut fields = Vec::new();
        for i in order {
            let field = match i {
                0 => input.as_ref().map(|v| format!("\"input\"{space}:{space}{v}")),
                1 => on_disconnect.map(|v| format!("\"on_disconnect\":\"{v}\"")),
                _ => timeout.as_ref().map(|v| format!("\"timeout\":{space}\"{v}\"")),
            };
            fields.extend(field);
        }
        let body = format!("{space}{{{space}{}{space}}}{space}", fields.join(&format!("{space},")));
        let envelope = decode::<Envelope>(body.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{body}: {e}")))?;
        prop_assert_eq!(envelope.input, input);
        let expected = match on_disconnect {
            Some("continue") => OnDisconnect::Continue,
            _ => OnDisconnect::Cancel,
        };
        prop_assert_eq!(envelope.on_disconnect, expected);
        prop_assert_eq!(envelope.timeout, timeout);
    }
}
