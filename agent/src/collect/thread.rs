//! The dedicated thread that performs collections.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use sockfleet_domain::{Collector, FamilyCounts, SysctlValues};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::{CollectError, CollectorChoice, SocketCounter, read_sysctls};

/// What one collection found.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    pub states: FamilyCounts,
    pub sysctls: SysctlValues,
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
    /// opens the socket reader there. Fails if the namespace cannot be entered or no reader works.
    pub fn spawn(
        choice: CollectorChoice,
        netns: Option<PathBuf>,
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
                while let Some(reply) = incoming.blocking_recv() {
                    let _ = reply.send(collect_once(&mut counter));
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

fn collect_once(counter: &mut SocketCounter) -> Result<Collection, CollectError> {
    Ok(Collection {
        states: counter.count()?,
        sysctls: read_sysctls()?,
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
