//! `sockfleet-server`: gRPC ingest, JSON API and dashboard on one port.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sockfleet_server::config::{ServerArgs, ServerConfig};
use sockfleet_server::startup::Application;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match ServerConfig::load(ServerArgs::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sockfleet-server: {error:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sockfleet-server: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sockfleet-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let local_agent = config.local_agent;
    let app = Application::build(config).await?;
    let address = app.local_addr()?;
    // One plain line on stdout that scripts (and the tests) can read to learn the bound port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "sockfleet-server listening on http://{address}")
        .context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);
    tracing::info!(%address, local_agent, "serving gRPC, API and dashboard");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
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
