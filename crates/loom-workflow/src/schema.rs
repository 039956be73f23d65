//! [`InputSchema`]: the small subset of JSON Schema a workflow's `input` is checked against
//! before any step runs.
//!
//! Supported: `type: object` (optional), `required: [names]`, `properties` with per-property
//! `type` (`string`, `number`, `integer`, `boolean`, `object`, `array`), `description`,
//! `default` (filled in when the property is absent) and `enum`, and
//! `additionalProperties: false` to reject unknown properties. Anything else in the schema is
//! rejected at load time, so a schema never silently checks less than it says.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The workflow input's schema.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct InputSchema {
    /// Always `object` when given.
    #[serde(rename = "type", default)]
    pub kind: Option<JsonType>,
    /// Properties the input must have.
    #[serde(default)]
    pub required: Vec<String>,
    /// Known properties.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertySchema>,
    /// Whether properties not listed in `properties` are accepted (default `true`).
    #[serde(rename = "additionalProperties", default = "yes")]
    pub additional_properties: bool,
}

fn yes() -> bool {
    true
}

/// One property of the input.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PropertySchema {
    /// The JSON type the value must have.
    #[serde(rename = "type", default)]
    pub kind: Option<JsonType>,
    /// What the property is for, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The value used when the property is absent.
    #[serde(default)]
    pub default: Option<Value>,
    /// The only values allowed.
    #[serde(rename = "enum", default)]
    pub allowed: Option<Vec<Value>>,
}

/// A JSON type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum JsonType {
    /// A string.
    String,
    /// Any number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
    /// `null`.
    Null,
}

impl JsonType {
    fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
            Self::Null => "null",
        }
    }

    fn matches(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Integer => value.is_i64() || value.is_u64() || as_integer(value).is_some(),
            Self::Boolean => value.is_boolean(),
            Self::Object => value.is_object(),
            Self::Array => value.is_array(),
            Self::Null => value.is_null(),
        }
    }
}

/// A whole number written as a float (`3.0`, `1e2`: a client's float formatting writes them
/// so), which JSON Schema counts as an integer, as the integer it is; `None` for a fraction,
/// or one past what an `i64` or `u64` holds.
fn as_integer(value: &Value) -> Option<Value> {
    let n = value
        .as_f64()
        .filter(|n| value.is_f64() && n.fract() == 0.0)?;
    // 2^63 and 2^64: the bounds, exactly, as floats.
    const I64_END: f64 = 9_223_372_036_854_775_808.0;
    const U64_END: f64 = 18_446_744_073_709_551_616.0;
    if (-I64_END..I64_END).contains(&n) {
        Some(Value::from(n as i64))
    } else if (0.0..U64_END).contains(&n) {
        Some(Value::from(n as u64))
    } else {
        None
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl InputSchema {
    /// Checks the schema itself (called by the loader): it must be one some input can pass,
    /// and its defaults must pass it.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(kind) = self.kind {
            if kind != JsonType::Object {
                return Err(format!(
                    "the input is an object: `type` must be `object`, not `{}`",
                    kind.name()
                ));
            }
        }
        for (name, property) in &self.properties {
            if let (Some(kind), Some(default)) = (property.kind, &property.default) {
                if !kind.matches(default) {
                    return Err(format!(
                        "the default of `{name}` is not of type {}",
                        kind.name()
                    ));
                }
            }
            if let Some(allowed) = &property.allowed {
                if let Some(kind) = property.kind {
                    if let Some(other) = allowed.iter().find(|v| !kind.matches(v)) {
                        return Err(format!(
                            "`{name}` is of type {} but its `enum` holds {other}",
                            kind.name()
                        ));
                    }
                }
                if let Some(default) = property.default.as_ref().filter(|d| !allowed.contains(d)) {
                    return Err(format!(
                        "the default of `{name}`, {default}, is not one of its `enum`"
                    ));
                }
                if allowed.is_empty() && self.required.contains(name) {
                    return Err(format!(
                        "`{name}` is required but its `enum` is empty: no input can pass"
                    ));
                }
            }
        }
        if !self.additional_properties {
            if let Some(name) = self
                .required
                .iter()
                .find(|name| !self.properties.contains_key(*name))
            {
                return Err(format!(
                    "`{name}` is required but not among the `properties`, which \
                     `additionalProperties: false` makes the only ones allowed: no input can pass"
                ));
            }
        }
        Ok(())
    }

    /// Checks `input` and returns it with defaults filled in; the error says what is wrong.
    /// A `null` input counts as `{}`.
    pub fn apply(&self, input: Value) -> Result<Value, String> {
        let mut map = match input {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => {
                return Err(format!(
                    "the input must be a JSON object, not {}",
                    type_name(&other)
                ))
            }
        };
        for (name, property) in &self.properties {
            if let (false, Some(default)) = (map.contains_key(name), &property.default) {
                map.insert(name.clone(), default.clone());
            }
        }
        let missing: Vec<&str> = self
            .required
            .iter()
            .filter(|name| !map.contains_key(*name))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing required input {}",
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (name, value) in &mut map {
            let Some(property) = self.properties.get(name) else {
                if self.additional_properties {
                    continue;
                }
                return Err(format!("unknown input `{name}`"));
            };
            if let Some(kind) = property.kind {
                // The steps get the integer: an actor reading one refuses `3.0`.
                if let (JsonType::Integer, Some(whole)) = (kind, as_integer(value)) {
                    *value = whole;
                }
                if !kind.matches(value) {
                    return Err(format!(
                        "input `{name}` must be of type {}, not {}",
                        kind.name(),
                        type_name(value)
                    ));
                }
            }
            if let Some(allowed) = &property.allowed {
                if !allowed.contains(value) {
                    return Err(format!(
                        "input `{name}` must be one of {}",
                        Value::Array(allowed.clone())
                    ));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> InputSchema {
        serde_json::from_value(schema_json()).unwrap_or_default()
    }

    #[test]
    fn fills_defaults_and_checks_types() {
        let schema = schema();
        assert_eq!(
            schema.apply(json!({"topic": "rust"})),
            Ok(json!({"topic": "rust", "words": 100}))
        );
        let err = |v| schema.apply(v).unwrap_err();
        assert!(err(json!({})).contains("missing required input `topic`"));
        assert!(err(json!({"topic": 1})).contains("`topic` must be of type string"));
        assert!(err(json!({"topic": "a", "x": 1})).contains("unknown input `x`"));
        assert!(err(json!({"topic": "a", "tone": "loud"})).contains("one of"));
        assert!(err(json!([1])).contains("must be a JSON object"));
        // A whole number is an integer however it is written; a fraction is not.
        for (written, whole) in [(json!(3.0), json!(3)), (json!(1e2), json!(100))] {
            assert_eq!(
                schema.apply(json!({"topic": "a", "words": written})),
                Ok(json!({"topic": "a", "words": whole}))
            );
        }
        assert!(err(json!({"topic": "a", "words": 1e300})).contains("must be of type integer"));
        assert!(
            err(json!({"topic": "a", "words": 2.5})).contains("`words` must be of type integer")
        );
    }

    /// A schema no input could pass, or whose default it refuses, is refused at load time
    /// rather than failing every run.
    #[test]
    fn a_schema_no_input_can_pass_is_refused() {
        let check = |schema: Value| {
            serde_json::from_value::<InputSchema>(schema)
                .map_err(|e| e.to_string())
                .and_then(|s| s.check())
        };
        assert_eq!(check(schema_json()), Ok(()));
        let refused = [
            (
                json!({"required": ["x"], "additionalProperties": false}),
                "`x` is required but not among the `properties`",
            ),
            (
                json!({"properties": {"t": {"enum": ["a"], "default": "b"}}}),
                "the default of `t`, \"b\", is not one of its `enum`",
            ),
            (
                json!({"properties": {"t": {"type": "string", "enum": ["a", 1]}}}),
                "`t` is of type string but its `enum` holds 1",
            ),
            (
                json!({"required": ["t"], "properties": {"t": {"enum": []}}}),
                "`t` is required but its `enum` is empty",
            ),
        ];
        for (schema, says) in refused {
            let err = check(schema.clone()).expect_err("refused");
            assert!(err.contains(says), "{schema}: {err}");
        }
    }

    fn schema_json() -> Value {
        json!({
            "required": ["topic"],
            "properties": {
                "topic": {"type": "string"},
                "words": {"type": "integer", "default": 100},
                "tone": {"enum": ["plain", "formal"]}
            },
            "additionalProperties": false
        })
    }
}
