//! The agent's command line and environment (`SOCKFLEET_*`), validated once at start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sockfleet_domain::TopN;

use crate::collect::CollectorChoice;

/// Shortest collection period the agent accepts.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest collection period the agent accepts.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Most labels an agent may carry (the server enforces the same limit).
pub const MAX_LABELS: usize = 64;

/// Counts this host's TCP sockets by state and streams them, with the TCP sysctls, to a sockfleet server.
///
/// Every flag can also be set through the environment variable shown (SOCKFLEET_ prefix).
#[derive(Debug, Clone, Parser)]
#[command(name = "sockfleet-agent", version, about, long_about)]
pub struct AgentArgs {
    /// Print one snapshot as JSON on stdout and exit; no server needed.
    #[arg(long)]
    pub once: bool,

    /// Server to stream to, e.g. http://sockfleet.example:7070.
    #[arg(long, env = "SOCKFLEET_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Collection period (e.g. 10s, 1m, 500ms); the server may change it.
    #[arg(long, env = "SOCKFLEET_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Host id to report instead of /etc/machine-id (ASCII letters, digits, '.', '_', ':', '-').
    #[arg(long, env = "SOCKFLEET_HOST_ID")]
    pub host_id: Option<String>,

    /// A label for this host, KEY=VALUE; repeat for several (env: comma-separated).
    #[arg(long = "label", env = "SOCKFLEET_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// How to read sockets: netlink sock_diag (as ss does), /proc/net/tcp, or netlink with procfs fallback.
    #[arg(long, env = "SOCKFLEET_COLLECTOR", value_enum, default_value_t = CollectorChoice::Auto)]
    pub collector: CollectorChoice,

    /// Collect inside this network namespace (/proc/PID/ns/net or /run/netns/NAME) instead of the agent's own.
    #[arg(long, env = "SOCKFLEET_NETNS", value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Reports kept while the server is unreachable or has not acknowledged them; the oldest are dropped
    /// beyond this (8640 = 24 h at 10 s).
    #[arg(long, env = "SOCKFLEET_BACKLOG", default_value_t = 8640, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub backlog: u32,

    /// Entries kept in each breakdown (destinations, CLOSE_WAIT sockets and processes, listeners), 1-1000.
    #[arg(long, env = "SOCKFLEET_TOP_N", default_value_t = TopN::DEFAULT)]
    pub top_n: TopN,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "SOCKFLEET_LOG", default_value = "info")]
    pub log: String,
}

impl AgentArgs {
    /// The labels as a map; a key given twice keeps its last value.
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

/// Parses a collection period such as `10s` and checks it is within bounds.
pub fn parse_interval(raw: &str) -> Result<Duration, String> {
    let interval =
        humantime::parse_duration(raw).map_err(|e| format!("{raw:?} is not a duration: {e}"))?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!(
            "{raw} is outside the allowed range {} to {}",
            humantime::format_duration(MIN_INTERVAL),
            humantime::format_duration(MAX_INTERVAL)
        ));
    }
    Ok(interval)
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("label {raw:?} is not KEY=VALUE"))?;
    let key_ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if !key_ok {
        return Err(format!(
            "label key {key:?} must be 1-128 ASCII letters, digits, '_', '.', '-' or '/'"
        ));
    }
    if value.len() > 1024 {
        return Err(format!("label {key:?} has a value longer than 1024 bytes"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_bounds() {
        assert_eq!(parse_interval("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("2h").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("bad key=x").is_err());
    }

    #[test]
    fn repeated_label_keeps_its_last_value() {
        let args =
            AgentArgs::try_parse_from(["sockfleet-agent", "--label", "a=1", "--label", "a=2"])
                .unwrap();
        assert_eq!(args.label_map().get("a").map(String::as_str), Some("2"));
    }
}
