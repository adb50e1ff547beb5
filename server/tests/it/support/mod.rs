//! What the integration tests share: fresh databases, server and agent processes, an HTTP client.

pub mod database;
pub mod grpc;
pub mod process;
pub mod receiver;

use std::time::Duration;

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP client for talking to servers under test. reqwest is built without a crypto provider of
/// its own (the server picks ring), so one is installed first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// GETs `url` and returns the status and JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = http_client()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: body is not JSON: {error}"));
    (status, body)
}
