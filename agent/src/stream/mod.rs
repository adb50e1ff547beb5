//! Getting reports to the server: numbering them, keeping them until acknowledged, and the gRPC stream
//! that delivers them across reconnects.

mod backlog;
mod connection;
mod queue;
mod report;
mod wire;

pub use backlog::Backlog;
pub use connection::{StreamTarget, maintain_stream};
pub use queue::ReportQueue;
pub use report::ReportBuilder;
