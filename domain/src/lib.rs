//! The vocabulary sockfleet's agent and server share: TCP states and their counts, sysctl values, host
//! identities and the snapshot an agent takes of its host.
//!
//! Types here are valid by construction; wire formats (protobuf, SQL rows) convert into them at the edge.

pub mod breakdown;
pub mod host;
pub mod kernel;
pub mod namespace;
pub mod report;
pub mod snapshot;
pub mod state;
pub mod sysctl;

pub use breakdown::{
    Attribution, Breakdowns, CloseWaitSocket, DestinationUse, InvalidBreakdowns, InvalidTopN,
    ListenQueue, Omitted, ProcessCloseWait, TopN,
};
pub use host::{HostId, InvalidHostId};
pub use kernel::KernelCounters;
pub use namespace::{NamespaceIdentity, NamespaceReport};
pub use report::{AgentHello, Report};
pub use snapshot::{Collector, Snapshot};
pub use state::{Family, FamilyCounts, StateCounts, TcpState};
pub use sysctl::{SysctlValues, TRACKED_SYSCTLS};
