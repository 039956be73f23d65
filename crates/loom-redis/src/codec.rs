//! How chunks and requests look inside Redis stream entries (DESIGN.md §3, "Redis").
//!
//! A chunk entry has the fields `type <type> data <json-or-null> seq <n>`, in that order, then
//! only the chunk's other fields that are present, each as JSON: `progress`, `error`, `actor`,
//! `step`, `event`, `attempt`. A token entry is three short fields. [`decode_chunk`] rebuilds
//! the exact [`StreamChunk`]; anything it cannot read is an error naming the problem, which the
//! consumer turns into `error/internal` naming the entry id.
//!
//! A request entry in `loom:queue:{<type>}` has the fields `run_id <id> actor <type>
//! input <json> timeout_ms <n>` (and `traceparent` when the caller has a trace); the run's
//! deadline is `timeout_ms` after the entry's id, both by Redis's clock.

use std::fmt;
use std::str::FromStr;

use loom_core::{ChunkType, StreamChunk};
use redis::{RedisWrite, Value};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::error::Error;
use crate::keys::check_name;
use crate::wire::{Strings, Walk};

/// A Redis stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// The id before every entry (`0-0`): reading after it reads the whole stream.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };

    /// The id of the entry Loom writes for the chunk of `seq` (`<seq>-1`; see the key layout
    /// in [`Keys`](crate::Keys)): reading after it reads every chunk with a greater `seq`.
    pub const fn of_seq(seq: u64) -> Self {
        Self { ms: seq, seq: 1 }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = Error;

    /// Parses `<ms>-<seq>` or `<ms>` (meaning `<ms>-0`).
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s.as_bytes()).ok_or_else(|| Error::InvalidEntryId(s.chars().take(64).collect()))
    }
}

impl EntryId {
    /// [`from_str`](Self::from_str) on the bytes of a reply, without a `str` in between.
    fn parse(text: &[u8]) -> Option<Self> {
        match text.iter().position(|&b| b == b'-') {
            Some(dash) => Some(Self {
                ms: decimal(&text[..dash])?,
                seq: decimal(&text[dash + 1..])?,
            }),
            None => Some(Self {
                ms: decimal(text)?,
                seq: 0,
            }),
        }
    }
}

/// A plain decimal number: digits only (no sign, no space), within `u64`.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// One entry of a stream as read: its id and its flat `field value …` list.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: EntryId,
    pub(crate) fields: Strings,
}

/// How many arguments [`write_chunk_args`] writes for `chunk` after its `seq`: the names and
/// values of the fields only some chunks have.
pub(crate) fn extra_field_count(chunk: &StreamChunk) -> usize {
    2 * [
        chunk.progress.is_some(),
        chunk.error.is_some(),
        chunk.actor.is_some(),
        chunk.step.is_some(),
        chunk.event.is_some(),
        chunk.attempt.is_some(),
    ]
    .iter()
    .filter(|present| **present)
    .count()
}

/// Appends `chunk` as the write script takes it (`script.rs`): the count of its other fields'
/// arguments ([`extra_field_count`]), its entry id (`<seq>-1`), the values of `type`, `data`
/// and `seq`, then its other fields present, `name value …` (DESIGN.md §3 order). The script
/// adds the three names every entry has, so a token chunk is five short arguments.
pub(crate) fn write_chunk_args<W: ?Sized + RedisWrite>(out: &mut W, chunk: &StreamChunk) {
    write_number(out, extra_field_count(chunk) as u64);
    write_entry_id(out, EntryId::of_seq(chunk.seq));
    out.write_arg(chunk.kind.as_str().as_bytes());
    match &chunk.data {
        Some(data) => write_json(out.writer_for_next_arg(), data),
        None => out.write_arg(b"null"),
    }
    write_number(out, chunk.seq);
    if let Some(progress) = &chunk.progress {
        out.write_arg(b"progress");
        write_json(out.writer_for_next_arg(), progress);
    }
    if let Some(error) = &chunk.error {
        out.write_arg(b"error");
        write_json(out.writer_for_next_arg(), error);
    }
    if let Some(actor) = &chunk.actor {
        out.write_arg(b"actor");
        write_json(out.writer_for_next_arg(), actor);
    }
    if let Some(step) = &chunk.step {
        out.write_arg(b"step");
        write_json(out.writer_for_next_arg(), step);
    }
    if let Some(event) = &chunk.event {
        out.write_arg(b"event");
        write_json(out.writer_for_next_arg(), event);
    }
    if let Some(attempt) = chunk.attempt {
        out.write_arg(b"attempt");
        write_number(out, u64::from(attempt));
    }
}

/// Writes `id` as one command argument, formatted on the stack (`itoa`, not `fmt`: this runs
/// for every chunk written).
fn write_entry_id<W: ?Sized + RedisWrite>(out: &mut W, id: EntryId) {
    let (mut ms, mut seq) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (ms, seq) = (ms.format(id.ms).as_bytes(), seq.format(id.seq).as_bytes());
    // Two `u64`s of at most 20 digits each and the dash.
    let mut text = [0u8; 41];
    text[..ms.len()].copy_from_slice(ms);
    text[ms.len()] = b'-';
    text[ms.len() + 1..][..seq.len()].copy_from_slice(seq);
    out.write_arg(&text[..ms.len() + 1 + seq.len()]);
}

/// Writes `n` in decimal as one argument.
fn write_number<W: ?Sized + RedisWrite>(out: &mut W, n: u64) {
    out.write_arg(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes `value` as JSON into one command argument.
fn write_json<T: serde::Serialize>(out: impl std::io::Write, value: &T) {
    // The chunk's parts hold only strings, numbers and JSON values (string keys), and the
    // writer is the command's `Vec`: serialising cannot fail. Were it ever to, the entry
    // would hold broken JSON, which the reader reports as an undecodable entry.
    let _ = serde_json::to_writer(out, value);
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // The chunk's parts hold only strings, numbers and JSON values: serialising cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// The text of a string-like reply value of the redis crate.
pub(crate) fn text(value: &Value) -> Option<&str> {
    text_bytes(value).and_then(|b| std::str::from_utf8(b).ok())
}

/// The bytes of a string-like reply value of the redis crate.
fn text_bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn parse_json<T: DeserializeOwned>(field: &str, raw: &[u8]) -> Result<T, String> {
    serde_json::from_slice(raw).map_err(|e| format!("field '{field}' is not valid: {e}"))
}

/// Rebuilds the chunk an entry stands for, or says why it cannot.
pub(crate) fn decode_chunk(fields: &Strings) -> Result<StreamChunk, String> {
    if !fields.len().is_multiple_of(2) {
        return Err("odd number of field/value items".to_owned());
    }
    let mut kind = None;
    let mut seq = None;
    let mut data: Option<&[u8]> = None;
    let mut chunk = StreamChunk::new(ChunkType::Start, 0);
    let mut texts = fields.iter();
    while let (Some(name), Some(value)) = (texts.next(), texts.next()) {
        match name {
            b"type" => {
                let name = std::str::from_utf8(value).unwrap_or("");
                kind =
                    Some(ChunkType::parse(name).ok_or_else(|| {
                        format!("unknown type {:?}", String::from_utf8_lossy(value))
                    })?);
            }
            b"seq" => {
                seq = Some(decimal(value).ok_or("field 'seq' is not a number")?);
            }
            b"data" => data = Some(value),
            b"progress" => chunk.progress = Some(parse_json("progress", value)?),
            b"error" => chunk.error = Some(parse_json("error", value)?),
            b"actor" => chunk.actor = Some(parse_json("actor", value)?),
            b"step" => chunk.step = Some(parse_json("step", value)?),
            b"event" => chunk.event = Some(parse_json("event", value)?),
            b"attempt" => chunk.attempt = Some(parse_json("attempt", value)?),
            // Fields added by a newer writer are not this reader's business.
            _ => {}
        }
    }
    chunk.kind = kind.ok_or("missing field 'type'")?;
    chunk.seq = seq.ok_or("missing field 'seq'")?;
    let data = data.ok_or("missing field 'data'")?;
    let data: Json = match token_text(data) {
        Some(text) => serde_json::json!({ "token": text }),
        None => parse_json("data", data)?,
    };
    // `start`, `data` and `complete` always carry a payload (possibly JSON null); on other
    // types `null` stands for "absent".
    chunk.data = match chunk.kind {
        ChunkType::Start | ChunkType::Data | ChunkType::Complete => Some(data),
        _ if data.is_null() => None,
        _ => Some(data),
    };
    Ok(chunk)
}

/// The text of a token's `data` as the writer wrote it, `{"token":"<text>"}`, when the text
/// needs no unescaping: most chunks of an LLM stream, read without the JSON parser (the
/// largest share of a reader's CPU per chunk otherwise). Anything else is left to the parser.
fn token_text(data: &[u8]) -> Option<&str> {
    let text = data
        .strip_prefix(br#"{"token":""#)?
        .strip_suffix(br#""}"#)?;
    if text.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20) {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// The value of field `name` in a flat `field value …` list.
pub(crate) fn field<'a>(fields: &'a Strings, name: &str) -> Option<&'a [u8]> {
    let mut texts = fields.iter();
    while let (Some(key), Some(value)) = (texts.next(), texts.next()) {
        if key == name.as_bytes() {
            return Some(value);
        }
    }
    None
}

/// Reads one entry `[id, [field, value, …]]` parsed by the redis crate.
fn parse_entry(value: Value) -> Result<RawEntry, String> {
    let Value::Array(mut parts) = value else {
        return Err("an entry is not an array".to_owned());
    };
    if parts.len() != 2 {
        return Err("an entry is not [id, fields]".to_owned());
    }
    let fields = match parts.pop() {
        Some(Value::Array(fields)) => fields,
        Some(Value::Nil) => Vec::new(),
        _ => return Err("an entry's fields are not a list".to_owned()),
    };
    let texts = fields
        .iter()
        .map(|f| text_bytes(f).ok_or("a field is not a string"))
        .collect::<Result<Vec<_>, _>>()?;
    let id = parts
        .pop()
        .as_ref()
        .and_then(text)
        .and_then(|s| s.parse().ok())
        .ok_or("an entry id is not <ms>-<seq>")?;
    Ok(RawEntry {
        id,
        fields: Strings::encode(texts),
    })
}

/// Reads a list of entries parsed by the redis crate (an `XRANGE` reply, or the entries of an
/// `XAUTOCLAIM` reply).
pub(crate) fn parse_entries(value: Value) -> Result<Vec<RawEntry>, String> {
    match value {
        Value::Array(items) => items.into_iter().map(parse_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err("a range reply is not an array".to_owned()),
    }
}

/// A reply that is not the shape expected of `what`.
fn shape(what: &'static str) -> impl Fn(Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Reads an `XREAD`/`XREADGROUP` reply ([`Wire::query_frame`](crate::wire::Wire::query_frame))
/// into `(key, entries)`, each entry's fields one slice of the reply's bytes.
pub(crate) fn parse_read_frame(
    frame: bytes::Bytes,
) -> Result<Vec<(String, Vec<RawEntry>)>, String> {
    let mut walk = Walk::new(frame);
    let Some(streams) = walk
        .array()
        .map_err(shape("a read reply is not an array"))?
    else {
        return Ok(Vec::new());
    };
    let mut read = Vec::with_capacity(streams);
    for _ in 0..streams {
        if walk.array().map_err(shape("a read reply item"))? != Some(2) {
            return Err("a read reply item is not [key, entries]".to_owned());
        }
        let key = walk.text().map_err(shape("a stream key"))?;
        let key = std::str::from_utf8(key)
            .map_err(|_| "a stream key is not text".to_owned())?
            .to_owned();
        let count = walk
            .array()
            .map_err(shape("a stream's entries"))?
            .unwrap_or(0);
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            if walk.array().map_err(shape("an entry"))? != Some(2) {
                return Err("an entry is not [id, fields]".to_owned());
            }
            let id = EntryId::parse(walk.text().map_err(shape("an entry id"))?)
                .ok_or("an entry id is not <ms>-<seq>")?;
            let n = walk
                .array()
                .map_err(shape("an entry's fields"))?
                .unwrap_or(0);
            let fields = walk.strings(n).map_err(shape("an entry's fields"))?;
            entries.push(RawEntry { id, fields });
        }
        read.push((key, entries));
    }
    Ok(read)
}

/// A request for one run, as it sits in an actor type's queue.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Request {
    pub(crate) run_id: String,
    pub(crate) actor: String,
    pub(crate) input: Json,
    /// The run's time budget, from when it was queued: the worker counts it from the request's
    /// entry id (Redis's clock when it was queued) to Redis's clock now, so no machine's own
    /// clock takes part.
    pub(crate) timeout_ms: u64,
    /// The caller's W3C trace context (field `traceparent`, only when there is one).
    pub(crate) traceparent: Option<String>,
    /// Whether the caller keeps its presence key (`Keys::caller`) while it reads the run,
    /// and the run is to be cancelled when that lapses (field `caller 1`, only when set).
    pub(crate) caller: bool,
}

impl Request {
    /// Appends the request's entry fields (name, value, …) to `cmd`.
    pub(crate) fn write_fields(&self, cmd: &mut redis::Cmd) {
        cmd.arg("run_id")
            .arg(&self.run_id)
            .arg("actor")
            .arg(&self.actor)
            .arg("input")
            .arg(json(&self.input))
            .arg("timeout_ms")
            .arg(self.timeout_ms);
        if let Some(traceparent) = &self.traceparent {
            cmd.arg(loom_core::trace::TRACEPARENT).arg(traceparent);
        }
        if self.caller {
            cmd.arg("caller").arg("1");
        }
    }

    /// Reads a request entry, checking the names before they become keys. An entry whose
    /// names are valid but whose other fields are not still names its run, so the worker can
    /// end that run with a clear error instead of leaving its reader to wait.
    pub(crate) fn decode(fields: &Strings) -> Result<Self, Unreadable> {
        let get = |name: &str| {
            field(fields, name)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(|| format!("missing or non-text field '{name}'"))
        };
        let names = || -> Result<(String, String), String> {
            let run_id = get("run_id")?.to_owned();
            let actor = get("actor")?.to_owned();
            check_name("run id", &run_id).map_err(|e| e.to_string())?;
            check_name("actor type", &actor).map_err(|e| e.to_string())?;
            Ok((run_id, actor))
        };
        let (run_id, actor) = names().map_err(|why| Unreadable { named: None, why })?;
        let rest = || -> Result<(Json, u64), String> {
            let input = parse_json("input", get("input")?.as_bytes())?;
            let timeout_ms = get("timeout_ms")?
                .parse::<u64>()
                .map_err(|_| "field 'timeout_ms' is not a number".to_owned())?;
            Ok((input, timeout_ms))
        };
        // Only a plausible value is kept: it becomes a span's parent, never a key.
        let traceparent = get(loom_core::trace::TRACEPARENT)
            .ok()
            .filter(|t| t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        let caller = get("caller").is_ok_and(|c| c == "1");
        match rest() {
            Ok((input, timeout_ms)) => Ok(Self {
                run_id,
                actor,
                input,
                timeout_ms,
                traceparent,
                caller,
            }),
            Err(why) => Err(Unreadable {
                named: Some(Box::new(Self {
                    run_id,
                    actor,
                    input: Json::Null,
                    timeout_ms: 0,
                    traceparent,
                    caller,
                })),
                why,
            }),
        }
    }
}

/// A request entry the worker cannot run.
#[derive(Debug)]
pub(crate) struct Unreadable {
    /// The request as far as it was read, when its run id and actor type are valid names:
    /// its run can be ended with the error. Its `input` and `timeout_ms` mean nothing.
    pub(crate) named: Option<Box<Request>>,
    /// What is wrong with the entry.
    pub(crate) why: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use loom_core::{ActorError, Event, Output};
    use serde_json::json;

    use super::*;

    /// The fields the write script writes for `chunk` (its `XADD` of the arguments
    /// [`write_chunk_args`] gives it), as an `XREAD` reply carries them.
    pub(crate) fn fields_of(chunk: &StreamChunk) -> Strings {
        let mut args: Vec<Vec<u8>> = Vec::new();
        write_chunk_args(&mut args, chunk);
        assert_eq!(args.len(), 5 + extra_field_count(chunk), "{chunk:?}");
        assert_eq!(args[0], extra_field_count(chunk).to_string().into_bytes());
        assert_eq!(EntryId::parse(&args[1]), Some(EntryId::of_seq(chunk.seq)));
        let (named, extra) = args[2..].split_at(3);
        let mut fields: Vec<&[u8]> = Vec::new();
        for (name, value) in [&b"type"[..], b"data", b"seq"].into_iter().zip(named) {
            fields.extend([name, value.as_slice()]);
        }
        fields.extend(extra.iter().map(Vec::as_slice));
        Strings::encode(fields)
    }

    /// `texts` as an entry's fields.
    pub(super) fn strings(texts: &[&str]) -> Strings {
        Strings::encode(texts.iter().map(|t| t.as_bytes()))
    }

    #[test]
    fn chunks_round_trip_with_fields_in_order() {
        let token = Output::token(" upon").into_chunk(4);
        let fields = fields_of(&token);
        let texts: Vec<_> = fields.iter().collect();
        assert_eq!(
            texts,
            [
                &b"type"[..],
                b"data",
                b"data",
                br#"{"token":" upon"}"#,
                b"seq",
                b"4"
            ]
        );

        let mut start = StreamChunk::new(ChunkType::Start, 7);
        start.data = Some(json!({"run_id": "r"}));
        start.attempt = Some(2);
        let chunks = [
            token,
            start,
            Output::progress(3, Some(10), "batch 3")
                .with_actor("researcher")
                .with_step("s1")
                .with_event(Event::ActionStart)
                .into_chunk(3),
            Output::complete(json!(null)).into_chunk(9),
            StreamChunk::error(9, &ActorError::cancelled()),
        ];
        for chunk in chunks {
            let fields = fields_of(&chunk);
            assert_eq!(decode_chunk(&fields).as_ref(), Ok(&chunk));
        }
    }

    #[test]
    fn undecodable_entries_say_why() {
        for bad in [
            &["type", "data", "data", "x"][..],
            &["type", "nope", "data", "null", "seq", "1"],
            &["type", "data", "data", "null", "seq", "-1"],
            &["type", "data", "data", "{", "seq", "1"],
            &["type"],
        ] {
            assert!(decode_chunk(&strings(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entry_ids_parse_and_order() {
        let a: EntryId = "5-1".parse().unwrap_or_default();
        let b: EntryId = "6".parse().unwrap_or_default();
        assert_eq!(a, EntryId { ms: 5, seq: 1 });
        assert!(a < b);
        assert_eq!(b.to_string(), "6-0");
        for bad in [
            "",
            "-",
            "a-1",
            "1-",
            "1-2-3",
            "+1",
            "$",
            "18446744073709551616-0",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_ids_are_written_as_they_parse() {
        for id in [
            EntryId::ZERO,
            EntryId::of_seq(12_345),
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        ] {
            let mut args: Vec<Vec<u8>> = Vec::new();
            write_entry_id(&mut args, id);
            assert_eq!(args, [id.to_string().into_bytes()]);
            assert_eq!(EntryId::parse(&args[0]), Some(id));
        }
    }
}

/// The entry decoder against arbitrary chunks and arbitrary fields (`PROPTEST_CASES` sets how
/// many; 2,000 by default).
#[cfg(test)]
mod properties {
    use loom_core::{ChunkType, ErrorCode, ErrorInfo, Event, Output, Progress, StreamChunk};
    use proptest::prelude::*;
    use serde_json::{json, Value as Json};

    use super::tests::fields_of;
    use super::{decode_chunk, token_text};
    use crate::wire::Strings;

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            ".{0,12}".prop_map(Json::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn chunk() -> impl Strategy<Value = StreamChunk> {
        let kind = prop_oneof![
            Just(ChunkType::Start),
            Just(ChunkType::Progress),
            Just(ChunkType::Data),
            Just(ChunkType::Complete),
            Just(ChunkType::Error),
        ];
        let event = prop_oneof![
            Just(None),
            Just(Some(Event::ActionStart)),
            Just(Some(Event::ActionComplete)),
            Just(Some(Event::ActionRetry)),
            Just(Some(Event::ActionFailed)),
        ];
        (
            kind,
            any::<u64>(),
            proptest::option::of(json_value()),
            proptest::option::of((
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(".{0,12}"),
            )),
            proptest::option::of((".{0,12}", any::<bool>())),
            proptest::option::of(".{1,8}"),
            proptest::option::of(".{1,8}"),
            event,
            proptest::option::of(2u32..10),
        )
            .prop_map(
                |(kind, seq, data, progress, error, actor, step, event, attempt)| {
                    let mut c = StreamChunk::new(kind, seq);
                    // As the runtime makes them: `start`, `data` and `complete` always carry a
                    // payload (maybe `null`); on the others `null` and "none" are one.
                    c.data = match kind {
                        ChunkType::Start | ChunkType::Data | ChunkType::Complete => {
                            Some(data.unwrap_or(Json::Null))
                        }
                        _ => data.filter(|d| !d.is_null()),
                    };
                    c.progress = progress.map(|(current, total, message)| {
                        Box::new(Progress {
                            current,
                            total,
                            message,
                        })
                    });
                    c.error = error.map(|(message, retryable)| {
                        Box::new(ErrorInfo {
                            code: ErrorCode::Upstream,
                            message,
                            retryable,
                        })
                    });
                    c.actor = actor.map(Into::into);
                    c.step = step.map(Into::into);
                    c.event = event;
                    c.attempt = attempt;
                    c
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn every_chunk_round_trips_exactly(chunk in chunk()) {
            prop_assert_eq!(decode_chunk(&fields_of(&chunk)), Ok(chunk));
        }

        #[test]
        fn token_data_reads_as_the_json_parser_reads_it(
            text in any::<String>(),
            raw in proptest::collection::vec(any::<u8>(), 0..12),
        ) {
            // Any text (quotes, backslashes, control characters go to the parser).
            let token = Output::token(text).into_chunk(1);
            prop_assert_eq!(decode_chunk(&fields_of(&token)), Ok(token));
            // Any bytes between the quotes: the fast path agrees with the parser or stands aside.
            let mut data = br#"{"token":""#.to_vec();
            data.extend(&raw);
            data.extend(br#""}"#);
            if let Some(text) = token_text(&data) {
                let parsed: Option<Json> = serde_json::from_slice(&data).ok();
                prop_assert_eq!(Some(json!({ "token": text })), parsed);
            }
        }

        #[test]
        fn read_replies_walk_to_the_entries_they_hold(
            streams in proptest::collection::vec(
                (
                    "[a-z:{}]{1,12}",
                    proptest::collection::vec(
                        (any::<u64>(), any::<u64>(), proptest::collection::vec(
                            proptest::collection::vec(any::<u8>(), 0..20), 0..8)),
                        0..4,
                    ),
                ),
                0..3,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            // The reply as Redis writes it: [[key, [[id, [field, …]], …]], …].
            let text = |t: &[u8]| [format!("${}\r\n", t.len()).into_bytes(), t.to_vec(), b"\r\n".to_vec()].concat();
            let mut reply = format!("*{}\r\n", streams.len()).into_bytes();
            for (key, entries) in &streams {
                reply.extend(b"*2\r\n");
                reply.extend(text(key.as_bytes()));
                reply.extend(format!("*{}\r\n", entries.len()).bytes());
                for (ms, seq, fields) in entries {
                    reply.extend(b"*2\r\n");
                    reply.extend(text(format!("{ms}-{seq}").as_bytes()));
                    reply.extend(format!("*{}\r\n", fields.len()).bytes());
                    for field in fields {
                        reply.extend(text(field));
                    }
                }
            }
            let read = super::parse_read_frame(reply.clone().into());
            prop_assert!(read.is_ok(), "{read:?}");
            let read = read.unwrap_or_default();
            prop_assert_eq!(read.len(), streams.len());
            for ((key, entries), (read_key, read_entries)) in streams.iter().zip(&read) {
                prop_assert_eq!(key, read_key);
                prop_assert_eq!(entries.len(), read_entries.len());
                for ((ms, seq, fields), entry) in entries.iter().zip(read_entries) {
                    prop_assert_eq!((*ms, *seq), (entry.id.ms, entry.id.seq));
                    let texts: Vec<Vec<u8>> = entry.fields.iter().map(<[u8]>::to_vec).collect();
                    prop_assert_eq!(fields, &texts);
                }
            }
            // Cut short anywhere, it is an error, never a panic.
            let cut = cut.index(reply.len().max(1));
            if cut < reply.len() {
                prop_assert!(super::parse_read_frame(reply[..cut].to_vec().into()).is_err());
            }
        }

        #[test]
        fn arbitrary_fields_decode_or_fail_cleanly(
            fields in proptest::collection::vec(
                prop_oneof![
                    Just(b"type".to_vec()), Just(b"data".to_vec()), Just(b"seq".to_vec()),
                    Just(b"error".to_vec()), Just(b"data".to_vec()), Just(b"7".to_vec()),
                    Just(json!({"token": "x"}).to_string().into_bytes()),
                    proptest::collection::vec(any::<u8>(), 0..12),
                ],
                0..10,
            )
        ) {
            let fields = Strings::encode(fields.iter().map(Vec::as_slice));
            // Never a panic: a chunk, or an error naming what is wrong.
            if let Err(why) = decode_chunk(&fields) {
                prop_assert!(!why.is_empty());
            }
        }
    }
}
