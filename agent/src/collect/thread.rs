//! The dedicated thread that performs collections.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use chrono::Utc;
use sockfleet_domain::{Breakdowns, Collector, FamilyCounts, KernelCounters, SysctlValues, TopN};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::{
    BreakdownCollector, CollectError, CollectorChoice, SocketCounter, read_kernel_counters,
    read_sysctls,
};

/// What one collection found.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    pub states: FamilyCounts,
    pub sysctls: SysctlValues,
    /// `None` when the counter files could not be read (the failure is logged).
    pub kernel: Option<KernelCounters>,
    /// Top-N breakdowns; `None` with the procfs collector.
    pub breakdowns: Option<Breakdowns>,
}

type Reply = oneshot::Sender<Result<Collection, CollectError>>;

/// A collector running on its own OS thread, optionally inside another network namespace.
///
/// Network namespaces are a property of a thread, and the kernel interfaces are blocking, so every
/// collection happens on this one thread; async code asks for one with [`CollectorThread::collect`].
/// The thread keeps its netlink socket and buffers between collections, and ends when this handle drops.
pub struct CollectorThread {
    requests: async_mpsc::Sender<Reply>,
    kind: Collector,
}

impl CollectorThread {
    /// Starts the thread, enters `netns` (a `/proc/PID/ns/net` or `/run/netns/NAME` path) if given, and
    /// opens the socket reader there; breakdowns keep the `top_n` largest entries of each list. Fails
    /// if the namespace cannot be entered or no reader works.
    pub fn spawn(
        choice: CollectorChoice,
        netns: Option<PathBuf>,
        top_n: TopN,
    ) -> Result<CollectorThread, CollectError> {
        let (requests, mut incoming) = async_mpsc::channel::<Reply>(1);
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("sockfleet-collector".into())
            .spawn(move || {
                let opened = netns
                    .as_deref()
                    .map_or(Ok(()), enter_namespace)
                    .and_then(|()| SocketCounter::open(choice));
                let mut counter = match opened {
                    Ok(counter) => {
                        let _ = ready_tx.send(Ok(counter.kind()));
                        counter
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let mut breakdowns = BreakdownCollector::new(top_n);
                while let Some(reply) = incoming.blocking_recv() {
                    let _ = reply.send(collect_once(&mut counter, &mut breakdowns));
                }
            })
            .map_err(CollectError::ThreadStart)?;
        let kind = ready_rx.recv().map_err(|_| CollectError::ThreadGone)??;
        Ok(CollectorThread { requests, kind })
    }

    /// Which socket reader the thread uses.
    pub fn kind(&self) -> Collector {
        self.kind
    }

    /// Runs one collection on the thread.
    pub async fn collect(&self) -> Result<Collection, CollectError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(reply)
            .await
            .map_err(|_| CollectError::ThreadGone)?;
        answer.await.map_err(|_| CollectError::ThreadGone)?
    }
}

fn collect_once(
    counter: &mut SocketCounter,
    breakdowns: &mut BreakdownCollector,
) -> Result<Collection, CollectError> {
    let sysctls = read_sysctls()?;
    let (states, breakdowns) = match counter {
        // One pass over the dump yields the counts and the breakdowns together.
        SocketCounter::Netlink(netlink) => {
            let collected = breakdowns.collect(netlink, &sysctls, Utc::now())?;
            (collected.states, Some(collected.breakdowns))
        }
        SocketCounter::Procfs => (counter.count()?, None),
    };
    Ok(Collection {
        states,
        sysctls,
        kernel: read_kernel_counters()
            .inspect_err(|error| tracing::warn!(%error, "cannot read the kernel's TCP counters"))
            .ok(),
        breakdowns,
    })
}

fn enter_namespace(path: &Path) -> Result<(), CollectError> {
    let namespace_error = |source: io::Error| CollectError::Namespace {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(namespace_error)?;
    // SAFETY: setns only reads the descriptor, which stays open for the duration of the call; it changes
    // the namespace of this thread alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(namespace_error(io::Error::last_os_error()));
    }
    Ok(())
}
