//! Webhooks to a real receiver on loopback: the Alertmanager v4 body and its Standard Webhooks
//! signature, retries while the receiver answers 503, and a notification that waits for its receiver
//! across a server restart.
//!
//! The agents collect in a network namespace of the test's own (see `alerts.rs`), where the test holds
//! the sockets that make the rules fire; the servers and the receivers are on the host's loopback.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use sockfleet_testkit::IsolatedNamespace;

use crate::alerts::{ConfigFile, alerts, hold_close_wait, start_agent, start_server};
use crate::support::database::TestDatabase;
use crate::support::receiver::{Received, Receiver, unused_address};
use crate::support::{eventually, get_json};

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// TIME_WAIT sockets the pressure test makes.
const TIME_WAIT_SOCKETS: usize = 400;
/// How long after the last expected request a receiver is watched for more (duplicates, repeats):
/// several polls of the dispatcher (1 s) and the sender (0.5 s).
const QUIET_PERIOD: Duration = Duration::from_secs(4);
/// The receiver asks for `Retry-After: 1`: a retry comes no sooner, give or take the time one request
/// takes. (Without it, the configured backoff would retry within 100, 200 and 400 ms.)
const RETRY_AFTER_SLACK: Duration = Duration::from_millis(800);

/// Quick retries, so a test sees several attempts within seconds.
const FAST_DELIVERY: &str = r#"
[delivery]
timeout = "2s"
retry_initial = "100ms"
retry_max = "1s"
"#;

/// CloseWaitHigh at the first sample with one CLOSE_WAIT socket: one alert per host.
const ONE_CLOSE_WAIT_FIRES: &str = r#"
[alerts.rules.CloseWaitHigh]
warning = 1
critical = 1000
fire_after = 1
"#;

#[tokio::test]
async fn time_wait_pressure_is_posted_as_a_signed_alertmanager_notification() {
    let database = TestDatabase::create().await;
    let namespace = IsolatedNamespace::new();
    let max_tw_buckets: u64 = namespace.run(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_max_tw_buckets")
            .expect("read tcp_max_tw_buckets");
        text.trim().parse().expect("tcp_max_tw_buckets is a number")
    });
    // Half the sockets made cross the warning level; critical stays out of reach.
    let warning = (TIME_WAIT_SOCKETS / 2) as f64 / max_tw_buckets as f64;
    assert!(
        warning > 0.0 && warning < 1.0,
        "tcp_max_tw_buckets {max_tw_buckets} is too small for this test"
    );
    let receiver = Receiver::start().await;
    let config = ConfigFile::write(&format!(
        r#"
        [alerts.rules.TimeWaitBucketPressure]
        warning = {warning}
        critical = 1
        fire_after = 1

        [[webhooks]]
        name = "tw-receiver"
        url = "{url}"
        secret = "{SECRET}"
        "#,
        url = receiver.url()
    ));
    let server = start_server(&database, "127.0.0.1:0", &config);
    let made = namespace.run(|| make_time_wait(TIME_WAIT_SOCKETS));
    assert_eq!(made, TIME_WAIT_SOCKETS);
    let _agent = start_agent(&server.url(), "tw-host", &namespace, &[]);

    let request = eventually(
        "the TimeWaitBucketPressure notification",
        Duration::from_secs(30),
        || async {
            receiver
                .received()
                .into_iter()
                .find(|request| alertnames(request).contains(&"TimeWaitBucketPressure".to_owned()))
        },
    )
    .await;

    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hook");
    assert_eq!(request.status, 200);
    assert!(
        request
            .header("content-type")
            .starts_with("application/json"),
        "{request:?}"
    );
    assert!(!request.webhook_id().is_empty());
    request.assert_signed_with(SECRET);

    let body = request.json();
    assert_eq!(body["version"], "4", "{body:#}");
    assert_eq!(body["status"], "firing", "{body:#}");
    assert_eq!(body["receiver"], "tw-receiver", "{body:#}");
    assert_eq!(
        body["groupKey"], r#"{}:{alertname="TimeWaitBucketPressure", host="tw-host"}"#,
        "{body:#}"
    );
    assert_eq!(
        body["groupLabels"],
        serde_json::json!({"alertname": "TimeWaitBucketPressure", "host": "tw-host"}),
        "{body:#}"
    );
    assert_eq!(body["truncatedAlerts"], 0, "{body:#}");
    assert_eq!(body["externalURL"], server.url(), "{body:#}");
    assert_eq!(body["commonLabels"]["alertname"], "TimeWaitBucketPressure");
    let sent = body["alerts"].as_array().expect("alerts");
    assert_eq!(sent.len(), 1, "{body:#}");
    let alert = &sent[0];
    assert_eq!(alert["status"], "firing", "{body:#}");
    assert_eq!(alert["labels"]["alertname"], "TimeWaitBucketPressure");
    assert_eq!(alert["labels"]["host"], "tw-host");
    assert_eq!(alert["labels"]["severity"], "warning");
    let starts_at = alert["startsAt"].as_str().unwrap_or_default();
    let starts_at = chrono::DateTime::parse_from_rfc3339(starts_at)
        .unwrap_or_else(|error| panic!("startsAt {starts_at:?} is not RFC 3339: {error}"));
    let age = chrono::Utc::now().signed_duration_since(starts_at);
    assert!(
        age >= chrono::TimeDelta::zero() - chrono::TimeDelta::seconds(5)
            && age < chrono::TimeDelta::seconds(60),
        "startsAt {starts_at} is not about now"
    );
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z", "{body:#}");
    assert!(
        alert["generatorURL"]
            .as_str()
            .is_some_and(|url| url.starts_with(&server.url())),
        "{body:#}"
    );
    let description = alert["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains(&format!("{TIME_WAIT_SOCKETS} sockets in TIME_WAIT")),
        "{description}"
    );

    // The API shows the same alert, with the ratio it fired at.
    let listed = alerts(
        &server.url(),
        "state=firing&alertname=TimeWaitBucketPressure&host=tw-host",
    )
    .await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["fingerprint"], alert["fingerprint"]);
    let ratio = listed[0]["value"].as_f64().expect("value");
    assert_eq!(
        (ratio * max_tw_buckets as f64).round() as usize,
        TIME_WAIT_SOCKETS,
        "the value is TIME_WAIT / tcp_max_tw_buckets"
    );
    server.stop();
}

#[tokio::test]
async fn a_receiver_answering_503_gets_every_notification_once_it_recovers() {
    let database = TestDatabase::create().await;
    let receiver = Receiver::start().await;
    const REFUSED: usize = 3;
    receiver.refuse_next(REFUSED);
    let config = ConfigFile::write(&format!(
        r#"
        {ONE_CLOSE_WAIT_FIRES}
        {FAST_DELIVERY}
        [[webhooks]]
        name = "flaky"
        url = "{url}"
        secret = "{SECRET}"
        "#,
        url = receiver.url()
    ));
    let server = start_server(&database, "127.0.0.1:0", &config);
    let namespace = IsolatedNamespace::new();
    let _held = hold_close_wait(&namespace);
    let _agent = start_agent(&server.url(), "flaky-host", &namespace, &[]);

    eventually(
        "a notification accepted after the 503s",
        Duration::from_secs(30),
        || async {
            receiver
                .received()
                .iter()
                .any(|r| r.status == 200)
                .then_some(())
        },
    )
    .await;
    let webhooks_url = format!("{}/api/v1/webhooks", server.url());
    let health = || async {
        let (status, body) = get_json(&webhooks_url).await;
        assert_eq!(status, 200, "{body}");
        body["webhooks"]
            .as_array()
            .and_then(|webhooks| webhooks.iter().find(|w| w["webhook"] == "flaky"))
            .cloned()
    };
    eventually("no delivery pending", Duration::from_secs(30), || async {
        health().await.filter(|health| health["pending"] == 0)
    })
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    let health = health().await.expect("the webhook's deliveries");

    let received = receiver.received();
    let statuses: Vec<u16> = received.iter().map(|request| request.status).collect();
    assert_eq!(
        statuses[..REFUSED],
        [503; REFUSED],
        "the first requests were refused: {statuses:?}"
    );
    // Every notification (one webhook-id) was attempted with one body until it was accepted once.
    let mut attempts: BTreeMap<&str, Vec<&Received>> = BTreeMap::new();
    for request in &received {
        request.assert_signed_with(SECRET);
        attempts
            .entry(request.webhook_id())
            .or_default()
            .push(request);
    }
    for (id, tries) in &attempts {
        let accepted: Vec<usize> = tries
            .iter()
            .enumerate()
            .filter(|(_, request)| request.status == 200)
            .map(|(index, _)| index)
            .collect();
        assert_eq!(
            accepted,
            [tries.len() - 1],
            "notification {id}: accepted once, by its last attempt: {statuses:?}"
        );
        assert!(
            tries.iter().all(|request| request.body == tries[0].body),
            "notification {id}: every attempt carries the same body"
        );
        // Each 503 asked for `Retry-After: 1`; the next attempt honoured it.
        for pair in tries.windows(2) {
            let waited = pair[1].at.duration_since(pair[0].at);
            assert!(
                waited >= RETRY_AFTER_SLACK,
                "notification {id}: retried after {waited:?}, before Retry-After's second"
            );
        }
    }
    let refused_ids: Vec<&str> = received
        .iter()
        .filter(|request| request.status == 503)
        .map(Received::webhook_id)
        .collect();
    assert!(
        refused_ids.iter().all(|id| attempts[id].len() > 1),
        "each refused notification was tried again"
    );
    let close_wait: Vec<&&str> = attempts
        .iter()
        .filter(|(_, tries)| tries[0].json()["groupLabels"]["alertname"] == "CloseWaitHigh")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        close_wait.len(),
        1,
        "one CloseWaitHigh notification: {attempts:#?}"
    );
    assert_eq!(
        refused_ids[0], *close_wait[0],
        "the refused notification is the CloseWaitHigh one, retried under the same webhook-id"
    );

    let refused = statuses.iter().filter(|status| **status == 503).count() as u64;
    assert_eq!(health["delivered"], attempts.len() as u64, "{health:#}");
    assert_eq!(health["failed"], 0, "{health:#}");
    assert_eq!(health["failed_attempts"], refused, "{health:#}");
    assert!(
        health["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("503")),
        "{health:#}"
    );
    assert!(health["last_error_at"].is_string(), "{health:#}");
    assert!(health["last_delivered_at"].is_string(), "{health:#}");
    server.stop();
}

#[tokio::test]
async fn a_notification_waiting_for_its_receiver_survives_a_server_restart() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    // Nothing listens there until the server has been restarted.
    let receiver_address = unused_address();
    let config = ConfigFile::write(&format!(
        r#"
        {ONE_CLOSE_WAIT_FIRES}
        {FAST_DELIVERY}
        [[webhooks]]
        name = "later"
        url = "http://{receiver_address}/hook"
        secret = "{SECRET}"
        group_interval = "1s"
        "#
    ));
    let first = start_server(&database, "127.0.0.1:0", &config);
    let server_address = first.address.to_string();
    let namespace = IsolatedNamespace::new();
    let _held = hold_close_wait(&namespace);
    let agent = start_agent(&first.url(), "restart-host", &namespace, &[]);

    // The alert fires and its notification fails against the closed port, twice at least.
    let deliveries = || async {
        sqlx::query_as::<_, (String, String, i64, Option<String>)>(
            "SELECT delivery_id, status, attempts, last_error FROM webhook_deliveries",
        )
        .fetch_all(&pool)
        .await
        .expect("read webhook_deliveries")
    };
    let (delivery_id, _, _, last_error) = eventually(
        "failed attempts of the notification",
        Duration::from_secs(30),
        || async {
            let rows = deliveries().await;
            match rows.as_slice() {
                [row] if row.2 >= 2 => Some(row.clone()),
                _ => None,
            }
        },
    )
    .await;
    assert!(
        last_error
            .as_deref()
            .is_some_and(|error| error.contains("refused")),
        "a failed attempt records its error: {last_error:?}"
    );

    let log = first.stop();
    assert!(log.contains("stopped"), "{log}");
    let (_, status, attempts, _) = deliveries()
        .await
        .into_iter()
        .next()
        .expect("the delivery is kept");
    assert_eq!(status, "pending", "not given up, not delivered");

    let receiver = Receiver::start_on(receiver_address).await;
    let second = start_server(&database, &server_address, &config);
    let request = eventually(
        "the notification after the restart",
        Duration::from_secs(30),
        || async { receiver.received().into_iter().next() },
    )
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;

    let received = receiver.received();
    assert_eq!(received.len(), 1, "exactly once: {received:#?}");
    assert_eq!(request.status, 200);
    assert_eq!(
        request.webhook_id(),
        delivery_id,
        "the webhook-id is the stored delivery id"
    );
    request.assert_signed_with(SECRET);
    let body = request.json();
    assert_eq!(body["status"], "firing", "{body:#}");
    assert_eq!(
        body["groupLabels"]["alertname"], "CloseWaitHigh",
        "{body:#}"
    );
    assert_eq!(body["groupLabels"]["host"], "restart-host", "{body:#}");

    let rows = deliveries().await;
    assert_eq!(rows.len(), 1, "no second delivery: {rows:?}");
    let (id, status, total_attempts, _) = &rows[0];
    assert_eq!(id, &delivery_id);
    assert_eq!(status, "delivered");
    assert_eq!(
        *total_attempts,
        attempts + 1,
        "one attempt after the restart"
    );
    // The agent reconnected to the new server; the alert was neither fired again nor resolved.
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT rule, ends_at FROM alerts WHERE host_id = 'restart-host'")
            .fetch_all(&pool)
            .await
            .expect("read alerts");
    assert_eq!(rows, [("CloseWaitHigh".to_owned(), None)]);
    agent.stop();
    second.stop();
}

/// The `alertname`s of a notification's alerts.
fn alertnames(request: &Received) -> Vec<String> {
    let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
    body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|alert| alert["labels"]["alertname"].as_str().map(str::to_owned))
        .collect()
}

/// Makes `count` TIME_WAIT sockets on 127.0.0.1 in the calling thread's namespace: the accepting side
/// closes first, so TIME_WAIT lands there (for 60 s). Returns how many were made.
fn make_time_wait(count: usize) -> usize {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on loopback");
    let address = listener.local_addr().expect("listener address");
    let mut made = 0;
    for _ in 0..count {
        let client = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("cannot connect to {address}: {error}"));
        let (server, _) = listener.accept().expect("accept");
        drop(server);
        // The client reads the server's FIN, then closes its side: the server moves to TIME_WAIT.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let read = std::io::Read::read(&mut &client, &mut [0u8; 1])
            .unwrap_or_else(|error| panic!("the server's FIN never came: {error}"));
        assert_eq!(read, 0, "the server sent data");
        drop(client);
        made += 1;
    }
    made
}
