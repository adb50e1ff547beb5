//! The report queue shared by the collection loop and the stream.

use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::backlog::Backlog;
use super::report::ReportBuilder;
use crate::collect::Collection;
use sockfleet_domain::Report;

/// Where the collection loop puts reports and the stream takes them from.
///
/// Numbering (the [`ReportBuilder`]) and storage (the [`Backlog`]) sit behind one lock so a report's
/// sequence and its place in the backlog can never disagree.
#[derive(Debug)]
pub struct ReportQueue {
    state: Mutex<QueueState>,
    pushed: Notify,
    acknowledged: Notify,
}

#[derive(Debug)]
struct QueueState {
    builder: ReportBuilder,
    backlog: Backlog,
}

impl ReportQueue {
    /// An empty queue keeping at most `capacity` unacknowledged reports.
    pub fn new(capacity: usize) -> ReportQueue {
        ReportQueue {
            state: Mutex::new(QueueState {
                builder: ReportBuilder::default(),
                backlog: Backlog::new(capacity),
            }),
            pushed: Notify::new(),
            acknowledged: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent across a panic in another holder (every method is a few field
        // updates), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers a collection, stores it and wakes the stream; returns its sequence.
    pub fn enqueue(&self, collected_at: DateTime<Utc>, collection: Collection) -> u64 {
        let sequence = {
            let mut state = self.lock();
            let report = state.builder.build(collected_at, collection);
            let sequence = report.sequence;
            state.backlog.push(report);
            sequence
        };
        self.pushed.notify_one();
        sequence
    }

    /// Forgets the reports the server has committed, up to `sequence`.
    pub fn acknowledge(&self, sequence: u64) {
        self.lock().backlog.acknowledge(sequence);
        self.acknowledged.notify_waiters();
    }

    /// Drops the oldest pending report, which the server refused; returns its sequence.
    pub fn drop_refused(&self) -> Option<u64> {
        let dropped = self.lock().backlog.drop_oldest();
        self.acknowledged.notify_waiters();
        dropped
    }

    /// Sequence of the oldest report not yet acknowledged.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.lock()
            .backlog
            .next_after(0)
            .map(|report| report.sequence)
    }

    /// Makes the next report carry every sysctl (after a reconnect).
    pub fn request_full_sysctls(&self) {
        self.lock().builder.send_full_sysctls();
    }

    /// The next report to send after `sequence`, with the run's drop count so far.
    pub fn next_after(&self, sequence: u64) -> Option<(Report, u64)> {
        let state = self.lock();
        let report = state.backlog.next_after(sequence)?.clone();
        Some((report, state.backlog.dropped()))
    }

    /// Waits until a report is enqueued (returns at once if one was enqueued since the last wait).
    pub async fn wait_pushed(&self) {
        self.pushed.notified().await;
    }

    /// Waits until every pending report has been acknowledged or dropped.
    pub async fn wait_drained(&self) {
        loop {
            let acknowledged = self.acknowledged.notified();
            if self.lock().backlog.is_empty() {
                return;
            }
            acknowledged.await;
        }
    }

    /// Counters of this run: reports built, still pending, dropped.
    pub fn counters(&self) -> QueueCounters {
        let state = self.lock();
        QueueCounters {
            collected: state.builder.last_sequence(),
            pending: state.backlog.len() as u64,
            dropped: state.backlog.dropped(),
        }
    }
}

/// How many reports a run has built, still holds and has dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    pub collected: u64,
    pub pending: u64,
    pub dropped: u64,
}
