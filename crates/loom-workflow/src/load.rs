//! Reading a definition: [`load`] and [`parse`] turn YAML or JSON text into a [`Workflow`],
//! which they hand to [`validate`] before returning it.
//!
//! Parsing happens in two passes. serde-saphyr (a YAML 1.2 parser; JSON is YAML) reads the
//! text into raw structs with `deny_unknown_fields`, each action and field wrapped in
//! [`Spanned`] so that it keeps its position; a malformed document, an unknown field or a
//! wrong type fails here with the parser's own line. Then the raw structs become typed
//! [`Action`]s, and every later message about an action or one of its fields points at the
//! line the parser recorded for it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;
use serde_saphyr::Spanned;

use crate::error::{Problem, WorkflowError};
use crate::schema::InputSchema;
use crate::validate::validate;
use crate::workflow::{Action, ActorAction, ParallelGroup, Workflow, DEFAULT_BACKOFF};
use loom_core::{parse_timeout, DurationError};

/// The largest workflow definition, in bytes (1 MiB): hundreds of times what a real one needs,
/// and small enough that a hostile file is refused before it is read or parsed.
pub const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;

// ---- raw, as written --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, alias = "inputSchema")]
    input: Option<Spanned<InputSchema>>,
    #[serde(default)]
    timeout: Option<Spanned<Value>>,
    actions: Vec<Spanned<RawAction>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawType {
    Actor,
    Parallel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<RawType>,
    #[serde(rename = "actorType", default)]
    actor_type: Option<Spanned<String>>,
    #[serde(default)]
    input: Option<Spanned<Value>>,
    #[serde(default)]
    streaming: Option<Spanned<Plain<bool>>>,
    #[serde(default)]
    timeout: Option<Spanned<Value>>,
    #[serde(default)]
    retries: Option<Spanned<Plain<u32>>>,
    #[serde(default)]
    backoff: Option<Spanned<Value>>,
    #[serde(default)]
    continue_on_error: Option<Spanned<Plain<bool>>>,
    #[serde(default)]
    actions: Option<Spanned<Vec<Spanned<RawAction>>>>,
}

/// A boolean or a whole number written as one (`true`, `3`): the parser reads a quoted `"true"`
/// or `"3"` as the scalar it spells, and a string is refused here as any other wrong type is.
#[derive(Clone, Copy)]
struct Plain<T>(T);

impl<'de> Deserialize<'de> for Plain<bool> {
    fn deserialize<D: serde::Deserializer<'de>>(field: D) -> Result<Self, D::Error> {
        struct Flag;
        impl serde::de::Visitor<'_> for Flag {
            type Value = Plain<bool>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Plain(b))
            }
        }
        field.deserialize_any(Flag)
    }
}

impl<'de> Deserialize<'de> for Plain<u32> {
    fn deserialize<D: serde::Deserializer<'de>>(field: D) -> Result<Self, D::Error> {
        struct Count;
        impl serde::de::Visitor<'_> for Count {
            type Value = Plain<u32>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a whole number from 0 to {}", u32::MAX)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                u32::try_from(n)
                    .map(Plain)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(n), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                u32::try_from(n)
                    .map(Plain)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
        }
        field.deserialize_any(Count)
    }
}

/// The 1-based line the parser recorded for a value (`None` where it could not).
fn line_of<T>(spanned: &Spanned<T>) -> Option<usize> {
    usize::try_from(spanned.referenced.line())
        .ok()
        .filter(|line| *line > 0)
}

// ---- entry points -----------------------------------------------------------------------

fn too_large(file: &str, size: u64) -> WorkflowError {
    WorkflowError::Definition {
        file: file.to_owned(),
        line: None,
        action: None,
        problem: Box::new(Problem::TooLarge {
            size,
            limit: MAX_DEFINITION_BYTES,
        }),
    }
}

/// Reads and parses the workflow file at `path`; the extension must be `.yaml`, `.yml` or
/// `.json`. `knows` says whether an actor type can be run, e.g. `&|t| invoker.knows(t)`.
pub fn load(
    path: impl AsRef<Path>,
    knows: &dyn Fn(&str) -> bool,
) -> Result<Workflow, WorkflowError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let read_error = |source| WorkflowError::Read {
        file: file.clone(),
        source,
    };
    if !is_supported(&file) {
        return parse("", &file, knows);
    }
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_DEFINITION_BYTES {
        return Err(too_large(&file, size));
    }
    // Read through the limit too: a device or a pipe says its size is 0.
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DEFINITION_BYTES + 1).read_to_string(&mut text))
        .map_err(read_error)?;
    if text.len() as u64 > MAX_DEFINITION_BYTES {
        return Err(too_large(&file, text.len() as u64));
    }
    parse(&text, &file, knows)
}

/// Parses a workflow from `text`; `source_name` names it in messages and must end in
/// `.yaml`, `.yml` or `.json` (both are read by the same YAML parser: JSON is YAML).
pub fn parse(
    text: &str,
    source_name: &str,
    knows: &dyn Fn(&str) -> bool,
) -> Result<Workflow, WorkflowError> {
    let definition_error = |line, action, problem| WorkflowError::Definition {
        file: source_name.to_owned(),
        line,
        action,
        problem: Box::new(problem),
    };
    if !is_supported(source_name) {
        return Err(definition_error(None, None, Problem::UnsupportedFormat));
    }
    if text.len() as u64 > MAX_DEFINITION_BYTES {
        return Err(too_large(source_name, text.len() as u64));
    }
    let raw = read_raw(text)
        .map_err(|e| definition_error(e.line, e.action, Problem::Syntax(e.message)))?;
    let mut workflow = Workflow {
        name: raw.name,
        description: raw.description,
        input: None,
        timeout: None,
        actions: Vec::new(),
        source: source_name.to_owned(),
        lines: action_lines(&raw.actions),
    };
    if let Some(schema) = raw.input {
        schema
            .value
            .check()
            .map_err(|m| workflow.error_at(line_of(&schema), None, Problem::BadSchema(m)))?;
        workflow.input = Some(schema.value);
    }
    if let Some(timeout) = &raw.timeout {
        let parsed = duration(&timeout.value, "timeout", false)
            .map_err(|p| workflow.error_at(line_of(timeout), None, p))?;
        workflow.timeout = Some(parsed);
    }
    let mut actions = Vec::with_capacity(raw.actions.len());
    for action in raw.actions {
        actions.push(convert(&workflow, action.value)?);
    }
    workflow.actions = actions;
    validate(&workflow, knows)?;
    Ok(workflow)
}

fn is_supported(source: &str) -> bool {
    Path::new(source)
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ["yaml", "yml", "json"].contains(&ext.to_ascii_lowercase().as_str()))
}

// ---- the first pass: text to raw structs ------------------------------------------------

/// Why the parser rejected the text, where, and in which action.
struct SyntaxError {
    line: Option<usize>,
    action: Option<String>,
    message: String,
}

/// YAML 1.2 booleans only (`yes`, `no`, `on` and `off` stay strings, as before), and no
/// source snippet in errors: the message gives the file and line itself.
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
    }
}

/// What a workflow file is, for a file that is something else altogether.
const SHAPE: &str =
    "a workflow is a mapping with a `name` and its `actions` (see examples/workflows)";

fn read_raw(text: &str) -> Result<RawWorkflow, SyntaxError> {
    let blank = text
        .lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#'));
    if blank {
        return Err(SyntaxError {
            line: None,
            action: None,
            message: format!("the file is empty: {SHAPE}"),
        });
    }
    let mut track = serde_path_to_error::Track::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        RawWorkflow::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
    });
    result.map_err(|error| {
        let error = error.without_snippet();
        let path = track.path();
        SyntaxError {
            line: error
                .location()
                .and_then(|l| usize::try_from(l.line()).ok())
                .filter(|line| *line > 0),
            action: action_at(text, &path),
            // Wrong at the top: the file is not a mapping at all.
            message: {
                let message = message_of(error);
                match (path.iter().next(), field_at(&path)) {
                    (None, _) => format!("{message}: {SHAPE}"),
                    (Some(_), Some(field)) if !message.contains(&field) => {
                        format!("bad '{field}': {message}")
                    }
                    (Some(_), _) => message,
                }
            },
        }
    })
}

/// The parser's message without its location (the error shows the line itself).
fn message_of(error: &serde_saphyr::Error) -> String {
    // The error itself, out of the wrappers that say where an alias was used.
    let mut inner = error;
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    if let serde_saphyr::Error::Budget { breach, .. } = inner {
        use serde_saphyr::budget::BudgetBreach;
        // The parser's limits against hostile files, said in words rather than its Debug.
        return match breach {
            BudgetBreach::Depth { depth } => {
                format!("the definition nests {depth} levels deep, past the parser's limit")
            }
            BudgetBreach::Nodes { nodes } => format!(
                "the definition holds over {} values once its aliases are expanded, past the \
                 parser's limit",
                nodes.saturating_sub(1)
            ),
            BudgetBreach::Aliases { aliases } => format!(
                "the definition uses over {} aliases, past the parser's limit",
                aliases.saturating_sub(1)
            ),
            other => format!("the definition is past one of the parser's limits ({other:?})"),
        };
    }
    if let serde_saphyr::Error::DuplicateMappingKey { key, .. } = inner {
        // Without the parser's hint at an option of its own, which no user can set here.
        return match key {
            Some(key) => format!("duplicate key '{key}'"),
            None => "duplicate key".to_owned(),
        };
    }
    if let serde_saphyr::Error::InvalidScalar { ty, .. } = error {
        // serde-saphyr says only "invalid u32" here; say that it is the type that is wrong.
        return format!("invalid type: expected {ty}");
    }
    strip_location(&error.to_string()).to_owned()
}

fn strip_location(message: &str) -> &str {
    message
        .find(" at line ")
        .map_or(message, |at| &message[..at])
}

/// The name (or `#N`) of the action a serde path such as `actions[2].value.actions[0]…`
/// points into, read from a lenient second parse of the text. The `value` segments are the
/// [`Spanned`] wrappers.
fn action_at(text: &str, path: &serde_path_to_error::Path) -> Option<String> {
    let doc: Value = serde_saphyr::from_str_with_options(text, options()).ok()?;
    let mut node = &doc;
    let mut name = None;
    let mut in_actions = false;
    for segment in path.iter() {
        match segment {
            Segment::Map { key } if key == "value" => {}
            Segment::Map { key } if key == "actions" && !in_actions => {
                node = node.get("actions")?;
                in_actions = true;
            }
            Segment::Seq { index } if in_actions => {
                node = node.get(index)?;
                name = Some(
                    node.get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("#{}", index + 1), str::to_owned),
                );
                in_actions = false;
            }
            _ => break,
        }
    }
    name
}

/// The field a serde path ends in (`retries` in `actions[0].value.retries.value`), when it
/// ends in one rather than in a list's item; the `value` segments are the [`Spanned`]
/// wrappers.
fn field_at(path: &serde_path_to_error::Path) -> Option<String> {
    match path
        .iter()
        .rfind(|s| !matches!(s, Segment::Map { key } if key == "value"))?
    {
        Segment::Map { key } => Some(key.clone()),
        _ => None,
    }
}

/// The lines of every action and group member, by name, in document order.
fn action_lines(actions: &[Spanned<RawAction>]) -> HashMap<String, Vec<usize>> {
    fn members(action: &Spanned<RawAction>) -> &[Spanned<RawAction>] {
        action
            .value
            .actions
            .as_ref()
            .map_or(&[], |m| m.value.as_slice())
    }
    let mut lines: HashMap<String, Vec<usize>> = HashMap::new();
    for action in actions
        .iter()
        .flat_map(|a| std::iter::once(a).chain(members(a)))
    {
        if let Some(line) = line_of(action) {
            lines
                .entry(action.value.name.clone())
                .or_default()
                .push(line);
        }
    }
    lines
}

// ---- the second pass: raw structs to actions --------------------------------------------

fn convert(workflow: &Workflow, raw: RawAction) -> Result<Action, WorkflowError> {
    let kind = raw.kind.unwrap_or(if raw.actions.is_some() {
        RawType::Parallel
    } else {
        RawType::Actor
    });
    if kind == RawType::Actor {
        return Ok(Action::Actor(convert_actor(workflow, raw)?));
    }
    let name = raw.name;
    let not_allowed = [
        ("actorType", raw.actor_type.as_ref().map(line_of)),
        ("input", raw.input.as_ref().map(line_of)),
        ("streaming", raw.streaming.as_ref().map(line_of)),
        ("timeout", raw.timeout.as_ref().map(line_of)),
        ("retries", raw.retries.as_ref().map(line_of)),
        ("backoff", raw.backoff.as_ref().map(line_of)),
        (
            "continue_on_error",
            raw.continue_on_error.as_ref().map(line_of),
        ),
    ];
    if let Some((field, line)) = not_allowed
        .into_iter()
        .find_map(|(field, line)| Some((field, line?)))
    {
        let on = "a parallel group (set it on its actions)";
        return Err(workflow.error_at(line, Some(&name), Problem::FieldNotAllowed { field, on }));
    }
    let mut actions = Vec::new();
    for member in raw.actions.map(|m| m.value).unwrap_or_default() {
        let member = member.value;
        if member.kind == Some(RawType::Parallel) || member.actions.is_some() {
            return Err(workflow.error(Some(&member.name), Problem::NestedParallel));
        }
        actions.push(convert_actor(workflow, member)?);
    }
    Ok(Action::Parallel(ParallelGroup { name, actions }))
}

fn convert_actor(workflow: &Workflow, raw: RawAction) -> Result<ActorAction, WorkflowError> {
    let name = raw.name;
    let at = |line, problem| workflow.error_at(line, Some(&name), problem);
    if let Some(actions) = &raw.actions {
        let on = "an actor action (use `type: parallel`)";
        let problem = Problem::FieldNotAllowed {
            field: "actions",
            on,
        };
        return Err(at(line_of(actions), problem));
    }
    let actor_type = raw
        .actor_type
        .ok_or_else(|| workflow.error(Some(&name), Problem::MissingActorType))?;
    let timeout = match &raw.timeout {
        Some(v) => Some(duration(&v.value, "timeout", false).map_err(|p| at(line_of(v), p))?),
        None => None,
    };
    let backoff = match &raw.backoff {
        Some(v) => duration(&v.value, "backoff", true).map_err(|p| at(line_of(v), p))?,
        None => DEFAULT_BACKOFF,
    };
    Ok(ActorAction {
        actor_type: actor_type.value,
        input: raw
            .input
            .map_or_else(|| Value::Object(Default::default()), |i| i.value),
        streaming: raw.streaming.is_some_and(|s| s.value.0),
        timeout,
        retries: raw.retries.map_or(0, |r| r.value.0),
        backoff,
        continue_on_error: raw.continue_on_error.is_some_and(|c| c.value.0),
        name,
    })
}

/// A `timeout` or `backoff`: a number of seconds (`30`, `0.5`) or a string that
/// [`parse_timeout`] reads (`"500ms"`, `"30s"`, `"2m"`, `"1h"`), at most a week.
fn duration(value: &Value, field: &'static str, zero_ok: bool) -> Result<Duration, Problem> {
    let text = match value {
        Value::String(s) => s.clone(),
        // In decimals: JSON's shortest form writes a small number with an exponent (`1e-10`),
        // which no duration is written in.
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        other => {
            return Err(Problem::BadDuration {
                field,
                value: other.to_string(),
                reason: "write a number of seconds or a string like \"30s\"".to_owned(),
            })
        }
    };
    let bad = |reason: String| Problem::BadDuration {
        field,
        value: text.clone(),
        reason,
    };
    match parse_timeout(&text) {
        Err(DurationError::Zero) if zero_ok => Ok(Duration::ZERO),
        parsed => parsed.map_err(|e| bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |v: Value| duration(&v, "timeout", false);
        assert_eq!(
            d(serde_json::json!("500ms")),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(d(serde_json::json!("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(d(serde_json::json!("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(d(serde_json::json!(1.5)), Ok(Duration::from_millis(1500)));
        assert_eq!(d(serde_json::json!("10")), Ok(Duration::from_secs(10)));
        assert!(d(serde_json::json!("10 parsecs")).is_err());
        assert!(d(serde_json::json!(0)).is_err());
        assert!(d(serde_json::json!(-1)).is_err());
        assert!(d(serde_json::json!(true)).is_err());
        // A number too small to be a duration is named for what it is.
        let tiny = d(serde_json::json!(1e-10)).unwrap_err().to_string();
        assert!(tiny.contains("'0.0000000001'"), "{tiny}");
        assert!(!tiny.contains("not a duration"), "{tiny}");
        assert!(d(serde_json::json!("8 days")).is_err());
        let backoff = duration(&serde_json::json!(0), "backoff", true);
        assert_eq!(backoff, Ok(Duration::ZERO));
    }

    #[test]
    fn messages_lose_their_location() {
        assert_eq!(
            strip_location("unknown field `x`, expected one of `a` at line 6, column 5"),
            "unknown field `x`, expected one of `a`"
        );
        assert_eq!(
            strip_location("missing field `name`"),
            "missing field `name`"
        );
    }
}
