//! Two server replicas on one database, with agents split between them: every alert is recorded once
//! and notified once, whether a rule is judged by one replica (per-host rules) or by both (the fleet's
//! `AgentSilent`), and an agent that moves to the other replica does not fire its alerts again.
//!
//! Four agents report as four hosts from one network namespace of the test's own (see `alerts.rs`),
//! where the test holds a CLOSE_WAIT socket: `CloseWaitHigh` fires for each host.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use sockfleet_testkit::IsolatedNamespace;

use crate::alerts::{
    AGENT_INTERVAL, ConfigFile, alerts, hold_close_wait, start_agent, start_server,
};
use crate::support::database::TestDatabase;
use crate::support::eventually;
use crate::support::receiver::{Received, Receiver};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Hosts whose agents start on replica A (the first one moves to B later).
const ON_A: [&str; 2] = ["replica-host-1", "replica-host-2"];
/// Hosts whose agents stream to replica B.
const ON_B: [&str; 2] = ["replica-host-3", "replica-host-4"];
/// How long the receiver is watched for duplicates after what was expected arrived: several polls
/// of both replicas' dispatchers (1 s) and senders (0.5 s).
const QUIET_PERIOD: Duration = Duration::from_secs(4);
/// The agents announce the period the servers impose: AgentSilent counts the announced one (see
/// `alerts::agent_silent_counts_the_interval_the_server_imposes`).
const AGENT_FLAGS: &[&str] = &["--interval", AGENT_INTERVAL];

#[tokio::test]
async fn replicas_on_one_database_fire_and_notify_each_alert_once() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    let receiver = Receiver::start().await;
    // group_interval 1s: a second firing of a group would be notified within the test.
    let config = ConfigFile::write(&format!(
        r#"
        [alerts.rules.CloseWaitHigh]
        warning = 1
        critical = 1000
        fire_after = 1

        [alerts.rules.AgentSilent]
        intervals = 2

        [delivery]
        timeout = "2s"
        retry_initial = "100ms"
        retry_max = "1s"

        [[webhooks]]
        name = "ops"
        url = "{url}"
        secret = "{SECRET}"
        group_interval = "1s"
        "#,
        url = receiver.url()
    ));
    let a = start_server(&database, "127.0.0.1:0", &config);
    let b = start_server(&database, "127.0.0.1:0", &config);
    let namespace = IsolatedNamespace::new();
    let _held = hold_close_wait(&namespace);
    let mut agents: BTreeMap<&str, _> = BTreeMap::new();
    for host in ON_A {
        agents.insert(host, start_agent(&a.url(), host, &namespace, AGENT_FLAGS));
    }
    for host in ON_B {
        agents.insert(host, start_agent(&b.url(), host, &namespace, AGENT_FLAGS));
    }
    let hosts: Vec<&str> = ON_A.into_iter().chain(ON_B).collect();

    // CloseWaitHigh: each host's alert is judged by the replica its agent streams to.
    eventually(
        "a CloseWaitHigh notification for every host",
        Duration::from_secs(30),
        || async {
            let notified = firing_notifications(&receiver.received(), "CloseWaitHigh");
            hosts
                .iter()
                .all(|host| notified.contains_key(*host))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    let notified = firing_notifications(&receiver.received(), "CloseWaitHigh");
    for host in &hosts {
        assert_eq!(
            notified.get(*host).map(Vec::len),
            Some(1),
            "one CloseWaitHigh notification for {host}: {notified:#?}"
        );
        assert_eq!(
            alert_rows(&pool, "CloseWaitHigh", host).await,
            [None],
            "one firing CloseWaitHigh row for {host}"
        );
    }
    let listed = alerts(&a.url(), "state=firing&alertname=CloseWaitHigh").await;
    assert_eq!(listed.len(), hosts.len(), "{listed:#?}");

    // AgentSilent: both replicas judge every host every 5 s; one stops reporting.
    let silent = ON_A[1];
    agents
        .remove(silent)
        .expect("the silent host's agent")
        .stop();
    eventually(
        "AgentSilent for the stopped agent",
        Duration::from_secs(30),
        || async {
            let firing = alerts(
                &b.url(),
                &format!("state=firing&alertname=AgentSilent&host={silent}"),
            )
            .await;
            (!firing.is_empty()).then_some(())
        },
    )
    .await;
    eventually(
        "the AgentSilent notification",
        Duration::from_secs(30),
        || async {
            firing_notifications(&receiver.received(), "AgentSilent")
                .contains_key(silent)
                .then_some(())
        },
    )
    .await;
    // Both replicas run the fleet rules at least once more.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        alert_rows(&pool, "AgentSilent", silent).await,
        [None],
        "one firing AgentSilent row"
    );
    let silent_notified = firing_notifications(&receiver.received(), "AgentSilent");
    assert_eq!(
        silent_notified.get(silent).map(Vec::len),
        Some(1),
        "one AgentSilent notification: {silent_notified:#?}"
    );

    // An agent moves from replica A to replica B: B finds its alert firing and does not fire it again.
    let moving = ON_A[0];
    agents
        .remove(moving)
        .expect("the moving host's agent")
        .stop();
    let moved_at = Utc::now();
    agents.insert(
        moving,
        start_agent(&b.url(), moving, &namespace, AGENT_FLAGS),
    );
    eventually(
        "three reports of the moved agent through replica B",
        Duration::from_secs(30),
        || async {
            let reports: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reports r JOIN hosts h ON h.host_key = r.host_key \
                 WHERE h.host_id = $1 AND r.collected_at > $2",
            )
            .bind(moving)
            .bind(moved_at)
            .fetch_one(&pool)
            .await
            .expect("count reports");
            (reports >= 3).then_some(())
        },
    )
    .await;
    tokio::time::sleep(QUIET_PERIOD).await;
    assert_eq!(
        alert_rows(&pool, "CloseWaitHigh", moving).await,
        [None],
        "still the one firing CloseWaitHigh row for the moved host"
    );
    let received = receiver.received();
    let notified = firing_notifications(&received, "CloseWaitHigh");
    assert_eq!(
        notified.get(moving).map(Vec::len),
        Some(1),
        "no second CloseWaitHigh notification for the moved host: {notified:#?}"
    );
    let mut ids: Vec<&str> = received.iter().map(Received::webhook_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        received.len(),
        "every notification delivered once"
    );
    for request in &received {
        assert_eq!(request.status, 200);
        request.assert_signed_with(SECRET);
        let body = request.json();
        if body["groupLabels"]["alertname"] == "CloseWaitHigh" {
            assert_eq!(
                body["status"], "firing",
                "no CloseWaitHigh resolved: {body:#}"
            );
        }
    }

    for (_, agent) in agents {
        agent.stop();
    }
    a.stop();
    b.stop();
}

/// The `webhook-id`s of the firing notifications of `alertname` groups, by the group's `host`.
fn firing_notifications(received: &[Received], alertname: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for request in received {
        let body = request.json();
        if body["status"] == "firing" && body["groupLabels"]["alertname"] == alertname {
            let host = body["groupLabels"]["host"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            by_host
                .entry(host)
                .or_default()
                .push(request.webhook_id().to_owned());
        }
    }
    by_host
}

/// The `ends_at` of every alert row of `rule` for `host` (`None` while firing).
async fn alert_rows(pool: &sqlx::PgPool, rule: &str, host: &str) -> Vec<Option<i64>> {
    sqlx::query_scalar(
        "SELECT ends_at FROM alerts WHERE rule = $1 AND host_id = $2 ORDER BY alert_id",
    )
    .bind(rule)
    .bind(host)
    .fetch_all(pool)
    .await
    .expect("read alerts")
}
