//! `sockfleet-bench-alert-latency`: how long sockfleet takes to tell a webhook that a condition became
//! true on a host. The condition is one CLOSE_WAIT socket; the alert is `CloseWaitHigh` with
//! `warning = 1, fire_after = 1`; the webhook is an Alertmanager v4 receiver inside the bench.
//!
//! For each agent interval it runs a number of trials. Each trial starts a fresh `sockfleet-server`
//! (fresh SQLite database) and `sockfleet-agent`, waits for the agent's first report, waits a random
//! fraction of the interval, creates the CLOSE_WAIT socket (T0 is right after the client's close) and
//! waits for the firing notification (T1). It prints a Markdown report on stdout, with what
//! node_exporter + Prometheus + Alertmanager need for the same condition, computed from their
//! documented defaults. Progress goes to stderr.
//!
//! Exits 0 when every trial was measured within its target, 2 when a trial missed its target, timed
//! out or did not count, 1 on any other failure (for example, CLOSE_WAIT sockets that were there
//! before the bench made its own).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use chrono::{DateTime, Utc};
use clap::Parser;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The agent's `--host-id`.
const HOST_ID: &str = "bench-latency";
/// The rule the bench makes fire.
const RULE: &str = "CloseWaitHigh";
/// How long the server may take to print its address, and the agent to deliver its first report
/// (plus one interval).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one request to the server's API may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest API response read.
const MAX_RESPONSE: usize = 4 << 20;
/// How often the server's API is polled for the agent's first report.
const POLL: Duration = Duration::from_millis(50);
/// Notifications the receiver keeps until the bench reads them.
const QUEUE: usize = 256;
/// A notification has to arrive within this many intervals (plus [`TIMEOUT_SLACK`]) after T0.
const TIMEOUT_INTERVALS: u32 = 3;
const TIMEOUT_SLACK: Duration = Duration::from_secs(10);
/// The target: one interval plus this.
const TARGET_SLACK: Duration = Duration::from_secs(1);
/// How far before T0 the alert's sample may have been collected before the trial is suspect: the
/// agent stamps a collection when it starts, and the dump that saw the socket ends a little later.
const COLLECTED_BEFORE_T0_TOLERANCE: f64 = 0.05;
/// Attempts (5 ms apart) to see the bench's socket in CLOSE_WAIT in /proc/net/tcp after T0.
const CLOSE_WAIT_CHECKS: u32 = 40;
/// `st` of a CLOSE_WAIT socket in /proc/net/tcp.
const TCP_CLOSE_WAIT: u8 = 0x08;

/// Measures sockfleet's alert detection latency: from a CLOSE_WAIT socket appearing on the host to the
/// webhook receiving the firing CloseWaitHigh notification.
#[derive(Debug, Parser)]
#[command(name = "sockfleet-bench-alert-latency", version, about, long_about = None)]
struct Args {
    /// Agent collection intervals to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1s,10s",
          value_parser = sockfleet_agent::config::parse_interval)]
    intervals: Vec<Duration>,

    /// Trials per interval, each with a fresh server, database and agent.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=50))]
    trials: u16,

    /// Where sockfleet-agent and sockfleet-server are [default: this binary's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("sockfleet-bench-alert-latency: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What every trial needs.
struct Setup {
    agent: PathBuf,
    server: PathBuf,
    /// The webhook receiver's address.
    receiver: SocketAddr,
    work_dir: PathBuf,
}

/// One notification as the receiver got it.
#[derive(Debug)]
struct Delivery {
    /// The trial whose server sent it (from the URL path).
    trial: u64,
    /// When the receiver had the whole body.
    at: Instant,
    body: serde_json::Value,
}

/// One trial's outcome.
#[derive(Debug, Clone)]
struct TrialResult {
    number: u16,
    /// Fraction of the interval waited between the first report's acknowledgement and T0.
    phase: f64,
    /// T1 − T0; `None` when no notification came within the timeout.
    latency: Option<Duration>,
    /// The alert's `startsAt` (the collection time of the sample that fired it) − T0, seconds.
    collected_after: Option<f64>,
    /// T1 − `startsAt`, seconds: the server's share (ingest, rule, dispatch, delivery).
    notified_after: Option<f64>,
    /// Why the trial does not count, if it does not.
    problem: Option<String>,
}

impl TrialResult {
    fn counted(&self) -> Option<Duration> {
        self.latency.filter(|_| self.problem.is_none())
    }
}

/// All trials of one interval.
struct IntervalResult {
    interval: Duration,
    trials: Vec<TrialResult>,
}

impl IntervalResult {
    fn target(&self) -> Duration {
        self.interval + TARGET_SLACK
    }

    /// The counted latencies, sorted.
    fn latencies(&self) -> Vec<Duration> {
        let mut latencies: Vec<Duration> = self
            .trials
            .iter()
            .filter_map(TrialResult::counted)
            .collect();
        latencies.sort_unstable();
        latencies
    }

    /// Every trial counted and none above the target.
    fn passed(&self) -> bool {
        let latencies = self.latencies();
        latencies.len() == self.trials.len()
            && latencies.last().is_some_and(|max| *max <= self.target())
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let mut intervals = args.intervals.clone();
    intervals.dedup();
    if intervals.is_empty() {
        bail!("--intervals names no interval");
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary's path")?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let agent = existing(&bin_dir.join("sockfleet-agent"))?;
    let server = existing(&bin_dir.join("sockfleet-server"))?;

    let present = close_wait_sockets().context("cannot read /proc/net/tcp")?;
    if !present.is_empty() {
        bail!(
            "this machine (the bench's network namespace) already has {} CLOSE_WAIT socket(s): {}. \
             They would fire {RULE} before the bench's own socket does, so nothing could be measured. \
             Close them (`ss -tanp state close-wait` shows their owners), or run the bench in a \
             network namespace of its own: \
             unshare --net sh -c 'ip link set lo up && exec {}'",
            present.len(),
            present.join(", "),
            std::env::current_exe().map_or_else(
                |_| "sockfleet-bench-alert-latency".to_owned(),
                |path| path.display().to_string()
            ),
        );
    }

    let work_dir = std::env::temp_dir().join(format!(
        "sockfleet-bench-alert-latency-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;

    let (sender, mut receiver) = mpsc::channel(QUEUE);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot bind the webhook receiver")?;
    let receiver_address = listener.local_addr()?;
    let app = Router::new()
        .route("/hook/{trial}", post(hook))
        .with_state(sender);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("webhook receiver stopped: {error}");
        }
    });
    let setup = Setup {
        agent,
        server,
        receiver: receiver_address,
        work_dir: work_dir.clone(),
    };

    let machine = Machine::probe();
    eprintln!(
        "machine: {} CPUs, Linux {}, {}; webhook receiver on {receiver_address}",
        machine.nproc, machine.kernel, machine.cpu_model
    );
    let started = Instant::now();
    let mut results = Vec::new();
    let mut trial_id = 0_u64;
    for &interval in &intervals {
        let mut trials = Vec::new();
        for number in 1..=args.trials {
            trial_id += 1;
            let result = run_trial(&setup, &mut receiver, interval, number, trial_id)
                .await
                .with_context(|| {
                    format!(
                        "interval {}, trial {number} (logs in {})",
                        show_interval(interval),
                        work_dir.display()
                    )
                })?;
            eprintln!(
                "[{}] trial {number}/{}: {}",
                show_interval(interval),
                args.trials,
                describe(&result)
            );
            trials.push(result);
        }
        results.push(IntervalResult { interval, trials });
    }

    println!("{}", render(&machine, &results, started.elapsed()));
    let passed = results.iter().all(IntervalResult::passed);
    if passed {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        eprintln!(
            "some trials did not count or missed the target; their logs are in {}",
            work_dir.display()
        );
    }
    Ok(passed)
}

/// The webhook receiver: notes when each notification arrived.
async fn hook(
    State(sender): State<mpsc::Sender<Delivery>>,
    UrlPath(trial): UrlPath<u64>,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    // A full queue only loses notifications the bench would not look at.
    let _ = sender.try_send(Delivery { trial, at, body });
    StatusCode::OK
}

/// One trial with a fresh server and agent; an `Err` stops the whole bench.
async fn run_trial(
    setup: &Setup,
    receiver: &mut mpsc::Receiver<Delivery>,
    interval: Duration,
    number: u16,
    trial_id: u64,
) -> anyhow::Result<TrialResult> {
    let dir = setup
        .work_dir
        .join(format!("{}-trial-{number}", show_interval(interval)));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("server.toml");
    std::fs::write(&config, server_config(setup.receiver, trial_id))
        .with_context(|| format!("cannot write {}", config.display()))?;
    // Whatever earlier trials' servers sent is of no interest any more.
    while receiver.try_recv().is_ok() {}

    let server = Server::start(&setup.server, &dir, &config).await?;
    let agent = start_agent(&setup.agent, &server.url, interval, &dir)?;
    let result = measure(&server, &agent, receiver, interval, number, trial_id).await;
    agent.stop().await;
    server.process.stop().await;
    let result = result?;
    if result.counted().is_some() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(result)
}

/// The server's configuration: CloseWaitHigh at one socket, first sample; one Alertmanager webhook.
fn server_config(receiver: SocketAddr, trial_id: u64) -> String {
    format!(
        "[alerts.rules.{RULE}]\n\
         warning = 1\n\
         critical = 100000\n\
         fire_after = 1\n\
         \n\
         [[webhooks]]\n\
         name = \"bench\"\n\
         url = \"http://{receiver}/hook/{trial_id}\"\n"
    )
}

async fn measure(
    server: &Server,
    agent: &Process,
    receiver: &mut mpsc::Receiver<Delivery>,
    interval: Duration,
    number: u16,
    trial_id: u64,
) -> anyhow::Result<TrialResult> {
    wait_for_first_report(server, agent, interval).await?;
    let mut pair = ConnectedPair::new()?;
    let phase = rand::rng().random_range(0.0..1.0);
    tokio::time::sleep(interval.mul_f64(phase)).await;
    ensure_quiet(server, receiver, trial_id).await?;

    let (t0, t0_wall) = pair.close_client();
    pair.check_close_wait().await?;
    let mut result = TrialResult {
        number,
        phase,
        latency: None,
        collected_after: None,
        notified_after: None,
        problem: None,
    };
    let deadline = t0 + interval * TIMEOUT_INTERVALS + TIMEOUT_SLACK;
    let (t1, starts_at) = loop {
        match tokio::time::timeout_at(deadline.into(), receiver.recv()).await {
            Err(_) => {
                result.problem = Some(format!(
                    "no firing {RULE} notification within {:.0} s",
                    (deadline - t0).as_secs_f64()
                ));
                return Ok(result);
            }
            Ok(None) => bail!("the webhook receiver stopped"),
            Ok(Some(delivery)) if delivery.trial == trial_id => {
                if let Some(starts_at) = firing(&delivery.body) {
                    break (delivery.at, starts_at);
                }
            }
            Ok(Some(_)) => {}
        }
    };
    let latency = t1.saturating_duration_since(t0);
    result.latency = Some(latency);
    if let Some(starts_at) = starts_at {
        let collected_after = seconds_between(t0_wall, starts_at);
        result.collected_after = Some(collected_after);
        result.notified_after = Some(latency.as_secs_f64() - collected_after);
        if collected_after < -COLLECTED_BEFORE_T0_TOLERANCE {
            result.problem = Some(format!(
                "the alert's sample was collected {:.3} s before T0",
                -collected_after
            ));
        }
    }
    // The alert's value is the host's CLOSE_WAIT count: anything but 1 means another socket counted.
    match firing_value(server).await {
        Ok(Some(value)) if value != 1.0 && result.problem.is_none() => {
            result.problem = Some(format!(
                "the alert counted {value} CLOSE_WAIT sockets, not only the bench's"
            ));
        }
        Ok(_) => {}
        Err(error) => eprintln!("cannot read the alert back: {error:#}"),
    }
    drop(pair);
    Ok(result)
}

/// Polls `GET /api/v1/hosts` until the agent's host is there with `last_seen` set.
async fn wait_for_first_report(
    server: &Server,
    agent: &Process,
    interval: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT + interval;
    while Instant::now() < deadline {
        if let Some(status) = agent.exited() {
            bail!(
                "sockfleet-agent exited ({status}) before its first report:\n{}",
                agent.log_tail()
            );
        }
        let hosts = api_get(server.address, "/api/v1/hosts").await?;
        let reported = hosts["hosts"].as_array().is_some_and(|hosts| {
            hosts
                .iter()
                .any(|host| host["host_id"] == HOST_ID && !host["last_seen"].is_null())
        });
        if reported {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
    bail!(
        "the server had no report from {HOST_ID} within {:?}; agent log:\n{}",
        START_TIMEOUT + interval,
        agent.log_tail()
    )
}

/// Fails, explaining why, if CloseWaitHigh already fires for the host before the bench made its
/// socket.
async fn ensure_quiet(
    server: &Server,
    receiver: &mut mpsc::Receiver<Delivery>,
    trial_id: u64,
) -> anyhow::Result<()> {
    let mut notified = false;
    while let Ok(delivery) = receiver.try_recv() {
        notified |= delivery.trial == trial_id && firing(&delivery.body).is_some();
    }
    let alerts = api_get(
        server.address,
        &format!("/api/v1/alerts?state=firing&host={HOST_ID}"),
    )
    .await?;
    let alerts = alerts["alerts"].as_array().cloned().unwrap_or_default();
    let count = alerts
        .iter()
        .filter(|alert| alert["labels"]["alertname"] == RULE || alert["rule"] == RULE)
        .find_map(|alert| alert["value"].as_f64());
    if notified || count.is_some() {
        bail!(
            "{RULE} already fires for {HOST_ID} before the bench created its CLOSE_WAIT socket \
             ({} CLOSE_WAIT socket(s) on the host): this machine (the bench's network namespace) \
             has CLOSE_WAIT sockets of its own, which would make every measurement meaningless. \
             Close them (`ss -tanp state close-wait` shows their owners), or run the bench in a \
             network namespace of its own: unshare --net sh -c 'ip link set lo up && exec …'",
            count.map_or_else(|| "some".to_owned(), |count| count.to_string())
        );
    }
    Ok(())
}

/// The value of the host's firing CloseWaitHigh alert, if one fires.
async fn firing_value(server: &Server) -> anyhow::Result<Option<f64>> {
    let alerts = api_get(
        server.address,
        &format!("/api/v1/alerts?state=firing&host={HOST_ID}&alertname={RULE}"),
    )
    .await?;
    Ok(alerts["alerts"]
        .as_array()
        .and_then(|alerts| alerts.first())
        .and_then(|alert| alert["value"].as_f64()))
}

/// If the Alertmanager body notifies a firing CloseWaitHigh of the bench's host: `Some` with its
/// `startsAt`, when that parses.
fn firing(body: &serde_json::Value) -> Option<Option<DateTime<Utc>>> {
    body["alerts"].as_array()?.iter().find_map(|alert| {
        (alert["status"] == "firing"
            && alert["labels"]["alertname"] == RULE
            && alert["labels"]["host"] == HOST_ID)
            .then(|| {
                alert["startsAt"]
                    .as_str()
                    .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                    .map(|at| at.with_timezone(&Utc))
            })
    })
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(f64::NAN, |micros| micros as f64 / 1e6)
}

/// A connection on loopback whose client side the bench closes, leaving the accepted side in
/// CLOSE_WAIT for as long as the pair lives.
struct ConnectedPair {
    client: Option<TcpStream>,
    client_address: SocketAddr,
    /// Held open: this is the CLOSE_WAIT socket.
    accepted: TcpStream,
}

impl ConnectedPair {
    fn new() -> anyhow::Result<ConnectedPair> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a listener")?;
        let client =
            TcpStream::connect(listener.local_addr()?).context("cannot connect on loopback")?;
        let client_address = client.local_addr()?;
        // The handshake is done: accept returns at once.
        let (accepted, _) = listener.accept().context("cannot accept on loopback")?;
        Ok(ConnectedPair {
            client: Some(client),
            client_address,
            accepted,
        })
    }

    /// Closes the client side; returns T0 (monotonic and wall clock).
    fn close_client(&mut self) -> (Instant, DateTime<Utc>) {
        drop(self.client.take());
        (Instant::now(), Utc::now())
    }

    /// Checks in /proc/net/tcp that the accepted side is in CLOSE_WAIT.
    async fn check_close_wait(&self) -> anyhow::Result<()> {
        let local = self.accepted.local_addr()?;
        for _ in 0..CLOSE_WAIT_CHECKS {
            let sockets = proc_net_tcp().context("cannot read /proc/net/tcp")?;
            let found = sockets.iter().any(|socket| {
                socket.local == local
                    && socket.remote == self.client_address
                    && socket.state == TCP_CLOSE_WAIT
            });
            if found {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("the accepted socket {local} did not reach CLOSE_WAIT after the client closed")
    }
}

/// One line of /proc/net/tcp or /proc/net/tcp6.
struct ProcSocket {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
}

fn proc_net_tcp() -> anyhow::Result<Vec<ProcSocket>> {
    let mut sockets = Vec::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).with_context(|| format!("cannot read {file}")),
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state)) = (
                fields.get(1).and_then(|field| proc_address(field)),
                fields.get(2).and_then(|field| proc_address(field)),
                fields
                    .get(3)
                    .and_then(|field| u8::from_str_radix(field, 16).ok()),
            ) else {
                continue;
            };
            sockets.push(ProcSocket {
                local,
                remote,
                state,
            });
        }
    }
    Ok(sockets)
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the address as the kernel's 32-bit
/// words in host byte order.
fn proc_address(field: &str) -> Option<SocketAddr> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for index in (0..address.len()).step_by(8) {
        let word = u32::from_str_radix(address.get(index..index + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The CLOSE_WAIT sockets of the bench's network namespace, as `local -> remote`.
fn close_wait_sockets() -> anyhow::Result<Vec<String>> {
    Ok(proc_net_tcp()?
        .into_iter()
        .filter(|socket| socket.state == TCP_CLOSE_WAIT)
        .map(|socket| format!("{} -> {}", socket.local, socket.remote))
        .collect())
}

/// `GET path` on the server's HTTP API; the JSON body of a 200 answer.
async fn api_get(address: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let response = tokio::time::timeout(HTTP_TIMEOUT, http_get(address, path))
        .await
        .with_context(|| format!("GET {path}: no answer within {HTTP_TIMEOUT:?}"))?
        .with_context(|| format!("GET {path}"))?;
    let (head, body) = response;
    if !head.lines().next().unwrap_or_default().contains(" 200") {
        bail!("GET {path}: the server answered {head:?}");
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("GET {path}: not JSON: {}", String::from_utf8_lossy(&body)))
}

/// One HTTP/1.1 request; the response head and body. It stops reading, and closes, as soon as the
/// body is complete, so the bench's end of the connection is not left half-closed (in CLOSE_WAIT)
/// for longer than it takes to notice.
async fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(response) = complete_response(&buffer, read == 0)? {
            return Ok(response);
        }
        if read == 0 {
            bail!("the connection closed before the response was complete");
        }
        if buffer.len() > MAX_RESPONSE {
            bail!("the response is larger than {MAX_RESPONSE} bytes");
        }
    }
}

/// The head and body once `buffer` holds a whole response (by `Content-Length`, a chunked body's last
/// chunk, or the end of the stream).
fn complete_response(buffer: &[u8], ended: bool) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let Some(split) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buffer[..split]).into_owned();
    let body = &buffer[split + 4..];
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("bad Content-Length {length:?}"))?;
        return Ok((body.len() >= length).then(|| (head.clone(), body[..length].to_vec())));
    }
    if header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        return Ok(dechunk(body).map(|body| (head.clone(), body)));
    }
    Ok(ended.then(|| (head.clone(), body.to_vec())))
}

/// A chunked body, once its last chunk is there.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    // Every pass consumes at least the size line, so this ends.
    loop {
        let line_end = body.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// A child process: the server or the agent.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        command: &mut Command,
        log: PathBuf,
        stdout: Stdio,
    ) -> anyhow::Result<Process> {
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        // Settings of the caller's environment must not change what is measured.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("SOCKFLEET_")
                || key_text.to_ascii_lowercase().ends_with("_proxy")
            {
                command.env_remove(&key);
            }
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The main future
        // (on the main thread, which lives as long as the process) spawns every child, so "parent
        // thread died" means the bench died.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process { name, child, log })
    }

    /// `Some` with how it ended, once it has.
    fn exited(&self) -> Option<String> {
        let path = format!("/proc/{}/stat", self.child.id()?);
        let stat = std::fs::read_to_string(path).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state == 'Z' || state == 'X').then(|| "exited".to_owned())
    }

    /// SIGTERM, then waits; SIGKILL if it has not exited after [`STOP_TIMEOUT`].
    async fn stop(mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
        {
            // SAFETY: kill takes no pointers; `pid` is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() || status.signal() == Some(libc::SIGTERM) => {}
            Ok(Ok(status)) => eprintln!("{} ended with {status} after SIGTERM", self.name),
            Ok(Err(error)) => eprintln!("cannot wait for {}: {error}", self.name),
            Err(_) => {
                eprintln!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it",
                    self.name
                );
                let _ = self.child.kill().await;
            }
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

struct Server {
    process: Process,
    url: String,
    address: SocketAddr,
}

impl Server {
    async fn start(binary: &Path, dir: &Path, config: &Path) -> anyhow::Result<Server> {
        let database = dir.join("db.sqlite");
        let mut command = Command::new(binary);
        command
            .args(["--listen", "127.0.0.1:0", "--database-url"])
            .arg(format!("sqlite://{}", database.display()))
            .arg("--config")
            .arg(config);
        let mut process = Process::spawn(
            "sockfleet-server",
            &mut command,
            dir.join("server.log"),
            Stdio::piped(),
        )?;
        let stdout = process.child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => {
                let log = process.log_tail();
                process.stop().await;
                bail!(
                    "sockfleet-server did not print its address within {START_TIMEOUT:?}:\n{log}"
                );
            }
        };
        // Keep draining so the server never blocks on a full pipe; ends with the process.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let Some(url) = line.strip_prefix("sockfleet-server listening on ") else {
            process.stop().await;
            bail!("unexpected first line from sockfleet-server: {line:?}");
        };
        let url = url.trim().to_owned();
        let address = match url.trim_start_matches("http://").parse() {
            Ok(address) => address,
            Err(error) => {
                process.stop().await;
                bail!("cannot parse the server address in {line:?}: {error}");
            }
        };
        Ok(Server {
            process,
            url,
            address,
        })
    }
}

fn start_agent(
    binary: &Path,
    server_url: &str,
    interval: Duration,
    dir: &Path,
) -> anyhow::Result<Process> {
    let mut command = Command::new(binary);
    command
        .args(["--server", server_url, "--interval"])
        .arg(show_interval(interval))
        .args(["--host-id", HOST_ID, "--all-namespaces=false"]);
    Process::spawn(
        "sockfleet-agent",
        &mut command,
        dir.join("agent.log"),
        Stdio::null(),
    )
}

fn existing(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        bail!(
            "{} not found; build it first: cargo build --release -p sockfleet-server \
             -p sockfleet-agent -p sockfleet-bench (or pass --bin-dir)",
            path.display()
        )
    }
}

/// What the bench ran on.
struct Machine {
    nproc: String,
    kernel: String,
    cpu_model: String,
}

impl Machine {
    fn probe() -> Machine {
        let nproc = command_line("nproc", &[]).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or_else(|_| "?".into(), |n| n.to_string())
        });
        let kernel = command_line("uname", &["-r"]).unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".into(), |text| text.trim().to_owned())
        });
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            nproc,
            kernel,
            cpu_model,
        }
    }
}

/// The first line of a short command's output.
fn command_line(program: &str, arguments: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim();
    (output.status.success() && !line.is_empty()).then(|| line.to_owned())
}

/// `1s`, `10s`, `500ms`: as the agent's `--interval` takes it.
fn show_interval(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}s", interval.as_secs())
    } else {
        format!("{}ms", interval.as_millis())
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn describe(result: &TrialResult) -> String {
    let mut text = format!("waited {:.2} of the interval; ", result.phase);
    match result.latency {
        Some(latency) => {
            let _ = write!(text, "latency {}", seconds(latency));
            if let (Some(collected), Some(notified)) =
                (result.collected_after, result.notified_after)
            {
                let _ = write!(
                    text,
                    " (collected at T0 {collected:+.2} s, notified {notified:.2} s later)"
                );
            }
        }
        None => text.push_str("no notification"),
    }
    if let Some(problem) = &result.problem {
        let _ = write!(text, "; DOES NOT COUNT: {problem}");
    }
    text
}

fn median(sorted: &[Duration]) -> Option<Duration> {
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2),
    }
}

/// The documented defaults of node_exporter + Prometheus + Alertmanager, in seconds.
const PROMETHEUS_SCRAPE_INTERVAL: f64 = 60.0;
const PROMETHEUS_EVALUATION_INTERVAL: f64 = 60.0;
const ALERTMANAGER_GROUP_WAIT: f64 = 30.0;
/// The longest `for:` usually seen on such a rule.
const TYPICAL_MAX_FOR: f64 = 300.0;

/// (best, mean, worst) seconds from the condition to Alertmanager's notification, for a rule with
/// `for: for_seconds`: the next scrape (0–60 s), the next evaluation after it (0–60 s), `for:` (whole
/// evaluation intervals after the first that saw it), then `group_wait` for a new group.
fn prometheus_latency(for_seconds: f64) -> (f64, f64, f64) {
    let best = for_seconds + ALERTMANAGER_GROUP_WAIT;
    let mean = PROMETHEUS_SCRAPE_INTERVAL / 2.0
        + PROMETHEUS_EVALUATION_INTERVAL / 2.0
        + for_seconds
        + ALERTMANAGER_GROUP_WAIT;
    let worst = PROMETHEUS_SCRAPE_INTERVAL
        + PROMETHEUS_EVALUATION_INTERVAL
        + for_seconds
        + ALERTMANAGER_GROUP_WAIT;
    (best, mean, worst)
}

fn render(machine: &Machine, results: &[IntervalResult], elapsed: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# sockfleet alert detection latency\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs (`nproc`), Linux {} (`uname -r`), {}. Run took {:.0} s.\n",
        machine.nproc,
        machine.kernel,
        machine.cpu_model,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Latency: from the client's `close()` on loopback (its accepted peer, held open by the bench, is \
         then in CLOSE_WAIT) to the bench's webhook receiving the firing `{RULE}` notification for \
         `{HOST_ID}` (Alertmanager v4 body). Server: `[alerts.rules.{RULE}] warning = 1, fire_after = \
         1`, one webhook with the default grouping (`group_wait` 0s). Agent: `--all-namespaces=false`. \
         Each trial has a fresh server, SQLite database and agent, and creates the socket a random \
         fraction of the interval after the agent's first report.\n"
    );

    let _ = writeln!(out, "## Trials\n");
    let _ = writeln!(
        out,
        "| interval | trial | wait after 1st report | latency | sample collected at | webhook after sample | note |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for result in results {
        for trial in &result.trials {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} × interval | {} | {} | {} | {} |",
                show_interval(result.interval),
                trial.number,
                trial.phase,
                trial.latency.map_or_else(|| "—".to_owned(), seconds),
                trial
                    .collected_after
                    .map_or_else(|| "—".to_owned(), |s| format!("T0 {s:+.2} s")),
                trial
                    .notified_after
                    .map_or_else(|| "—".to_owned(), |s| format!("{s:.2} s")),
                trial.problem.as_deref().unwrap_or(""),
            );
        }
    }

    let _ = writeln!(out, "\n## Summary\n");
    let _ = writeln!(
        out,
        "| agent interval | trials counted | min | median | max | target (≤ 1 interval + 1 s) | result |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for result in results {
        let latencies = result.latencies();
        let show = |value: Option<Duration>| value.map_or_else(|| "—".to_owned(), seconds);
        let _ = writeln!(
            out,
            "| {} | {}/{} | {} | {} | {} | ≤ {} | {} |",
            show_interval(result.interval),
            latencies.len(),
            result.trials.len(),
            show(latencies.first().copied()),
            show(median(&latencies)),
            show(latencies.last().copied()),
            seconds(result.target()),
            if result.passed() { "pass" } else { "**fail**" },
        );
    }

    let _ = writeln!(
        out,
        "\n## For comparison: node_exporter + Prometheus + Alertmanager\n"
    );
    let _ = writeln!(
        out,
        "Computed from their documented defaults, not measured. node_exporter's default collectors \
         have no CLOSE_WAIT metric at all (`node_sockstat_TCP_*` counts sockets in use, orphans, \
         TIME_WAIT and memory only), so with defaults the condition is never detected. Its `tcpstat` \
         collector exposes `node_tcp_connection_states{{state=\"close_wait\"}}` but is off by default \
         (`--collector.tcpstat`). With it on and a rule such as \
         `node_tcp_connection_states{{state=\"close_wait\"}} >= 1`:\n"
    );
    let (best0, mean0, worst0) = prometheus_latency(0.0);
    let (best5, mean5, worst5) = prometheus_latency(TYPICAL_MAX_FOR);
    let _ = writeln!(
        out,
        "| stage | documented default | best | mean | worst |\n\
         |---|---|---:|---:|---:|\n\
         | next scrape sees the socket | `scrape_interval` 1m | 0 s | {:.0} s | {:.0} s |\n\
         | next rule evaluation sees the sample | `evaluation_interval` 1m | 0 s | {:.0} s | {:.0} s |\n\
         | rule holds for `for:` | 0 (typically 0–5m) | 0 s | 0 s | 0 s |\n\
         | Alertmanager waits for the new group | `group_wait` 30s | {:.0} s | {:.0} s | {:.0} s |\n\
         | **total, `for: 0`** | | **{best0:.0} s** | **{mean0:.0} s** | **{worst0:.0} s** |\n\
         | total, `for: 5m` | | {best5:.0} s | {mean5:.0} s | {worst5:.0} s |\n",
        PROMETHEUS_SCRAPE_INTERVAL / 2.0,
        PROMETHEUS_SCRAPE_INTERVAL,
        PROMETHEUS_EVALUATION_INTERVAL / 2.0,
        PROMETHEUS_EVALUATION_INTERVAL,
        ALERTMANAGER_GROUP_WAIT,
        ALERTMANAGER_GROUP_WAIT,
        ALERTMANAGER_GROUP_WAIT,
    );
    let _ = writeln!(out, "Side by side, condition → webhook:\n");
    let _ = writeln!(
        out,
        "| system | how | min / best | median / mean | max / worst |\n|---|---|---:|---:|---:|"
    );
    for result in results {
        let latencies = result.latencies();
        let show = |value: Option<Duration>| value.map_or_else(|| "—".to_owned(), seconds);
        let _ = writeln!(
            out,
            "| sockfleet, agent `--interval {}` | measured, {} trials | {} | {} | {} |",
            show_interval(result.interval),
            latencies.len(),
            show(latencies.first().copied()),
            show(median(&latencies)),
            show(latencies.last().copied()),
        );
    }
    let _ = writeln!(
        out,
        "| node_exporter (default collectors) + Prometheus + Alertmanager | no CLOSE_WAIT metric | never | never | never |\n\
         | node_exporter `--collector.tcpstat` + Prometheus + Alertmanager, `for: 0` | computed from defaults | {best0:.0} s | {mean0:.0} s | {worst0:.0} s |\n\
         | the same, `for: 5m` | computed from defaults | {best5:.0} s | {mean5:.0} s | {worst5:.0} s |"
    );
    out
}
