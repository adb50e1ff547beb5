//! Server integration tests, in one binary: real PostgreSQL databases, real server and agent processes,
//! real sockets on loopback.

mod storage_suite;
mod support;
