//! The workflow loader on arbitrary text: a workflow or an error that says what is wrong, never
//! a panic (`PROPTEST_CASES` sets how many inputs; 2,000 by default).

use proptest::prelude::*;

/// YAML-ish fragments a definition is made of, so that many inputs get deep into the loader.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name: w\n".to_owned()),
        Just("actions:\n".to_owned()),
        Just("  - name: a\n".to_owned()),
        Just("    type: actor\n".to_owned()),
        Just("    type: parallel\n".to_owned()),
        Just("    actorType: echo\n".to_owned()),
        Just("    input: { x: \"${{ steps.a.output }}\" }\n".to_owned()),
        Just("    timeout: 5s\n".to_owned()),
        Just("input:\n  properties:\n    n: { type: integer }\n".to_owned()),
        Just("    actions:\n".to_owned()),
        Just("{\"name\": \"w\", \"actions\": [".to_owned()),
        ".{0,16}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_text_loads_or_fails_with_a_reason(parts in proptest::collection::vec(fragment(), 0..12)) {
        let text: String = parts.concat();
        match loom_workflow::parse(&text, "arbitrary.yaml", &|t| t == "echo") {
            Ok(workflow) => prop_assert!(!workflow.name.is_empty()),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
}
