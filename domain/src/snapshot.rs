//! What an agent sees of its host at one instant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::breakdown::Breakdowns;
use crate::host::HostId;
use crate::kernel::KernelCounters;
use crate::namespace::NamespaceReport;
use crate::state::FamilyCounts;
use crate::sysctl::SysctlValues;

/// How the agent read the socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Collector {
    /// Netlink `sock_diag` dumps, as `ss` does: exact and cheap.
    Netlink,
    /// `/proc/net/tcp` and `/proc/net/tcp6`: the fallback when netlink is unavailable.
    Procfs,
}

impl Collector {
    /// The collector's name on the wire and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Collector::Netlink => "netlink",
            Collector::Procfs => "procfs",
        }
    }

    /// The collector named `name`, as in [`Collector::name`].
    pub fn from_name(name: &str) -> Option<Collector> {
        match name {
            "netlink" => Some(Collector::Netlink),
            "procfs" => Some(Collector::Procfs),
            _ => None,
        }
    }
}

/// One collection of a host's TCP socket states and sysctls: what `sockfleet-agent --once` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub host_id: HostId,
    pub hostname: String,
    pub collected_at: DateTime<Utc>,
    pub states: FamilyCounts,
    pub sysctls: SysctlValues,
    /// The kernel's TCP counters (`null` when they could not be read).
    pub kernel: Option<KernelCounters>,
    /// Top-N breakdowns (`null` with the procfs collector).
    pub breakdowns: Option<Breakdowns>,
    /// The host's other network namespaces (empty unless the agent collects in all of them).
    pub namespaces: Vec<NamespaceReport>,
    pub kernel_release: String,
    pub collector: Collector,
}
