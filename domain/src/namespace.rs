//! Network namespaces other than the agent's own: containers and `ip netns` namespaces, each with its
//! own socket table and TCP sysctls.

use serde::{Deserialize, Serialize};

use crate::breakdown::Breakdowns;
use crate::kernel::KernelCounters;
use crate::state::FamilyCounts;
use crate::sysctl::SysctlValues;

/// What an agent can tell about who uses a namespace; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceIdentity {
    /// Name under `/run/netns` (`ip netns add NAME`).
    pub name: Option<String>,
    /// Container id from the cgroup path of a process in it.
    pub container_id: Option<String>,
    /// Kubernetes pod name (the hostname of the pod's processes).
    pub pod: Option<String>,
    /// A process in the namespace.
    pub pid: Option<u32>,
    /// That process's command name.
    pub comm: Option<String>,
}

impl NamespaceIdentity {
    /// Longest accepted name, container id, pod or command, in bytes.
    pub const MAX_TEXT_LEN: usize = 255;
}

/// One namespace's part of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceReport {
    /// Inode number of the namespace (`stat -L /proc/PID/ns/net`): its identity while it exists.
    pub inode: u64,
    pub identity: NamespaceIdentity,
    pub states: FamilyCounts,
    /// In a report: all sysctls the first time a stream reports the namespace, then only changes.
    /// In a snapshot: all of them.
    pub sysctls: SysctlValues,
    pub kernel: Option<KernelCounters>,
    pub breakdowns: Option<Breakdowns>,
}
