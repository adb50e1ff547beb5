//! Alerts and their webhook outbox in the database: the one SQL text both backends run (these tables
//! keep times as Unix milliseconds and JSON as text so that it can be one), expanded for each backend by
//! [`impl_alert_store`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sockfleet_domain::HostId;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StorageError;
use crate::alerts::model::{Alert, AlertStatus, Annotations, Labels, RuleName, Severity};

/// An alert the engine wants to open.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub host_id: HostId,
    pub rule: RuleName,
    pub subject: String,
    pub severity: Severity,
    pub labels: Labels,
    pub annotations: Annotations,
    pub value: f64,
    pub fingerprint: String,
    pub starts_at: DateTime<Utc>,
}

/// Where a transition must be notified: one webhook and the group it falls in there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub webhook: String,
    pub group_key: String,
    pub group_labels: Labels,
}

/// Decides the routes of an alert's transition from its labels (the webhooks' matchers).
pub type Router<'f> = dyn for<'a> Fn(&'a Labels, AlertStatus) -> Vec<Route> + Send + Sync + 'f;

/// Makes a notification body from a group's alerts and the number of alerts left out.
pub type Render<'f> = dyn for<'a> Fn(&'a [Alert], u32) -> String + Send + Sync + 'f;

/// A change the engine wants recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Open an alert, unless one is already firing for its (host, rule, subject).
    Fire(NewAlert),
    /// Resolve the firing alert of (host, rule, subject), if there is one.
    Resolve {
        host_id: HostId,
        rule: RuleName,
        subject: String,
        at: DateTime<Utc>,
    },
}

/// What recording a transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The alert was opened.
    Fired(Alert),
    /// Another alert (from another replica, or an earlier run) was already firing; nothing changed.
    AlreadyFiring,
    /// The alert was resolved.
    Resolved(Alert),
    /// Nothing was firing; nothing changed.
    NotFiring,
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    pub status: Option<AlertStatus>,
    pub host: Option<HostId>,
    pub rule: Option<RuleName>,
    /// Only alerts with a smaller id (keyset pagination).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// A notification group of one webhook, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub webhook: String,
    pub group_key: String,
    pub group_labels: Labels,
    /// The oldest transition not notified yet, if any.
    pub oldest_waiting: Option<DateTime<Utc>>,
    /// When the group was last notified; `None` if never.
    pub last_notified_at: Option<DateTime<Utc>>,
}

/// A delivery the sender has leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryJob {
    pub delivery_id: String,
    pub webhook: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
}

/// How an attempt ended, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// Do not try again.
    Failed,
}

/// One attempt's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    /// What went wrong, for people; `None` on success.
    pub error: Option<String>,
    pub result: AttemptResult,
}

/// A webhook's delivery record, for the API and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WebhookHealth {
    pub webhook: String,
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Attempts that did not deliver (retried or failed), over all deliveries.
    pub failed_attempts: u64,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Most alerts one notification carries; the rest are counted in `truncatedAlerts`.
pub const MAX_ALERTS_PER_NOTIFICATION: u32 = 500;

/// The alert lifecycle and the webhook outbox.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Records transitions in one transaction, with an outbox event for each route `router` gives a
    /// transition that took effect. The partial unique index on firing alerts decides races between
    /// replicas: a Fire that meets a firing alert does nothing.
    async fn apply_transitions(
        &self,
        transitions: &[Transition],
        router: &Router<'_>,
    ) -> Result<Vec<Applied>, StorageError>;

    /// Alerts, newest first.
    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>, StorageError>;

    /// Groups with transitions waiting to be notified.
    async fn waiting_groups(&self) -> Result<Vec<GroupState>, StorageError>;

    /// Groups of `webhook` with firing alerts, notified at or before `notified_before`, and nothing
    /// waiting: due for a repeat notification.
    async fn groups_to_repeat(
        &self,
        webhook: &str,
        notified_before: DateTime<Utc>,
    ) -> Result<Vec<GroupState>, StorageError>;

    /// In one transaction: takes the group (unless another replica notified it since `group` was read),
    /// claims its waiting events, and stores a delivery whose body `render` makes from the group's
    /// alerts (firing ones, and those resolved by the claimed events) and the count left out. Returns
    /// the delivery id, or `None` if the group was taken or had nothing to say.
    async fn create_delivery(
        &self,
        group: &GroupState,
        now: DateTime<Utc>,
        delivery_id: &str,
        render: &Render<'_>,
    ) -> Result<Option<String>, StorageError>;

    /// Leases up to `limit` due deliveries until `lease_until`: only the oldest pending one of each
    /// group, so a group's notifications arrive in order.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DeliveryJob>, StorageError>;

    /// Records an attempt and releases the lease.
    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &AttemptRecord,
    ) -> Result<(), StorageError>;

    /// Every webhook's delivery counts and latest failure.
    async fn webhook_health(&self) -> Result<Vec<WebhookHealth>, StorageError>;
}

pub(super) const INSERT_ALERT: &str = "INSERT INTO alerts (host_id, rule, subject, severity, labels, annotations, value, \
     fingerprint, starts_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING \
     RETURNING alert_id";

pub(super) const RESOLVE_ALERT: &str = "UPDATE alerts SET ends_at = $4 WHERE host_id = $1 AND rule = $2 AND subject = $3 \
     AND ends_at IS NULL RETURNING alert_id, host_id, rule, subject, severity, labels, annotations, \
     value, fingerprint, starts_at, ends_at";

pub(super) const INSERT_EVENT: &str = "INSERT INTO alert_events (alert_id, webhook, group_key, status, created_at) \
     VALUES ($1, $2, $3, $4, $5)";

pub(super) const UPSERT_GROUP: &str = "INSERT INTO webhook_groups (webhook, group_key, group_labels) VALUES ($1, $2, $3) \
     ON CONFLICT (webhook, group_key) DO NOTHING";

pub(super) const LIST_ALERTS: &str = "SELECT alert_id, host_id, rule, subject, severity, labels, annotations, value, \
     fingerprint, starts_at, ends_at FROM alerts \
     WHERE ($1 IS NULL OR ($1 = 'firing') = (ends_at IS NULL)) AND ($2 IS NULL OR host_id = $2) \
     AND ($3 IS NULL OR rule = $3) AND ($4 IS NULL OR alert_id < $4) \
     ORDER BY alert_id DESC LIMIT $5";

pub(super) const WAITING_GROUPS: &str = "SELECT g.webhook, g.group_key, g.group_labels, MIN(e.created_at), g.last_notified_at \
     FROM alert_events e JOIN webhook_groups g ON g.webhook = e.webhook AND g.group_key = e.group_key \
     WHERE e.delivery_id IS NULL GROUP BY g.webhook, g.group_key, g.group_labels, g.last_notified_at \
     LIMIT 10000";

pub(super) const GROUPS_TO_REPEAT: &str = "SELECT g.webhook, g.group_key, g.group_labels, NULL, g.last_notified_at \
     FROM webhook_groups g WHERE g.webhook = $1 AND g.last_notified_at <= $2 \
     AND NOT EXISTS (SELECT 1 FROM alert_events w WHERE w.webhook = g.webhook \
     AND w.group_key = g.group_key AND w.delivery_id IS NULL) \
     AND EXISTS (SELECT 1 FROM alert_events e JOIN alerts a ON a.alert_id = e.alert_id \
     WHERE e.webhook = g.webhook AND e.group_key = g.group_key AND a.ends_at IS NULL) LIMIT 10000";

pub(super) const TAKE_GROUP: &str = "UPDATE webhook_groups SET last_notified_at = $3 \
     WHERE webhook = $1 AND group_key = $2 AND COALESCE(last_notified_at, -1) = $4";

pub(super) const CLAIM_EVENTS: &str = "UPDATE alert_events SET delivery_id = $3 \
     WHERE webhook = $1 AND group_key = $2 AND delivery_id IS NULL";

pub(super) const GROUP_ALERTS: &str = "SELECT alert_id, host_id, rule, subject, severity, labels, annotations, value, \
     fingerprint, starts_at, ends_at FROM alerts a WHERE a.alert_id IN \
     (SELECT e.alert_id FROM alert_events e WHERE e.webhook = $1 AND e.group_key = $2 \
     AND (e.delivery_id = $3 OR a.ends_at IS NULL)) \
     ORDER BY a.ends_at IS NOT NULL, a.starts_at, a.alert_id LIMIT $4";

pub(super) const COUNT_GROUP_ALERTS: &str = "SELECT COUNT(*) FROM alerts a WHERE a.alert_id IN \
     (SELECT e.alert_id FROM alert_events e WHERE e.webhook = $1 AND e.group_key = $2 \
     AND (e.delivery_id = $3 OR a.ends_at IS NULL))";

pub(super) const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (delivery_id, webhook, group_key, body, created_at, \
     next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5)";

pub(super) const CLAIM_DELIVERIES: &str = "UPDATE webhook_deliveries SET leased_until = $2 WHERE delivery_id IN \
     (SELECT d.delivery_id FROM webhook_deliveries d WHERE d.status = 'pending' \
     AND d.next_attempt_at <= $1 AND d.leased_until < $1 AND NOT EXISTS \
     (SELECT 1 FROM webhook_deliveries o WHERE o.webhook = d.webhook AND o.group_key = d.group_key \
     AND o.status = 'pending' AND (o.created_at < d.created_at \
     OR (o.created_at = d.created_at AND o.delivery_id < d.delivery_id))) \
     ORDER BY d.next_attempt_at LIMIT $3) AND leased_until < $1 \
     RETURNING delivery_id, webhook, body, attempts, created_at";

pub(super) const RECORD_ATTEMPT: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $2, \
     last_status_code = $3, last_error = COALESCE($4, last_error), \
     last_error_at = CASE WHEN $4 IS NULL THEN last_error_at ELSE $2 END, status = $5, \
     next_attempt_at = COALESCE($6, next_attempt_at), leased_until = 0, \
     finished_at = CASE WHEN $5 = 'pending' THEN NULL ELSE $2 END WHERE delivery_id = $1";

pub(super) const WEBHOOK_HEALTH: &str = "SELECT webhook, \
     CAST(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END) AS BIGINT), \
     CAST(SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END) AS BIGINT), \
     CAST(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS BIGINT), \
     CAST(SUM(CASE WHEN status = 'delivered' THEN attempts - 1 ELSE attempts END) AS BIGINT), \
     MAX(CASE WHEN status = 'delivered' THEN finished_at END) \
     FROM webhook_deliveries GROUP BY webhook ORDER BY webhook";

pub(super) const LAST_ERROR: &str = "SELECT last_error, last_error_at FROM webhook_deliveries \
     WHERE webhook = $1 AND last_error IS NOT NULL ORDER BY last_error_at DESC LIMIT 1";

/// Unix milliseconds of a time.
pub(super) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// The time of Unix milliseconds read from the database.
pub(super) fn time(millis: i64) -> Result<DateTime<Utc>, StorageError> {
    DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| StorageError::Corrupt(format!("timestamp {millis} ms")))
}

/// JSON text of labels or annotations.
pub(super) fn json_text(map: &Labels) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".to_owned())
}

/// Labels or annotations from JSON text.
pub(super) fn json_map(text: &str) -> Result<Labels, StorageError> {
    serde_json::from_str(text)
        .map_err(|error| StorageError::Corrupt(format!("label JSON {text:?}: {error}")))
}

/// An alert from the eleven columns of [`LIST_ALERTS`] (same order in every alert query).
pub(super) fn alert_from_row<'r, R>(row: &'r R) -> Result<Alert, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    f64: Decode<'r, R::Database> + Type<R::Database>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    let rule: &str = row.try_get(2)?;
    let severity: &str = row.try_get(4)?;
    let ends_at: Option<i64> = row.try_get(10)?;
    Ok(Alert {
        id: row.try_get(0)?,
        host_id: HostId::parse(row.try_get::<&str, _>(1)?)
            .map_err(|error| StorageError::Corrupt(error.to_string()))?,
        rule: rule
            .parse()
            .map_err(|error: crate::alerts::model::UnknownRule| {
                StorageError::Corrupt(error.to_string())
            })?,
        subject: row.try_get::<&str, _>(3)?.to_owned(),
        severity: severity
            .parse()
            .map_err(|error: crate::alerts::model::InvalidSeverity| {
                StorageError::Corrupt(error.to_string())
            })?,
        status: if ends_at.is_some() {
            AlertStatus::Resolved
        } else {
            AlertStatus::Firing
        },
        labels: json_map(row.try_get(5)?)?,
        annotations: json_map(row.try_get(6)?)?,
        value: row.try_get(7)?,
        fingerprint: row.try_get::<&str, _>(8)?.to_owned(),
        starts_at: time(row.try_get(9)?)?,
        ends_at: ends_at.map(time).transpose()?,
    })
}

/// A group from the five columns of [`WAITING_GROUPS`].
pub(super) fn group_from_row<'r, R>(row: &'r R) -> Result<GroupState, StorageError>
where
    R: Row,
    usize: ColumnIndex<R>,
    &'r str: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(GroupState {
        webhook: row.try_get::<&str, _>(0)?.to_owned(),
        group_key: row.try_get::<&str, _>(1)?.to_owned(),
        group_labels: json_map(row.try_get(2)?)?,
        oldest_waiting: row.try_get::<Option<i64>, _>(3)?.map(time).transpose()?,
        last_notified_at: row.try_get::<Option<i64>, _>(4)?.map(time).transpose()?,
    })
}

/// The stored name of an attempt's result.
pub(super) fn result_status(result: &AttemptResult) -> (&'static str, Option<i64>) {
    match result {
        AttemptResult::Delivered => ("delivered", None),
        AttemptResult::Retry(at) => ("pending", Some(millis(*at))),
        AttemptResult::Failed => ("failed", None),
    }
}

/// Implements [`AlertStore`] for a backend whose struct has a `pool` field of `sqlx::Pool<$db>`.
macro_rules! impl_alert_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::storage::alerts::AlertStore for $store {
            async fn apply_transitions(
                &self,
                transitions: &[$crate::storage::alerts::Transition],
                router: &$crate::storage::alerts::Router<'_>,
            ) -> Result<Vec<$crate::storage::alerts::Applied>, $crate::storage::StorageError> {
                use $crate::alerts::model::AlertStatus;
                use $crate::storage::alerts::{self as sql, Applied, Transition};
                let mut tx = self.pool.begin().await?;
                let mut applied = Vec::with_capacity(transitions.len());
                for transition in transitions {
                    let (outcome, at) = match transition {
                        Transition::Fire(alert) => {
                            let id: Option<i64> = sqlx::query_scalar(sql::INSERT_ALERT)
                                .bind(alert.host_id.as_str())
                                .bind(alert.rule.as_str())
                                .bind(&alert.subject)
                                .bind(alert.severity.as_str())
                                .bind(sql::json_text(&alert.labels))
                                .bind(sql::json_text(&alert.annotations))
                                .bind(alert.value)
                                .bind(&alert.fingerprint)
                                .bind(sql::millis(alert.starts_at))
                                .fetch_optional(&mut *tx)
                                .await?;
                            match id {
                                Some(id) => (
                                    Applied::Fired($crate::alerts::model::Alert {
                                        id,
                                        host_id: alert.host_id.clone(),
                                        rule: alert.rule,
                                        subject: alert.subject.clone(),
                                        severity: alert.severity,
                                        status: AlertStatus::Firing,
                                        labels: alert.labels.clone(),
                                        annotations: alert.annotations.clone(),
                                        value: alert.value,
                                        starts_at: alert.starts_at,
                                        ends_at: None,
                                        fingerprint: alert.fingerprint.clone(),
                                    }),
                                    alert.starts_at,
                                ),
                                None => (Applied::AlreadyFiring, alert.starts_at),
                            }
                        }
                        Transition::Resolve {
                            host_id,
                            rule,
                            subject,
                            at,
                        } => {
                            let row = sqlx::query(sql::RESOLVE_ALERT)
                                .bind(host_id.as_str())
                                .bind(rule.as_str())
                                .bind(subject)
                                .bind(sql::millis(*at))
                                .fetch_optional(&mut *tx)
                                .await?;
                            match row {
                                Some(row) => (Applied::Resolved(sql::alert_from_row(&row)?), *at),
                                None => (Applied::NotFiring, *at),
                            }
                        }
                    };
                    if let Applied::Fired(alert) | Applied::Resolved(alert) = &outcome {
                        for route in router(&alert.labels, alert.status) {
                            sqlx::query(sql::UPSERT_GROUP)
                                .bind(&route.webhook)
                                .bind(&route.group_key)
                                .bind(sql::json_text(&route.group_labels))
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(sql::INSERT_EVENT)
                                .bind(alert.id)
                                .bind(&route.webhook)
                                .bind(&route.group_key)
                                .bind(alert.status.as_str())
                                .bind(sql::millis(at))
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                    applied.push(outcome);
                }
                tx.commit().await?;
                Ok(applied)
            }

            async fn list_alerts(
                &self,
                query: &$crate::storage::alerts::AlertQuery,
            ) -> Result<Vec<$crate::alerts::model::Alert>, $crate::storage::StorageError> {
                use $crate::storage::alerts as sql;
                let rows = sqlx::query(sql::LIST_ALERTS)
                    .bind(query.status.map(|status| status.as_str()))
                    .bind(query.host.as_ref().map(|host| host.as_str()))
                    .bind(query.rule.map(|rule| rule.as_str()))
                    .bind(query.before_id)
                    .bind(i64::from(query.limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| sql::alert_from_row(row)).collect()
            }

            async fn waiting_groups(
                &self,
            ) -> Result<Vec<$crate::storage::alerts::GroupState>, $crate::storage::StorageError>
            {
                use $crate::storage::alerts as sql;
                let rows = sqlx::query(sql::WAITING_GROUPS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| sql::group_from_row(row)).collect()
            }

            async fn groups_to_repeat(
                &self,
                webhook: &str,
                notified_before: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::storage::alerts::GroupState>, $crate::storage::StorageError>
            {
                use $crate::storage::alerts as sql;
                let rows = sqlx::query(sql::GROUPS_TO_REPEAT)
                    .bind(webhook)
                    .bind(sql::millis(notified_before))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|row| sql::group_from_row(row)).collect()
            }

            async fn create_delivery(
                &self,
                group: &$crate::storage::alerts::GroupState,
                now: chrono::DateTime<chrono::Utc>,
                delivery_id: &str,
                render: &$crate::storage::alerts::Render<'_>,
            ) -> Result<Option<String>, $crate::storage::StorageError> {
                use $crate::storage::alerts as sql;
                let mut tx = self.pool.begin().await?;
                let taken = sqlx::query(sql::TAKE_GROUP)
                    .bind(&group.webhook)
                    .bind(&group.group_key)
                    .bind(sql::millis(now))
                    .bind(group.last_notified_at.map_or(-1, sql::millis))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if taken == 0 {
                    return Ok(None);
                }
                sqlx::query(sql::CLAIM_EVENTS)
                    .bind(&group.webhook)
                    .bind(&group.group_key)
                    .bind(delivery_id)
                    .execute(&mut *tx)
                    .await?;
                let limit = sql::MAX_ALERTS_PER_NOTIFICATION;
                let rows = sqlx::query(sql::GROUP_ALERTS)
                    .bind(&group.webhook)
                    .bind(&group.group_key)
                    .bind(delivery_id)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut alerts = rows
                    .iter()
                    .map(|row| sql::alert_from_row(row))
                    .collect::<Result<Vec<_>, _>>()?;
                if alerts.is_empty() {
                    // Nothing firing and nothing resolved to tell: the claim stands (the events carried
                    // nothing new), so commit it without a delivery.
                    tx.commit().await?;
                    return Ok(None);
                }
                let truncated = if alerts.len() > limit as usize {
                    let total: i64 = sqlx::query_scalar(sql::COUNT_GROUP_ALERTS)
                        .bind(&group.webhook)
                        .bind(&group.group_key)
                        .bind(delivery_id)
                        .fetch_one(&mut *tx)
                        .await?;
                    u32::try_from(total.saturating_sub(i64::from(limit))).unwrap_or(u32::MAX)
                } else {
                    0
                };
                alerts.truncate(limit as usize);
                let body = render(&alerts, truncated);
                sqlx::query(sql::INSERT_DELIVERY)
                    .bind(delivery_id)
                    .bind(&group.webhook)
                    .bind(&group.group_key)
                    .bind(body)
                    .bind(sql::millis(now))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(delivery_id.to_owned()))
            }

            async fn claim_deliveries(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::storage::alerts::DeliveryJob>, $crate::storage::StorageError>
            {
                use sqlx::Row;
                use $crate::storage::alerts as sql;
                let rows = sqlx::query(sql::CLAIM_DELIVERIES)
                    .bind(sql::millis(now))
                    .bind(sql::millis(lease_until))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let attempts: i64 = row.try_get(3)?;
                        Ok(sql::DeliveryJob {
                            delivery_id: row.try_get(0)?,
                            webhook: row.try_get(1)?,
                            body: row.try_get(2)?,
                            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                            created_at: sql::time(row.try_get(4)?)?,
                        })
                    })
                    .collect()
            }

            async fn record_attempt(
                &self,
                delivery_id: &str,
                attempt: &$crate::storage::alerts::AttemptRecord,
            ) -> Result<(), $crate::storage::StorageError> {
                use $crate::storage::alerts as sql;
                let (status, next) = sql::result_status(&attempt.result);
                sqlx::query(sql::RECORD_ATTEMPT)
                    .bind(delivery_id)
                    .bind(sql::millis(attempt.at))
                    .bind(attempt.status_code.map(i64::from))
                    .bind(attempt.error.as_deref())
                    .bind(status)
                    .bind(next)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn webhook_health(
                &self,
            ) -> Result<Vec<$crate::storage::alerts::WebhookHealth>, $crate::storage::StorageError>
            {
                use sqlx::Row;
                use $crate::storage::alerts as sql;
                let rows = sqlx::query(sql::WEBHOOK_HEALTH)
                    .fetch_all(&self.pool)
                    .await?;
                let count = |value: Option<i64>| u64::try_from(value.unwrap_or(0)).unwrap_or(0);
                let mut health = Vec::with_capacity(rows.len());
                for row in &rows {
                    let webhook: String = row.try_get(0)?;
                    let last_error = sqlx::query(sql::LAST_ERROR)
                        .bind(&webhook)
                        .fetch_optional(&self.pool)
                        .await?;
                    let (last_error, last_error_at) = match last_error {
                        Some(error) => (
                            error.try_get::<Option<String>, _>(0)?,
                            error
                                .try_get::<Option<i64>, _>(1)?
                                .map(sql::time)
                                .transpose()?,
                        ),
                        None => (None, None),
                    };
                    health.push(sql::WebhookHealth {
                        webhook,
                        pending: count(row.try_get(1)?),
                        delivered: count(row.try_get(2)?),
                        failed: count(row.try_get(3)?),
                        failed_attempts: count(row.try_get(4)?),
                        last_delivered_at: row
                            .try_get::<Option<i64>, _>(5)?
                            .map(sql::time)
                            .transpose()?,
                        last_error,
                        last_error_at,
                    });
                }
                Ok(health)
            }
        }
    };
}

pub(super) use impl_alert_store;
