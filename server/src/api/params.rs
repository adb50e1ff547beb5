//! Query-string parsing whose failures are JSON errors naming the parameter.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like axum's `Query`, but a malformed query string is a JSON 400 that says what is wrong.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Parses an RFC 3339 timestamp parameter.
pub fn timestamp(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            ApiError::bad_request(format!(
                "{name}={raw:?} is not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({error})"
            ))
        })
}

/// Parses a duration parameter: seconds (`60`) or a human duration (`5m`, `1h`).
pub fn duration(name: &str, raw: &str) -> Result<std::time::Duration, ApiError> {
    if let Ok(seconds) = raw.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(seconds));
    }
    humantime::parse_duration(raw).map_err(|_| {
        ApiError::bad_request(format!(
            "{name}={raw:?} is not a duration such as 60, 30s, 5m or 1h"
        ))
    })
}

/// Checks a `limit` parameter against its maximum, applying the default when absent.
pub fn limit(raw: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match raw {
        None => Ok(default),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(limit) if limit > max => Err(ApiError::bad_request(format!(
            "limit must be at most {max}"
        ))),
        Some(limit) => Ok(limit),
    }
}
