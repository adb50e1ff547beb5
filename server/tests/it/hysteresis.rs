//! Hysteresis through the whole server: a CLOSE_WAIT count hovering at its threshold, sent as real
//! reports over gRPC, fires one alert once and resolves it once; the alert reads the same over HTTP and
//! over gRPC `Query.ListAlerts`.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sockfleet_proto::v1;

use crate::support::database::TestDatabase;
use crate::support::grpc::{AgentStream, channel, hello, report};
use crate::support::process::ServerProcess;
use crate::support::{eventually, get_json};

const CONFIG: &str = r#"
[alerts.rules.CloseWaitHigh]
warning = 10
critical = 1000
fire_after = 2
resolve_after = 2
clear_ratio = 0.5
"#;

fn close_wait(count: u64) -> v1::StateCounts {
    v1::StateCounts {
        close_wait: count,
        established: 5,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_value_hovering_at_the_threshold_fires_once_and_resolves_once() {
    let database = TestDatabase::create().await;
    let config = std::env::temp_dir().join(format!(
        "sockfleet-hysteresis-{}.toml",
        rand::random::<u64>()
    ));
    std::fs::write(&config, CONFIG).expect("write config");
    let server = ServerProcess::start(
        &database.url,
        "127.0.0.1:0",
        &["--config", config.to_str().expect("utf-8 path")],
    );
    // In and out of the warning level (10) every sample, then two samples in a row at it (fires at the
    // 7th), then hovering between the clear bound (5) and the level (stays firing), then two samples
    // below the clear bound (resolves at the last).
    let values = [9, 11, 9, 11, 9, 11, 12, 9, 11, 6, 11, 9, 4, 4];
    let fires_at = 6;
    let start = Utc::now().trunc_subsecs(3) - chrono::Duration::seconds(values.len() as i64);
    let at = |index: usize| start + chrono::Duration::seconds(index as i64);
    let (stream, _) = AgentStream::open(&server.url(), hello("hover-host", "run-1"))
        .await
        .expect("open stream");
    let mut stream = stream;
    for (index, value) in values.iter().enumerate() {
        let sequence = index as u64 + 1;
        let sysctls: &[(&str, Option<&str>)] = &[];
        stream
            .send_report(report(
                sequence,
                at(index),
                close_wait(*value),
                close_wait(0),
                sysctls,
            ))
            .await;
        stream.acks_until(sequence).await.expect("ack");
    }
    let alerts_url = format!(
        "{}/api/v1/alerts?host=hover-host&alertname=CloseWaitHigh",
        server.url()
    );
    let alerts = eventually("the alert resolved", Duration::from_secs(20), || async {
        let (status, body) = get_json(&alerts_url).await;
        let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
        (status == 200 && alerts.iter().any(|alert| alert["status"] == "resolved"))
            .then_some(alerts)
    })
    .await;
    assert_eq!(alerts.len(), 1, "fired exactly once: {alerts:#?}");
    let alert = &alerts[0];
    assert_eq!(alert["severity"], "warning");
    assert_eq!(
        time(&alert["starts_at"]),
        at(fires_at),
        "fired on the second sample in a row"
    );
    assert_eq!(
        time(&alert["ends_at"]),
        at(values.len() - 1),
        "resolved on the second sample below 5"
    );
    assert_eq!(alert["labels"]["host"], "hover-host");
    assert_eq!(
        alert["labels"]["env"], "test",
        "the agent's labels are alert labels"
    );

    let mut query = v1::query_client::QueryClient::new(channel(&server.url()).await);
    let listed = query
        .list_alerts(v1::ListAlertsRequest {
            state: "resolved".to_owned(),
            host: "hover-host".to_owned(),
            ..Default::default()
        })
        .await
        .expect("Query.ListAlerts")
        .into_inner();
    assert_eq!(listed.alerts.len(), 1);
    assert_eq!(listed.alerts[0].id, alert["id"].as_i64().expect("id"));
    assert_eq!(listed.alerts[0].alertname, "CloseWaitHigh");
    assert_eq!(
        listed.alerts[0].fingerprint,
        alert["fingerprint"].as_str().expect("fingerprint")
    );
    let refused = query
        .list_alerts(v1::ListAlertsRequest {
            state: "flapping".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("an unknown state is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("flapping"),
        "{}",
        refused.message()
    );

    stream.finish().await;
    server.stop();
    let _ = std::fs::remove_file(config);
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}
