//! Reports and the hello that introduces them.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::breakdown::Breakdowns;
use crate::host::HostId;
use crate::kernel::KernelCounters;
use crate::namespace::NamespaceReport;
use crate::snapshot::Collector;
use crate::state::FamilyCounts;
use crate::sysctl::SysctlValues;

/// One numbered collection of a host, as the agent sends it and the server stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Position of the report in its agent run, from 1.
    pub sequence: u64,
    pub collected_at: DateTime<Utc>,
    pub states: FamilyCounts,
    /// The sysctls that changed since the previous report (all of them on a full report).
    pub sysctls: SysctlValues,
    /// The kernel's TCP counters, when the agent could read them.
    pub kernel: Option<KernelCounters>,
    /// Top-N breakdowns, when the collector provides them.
    pub breakdowns: Option<Breakdowns>,
    /// The host's other network namespaces, when the agent collects in all of them.
    pub namespaces: Vec<NamespaceReport>,
}

/// Who an agent is and how it runs: what it says first on every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello {
    pub host_id: HostId,
    pub hostname: String,
    pub kernel_release: String,
    pub agent_version: String,
    pub labels: BTreeMap<String, String>,
    /// Random id of the agent process; sequence numbers are unique within one run.
    pub run_id: String,
    pub collector: Collector,
    pub interval: Duration,
}
