//! Receiving agents' reports: validation at the edge, the stream protocol, and group commit.

mod batch_writer;
mod service;
pub mod validate;

pub use batch_writer::{BatchSettings, BatchWriter, CommitError};
pub use service::{IngestService, MAX_MESSAGE_BYTES};
