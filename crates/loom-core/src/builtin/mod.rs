//! The built-in actors, runnable with no configuration: `echo`, `batch` and `team-demo`.

mod batch;
mod echo;
mod team_demo;

pub use batch::Batch;
pub use echo::Echo;
pub use team_demo::{team_demo, ScriptedAgent};

use crate::registry::Registry;

impl Registry {
    /// A registry holding the built-in actors of `loom-core` (`echo`, `batch`, `team-demo`).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        registry
            .register(Echo)
            .register(Batch)
            .register(team_demo());
        registry
    }
}
