//! `loom serve`: the HTTP server of `loom-server`, with the workflows of a directory: on this
//! process's runtime, or with `--redis` in front of the workers of that Redis (the server then
//! runs nothing itself). Ctrl-C or SIGTERM shuts it down gracefully (exit 0).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use loom_core::{Invoker, Runtime};
use loom_server::{ServerConfig, ServerState};
use loom_workflow::Workflow;

/// The address `loom serve` listens on by default.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = DEFAULT_ADDR, value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Serve the workflows defined in this directory's *.yaml, *.yml and *.json files.
    #[arg(long, value_name = "DIR")]
    workflows: Option<PathBuf>,
    /// Let browsers on this origin call the API (repeat for several; `*` for any). CORS is
    /// off without it.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// A host name to answer to when listening on loopback, besides the loopback ones (a
    /// reverse proxy that passes its own `Host` on; repeat for several).
    #[arg(long = "allow-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
}

/// The workflows of `args.workflows`, checked against `runtime`'s actor types; in front of
/// workers (`distributed`) a step's actor type is the workers' to know.
pub(crate) fn workflows(
    args: &ServeArgs,
    runtime: &Runtime,
    distributed: bool,
) -> anyhow::Result<Vec<Workflow>> {
    match &args.workflows {
        Some(dir) if distributed => load_workflows(dir, &|_| true),
        Some(dir) => load_workflows(dir, &|t| runtime.knows(t)),
        None => Ok(Vec::new()),
    }
}

/// Serves `runtime`'s actors and `workflows` (see [`workflows`]) until Ctrl-C or SIGTERM;
/// with `redis`, serves the runs of that Redis's workers instead.
pub(crate) async fn serve(
    args: ServeArgs,
    workflows: Vec<Workflow>,
    runtime: &Runtime,
    redis: Option<loom_redis::Client>,
    offline: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr().context("no local address")?;
    // The key comes from the environment only, so it never shows in `ps` or shell history.
    let api_key = std::env::var("LOOM_API_KEY").ok().filter(|k| !k.is_empty());
    let runs_on = if redis.is_some() {
        "runs on the workers of --redis".to_owned()
    } else {
        format!("{} workflows", workflows.len())
    };
    say!(
        "loom: serving on http://{addr} ({runs_on}{}{}); Ctrl-C or SIGTERM stops it",
        if api_key.is_some() {
            ", API key required"
        } else {
            ""
        },
        if offline && redis.is_none() {
            "; chat-agent uses the offline provider"
        } else {
            ""
        }
    );
    let config = ServerConfig {
        api_key,
        cors_origins: args.cors_origins,
        allowed_hosts: args.allowed_hosts,
        ..ServerConfig::default()
    };
    let state = match redis {
        Some(client) => {
            tokio::spawn(warn_of_other_queue_shards(client.clone()));
            ServerState::distributed(client, runtime.registry().clone(), workflows, config)
        }
        None => ServerState::new(runtime.clone(), workflows, config),
    };
    loom_server::serve(listener, state, shutdown)
        .await
        .context("the server failed")?;
    say!("loom: server stopped");
    Ok(())
}

/// Refuses workflows that call each other in a loop (`workflows/<name>` steps): each run would
/// queue the next until every worker's slots were taken. A step naming a workflow not among
/// `workflows` is another worker's to serve.
pub(crate) fn check_no_cycle(workflows: &[Workflow]) -> anyhow::Result<()> {
    let calls = |workflow: &Workflow| -> Vec<String> {
        workflow
            .steps()
            .filter_map(|s| {
                s.actor_type
                    .strip_prefix(loom_workflow::WORKFLOW_ACTOR_PREFIX)
            })
            .filter(|name| workflows.iter().any(|w| w.name == *name))
            .map(str::to_owned)
            .collect()
    };
    // Depth-first from each workflow, along the calls, with the path so far; a workflow
    // whose calls were all followed once (`done`) has no loop past it.
    fn walk(
        name: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        calls: &dyn Fn(&str) -> Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == name) {
            let mut cycle = path[at..].to_vec();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        path.push(name.to_owned());
        for next in calls(name) {
            if let Some(cycle) = walk(&next, path, done, calls) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(name.to_owned());
        None
    }
    let calls_of = |name: &str| {
        workflows
            .iter()
            .find(|w| w.name == name)
            .map(calls)
            .unwrap_or_default()
    };
    let mut done = BTreeSet::new();
    for workflow in workflows {
        if let Some(cycle) = walk(&workflow.name, &mut Vec::new(), &mut done, &calls_of) {
            return Err(crate::usage(format!(
                "workflows call each other in a loop: {}",
                cycle.join(" → ")
            )));
        }
    }
    Ok(())
}

/// Every workflow definition in `dir`, in file-name order; a bad one or two with one name is
/// a usage error.
/// Step actor types are checked with `knows`.
pub(crate) fn load_workflows(
    dir: &Path,
    knows: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<Workflow>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| crate::usage(format!("cannot read --workflows {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let mut workflows: Vec<Workflow> = Vec::new();
    for file in files {
        let workflow =
            loom_workflow::load(&file, knows).map_err(|e| crate::usage(e.to_string()))?;
        if workflows.iter().any(|w| w.name == workflow.name) {
            return Err(crate::usage(format!(
                "{}: a workflow named '{}' is already loaded",
                file.display(),
                workflow.name
            )));
        }
        workflows.push(workflow);
    }
    Ok(workflows)
}

/// Says on stderr when the live workers serve actor types only on other numbers of queue
/// shards than `client`'s: every run this server starts of those types would be refused
/// (`404`), while its health check says it is fine. Workers that start later are not seen
/// here; a request then says the same. Redis failing or slow to answer (2 s) says nothing:
/// the requests say it.
async fn warn_of_other_queue_shards(client: loom_redis::Client) {
    let own = client.options().queue_shards;
    let Ok(Ok(served)) = tokio::time::timeout(Duration::from_secs(2), client.served()).await else {
        return;
    };
    let (mut types, mut counts) = (Vec::new(), BTreeSet::new());
    for (actor, shards) in served {
        if !shards.contains(&own) {
            types.push(actor);
            counts.extend(shards);
        }
    }
    if !types.is_empty() {
        let counts: Vec<String> = counts.iter().map(u16::to_string).collect();
        say!(
            "loom: warning: live workers serve {} with --queue-shards {}, this server uses {own}: \
             runs of those types are refused until both use the same number (or LOOM_QUEUE_SHARDS)",
            types.join(", "),
            counts.join(" or ")
        );
    }
}
