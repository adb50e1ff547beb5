//! End to end: a real agent process streams to a real server on a fresh PostgreSQL database, and the
//! HTTP API shows exactly what `ss` shows.
//!
//! The agent collects inside a network namespace of the test's own (`--netns`), holding sockets in
//! known states, so its counts are exact while other tests run; it reaches the server on the host's
//! loopback.

use std::time::Duration;

use sockfleet_domain::FamilyCounts;
use sockfleet_testkit::{
    IsolatedNamespace, open_known_states, show, ss_counts, wait_until_settled,
};

use crate::support::database::TestDatabase;
use crate::support::process::{AgentProcess, ServerProcess};
use crate::support::{eventually, get_json};

#[tokio::test]
async fn api_shows_what_ss_shows() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let namespace = IsolatedNamespace::new();
    let (held, expected) = namespace.run(|| {
        let (held, expected) = open_known_states();
        wait_until_settled(&expected);
        (held, expected)
    });
    let reference = namespace.run(ss_counts);
    assert_eq!(show(&reference), show(&expected));

    let agent = AgentProcess::start(
        &server.url(),
        &[
            "--interval",
            "200ms",
            "--host-id",
            "e2e-host",
            "--label",
            "env=test",
            "--netns",
            namespace.path(),
        ],
    );
    let host_url = format!("{}/api/v1/hosts/e2e-host", server.url());
    let series_url = format!("{host_url}/series");
    let points = eventually(
        "three reports in the series",
        Duration::from_secs(30),
        || async {
            let (status, body) = get_json(&series_url).await;
            let points = body["points"].as_array().cloned().unwrap_or_default();
            (status == 200 && points.len() >= 3).then_some(points)
        },
    )
    .await;
    for point in &points {
        let states: FamilyCounts = serde_json::from_value(point["states"].clone()).expect("states");
        assert_eq!(
            show(&states),
            show(&reference),
            "a stored report differs from ss"
        );
    }

    let (status, host) = get_json(&host_url).await;
    assert_eq!(status, 200, "{host}");
    let latest: FamilyCounts =
        serde_json::from_value(host["states"].clone()).expect("latest states");
    assert_eq!(
        show(&latest),
        show(&namespace.run(ss_counts)),
        "the host's latest counts differ from ss"
    );
    assert_eq!(host["labels"]["env"], "test");
    assert_eq!(host["collector"], "netlink");
    assert_eq!(
        host["sysctls"]["net.ipv4.tcp_fin_timeout"]
            .as_str()
            .map(str::len)
            .map(|len| len > 0),
        Some(true)
    );

    // The test process holds every CLOSE_WAIT socket of the namespace: the agent names it.
    let breakdowns = &host["breakdowns"];
    assert_eq!(
        breakdowns["attribution"]["status"], "complete",
        "{breakdowns}"
    );
    let owner = &breakdowns["close_wait_processes"][0];
    assert_eq!(owner["pid"], std::process::id(), "{breakdowns}");
    assert_eq!(
        owner["close_wait"],
        expected
            .combined()
            .get(sockfleet_domain::TcpState::CloseWait),
        "{breakdowns}"
    );
    assert!(
        breakdowns["listeners"]
            .as_array()
            .is_some_and(|listeners| !listeners.is_empty()),
        "{breakdowns}"
    );
    assert!(
        host["kernel"]["active_opens"]
            .as_u64()
            .is_some_and(|opens| opens > 0),
        "{host}"
    );

    let (status, list) = get_json(&format!("{}/api/v1/hosts", server.url())).await;
    assert_eq!(status, 200);
    let listed = list["hosts"].as_array().expect("hosts");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["host_id"], "e2e-host");
    assert!(listed[0]["last_seen"].is_string());

    let pool = database.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM reports")
        .fetch_one(&pool)
        .await
        .expect("count reports");
    assert!(stored >= points.len() as i64);

    let log = agent.stop();
    assert!(log.contains("agent stopped"), "{log}");
    server.stop();
    drop(held);
}
