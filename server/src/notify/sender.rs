//! Attempts due deliveries, records each outcome and schedules retries: exponential backoff with full
//! jitter, honouring `Retry-After`; 5xx, 429 and timeouts are retried, other 4xx are not.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alerts::config::AlertingConfig;
use crate::storage::Store;
use crate::storage::alerts::{AttemptRecord, AttemptResult, DeliveryJob};
use crate::webhook::{AttemptOutcome, attempt, retry_delay};

/// How often the sender looks for due deliveries when nothing wakes it.
const POLL: Duration = Duration::from_millis(500);
/// Deliveries attempted at once.
const CONCURRENT: u32 = 16;
/// Lease beyond the request timeout: time to record the outcome.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

pub(super) async fn run(
    store: Arc<dyn Store>,
    config: Arc<AlertingConfig>,
    client: reqwest::Client,
    deliveries: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let claimed = match send_due(&store, &config, &client).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::error!(%error, "cannot claim webhook deliveries");
                0
            }
        };
        if claimed == CONCURRENT as usize {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = deliveries.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Claims and attempts the due deliveries (at most [`CONCURRENT`]); returns how many were claimed.
async fn send_due(
    store: &Arc<dyn Store>,
    config: &Arc<AlertingConfig>,
    client: &reqwest::Client,
) -> Result<usize, crate::storage::StorageError> {
    let now = Utc::now();
    let lease = chrono::Duration::from_std(config.delivery.timeout + LEASE_MARGIN)
        .unwrap_or(chrono::Duration::MAX);
    let jobs = store.claim_deliveries(now, now + lease, CONCURRENT).await?;
    let claimed = jobs.len();
    let mut attempts = JoinSet::new();
    for job in jobs {
        let store = Arc::clone(store);
        let config = Arc::clone(config);
        let client = client.clone();
        attempts.spawn(async move {
            let record = deliver(&config, &client, &job).await;
            if let Err(error) = store.record_attempt(&job.delivery_id, &record).await {
                // The lease runs out and the delivery is attempted again, with the same id.
                tracing::error!(%error, delivery_id = job.delivery_id, "cannot record a webhook attempt");
            }
        });
    }
    while attempts.join_next().await.is_some() {}
    Ok(claimed)
}

/// One attempt of `job`, and what to record about it.
async fn deliver(
    config: &AlertingConfig,
    client: &reqwest::Client,
    job: &DeliveryJob,
) -> AttemptRecord {
    let now = Utc::now();
    let failed = |error: String| AttemptRecord {
        at: now,
        status_code: None,
        error: Some(error),
        result: AttemptResult::Failed,
    };
    let Some(webhook) = config
        .webhooks
        .iter()
        .find(|webhook| webhook.name == job.webhook)
    else {
        return failed(format!(
            "the webhook {:?} is no longer configured; the notification was dropped",
            job.webhook
        ));
    };
    let outcome = attempt(client, webhook, &job.delivery_id, job.body.as_bytes(), now).await;
    let label = match &outcome {
        AttemptOutcome::Delivered { .. } => "delivered",
        AttemptOutcome::Retry { .. } => "retry",
        AttemptOutcome::Rejected { .. } => "rejected",
    };
    metrics::counter!("sockfleet_webhook_attempts_total", "webhook" => webhook.name.clone(), "outcome" => label)
        .increment(1);
    match outcome {
        AttemptOutcome::Delivered { status } => {
            tracing::info!(
                webhook = webhook.name,
                delivery_id = job.delivery_id,
                status,
                "webhook delivered"
            );
            AttemptRecord {
                at: now,
                status_code: Some(status),
                error: None,
                result: AttemptResult::Delivered,
            }
        }
        AttemptOutcome::Rejected { status, reason } => {
            tracing::warn!(
                webhook = webhook.name,
                delivery_id = job.delivery_id,
                reason,
                "webhook refused the notification; not retrying"
            );
            metrics::counter!("sockfleet_webhook_failures_total", "webhook" => webhook.name.clone())
                .increment(1);
            AttemptRecord {
                at: now,
                status_code: Some(status),
                error: Some(reason),
                result: AttemptResult::Failed,
            }
        }
        AttemptOutcome::Retry {
            reason,
            status,
            retry_after,
        } => {
            let delay = retry_delay(
                job.attempts + 1,
                &config.delivery,
                retry_after,
                &mut rand::rng(),
            );
            let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            let give_up_at = job.created_at
                + chrono::Duration::from_std(config.delivery.give_up_after)
                    .unwrap_or(chrono::Duration::MAX);
            let result = if next > give_up_at {
                metrics::counter!("sockfleet_webhook_failures_total", "webhook" => webhook.name.clone())
                    .increment(1);
                tracing::error!(
                    webhook = webhook.name,
                    delivery_id = job.delivery_id,
                    reason,
                    "giving up on a webhook notification after retrying for {}",
                    humantime::format_duration(config.delivery.give_up_after)
                );
                AttemptResult::Failed
            } else {
                tracing::warn!(webhook = webhook.name, delivery_id = job.delivery_id, reason,
                    retry_in = ?delay, "webhook attempt failed; will retry");
                AttemptResult::Retry(next)
            };
            AttemptRecord {
                at: now,
                status_code: status,
                error: Some(reason),
                result,
            }
        }
    }
}
