//! `team-demo`: a researcher, an analyst and a writer contributing concurrently.
//!
//! Each member is a [`ScriptedAgent`] that streams its contribution word by word, so the merged
//! team stream shows interleaved, attributed tokens with no LLM configured. Input:
//! `{"topic": …}` or `{"prompt": …}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::actor::{Actor, ActorStream};
use crate::context::ActorContext;
use crate::output::Output;
use crate::team::Team;

/// A member that streams a fixed script, word by word, at a fixed pace.
#[derive(Debug, Clone)]
pub struct ScriptedAgent {
    name: String,
    script: String,
    pace: Duration,
}

impl ScriptedAgent {
    /// An agent named `name` that says `script` (where `{topic}` is replaced by the input's
    /// topic), one word every `pace`.
    pub fn new(name: impl Into<String>, script: impl Into<String>, pace: Duration) -> Self {
        Self {
            name: name.into(),
            script: script.into(),
            pace,
        }
    }
}

fn topic(input: &Value) -> String {
    ["topic", "prompt"]
        .iter()
        .find_map(|key| input.get(key).and_then(Value::as_str))
        .unwrap_or("streaming actor runtimes")
        .to_owned()
}

#[async_trait]
impl Actor for ScriptedAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn description(&self) -> &str {
        "streams a scripted contribution word by word"
    }

    fn streams(&self) -> bool {
        true
    }

    fn stream(self: Arc<Self>, input: Value, _ctx: ActorContext) -> ActorStream {
        Box::pin(async_stream::try_stream! {
            let text = self.script.replace("{topic}", &topic(&input));
            for (i, word) in text.split(' ').enumerate() {
                tokio::time::sleep(self.pace).await;
                yield Output::token(if i == 0 { word.to_owned() } else { format!(" {word}") });
            }
            yield Output::complete(json!({ "text": text }));
        })
    }
}

/// The `team-demo` team: researcher, analyst and writer on one topic.
pub fn team_demo() -> Team {
    let ms = Duration::from_millis;
    Team::new(
        "team-demo",
        "a researcher, an analyst and a writer contributing concurrently (offline)",
    )
    .member(ScriptedAgent::new(
        "researcher",
        "Gathered three sources on {topic}: a design note, a benchmark and a field report.",
        ms(60),
    ))
    .member(ScriptedAgent::new(
        "analyst",
        "The sources agree that {topic} win on latency when every step streams its output.",
        ms(75),
    ))
    .member(ScriptedAgent::new(
        "writer",
        "Draft: {topic} let users watch work happen, stop it at will, and trust what they see.",
        ms(90),
    ))
}
