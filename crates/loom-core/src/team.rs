//! [`Team`]: several actors working concurrently on one task, merged into one stream.
//!
//! All members are polled from the team's own stream, on one task, inside the team's run: the
//! runtime numbers what the team forwards, keeps its deadline and turns a member's panic or
//! missing result into the team's error, so a forwarded chunk pays for one run, not two.
//! Members take turns: each poll starts at the member after the last one that gave an output.
//! Each forwarded chunk is tagged with the member's name in `actor` (one shared [`Tag`]). The
//! team ends with one terminal chunk: `complete` with every member's result by name,
//! `{"members": {"<member>": <result>, …}}`, or — as soon as one member fails — `error` naming
//! it, after the other members were cancelled. Each member's end is also a `progress` chunk
//! tagged with the member (`{"current": 1, "total": 2, "message": "<member> finished"}`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::Stream;
use serde_json::{Map, Value};
use tokio_util::sync::DropGuard;

use crate::actor::{Actor, ActorStream};
use crate::chunk::Tag;
use crate::context::ActorContext;
use crate::error::ActorError;
use crate::output::{Output, OutputKind};
use crate::runtime::{no_result, open, poll_actor};
use crate::turns::Turns;

/// A group of actors run concurrently on the same input.
pub struct Team {
    name: String,
    description: String,
    /// Each member with its name, shared by the tag of every chunk it produces.
    members: Vec<(Tag, Arc<dyn Actor>)>,
}

impl Team {
    /// An empty team registered as `name`.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            members: Vec::new(),
        }
    }

    /// Adds a member; its chunks are tagged with its [`name`](Actor::name), and its result is
    /// the team's under that name. A second member of a name already taken is `name#2` (a
    /// third `name#3`, …), so no member's chunks or result pass for another's.
    pub fn member(mut self, actor: impl Actor) -> Self {
        let taken = |tag: &str| self.members.iter().any(|(t, _)| t.as_str() == tag);
        let name = actor.name();
        let tag = if taken(name) {
            (2..)
                .map(|n| format!("{name}#{n}"))
                .find(|tag| !taken(tag))
                .unwrap_or_default()
        } else {
            name.to_owned()
        };
        self.members.push((Tag::from(tag), Arc::new(actor)));
        self
    }
}

#[async_trait]
impl Actor for Team {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, ctx: ActorContext) -> ActorStream {
        let members = Turns::new(self.members.iter().map(|(_, actor)| {
            let ctx = ctx.child();
            let cancel_on_drop = ctx.cancellation_token().clone().drop_guard();
            Member {
                stream: open(Arc::clone(actor), input.clone(), ctx),
                _cancel_on_drop: cancel_on_drop,
            }
        }));
        Box::pin(TeamStream {
            team: self,
            members,
            results: Map::new(),
            ended: false,
        })
    }
}

/// A member's outputs, polled inside the team's own run: the team's run numbers what it
/// forwards and keeps the deadline, so a member needs no run (and no numbering) of its own.
struct Member {
    stream: ActorStream,
    /// Cancels the member's token when the member is dropped, as dropping a run does.
    _cancel_on_drop: DropGuard,
}

/// A running team: its members' outputs, tagged as they come. Written by hand, with the
/// members polled in its own `poll_next`, so a forwarded output crosses one call boundary
/// (each boundary stores the output and loads it back), not one per helper stream.
struct TeamStream {
    team: Arc<Team>,
    /// The members still running, polled in turn.
    members: Turns<Member>,
    /// The results of the members that completed, by name.
    results: Map<String, Value>,
    /// Whether the terminal output was given.
    ended: bool,
}

impl Stream for TeamStream {
    type Item = Result<Output, ActorError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let mut polled = Poll::Pending;
        let turn = this.members.poll(|member| {
            poll_actor(&mut member.stream, cx, &mut polled);
            polled.is_ready()
        });
        match turn {
            Poll::Pending => return Poll::Pending,
            // Every member completed (or the team has none): the team's result.
            Poll::Ready(false) => {
                this.ended = true;
                let results = std::mem::take(&mut this.results);
                let mut result = Map::new();
                result.insert("members".to_owned(), Value::Object(results));
                return Poll::Ready(Some(Ok(Output::complete(Value::Object(result)))));
            }
            Poll::Ready(true) => {}
        }
        let member = &this.team.members[this.members.last()].0;
        // A forwarded output is written by the member's poll into `polled` and tagged there
        // (`Forwarded`); it is copied once, into the return.
        if let Poll::Ready(Some(Ok(output))) = &mut polled {
            if !output.is_complete() {
                output.actor = Some(member.clone());
                return polled;
            }
        }
        let outcome = match polled {
            Poll::Ready(Some(outcome)) => outcome,
            // A ready member without an item: its stream ended without `complete`.
            Poll::Ready(None) | Poll::Pending => Err(no_result()),
        };
        let output = match outcome {
            Ok(output) => {
                this.members.remove_last();
                let result = match output.kind {
                    OutputKind::Complete(result) => result,
                    OutputKind::Progress(_) | OutputKind::Data(_) => Value::Null,
                };
                this.results.insert(member.to_string(), result);
                let total = this.team.members.len() as u64;
                let done = this.results.len() as u64;
                Output::progress(done, Some(total), format!("{member} finished"))
            }
            Err(err) => {
                // Dropping the other members cancels them.
                this.members.clear();
                this.ended = true;
                let message = format!("team member '{member}' failed: {}", err.message());
                let err = ActorError::new(err.code(), message).with_retryable(err.is_retryable());
                return Poll::Ready(Some(Err(err)));
            }
        };
        Poll::Ready(Some(Ok(output.with_actor(member.clone()))))
    }
}
