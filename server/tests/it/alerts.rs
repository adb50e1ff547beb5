//! Alerts from real sockets and processes: a process that leaks CLOSE_WAIT sockets is named by
//! `CloseWaitLeak` and `CloseWaitStuck`, and both resolve once it is gone; an agent that stops is
//! reported by `AgentSilent` after the configured number of its collection intervals.
//!
//! Like the end-to-end test, the agent collects in a network namespace of the test's own, where the
//! test's sockets and the leaking process live, so other tests' sockets never mix in. This module also
//! holds what the alert, webhook and replica tests share: a server started with an alerting
//! configuration file, an agent on the test's namespace, sockets held in CLOSE_WAIT, and the alert
//! listing of the API.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sockfleet_testkit::IsolatedNamespace;

use crate::support::database::TestDatabase;
use crate::support::process::{AgentProcess, ServerProcess, server_binary};
use crate::support::receiver::{Received, Receiver};
use crate::support::{eventually, get_json};

/// The collection period the test servers impose on their agents.
pub const AGENT_INTERVAL: &str = "1s";

/// The leaking server's name: its binary's, and so its `/proc/PID/comm`.
const LEAKER: &str = "closewait_leak";
const LEAK_HOST: &str = "leak-host";
const SILENT_HOST: &str = "silent-host";
/// Connections the test opens to the leaker and closes, per round.
const CONNECTIONS_PER_ROUND: usize = 5;
/// Most rounds (one a second) before the test gives up on seeing the alerts.
const MAX_ROUNDS: usize = 30;

#[tokio::test]
async fn a_process_leaking_close_wait_is_named_and_resolves_when_it_exits() {
    let database = TestDatabase::create().await;
    let receiver = Receiver::start().await;
    // An unsigned webhook; group_interval 1s so the resolution is notified within the test.
    let config = ConfigFile::write(&format!(
        r#"
        [alerts.rules.CloseWaitLeak]
        samples = 3
        min_growth = 3

        [alerts.rules.CloseWaitStuck]
        min_samples = 2
        min_age = "2s"

        [[webhooks]]
        name = "leaks"
        url = "{url}"
        group_interval = "1s"
        "#,
        url = receiver.url()
    ));
    let server = start_server(&database, "127.0.0.1:0", &config);
    let namespace = IsolatedNamespace::new();
    let leaker = Leaker::start(&namespace);
    let _agent = start_agent(
        &server.url(),
        LEAK_HOST,
        &namespace,
        &["--label", "team=net"],
    );

    // Clients come and go; the leaker keeps every connection, so its CLOSE_WAIT count grows by five a
    // second until both rules have named it.
    let started = Instant::now();
    let mut rounds = 0;
    let (leak, stuck) = loop {
        let port = leaker.port;
        namespace.run(move || connect_and_close(port, CONNECTIONS_PER_ROUND));
        rounds += 1;
        let firing = alerts(&server.url(), "state=firing").await;
        let leak = of_process(&firing, "CloseWaitLeak", leaker.pid)
            .into_iter()
            .next();
        let stuck = of_process(&firing, "CloseWaitStuck", leaker.pid)
            .into_iter()
            .next();
        if let (Some(leak), Some(stuck)) = (leak, stuck) {
            break (leak, stuck);
        }
        assert!(
            rounds < MAX_ROUNDS,
            "after {rounds} rounds ({:?}) CloseWaitLeak and CloseWaitStuck have not both fired for \
             pid {}; firing: {firing:#?}",
            started.elapsed(),
            leaker.pid
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let pid = leaker.pid.to_string();
    let owner = format!("{LEAKER} (pid {pid})");
    let port = leaker.port.to_string();

    assert_eq!(leak["host_id"], LEAK_HOST, "{leak:#}");
    assert_eq!(leak["subject"], format!("pid:{pid}"), "{leak:#}");
    assert_eq!(leak["status"], "firing", "{leak:#}");
    assert_eq!(leak["severity"], "critical", "{leak:#}");
    assert!(leak["ends_at"].is_null(), "{leak:#}");
    let labels = &leak["labels"];
    assert_eq!(labels["alertname"], "CloseWaitLeak", "{leak:#}");
    assert_eq!(labels["severity"], "critical", "{leak:#}");
    assert_eq!(labels["host"], LEAK_HOST, "{leak:#}");
    assert_eq!(labels["team"], "net", "the host's own labels: {leak:#}");
    assert_eq!(labels["comm"], LEAKER, "{leak:#}");
    assert_eq!(labels["local_port"], port.as_str(), "{leak:#}");
    assert!(is_loopback_peer(&labels["remote"]), "{leak:#}");
    let summary = leak["annotations"]["summary"].as_str().unwrap_or_default();
    let description = leak["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        summary.contains(&owner) && summary.contains(LEAK_HOST),
        "{summary}"
    );
    assert!(description.contains(&owner), "{description}");
    assert!(
        leak["value"].as_f64().is_some_and(|held| held >= 3.0),
        "{leak:#}"
    );

    assert_eq!(stuck["host_id"], LEAK_HOST, "{stuck:#}");
    assert_eq!(stuck["severity"], "warning", "{stuck:#}");
    let labels = &stuck["labels"];
    assert_eq!(labels["alertname"], "CloseWaitStuck", "{stuck:#}");
    assert_eq!(labels["host"], LEAK_HOST, "{stuck:#}");
    assert_eq!(labels["team"], "net", "{stuck:#}");
    assert_eq!(labels["comm"], LEAKER, "{stuck:#}");
    assert_eq!(labels["local_port"], port.as_str(), "{stuck:#}");
    let remote = labels["remote"].as_str().unwrap_or_default();
    assert!(is_loopback_peer(&labels["remote"]), "{stuck:#}");
    assert_eq!(
        stuck["subject"],
        format!("sock:127.0.0.1:{port}->{remote}"),
        "{stuck:#}"
    );
    let description = stuck["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains(&format!("Owner: {owner}")) && description.contains(remote),
        "{description}"
    );
    assert!(
        stuck["value"].as_f64().is_some_and(|age| age >= 2.0),
        "stuck for at least min_age: {stuck:#}"
    );

    // The process exits: its sockets close, and with them both alerts.
    leaker.kill();
    let stuck_subject = stuck["subject"].as_str().unwrap_or_default().to_owned();
    let resolved = eventually_alerts(
        &server.url(),
        "CloseWaitLeak and CloseWaitStuck resolved after the leaker exited",
        |all| {
            let still_firing = all
                .iter()
                .any(|alert| alert["status"] == "firing" && alert["labels"]["pid"] == pid.as_str());
            let leak = all.iter().find(|alert| alert["id"] == leak["id"]);
            let stuck = all
                .iter()
                .find(|alert| alert["subject"] == stuck_subject.as_str());
            match (still_firing, leak, stuck) {
                (false, Some(leak), Some(stuck))
                    if leak["status"] == "resolved" && stuck["status"] == "resolved" =>
                {
                    Some((leak.clone(), stuck.clone()))
                }
                _ => None,
            }
        },
    )
    .await;
    let (resolved_leak, resolved_stuck) = resolved;
    for alert in [&resolved_leak, &resolved_stuck] {
        let starts = parse_time(&alert["starts_at"]);
        let ends = parse_time(&alert["ends_at"]);
        assert!(ends > starts, "{alert:#}");
        assert_eq!(alert["labels"]["pid"], pid.as_str(), "{alert:#}");
    }
    let listed = alerts(&server.url(), "state=resolved&alertname=CloseWaitLeak").await;
    assert!(
        listed
            .iter()
            .any(|alert| alert["id"] == resolved_leak["id"]),
        "state=resolved lists the leak: {listed:#?}"
    );
    let listed = alerts(&server.url(), "state=resolved&alertname=CloseWaitStuck").await;
    assert!(
        listed
            .iter()
            .any(|alert| alert["subject"] == resolved_stuck["subject"]),
        "state=resolved lists the stuck socket: {listed:#?}"
    );
    let firing = alerts(&server.url(), &format!("state=firing&host={LEAK_HOST}")).await;
    assert!(
        firing
            .iter()
            .all(|alert| alert["labels"]["pid"] != pid.as_str()),
        "nothing fires for the exited process: {firing:#?}"
    );

    // The webhook was told of the leak, then of its end.
    let leak_notifications = eventually(
        "the resolved CloseWaitLeak notification",
        Duration::from_secs(30),
        || async {
            let notifications: Vec<Value> = receiver
                .received()
                .iter()
                .map(Received::json)
                .filter(|body| body["groupLabels"]["alertname"] == "CloseWaitLeak")
                .collect();
            notifications
                .iter()
                .any(|body| body["status"] == "resolved")
                .then_some(notifications)
        },
    )
    .await;
    assert_eq!(
        leak_notifications
            .iter()
            .map(|body| body["status"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["firing", "resolved"],
        "{leak_notifications:#?}"
    );
    let ended = &leak_notifications[1]["alerts"][0];
    assert_eq!(ended["status"], "resolved", "{ended:#}");
    assert_eq!(ended["labels"]["pid"], pid.as_str(), "{ended:#}");
    assert_eq!(
        ended["fingerprint"], resolved_leak["fingerprint"],
        "{ended:#}"
    );
    assert_eq!(
        parse_time(&ended["endsAt"]),
        parse_time(&resolved_leak["ends_at"]),
        "{ended:#}"
    );
    for request in receiver.received() {
        assert!(
            !request.headers.contains_key("webhook-signature"),
            "no secret, no signature: {request:?}"
        );
        assert!(!request.webhook_id().is_empty());
    }
    server.stop();
}

#[tokio::test]
async fn agent_silent_counts_the_interval_the_server_imposes() {
    let database = TestDatabase::create().await;
    let pool = database.pool().await;
    let config = ConfigFile::write("[alerts.rules.AgentSilent]\nintervals = 2\n");
    let server = start_server(&database, "127.0.0.1:0", &config);
    // The agent's own period is its default (10 s); the server tells it to collect every second.
    let agent = AgentProcess::start(&server.url(), &["--host-id", SILENT_HOST]);
    eventually(
        "three reports a second apart",
        Duration::from_secs(15),
        || async {
            let reports: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM reports r JOIN hosts h ON h.host_key = r.host_key \
                 WHERE h.host_id = $1",
            )
            .bind(SILENT_HOST)
            .fetch_one(&pool)
            .await
            .expect("count reports");
            (reports >= 3).then_some(())
        },
    )
    .await;
    agent.stop();

    // Two missed seconds, plus up to one period (5 s) of the fleet rules: well within 15 s. Counting
    // the agent's own 10 s, it would take more than 20 s.
    let silent = eventually(
        "AgentSilent within 15 s of the agent stopping",
        Duration::from_secs(15),
        || async {
            alerts(
                &server.url(),
                &format!("state=firing&alertname=AgentSilent&host={SILENT_HOST}"),
            )
            .await
            .into_iter()
            .next()
        },
    )
    .await;
    assert_eq!(silent["labels"]["host"], SILENT_HOST, "{silent:#}");
    assert_eq!(silent["subject"], "agent", "{silent:#}");
    let description = silent["annotations"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(description.contains("reports every 1s"), "{description}");
    server.stop();
}

/// Alerts of `rule` whose `pid` label is `pid`.
fn of_process(alerts: &[Value], rule: &str, pid: u32) -> Vec<Value> {
    alerts
        .iter()
        .filter(|alert| alert["rule"] == rule && alert["labels"]["pid"] == pid.to_string().as_str())
        .cloned()
        .collect()
}

/// Whether a `remote` label is a client on 127.0.0.1.
fn is_loopback_peer(remote: &Value) -> bool {
    remote
        .as_str()
        .and_then(|remote| remote.parse::<SocketAddr>().ok())
        .is_some_and(|remote| remote.ip() == Ipv4Addr::LOCALHOST && remote.port() != 0)
}

fn parse_time(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .unwrap_or_else(|| panic!("{value} is not an RFC 3339 time"))
}

/// Opens `count` connections to the leaker and closes them at once.
fn connect_and_close(port: u16, count: usize) {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..count {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("cannot connect to the leaker at {target}: {error}"));
        drop(stream);
    }
}

/// The `closewait_leak` process, started inside the test's namespace; killed when dropped.
struct Leaker {
    child: Child,
    pid: u32,
    port: u16,
}

impl Leaker {
    fn start(namespace: &IsolatedNamespace) -> Leaker {
        let binary = server_binary().with_file_name(LEAKER);
        assert!(
            binary.exists(),
            "{} is missing: build the workspace first (cargo build --workspace --bins)",
            binary.display()
        );
        // Started from the namespace's thread, the process lives in the namespace.
        let mut child = namespace.run(move || {
            Command::new(&binary)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.display()))
        });
        let stdout = child.stdout.take().expect("leaker stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{LEAKER} did not print its port (printed {line:?})");
        };
        Leaker {
            pid: child.id(),
            child,
            port,
        }
    }

    /// Kills the process and reaps it.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server configuration file (TOML) in the temporary directory, removed when dropped.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` (leading indentation is fine in TOML) to a new file.
    pub fn write(text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!(
            "sockfleet-alerts-{:016x}.toml",
            rand::random::<u64>()
        ));
        std::fs::write(&path, text)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        ConfigFile { path }
    }

    /// The file's path, as a flag value.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A server on `database` with the alerting configuration `config`, telling its agents to collect
/// every [`AGENT_INTERVAL`].
pub fn start_server(database: &TestDatabase, listen: &str, config: &ConfigFile) -> ServerProcess {
    ServerProcess::start(
        &database.url,
        listen,
        &[
            "--config",
            config.path(),
            "--agent-interval",
            AGENT_INTERVAL,
        ],
    )
}

/// An agent reporting as `host_id` what it sees in `namespace`.
pub fn start_agent(
    server_url: &str,
    host_id: &str,
    namespace: &IsolatedNamespace,
    extra: &[&str],
) -> AgentProcess {
    let mut args = vec!["--host-id", host_id, "--netns", namespace.path()];
    args.extend_from_slice(extra);
    AgentProcess::start(server_url, &args)
}

/// A connection whose client shut down its sending side: the accepting side stays in CLOSE_WAIT (the
/// client in FIN_WAIT2) for as long as this value lives.
pub struct HeldCloseWait {
    _listener: TcpListener,
    _client: TcpStream,
    _server: TcpStream,
}

/// Opens one CLOSE_WAIT socket in `namespace`.
pub fn hold_close_wait(namespace: &IsolatedNamespace) -> HeldCloseWait {
    namespace.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen on loopback");
        let address = listener.local_addr().expect("listener address");
        let client = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("cannot connect to {address}: {error}"));
        let (server, _) = listener.accept().expect("accept");
        client
            .shutdown(Shutdown::Write)
            .expect("shut down the client's sending side");
        HeldCloseWait {
            _listener: listener,
            _client: client,
            _server: server,
        }
    })
}

/// `GET /api/v1/alerts?QUERY` (at most 1000, newest first).
pub async fn alerts(server_url: &str, query: &str) -> Vec<Value> {
    let url = format!("{server_url}/api/v1/alerts?limit=1000&{query}");
    let (status, body) = get_json(&url).await;
    assert_eq!(status, 200, "GET {url}: {body}");
    body["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {url}: no alerts array in {body}"))
        .clone()
}

/// Polls every alert (firing and resolved) until `check` accepts them, for up to 30 s.
pub async fn eventually_alerts<T>(
    server_url: &str,
    what: &str,
    check: impl Fn(&[Value]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = alerts(server_url, "").await;
        if let Some(found) = check(&all) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {what}; alerts: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
