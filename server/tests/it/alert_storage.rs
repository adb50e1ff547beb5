//! The alert store (alerts, the webhook outbox, deliveries) and the fleet queries of the rules, run
//! against PostgreSQL and SQLite alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sockfleet_domain::{
    AgentHello, Collector, FamilyCounts, HostId, NamespaceIdentity, NamespaceReport, Report,
    SysctlValues, TcpState,
};
use sockfleet_server::alerts::model::{Alert, AlertStatus, Labels, RuleName, Severity};
use sockfleet_server::storage::alerts::{
    AlertQuery, Applied, AttemptRecord, AttemptResult, DeliveryJob, GroupState, NewAlert, Route,
    Transition, WebhookHealth,
};
use sockfleet_server::storage::{AgentSession, HostActivity, IncomingReport, Store};

/// A database opened for one scenario: the store, and its URL for a second store or raw queries.
struct Backend {
    store: Arc<dyn Store>,
    url: String,
    postgres: bool,
}

impl Backend {
    async fn open(url: String, postgres: bool) -> Backend {
        let store = sockfleet_server::storage::open(&url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
        Backend {
            store,
            url,
            postgres,
        }
    }

    /// Another store on the same database, as a second server replica would open it.
    async fn open_again(&self) -> Arc<dyn Store> {
        sockfleet_server::storage::open(&self.url)
            .await
            .expect("open a second store")
    }

    /// A count read straight from the database, for what the store does not show.
    async fn count(&self, sql: &'static str) -> i64 {
        if self.postgres {
            let pool = sqlx::postgres::PgPool::connect(&self.url)
                .await
                .expect("connect");
            let count = sqlx::query_scalar(sql).fetch_one(&pool).await.expect(sql);
            pool.close().await;
            count
        } else {
            let pool = sqlx::sqlite::SqlitePool::connect(&self.url)
                .await
                .expect("connect");
            let count = sqlx::query_scalar(sql).fetch_one(&pool).await.expect(sql);
            pool.close().await;
            count
        }
    }
}

/// Removes a scenario's SQLite directory, also when the scenario panics.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs each named scenario once per backend, each in a fresh database.
macro_rules! on_both_backends {
    ($($(#[$meta:meta])* $scenario:ident),* $(,)?) => {
        mod postgres {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let database = crate::support::database::TestDatabase::create().await;
                    let backend = super::Backend::open(database.url.clone(), true).await;
                    super::$scenario(&backend).await;
                }
            )*
        }
        mod sqlite {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let dir = super::TempDir(
                        std::env::temp_dir().join(format!("sockfleet-alerts-{}", rand::random::<u64>())),
                    );
                    std::fs::create_dir_all(&dir.0).unwrap();
                    let url = format!("sqlite://{}", dir.0.join("test.db").display());
                    let backend = super::Backend::open(url, false).await;
                    super::$scenario(&backend).await;
                }
            )*
        }
    };
}

on_both_backends!(
    fire_resolve_and_list,
    concurrent_fires_open_one_alert,
    outbox_groups_and_notifications,
    render_counts_alerts_left_out,
    deliveries_lease_retry_and_finish,
    last_error_time_is_the_failures,
    replicas_share_the_outbox,
    host_activity_and_fleet_sysctls,
);

// ---------------------------------------------------------------------------------------------------
// Helpers.

/// A time with millisecond precision (what both backends keep), an hour ago.
fn start() -> DateTime<Utc> {
    DateTime::from_timestamp_millis((Utc::now() - TimeDelta::hours(1)).timestamp_millis()).unwrap()
}

fn secs(seconds: i64) -> TimeDelta {
    TimeDelta::seconds(seconds)
}

fn host(id: &str) -> HostId {
    HostId::parse(id).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn new_alert(host_id: &str, rule: RuleName, subject: &str, at: DateTime<Utc>) -> NewAlert {
    NewAlert {
        host_id: host(host_id),
        rule,
        subject: subject.to_owned(),
        severity: Severity::Warning,
        labels: map(&[
            ("alertname", rule.as_str()),
            ("host", host_id),
            ("severity", "warning"),
            ("subject", subject),
        ]),
        annotations: map(&[("summary", &format!("{rule} on {host_id} {subject}"))]),
        value: 42.5,
        fingerprint: format!("fp-{host_id}-{rule}-{subject}"),
        starts_at: at,
    }
}

fn fire(host_id: &str, rule: RuleName, subject: &str, at: DateTime<Utc>) -> Transition {
    Transition::Fire(new_alert(host_id, rule, subject, at))
}

fn resolve(host_id: &str, rule: RuleName, subject: &str, at: DateTime<Utc>) -> Transition {
    Transition::Resolve {
        host_id: host(host_id),
        rule,
        subject: subject.to_owned(),
        at,
    }
}

fn no_routes(_: &Labels, _: AlertStatus) -> Vec<Route> {
    Vec::new()
}

/// A route on `webhook` grouping by host.
fn by_host(webhook: &str, labels: &Labels) -> Route {
    let host = labels.get("host").cloned().unwrap_or_default();
    Route {
        webhook: webhook.to_owned(),
        group_key: format!("{{host=\"{host}\"}}"),
        group_labels: map(&[("host", &host)]),
    }
}

fn group_key(host: &str) -> String {
    format!("{{host=\"{host}\"}}")
}

fn fired(applied: &Applied) -> &Alert {
    match applied {
        Applied::Fired(alert) => alert,
        other => panic!("expected Fired, got {other:?}"),
    }
}

fn resolved(applied: &Applied) -> &Alert {
    match applied {
        Applied::Resolved(alert) => alert,
        other => panic!("expected Resolved, got {other:?}"),
    }
}

fn everything() -> AlertQuery {
    AlertQuery {
        limit: 1000,
        ..AlertQuery::default()
    }
}

async fn alert_ids(store: &dyn Store, query: AlertQuery) -> Vec<i64> {
    store
        .list_alerts(&query)
        .await
        .unwrap()
        .iter()
        .map(|alert| alert.id)
        .collect()
}

async fn waiting(store: &dyn Store) -> Vec<GroupState> {
    let mut groups = store.waiting_groups().await.unwrap();
    groups.sort_by(|a, b| (&a.webhook, &a.group_key).cmp(&(&b.webhook, &b.group_key)));
    groups
}

async fn waiting_group(store: &dyn Store, webhook: &str, key: &str) -> GroupState {
    waiting(store)
        .await
        .into_iter()
        .find(|group| group.webhook == webhook && group.group_key == key)
        .unwrap_or_else(|| panic!("no waiting group {webhook} {key}"))
}

/// A body naming the alerts it carries: `id:status,...`.
fn body_of(alerts: &[Alert]) -> String {
    alerts
        .iter()
        .map(|alert| format!("{}:{}", alert.id, alert.status.as_str()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates a delivery for the waiting group (`webhook`, `key`) at `now`, with id `id`.
async fn deliver(store: &dyn Store, webhook: &str, key: &str, now: DateTime<Utc>, id: &str) {
    let group = waiting_group(store, webhook, key).await;
    let created = store
        .create_delivery(&group, now, id, &|alerts: &[Alert], _| body_of(alerts))
        .await
        .unwrap();
    assert_eq!(created.as_deref(), Some(id));
}

async fn claim(
    store: &dyn Store,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Vec<DeliveryJob> {
    let mut jobs = store.claim_deliveries(now, lease_until, 100).await.unwrap();
    jobs.sort_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
    jobs
}

fn ids_and_attempts(jobs: &[DeliveryJob]) -> Vec<(&str, u32)> {
    jobs.iter()
        .map(|job| (job.delivery_id.as_str(), job.attempts))
        .collect()
}

fn attempt(
    at: DateTime<Utc>,
    status_code: Option<u16>,
    error: Option<&str>,
    result: AttemptResult,
) -> AttemptRecord {
    AttemptRecord {
        at,
        status_code,
        error: error.map(str::to_owned),
        result,
    }
}

fn health_of<'h>(health: &'h [WebhookHealth], webhook: &str) -> &'h WebhookHealth {
    health
        .iter()
        .find(|entry| entry.webhook == webhook)
        .unwrap_or_else(|| panic!("no health for {webhook}: {health:?}"))
}

// ---------------------------------------------------------------------------------------------------
// 1. The lifecycle of one alert, and listing.

async fn fire_resolve_and_list(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    let twb = RuleName::TimeWaitOverflow;
    let cwh = RuleName::CloseWaitHigh;

    let applied = store
        .apply_transitions(&[fire("web-1", twb, "ns:1", t0)], &no_routes)
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);
    let first = fired(&applied[0]).clone();
    assert_eq!(first.status, AlertStatus::Firing);
    assert_eq!(first.ends_at, None);
    assert_eq!(first.starts_at, t0);
    assert_eq!(first.host_id, host("web-1"));
    assert_eq!(first.rule, twb);
    assert_eq!(first.subject, "ns:1");

    // Firing again (a later evaluation, or another replica) changes nothing.
    let again = store
        .apply_transitions(&[fire("web-1", twb, "ns:1", t0 + secs(10))], &no_routes)
        .await
        .unwrap();
    assert_eq!(again, vec![Applied::AlreadyFiring]);
    let listed = store.list_alerts(&everything()).await.unwrap();
    assert_eq!(listed, vec![first.clone()], "one row, as it was fired");

    let applied = store
        .apply_transitions(&[resolve("web-1", twb, "ns:1", t0 + secs(20))], &no_routes)
        .await
        .unwrap();
    let closed = resolved(&applied[0]).clone();
    assert_eq!(closed.id, first.id);
    assert_eq!(closed.status, AlertStatus::Resolved);
    assert_eq!(closed.ends_at, Some(t0 + secs(20)));
    assert_eq!(
        Alert {
            status: AlertStatus::Firing,
            ends_at: None,
            ..closed.clone()
        },
        first,
        "resolving changes only the end"
    );

    let again = store
        .apply_transitions(&[resolve("web-1", twb, "ns:1", t0 + secs(25))], &no_routes)
        .await
        .unwrap();
    assert_eq!(again, vec![Applied::NotFiring]);
    assert_eq!(
        store.list_alerts(&everything()).await.unwrap(),
        vec![closed.clone()],
        "a second resolve leaves the first end time"
    );

    // A new firing period is a new alert.
    let applied = store
        .apply_transitions(&[fire("web-1", twb, "ns:1", t0 + secs(30))], &no_routes)
        .await
        .unwrap();
    let second = fired(&applied[0]).clone();
    assert!(second.id > first.id, "{} after {}", second.id, first.id);
    assert_eq!(second.starts_at, t0 + secs(30));

    let applied = store
        .apply_transitions(
            &[
                fire("web-2", cwh, "pid:1", t0 + secs(40)),
                fire("web-1", cwh, "pid:2", t0 + secs(50)),
            ],
            &no_routes,
        )
        .await
        .unwrap();
    let (a1, a2) = (first.id, second.id);
    let a3 = fired(&applied[0]).id;
    let a4 = fired(&applied[1]).id;
    store
        .apply_transitions(&[resolve("web-1", cwh, "pid:2", t0 + secs(60))], &no_routes)
        .await
        .unwrap();

    let listed = store.list_alerts(&everything()).await.unwrap();
    let statuses: Vec<(i64, AlertStatus)> = listed.iter().map(|a| (a.id, a.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (a4, AlertStatus::Resolved),
            (a3, AlertStatus::Firing),
            (a2, AlertStatus::Firing),
            (a1, AlertStatus::Resolved),
        ],
        "newest first"
    );
    assert_eq!(listed[3], closed);

    let query = |status, host_id: Option<&str>, rule, before_id, limit| AlertQuery {
        status,
        host: host_id.map(host),
        rule,
        before_id,
        limit,
    };
    let firing = Some(AlertStatus::Firing);
    let done = Some(AlertStatus::Resolved);
    assert_eq!(
        alert_ids(store, query(firing, None, None, None, 100)).await,
        vec![a3, a2]
    );
    assert_eq!(
        alert_ids(store, query(done, None, None, None, 100)).await,
        vec![a4, a1]
    );
    assert_eq!(
        alert_ids(store, query(None, Some("web-1"), None, None, 100)).await,
        vec![a4, a2, a1]
    );
    assert_eq!(
        alert_ids(store, query(None, None, Some(cwh), None, 100)).await,
        vec![a4, a3]
    );
    assert_eq!(
        alert_ids(store, query(firing, Some("web-1"), Some(twb), None, 100)).await,
        vec![a2]
    );
    assert_eq!(
        alert_ids(store, query(done, Some("web-2"), None, None, 100)).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        alert_ids(store, query(None, Some("nobody"), None, None, 100)).await,
        Vec::<i64>::new()
    );
    // Keyset pagination.
    assert_eq!(
        alert_ids(store, query(None, None, None, None, 2)).await,
        vec![a4, a3]
    );
    assert_eq!(
        alert_ids(store, query(None, None, None, Some(a3), 2)).await,
        vec![a2, a1]
    );
    assert_eq!(
        alert_ids(store, query(None, None, None, Some(a1), 2)).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        alert_ids(store, query(firing, None, None, Some(a3), 2)).await,
        vec![a2]
    );

    // Within one batch each transition sees the ones before it.
    let applied = store
        .apply_transitions(
            &[
                fire("batch", twb, "x", t0 + secs(70)),
                fire("batch", twb, "x", t0 + secs(71)),
                resolve("batch", twb, "x", t0 + secs(72)),
                resolve("batch", twb, "x", t0 + secs(73)),
                fire("batch", twb, "x", t0 + secs(74)),
            ],
            &no_routes,
        )
        .await
        .unwrap();
    assert!(matches!(
        applied.as_slice(),
        [
            Applied::Fired(_),
            Applied::AlreadyFiring,
            Applied::Resolved(_),
            Applied::NotFiring,
            Applied::Fired(_),
        ]
    ));
    assert_ne!(fired(&applied[0]).id, fired(&applied[4]).id);
    assert_eq!(resolved(&applied[2]).ends_at, Some(t0 + secs(72)));
    assert_eq!(
        alert_ids(store, query(None, Some("batch"), None, None, 100))
            .await
            .len(),
        2
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. The unique index decides races.

async fn concurrent_fires_open_one_alert(backend: &Backend) {
    const TASKS: usize = 8;
    let stores: Vec<Arc<dyn Store>> = if backend.postgres {
        // Two replicas on one database.
        vec![Arc::clone(&backend.store), backend.open_again().await]
    } else {
        vec![Arc::clone(&backend.store)]
    };
    let t0 = start();
    let rule = RuleName::CloseWaitLeak;
    let routed = Arc::new(AtomicUsize::new(0));

    let race = |transition: fn(usize, DateTime<Utc>) -> Transition| {
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = Arc::clone(&stores[task % stores.len()]);
                let barrier = Arc::clone(&barrier);
                let routed = Arc::clone(&routed);
                tokio::spawn(async move {
                    let router = move |labels: &Labels, _: AlertStatus| {
                        routed.fetch_add(1, Ordering::SeqCst);
                        vec![by_host("hook", labels)]
                    };
                    barrier.wait().await;
                    store
                        .apply_transitions(&[transition(task, t0)], &router)
                        .await
                        .expect("apply_transitions")
                })
            })
            .collect();
        async move {
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .flat_map(|joined| joined.expect("task"))
                .collect::<Vec<Applied>>()
        }
    };
    fn fire_at(task: usize, t0: DateTime<Utc>) -> Transition {
        fire(
            "web-1",
            RuleName::CloseWaitLeak,
            "pid:9",
            t0 + TimeDelta::milliseconds(task as i64),
        )
    }
    fn resolve_at(task: usize, t0: DateTime<Utc>) -> Transition {
        resolve(
            "web-1",
            RuleName::CloseWaitLeak,
            "pid:9",
            t0 + secs(60) + TimeDelta::milliseconds(task as i64),
        )
    }
    fn fire_later(task: usize, t0: DateTime<Utc>) -> Transition {
        fire(
            "web-1",
            RuleName::CloseWaitLeak,
            "pid:9",
            t0 + secs(120) + TimeDelta::milliseconds(task as i64),
        )
    }
    let count = |applied: &[Applied], pick: fn(&Applied) -> bool| {
        applied.iter().filter(|outcome| pick(outcome)).count()
    };

    let applied = race(fire_at).await;
    assert_eq!(applied.len(), TASKS);
    assert_eq!(
        count(&applied, |a| matches!(a, Applied::Fired(_))),
        1,
        "{applied:?}"
    );
    assert_eq!(
        count(&applied, |a| matches!(a, Applied::AlreadyFiring)),
        TASKS - 1
    );
    assert_eq!(routed.load(Ordering::SeqCst), 1, "only the fire that took");
    let stored = backend.store.list_alerts(&everything()).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].rule, rule);
    assert_eq!(
        stored[0].id,
        applied
            .iter()
            .find_map(|a| match a {
                Applied::Fired(alert) => Some(alert.id),
                _ => None,
            })
            .unwrap()
    );
    assert_eq!(backend.count("SELECT COUNT(*) FROM alert_events").await, 1);

    let applied = race(resolve_at).await;
    assert_eq!(
        count(&applied, |a| matches!(a, Applied::Resolved(_))),
        1,
        "{applied:?}"
    );
    assert_eq!(
        count(&applied, |a| matches!(a, Applied::NotFiring)),
        TASKS - 1
    );
    assert_eq!(routed.load(Ordering::SeqCst), 2);

    let applied = race(fire_later).await;
    assert_eq!(
        count(&applied, |a| matches!(a, Applied::Fired(_))),
        1,
        "{applied:?}"
    );
    assert_eq!(routed.load(Ordering::SeqCst), 3);
    let stored = backend.store.list_alerts(&everything()).await.unwrap();
    let statuses: Vec<AlertStatus> = stored.iter().map(|alert| alert.status).collect();
    assert_eq!(statuses, vec![AlertStatus::Firing, AlertStatus::Resolved]);
    assert_eq!(backend.count("SELECT COUNT(*) FROM alert_events").await, 3);
}

// ---------------------------------------------------------------------------------------------------
// 3. The outbox: events, groups and notifications.

async fn outbox_groups_and_notifications(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    let (twb, cwh) = (RuleName::TimeWaitOverflow, RuleName::CloseWaitHigh);
    let calls: Mutex<Vec<(Labels, AlertStatus)>> = Mutex::new(Vec::new());
    let router = |labels: &Labels, status: AlertStatus| {
        calls.lock().unwrap().push((labels.clone(), status));
        vec![by_host("hook-a", labels), by_host("hook-b", labels)]
    };
    let take_calls = || std::mem::take(&mut *calls.lock().unwrap());
    let rendered: Mutex<Vec<(Vec<Alert>, u32)>> = Mutex::new(Vec::new());
    let render = |alerts: &[Alert], left_out: u32| {
        rendered.lock().unwrap().push((alerts.to_vec(), left_out));
        format!("body[{}]", body_of(alerts))
    };
    let take_rendered = || std::mem::take(&mut *rendered.lock().unwrap());
    let web1 = group_key("web-1");

    let applied = store
        .apply_transitions(
            &[
                fire("web-1", twb, "ns:1", t0),
                fire("web-1", cwh, "pid:7", t0 + secs(1)),
                fire("web-1", twb, "ns:1", t0 + secs(2)),
                resolve("web-1", cwh, "pid:8", t0 + secs(3)),
            ],
            &router,
        )
        .await
        .unwrap();
    assert!(matches!(
        applied.as_slice(),
        [
            Applied::Fired(_),
            Applied::Fired(_),
            Applied::AlreadyFiring,
            Applied::NotFiring
        ]
    ));
    let a = fired(&applied[0]).clone();
    let b = fired(&applied[1]).clone();
    assert_eq!(
        take_calls(),
        vec![
            (a.labels.clone(), AlertStatus::Firing),
            (b.labels.clone(), AlertStatus::Firing)
        ],
        "the router sees only transitions that took effect"
    );
    assert_eq!(
        backend.count("SELECT COUNT(*) FROM alert_events").await,
        4,
        "two transitions, two routes each"
    );
    assert_eq!(
        backend
            .count("SELECT COUNT(*) FROM alert_events WHERE webhook = 'hook-b'")
            .await,
        2
    );
    let expected_group = |webhook: &str, oldest, last| GroupState {
        webhook: webhook.to_owned(),
        group_key: web1.clone(),
        group_labels: map(&[("host", "web-1")]),
        oldest_waiting: oldest,
        last_notified_at: last,
    };
    assert_eq!(
        waiting(store).await,
        vec![
            expected_group("hook-a", Some(t0), None),
            expected_group("hook-b", Some(t0), None)
        ]
    );

    // The first notification carries both firing alerts.
    let t1 = t0 + secs(60);
    let group_a = waiting_group(store, "hook-a", &web1).await;
    let created = store
        .create_delivery(&group_a, t1, "d1", &render)
        .await
        .unwrap();
    assert_eq!(created.as_deref(), Some("d1"));
    let renders = take_rendered();
    assert_eq!(renders.len(), 1);
    assert_eq!(renders[0], (vec![a.clone(), b.clone()], 0));
    assert_eq!(
        waiting(store).await,
        vec![expected_group("hook-b", Some(t0), None)],
        "hook-a's events are claimed, hook-b's still wait"
    );
    let jobs = claim(store, t1, t1 + secs(30)).await;
    assert_eq!(
        jobs,
        vec![DeliveryJob {
            delivery_id: "d1".into(),
            webhook: "hook-a".into(),
            body: format!("body[{}:firing,{}:firing]", a.id, b.id),
            attempts: 0,
            created_at: t1,
        }]
    );

    // A resolves; a replica still holding the old group state loses the group.
    let t2 = t0 + secs(120);
    store
        .apply_transitions(&[resolve("web-1", twb, "ns:1", t2)], &router)
        .await
        .unwrap();
    let calls_now = take_calls();
    assert_eq!(calls_now, vec![(a.labels.clone(), AlertStatus::Resolved)]);
    let fresh = waiting_group(store, "hook-a", &web1).await;
    assert_eq!(fresh, expected_group("hook-a", Some(t2), Some(t1)));
    let stale = store
        .create_delivery(&group_a, t2 + secs(1), "d-stale", &render)
        .await
        .unwrap();
    assert_eq!(stale, None, "another replica notified the group since");
    assert!(take_rendered().is_empty());
    assert_eq!(
        waiting_group(store, "hook-a", &web1).await,
        fresh,
        "the stale attempt claimed nothing"
    );
    assert_eq!(
        backend
            .count("SELECT COUNT(*) FROM webhook_deliveries")
            .await,
        1
    );

    let t3 = t0 + secs(130);
    let created = store
        .create_delivery(&fresh, t3, "d2", &render)
        .await
        .unwrap();
    assert_eq!(created.as_deref(), Some("d2"));
    let renders = take_rendered();
    let a_resolved = Alert {
        status: AlertStatus::Resolved,
        ends_at: Some(t2),
        ..a.clone()
    };
    assert_eq!(
        renders,
        vec![(vec![b.clone(), a_resolved.clone()], 0)],
        "the firing alert of the group, then the one the claimed event resolved"
    );
    assert_eq!(
        store
            .create_delivery(&fresh, t3 + secs(1), "d2-again", &render)
            .await
            .unwrap(),
        None,
        "the same state cannot take the group twice"
    );

    // Repeats: a group with a firing alert notified at or before the cutoff, nothing waiting.
    let repeat = store.groups_to_repeat("hook-a", t3).await.unwrap();
    assert_eq!(repeat, vec![expected_group("hook-a", None, Some(t3))]);
    assert!(
        store
            .groups_to_repeat("hook-a", t3 - TimeDelta::milliseconds(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .groups_to_repeat("hook-b", t3 + secs(3600))
            .await
            .unwrap()
            .is_empty(),
        "never notified, and with events waiting"
    );
    assert!(
        store
            .groups_to_repeat("hook-c", t3 + secs(3600))
            .await
            .unwrap()
            .is_empty()
    );

    // B resolves too: its notification carries only B, and the group has nothing left to repeat.
    let t4 = t0 + secs(180);
    store
        .apply_transitions(&[resolve("web-1", cwh, "pid:7", t4)], &router)
        .await
        .unwrap();
    take_calls();
    let fresh = waiting_group(store, "hook-a", &web1).await;
    assert!(
        store
            .groups_to_repeat("hook-a", t4 + secs(3600))
            .await
            .unwrap()
            .is_empty(),
        "an event waits"
    );
    let created = store
        .create_delivery(&fresh, t4 + secs(1), "d3", &render)
        .await
        .unwrap();
    assert_eq!(created.as_deref(), Some("d3"));
    let b_resolved = Alert {
        status: AlertStatus::Resolved,
        ends_at: Some(t4),
        ..b.clone()
    };
    assert_eq!(take_rendered(), vec![(vec![b_resolved], 0)]);

    // Another host's group on the same webhook keeps firing.
    let t5 = t0 + secs(240);
    let applied = store
        .apply_transitions(&[fire("web-2", twb, "ns:2", t5)], &router)
        .await
        .unwrap();
    let c = fired(&applied[0]).clone();
    let web2_group = waiting_group(store, "hook-a", &group_key("web-2")).await;
    store
        .create_delivery(&web2_group, t5 + secs(1), "d4", &render)
        .await
        .unwrap()
        .expect("a delivery for web-2");
    assert_eq!(take_rendered(), vec![(vec![c], 0)]);
    let repeat = store
        .groups_to_repeat("hook-a", t5 + secs(3600))
        .await
        .unwrap();
    let keys: Vec<&str> = repeat.iter().map(|g| g.group_key.as_str()).collect();
    assert_eq!(
        keys,
        vec![group_key("web-2").as_str()],
        "web-1's group has no firing alert left"
    );

    // hook-b's group was never notified: its notification carries every claimed event's alert.
    let group_b = waiting_group(store, "hook-b", &web1).await;
    assert_eq!(group_b.oldest_waiting, Some(t0));
    store
        .create_delivery(&group_b, t5 + secs(2), "d5", &render)
        .await
        .unwrap()
        .expect("a delivery for hook-b");
    let renders = take_rendered();
    let ids: Vec<(i64, AlertStatus)> = renders[0].0.iter().map(|x| (x.id, x.status)).collect();
    assert_eq!(
        ids,
        vec![(a.id, AlertStatus::Resolved), (b.id, AlertStatus::Resolved)]
    );
}

async fn render_counts_alerts_left_out(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    let total = sockfleet_server::storage::alerts::MAX_ALERTS_PER_NOTIFICATION as usize + 3;
    let transitions: Vec<Transition> = (0..total)
        .map(|i| {
            fire(
                "web-1",
                RuleName::CloseWaitStuck,
                &format!("pid:{i:04}"),
                t0 + TimeDelta::milliseconds(i as i64),
            )
        })
        .collect();
    store
        .apply_transitions(&transitions, &|labels: &Labels, _| {
            vec![by_host("hook", labels)]
        })
        .await
        .unwrap();
    let group = waiting_group(store, "hook", &group_key("web-1")).await;
    let seen: Mutex<Option<(usize, u32)>> = Mutex::new(None);
    store
        .create_delivery(
            &group,
            t0 + secs(60),
            "big",
            &|alerts: &[Alert], left_out| {
                *seen.lock().unwrap() = Some((alerts.len(), left_out));
                String::new()
            },
        )
        .await
        .unwrap()
        .expect("a delivery");
    assert_eq!(
        seen.into_inner().unwrap(),
        Some((500, 3)),
        "500 alerts shown, the number left out is 3"
    );
}

// ---------------------------------------------------------------------------------------------------
// 4. Deliveries: leases, order within a group, retries, and health.

async fn deliveries_lease_retry_and_finish(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    let rule = RuleName::ListenQueueOverflow;
    let router = |labels: &Labels, _: AlertStatus| {
        if labels.get("host").map(String::as_str) == Some("web-3") {
            vec![by_host("hook-b", labels)]
        } else {
            vec![by_host("hook-a", labels)]
        }
    };
    let (web1, web2, web3) = (group_key("web-1"), group_key("web-2"), group_key("web-3"));

    store
        .apply_transitions(&[fire("web-1", rule, "port:80", t0)], &router)
        .await
        .unwrap();
    deliver(store, "hook-a", &web1, t0 + secs(1), "d1").await;
    store
        .apply_transitions(&[resolve("web-1", rule, "port:80", t0 + secs(2))], &router)
        .await
        .unwrap();
    deliver(store, "hook-a", &web1, t0 + secs(3), "d2").await;
    store
        .apply_transitions(&[fire("web-2", rule, "port:80", t0 + secs(4))], &router)
        .await
        .unwrap();
    deliver(store, "hook-a", &web2, t0 + secs(5), "d3").await;
    store
        .apply_transitions(&[fire("web-3", rule, "port:80", t0 + secs(6))], &router)
        .await
        .unwrap();
    deliver(store, "hook-b", &web3, t0 + secs(7), "d4").await;

    let health = store.webhook_health().await.unwrap();
    assert_eq!(
        health,
        vec![
            WebhookHealth {
                webhook: "hook-a".into(),
                pending: 3,
                delivered: 0,
                failed: 0,
                failed_attempts: 0,
                last_delivered_at: None,
                last_error: None,
                last_error_at: None,
            },
            WebhookHealth {
                webhook: "hook-b".into(),
                pending: 1,
                delivered: 0,
                failed: 0,
                failed_attempts: 0,
                last_delivered_at: None,
                last_error: None,
                last_error_at: None,
            },
        ]
    );

    // Only the oldest pending delivery of each group is leased; d2 waits behind d1.
    let now = t0 + secs(10);
    let jobs = claim(store, now, now + secs(30)).await;
    assert_eq!(
        ids_and_attempts(&jobs),
        vec![("d1", 0), ("d3", 0), ("d4", 0)]
    );
    assert_eq!(jobs[0].webhook, "hook-a");
    assert_eq!(jobs[0].created_at, t0 + secs(1));
    assert_eq!(jobs[2].webhook, "hook-b");
    assert!(jobs[0].body.ends_with(":firing"), "{}", jobs[0].body);
    assert!(
        claim(store, now + secs(1), now + secs(31)).await.is_empty(),
        "leased deliveries are not claimed again"
    );
    assert!(
        claim(store, now + secs(30), now + secs(60))
            .await
            .is_empty(),
        "still leased at the lease's last instant"
    );

    store
        .record_attempt(
            "d1",
            &attempt(
                now + secs(2),
                Some(503),
                Some("HTTP 503"),
                AttemptResult::Retry(now + secs(60)),
            ),
        )
        .await
        .unwrap();
    store
        .record_attempt(
            "d3",
            &attempt(now + secs(2), Some(204), None, AttemptResult::Delivered),
        )
        .await
        .unwrap();
    assert!(
        claim(store, now + secs(3), now + secs(33)).await.is_empty(),
        "d1 waits for its retry time, d2 behind it, d3 is done, d4 leased"
    );

    // d4's lease expires without an attempt recorded: it is claimed again.
    let jobs = claim(store, now + secs(31), now + secs(61)).await;
    assert_eq!(ids_and_attempts(&jobs), vec![("d4", 0)]);
    assert!(
        claim(store, now + secs(59), now + secs(89))
            .await
            .is_empty()
    );
    let jobs = claim(store, now + secs(60), now + secs(90)).await;
    assert_eq!(
        ids_and_attempts(&jobs),
        vec![("d1", 1)],
        "due at the retry time"
    );

    store
        .record_attempt(
            "d1",
            &attempt(
                now + secs(61),
                Some(500),
                Some("HTTP 500"),
                AttemptResult::Retry(now + secs(70)),
            ),
        )
        .await
        .unwrap();
    let jobs = claim(store, now + secs(70), now + secs(100)).await;
    assert_eq!(ids_and_attempts(&jobs), vec![("d1", 2), ("d4", 0)]);
    store
        .record_attempt(
            "d1",
            &attempt(now + secs(71), Some(200), None, AttemptResult::Delivered),
        )
        .await
        .unwrap();
    store
        .record_attempt(
            "d4",
            &attempt(
                now + secs(72),
                Some(410),
                Some("HTTP 410 Gone"),
                AttemptResult::Failed,
            ),
        )
        .await
        .unwrap();
    let jobs = claim(store, now + secs(73), now + secs(103)).await;
    assert_eq!(
        ids_and_attempts(&jobs),
        vec![("d2", 0)],
        "d2 is next once d1 is delivered"
    );
    assert!(jobs[0].body.ends_with(":resolved"), "{}", jobs[0].body);
    store
        .record_attempt(
            "d2",
            &attempt(
                now + secs(74),
                None,
                Some("connection refused"),
                AttemptResult::Failed,
            ),
        )
        .await
        .unwrap();
    assert!(
        claim(store, now + secs(3600), now + secs(3630))
            .await
            .is_empty(),
        "delivered and failed deliveries are done"
    );

    let health = store.webhook_health().await.unwrap();
    assert_eq!(health.len(), 2);
    assert_eq!(
        health_of(&health, "hook-a"),
        &WebhookHealth {
            webhook: "hook-a".into(),
            pending: 0,
            delivered: 2,
            failed: 1,
            // d1: two retries before it was delivered; d2: one failure.
            failed_attempts: 3,
            last_delivered_at: Some(now + secs(71)),
            last_error: Some("connection refused".into()),
            last_error_at: Some(now + secs(74)),
        }
    );
    assert_eq!(
        health_of(&health, "hook-b"),
        &WebhookHealth {
            webhook: "hook-b".into(),
            pending: 0,
            delivered: 0,
            failed: 1,
            failed_attempts: 1,
            last_delivered_at: None,
            last_error: Some("HTTP 410 Gone".into()),
            last_error_at: Some(now + secs(72)),
        }
    );
}

async fn last_error_time_is_the_failures(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    store
        .apply_transitions(
            &[fire("web-1", RuleName::OrphanPressure, "host", t0)],
            &|labels: &Labels, _| vec![by_host("hook", labels)],
        )
        .await
        .unwrap();
    deliver(store, "hook", &group_key("web-1"), t0 + secs(1), "d1").await;
    let now = t0 + secs(10);
    assert_eq!(
        ids_and_attempts(&claim(store, now, now + secs(30)).await),
        vec![("d1", 0)]
    );
    store
        .record_attempt(
            "d1",
            &attempt(
                now + secs(1),
                Some(502),
                Some("HTTP 502"),
                AttemptResult::Retry(now + secs(5)),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        ids_and_attempts(&claim(store, now + secs(5), now + secs(35)).await),
        vec![("d1", 1)]
    );
    store
        .record_attempt(
            "d1",
            &attempt(now + secs(6), Some(200), None, AttemptResult::Delivered),
        )
        .await
        .unwrap();
    let health = store.webhook_health().await.unwrap();
    let hook = health_of(&health, "hook");
    assert_eq!((hook.delivered, hook.failed_attempts), (1, 1), "{health:?}");
    assert_eq!(hook.last_delivered_at, Some(now + secs(6)));
    assert_eq!(hook.last_error.as_deref(), Some("HTTP 502"));
    assert_eq!(
        hook.last_error_at,
        Some(now + secs(1)),
        "the error happened at the failed attempt, not at the delivery"
    );
}

/// Two replicas (two stores on PostgreSQL; one store's connections on SQLite) racing for one group and
/// for the same deliveries: the group is taken once, and each delivery leased once.
async fn replicas_share_the_outbox(backend: &Backend) {
    const TASKS: usize = 8;
    const HOSTS: usize = 20;
    let stores: Vec<Arc<dyn Store>> = if backend.postgres {
        vec![Arc::clone(&backend.store), backend.open_again().await]
    } else {
        vec![Arc::clone(&backend.store)]
    };
    let store = &*backend.store;
    let t0 = start();
    let transitions: Vec<Transition> = (0..HOSTS)
        .map(|i| fire(&format!("web-{i:02}"), RuleName::OrphanPressure, "host", t0))
        .collect();
    store
        .apply_transitions(&transitions, &|labels: &Labels, _| {
            vec![by_host("hook", labels)]
        })
        .await
        .unwrap();

    // Every replica read the same state of web-00's group and tries to notify it.
    let group = waiting_group(store, "hook", &group_key("web-00")).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&stores[task % stores.len()]);
            let barrier = Arc::clone(&barrier);
            let group = group.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .create_delivery(
                        &group,
                        t0 + secs(1),
                        &format!("take-{task}"),
                        &|alerts: &[Alert], _| body_of(alerts),
                    )
                    .await
                    .expect("create_delivery")
            })
        })
        .collect();
    let created: Vec<String> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|joined| joined.expect("task"))
        .collect();
    assert_eq!(created.len(), 1, "one replica takes the group: {created:?}");
    assert_eq!(
        backend
            .count("SELECT COUNT(*) FROM webhook_deliveries")
            .await,
        1
    );

    for i in 1..HOSTS {
        deliver(
            store,
            "hook",
            &group_key(&format!("web-{i:02}")),
            t0 + secs(2),
            &format!("d{i:02}"),
        )
        .await;
    }

    // Replicas claim at once, a few each: no delivery is leased twice.
    let now = t0 + secs(10);
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&stores[task % stores.len()]);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .claim_deliveries(now, now + secs(30), 5)
                    .await
                    .expect("claim_deliveries")
            })
        })
        .collect();
    let mut leased: Vec<String> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|joined| joined.expect("task"))
        .map(|job| job.delivery_id)
        .collect();
    let claimed = leased.len();
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), claimed, "a delivery was leased twice");
    // Whatever the race left unclaimed is claimed next, and nothing more.
    leased.extend(
        claim(store, now + secs(1), now + secs(31))
            .await
            .into_iter()
            .map(|job| job.delivery_id),
    );
    leased.sort();
    let before = leased.len();
    leased.dedup();
    assert_eq!(leased.len(), before, "a leased delivery was claimed again");
    assert_eq!(leased.len(), HOSTS);
}

// ---------------------------------------------------------------------------------------------------
// 5. What the fleet rules read.

fn session(host_id: &str, run: &str, labels: &[(&str, &str)], interval: u64) -> Arc<AgentSession> {
    Arc::new(AgentSession::new(AgentHello {
        host_id: host(host_id),
        hostname: format!("{host_id}.example"),
        kernel_release: "6.1.0-test".into(),
        agent_version: "0.1.0".into(),
        labels: map(labels),
        run_id: run.into(),
        collector: Collector::Netlink,
        interval: Duration::from_secs(interval),
    }))
}

fn incoming(
    session: &Arc<AgentSession>,
    sequence: u64,
    at: DateTime<Utc>,
    sysctls: &[(&str, Option<&str>)],
) -> IncomingReport {
    let mut states = FamilyCounts::default();
    states.ipv4.set(TcpState::Established, 3);
    IncomingReport {
        session: Arc::clone(session),
        report: Report {
            sequence,
            collected_at: at,
            states,
            sysctls: sysctl_values(sysctls),
            kernel: None,
            breakdowns: None,
            namespaces: Vec::new(),
        },
        dropped_reports: 0,
    }
}

fn sysctl_values(sysctls: &[(&str, Option<&str>)]) -> SysctlValues {
    sysctls
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned)))
        .collect()
}

async fn host_activity_and_fleet_sysctls(backend: &Backend) {
    let store = &*backend.store;
    let t0 = start();
    const FIN: &str = "net.ipv4.tcp_fin_timeout";
    const REUSE: &str = "net.ipv4.tcp_tw_reuse";
    const RECYCLE: &str = "net.ipv4.tcp_tw_recycle";
    let web1_labels = [("env", "prod"), ("team", "edge")];
    let web1 = session("web-1", "run-a", &web1_labels, 10);
    let web2 = session("web-2", "run-a", &[("env", "test")], 30);

    let mut with_namespace = incoming(
        &web1,
        2,
        t0 + secs(10),
        &[(FIN, Some("30")), (REUSE, Some("1"))],
    );
    // A container's namespace has its own value; the host's stays its own.
    with_namespace.report.namespaces.push(NamespaceReport {
        inode: 4_026_532_999,
        identity: NamespaceIdentity {
            comm: Some("nginx".into()),
            ..NamespaceIdentity::default()
        },
        states: FamilyCounts::default(),
        sysctls: sysctl_values(&[(FIN, Some("15")), ("net.core.somaxconn", Some("4096"))]),
        kernel: None,
        breakdowns: None,
    });
    store
        .commit_reports(&[
            incoming(
                &web1,
                1,
                t0,
                &[(FIN, Some("60")), (REUSE, Some("2")), (RECYCLE, None)],
            ),
            incoming(&web2, 1, t0 + secs(5), &[(FIN, Some("60"))]),
        ])
        .await
        .unwrap();
    store.commit_reports(&[with_namespace]).await.unwrap();

    let activity = store.host_activity().await.unwrap();
    assert_eq!(
        activity,
        vec![
            HostActivity {
                host_id: host("web-1"),
                labels: map(&web1_labels),
                interval: Duration::from_secs(10),
                last_seen: Some(t0 + secs(10)),
            },
            HostActivity {
                host_id: host("web-2"),
                labels: map(&[("env", "test")]),
                interval: Duration::from_secs(30),
                last_seen: Some(t0 + secs(5)),
            },
        ]
    );

    let fleet = store.fleet_sysctls().await.unwrap();
    assert_eq!(
        fleet,
        vec![
            (
                host("web-1"),
                map(&web1_labels),
                sysctl_values(&[(FIN, Some("30")), (REUSE, Some("1")), (RECYCLE, None)]),
            ),
            (
                host("web-2"),
                map(&[("env", "test")]),
                sysctl_values(&[(FIN, Some("60"))]),
            ),
        ]
    );

    // web-1 changes back to an earlier value and loses a setting; web-2 restarts with new labels and
    // a new interval.
    let web2_again = session("web-2", "run-b", &[("env", "staging")], 60);
    store
        .commit_reports(&[
            incoming(&web1, 3, t0 + secs(20), &[(FIN, Some("60")), (REUSE, None)]),
            incoming(&web2_again, 1, t0 + secs(25), &[(FIN, Some("45"))]),
        ])
        .await
        .unwrap();
    let activity = store.host_activity().await.unwrap();
    assert_eq!(
        activity,
        vec![
            HostActivity {
                host_id: host("web-1"),
                labels: map(&web1_labels),
                interval: Duration::from_secs(10),
                last_seen: Some(t0 + secs(20)),
            },
            HostActivity {
                host_id: host("web-2"),
                labels: map(&[("env", "staging")]),
                interval: Duration::from_secs(60),
                last_seen: Some(t0 + secs(25)),
            },
        ]
    );
    let fleet = store.fleet_sysctls().await.unwrap();
    assert_eq!(
        fleet,
        vec![
            (
                host("web-1"),
                map(&web1_labels),
                sysctl_values(&[(FIN, Some("60")), (REUSE, None), (RECYCLE, None)]),
            ),
            (
                host("web-2"),
                map(&[("env", "staging")]),
                sysctl_values(&[(FIN, Some("45"))]),
            ),
        ]
    );
}
