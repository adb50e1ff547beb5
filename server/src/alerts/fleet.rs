//! The fleet-wide rules, evaluated periodically from the database because no single stream can see
//! them: `AgentSilent` (a host stopped reporting) and `SysctlDrift` (a host's TCP sysctls differ from
//! its group's). Every replica runs them; the database's one-firing-alert constraint keeps them from
//! firing twice.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sockfleet_domain::HostId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::AlertingConfig;
use super::engine::{AlertContext, HOST_SCOPE, new_alert};
use super::model::{AlertStatus, Labels, RuleName};
use super::routing::Routing;
use super::rules::{Finding, drift_candidates};
use crate::storage::alerts::{AlertQuery, Transition};
use crate::storage::{HostActivity, StorageError, Store};

/// How often the fleet rules run.
const PERIOD: Duration = Duration::from_secs(5);
/// Most firing alerts of one fleet rule read per run.
const MAX_FIRING: u32 = 100_000;

/// Starts the periodic task; it ends when `stop` is cancelled.
pub fn spawn(
    store: Arc<dyn Store>,
    config: Arc<AlertingConfig>,
    routing: Routing,
    transitions: Arc<Notify>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PERIOD) => {}
            }
            match evaluate(store.as_ref(), &config, &routing).await {
                Ok(true) => transitions.notify_one(),
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot evaluate the fleet rules"),
            }
        }
    })
}

/// Runs both rules once; returns whether any transition was recorded.
async fn evaluate(
    store: &dyn Store,
    config: &AlertingConfig,
    routing: &Routing,
) -> Result<bool, StorageError> {
    let now = Utc::now();
    let mut transitions = silent_agents(store, config, now).await?;
    transitions.extend(drift(store, config, now).await?);
    if transitions.is_empty() {
        return Ok(false);
    }
    let router = |labels: &Labels, status: AlertStatus| routing.routes(labels, status);
    store.apply_transitions(&transitions, &router).await?;
    Ok(true)
}

async fn firing_subjects(
    store: &dyn Store,
    rule: RuleName,
) -> Result<HashSet<(HostId, String)>, StorageError> {
    let alerts = store
        .list_alerts(&AlertQuery {
            status: Some(AlertStatus::Firing),
            rule: Some(rule),
            limit: MAX_FIRING,
            ..AlertQuery::default()
        })
        .await?;
    Ok(alerts
        .into_iter()
        .map(|alert| (alert.host_id, alert.subject))
        .collect())
}

fn alert(
    host_id: &HostId,
    host_labels: &Labels,
    rule: RuleName,
    finding: Finding,
    now: DateTime<Utc>,
) -> Transition {
    let context = AlertContext {
        host_id,
        host_labels,
        scope: HOST_SCOPE,
        namespace: None,
        at: now,
    };
    Transition::Fire(new_alert(&context, rule, &finding))
}

fn resolve(host_id: HostId, rule: RuleName, subject: String, now: DateTime<Utc>) -> Transition {
    Transition::Resolve {
        host_id,
        rule,
        subject,
        at: now,
    }
}

/// `AgentSilent`: no report for `intervals` collection intervals.
async fn silent_agents(
    store: &dyn Store,
    config: &AlertingConfig,
    now: DateTime<Utc>,
) -> Result<Vec<Transition>, StorageError> {
    const SUBJECT: &str = "agent";
    let rule = RuleName::AgentSilent;
    let firing = firing_subjects(store, rule).await?;
    let mut transitions = Vec::new();
    for HostActivity {
        host_id,
        labels,
        interval,
        last_seen,
    } in store.host_activity().await?
    {
        let settings = config.rules.for_host(&labels).agent_silent;
        let Some(last_seen) = last_seen else { continue };
        let silence = (now - last_seen).to_std().unwrap_or(Duration::ZERO);
        let allowed = interval.saturating_mul(settings.intervals);
        let silent = settings.enabled && silence > allowed;
        let is_firing = firing.contains(&(host_id.clone(), SUBJECT.to_owned()));
        if silent && !is_firing {
            let annotations = super::rules::text_annotations(
                format!(
                    "No report from {host_id} for {}",
                    humantime::format_duration(Duration::from_secs(silence.as_secs()))
                ),
                format!(
                    "The agent on {host_id} reports every {}; the last report was collected at {}.",
                    humantime::format_duration(interval),
                    last_seen.to_rfc3339()
                ),
                "Check that the host is up, that sockfleet-agent runs (systemctl status \
                 sockfleet-agent) and that it can reach the server; its backlog delivers the \
                 missed reports once it reconnects.",
            );
            let finding = Finding {
                subject: SUBJECT.to_owned(),
                severity: settings.severity,
                value: silence.as_secs_f64(),
                labels: Labels::new(),
                annotations,
            };
            transitions.push(alert(&host_id, &labels, rule, finding, now));
        } else if !silent && is_firing {
            transitions.push(resolve(host_id, rule, SUBJECT.to_owned(), now));
        }
    }
    Ok(transitions)
}

/// `SysctlDrift`: hosts whose TCP sysctls differ from the majority of a group they share a label with.
async fn drift(
    store: &dyn Store,
    config: &AlertingConfig,
    now: DateTime<Utc>,
) -> Result<Vec<Transition>, StorageError> {
    let rule = RuleName::SysctlDrift;
    let settings = &config.rules.base().sysctl_drift;
    let firing = firing_subjects(store, rule).await?;
    if !settings.enabled || settings.group_labels.is_empty() {
        return Ok(firing
            .into_iter()
            .map(|(host_id, subject)| resolve(host_id, rule, subject, now))
            .collect());
    }
    let hosts = store.fleet_sysctls().await?;
    let labels_of: HashMap<&HostId, &Labels> = hosts
        .iter()
        .map(|(host_id, labels, _)| (host_id, labels))
        .collect();
    let mut wanted = HashSet::new();
    let mut transitions = Vec::new();
    for drift in drift_candidates(&hosts, settings) {
        let subject = format!("sysctl:{}", drift.sysctl);
        if !wanted.insert((drift.host_id.clone(), subject.clone())) {
            continue;
        }
        if firing.contains(&(drift.host_id.clone(), subject.clone())) {
            continue;
        }
        let shown = |value: &Option<String>| value.clone().unwrap_or_else(|| "(absent)".to_owned());
        let annotations = super::rules::text_annotations(
            format!(
                "{} on {} differs from its group {}",
                drift.sysctl, drift.host_id, drift.group
            ),
            format!(
                "{} is {} on {}, but {} on {} of the {} hosts with {}.",
                drift.sysctl,
                shown(&drift.value),
                drift.host_id,
                shown(&drift.majority),
                drift.majority_size,
                drift.group_size,
                drift.group
            ),
            "Bring the host in line with its group through configuration management, or give it \
             a label of its own if it is meant to differ.",
        );
        let host_labels = labels_of
            .get(&drift.host_id)
            .copied()
            .cloned()
            .unwrap_or_default();
        let finding = Finding {
            subject,
            severity: settings.severity,
            value: drift.majority_size as f64 / drift.group_size as f64,
            labels: Labels::from([
                ("sysctl".to_owned(), drift.sysctl.clone()),
                ("group".to_owned(), drift.group.clone()),
            ]),
            annotations,
        };
        transitions.push(alert(&drift.host_id, &host_labels, rule, finding, now));
    }
    for (host_id, subject) in firing {
        if !wanted.contains(&(host_id.clone(), subject.clone())) {
            transitions.push(resolve(host_id, rule, subject, now));
        }
    }
    Ok(transitions)
}
