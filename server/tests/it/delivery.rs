//! Delivery: reports collected while the server is down arrive exactly once after it comes back.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::support::database::TestDatabase;
use crate::support::eventually;
use crate::support::process::{AgentProcess, ServerProcess};

#[tokio::test]
async fn reports_collected_during_an_outage_arrive_exactly_once() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    let first = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let address = first.address;
    let agent = AgentProcess::start(
        &first.url(),
        &["--interval", "100ms", "--host-id", "delivery-host"],
    );

    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT sequence FROM reports ORDER BY sequence")
            .fetch_all(&pool)
            .await
            .expect("read sequences")
    };
    eventually(
        "reports before the outage",
        Duration::from_secs(30),
        || async { (stored().await.len() >= 3).then_some(()) },
    )
    .await;

    // A crash: nothing is flushed, the port goes away mid-stream.
    first.kill();
    let outage_started = Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage_ended = Utc::now();
    let second = ServerProcess::start(&database.url, &address.to_string(), &[]);

    // Let the agent reconnect (its backoff starts at about half a second) and deliver its backlog.
    eventually(
        "reports collected during the outage",
        Duration::from_secs(30),
        || async {
            let during: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reports WHERE collected_at > $1 AND collected_at < $2",
            )
            .bind(outage_started)
            .bind(outage_ended)
            .fetch_one(&pool)
            .await
            .expect("count outage reports");
            (during > 0).then_some(())
        },
    )
    .await;

    let log = agent.stop();
    let collected = counter(&log, "collected=");
    assert_eq!(
        counter(&log, "unacknowledged="),
        0,
        "agent stopped with reports pending:\n{log}"
    );
    assert_eq!(counter(&log, "dropped="), 0, "{log}");
    let sequences = stored().await;
    let expected: Vec<i64> = (1..=i64::try_from(collected).expect("count")).collect();
    assert_eq!(
        sequences, expected,
        "every collected report exactly once, in order"
    );

    let during_outage: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT collected_at FROM reports WHERE collected_at > $1 AND collected_at < $2",
    )
    .bind(outage_started)
    .bind(outage_ended)
    .fetch_all(&pool)
    .await
    .expect("outage reports");
    assert!(
        during_outage.len() >= 10,
        "about 20 reports were collected during the 2 s outage, {} arrived",
        during_outage.len()
    );
    second.stop();
}

/// The number after `key` in the agent's final "agent stopped" log line.
fn counter(log: &str, key: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("agent stopped"))
        .unwrap_or_else(|| panic!("no 'agent stopped' line in the agent log:\n{log}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}
