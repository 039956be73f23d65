//! What every server in front of one Redis shares about runs: each run's record (what it
//! runs, when it was queued, what its stream holds last), the index of recent runs, and the
//! tally of a run's readers that decides when a direct stream whose client left is cancelled.
//!
//! [`RemoteInvoker`](crate::RemoteInvoker) writes a run's record (`loom:run:{<bucket>}:<id>`) and adds
//! it to the index (`loom:runs`) in the same pipeline that queues the request, so a run is
//! known to every server from the moment it exists. A record expires with its stream (the
//! request's timeout plus the stream TTL); the index keeps the newest [`RECENT_RUNS`] ids.

use std::time::Duration;

use loom_core::{ActorError, StreamChunk};
use redis::Value;

use crate::client::Client;
use crate::codec::{decode_chunk, parse_entries};
use crate::error::Error;
use crate::keys::check_name;
use crate::script::{self, Tally};

/// How many run ids the index of recent runs keeps.
pub const RECENT_RUNS: usize = 1_000;

/// One run as Redis knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run id.
    pub run_id: String,
    /// The actor type it runs (`workflows/<name>` for a workflow); `None` for a stream written
    /// without a record (by another client, or an older Loom).
    pub actor: Option<String>,
    /// When it was queued, in Unix milliseconds (the queueing machine's clock).
    pub created_ms: Option<u64>,
    /// Its stream's last chunk; `None` while no worker has written one.
    pub last: Option<StreamChunk>,
}

impl RunRecord {
    /// The terminal chunk, once the run has ended.
    pub fn terminal(&self) -> Option<&StreamChunk> {
        self.last.as_ref().filter(|c| c.is_terminal())
    }
}

/// A run's readers across every server, after a [`Client::reader_joined`] or
/// [`Client::reader_left`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReaderTally {
    /// Readers attached now.
    pub readers: i64,
    /// Attachments ever made: a change tells that someone came back meanwhile.
    pub joins: i64,
    /// The grace after which the run is cancelled once it has no reader, if its starter set
    /// one ([`Client::set_disconnect_grace`]); `None`: the run goes on without readers.
    pub grace_ms: Option<u64>,
}

impl Client {
    /// The record of run `run_id`, or `None` when Redis has neither a record nor a stream for
    /// it (it never existed, or it expired).
    pub async fn run_record(&self, run_id: &str) -> Result<Option<RunRecord>, Error> {
        check_name("run id", run_id)?;
        let mut records = self.run_records(&[run_id.to_owned()]).await?;
        Ok(records.pop().flatten())
    }

    /// The most recent runs, newest first, at most `limit` (and at most [`RECENT_RUNS`]);
    /// runs whose record expired are left out.
    pub async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, Error> {
        let limit = limit.min(RECENT_RUNS);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut index = redis::cmd("ZRANGE");
        index
            .arg(self.keys().runs())
            .arg(0)
            .arg(limit - 1)
            .arg("REV");
        let ids: Vec<String> = self
            .retried(|| async { Ok(index.query_async(&mut self.conn()).await?) })
            .await?;
        // Ids in the index were checked when they were queued; one written by another
        // client that is not a valid name is skipped rather than turned into a key.
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| check_name("run id", id).is_ok())
            .collect();
        let records = self.run_records(&ids).await?;
        Ok(records.into_iter().flatten().collect())
    }

    /// Sets the grace after which run `run_id` is cancelled once its last reader left (see
    /// [`ReaderTally`]); servers set it for direct streams.
    pub async fn set_disconnect_grace(&self, run_id: &str, grace_ms: u64) -> Result<(), Error> {
        check_name("run id", run_id)?;
        let mut set = redis::cmd("HSET");
        set.arg(self.keys().run(run_id))
            .arg("grace_ms")
            .arg(grace_ms);
        self.retried(|| async { Ok(set.query_async::<()>(&mut self.conn()).await?) })
            .await
    }

    /// Names run `run_id` `name` (e.g. a chat whose latest run it is) for `ttl`, replacing
    /// what the name stood for.
    pub async fn name_run(&self, name: &str, run_id: &str, ttl: Duration) -> Result<(), Error> {
        check_name("run name", name)?;
        check_name("run id", run_id)?;
        let mut set = redis::cmd("SET");
        set.arg(self.keys().run_name(name))
            .arg(run_id)
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        self.retried(|| async { Ok(set.query_async::<()>(&mut self.conn()).await?) })
            .await
    }

    /// The run named `name` ([`name_run`](Self::name_run)), if the name has not expired.
    pub async fn named_run(&self, name: &str) -> Result<Option<String>, Error> {
        check_name("run name", name)?;
        let mut get = redis::cmd("GET");
        get.arg(self.keys().run_name(name));
        let id: Option<String> = self
            .retried(|| async { Ok(get.query_async(&mut self.conn()).await?) })
            .await?;
        Ok(id.filter(|id| check_name("run id", id).is_ok()))
    }

    /// Counts `reader` (an id unique to one reader, on any server) as a reader of run
    /// `run_id`. Safe to call again when its reply was lost: a reader is counted once.
    pub async fn reader_joined(&self, run_id: &str, reader: &str) -> Result<ReaderTally, Error> {
        self.tally(run_id, Tally::Join, reader).await
    }

    /// Counts `reader` of run `run_id` gone. Safe to call again when its reply was lost, or
    /// when the join's was (a reader that was never counted leaves nothing behind).
    pub async fn reader_left(&self, run_id: &str, reader: &str) -> Result<ReaderTally, Error> {
        self.tally(run_id, Tally::Leave, reader).await
    }

    /// The tally of run `run_id`'s readers now.
    pub async fn readers(&self, run_id: &str) -> Result<ReaderTally, Error> {
        self.tally(run_id, Tally::Look, "").await
    }

    async fn tally(&self, run_id: &str, what: Tally, reader: &str) -> Result<ReaderTally, Error> {
        check_name("run id", run_id)?;
        let keys = self.keys();
        let (record, readers) = (keys.run(run_id), keys.readers(run_id));
        // Safe twice (see `reader_joined`).
        let (readers, joins, grace_ms) = self
            .retried(|| async {
                script::tally(&mut self.conn(), &record, &readers, what, reader).await
            })
            .await?;
        Ok(ReaderTally {
            readers: readers.unwrap_or(0),
            joins: joins.unwrap_or(0),
            grace_ms,
        })
    }

    /// The records of `ids` (already checked names), in their order, in one round trip: one
    /// pipeline per run (its keys share a slot), all sent at once.
    async fn run_records(&self, ids: &[String]) -> Result<Vec<Option<RunRecord>>, Error> {
        let keys = self.keys();
        let read = |id: &String| {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(keys.run(id))
                .arg("actor")
                .arg("created_ms");
            pipe.cmd("XREVRANGE")
                .arg(keys.stream(id))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
            let mut conn = self.conn();
            async move { pipe.query_async::<(Value, Value)>(&mut conn).await }
        };
        let replies = self
            .retried(|| async { Ok(futures::future::try_join_all(ids.iter().map(read)).await?) })
            .await?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, (fields, last)) in ids.iter().zip(replies) {
            let (actor, created_ms): (Option<String>, Option<u64>) =
                redis::from_redis_value(fields)
                    .map_err(|e| Error::UnexpectedReply(format!("run record: {e}")))?;
            let last = last_chunk(last)?;
            records.push((actor.is_some() || last.is_some()).then(|| RunRecord {
                run_id: id.clone(),
                actor,
                created_ms,
                last,
            }));
        }
        Ok(records)
    }
}

/// The chunk of an `XREVRANGE … COUNT 1` reply. An entry Loom cannot decode (written by
/// another client) is taken for what a reader of the stream would end with, `error/internal`
/// naming it, at the `seq` its id stands for — never a guess at its content, and never an
/// error for the other runs listed with it.
fn last_chunk(reply: Value) -> Result<Option<StreamChunk>, Error> {
    let entries = parse_entries(reply).map_err(Error::UnexpectedReply)?;
    let Some(entry) = entries.into_iter().next() else {
        return Ok(None);
    };
    Ok(Some(decode_chunk(&entry.fields).unwrap_or_else(|e| {
        let why = format!("undecodable entry {}: {e}", entry.id);
        StreamChunk::error(entry.id.ms, &ActorError::internal(why))
    })))
}
