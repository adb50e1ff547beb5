//! Group commit: reports from every stream are committed together, and each stream learns when its
//! report is durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alerts::engine::AlertEngine;
use crate::storage::{IncomingReport, Store};

/// How the batch writer groups reports.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most reports in one transaction.
    pub max_reports: usize,
    /// Longest a report waits for others to join its batch.
    pub max_delay: Duration,
    /// Reports waiting for the writer before streams are made to wait (back-pressure).
    pub queue_capacity: usize,
}

impl Default for BatchSettings {
    fn default() -> BatchSettings {
        BatchSettings {
            max_reports: 500,
            max_delay: Duration::from_millis(20),
            queue_capacity: 4096,
        }
    }
}

/// Why a report was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("the batch writer has stopped")]
    Stopped,
}

struct Job {
    report: IncomingReport,
    committed: oneshot::Sender<Result<(), CommitError>>,
}

/// Hands reports to the writer task. Cloned into every stream.
#[derive(Clone)]
pub struct BatchWriter {
    jobs: mpsc::Sender<Job>,
}

/// A report's place in a batch: resolves once its transaction has committed (or failed).
pub type Commit = oneshot::Receiver<Result<(), CommitError>>;

impl BatchWriter {
    /// Starts the writer task on `store`; committed reports are handed to `engine`, if any. It ends
    /// when every `BatchWriter` clone is dropped or `stop` is cancelled, after committing what was
    /// already queued; later submissions get [`CommitError::Stopped`].
    pub fn spawn(
        store: Arc<dyn Store>,
        settings: BatchSettings,
        engine: Option<AlertEngine>,
        stop: CancellationToken,
    ) -> (BatchWriter, tokio::task::JoinHandle<()>) {
        let (jobs, incoming) = mpsc::channel(settings.queue_capacity.max(1));
        let task = tokio::spawn(write_batches(store, incoming, settings, engine, stop));
        (BatchWriter { jobs }, task)
    }

    /// Queues a report; waits while the queue is full, so a slow database slows the streams down
    /// instead of filling memory.
    pub async fn submit(&self, report: IncomingReport) -> Commit {
        let (committed, commit) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { report, committed }).await {
            let _ = job.committed.send(Err(CommitError::Stopped));
        }
        commit
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut incoming: mpsc::Receiver<Job>,
    settings: BatchSettings,
    engine: Option<AlertEngine>,
    stop: CancellationToken,
) {
    let mut reports: Vec<IncomingReport> = Vec::with_capacity(settings.max_reports);
    let mut waiters: Vec<oneshot::Sender<Result<(), CommitError>>> =
        Vec::with_capacity(settings.max_reports);
    loop {
        let first = tokio::select! {
            job = incoming.recv() => job,
            () = stop.cancelled(), if !incoming.is_closed() => {
                // Refuse new work but commit what is already queued.
                incoming.close();
                continue;
            }
        };
        let Some(first) = first else { return };
        let deadline = Instant::now() + settings.max_delay;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            reports.push(job.report);
            waiters.push(job.committed);
            if reports.len() < settings.max_reports
                && let Ok(Some(job)) = tokio::time::timeout_at(deadline, incoming.recv()).await
            {
                next = Some(job);
            }
        }
        let started = Instant::now();
        let outcome = store
            .commit_reports(&reports)
            .await
            .map_err(|error| CommitError::Storage(error.to_string()));
        match &outcome {
            Ok(()) => {
                tracing::debug!(reports = reports.len(), elapsed = ?started.elapsed(), "batch committed")
            }
            Err(error) => tracing::error!(%error, reports = reports.len(), "batch commit failed"),
        }
        for waiter in waiters.drain(..) {
            let _ = waiter.send(outcome.clone());
        }
        match (&engine, outcome) {
            (Some(engine), Ok(())) => engine.observe(std::mem::take(&mut reports)).await,
            _ => reports.clear(),
        }
    }
}
