//! The JSON API, health endpoints, dashboard and gRPC health of a real server process, fed by the
//! hand-written gRPC client with reports whose every count is known.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};
use sockfleet_proto::v1;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::database::TestDatabase;
use crate::support::grpc::{channel, deliver, hello, report};
use crate::support::process::ServerProcess;
use crate::support::{get_json, http_client};

const HOST_A: &str = "api-host-a";
const HOST_B: &str = "api-host-b";

/// A server with two hosts that have reported.
///
/// Host A sent five reports ten seconds apart, starting at `base` (a whole minute, so 30-second steps
/// start exactly there): three in the step `base..base+30s`, two in the next. Its first report carries
/// three sysctls (one the kernel lacks), its fourth changes `tcp_fin_timeout` from 60 to 30. Host B
/// sent one report at `base + 5s`.
struct Fleet {
    server: ServerProcess,
    base: DateTime<Utc>,
    a_reports: Vec<v1::Report>,
    b_report: v1::Report,
    _database: TestDatabase,
}

fn counts(established: u64, time_wait: u64, close_wait: u64, listen: u64) -> v1::StateCounts {
    v1::StateCounts {
        established,
        time_wait,
        close_wait,
        listen,
        ..Default::default()
    }
}

impl Fleet {
    async fn start() -> Fleet {
        let database = TestDatabase::create().await;
        let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
        let now = Utc::now().timestamp();
        let base = DateTime::from_timestamp((now - 600) / 60 * 60, 0).unwrap();
        let at = |seconds: i64| base + TimeDelta::seconds(seconds);
        let a_reports = vec![
            report(
                1,
                at(0),
                counts(5, 10, 1, 4),
                counts(0, 0, 0, 2),
                &[
                    ("net.ipv4.tcp_fin_timeout", Some("60")),
                    ("net.ipv4.tcp_tw_recycle", None),
                    ("net.core.somaxconn", Some("4096")),
                ],
            ),
            report(2, at(10), counts(6, 20, 1, 4), counts(0, 0, 0, 2), &[]),
            report(3, at(20), counts(7, 33, 4, 4), counts(0, 0, 0, 2), &[]),
            report(
                4,
                at(30),
                counts(8, 4, 0, 4),
                counts(0, 0, 0, 2),
                &[("net.ipv4.tcp_fin_timeout", Some("30"))],
            ),
            {
                let mut last = report(5, at(40), counts(10, 8, 2, 4), counts(4, 2, 0, 2), &[]);
                last.dropped_reports = 2;
                last
            },
        ];
        let (welcome, acks) =
            deliver(&server.url(), hello(HOST_A, "run-a"), a_reports.clone()).await;
        assert_eq!(welcome.committed_sequence, 0);
        assert_eq!(acks.last(), Some(&5));
        let b_report = report(1, at(5), counts(100, 200, 3, 1), counts(7, 0, 0, 1), &[]);
        let (_, acks) = deliver(
            &server.url(),
            hello(HOST_B, "run-b"),
            vec![b_report.clone()],
        )
        .await;
        assert_eq!(acks, [1]);
        Fleet {
            server,
            base,
            a_reports,
            b_report,
            _database: database,
        }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.server.url())
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        get_json(&self.url(path_and_query)).await
    }
}

/// Counts as the API shows them: every state by name.
fn counts_json(counts: &v1::StateCounts) -> Value {
    json!({
        "established": counts.established,
        "syn_sent": counts.syn_sent,
        "syn_recv": counts.syn_recv,
        "fin_wait1": counts.fin_wait1,
        "fin_wait2": counts.fin_wait2,
        "time_wait": counts.time_wait,
        "close": counts.close,
        "close_wait": counts.close_wait,
        "last_ack": counts.last_ack,
        "listen": counts.listen,
        "closing": counts.closing,
    })
}

/// Both families of a report as the API shows them.
fn states_json(report: &v1::Report) -> Value {
    json!({
        "ipv4": counts_json(report.ipv4.as_ref().unwrap()),
        "ipv6": counts_json(report.ipv6.as_ref().unwrap()),
    })
}

fn collected_at(report: &v1::Report) -> DateTime<Utc> {
    let timestamp = report.collected_at.unwrap();
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).unwrap()).unwrap()
}

/// Parses an RFC 3339 field of the API's JSON.
fn time(value: &Value) -> DateTime<Utc> {
    let raw = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a timestamp string"));
    DateTime::parse_from_rfc3339(raw)
        .unwrap_or_else(|error| panic!("{raw:?} is not RFC 3339: {error}"))
        .with_timezone(&Utc)
}

/// A timestamp for a query string (`Z`, so nothing needs escaping).
fn query_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Asserts a JSON error answer: the status, the error object's status, and a message containing every
/// one of `needles`.
fn assert_error(answer: &(u16, Value), status: u16, needles: &[&str], what: &str) {
    let (code, body) = answer;
    assert_eq!(*code, status, "{what}: {body}");
    assert_eq!(body["error"]["status"], json!(status), "{what}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message in {body}"));
    assert!(!message.is_empty(), "{what}: empty error message");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{what}: {message:?} does not mention {needle:?}"
        );
    }
}

#[tokio::test]
async fn hosts_list_shows_latest_counts_and_paginates() {
    let fleet = Fleet::start().await;

    let (status, body) = fleet.get("/api/v1/hosts").await;
    assert_eq!(status, 200, "{body}");
    let hosts = body["hosts"].as_array().expect("hosts array");
    assert_eq!(hosts.len(), 2, "{body}");
    assert_eq!(body["next_after"], Value::Null, "{body}");

    let a = &hosts[0];
    let latest = fleet.a_reports.last().unwrap();
    assert_eq!(a["host_id"], HOST_A);
    assert_eq!(a["hostname"], format!("{HOST_A}.example"));
    assert_eq!(a["kernel_release"], "6.1.0-test");
    assert_eq!(a["agent_version"], "0.0.0-test");
    assert_eq!(a["collector"], "netlink");
    assert_eq!(a["labels"], json!({ "env": "test" }));
    assert_eq!(a["interval_seconds"].as_f64(), Some(1.0));
    assert_eq!(time(&a["last_seen"]), collected_at(latest));
    assert_eq!(a["states"], states_json(latest));
    time(&a["first_seen"]);

    let b = &hosts[1];
    assert_eq!(b["host_id"], HOST_B);
    assert_eq!(time(&b["last_seen"]), collected_at(&fleet.b_report));
    assert_eq!(b["states"], states_json(&fleet.b_report));

    // Keyset pagination, one host per page.
    let (status, first) = fleet.get("/api/v1/hosts?limit=1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(first["hosts"][0]["host_id"], HOST_A);
    assert_eq!(first["next_after"], HOST_A);
    let (status, second) = fleet
        .get(&format!("/api/v1/hosts?limit=1&after={HOST_A}"))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(second["hosts"][0]["host_id"], HOST_B);
    // Following a next_after never loses a host and ends on an empty page without next_after.
    if let Some(after) = second["next_after"].as_str() {
        let (status, third) = fleet
            .get(&format!("/api/v1/hosts?limit=1&after={after}"))
            .await;
        assert_eq!(status, 200, "{third}");
        assert_eq!(third["hosts"], json!([]));
        assert_eq!(third["next_after"], Value::Null);
    }

    // Bad parameters.
    assert_error(
        &fleet.get("/api/v1/hosts?limit=0").await,
        400,
        &["limit"],
        "limit=0",
    );
    assert_error(
        &fleet.get("/api/v1/hosts?limit=5000").await,
        400,
        &["limit", "1000"],
        "limit=5000",
    );
    assert_error(
        &fleet.get("/api/v1/hosts?limit=many").await,
        400,
        &["limit"],
        "limit=many",
    );
    assert_error(
        &fleet.get("/api/v1/hosts?colour=blue").await,
        400,
        &["colour"],
        "unknown parameter",
    );
    assert_error(
        &fleet.get("/api/v1/hosts?after=bad%20id").await,
        400,
        &["host id"],
        "after=bad id",
    );
}

/// `HostList` (server/src/api/hosts.rs) promises "`next_after` is the `after` value of the next page,
/// absent on the last". With two hosts and `limit=2`, the first page is the last.
#[tokio::test]
async fn hosts_next_after_is_absent_on_the_last_page() {
    let fleet = Fleet::start().await;
    let (status, body) = fleet.get("/api/v1/hosts?limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hosts"].as_array().unwrap().len(), 2);
    assert_eq!(
        body["next_after"],
        Value::Null,
        "a full last page still offers a next page"
    );
    let (status, body) = fleet
        .get(&format!("/api/v1/hosts?limit=1&after={HOST_A}"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["next_after"],
        Value::Null,
        "a full last page still offers a next page"
    );
}

#[tokio::test]
async fn host_detail_shows_sysctls_and_drops() {
    let fleet = Fleet::start().await;

    let (status, body) = fleet.get(&format!("/api/v1/hosts/{HOST_A}")).await;
    assert_eq!(status, 200, "{body}");
    let latest = fleet.a_reports.last().unwrap();
    assert_eq!(body["host_id"], HOST_A);
    assert_eq!(body["collector"], "netlink");
    assert_eq!(body["states"], states_json(latest));
    assert_eq!(time(&body["last_seen"]), collected_at(latest));
    assert_eq!(
        body["sysctls"],
        json!({
            "net.core.somaxconn": "4096",
            "net.ipv4.tcp_fin_timeout": "30",
            "net.ipv4.tcp_tw_recycle": null,
        })
    );
    assert_eq!(body["dropped_reports"], 2);
    assert_eq!(
        body["kernel"]["active_opens"],
        1000 + latest.sequence,
        "the latest report's kernel counters"
    );
    assert_eq!(body["kernel"]["listen_drops"], 3);

    let (status, body) = fleet.get(&format!("/api/v1/hosts/{HOST_B}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sysctls"], json!({}));
    assert_eq!(body["dropped_reports"], 0);

    assert_error(
        &fleet.get("/api/v1/hosts/never-seen").await,
        404,
        &["never-seen"],
        "unknown host",
    );
    assert_error(
        &fleet.get("/api/v1/hosts/bad%20id").await,
        400,
        &["host id"],
        "bad%20id",
    );
}

#[tokio::test]
async fn series_returns_what_was_sent_raw_and_averaged() {
    let fleet = Fleet::start().await;
    let base = fleet.base;
    let from = query_time(base - TimeDelta::minutes(1));
    let to = query_time(base + TimeDelta::minutes(2));

    // Raw: every report, as sent.
    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/series?from={from}&to={to}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host_id"], HOST_A);
    assert_eq!(body["step_seconds"], Value::Null);
    assert_eq!(body["truncated"], false);
    assert_eq!(time(&body["from"]), base - TimeDelta::minutes(1));
    assert_eq!(time(&body["to"]), base + TimeDelta::minutes(2));
    let points = body["points"].as_array().expect("points array");
    assert_eq!(points.len(), fleet.a_reports.len(), "{body}");
    for (point, sent) in points.iter().zip(&fleet.a_reports) {
        assert_eq!(time(&point["time"]), collected_at(sent), "{point}");
        assert_eq!(
            point["states"],
            states_json(sent),
            "report {}",
            sent.sequence
        );
    }

    // Without from/to: the last hour, which holds every report (the newest is ten minutes old at most).
    let (status, body) = fleet.get(&format!("/api/v1/hosts/{HOST_A}/series")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["points"].as_array().unwrap().len(),
        fleet.a_reports.len(),
        "{body}"
    );

    // 30-second steps: the average of each step's reports, rounded.
    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/series?from={from}&to={to}&step=30s"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["step_seconds"], 30);
    let points = body["points"].as_array().expect("points array");
    assert_eq!(points.len(), 2, "{body}");
    assert_eq!(time(&points[0]["time"]), base);
    // (5+6+7)/3 = 6, (10+20+33)/3 = 21, (1+1+4)/3 = 2
    assert_eq!(
        points[0]["states"],
        states_json(&report(
            0,
            base,
            counts(6, 21, 2, 4),
            counts(0, 0, 0, 2),
            &[]
        ))
    );
    assert_eq!(time(&points[1]["time"]), base + TimeDelta::seconds(30));
    // (8+10)/2 = 9, (4+8)/2 = 6, (0+2)/2 = 1; IPv6 (0+4)/2 = 2, (0+2)/2 = 1
    assert_eq!(
        points[1]["states"],
        states_json(&report(
            0,
            base,
            counts(9, 6, 1, 4),
            counts(2, 1, 0, 2),
            &[]
        ))
    );

    // A limit cuts the series short and says so.
    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/series?from={from}&to={to}&limit=2"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"].as_array().unwrap().len(), 2);
    assert_eq!(body["truncated"], true);

    // Bad ranges and parameters.
    let path = format!("/api/v1/hosts/{HOST_A}/series");
    assert_error(
        &fleet.get(&format!("{path}?from={to}&to={from}")).await,
        400,
        &["from", "to"],
        "from > to",
    );
    assert_error(
        &fleet.get(&format!("{path}?from={from}&to={from}")).await,
        400,
        &["from", "to"],
        "from = to",
    );
    assert_error(
        &fleet.get(&format!("{path}?from=yesterday&to={to}")).await,
        400,
        &["from", "yesterday"],
        "bad from",
    );
    assert_error(
        &fleet
            .get(&format!("{path}?from={from}&to=2026-13-45"))
            .await,
        400,
        &["to"],
        "bad to",
    );
    let long_ago = query_time(base - TimeDelta::days(401));
    assert_error(
        &fleet.get(&format!("{path}?from={long_ago}&to={to}")).await,
        400,
        &["400 days"],
        "401 days",
    );
    assert_error(
        &fleet
            .get(&format!("{path}?from={from}&to={to}&step=0"))
            .await,
        400,
        &["step"],
        "step=0",
    );
    assert_error(
        &fleet
            .get(&format!("{path}?from={from}&to={to}&step=soon"))
            .await,
        400,
        &["step"],
        "step=soon",
    );
    assert_error(
        &fleet
            .get(&format!("{path}?from={from}&to={to}&limit=0"))
            .await,
        400,
        &["limit"],
        "limit=0",
    );
    assert_error(
        &fleet.get(&format!("{path}?form={from}")).await,
        400,
        &["form"],
        "unknown parameter",
    );
    assert_error(
        &fleet.get("/api/v1/hosts/never-seen/series").await,
        404,
        &["never-seen"],
        "unknown host",
    );
    assert_error(
        &fleet.get("/api/v1/hosts/bad%20id/series").await,
        400,
        &["host id"],
        "bad%20id",
    );
}

/// `Series.truncated` is documented as "true when `limit` cut the series short": a limit equal to the
/// number of points cuts nothing.
#[tokio::test]
async fn series_is_not_truncated_when_the_limit_is_exactly_met() {
    let fleet = Fleet::start().await;
    let from = query_time(fleet.base - TimeDelta::minutes(1));
    let to = query_time(fleet.base + TimeDelta::minutes(2));
    let limit = fleet.a_reports.len();
    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/series?from={from}&to={to}&limit={limit}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["points"].as_array().unwrap().len(), limit);
    assert_eq!(
        body["truncated"], false,
        "nothing was cut, yet the series says it was truncated"
    );
}

#[tokio::test]
async fn sysctl_history_lists_changes() {
    let fleet = Fleet::start().await;
    let base = fleet.base;
    let change = |name: &str, value: Option<&str>, at: DateTime<Utc>| {
        (name.to_owned(), value.map(str::to_owned), at)
    };
    let parse = |body: &Value| {
        body["changes"]
            .as_array()
            .unwrap_or_else(|| panic!("no changes array in {body}"))
            .iter()
            .map(|change| {
                (
                    change["name"].as_str().unwrap().to_owned(),
                    change["value"].as_str().map(str::to_owned),
                    time(&change["changed_at"]),
                )
            })
            .collect::<Vec<_>>()
    };

    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/sysctls/history?name=net.ipv4.tcp_fin_timeout"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host_id"], HOST_A);
    assert_eq!(
        parse(&body),
        [
            change("net.ipv4.tcp_fin_timeout", Some("60"), base),
            change(
                "net.ipv4.tcp_fin_timeout",
                Some("30"),
                base + TimeDelta::seconds(30)
            ),
        ]
    );

    let (status, body) = fleet
        .get(&format!("/api/v1/hosts/{HOST_A}/sysctls/history"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        parse(&body),
        [
            change("net.core.somaxconn", Some("4096"), base),
            change("net.ipv4.tcp_fin_timeout", Some("60"), base),
            change("net.ipv4.tcp_tw_recycle", None, base),
            change(
                "net.ipv4.tcp_fin_timeout",
                Some("30"),
                base + TimeDelta::seconds(30)
            ),
        ]
    );
    let recycle = body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "net.ipv4.tcp_tw_recycle");
    assert_eq!(
        recycle.unwrap()["value"],
        Value::Null,
        "an absent sysctl is null"
    );

    let (status, body) = fleet
        .get(&format!(
            "/api/v1/hosts/{HOST_A}/sysctls/history?name=net.ipv4.tcp_syncookies"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"], json!([]));

    let path = format!("/api/v1/hosts/{HOST_A}/sysctls/history");
    assert_error(
        &fleet.get(&format!("{path}?name=Bad!")).await,
        400,
        &["name"],
        "bad name",
    );
    assert_error(
        &fleet.get(&format!("{path}?name=")).await,
        400,
        &["name"],
        "empty name",
    );
    assert_error(
        &fleet.get(&format!("{path}?nam=x")).await,
        400,
        &["nam"],
        "unknown parameter",
    );
    assert_error(
        &fleet.get("/api/v1/hosts/never-seen/sysctls/history").await,
        404,
        &["never-seen"],
        "unknown host",
    );
}

#[tokio::test]
async fn health_dashboard_and_unknown_paths() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();

    let (status, body) = get_json(&format!("{url}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");

    let (status, body) = get_json(&format!("{url}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["database"], "postgres");

    // An empty fleet is an empty list, not an error.
    let (status, body) = get_json(&format!("{url}/api/v1/hosts")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "hosts": [], "next_after": null }));

    let response = http_client()
        .get(format!("{url}/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/html"),
        "content-type {content_type}"
    );
    let page = response.text().await.unwrap();
    assert!(
        page.contains("sockfleet"),
        "the dashboard does not name sockfleet"
    );
    assert!(
        page.contains("/api/v1/hosts"),
        "the dashboard does not fetch the host list"
    );

    let answer = get_json(&format!("{url}/api/v1/nothing-here")).await;
    assert_error(&answer, 404, &["/api/v1/nothing-here"], "unknown path");
    let answer = get_json(&format!("{url}/no/such/page")).await;
    assert_error(&answer, 404, &["/no/such/page"], "unknown path");

    // The standard gRPC health service, on the same port.
    let mut health = HealthClient::new(channel(&url).await);
    for service in ["", "sockfleet.v1.Ingest"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?}: {status:?}"))
            .into_inner();
        assert_eq!(
            answer.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .expect_err("an unknown service has no health");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

/// `ApiError` (server/src/api/error.rs): errors of the HTTP API are "always sent as JSON with a message a
/// person can act on", including a method the endpoint does not serve.
#[tokio::test]
async fn wrong_method_gets_a_json_error() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let response = http_client()
        .post(format!("{}/api/v1/hosts", server.url()))
        .send()
        .await
        .expect("POST /api/v1/hosts");
    assert_eq!(response.status().as_u16(), 405);
    assert!(
        response.headers().contains_key("allow"),
        "405 without Allow"
    );
    let body = response.text().await.unwrap();
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|error| panic!("405 body {body:?} is not JSON: {error}"));
    assert_error(&(405, json), 405, &[], "POST /api/v1/hosts");
}

#[tokio::test]
async fn namespaces_show_on_the_host_and_have_their_own_series() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let base = Utc::now() - TimeDelta::minutes(5);
    let inode = 4_026_532_999_u64;
    let reports: Vec<v1::Report> = (1..=2u64)
        .map(|sequence| {
            let at = base + TimeDelta::seconds(10 * sequence as i64);
            let mut sent = report(sequence, at, counts(1, 2, 0, 3), counts(0, 0, 0, 1), &[]);
            sent.namespaces.push(v1::NamespaceReport {
                inode,
                identity: Some(v1::NamespaceIdentity {
                    name: "blue".into(),
                    pid: 77,
                    comm: "envoy".into(),
                    ..Default::default()
                }),
                ipv4: Some(counts(5, 0, sequence, 2)),
                ipv6: Some(counts(0, 0, 0, 0)),
                sysctls: vec![v1::Sysctl {
                    name: "net.ipv4.tcp_tw_reuse".into(),
                    value: Some("1".into()),
                }],
                ..Default::default()
            });
            sent
        })
        .collect();
    deliver(&server.url(), hello("ns-host", "run-ns"), reports).await;

    let (status, body) = get_json(&format!("{}/api/v1/hosts/ns-host", server.url())).await;
    assert_eq!(status, 200, "{body}");
    let namespace = &body["namespaces"][0];
    assert_eq!(namespace["inode"], inode, "{body}");
    assert_eq!(namespace["name"], "blue");
    assert_eq!(namespace["pid"], 77);
    assert_eq!(namespace["comm"], "envoy");
    assert_eq!(
        namespace["states"]["ipv4"],
        counts_json(&counts(5, 0, 2, 2))
    );
    assert_eq!(namespace["sysctls"]["net.ipv4.tcp_tw_reuse"], "1");
    assert_eq!(
        body["states"]["ipv4"],
        counts_json(&counts(1, 2, 0, 3)),
        "host counts unchanged"
    );

    let from = query_time(base);
    let (status, series) = get_json(&format!(
        "{}/api/v1/hosts/ns-host/series?from={from}&namespace={inode}",
        server.url()
    ))
    .await;
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["namespace"], inode);
    let close_waits: Vec<&Value> = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| &point["states"]["ipv4"]["close_wait"])
        .collect();
    assert_eq!(close_waits, vec![&json!(1), &json!(2)]);

    let answer = get_json(&format!(
        "{}/api/v1/hosts/ns-host/series?namespace=blue",
        server.url()
    ))
    .await;
    assert_error(
        &answer,
        400,
        &["namespace"],
        "a namespace must be an inode number",
    );
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .unwrap();
}
