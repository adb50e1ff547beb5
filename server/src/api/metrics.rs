//! `GET /metrics`: the server's own counters in the Prometheus exposition format.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder on first use. `None` if another recorder was
/// installed first (then `/metrics` says so instead of serving empty data).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install the metrics recorder; /metrics is disabled");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    metrics::describe_counter!(
        "sockfleet_alerts_fired_total",
        "Alerts that started firing, by rule and severity."
    );
    metrics::describe_counter!(
        "sockfleet_alerts_resolved_total",
        "Alerts that resolved, by rule."
    );
    metrics::describe_counter!(
        "sockfleet_webhook_attempts_total",
        "Webhook delivery attempts, by webhook and outcome (delivered, retry, rejected)."
    );
    metrics::describe_counter!(
        "sockfleet_webhook_failures_total",
        "Webhook notifications given up on (refused with a 4xx, or retried past give_up_after), by webhook."
    );
}

/// `GET /metrics`
pub async fn render() -> impl IntoResponse {
    let body = handle().map_or_else(
        || "# the metrics recorder could not be installed\n".to_owned(),
        PrometheusHandle::render,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
