//! [`Keys`]: the Redis key layout of DESIGN.md §3, and [`validate_name`], which every actor
//! type name and run id passes before it becomes part of a key.
//!
//! With the default prefix `loom:` a run `<id>` of actor type `<type>` uses:
//!
//! | key | type | what |
//! |---|---|---|
//! | `loom:stream:{<id>}` | stream | one entry per chunk (fields `type data seq …`), the chunk of `seq` N at entry id `N-1` |
//! | `loom:lease:{<id>}` | string | the owning attempt's token (`<worker>:<attempt>:<entry>`), `PX` lease renewed while the run lives; only its holder may write the stream |
//! | `loom:cancel:{<id>}` | string | set when the run must stop (`cancelled`, `worker_lost`, `timeout`) |
//! | `loom:queue:{<type>}` | stream | requests, read by the consumer group `loom-workers` |
//! | `loom:cancel` | pub/sub channel | run ids whose cancel key was just set |
//! | `loom:actors` | sorted set | actor types some worker serves, scored by the time (Unix ms) until which one has said so |
//! | `loom:run:{<id>}` | hash | the run's record: `actor`, `created_ms` (written when it is queued), and what servers keep of its readers (`readers`, `joins`, `grace_ms`) |
//! | `loom:name:{<name>}` | string | the run a name stands for (a chat's latest run), with a TTL |
//! | `loom:runs` | sorted set | the most recent run ids ([`RECENT_RUNS`](crate::RECENT_RUNS)), scored by `created_ms` |
//!
//! **Entry ids are `seq`s.** Loom writes the chunk of `seq` N at the explicit entry id `N-1`
//! (`XADD key N-1 …`; `0-0` is not a valid id, hence the `-1`), so a reader resuming "after
//! `seq` N" reads after entry `N-1` and Redis finds it in its radix tree by id: no scan from
//! the stream's start, no index beside it. `seq`s grow by one per chunk across attempts, so
//! the ids grow too, as Redis requires.
//!
//! The `{…}` are Redis Cluster hash tags: the stream, lease and cancel keys of one run hash to
//! one slot, so the scripts that touch them together also work on a cluster.

use crate::error::Error;

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "loom:";

/// The consumer group every worker joins on each request queue.
pub const GROUP: &str = "loom-workers";

/// The longest accepted actor type name or id, in bytes: ids are 36-byte UUIDs, and a bound
/// keeps hostile input from turning into huge keys.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `name` (an actor type name, run id or stream id) may become part of a key.
///
/// Rejected: the empty string, more than [`MAX_NAME_LEN`] bytes, whitespace, control
/// characters, and `*` (a glob in `KEYS`/`SCAN`), `{` `}` (cluster hash tags) and `:` (the key
/// separator). Returns [`Error::InvalidName`], whose [`code`](Error::code) is `bad_input`.
///
/// ```
/// assert!(loom_redis::validate_name("chat-agent").is_ok());
/// assert!(loom_redis::validate_name("a:b").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), Error> {
    check_name("name", name)
}

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_LEN {
        "must be at most 128 bytes"
    } else if name.chars().any(char::is_whitespace) {
        "must not contain whitespace"
    } else if name.chars().any(char::is_control) {
        "must not contain control characters"
    } else if name.contains(['*', '{', '}', ':']) {
        "must not contain '*', '{', '}' or ':'"
    } else {
        return Ok(());
    };
    Err(Error::invalid_name(what, name, reason))
}

/// Why a run must stop: the value of its cancel key `loom:cancel:{<id>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// The caller cancelled: the worker stops the actor and writes `error/cancelled`.
    Cancelled,
    /// A reader found no worker holding the run and wrote `error/worker_lost` itself.
    WorkerLost,
    /// A reader found the run past its deadline and wrote `error/timeout` itself.
    Timeout,
    /// A value this version does not know, written by a newer one.
    Other,
}

impl CancelReason {
    /// The key's value for this reason.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::WorkerLost => "worker_lost",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// The reason a cancel key's value stands for.
    pub(crate) fn parse(value: &str) -> Self {
        match value {
            "cancelled" => Self::Cancelled,
            "worker_lost" => Self::WorkerLost,
            "timeout" => Self::Timeout,
            _ => Self::Other,
        }
    }

    /// Whether the terminal chunk was already written by whoever set the key, so the run's
    /// worker must stop without writing anything more. Only a caller's cancel leaves the
    /// terminal (`error/cancelled`) to the worker.
    pub(crate) fn terminal_written(self) -> bool {
        self != Self::Cancelled
    }
}

/// Builds the keys of the layout above under one prefix.
///
/// The methods take names that were already checked with [`validate_name`]; every public
/// entry point of this crate checks them before calling these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Keys {
    /// Keys under `prefix` (e.g. `"loom:"`, `"staging:loom:"`); the prefix may contain `:`
    /// but no hash-tag braces, whitespace or control characters.
    pub fn new(prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        if prefix.len() > MAX_NAME_LEN
            || prefix
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '{' | '}'))
        {
            return Err(Error::invalid_name(
                "key prefix",
                &prefix,
                "must be at most 128 bytes without whitespace, control characters, '*', '{' or '}'",
            ));
        }
        Ok(Self { prefix })
    }

    /// The prefix, e.g. `loom:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The chunk stream of run `run_id`: `loom:stream:{<id>}`.
    pub fn stream(&self, run_id: &str) -> String {
        format!("{}stream:{{{run_id}}}", self.prefix)
    }

    /// The lease of run `run_id`: `loom:lease:{<id>}`.
    pub fn lease(&self, run_id: &str) -> String {
        format!("{}lease:{{{run_id}}}", self.prefix)
    }

    /// The cancel flag of run `run_id`: `loom:cancel:{<id>}`.
    pub fn cancel(&self, run_id: &str) -> String {
        format!("{}cancel:{{{run_id}}}", self.prefix)
    }

    /// The request queue of actor type `actor_type`: `loom:queue:{<type>}`.
    pub fn queue(&self, actor_type: &str) -> String {
        format!("{}queue:{{{actor_type}}}", self.prefix)
    }

    /// The pub/sub channel on which cancelled run ids are published: `loom:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }

    /// The record of run `run_id`: `loom:run:{<id>}`.
    pub fn run(&self, run_id: &str) -> String {
        format!("{}run:{{{run_id}}}", self.prefix)
    }

    /// What run name `name` stands for: `loom:name:{<name>}`.
    pub fn run_name(&self, name: &str) -> String {
        format!("{}name:{{{name}}}", self.prefix)
    }

    /// The index of recent runs: `loom:runs`.
    pub fn runs(&self) -> String {
        format!("{}runs", self.prefix)
    }

    /// The sorted set of actor types workers serve (see [`Client::served_actors`](crate::Client::served_actors)).
    pub fn actors(&self) -> String {
        format!("{}actors", self.prefix)
    }

    /// The consumer group of the request queues: `loom-workers`.
    pub fn group(&self) -> &'static str {
        GROUP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keeps_design_names_with_hash_tags() {
        let keys = Keys::default();
        assert_eq!(keys.stream("r1"), "loom:stream:{r1}");
        assert_eq!(keys.lease("r1"), "loom:lease:{r1}");
        assert_eq!(keys.cancel("r1"), "loom:cancel:{r1}");
        assert_eq!(keys.queue("chat-agent"), "loom:queue:{chat-agent}");
        assert_eq!(keys.cancel_channel(), "loom:cancel");
        assert_eq!(keys.run("r1"), "loom:run:{r1}");
        assert_eq!(keys.runs(), "loom:runs");
        assert_eq!(
            Keys::new("x:").map(|k| k.stream("a")).ok().as_deref(),
            Some("x:stream:{a}")
        );
        assert!(Keys::new("bad{").is_err());
    }

    #[test]
    fn cancel_reasons_round_trip_and_unknown_ones_stop_without_writing() {
        for reason in [
            CancelReason::Cancelled,
            CancelReason::WorkerLost,
            CancelReason::Timeout,
        ] {
            assert_eq!(CancelReason::parse(reason.as_str()), reason);
        }
        assert_eq!(CancelReason::parse("later"), CancelReason::Other);
        assert!(!CancelReason::Cancelled.terminal_written());
        assert!(CancelReason::Other.terminal_written());
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in [
            "", "*", "a*", "{a}", "a}", "a:b", "a b", "a\tb", "a\nb", "a\u{7}b", "a\u{a0}b",
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert!(err.is_bad_input(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(129)).is_err());
        assert!(validate_name(&"a".repeat(128)).is_ok());
        for good in [
            "echo",
            "chat-agent",
            "team_demo",
            "0b7c6f0e-8a1d-4c1e-9d55-3f1c2a7e9b10",
            "é",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
    }
}
