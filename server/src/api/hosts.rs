//! `/api/v1/hosts`: the fleet's hosts, one host, and a host's counts over time.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sockfleet_domain::HostId;

use super::AppState;
use super::error::ApiError;
use super::params::{self, Params};
use crate::storage::{HostDetail, HostOverview, HostPage, SeriesPoint, SeriesQuery, SysctlChange};

const DEFAULT_HOSTS: u32 = 100;
const MAX_HOSTS: u32 = 1000;
const DEFAULT_POINTS: u32 = 1000;
const MAX_POINTS: u32 = 10_000;
/// Longest range one series request may cover.
const MAX_RANGE: TimeDelta = TimeDelta::days(400);
/// Range of a series request without `from`.
const DEFAULT_RANGE: TimeDelta = TimeDelta::hours(1);

/// Query parameters of `GET /api/v1/hosts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<u32>,
    after: Option<String>,
}

/// A page of hosts; `next_after` is the `after` value of the next page, absent on the last.
#[derive(Debug, Serialize)]
pub struct HostList {
    hosts: Vec<HostOverview>,
    next_after: Option<HostId>,
}

/// `GET /api/v1/hosts?limit=&after=`
pub async fn list(
    State(state): State<AppState>,
    Params(params): Params<ListParams>,
) -> Result<Json<HostList>, ApiError> {
    let limit = params::limit(params.limit, DEFAULT_HOSTS, MAX_HOSTS)?;
    let after = params.after.as_deref().map(host_id).transpose()?;
    // One row more than asked tells whether another page exists.
    let mut hosts = state
        .store
        .list_hosts(&HostPage {
            after,
            limit: limit + 1,
        })
        .await?;
    let more = hosts.len() > limit as usize;
    hosts.truncate(limit as usize);
    let next_after = more
        .then(|| hosts.last().map(|host| host.host_id.clone()))
        .flatten();
    Ok(Json(HostList { hosts, next_after }))
}

/// `GET /api/v1/hosts/{host_id}`
pub async fn detail(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<HostDetail>, ApiError> {
    let id = host_id(&raw_id)?;
    state
        .store
        .host(&id)
        .await?
        .map(Json)
        .ok_or_else(|| unknown_host(&id))
}

/// Query parameters of `GET /api/v1/hosts/{host_id}/series`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    limit: Option<u32>,
    /// Inode of one of the host's other network namespaces.
    namespace: Option<u64>,
}

/// A host's counts over a time range.
#[derive(Debug, Serialize)]
pub struct Series {
    host_id: HostId,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
    /// Bucket length in seconds; absent when every report is returned.
    step_seconds: Option<u64>,
    /// The namespace the counts are of; absent for the host's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<u64>,
    points: Vec<SeriesPoint>,
    /// True when `limit` cut the series short.
    truncated: bool,
}

/// `GET /api/v1/hosts/{host_id}/series?from=&to=&step=&limit=`
pub async fn series(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Params(params): Params<SeriesParams>,
) -> Result<Json<Series>, ApiError> {
    let id = host_id(&raw_id)?;
    let to = params
        .to
        .as_deref()
        .map(|raw| params::timestamp("to", raw))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let from = match params.from.as_deref() {
        Some(raw) => params::timestamp("from", raw)?,
        None => to - DEFAULT_RANGE,
    };
    if from >= to {
        return Err(ApiError::bad_request("from must be earlier than to"));
    }
    if to - from > MAX_RANGE {
        return Err(ApiError::bad_request(
            "the range from..to may cover at most 400 days",
        ));
    }
    let step = params
        .step
        .as_deref()
        .map(|raw| params::duration("step", raw))
        .transpose()?;
    if let Some(step) = step
        && !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&step)
    {
        return Err(ApiError::bad_request(
            "step must be between 1 second and 1 day",
        ));
    }
    let limit = params::limit(params.limit, DEFAULT_POINTS, MAX_POINTS)?;
    require_known(&state, &id).await?;
    // One point more than asked tells whether the limit cut the series.
    let mut points = state
        .store
        .series(
            &id,
            &SeriesQuery {
                from,
                to,
                step,
                namespace: params.namespace,
                limit: limit + 1,
            },
        )
        .await?;
    let truncated = points.len() > limit as usize;
    points.truncate(limit as usize);
    Ok(Json(Series {
        host_id: id,
        from,
        to,
        step_seconds: step.map(|step| step.as_secs()),
        namespace: params.namespace,
        truncated,
        points,
    }))
}

/// Query parameters of `GET /api/v1/hosts/{host_id}/sysctls/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysctlHistoryParams {
    name: Option<String>,
}

/// When a host's sysctls took each of their values.
#[derive(Debug, Serialize)]
pub struct SysctlHistory {
    host_id: HostId,
    changes: Vec<SysctlChange>,
}

/// `GET /api/v1/hosts/{host_id}/sysctls/history?name=`: "when did this host's `tcp_tw_reuse` change?"
pub async fn sysctl_history(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    Params(params): Params<SysctlHistoryParams>,
) -> Result<Json<SysctlHistory>, ApiError> {
    let id = host_id(&raw_id)?;
    if let Some(name) = &params.name
        && (name.is_empty()
            || name.len() > 128
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.')))
    {
        return Err(ApiError::bad_request(format!(
            "name={name:?} is not a sysctl name such as net.ipv4.tcp_tw_reuse"
        )));
    }
    require_known(&state, &id).await?;
    let changes = state
        .store
        .sysctl_history(&id, params.name.as_deref())
        .await?;
    Ok(Json(SysctlHistory {
        host_id: id,
        changes,
    }))
}

/// 404 unless `id` has reported to this server.
async fn require_known(state: &AppState, id: &HostId) -> Result<(), ApiError> {
    if state.store.host_exists(id).await? {
        Ok(())
    } else {
        Err(unknown_host(id))
    }
}

fn unknown_host(id: &HostId) -> ApiError {
    ApiError::not_found(format!("no host {id} has reported to this server"))
}

pub(super) fn host_id(raw: &str) -> Result<HostId, ApiError> {
    HostId::parse(raw).map_err(|error| ApiError::bad_request(format!("invalid host id: {error}")))
}
