//! [`Output`]: what an actor yields. The runtime turns each one into a numbered chunk.
//!
//! An `Output` has no `seq`, no `start` and no error variant on purpose: numbering, the first
//! chunk and the single terminal chunk belong to the runtime, so no actor can break the stream
//! contract. An actor fails by returning `Err(ActorError)` from its stream.
//!
//! Inside, an `Output` is the chunk it will become, still unnumbered: numbering it only sets
//! its `seq`, and a team or a workflow step that forwards a member's chunk only re-tags it.

use serde_json::Value;

use crate::chunk::{ChunkType, Event, Progress, StreamChunk, Tag};

/// One item an actor yields: a `progress`, a `data` or the `complete` output, optionally
/// tagged with the team member or workflow step it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The chunk it becomes; its `seq` is set when the runtime numbers it.
    chunk: StreamChunk,
}

impl Output {
    fn of(kind: ChunkType, data: Option<Value>) -> Self {
        let mut chunk = StreamChunk::new(kind, 0);
        chunk.data = data;
        Self { chunk }
    }

    /// What the output becomes: `progress`, `data` or `complete`.
    pub fn kind(&self) -> ChunkType {
        self.chunk.kind
    }

    /// The team member that produced it.
    pub fn actor(&self) -> Option<&str> {
        self.chunk.actor.as_deref()
    }

    /// The workflow action that produced it.
    pub fn step(&self) -> Option<&str> {
        self.chunk.step.as_deref()
    }

    /// The workflow marker it carries.
    pub fn event(&self) -> Option<Event> {
        self.chunk.event
    }

    /// A `progress` output: `current` of `total` units (`None` when the total is unknown),
    /// with a message for a person: `Output::progress(1, Some(3), "batch 1")`.
    pub fn progress(current: u64, total: Option<u64>, message: impl Into<String>) -> Self {
        let mut output = Self::of(ChunkType::Progress, None);
        output.chunk.progress = Some(Box::new(Progress {
            current,
            total,
            message: Some(message.into()),
        }));
        output
    }

    /// A `data` output: a partial result.
    pub fn data(value: impl Into<Value>) -> Self {
        Self::of(ChunkType::Data, Some(value.into()))
    }

    /// An LLM token: a `data` output `{"token": text}` carrying the delta only.
    pub fn token(text: impl Into<String>) -> Self {
        Self::data(serde_json::json!({ "token": text.into() }))
    }

    /// The `complete` output: the run's result.
    pub fn complete(value: impl Into<Value>) -> Self {
        Self::of(ChunkType::Complete, Some(value.into()))
    }

    /// Tags the output with the team member that produced it. A forwarder passes the same
    /// [`Tag`] for every chunk, so a tag costs a reference count, not a copy.
    pub fn with_actor(mut self, actor: impl Into<Tag>) -> Self {
        self.chunk.actor = Some(actor.into());
        self
    }

    /// Tags the output with the workflow step that produced it (see
    /// [`with_actor`](Self::with_actor)).
    pub fn with_step(mut self, step: impl Into<Tag>) -> Self {
        self.chunk.step = Some(step.into());
        self
    }

    /// Marks the output as a workflow event.
    pub fn with_event(mut self, event: Event) -> Self {
        self.chunk.event = Some(event);
        self
    }

    /// Removes any workflow marker (a forwarded chunk is not the forwarder's marker).
    pub fn without_event(mut self) -> Self {
        self.chunk.event = None;
        self
    }

    /// Whether this output ends the run.
    pub fn is_complete(&self) -> bool {
        self.chunk.kind == ChunkType::Complete
    }

    /// Numbers the output, turning it into the chunk a consumer reads.
    #[inline]
    pub fn into_chunk(self, seq: u64) -> StreamChunk {
        let mut chunk = self.chunk;
        chunk.seq = seq;
        chunk
    }

    /// The output a forwarded chunk stands for, with its payload and tags (`start` and
    /// `error` chunks have none). A `progress` chunk without a payload gets an empty one, and
    /// a `data` or `complete` chunk without one gets JSON `null`, as an actor would have
    /// yielded them.
    pub fn from_chunk(mut chunk: StreamChunk) -> Option<Self> {
        match chunk.kind {
            ChunkType::Progress => {
                chunk.progress.get_or_insert_with(Box::default);
                chunk.data = None;
            }
            ChunkType::Data | ChunkType::Complete => {
                chunk.data.get_or_insert(Value::Null);
                chunk.progress = None;
            }
            ChunkType::Start | ChunkType::Error => return None,
        }
        chunk.error = None;
        chunk.attempt = None;
        Some(Self { chunk })
    }
}
