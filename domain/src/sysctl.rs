//! TCP sysctls: which ones sockfleet tracks and how their values are held.

use std::collections::BTreeMap;

/// The sysctls every agent reads, by dotted name. All of them are per network namespace.
pub const TRACKED_SYSCTLS: &[&str] = &[
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.core.somaxconn",
];

/// Sysctl values by dotted name; `None` means the running kernel does not have that setting.
pub type SysctlValues = BTreeMap<String, Option<String>>;
