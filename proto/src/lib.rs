//! Generated types and services of the `sockfleet.v1` protocol.
//!
//! Nothing here is hand-written: the rest of sockfleet converts these types into its own domain types at
//! the edge (agent stream, server ingest) and validates them there.

/// Protocol generation 1: the `Ingest` stream and the `Query` service.
pub mod v1 {
    tonic::include_proto!("sockfleet.v1");

    /// The protocol generation this crate describes, sent in `Hello.protocol_version`.
    pub const PROTOCOL_VERSION: u32 = 1;

    /// gRPC metadata key with which a server names the sequence of a report it refused as invalid, so
    /// the agent can drop that report instead of sending it again forever.
    pub const REFUSED_SEQUENCE_HEADER: &str = "sockfleet-refused-sequence";

    /// Encoded `FileDescriptorSet` of every sockfleet proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sockfleet_descriptor");
}
