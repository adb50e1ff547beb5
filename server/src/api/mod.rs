//! The HTTP side of the server: JSON API, health checks and the dashboard, sharing the gRPC port.

pub mod alerts;
mod error;
mod health;
mod hosts;
pub mod metrics;
mod params;
pub mod query;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use error::ApiError;

use crate::dashboard;
use crate::storage::Store;

/// What every HTTP handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
}

/// The HTTP routes. Unknown paths get a JSON 404, except gRPC calls to unknown services, which get
/// gRPC's UNIMPLEMENTED so gRPC clients see a proper status.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::render))
        .route("/readyz", get(health::readyz))
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/webhooks", get(alerts::webhooks))
        .route("/api/v1/hosts", get(hosts::list))
        .route("/api/v1/hosts/{host_id}", get(hosts::detail))
        .route("/api/v1/hosts/{host_id}/series", get(hosts::series))
        .route(
            "/api/v1/hosts/{host_id}/sysctls/history",
            get(hosts::sysctl_history),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The answer for a known path asked with a method it does not serve.
async fn method_not_allowed(request: Request<axum::body::Body>) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "{} is not allowed on {}; use GET",
            request.method(),
            request.uri().path()
        ),
    }
}

/// The answer for a path no route serves.
pub async fn fallback(request: Request<axum::body::Body>) -> Response {
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if is_grpc {
        let mut response = StatusCode::OK.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("12"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("unknown%20service"),
        );
        return response;
    }
    ApiError::not_found(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}
