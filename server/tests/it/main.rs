//! Server integration tests, in one binary: real PostgreSQL databases, real server and agent processes,
//! real sockets on loopback.

mod delivery;
mod end_to_end;
mod storage_suite;
mod support;
