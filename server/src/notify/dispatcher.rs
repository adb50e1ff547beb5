//! Turns waiting alert transitions into deliveries: a new group is notified after `group_wait`, a group
//! already notified after `group_interval`, and a group still firing again after `repeat_interval`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::alerts::config::AlertingConfig;
use crate::alerts::model::Alert;
use crate::storage::Store;
use crate::storage::alerts::GroupState;
use crate::webhook::{Notification, WebhookTarget, render};

/// How often the dispatcher looks for work when nothing wakes it.
const POLL: Duration = Duration::from_secs(1);

pub(super) async fn run(
    store: Arc<dyn Store>,
    config: Arc<AlertingConfig>,
    transitions: Arc<Notify>,
    deliveries: Arc<Notify>,
    external_url: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = transitions.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        match dispatch(store.as_ref(), &config, &external_url).await {
            Ok(0) => {}
            Ok(created) => {
                tracing::debug!(created, "webhook deliveries created");
                deliveries.notify_one();
            }
            Err(error) => tracing::error!(%error, "cannot create webhook deliveries"),
        }
    }
}

/// Creates the deliveries that are due now; returns how many.
async fn dispatch(
    store: &dyn Store,
    config: &AlertingConfig,
    external_url: &str,
) -> Result<usize, crate::storage::StorageError> {
    let now = Utc::now();
    let mut due = Vec::new();
    for group in store.waiting_groups().await? {
        let Some(webhook) = find(config, &group.webhook) else {
            continue;
        };
        let grouping = &webhook.grouping;
        let ready_at = match (group.last_notified_at, group.oldest_waiting) {
            (Some(last), _) => last + chrono_duration(grouping.group_interval),
            (None, Some(oldest)) => oldest + chrono_duration(grouping.group_wait),
            (None, None) => now,
        };
        if ready_at <= now {
            due.push((webhook, group));
        }
    }
    for webhook in &config.webhooks {
        let cutoff = now - chrono_duration(webhook.grouping.repeat_interval);
        for group in store.groups_to_repeat(&webhook.name, cutoff).await? {
            due.push((webhook, group));
        }
    }
    let mut created = 0;
    for (webhook, group) in due {
        if notify_group(store, webhook, &group, now, external_url)
            .await?
            .is_some()
        {
            created += 1;
        }
    }
    Ok(created)
}

async fn notify_group(
    store: &dyn Store,
    webhook: &WebhookTarget,
    group: &GroupState,
    now: DateTime<Utc>,
    external_url: &str,
) -> Result<Option<String>, crate::storage::StorageError> {
    let delivery_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let render_body = |alerts: &[Alert], truncated: u32| {
        let notification = Notification {
            receiver: webhook.name.clone(),
            group_key: group.group_key.clone(),
            group_labels: group.group_labels.clone(),
            alerts: alerts.to_vec(),
            truncated_alerts: truncated,
            external_url: external_url.to_owned(),
            created_at: now,
        };
        String::from_utf8_lossy(&render(webhook.format, &notification)).into_owned()
    };
    store
        .create_delivery(group, now, &delivery_id, &render_body)
        .await
}

fn find<'a>(config: &'a AlertingConfig, name: &str) -> Option<&'a WebhookTarget> {
    config.webhooks.iter().find(|webhook| webhook.name == name)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}
