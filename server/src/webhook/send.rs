//! One delivery attempt: the HTTP client webhooks are sent with, the signed POST, and what the
//! receiver's answer means for the delivery.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

use super::{DeliverySettings, WebhookTarget, signature};

/// Most of a response body read, for the error message: a receiver cannot make us buffer a large
/// error page.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Most characters of a response body quoted in an outcome's reason.
const MAX_REASON_CHARS: usize = 300;

/// The client deliveries are sent with: rustls (ring) verifying against the system's roots, the
/// configured timeout for connecting and for the whole request, and no redirects followed (a
/// receiver that redirects is misconfigured, and following would re-send the signed body elsewhere).
///
/// Installs ring as the process's default rustls crypto provider when none is installed, because
/// reqwest (built without its own provider) would otherwise panic when building a client.
pub fn http_client(settings: &DeliverySettings) -> reqwest::Result<reqwest::Client> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed a provider meanwhile, which reqwest then uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sockfleet/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What one attempt of a delivery came to, and so what to do with the delivery next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx (`status`): the delivery is done.
    Delivered { status: u16 },
    /// A failure that may pass (429, 5xx, a timeout, no connection): try again later, no sooner
    /// than `retry_after` when the receiver asked for it.
    Retry {
        /// For operators: the status and the start of the body, or the connection error.
        reason: String,
        /// The HTTP status, when the receiver answered at all.
        status: Option<u16>,
        /// The receiver's `Retry-After`, uncapped (see [`super::retry_delay`]).
        retry_after: Option<Duration>,
    },
    /// The receiver refused the request (3xx, other 4xx): sending it again would not help.
    Rejected {
        status: u16,
        /// For operators: the status and the start of the body.
        reason: String,
    },
}

/// POSTs `body` to the target with the Standard Webhooks headers (`webhook-id` is `delivery_id`, the
/// same on every attempt; `webhook-timestamp` is `now`; `webhook-signature` when the target has a
/// secret) and classifies the answer. Never fails: every error is an outcome.
pub async fn attempt(
    client: &reqwest::Client,
    target: &WebhookTarget,
    delivery_id: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> AttemptOutcome {
    let timestamp = now.timestamp();
    let mut request = client
        .post(target.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", delivery_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = &target.secret {
        request = request.header(
            "webhook-signature",
            signature(secret, delivery_id, timestamp, body),
        );
    }
    let response = match request.body(body.to_vec()).send().await {
        Ok(response) => response,
        Err(err) => {
            return AttemptOutcome::Retry {
                reason: describe_error(err),
                status: None,
                retry_after: None,
            };
        }
    };
    let status = response.status();
    if status.is_success() {
        return AttemptOutcome::Delivered {
            status: status.as_u16(),
        };
    }
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    let retry_after = if retryable {
        retry_after(response.headers(), now)
    } else {
        None
    };
    let reason = describe_response(status, response).await;
    if retryable {
        AttemptOutcome::Retry {
            reason,
            status: Some(status.as_u16()),
            retry_after,
        }
    } else {
        AttemptOutcome::Rejected {
            status: status.as_u16(),
            reason,
        }
    }
}

/// The error and its causes on one line, without the URL (a Slack webhook's URL is its secret).
fn describe_error(err: reqwest::Error) -> String {
    let timed_out = err.is_timeout();
    let err = err.without_url();
    let mut reason = String::new();
    let mut cause: Option<&dyn std::error::Error> = Some(&err);
    while let Some(current) = cause {
        let text = current.to_string();
        // Layers often repeat their cause's message; keep each once.
        if !reason.ends_with(&text) {
            if !reason.is_empty() {
                reason.push_str(": ");
            }
            reason.push_str(&text);
        }
        cause = current.source();
    }
    if timed_out && !reason.contains("timed out") {
        reason.insert_str(0, "timed out: ");
    }
    reason
}

/// `HTTP 400 Bad Request: <start of the body>`, reading at most [`MAX_RESPONSE_BYTES`].
async fn describe_response(status: StatusCode, mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    // A body that fails midway is quoted as far as it came.
    while body.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let mut reason = format!("HTTP {status}");
    if !text.is_empty() {
        reason.push_str(": ");
        // On one line, whatever the receiver's page looks like.
        let quoted = text.chars().take(MAX_REASON_CHARS);
        reason.extend(quoted.map(|c| if c.is_control() { ' ' } else { c }));
        if text.chars().nth(MAX_REASON_CHARS).is_some() {
            reason.push('…');
        }
    }
    reason
}

/// The receiver's `Retry-After` (delta-seconds or an HTTP date, relative to `now`); `None` when absent
/// or unreadable.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    // A date already past means "now".
    Some(
        date.duration_since(SystemTime::from(now))
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::time::Instant;

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::Response;
    use axum::routing::post;
    use tokio::net::TcpListener;

    use super::*;
    use crate::alerts::matcher::Matchers;
    use crate::webhook::{Grouping, WebhookFormat};

    /// Requests the test receiver got: headers and body.
    type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

    /// A real HTTP receiver on 127.0.0.1 answering every POST to `/hook` with `status`, `headers` and
    /// `body` after `delay`.
    async fn receiver(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: String,
        delay: Duration,
    ) -> (SocketAddr, Received) {
        let received = Received::default();
        let handler = move |State(received): State<Received>,
                            request_headers: HeaderMap,
                            request_body: Bytes| {
            let body = body.clone();
            async move {
                received
                    .lock()
                    .unwrap()
                    .push((request_headers, request_body));
                tokio::time::sleep(delay).await;
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(*name, *value);
                }
                response.body(Body::from(body)).unwrap()
            }
        };
        let app = Router::new()
            .route("/hook", post(handler))
            .with_state(received.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, received)
    }

    fn target(url: String, secret: Option<&str>) -> WebhookTarget {
        WebhookTarget {
            name: "test".to_owned(),
            url: url.parse().unwrap(),
            format: WebhookFormat::Alertmanager,
            secret: secret.map(|secret| secret.parse().unwrap()),
            matchers: Matchers::default(),
            send_resolved: true,
            grouping: Grouping::default(),
        }
    }

    fn client(timeout: Duration) -> reqwest::Client {
        http_client(&DeliverySettings {
            timeout,
            ..DeliverySettings::default()
        })
        .unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    async fn send(
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &str,
    ) -> AttemptOutcome {
        let (addr, _) = receiver(status, headers, body.to_owned(), Duration::ZERO).await;
        let target = target(format!("http://{addr}/hook"), None);
        attempt(&client(Duration::from_secs(2)), &target, "d1", b"{}", now()).await
    }

    #[tokio::test]
    async fn delivered_with_signed_standard_webhooks_headers() {
        let (addr, received) = receiver(200, &[], String::new(), Duration::ZERO).await;
        let target = target(format!("http://{addr}/hook"), Some("whsec_aHVudGVyMg=="));
        let body = br#"{"version":"4"}"#;
        let outcome = attempt(
            &client(Duration::from_secs(2)),
            &target,
            "delivery-42",
            body,
            now(),
        )
        .await;
        assert_eq!(outcome, AttemptOutcome::Delivered { status: 200 });

        let received = received.lock().unwrap();
        let (headers, got) = &received[0];
        assert_eq!(got.as_ref(), body);
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("webhook-id"), "delivery-42");
        assert_eq!(header("webhook-timestamp"), "1700000000");
        assert!(header("user-agent").starts_with("sockfleet/"));
        let secret = "whsec_aHVudGVyMg==".parse().unwrap();
        assert_eq!(
            header("webhook-signature"),
            signature(&secret, "delivery-42", 1_700_000_000, got)
        );
    }

    #[tokio::test]
    async fn unsigned_without_a_secret() {
        let (addr, received) = receiver(204, &[], String::new(), Duration::ZERO).await;
        let target = target(format!("http://{addr}/hook"), None);
        let outcome = attempt(&client(Duration::from_secs(2)), &target, "d", b"{}", now()).await;
        assert_eq!(outcome, AttemptOutcome::Delivered { status: 204 });
        let received = received.lock().unwrap();
        assert!(received[0].0.get("webhook-signature").is_none());
        assert!(received[0].0.get("webhook-id").is_some());
    }

    #[tokio::test]
    async fn unavailable_with_retry_after_is_retried() {
        let outcome = send(503, &[("retry-after", "7")], "down for maintenance").await;
        let AttemptOutcome::Retry {
            reason,
            status,
            retry_after,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert_eq!(status, Some(503));
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        assert!(
            reason.contains("503") && reason.contains("down for maintenance"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn too_many_requests_is_retried() {
        let outcome = send(429, &[("retry-after", "soon")], "").await;
        assert_eq!(
            outcome,
            AttemptOutcome::Retry {
                reason: "HTTP 429 Too Many Requests".to_owned(),
                status: Some(429),
                retry_after: None,
            }
        );
    }

    #[tokio::test]
    async fn bad_request_is_rejected_with_the_body() {
        let outcome = send(400, &[], "missing field `alerts`").await;
        let AttemptOutcome::Rejected { status, reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(status, 400);
        assert!(
            reason.contains("400") && reason.contains("missing field `alerts`"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn long_bodies_are_cut() {
        let (addr, _) = receiver(500, &[], "é".repeat(100_000), Duration::ZERO).await;
        let target = target(format!("http://{addr}/hook"), None);
        let outcome = attempt(&client(Duration::from_secs(2)), &target, "d", b"{}", now()).await;
        let AttemptOutcome::Retry { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.chars().count() < MAX_REASON_CHARS + 40,
            "{}",
            reason.len()
        );
        assert!(reason.ends_with('…'));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let outcome = send(302, &[("location", "http://127.0.0.1:1/elsewhere")], "").await;
        assert!(
            matches!(outcome, AttemptOutcome::Rejected { status: 302, .. }),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn slow_receiver_times_out_and_is_retried() {
        let (addr, _) = receiver(200, &[], String::new(), Duration::from_secs(5)).await;
        let target = target(format!("http://{addr}/hook"), None);
        let started = Instant::now();
        let outcome = attempt(
            &client(Duration::from_millis(300)),
            &target,
            "d",
            b"{}",
            now(),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        let AttemptOutcome::Retry {
            reason,
            status: None,
            retry_after: None,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("timed out"), "{reason}");
    }

    #[tokio::test]
    async fn closed_port_is_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = target(format!("http://127.0.0.1:{port}/hook?token=s3cret"), None);
        let outcome = attempt(&client(Duration::from_secs(1)), &target, "d", b"{}", now()).await;
        let AttemptOutcome::Retry {
            reason,
            status: None,
            retry_after: None,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        assert!(!reason.contains("s3cret"), "{reason}");
    }

    #[tokio::test]
    async fn https_to_a_plain_http_server_fails_cleanly() {
        let (addr, _) = receiver(200, &[], String::new(), Duration::ZERO).await;
        let target = target(format!("https://{addr}/hook"), None);
        let outcome = attempt(&client(Duration::from_secs(1)), &target, "d", b"{}", now()).await;
        assert!(
            matches!(outcome, AttemptOutcome::Retry { status: None, .. }),
            "{outcome:?}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            headers
        };
        assert_eq!(retry_after(&HeaderMap::new(), now()), None);
        assert_eq!(
            retry_after(&headers("120"), now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(retry_after(&headers("-1"), now()), None);
        assert_eq!(retry_after(&headers("tomorrow"), now()), None);
        let later = httpdate::fmt_http_date(SystemTime::from(now()) + Duration::from_secs(90));
        let mut map = HeaderMap::new();
        map.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&map, now()), Some(Duration::from_secs(90)));
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT"), now()),
            Some(Duration::ZERO)
        );
    }
}
