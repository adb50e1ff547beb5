//! CLOSE_WAIT: sockets the peer has closed and the local program has not. Nothing but the program ends
//! them, so one that lasts is a bug, and a count that only grows ends in "too many open files".

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sockfleet_domain::{CloseWaitSocket, ProcessCloseWait, TcpState};

use super::text::{annotations, count, duration};
use super::{Finding, Sample, Trackers, WHOLE_SCOPE};
use crate::alerts::hysteresis::Thresholds;
use crate::alerts::model::{Labels, RuleName};
use crate::alerts::settings::Rules;

/// Processes whose counts are followed at most (the agent's top-N bounds them already).
const MAX_PROCESSES: usize = 1000;

/// What the CLOSE_WAIT rules remember between samples.
#[derive(Debug, Default)]
pub struct History {
    /// Samples each CLOSE_WAIT socket was seen in, by subject.
    sockets: HashMap<String, u32>,
    /// Each process's CLOSE_WAIT counts over the last samples, newest last, by pid.
    processes: HashMap<u32, VecDeque<(DateTime<Utc>, u32)>>,
    /// Whether the sample just recorded carried breakdowns.
    has_breakdowns: bool,
}

impl History {
    /// Notes the CLOSE_WAIT sockets and process counts of the sample.
    pub fn record(&mut self, sample: &Sample<'_>, rules: &Rules) {
        let Some(breakdowns) = sample.breakdowns else {
            self.has_breakdowns = false;
            return;
        };
        self.has_breakdowns = true;
        let mut sockets = HashMap::with_capacity(breakdowns.close_wait_sockets.len());
        for socket in &breakdowns.close_wait_sockets {
            let subject = socket_subject(socket);
            let seen = self.sockets.get(&subject).copied().unwrap_or(0) + 1;
            sockets.insert(subject, seen);
        }
        self.sockets = sockets;

        let keep = usize::try_from(rules.close_wait_leak.samples).unwrap_or(usize::MAX);
        let present: HashSet<u32> = breakdowns
            .close_wait_processes
            .iter()
            .map(|process| process.pid)
            .collect();
        self.processes.retain(|pid, _| present.contains(pid));
        for process in breakdowns.close_wait_processes.iter().take(MAX_PROCESSES) {
            let counts = self.processes.entry(process.pid).or_default();
            counts.push_back((sample.at, process.close_wait));
            while counts.len() > keep {
                counts.pop_front();
            }
        }
    }
}

fn socket_subject(socket: &CloseWaitSocket) -> String {
    format!("sock:{}->{}", socket.local, socket.remote)
}

fn process_labels(pid: Option<u32>, comm: Option<&str>) -> Labels {
    let mut labels = Labels::new();
    if let Some(pid) = pid {
        labels.insert("pid".to_owned(), pid.to_string());
    }
    if let Some(comm) = comm {
        labels.insert("comm".to_owned(), comm.to_owned());
    }
    labels
}

fn owner(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{comm} (pid {pid})"),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "no process found (still in an accept queue, or the agent may not read every \
              process's descriptors)"
            .to_owned(),
    }
}

/// `CloseWaitStuck`: the same socket in CLOSE_WAIT across enough samples and for long enough.
pub fn stuck(sample: &Sample<'_>, rules: &Rules, history: &History) -> Option<Vec<Finding>> {
    let breakdowns = sample.breakdowns?;
    let settings = &rules.close_wait_stuck;
    let mut findings = Vec::new();
    for socket in &breakdowns.close_wait_sockets {
        let subject = socket_subject(socket);
        let seen = history.sockets.get(&subject).copied().unwrap_or(0);
        let age = (sample.at - socket.first_seen)
            .to_std()
            .unwrap_or(Duration::ZERO);
        if seen < settings.min_samples || age < settings.min_age {
            continue;
        }
        let mut labels = process_labels(socket.pid, socket.comm.as_deref());
        labels.insert("local_port".to_owned(), socket.local.port().to_string());
        labels.insert("remote".to_owned(), socket.remote.to_string());
        let who = owner(socket.pid, socket.comm.as_deref());
        findings.push(Finding {
            subject,
            severity: settings.severity,
            value: age.as_secs_f64(),
            labels,
            annotations: annotations(
                format!(
                    "Socket {} -> {} stuck in CLOSE_WAIT for {} {}",
                    socket.local,
                    socket.remote,
                    duration(age),
                    sample.place()
                ),
                format!(
                    "The peer {} closed the connection at least {} ago and the program never \
                     closed its end. Owner: {who}.",
                    socket.remote,
                    duration(age)
                ),
                "Fix the program so it closes the socket when a read returns 0 (end of stream) or \
                 an error; check error paths and connection pools that never release. Restarting \
                 the process frees the descriptors for now. Keepalive does not help: the \
                 descriptor stays held.",
            ),
        });
    }
    Some(findings)
}

/// `CloseWaitLeak`: a process's CLOSE_WAIT count has not gone down over the last samples and grew.
pub fn leak(
    sample: &Sample<'_>,
    rules: &Rules,
    history: &History,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let breakdowns = sample.breakdowns?;
    if !history.has_breakdowns {
        return None;
    }
    let settings = &rules.close_wait_leak;
    let rule = RuleName::CloseWaitLeak;
    let wanted = usize::try_from(settings.samples).unwrap_or(usize::MAX);
    let mut findings = Vec::new();
    let mut present = HashSet::new();
    for process in &breakdowns.close_wait_processes {
        let subject = format!("pid:{}", process.pid);
        present.insert(subject.clone());
        let Some(counts) = history.processes.get(&process.pid) else {
            continue;
        };
        let never_decreased = counts
            .iter()
            .zip(counts.iter().skip(1))
            .all(|(a, b)| b.1 >= a.1);
        let growth = match (counts.front(), counts.back()) {
            (Some(first), Some(last)) => last.1.saturating_sub(first.1),
            _ => 0,
        };
        let leaking = counts.len() >= wanted && never_decreased && growth >= settings.min_growth;
        // Resolves once the count has stopped growing (or fallen) for `resolve_after` samples.
        let still_growing = counts.len() >= 2 && {
            let n = counts.len();
            counts[n - 1].1 >= counts[n - 2].1 && never_decreased && growth > 0
        };
        let keeps_firing = still_growing && is_firing(trackers, rule, &subject);
        let Some(severity) = trackers.event(
            rule,
            &subject,
            leaking || keeps_firing,
            settings.severity,
            settings.resolve_after,
        ) else {
            continue;
        };
        findings.push(leak_finding(sample, process, counts, subject, severity));
    }
    // A process that holds no CLOSE_WAIT socket any more (it exited, or closed them) has no leak.
    for subject in trackers.subjects(rule) {
        if !present.contains(&subject) {
            trackers.forget(rule, &subject);
        }
    }
    Some(findings)
}

fn is_firing(trackers: &mut Trackers<'_>, rule: RuleName, subject: &str) -> bool {
    trackers.tracker(rule, subject).firing().is_some()
}

fn leak_finding(
    sample: &Sample<'_>,
    process: &ProcessCloseWait,
    counts: &VecDeque<(DateTime<Utc>, u32)>,
    subject: String,
    severity: crate::alerts::model::Severity,
) -> Finding {
    let (first_at, first) = counts.front().copied().unwrap_or((sample.at, 0));
    let (last_at, last) = counts.back().copied().unwrap_or((sample.at, 0));
    let span = (last_at - first_at).to_std().unwrap_or(Duration::ZERO);
    let growth = last.saturating_sub(first);
    let rate_per_second = if span.is_zero() {
        0.0
    } else {
        f64::from(growth) / span.as_secs_f64()
    };
    let exhaustion = match (process.open_fds, process.fd_limit) {
        (Some(open), Some(limit)) if rate_per_second > 0.0 => {
            let left = limit.saturating_sub(u64::from(open));
            let eta = Duration::from_secs_f64((left as f64 / rate_per_second).min(1e9));
            format!(
                " It has {} of {} descriptors open; at this rate it runs out in about {}.",
                count(u64::from(open)),
                count(limit),
                duration(eta)
            )
        }
        (Some(open), Some(limit)) => format!(
            " It has {} of {} descriptors open.",
            count(u64::from(open)),
            count(limit)
        ),
        _ => String::new(),
    };
    let peer = sample
        .breakdowns
        .and_then(|breakdowns| {
            breakdowns
                .close_wait_sockets
                .iter()
                .find(|socket| socket.pid == Some(process.pid))
        })
        .map(|socket| (socket.local.port(), socket.remote));
    let mut labels = process_labels(Some(process.pid), process.comm.as_deref());
    let peer_text = match peer {
        Some((local_port, remote)) => {
            labels.insert("local_port".to_owned(), local_port.to_string());
            labels.insert("remote".to_owned(), remote.to_string());
            format!(" Among its peers: {remote} (local port {local_port}).")
        }
        None => String::new(),
    };
    let who = owner(Some(process.pid), process.comm.as_deref());
    Finding {
        subject,
        severity,
        value: f64::from(last),
        labels,
        annotations: annotations(
            format!("{who} is leaking CLOSE_WAIT sockets {}", sample.place()),
            format!(
                "{who} holds {} sockets in CLOSE_WAIT, up from {} over {} samples ({}), never \
                 going down.{peer_text}{exhaustion}",
                count(u64::from(last)),
                count(u64::from(first)),
                counts.len(),
                duration(span)
            ),
            "The program does not close connections its peers have closed: fix it to close on end \
             of stream and on errors (look at the code talking to the peer above). Restarting it \
             releases the descriptors until the leak fills them again.",
        ),
    }
}

/// `CloseWaitHigh`: the scope's CLOSE_WAIT count.
pub fn high(
    sample: &Sample<'_>,
    rules: &Rules,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let close_wait = sample.states.combined().get(TcpState::CloseWait);
    let thresholds = Thresholds::of(&rules.close_wait_high);
    let Some(severity) = trackers.level(
        RuleName::CloseWaitHigh,
        WHOLE_SCOPE,
        close_wait as f64,
        &thresholds,
    ) else {
        return Some(Vec::new());
    };
    let top = sample
        .breakdowns
        .and_then(|breakdowns| breakdowns.close_wait_processes.first())
        .map(|process| {
            format!(
                " The most are held by {} ({}).",
                owner(Some(process.pid), process.comm.as_deref()),
                count(u64::from(process.close_wait))
            )
        })
        .unwrap_or_default();
    Some(vec![Finding {
        subject: WHOLE_SCOPE.to_owned(),
        severity,
        value: close_wait as f64,
        labels: Default::default(),
        annotations: annotations(
            format!(
                "{} sockets in CLOSE_WAIT {}",
                count(close_wait),
                sample.place()
            ),
            format!(
                "{} sockets wait for their program to close them; no timer ends CLOSE_WAIT.{top}",
                count(close_wait)
            ),
            "Find the processes holding them (CloseWaitLeak / CloseWaitStuck alerts, or the host's \
             CLOSE_WAIT breakdown) and fix how they close connections.",
        ),
    }])
}
