//! The parsed form of a workflow: [`Workflow`], its [`Action`]s, and the backoff limits.
//!
//! [`load`](crate::load) and [`parse`](crate::parse) build these (in `load.rs`) and
//! [`validate`](crate::validate) checks them (in `validate.rs`); the executor runs them. A
//! [`Workflow`] keeps the line of each action so that later checks can still point at it.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::error::{Problem, WorkflowError};
use crate::schema::InputSchema;

/// The backoff before the first retry when an action sets none; each later retry waits twice
/// as long as the one before, up to [`MAX_BACKOFF`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two attempts, so a high `retries` cannot park a workflow for hours.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A workflow: a named list of actions run in order, each one action or a parallel group.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Workflow {
    /// The workflow's name (also the `actor` of its stream's `start` chunk).
    pub name: String,
    /// What the workflow does, for people.
    pub description: Option<String>,
    /// The schema the workflow input is checked against, if any.
    pub input: Option<InputSchema>,
    /// The deadline of the whole workflow, if the definition sets one.
    pub timeout: Option<Duration>,
    /// The actions, in the order they run.
    pub actions: Vec<Action>,
    /// The file (or source name) the definition came from, for messages.
    pub source: String,
    /// The lines each action name is on, in document order (more than one when names
    /// clash), as the parser saw them; for messages.
    pub(crate) lines: HashMap<String, Vec<usize>>,
}

/// One entry of a workflow's `actions`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// `type: actor`: runs one actor.
    Actor(ActorAction),
    /// `type: parallel`: runs its actions at the same time.
    Parallel(ParallelGroup),
}

impl Action {
    /// The action's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Actor(a) => &a.name,
            Self::Parallel(g) => &g.name,
        }
    }
}

/// An action that runs one actor (a *step*: its output can be referenced by later actions).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ActorAction {
    /// The step's name, unique in the workflow; tags every chunk the step contributes.
    pub name: String,
    /// The registered actor type to run, locally or on a worker.
    pub actor_type: String,
    /// The actor's input; string values may hold `${{ … }}` references.
    pub input: Value,
    /// Whether the actor's `data` chunks (tokens, partial results) are forwarded; its
    /// `progress` chunks always are.
    pub streaming: bool,
    /// The deadline of one attempt; the runtime's default when `None`.
    pub timeout: Option<Duration>,
    /// How many times a retryable failure is retried.
    pub retries: u32,
    /// The wait before the first retry (doubled for each further one).
    pub backoff: Duration,
    /// Whether the workflow goes on when this step fails (its output is then `null`).
    pub continue_on_error: bool,
}

/// Actions run at the same time; their chunks interleave in the workflow's stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ParallelGroup {
    /// The group's name, unique in the workflow (it cannot be referenced; its actions can).
    pub name: String,
    /// The actions, started together.
    pub actions: Vec<ActorAction>,
}

impl Workflow {
    /// Every step (actor action), in document order, parallel groups flattened.
    pub fn steps(&self) -> impl Iterator<Item = &ActorAction> {
        self.actions.iter().flat_map(|action| match action {
            Action::Actor(a) => std::slice::from_ref(a).iter(),
            Action::Parallel(g) => g.actions.iter(),
        })
    }

    /// Checks `input` against the input schema and returns it with defaults filled in (a
    /// `null` input counts as `{}`). Call it before streaming to reject bad input up front;
    /// the executor checks again and ends the stream with `error/bad_input`.
    pub fn check_input(&self, input: Value) -> Result<Value, WorkflowError> {
        let Some(schema) = &self.input else {
            return Ok(if input.is_null() {
                Value::Object(Default::default())
            } else {
                input
            });
        };
        schema.apply(input).map_err(|message| WorkflowError::Input {
            workflow: self.name.clone(),
            message,
        })
    }

    /// A definition error about `action` (or the whole workflow), at the action's line.
    pub(crate) fn error(&self, action: Option<&str>, problem: Problem) -> WorkflowError {
        // A duplicate is reported where the name comes the second time.
        let occurrence = usize::from(problem == Problem::DuplicateName);
        let line = action.and_then(|a| self.lines.get(a)?.get(occurrence).copied());
        self.error_at(line, action, problem)
    }

    /// A definition error at a known line (a field's, where the problem is in one field).
    pub(crate) fn error_at(
        &self,
        line: Option<usize>,
        action: Option<&str>,
        problem: Problem,
    ) -> WorkflowError {
        WorkflowError::Definition {
            file: self.source.clone(),
            line,
            action: action.map(str::to_owned),
            problem: Box::new(problem),
        }
    }
}
