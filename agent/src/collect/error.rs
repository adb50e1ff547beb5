//! Why a collection failed.

use std::io;
use std::path::PathBuf;

/// A failure to read the host's sockets or settings.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot open a netlink sock_diag socket: {0}")]
    NetlinkOpen(#[source] io::Error),
    #[error("netlink sock_diag dump failed: {0}")]
    NetlinkIo(#[source] io::Error),
    #[error("the kernel answered the sock_diag dump with error {errno}: {message}")]
    NetlinkKernel { errno: i32, message: String },
    #[error("malformed netlink reply: {0}")]
    NetlinkMalformed(String),
    #[error("cannot read {path}: {source}")]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed line in {path}: {line:?}")]
    ProcMalformed { path: PathBuf, line: String },
    #[error("cannot enter network namespace {path}: {source}")]
    Namespace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot return to the collector's own network namespace: {0}")]
    NamespaceReturn(#[source] io::Error),
    #[error("cannot start the collector thread: {0}")]
    ThreadStart(#[source] io::Error),
    #[error("the collector thread has stopped")]
    ThreadGone,
}
