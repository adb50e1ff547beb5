//! What an alert is: the names, severities and records the engine, the storage, the webhooks and the
//! API share.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sockfleet_domain::HostId;

/// Label names and values of an alert (`alertname`, `severity`, `host`, and where known `pid`, `comm`,
/// `local_port`, `remote`, `namespace`).
pub type Labels = BTreeMap<String, String>;
/// Texts for people: `summary`, `description`, `action`.
pub type Annotations = BTreeMap<String, String>;

/// How urgent an alert is; ordered from least to most urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The lower-case name used in labels, the API and configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not a severity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a severity: use info, warning or critical")]
pub struct InvalidSeverity(pub String);

impl FromStr for Severity {
    type Err = InvalidSeverity;

    fn from_str(raw: &str) -> Result<Severity, InvalidSeverity> {
        match raw {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            _ => Err(InvalidSeverity(raw.to_owned())),
        }
    }
}

/// Whether an alert's condition holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    /// The lower-case name used in the API, the database and webhook bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// The rules sockfleet evaluates; the names are the `alertname` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleName {
    TimeWaitBucketPressure,
    TimeWaitOverflow,
    EphemeralPortPressure,
    TimeWaitSpike,
    CloseWaitStuck,
    CloseWaitLeak,
    CloseWaitHigh,
    OrphanPressure,
    ListenQueueOverflow,
    SysctlMisconfig,
    SysctlDrift,
    AgentSilent,
}

impl RuleName {
    /// Every rule, in the order of TCP-FACTS.md's table (drift last but one).
    pub const ALL: [RuleName; 12] = [
        RuleName::TimeWaitBucketPressure,
        RuleName::TimeWaitOverflow,
        RuleName::EphemeralPortPressure,
        RuleName::TimeWaitSpike,
        RuleName::CloseWaitStuck,
        RuleName::CloseWaitLeak,
        RuleName::CloseWaitHigh,
        RuleName::OrphanPressure,
        RuleName::ListenQueueOverflow,
        RuleName::SysctlMisconfig,
        RuleName::SysctlDrift,
        RuleName::AgentSilent,
    ];

    /// The rule's name as it appears in labels and configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleName::TimeWaitBucketPressure => "TimeWaitBucketPressure",
            RuleName::TimeWaitOverflow => "TimeWaitOverflow",
            RuleName::EphemeralPortPressure => "EphemeralPortPressure",
            RuleName::TimeWaitSpike => "TimeWaitSpike",
            RuleName::CloseWaitStuck => "CloseWaitStuck",
            RuleName::CloseWaitLeak => "CloseWaitLeak",
            RuleName::CloseWaitHigh => "CloseWaitHigh",
            RuleName::OrphanPressure => "OrphanPressure",
            RuleName::ListenQueueOverflow => "ListenQueueOverflow",
            RuleName::SysctlMisconfig => "SysctlMisconfig",
            RuleName::SysctlDrift => "SysctlDrift",
            RuleName::AgentSilent => "AgentSilent",
        }
    }
}

impl fmt::Display for RuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not a rule name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a sockfleet rule")]
pub struct UnknownRule(pub String);

impl FromStr for RuleName {
    type Err = UnknownRule;

    fn from_str(raw: &str) -> Result<RuleName, UnknownRule> {
        RuleName::ALL
            .into_iter()
            .find(|rule| rule.as_str() == raw)
            .ok_or_else(|| UnknownRule(raw.to_owned()))
    }
}

/// One alert as stored and shown: a rule's finding about one subject of one host, from when it started
/// firing to when it resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// Database id.
    pub id: i64,
    pub host_id: HostId,
    pub rule: RuleName,
    /// What on the host the alert is about (a namespace, a process, a socket, a destination, a
    /// sysctl): at most one alert per (host, rule, subject) fires at a time.
    pub subject: String,
    pub severity: Severity,
    pub status: AlertStatus,
    pub labels: Labels,
    pub annotations: Annotations,
    /// The measured value that made the rule fire (or its latest value).
    pub value: f64,
    pub starts_at: DateTime<Utc>,
    /// When it resolved; `None` while firing.
    pub ends_at: Option<DateTime<Utc>>,
    /// A stable hash of the labels, as Alertmanager gives one.
    pub fingerprint: String,
}
