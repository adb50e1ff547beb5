//! Which webhooks an alert goes to, and in which of their groups.

use std::sync::Arc;

use crate::alerts::model::{AlertStatus, Labels};
use crate::storage::alerts::Route;
use crate::webhook::WebhookTarget;

/// The configured webhooks, as the router of alert transitions.
#[derive(Debug, Clone)]
pub struct Routing {
    webhooks: Arc<[WebhookTarget]>,
}

impl Routing {
    /// Routes over `webhooks`.
    pub fn new(webhooks: Arc<[WebhookTarget]>) -> Routing {
        Routing { webhooks }
    }

    /// The webhooks whose matchers accept `labels` (for a resolution, only those that want
    /// resolutions), each with the group the alert falls in there.
    pub fn routes(&self, labels: &Labels, status: AlertStatus) -> Vec<Route> {
        self.webhooks
            .iter()
            .filter(|webhook| webhook.matchers.matches(labels))
            .filter(|webhook| status == AlertStatus::Firing || webhook.send_resolved)
            .map(|webhook| {
                let group_labels: Labels = webhook
                    .grouping
                    .group_by
                    .iter()
                    .filter_map(|name| labels.get(name).map(|value| (name.clone(), value.clone())))
                    .collect();
                Route {
                    webhook: webhook.name.clone(),
                    group_key: group_key(&group_labels),
                    group_labels,
                }
            })
            .collect()
    }
}

/// Alertmanager's form of a group key under the root route: `{}:{alertname="X", host="y"}`.
pub fn group_key(group_labels: &Labels) -> String {
    let pairs: Vec<String> = group_labels
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    format!("{{}}:{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_look_like_alertmanagers() {
        let labels = Labels::from([
            ("host".to_owned(), "web-1".to_owned()),
            ("alertname".to_owned(), "CloseWaitLeak".to_owned()),
        ]);
        assert_eq!(
            group_key(&labels),
            r#"{}:{alertname="CloseWaitLeak", host="web-1"}"#
        );
    }
}
