//! Loads a workflow file and runs it on loom-core's built-in actors, printing each chunk as
//! one line of JSON (what `loom workflow run --json` prints).
//!
//! ```text
//! cargo run -p loom-workflow --example run_workflow -- examples/workflows/batch-report.yaml '{"count":300}'
//! ```
//!
//! A bad definition prints one line naming the file, line, action and problem, and exits 2.

use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use loom_core::{ChunkType, Extensions, Invoker, Registry, Runtime};
use loom_workflow::WorkflowExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: run_workflow <file.yaml|file.json> [input JSON]");
        return ExitCode::from(2);
    };
    let input = match serde_json::from_str(&args.next().unwrap_or_else(|| "{}".to_owned())) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("run_workflow: bad input JSON: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
    // Validate everything before starting any work: the definition, then the input.
    let workflow = match loom_workflow::load(&path, &|t| runtime.knows(t)) {
        Ok(workflow) => workflow,
        Err(e) => {
            eprintln!("run_workflow: {e}");
            return ExitCode::from(2);
        }
    };
    let input = match workflow.check_input(input) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("run_workflow: {e}");
            return ExitCode::from(2);
        }
    };
    let mut chunks = WorkflowExecutor::new(runtime).stream(workflow, input);
    let mut code = ExitCode::FAILURE;
    while let Some(chunk) = chunks.next().await {
        println!("{}", chunk.to_json());
        if chunk.kind == ChunkType::Complete {
            code = ExitCode::SUCCESS;
        }
    }
    code
}
