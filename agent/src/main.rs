//! `sockfleet-agent`: prints a snapshot (`--once`) or streams reports to a server (`--server URL`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use sockfleet_agent::config::{AgentArgs, MAX_LABELS};
use sockfleet_agent::identity::HostIdentity;
use sockfleet_agent::run::{AgentSettings, run_agent, snapshot_once};
use sockfleet_agent::stream::SpoolSettings;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    init_logging(&args.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sockfleet-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sockfleet-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let settings = settings_from(&args)?;
    if args.once {
        let snapshot = snapshot_once(&settings).await?;
        let json = serde_json::to_string_pretty(&snapshot).context("cannot encode the snapshot")?;
        println!("{json}");
        return Ok(());
    }
    let Some(server) = args.server else {
        bail!(
            "nothing to do: pass --server URL to stream to a server, or --once to print one snapshot"
        );
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    run_agent(settings, server, shutdown).await?;
    Ok(())
}

fn settings_from(args: &AgentArgs) -> anyhow::Result<AgentSettings> {
    let labels = args.label_map();
    if labels.len() > MAX_LABELS {
        bail!(
            "{} labels given; at most {MAX_LABELS} are allowed",
            labels.len()
        );
    }
    Ok(AgentSettings {
        identity: HostIdentity::detect(args.host_id.as_deref())?,
        labels,
        interval: args.interval,
        collector: args.collector,
        netns: args.netns.clone(),
        backlog: args.backlog as usize,
        backlog_memory: usize::try_from(args.backlog_memory).unwrap_or(usize::MAX),
        spool: args.spool_dir.clone().map(|dir| SpoolSettings {
            dir,
            max_bytes: args.spool_max,
        }),
        top_n: args.top_n,
        all_namespaces: args.all_namespaces(),
        max_namespaces: args.max_namespaces as usize,
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
    }
    shutdown.cancel();
}

fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
