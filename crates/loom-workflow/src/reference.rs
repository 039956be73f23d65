//! `${{ … }}` references inside an action's `input`: parsing (at load time, so a bad or
//! dangling reference rejects the file) and resolution (when the action starts, against the
//! workflow input and the outputs of the steps that ran before it).
//!
//! Grammar: `${{ input[.key…] }}` or `${{ steps.<name>.output[.key…] }}`; a key made of
//! digits indexes an array. A string that is exactly one reference takes the referenced
//! value as is (a number stays a number, an object an object); references embedded in a
//! longer string are replaced by their text (strings as they are, `null` as nothing, other
//! values as compact JSON). A path that leads nowhere resolves to `null`.

use serde_json::{Map, Value};

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

/// What a reference starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Root {
    /// The workflow input.
    Input,
    /// The output of the named step.
    Step(String),
}

/// One parsed `${{ … }}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub(crate) root: Root,
    pub(crate) path: Vec<String>,
    /// The reference as written, `${{` and `}}` included, for error messages.
    pub(crate) text: String,
}

/// A piece of a string value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(Reference),
}

/// A malformed reference: (reference as written, reason).
pub(crate) type ParseError = (String, String);

fn is_key(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_reference(text: &str, inner: &str) -> Result<Reference, ParseError> {
    let fail = |reason: &str| Err((text.to_owned(), reason.to_owned()));
    let segments: Vec<&str> = inner.trim().split('.').collect();
    if let Some(bad) = segments.iter().find(|s| !is_key(s)) {
        return fail(&format!(
            "'{bad}' is not a key (use letters, digits, '_' and '-', separated by '.')"
        ));
    }
    let path = |from: usize| segments[from..].iter().map(|s| (*s).to_owned()).collect();
    match segments.as_slice() {
        ["input", ..] => Ok(Reference {
            root: Root::Input,
            path: path(1),
            text: text.to_owned(),
        }),
        ["steps", name, "output", ..] => Ok(Reference {
            root: Root::Step((*name).to_owned()),
            path: path(3),
            text: text.to_owned(),
        }),
        ["steps", ..] => fail("a step reference reads `steps.<name>.output[.key…]`"),
        _ => fail("a reference starts with `input` or `steps`"),
    }
}

fn parse_string(s: &str) -> Result<Vec<Part>, ParseError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(OPEN) {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + OPEN.len()..];
        let Some(close) = after.find(CLOSE) else {
            return Err((rest[open..].to_owned(), "missing closing `}}`".to_owned()));
        };
        let text = &rest[open..open + OPEN.len() + close + CLOSE.len()];
        parts.push(Part::Ref(parse_reference(text, &after[..close])?));
        rest = &after[close + CLOSE.len()..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Every reference in the string values of `value`, in document order.
pub(crate) fn references(value: &Value) -> Result<Vec<Reference>, ParseError> {
    let mut found = Vec::new();
    collect(value, &mut found)?;
    Ok(found)
}

fn collect(value: &Value, found: &mut Vec<Reference>) -> Result<(), ParseError> {
    match value {
        Value::String(s) => {
            for part in parse_string(s)? {
                if let Part::Ref(r) = part {
                    found.push(r);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect(item, found)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                collect(item, found)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `value` with every reference replaced, reading the workflow `input` and the outputs of
/// the finished `steps`.
pub(crate) fn resolve(value: &Value, input: &Value, steps: &Map<String, Value>) -> Value {
    match value {
        Value::String(s) => match parse_string(s) {
            Ok(parts) => resolve_parts(s, parts, input, steps),
            // Definitions are checked at load time; a string that does not parse now is
            // passed on as written rather than guessed at.
            Err(_) => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| resolve(item, input, steps))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resolve(v, input, steps)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn resolve_parts(
    original: &str,
    mut parts: Vec<Part>,
    input: &Value,
    steps: &Map<String, Value>,
) -> Value {
    match parts.as_slice() {
        [] => return Value::String(String::new()),
        [Part::Ref(r)] => return lookup(r, input, steps).clone(),
        parts if !parts.iter().any(|p| matches!(p, Part::Ref(_))) => {
            return Value::String(original.to_owned())
        }
        _ => {}
    }
    let mut out = String::new();
    for part in parts.drain(..) {
        match part {
            Part::Text(t) => out.push_str(&t),
            Part::Ref(r) => match lookup(&r, input, steps) {
                Value::String(s) => out.push_str(s),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Value::String(out)
}

fn lookup<'a>(r: &Reference, input: &'a Value, steps: &'a Map<String, Value>) -> &'a Value {
    let start = match &r.root {
        Root::Input => Some(input),
        Root::Step(name) => steps.get(name),
    };
    r.path
        .iter()
        .try_fold(start.unwrap_or(&Value::Null), |value, key| match value {
            Value::Object(map) => map.get(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
        .unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn steps() -> Map<String, Value> {
        let mut steps = Map::new();
        steps.insert(
            "research".into(),
            json!({"text": "notes", "n": 3, "list": [1, {"a": "b"}]}),
        );
        steps
    }

    #[test]
    fn exact_reference_keeps_the_type() {
        let input = json!({"topic": "rust", "count": 5});
        let value = json!({
            "n": "${{ steps.research.output.n }}",
            "count": "${{input.count}}",
            "whole": "${{ steps.research.output }}",
            "indexed": "${{ steps.research.output.list.1.a }}",
            "missing": "${{ input.nope }}",
        });
        let out = resolve(&value, &input, &steps());
        assert_eq!(out["n"], json!(3));
        assert_eq!(out["count"], json!(5));
        assert_eq!(out["whole"]["text"], json!("notes"));
        assert_eq!(out["indexed"], json!("b"));
        assert_eq!(out["missing"], Value::Null);
    }

    #[test]
    fn embedded_references_are_stringified() {
        let input = json!({"topic": "rust"});
        let value =
            json!("About ${{ input.topic }}: ${{ steps.research.output.n }} ${{ steps.research.output.list }}${{ input.none }}.");
        let out = resolve(&value, &input, &steps());
        assert_eq!(out, json!("About rust: 3 [1,{\"a\":\"b\"}]."));
    }

    #[test]
    fn malformed_references_are_reported() {
        for bad in [
            "${{ input.topic",
            "${{ outputs.x }}",
            "${{ steps.x }}",
            "${{ steps.x.result }}",
            "${{ input..a }}",
            "${{ }}",
        ] {
            assert!(references(&json!({ "k": [bad] })).is_err(), "{bad}");
        }
        let found = references(&json!({"a": "x ${{ steps.r.output.t }} ${{ input }}"}));
        assert_eq!(found.map(|r| r.len()), Ok(2));
    }
}
