//! Collecting in every network namespace of the host besides the collector's own (`--all-namespaces`):
//! containers and `ip netns` namespaces each have their own sockets, sysctls and counters.
//!
//! Each collection finds the namespaces ([`NamespaceFinder`]), then visits them one after the other
//! on the collector thread with `setns` and reads each as the home namespace is read. A namespace's
//! readers are opened inside it the first time it is seen (a netlink socket stays bound to the
//! namespace it was created in) and dropped once it is gone. That socket holds a reference to the
//! namespace, so a namespace whose last process exited lingers until the next collection notices.
//! A namespace that cannot be read (it vanished, the agent may not enter it) is left out of that
//! collection; the home namespace's collection is never affected.

use std::collections::HashMap;
use std::io;

use chrono::{DateTime, Utc};
use sockfleet_domain::{Collector, NamespaceIdentity, NamespaceReport, TopN};

use super::namespaces::{FoundNamespace, NamespaceFinder, NamespaceKey};
use super::netns::HomeNamespace;
use super::thread::{Readers, Reading};
use super::{BreakdownCollector, CollectError, NetlinkCounter, SocketCounter};

/// The namespaces besides home and what the collector keeps for each.
pub(super) struct OtherNamespaces {
    home: HomeNamespace,
    finder: NamespaceFinder,
    /// The reader the home namespace uses; every other namespace uses the same kind.
    kind: Collector,
    top_n: TopN,
    known: HashMap<NamespaceKey, Known>,
    /// The receive buffer the namespaces' netlink counters take turns with (one would take 32 KiB per
    /// namespace once a dump fills it).
    buffer: Vec<u8>,
    /// Whether the agent was already told that it may not enter namespaces.
    warned_denied: bool,
}

/// What is kept for one namespace between collections.
#[derive(Default)]
struct Known {
    /// Opened inside the namespace on the first successful visit.
    readers: Option<Readers>,
    /// The identity, and the name and lowest pid it was worked out for.
    identity: Option<(Option<String>, Option<u32>, NamespaceIdentity)>,
}

impl OtherNamespaces {
    /// Collects in at most `max` namespaces besides `home`, with readers of the `kind` home uses.
    pub fn new(home: HomeNamespace, kind: Collector, top_n: TopN, max: usize) -> OtherNamespaces {
        OtherNamespaces::with_finder(home, kind, top_n, NamespaceFinder::new(max))
    }

    fn with_finder(
        home: HomeNamespace,
        kind: Collector,
        top_n: TopN,
        finder: NamespaceFinder,
    ) -> OtherNamespaces {
        OtherNamespaces {
            home,
            finder,
            kind,
            top_n,
            known: HashMap::new(),
            buffer: Vec::new(),
            warned_denied: false,
        }
    }

    /// Finds the namespaces and reads each, in the order of their inodes; one that cannot be read is
    /// left out. Fails only if the thread could not return home.
    pub fn collect(&mut self, now: DateTime<Utc>) -> Result<Vec<NamespaceReport>, CollectError> {
        let discovery = self.finder.discover(self.home.key());
        self.known.retain(|key, _| {
            discovery
                .found
                .binary_search_by_key(key, |found| found.key)
                .is_ok()
        });
        let mut reports = Vec::with_capacity(discovery.found.len());
        for found in &discovery.found {
            match self.read(found, now) {
                Ok(report) => reports.push(report),
                Err(error @ CollectError::NamespaceReturn(_)) => return Err(error),
                Err(error) => self.skip(found, &error),
            }
        }
        Ok(reports)
    }

    /// Reads one namespace inside it.
    fn read(
        &mut self,
        found: &FoundNamespace,
        now: DateTime<Utc>,
    ) -> Result<NamespaceReport, CollectError> {
        let (kind, top_n) = (self.kind, self.top_n);
        let known = self.known.entry(found.key).or_default();
        let buffer = &mut self.buffer;
        let reading: Reading = self.home.visit(&found.path, found.key, || {
            let readers = match &mut known.readers {
                Some(readers) => readers,
                None => known.readers.insert(open_readers(kind, top_n, buffer)?),
            };
            readers.read_sharing(now, buffer)
        })??;
        let cached = known
            .identity
            .as_ref()
            .filter(|(name, pid, _)| *name == found.name && *pid == found.pids.first().copied());
        let identity = match cached {
            Some((.., identity)) => identity.clone(),
            None => {
                let identity = self.finder.identify(found);
                known.identity = Some((
                    found.name.clone(),
                    found.pids.first().copied(),
                    identity.clone(),
                ));
                identity
            }
        };
        Ok(NamespaceReport {
            inode: found.key.inode,
            identity,
            states: reading.states,
            sysctls: reading.sysctls,
            kernel: reading
                .kernel
                .inspect_err(|error| {
                    tracing::debug!(
                        %error,
                        inode = found.key.inode,
                        "cannot read a namespace's TCP counters"
                    );
                })
                .ok(),
            breakdowns: reading.breakdowns,
        })
    }

    /// Logs why a namespace is left out of this collection: at debug level, except once per run when
    /// the agent may not enter namespaces at all.
    fn skip(&mut self, found: &FoundNamespace, error: &CollectError) {
        let denied = matches!(
            error,
            CollectError::Namespace { source, .. } if source.kind() == io::ErrorKind::PermissionDenied
        );
        if denied && !self.warned_denied {
            self.warned_denied = true;
            tracing::warn!(
                %error,
                "cannot enter other network namespaces; collecting in all of them needs root \
                 (CAP_SYS_ADMIN and CAP_SYS_PTRACE)"
            );
        } else {
            tracing::debug!(
                %error,
                inode = found.key.inode,
                path = %found.path.display(),
                "skipping a network namespace in this collection"
            );
        }
    }
}

/// Opens the readers of the calling thread's namespace; a netlink counter shares `buffer`.
fn open_readers(
    kind: Collector,
    top_n: TopN,
    buffer: &mut Vec<u8>,
) -> Result<Readers, CollectError> {
    let counter = match kind {
        Collector::Netlink => SocketCounter::Netlink(NetlinkCounter::open_sharing(buffer)?),
        Collector::Procfs => SocketCounter::Procfs,
    };
    Ok(Readers {
        counter,
        breakdowns: BreakdownCollector::new(top_n),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::path::Path;

    use sockfleet_domain::{FamilyCounts, TcpState};
    use sockfleet_testkit::IsolatedNamespace;

    use super::*;

    /// A thread-only namespace is invisible in `/proc/PID/ns/net`; a fake `/run/netns` names it.
    fn named_dir_for(namespace: &IsolatedNamespace, name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sockfleet-other-namespaces-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(namespace.path(), dir.join(name)).unwrap();
        dir
    }

    #[test]
    fn reads_each_namespace_inside_it_and_forgets_those_gone() {
        let namespace = IsolatedNamespace::new();
        let (held, port) = namespace.run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut settled = FamilyCounts::default();
            for state in [TcpState::Listen, TcpState::FinWait2, TcpState::CloseWait] {
                settled.ipv4.increment(state);
            }
            sockfleet_testkit::wait_until_settled(&settled);
            let port = listener.local_addr().unwrap().port();
            ((listener, client, server), port)
        });
        let named = named_dir_for(&namespace, "test-ns");
        let key = NamespaceKey::of(Path::new(namespace.path())).unwrap();
        let named_for_thread = named.clone();
        let (first, second) = std::thread::spawn(move || {
            let home = HomeNamespace::here().unwrap();
            // Only the fake named directory: the host's other namespaces are not this test's.
            let finder = NamespaceFinder::with_roots("/no/such/proc", named_for_thread, 8);
            let mut others =
                OtherNamespaces::with_finder(home, Collector::Netlink, TopN::DEFAULT, finder);
            let first = others.collect(Utc::now()).unwrap();
            let second = others.collect(Utc::now()).unwrap();
            assert_eq!(others.known.len(), 1);
            (first, second)
        })
        .join()
        .unwrap();
        for reports in [&first, &second] {
            let [report] = reports.as_slice() else {
                panic!("{reports:?}");
            };
            assert_eq!(report.inode, key.inode);
            assert_eq!(report.identity.name.as_deref(), Some("test-ns"));
            let ipv4 = &report.states.ipv4;
            assert_eq!(
                (
                    ipv4.get(TcpState::Listen),
                    ipv4.get(TcpState::FinWait2),
                    ipv4.get(TcpState::CloseWait),
                    ipv4.total()
                ),
                (1, 1, 1, 3),
                "{report:?}"
            );
            let breakdowns = report.breakdowns.as_ref().unwrap();
            assert_eq!(breakdowns.listeners.len(), 1);
            assert_eq!(breakdowns.listeners[0].local.port(), port);
            assert_eq!(
                breakdowns.close_wait_sockets[0].pid,
                Some(std::process::id())
            );
            assert_eq!(
                report.sysctls.len(),
                sockfleet_domain::TRACKED_SYSCTLS.len()
            );
            let kernel = report.kernel.unwrap();
            assert_eq!((kernel.active_opens, kernel.passive_opens), (1, 1));
        }
        std::fs::remove_dir_all(&named).unwrap();
        drop(held);
    }

    #[test]
    fn a_namespace_that_cannot_be_entered_is_left_out_and_forgotten() {
        let dir = std::env::temp_dir().join(format!(
            "sockfleet-other-namespaces-bad-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A plain file is no namespace: setns refuses it.
        std::fs::write(dir.join("not-a-namespace"), "").unwrap();
        let finder = NamespaceFinder::with_roots("/no/such/proc", &dir, 8);
        let mut others = OtherNamespaces::with_finder(
            HomeNamespace::here().unwrap(),
            Collector::Procfs,
            TopN::DEFAULT,
            finder,
        );
        assert_eq!(others.collect(Utc::now()).unwrap(), Vec::new());
        assert_eq!(others.known.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(others.collect(Utc::now()).unwrap(), Vec::new());
        assert!(others.known.is_empty());
    }
}
