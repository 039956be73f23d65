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
            "'{bad}' is not a key (use ASCII letters, digits, '_' and '-', separated by '.')"
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

/// The most levels of arrays and objects a step's resolved input may nest: below the usual
/// limit of JSON parsers (serde_json's is 128), which a remote step's worker parses it with,
/// and far below what a deep value's recursive handling would take of a thread's stack.
pub const MAX_STEP_INPUT_DEPTH: usize = 100;

/// The most a step's resolved input may weigh, in bytes of compact JSON (counted roughly):
/// steps that each take the one before twice would otherwise double it at every step.
pub const MAX_STEP_INPUT_BYTES: usize = 16 << 20;

/// `value` with every reference replaced, reading the workflow `input` and the outputs of
/// the finished `steps`; refused, before anything is copied, when the result would nest
/// deeper than [`MAX_STEP_INPUT_DEPTH`] or weigh more than [`MAX_STEP_INPUT_BYTES`].
pub(crate) fn resolve_within(
    value: &Value,
    input: &Value,
    steps: &Map<String, Value>,
) -> Result<Value, String> {
    let extent = resolved_extent(value, input, steps);
    if extent.depth > MAX_STEP_INPUT_DEPTH {
        return Err(format!(
            "its input would nest {} levels deep, past the limit of {MAX_STEP_INPUT_DEPTH}",
            extent.depth
        ));
    }
    if extent.bytes > MAX_STEP_INPUT_BYTES {
        return Err(format!(
            "its input would be about {} MiB, past the limit of {} MiB",
            extent.bytes >> 20,
            MAX_STEP_INPUT_BYTES >> 20
        ));
    }
    Ok(resolve(value, input, steps))
}

/// How big a value is: bytes of compact JSON (roughly: escapes and numbers are estimated) and
/// levels of arrays and objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extent {
    bytes: usize,
    depth: usize,
}

impl Extent {
    /// `self` and `other` side by side.
    fn and(self, other: Extent) -> Extent {
        Extent {
            bytes: self.bytes.saturating_add(other.bytes),
            depth: self.depth.max(other.depth),
        }
    }
}

/// The extent of `value` once resolved, measured without resolving it.
fn resolved_extent(value: &Value, input: &Value, steps: &Map<String, Value>) -> Extent {
    match value {
        Value::String(s) => match parse_string(s) {
            Ok(parts) => match parts.as_slice() {
                [Part::Ref(r)] => extent(lookup(r, input, steps)),
                parts => {
                    let bytes = parts.iter().fold(2usize, |bytes, part| {
                        bytes.saturating_add(match part {
                            Part::Text(t) => t.len(),
                            Part::Ref(r) => extent(lookup(r, input, steps)).bytes,
                        })
                    });
                    Extent { bytes, depth: 0 }
                }
            },
            Err(_) => extent(value),
        },
        Value::Array(items) => {
            let inner = items.iter().fold(Extent::default(), |e, item| {
                e.and(resolved_extent(item, input, steps))
            });
            Extent {
                bytes: inner.bytes.saturating_add(2 + items.len()),
                depth: inner.depth + 1,
            }
        }
        Value::Object(map) => {
            let inner = map.iter().fold(Extent::default(), |e, (key, item)| {
                let key = Extent {
                    bytes: key.len() + 4,
                    depth: 0,
                };
                e.and(key).and(resolved_extent(item, input, steps))
            });
            Extent {
                bytes: inner.bytes.saturating_add(2),
                depth: inner.depth + 1,
            }
        }
        other => extent(other),
    }
}

/// The extent of a value as it is, walked with a stack of its own: a value from outside (a
/// step's output) may nest deeper than recursion could follow.
fn extent(value: &Value) -> Extent {
    let mut total = Extent::default();
    let mut pending = vec![(value, 1usize)];
    while let Some((value, level)) = pending.pop() {
        let bytes = match value {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                pending.extend(items.iter().map(|item| (item, level + 1)));
                total.depth = total.depth.max(level);
                2 + items.len()
            }
            Value::Object(map) => {
                pending.extend(map.values().map(|item| (item, level + 1)));
                total.depth = total.depth.max(level);
                2 + map.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
        total.bytes = total.bytes.saturating_add(bytes);
    }
    total
}

/// `value` with every reference replaced, reading the workflow `input` and the outputs of
/// the finished `steps`.
fn resolve(value: &Value, input: &Value, steps: &Map<String, Value>) -> Value {
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
    fn an_input_too_deep_or_too_big_is_refused_before_it_is_made() {
        let mut deep = json!("leaf");
        for _ in 0..MAX_STEP_INPUT_DEPTH {
            deep = json!({ "x": deep });
        }
        let mut steps = Map::new();
        steps.insert("deep".into(), deep);
        // As deep as allowed, then one level more by the template's own object.
        let at_limit = resolve_within(&json!("${{ steps.deep.output }}"), &Value::Null, &steps);
        assert!(at_limit.is_ok());
        let past = resolve_within(
            &json!({ "y": "${{ steps.deep.output }}" }),
            &json!(null),
            &steps,
        );
        assert!(past.unwrap_err().contains("101 levels"));

        let big = "x".repeat(MAX_STEP_INPUT_BYTES / 2);
        steps.insert("big".into(), json!(big));
        let twice = json!({ "a": "${{ steps.big.output }}", "b": "${{ steps.big.output }}" });
        let refused = resolve_within(&twice, &Value::Null, &steps).unwrap_err();
        assert!(refused.contains("MiB"), "{refused}");
        let embedded = json!("${{ steps.big.output }} and ${{ steps.big.output }}");
        assert!(resolve_within(&embedded, &Value::Null, &steps).is_err());
        let once = json!({ "a": "${{ steps.big.output }}" });
        assert!(resolve_within(&once, &Value::Null, &steps).is_ok());
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
