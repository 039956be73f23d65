//! Why a workflow was rejected: [`WorkflowError`] and the [`Problem`] it names.
//!
//! The loader reports every bad definition before any work starts, with the file, the
//! action and the line (where the parser knows it), so `loom workflow validate` can print one
//! precise line and exit 2. Failures *while running* are not here: they end the workflow's
//! stream with an `error` chunk, like any actor's.

use std::fmt;

use loom_core::ActorError;

/// A workflow definition that cannot be loaded, or a workflow input that does not match the
/// definition's input schema.
///
/// Display names the file, the line when known, the action when there is one, then the
/// problem, e.g. `pipeline.yaml:12: action 'write': input references steps.review, which runs later`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The definition file could not be read.
    #[error("{file}: cannot read the workflow: {source}")]
    Read {
        /// The path as given.
        file: String,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The definition is malformed or inconsistent.
    #[error("{}{problem}", location(.file, *.line, .action.as_deref()))]
    Definition {
        /// The file (or source name) the definition came from.
        file: String,
        /// The 1-based line, where the parser knows it.
        line: Option<usize>,
        /// The action the problem is in, if it is in one.
        action: Option<String>,
        /// What is wrong (boxed: it is rare, and keeps `Result`s small).
        problem: Box<Problem>,
    },
    /// The workflow input does not match the definition's input schema.
    #[error("workflow '{workflow}': bad input: {message}")]
    Input {
        /// The workflow's name.
        workflow: String,
        /// What is wrong with the input.
        message: String,
    },
}

fn location(file: &str, line: Option<usize>, action: Option<&str>) -> String {
    let mut out = file.to_owned();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    out.push_str(": ");
    if let Some(action) = action {
        out.push_str(&format!("action '{action}': "));
    }
    out
}

impl WorkflowError {
    /// The problem of a rejected definition (`None` for read and input errors).
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Definition { problem, .. } => Some(problem.as_ref()),
            _ => None,
        }
    }

    /// The action a definition problem is in, if any.
    pub fn action(&self) -> Option<&str> {
        match self {
            Self::Definition { action, .. } => action.as_deref(),
            _ => None,
        }
    }

    /// The 1-based line of a definition problem, where the parser knows it.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Definition { line, .. } => *line,
            _ => None,
        }
    }

    /// The error a run reports for this: `bad_input`.
    pub fn to_actor_error(&self) -> ActorError {
        ActorError::bad_input(self.to_string())
    }
}

impl From<WorkflowError> for ActorError {
    fn from(err: WorkflowError) -> Self {
        err.to_actor_error()
    }
}

/// What is wrong with a workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The file name does not end in `.yaml`, `.yml` or `.json`.
    UnsupportedFormat,
    /// The definition is larger than a definition may be.
    TooLarge {
        /// Its size, in bytes.
        size: u64,
        /// The most bytes a definition may have.
        limit: u64,
    },
    /// The parser rejected the text: bad syntax, an unknown field, a wrong type, a missing field.
    Syntax(String),
    /// The workflow has no actions.
    NoActions,
    /// A name is empty or has characters other than ASCII letters, digits, `_` and `-`.
    InvalidName(String),
    /// The workflow's name is longer than [`MAX_WORKFLOW_NAME_LEN`](crate::MAX_WORKFLOW_NAME_LEN)
    /// bytes.
    NameTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// Two actions share a name.
    DuplicateName,
    /// An actor action without `actorType`.
    MissingActorType,
    /// No actor of this type is known to the runtime (local registry or remote workers).
    UnknownActorType(String),
    /// A field that does not belong on this kind of action.
    FieldNotAllowed {
        /// The field.
        field: &'static str,
        /// Where it is not allowed.
        on: &'static str,
    },
    /// A parallel group with no actions.
    EmptyGroup,
    /// A parallel group inside a parallel group.
    NestedParallel,
    /// A `timeout` or `backoff` that is not a duration, or not one allowed there.
    BadDuration {
        /// The field.
        field: &'static str,
        /// The value as written.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A `${{ … }}` reference that is not well formed.
    BadReference {
        /// The reference as written.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A reference to a step that does not exist.
    MissingStep {
        /// The reference as written.
        reference: String,
        /// The step it names.
        step: String,
    },
    /// A reference to a step that runs later.
    LaterStep {
        /// The reference as written.
        reference: String,
        /// The step it names.
        step: String,
    },
    /// A reference to a step of the same parallel group, which runs at the same time.
    SiblingStep {
        /// The reference as written.
        reference: String,
        /// The step it names.
        step: String,
        /// The group both are in.
        group: String,
    },
    /// A reference to a parallel group rather than one of its actions.
    GroupReference {
        /// The reference as written.
        reference: String,
        /// The group it names.
        group: String,
    },
    /// Steps whose inputs reference each other in a loop (a step referencing itself included).
    Cycle(Vec<String>),
    /// The input schema itself is malformed.
    BadSchema(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedFormat => {
                f.write_str("unsupported file type: use a .yaml, .yml or .json file")
            }
            Self::TooLarge { size, limit } => write!(
                f,
                "the definition is {size} bytes; a workflow definition may have at most {limit}"
            ),
            Self::Syntax(message) => f.write_str(message),
            Self::NoActions => f.write_str("the workflow has no actions"),
            Self::InvalidName(name) => write!(
                f,
                "invalid name '{name}': use ASCII letters, digits, '_' and '-' only"
            ),
            Self::NameTooLong { len } => write!(
                f,
                "the name is {len} bytes long: at most {} (workers serve it as the actor type \
                 '{}<name>', which becomes a Redis key)",
                crate::MAX_WORKFLOW_NAME_LEN,
                crate::WORKFLOW_ACTOR_PREFIX
            ),
            Self::DuplicateName => f.write_str("duplicate action name"),
            Self::MissingActorType => f.write_str("missing field `actorType`"),
            Self::UnknownActorType(t)
                if t
                    .strip_prefix(crate::WORKFLOW_ACTOR_PREFIX)
                    .is_some_and(crate::is_workflow_name) =>
            {
                write!(
                    f,
                    "unknown actor type '{t}' (a workflow that workers serve: it runs only \
                     through Redis)"
                )
            }
            Self::UnknownActorType(t) => write!(f, "unknown actor type '{t}'"),
            Self::FieldNotAllowed { field, on } => {
                write!(f, "field `{field}` is not allowed on {on}")
            }
            Self::EmptyGroup => f.write_str("the parallel group has no actions"),
            Self::NestedParallel => {
                f.write_str("parallel groups cannot be nested: a group holds actor actions only")
            }
            Self::BadDuration {
                field,
                value,
                reason,
            } => write!(f, "bad `{field}` '{value}': {reason}"),
            Self::BadReference { reference, reason } => {
                write!(f, "bad reference '{reference}': {reason}")
            }
            Self::MissingStep { reference, step } => {
                write!(f, "input references step '{step}' ({reference}), which does not exist")
            }
            Self::LaterStep { reference, step } => write!(
                f,
                "input references step '{step}' ({reference}), which runs later"
            ),
            Self::SiblingStep {
                reference,
                step,
                group,
            } => write!(
                f,
                "input references step '{step}' ({reference}), which runs at the same time in parallel group '{group}'"
            ),
            Self::GroupReference { reference, group } => write!(
                f,
                "input references parallel group '{group}' ({reference}): reference one of its actions instead"
            ),
            Self::Cycle(steps) => write!(f, "reference cycle: {}", steps.join(" -> ")),
            Self::BadSchema(message) => write!(f, "bad input schema: {message}"),
        }
    }
}
