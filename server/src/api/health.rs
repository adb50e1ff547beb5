//! Liveness and readiness for load balancers and orchestrators.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

/// `GET /healthz`: the process is serving.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the database answers, so the server can take agents and queries.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|error| ApiError::unavailable(format!("database unreachable: {error}")))?;
    Ok(Json(
        json!({ "status": "ready", "database": state.store.backend() }),
    ))
}
