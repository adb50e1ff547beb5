//! Getting reports to the server: numbering them, keeping them until acknowledged, and the gRPC stream
//! that delivers them across reconnects.

mod backlog;
mod connection;
mod queue;
mod report;
pub mod spool;
mod wire;

pub use backlog::{Backlog, BacklogLimits, Outgoing};
pub use connection::{StreamTarget, maintain_stream};
pub use queue::{QueueCounters, ReportQueue};
pub use report::ReportBuilder;
pub use spool::{Spool, SpoolSettings};
