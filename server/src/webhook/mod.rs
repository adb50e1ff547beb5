//! Webhook receivers: how a notification is rendered (Alertmanager v4, Slack, plain JSON), signed
//! (Standard Webhooks) and sent, and how a failed attempt is retried.
//!
//! The outbox and the worker that drives deliveries live in [`crate::notify`]; this module holds what
//! one attempt needs.

mod backoff;
mod format;
mod send;
mod sign;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::alerts::matcher::Matchers;
use crate::alerts::model::{Alert, Labels};

pub use backoff::{MAX_RETRY_AFTER, retry_delay};
pub use format::render;
pub use send::{AttemptOutcome, MAX_RESPONSE_BYTES, attempt, http_client};
pub use sign::{InvalidSecret, SigningSecret, signature};

/// The body a receiver understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Alertmanager's webhook payload, version 4.
    #[default]
    Alertmanager,
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// sockfleet's own JSON: the group and its alerts as the API shows them.
    Json,
}

impl WebhookFormat {
    /// The name used in configuration.
    pub const fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Alertmanager => "alertmanager",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Json => "json",
        }
    }
}

/// How alerts are grouped into notifications and how often a group is notified, in the Alertmanager
/// manner.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouping {
    /// Labels whose values define a group; alerts agreeing on all of them go in one notification.
    pub group_by: Vec<String>,
    /// How long a new group waits for more alerts before its first notification.
    pub group_wait: Duration,
    /// How long a group that was notified waits before notifying of changes.
    pub group_interval: Duration,
    /// How long before a group whose alerts are still firing is notified again.
    pub repeat_interval: Duration,
}

impl Default for Grouping {
    /// Groups per rule and host; no wait, because sockfleet's rules already hold a condition for
    /// several samples before they fire.
    fn default() -> Grouping {
        Grouping {
            group_by: vec!["alertname".to_owned(), "host".to_owned()],
            group_wait: Duration::ZERO,
            group_interval: Duration::from_secs(30),
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    }
}

/// One configured receiver.
#[derive(Clone)]
pub struct WebhookTarget {
    /// Unique name: the `receiver` of Alertmanager bodies, and the key of its deliveries.
    pub name: String,
    pub url: reqwest::Url,
    pub format: WebhookFormat,
    /// Signs every request with the Standard Webhooks headers when set.
    pub secret: Option<SigningSecret>,
    /// Only alerts whose labels match are sent here.
    pub matchers: Matchers,
    /// Whether resolved alerts are notified.
    pub send_resolved: bool,
    pub grouping: Grouping,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("name", &self.name)
            .field("host", &self.url.host_str())
            .field("format", &self.format)
            .field("signed", &self.secret.is_some())
            .field("send_resolved", &self.send_resolved)
            .finish_non_exhaustive()
    }
}

/// How deliveries are attempted and retried (the same for every webhook).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    /// Longest one request may take, connection included.
    pub timeout: Duration,
    /// Delay before the first retry; it doubles with each attempt (with full jitter).
    pub retry_initial: Duration,
    /// Longest delay between two attempts.
    pub retry_max: Duration,
    /// After this long since a delivery was created, it is given up and marked failed.
    pub give_up_after: Duration,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            timeout: Duration::from_secs(10),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            give_up_after: Duration::from_secs(24 * 3600),
        }
    }
}

/// One notification of one group to one webhook: what a body is rendered from.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The webhook's name.
    pub receiver: String,
    /// Identifies the group within the receiver (stable across notifications of the group).
    pub group_key: String,
    /// The values of the webhook's `group_by` labels shared by the group.
    pub group_labels: Labels,
    /// The group's alerts: the firing ones and those resolved since the last notification.
    pub alerts: Vec<Alert>,
    /// Alerts of the group left out to keep the body bounded.
    pub truncated_alerts: u32,
    /// The server's address for people (the dashboard), e.g. `http://sockfleet.example:7070`.
    pub external_url: String,
    /// When the notification was made.
    pub created_at: DateTime<Utc>,
}
