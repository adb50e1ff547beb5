//! The sockfleet agent: collects a host's TCP socket-state counts and sysctls and streams them to a
//! sockfleet server, keeping what the server has not acknowledged.
//!
//! The data path is `collect` (kernel → [`collect::Collection`]) → `stream` (reports with sequence
//! numbers, a bounded backlog, the gRPC stream with reconnects). [`run::run_agent`] ties them together
//! for `sockfleet-agent` and for the server's in-process `--local-agent`.

pub mod collect;
pub mod config;
pub mod identity;
pub mod run;
pub mod stream;
