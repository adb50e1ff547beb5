//! The records the storage layer takes and returns.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sockfleet_domain::{
    AgentHello, Breakdowns, FamilyCounts, HostId, KernelCounters, NamespaceIdentity, Report,
    SysctlValues,
};

/// One agent stream as storage sees it: the hello, and the database keys of its host and run once the
/// first report has registered them (so later batches need no lookups).
#[derive(Debug)]
pub struct AgentSession {
    pub hello: AgentHello,
    pub(super) keys: OnceLock<RunKeys>,
    /// The run's drop count last written, so it is only written when it grows.
    pub(super) dropped_written: AtomicU64,
}

impl AgentSession {
    /// A session for a stream that said `hello`.
    pub fn new(hello: AgentHello) -> AgentSession {
        AgentSession {
            hello,
            keys: OnceLock::new(),
            dropped_written: AtomicU64::new(0),
        }
    }
}

/// Database keys of a host and one of its agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunKeys {
    pub host: i64,
    pub run: i64,
}

/// A validated report waiting to be committed.
#[derive(Debug, Clone)]
pub struct IncomingReport {
    pub session: std::sync::Arc<AgentSession>,
    pub report: Report,
    /// Reports the agent has dropped so far in this run.
    pub dropped_reports: u64,
}

/// One stored report of a host's own namespace, as the alert engine replays it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub collected_at: DateTime<Utc>,
    pub states: FamilyCounts,
    pub kernel: Option<KernelCounters>,
    pub breakdowns: Option<Breakdowns>,
}

/// When a host last reported, for the rule that notices silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostActivity {
    pub host_id: HostId,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    /// Collection time of its latest report; `None` if it never reported.
    pub last_seen: Option<DateTime<Utc>>,
}

/// Which hosts to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPage {
    /// Only hosts whose id sorts after this one (keyset pagination).
    pub after: Option<HostId>,
    pub limit: u32,
}

/// A host with its latest counts: a row of the fleet list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostOverview {
    pub host_id: HostId,
    pub hostname: String,
    pub kernel_release: String,
    pub agent_version: String,
    pub collector: String,
    pub labels: BTreeMap<String, String>,
    #[serde(serialize_with = "serialize_seconds")]
    pub interval_seconds: Duration,
    pub first_seen: DateTime<Utc>,
    /// Collection time of the latest report, if any.
    pub last_seen: Option<DateTime<Utc>>,
    /// Counts of the latest report, if any.
    pub states: Option<FamilyCounts>,
}

/// A host with everything the detail view shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostDetail {
    #[serde(flatten)]
    pub overview: HostOverview,
    /// Current sysctl values (`null` for settings the kernel lacks).
    pub sysctls: SysctlValues,
    /// Reports the current agent run has dropped (backlog overflow while the server was unreachable).
    pub dropped_reports: u64,
    /// The kernel's TCP counters of the latest report that carried them.
    pub kernel: Option<KernelCounters>,
    /// The breakdowns of the latest report that carried them.
    pub breakdowns: Option<Breakdowns>,
    /// The host's other network namespaces, most recently seen first.
    pub namespaces: Vec<NamespaceOverview>,
}

/// One of a host's other network namespaces, with its latest report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceOverview {
    pub inode: u64,
    #[serde(flatten)]
    pub identity: NamespaceIdentity,
    pub first_seen: DateTime<Utc>,
    /// Collection time of the latest report that included the namespace.
    pub last_seen: Option<DateTime<Utc>>,
    pub states: Option<FamilyCounts>,
    pub sysctls: SysctlValues,
    pub kernel: Option<KernelCounters>,
    pub breakdowns: Option<Breakdowns>,
}

/// Whose sysctls: the host's own namespace or one of its other namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SysctlScope {
    Host,
    Namespace(i64),
}

/// One recorded value of a sysctl: the first one seen, or a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    pub name: String,
    /// `None` when the kernel lacks the setting.
    pub value: Option<String>,
    /// Collection time of the report that first showed this value.
    pub changed_at: DateTime<Utc>,
}

/// A time range of one host's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Average the counts over buckets of this length; `None` returns every report.
    pub step: Option<Duration>,
    /// The counts of this network namespace (by inode) instead of the host's own.
    pub namespace: Option<u64>,
    pub limit: u32,
}

/// The counts of one report, or the average over one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Collection time, or the start of the step.
    pub time: DateTime<Utc>,
    pub states: FamilyCounts,
}

fn serialize_seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// What a commit learns about its sessions, applied to them only once the transaction has committed (a
/// rolled-back registration must be done again by the next batch).
#[derive(Debug, Default)]
pub(super) struct CommitBookkeeping<'a> {
    registered: Vec<(&'a AgentSession, RunKeys)>,
    dropped: Vec<(&'a AgentSession, u64)>,
}

impl<'a> CommitBookkeeping<'a> {
    /// The session's keys, if it was registered before or earlier in this commit.
    pub fn keys(&self, session: &AgentSession) -> Option<RunKeys> {
        session.keys.get().copied().or_else(|| {
            self.registered
                .iter()
                .find(|(known, _)| std::ptr::eq(*known, session))
                .map(|(_, keys)| *keys)
        })
    }

    /// Notes keys registered by this commit.
    pub fn register(&mut self, session: &'a AgentSession, keys: RunKeys) {
        self.registered.push((session, keys));
    }

    /// Whether the run's drop count must be written, noting it if so.
    pub fn dropped_grew(&mut self, session: &'a AgentSession, dropped: u64) -> bool {
        let grew = dropped
            > session
                .dropped_written
                .load(std::sync::atomic::Ordering::Relaxed);
        if grew {
            self.dropped.push((session, dropped));
        }
        grew
    }

    /// Records on the sessions what the committed transaction wrote.
    pub fn apply(self) {
        for (session, keys) in self.registered {
            let _ = session.keys.set(keys);
        }
        for (session, dropped) in self.dropped {
            session
                .dropped_written
                .fetch_max(dropped, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
