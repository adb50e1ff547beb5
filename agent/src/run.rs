//! Running the agent: one snapshot, or the collect-and-stream loop until shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use sockfleet_domain::{Snapshot, TopN};
use sockfleet_proto::v1;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::collect::{CollectorChoice, CollectorSettings, CollectorThread};
use crate::identity::HostIdentity;
use crate::stream::{
    Backlog, BacklogLimits, ReportQueue, Spool, SpoolSettings, StreamTarget, maintain_stream,
};

/// Everything the agent needs to run, validated: built from flags by `sockfleet-agent` and from the
/// server's own settings by `sockfleet-server --local-agent`.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub identity: HostIdentity,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    pub collector: CollectorChoice,
    pub netns: Option<PathBuf>,
    /// Most unacknowledged reports kept, in memory and spool together.
    pub backlog: usize,
    /// Most bytes of unacknowledged reports kept in memory (as encoded); beyond it the oldest go to the
    /// spool, or are dropped without one.
    pub backlog_memory: usize,
    /// Where reports that do not fit in memory wait on disk; `None` keeps the backlog in memory only.
    pub spool: Option<SpoolSettings>,
    /// Entries kept in each breakdown list.
    pub top_n: TopN,
    /// Whether to collect in every other network namespace of the host too.
    pub all_namespaces: bool,
    /// Most other namespaces collected in per collection (those with the lowest inodes).
    pub max_namespaces: usize,
}

/// What a streaming run did, logged when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    /// Reports collected (the last sequence number of the run).
    pub collected: u64,
    /// Reports the server had not acknowledged when the agent stopped.
    pub unacknowledged: u64,
    /// Reports dropped because the backlog was full or the server refused them.
    pub dropped: u64,
    /// Of the unacknowledged reports, those left in the spool (the next run discards them).
    pub spooled: u64,
}

/// Takes one snapshot of the host.
pub async fn snapshot_once(settings: &AgentSettings) -> anyhow::Result<Snapshot> {
    let collector = start_collector(settings)?;
    let collected_at = Utc::now();
    let collection = collector.collect().await.context("collection failed")?;
    Ok(Snapshot {
        host_id: settings.identity.host_id.clone(),
        hostname: settings.identity.hostname.clone(),
        collected_at,
        states: collection.states,
        sysctls: collection.sysctls,
        kernel: collection.kernel,
        breakdowns: collection.breakdowns,
        namespaces: collection.namespaces,
        kernel_release: settings.identity.kernel_release.clone(),
        collector: collector.kind(),
    })
}

/// Collects every interval and streams reports to `server` until `shutdown` is cancelled.
pub async fn run_agent(
    settings: AgentSettings,
    server: String,
    shutdown: CancellationToken,
) -> anyhow::Result<RunSummary> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let backlog = open_backlog(&settings, &run_id)?;
    let collector = start_collector(&settings)?;
    let queue = Arc::new(ReportQueue::new(backlog));
    let (interval_tx, interval_rx) = watch::channel(settings.interval);
    let target = StreamTarget {
        server: server.clone(),
        hello: hello_message(&settings, collector.kind().name(), run_id),
    };
    tracing::info!(
        server,
        host_id = %settings.identity.host_id,
        collector = collector.kind().name(),
        interval = ?settings.interval,
        backlog_memory = settings.backlog_memory,
        spool = settings.spool.as_ref().map(|spool| spool.dir.display().to_string()),
        all_namespaces = settings.all_namespaces,
        "agent started"
    );

    let collecting = tokio::spawn(collect_loop(
        collector,
        Arc::clone(&queue),
        interval_rx,
        shutdown.clone(),
    ));
    maintain_stream(&target, &queue, &interval_tx, &shutdown).await;
    shutdown.cancel();
    collecting.await.context("collection task failed")?;

    let counters = queue.counters();
    let summary = RunSummary {
        collected: counters.collected,
        unacknowledged: counters.pending,
        dropped: counters.dropped,
        spooled: counters.spooled,
    };
    tracing::info!(
        collected = summary.collected,
        unacknowledged = summary.unacknowledged,
        dropped = summary.dropped,
        spooled = summary.spooled,
        "agent stopped"
    );
    Ok(summary)
}

/// The backlog the settings ask for; with a spool directory, opening it (which discards what earlier
/// runs left there) must succeed.
fn open_backlog(settings: &AgentSettings, run_id: &str) -> anyhow::Result<Backlog> {
    let limits = BacklogLimits {
        max_reports: settings.backlog,
        memory_bytes: settings.backlog_memory,
    };
    Ok(match &settings.spool {
        Some(spool) => {
            let spool = Spool::open(spool, run_id).with_context(|| {
                format!("cannot use the spool directory {}", spool.dir.display())
            })?;
            Backlog::with_spool(limits, spool)
        }
        None => Backlog::new(limits),
    })
}

fn start_collector(settings: &AgentSettings) -> anyhow::Result<CollectorThread> {
    CollectorThread::spawn(CollectorSettings {
        choice: settings.collector,
        netns: settings.netns.clone(),
        top_n: settings.top_n,
        max_namespaces: settings.all_namespaces.then_some(settings.max_namespaces),
    })
    .context("cannot start collecting")
}

async fn collect_loop(
    collector: CollectorThread,
    queue: Arc<ReportQueue>,
    mut interval_rx: watch::Receiver<Duration>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(*interval_rx.borrow_and_update());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Ok(()) = interval_rx.changed() => {
                ticker = tokio::time::interval(*interval_rx.borrow_and_update());
                ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
                continue;
            }
            () = shutdown.cancelled() => return,
        }
        let collected_at = Utc::now();
        let result = collector.collect().await;
        if shutdown.is_cancelled() {
            // The stream may already have flushed what was pending and be done: a report queued now
            // would only be counted as unacknowledged.
            tracing::debug!("stopping; discarding the collection in progress");
            return;
        }
        match result {
            Ok(collection) => {
                let sequence = queue.enqueue(collected_at, collection);
                tracing::debug!(sequence, "collected");
            }
            Err(error) => tracing::warn!(%error, "collection failed; will retry next interval"),
        }
    }
}

fn hello_message(settings: &AgentSettings, collector: &str, run_id: String) -> v1::Hello {
    v1::Hello {
        protocol_version: v1::PROTOCOL_VERSION,
        host_id: settings.identity.host_id.to_string(),
        hostname: settings.identity.hostname.clone(),
        kernel_release: settings.identity.kernel_release.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: settings.labels.clone().into_iter().collect(),
        run_id,
        collector: collector.to_owned(),
        interval_ms: u32::try_from(settings.interval.as_millis()).unwrap_or(u32::MAX),
    }
}
