//! [`StreamChunk`], the wire type every consumer reads, local or remote.
//!
//! Only the runtime (and a remote consumer rebuilding a chunk) creates chunks: actors yield
//! [`Output`](crate::Output), which has no `seq`, no `start` and no `error`.
//!
//! The JSON of each `type` (DESIGN.md §3); absent fields are omitted:
//!
//! ```json
//! {"type":"start","seq":0,"data":{"run_id":"…","actor":"batch"}}
//! {"type":"progress","seq":3,"actor":"researcher","progress":{"current":3,"total":10,"message":"batch 3"}}
//! {"type":"data","seq":4,"data":{"token":" upon"}}
//! {"type":"complete","seq":9,"data":{"text":"Once upon a time."}}
//! {"type":"error","seq":9,"error":{"code":"cancelled","message":"cancelled by client","retryable":false}}
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ActorError, ErrorCode};

/// What a chunk is; serialised as the `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkType {
    /// The first chunk of every run (and of every new attempt of a remote run).
    Start,
    /// How far the run has come.
    Progress,
    /// A partial result, e.g. one LLM token.
    Data,
    /// Terminal: the run succeeded; `data` is the result.
    Complete,
    /// Terminal: the run failed; `error` says why.
    Error,
}

impl ChunkType {
    /// Whether a chunk of this type ends its stream.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Complete | Self::Error)
    }

    /// The wire name, e.g. `"progress"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Progress => "progress",
            Self::Data => "data",
            Self::Complete => "complete",
            Self::Error => "error",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "start" => Self::Start,
            "progress" => Self::Progress,
            "data" => Self::Data,
            "complete" => Self::Complete,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

/// The payload of a `progress` chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Units done so far.
    pub current: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What is happening, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The payload of an `error` chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// Whether running the same request again may succeed.
    #[serde(default)]
    pub retryable: bool,
}

impl From<&ActorError> for ErrorInfo {
    fn from(err: &ActorError) -> Self {
        Self {
            code: err.code(),
            message: err.message().to_owned(),
            retryable: err.is_retryable(),
        }
    }
}

impl From<ErrorInfo> for ActorError {
    fn from(info: ErrorInfo) -> Self {
        ActorError::new(info.code, info.message).with_retryable(info.retryable)
    }
}

/// A workflow marker, serialised as the `event` field (DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    /// A workflow action started.
    ActionStart,
    /// A workflow action finished; `data` is its result.
    ActionComplete,
    /// A workflow action failed and is run again: its earlier output is superseded.
    ActionRetry,
    /// A workflow action failed and the workflow goes on (`continue_on_error`).
    ActionFailed,
}

/// The name in a chunk's `actor` or `step` tag, serialised as a plain string.
///
/// Shared and one pointer wide: a team or a workflow step tags every chunk it forwards with
/// the same `Tag` (a clone is a reference count, not a copy of the name), and a chunk that
/// stays within 128 bytes is moved through each layer of a stream with a few register
/// moves instead of a call to `memcpy`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Arc<String>);

impl Tag {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Tag {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Tag {
    fn from(name: String) -> Self {
        Self(Arc::new(name))
    }
}

impl From<&str> for Tag {
    fn from(name: &str) -> Self {
        Self(Arc::new(name.to_owned()))
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Tag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// One element of a run's stream: ordered by a gapless `seq` that starts at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    /// What the chunk is.
    #[serde(rename = "type")]
    pub kind: ChunkType,
    /// Position in the stream: 0, 1, 2, … with no gaps.
    pub seq: u64,
    /// Payload of `start`, `data` and `complete` chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Payload of `progress` chunks (boxed, like `error`: a token chunk has neither, and a
    /// smaller chunk is cheaper to move through every layer of the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Box<Progress>>,
    /// Payload of `error` chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Box<ErrorInfo>>,
    /// The team member that produced the chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Tag>,
    /// The workflow action that produced the chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Tag>,
    /// A workflow marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// On a `start` chunk: which attempt of a remote run this is (2 and up after a re-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
}

impl StreamChunk {
    /// A chunk of the given type with no payload.
    pub fn new(kind: ChunkType, seq: u64) -> Self {
        Self {
            kind,
            seq,
            data: None,
            progress: None,
            error: None,
            actor: None,
            step: None,
            event: None,
            attempt: None,
        }
    }

    /// A terminal `error` chunk.
    pub fn error(seq: u64, err: &ActorError) -> Self {
        Self {
            error: Some(Box::new(err.into())),
            ..Self::new(ChunkType::Error, seq)
        }
    }

    /// The error payload of an `error` chunk, or an `internal` error if it has none.
    pub fn error_info(&self) -> ErrorInfo {
        match &self.error {
            Some(info) => ErrorInfo::clone(info),
            None => (&ActorError::internal("an error chunk without an error payload")).into(),
        }
    }

    /// Whether this chunk ends its stream.
    pub fn is_terminal(&self) -> bool {
        self.kind.is_terminal()
    }

    /// The token text of an LLM token `data` chunk (`{"token": …}`), if it is one.
    pub fn token(&self) -> Option<&str> {
        match (self.kind, &self.data) {
            (ChunkType::Data, Some(Value::Object(map))) => map.get("token")?.as_str(),
            _ => None,
        }
    }

    /// Serialises the chunk as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        // A StreamChunk holds only strings, numbers and JSON values: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
