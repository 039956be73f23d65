//! [`Registry`]: actors by type name, as the CLI, workers and workflows look them up.
//!
//! [`Registry::with_builtins`] is defined beside the built-in actors (`builtin/`), so that the
//! registry depends on nothing but the [`Actor`] trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::actor::Actor;

/// Actors registered by their type name.
#[derive(Clone, Default)]
pub struct Registry {
    actors: BTreeMap<String, Arc<dyn Actor>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `actor` under its [`name`](Actor::name), replacing any actor of that name.
    ///
    /// Takes the actor by value; an `Arc<dyn Actor>` is an actor too.
    pub fn register(&mut self, actor: impl Actor) -> &mut Self {
        let actor: Arc<dyn Actor> = Arc::new(actor);
        self.actors.insert(actor.name().to_owned(), actor);
        self
    }

    /// The actor registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Actor>> {
        self.actors.get(name).cloned()
    }

    /// Whether an actor is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.actors.contains_key(name)
    }

    /// Every registered actor, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Actor>> {
        self.actors.values()
    }

    /// The registered type names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.actors.keys().cloned().collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("actors", &self.actors.keys().collect::<Vec<_>>())
            .finish()
    }
}
