//! `echo`: returns its input. The smallest actor: it only implements `execute`.

use async_trait::async_trait;
use serde_json::Value;

use crate::actor::Actor;
use crate::context::ActorContext;
use crate::error::ActorError;

/// Returns its input unchanged, as one `complete` chunk.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

#[async_trait]
impl Actor for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn description(&self) -> &str {
        "returns its input (execute only)"
    }

    async fn execute(&self, input: Value, _ctx: ActorContext) -> Result<Value, ActorError> {
        Ok(input)
    }
}
