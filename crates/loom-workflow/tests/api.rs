//! Compile-time guarantees: the types a server or CLI holds across tasks are `Send + Sync`,
//! and a workflow stream is an ordinary `'static` ChunkStream.

use std::sync::Arc;

use loom_core::{Actor, ChunkStream, Extensions, Registry, Runtime};
use loom_workflow::{Workflow, WorkflowError, WorkflowExecutor};

fn send_sync_static<T: Send + Sync + 'static>() {}
fn send_static<T: Send + 'static>() {}

#[test]
fn shared_types_are_send_and_sync() {
    send_sync_static::<Workflow>();
    send_sync_static::<WorkflowExecutor>();
    send_sync_static::<WorkflowError>();
    send_static::<ChunkStream>();
}

#[test]
fn a_workflow_is_also_an_actor() {
    let runtime = Arc::new(Runtime::new(Registry::with_builtins(), Extensions::new()));
    let workflow = loom_workflow::parse(
        "name: greet\nactions:\n  - { name: a, actorType: echo }\n",
        "greet.yaml",
        &|_| true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let actor: Arc<dyn Actor> = WorkflowExecutor::new(runtime).actor(workflow);
    assert_eq!(actor.name(), "greet");
    assert!(actor.streams());
}
