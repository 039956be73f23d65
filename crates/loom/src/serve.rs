//! `loom serve`: the HTTP server of `loom-server` on this process's runtime, with the
//! workflows of a directory. Ctrl-C or SIGTERM shuts it down gracefully (exit 0).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
}

/// Serves `runtime`'s actors and the workflows of `args` until Ctrl-C or SIGTERM.
pub(crate) async fn serve(
    args: ServeArgs,
    runtime: &Runtime,
    offline: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let workflows = match &args.workflows {
        Some(dir) => load_workflows(dir, runtime)?,
        None => Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr().context("no local address")?;
    // The key comes from the environment only, so it never shows in `ps` or shell history.
    let api_key = std::env::var("LOOM_API_KEY").ok().filter(|k| !k.is_empty());
    eprintln!(
        "loom: serving on http://{addr} ({} workflows{}{}); Ctrl-C or SIGTERM stops it",
        workflows.len(),
        if api_key.is_some() {
            ", API key required"
        } else {
            ""
        },
        if offline {
            "; chat-agent uses the offline provider"
        } else {
            ""
        }
    );
    let config = ServerConfig {
        api_key,
        cors_origins: args.cors_origins,
        ..ServerConfig::default()
    };
    let state = ServerState::new(runtime.clone(), workflows, config);
    loom_server::serve(listener, state, shutdown)
        .await
        .context("the server failed")?;
    eprintln!("loom: server stopped");
    Ok(())
}

/// Every workflow definition in `dir`, in file-name order; a bad one or two with one name is
/// a usage error.
fn load_workflows(dir: &Path, runtime: &Runtime) -> anyhow::Result<Vec<Workflow>> {
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
        let workflow = loom_workflow::load(&file, &|t| runtime.knows(t))
            .map_err(|e| crate::usage(e.to_string()))?;
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
