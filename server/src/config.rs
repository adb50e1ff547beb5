//! The server's configuration: built-in defaults, then a TOML file, then environment variables and
//! flags, validated once at start with messages that name the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

use crate::alerts::config::{AlertingConfig, AlertsFile, DeliveryFile, WebhookFile};
use crate::ingest::BatchSettings;

/// Address the server listens on when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Collects TCP socket-state reports from sockfleet agents, stores them and serves the fleet's view:
/// gRPC ingest, JSON API, dashboard and health checks, all on one port.
///
/// Settings come from built-in defaults, then --config FILE, then SOCKFLEET_* environment variables,
/// then flags (later wins).
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "sockfleet-server", version, about, long_about)]
pub struct ServerArgs {
    /// Address for gRPC, HTTP API and dashboard [default: 127.0.0.1:7070].
    #[arg(long, env = "SOCKFLEET_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// postgres://USER@HOST/DB or sqlite://PATH [default: SQLite file in the data directory].
    #[arg(long, env = "SOCKFLEET_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Directory for the embedded SQLite database [default: $XDG_DATA_HOME/sockfleet,
    /// ~/.local/share/sockfleet, or ./sockfleet-data].
    #[arg(long, env = "SOCKFLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// TOML configuration file (see deploy/server.example.toml).
    #[arg(long, env = "SOCKFLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also run an agent for this host inside the server, so the dashboard shows it at once.
    #[arg(long, env = "SOCKFLEET_LOCAL_AGENT")]
    pub local_agent: bool,

    /// Tell every agent to collect at this period (e.g. 10s) instead of its own setting.
    #[arg(long, env = "SOCKFLEET_AGENT_INTERVAL", value_name = "DURATION", value_parser = parse_agent_interval)]
    pub agent_interval: Option<Duration>,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive) [default: info].
    #[arg(long, env = "SOCKFLEET_LOG")]
    pub log: Option<String>,
}

/// The TOML file's contents; every key is optional and unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    local_agent: Option<bool>,
    agent_interval: Option<String>,
    log: Option<String>,
    #[serde(default)]
    ingest: IngestFileConfig,
    #[serde(default)]
    alerts: AlertsFile,
    #[serde(default)]
    webhooks: Vec<WebhookFile>,
    #[serde(default)]
    delivery: DeliveryFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestFileConfig {
    max_batch: Option<usize>,
    batch_delay: Option<String>,
    queue_capacity: Option<usize>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Directory that must exist for the database (the SQLite file's folder), if any.
    pub data_dir: Option<PathBuf>,
    pub local_agent: bool,
    pub agent_interval: Option<Duration>,
    pub batch: BatchSettings,
    pub log: String,
    /// Rules, webhooks and delivery settings.
    pub alerting: Arc<AlertingConfig>,
}

impl ServerConfig {
    /// Merges defaults, the file named by `--config` and the flags/environment, and validates the result.
    pub fn load(args: ServerArgs) -> anyhow::Result<ServerConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = match args.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN.parse().context("built-in listen address")?,
        };
        let agent_interval = match (args.agent_interval, file.agent_interval.as_deref()) {
            (Some(interval), _) => Some(interval),
            (None, Some(raw)) => Some(
                parse_agent_interval(raw).map_err(|e| anyhow::anyhow!("agent_interval: {e}"))?,
            ),
            (None, None) => None,
        };
        let (database_url, data_dir) = match args.database_url.or(file.database_url) {
            Some(url) => {
                let folder = sqlite_folder(&url);
                (url, folder)
            }
            None => {
                let dir = args
                    .data_dir
                    .or(file.data_dir)
                    .unwrap_or_else(default_data_dir);
                let url = format!("sqlite://{}", dir.join("sockfleet.db").display());
                (url, Some(dir))
            }
        };
        let batch = batch_settings(&file.ingest)?;
        let alerting = AlertingConfig::from_files(
            file.alerts,
            file.webhooks,
            file.delivery,
            args.config.as_deref().and_then(Path::parent),
        )?;
        Ok(ServerConfig {
            listen,
            database_url,
            data_dir,
            local_agent: args.local_agent || file.local_agent.unwrap_or(false),
            agent_interval,
            batch,
            log: args.log.or(file.log).unwrap_or_else(|| "info".to_owned()),
            alerting: Arc::new(alerting),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|error| anyhow::anyhow!("config file {}: {error}", path.display()))
}

fn batch_settings(file: &IngestFileConfig) -> anyhow::Result<BatchSettings> {
    let defaults = BatchSettings::default();
    let max_reports = file.max_batch.unwrap_or(defaults.max_reports);
    if !(1..=10_000).contains(&max_reports) {
        bail!("ingest.max_batch must be between 1 and 10000 (got {max_reports})");
    }
    let max_delay = match file.batch_delay.as_deref() {
        None => defaults.max_delay,
        Some(raw) => humantime::parse_duration(raw)
            .map_err(|e| anyhow::anyhow!("ingest.batch_delay: {raw:?} is not a duration: {e}"))?,
    };
    if max_delay > Duration::from_secs(1) {
        bail!(
            "ingest.batch_delay must be at most 1s (got {})",
            humantime::format_duration(max_delay)
        );
    }
    let queue_capacity = file.queue_capacity.unwrap_or(defaults.queue_capacity);
    if !(1..=1_000_000).contains(&queue_capacity) {
        bail!("ingest.queue_capacity must be between 1 and 1000000 (got {queue_capacity})");
    }
    Ok(BatchSettings {
        max_reports,
        max_delay,
        queue_capacity,
    })
}

fn parse_agent_interval(raw: &str) -> Result<Duration, String> {
    sockfleet_agent::config::parse_interval(raw)
}

fn sqlite_folder(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_owned)
}

fn default_data_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share"));
    xdg.or(home)
        .map(|base| base.join("sockfleet"))
        .unwrap_or_else(|| PathBuf::from("sockfleet-data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(contents: &str) -> (PathBuf, ServerArgs) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "sockfleet-config-{}-{number}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        let args = ServerArgs {
            config: Some(path.clone()),
            ..ServerArgs::default()
        };
        (path, args)
    }

    #[test]
    fn defaults_use_sqlite_in_the_data_dir() {
        let args = ServerArgs {
            data_dir: Some(PathBuf::from("/tmp/sf")),
            ..ServerArgs::default()
        };
        let config = ServerConfig::load(args).unwrap();
        assert_eq!(config.database_url, "sqlite:///tmp/sf/sockfleet.db");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn flags_override_the_file() {
        let (path, mut args) =
            write("listen = \"127.0.0.1:9000\"\nlocal_agent = true\n[ingest]\nmax_batch = 50\n");
        args.listen = Some("127.0.0.1:9100".parse().unwrap());
        let config = ServerConfig::load(args).unwrap();
        std::fs::remove_file(path).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert!(config.local_agent);
        assert_eq!(config.batch.max_reports, 50);
    }

    #[test]
    fn bad_keys_are_named() {
        let (path, args) = write("[ingest]\nmax_batch = 0\n");
        let error = ServerConfig::load(args).unwrap_err().to_string();
        std::fs::remove_file(path).unwrap();
        assert!(error.contains("ingest.max_batch"), "{error}");

        let (path, args) = write("lisen = \"x\"\n");
        let error = ServerConfig::load(args).unwrap_err().to_string();
        std::fs::remove_file(path).unwrap();
        assert!(error.contains("lisen"), "{error}");
    }

    #[test]
    fn sqlite_folder_of_url() {
        assert_eq!(
            sqlite_folder("sqlite:///var/lib/x/db.sqlite?mode=rwc"),
            Some(PathBuf::from("/var/lib/x"))
        );
        assert_eq!(sqlite_folder("postgres://db/x"), None);
    }
}
