//! The resolved settings the alert engine runs with: every rule's thresholds and hysteresis, with the
//! defaults of TCP-FACTS.md. The TOML file is turned into these by [`super::config`].

use std::collections::BTreeSet;
use std::time::Duration;

use super::model::Severity;

/// How many samples a condition must hold before an alert fires, and how many samples below a lower
/// bound it must stay before the alert resolves, so a value hovering at a threshold does not flap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    /// Consecutive samples at or above the threshold before firing (≥ 1).
    pub fire_after: u32,
    /// Consecutive samples below `threshold × clear_ratio` before resolving (≥ 1).
    pub resolve_after: u32,
    /// Where the lower bound sits, as a fraction of the threshold (0 < ratio ≤ 1).
    pub clear_ratio: f64,
}

impl Hysteresis {
    const fn new(fire_after: u32, resolve_after: u32, clear_ratio: f64) -> Hysteresis {
        Hysteresis {
            fire_after,
            resolve_after,
            clear_ratio,
        }
    }
}

/// A rule comparing a value with a warning and a critical threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Levels {
    pub enabled: bool,
    /// `None`: no warning level.
    pub warning: Option<f64>,
    /// `None`: no critical level.
    pub critical: Option<f64>,
    pub hysteresis: Hysteresis,
}

/// A rule that fires on an event (a counter rising) and resolves after quiet samples.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterRule {
    pub enabled: bool,
    pub severity: Severity,
    /// How far back the rise is measured (at least one sample).
    pub window: Duration,
    /// Consecutive samples without a rise before resolving.
    pub resolve_after: u32,
}

/// `TimeWaitSpike`: TIME_WAIT far above its own recent median.
#[derive(Debug, Clone, PartialEq)]
pub struct SpikeRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Fires above `factor ×` the median of the baseline.
    pub factor: f64,
    /// ...and above this absolute count.
    pub min: u64,
    /// How far back the median looks.
    pub baseline: Duration,
    pub hysteresis: Hysteresis,
}

/// `CloseWaitStuck`: one socket stays in CLOSE_WAIT.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Samples the socket must have been seen in.
    pub min_samples: u32,
    /// Time since the agent first saw it.
    pub min_age: Duration,
}

/// `CloseWaitLeak`: a process's CLOSE_WAIT count never goes down and keeps growing.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Samples the count must not have decreased over.
    pub samples: u32,
    /// Growth over those samples.
    pub min_growth: u32,
    /// Consecutive samples without growth (or with a decrease) before resolving.
    pub resolve_after: u32,
}

/// `SysctlMisconfig`: advice that knows the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct SysctlRule {
    pub enabled: bool,
    /// Sysctl names (`net.ipv4.tcp_fin_timeout`) whose advice is not wanted.
    pub ignore: BTreeSet<String>,
}

/// `SysctlDrift`: hosts of one group whose TCP sysctls differ from the group's majority.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Host labels that define a group (hosts sharing the value of any of them); empty: no drift check.
    pub group_labels: Vec<String>,
    /// Smallest group with a meaningful majority.
    pub min_hosts: u32,
    /// Sysctls not compared.
    pub ignore: BTreeSet<String>,
}

/// `AgentSilent`: a host stopped reporting.
#[derive(Debug, Clone, PartialEq)]
pub struct SilentRule {
    pub enabled: bool,
    pub severity: Severity,
    /// Missed collection intervals before firing.
    pub intervals: u32,
}

/// Every rule's settings, for one host (after the overrides matching its labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// TIME_WAIT / `tcp_max_tw_buckets`.
    pub time_wait_bucket_pressure: Levels,
    pub time_wait_overflow: CounterRule,
    /// Sockets to the busiest destination / usable local ports.
    pub ephemeral_port_pressure: Levels,
    pub time_wait_spike: SpikeRule,
    pub close_wait_stuck: StuckRule,
    pub close_wait_leak: LeakRule,
    /// Host (namespace) CLOSE_WAIT count.
    pub close_wait_high: Levels,
    /// Orphans / `tcp_max_orphans`.
    pub orphan_pressure: Levels,
    pub listen_queue_overflow: CounterRule,
    pub sysctl_misconfig: SysctlRule,
    pub sysctl_drift: DriftRule,
    pub agent_silent: SilentRule,
}

impl Default for Rules {
    /// The defaults of TCP-FACTS.md.
    fn default() -> Rules {
        Rules {
            time_wait_bucket_pressure: Levels {
                enabled: true,
                warning: Some(0.5),
                critical: Some(0.8),
                hysteresis: Hysteresis::new(2, 2, 0.9),
            },
            time_wait_overflow: CounterRule {
                enabled: true,
                severity: Severity::Critical,
                window: Duration::ZERO,
                resolve_after: 6,
            },
            ephemeral_port_pressure: Levels {
                enabled: true,
                warning: Some(0.5),
                critical: Some(0.8),
                hysteresis: Hysteresis::new(1, 2, 0.9),
            },
            time_wait_spike: SpikeRule {
                enabled: true,
                severity: Severity::Info,
                factor: 3.0,
                min: 5000,
                baseline: Duration::from_secs(3600),
                hysteresis: Hysteresis::new(1, 3, 0.8),
            },
            close_wait_stuck: StuckRule {
                enabled: true,
                severity: Severity::Warning,
                min_samples: 3,
                min_age: Duration::from_secs(300),
            },
            close_wait_leak: LeakRule {
                enabled: true,
                severity: Severity::Critical,
                samples: 10,
                min_growth: 10,
                resolve_after: 3,
            },
            close_wait_high: Levels {
                enabled: true,
                warning: Some(100.0),
                critical: Some(1000.0),
                hysteresis: Hysteresis::new(2, 2, 0.9),
            },
            orphan_pressure: Levels {
                enabled: true,
                warning: Some(0.25),
                critical: Some(0.5),
                hysteresis: Hysteresis::new(2, 2, 0.9),
            },
            listen_queue_overflow: CounterRule {
                enabled: true,
                severity: Severity::Warning,
                window: Duration::from_secs(60),
                resolve_after: 6,
            },
            sysctl_misconfig: SysctlRule {
                enabled: true,
                ignore: BTreeSet::new(),
            },
            sysctl_drift: DriftRule {
                enabled: true,
                severity: Severity::Info,
                group_labels: Vec::new(),
                min_hosts: 3,
                ignore: BTreeSet::new(),
            },
            agent_silent: SilentRule {
                enabled: true,
                severity: Severity::Warning,
                intervals: 3,
            },
        }
    }
}
