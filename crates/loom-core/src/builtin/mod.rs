//! The built-in actors, runnable with no configuration: `echo`, `batch` and `team-demo`.

mod batch;
mod echo;
mod team_demo;

use std::sync::Arc;

pub use batch::Batch;
pub use echo::Echo;
pub use team_demo::{team_demo, ScriptedAgent};

use crate::registry::Registry;

/// Registers every built-in actor of `loom-core`.
pub fn register(registry: &mut Registry) {
    registry
        .register(Arc::new(Echo))
        .register(Arc::new(Batch))
        .register(Arc::new(team_demo()));
}
