//! The on-disk spool, with the real agent binary: while no server answers, reports that do not fit in
//! `--backlog-memory` go to `--spool-dir` and the agent's memory stays bounded; once a server appears,
//! every spooled report reaches it exactly once.
//!
//! Everything happens on loopback. The second test needs `sockfleet-server`, built beside the agent
//! (`cargo build --workspace --bins`, which `cargo test --workspace` does); without it, it says so and
//! passes.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use prost::Message;
use sockfleet_agent::stream::spool::scan_segment;
use sockfleet_proto::v1;

const AGENT: &str = env!("CARGO_BIN_EXE_sockfleet-agent");

/// Reports of about this many CLOSE_WAIT sockets (each listed in the breakdowns, with `--top-n 1000`)
/// weigh tens of KB, so a few seconds of them are well above the memory bound under test.
const CLOSE_WAIT_SOCKETS: usize = 1000;
/// The `--backlog-memory` under test.
const BACKLOG_MEMORY: u64 = 64 << 10;
/// Anonymous memory the agent may use while it spools megabytes: its baseline is 1-2 MiB (debug build);
/// holding the same reports in memory takes it above 5 MiB within the test's 4 s.
const MAX_ANON_RSS: u64 = 4 << 20;
/// How much the anonymous memory may grow after the first second, while the spool grows by megabytes.
const MAX_ANON_GROWTH: u64 = 1 << 20;
/// Resident memory in all, generous for an unoptimised debug binary (mostly its own code pages); the
/// 10 MB target is for release builds.
const MAX_RSS: u64 = 40 << 20;

#[test]
fn reports_go_to_the_spool_and_memory_stays_bounded_while_no_server_answers() {
    let dir = TempDir::new("unreachable");
    let spool = dir.0.join("spool");
    let _sockets = close_wait_sockets(CLOSE_WAIT_SOCKETS);
    let agent = Agent::start(
        // Nothing listens on port 1: every connection attempt is refused.
        "http://127.0.0.1:1",
        &[
            "--interval",
            "100ms",
            "--top-n",
            "1000",
            "--backlog-memory",
            &BACKLOG_MEMORY.to_string(),
            "--spool-dir",
            spool.to_str().unwrap(),
            "--host-id",
            "spool-test-unreachable",
        ],
        &dir,
    );

    // Samples of (spool bytes, VmRSS, RssAnon) every 250 ms for 4 s.
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(250));
        let (rss, anon) = agent.memory();
        samples.push((spool_bytes(&spool), rss, anon));
    }
    let log = agent.stop();
    let sizes: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap();
    let peak_anon = samples.iter().map(|s| s.2).max().unwrap();
    // After the first second the agent has warmed up; from then on the spool takes the growth.
    let (warm, later) = samples.split_at(4);
    let warm_anon = warm.iter().map(|s| s.2).max().unwrap();
    let later_spool = later.last().unwrap().0 - warm.last().unwrap().0;
    eprintln!(
        "spool sizes {sizes:?}; RssAnon after 1 s {} KiB, peak {} KiB; peak VmRSS {} KiB",
        warm_anon >> 10,
        peak_anon >> 10,
        peak_rss >> 10
    );

    let grown = sizes.windows(2).filter(|pair| pair[1] > pair[0]).count();
    assert!(
        grown >= sizes.len() / 2,
        "the spool should grow steadily: {sizes:?}\n{log}"
    );
    let spooled = *sizes.last().unwrap();
    assert!(
        later_spool > 32 * BACKLOG_MEMORY,
        "the spool grew by only {later_spool} bytes after the first second\n{log}"
    );
    assert!(
        peak_anon < warm_anon + MAX_ANON_GROWTH,
        "the agent's anonymous memory grew from {warm_anon} to {peak_anon} bytes while the spool grew \
         by {later_spool}"
    );
    assert!(
        peak_anon < MAX_ANON_RSS,
        "the agent's anonymous memory reached {peak_anon} bytes while {spooled} bytes were spooled"
    );
    assert!(peak_rss < MAX_RSS, "VmRSS reached {peak_rss} bytes");

    // What stays on disk after a clean stop: intact records of this run, in order, from sequence 1.
    let mut sequences = Vec::new();
    let mut run_ids = Vec::new();
    for path in segments(&spool) {
        let scan = scan_segment(&path, |sequence, payload| {
            let report = v1::Report::decode(payload).expect("a spooled record is a Report");
            assert_eq!(report.sequence, sequence);
            let breakdowns = report.breakdowns.expect("breakdowns");
            assert!(breakdowns.close_wait_sockets.len() >= CLOSE_WAIT_SOCKETS);
            sequences.push(sequence);
        })
        .unwrap();
        assert_eq!(scan.damage, None, "{}", path.display());
        run_ids.push(scan.run_id);
    }
    run_ids.dedup();
    assert_eq!(run_ids.len(), 1, "one run: {run_ids:?}");
    assert!(sequences.len() >= 10, "{sequences:?}");
    assert_eq!(
        sequences,
        (1..=sequences.len() as u64).collect::<Vec<_>>(),
        "the oldest reports, in order"
    );
    let summary = stopped_line(&log);
    assert_eq!(counter(summary, "dropped="), 0, "{log}");
    assert_eq!(
        counter(summary, "spooled="),
        sequences.len() as u64,
        "{log}"
    );
    assert!(counter(summary, "unacknowledged=") > counter(summary, "spooled="));

    // The next run finds them, says so, and starts afresh.
    let agent = Agent::start(
        "http://127.0.0.1:1",
        &[
            "--spool-dir",
            spool.to_str().unwrap(),
            "--host-id",
            "spool-test-unreachable",
        ],
        &dir,
    );
    std::thread::sleep(Duration::from_millis(500));
    let log = agent.stop();
    assert!(
        log.contains("discarded reports an earlier agent run spooled"),
        "{log}"
    );
    assert!(segments(&spool).is_empty());
}

#[test]
fn spooled_reports_reach_a_server_that_appears_later() {
    let server_binary = Path::new(AGENT).with_file_name("sockfleet-server");
    assert!(
        server_binary.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins; scripts/test does)",
        server_binary.display()
    );
    let dir = TempDir::new("delivery");
    let spool = dir.0.join("spool");
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let host_id = format!("spool-test-{}", rand::random::<u32>());
    let since = Utc::now() - chrono::TimeDelta::minutes(1);
    // 16 KiB segments; room for several minutes of reports, so none is dropped however long the
    // agent's randomised reconnect backoff makes it wait.
    let agent = Agent::start(
        &format!("http://127.0.0.1:{port}"),
        &[
            "--interval",
            "100ms",
            "--backlog-memory",
            "4KiB",
            "--spool-dir",
            spool.to_str().unwrap(),
            "--spool-max",
            "512KiB",
            "--host-id",
            &host_id,
        ],
        &dir,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while segments(&spool).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing spooled:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let server = Server::start(&server_binary, port, &dir.0.join("server"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !segments(&spool).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the spool did not drain:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.stop();
    let summary = stopped_line(&log);
    let collected = counter(summary, "collected=");
    assert_eq!(counter(summary, "unacknowledged="), 0, "{log}");
    assert_eq!(counter(summary, "dropped="), 0, "{log}");
    assert_eq!(counter(summary, "spooled="), 0, "{log}");

    let from = since.to_rfc3339_opts(SecondsFormat::Secs, true);
    let series = server.get(&format!(
        "/api/v1/hosts/{host_id}/series?from={from}&limit=10000"
    ));
    let times: Vec<&str> = series["points"]
        .as_array()
        .unwrap_or_else(|| panic!("no points in {series}"))
        .iter()
        .map(|point| point["time"].as_str().unwrap())
        .collect();
    assert_eq!(
        times.len() as u64,
        collected,
        "every collected report stored exactly once\n{log}"
    );
    let mut sorted = times.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), times.len(), "distinct collection times");
    server.stop();
}

/// A running `sockfleet-agent`; killed if the test fails.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(server: &str, extra: &[&str], dir: &TempDir) -> Agent {
        let log = dir.0.join(format!("agent-{}.log", rand::random::<u32>()));
        let child = Command::new(AGENT)
            .args(["--server", server, "--log", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sockfleet-agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// VmRSS and RssAnon, in bytes.
    fn memory(&self) -> (u64, u64) {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("agent status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib << 10)
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        (field("VmRSS:"), field("RssAnon:"))
    }

    /// SIGTERM; the agent must exit 0 within a few seconds. Returns its log.
    fn stop(mut self) -> String {
        terminate(&mut self.child, "sockfleet-agent", &self.log);
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sockfleet-server` on an SQLite file; killed if the test fails.
struct Server {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Server {
    fn start(binary: &Path, port: u16, data_dir: &Path) -> Server {
        let log = data_dir.with_extension("log");
        let mut child = Command::new(binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sockfleet-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(address) = line
            .trim()
            .strip_prefix("sockfleet-server listening on http://")
        else {
            let _ = child.kill();
            panic!(
                "the server did not start ({line:?}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            address: address.to_owned(),
            child,
            log,
        }
    }

    /// `GET path` over plain HTTP/1.0; the JSON body of a 200 answer.
    fn get(&self, path: &str) -> serde_json::Value {
        let mut stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn stop(mut self) {
        terminate(&mut self.child, "sockfleet-server", &self.log);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child, name: &str, log: &Path) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child we spawned and have not reaped, with a valid signal number.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "{name} exited with {status} after SIGTERM:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` client sockets in CLOSE_WAIT (the peer closed, they did not), held until dropped.
fn close_wait_sockets(n: usize) -> Vec<TcpStream> {
    raise_fd_limit(n as u64 * 2 + 256);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let client = TcpStream::connect(address).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            drop(accepted);
            client
        })
        .collect();
    // Let the FINs arrive.
    std::thread::sleep(Duration::from_millis(200));
    clients
}

fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

fn segments(spool: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(spool) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn spool_bytes(spool: &Path) -> u64 {
    segments(spool)
        .iter()
        .filter_map(|path| fs::metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

/// The agent's final "agent stopped" log line.
fn stopped_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|line| line.contains("agent stopped"))
        .unwrap_or_else(|| panic!("no 'agent stopped' line in the agent log:\n{log}"))
}

/// The number after `key` in a log line.
fn counter(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "sockfleet-spool-it-{name}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
