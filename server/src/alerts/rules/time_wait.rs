//! TIME_WAIT against the kernel's own limit, and against the host's own recent past.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sockfleet_domain::TcpState;

use super::text::{annotations, count, percent};
use super::{Finding, Sample, Trackers, WHOLE_SCOPE};
use crate::alerts::hysteresis::Thresholds;
use crate::alerts::model::RuleName;
use crate::alerts::settings::Rules;

const MAX_TW_BUCKETS: &str = "net.ipv4.tcp_max_tw_buckets";

/// Minutes of baseline before a spike can be judged: a median of a few minutes says little.
const MIN_BASELINE_MINUTES: usize = 10;
/// Longest baseline kept, in minutes (the largest `baseline` the configuration accepts).
const MAX_BASELINE_MINUTES: usize = 24 * 60;

/// TIME_WAIT totals of the past, one per minute (the last sample of each minute).
#[derive(Debug, Default)]
pub struct History {
    minutes: VecDeque<(i64, u64)>,
}

impl History {
    /// Notes the sample's TIME_WAIT total.
    pub fn record(&mut self, sample: &Sample<'_>) {
        let minute = sample.at.timestamp().div_euclid(60);
        let total = time_wait(sample);
        match self.minutes.back_mut() {
            Some((last, value)) if *last == minute => *value = total,
            Some((last, _)) if *last > minute => {}
            _ => self.minutes.push_back((minute, total)),
        }
        while self.minutes.len() > MAX_BASELINE_MINUTES {
            self.minutes.pop_front();
        }
    }

    /// Fills the past from stored per-minute averages (oldest first), when a host's windows are
    /// rebuilt.
    pub fn seed(&mut self, minutes: impl IntoIterator<Item = (DateTime<Utc>, u64)>) {
        for (at, total) in minutes {
            let minute = at.timestamp().div_euclid(60);
            if self.minutes.back().is_none_or(|(last, _)| *last < minute) {
                self.minutes.push_back((minute, total));
            }
        }
        while self.minutes.len() > MAX_BASELINE_MINUTES {
            self.minutes.pop_front();
        }
    }

    /// The median of the minutes within `baseline` before `now`, not counting the current minute; `None`
    /// until enough minutes are known.
    fn median(&self, now: DateTime<Utc>, baseline: Duration) -> Option<u64> {
        let current = now.timestamp().div_euclid(60);
        let oldest = current - i64::try_from(baseline.as_secs() / 60).unwrap_or(i64::MAX);
        let mut values: Vec<u64> = self
            .minutes
            .iter()
            .filter(|(minute, _)| *minute >= oldest && *minute < current)
            .map(|(_, value)| *value)
            .collect();
        if values.len() < MIN_BASELINE_MINUTES {
            return None;
        }
        values.sort_unstable();
        Some(values[values.len() / 2])
    }
}

fn time_wait(sample: &Sample<'_>) -> u64 {
    sample.states.combined().get(TcpState::TimeWait)
}

/// `TimeWaitBucketPressure`: TIME_WAIT / `tcp_max_tw_buckets`.
pub fn bucket_pressure(
    sample: &Sample<'_>,
    rules: &Rules,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let limit = sample
        .sysctl_number(MAX_TW_BUCKETS)
        .filter(|limit| *limit > 0)?;
    let time_wait = time_wait(sample);
    let ratio = time_wait as f64 / limit as f64;
    let thresholds = Thresholds::of(&rules.time_wait_bucket_pressure);
    let rule = RuleName::TimeWaitBucketPressure;
    let Some(severity) = trackers.level(rule, WHOLE_SCOPE, ratio, &thresholds) else {
        return Some(Vec::new());
    };
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: ratio,
        labels: Default::default(),
        annotations: annotations(
            format!(
                "TIME_WAIT at {} of tcp_max_tw_buckets {}",
                percent(ratio),
                sample.place()
            ),
            format!(
                "{} sockets in TIME_WAIT; {MAX_TW_BUCKETS} is {}. Past the limit the kernel destroys \
                 closing sockets instead of keeping them in TIME_WAIT and counts TCPTimeWaitOverflow, \
                 so late segments of old connections can reach new ones.",
                count(time_wait),
                count(limit)
            ),
            "Find who opens many short connections (the host's top destinations) and reuse \
             connections (keep-alive, pooling). On clients and proxies net.ipv4.tcp_tw_reuse=1 lets \
             outgoing connections reuse TIME_WAIT ports. Do not lower tcp_max_tw_buckets and do not \
             set tcp_tw_recycle.",
        ),
    }])
}

/// `TimeWaitSpike`: TIME_WAIT far above its own median of the baseline.
pub fn spike(
    sample: &Sample<'_>,
    rules: &Rules,
    history: &History,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let settings = &rules.time_wait_spike;
    let median = history.median(sample.at, settings.baseline)?;
    let threshold = (median as f64 * settings.factor).max(settings.min as f64);
    let time_wait = time_wait(sample);
    let thresholds = Thresholds::single(settings.severity, threshold, settings.hysteresis);
    let rule = RuleName::TimeWaitSpike;
    let Some(severity) = trackers.level(rule, WHOLE_SCOPE, time_wait as f64, &thresholds) else {
        return Some(Vec::new());
    };
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: time_wait as f64,
        labels: Default::default(),
        annotations: annotations(
            format!("TIME_WAIT spike {}", sample.place()),
            format!(
                "{} sockets in TIME_WAIT, more than {}× the median of the last {} ({}).",
                count(time_wait),
                settings.factor,
                humantime::format_duration(settings.baseline),
                count(median)
            ),
            "Look for a change in traffic or a client that stopped reusing connections (a deploy, a \
             connection pool misconfigured, keep-alive turned off).",
        ),
    }])
}
