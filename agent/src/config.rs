//! The agent's command line and environment (`SOCKFLEET_*`), validated once at start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sockfleet_domain::TopN;

use crate::collect::CollectorChoice;
use crate::stream::SpoolSettings;

/// Shortest collection period the agent accepts.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest collection period the agent accepts.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Most labels an agent may carry (the server enforces the same limit).
pub const MAX_LABELS: usize = 64;
/// Bounds of `--backlog-memory`.
pub const MIN_BACKLOG_MEMORY: u64 = 1 << 10;
pub const MAX_BACKLOG_MEMORY: u64 = 1 << 30;
/// Upper bound of `--spool-max`.
pub const MAX_SPOOL: u64 = 1 << 40;
/// Default of `--max-namespaces`.
pub const DEFAULT_MAX_NAMESPACES: u32 = 256;
/// Upper bound of `--max-namespaces` (the server accepts at most 1024 namespaces per report).
pub const MAX_NAMESPACES: u32 = 1024;

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

    /// Also collect in every other network namespace of the host (containers, `ip netns`), each
    /// reported with its inode, name, container id and pod where known. Default: on when running as
    /// root, which it needs.
    #[arg(long, env = "SOCKFLEET_ALL_NAMESPACES", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub all_namespaces: Option<bool>,

    /// Most other network namespaces collected in per collection; beyond it those with the highest
    /// inodes are left out (and the number logged), 1-1024.
    #[arg(long, env = "SOCKFLEET_MAX_NAMESPACES", default_value_t = DEFAULT_MAX_NAMESPACES,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_NAMESPACES)))]
    pub max_namespaces: u32,

    /// Most reports kept while the server is unreachable or has not acknowledged them, in memory and
    /// spool together; the oldest are dropped beyond this (8640 = 24 h at 10 s).
    #[arg(long, env = "SOCKFLEET_BACKLOG", default_value_t = 8640, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub backlog: u32,

    /// Memory for unacknowledged reports, as encoded (e.g. 4MiB, 512KiB, or plain bytes; 1 KiB to
    /// 1 GiB). Beyond it the oldest go to --spool-dir, or are dropped without one.
    #[arg(long, env = "SOCKFLEET_BACKLOG_MEMORY", value_name = "BYTES", default_value = "2MiB", value_parser = parse_backlog_memory)]
    pub backlog_memory: u64,

    /// Directory where reports that do not fit --backlog-memory wait on disk (e.g.
    /// /var/lib/sockfleet-agent); one directory per agent. Without it the backlog is in memory only.
    #[arg(long, env = "SOCKFLEET_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most disk space the spool may take (64 KiB or more); beyond it the oldest spooled reports are
    /// dropped.
    #[arg(long, env = "SOCKFLEET_SPOOL_MAX", value_name = "BYTES", default_value = "64MiB", value_parser = parse_spool_max)]
    pub spool_max: u64,

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

    /// Whether to collect in every network namespace: as asked, else when running as root.
    pub fn all_namespaces(&self) -> bool {
        self.all_namespaces
            .unwrap_or_else(all_namespaces_by_default)
    }
}

/// Whether an agent collects in every network namespace unless told otherwise: when it runs as root,
/// which entering them needs.
pub fn all_namespaces_by_default() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

/// Parses a size in bytes: a number with an optional unit, `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (powers
/// of 1024) or `KB`, `MB`, `GB` (powers of 1000), in any letter case.
pub fn parse_bytes(raw: &str) -> Result<u64, String> {
    let trimmed = raw.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a size such as 4MiB or 65536"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{raw:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{raw:?} is too large"))
}

fn parse_bytes_within(raw: &str, min: u64, max: u64) -> Result<u64, String> {
    let bytes = parse_bytes(raw)?;
    if !(min..=max).contains(&bytes) {
        return Err(format!(
            "{raw} is outside the allowed range {min} to {max} bytes"
        ));
    }
    Ok(bytes)
}

fn parse_backlog_memory(raw: &str) -> Result<u64, String> {
    parse_bytes_within(raw, MIN_BACKLOG_MEMORY, MAX_BACKLOG_MEMORY)
}

fn parse_spool_max(raw: &str) -> Result<u64, String> {
    parse_bytes_within(raw, SpoolSettings::MIN_MAX_BYTES, MAX_SPOOL)
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
    fn sizes() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("4 mib"), Ok(4 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("10B"), Ok(10));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("4 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
        assert!(parse_backlog_memory("512").is_err());
        assert!(parse_backlog_memory("2GiB").is_err());
        assert!(parse_spool_max("1KiB").is_err());
    }

    #[test]
    fn backlog_defaults() {
        let args = AgentArgs::try_parse_from(["sockfleet-agent"]).unwrap();
        assert_eq!(
            args.backlog_memory,
            crate::stream::BacklogLimits::DEFAULT_MEMORY_BYTES as u64
        );
        assert_eq!(args.spool_max, SpoolSettings::DEFAULT_MAX_BYTES);
        assert_eq!(args.spool_dir, None);
        let args = AgentArgs::try_parse_from([
            "sockfleet-agent",
            "--backlog-memory",
            "256KiB",
            "--spool-dir",
            "/var/lib/sockfleet-agent",
            "--spool-max",
            "1GiB",
        ])
        .unwrap();
        assert_eq!(args.backlog_memory, 256 << 10);
        assert_eq!(
            args.spool_dir,
            Some(PathBuf::from("/var/lib/sockfleet-agent"))
        );
        assert_eq!(args.spool_max, 1 << 30);
    }

    #[test]
    fn namespace_flags() {
        let parse = |args: &[&str]| {
            AgentArgs::try_parse_from(
                std::iter::once("sockfleet-agent").chain(args.iter().copied()),
            )
        };
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.all_namespaces, None);
        assert_eq!(defaults.all_namespaces(), all_namespaces_by_default());
        assert_eq!(defaults.max_namespaces, DEFAULT_MAX_NAMESPACES);
        assert_eq!(
            parse(&["--all-namespaces"]).unwrap().all_namespaces,
            Some(true)
        );
        assert_eq!(
            parse(&["--all-namespaces=false"]).unwrap().all_namespaces,
            Some(false)
        );
        assert!(!parse(&["--all-namespaces=no"]).unwrap().all_namespaces());
        assert!(parse(&["--all-namespaces=true"]).unwrap().all_namespaces());
        // The flag does not swallow the next argument.
        let args = parse(&["--all-namespaces", "--once"]).unwrap();
        assert_eq!((args.all_namespaces, args.once), (Some(true), true));
        assert!(parse(&["--all-namespaces=maybe"]).is_err());
        assert_eq!(parse(&["--max-namespaces", "3"]).unwrap().max_namespaces, 3);
        assert!(parse(&["--max-namespaces", "0"]).is_err());
        assert!(parse(&["--max-namespaces", "1025"]).is_err());
    }

    #[test]
    fn repeated_label_keeps_its_last_value() {
        let args =
            AgentArgs::try_parse_from(["sockfleet-agent", "--label", "a=1", "--label", "a=2"])
                .unwrap();
        assert_eq!(args.label_map().get("a").map(String::as_str), Some("2"));
    }
}
