//! The offline provider: the embedded default when no server is configured, so a fresh
//! machine can stream an "LLM" answer and a user can watch and stop it.
//!
//! The text is deterministic for a prompt (a hash of it seeds the choice of sentences), and
//! its length follows the prompt: a story is a couple of hundred tokens, a "long" one a few
//! hundred, anything else a short paragraph. A token is a word with its leading space. Tokens
//! come one every [`AiConfig::offline_token_delay`](crate::AiConfig::offline_token_delay).
//!
//! Usage is reported honestly in the provider's own unit: `completion_tokens` is the number
//! of tokens it streamed, `prompt_tokens` the number of words in the system prompt and
//! messages. These are not a real model's tokenizer counts, and the provider says it is
//! offline (the model is `loom-offline`).

use std::time::Duration;

use crate::error::AiError;
use crate::event::{FinishReason, TokenEvent, Usage};
use crate::request::CompletionRequest;
use crate::stream::TokenStream;

const OPENINGS: &[&str] = &[
    "Once upon a time, in {place}, there lived {who} who {habit}.",
    "Long ago, at the edge of {place}, {who} woke before dawn, as always, and {habit}.",
    "Nobody in {place} remembered a time before {who}, who {habit}.",
];

const STORY: &[&str] = &[
    "One morning a letter arrived, sealed with blue wax and addressed in a hand no one knew.",
    "It spoke of {thing}, hidden beyond the hills where the old road gave out.",
    "The neighbours said it was foolish to go, and said so loudly, and then helped to pack.",
    "The first day was easy, with a warm wind at their back and bread still fresh.",
    "By the second night the stars looked unfamiliar, and every sound seemed to carry a question.",
    "A ferryman with a lantern offered passage across the river in exchange for a story.",
    "So they told him about {place}, and the ferryman laughed until the boat rocked.",
    "On the far bank the forest grew so thick that noon looked like evening.",
    "A fox followed them for a mile, then sat down in the path as if to say: not that way.",
    "They took the other way, and found a stone bridge that was on no map at all.",
    "Under the bridge lived a clockmaker who had been fixing the same clock for forty years.",
    "He said the clock would run again only when someone brought {thing} back where it belonged.",
    "That night it rained, and they slept in a barn full of patient, curious goats.",
    "In the morning the hills were close enough to count the trees on their shoulders.",
    "The path climbed through heather and wind, and every step up showed more of the world.",
    "At the top stood a door with no wall around it, and the door was slightly open.",
    "Behind it was not a treasure room but a quiet garden, and in the garden, {thing}.",
    "It was smaller than the stories said, and much older, and it hummed like a kettle.",
    "Carrying it home took twice as long, because everyone on the road wanted to hear the tale.",
    "The clockmaker wept when the clock struck, and the fox was seen smiling, or so people claim.",
    "Back in {place}, nothing looked different, yet everything felt a little more awake.",
];

const ENDINGS: &[&str] = &[
    "And from then on, whenever the wind came from the hills, they smiled and remembered.",
    "And that, they would say, is why you should always answer letters sealed with blue wax.",
];

const ANSWERS: &[&str] = &[
    "This answer comes from Loom's offline provider, which needs no model and no network.",
    "It streams deterministic text token by token, so you can watch a reply arrive and stop it at any point.",
    "Point OPENAI_BASE_URL at any OpenAI-compatible server, or set OPENAI_API_KEY, to get real answers.",
    "Each token reaches you as its own data chunk, carrying the new text only.",
    "The final chunk holds the whole text, why generation stopped, and the token usage.",
    "Press Ctrl-C at any time: the run ends with a cancelled error and nothing keeps running.",
];

const PLACES: &[&str] = &[
    "a harbour town of crooked roofs",
    "a valley of orchards",
    "a city built on a lake",
    "a village under the mountain",
];
const WHOS: &[&str] = &[
    "a lighthouse keeper named Ada",
    "a baker named Tomas",
    "a retired cartographer",
    "two inseparable cousins",
];
const HABITS: &[&str] = &[
    "counted the ships coming home",
    "fed every stray cat on the street",
    "mended nets and told tall tales",
    "collected maps of places that did not exist",
];
const THINGS: &[&str] = &[
    "a compass that pointed to what you had lost",
    "the last seed of a silver tree",
    "a bell that rang without being touched",
    "a book whose pages wrote themselves",
];

/// A small deterministic generator (xorshift64*), seeded from the prompt.
struct Dice(u64);

impl Dice {
    fn new(prompt: &str) -> Self {
        // FNV-1a: stable across runs and platforms, unlike std's randomised hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in prompt.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(hash | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The offline answer to `prompt`: deterministic, and longer for stories.
pub(crate) fn answer(prompt: &str) -> String {
    let lower = prompt.to_lowercase();
    let mut dice = Dice::new(prompt);
    let words = |text: &str| text.split_whitespace().count();
    let mut text = String::new();
    if lower.contains("story") || lower.contains("tale") {
        let target = if lower.contains("long") { 330 } else { 160 };
        let place = dice.pick(PLACES);
        let who = dice.pick(WHOS);
        let habit = dice.pick(HABITS);
        let thing = dice.pick(THINGS);
        let fill = |s: &str| {
            s.replace("{place}", place)
                .replace("{who}", who)
                .replace("{habit}", habit)
                .replace("{thing}", thing)
        };
        text.push_str(&fill(dice.pick(OPENINGS)));
        // Walk the story in order from a prompt-chosen start, so it reads as one tale.
        let start = (dice.next() % 4) as usize;
        let mut i = start;
        while words(&text) < target {
            text.push(' ');
            text.push_str(&fill(STORY[i % STORY.len()]));
            i += 1;
        }
        text.push(' ');
        text.push_str(dice.pick(ENDINGS));
    } else {
        let shown: String = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
        let shown: String = shown.chars().take(80).collect();
        text.push_str(&format!("You said: \"{shown}\"."));
        let start = (dice.next() % ANSWERS.len() as u64) as usize;
        for k in 0..4 {
            text.push(' ');
            text.push_str(ANSWERS[(start + k) % ANSWERS.len()]);
        }
    }
    text
}

/// Splits text into tokens: each word with the whitespace before it.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            out.push(&text[start..i]);
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Streams the offline answer to `request`, one token every `delay`.
pub(crate) fn stream(request: CompletionRequest, delay: Duration) -> TokenStream {
    TokenStream::new(async_stream::try_stream! {
        if request.messages.is_empty() {
            Err(AiError::BadRequest("no messages to complete".into()))?;
        }
        let text = answer(request.last_user_text());
        let limit = request.max_tokens.map_or(usize::MAX, |n| n as usize);
        let all = tokens(&text);
        let mut sent = 0u64;
        for token in all.iter().take(limit) {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            sent += 1;
            yield TokenEvent::Text((*token).to_owned());
        }
        let reason = if all.len() > limit { FinishReason::Length } else { FinishReason::Stop };
        yield TokenEvent::Finish(reason);
        let prompt_tokens = request
            .system
            .iter()
            .map(String::as_str)
            .chain(request.messages.iter().filter_map(|m| m.content.as_deref()))
            .map(|text| text.split_whitespace().count() as u64)
            .sum::<u64>();
        yield TokenEvent::Usage(Usage {
            prompt_tokens,
            completion_tokens: sent,
            total_tokens: prompt_tokens + sent,
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_the_text_whole() {
        let text = answer("Write a long story about a lighthouse");
        assert_eq!(tokens(&text).concat(), text);
    }

    #[test]
    fn a_long_story_is_a_few_hundred_tokens_and_deterministic() {
        let text = answer("Write a long story");
        let n = tokens(&text).len();
        assert!((250..=500).contains(&n), "{n} tokens");
        assert_eq!(text, answer("Write a long story"));
        assert_ne!(text, answer("Write a long story about goats"));
    }

    #[test]
    fn a_plain_prompt_gets_a_short_answer_quoting_it() {
        let text = answer("hi");
        assert!(text.starts_with("You said: \"hi\"."));
        assert!(tokens(&text).len() < 120);
    }
}
