//! The bounded store of reports the server has not acknowledged yet.

use std::collections::VecDeque;

use sockfleet_domain::Report;

/// Reports waiting for acknowledgement, oldest first, bounded in count.
///
/// When full, the oldest report is dropped; its sysctl changes are carried into the next report (unless
/// that one has a newer value) so the server's view of the sysctls never misses a change.
#[derive(Debug)]
pub struct Backlog {
    reports: VecDeque<Report>,
    capacity: usize,
    dropped: u64,
}

impl Backlog {
    /// An empty backlog holding at most `capacity` reports (at least one).
    pub fn new(capacity: usize) -> Backlog {
        let capacity = capacity.max(1);
        Backlog {
            reports: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            dropped: 0,
        }
    }

    /// Adds a newly built report, dropping the oldest if the backlog is full.
    pub fn push(&mut self, report: Report) {
        if self.reports.len() == self.capacity {
            self.drop_oldest();
        }
        self.reports.push_back(report);
    }

    /// Drops the oldest report (for instance one the server refused), keeping its sysctl changes.
    pub fn drop_oldest(&mut self) -> Option<u64> {
        let oldest = self.reports.pop_front()?;
        self.dropped += 1;
        match self.reports.front_mut() {
            Some(next) => {
                for (name, value) in oldest.sysctls {
                    next.sysctls.entry(name).or_insert(value);
                }
            }
            None => {
                tracing::debug!(
                    sequence = oldest.sequence,
                    "dropped the only pending report"
                );
            }
        }
        Some(oldest.sequence)
    }

    /// Forgets every report up to and including `sequence`: the server has committed them.
    pub fn acknowledge(&mut self, sequence: u64) {
        while self
            .reports
            .front()
            .is_some_and(|report| report.sequence <= sequence)
        {
            self.reports.pop_front();
        }
    }

    /// The oldest report with a sequence above `sequence`: the next one to send on a stream that has
    /// sent everything up to `sequence`.
    pub fn next_after(&self, sequence: u64) -> Option<&Report> {
        let index = self
            .reports
            .partition_point(|report| report.sequence <= sequence);
        self.reports.get(index)
    }

    /// Reports waiting for acknowledgement.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether every report has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Reports dropped so far in this run because the backlog was full or the server refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use sockfleet_domain::{FamilyCounts, SysctlValues};

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
        }
    }

    #[test]
    fn acknowledge_and_resend_order() {
        let mut backlog = Backlog::new(10);
        for sequence in 1..=5 {
            backlog.push(report(sequence, &[]));
        }
        assert_eq!(backlog.next_after(0).map(|r| r.sequence), Some(1));
        assert_eq!(backlog.next_after(3).map(|r| r.sequence), Some(4));
        assert!(backlog.next_after(5).is_none());
        backlog.acknowledge(3);
        assert_eq!(backlog.len(), 2);
        assert_eq!(backlog.next_after(0).map(|r| r.sequence), Some(4));
        backlog.acknowledge(9);
        assert!(backlog.is_empty());
    }

    #[test]
    fn full_backlog_drops_oldest_and_keeps_sysctl_changes() {
        let mut backlog = Backlog::new(2);
        backlog.push(report(1, &[("a", "1"), ("b", "1")]));
        backlog.push(report(2, &[("b", "2")]));
        backlog.push(report(3, &[]));
        assert_eq!(backlog.dropped(), 1);
        let next = backlog.next_after(0).unwrap();
        assert_eq!(next.sequence, 2);
        assert_eq!(next.sysctls["a"].as_deref(), Some("1"));
        assert_eq!(next.sysctls["b"].as_deref(), Some("2"), "newer value wins");
    }
}
