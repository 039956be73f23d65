//! `loom`: run actors and workflows from a terminal with live progress and tokens.
//!
//! The binary is glue: it parses and validates arguments before any work starts, builds the
//! runtime, and hands the run's chunks to [`render`]. Exit codes: 0 complete, 1 the run ended
//! with an `error` chunk, 2 bad usage or input, 130 after Ctrl-C (which cancels the run and
//! prints its terminal chunk first).

/// `eprintln!` that leaves a stderr nobody reads any more alone (a closed pipe: `2>&1 | head`,
/// a supervisor that stopped reading) instead of panicking: what it says is for people, and
/// its loss must not change how the process ends.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod render;
mod serve;
mod telemetry;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use loom_ai::{AiService, CHAT_AGENT};
use loom_core::{
    ActorError, ChunkStream, ChunkType, ErrorCode, Extensions, Invoker, Registry, RunOptions,
    Runtime, StreamChunk,
};
use loom_workflow::WorkflowExecutor;
use serde_json::Value;

use render::{RenderMode, Renderer, StdoutWriter};

/// How long a cancelled run may take to write its terminal chunk before the CLI gives up.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How long a command waits, before the process exits, for the cancels of the remote runs it
/// stopped to reach Redis.
const CANCEL_FLUSH: Duration = Duration::from_secs(3);

/// What `--help` says of the environment `chat-agent` reads (where actors run: this process,
/// or a worker).
const AI_ENV: &str = "Environment of chat-agent: OPENAI_BASE_URL (an OpenAI-compatible server, \
e.g. http://127.0.0.1:11434/v1), OPENAI_API_KEY (neither set: the offline provider), LOOM_MODEL \
(the model to ask for), LOOM_AI_IDLE_TIMEOUT (how long a silent server is waited for: 90s, 5m; \
default 1m).";

/// What `loom serve --help` says of the environment besides [`AI_ENV`].
const SERVE_ENV: &str = "Environment of chat-agent: OPENAI_BASE_URL, OPENAI_API_KEY, LOOM_MODEL, \
LOOM_AI_IDLE_TIMEOUT (see loom --help). LOOM_API_KEY: callers must present this key \
(Authorization: Bearer KEY); unset, the API is open to whoever reaches the address \
(docs/security.md).";

/// Loom: run actors and stream their work as it happens.
#[derive(Parser, Debug)]
#[command(name = "loom", version, about, after_help = AI_ENV)]
struct Cli {
    /// Run actors on workers through this Redis (e.g. redis://127.0.0.1:6379) instead of in
    /// this process. A Redis Cluster works too: the URL of any node, or a comma-separated list
    /// of nodes' URLs.
    #[arg(
        long,
        global = true,
        env = "LOOM_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis: Option<String>,
    /// How many queues each actor type has in Redis (spreads one type's requests over a
    /// cluster's nodes); callers and workers must use the same number.
    #[arg(long, global = true, env = "LOOM_QUEUE_SHARDS", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    queue_shards: u16,
    /// The most requests one queue may hold, waiting or running, before a new run is refused
    /// (Redis only; default: no bound). Give every caller the same bound.
    #[arg(long, global = true, env = "LOOM_MAX_QUEUED", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_queued: Option<u64>,
    /// How long a finished run stays in Redis, its chunks and its record (`30m`, `24h`, a
    /// minute to a week; Redis only; default 1h). Workers set it as a run ends and callers on
    /// the runs they queue: give them all the same.
    #[arg(long, global = true, env = "LOOM_STREAM_TTL", value_name = "DURATION",
          value_parser = parse_stream_ttl)]
    stream_ttl: Option<Duration>,
    #[command(subcommand)]
    command: Command,
}

/// `--stream-ttl`: Loom's duration syntax, a minute to a week. Less would let a run's cancel
/// mark lapse before a request waiting for a worker gives up (`ClientOptions::stream_ttl`).
fn parse_stream_ttl(text: &str) -> Result<Duration, String> {
    match loom_core::parse_timeout(text) {
        Ok(short) if short < Duration::from_secs(60) => Err("at least 1m".to_owned()),
        Ok(ttl) => Ok(ttl),
        Err(err) => Err(err.to_string()),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List and run actors.
    #[command(subcommand)]
    Actor(ActorCommand),
    /// Run and check workflow definitions (YAML or JSON).
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Run actors for callers, taking requests from the Redis queues (needs --redis).
    #[command(after_help = AI_ENV)]
    Worker(WorkerArgs),
    /// Read chunk streams stored in Redis (needs --redis).
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Serve actors and workflows over HTTP: JSON, SSE with resume, detached runs.
    #[command(after_help = SERVE_ENV)]
    Serve(serve::ServeArgs),
}

#[derive(clap::Args, Debug)]
struct WorkerArgs {
    /// The actor types to serve, comma-separated (default: every registered actor).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    actors: Vec<String>,
    /// How many runs at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Also serve the workflows defined in this directory's *.yaml, *.yml and *.json files,
    /// as actor types `workflows/<name>` (what `loom serve --redis` queues workflow runs to).
    #[arg(long, value_name = "DIR")]
    workflows: Option<PathBuf>,
    /// The most chunks one run may write to Redis, its start and its end included; past it
    /// the run ends with an error.
    #[arg(long, value_name = "N", default_value_t = loom_redis::DEFAULT_MAX_RUN_CHUNKS,
          value_parser = clap::value_parser!(u64).range(2..))]
    max_run_chunks: u64,
    /// The most bytes of chunk data one run may write to Redis, its result included; past it
    /// the run ends with an error.
    #[arg(long, value_name = "BYTES", default_value_t = loom_redis::DEFAULT_MAX_RUN_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_run_bytes: u64,
}

#[derive(Subcommand, Debug)]
enum StreamCommand {
    /// Replay a run's stream and follow it until its terminal chunk.
    Tail {
        /// The stream (run) id.
        id: String,
        /// Start after this Redis entry id — the chunk of `seq` N is entry `N-1`, so `3-1`
        /// starts after seq 3 — or `$` for new chunks only.
        #[arg(long, value_name = "ID")]
        from: Option<String>,
        /// Print chunks as JSON Lines on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WorkflowCommand {
    /// Run a workflow and show its steps (and, with --stream, their tokens) as they happen.
    #[command(after_help = AI_ENV)]
    Run(WorkflowRunArgs),
    /// Check a workflow definition without running it; exit 2 with the problem when bad.
    Validate {
        /// The workflow file (.yaml, .yml or .json).
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct WorkflowRunArgs {
    /// The workflow file (.yaml, .yml or .json).
    file: PathBuf,
    /// The workflow input, as JSON; `@FILE` reads it from a file, `@-` from standard input.
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// How a run is shown and bounded.
#[derive(clap::Args, Debug)]
struct OutputArgs {
    /// Show chunks as they arrive (tokens, progress, data), not only the result.
    #[arg(long)]
    stream: bool,
    /// Print chunks as JSON Lines on stdout (all of them with --stream, else the last one).
    #[arg(long)]
    json: bool,
    /// The run's deadline, e.g. `30s`, `500ms`, `10m`, `1h 30m` (a bare number is seconds),
    /// more than zero and at most a week: the same as `timeout:` in workflow files.
    #[arg(long, value_name = "DURATION", value_parser = loom_workflow::parse_timeout)]
    timeout: Option<Duration>,
}

impl OutputArgs {
    fn mode(&self) -> RenderMode {
        RenderMode {
            stream: self.stream,
            json: self.json,
        }
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            timeout: self.timeout,
            ..RunOptions::default()
        }
    }
}

#[derive(Subcommand, Debug)]
enum ActorCommand {
    /// List the registered actors.
    List,
    /// Run an actor and show its result (or, with --stream, its work as it happens).
    #[command(after_help = AI_ENV)]
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The actor type to run (see `loom actor list`).
    actor: String,
    /// The input, as JSON; `@FILE` reads it from a file, `@-` from standard input.
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
    /// Shorthand for a `prompt` field in the input.
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// An error in what the user asked for: printed on one line, exit code 2.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the async runtime: the OTLP exporter's HTTP client is a blocking one.
    // A worker or a server runs unattended: its warnings are logged unless RUST_LOG says
    // otherwise.
    let service = matches!(cli.command, Command::Worker(_) | Command::Serve(_));
    let result = telemetry::init(service).and_then(|telemetry| {
        let result = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(cli)));
        telemetry.shutdown();
        result
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            let mut chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            // An error that carries its cause's text (`upstream: <cause>`) names it once.
            chain.dedup_by(|cause, error| error.ends_with(cause.as_str()));
            say!("loom: {}", chain.join(": "));
            if err.is::<UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ai = AiService::from_env().map_err(|e| usage(e.to_string()))?;
    let offline = ai.is_offline();
    let runtime = Arc::new(local_runtime(ai));
    // Validate before any work starts, connecting to Redis included.
    let job = match check(cli.command, &runtime, cli.redis.is_some())? {
        Some(job) => job,
        None => return Ok(ExitCode::SUCCESS),
    };
    // From here a signal ends the command with 128 + its number, as it ends a run: also while
    // it connects to Redis or waits for a worker, which can take seconds.
    let mut signals = Signals::new();
    let options = loom_redis::ClientOptions {
        queue_shards: cli.queue_shards,
        max_queued: cli.max_queued,
        stream_ttl: cli
            .stream_ttl
            .unwrap_or(loom_redis::ClientOptions::default().stream_ttl),
        ..Default::default()
    };
    let prepared = prepare(cli.redis.as_deref(), options, &job, &runtime);
    let (redis, invoker) = tokio::select! {
        prepared = prepared => prepared?,
        code = signals.recv() => {
            say!("loom: stopped before anything started");
            return Ok(ExitCode::from(code));
        }
    };
    // The cancels of remote runs this process stops are sent by tasks of the client's: they
    // must reach Redis before the process exits, or those runs go on on their workers.
    let flush = redis.clone();
    let code = command(job, &runtime, invoker, redis, offline, signals).await;
    if let Some(client) = flush {
        let unsent = client.flush_cancels(CANCEL_FLUSH).await;
        if unsent > 0 {
            say!(
                "loom: the cancel did not reach Redis; if the run still goes on, its worker \
                 cancels it once it finds this caller gone (within two leases of Redis \
                 answering again)"
            );
        }
    }
    code
}

/// What `job` needs before it starts: with `--redis`, a client (connected) and the check that
/// live workers serve what it runs; and where its runs happen (this process, or workers).
async fn prepare(
    redis: Option<&str>,
    options: loom_redis::ClientOptions,
    job: &Job,
    runtime: &Arc<Runtime>,
) -> anyhow::Result<(Option<loom_redis::Client>, Arc<dyn Invoker>)> {
    let redis = match redis {
        Some(url) => Some(
            loom_redis::Client::connect_with(url, options)
                .await
                .map_err(|e| unreachable_redis(url, e))?,
        ),
        None => None,
    };
    // Where runs happen: in this process, or on workers through Redis. The local registry
    // names the actor types, so an unknown one is rejected before anything is queued.
    let invoker: Arc<dyn Invoker> = match &redis {
        Some(client) => {
            let mut actors = runtime.registry().names();
            actors.extend(job_types(job).into_iter().map(str::to_owned));
            Arc::new(client.invoker().with_actors(actors))
        }
        None => runtime.clone(),
    };
    if let Some(client) = &redis {
        check_served(client, job).await?;
    }
    Ok((redis, invoker))
}

/// A command whose input and workflow are checked.
enum Job {
    ActorRun(RunArgs, Value),
    WorkflowRun(WorkflowRunArgs, loom_workflow::Workflow, Value),
    /// With the workflows of its `--workflows`.
    Worker(WorkerArgs, Vec<loom_workflow::Workflow>),
    /// With the workflows of its `--workflows`.
    Serve(serve::ServeArgs, Vec<loom_workflow::Workflow>),
    Tail {
        id: String,
        from: Option<String>,
        json: bool,
    },
}

/// Checks what `command` reads — the actor type, the input, the workflow file — before
/// anything else happens, connecting to Redis included: bad input is a usage error (exit
/// 2) at once, whether Redis is there or not. `None` when that was the whole command
/// (`actor list`, `workflow validate`: neither needs Redis). `distributed`: runs go through
/// Redis (`--redis`).
fn check(command: Command, runtime: &Runtime, distributed: bool) -> anyhow::Result<Option<Job>> {
    Ok(Some(match command {
        Command::Actor(ActorCommand::List) => {
            for actor in runtime.registry().iter() {
                let kind = if actor.streams() {
                    "streams"
                } else {
                    "execute"
                };
                println!("{:<12} {:<8} {}", actor.name(), kind, actor.description());
            }
            return Ok(None);
        }
        Command::Actor(ActorCommand::Run(args)) => {
            check_actor(runtime, &args.actor, distributed)?;
            let input = build_input(args.input.as_deref(), args.prompt.as_deref())?;
            Job::ActorRun(args, input)
        }
        Command::Workflow(WorkflowCommand::Validate { file }) => {
            let workflow = load_workflow(&file, runtime, distributed)?;
            let steps = workflow.steps().count();
            println!(
                "{}: ok (workflow '{}', {steps} step{})",
                file.display(),
                workflow.name,
                if steps == 1 { "" } else { "s" }
            );
            return Ok(None);
        }
        Command::Workflow(WorkflowCommand::Run(args)) => {
            let workflow = load_workflow(&args.file, runtime, distributed)?;
            let input = build_input(args.input.as_deref(), None)?;
            let input = workflow
                .check_input(input)
                .map_err(|e| usage(e.to_string()))?;
            Job::WorkflowRun(args, workflow, input)
        }
        Command::Worker(args) => {
            for actor in &args.actors {
                loom_redis::validate_name(actor).map_err(|e| usage(e.to_string()))?;
                if !runtime.knows(actor) {
                    return Err(usage(format!("unknown actor type '{actor}'")));
                }
            }
            let workflows = match &args.workflows {
                Some(dir) => serve::load_workflows(dir, &|t| known(runtime, t, true))?,
                None => Vec::new(),
            };
            serve::check_no_cycle(&workflows)?;
            Job::Worker(args, workflows)
        }
        Command::Serve(args) => {
            let workflows = serve::workflows(&args, runtime, distributed)?;
            Job::Serve(args, workflows)
        }
        Command::Stream(StreamCommand::Tail { id, from, json }) => {
            loom_redis::validate_name(&id).map_err(|e| usage(e.to_string()))?;
            if let Some(from) = from.as_deref().filter(|f| *f != "$") {
                from.parse::<loom_redis::EntryId>()
                    .map_err(|e| usage(e.to_string()))?;
            }
            Job::Tail { id, from, json }
        }
    }))
}

/// The actor types `job` runs, each once (a workflow may run one type in several steps).
fn job_types(job: &Job) -> BTreeSet<&str> {
    match job {
        Job::ActorRun(args, _) => BTreeSet::from([args.actor.as_str()]),
        Job::WorkflowRun(_, workflow, _) => {
            workflow.steps().map(|s| s.actor_type.as_str()).collect()
        }
        _ => BTreeSet::new(),
    }
}

/// Waits, for at most the pickup timeout, until a live worker serves every actor type a run
/// through Redis needs (a workflow run here needs each of its steps' types); then refuses it
/// (exit 2) rather than queueing a request nobody takes and reporting `worker_lost` — so a
/// worker started at the same time is waited for, and a forgotten one is named.
async fn check_served(client: &loom_redis::Client, job: &Job) -> anyhow::Result<()> {
    let within = client.options().pickup_timeout;
    let waiting = |missing: &str| {
        say!("loom: no live worker serves '{missing}' yet; waiting up to {within:?} for one");
    };
    match await_served(client, &job_types(job), within, waiting).await {
        Ok(()) => Ok(()),
        Err(Unserved::Redis(e)) => Err(redis_error(e)),
        Err(unserved) => Err(usage(unserved.to_string())),
    }
}

/// Why a run through Redis is not queued: no live worker serves its type on the caller's
/// queues, or Redis could not say.
#[derive(Debug, thiserror::Error)]
enum Unserved {
    /// Workers serve it on other queues than this caller writes to: a setting to change, not
    /// a worker still starting.
    #[error(
        "no live worker serves actor type '{actor}' on this caller's queues; live workers serve \
         it with --queue-shards {}, this caller uses {own}: give them the same number (or \
         LOOM_QUEUE_SHARDS)",
        shards.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ")
    )]
    OtherShards {
        actor: String,
        shards: BTreeSet<u16>,
        own: u16,
    },
    /// None does, for the whole pickup timeout.
    #[error(
        "no live worker serves actor type '{actor}' (start one: {})",
        start_one(actor)
    )]
    Nobody { actor: String },
    /// Redis did not answer.
    #[error(transparent)]
    Redis(loom_redis::Error),
}

/// The command that starts a worker serving `actor`.
fn start_one(actor: &str) -> &'static str {
    if actor.starts_with(loom_workflow::WORKFLOW_ACTOR_PREFIX) {
        "loom worker --redis URL --workflows DIR, DIR holding the workflow's file"
    } else {
        "loom worker --redis URL"
    }
}

/// Waits, for at most `within`, until a live worker serves each of `needed` on `client`'s
/// queues; `waiting` is told, once, of the first that is not served yet.
async fn await_served(
    client: &loom_redis::Client,
    needed: &BTreeSet<&str>,
    within: Duration,
    waiting: impl Fn(&str),
) -> Result<(), Unserved> {
    if needed.is_empty() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut told = false;
    let own = client.options().queue_shards;
    loop {
        // The queue-shard counts live workers serve each type on: one look decides, for every
        // type needed, whether it is served on this caller's queues and, if not, why.
        let served = through_outage(client, || client.served())
            .await
            .map_err(Unserved::Redis)?;
        let Some((missing, shards)) = needed
            .iter()
            .map(|&actor| (actor, served.get(actor).cloned().unwrap_or_default()))
            .find(|(_, shards)| !shards.contains(&own))
        else {
            return Ok(());
        };
        let actor = missing.to_owned();
        if !shards.is_empty() {
            return Err(Unserved::OtherShards { actor, shards, own });
        }
        if !told {
            waiting(missing);
            told = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Unserved::Nobody { actor });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `op` (a read) again while Redis does not answer — a restart, a cluster's failover —
/// for up to the client's `outage_timeout`, as a reader of a run waits; says so once.
async fn through_outage<T, Fut>(
    client: &loom_redis::Client,
    mut op: impl FnMut() -> Fut,
) -> Result<T, loom_redis::Error>
where
    Fut: std::future::Future<Output = Result<T, loom_redis::Error>>,
{
    let wait = client.options().outage_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match op().await {
            Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                if !told {
                    let e = client.explain(e).await;
                    say!("loom: Redis does not answer ({e}); waiting up to {wait:?} for it");
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(client.explain(e).await),
            done => return done,
        }
    }
}

/// Runs `job`; `invoker` runs actors locally or, with `redis`, on workers. `signals` stop a
/// run or a reader (a worker and a server hear their own).
async fn command(
    job: Job,
    runtime: &Arc<Runtime>,
    invoker: Arc<dyn Invoker>,
    redis: Option<loom_redis::Client>,
    offline: bool,
    signals: Signals,
) -> anyhow::Result<ExitCode> {
    match job {
        Job::ActorRun(args, input) => {
            // With `--json`, stderr is for errors only (the offline text says what it is).
            if offline && redis.is_none() && args.actor == CHAT_AGENT && !args.output.mode().json {
                announce_offline();
            }
            let mut options = args.output.options();
            // A workflow a worker serves ends itself at its own deadline.
            options.timeout = options
                .timeout
                .or_else(|| loom_workflow::default_timeout(&args.actor));
            // A run on a worker can be followed from elsewhere: a person is told its id once
            // it is queued (with `--json` the `start` chunk says it).
            let told = (redis.is_some() && !args.output.mode().json).then(loom_core::new_run_id);
            if let Some(id) = &told {
                options.run_id = Some(id.clone());
            }
            let stream = invoker.stream(&args.actor, input, options).await?;
            if let Some(id) = told {
                say!("loom: run {id} (`loom stream tail {id}` follows it from elsewhere)");
            }
            Ok(follow(stream, signals, args.output.mode(), Stop::Cancel).await)
        }
        Job::WorkflowRun(args, workflow, input) => {
            if offline
                && redis.is_none()
                && !args.output.mode().json
                && workflow.steps().any(|s| s.actor_type == CHAT_AGENT)
            {
                announce_offline();
            }
            let executor = WorkflowExecutor::new(invoker);
            let stream = executor.stream_with(workflow, input, args.output.options());
            Ok(follow(stream, signals, args.output.mode(), Stop::Cancel).await)
        }
        Job::Worker(args, workflows) => {
            let client =
                redis.ok_or_else(|| usage("loom worker needs --redis URL (or LOOM_REDIS_URL)"))?;
            // Workflow steps run on this worker's own runtime; a step that is a workflow
            // itself is queued like any caller's run.
            let mut registry = runtime.registry().clone();
            let workflow_actors: BTreeSet<String> = workflows
                .iter()
                .map(|w| format!("{}{}", loom_workflow::WORKFLOW_ACTOR_PREFIX, w.name))
                .collect();
            let steps = Arc::new(WorkerSteps {
                local: runtime.clone(),
                client: client.clone(),
                serves: workflow_actors.clone(),
                slots: OnceLock::new(),
            });
            let executor = WorkflowExecutor::new(Arc::clone(&steps) as Arc<dyn Invoker>);
            for workflow in workflows {
                registry.register(executor.worker_actor(workflow));
            }
            let mut served = if args.actors.is_empty() {
                runtime.registry().names()
            } else {
                args.actors.clone()
            };
            served.extend(workflow_actors);
            // A second signal hands the runs still going back to other workers at once.
            let hand_back_now = loom_core::CancellationToken::new();
            let now = hand_back_now.clone();
            let grace = loom_redis::WorkerOptions::default().shutdown_grace;
            let first = shutdown_then(move || {
                say!("loom: handing the runs in progress back to other workers");
                now.cancel();
            });
            let shutdown = async move {
                first.await;
                say!(
                    "loom: stopping; runs in progress get up to {grace:?} to finish, then go back \
                     to the queue (Ctrl-C again: hand them back now)"
                );
            };
            say!(
                "loom: worker serving {} (concurrency {}); Ctrl-C or SIGTERM stops it{}",
                served.join(", "),
                args.concurrency,
                if offline && served.iter().any(|a| a == "chat-agent") {
                    "; chat-agent uses the offline provider"
                } else {
                    ""
                }
            );
            let actors = if args.actors.is_empty() {
                Vec::new()
            } else {
                served.clone()
            };
            let options = loom_redis::WorkerOptions {
                actors,
                max_run_chunks: args.max_run_chunks,
                max_run_bytes: args.max_run_bytes,
                concurrency: usize::from(args.concurrency),
                hand_back_now: Some(hand_back_now),
                ..Default::default()
            };
            let worker_runtime = runtime.with_registry(registry);
            let worker = loom_redis::Worker::new(client, worker_runtime, options);
            // Its workflows' runs, created before it, lend their slots while they wait.
            let _ = steps.slots.set(worker.slots());
            worker.run(shutdown).await.map_err(redis_error)?;
            say!("loom: worker stopped");
            Ok(ExitCode::SUCCESS)
        }
        Job::Serve(args, workflows) => {
            // A second signal stops at once, without waiting out the disconnect graces.
            let shutdown = shutdown_then(|| {
                say!("loom: stopped without waiting for clients to resume");
                std::process::exit(130);
            });
            serve::serve(args, workflows, runtime, redis, offline, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Job::Tail { id, from, json } => {
            let client = redis
                .ok_or_else(|| usage("loom stream tail needs --redis URL (or LOOM_REDIS_URL)"))?;
            if let Some(code) = ended_before(&client, &id, from.as_deref()).await? {
                return Ok(code);
            }
            let stream = through_outage(&client, || client.tail(&id, from.as_deref()))
                .await
                .map_err(|e| match e {
                    loom_redis::Error::StreamNotFound(_) => usage(format!(
                        "{e} (a run's stream exists from its first chunk until an hour after \
                         its end; a workflow run by `loom workflow run` has none: its caller \
                         follows it, and each remote step has a stream of its own)"
                    )),
                    e => redis_error(e),
                })?;
            // The run is not this reader's to stop: a signal only stops the reading.
            let mode = RenderMode { stream: true, json };
            Ok(follow(stream, signals, mode, Stop::Leave).await)
        }
    }
}

/// When `from` is at or past the terminal chunk of finished run `id` (`$`, or the terminal's
/// entry), no chunk follows it: says how the run ended, and gives that outcome's exit code.
async fn ended_before(
    client: &loom_redis::Client,
    id: &str,
    from: Option<&str>,
) -> anyhow::Result<Option<ExitCode>> {
    let Some(from) = from else { return Ok(None) };
    let record = through_outage(client, || client.run_record(id))
        .await
        .map_err(redis_error)?;
    let Some(terminal) = record.as_ref().and_then(|r| r.terminal()) else {
        return Ok(None);
    };
    let end = loom_redis::EntryId::of_seq(terminal.seq);
    let at_end = from == "$"
        || from
            .parse()
            .is_ok_and(|from: loom_redis::EntryId| from >= end);
    if !at_end {
        return Ok(None);
    }
    let (outcome, code) = match &terminal.error {
        Some(error) => (format!("error/{}", error.code.as_str()), ExitCode::FAILURE),
        None => ("complete".to_owned(), ExitCode::SUCCESS),
    };
    say!(
        "loom: the run already ended ({outcome}) at seq {}: nothing follows that entry",
        terminal.seq
    );
    Ok(Some(code))
}

/// Bad names, bad URLs and unknown streams are the user's to fix (exit 2); the rest is not.
fn redis_error(err: loom_redis::Error) -> anyhow::Error {
    if err.is_bad_input() || err.code() == ErrorCode::NotFound {
        usage(err.to_string())
    } else {
        anyhow::Error::new(err)
    }
}

/// A failure to connect to the Redis at `url` (a list of nodes' URLs, or one), named with
/// the address it tried — without a password it may hold — and where that address came
/// from; bad input stays a usage error.
fn unreachable_redis(url: &str, err: loom_redis::Error) -> anyhow::Error {
    if err.is_bad_input() {
        return redis_error(err);
    }
    let redacted: Vec<String> = url
        .split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://…@{}", &one[..scheme], &one[at + 1..])
            }
            _ => one.to_owned(),
        })
        .collect();
    anyhow::Error::new(err).context(format!(
        "cannot connect to Redis at {} (from --redis or LOOM_REDIS_URL; is redis-server running there?)",
        redacted.join(",")
    ))
}

/// A future that resolves on the first Ctrl-C or SIGTERM ([`shutdown_signal`]) and from then
/// on runs `second` on the next one, while the graceful stop goes on.
fn shutdown_then(second: impl FnOnce() + Send + 'static) -> impl std::future::Future<Output = ()> {
    let first = shutdown_signal();
    async move {
        first.await;
        let again = shutdown_signal();
        tokio::spawn(async move {
            again.await;
            second();
        });
    }
}

/// A future that resolves on Ctrl-C or SIGTERM: what stops a worker. The handlers are
/// installed when this is called, not when the future is first polled, so a signal that
/// comes right after the worker says it is serving stops it cleanly instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (interrupt, term) {
                (Ok(mut interrupt), Ok(mut term)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Rejects an actor type that would be an unsafe Redis key or that no worker can run (every
/// worker runs this binary's registry, and through Redis the workflows of its `--workflows`).
fn check_actor(runtime: &Runtime, actor: &str, distributed: bool) -> anyhow::Result<()> {
    loom_redis::validate_name(actor).map_err(|e| usage(e.to_string()))?;
    if !known(runtime, actor, distributed) {
        let known = runtime.registry().names().join(", ");
        let remote = if distributed {
            ", or workflows/<name> of a worker's --workflows"
        } else if actor
            .strip_prefix(loom_workflow::WORKFLOW_ACTOR_PREFIX)
            .is_some_and(loom_workflow::is_workflow_name)
        {
            "; workflows/<name> runs on workers: add --redis URL"
        } else {
            ""
        };
        return Err(usage(format!(
            "unknown actor type '{actor}' (known: {known}{remote})"
        )));
    }
    Ok(())
}

/// Whether `actor` names an actor this command can run: one of this build's, or, through
/// Redis, a workflow a worker serves (`workflows/<name>`; whether one does is asked of Redis
/// before the run is queued).
fn known(runtime: &Runtime, actor: &str, distributed: bool) -> bool {
    runtime.knows(actor)
        || (distributed
            && actor
                .strip_prefix(loom_workflow::WORKFLOW_ACTOR_PREFIX)
                .is_some_and(loom_workflow::is_workflow_name))
}

/// A worker's workflow steps: its own actors in-process, and a step that is a workflow
/// (`workflows/<name>`) through Redis, served by whichever worker serves it (this one too).
/// While a run waits for a workflow it called, it lends its slot to the worker (`slots`, set
/// once the worker exists): workflows calling workflows never hold every slot while the runs
/// they called wait for one.
struct WorkerSteps {
    local: Arc<Runtime>,
    client: loom_redis::Client,
    /// The workflows this worker serves (`workflows/<name>`): a call of one needs no other
    /// live worker, as this one takes it (into the slot the caller lends, also while it stops).
    serves: BTreeSet<String>,
    slots: OnceLock<loom_redis::Slots>,
}

#[loom_core::async_trait]
impl Invoker for WorkerSteps {
    async fn stream(
        &self,
        actor_type: &str,
        input: Value,
        options: RunOptions,
    ) -> Result<ChunkStream, ActorError> {
        if actor_type.starts_with(loom_workflow::WORKFLOW_ACTOR_PREFIX) {
            let loan = self.slots.get().map(loom_redis::Slots::lend);
            // As a caller's run is: refused when no live worker serves it (within the pickup
            // timeout), not queued for nobody and ended `worker_lost`, which a retry repeats.
            let needed = match self.serves.contains(actor_type) {
                true => BTreeSet::new(),
                false => BTreeSet::from([actor_type]),
            };
            // No longer than the step may take.
            let pickup = self.client.options().pickup_timeout;
            let within = options.timeout.map_or(pickup, |t| t.min(pickup));
            await_served(&self.client, &needed, within, |_| {})
                .await
                .map_err(|e| match e {
                    Unserved::Redis(e) => ActorError::from(e),
                    unserved => ActorError::new(ErrorCode::NotFound, unserved.to_string()),
                })?;
            let called =
                Invoker::stream(&self.client.invoker(), actor_type, input, options).await?;
            Ok(called.hold(loan))
        } else {
            Invoker::stream(self.local.as_ref(), actor_type, input, options).await
        }
    }

    fn knows(&self, actor_type: &str) -> bool {
        known(&self.local, actor_type, true)
    }
}

/// The in-process runtime: the built-in actors plus `chat-agent`, with the AI service.
fn local_runtime(ai: AiService) -> Runtime {
    let mut registry = Registry::with_builtins();
    loom_ai::register(&mut registry);
    let mut extensions = Extensions::new();
    extensions.insert(ai);
    Runtime::new(registry, extensions)
}

fn announce_offline() {
    say!(
        "loom: using the offline provider (set OPENAI_BASE_URL or OPENAI_API_KEY for a real model)"
    );
}

/// Loads and checks a workflow file; any problem is a usage error (exit 2).
fn load_workflow(
    file: &std::path::Path,
    runtime: &Runtime,
    distributed: bool,
) -> anyhow::Result<loom_workflow::Workflow> {
    loom_workflow::load(file, &|t| known(runtime, t, distributed)).map_err(|e| usage(e.to_string()))
}

/// Merges `--input` and `--prompt` into the actor's input; bad JSON, or a file that cannot
/// be read, is a usage error. `@FILE` reads the JSON from a file and `@-` from standard input
/// (as curl's `-d`): one argument holds at most 128 KiB on Linux.
fn build_input(input: Option<&str>, prompt: Option<&str>) -> anyhow::Result<Value> {
    let read = |path: &str| -> anyhow::Result<Vec<u8>> {
        let source: std::io::Result<Box<dyn std::io::Read>> = if path == "-" {
            Ok(Box::new(std::io::stdin()))
        } else {
            std::fs::File::open(path).map(|f| Box::new(f) as Box<dyn std::io::Read>)
        };
        // Read through the limit, not to the end: `@/dev/zero` would never end.
        let mut bytes = Vec::new();
        source
            .and_then(|s| {
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(s, MAX_INPUT_BYTES + 1),
                    &mut bytes,
                )
            })
            .map_err(|e| usage(format!("--input @{path}: {e}")))?;
        if bytes.len() as u64 > MAX_INPUT_BYTES {
            bail!(usage(format!(
                "--input @{path}: more than {} MiB; an input may have at most that",
                MAX_INPUT_BYTES >> 20
            )));
        }
        Ok(bytes)
    };
    let mut value = match input {
        Some(text) => {
            let bytes = match text.strip_prefix('@') {
                Some(path) => std::borrow::Cow::Owned(read(path)?),
                None => std::borrow::Cow::Borrowed(text.as_bytes()),
            };
            serde_json::from_slice(&bytes)
                .map_err(|e| usage(format!("--input is not valid JSON: {e}")))?
        }
        None => Value::Object(Default::default()),
    };
    if let Some(prompt) = prompt {
        match &mut value {
            Value::Object(map) => {
                map.insert("prompt".into(), Value::String(prompt.into()));
            }
            _ => bail!(usage("--prompt needs --input to be a JSON object")),
        }
    }
    Ok(value)
}

/// The largest `--input` read from a file or stdin: far above any actor's input (a long
/// conversation is a few MiB), and a bound on what a mistyped path (`@/dev/zero`) can take.
const MAX_INPUT_BYTES: u64 = 64 << 20;

/// What a signal does to a run being followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Cancel it, and still wait (at most [`CANCEL_GRACE`]) for its terminal chunk.
    Cancel,
    /// Leave it running and stop reading (`stream tail`: the run is not the reader's).
    Leave,
}

/// The exit code after stdout's reader went away: 128 + `SIGPIPE`'s number, as a shell
/// reports a writer killed by it.
const SIGPIPE_EXIT: u8 = 141;

/// How long a stopped run's last output (its terminal chunk in `--json`) waits for stdout's
/// reader before the command exits without it.
const STDOUT_GRACE: Duration = Duration::from_secs(1);

/// Shows a run until its terminal chunk; a signal (Ctrl-C, `SIGTERM`, `SIGHUP`) or a closed
/// stdout cancels it and still waits for (and shows on stderr) the terminal chunk, or with
/// [`Stop::Leave`] stops at once. Returns the exit code: 128 + the signal's number after one
/// (141 after stdout closed; 1 after stdout failed otherwise, said on stderr).
async fn follow(
    mut stream: ChunkStream,
    mut signals: Signals,
    mode: RenderMode,
    stop: Stop,
) -> ExitCode {
    let mut renderer = Renderer::new(mode);
    let writer = StdoutWriter::start();
    // What the last chunk printed, written before the next chunk is read: a reader that
    // stops reading holds the run back — while a signal is still heard.
    let mut unsent: Option<render::Output> = None;
    // Set once, at the first signal: chunks that keep coming do not push it back.
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let mut signalled: Option<u8> = None;
    let mut terminal: Option<StreamChunk> = None;
    loop {
        if unsent.is_none() {
            unsent = renderer.take_output();
        }
        let code = tokio::select! {
            permit = writer.reserve(), if unsent.is_some() => {
                if let (Some(permit), Some(text)) = (permit, unsent.take()) {
                    permit.send(text);
                }
                continue;
            }
            chunk = stream.next(), if unsent.is_none() || signalled.is_some() => {
                let Some(chunk) = chunk else { break };
                renderer.chunk(&chunk);
                if chunk.is_terminal() {
                    terminal = Some(chunk);
                    break;
                }
                // Nobody reads the output any more (`| head`): stopped as by the SIGPIPE a
                // writer that does not ignore it dies of, rather than run (and pay for
                // tokens) unread.
                if signalled.is_some() {
                    continue;
                }
                match stdout_failure() {
                    Some(code) => code,
                    None => continue,
                }
            }
            code = signals.recv(), if signalled.is_none() => code,
            _ = sleep_until_some(give_up_at) => break,
        };
        // Stopped: from now on chunks are read without waiting for stdout's reader, so the
        // terminal chunk is read (and shown on stderr) at once even when it has stalled.
        signalled = Some(code);
        if stop == Stop::Leave {
            break;
        }
        give_up_at = Some(tokio::time::Instant::now() + CANCEL_GRACE);
        stream.cancel();
    }
    let rest = renderer.finish(
        terminal.as_ref(),
        stop == Stop::Leave && signalled.is_some(),
    );
    // The result, and whatever the reader has not taken yet: waited for as long as it
    // takes, but only a moment once stopped (its stderr lines shown at once then).
    let rest = unsent.into_iter().chain(rest).reduce(|mut a, b| {
        a.append(b);
        a
    });
    if signalled.is_some() {
        let rest = rest.map(render::Output::stderr_now);
        let _ = tokio::time::timeout(STDOUT_GRACE, writer.finish(rest)).await;
    } else {
        tokio::select! {
            () = writer.finish(rest) => signalled = stdout_failure(),
            code = signals.recv() => signalled = Some(code),
        }
    }
    match (signalled, terminal.map(|c| c.kind)) {
        (Some(code), _) => ExitCode::from(code),
        (None, Some(ChunkType::Complete)) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// The exit code once stdout failed: 141 when its reader went away (as a shell reports a
/// writer killed by `SIGPIPE`), else 1 with the reason on stderr (a full disk must not pass
/// for a result written). Called once per run followed.
fn stdout_failure() -> Option<u8> {
    let err = render::stdout_error()?;
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        return Some(SIGPIPE_EXIT);
    }
    say!("loom: cannot write the output to stdout: {err}");
    Some(1)
}

/// Resolves at `deadline`, or never when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The signals that stop a run a command follows, registered when made: one that arrives
/// before the run is queued, or while it is, is seen once the run is followed, instead of
/// killing the process with the run left going.
struct Signals {
    #[cfg(unix)]
    streams: Vec<(tokio::signal::unix::Signal, u8)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let streams = [
                (SignalKind::interrupt(), 130),
                (SignalKind::terminate(), 143),
                (SignalKind::hangup(), 129),
            ]
            .into_iter()
            .filter_map(|(kind, code)| signal(kind).ok().map(|s| (s, code)))
            .collect();
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal, as the exit code it stands for (128 + its number).
    async fn recv(&mut self) -> u8 {
        #[cfg(unix)]
        {
            if self.streams.is_empty() {
                // None could be registered: no signal will come.
                return std::future::pending().await;
            }
            let waits = self.streams.iter_mut().map(|(signal, code)| {
                let code = *code;
                Box::pin(async move {
                    signal.recv().await;
                    code
                })
            });
            futures::future::select_all(waits).await.0
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }
}
