//! The report queue shared by the collection loop and the stream.

use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::backlog::{Backlog, Outgoing};
use super::report::ReportBuilder;
use crate::collect::Collection;

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
    /// An empty queue keeping unacknowledged reports in `backlog`.
    pub fn new(backlog: Backlog) -> ReportQueue {
        ReportQueue {
            state: Mutex::new(QueueState {
                builder: ReportBuilder::default(),
                backlog,
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
            state.backlog.push(&report);
            state.request_full_sysctls_if_needed();
            report.sequence
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
        let dropped = {
            let mut state = self.lock();
            let dropped = state.backlog.drop_oldest();
            state.request_full_sysctls_if_needed();
            dropped
        };
        self.acknowledged.notify_waiters();
        dropped
    }

    /// Sequence of the oldest report not yet acknowledged.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.lock().backlog.oldest_pending()
    }

    /// Makes the next report carry every sysctl (after a reconnect).
    pub fn request_full_sysctls(&self) {
        self.lock().builder.send_full_sysctls();
    }

    /// The next report to send on a stream that has sent everything up to `sequence`, with the run's
    /// drop count so far. It may be read from the spool.
    pub fn next_after(&self, sequence: u64) -> Option<Outgoing> {
        let mut state = self.lock();
        let next = state.backlog.next_after(sequence);
        state.request_full_sysctls_if_needed();
        next
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
            pending: state.backlog.len(),
            dropped: state.backlog.dropped(),
            spooled: state.backlog.spooled(),
            spool_bytes: state.backlog.spool_bytes(),
            memory_bytes: state.backlog.memory_bytes() as u64,
        }
    }
}

impl QueueState {
    /// Passes the backlog's request for a full sysctl set (after a drop it could not carry over) on to
    /// the builder.
    fn request_full_sysctls_if_needed(&mut self) {
        if self.backlog.take_full_sysctls_request() {
            self.builder.send_full_sysctls();
        }
    }
}

/// How many reports a run has built, still holds and has dropped, and where it holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    pub collected: u64,
    /// Unacknowledged, in memory and spool.
    pub pending: u64,
    pub dropped: u64,
    /// Of the pending reports, those in the spool.
    pub spooled: u64,
    pub spool_bytes: u64,
    pub memory_bytes: u64,
}
