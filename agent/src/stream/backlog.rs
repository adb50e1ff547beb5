//! The bounded store of reports the server has not acknowledged yet.

use std::collections::{BTreeMap, VecDeque};

use prost::Message;
use sockfleet_domain::{Report, SysctlValues};
use sockfleet_proto::v1;

use super::spool::{Evicted, Spool};
use super::wire::report_proto;

/// Bookkeeping cost of one report held in memory beyond its encoded bytes (its slot in the queue and
/// the allocator's header), so many tiny reports are bounded too.
const ENTRY_OVERHEAD: usize = 64;

/// How much the backlog may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BacklogLimits {
    /// Most reports pending, in memory and spool together.
    pub max_reports: usize,
    /// Most bytes of reports held in memory (encoded size plus 64 bytes of bookkeeping each). The newest
    /// report is kept even if it alone is larger.
    pub memory_bytes: usize,
}

impl BacklogLimits {
    /// Default bound of the in-memory part: 2 MiB, two hours or more of reports at 10 s with the default
    /// breakdowns, and little enough that a release build of the agent stays under 10 MB resident
    /// even with `--top-n 1000` reports filling it.
    pub const DEFAULT_MEMORY_BYTES: usize = 2 << 20;
}

/// A report taken from the backlog to be sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub sequence: u64,
    /// The report, with the run's drop count and any sysctl changes carried over from dropped reports.
    pub report: v1::Report,
    /// Its size as stored, for flow control.
    pub encoded_len: usize,
}

/// Reports waiting for acknowledgement, oldest first: the oldest in the spool (when there is one), the
/// newest in memory, each held protobuf-encoded.
///
/// When memory is full the oldest reports in memory move to the spool; when there is no spool, or the
/// spool is full too, or more than [`BacklogLimits::max_reports`] are pending, the oldest are dropped and
/// counted. A dropped report's sysctl changes (its own and each network namespace's) are not lost: they
/// are carried into the next pending report (unless that one has a newer value), so the server's view of
/// the sysctls never misses a change. Where
/// that cannot be guaranteed (the next report was already sent, or a spooled record could not be read
/// back) the next report built carries every sysctl instead.
#[derive(Debug)]
pub struct Backlog {
    limits: BacklogLimits,
    /// The newest pending reports, all newer than those in the spool.
    memory: VecDeque<Encoded>,
    memory_bytes: usize,
    spool: Option<Spool>,
    dropped: u64,
    /// Sysctl changes of dropped reports older than every pending report, for the oldest pending one.
    carried: CarriedSysctls,
    /// The stream has taken every report up to this one since it last started over.
    handed_out: u64,
    full_sysctls_needed: bool,
    /// For logging transitions only.
    spooling: bool,
    dropping: bool,
    spool_failing: bool,
}

#[derive(Debug)]
struct Encoded {
    sequence: u64,
    bytes: Box<[u8]>,
}

impl Encoded {
    fn cost(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

impl Backlog {
    /// An empty backlog kept in memory only.
    pub fn new(limits: BacklogLimits) -> Backlog {
        Backlog {
            limits: BacklogLimits {
                max_reports: limits.max_reports.max(1),
                memory_bytes: limits.memory_bytes,
            },
            memory: VecDeque::new(),
            memory_bytes: 0,
            spool: None,
            dropped: 0,
            carried: CarriedSysctls::default(),
            handed_out: 0,
            full_sysctls_needed: false,
            spooling: false,
            dropping: false,
            spool_failing: false,
        }
    }

    /// An empty backlog that spills to `spool` when memory is full.
    pub fn with_spool(limits: BacklogLimits, spool: Spool) -> Backlog {
        Backlog {
            spool: Some(spool),
            ..Backlog::new(limits)
        }
    }

    /// Adds a newly built report (newer than every pending one), then moves or drops the oldest as the
    /// limits require.
    pub fn push(&mut self, report: &Report) {
        let entry = Encoded {
            sequence: report.sequence,
            bytes: report_proto(report).encode_to_vec().into_boxed_slice(),
        };
        self.memory_bytes += entry.cost();
        self.memory.push_back(entry);

        while self.memory_bytes > self.limits.memory_bytes && self.memory.len() > 1 {
            let oldest = self.memory.pop_front().expect("more than one entry");
            self.memory_bytes -= oldest.cost();
            if let Err(oldest) = self.spill(oldest) {
                self.drop_from_memory(oldest);
            }
        }
        while self.len() > self.limits.max_reports as u64 {
            self.drop_oldest();
        }
    }

    /// Moves the oldest report in memory to the spool; gives it back if there is no usable spool.
    fn spill(&mut self, entry: Encoded) -> Result<(), Encoded> {
        let Some(spool) = self.spool.as_mut() else {
            return Err(entry);
        };
        let mut evicted = Evicted::default();
        let carried = &mut self.carried;
        let result = spool.append(entry.sequence, &entry.bytes, &mut evicted, &mut |payload| {
            carry_sysctls(carried, payload);
        });
        let dir = spool.dir().display().to_string();
        self.note_dropped(evicted.reports, evicted.last_sequence, evicted.unreadable);
        match result {
            Ok(()) => {
                self.spool_failing = false;
                if !self.spooling {
                    self.spooling = true;
                    tracing::info!(
                        dir,
                        "memory backlog full; spooling the oldest reports to disk"
                    );
                }
                Ok(())
            }
            Err(error) => {
                if !self.spool_failing {
                    self.spool_failing = true;
                    tracing::warn!(%error, dir, "cannot spool a report; dropping it");
                }
                Err(entry)
            }
        }
    }

    /// Drops a report taken from the front of memory, carrying its sysctl changes forward.
    fn drop_from_memory(&mut self, entry: Encoded) {
        let dropped = decode(&entry.bytes);
        let spooled = self.spool.as_ref().is_some_and(|spool| !spool.is_empty());
        match dropped {
            // The oldest pending report overall: its changes join the carried set (newer wins).
            Some(dropped) if !spooled => self.carried.absorb(dropped),
            // Older reports are in the spool: the next report in memory takes the changes.
            Some(dropped) => match self.memory.front_mut() {
                Some(next) => {
                    let before = next.cost();
                    if let Some(mut report) = decode(&next.bytes) {
                        let mut older = CarriedSysctls::default();
                        older.absorb(dropped);
                        older.merge_into(&mut report);
                        next.bytes = report.encode_to_vec().into_boxed_slice();
                    }
                    self.memory_bytes = self.memory_bytes - before + next.cost();
                }
                None => self.full_sysctls_needed = true,
            },
            None => self.full_sysctls_needed = true,
        }
        self.note_dropped(1, entry.sequence, 0);
    }

    /// Counts `count` dropped reports, the newest being `last`.
    fn note_dropped(&mut self, count: u64, last: u64, unreadable: u64) {
        if count == 0 {
            return;
        }
        self.dropped += count;
        // The stream may already have sent the report the changes should have gone into.
        if unreadable > 0 || self.handed_out > last {
            self.full_sysctls_needed = true;
        }
        if !self.dropping {
            self.dropping = true;
            tracing::warn!(
                dropped = self.dropped,
                "backlog full; dropping the oldest unacknowledged reports"
            );
        }
    }

    /// Drops the oldest pending report (the backlog is over its count, or the server refused it),
    /// keeping its sysctl changes; returns its sequence.
    pub fn drop_oldest(&mut self) -> Option<u64> {
        if let Some(spool) = self.spool.as_mut().filter(|spool| !spool.is_empty()) {
            let carried = &mut self.carried;
            let sequence = spool.drop_oldest(&mut |payload| carry_sysctls(carried, payload));
            self.absorb_unreadable();
            if let Some(sequence) = sequence {
                self.note_dropped(1, sequence, 0);
            }
            return sequence;
        }
        let oldest = self.memory.pop_front()?;
        self.memory_bytes -= oldest.cost();
        let sequence = oldest.sequence;
        self.drop_from_memory(oldest);
        Some(sequence)
    }

    fn absorb_unreadable(&mut self) {
        if let Some(lost) = self.spool.as_mut().map(Spool::take_unreadable)
            && lost > 0
        {
            self.note_dropped(lost, 0, lost);
        }
    }

    /// Forgets every report up to and including `sequence`: the server has committed them.
    pub fn acknowledge(&mut self, sequence: u64) {
        if self
            .oldest_pending()
            .is_some_and(|oldest| sequence >= oldest)
        {
            // The report that carried them is committed.
            self.carried.clear();
        }
        if let Some(spool) = self.spool.as_mut() {
            spool.acknowledge(sequence);
            if spool.is_empty() {
                self.spooling = false;
            }
        }
        while self
            .memory
            .front()
            .is_some_and(|entry| entry.sequence <= sequence)
        {
            let entry = self.memory.pop_front().expect("front exists");
            self.memory_bytes -= entry.cost();
        }
        if self.memory.capacity() > 64 && self.memory.len() < self.memory.capacity() / 4 {
            self.memory.shrink_to(self.memory.len() * 2);
        }
        self.dropping = false;
    }

    /// The oldest report with a sequence above `sequence`: the next one to send on a stream that has
    /// sent everything up to `sequence`.
    pub fn next_after(&mut self, sequence: u64) -> Option<Outgoing> {
        self.handed_out = sequence;
        let from_spool = self
            .spool
            .as_mut()
            .and_then(|spool| spool.read_after(sequence));
        self.absorb_unreadable();
        let (found, mut report, encoded_len) = match from_spool {
            Some((found, bytes)) => (found, decode(&bytes)?, bytes.len()),
            None => {
                let index = self
                    .memory
                    .partition_point(|entry| entry.sequence <= sequence);
                let entry = self.memory.get(index)?;
                (entry.sequence, decode(&entry.bytes)?, entry.bytes.len())
            }
        };
        if self.oldest_pending() == Some(found) {
            self.carried.merge_into(&mut report);
        }
        report.dropped_reports = self.dropped;
        self.handed_out = found;
        Some(Outgoing {
            sequence: found,
            report,
            encoded_len,
        })
    }

    /// Sequence of the oldest pending report.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.spool
            .as_ref()
            .and_then(Spool::oldest)
            .or_else(|| self.memory.front().map(|entry| entry.sequence))
    }

    /// Whether the next report built should carry every sysctl; resets the request.
    pub fn take_full_sysctls_request(&mut self) -> bool {
        std::mem::take(&mut self.full_sysctls_needed)
    }

    /// Reports waiting for acknowledgement, in memory and spool.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.spooled()
    }

    /// Whether every report has been acknowledged (or dropped).
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spool.as_ref().is_none_or(Spool::is_empty)
    }

    /// Reports waiting in the spool.
    pub fn spooled(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::len)
    }

    /// Bytes the spool takes on disk.
    pub fn spool_bytes(&self) -> u64 {
        self.spool.as_ref().map_or(0, Spool::bytes)
    }

    /// Bytes the reports in memory count against [`BacklogLimits::memory_bytes`].
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Reports dropped so far in this run because the backlog was full or the server refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn decode(bytes: &[u8]) -> Option<v1::Report> {
    match v1::Report::decode(bytes) {
        Ok(report) => Some(report),
        Err(error) => {
            // Only possible if the agent's own encoding or the spool's checksum failed.
            tracing::error!(%error, "cannot decode a pending report");
            None
        }
    }
}

/// Adds a dropped report's sysctl changes to the carried set; they are newer than what it holds.
fn carry_sysctls(carried: &mut CarriedSysctls, payload: &[u8]) {
    if let Some(report) = decode(payload) {
        carried.absorb(report);
    }
}

/// Sysctl changes of dropped reports: the host's, and each network namespace's by inode.
#[derive(Debug, Default)]
struct CarriedSysctls {
    host: SysctlValues,
    namespaces: BTreeMap<u64, SysctlValues>,
}

impl CarriedSysctls {
    /// Takes the changes of a dropped report, newer than those held.
    fn absorb(&mut self, report: v1::Report) {
        for sysctl in report.sysctls {
            self.host.insert(sysctl.name, sysctl.value);
        }
        for namespace in report.namespaces {
            if namespace.sysctls.is_empty() {
                continue;
            }
            let held = self.namespaces.entry(namespace.inode).or_default();
            for sysctl in namespace.sysctls {
                held.insert(sysctl.name, sysctl.value);
            }
        }
    }

    /// Adds the values held to the newer `report` where it has none of its own. A namespace the
    /// report does not have is left out: it was gone when the report was built, so the next report
    /// that has it again carries all its sysctls.
    fn merge_into(&self, report: &mut v1::Report) {
        merge_older(&mut report.sysctls, &self.host);
        for namespace in &mut report.namespaces {
            if let Some(older) = self.namespaces.get(&namespace.inode) {
                merge_older(&mut namespace.sysctls, older);
            }
        }
    }

    fn clear(&mut self) {
        self.host.clear();
        self.namespaces.clear();
    }
}

/// Adds older sysctl values to `sysctls` where it has none of its own.
fn merge_older(sysctls: &mut Vec<v1::Sysctl>, older: &SysctlValues) {
    for (name, value) in older {
        if !sysctls.iter().any(|own| own.name == *name) {
            sysctls.push(v1::Sysctl {
                name: name.clone(),
                value: value.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::net::Ipv4Addr;

    use chrono::Utc;
    use sockfleet_domain::{
        Breakdowns, DestinationUse, FamilyCounts, NamespaceIdentity, NamespaceReport, SysctlValues,
    };

    use super::super::spool::SpoolSettings;
    use super::super::spool::tests::TempDir;
    use super::*;

    fn report(sequence: u64, sysctls: &[(&str, &str)]) -> Report {
        Report {
            sequence,
            collected_at: Utc::now(),
            states: FamilyCounts::default(),
            sysctls: sysctls
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Some((*value).to_owned())))
                .collect::<SysctlValues>(),
            kernel: None,
            breakdowns: None,
            namespaces: Vec::new(),
        }
    }

    /// A report whose encoding takes about `size` bytes (in breakdowns, which are never carried over).
    fn sized(sequence: u64, size: usize) -> Report {
        let mut breakdowns = Breakdowns::empty(28232);
        breakdowns.destinations = (0..size / 20)
            .map(|port| DestinationUse {
                local_ip: Ipv4Addr::LOCALHOST.into(),
                remote_ip: Ipv4Addr::new(10, 0, 0, 1).into(),
                remote_port: port as u16,
                time_wait: 1,
                ephemeral: 2,
            })
            .collect();
        Report {
            breakdowns: Some(breakdowns),
            ..report(sequence, &[])
        }
    }

    fn sysctls(outgoing: &Outgoing) -> BTreeMap<String, Option<String>> {
        outgoing
            .report
            .sysctls
            .iter()
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect()
    }

    fn memory_only(max_reports: usize) -> Backlog {
        Backlog::new(BacklogLimits {
            max_reports,
            memory_bytes: usize::MAX,
        })
    }

    fn spooled(dir: &TempDir, memory_bytes: usize, spool_bytes: u64) -> Backlog {
        let spool = Spool::open(
            &SpoolSettings {
                dir: dir.0.clone(),
                max_bytes: spool_bytes,
            },
            "test",
        )
        .unwrap();
        Backlog::with_spool(
            BacklogLimits {
                max_reports: 1_000_000,
                memory_bytes,
            },
            spool,
        )
    }

    /// Sends everything like a stream would: the sequences in order.
    fn drain(backlog: &mut Backlog, mut after: u64) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(next) = backlog.next_after(after) {
            after = next.sequence;
            sent.push(after);
        }
        sent
    }

    #[test]
    fn acknowledge_and_resend_order() {
        let mut backlog = memory_only(10);
        for sequence in 1..=5 {
            backlog.push(&report(sequence, &[]));
        }
        assert_eq!(backlog.next_after(0).map(|r| r.sequence), Some(1));
        assert_eq!(backlog.next_after(3).map(|r| r.sequence), Some(4));
        assert!(backlog.next_after(5).is_none());
        backlog.acknowledge(3);
        assert_eq!(backlog.len(), 2);
        assert_eq!(backlog.next_after(0).map(|r| r.sequence), Some(4));
        backlog.acknowledge(9);
        assert!(backlog.is_empty());
        assert_eq!(backlog.memory_bytes(), 0);
    }

    #[test]
    fn full_backlog_drops_oldest_and_keeps_sysctl_changes() {
        let mut backlog = memory_only(2);
        backlog.push(&report(1, &[("a", "1"), ("b", "1")]));
        backlog.push(&report(2, &[("b", "2")]));
        backlog.push(&report(3, &[]));
        assert_eq!(backlog.dropped(), 1);
        let next = backlog.next_after(0).unwrap();
        assert_eq!(next.sequence, 2);
        assert_eq!(next.report.dropped_reports, 1);
        let values = sysctls(&next);
        assert_eq!(values["a"].as_deref(), Some("1"));
        assert_eq!(values["b"].as_deref(), Some("2"), "newer value wins");
        assert!(sysctls(&backlog.next_after(2).unwrap()).is_empty());
        assert!(!backlog.take_full_sysctls_request());
        // Once the report carrying them is committed, they are not sent again.
        backlog.acknowledge(2);
        assert!(sysctls(&backlog.next_after(0).unwrap()).is_empty());
    }

    /// A report with network namespaces, each with the sysctls given.
    fn with_namespaces(sequence: u64, namespaces: &[(u64, &[(&str, &str)])]) -> Report {
        Report {
            namespaces: namespaces
                .iter()
                .map(|(inode, values)| NamespaceReport {
                    inode: *inode,
                    identity: NamespaceIdentity::default(),
                    states: FamilyCounts::default(),
                    sysctls: report(0, values).sysctls,
                    kernel: None,
                    breakdowns: None,
                })
                .collect(),
            ..report(sequence, &[])
        }
    }

    fn namespace_sysctls(outgoing: &Outgoing, inode: u64) -> BTreeMap<String, Option<String>> {
        let namespace = outgoing
            .report
            .namespaces
            .iter()
            .find(|namespace| namespace.inode == inode)
            .unwrap_or_else(|| panic!("no namespace {inode} in {:?}", outgoing.report));
        namespace
            .sysctls
            .iter()
            .map(|sysctl| (sysctl.name.clone(), sysctl.value.clone()))
            .collect()
    }

    #[test]
    fn dropped_reports_keep_each_namespaces_sysctl_changes() {
        let mut backlog = memory_only(2);
        backlog.push(&with_namespaces(
            1,
            &[(7, &[("a", "1"), ("b", "1")]), (9, &[("a", "9")])],
        ));
        backlog.push(&with_namespaces(
            2,
            &[(7, &[("b", "2")]), (11, &[("a", "11")])],
        ));
        backlog.push(&with_namespaces(
            3,
            &[(7, &[("a", "3")]), (9, &[("a", "9")])],
        ));
        assert_eq!(backlog.dropped(), 1);
        let next = backlog.next_after(0).unwrap();
        assert_eq!(next.sequence, 2);
        assert!(sysctls(&next).is_empty(), "nothing carried into the host's");
        let seven = namespace_sysctls(&next, 7);
        assert_eq!(seven["a"].as_deref(), Some("1"));
        assert_eq!(seven["b"].as_deref(), Some("2"), "newer value wins");
        assert_eq!(namespace_sysctls(&next, 11).len(), 1);
        // Namespace 9 is not in report 2: it was gone, and report 3 carries all its sysctls anyway.
        assert_eq!(next.report.namespaces.len(), 2);
        assert_eq!(
            namespace_sysctls(&backlog.next_after(2).unwrap(), 7).len(),
            1
        );
        assert!(!backlog.take_full_sysctls_request());
        backlog.acknowledge(2);
        let third = backlog.next_after(0).unwrap();
        assert_eq!(namespace_sysctls(&third, 7).len(), 1);
    }

    #[test]
    fn a_dropped_report_in_front_of_a_spool_carries_namespace_changes_into_the_next() {
        let dir = TempDir::new("namespaces");
        let mut backlog = spooled(&dir, 2_500, 64 << 10);
        backlog.push(&sized(1, 1000));
        backlog.push(&sized(2, 1000));
        backlog.push(&sized(3, 1000));
        assert!(backlog.spooled() >= 1);
        // Too large for the spool: dropped, its namespace changes go into the next in memory.
        backlog.push(&Report {
            namespaces: with_namespaces(0, &[(7, &[("a", "4")])]).namespaces,
            ..sized(4, 70_000)
        });
        backlog.push(&with_namespaces(5, &[(7, &[("b", "5")])]));
        backlog.push(&sized(6, 10));
        assert_eq!(backlog.dropped(), 1);
        let fifth = std::iter::successors(backlog.next_after(0), |previous| {
            backlog.next_after(previous.sequence)
        })
        .find(|outgoing| outgoing.sequence == 5)
        .unwrap();
        let seven = namespace_sysctls(&fifth, 7);
        assert_eq!(seven["a"].as_deref(), Some("4"));
        assert_eq!(seven["b"].as_deref(), Some("5"));
    }

    #[test]
    fn memory_is_bounded_in_bytes() {
        let mut backlog = Backlog::new(BacklogLimits {
            max_reports: 1000,
            memory_bytes: 10_000,
        });
        for sequence in 1..=100 {
            backlog.push(&sized(sequence, 1000));
            assert!(backlog.memory_bytes() <= 10_000);
        }
        assert!((5..=10).contains(&backlog.len()), "{}", backlog.len());
        assert_eq!(backlog.dropped() + backlog.len(), 100);
        // The newest report stays even when it alone is over the bound.
        backlog.push(&sized(101, 20_000));
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog.next_after(0).unwrap().sequence, 101);
    }

    #[test]
    fn spool_then_memory_in_sequence_order() {
        let dir = TempDir::new("order");
        let mut backlog = spooled(&dir, 5_000, 1 << 20);
        for sequence in 1..=50 {
            backlog.push(&sized(sequence, 1000));
            assert!(backlog.memory_bytes() <= 5_000);
        }
        assert_eq!(backlog.dropped(), 0);
        assert_eq!(backlog.len(), 50);
        assert!(backlog.spooled() >= 45, "{}", backlog.spooled());
        assert!(backlog.spool_bytes() > 45_000);
        assert_eq!(drain(&mut backlog, 0), (1..=50).collect::<Vec<_>>());
        // A reconnect whose server committed up to 20 resends from 21, in order.
        backlog.acknowledge(20);
        assert_eq!(drain(&mut backlog, 20), (21..=50).collect::<Vec<_>>());
        // New reports keep queueing behind the spooled ones.
        backlog.push(&sized(51, 1000));
        assert_eq!(drain(&mut backlog, 45), (46..=51).collect::<Vec<_>>());
        backlog.acknowledge(51);
        assert!(backlog.is_empty());
        assert_eq!(backlog.spool_bytes(), 0);
        assert_eq!(
            fs::read_dir(&dir.0).unwrap().count(),
            1,
            "only the lock file is left"
        );
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = TempDir::new("spool-full");
        let mut backlog = spooled(&dir, 4_000, 64 << 10);
        backlog.push(&report(1, &[("a", "1"), ("b", "1"), ("c", "1")]));
        backlog.push(&report(2, &[("b", "2")]));
        for sequence in 3..=200 {
            backlog.push(&sized(sequence, 1000));
            assert!(backlog.spool_bytes() <= 64 << 10);
        }
        let dropped = backlog.dropped();
        assert!(dropped > 100, "{dropped}");
        assert_eq!(dropped + backlog.len(), 200);
        let first = backlog.next_after(0).unwrap();
        assert_eq!(first.sequence, dropped + 1, "the oldest went");
        assert_eq!(first.report.dropped_reports, dropped);
        let values = sysctls(&first);
        assert_eq!(values["a"].as_deref(), Some("1"));
        assert_eq!(values["b"].as_deref(), Some("2"));
        assert_eq!(values["c"].as_deref(), Some("1"));
        assert_eq!(
            drain(&mut backlog, 0),
            (dropped + 1..=200).collect::<Vec<_>>()
        );
        assert!(!backlog.take_full_sysctls_request());
    }

    #[test]
    fn count_bound_and_refusals_drop_from_the_spool() {
        let dir = TempDir::new("count");
        let spool = Spool::open(
            &SpoolSettings {
                dir: dir.0.clone(),
                max_bytes: 1 << 20,
            },
            "test",
        )
        .unwrap();
        let mut backlog = Backlog::with_spool(
            BacklogLimits {
                max_reports: 10,
                memory_bytes: 3_000,
            },
            spool,
        );
        backlog.push(&report(1, &[("a", "1")]));
        for sequence in 2..=30 {
            backlog.push(&sized(sequence, 1000));
        }
        assert_eq!(backlog.len(), 10);
        assert_eq!(backlog.dropped(), 20);
        assert_eq!(backlog.oldest_pending(), Some(21));
        let first = backlog.next_after(0).unwrap();
        assert_eq!(sysctls(&first)["a"].as_deref(), Some("1"));
        // The server refuses report 21: it goes, its changes stay.
        assert_eq!(backlog.drop_oldest(), Some(21));
        // 21 had been sent, and so may 22 (the stream took it): the next report built carries all.
        assert!(!backlog.take_full_sysctls_request());
        backlog.handed_out = 23;
        assert_eq!(backlog.drop_oldest(), Some(22));
        assert!(backlog.take_full_sysctls_request());
        let next = backlog.next_after(0).unwrap();
        assert_eq!(next.sequence, 23);
        assert_eq!(sysctls(&next)["a"].as_deref(), Some("1"));
        assert_eq!(next.report.dropped_reports, 22);
    }

    #[test]
    fn spool_failure_falls_back_to_dropping() {
        let dir = TempDir::new("fail");
        let mut backlog = spooled(&dir, 2_500, 64 << 10);
        backlog.push(&report(1, &[("a", "1")]));
        backlog.push(&sized(2, 1000));
        backlog.push(&sized(3, 1000));
        backlog.push(&report(4, &[("b", "1")]));
        backlog.push(&sized(5, 1000));
        assert!(backlog.spooled() >= 2);
        // Reports that can never fit the spool are dropped; the next in memory keeps their changes.
        backlog.push(&Report {
            sysctls: [("c".to_owned(), Some("1".to_owned()))].into(),
            ..sized(6, 70_000)
        });
        backlog.push(&report(7, &[("d", "1")]));
        backlog.push(&sized(8, 10));
        assert_eq!(backlog.dropped(), 1);
        let sent: Vec<Outgoing> = std::iter::successors(backlog.next_after(0), |previous| {
            backlog.next_after(previous.sequence)
        })
        .collect();
        assert_eq!(
            sent.iter().map(|o| o.sequence).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 7, 8]
        );
        let seventh = sysctls(&sent[5]);
        assert_eq!(seventh["c"].as_deref(), Some("1"));
        assert_eq!(seventh["d"].as_deref(), Some("1"));
    }
}
