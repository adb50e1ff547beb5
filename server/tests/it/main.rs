//! Server integration tests, in one binary: real PostgreSQL databases, real server and agent processes,
//! real sockets on loopback.

mod alert_storage;
mod alerts;
mod bad_input;
mod delivery;
mod end_to_end;
mod http_api;
mod hysteresis;
mod replicas;
mod storage_suite;
mod support;
mod sysctl_alerts;
mod webhooks;
