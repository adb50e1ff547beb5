//! Collecting a snapshot of the host: socket-state counts and TCP sysctls, in the agent's network
//! namespace and optionally in every other one.
//!
//! Collection is blocking work on kernel interfaces, and network namespaces belong to threads, so it
//! runs on a dedicated OS thread ([`CollectorThread`]) that may live inside another namespace and
//! visits the others.

mod breakdown;
mod container;
mod error;
mod kernel_counters;
mod namespaces;
mod netlink;
mod netns;
mod other_namespaces;
mod process;
mod procfs;
mod sysctl;
mod thread;

pub use breakdown::{BreakdownCollection, BreakdownCollector};
pub use error::CollectError;
pub use kernel_counters::read_kernel_counters;
pub use netlink::NetlinkCounter;
pub use netlink::{SocketView, SocketVisitor};
pub use procfs::count_from_proc;
pub use sysctl::read_sysctls;
pub use thread::{Collection, CollectorSettings, CollectorThread};

use sockfleet_domain::{Collector, FamilyCounts};

/// Which socket reader the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CollectorChoice {
    /// Netlink when the kernel offers it, `/proc/net/tcp{,6}` otherwise.
    Auto,
    /// Netlink `sock_diag` only; fail if unavailable.
    Netlink,
    /// `/proc/net/tcp{,6}` only.
    Procfs,
}

/// The socket reader in use, with whatever state it keeps between collections.
pub enum SocketCounter {
    /// Netlink with its reusable socket and buffer.
    Netlink(NetlinkCounter),
    /// The `/proc` text tables.
    Procfs,
}

impl SocketCounter {
    /// Opens the reader the operator chose; with [`CollectorChoice::Auto`] falls back to procfs (and says
    /// so in the log) when netlink cannot be opened or does not answer.
    ///
    /// [`NetlinkCounter::open`] is the probe: it asks for the listening sockets alone, which the
    /// kernel answers without walking the connections, so opening does not cost a full count.
    pub fn open(choice: CollectorChoice) -> Result<SocketCounter, CollectError> {
        match choice {
            CollectorChoice::Procfs => Ok(SocketCounter::Procfs),
            CollectorChoice::Netlink => Ok(SocketCounter::Netlink(NetlinkCounter::open()?)),
            CollectorChoice::Auto => match NetlinkCounter::open() {
                Ok(counter) => Ok(SocketCounter::Netlink(counter)),
                Err(error) => {
                    tracing::warn!(%error, "netlink sock_diag is unavailable; falling back to /proc/net/tcp");
                    Ok(SocketCounter::Procfs)
                }
            },
        }
    }

    /// Which collector this is, as reported to the server and in `--once` output.
    pub fn kind(&self) -> Collector {
        match self {
            SocketCounter::Netlink(_) => Collector::Netlink,
            SocketCounter::Procfs => Collector::Procfs,
        }
    }

    /// Counts every TCP socket by family and state.
    pub fn count(&mut self) -> Result<FamilyCounts, CollectError> {
        match self {
            SocketCounter::Netlink(counter) => counter.count(),
            SocketCounter::Procfs => count_from_proc(),
        }
    }
}
