//! The alert engine: evaluates every committed report against the rules, from per-host windows in
//! memory, and records the resulting transitions (with their outbox events) in one transaction.
//!
//! A host's windows are rebuilt whenever a new agent stream starts reporting (the agent restarted, the
//! server restarted, or the stream moved here from another replica): its firing alerts are read back
//! from the database, so they are resolved here rather than fired twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sockfleet_domain::{HostId, SysctlValues, TcpState};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::config::AlertingConfig;
use super::model::{AlertStatus, Labels, RuleName, Severity};
use super::routing::Routing;
use super::rules::{Finding, Sample, ScopeState, Verdict};
use crate::storage::alerts::{AlertQuery, Applied, NewAlert, Transition};
use crate::storage::{AgentSession, IncomingReport, SeriesQuery, Store};

/// Batches of committed reports waiting for the engine before the batch writer waits.
const QUEUE: usize = 64;
/// Most firing alerts of one host read back when its windows are rebuilt.
const MAX_FIRING_PER_HOST: u32 = 10_000;
/// Most stored reports replayed when a host's windows are rebuilt.
const MAX_REPLAY: u32 = 360;
/// Most minutes of TIME_WAIT history read back when a host's windows are rebuilt (a day).
const SEED_MINUTES: u32 = 1440;
/// The scope of the host's own network namespace.
pub(super) const HOST_SCOPE: u64 = 0;

/// Hands committed reports to the engine task.
#[derive(Clone)]
pub struct AlertEngine {
    reports: mpsc::Sender<Vec<IncomingReport>>,
}

impl AlertEngine {
    /// Starts the engine. `delivered` is notified whenever transitions were recorded, so the
    /// dispatcher notifies webhooks at once. The task ends when every handle is dropped.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: Arc<AlertingConfig>,
        routing: Routing,
        delivered: Arc<Notify>,
    ) -> (AlertEngine, JoinHandle<()>) {
        let (reports, incoming) = mpsc::channel(QUEUE);
        let engine = Engine {
            store,
            config,
            routing,
            delivered,
            hosts: HashMap::new(),
        };
        (AlertEngine { reports }, tokio::spawn(engine.run(incoming)))
    }

    /// Queues reports that are committed (waits while the engine is behind).
    pub async fn observe(&self, reports: Vec<IncomingReport>) {
        if self.reports.send(reports).await.is_err() {
            tracing::warn!("the alert engine has stopped; reports are not evaluated");
        }
    }
}

/// Key of a firing alert within a host: scope, rule, subject.
type FiringKey = (u64, RuleName, String);

/// What the engine knows about one host.
struct HostState {
    /// The stream whose reports built these windows.
    session: usize,
    last_collected: Option<DateTime<Utc>>,
    scopes: HashMap<u64, Scope>,
    firing: HashMap<FiringKey, Severity>,
}

#[derive(Default)]
struct Scope {
    rules: ScopeState,
    sysctls: SysctlValues,
}

struct Engine {
    store: Arc<dyn Store>,
    config: Arc<AlertingConfig>,
    routing: Routing,
    delivered: Arc<Notify>,
    hosts: HashMap<HostId, HostState>,
}

impl Engine {
    async fn run(mut self, mut incoming: mpsc::Receiver<Vec<IncomingReport>>) {
        while let Some(reports) = incoming.recv().await {
            let mut transitions = Vec::new();
            for report in &reports {
                if let Err(error) = self
                    .ensure_host(&report.session, report.report.collected_at)
                    .await
                {
                    tracing::error!(%error, host_id = %report.session.hello.host_id,
                        "cannot read the host's firing alerts; its report is not evaluated");
                    continue;
                }
                transitions.extend(self.evaluate(report));
            }
            if transitions.is_empty() {
                continue;
            }
            let routing = self.routing.clone();
            let router = move |labels: &Labels, status: AlertStatus| routing.routes(labels, status);
            match self.store.apply_transitions(&transitions, &router).await {
                Ok(applied) => {
                    self.remember(&transitions, &applied);
                    self.delivered.notify_one();
                }
                Err(error) => {
                    // The firing sets are unchanged, so the next reports propose them again.
                    tracing::error!(%error, transitions = transitions.len(), "cannot record alert transitions");
                }
            }
        }
    }

    /// Rebuilds the host's state when its reports come from a stream not seen before: its firing
    /// alerts, its sysctls, the TIME_WAIT baseline, and the windows of its own namespace replayed from
    /// the reports stored before `before` (the report about to be evaluated).
    async fn ensure_host(
        &mut self,
        session: &Arc<AgentSession>,
        before: DateTime<Utc>,
    ) -> Result<(), crate::storage::StorageError> {
        let id = Arc::as_ptr(session) as usize;
        let host_id = &session.hello.host_id;
        if self
            .hosts
            .get(host_id)
            .is_some_and(|host| host.session == id)
        {
            return Ok(());
        }
        let firing_alerts = self
            .store
            .list_alerts(&AlertQuery {
                status: Some(AlertStatus::Firing),
                host: Some(host_id.clone()),
                limit: MAX_FIRING_PER_HOST,
                ..AlertQuery::default()
            })
            .await?;
        let mut host = HostState {
            session: id,
            last_collected: None,
            scopes: HashMap::new(),
            firing: HashMap::new(),
        };
        // The TIME_WAIT baseline of the spike rule, so a restart does not blind it for an hour.
        let baseline = self
            .config
            .rules
            .for_host(&session.hello.labels)
            .time_wait_spike
            .baseline;
        let now = Utc::now();
        let minutes = self
            .store
            .series(
                host_id,
                &SeriesQuery {
                    from: now
                        - chrono::Duration::from_std(baseline)
                            .unwrap_or(chrono::Duration::hours(1)),
                    to: now,
                    step: Some(std::time::Duration::from_secs(60)),
                    namespace: None,
                    limit: SEED_MINUTES,
                },
            )
            .await?;
        host.scopes
            .entry(HOST_SCOPE)
            .or_default()
            .rules
            .seed_time_wait(
                minutes
                    .iter()
                    .map(|point| (point.time, point.states.combined().get(TcpState::TimeWait))),
            );
        self.replay(&mut host, session, before).await?;
        // What the database says fires stands, whatever the replay concluded.
        for alert in firing_alerts {
            let (scope, subject) = split_subject(&alert.subject);
            host.scopes.entry(scope).or_default().rules.assume_firing(
                alert.rule,
                subject,
                alert.severity,
            );
            host.firing
                .insert((scope, alert.rule, subject.to_owned()), alert.severity);
        }
        self.hosts.insert(host_id.clone(), host);
        Ok(())
    }

    /// Feeds the host's latest stored reports before `before` through the rules of its own namespace,
    /// without acting on their verdicts, so windows and hysteresis continue where they were.
    async fn replay(
        &self,
        host: &mut HostState,
        session: &AgentSession,
        before: DateTime<Utc>,
    ) -> Result<(), crate::storage::StorageError> {
        let hello = &session.hello;
        let rules = self.config.rules.for_host(&hello.labels);
        let listen_samples = rules
            .listen_queue_overflow
            .window
            .as_secs()
            .checked_div(hello.interval.as_secs().max(1))
            .unwrap_or(0);
        let wanted = u64::from(
            rules
                .close_wait_leak
                .samples
                .max(rules.close_wait_stuck.min_samples),
        )
        .max(listen_samples)
        .min(u64::from(MAX_REPLAY));
        let wanted = u32::try_from(wanted).unwrap_or(MAX_REPLAY) + 1;
        let samples = self.store.recent_samples(&hello.host_id, wanted).await?;
        let sysctls: SysctlValues = self
            .store
            .sysctl_history(&hello.host_id, None)
            .await?
            .into_iter()
            .map(|change| (change.name, change.value))
            .collect();
        let scope = host.scopes.entry(HOST_SCOPE).or_default();
        scope.sysctls = sysctls;
        for stored in samples.iter().filter(|sample| sample.collected_at < before) {
            let sample = Sample {
                at: stored.collected_at,
                host: hello.host_id.as_str(),
                namespace: None,
                states: &stored.states,
                kernel: stored.kernel.as_ref(),
                breakdowns: stored.breakdowns.as_ref(),
                sysctls: &scope.sysctls,
                interval: hello.interval,
            };
            scope.rules.evaluate(&sample, &rules);
            host.last_collected = Some(stored.collected_at);
        }
        Ok(())
    }

    /// Evaluates one report in every scope it covers and returns the transitions it causes.
    fn evaluate(&mut self, incoming: &IncomingReport) -> Vec<Transition> {
        let hello = &incoming.session.hello;
        let report = &incoming.report;
        let Some(host) = self.hosts.get_mut(&hello.host_id) else {
            return Vec::new();
        };
        let rules = self.config.rules.for_host(&hello.labels);
        let fresh = host
            .last_collected
            .is_none_or(|last| report.collected_at > last);
        let mut transitions = Vec::new();
        let mut present = HashSet::from([HOST_SCOPE]);
        let scopes = std::iter::once((
            HOST_SCOPE,
            None,
            &report.states,
            report.kernel.as_ref(),
            report.breakdowns.as_ref(),
            &report.sysctls,
        ))
        .chain(report.namespaces.iter().map(|namespace| {
            (
                namespace.inode,
                Some(
                    namespace
                        .identity
                        .name
                        .clone()
                        .unwrap_or_else(|| namespace.inode.to_string()),
                ),
                &namespace.states,
                namespace.kernel.as_ref(),
                namespace.breakdowns.as_ref(),
                &namespace.sysctls,
            )
        }));
        for (inode, namespace, states, kernel, breakdowns, changed_sysctls) in scopes {
            present.insert(inode);
            let scope = host.scopes.entry(inode).or_default();
            scope.sysctls.extend(
                changed_sysctls
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone())),
            );
            if !fresh {
                continue;
            }
            let sample = Sample {
                at: report.collected_at,
                host: hello.host_id.as_str(),
                namespace: namespace.as_deref(),
                states,
                kernel,
                breakdowns,
                sysctls: &scope.sysctls,
                interval: hello.interval,
            };
            let verdicts = scope.rules.evaluate(&sample, &rules);
            let context = AlertContext {
                host_id: &hello.host_id,
                host_labels: &hello.labels,
                scope: inode,
                namespace: namespace.as_deref(),
                at: report.collected_at,
            };
            transitions.extend(diff(&host.firing, &context, verdicts));
        }
        if fresh {
            host.last_collected = Some(report.collected_at);
            // A namespace that is no longer reported is gone (its container stopped): so are its alerts.
            let gone: Vec<FiringKey> = host
                .firing
                .keys()
                .filter(|(scope, _, _)| !present.contains(scope))
                .cloned()
                .collect();
            for (scope, rule, subject) in gone {
                transitions.push(Transition::Resolve {
                    host_id: hello.host_id.clone(),
                    rule,
                    subject: full_subject(scope, &subject),
                    at: report.collected_at,
                });
            }
            host.scopes.retain(|scope, _| present.contains(scope));
        }
        transitions
    }

    /// Updates the firing sets with what the database recorded.
    fn remember(&mut self, transitions: &[Transition], applied: &[Applied]) {
        for (transition, applied) in transitions.iter().zip(applied) {
            match transition {
                Transition::Fire(alert) => {
                    let Some(host) = self.hosts.get_mut(&alert.host_id) else {
                        continue;
                    };
                    let (scope, subject) = split_subject(&alert.subject);
                    // Fired here, or already firing from elsewhere: either way it fires now.
                    if matches!(applied, Applied::Fired(_) | Applied::AlreadyFiring) {
                        host.firing
                            .insert((scope, alert.rule, subject.to_owned()), alert.severity);
                        if matches!(applied, Applied::Fired(_)) {
                            metrics::counter!("sockfleet_alerts_fired_total",
                                "alertname" => alert.rule.as_str(), "severity" => alert.severity.as_str())
                                .increment(1);
                        }
                    }
                }
                Transition::Resolve {
                    host_id,
                    rule,
                    subject,
                    ..
                } => {
                    let Some(host) = self.hosts.get_mut(host_id) else {
                        continue;
                    };
                    let (scope, subject) = split_subject(subject);
                    host.firing.remove(&(scope, *rule, subject.to_owned()));
                    if matches!(applied, Applied::Resolved(_)) {
                        metrics::counter!("sockfleet_alerts_resolved_total", "alertname" => rule.as_str())
                            .increment(1);
                    }
                }
            }
        }
    }
}

/// Where findings of one scope belong.
pub(super) struct AlertContext<'a> {
    pub host_id: &'a HostId,
    pub host_labels: &'a Labels,
    /// The namespace's inode, or [`HOST_SCOPE`].
    pub scope: u64,
    /// The namespace's name for the `namespace` label; `None` for the host's own.
    pub namespace: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// The transitions that bring the firing set of each judged rule in line with its verdict: new findings
/// fire, findings gone resolve, and a change of severity resolves the old alert and fires the new one.
fn diff(
    firing: &HashMap<FiringKey, Severity>,
    context: &AlertContext<'_>,
    verdicts: Vec<Verdict>,
) -> Vec<Transition> {
    let mut transitions = Vec::new();
    for verdict in verdicts {
        let wanted: HashMap<&str, &Finding> = verdict
            .findings
            .iter()
            .map(|finding| (finding.subject.as_str(), finding))
            .collect();
        for ((scope, rule, subject), severity) in firing {
            if *scope != context.scope || *rule != verdict.rule {
                continue;
            }
            let keep = wanted
                .get(subject.as_str())
                .is_some_and(|finding| finding.severity == *severity);
            if !keep {
                transitions.push(Transition::Resolve {
                    host_id: context.host_id.clone(),
                    rule: *rule,
                    subject: full_subject(*scope, subject),
                    at: context.at,
                });
            }
        }
        for finding in &verdict.findings {
            let key = (context.scope, verdict.rule, finding.subject.clone());
            if firing.get(&key) != Some(&finding.severity) {
                transitions.push(Transition::Fire(new_alert(context, verdict.rule, finding)));
            }
        }
    }
    transitions
}

/// The alert a finding opens: the host's labels, the finding's, and `alertname`, `severity`, `host` and
/// `namespace`, which no other label may override.
pub(super) fn new_alert(context: &AlertContext<'_>, rule: RuleName, finding: &Finding) -> NewAlert {
    let mut labels: Labels = context.host_labels.clone();
    labels.extend(finding.labels.clone());
    labels.insert("alertname".to_owned(), rule.as_str().to_owned());
    labels.insert("severity".to_owned(), finding.severity.as_str().to_owned());
    labels.insert("host".to_owned(), context.host_id.as_str().to_owned());
    match context.namespace {
        Some(namespace) => {
            labels.insert("namespace".to_owned(), namespace.to_owned());
        }
        None => {
            labels.remove("namespace");
        }
    }
    NewAlert {
        host_id: context.host_id.clone(),
        rule,
        subject: full_subject(context.scope, &finding.subject),
        severity: finding.severity,
        fingerprint: fingerprint(&labels),
        labels,
        annotations: finding.annotations.clone(),
        value: finding.value,
        starts_at: context.at,
    }
}

/// A stable hash of the labels (16 hex digits), as Alertmanager gives each alert.
pub fn fingerprint(labels: &Labels) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in labels {
        hasher.update(name.as_bytes());
        hasher.update([0xff]);
        hasher.update(value.as_bytes());
        hasher.update([0xfe]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The stored subject: the scope's prefix (`netns:INODE/`, none for the host's own namespace) and the
/// rule's subject.
fn full_subject(scope: u64, subject: &str) -> String {
    if scope == HOST_SCOPE {
        subject.to_owned()
    } else {
        format!("netns:{scope}/{subject}")
    }
}

/// The scope and rule subject of a stored subject.
fn split_subject(stored: &str) -> (u64, &str) {
    stored
        .strip_prefix("netns:")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(inode, subject)| Some((inode.parse().ok()?, subject)))
        .unwrap_or((HOST_SCOPE, stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_through_storage() {
        assert_eq!(split_subject(&full_subject(0, "pid:12")), (0, "pid:12"));
        assert_eq!(
            split_subject(&full_subject(4026532000, "host")),
            (4026532000, "host")
        );
        assert_eq!(split_subject("netns:x/host"), (0, "netns:x/host"));
    }

    #[test]
    fn fingerprints_depend_on_every_label() {
        let a = Labels::from([("alertname".to_owned(), "X".to_owned())]);
        let mut b = a.clone();
        b.insert("host".to_owned(), "h".to_owned());
        assert_eq!(fingerprint(&a).len(), 16);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
