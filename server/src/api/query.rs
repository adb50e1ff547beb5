//! The `sockfleet.v1.Query` gRPC service: the HTTP API's answers for gRPC clients, with the same
//! parameter checks (a bad parameter is INVALID_ARGUMENT with the HTTP API's message).

use std::sync::Arc;

use axum::http::StatusCode;
use sockfleet_proto::v1;
use tonic::{Request, Response, Status};

use super::alerts::{AlertParams, alert_query};
use super::error::ApiError;
use crate::alerts::model::Alert;
use crate::storage::Store;
use crate::storage::alerts::AlertQuery;

/// Serves `sockfleet.v1.Query` from the store.
#[derive(Clone)]
pub struct QueryService {
    store: Arc<dyn Store>,
}

impl QueryService {
    /// A service answering from `store`.
    pub fn new(store: Arc<dyn Store>) -> QueryService {
        QueryService { store }
    }

    /// The service wrapped for tonic.
    pub fn into_server(self) -> v1::query_server::QueryServer<QueryService> {
        v1::query_server::QueryServer::new(self)
    }
}

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> Result<Response<v1::ListAlertsResponse>, Status> {
        let request = request.into_inner();
        let query = alert_query(AlertParams::from_parts(
            &request.state,
            &request.host,
            &request.alertname,
            request.limit,
            request.before,
        ))
        .map_err(status)?;
        let limit = query.limit;
        let mut alerts = self
            .store
            .list_alerts(&AlertQuery {
                limit: limit + 1,
                ..query
            })
            .await
            .map_err(|error| status(error.into()))?;
        let more = alerts.len() > limit as usize;
        alerts.truncate(limit as usize);
        let next_before = if more {
            alerts.last().map_or(0, |alert| alert.id)
        } else {
            0
        };
        Ok(Response::new(v1::ListAlertsResponse {
            alerts: alerts.into_iter().map(wire_alert).collect(),
            next_before,
        }))
    }
}

fn status(error: ApiError) -> Status {
    match error.status {
        StatusCode::BAD_REQUEST => Status::invalid_argument(error.message),
        StatusCode::NOT_FOUND => Status::not_found(error.message),
        _ => Status::unavailable(error.message),
    }
}

fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn wire_alert(alert: Alert) -> v1::Alert {
    v1::Alert {
        id: alert.id,
        host_id: alert.host_id.as_str().to_owned(),
        alertname: alert.rule.as_str().to_owned(),
        subject: alert.subject,
        severity: alert.severity.as_str().to_owned(),
        status: alert.status.as_str().to_owned(),
        labels: alert.labels.into_iter().collect(),
        annotations: alert.annotations.into_iter().collect(),
        value: alert.value,
        starts_at: Some(timestamp(alert.starts_at)),
        ends_at: alert.ends_at.map(timestamp),
        fingerprint: alert.fingerprint,
    }
}
