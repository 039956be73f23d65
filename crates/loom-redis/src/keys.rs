//! [`Keys`]: the Redis key layout of DESIGN.md §3, and [`validate_name`], which every actor
//! type name and run id passes before it becomes part of a key.
//!
//! With the default prefix `loom:` a run `<id>` of actor type `<type>` uses:
//!
//! | key | type | what |
//! |---|---|---|
//! | `loom:stream:{<bucket>}:<id>` | stream | one entry per chunk (fields `type data seq …`), the chunk of `seq` N at entry id `N-1` |
//! | `loom:lease:{<bucket>}:<id>` | string | the owning attempt's token (`<worker>:<attempt>:<entry>`), `PX` lease renewed while the run lives; only its holder may write the stream |
//! | `loom:cancel:{<bucket>}:<id>` | string | set when the run must stop (`cancelled`, `worker_lost`, `timeout`) |
//! | `loom:caller:{<bucket>}:<id>` | string | while the caller that started the run reads it (`RemoteInvoker::stream`), `PX` renewed like a lease: when it lapses (the caller was killed), the worker cancels the run |
//! | `loom:bell:{<bucket>}` | stream | while a process reading many streams keeps it (a TTL it renews), an entry `s <stream key>` each time one of the bucket's run streams is written to (`MAXLEN ~` [`BELL_LEN`]): that process waits on the bells, not on every stream (`hub.rs`) |
//! | `loom:queue:{<type>}`, `loom:queue:{<type>:<shard>}` | stream | requests, read by the consumer group `loom-workers`: shard 0, then shards 1… when queues are sharded ([`ClientOptions::queue_shards`](crate::ClientOptions::queue_shards)) |
//! | `loom:cancel` | pub/sub channel | run ids whose cancel key was just set |
//! | `loom:actors` | sorted set | `<actor type> <worker>` for each type a live worker serves, scored by the time (Unix ms) until which it has said so; a worker that stops takes its own back |
//! | `loom:run:{<bucket>}:<id>` | hash | the run's record: `actor`, `created_ms` (written when it is queued), and what servers keep of its readers (`joins`, `grace_ms`) |
//! | `loom:readers:{<bucket>}:<id>` | set | the run's readers now, one member per reader (on any server), expiring with the record |
//! | `loom:name:{<name>}` | string | the run a name stands for (a chat's latest run), with a TTL |
//! | `loom:runs` | sorted set | the most recent run ids ([`RECENT_RUNS`](crate::RECENT_RUNS)), scored by `created_ms` |
//!
//! **Entry ids are `seq`s.** Loom writes the chunk of `seq` N at the explicit entry id `N-1`
//! (`XADD key N-1 …`; `0-0` is not a valid id, hence the `-1`), so a reader resuming "after
//! `seq` N" reads after entry `N-1` and Redis finds it in its radix tree by id: no scan from
//! the stream's start, no index beside it. `seq`s grow by one per chunk across attempts, so
//! the ids grow too, as Redis requires.
//!
//! The `{…}` are Redis Cluster hash tags: keys with the same tag hash to one slot.
//!
//! **Runs are grouped into [`BUCKETS`] buckets.** A run's bucket is a hash of its id, and the
//! bucket's tag (`{b22}`, `{b13}`, …) is in all of the run's keys, so its stream, lease, cancel
//! key and record share a slot: the scripts that touch them together work on a cluster. The
//! tags were chosen so their slots are spread evenly over the 16,384 (one per 1,024), so a
//! cluster's masters, which own ranges of slots, each hold a fair share of the buckets. A
//! process reading 10,000 streams on a cluster needs one blocking `XREAD` per bucket (a
//! cluster refuses one over several slots), not one per stream: a handful of connections. On a
//! single server the buckets change nothing: one `XREAD` reads them all. Each bucket's bell
//! shares its tag, so the scripts that write a stream ring its bell in the same call.
//!
//! **Queues can be sharded.** With `queue_shards` N > 1, actor type `<type>` has N queues,
//! `loom:queue:{<type>}` and `loom:queue:{<type>:1}` … `{<type>:N-1}`, each its own slot, so
//! one type's requests spread over a cluster's nodes. A request goes to the shard its run id
//! hashes to; workers read every shard.

use crate::error::Error;

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "loom:";

/// The consumer group every worker joins on each request queue.
pub const GROUP: &str = "loom-workers";

/// How many hash-tag buckets the runs' keys are spread over (see the module docs).
pub const BUCKETS: usize = 16;

/// About how many entries a bell keeps ([`Keys::bell`]): a reader further behind than that
/// finds its streams' news in its periodic full read instead.
pub const BELL_LEN: usize = 4096;

/// The hash tag of each bucket: bucket k's tag hashes (CRC16, as Redis Cluster does) to a slot
/// in `[1024 k, 1024 (k + 1))`.
const BUCKET_TAGS: [&str; BUCKETS] = [
    "b22", "b13", "b1", "b62", "b23", "b12", "b0", "b63", "b20", "b11", "b3", "b60", "b21", "b10",
    "b2", "b61",
];

/// The bucket of run (or name) `id`: FNV-1a of its bytes, modulo [`BUCKETS`]. Every party
/// computes the same, so it is part of the layout.
pub(crate) fn bucket(id: &str) -> usize {
    fnv1a(id) as usize % BUCKETS
}

/// The 32-bit FNV-1a hash of `id`: stable across processes and versions, unlike std's.
fn fnv1a(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

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

    /// The key `<prefix><kind>:{<bucket>}:<run_id>` of one of run `run_id`'s keys.
    fn of_run(&self, kind: &str, run_id: &str) -> String {
        let tag = BUCKET_TAGS[bucket(run_id)];
        format!("{}{kind}:{{{tag}}}:{run_id}", self.prefix)
    }

    /// The chunk stream of run `run_id`: `loom:stream:{<bucket>}:<id>`.
    pub fn stream(&self, run_id: &str) -> String {
        self.of_run("stream", run_id)
    }

    /// The bell of run `run_id`'s bucket: `loom:bell:{<bucket>}`, a stream with an entry
    /// naming each run stream of the bucket (field `s`) every time that stream is written
    /// to, so that a process reading many streams waits on the bells rather than on every
    /// stream (`hub.rs`). It exists only while such a process keeps it (with a TTL it
    /// renews); writes ring only an existing bell. Capped at about [`BELL_LEN`] entries.
    pub fn bell(&self, run_id: &str) -> String {
        format!("{}bell:{{{}}}", self.prefix, BUCKET_TAGS[bucket(run_id)])
    }

    /// The lease of run `run_id`: `loom:lease:{<bucket>}:<id>`.
    pub fn lease(&self, run_id: &str) -> String {
        self.of_run("lease", run_id)
    }

    /// The cancel flag of run `run_id`: `loom:cancel:{<bucket>}:<id>`.
    pub fn cancel(&self, run_id: &str) -> String {
        self.of_run("cancel", run_id)
    }

    /// The presence of the caller that started run `run_id` and reads it:
    /// `loom:caller:{<bucket>}:<id>`, renewed like a lease while it reads.
    pub fn caller(&self, run_id: &str) -> String {
        self.of_run("caller", run_id)
    }

    /// Queue `shard` of actor type `actor_type`: `loom:queue:{<type>}` for shard 0,
    /// `loom:queue:{<type>:<shard>}` for the others.
    pub fn queue(&self, actor_type: &str, shard: u16) -> String {
        match shard {
            0 => format!("{}queue:{{{actor_type}}}", self.prefix),
            _ => format!("{}queue:{{{actor_type}:{shard}}}", self.prefix),
        }
    }

    /// Whether `queue` is one of actor type `actor_type`'s queues (any shard).
    pub fn is_queue_of(&self, queue: &str, actor_type: &str) -> bool {
        let Some(tagged) = queue
            .strip_prefix(self.prefix.as_str())
            .and_then(|q| q.strip_prefix("queue:{"))
            .and_then(|q| q.strip_prefix(actor_type))
        else {
            return false;
        };
        tagged == "}"
            || tagged
                .strip_prefix(':')
                .and_then(|q| q.strip_suffix('}'))
                .is_some_and(|n| n.parse::<u16>().is_ok_and(|n| n > 0))
    }

    /// The queue a request of run `run_id` for `actor_type` goes to, of `shards` shards.
    pub fn queue_for(&self, actor_type: &str, run_id: &str, shards: u16) -> String {
        // The whole hash, not the bucket: there are more shards than buckets allowed.
        let shard = fnv1a(run_id) as usize % usize::from(shards.max(1));
        self.queue(actor_type, shard as u16)
    }

    /// The pub/sub channel on which cancelled run ids are published: `loom:cancel`.
    pub fn cancel_channel(&self) -> String {
        format!("{}cancel", self.prefix)
    }

    /// The record of run `run_id`: `loom:run:{<bucket>}:<id>`.
    pub fn run(&self, run_id: &str) -> String {
        self.of_run("run", run_id)
    }

    /// The readers of run `run_id` now: `loom:readers:{<bucket>}:<id>`.
    pub fn readers(&self, run_id: &str) -> String {
        self.of_run("readers", run_id)
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
    use crate::conn::slot;

    #[test]
    fn layout_keeps_design_names_with_hash_tags() {
        let keys = Keys::default();
        let tag = BUCKET_TAGS[bucket("r1")];
        assert_eq!(keys.stream("r1"), format!("loom:stream:{{{tag}}}:r1"));
        assert_eq!(keys.lease("r1"), format!("loom:lease:{{{tag}}}:r1"));
        assert_eq!(keys.cancel("r1"), format!("loom:cancel:{{{tag}}}:r1"));
        assert_eq!(keys.run("r1"), format!("loom:run:{{{tag}}}:r1"));
        assert_eq!(keys.queue("chat-agent", 0), "loom:queue:{chat-agent}");
        assert_eq!(keys.queue("chat-agent", 3), "loom:queue:{chat-agent:3}");
        assert_eq!(
            keys.queue_for("chat-agent", "r1", 1),
            "loom:queue:{chat-agent}"
        );
        assert!(keys.is_queue_of("loom:queue:{chat-agent}", "chat-agent"));
        assert!(keys.is_queue_of("loom:queue:{chat-agent:3}", "chat-agent"));
        for other in [
            "loom:queue:{chat}",
            "loom:queue:{chat-agent:0}",
            "loom:queue:{chat-agent:x}",
            "loom:queue:{chat-agent}:1",
            "x:queue:{chat-agent}",
        ] {
            assert!(!keys.is_queue_of(other, "chat-agent"), "{other}");
        }
        assert_eq!(keys.cancel_channel(), "loom:cancel");
        assert_eq!(keys.runs(), "loom:runs");
        let tag = BUCKET_TAGS[bucket("a")];
        assert_eq!(
            Keys::new("x:").map(|k| k.stream("a")).ok(),
            Some(format!("x:stream:{{{tag}}}:a"))
        );
        assert!(Keys::new("bad{").is_err());
    }

    #[test]
    fn requests_spread_over_every_shard_even_past_the_number_of_buckets() {
        let keys = Keys::default();
        for shards in [3u16, 16, 64, 1024] {
            let used: std::collections::HashSet<String> = (0..20_000)
                .map(|i| keys.queue_for("chat", &format!("run-{i}"), shards))
                .collect();
            assert_eq!(used.len(), usize::from(shards), "{shards} shards");
        }
    }

    #[test]
    fn bucket_tags_spread_evenly_over_the_slots_and_ids_over_the_buckets() {
        // The reference value Redis documents for its CRC16, and hash tags.
        assert_eq!(slot("123456789"), 0x31c3);
        assert_eq!(slot("a{123456789}b"), 0x31c3);
        assert_eq!(slot("{}123456789"), slot("{}123456789"));
        assert_ne!(slot("{}123456789"), slot("123456789"));
        assert_eq!(
            slot(&Keys::default().stream("r1")),
            slot(&Keys::default().lease("r1"))
        );
        for (k, tag) in BUCKET_TAGS.iter().enumerate() {
            let range = k * 16384 / BUCKETS..(k + 1) * 16384 / BUCKETS;
            assert!(range.contains(&usize::from(slot(tag))), "{tag}");
        }
        let mut counts = [0usize; BUCKETS];
        for _ in 0..16_000 {
            counts[bucket(&uuid::Uuid::new_v4().to_string())] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1200).contains(&n)),
            "{counts:?}"
        );
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
