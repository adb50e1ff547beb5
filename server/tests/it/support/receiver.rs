//! A real webhook receiver on loopback: an HTTP server that records every request it gets (method,
//! path, headers, body, and what it answered), can answer the next requests with 503 to make the server
//! retry, and checks Standard Webhooks signatures the way a receiver does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;

/// How far a `webhook-timestamp` may be from the receiver's clock (the Standard Webhooks default).
const TIMESTAMP_TOLERANCE: i64 = 300;

/// One request the receiver got, and the status it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case; a repeated header keeps its last value.
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The value of header `name` (lower case); panics, showing the request, when it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    /// The `webhook-id` header: the same on every attempt of one notification.
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    /// The body as JSON; panics, showing it, when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "the body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Checks `webhook-signature` as a Standard Webhooks receiver does: one of its space-separated
    /// `v1,` signatures is the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under
    /// the key `secret` (`whsec_` and base64) stands for, and the timestamp is within five minutes.
    pub fn assert_signed_with(&self, secret: &str) {
        let encoded = secret
            .strip_prefix("whsec_")
            .unwrap_or_else(|| panic!("the test secret must start with whsec_"));
        let key = STANDARD
            .decode(encoded)
            .unwrap_or_else(|error| panic!("the test secret is not base64: {error}"));
        let id = self.webhook_id();
        let timestamp = self.header("webhook-timestamp");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any size");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let signatures = self.header("webhook-signature");
        assert!(
            signatures.split(' ').any(|signature| signature == expected),
            "webhook-signature {signatures:?} does not verify (expected {expected:?}) for {self:?}"
        );
        let sent: i64 = timestamp
            .parse()
            .unwrap_or_else(|_| panic!("webhook-timestamp {timestamp:?} is not Unix seconds"));
        let skew = (chrono::Utc::now().timestamp() - sent).abs();
        assert!(
            skew <= TIMESTAMP_TOLERANCE,
            "webhook-timestamp {timestamp} is {skew} s away from now"
        );
    }
}

/// What the handler shares with the test.
#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Requests still to be answered with 503.
    to_refuse: AtomicUsize,
}

/// A running receiver; stopped when dropped.
pub struct Receiver {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub async fn start() -> Receiver {
        Receiver::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a receiver on `address` (e.g. one [`unused_address`] gave out earlier).
    pub async fn start_on(address: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|error| panic!("the receiver cannot listen on {address}: {error}"));
        let address = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            address,
            shared,
            task,
        }
    }

    /// The URL webhooks are configured with.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    /// Answers the next `count` requests with `503 Service Unavailable` and `Retry-After: 1`.
    pub fn refuse_next(&self, count: usize) {
        self.shared.to_refuse.store(count, Ordering::SeqCst);
    }

    /// Every request so far, in the order they came.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .expect("receiver log lock")
            .clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address nothing listens on now, for a receiver started later: a webhook configured
/// with it fails with "connection refused" until then.
pub fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a free port");
    listener.local_addr().expect("free port address")
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = shared
        .to_refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok();
    let status = if refuse {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let headers = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared
        .received
        .lock()
        .expect("receiver log lock")
        .push(Received {
            method: method.to_string(),
            path: uri.path().to_owned(),
            headers,
            body,
            status: status.as_u16(),
            at: Instant::now(),
        });
    if refuse {
        (status, [("retry-after", "1")], "down for maintenance").into_response()
    } else {
        status.into_response()
    }
}
