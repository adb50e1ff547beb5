//! The per-host rules: each looks at one scope (the host's own network namespace, or another one) as
//! its reports arrive and says which alerts should be firing now.
//!
//! A rule keeps what it needs between samples (hysteresis trackers, counters, short histories) in the
//! scope's [`ScopeState`]. A rule that cannot judge a sample (the report lacks the counters or breakdowns
//! it needs) gives no verdict, and its alerts stay as they are.

mod close_wait;
mod kernel;
mod ports;
mod sysctl;
mod text;
mod time_wait;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sockfleet_domain::{Breakdowns, FamilyCounts, KernelCounters, SysctlValues};

use super::hysteresis::{Thresholds, Tracker};
use super::model::{Annotations, Labels, RuleName, Severity};
use super::settings::Rules;

pub use sysctl::drift_candidates;
pub use text::annotations as text_annotations;

/// One alert a rule wants firing now.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// What the alert is about within its scope (`host`, `pid:123`, `dst:...`, `sysctl:...`).
    pub subject: String,
    pub severity: Severity,
    pub value: f64,
    /// Labels besides `alertname`, `severity`, `host` and `namespace`.
    pub labels: Labels,
    pub annotations: Annotations,
}

/// A rule's judgement of one sample: every alert it wants firing in the scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub rule: RuleName,
    pub findings: Vec<Finding>,
}

/// One report's view of one scope, with the scope's sysctls as they stand after it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub at: DateTime<Utc>,
    /// The host's name, for texts.
    pub host: &'a str,
    /// `None` for the host's own namespace; the namespace's name or inode otherwise, for texts.
    pub namespace: Option<&'a str>,
    pub states: &'a FamilyCounts,
    pub kernel: Option<&'a KernelCounters>,
    pub breakdowns: Option<&'a Breakdowns>,
    pub sysctls: &'a SysctlValues,
    /// The agent's collection period, for estimates.
    pub interval: std::time::Duration,
}

impl Sample<'_> {
    /// A sysctl's value as a number, if set and numeric.
    pub fn sysctl_number(&self, name: &str) -> Option<u64> {
        self.sysctls
            .get(name)
            .and_then(Option::as_deref)
            .and_then(|value| value.trim().parse().ok())
    }

    /// "on web-1" or "in namespace X of web-1", for summaries.
    pub fn place(&self) -> String {
        match self.namespace {
            Some(namespace) => format!("in namespace {namespace} of {}", self.host),
            None => format!("on {}", self.host),
        }
    }
}

/// What the rules remember about one scope between samples.
#[derive(Debug, Default)]
pub struct ScopeState {
    trackers: HashMap<(RuleName, String), Tracker>,
    time_wait: time_wait::History,
    kernel: kernel::History,
    close_wait: close_wait::History,
}

impl ScopeState {
    /// Starts `rule`'s tracker of `subject` as firing at `severity`: what the database says stands.
    pub fn assume_firing(&mut self, rule: RuleName, subject: &str, severity: Severity) {
        self.trackers
            .insert((rule, subject.to_owned()), Tracker::firing_at(severity));
    }

    /// Fills the TIME_WAIT baseline from stored per-minute TIME_WAIT totals, oldest first.
    pub fn seed_time_wait(&mut self, minutes: impl IntoIterator<Item = (DateTime<Utc>, u64)>) {
        self.time_wait.seed(minutes);
    }

    /// Judges one sample with every enabled rule.
    pub fn evaluate(&mut self, sample: &Sample<'_>, rules: &Rules) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(RuleName::ALL.len());
        let mut judge = |rule: RuleName, findings: Option<Vec<Finding>>| {
            if let Some(findings) = findings {
                verdicts.push(Verdict { rule, findings });
            }
        };
        self.time_wait.record(sample);
        self.kernel.record(sample, rules);
        self.close_wait.record(sample, rules);

        let mut trackers = Trackers {
            trackers: &mut self.trackers,
        };
        if rules.time_wait_bucket_pressure.enabled {
            judge(
                RuleName::TimeWaitBucketPressure,
                time_wait::bucket_pressure(sample, rules, &mut trackers),
            );
        }
        if rules.time_wait_overflow.enabled {
            judge(
                RuleName::TimeWaitOverflow,
                kernel::time_wait_overflow(sample, rules, &self.kernel, &mut trackers),
            );
        }
        if rules.ephemeral_port_pressure.enabled {
            judge(
                RuleName::EphemeralPortPressure,
                ports::pressure(sample, rules, &mut trackers),
            );
        }
        if rules.time_wait_spike.enabled {
            judge(
                RuleName::TimeWaitSpike,
                time_wait::spike(sample, rules, &self.time_wait, &mut trackers),
            );
        }
        if rules.close_wait_stuck.enabled {
            judge(
                RuleName::CloseWaitStuck,
                close_wait::stuck(sample, rules, &self.close_wait),
            );
        }
        if rules.close_wait_leak.enabled {
            judge(
                RuleName::CloseWaitLeak,
                close_wait::leak(sample, rules, &self.close_wait, &mut trackers),
            );
        }
        if rules.close_wait_high.enabled {
            judge(
                RuleName::CloseWaitHigh,
                close_wait::high(sample, rules, &mut trackers),
            );
        }
        if rules.orphan_pressure.enabled {
            judge(
                RuleName::OrphanPressure,
                kernel::orphan_pressure(sample, rules, &mut trackers),
            );
        }
        if rules.listen_queue_overflow.enabled {
            judge(
                RuleName::ListenQueueOverflow,
                kernel::listen_queue_overflow(sample, rules, &self.kernel, &mut trackers),
            );
        }
        if rules.sysctl_misconfig.enabled {
            judge(
                RuleName::SysctlMisconfig,
                Some(sysctl::misconfig(sample, &rules.sysctl_misconfig)),
            );
        }
        self.trackers.retain(|_, tracker| !tracker.is_idle());
        verdicts
    }
}

/// The hysteresis trackers of a scope, by rule and subject.
struct Trackers<'a> {
    trackers: &'a mut HashMap<(RuleName, String), Tracker>,
}

impl Trackers<'_> {
    /// Feeds `value` to the tracker of (rule, subject) and returns the level it fires at.
    fn level(
        &mut self,
        rule: RuleName,
        subject: &str,
        value: f64,
        thresholds: &Thresholds,
    ) -> Option<Severity> {
        self.tracker(rule, subject).observe(value, thresholds)
    }

    /// Feeds an event (or its absence) to the tracker of (rule, subject).
    fn event(
        &mut self,
        rule: RuleName,
        subject: &str,
        happened: bool,
        severity: Severity,
        quiet_samples: u32,
    ) -> Option<Severity> {
        self.tracker(rule, subject)
            .observe_event(happened, severity, quiet_samples)
    }

    /// Subjects of `rule` that are firing or on their way, for rules whose subjects come and go.
    fn subjects(&self, rule: RuleName) -> Vec<String> {
        self.trackers
            .keys()
            .filter(|(tracked, _)| *tracked == rule)
            .map(|(_, subject)| subject.clone())
            .collect()
    }

    /// Forgets a subject that is gone (a destination no longer used, a process that exited).
    fn forget(&mut self, rule: RuleName, subject: &str) {
        self.trackers.remove(&(rule, subject.to_owned()));
    }

    fn tracker(&mut self, rule: RuleName, subject: &str) -> &mut Tracker {
        self.trackers.entry((rule, subject.to_owned())).or_default()
    }
}

/// The subject of a rule about the whole scope.
const WHOLE_SCOPE: &str = "host";
