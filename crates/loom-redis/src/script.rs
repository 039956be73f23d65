//! Every Lua script of this crate, each behind a typed Rust function, all called one way:
//! [`Lua::invoke`] (`EVALSHA`, and on `NOSCRIPT` — Redis restarted or flushed its script
//! cache — `SCRIPT LOAD` and once more).
//!
//! Why not [`redis::Script`]'s own invocation: it collects every argument in a `Vec<u8>` of
//! its own and copies them all into the command, which for the publisher's batches (a few
//! fields per chunk, hundreds of chunks per call) cost about a third more CPU per chunk end
//! to end (`cargo bench -p loom-redis --bench remote_stream -- throughput`). Here each
//! command is presized and the chunks' fields are written straight into it.
//!
//! The scripts read a run's last entry through one shared Lua function ([`LAST_ENTRY`]); it is
//! the crate's only `XREVRANGE … COUNT 1`. The keys of each call share one hash tag (those of
//! one bucket of runs, `keys.rs`, or the actors key alone), so they also work on a cluster.
//!
//! | script | keys | used by |
//! |---|---|---|
//! | [`write_batch`] | stream, lease, bell, record, readers | the publisher: append a batch while the lease is ours |
//! | [`end_run`] | stream, lease, bell, record, readers, cancel | a reader: end a run with `worker_lost`/`timeout` |
//! | [`peek`] | stream, cancel (and the lease it takes, for a worker) | `tail`; the worker, taking a run's lease as it looks at its stream |
//! | [`renew`] | lease, stream, cancel of each of up to 256 runs of one bucket | the worker's heartbeat |
//! | [`release`] | lease | the worker handing a run back |
//! | [`claim_mine`] | a queue | the worker claiming its own requests again (refreshing, or handing back) |
//! | [`recount`] | a queue | the worker giving back the attempt number of a run Redis's failure ended |
//! | [`prune_consumers`] | a queue | a worker deleting its group's dead consumers (those not in [`live_workers`]), and itself when it stops |
//! | [`keep_bells`] | bells | a reader waiting on its buckets' bells, keeping them (and their rings) alive |
//! | [`advertise`], [`served`] | actors | the heartbeat marking actor types served; servers asking which are |
//! | [`tally`] | a run's record and readers | servers counting the run's readers |
//!
//! Every script that needs the time reads Redis's own (`TIME`, through [`NOW_MS`]): no decision
//! depends on two machines' clocks agreeing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use loom_core::{ActorError, ErrorCode, ErrorInfo, StreamChunk};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Script};

use crate::codec::{write_chunk_args, EntryId, Request};
use crate::error::Error;
use crate::keys::{CancelReason, Keys, BELL_LEN};

/// `last_entry(key)`: the id of the stream's last entry, whether it is terminal, its `seq` if
/// that is a plain decimal number, and its `field value …` list; nothing for an empty or
/// missing stream.
const LAST_ENTRY: &str = r#"
local function last_entry(key)
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if #last == 0 then return nil end
  local f = last[1][2]
  local t, s
  for i = 1, #f, 2 do
    if f[i] == 'type' then t = f[i + 1] elseif f[i] == 'seq' then s = f[i + 1] end
  end
  if s and not string.match(s, '^%d+$') then s = nil end
  return last[1][1], (t == 'complete' or t == 'error'), s, f
end
"#;

/// `now_ms()`: Redis's own clock in Unix milliseconds, so that no decision depends on two
/// machines' clocks agreeing (every party reads the same server's time).
const NOW_MS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// A Lua script and its SHA1.
pub(crate) struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    fn new(code: impl Into<String>) -> Self {
        let code = code.into();
        let hash = Script::new(&code).get_hash().to_owned();
        Self { code, hash }
    }

    /// `EVALSHA <hash> <number of keys> <keys…>`, with room for `args` more arguments of
    /// about `bytes` bytes in all: the caller appends the script's ARGV.
    fn call(&self, keys: &[&str], args: usize, bytes: usize) -> Cmd {
        let key_bytes: usize = keys.iter().map(|k| k.len()).sum();
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args, 48 + key_bytes + bytes);
        cmd.arg("EVALSHA").arg(&self.hash).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        cmd
    }

    /// Sends `cmd` (made by [`call`](Self::call)); on `NOSCRIPT` loads the script and sends
    /// it once more.
    async fn invoke<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        cmd: &Cmd,
    ) -> Result<T, Error> {
        match cmd.query_async(conn).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(&self.code)
                    .exec_async(conn)
                    .await?;
                Ok(cmd.query_async(conn).await?)
            }
            reply => Ok(reply?),
        }
    }
}

/// A script whose body may call `last_entry`.
fn with_last_entry(body: &str) -> Lua {
    Lua::new(format!("{LAST_ENTRY}{body}"))
}

/// The Lua line that rings the bell `KEYS[3]` for the stream `KEYS[1]` (see [`Keys::bell`]),
/// if it exists: a bell exists only while some reader waits on it ([`keep_bells`]), so a
/// write that nobody waits on that way costs one key lookup more. It comes last, and a ring
/// Redis refuses (out of memory, a bell key of another type) is ignored: a missed ring only
/// delays a reader until its next full read.
///
/// [`Keys::bell`]: crate::Keys::bell
fn ring() -> String {
    format!(
        "if redis.call('EXISTS', KEYS[3]) == 1 then \
         redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', {BELL_LEN}, '*', 's', KEYS[1]) end"
    )
}

/// The Lua line that gives the run's record `KEYS[4]` and reader set `KEYS[5]` the TTL its
/// stream gets with its terminal chunk (`ttl`, a Lua expression), so a finished run is known
/// exactly as long as its chunks are: a record that outlived its stream would show the run
/// as running, and a reader joining it would wait for a worker that is long gone.
fn keep_record_for(ttl: &str) -> String {
    format!("redis.call('EXPIRE', KEYS[4], {ttl}) redis.call('EXPIRE', KEYS[5], {ttl})")
}

/// KEYS: bells (on a cluster, of one bucket: one slot). ARGV: TTL in ms. Adds to each an
/// entry naming no stream, so the bell exists and is rung from now on, sets its TTL, and
/// returns those entries' ids, in order.
static KEEP_BELLS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r#"
local ids = {{}}
for i, bell in ipairs(KEYS) do
  ids[i] = redis.call('XADD', bell, 'MAXLEN', '~', {BELL_LEN}, '*', 's', '')
  redis.call('PEXPIRE', bell, ARGV[1])
end
return ids
"#
    ))
});

/// KEYS: stream, lease, bell. ARGV: owner token, stream TTL in seconds (`0`: leave it), `1`
/// when the batch ends with the terminal chunk (the lease is then deleted), then each chunk as
/// [`write_chunk_args`] gives it: the count of its other fields' arguments, its entry id
/// (`<seq>-1`), the values of `type`, `data` and `seq`, and its other fields. The lease is
/// read once per batch, so a chunk costs Redis one `XADD` and a little Lua (and the batch one
/// ring: [`ring`]). What Redis does per chunk is kept small because it is most of what a
/// stream costs it: the id comes ready-made (formatting it in Lua cost more than passing it),
/// the three names every entry has are the script's own, and a token chunk's `XADD` is one call
/// of fixed arity (no `unpack`) — five arguments a token where it took eight, and about a
/// fifth less of Redis's time (docs/performance-history.md, "A nineteenth machine of the kind").
///
/// A batch is refused when the lease is not its owner's or its first `XADD` finds the id (the
/// `seq`) taken; then the stream's last entry says why. When that entry is the batch's own
/// last chunk, the same id and the same fields, this very batch is already in: a retry after
/// a lost reply (`written`; the lease may be gone because that batch ended the run).
/// Otherwise the stream ended (`ended`: a terminal written from outside, maybe at that very
/// `seq`) or another attempt wrote there (`fenced`) — never taken for this batch, whose
/// chunks would then be lost. Within a batch the ids grow, so once the first `XADD` is in,
/// the others go in too.
static WRITE: LazyLock<Lua> = LazyLock::new(|| {
    with_last_entry(&format!(
        r#"
local function refused()
  local at, i = 4, 4
  while i <= #ARGV do
    at = i
    i = i + tonumber(ARGV[i]) + 5
  end
  local id, terminal, _, f = last_entry(KEYS[1])
  if id == ARGV[at + 1] and #f == tonumber(ARGV[at]) + 6 then
    local same = f[1] == 'type' and f[2] == ARGV[at + 2] and f[3] == 'data'
      and f[4] == ARGV[at + 3] and f[5] == 'seq' and f[6] == ARGV[at + 4]
    for k = 7, #f do
      if f[k] ~= ARGV[at + k - 2] then same = false break end
    end
    if same then return 'written' end
  end
  if terminal then return 'ended' end
  return 'fenced'
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return refused() end
local A, stream, xadd = ARGV, KEYS[1], redis.pcall
local i, argc = 4, #ARGV
while i <= argc do
  local added, n
  if A[i] == '0' then
    n = 0
    added = xadd('XADD', stream, A[i + 1], 'type', A[i + 2], 'data', A[i + 3], 'seq', A[i + 4])
  else
    n = tonumber(A[i])
    added = xadd('XADD', stream, A[i + 1], 'type', A[i + 2], 'data', A[i + 3], 'seq', A[i + 4],
      unpack(A, i + 5, i + 4 + n))
  end
  if type(added) == 'table' and added.err then
    -- Any other refusal (out of memory, a wrong type) is the caller's error.
    if i > 4 or not string.find(added.err, 'equal or smaller', 1, true) then return added end
    return refused()
  end
  i = i + n + 5
end
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
  if ARGV[2] ~= '0' then {keep} end
end
{ring}
return 'ok'
"#,
        keep = keep_record_for("ARGV[2]"),
        ring = ring()
    ))
});

/// The terminal error of a run a caller cancelled that a reader ended because its worker
/// stopped answering or its deadline passed first ([`END_RUN`]), as JSON.
static CANCELLED_FROM_OUTSIDE: LazyLock<String> = LazyLock::new(|| {
    let error = ActorError::new(
        ErrorCode::Cancelled,
        "cancelled; the run ended before its worker could stop it",
    );
    serde_json::to_string(&ErrorInfo::from(&error)).unwrap_or_else(|_| "null".to_owned())
});

/// The terminal error of a run whose stream lost entries its readers were given ([`END_RUN`]),
/// as JSON.
static LOST_BY_REDIS: LazyLock<String> = LazyLock::new(|| {
    let error = ActorError::new(
        ErrorCode::Upstream,
        "Redis lost this run's stream (a restart without persistence, a flush, a failover): it \
         ended short of what its readers had been given",
    );
    serde_json::to_string(&ErrorInfo::from(&error)).unwrap_or_else(|_| "null".to_owned())
});

/// KEYS: stream, lease, bell, record, readers, cancel. ARGV: TTL in seconds, the cancel
/// reason, the error as JSON, `1` when a lease held now stops it (the run is held again: a
/// new attempt took it since the reader looked), the error as JSON of a run a caller
/// cancelled, the least `seq` the terminal may take, the error as JSON of a stream that lost
/// entries below that `seq`. Returns the terminal entry's id, or nothing when stopped by the
/// lease.
///
/// A run a caller asked to cancel (its cancel key says `cancelled`) that a reader ends
/// because its worker died, or its deadline passed, before the worker could stop it, ends
/// `cancelled`: the caller's word is the run's outcome.
///
/// The least `seq` is the one the reader ending the run expects next: on a stream Redis lost
/// (a restart without persistence, a flush) the terminal comes after what readers were given,
/// so one resuming from there reads it instead of a stream that ended before its cursor.
static END_RUN: LazyLock<Lua> = LazyLock::new(|| {
    with_last_entry(&format!(
        r#"
local id, terminal, seq = last_entry(KEYS[1])
if id and terminal then return id end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return false end
local reason, err = ARGV[2], ARGV[3]
local next = 0
if id then
  if not seq then return redis.error_reply('the last entry has no readable seq') end
  next = tonumber(seq) + 1
end
if next < tonumber(ARGV[6]) then
  next, err = tonumber(ARGV[6]), ARGV[7]
end
if reason ~= '{cancelled}' and redis.call('GET', KEYS[6]) == '{cancelled}' then
  reason, err = '{cancelled}', ARGV[5]
end
redis.call('SET', KEYS[6], reason, 'EX', ARGV[1])
local new = redis.call('XADD', KEYS[1], string.format('%d-1', next), 'type', 'error', 'data', 'null', 'seq', next, 'error', err)
redis.call('EXPIRE', KEYS[1], ARGV[1])
{keep}
{ring}
return new
"#,
        cancelled = CancelReason::Cancelled.as_str(),
        keep = keep_record_for("ARGV[1]"),
        ring = ring()
    ))
});

/// KEYS: stream, cancel, and the lease when taking it. ARGV, when taking the lease: the owner
/// token, the lease in ms, `1` for a re-run. Returns `{last id, 1 if terminal else 0, last
/// seq, cancel value, Redis's time in ms, false}`, read after the lease is taken: an earlier
/// attempt that still writes is fenced off from then on, so the last entry it returns stays
/// the last of the attempts before, and the new one's `seq`s follow it.
///
/// A re-run leaves a live lease of another attempt alone and returns `{…, its token}`: that
/// attempt's worker renews it, so it is alive, though it could not keep the request's idle
/// time down (the queue's node failing over while the run's is fine).
static PEEK: LazyLock<Lua> = LazyLock::new(|| {
    with_last_entry(&format!(
        r#"{NOW_MS}
local held = false
if KEYS[3] then
  local lease = redis.call('GET', KEYS[3])
  if ARGV[3] == '1' and lease and lease ~= ARGV[1] then
    held = lease
  else
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  end
end
local id, terminal, seq = last_entry(KEYS[1])
return {{id or false, terminal and 1 or 0, seq or false, redis.call('GET', KEYS[2]), string.format('%d', now_ms()), held}}
"#
    ))
});

/// KEYS: a queue. ARGV: the group, this consumer, the idle time to set in ms (empty: reset
/// it), then entry ids. `XCLAIM`s each id that is in this consumer's pending list now, and
/// none that another consumer claimed since the caller looked: a plain `XCLAIM … 0` would
/// take it back from whoever holds it.
static CLAIM_MINE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local claimed = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    if ARGV[3] == '' then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    end
    claimed = claimed + 1
  end
end
return claimed
"#,
    )
});

/// KEYS: a queue. ARGV: the group, this consumer, an entry id, a delivery count, and maybe
/// another consumer. Sets the entry's delivery count (its attempt number) to the count if this
/// consumer holds it, leaving its idle time as it is — or, given another consumer, hands the
/// entry to that one with its idle time reset; returns 1 if it did.
static RECOUNT: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not (p[1] and p[1][2] == ARGV[2]) then return 0 end
if ARGV[5] then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[3], 'IDLE', 0, 'RETRYCOUNT', ARGV[4], 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', p[1][3], 'RETRYCOUNT', ARGV[4], 'JUSTID')
end
return 1
"#,
    )
});

/// KEYS: actors. ARGV: lease in ms, the worker's name and its queue shards, then actor types.
/// Marks each as served by this worker (the member `<type> <worker> <shards>`: see [`mark`])
/// until Redis's now plus the lease, and drops the marks that lapsed (any worker's), so the
/// set holds only live ones.
static ADVERTISE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r#"{NOW_MS}
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now))
local until_ms = string.format('%d', now + tonumber(ARGV[1]))
local by = ' ' .. ARGV[2] .. ' ' .. ARGV[3]
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], until_ms, ARGV[i] .. by) end
return #ARGV - 3
"#
    ))
});

/// The member of the actors set that says `worker` serves `actor` on `shards` queues: a
/// worker that stops takes its own marks back without touching another's, and a caller
/// counts only the workers that read the queues it writes to. Names hold no spaces
/// (`keys.rs`).
fn mark(actor: &str, worker: &str, shards: u16) -> String {
    format!("{actor} {worker} {shards}")
}

/// KEYS: actors. The actor types whose mark has not lapsed by Redis's now.
static SERVED: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(format!(
        r#"{NOW_MS}
return redis.call('ZRANGE', KEYS[1], string.format('%d', now_ms()), '+inf', 'BYSCORE')
"#
    ))
});

/// KEYS: a queue. ARGV: the most entries it may hold (0: no bound), then a request's fields.
/// Adds the request unless the queue already holds that many (waiting or running: a worker
/// deletes a request's entry once its run has ended); returns the new entry's id, or `false`
/// when the queue is full.
static ENQUEUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local max = tonumber(ARGV[1])
if max > 0 and redis.call('XLEN', KEYS[1]) >= max then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"#,
    )
});

/// KEYS: a queue. ARGV: a run id, how many entries to look through from the oldest. Deletes
/// the run's request if it is among them; returns 1 if it was.
static DEQUEUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'run_id' then
      if fields[i + 1] == ARGV[1] then
        redis.call('XDEL', KEYS[1], entry[1])
        return 1
      end
      break
    end
  end
end
return 0
"#,
    )
});

/// KEYS: per run its lease, stream, cancel key and caller presence key (on a cluster, runs
/// of one bucket: one slot). ARGV: lease in ms, stream TTL in seconds, then per run its owner
/// token, then per run `1` when its caller's presence is watched. Renews each lease only while
/// it holds its owner; returns per run `{1 if renewed else 0, cancel, 0 if its watched
/// caller's presence is missing else 1}`.
static RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local out = {}
local runs = #KEYS / 4
for r = 1, runs do
  local lease = KEYS[4 * r - 3]
  local renewed = 0
  if redis.call('GET', lease) == ARGV[r + 2] then renewed = redis.call('PEXPIRE', lease, ARGV[1]) end
  redis.call('EXPIRE', KEYS[4 * r - 2], ARGV[2])
  local present = 1
  if ARGV[runs + r + 2] == '1' then present = redis.call('EXISTS', KEYS[4 * r]) end
  out[r] = {renewed, redis.call('GET', KEYS[4 * r - 1]), present}
end
return out
"#,
    )
});

/// KEYS: lease. ARGV: owner token. Deletes the lease only while it holds the owner.
static RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Claims the requests `ids` of `queue` for `consumer` again, each only while it is in that
/// consumer's pending list (see [`CLAIM_MINE`]): resets their idle time, or sets it to `idle`
/// ms. Returns how many it claimed.
pub(crate) async fn claim_mine(
    conn: &mut impl ConnectionLike,
    queue: &str,
    group: &str,
    consumer: &str,
    idle: Option<u64>,
    ids: &[String],
) -> Result<u64, Error> {
    let mut cmd = CLAIM_MINE.call(&[queue], 3 + ids.len(), 64 + ids.len() * 24);
    cmd.arg(group)
        .arg(consumer)
        .arg(idle.map(|ms| ms.to_string()).unwrap_or_default());
    for id in ids {
        cmd.arg(id);
    }
    CLAIM_MINE.invoke(conn, &cmd).await
}

/// Sets the delivery count of `id`, pending for `consumer`, to `count`, and hands it to
/// consumer `to` when given (see [`RECOUNT`]): whether it was this consumer's to set.
pub(crate) async fn recount(
    conn: &mut impl ConnectionLike,
    queue: &str,
    (group, consumer): (&str, &str),
    id: &str,
    count: u32,
    to: Option<&str>,
) -> Result<bool, Error> {
    let mut cmd = RECOUNT.call(&[queue], 5, 64 + consumer.len());
    cmd.arg(group).arg(consumer).arg(id).arg(count);
    if let Some(to) = to {
        cmd.arg(to);
    }
    let set: u32 = RECOUNT.invoke(conn, &cmd).await?;
    Ok(set == 1)
}

/// KEYS: a queue. ARGV: the workers' group, an idle time in ms, `only` or `except`, then
/// consumer names. Deletes from the group each consumer idle at least that long with nothing
/// pending that is (`only`) or is not (`except`) one of the names: it holds nothing, and a
/// worker that reads again under its name is made a consumer again by its `XREADGROUP`.
/// Looked at and deleted in one step, so no request delivered meanwhile goes with it. Returns
/// how many it deleted.
static PRUNE_CONSUMERS: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
local named = {}
for i = 4, #ARGV do named[ARGV[i]] = true end
local deleted = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2])
      and (named[f['name']] == true) == (ARGV[3] == 'only') then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    deleted = deleted + 1
  end
end
return deleted
"#,
    )
});

/// Which consumers [`prune_consumers`] may delete.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Consumers<'a> {
    /// Only these.
    Only(&'a [String]),
    /// All but these.
    Except(&'a [String]),
}

/// Deletes the consumers of `queue`'s `group` that `which` names, idle for at least `idle_ms`
/// with nothing pending (see [`PRUNE_CONSUMERS`]); returns how many.
pub(crate) async fn prune_consumers(
    conn: &mut impl ConnectionLike,
    queue: &str,
    group: &str,
    idle_ms: u64,
    which: Consumers<'_>,
) -> Result<u64, Error> {
    let (mode, names) = match which {
        Consumers::Only(names) => ("only", names),
        Consumers::Except(names) => ("except", names),
    };
    let bytes: usize = names.iter().map(String::len).sum();
    let mut cmd = PRUNE_CONSUMERS.call(&[queue], 3 + names.len(), 48 + bytes);
    cmd.arg(group).arg(idle_ms).arg(mode);
    for name in names {
        cmd.arg(name);
    }
    PRUNE_CONSUMERS.invoke(conn, &cmd).await
}

/// What became of a batch given to [`write_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Appended, now or by an earlier try whose reply was lost (the stream's last entry is
    /// the batch's last chunk, id and fields).
    Yes,
    /// Refused: the lease does not hold the writer's owner token, or another attempt wrote
    /// the batch's `seq`s.
    NotOwner,
    /// Refused: the stream already has its terminal chunk.
    Ended,
}

/// The keys of one run that [`write_batch`] and [`end_run`] write (all of one bucket).
#[derive(Debug, Clone)]
pub(crate) struct RunKeys {
    /// The run's stream.
    pub(crate) stream: String,
    /// Its lease.
    pub(crate) lease: String,
    /// Its bucket's bell.
    pub(crate) bell: String,
    /// Its record.
    pub(crate) record: String,
    /// Its reader set.
    pub(crate) readers: String,
    /// Its cancel key.
    pub(crate) cancel: String,
}

impl RunKeys {
    /// Run `run_id`'s keys.
    pub(crate) fn new(keys: &Keys, run_id: &str) -> Self {
        Self {
            stream: keys.stream(run_id),
            lease: keys.lease(run_id),
            bell: keys.bell(run_id),
            record: keys.run(run_id),
            readers: keys.readers(run_id),
            cancel: keys.cancel(run_id),
        }
    }
}

/// Appends `batch` to the stream of `keys` only while its lease holds `owner` and the stream
/// has no terminal chunk, and rings the bell. `ttl_secs` (unless 0) is set on the stream;
/// `terminal` deletes the lease after and gives the record and reader set that TTL too.
pub(crate) async fn write_batch(
    conn: &mut impl ConnectionLike,
    keys: &RunKeys,
    owner: &str,
    ttl_secs: u64,
    terminal: bool,
    batch: &[StreamChunk],
) -> Result<Written, Error> {
    // A token chunk is five short arguments: about 60 bytes.
    let mut cmd = WRITE.call(
        &[
            &keys.stream,
            &keys.lease,
            &keys.bell,
            &keys.record,
            &keys.readers,
        ],
        3 + batch.len() * 5,
        32 + batch.len() * 60,
    );
    cmd.arg(owner)
        .arg(ttl_secs)
        .arg(if terminal { "1" } else { "0" });
    for chunk in batch {
        write_chunk_args(&mut cmd, chunk);
    }
    let reply: String = WRITE.invoke(conn, &cmd).await?;
    match reply.as_str() {
        "ok" | "written" => Ok(Written::Yes),
        "fenced" => Ok(Written::NotOwner),
        "ended" => Ok(Written::Ended),
        _ => Err(Error::UnexpectedReply(format!(
            "the write script answered {reply:?}"
        ))),
    }
}

/// Unless the stream already has a terminal chunk, sets the run's cancel key to `reason` and
/// appends `error_json` as an `error` chunk (ringing the bell, and giving the record the
/// stream's TTL). Returns the id of the stream's terminal entry; `None`, writing nothing, when
/// the run's lease is held and `reason` is not [`CancelReason::Timeout`]: a reader's
/// `worker_lost` (a new attempt took the run since the reader found it without one) or a
/// caller's cancel (the worker holding the run writes its terminal). The terminal's `seq` is
/// at least `least_seq`; one past the stream's own end says the stream lost entries, an
/// `upstream` error (see [`END_RUN`]).
pub(crate) async fn end_run(
    conn: &mut impl ConnectionLike,
    keys: &RunKeys,
    ttl_secs: u64,
    reason: CancelReason,
    error_json: &str,
    least_seq: u64,
) -> Result<Option<EntryId>, Error> {
    let cancelled = &*CANCELLED_FROM_OUTSIDE;
    let lost = &*LOST_BY_REDIS;
    let mut cmd = END_RUN.call(
        &[
            &keys.stream,
            &keys.lease,
            &keys.bell,
            &keys.record,
            &keys.readers,
            &keys.cancel,
        ],
        5,
        48 + error_json.len() + cancelled.len() + lost.len(),
    );
    // A deadline ends a run whoever holds it; a reader's `worker_lost` and a caller's cancel
    // leave one a worker holds to that worker.
    let unless_held = if reason == CancelReason::Timeout {
        "0"
    } else {
        "1"
    };
    cmd.arg(ttl_secs)
        .arg(reason.as_str())
        .arg(error_json)
        .arg(unless_held)
        .arg(cancelled)
        .arg(least_seq)
        .arg(lost);
    let id: Option<String> = END_RUN.invoke(conn, &cmd).await?;
    id.map(|id| id.parse()).transpose()
}

/// A stream's last entry, as [`peek`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastEntry {
    pub(crate) id: EntryId,
    pub(crate) terminal: bool,
    /// `None` when the entry has no readable `seq`.
    pub(crate) seq: Option<u64>,
}

/// A run's state before it is read or run: its stream's last entry and its cancel key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peek {
    /// `None` when the stream is empty or does not exist.
    pub(crate) last: Option<LastEntry>,
    pub(crate) cancel: Option<CancelReason>,
    /// Redis's clock, in Unix milliseconds.
    pub(crate) now_ms: u64,
    /// The token of another attempt whose live lease a re-run left alone.
    pub(crate) held_by: Option<String>,
}

/// A run's lease to take: the key, the attempt's owner token, for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Take<'a> {
    pub(crate) lease: &'a str,
    pub(crate) owner: &'a str,
    pub(crate) lease_ms: u64,
    /// A re-run, which leaves another attempt's live lease alone.
    pub(crate) rerun: bool,
}

/// Reads the last entry of `stream` and the value of `cancel`, in one round trip; with
/// `take`, after setting that lease (see [`PEEK`]).
pub(crate) async fn peek(
    conn: &mut impl ConnectionLike,
    stream: &str,
    cancel: &str,
    take: Option<Take<'_>>,
) -> Result<Peek, Error> {
    let cmd = match take {
        None => PEEK.call(&[stream, cancel], 0, 0),
        Some(take) => {
            let mut cmd = PEEK.call(&[stream, cancel, take.lease], 3, take.owner.len() + 24);
            cmd.arg(take.owner)
                .arg(take.lease_ms)
                .arg(if take.rerun { "1" } else { "0" });
            cmd
        }
    };
    let (id, terminal, seq, reason, now, held_by): (
        Option<String>,
        i64,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
    ) = PEEK.invoke(conn, &cmd).await?;
    let now_ms = now
        .parse()
        .map_err(|_| Error::UnexpectedReply(format!("Redis's time {now:?}")))?;
    let last = match id {
        Some(id) => Some(LastEntry {
            id: id.parse()?,
            terminal: terminal == 1,
            seq: seq.and_then(|s| s.parse().ok()),
        }),
        None => None,
    };
    Ok(Peek {
        last,
        cancel: reason.as_deref().map(CancelReason::parse),
        now_ms,
        held_by,
    })
}

/// KEYS: a run's record, its readers (a set). ARGV: `join`, `leave` or `look`, and a reader's
/// id. A reader joining is added to the set (which expires with the record) and counted in
/// `joins`; one leaving is removed. Both are safe to send again after a lost reply: a set
/// member is there once, and `joins` only has to change. A record that is gone (expired) is
/// left gone, nothing is counted on it. Returns `{readers, joins, grace_ms}`.
static TALLY: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {false, false, false} end
if ARGV[1] == 'join' then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'joins', 1)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
elseif ARGV[1] == 'leave' then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return {redis.call('SCARD', KEYS[2]), redis.call('HGET', KEYS[1], 'joins'), redis.call('HGET', KEYS[1], 'grace_ms')}
"#,
    )
});

/// What [`tally`] does with a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    /// It joins.
    Join,
    /// It leaves.
    Leave,
    /// Nothing: only look.
    Look,
}

/// Counts `reader` of the run whose record and reader set are `record` and `readers` as
/// `what` says (see [`TALLY`]); returns its readers, joins and disconnect grace, as far as
/// set.
pub(crate) async fn tally(
    conn: &mut impl ConnectionLike,
    record: &str,
    readers: &str,
    what: Tally,
    reader: &str,
) -> Result<(Option<i64>, Option<i64>, Option<u64>), Error> {
    let what = match what {
        Tally::Join => "join",
        Tally::Leave => "leave",
        Tally::Look => "look",
    };
    let mut cmd = TALLY.call(&[record, readers], 2, 8 + reader.len());
    cmd.arg(what).arg(reader);
    TALLY.invoke(conn, &cmd).await
}

/// Marks `actors` as served by `worker`, reading `shards` queues of each, for `lease_ms` from
/// Redis's now.
pub(crate) async fn advertise(
    conn: &mut impl ConnectionLike,
    key: &str,
    lease_ms: u64,
    (worker, shards): (&str, u16),
    actors: &[String],
) -> Result<(), Error> {
    let bytes: usize = actors.iter().map(String::len).sum();
    let mut cmd = ADVERTISE.call(&[key], 3 + actors.len(), 24 + worker.len() + bytes);
    cmd.arg(lease_ms).arg(worker).arg(shards);
    for actor in actors {
        cmd.arg(actor);
    }
    let _: i64 = ADVERTISE.invoke(conn, &cmd).await?;
    Ok(())
}

/// Takes back `worker`'s marks of `actors`: it serves them no more.
pub(crate) async fn withdraw(
    conn: &mut impl ConnectionLike,
    key: &str,
    (worker, shards): (&str, u16),
    actors: &[String],
) -> Result<(), Error> {
    let mut cmd = redis::cmd("ZREM");
    cmd.arg(key);
    for actor in actors {
        cmd.arg(mark(actor, worker, shards));
    }
    let _: i64 = cmd.query_async(conn).await?;
    Ok(())
}

/// The actor types some worker marked as served until after Redis's now, each with the
/// numbers of queue shards its workers read.
pub(crate) async fn served(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<BTreeMap<String, BTreeSet<u16>>, Error> {
    let mut served: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for mark in marks(conn, key).await? {
        served.entry(mark.actor).or_default().insert(mark.shards);
    }
    Ok(served)
}

/// The workers whose mark on some actor type has not lapsed: the live ones.
pub(crate) async fn live_workers(
    conn: &mut impl ConnectionLike,
    key: &str,
) -> Result<Vec<String>, Error> {
    let workers: BTreeSet<String> = marks(conn, key)
        .await?
        .into_iter()
        .flat_map(|m| m.worker)
        .collect();
    Ok(workers.into_iter().collect())
}

/// A mark that has not lapsed (see [`mark`]).
struct Mark {
    actor: String,
    /// `None` in a mark of an older Loom: the type alone.
    worker: Option<String>,
    /// 1 in a mark of an older Loom, which had one queue a type.
    shards: u16,
}

/// The marks that have not lapsed.
async fn marks(conn: &mut impl ConnectionLike, key: &str) -> Result<Vec<Mark>, Error> {
    let marks: Vec<String> = SERVED.invoke(conn, &SERVED.call(&[key], 0, 0)).await?;
    Ok(marks
        .into_iter()
        .map(|mark| {
            let mut parts = mark.splitn(3, ' ');
            Mark {
                actor: parts.next().unwrap_or_default().to_owned(),
                worker: parts.next().map(str::to_owned),
                shards: parts.next().and_then(|s| s.parse().ok()).unwrap_or(1),
            }
        })
        .collect())
}

/// Adds `request` to `queue` unless the queue holds `max` entries already (`0`: no bound; see
/// [`ENQUEUE`]): its entry id, or `None` when the queue is full.
pub(crate) async fn enqueue(
    conn: &mut impl ConnectionLike,
    queue: &str,
    max: u64,
    request: &Request,
) -> Result<Option<String>, Error> {
    let mut cmd = ENQUEUE.call(&[queue], 11, 256);
    cmd.arg(max);
    request.write_fields(&mut cmd);
    ENQUEUE.invoke(conn, &cmd).await
}

/// Deletes run `run_id`'s request from `queue` if it is among the queue's `within` oldest
/// entries (see [`DEQUEUE`]); whether it was.
pub(crate) async fn dequeue(
    conn: &mut impl ConnectionLike,
    queue: &str,
    run_id: &str,
    within: u64,
) -> Result<bool, Error> {
    let mut cmd = DEQUEUE.call(&[queue], 2, run_id.len() + 20);
    cmd.arg(run_id).arg(within);
    let deleted: i64 = DEQUEUE.invoke(conn, &cmd).await?;
    Ok(deleted == 1)
}

/// What [`renew`] found for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Renewal {
    /// Whether the lease still held the owner and was renewed.
    pub(crate) renewed: bool,
    /// The run's cancel key, if set.
    pub(crate) cancel: Option<CancelReason>,
    /// `false` when the run's caller watches it and its presence key is gone.
    pub(crate) caller_present: bool,
}

/// Renews, in one call, each run's lease for `lease_ms` only while it holds the run's owner
/// token, renews its stream's TTL, and reads its cancel key (a cancel whose pub/sub message
/// was missed is still there). On a cluster the runs must share a bucket (one slot).
pub(crate) async fn renew(
    conn: &mut impl ConnectionLike,
    runs: &[Renewing<'_>],
    lease_ms: u64,
    ttl_secs: u64,
) -> Result<Vec<Renewal>, Error> {
    // An unwatched run's caller key is named too (every run has four), never read.
    let keys: Vec<&str> = runs
        .iter()
        .flat_map(|run| {
            [
                run.lease,
                run.stream,
                run.cancel,
                run.caller.unwrap_or(run.cancel),
            ]
        })
        .collect();
    let owners: usize = runs.iter().map(|run| run.owner.len()).sum();
    let mut cmd = RENEW.call(&keys, 2 + 2 * runs.len(), 32 + owners + 2 * runs.len());
    cmd.arg(lease_ms).arg(ttl_secs);
    for run in runs {
        cmd.arg(run.owner);
    }
    for run in runs {
        cmd.arg(if run.caller.is_some() { "1" } else { "0" });
    }
    let replies: Vec<(i64, Option<String>, i64)> = RENEW.invoke(conn, &cmd).await?;
    if replies.len() != runs.len() {
        return Err(Error::UnexpectedReply(format!(
            "the renew script answered for {} runs of {}",
            replies.len(),
            runs.len()
        )));
    }
    Ok(replies
        .into_iter()
        .map(|(renewed, reason, present)| Renewal {
            renewed: renewed == 1,
            cancel: reason.as_deref().map(CancelReason::parse),
            caller_present: present == 1,
        })
        .collect())
}

/// One run for [`renew`]: its keys and the owner token its lease should hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewing<'a> {
    pub(crate) lease: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) cancel: &'a str,
    pub(crate) owner: &'a str,
    /// The caller's presence key, when the run is to be cancelled once it lapses.
    pub(crate) caller: Option<&'a str>,
}

/// Keeps `bells` for `ttl_ms` more, in one call (see [`KEEP_BELLS`]): the writes of their
/// buckets ring them while they last. Returns, for each, the id of the entry it added: every
/// ring after it is after that id.
pub(crate) async fn keep_bells(
    conn: &mut impl ConnectionLike,
    bells: &[&str],
    ttl_ms: u64,
) -> Result<Vec<EntryId>, Error> {
    let mut cmd = KEEP_BELLS.call(bells, 1, 20);
    cmd.arg(ttl_ms);
    let ids: Vec<String> = KEEP_BELLS.invoke(conn, &cmd).await?;
    ids.iter().map(|id| id.parse()).collect()
}

/// Deletes `lease` only while it holds `owner`: a lease another attempt took is left alone.
pub(crate) async fn release(
    conn: &mut impl ConnectionLike,
    lease: &str,
    owner: &str,
) -> Result<(), Error> {
    let mut cmd = RELEASE.call(&[lease], 1, owner.len());
    cmd.arg(owner);
    let _: i64 = RELEASE.invoke(conn, &cmd).await?;
    Ok(())
}

#[cfg(test)]
#[path = "../tests/support/redis_server.rs"]
mod test_redis;

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::test_redis::RedisServer;
    use super::*;

    /// A run's keys under a prefix of the test's own, and a connection to `server`.
    async fn run_keys(server: &RedisServer) -> (RunKeys, redis::aio::MultiplexedConnection) {
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let keys = RunKeys::new(&Keys::new(prefix).expect("prefix"), "run-1");
        let client = redis::Client::open(server.url()).expect("url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        (keys, conn)
    }

    /// [`run_keys`] of a run whose stream holds its `start` chunk.
    async fn started_run(server: &RedisServer) -> (RunKeys, redis::aio::MultiplexedConnection) {
        let (keys, mut conn) = run_keys(server).await;
        let _: String = conn
            .xadd(
                &keys.stream,
                "0-1",
                &[("type", "start"), ("data", "null"), ("seq", "0")],
            )
            .await
            .expect("xadd");
        (keys, conn)
    }

    /// The write script writes each chunk as the entry DESIGN.md §3 gives (the three names it
    /// adds itself, then the chunk's other fields), and tells a batch sent again after a lost
    /// reply (`written`: its last chunk is the stream's last entry, every field the same) from
    /// one another attempt wrote past (`fenced`: the same id, a field different) and from a
    /// stream that ended (`ended`).
    #[tokio::test]
    async fn the_write_script_writes_entries_whole_and_knows_its_own_batch_again() {
        use loom_core::{Event, Output};

        let server = RedisServer::start();
        let (keys, mut conn) = started_run(&server).await;
        let _: () = conn.set(&keys.lease, "owner").await.expect("set");
        let progress = |step: &str| {
            Output::progress(1, Some(2), "half")
                .with_actor("team")
                .with_step(step)
                .with_event(Event::ActionStart)
                .into_chunk(1)
        };
        let batch = [progress("s1"), Output::token("t").into_chunk(2)];
        let writer = conn.clone();
        let write = |batch: Vec<StreamChunk>, terminal: bool| {
            let (mut conn, keys) = (writer.clone(), keys.clone());
            async move { write_batch(&mut conn, &keys, "owner", 60, terminal, &batch).await }
        };
        assert_eq!(
            write(batch.to_vec(), false).await.expect("write"),
            Written::Yes
        );
        let entries: redis::streams::StreamRangeReply =
            conn.xrange_all(&keys.stream).await.expect("xrange");
        let fields: Vec<Vec<(String, String)>> = entries
            .ids
            .iter()
            .map(|e| {
                let mut f: Vec<(String, String)> = e
                    .map
                    .iter()
                    .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).expect("text")))
                    .collect();
                f.sort();
                f
            })
            .collect();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            entries
                .ids
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>(),
            ["0-1", "1-1", "2-1"]
        );
        assert_eq!(
            fields[1],
            [
                pair("actor", "\"team\""),
                pair("data", "null"),
                pair("event", "\"action-start\""),
                pair("progress", r#"{"current":1,"total":2,"message":"half"}"#),
                pair("seq", "1"),
                pair("step", "\"s1\""),
                pair("type", "progress"),
            ]
        );
        assert_eq!(
            fields[2],
            [
                pair("data", r#"{"token":"t"}"#),
                pair("seq", "2"),
                pair("type", "data")
            ]
        );

        // The first chunk again, alone: the stream's last entry is not it (seq 1 is taken by a
        // chunk that is not this batch's last), so it is another writer's: fenced.
        assert_eq!(
            write(vec![progress("s1")], false).await.expect("write"),
            Written::NotOwner
        );
        // The whole batch again, as after a lost reply: recognised, nothing written twice.
        assert_eq!(
            write(batch.to_vec(), false).await.expect("write"),
            Written::Yes
        );
        // A chunk at seq 2 that differs from the entry there in one field: not this batch.
        let other = Output::token("t").with_actor("someone").into_chunk(2);
        assert_eq!(
            write(vec![other], false).await.expect("write"),
            Written::NotOwner
        );
        let len: usize = conn.xlen(&keys.stream).await.expect("xlen");
        assert_eq!(len, 3, "nothing written twice");

        // A terminal with an error field, then the same again after a lost reply (the lease
        // is gone with the terminal, so only the entry can tell), then a write past it.
        let error = StreamChunk::error(3, &ActorError::bad_input("no"));
        assert_eq!(
            write(vec![error.clone()], true).await.expect("write"),
            Written::Yes
        );
        assert_eq!(write(vec![error], true).await.expect("write"), Written::Yes);
        let _: () = conn.set(&keys.lease, "owner").await.expect("set");
        let late = Output::token("late").into_chunk(3);
        assert_eq!(
            write(vec![late], false).await.expect("write"),
            Written::Ended
        );
        let len: usize = conn.xlen(&keys.stream).await.expect("xlen");
        assert_eq!(len, 4);
    }

    /// A reader's `worker_lost` verdict, written by `END_RUN`, is not written over a run a new
    /// attempt took meanwhile (its lease is held), while a `timeout` is; and once the stream
    /// has its terminal, ending it again writes nothing and answers that terminal's id.
    #[tokio::test]
    async fn end_run_leaves_a_held_run_alone_unless_its_deadline_passed() {
        let server = RedisServer::start();
        let (keys, mut conn) = started_run(&server).await;
        let _: () = conn.set(&keys.lease, "attempt-2").await.expect("set");
        let error = r#"{"code":"worker_lost","message":"gone"}"#;

        let held = end_run(&mut conn, &keys, 60, CancelReason::WorkerLost, error, 0).await;
        assert_eq!(held.expect("end_run"), None);
        let len: usize = conn.xlen(&keys.stream).await.expect("xlen");
        assert_eq!(len, 1, "nothing is written over a held lease");
        let cancel: Option<String> = conn.get(&keys.cancel).await.expect("get");
        assert_eq!(cancel, None, "a held run is not told to stop");

        let _: () = conn.del(&keys.lease).await.expect("del");
        let ended = end_run(&mut conn, &keys, 60, CancelReason::WorkerLost, error, 0).await;
        assert_eq!(ended.expect("end_run"), Some(EntryId::of_seq(1)));
        let cancel: Option<String> = conn.get(&keys.cancel).await.expect("get");
        assert_eq!(cancel.as_deref(), Some("worker_lost"));
        let ttl: i64 = conn.ttl(&keys.stream).await.expect("ttl");
        assert!((1..=60).contains(&ttl), "the ended stream expires: {ttl}");

        // The lease held again, a deadline verdict on the ended stream: its terminal stands.
        let _: () = conn.set(&keys.lease, "attempt-3").await.expect("set");
        let again = end_run(&mut conn, &keys, 60, CancelReason::Timeout, error, 0).await;
        assert_eq!(again.expect("end_run"), Some(EntryId::of_seq(1)));
        let len: usize = conn.xlen(&keys.stream).await.expect("xlen");
        assert_eq!(len, 2, "one terminal only");
    }

    /// A reader's verdict comes after what the reader was given: on a stream Redis lost (a
    /// restart without persistence) it is written at the reader's next `seq`, saying so,
    /// where a resuming reader finds it; on an intact stream it follows the last entry, as
    /// always.
    #[tokio::test]
    async fn end_run_writes_past_what_the_reader_had_when_the_stream_was_lost() {
        let server = RedisServer::start();
        let (keys, mut conn) = run_keys(&server).await;
        let error = r#"{"code":"worker_lost","message":"gone"}"#;
        let ended = end_run(&mut conn, &keys, 60, CancelReason::WorkerLost, error, 7).await;
        assert_eq!(ended.expect("end_run"), Some(EntryId::of_seq(7)));
        let entries: redis::streams::StreamRangeReply =
            conn.xrange_all(&keys.stream).await.expect("xrange");
        let fields = &entries.ids[0].map;
        assert_eq!(fields["seq"], redis::Value::BulkString(b"7".to_vec()));
        let redis::Value::BulkString(err) = &fields["error"] else {
            panic!("an error field: {fields:?}");
        };
        let err: serde_json::Value = serde_json::from_slice(err).expect("json");
        assert_eq!(err["code"], "upstream", "{err}");
        assert!(err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Redis lost"));

        let (keys, mut conn) = started_run(&server).await;
        // The reader had the start chunk: it expects seq 1, which follows the stream's end.
        let ended = end_run(&mut conn, &keys, 60, CancelReason::WorkerLost, error, 1).await;
        assert_eq!(ended.expect("end_run"), Some(EntryId::of_seq(1)));
        let entries: redis::streams::StreamRangeReply =
            conn.xrange_all(&keys.stream).await.expect("xrange");
        let fields = &entries.ids[1].map;
        assert_eq!(
            fields["error"],
            redis::Value::BulkString(error.as_bytes().to_vec())
        );
    }

    /// A deadline verdict is written even while the lease is held: a run past its deadline
    /// ends whoever holds it.
    #[tokio::test]
    async fn end_run_writes_a_timeout_over_a_held_lease() {
        let server = RedisServer::start();
        let (keys, mut conn) = run_keys(&server).await;
        let _: () = conn.set(&keys.lease, "attempt-1").await.expect("set");
        let error = r#"{"code":"timeout","message":"late"}"#;
        let ended = end_run(&mut conn, &keys, 60, CancelReason::Timeout, error, 0).await;
        assert_eq!(ended.expect("end_run"), Some(EntryId::of_seq(0)));
        let cancel: Option<String> = conn.get(&keys.cancel).await.expect("get");
        assert_eq!(cancel.as_deref(), Some("timeout"));
    }
}
