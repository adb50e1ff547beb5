//! A real `sockfleet-agent` streaming to a real `sockfleet-server` while the namespace holds the
//! largest population: its resident memory and CPU per collection.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sockfleet_agent::collect::NetlinkCounter;
use sockfleet_domain::FamilyCounts;
use sockfleet_testkit::IsolatedNamespace;

use crate::measure::{process_cpu_split, process_memory};
use crate::population::{self, Mix};
use crate::size::{prepare_sysctls, settle};

/// How long the server may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopped process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Collections left out of the CPU figure: start-up (runtime, connection, first reports).
pub const WARM_UP_COLLECTIONS: u64 = 3;
/// Longest streaming phase: the population's TIME_WAIT sockets live 60 s.
pub const MAX_SECONDS: u64 = 45;

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub size: usize,
    pub seconds: u64,
    pub interval: Duration,
    pub agent: PathBuf,
    pub server: PathBuf,
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct StreamResult {
    /// The sockets in the namespace when the agent started.
    pub counts: FamilyCounts,
    pub interval: Duration,
    pub duration: Duration,
    /// `VmRSS` once a second, KiB.
    pub rss_kib: Vec<u64>,
    /// `VmHWM` at the end, KiB.
    pub hwm_kib: u64,
    /// Collections the agent logged in all.
    pub collections: u64,
    /// Collections after warm-up, and the CPU they took (user, system).
    pub measured_collections: u64,
    pub measured_cpu: Duration,
    pub measured_system: Duration,
    /// TIME_WAIT total the server stored for the host (sanity check that reports arrived).
    pub server_time_wait: Option<u64>,
    pub notes: Vec<String>,
}

impl StreamResult {
    /// Median RSS over the second half of the run, when the agent is in its steady state.
    pub fn steady_rss_kib(&self) -> u64 {
        let half = &self.rss_kib[self.rss_kib.len() / 2..];
        let mut sorted = half.to_vec();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or(0)
    }

    pub fn max_rss_kib(&self) -> u64 {
        self.rss_kib.iter().copied().max().unwrap_or(0)
    }

    /// The kernel's share of the measured CPU (clock-tick sampled).
    pub fn system_share(&self) -> Option<f64> {
        let total = self.measured_cpu.as_secs_f64();
        (total > 0.0).then(|| self.measured_system.as_secs_f64() / total)
    }

    pub fn cpu_per_collection(&self) -> Option<Duration> {
        let collections = u32::try_from(self.measured_collections)
            .ok()
            .filter(|n| *n > 0)?;
        Some(self.measured_cpu / collections)
    }
}

pub fn run_stream(config: &StreamConfig) -> anyhow::Result<StreamResult> {
    let seconds = config.seconds.min(MAX_SECONDS);
    let mix = Mix::for_total(config.size)?;
    let namespace = IsolatedNamespace::new();
    eprintln!(
        "[stream] building {} sockets, then streaming every {:?} for {seconds} s",
        mix.total(),
        config.interval
    );
    let (population, counts, settle_note) = namespace.run(move || {
        prepare_sysctls(mix)?;
        let population = population::build(mix)?;
        let mut counter = NetlinkCounter::open().context("cannot open the netlink counter")?;
        let note = settle(&mut counter, &mix)?;
        let counts = counter.count().context("netlink count failed")?;
        anyhow::Ok((population, counts, note))
    })?;
    let mut result = StreamResult {
        counts,
        interval: config.interval,
        notes: settle_note.into_iter().collect(),
        ..StreamResult::default()
    };
    if config.seconds > seconds {
        result.notes.push(format!(
            "streamed {seconds} s instead of {}: the population's TIME_WAIT sockets last 60 s",
            config.seconds
        ));
    }

    let server = Server::start(&config.server, &config.work_dir)?;
    let agent = Agent::start(config, &server.url, namespace.path())?;
    let started = Instant::now();
    let mut cpu_start = None;
    for second in 1..=seconds {
        let next = started + Duration::from_secs(second);
        thread::sleep(next.saturating_duration_since(Instant::now()));
        if let Some(status) = agent.exited() {
            bail!(
                "sockfleet-agent exited while streaming ({status}):\n{}",
                agent.log_tail()
            );
        }
        let (rss, _) = process_memory(agent.pid())?;
        result.rss_kib.push(rss);
        let collections = agent.collections();
        if cpu_start.is_none() && collections >= WARM_UP_COLLECTIONS {
            cpu_start = Some((process_cpu_split(agent.pid())?, collections));
        }
    }
    result.duration = started.elapsed();
    result.collections = agent.collections();
    result.hwm_kib = process_memory(agent.pid())?.1;
    if let Some(((user, system), collections)) = cpu_start {
        let (user_end, system_end) = process_cpu_split(agent.pid())?;
        result.measured_system = system_end.saturating_sub(system);
        result.measured_cpu = user_end.saturating_sub(user) + result.measured_system;
        result.measured_collections = result.collections.saturating_sub(collections);
    } else {
        result.notes.push(format!(
            "the agent made only {} collections; no CPU figure",
            result.collections
        ));
    }
    if agent.failures() > 0 {
        result.notes.push(format!(
            "{} collections failed:\n{}",
            agent.failures(),
            agent.log_tail()
        ));
    }
    match server.host_time_wait("bench") {
        Ok(time_wait) => result.server_time_wait = Some(time_wait),
        Err(error) => result.notes.push(format!(
            "could not read the host back from the server: {error:#}"
        )),
    }
    drop(agent);
    drop(server);
    if population.started.elapsed() > Duration::from_secs(60) {
        result
            .notes
            .push("the population's oldest sockets expired before streaming ended".into());
    }
    drop(population);
    drop(namespace);
    eprintln!("[stream] done: {} collections", result.collections);
    Ok(result)
}

/// Sends SIGTERM, waits, then SIGKILL.
fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill takes no pointers; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes the child die with the benchmark (the main thread starts these, so "parent thread" is the
/// process).
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

struct Server {
    child: Child,
    url: String,
    address: SocketAddr,
}

impl Server {
    fn start(binary: &Path, work_dir: &Path) -> anyhow::Result<Server> {
        let data_dir = work_dir.join("server-data");
        let log = File::create(work_dir.join("server.log")).context("cannot create server.log")?;
        let mut command = Command::new(binary);
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = line_tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = Server {
            child,
            url: String::new(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            _ => {
                let log = std::fs::read_to_string(work_dir.join("server.log")).unwrap_or_default();
                bail!(
                    "sockfleet-server did not print its address within {START_TIMEOUT:?}:\n{log}"
                );
            }
        };
        let url = line
            .strip_prefix("sockfleet-server listening on ")
            .with_context(|| format!("unexpected first line from sockfleet-server: {line:?}"))?;
        server.address = url
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("cannot parse the server address in {line:?}"))?;
        server.url = url.to_owned();
        Ok(server)
    }

    /// The sum of the `time_wait` counts in `GET /api/v1/hosts/{host}`.
    fn host_time_wait(&self, host: &str) -> anyhow::Result<u64> {
        let mut stream = TcpStream::connect_timeout(&self.address, START_TIMEOUT)?;
        stream.set_read_timeout(Some(START_TIMEOUT))?;
        write!(
            stream,
            "GET /api/v1/hosts/{host} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        if !head.lines().next().unwrap_or_default().contains(" 200") {
            bail!("the server answered {head:?}");
        }
        let json: serde_json::Value =
            serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?;
        let states = find_key(&json, "states").context("no \"states\" in the host")?;
        let mut total = 0;
        sum_key(states, "time_wait", &mut total);
        Ok(total)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|inner| find_key(inner, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|inner| find_key(inner, key)),
        _ => None,
    }
}

fn sum_key(value: &serde_json::Value, key: &str, total: &mut u64) {
    match value {
        serde_json::Value::Object(map) => {
            for (name, inner) in map {
                if name == key {
                    *total += inner.as_u64().unwrap_or(0);
                } else {
                    sum_key(inner, key, total);
                }
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|inner| sum_key(inner, key, total))
        }
        _ => {}
    }
}

struct Agent {
    child: Child,
    collections: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    log: PathBuf,
}

impl Agent {
    fn start(config: &StreamConfig, url: &str, netns: &str) -> anyhow::Result<Agent> {
        let mut command = Command::new(&config.agent);
        command
            .args(["--server", url, "--interval"])
            .arg(format!("{}ms", config.interval.as_millis()))
            .args([
                "--netns",
                netns,
                "--host-id",
                "bench",
                "--collector",
                "netlink",
                // One namespace, as the target is stated: every other namespace's dump walks the
                // kernel's global socket hash again (see the README).
                "--all-namespaces=false",
                "--log",
                "info,sockfleet_agent::run=debug",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", config.agent.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let collections = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let log = config.work_dir.join("agent.log");
        let mut log_file = File::create(&log).context("cannot create agent.log")?;
        let (seen, failed) = (Arc::clone(&collections), Arc::clone(&failures));
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log_file, "{line}");
                if line.contains("collection failed") {
                    failed.fetch_add(1, Ordering::Relaxed);
                } else if line.contains(" collected") && line.contains("sequence=") {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Agent {
            child,
            collections,
            failures,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn collections(&self) -> u64 {
        self.collections.load(Ordering::Relaxed)
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn exited(&self) -> Option<String> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(path).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state == 'Z' || state == 'X').then(|| "exited".to_owned())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
