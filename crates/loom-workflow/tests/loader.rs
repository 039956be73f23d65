//! The loader rejects every bad definition before anything runs, naming the file, the
//! action, the problem and (where the parser knows it) the line.

mod support;

use loom_workflow::{parse, Action, Problem, WorkflowError};

fn known(actor_type: &str) -> bool {
    matches!(actor_type, "echo" | "batch")
}

fn reject(yaml: &str) -> WorkflowError {
    match parse(yaml, "bad.yaml", &known) {
        Ok(w) => panic!("should be rejected: {w:?}"),
        Err(e) => e,
    }
}

/// Asserts the message names the file, the line (when given), the action and the problem.
fn assert_message(err: &WorkflowError, line: Option<usize>, action: &str, problem: &str) {
    let message = err.to_string();
    match line {
        Some(line) => assert!(
            message.starts_with(&format!("bad.yaml:{line}: ")),
            "file and line in: {message}"
        ),
        None => assert!(message.starts_with("bad.yaml"), "file in: {message}"),
    }
    assert!(
        message.contains(&format!("action '{action}'")),
        "action in: {message}"
    );
    assert!(message.contains(problem), "'{problem}' in: {message}");
    assert_eq!(err.action(), Some(action));
}

#[test]
fn a_good_definition_loads() {
    let workflow = parse(
        r#"
name: good
actions:
  - name: one
    actorType: echo
    input: { x: "${{ input.x }}" }
    timeout: 500ms
    retries: 2
    backoff: 0
    continue_on_error: true
  - name: group
    type: parallel
    actions:
      - { name: two, actorType: batch, streaming: true, timeout: 3 }
      - { name: three, actorType: echo, input: "${{ steps.one.output }}" }
"#,
        "good.yaml",
        &known,
    )
    .expect("loads");
    assert_eq!(workflow.name, "good");
    let names: Vec<&str> = workflow.steps().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "two", "three"]);
    let Action::Actor(one) = &workflow.actions[0] else {
        panic!("one is an actor action")
    };
    assert_eq!(one.timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(one.retries, 2);
    assert!(one.continue_on_error);
    assert!(matches!(&workflow.actions[1], Action::Parallel(g) if g.actions.len() == 2));
}

#[test]
fn an_unknown_field_names_the_action_and_line() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n  - name: b\n    actorTyp: echo\n",
    );
    assert_message(&err, Some(6), "b", "unknown field `actorTyp`");
    assert!(matches!(err.problem(), Some(Problem::Syntax(_))));
}

#[test]
fn an_unknown_field_inside_a_parallel_group_names_the_inner_action() {
    let err = reject(
        "name: w\nactions:\n  - name: g\n    type: parallel\n    actions:\n      - name: inner\n        actorType: echo\n        streamin: true\n",
    );
    assert_message(&err, Some(8), "inner", "unknown field `streamin`");
}

#[test]
fn an_unknown_top_level_field_is_rejected_with_its_line() {
    let err = reject("name: w\nsteps: []\nactions:\n  - { name: a, actorType: echo }\n");
    let message = err.to_string();
    assert!(message.starts_with("bad.yaml:2: "), "{message}");
    assert!(message.contains("unknown field `steps`"), "{message}");
}

#[test]
fn json_definitions_are_checked_the_same_way() {
    let text = "{\n  \"name\": \"w\",\n  \"actions\": [\n    {\"name\": \"a\", \"actorType\": \"echo\"},\n    {\"name\": \"b\", \"actorType\": \"echo\", \"retry\": 1}\n  ]\n}\n";
    let err = parse(text, "bad.json", &known).expect_err("rejected");
    let message = err.to_string();
    assert!(message.starts_with("bad.json:5: action 'b': "), "{message}");
    assert!(message.contains("unknown field `retry`"), "{message}");
    let text = text.replace(", \"retry\": 1", "");
    assert!(parse(&text, "good.json", &known).is_ok());
}

#[test]
fn a_yaml_syntax_error_gives_its_line() {
    let err = reject("name: w\nactions:\n  - name: a\n  actorType: [echo\n");
    assert!(matches!(err.problem(), Some(Problem::Syntax(_))));
    assert!(err.line().is_some(), "{err}");
    assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
}

/// A file that is not a workflow at all — empty, or not a mapping — says what one is.
#[test]
fn an_empty_file_or_one_that_is_no_mapping_says_what_a_workflow_is() {
    for (text, says) in [
        ("", "the file is empty"),
        ("# only a comment\n\n", "the file is empty"),
        ("- a\n- b\n", "expected mapping"),
    ] {
        let err = reject(text).to_string();
        assert!(err.contains(says), "{text:?}: {err}");
        assert!(
            err.contains("a mapping with a `name` and its `actions`"),
            "{err}"
        );
    }
    // Deeper down, the parser's own words suffice.
    let err = reject("name: w\nactions: 3\n").to_string();
    assert!(!err.contains("a mapping with a `name`"), "{err}");
}

#[test]
fn a_wrong_type_is_rejected() {
    let err = reject("name: w\nactions:\n  - name: a\n    actorType: echo\n    retries: many\n");
    assert_message(&err, Some(5), "a", "invalid type");
    // The message names the field, also where the parser's words do not.
    assert!(err.to_string().contains("bad 'retries'"), "{err}");
    // A boolean or a count written as a string is a string: refused, not read as what it
    // spells (YAML and JSON alike).
    for (field, value) in [
        ("continue_on_error", "\"true\""),
        ("streaming", "\"false\""),
        ("continue_on_error", "yes"),
        ("retries", "\"2\""),
        ("retries", "1.5"),
        ("retries", "4294967296"),
    ] {
        let yaml =
            format!("name: w\nactions:\n  - name: a\n    actorType: echo\n    {field}: {value}\n");
        let err = reject(&yaml);
        assert_message(&err, Some(5), "a", &format!("bad '{field}'"));
    }
    let json = r#"{"name": "w", "actions": [{"name": "a", "actorType": "echo", "continue_on_error": "false"}]}"#;
    assert!(reject(json).to_string().contains("bad 'continue_on_error'"));
    let written = "name: w\nactions:\n  - { name: a, actorType: echo, retries: 2, streaming: true, continue_on_error: false }\n";
    let workflow = parse(written, "ok.yaml", &known).expect("plain scalars load");
    assert_eq!(workflow.steps().count(), 1);
}

#[test]
fn an_unknown_actor_type_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n  - name: b\n    actorType: nope\n",
    );
    assert_message(&err, Some(5), "b", "unknown actor type 'nope'");
    assert_eq!(
        err.problem(),
        Some(&Problem::UnknownActorType("nope".into()))
    );
    // A workflow that workers serve, named where none can be run: the message says why.
    let err = reject("name: w\nactions:\n  - name: a\n    actorType: workflows/report\n");
    assert_message(&err, Some(3), "a", "it runs only through Redis");
}

/// A key given twice in one mapping is named, without the parser's hint at an option of its
/// own that no user can set.
#[test]
fn a_duplicate_key_is_named_plainly() {
    let message =
        reject("name: w\nname: v\nactions:\n  - name: a\n    actorType: echo\n").to_string();
    assert!(message.starts_with("bad.yaml:2: "), "{message}");
    assert!(message.contains("duplicate key 'name'"), "{message}");
    assert!(!message.contains("Options"), "{message}");
}

#[test]
fn duplicate_names_are_rejected_also_across_groups() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n  - name: a\n    actorType: echo\n",
    );
    assert_message(&err, Some(5), "a", "duplicate action name");
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n  - name: g\n    type: parallel\n    actions:\n      - { name: a, actorType: echo }\n",
    );
    assert_eq!(err.problem(), Some(&Problem::DuplicateName));
}

#[test]
fn a_reference_to_a_later_step_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: { x: \"${{ steps.b.output.text }}\" }\n  - name: b\n    actorType: echo\n",
    );
    assert_message(&err, Some(3), "a", "references step 'b'");
    assert!(err.to_string().contains("which runs later"), "{err}");
}

#[test]
fn a_reference_to_a_missing_step_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: \"see ${{ steps.ghost.output }}\"\n",
    );
    assert_message(&err, Some(3), "a", "step 'ghost'");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_reference_to_a_sibling_in_the_same_group_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: g\n    type: parallel\n    actions:\n      - { name: a, actorType: echo }\n      - name: b\n        actorType: echo\n        input: [\"${{ steps.a.output }}\"]\n",
    );
    assert_message(
        &err,
        Some(7),
        "b",
        "runs at the same time in parallel group 'g'",
    );
}

#[test]
fn a_reference_to_a_group_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: g\n    type: parallel\n    actions:\n      - { name: a, actorType: echo }\n  - name: b\n    actorType: echo\n    input: \"${{ steps.g.output }}\"\n",
    );
    assert_message(&err, Some(7), "b", "parallel group 'g'");
}

#[test]
fn cycles_are_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: \"${{ steps.b.output }}\"\n  - name: b\n    actorType: echo\n    input: \"${{ steps.a.output }}\"\n",
    );
    assert_message(&err, Some(3), "a", "reference cycle: a -> b -> a");
    let err = reject(
        "name: w\nactions:\n  - name: self\n    actorType: echo\n    input: \"${{ steps.self.output }}\"\n",
    );
    assert_message(&err, Some(3), "self", "reference cycle: self -> self");
}

#[test]
fn a_malformed_reference_is_rejected() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: \"${{ input.topic \"\n",
    );
    assert_message(&err, Some(3), "a", "bad reference");
    assert!(err.to_string().contains("missing closing"), "{err}");
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: \"${{ env.HOME }}\"\n",
    );
    assert_message(&err, Some(3), "a", "starts with `input` or `steps`");
}

#[test]
fn structural_mistakes_are_rejected() {
    let cases = [
        ("name: w\nactions: []\n", None, "the workflow has no actions"),
        ("name: w\nactions:\n  - name: a\n", Some("a"), "missing field `actorType`"),
        (
            "name: w\nactions:\n  - name: g\n    type: parallel\n    actorType: echo\n    actions: [{ name: a, actorType: echo }]\n",
            Some("g"),
            "field `actorType` is not allowed on a parallel group",
        ),
        (
            "name: w\nactions:\n  - name: g\n    type: parallel\n    actions: []\n",
            Some("g"),
            "the parallel group has no actions",
        ),
        (
            "name: w\nactions:\n  - name: g\n    type: parallel\n    actions:\n      - name: h\n        type: parallel\n        actions: [{ name: a, actorType: echo }]\n",
            Some("h"),
            "parallel groups cannot be nested",
        ),
        (
            "name: w\nactions:\n  - name: a\n    actorType: echo\n    timeout: soon\n",
            Some("a"),
            "bad `timeout` 'soon'",
        ),
        (
            "name: w\nactions:\n  - name: a\n    actorType: echo\n    backoff: 5 fortnights\n",
            Some("a"),
            "bad `backoff`",
        ),
        (
            "name: w\nactions:\n  - name: a b\n    actorType: echo\n",
            Some("a b"),
            "invalid name 'a b'",
        ),
        (
            "name: w\nactions:\n  - name: a\n    type: script\n",
            Some("a"),
            "unknown variant `script`",
        ),
        (
            "name: w\ninput: { required: [x], properties: { x: { type: text } } }\nactions:\n  - { name: a, actorType: echo }\n",
            None,
            "unknown variant `text`",
        ),
        (
            "name: w\ninput: { properties: { x: { type: integer, default: many } } }\nactions:\n  - { name: a, actorType: echo }\n",
            None,
            "bad input schema: the default of `x` is not of type integer",
        ),
    ];
    for (yaml, action, problem) in cases {
        let err = reject(yaml);
        let message = err.to_string();
        assert!(message.starts_with("bad.yaml"), "{message}");
        assert!(message.contains(problem), "'{problem}' in: {message}");
        if let Some(action) = action {
            assert!(message.contains(&format!("action '{action}'")), "{message}");
        }
    }
}

#[test]
fn an_unsupported_extension_and_a_missing_file_are_rejected() {
    let err = parse("name: w", "workflow.toml", &known).expect_err("rejected");
    assert_eq!(err.problem(), Some(&Problem::UnsupportedFormat));
    assert!(err.to_string().starts_with("workflow.toml: "), "{err}");
    let err = loom_workflow::load("/nonexistent/flow.yaml", &known).expect_err("rejected");
    assert!(matches!(err, WorkflowError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/flow.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn validate_rechecks_against_other_actor_types() {
    let workflow = parse(
        "name: w\nactions:\n  - name: a\n    actorType: batch\n",
        "w.yaml",
        &known,
    )
    .expect("loads");
    let err = loom_workflow::validate(&workflow, &|t| t == "echo").expect_err("batch unknown");
    assert_eq!(
        err.to_string(),
        "w.yaml:3: action 'a': unknown actor type 'batch'"
    );
}

#[test]
fn the_input_schema_is_enforced() {
    let workflow = parse(
        "name: w\ninput:\n  required: [topic]\n  properties:\n    topic: { type: string }\n    n: { type: integer, default: 3 }\nactions:\n  - { name: a, actorType: echo }\n",
        "w.yaml",
        &known,
    )
    .expect("loads");
    let ok = workflow
        .check_input(serde_json::json!({"topic": "t"}))
        .expect("ok");
    assert_eq!(ok, serde_json::json!({"topic": "t", "n": 3}));
    let err = workflow
        .check_input(serde_json::json!({}))
        .expect_err("missing");
    assert_eq!(
        err.to_string(),
        "workflow 'w': bad input: missing required input `topic`"
    );
    let err = workflow
        .check_input(serde_json::json!({"topic": 7}))
        .expect_err("wrong type");
    assert!(
        err.to_string().contains("`topic` must be of type string"),
        "{err}"
    );
}

#[test]
fn the_examples_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workflows");
    let mut loaded = 0;
    for entry in std::fs::read_dir(dir).expect("examples/workflows exists") {
        let path = entry.expect("entry").path();
        let workflow =
            loom_workflow::load(&path, &support::example_types).unwrap_or_else(|e| panic!("{e}"));
        assert!(!workflow.actions.is_empty());
        loaded += 1;
    }
    assert!(loaded >= 3, "three examples at least, found {loaded}");
}

#[test]
fn lines_come_from_the_parser_not_from_text_that_looks_like_a_name() {
    // A text scan for `name: b` found the description's line and another step's input first.
    let err = reject(
        "name: w\ndescription: |\n  name: b\nactions:\n  - name: a\n    actorType: echo\n  - name: b\n    actorType: nope\n",
    );
    assert_message(&err, Some(7), "b", "unknown actor type 'nope'");
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input:\n      name: b\n  - name: b\n    actorType: nope\n",
    );
    assert_message(&err, Some(7), "b", "unknown actor type 'nope'");
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input:\n      name: a\n  - name: a\n    actorType: echo\n",
    );
    assert_message(&err, Some(7), "a", "duplicate action name");
}

#[test]
fn a_bad_field_points_at_the_field_line() {
    let err = reject(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    retries: 1\n    timeout: soon\n",
    );
    assert_message(&err, Some(6), "a", "bad `timeout` 'soon'");
    assert!(err.to_string().contains("500ms, 30s, 10m, 1h"), "{err}");
    let err = reject(
        "name: w\nactions:\n  - name: g\n    type: parallel\n    actions: [{ name: a, actorType: echo }]\n    backoff: 1s\n",
    );
    assert_message(&err, Some(6), "g", "field `backoff` is not allowed");
    let err = reject("name: w\ntimeout: 0\nactions:\n  - { name: a, actorType: echo }\n");
    assert!(
        err.to_string()
            .starts_with("bad.yaml:2: bad `timeout` '0': must be more than zero"),
        "{err}"
    );
}

#[test]
fn yaml_1_2_scalars_and_tab_indented_json_read_as_before() {
    let workflow = parse(
        "name: w\nactions:\n  - name: a\n    actorType: echo\n    input: { answer: yes, off: no, n: 1.5, t: true }\n",
        "w.yaml",
        &known,
    )
    .expect("loads");
    let Action::Actor(a) = &workflow.actions[0] else {
        panic!("a is an actor action")
    };
    assert_eq!(
        a.input,
        serde_json::json!({ "answer": "yes", "off": "no", "n": 1.5, "t": true })
    );
    let json = "{\n\t\"name\": \"w\",\n\t\"actions\": [\n\t\t{\"name\": \"a\", \"actorType\": \"echo\", \"timeout\": 2.5}\n\t]\n}\n";
    let workflow = parse(json, "w.json", &known).expect("loads");
    let Action::Actor(a) = &workflow.actions[0] else {
        panic!("a is an actor action")
    };
    assert_eq!(a.timeout, Some(std::time::Duration::from_millis(2500)));
}

#[test]
fn a_50_mb_file_is_refused_before_it_is_read() {
    let path = std::env::temp_dir().join(format!("loom-huge-{}.yaml", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(50 * 1024 * 1024).unwrap(); // sparse: 50 MB without writing them
    let started = std::time::Instant::now();
    let err = loom_workflow::load(&path, &known).expect_err("too large");
    let _ = std::fs::remove_file(&path);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    match &err {
        WorkflowError::Definition { problem, .. } => assert!(
            matches!(**problem, Problem::TooLarge { size, limit } if size == 50 * 1024 * 1024 && limit == loom_workflow::MAX_DEFINITION_BYTES),
            "{err}"
        ),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("at most 1048576"), "{err}");
    // The same limit holds for text handed to `parse`.
    let big = format!("name: w\n# {}\n", "x".repeat(2 * 1024 * 1024));
    assert!(matches!(
        reject(&big),
        WorkflowError::Definition { problem, .. } if matches!(*problem, Problem::TooLarge { .. })
    ));
}

/// A file that says its size is 0 but never ends (a device, a pipe) is read only up to the
/// limit, and a file of another kind is refused before it is read at all.
#[cfg(unix)]
#[test]
fn an_endless_file_is_refused_at_the_limit_and_another_format_unread() {
    let endless = std::env::temp_dir().join(format!("loom-endless-{}.yaml", std::process::id()));
    let _ = std::fs::remove_file(&endless);
    std::os::unix::fs::symlink("/dev/zero", &endless).unwrap();
    let err = loom_workflow::load(&endless, &known).expect_err("too large");
    let _ = std::fs::remove_file(&endless);
    assert!(
        matches!(&err, WorkflowError::Definition { problem, .. } if matches!(**problem, Problem::TooLarge { .. })),
        "{err}"
    );
    let err = loom_workflow::load("/dev/zero", &known).expect_err("not a definition");
    assert_eq!(err.problem(), Some(&Problem::UnsupportedFormat), "{err}");
}

/// The workflow's name is a path segment and part of a Redis key: held to the rule of
/// action names.
#[test]
fn a_workflow_name_that_cannot_be_a_key_is_refused() {
    for name in ["\"report v2\"", "a/b", "\"\""] {
        let err = reject(&format!(
            "name: {name}\nactions:\n  - {{ name: a, actorType: echo }}\n"
        ));
        assert!(
            matches!(err.problem(), Some(Problem::InvalidName(_))),
            "{name}: {err}"
        );
    }
    // Served by workers as `workflows/<name>`, a key part of at most 128 bytes: a longer
    // name passed here and stopped every worker that loaded it.
    let longest = "a".repeat(loom_workflow::MAX_WORKFLOW_NAME_LEN);
    let yaml = |name: &str| format!("name: {name}\nactions:\n  - {{ name: a, actorType: echo }}\n");
    parse(&yaml(&longest), "long.yaml", &known).expect("the longest name");
    let err = reject(&yaml(&format!("{longest}a")));
    assert_eq!(
        err.problem(),
        Some(&Problem::NameTooLong { len: 119 }),
        "{err}"
    );
    assert!(err.to_string().contains("at most 118"), "{err}");
}

#[test]
fn ten_thousand_actions_load_and_a_reference_cycle_is_refused() {
    let mut yaml = String::from("name: many\nactions:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - name: s{i}\n    type: actor\n    actorType: echo\n"
        ));
    }
    let workflow = parse(&yaml, "many.yaml", &known).expect("10,000 actions are a workflow");
    assert_eq!(workflow.steps().count(), 10_000);
    // Two steps that read each other: the loader names the cycle.
    let cycle = "name: loop\nactions:\n  - name: a\n    type: actor\n    actorType: echo\n    input: { x: \"${{ steps.b.output }}\" }\n  - name: b\n    type: actor\n    actorType: echo\n    input: { x: \"${{ steps.a.output }}\" }\n";
    let err = reject(cycle);
    assert!(
        err.to_string().contains("reference cycle: a -> b -> a"),
        "{err}"
    );
}

#[test]
fn a_chain_of_ten_thousand_forward_references_is_refused_without_overflowing_the_stack() {
    // Each step reads the next: no cycle, but a path as long as the workflow. Checked on a
    // thread with a small stack, where following it by recursion would overflow.
    let mut yaml = String::from("name: chain\nactions:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "  - {{name: s{i}, type: actor, actorType: echo, input: {{x: \"${{{{ steps.s{}.output }}}}\"}}}}\n",
            i + 1
        ));
    }
    yaml.push_str("  - {name: s10000, type: actor, actorType: echo}\n");
    let err = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || reject(&yaml).to_string())
        .expect("spawn")
        .join()
        .expect("the check does not overflow its stack");
    assert!(err.contains("s0") && err.contains("s1"), "{err}");
}

#[test]
fn the_parsers_limits_are_said_in_words() {
    // Nine levels of aliases, each holding ten of the one before: a billion values.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{items}]\n"));
    }
    let yaml = format!(
        "name: w\nactions:\n  - name: s\n    actorType: echo\n    input:\n{}",
        bomb.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let deep = format!(
        "{{\"name\":\"w\",\"actions\":[{{\"name\":\"s\",\"actorType\":\"echo\",\"input\":{}{}}}]}}",
        "[".repeat(70),
        "]".repeat(70)
    );
    for (text, says) in [
        (yaml, "values once its aliases are expanded"),
        (deep, "levels deep"),
    ] {
        let message = reject(&text).to_string();
        assert!(message.contains(says), "{message}");
        assert!(!message.contains('{'), "no Debug formatting: {message}");
    }
}
