//! `/api/v1/alerts` and `/api/v1/webhooks`: what fires, what fired, and whether the notifications got
//! out.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use super::hosts::host_id;
use super::params::{self, Params};
use crate::alerts::model::{Alert, AlertStatus, RuleName};
use crate::storage::alerts::{AlertQuery, WebhookHealth};

const DEFAULT_ALERTS: u32 = 100;
const MAX_ALERTS: u32 = 1000;

/// Query parameters of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertParams {
    state: Option<String>,
    host: Option<String>,
    alertname: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
}

/// A page of alerts, newest first; `next_before` is the `before` value of the next page.
#[derive(Debug, Serialize)]
pub struct AlertList {
    alerts: Vec<Alert>,
    next_before: Option<i64>,
}

/// `GET /api/v1/alerts?state=firing|resolved&host=&alertname=&limit=&before=`
pub async fn list(
    State(state): State<AppState>,
    Params(params): Params<AlertParams>,
) -> Result<Json<AlertList>, ApiError> {
    let query = alert_query(params)?;
    let limit = query.limit;
    let mut alerts = state
        .store
        .list_alerts(&AlertQuery {
            limit: limit + 1,
            ..query
        })
        .await?;
    let more = alerts.len() > limit as usize;
    alerts.truncate(limit as usize);
    let next_before = more.then(|| alerts.last().map(|alert| alert.id)).flatten();
    Ok(Json(AlertList {
        alerts,
        next_before,
    }))
}

/// Checks the parameters of an alert listing (shared with the gRPC query service).
pub fn alert_query(params: AlertParams) -> Result<AlertQuery, ApiError> {
    let status = match params.state.as_deref() {
        None | Some("all") => None,
        Some("firing") => Some(AlertStatus::Firing),
        Some("resolved") => Some(AlertStatus::Resolved),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state={other:?} is not a state: use firing, resolved or all"
            )));
        }
    };
    let rule = params
        .alertname
        .as_deref()
        .map(|name| {
            name.parse::<RuleName>()
                .map_err(|error| ApiError::bad_request(format!("alertname: {error}")))
        })
        .transpose()?;
    if params.before.is_some_and(|before| before < 1) {
        return Err(ApiError::bad_request("before must be a positive alert id"));
    }
    Ok(AlertQuery {
        status,
        host: params.host.as_deref().map(host_id).transpose()?,
        rule,
        before_id: params.before,
        limit: params::limit(params.limit, DEFAULT_ALERTS, MAX_ALERTS)?,
    })
}

impl AlertParams {
    /// Parameters from the fields of a gRPC request (empty strings and zeros mean "not given").
    pub fn from_parts(
        state: &str,
        host: &str,
        alertname: &str,
        limit: u32,
        before: i64,
    ) -> AlertParams {
        let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        AlertParams {
            state: text(state),
            host: text(host),
            alertname: text(alertname),
            limit: (limit != 0).then_some(limit),
            before: (before != 0).then_some(before),
        }
    }
}

/// Every webhook's deliveries.
#[derive(Debug, Serialize)]
pub struct WebhookList {
    webhooks: Vec<WebhookHealth>,
}

/// `GET /api/v1/webhooks`: pending, delivered and failed notifications per webhook, with the latest
/// error, so a receiver that refuses or is down is visible.
pub async fn webhooks(State(state): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    let webhooks = state.store.webhook_health().await?;
    Ok(Json(WebhookList { webhooks }))
}
