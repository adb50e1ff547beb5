//! The dedicated thread that performs collections.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use chrono::{DateTime, Utc};
use sockfleet_domain::{
    Breakdowns, Collector, FamilyCounts, KernelCounters, NamespaceReport, SysctlValues, TopN,
};
use tokio::sync::{mpsc as async_mpsc, oneshot};

use super::netns::{HomeNamespace, enter_namespace};
use super::other_namespaces::OtherNamespaces;
use super::{
    BreakdownCollector, CollectError, CollectorChoice, NetlinkCounter, SocketCounter,
    read_kernel_counters, read_sysctls,
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
    /// The other network namespaces, ordered by inode, each with all its sysctls; empty unless the
    /// collector collects in all of them.
    pub namespaces: Vec<NamespaceReport>,
}

/// What the collector thread collects, and where.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    pub choice: CollectorChoice,
    /// The namespace to collect in (a `/proc/PID/ns/net` or `/run/netns/NAME` path) instead of the
    /// agent's own: the thread's home.
    pub netns: Option<PathBuf>,
    /// Entries kept in each breakdown list.
    pub top_n: TopN,
    /// Also collect in every other network namespace, at most this many per collection; `None`
    /// collects in the home namespace only.
    pub max_namespaces: Option<usize>,
}

type Reply = oneshot::Sender<Result<Collection, CollectError>>;

/// A collector running on its own OS thread, optionally inside another network namespace.
///
/// Network namespaces are a property of a thread, and the kernel interfaces are blocking, so every
/// collection happens on this one thread; async code asks for one with [`CollectorThread::collect`].
/// The thread keeps its netlink sockets and buffers between collections, and ends when this handle
/// drops.
pub struct CollectorThread {
    requests: async_mpsc::Sender<Reply>,
    kind: Collector,
}

impl CollectorThread {
    /// Starts the thread, enters the home namespace if one is given, and opens the socket reader
    /// there. Fails if the namespace cannot be entered or no reader works.
    pub fn spawn(settings: CollectorSettings) -> Result<CollectorThread, CollectError> {
        let (requests, mut incoming) = async_mpsc::channel::<Reply>(1);
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("sockfleet-collector".into())
            .spawn(move || {
                let mut collector = match ThreadCollector::start(&settings) {
                    Ok(collector) => {
                        let _ = ready_tx.send(Ok(collector.home.counter.kind()));
                        collector
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                while let Some(reply) = incoming.blocking_recv() {
                    let collected = collector.collect();
                    let lost = matches!(collected, Err(CollectError::NamespaceReturn(_)));
                    let _ = reply.send(collected);
                    if lost {
                        // Whatever it read now would be from the wrong namespace.
                        tracing::error!(
                            "the collector thread is stuck in another network namespace; it stops"
                        );
                        return;
                    }
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

/// What lives on the collector thread.
struct ThreadCollector {
    home: Readers,
    others: Option<OtherNamespaces>,
}

impl ThreadCollector {
    fn start(settings: &CollectorSettings) -> Result<ThreadCollector, CollectError> {
        if let Some(netns) = &settings.netns {
            enter_namespace(netns)?;
        }
        let home = Readers {
            counter: SocketCounter::open(settings.choice)?,
            breakdowns: BreakdownCollector::new(settings.top_n),
        };
        let others = match settings.max_namespaces {
            Some(max) => Some(OtherNamespaces::new(
                HomeNamespace::here()?,
                home.counter.kind(),
                settings.top_n,
                max,
            )),
            None => None,
        };
        Ok(ThreadCollector { home, others })
    }

    fn collect(&mut self) -> Result<Collection, CollectError> {
        let now = Utc::now();
        let reading = self.home.read(now)?;
        let namespaces = match &mut self.others {
            Some(others) => others.collect(now)?,
            None => Vec::new(),
        };
        Ok(Collection {
            states: reading.states,
            sysctls: reading.sysctls,
            kernel: reading
                .kernel
                .inspect_err(
                    |error| tracing::warn!(%error, "cannot read the kernel's TCP counters"),
                )
                .ok(),
            breakdowns: reading.breakdowns,
            namespaces,
        })
    }
}

/// The readers of one network namespace, kept between collections: the socket reader (a netlink
/// socket stays bound to the namespace it was opened in) and the breakdown tables.
pub(super) struct Readers {
    pub counter: SocketCounter,
    pub breakdowns: BreakdownCollector,
}

/// What the readers of one namespace found.
pub(super) struct Reading {
    pub states: FamilyCounts,
    pub sysctls: SysctlValues,
    /// Left to the caller to log.
    pub kernel: Result<KernelCounters, CollectError>,
    pub breakdowns: Option<Breakdowns>,
}

impl Readers {
    /// Reads the calling thread's namespace: sysctls and kernel counters through `/proc` (which
    /// follow the thread's namespace), sockets through the counter (which has its own).
    pub fn read(&mut self, now: DateTime<Utc>) -> Result<Reading, CollectError> {
        self.read_with(now, None)
    }

    /// Like [`Readers::read`], for readers whose netlink counter takes turns with others using
    /// `buffer` (see [`NetlinkCounter::open_sharing`]).
    pub fn read_sharing(
        &mut self,
        now: DateTime<Utc>,
        buffer: &mut Vec<u8>,
    ) -> Result<Reading, CollectError> {
        self.read_with(now, Some(buffer))
    }

    fn read_with(
        &mut self,
        now: DateTime<Utc>,
        buffer: Option<&mut Vec<u8>>,
    ) -> Result<Reading, CollectError> {
        let sysctls = read_sysctls()?;
        let (states, breakdowns) = match &mut self.counter {
            // One pass over the dump yields the counts and the breakdowns together.
            SocketCounter::Netlink(netlink) => {
                let breakdowns = &mut self.breakdowns;
                let mut collect =
                    |netlink: &mut NetlinkCounter| breakdowns.collect(netlink, &sysctls, now);
                let collected = match buffer {
                    Some(buffer) => netlink.with_buffer(buffer, collect),
                    None => collect(netlink),
                }?;
                (collected.states, Some(collected.breakdowns))
            }
            SocketCounter::Procfs => (self.counter.count()?, None),
        };
        Ok(Reading {
            states,
            sysctls,
            kernel: read_kernel_counters(),
            breakdowns,
        })
    }
}
