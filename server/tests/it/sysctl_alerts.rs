//! Sysctl advice and fleet drift through the whole server: hosts report their sysctls over gRPC, and
//! the one with `tcp_tw_recycle=1` and a `tcp_tw_reuse` unlike its group's gets exactly those alerts.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::Value;
use sockfleet_proto::v1;

use crate::support::database::TestDatabase;
use crate::support::grpc::{AgentStream, hello, report};
use crate::support::process::ServerProcess;
use crate::support::{eventually, get_json};

const CONFIG: &str = r#"
[alerts.rules.SysctlDrift]
group_labels = ["env"]
min_hosts = 3
"#;

#[tokio::test]
async fn misconfigured_and_drifting_sysctls_are_named() {
    let database = TestDatabase::create().await;
    let config = std::env::temp_dir().join(format!(
        "sockfleet-sysctl-alerts-{}.toml",
        rand::random::<u64>()
    ));
    std::fs::write(&config, CONFIG).expect("write config");
    let server = ServerProcess::start(
        &database.url,
        "127.0.0.1:0",
        &["--config", config.to_str().expect("utf-8 path")],
    );
    let common = [
        ("net.ipv4.tcp_fin_timeout", Some("60")),
        ("net.ipv4.tcp_syncookies", Some("1")),
        ("net.ipv4.ip_local_port_range", Some("32768 60999")),
    ];
    let hosts = [
        ("drift-a", Some("2"), None),
        ("drift-b", Some("2"), None),
        ("drift-c", Some("1"), Some("1")),
    ];
    let mut streams = Vec::new();
    for (host, reuse, recycle) in hosts {
        let mut sysctls: Vec<(&str, Option<&str>)> = common.to_vec();
        sysctls.push(("net.ipv4.tcp_tw_reuse", reuse));
        sysctls.push(("net.ipv4.tcp_tw_recycle", recycle));
        let (mut stream, _) = AgentStream::open(&server.url(), hello(host, "run-1"))
            .await
            .expect("open stream");
        let at = Utc::now().trunc_subsecs(3);
        stream
            .send_report(report(
                1,
                at,
                v1::StateCounts::default(),
                v1::StateCounts::default(),
                &sysctls,
            ))
            .await;
        stream.acks_until(1).await.expect("ack");
        streams.push(stream);
    }

    let firing = |alertname: &'static str| {
        let url = format!(
            "{}/api/v1/alerts?state=firing&alertname={alertname}",
            server.url()
        );
        async move {
            let (status, body) = get_json(&url).await;
            assert_eq!(status, 200, "{body}");
            body["alerts"].as_array().cloned().unwrap_or_default()
        }
    };
    // drift-c differs in tcp_tw_reuse, and its kernel still has tcp_tw_recycle, which the others lack.
    let drift = eventually(
        "SysctlDrift fires twice",
        Duration::from_secs(20),
        || async {
            let alerts = firing("SysctlDrift").await;
            (alerts.len() >= 2).then_some(alerts)
        },
    )
    .await;
    assert_eq!(drift.len(), 2, "{drift:#?}");
    assert!(
        drift.iter().all(|alert| alert["host_id"] == "drift-c"),
        "only the host unlike its group: {drift:#?}"
    );
    let reuse = drift
        .iter()
        .find(|alert| alert["labels"]["sysctl"] == "net.ipv4.tcp_tw_reuse")
        .expect("drift of tcp_tw_reuse");
    assert_eq!(reuse["labels"]["group"], "env=test");
    assert!(
        text(reuse, "description").contains("2 on 2 of the 3 hosts"),
        "{reuse:#?}"
    );
    assert!(
        drift
            .iter()
            .any(|alert| alert["labels"]["sysctl"] == "net.ipv4.tcp_tw_recycle"),
        "{drift:#?}"
    );

    let misconfig = firing("SysctlMisconfig").await;
    assert_eq!(
        misconfig.len(),
        1,
        "only tcp_tw_recycle=1 is wrong: {misconfig:#?}"
    );
    let alert = &misconfig[0];
    assert_eq!(alert["host_id"], "drift-c");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["labels"]["sysctl"], "net.ipv4.tcp_tw_recycle");
    assert!(
        text(alert, "action").contains("tcp_tw_recycle=0"),
        "{alert:#?}"
    );

    for stream in streams {
        stream.finish().await;
    }
    server.stop();
    let _ = std::fs::remove_file(config);
}

fn text<'a>(alert: &'a Value, annotation: &str) -> &'a str {
    alert["annotations"][annotation]
        .as_str()
        .unwrap_or_default()
}
