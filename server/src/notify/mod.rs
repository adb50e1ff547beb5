//! Webhook notification from the outbox: the dispatcher turns waiting alert transitions into
//! deliveries, group by group in the Alertmanager manner, and the sender attempts deliveries with
//! retries. Both work from the database only, so any replica can do the work of any other, a restart
//! loses nothing, and every attempt of one delivery carries the same `webhook-id`.

mod dispatcher;
mod sender;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::config::AlertingConfig;
use crate::storage::Store;

/// The dispatcher and sender tasks.
pub struct Notifier {
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// Starts both tasks. `transitions` wakes the dispatcher when the engine recorded transitions; the
    /// tasks also poll, for work recorded by other replicas and for retries. They stop when `stop` is
    /// cancelled (an attempt in flight finishes first, within the delivery timeout).
    pub fn spawn(
        store: Arc<dyn Store>,
        config: Arc<AlertingConfig>,
        transitions: Arc<Notify>,
        external_url: String,
        stop: CancellationToken,
    ) -> anyhow::Result<Notifier> {
        let deliveries = Arc::new(Notify::new());
        let client = crate::webhook::http_client(&config.delivery)?;
        let dispatcher = tokio::spawn(dispatcher::run(
            Arc::clone(&store),
            Arc::clone(&config),
            transitions,
            Arc::clone(&deliveries),
            external_url,
            stop.clone(),
        ));
        let sender = tokio::spawn(sender::run(store, config, client, deliveries, stop));
        Ok(Notifier {
            tasks: vec![dispatcher, sender],
        })
    }

    /// Waits for both tasks to end (after `stop` was cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a webhook task failed");
            }
        }
    }
}
