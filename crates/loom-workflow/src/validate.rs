//! The checks serde cannot make: [`validate`] takes a converted [`Workflow`] and either
//! passes it on to the executor unchanged or names the first action that breaks a rule
//! (names, actor types, references, cycles), at that action's line.

use std::collections::{HashMap, HashSet};

use crate::error::{Problem, WorkflowError};
use crate::reference::{self, Root};
use crate::workflow::{Action, Workflow};
use crate::WORKFLOW_ACTOR_PREFIX;

/// The longest workflow name, in bytes: workers serve a workflow as the actor type
/// `workflows/<name>`, a Redis key's part of at most 128 bytes.
pub const MAX_WORKFLOW_NAME_LEN: usize = 128 - WORKFLOW_ACTOR_PREFIX.len();

/// Checks a parsed workflow: a valid name (at most [`MAX_WORKFLOW_NAME_LEN`] bytes), at least one action, valid and unique names, non-empty groups,
/// known actor types, well-formed references that point only to earlier steps (not to a
/// sibling in the same parallel group), and no cycles. [`parse`](crate::parse) and [`load`](crate::load) call it; call
/// it again to check a workflow against another set of actor types.
pub fn validate(workflow: &Workflow, knows: &dyn Fn(&str) -> bool) -> Result<(), WorkflowError> {
    // The name is a path segment (`/v1/workflows/{name}`) and part of a queue's key.
    if !is_name(&workflow.name) {
        let name = workflow.name.clone();
        return Err(workflow.error(None, Problem::InvalidName(name)));
    }
    if workflow.name.len() > MAX_WORKFLOW_NAME_LEN {
        let len = workflow.name.len();
        return Err(workflow.error(None, Problem::NameTooLong { len }));
    }
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

/// Whether `name` can name a workflow: ASCII letters, digits, `_` and `-`, at most
/// [`MAX_WORKFLOW_NAME_LEN`] bytes (what [`validate`] asks of a definition's name), so
/// `workflows/<name>` can be refused before it is looked for anywhere.
pub fn is_workflow_name(name: &str) -> bool {
    is_name(name) && name.len() <= MAX_WORKFLOW_NAME_LEN
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
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
    // 0 = unvisited, 1 = on the current path, 2 = done. Depth first without recursion (a
    // chain of thousands of steps must not overflow the stack): `path` holds each step on the
    // current path with how many of its references were followed.
    let mut state: HashMap<&str, u8> = HashMap::new();
    let mut path: Vec<(&str, usize)> = Vec::new();
    for (root, _) in deps {
        if state.get(root).copied().unwrap_or(0) != 0 {
            continue;
        }
        state.insert(root, 1);
        path.push((root, 0));
        while let Some(&(node, followed)) = path.last() {
            let Some(&next) = edges.get(node).and_then(|targets| targets.get(followed)) else {
                state.insert(node, 2);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|(n, _)| (*n).to_owned()).collect();
                    cycle.push(next.to_owned());
                    return Some(cycle);
                }
                0 => {
                    state.insert(next, 1);
                    path.push((next, 0));
                }
                _ => {}
            }
        }
    }
    None
}
