//! The built-in actors, runnable with no configuration: `echo`, `batch` and `team-demo`.

mod batch;
mod echo;
mod team_demo;

use std::sync::Arc;

pub use batch::Batch;
pub use echo::Echo;
pub use team_demo::{team_demo, ScriptedAgent};

use crate::actor::Actor;

/// Every built-in actor of `loom-core`, as [`Registry::with_builtins`](crate::Registry::with_builtins)
/// registers them.
pub fn actors() -> Vec<Arc<dyn Actor>> {
    vec![Arc::new(Echo), Arc::new(Batch), Arc::new(team_demo())]
}
