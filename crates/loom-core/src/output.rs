//! [`Output`]: what an actor yields. The runtime turns each one into a numbered chunk.
//!
//! An `Output` has no `seq`, no `start` and no error variant on purpose: numbering, the first
//! chunk and the single terminal chunk belong to the runtime, so no actor can break the stream
//! contract. An actor fails by returning `Err(ActorError)` from its stream.
//!
//! An `Output` is kept small (its payload and two one-pointer [`Tag`]s), since every one an
//! actor yields moves through its generator; a team or a workflow step that forwards a
//! member's chunk re-tags it without allocating.

use serde_json::Value;

use crate::chunk::{ChunkType, Event, Progress, StreamChunk, Tag};

/// The payload of one [`Output`].
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    /// Becomes a `progress` chunk.
    Progress(Box<Progress>),
    /// Becomes a `data` chunk.
    Data(Value),
    /// Becomes the terminal `complete` chunk; the runtime stops reading the actor after it.
    Complete(Value),
}

/// One item an actor yields, optionally tagged with the team member or workflow step it
/// comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The payload.
    pub kind: OutputKind,
    /// The team member that produced it.
    pub(crate) actor: Option<Tag>,
    /// The workflow action that produced it.
    step: Option<Tag>,
    /// The workflow marker it carries.
    event: Option<Event>,
}

impl Output {
    fn of(kind: OutputKind) -> Self {
        Self {
            kind,
            actor: None,
            step: None,
            event: None,
        }
    }

    /// The team member that produced it.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The workflow action that produced it.
    pub fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// The workflow marker it carries.
    pub fn event(&self) -> Option<Event> {
        self.event
    }

    /// A `progress` output: `current` of `total` units (`None` when the total is unknown),
    /// with a message for a person: `Output::progress(1, Some(3), "batch 1")`.
    pub fn progress(current: u64, total: Option<u64>, message: impl Into<String>) -> Self {
        Self::of(OutputKind::Progress(Box::new(Progress {
            current,
            total,
            message: Some(message.into()),
        })))
    }

    /// A `data` output: a partial result.
    pub fn data(value: impl Into<Value>) -> Self {
        Self::of(OutputKind::Data(value.into()))
    }

    /// An LLM token: a `data` output `{"token": text}` carrying the delta only.
    pub fn token(text: impl Into<String>) -> Self {
        Self::data(serde_json::json!({ "token": text.into() }))
    }

    /// The `complete` output: the run's result.
    pub fn complete(value: impl Into<Value>) -> Self {
        Self::of(OutputKind::Complete(value.into()))
    }

    /// Tags the output with the team member that produced it. A forwarder passes the same
    /// [`Tag`] for every chunk, so a tag costs a reference count, not a copy.
    pub fn with_actor(mut self, actor: impl Into<Tag>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Tags the output with the workflow step that produced it (see
    /// [`with_actor`](Self::with_actor)).
    pub fn with_step(mut self, step: impl Into<Tag>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// Tags a forwarded output with the workflow step passing it on, in place, and drops its
    /// workflow marker (a forwarded output is not the forwarder's marker).
    #[inline]
    pub fn forward_from_step(&mut self, step: &Tag) {
        self.step = Some(step.clone());
        self.event = None;
    }

    /// Marks the output as a workflow event.
    pub fn with_event(mut self, event: Event) -> Self {
        self.event = Some(event);
        self
    }

    /// Whether this output ends the run.
    pub fn is_complete(&self) -> bool {
        matches!(self.kind, OutputKind::Complete(_))
    }

    /// Numbers the output, turning it into the chunk a consumer reads.
    #[inline]
    pub fn into_chunk(self, seq: u64) -> StreamChunk {
        let mut chunk = match self.kind {
            OutputKind::Progress(p) => StreamChunk {
                progress: Some(p),
                ..StreamChunk::new(ChunkType::Progress, seq)
            },
            OutputKind::Data(v) => StreamChunk {
                data: Some(v),
                ..StreamChunk::new(ChunkType::Data, seq)
            },
            OutputKind::Complete(v) => StreamChunk {
                data: Some(v),
                ..StreamChunk::new(ChunkType::Complete, seq)
            },
        };
        chunk.actor = self.actor;
        chunk.step = self.step;
        chunk.event = self.event;
        chunk
    }

    /// The output a forwarded chunk stands for (`start` and `error` chunks have none).
    pub(crate) fn from_chunk(chunk: StreamChunk) -> Option<Self> {
        let kind = match chunk.kind {
            ChunkType::Progress => OutputKind::Progress(chunk.progress.unwrap_or_default()),
            ChunkType::Data => OutputKind::Data(chunk.data.unwrap_or(Value::Null)),
            ChunkType::Complete => OutputKind::Complete(chunk.data.unwrap_or(Value::Null)),
            ChunkType::Start | ChunkType::Error => return None,
        };
        Some(Self {
            kind,
            actor: chunk.actor,
            step: chunk.step,
            event: chunk.event,
        })
    }
}
