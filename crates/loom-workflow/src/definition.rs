//! Workflow definitions: the [`Workflow`] type, and [`load`]/[`parse`]/[`validate`], which
//! turn YAML or JSON into one and reject every bad definition before any step runs.
//!
//! Parsing happens in two passes. serde reads the text into raw structs with
//! `deny_unknown_fields` (so an unknown or misspelt field fails with the parser's line), then
//! the raw structs become typed [`Action`]s and [`validate`] checks what serde cannot:
//! names, actor types, references and cycles. Every error names the file and, where there is
//! one, the action.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Problem, WorkflowError};
use crate::reference::{self, Root};
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
    /// The lines each action name is on (more than one when names clash), for messages.
    lines: HashMap<String, Vec<usize>>,
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

    fn error(&self, action: Option<&str>, problem: Problem) -> WorkflowError {
        // A duplicate is reported where the name comes the second time.
        let occurrence = usize::from(problem == Problem::DuplicateName);
        WorkflowError::Definition {
            file: self.source.clone(),
            line: action.and_then(|a| self.lines.get(a)?.get(occurrence).copied()),
            action: action.map(str::to_owned),
            problem: Box::new(problem),
        }
    }
}

// ---- raw, as written --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, alias = "inputSchema")]
    input: Option<InputSchema>,
    #[serde(default)]
    timeout: Option<Value>,
    actions: Vec<RawAction>,
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
    actor_type: Option<String>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    streaming: Option<bool>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    backoff: Option<Value>,
    #[serde(default)]
    continue_on_error: Option<bool>,
    #[serde(default)]
    actions: Option<Vec<RawAction>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

fn format_of(source: &str) -> Option<Format> {
    let ext = Path::new(source)
        .extension()?
        .to_str()?
        .to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

// ---- entry points -----------------------------------------------------------------------

/// Reads and parses the workflow file at `path`; the format follows the extension (`.yaml`,
/// `.yml` or `.json`). `knows` says whether an actor type can be run, e.g.
/// `&|t| invoker.knows(t)`.
pub fn load(
    path: impl AsRef<Path>,
    knows: &dyn Fn(&str) -> bool,
) -> Result<Workflow, WorkflowError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WorkflowError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file, knows)
}

/// Parses a workflow from `text`; `source_name` names it in messages and its extension
/// picks the format (`.yaml`, `.yml` or `.json`).
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
    let Some(format) = format_of(source_name) else {
        return Err(definition_error(None, None, Problem::UnsupportedFormat));
    };
    let raw = read_raw(text, format).map_err(|(line, path, message)| {
        let action = action_at(text, format, &path);
        definition_error(line, action, Problem::Syntax(message))
    })?;
    let lines = action_lines(text, &raw);
    let mut workflow = Workflow {
        name: raw.name.clone(),
        description: raw.description,
        input: None,
        timeout: None,
        actions: Vec::new(),
        source: source_name.to_owned(),
        lines,
    };
    if let Some(schema) = raw.input {
        schema
            .check()
            .map_err(|m| workflow.error(None, Problem::BadSchema(m)))?;
        workflow.input = Some(schema);
    }
    if let Some(timeout) = &raw.timeout {
        workflow.timeout =
            Some(duration(timeout, "timeout", false).map_err(|p| workflow.error(None, p))?);
    }
    let mut actions = Vec::with_capacity(raw.actions.len());
    for action in raw.actions {
        actions.push(convert(&workflow, action)?);
    }
    workflow.actions = actions;
    validate(&workflow, knows)?;
    Ok(workflow)
}

/// Checks a parsed workflow: at least one action, valid and unique names, non-empty groups,
/// known actor types, well-formed references that point only to earlier steps (not to a
/// sibling in the same parallel group), and no cycles. [`parse`] and [`load`] call it; call
/// it again to check a workflow against another set of actor types.
pub fn validate(workflow: &Workflow, knows: &dyn Fn(&str) -> bool) -> Result<(), WorkflowError> {
    if workflow.actions.is_empty() {
        return Err(workflow.error(None, Problem::NoActions));
    }
    // Names: every action and group, unique across the workflow.
    let mut seen = HashSet::new();
    let mut groups = HashSet::new();
    for action in &workflow.actions {
        let mut check = |name: &str| {
            if !is_name(name) {
                return Err(workflow.error(Some(name), Problem::InvalidName(name.to_owned())));
            }
            if !seen.insert(name.to_owned()) {
                return Err(workflow.error(Some(name), Problem::DuplicateName));
            }
            Ok(())
        };
        check(action.name())?;
        if let Action::Parallel(group) = action {
            groups.insert(group.name.as_str());
            if group.actions.is_empty() {
                return Err(workflow.error(Some(&group.name), Problem::EmptyGroup));
            }
            for member in &group.actions {
                check(&member.name)?;
            }
        }
    }
    for step in workflow.steps() {
        if !knows(&step.actor_type) {
            return Err(workflow.error(
                Some(&step.name),
                Problem::UnknownActorType(step.actor_type.clone()),
            ));
        }
    }
    // References: parse them all, then check targets exist, cycles, then order.
    let mut deps: Vec<(&str, Vec<reference::Reference>)> = Vec::new();
    for step in workflow.steps() {
        let refs = reference::references(&step.input).map_err(|(reference, reason)| {
            workflow.error(
                Some(&step.name),
                Problem::BadReference { reference, reason },
            )
        })?;
        deps.push((&step.name, refs));
    }
    let step_names: HashSet<&str> = workflow.steps().map(|s| s.name.as_str()).collect();
    for (name, refs) in &deps {
        for r in refs {
            let Root::Step(target) = &r.root else {
                continue;
            };
            if groups.contains(target.as_str()) {
                return Err(workflow.error(
                    Some(name),
                    Problem::GroupReference {
                        reference: r.text.clone(),
                        group: target.clone(),
                    },
                ));
            }
            if !step_names.contains(target.as_str()) {
                return Err(workflow.error(
                    Some(name),
                    Problem::MissingStep {
                        reference: r.text.clone(),
                        step: target.clone(),
                    },
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&deps) {
        let first = cycle.first().cloned();
        return Err(workflow.error(first.as_deref(), Problem::Cycle(cycle)));
    }
    // Order: a step sees only steps of earlier top-level actions.
    let mut position = HashMap::new();
    for (index, action) in workflow.actions.iter().enumerate() {
        match action {
            Action::Actor(a) => {
                position.insert(a.name.as_str(), (index, None));
            }
            Action::Parallel(g) => {
                for member in &g.actions {
                    position.insert(member.name.as_str(), (index, Some(g.name.as_str())));
                }
            }
        }
    }
    for (name, refs) in &deps {
        let (mine, group) = position[name];
        for r in refs {
            let Root::Step(target) = &r.root else {
                continue;
            };
            let (theirs, _) = position[target.as_str()];
            let reference = r.text.clone();
            let step = target.clone();
            if theirs > mine {
                return Err(workflow.error(Some(name), Problem::LaterStep { reference, step }));
            }
            if theirs == mine {
                let group = group.unwrap_or_default().to_owned();
                return Err(workflow.error(
                    Some(name),
                    Problem::SiblingStep {
                        reference,
                        step,
                        group,
                    },
                ));
            }
        }
    }
    Ok(())
}

// ---- helpers ----------------------------------------------------------------------------

/// `(line, serde path, message)` of a parse failure.
type RawError = (Option<usize>, String, String);

fn read_raw(text: &str, format: Format) -> Result<RawWorkflow, RawError> {
    match format {
        Format::Yaml => {
            let deserializer = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let line = inner.location().map(|l| l.line());
                (line, path, clean_message(&inner.to_string()))
            })
        }
        Format::Json => {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let line = (inner.line() > 0).then_some(inner.line());
                (line, path, clean_message(&inner.to_string()))
            })
        }
    }
}

/// The parser's message without the location (the error shows the line itself) and without
/// the path prefix serde_yaml adds (the error names the action itself).
fn clean_message(message: &str) -> String {
    let mut message = message;
    if let Some(at) = message.find(" at line ") {
        message = &message[..at];
    }
    if let Some((prefix, rest)) = message.split_once(": ") {
        let is_path = !prefix.is_empty()
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c));
        if is_path {
            message = rest;
        }
    }
    message.to_owned()
}

/// The name of the action a serde path such as `actions[2].actions[0].retries` points into,
/// read from a lenient second parse of the text.
fn action_at(text: &str, format: Format, path: &str) -> Option<String> {
    let doc: Value = match format {
        Format::Yaml => serde_yaml::from_str(text).ok()?,
        Format::Json => serde_json::from_str(text).ok()?,
    };
    let mut node = &doc;
    let mut name = None;
    let mut rest = path;
    while let Some(after) = rest.strip_prefix("actions[") {
        let close = after.find(']')?;
        let index: usize = after[..close].parse().ok()?;
        node = node.get("actions")?.get(index)?;
        name = Some(
            node.get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", index + 1), str::to_owned),
        );
        rest = after[close + 1..].trim_start_matches('.');
    }
    name
}

/// The line of each action's `name:`, found by scanning the text, so that messages about an
/// action can point at it. The least indented `name:` holding the workflow's own name is the
/// workflow's and is skipped.
fn action_lines(text: &str, raw: &RawWorkflow) -> HashMap<String, Vec<usize>> {
    let mut found: Vec<(usize, usize, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start().trim_start_matches(['-', '{', ' ']);
        let Some(value) = trimmed
            .strip_prefix("name:")
            .or_else(|| trimmed.strip_prefix("\"name\":"))
        else {
            continue;
        };
        let value = value.split(" #").next().unwrap_or_default();
        let value = value.split(',').next().unwrap_or_default();
        let value = value
            .trim()
            .trim_end_matches('}')
            .trim()
            .trim_matches(['"', '\'']);
        found.push((index + 1, indent, value));
    }
    let workflow_line = found
        .iter()
        .filter(|(_, _, value)| *value == raw.name)
        .min_by_key(|(line, indent, _)| (*indent, *line))
        .map(|(line, _, _)| *line);
    let mut lines: HashMap<String, Vec<usize>> = HashMap::new();
    for (line, _, value) in found {
        if Some(line) != workflow_line {
            lines.entry(value.to_owned()).or_default().push(line);
        }
    }
    lines
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn convert(workflow: &Workflow, raw: RawAction) -> Result<Action, WorkflowError> {
    let name = raw.name.clone();
    let fail = |problem| Err(workflow.error(Some(&name), problem));
    let kind = raw.kind.unwrap_or(if raw.actions.is_some() {
        RawType::Parallel
    } else {
        RawType::Actor
    });
    match kind {
        RawType::Actor => Ok(Action::Actor(convert_actor(workflow, raw)?)),
        RawType::Parallel => {
            let on = "a parallel group (set it on its actions)";
            let not_allowed = [
                ("actorType", raw.actor_type.is_some()),
                ("input", raw.input.is_some()),
                ("streaming", raw.streaming.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("retries", raw.retries.is_some()),
                ("backoff", raw.backoff.is_some()),
                ("continue_on_error", raw.continue_on_error.is_some()),
            ];
            if let Some((field, _)) = not_allowed.iter().find(|(_, present)| *present) {
                return fail(Problem::FieldNotAllowed { field, on });
            }
            let mut actions = Vec::new();
            for member in raw.actions.unwrap_or_default() {
                if member.kind == Some(RawType::Parallel) || member.actions.is_some() {
                    return Err(workflow.error(Some(&member.name), Problem::NestedParallel));
                }
                actions.push(convert_actor(workflow, member)?);
            }
            Ok(Action::Parallel(ParallelGroup { name, actions }))
        }
    }
}

fn convert_actor(workflow: &Workflow, raw: RawAction) -> Result<ActorAction, WorkflowError> {
    let name = raw.name;
    let fail = |problem| workflow.error(Some(&name), problem);
    if raw.actions.is_some() {
        return Err(fail(Problem::FieldNotAllowed {
            field: "actions",
            on: "an actor action (use `type: parallel`)",
        }));
    }
    let actor_type = raw
        .actor_type
        .ok_or_else(|| fail(Problem::MissingActorType))?;
    let timeout = match &raw.timeout {
        Some(v) => Some(duration(v, "timeout", false).map_err(&fail)?),
        None => None,
    };
    let backoff = match &raw.backoff {
        Some(v) => duration(v, "backoff", true).map_err(&fail)?,
        None => DEFAULT_BACKOFF,
    };
    Ok(ActorAction {
        actor_type,
        input: raw
            .input
            .unwrap_or_else(|| Value::Object(Default::default())),
        streaming: raw.streaming.unwrap_or(false),
        timeout,
        retries: raw.retries.unwrap_or(0),
        backoff,
        continue_on_error: raw.continue_on_error.unwrap_or(false),
        name,
    })
}

/// A duration written as a number of seconds (`30`, `0.5`) or a string with a unit
/// (`"500ms"`, `"30s"`, `"2m"`, `"1h"`; a bare number is seconds).
fn duration(value: &Value, field: &'static str, zero_ok: bool) -> Result<Duration, Problem> {
    let bad = |reason| Problem::BadDuration {
        field,
        value: match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        reason,
    };
    let seconds = match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad("not a number"))?,
        Value::String(s) => {
            let s = s.trim();
            let split = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let (number, unit) = s.split_at(split);
            let number: f64 = number
                .parse()
                .map_err(|_| bad("write a number with a unit: 500ms, 30s, 2m, 1h"))?;
            let scale = match unit.trim() {
                "ms" => 0.001,
                "" | "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad("unknown unit: use ms, s, m or h")),
            };
            number * scale
        }
        _ => return Err(bad("write a number of seconds or a string like \"30s\"")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad("must not be negative"));
    }
    if seconds > 86_400.0 * 7.0 {
        return Err(bad("must be at most a week"));
    }
    if seconds == 0.0 && !zero_ok {
        return Err(bad("must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A loop in the step dependency graph, as the names along it (first name repeated last).
fn find_cycle(deps: &[(&str, Vec<reference::Reference>)]) -> Option<Vec<String>> {
    let edges: HashMap<&str, Vec<&str>> = deps
        .iter()
        .map(|(name, refs)| {
            let targets = refs
                .iter()
                .filter_map(|r| match &r.root {
                    Root::Step(t) => Some(t.as_str()),
                    Root::Input => None,
                })
                .collect();
            (*name, targets)
        })
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    let mut path: Vec<&str> = Vec::new();
    fn visit<'a>(
        node: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        state: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for &next in edges.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|n| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|n| (*n).to_owned()).collect();
                    cycle.push(next.to_owned());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, path) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    for (name, _) in deps {
        if state.get(name).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(name, &edges, &mut state, &mut path) {
                return Some(cycle);
            }
        }
    }
    None
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
    }

    #[test]
    fn messages_lose_location_and_path() {
        assert_eq!(
            clean_message("actions[1]: unknown field `x`, expected one of `a` at line 6 column 5"),
            "unknown field `x`, expected one of `a`"
        );
        assert_eq!(
            clean_message("missing field `name`"),
            "missing field `name`"
        );
    }
}
