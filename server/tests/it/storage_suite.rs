//! The storage contract, run against PostgreSQL and SQLite alike.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sockfleet_domain::{
    AgentHello, Collector, FamilyCounts, HostId, Report, SysctlValues, TcpState,
};
use sockfleet_server::storage::{AgentSession, HostPage, IncomingReport, SeriesQuery, Store};

/// Runs each named scenario once per backend, each in a fresh database.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let database = crate::support::database::TestDatabase::create().await;
                    let store = sockfleet_server::storage::open(&database.url).await.expect("open postgres");
                    super::$scenario(store).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let dir = std::env::temp_dir().join(format!("sockfleet-sqlite-{}", rand::random::<u64>()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let url = format!("sqlite://{}", dir.join("test.db").display());
                    let store = sockfleet_server::storage::open(&url).await.expect("open sqlite");
                    super::$scenario(store).await;
                    std::fs::remove_dir_all(&dir).unwrap();
                }
            )*
        }
    };
}

on_both_backends!(
    latest_report_shows_in_host_list,
    resent_report_is_stored_once,
    only_sysctl_changes_are_stored,
    series_raw_and_stepped,
    hosts_paginate_by_id,
    drops_kernel_counters_and_breakdowns_are_recorded,
    namespaces_are_stored_beside_the_host,
);

fn session(host: &str, run: &str) -> Arc<AgentSession> {
    Arc::new(AgentSession::new(AgentHello {
        host_id: HostId::parse(host).unwrap(),
        hostname: format!("{host}.example"),
        kernel_release: "6.1.0-test".into(),
        agent_version: "0.1.0".into(),
        labels: [("env".to_owned(), "test".to_owned())].into(),
        run_id: run.into(),
        collector: Collector::Netlink,
        interval: Duration::from_secs(10),
    }))
}

/// A start time with millisecond precision (what both backends keep), an hour ago.
fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis((Utc::now() - TimeDelta::hours(1)).timestamp_millis()).unwrap()
}

fn counts(time_wait: u64, established: u64) -> FamilyCounts {
    let mut counts = FamilyCounts::default();
    counts.ipv4.set(TcpState::TimeWait, time_wait);
    counts.ipv4.set(TcpState::Established, established);
    counts.ipv6.set(TcpState::Listen, 2);
    counts
}

fn incoming(
    session: &Arc<AgentSession>,
    sequence: u64,
    at: DateTime<Utc>,
    states: FamilyCounts,
    sysctls: &[(&str, Option<&str>)],
) -> IncomingReport {
    IncomingReport {
        session: Arc::clone(session),
        report: Report {
            sequence,
            collected_at: at,
            states,
            sysctls: sysctls
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned)))
                .collect::<SysctlValues>(),
            kernel: None,
            breakdowns: None,
            namespaces: Vec::new(),
        },
        dropped_reports: 0,
    }
}

fn host(id: &str) -> HostId {
    HostId::parse(id).unwrap()
}

async fn latest_report_shows_in_host_list(store: Arc<dyn Store>) {
    let web = session("web-1", "run-a");
    let t0 = start();
    let batch: Vec<_> = (1..=3)
        .map(|sequence| {
            incoming(
                &web,
                sequence,
                t0 + TimeDelta::seconds(10 * sequence as i64),
                counts(sequence * 100, 7),
                &[],
            )
        })
        .collect();
    store.commit_reports(&batch).await.unwrap();

    let hosts = store
        .list_hosts(&HostPage {
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(hosts.len(), 1);
    let listed = &hosts[0];
    assert_eq!(listed.host_id, host("web-1"));
    assert_eq!(listed.hostname, "web-1.example");
    assert_eq!(listed.labels["env"], "test");
    assert_eq!(listed.collector, "netlink");
    assert_eq!(listed.last_seen, Some(t0 + TimeDelta::seconds(30)));
    assert_eq!(listed.states, Some(counts(300, 7)));
    assert_eq!(
        store
            .committed_sequence(&host("web-1"), "run-a")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .committed_sequence(&host("web-1"), "other-run")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .committed_sequence(&host("nobody"), "run-a")
            .await
            .unwrap(),
        0
    );
    assert!(store.host(&host("nobody")).await.unwrap().is_none());
}

async fn resent_report_is_stored_once(store: Arc<dyn Store>) {
    let t0 = start();
    let first_stream = session("web-1", "run-a");
    let report = incoming(&first_stream, 1, t0, counts(5, 1), &[]);
    store
        .commit_reports(&[report.clone(), report.clone()])
        .await
        .unwrap();
    store.commit_reports(&[report]).await.unwrap();
    // The same run reconnects on a new stream and resends report 1 with report 2.
    let second_stream = session("web-1", "run-a");
    store
        .commit_reports(&[
            incoming(&second_stream, 1, t0, counts(5, 1), &[]),
            incoming(
                &second_stream,
                2,
                t0 + TimeDelta::seconds(10),
                counts(6, 1),
                &[],
            ),
        ])
        .await
        .unwrap();
    // A new run of the agent starts its sequence again: not a duplicate.
    let restarted = session("web-1", "run-b");
    store
        .commit_reports(&[incoming(
            &restarted,
            1,
            t0 + TimeDelta::seconds(20),
            counts(7, 1),
            &[],
        )])
        .await
        .unwrap();

    let points = store.series(&host("web-1"), &raw_range(t0)).await.unwrap();
    let time_waits: Vec<u64> = points
        .iter()
        .map(|p| p.states.ipv4.get(TcpState::TimeWait))
        .collect();
    assert_eq!(time_waits, vec![5, 6, 7]);
    assert_eq!(
        store
            .committed_sequence(&host("web-1"), "run-a")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .committed_sequence(&host("web-1"), "run-b")
            .await
            .unwrap(),
        1
    );
}

fn raw_range(t0: DateTime<Utc>) -> SeriesQuery {
    SeriesQuery {
        from: t0 - TimeDelta::minutes(1),
        to: t0 + TimeDelta::minutes(10),
        step: None,
        namespace: None,
        limit: 1000,
    }
}

async fn only_sysctl_changes_are_stored(store: Arc<dyn Store>) {
    let web = session("web-1", "run-a");
    let t0 = start();
    let full = [
        ("net.ipv4.tcp_fin_timeout", Some("60")),
        ("net.ipv4.tcp_tw_recycle", None),
    ];
    store
        .commit_reports(&[incoming(&web, 1, t0, counts(1, 1), &full)])
        .await
        .unwrap();
    // A reconnect sends the full set again, unchanged.
    store
        .commit_reports(&[incoming(
            &web,
            2,
            t0 + TimeDelta::seconds(10),
            counts(1, 1),
            &full,
        )])
        .await
        .unwrap();
    store
        .commit_reports(&[incoming(
            &web,
            3,
            t0 + TimeDelta::seconds(20),
            counts(1, 1),
            &[("net.ipv4.tcp_fin_timeout", Some("30"))],
        )])
        .await
        .unwrap();

    let detail = store.host(&host("web-1")).await.unwrap().unwrap();
    assert_eq!(
        detail.sysctls["net.ipv4.tcp_fin_timeout"].as_deref(),
        Some("30")
    );
    assert_eq!(detail.sysctls["net.ipv4.tcp_tw_recycle"], None);
    let history = store
        .sysctl_history(&host("web-1"), Some("net.ipv4.tcp_fin_timeout"))
        .await
        .unwrap();
    let values: Vec<(Option<&str>, DateTime<Utc>)> = history
        .iter()
        .map(|change| (change.value.as_deref(), change.changed_at))
        .collect();
    assert_eq!(
        values,
        vec![(Some("60"), t0), (Some("30"), t0 + TimeDelta::seconds(20))]
    );
    let all = store.sysctl_history(&host("web-1"), None).await.unwrap();
    assert_eq!(all.len(), 3, "two settings first seen, one change: {all:?}");
}

async fn series_raw_and_stepped(store: Arc<dyn Store>) {
    let web = session("web-1", "run-a");
    // Align to a minute so 30-second buckets split the six reports three and three.
    let t0 = DateTime::from_timestamp(start().timestamp() / 60 * 60, 0).unwrap();
    let batch: Vec<_> = (0..6u64)
        .map(|i| {
            incoming(
                &web,
                i + 1,
                t0 + TimeDelta::seconds(10 * i as i64),
                counts(10 * (i + 1), 1),
                &[],
            )
        })
        .collect();
    store.commit_reports(&batch).await.unwrap();

    let raw = store.series(&host("web-1"), &raw_range(t0)).await.unwrap();
    assert_eq!(raw.len(), 6);
    assert_eq!(raw[0].time, t0);
    assert_eq!(raw[5].states.ipv4.get(TcpState::TimeWait), 60);

    let stepped = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                step: Some(Duration::from_secs(30)),
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    let buckets: Vec<(DateTime<Utc>, u64)> = stepped
        .iter()
        .map(|p| (p.time, p.states.ipv4.get(TcpState::TimeWait)))
        .collect();
    assert_eq!(buckets, vec![(t0, 20), (t0 + TimeDelta::seconds(30), 50)]);

    let limited = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                limit: 2,
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    let outside = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                from: t0 + TimeDelta::minutes(5),
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    assert!(outside.is_empty());
}

async fn hosts_paginate_by_id(store: Arc<dyn Store>) {
    let t0 = start();
    for name in ["c-host", "a-host", "b-host"] {
        let agent = session(name, "run");
        store
            .commit_reports(&[incoming(&agent, 1, t0, counts(1, 1), &[])])
            .await
            .unwrap();
    }
    let first = store
        .list_hosts(&HostPage {
            after: None,
            limit: 2,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = first.iter().map(|h| h.host_id.as_str()).collect();
    assert_eq!(ids, vec!["a-host", "b-host"]);
    let rest = store
        .list_hosts(&HostPage {
            after: Some(host("b-host")),
            limit: 2,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = rest.iter().map(|h| h.host_id.as_str()).collect();
    assert_eq!(ids, vec!["c-host"]);
}

async fn drops_kernel_counters_and_breakdowns_are_recorded(store: Arc<dyn Store>) {
    let agent = session("web-1", "run-a");
    let mut report = incoming(&agent, 7, start(), counts(1, 1), &[]);
    report.dropped_reports = 5;
    let kernel = sockfleet_domain::KernelCounters {
        time_wait_overflow: 4,
        retrans_segs: u64::try_from(i64::MAX).unwrap(),
        memory_pages: 276,
        ..Default::default()
    };
    report.report.kernel = Some(kernel);
    let mut breakdowns = sockfleet_domain::Breakdowns::empty(28232);
    breakdowns.listeners.push(sockfleet_domain::ListenQueue {
        local: "127.0.0.1:7070".parse().unwrap(),
        queued: 2,
        backlog: 128,
    });
    report.report.breakdowns = Some(breakdowns.clone());
    store.commit_reports(&[report]).await.unwrap();
    let detail = store.host(&host("web-1")).await.unwrap().unwrap();
    assert_eq!(detail.dropped_reports, 5);
    assert_eq!(detail.kernel, Some(kernel), "kernel counters round-trip");
    assert_eq!(detail.breakdowns, Some(breakdowns), "breakdowns round-trip");
}

async fn namespaces_are_stored_beside_the_host(store: Arc<dyn Store>) {
    use sockfleet_domain::{NamespaceIdentity, NamespaceReport};

    let agent = session("web-1", "run-a");
    let t0 = start();
    let inode = 4_026_532_300;
    let namespace = |listen: u64, fin_timeout: Option<&str>| NamespaceReport {
        inode,
        identity: NamespaceIdentity {
            container_id: Some("3f2a".repeat(16)),
            pid: Some(4242),
            comm: Some("nginx".into()),
            ..NamespaceIdentity::default()
        },
        states: {
            let mut states = FamilyCounts::default();
            states.ipv4.set(TcpState::Listen, listen);
            states
        },
        sysctls: fin_timeout
            .map(|value| {
                [(
                    "net.ipv4.tcp_fin_timeout".to_owned(),
                    Some(value.to_owned()),
                )]
                .into()
            })
            .unwrap_or_default(),
        kernel: None,
        breakdowns: None,
    };
    let with_namespace = |sequence: u64, listen: u64, fin_timeout: Option<&str>| {
        let mut report = incoming(
            &agent,
            sequence,
            t0 + TimeDelta::seconds(10 * sequence as i64),
            counts(1, 1),
            &[],
        );
        report
            .report
            .namespaces
            .push(namespace(listen, fin_timeout));
        report
    };
    store
        .commit_reports(&[with_namespace(1, 3, Some("60"))])
        .await
        .unwrap();
    // Resent, then the next report with an unchanged sysctl set.
    store
        .commit_reports(&[
            with_namespace(1, 3, Some("60")),
            with_namespace(2, 4, Some("60")),
        ])
        .await
        .unwrap();

    let detail = store.host(&host("web-1")).await.unwrap().unwrap();
    assert_eq!(detail.namespaces.len(), 1);
    let listed = &detail.namespaces[0];
    assert_eq!(listed.inode, inode);
    assert_eq!(listed.identity.pid, Some(4242));
    assert_eq!(listed.identity.comm.as_deref(), Some("nginx"));
    assert_eq!(listed.last_seen, Some(t0 + TimeDelta::seconds(20)));
    assert_eq!(listed.states.map(|s| s.ipv4.get(TcpState::Listen)), Some(4));
    assert_eq!(
        listed.sysctls["net.ipv4.tcp_fin_timeout"].as_deref(),
        Some("60")
    );
    // The host's own counts and sysctls are untouched by the namespace's.
    assert_eq!(detail.overview.states, Some(counts(1, 1)));
    assert!(detail.sysctls.is_empty());

    let series = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                namespace: Some(inode),
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    let listens: Vec<u64> = series
        .iter()
        .map(|p| p.states.ipv4.get(TcpState::Listen))
        .collect();
    assert_eq!(
        listens,
        vec![3, 4],
        "one point per report, the resend stored once"
    );
    let stepped = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                namespace: Some(inode),
                step: Some(Duration::from_secs(3600)),
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    assert_eq!(stepped.len(), 1);
    let other = store
        .series(
            &host("web-1"),
            &SeriesQuery {
                namespace: Some(1),
                ..raw_range(t0)
            },
        )
        .await
        .unwrap();
    assert!(other.is_empty());
}
