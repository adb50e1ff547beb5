//! The sockfleet server: ingests agents' TCP socket-state reports over gRPC, stores them in PostgreSQL
//! or SQLite, and serves the fleet's view over HTTP on the same port.
//!
//! Data path: [`ingest`] (validate, group commit, acknowledge) → [`storage`] → [`api`] and [`dashboard`].
//! [`startup::Application`] assembles them for `main` and for the tests alike.

pub mod alerts;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod ingest;
pub mod local_agent;
pub mod notify;
pub mod startup;
pub mod storage;
pub mod webhook;
