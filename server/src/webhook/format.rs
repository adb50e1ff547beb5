//! Webhook bodies: the same notification as Alertmanager's webhook payload, a Slack message, or
//! sockfleet's own JSON, so existing receivers work unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{Notification, WebhookFormat};
use crate::alerts::model::{Alert, AlertStatus};

/// What Alertmanager puts in `endsAt` while an alert fires (Go's zero time).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The notification's body in `format`, as JSON bytes.
pub fn render(format: WebhookFormat, notification: &Notification) -> Vec<u8> {
    let encoded = match format {
        WebhookFormat::Alertmanager => serde_json::to_vec(&alertmanager(notification)),
        WebhookFormat::Slack => serde_json::to_vec(&SlackBody {
            text: slack_text(notification),
        }),
        WebhookFormat::Json => serde_json::to_vec(&JsonBody {
            receiver: &notification.receiver,
            group_key: &notification.group_key,
            status: status(notification),
            group_labels: &notification.group_labels,
            alerts: &notification.alerts,
            truncated_alerts: notification.truncated_alerts,
            external_url: &notification.external_url,
        }),
    };
    // Only string-keyed maps, strings, numbers and timestamps: serializing them cannot fail.
    encoded.expect("webhook bodies always serialize")
}

/// `firing` if any alert of the notification fires, else `resolved`.
fn status(notification: &Notification) -> &'static str {
    let firing = notification
        .alerts
        .iter()
        .any(|alert| alert.status == AlertStatus::Firing);
    if firing { "firing" } else { "resolved" }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The entries with the same value in every map (empty when there are none).
fn common<'a>(
    mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<&'a str, &'a str> {
    let Some(first) = maps.next() else {
        return BTreeMap::new();
    };
    let mut shared: BTreeMap<&str, &str> = first
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    for map in maps {
        shared.retain(|name, value| map.get(*name).is_some_and(|other| other == *value));
    }
    shared
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlertmanagerBody<'a> {
    version: &'static str,
    group_key: &'a str,
    truncated_alerts: u32,
    status: &'static str,
    receiver: &'a str,
    group_labels: &'a BTreeMap<String, String>,
    common_labels: BTreeMap<&'a str, &'a str>,
    common_annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    alerts: Vec<AlertmanagerAlert<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlertmanagerAlert<'a> {
    status: &'static str,
    labels: &'a BTreeMap<String, String>,
    annotations: &'a BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
    fingerprint: &'a str,
}

fn alertmanager(notification: &Notification) -> AlertmanagerBody<'_> {
    let base = notification.external_url.trim_end_matches('/');
    let alerts = notification
        .alerts
        .iter()
        .map(|alert| AlertmanagerAlert {
            status: alert.status.as_str(),
            labels: &alert.labels,
            annotations: &alert.annotations,
            starts_at: rfc3339(alert.starts_at),
            ends_at: match (alert.status, alert.ends_at) {
                (AlertStatus::Firing, _) => ZERO_TIME.to_owned(),
                (AlertStatus::Resolved, Some(ends_at)) => rfc3339(ends_at),
                // Resolved without a recorded end: it ended by the time of the notification.
                (AlertStatus::Resolved, None) => rfc3339(notification.created_at),
            },
            // Host ids are restricted to characters that need no escaping in a query.
            generator_url: format!("{base}/?host={}", alert.host_id),
            fingerprint: &alert.fingerprint,
        })
        .collect();
    AlertmanagerBody {
        version: "4",
        group_key: &notification.group_key,
        truncated_alerts: notification.truncated_alerts,
        status: status(notification),
        receiver: &notification.receiver,
        group_labels: &notification.group_labels,
        common_labels: common(notification.alerts.iter().map(|alert| &alert.labels)),
        common_annotations: common(notification.alerts.iter().map(|alert| &alert.annotations)),
        external_url: &notification.external_url,
        alerts,
    }
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

/// Slack treats `&`, `<` and `>` as markup; alert texts are shown as written.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A header such as `[FIRING:2] CloseWaitLeak on web-1`, then one line per alert with its severity,
/// summary and description (and the suggested action on its own line).
fn slack_text(notification: &Notification) -> String {
    let alerts = &notification.alerts;
    let firing = alerts
        .iter()
        .filter(|alert| alert.status == AlertStatus::Firing)
        .count();
    let resolved = alerts.len() - firing;
    let counts = match (firing, resolved) {
        (0, resolved) => format!("RESOLVED:{resolved}"),
        (firing, 0) => format!("FIRING:{firing}"),
        (firing, resolved) => format!("FIRING:{firing}, RESOLVED:{resolved}"),
    };
    let labels = common(alerts.iter().map(|alert| &alert.labels));
    let label = |name: &str| {
        labels
            .get(name)
            .copied()
            .or_else(|| notification.group_labels.get(name).map(String::as_str))
    };
    let title = match (label("alertname"), label("host")) {
        (Some(rule), Some(host)) => format!("{rule} on {host}"),
        (Some(rule), None) => rule.to_owned(),
        (None, Some(host)) => format!("alerts on {host}"),
        (None, None) => notification.group_key.clone(),
    };
    let mut text = format!("[{counts}] {}", slack_escape(&title));
    for alert in alerts {
        text.push('\n');
        text.push_str(&slack_line(alert));
    }
    if notification.truncated_alerts > 0 {
        let _ = write!(
            text,
            "\n…and {} more alerts not shown",
            notification.truncated_alerts
        );
    }
    if !notification.external_url.is_empty() {
        let _ = write!(text, "\n{}", slack_escape(&notification.external_url));
    }
    text
}

fn slack_line(alert: &Alert) -> String {
    let annotation = |name: &str| {
        alert
            .annotations
            .get(name)
            .map(|text| slack_escape(text.trim()))
            .filter(|text| !text.is_empty())
    };
    let summary = annotation("summary")
        .unwrap_or_else(|| slack_escape(&format!("{} {}", alert.rule, alert.subject)));
    let state = match alert.status {
        AlertStatus::Firing => "",
        AlertStatus::Resolved => " (resolved)",
    };
    let mut line = format!("• [{}]{state} {summary}", alert.severity);
    if let Some(description) = annotation("description") {
        let _ = write!(line, " — {description}");
    }
    if let Some(action) = annotation("action") {
        let _ = write!(line, "\n    Action: {action}");
    }
    line
}

#[derive(Serialize)]
struct JsonBody<'a> {
    receiver: &'a str,
    group_key: &'a str,
    status: &'static str,
    group_labels: &'a BTreeMap<String, String>,
    alerts: &'a [Alert],
    truncated_alerts: u32,
    external_url: &'a str,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::Value;
    use sockfleet_domain::HostId;

    use super::*;
    use crate::alerts::model::{RuleName, Severity};

    fn alert(host: &str, status: AlertStatus, pid: &str) -> Alert {
        let labels: BTreeMap<String, String> = [
            ("alertname", "CloseWaitLeak"),
            ("severity", "warning"),
            ("host", host),
            ("pid", pid),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
        let annotations: BTreeMap<String, String> = [
            ("summary", format!("CLOSE_WAIT growing in pid {pid}")),
            (
                "description",
                "The process does not close sockets <fast>".to_owned(),
            ),
            (
                "action",
                "Check the application's connection handling".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let starts_at = Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap();
        Alert {
            id: pid.parse().unwrap(),
            host_id: HostId::parse(host).unwrap(),
            rule: RuleName::CloseWaitLeak,
            subject: format!("pid:{pid}"),
            severity: Severity::Warning,
            status,
            labels,
            annotations,
            value: 42.0,
            starts_at,
            ends_at: (status == AlertStatus::Resolved)
                .then(|| starts_at + chrono::Duration::minutes(5)),
            fingerprint: format!("fp{pid}"),
        }
    }

    fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            receiver: "ops".to_owned(),
            group_key: "{}:{alertname=\"CloseWaitLeak\", host=\"web-1\"}".to_owned(),
            group_labels: [("alertname", "CloseWaitLeak"), ("host", "web-1")]
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            alerts,
            truncated_alerts: 0,
            external_url: "http://sockfleet.example:7070/".to_owned(),
            created_at: Utc.with_ymd_and_hms(2025, 3, 1, 12, 10, 0).unwrap(),
        }
    }

    fn parse(format: WebhookFormat, notification: &Notification) -> Value {
        serde_json::from_slice(&render(format, notification)).unwrap()
    }

    #[test]
    fn alertmanager_v4_body() {
        let mut n = notification(vec![
            alert("web-1", AlertStatus::Firing, "100"),
            alert("web-1", AlertStatus::Resolved, "200"),
        ]);
        n.truncated_alerts = 3;
        let body = parse(WebhookFormat::Alertmanager, &n);
        assert_eq!(body["version"], "4");
        assert_eq!(body["groupKey"], n.group_key.as_str());
        assert_eq!(body["truncatedAlerts"], 3);
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "ops");
        assert_eq!(body["groupLabels"]["host"], "web-1");
        assert_eq!(body["externalURL"], "http://sockfleet.example:7070/");
        // pid and summary differ between the alerts, so they are not common.
        let common_labels = body["commonLabels"].as_object().unwrap();
        assert_eq!(common_labels.len(), 3);
        assert_eq!(common_labels["alertname"], "CloseWaitLeak");
        assert_eq!(common_labels["severity"], "warning");
        assert!(!common_labels.contains_key("pid"));
        let common_annotations = body["commonAnnotations"].as_object().unwrap();
        assert!(common_annotations.contains_key("description"));
        assert!(!common_annotations.contains_key("summary"));

        let alerts = body["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["labels"]["pid"], "100");
        assert_eq!(
            alerts[0]["annotations"]["summary"],
            "CLOSE_WAIT growing in pid 100"
        );
        assert_eq!(alerts[0]["startsAt"], "2025-03-01T12:00:00Z");
        assert_eq!(alerts[0]["endsAt"], ZERO_TIME);
        assert_eq!(
            alerts[0]["generatorURL"],
            "http://sockfleet.example:7070/?host=web-1"
        );
        assert_eq!(alerts[0]["fingerprint"], "fp100");
        assert_eq!(alerts[1]["status"], "resolved");
        assert_eq!(alerts[1]["endsAt"], "2025-03-01T12:05:00Z");
    }

    #[test]
    fn alertmanager_status_is_resolved_when_nothing_fires() {
        let n = notification(vec![alert("web-1", AlertStatus::Resolved, "1")]);
        let body = parse(WebhookFormat::Alertmanager, &n);
        assert_eq!(body["status"], "resolved");
        let empty = parse(WebhookFormat::Alertmanager, &notification(Vec::new()));
        assert_eq!(empty["commonLabels"], serde_json::json!({}));
        assert_eq!(empty["alerts"], serde_json::json!([]));
    }

    #[test]
    fn slack_text_is_readable() {
        let mut n = notification(vec![
            alert("web-1", AlertStatus::Firing, "100"),
            alert("web-1", AlertStatus::Firing, "200"),
        ]);
        n.truncated_alerts = 4;
        let body = parse(WebhookFormat::Slack, &n);
        assert_eq!(body.as_object().unwrap().len(), 1);
        let text = body["text"].as_str().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[FIRING:2] CloseWaitLeak on web-1");
        assert!(lines[1].contains("[warning]"), "{text}");
        assert!(lines[1].contains("CLOSE_WAIT growing in pid 100"), "{text}");
        assert!(lines[1].contains("sockets &lt;fast&gt;"), "{text}");
        assert!(lines[2].contains("Action: Check the application"), "{text}");
        assert!(text.contains("pid 200"), "{text}");
        assert!(text.contains("4 more alerts"), "{text}");
        assert!(text.ends_with("http://sockfleet.example:7070/"), "{text}");
    }

    #[test]
    fn slack_marks_resolved_alerts() {
        let n = notification(vec![alert("web-1", AlertStatus::Resolved, "100")]);
        let body = parse(WebhookFormat::Slack, &n);
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with("[RESOLVED:1] CloseWaitLeak on web-1"),
            "{text}"
        );
        assert!(text.contains("(resolved)"), "{text}");
    }

    #[test]
    fn plain_json_body() {
        let n = notification(vec![alert("web-1", AlertStatus::Firing, "100")]);
        let body = parse(WebhookFormat::Json, &n);
        assert_eq!(body["receiver"], "ops");
        assert_eq!(body["group_key"], n.group_key.as_str());
        assert_eq!(body["status"], "firing");
        assert_eq!(body["group_labels"]["alertname"], "CloseWaitLeak");
        assert_eq!(body["truncated_alerts"], 0);
        assert_eq!(body["external_url"], "http://sockfleet.example:7070/");
        let alerts = body["alerts"].as_array().unwrap();
        assert_eq!(
            alerts[0],
            serde_json::to_value(&n.alerts[0]).unwrap(),
            "alerts are serialized as the API shows them"
        );
        assert_eq!(alerts[0]["host_id"], "web-1");
        assert_eq!(alerts[0]["rule"], "CloseWaitLeak");
    }
}
