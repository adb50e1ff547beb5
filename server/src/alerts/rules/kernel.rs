//! Rules on the kernel's TCP counters: TIME_WAIT overflows, orphans, listen-queue overflows.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use sockfleet_domain::KernelCounters;

use super::text::{annotations, count, percent};
use super::{Finding, Sample, Trackers, WHOLE_SCOPE};
use crate::alerts::hysteresis::Thresholds;
use crate::alerts::model::RuleName;
use crate::alerts::settings::Rules;

const MAX_ORPHANS: &str = "net.ipv4.tcp_max_orphans";
/// Most samples of counters kept (a 1-hour window at a 10 s interval).
const MAX_SAMPLES: usize = 360;

/// The counters of recent samples, newest last.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<(DateTime<Utc>, KernelCounters)>,
    /// Increase of TCPTimeWaitOverflow since the previous sample (0 if none or unknown).
    time_wait_overflows: u64,
    /// Increase of ListenOverflows over the listen-queue rule's window.
    listen_overflows: u64,
    /// Whether the sample just recorded carried counters and had a predecessor to compare with.
    comparable: bool,
}

impl History {
    /// Notes the sample's counters and the rises since earlier ones. A counter that went down (the
    /// host rebooted, or its namespace is a new one with the same inode) counts as no rise.
    pub fn record(&mut self, sample: &Sample<'_>, rules: &Rules) {
        let Some(kernel) = sample.kernel else {
            self.comparable = false;
            return;
        };
        let previous = self.samples.back().map(|(_, previous)| *previous);
        self.comparable = previous.is_some();
        self.time_wait_overflows = previous.map_or(0, |previous| {
            kernel
                .time_wait_overflow
                .saturating_sub(previous.time_wait_overflow)
        });
        let window_start = sample.at
            - chrono::Duration::from_std(rules.listen_queue_overflow.window)
                .unwrap_or(chrono::Duration::zero());
        // The counter at the start of the window: the newest sample at or before it, else the oldest.
        let base = self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| *at <= window_start)
            .or(self.samples.front())
            .map(|(_, counters)| counters.listen_overflows);
        self.listen_overflows = base.map_or(0, |base| kernel.listen_overflows.saturating_sub(base));
        self.samples.push_back((sample.at, *kernel));
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|(at, _)| *at < window_start - chrono::Duration::minutes(1))
                && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }
}

/// `TimeWaitOverflow`: TCPTimeWaitOverflow went up since the previous sample.
pub fn time_wait_overflow(
    sample: &Sample<'_>,
    rules: &Rules,
    history: &History,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    if !history.comparable {
        return None;
    }
    let settings = &rules.time_wait_overflow;
    let rise = history.time_wait_overflows;
    let severity = trackers.event(
        RuleName::TimeWaitOverflow,
        WHOLE_SCOPE,
        rise > 0,
        settings.severity,
        settings.resolve_after,
    )?;
    let limit = sample
        .sysctl_number("net.ipv4.tcp_max_tw_buckets")
        .map_or_else(|| "unknown".to_owned(), count);
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: rise as f64,
        labels: Default::default(),
        annotations: annotations(
            format!("TIME_WAIT table overflowing {}", sample.place()),
            format!(
                "TCPTimeWaitOverflow rose by {} since the previous sample: the TIME_WAIT table is \
                 full (net.ipv4.tcp_max_tw_buckets = {limit}) and closing sockets are destroyed \
                 without TIME_WAIT.",
                count(rise)
            ),
            "Reduce connection churn (keep-alive, pooling) and make sure tcp_max_tw_buckets has not \
             been lowered below its default (half the established hash size).",
        ),
    }])
}

/// `OrphanPressure`: orphaned sockets / `tcp_max_orphans`.
pub fn orphan_pressure(
    sample: &Sample<'_>,
    rules: &Rules,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let orphans = sample.kernel?.orphans;
    let limit = sample
        .sysctl_number(MAX_ORPHANS)
        .filter(|limit| *limit > 0)?;
    let ratio = orphans as f64 / limit as f64;
    let thresholds = Thresholds::of(&rules.orphan_pressure);
    let Some(severity) = trackers.level(RuleName::OrphanPressure, WHOLE_SCOPE, ratio, &thresholds)
    else {
        return Some(Vec::new());
    };
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: ratio,
        labels: Default::default(),
        annotations: annotations(
            format!(
                "Orphaned sockets at {} of the limit {}",
                percent(ratio),
                sample.place()
            ),
            format!(
                "{} orphaned sockets (closed by their program, still finishing in the kernel); \
                 {MAX_ORPHANS} is {}. Past the limit the kernel resets them, and each can pin about \
                 64 KB of memory.",
                count(orphans),
                count(limit)
            ),
            "Look for peers that stop reading (FIN_WAIT1 with unsent data) and programs closing many \
             connections at once; raising tcp_max_orphans only buys memory-backed room.",
        ),
    }])
}

/// `ListenQueueOverflow`: ListenOverflows rose within the window.
pub fn listen_queue_overflow(
    sample: &Sample<'_>,
    rules: &Rules,
    history: &History,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    if !history.comparable {
        return None;
    }
    let settings = &rules.listen_queue_overflow;
    let rise = history.listen_overflows;
    let severity = trackers.event(
        RuleName::ListenQueueOverflow,
        WHOLE_SCOPE,
        rise > 0,
        settings.severity,
        settings.resolve_after,
    )?;
    let fullest = sample
        .breakdowns
        .and_then(|breakdowns| breakdowns.listeners.first())
        .map(|listener| {
            format!(
                " The fullest accept queue is {} with {} of {} waiting.",
                listener.local, listener.queued, listener.backlog
            )
        })
        .unwrap_or_default();
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: rise as f64,
        labels: Default::default(),
        annotations: annotations(
            format!("Listen queues overflowing {}", sample.place()),
            format!(
                "ListenOverflows rose by {} within {}: connections completed by the kernel were \
                 dropped because a program did not accept() them fast enough.{fullest}",
                count(rise),
                humantime::format_duration(settings.window)
            ),
            "Make the program accept faster (more acceptor threads, less work before accept) or \
             give it a larger backlog (listen() backlog, capped by net.core.somaxconn).",
        ),
    }])
}
