//! Accuracy: `sockfleet-agent --once` reports exactly what `ss -tan` shows, per family and state.
//!
//! Each test runs on a thread of its own inside a fresh network namespace (`unshare(CLONE_NEWNET)`),
//! and every process it starts (`ip`, `ss`, the agent) inherits that namespace. The only sockets there
//! are the ones the test makes, on 127.0.0.1 and ::1, so the counts are exact even while other tests
//! run. The test needs root (CAP_SYS_ADMIN); without it, it fails rather than skips.

use std::ffi::OsStr;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sockfleet_domain::{Family, FamilyCounts, StateCounts, TcpState};

const AGENT: &str = env!("CARGO_BIN_EXE_sockfleet-agent");
/// How long the kernel gets to finish the closing handshakes the test starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one command (`ip`, `ss`, the agent) may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer of the listener whose connections never read, so their window closes at once.
const TINY_RECEIVE_BUFFER: libc::c_int = 4096;

#[test]
fn netlink_collector_matches_ss() {
    in_fresh_network_namespace(|| check_collector("netlink"));
}

#[test]
fn procfs_collector_matches_ss() {
    in_fresh_network_namespace(|| check_collector("procfs"));
}

/// The sockets made on one loopback address. Every number differs from the others, and between the
/// families, so that a state or family mix-up changes the totals.
struct Plan {
    loopback: IpAddr,
    /// Listeners besides the two every family gets (one for most pairs, one with a tiny window).
    idle_listeners: usize,
    /// Connected pairs left alone: two ESTABLISHED sockets each.
    established_pairs: usize,
    /// Connections closed by the client first: the client side stays in TIME_WAIT.
    time_wait: usize,
    /// Connections whose client shut down its sending side: client FIN_WAIT2, server CLOSE_WAIT.
    half_closed_pairs: usize,
    /// Clients that shut down with data the peer never reads queued in front of their FIN: the FIN is
    /// never acknowledged, so the client stays in FIN_WAIT1 and the server in ESTABLISHED.
    stuck_fin: usize,
}

const IPV4_PLAN: Plan = Plan {
    loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
    idle_listeners: 1,
    established_pairs: 5,
    time_wait: 4,
    half_closed_pairs: 6,
    stuck_fin: 2,
};

const IPV6_PLAN: Plan = Plan {
    loopback: IpAddr::V6(Ipv6Addr::LOCALHOST),
    idle_listeners: 2,
    established_pairs: 7,
    time_wait: 3,
    half_closed_pairs: 8,
    stuck_fin: 1,
};

/// IPv4 clients of a dual-stack `[::]` listener: the client is an AF_INET socket, the accepted one an
/// AF_INET6 socket with a v4-mapped address, which `ss` shows under IPv6.
const MAPPED_PAIRS: usize = 2;

/// Everything the test opened; the sockets stay in their states while this lives.
#[derive(Default)]
struct Held {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
}

fn check_collector(collector: &str) {
    let baseline_ss = ss_counts();
    let baseline_agent = agent_counts(collector);
    assert_eq!(
        show(&baseline_agent),
        show(&baseline_ss),
        "--collector {collector} disagrees with ss in the empty namespace"
    );

    let mut held = Held::default();
    let mut expected = FamilyCounts::default();
    for (family, plan) in [(Family::Ipv4, &IPV4_PLAN), (Family::Ipv6, &IPV6_PLAN)] {
        open_sockets(plan, &mut held, expected.family_mut(family));
    }
    open_mapped_pairs(&mut held, &mut expected);

    let target = plus(&baseline_ss, &expected);
    wait_until_settled(&target);

    let ss_before = ss_counts();
    let agent = agent_counts(collector);
    let ss_after = ss_counts();
    assert_eq!(
        show(&ss_before),
        show(&ss_after),
        "ss changed while the agent ran, though nothing in the namespace should move"
    );
    assert_eq!(
        show(&agent),
        show(&ss_before),
        "sockfleet-agent --collector {collector} disagrees with ss -tan"
    );
    assert_eq!(
        show(&ss_before),
        show(&target),
        "ss did not move from its baseline by exactly the sockets the test made"
    );
    assert_eq!(
        show(&agent),
        show(&plus(&baseline_agent, &expected)),
        "--collector {collector} did not move from its baseline by exactly the sockets the test made"
    );
    drop(held);
}

fn open_sockets(plan: &Plan, held: &mut Held, expected: &mut StateCounts) {
    let any_port = SocketAddr::new(plan.loopback, 0);
    let bind = || {
        TcpListener::bind(any_port)
            .unwrap_or_else(|error| panic!("cannot listen on {any_port}: {error}"))
    };
    let main = bind();
    let tiny_window = bind();
    set_receive_buffer(&tiny_window, TINY_RECEIVE_BUFFER);
    add(expected, TcpState::Listen, 2);
    for _ in 0..plan.idle_listeners {
        held.listeners.push(bind());
        add(expected, TcpState::Listen, 1);
    }

    for _ in 0..plan.established_pairs {
        let (client, server) = connect_pair(&main, plan.loopback);
        held.streams.extend([client, server]);
        add(expected, TcpState::Established, 2);
    }

    for _ in 0..plan.time_wait {
        let (client, mut server) = connect_pair(&main, plan.loopback);
        drop(client);
        server
            .set_read_timeout(Some(SETTLE_TIMEOUT))
            .unwrap_or_else(|error| panic!("cannot set a read timeout: {error}"));
        let mut byte = [0u8; 1];
        let read = server
            .read(&mut byte)
            .unwrap_or_else(|error| panic!("the server never saw the client's FIN: {error}"));
        assert_eq!(read, 0, "the client sent data before closing");
        drop(server);
        add(expected, TcpState::TimeWait, 1);
    }

    for _ in 0..plan.half_closed_pairs {
        let (client, server) = connect_pair(&main, plan.loopback);
        client
            .shutdown(Shutdown::Write)
            .unwrap_or_else(|error| panic!("cannot shut down the client's sending side: {error}"));
        held.streams.extend([client, server]);
        add(expected, TcpState::FinWait2, 1);
        add(expected, TcpState::CloseWait, 1);
    }

    for _ in 0..plan.stuck_fin {
        let (mut client, server) = connect_pair(&tiny_window, plan.loopback);
        fill_until_stalled(&mut client);
        client
            .shutdown(Shutdown::Write)
            .unwrap_or_else(|error| panic!("cannot shut down the stalled client: {error}"));
        held.streams.extend([client, server]);
        add(expected, TcpState::FinWait1, 1);
        add(expected, TcpState::Established, 1);
    }

    held.listeners.extend([main, tiny_window]);
}

fn open_mapped_pairs(held: &mut Held, expected: &mut FamilyCounts) {
    let dual_stack = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))
        .unwrap_or_else(|error| panic!("cannot listen on [::]: {error}"));
    expected.ipv6.increment(TcpState::Listen);
    for _ in 0..MAPPED_PAIRS {
        let (client, server) = connect_pair(&dual_stack, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(
            server.local_addr().is_ok_and(|local| local.is_ipv6()),
            "the dual-stack listener accepted a connection that is not AF_INET6"
        );
        held.streams.extend([client, server]);
        expected.ipv4.increment(TcpState::Established);
        expected.ipv6.increment(TcpState::Established);
    }
    held.listeners.push(dual_stack);
}

/// Connects to `listener` on `address` and accepts; returns (client, server).
fn connect_pair(listener: &TcpListener, address: IpAddr) -> (TcpStream, TcpStream) {
    let port = listener
        .local_addr()
        .unwrap_or_else(|error| panic!("listener without an address: {error}"))
        .port();
    let target = SocketAddr::new(address, port);
    let client = TcpStream::connect_timeout(&target, SETTLE_TIMEOUT)
        .unwrap_or_else(|error| panic!("cannot connect to {target}: {error}"));
    let (server, _) = listener
        .accept()
        .unwrap_or_else(|error| panic!("cannot accept on {target}: {error}"));
    (client, server)
}

/// Writes until the peer's window is closed and the send queue is full, so that data nobody will
/// read sits in front of any FIN queued later.
fn fill_until_stalled(client: &mut TcpStream) {
    client
        .set_nonblocking(true)
        .unwrap_or_else(|error| panic!("cannot make the client non-blocking: {error}"));
    let chunk = [0x5a_u8; 64 * 1024];
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 {
        assert!(
            Instant::now() < deadline,
            "the peer kept accepting data for {SETTLE_TIMEOUT:?}; its window never closed"
        );
        let mut written = 0;
        loop {
            match client.write(&chunk) {
                Ok(count) => written += count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => panic!("cannot fill the send queue: {error}"),
            }
        }
        quiet_rounds = if written == 0 { quiet_rounds + 1 } else { 0 };
        thread::sleep(Duration::from_millis(20));
    }
}

fn set_receive_buffer(listener: &TcpListener, bytes: libc::c_int) {
    let length = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: the value is a live c_int of `length` bytes for the call; the descriptor is the
    // listener's, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&bytes).cast(),
            length,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
}

fn add(counts: &mut StateCounts, state: TcpState, more: u64) {
    counts.set(state, counts.get(state) + more);
}

fn plus(left: &FamilyCounts, right: &FamilyCounts) -> FamilyCounts {
    FamilyCounts {
        ipv4: left.ipv4.plus(&right.ipv4),
        ipv6: left.ipv6.plus(&right.ipv6),
    }
}

/// The counts as JSON with state names, so a failed comparison says which state differs.
fn show(counts: &FamilyCounts) -> String {
    serde_json::to_string(counts).unwrap_or_else(|error| format!("{counts:?} ({error})"))
}

/// Polls `ss` until it shows `target`: closing handshakes finish on the kernel's time, not ours.
fn wait_until_settled(target: &FamilyCounts) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = ss_counts();
        if now == *target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sockets did not reach their states within {SETTLE_TIMEOUT:?}:\n  ss shows {}\n  expected {}",
            show(&now),
            show(target)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `ss -tan` per family, counted by its State column.
fn ss_counts() -> FamilyCounts {
    FamilyCounts {
        ipv4: parse_ss(&run(Command::new("ss").args(["-tan", "-4"]))),
        ipv6: parse_ss(&run(Command::new("ss").args(["-tan", "-6"]))),
    }
}

fn parse_ss(output: &str) -> StateCounts {
    let mut counts = StateCounts::default();
    for line in output.lines().skip(1) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        // ss names TCP_CLOSE "UNCONN"; the other names are its usual spellings (ESTAB, TIME-WAIT).
        let state = match name {
            "UNCONN" => TcpState::Close,
            other => TcpState::from_name(other)
                .unwrap_or_else(|| panic!("unknown state {other:?} in ss output:\n{output}")),
        };
        counts.increment(state);
    }
    counts
}

/// The state counts of one `sockfleet-agent --once` run with the given collector.
fn agent_counts(collector: &str) -> FamilyCounts {
    let mut command = Command::new(AGENT);
    command.args([
        "--once",
        "--host-id",
        "accuracy-test",
        "--collector",
        collector,
    ]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SOCKFLEET_") {
            command.env_remove(&name);
        }
    }
    let output = run(&mut command);
    let snapshot: serde_json::Value = serde_json::from_str(&output)
        .unwrap_or_else(|error| panic!("the agent printed no JSON ({error}):\n{output}"));
    assert_eq!(
        snapshot["collector"].as_str(),
        Some(collector),
        "the agent used another collector:\n{output}"
    );
    assert_eq!(
        snapshot["host_id"].as_str(),
        Some("accuracy-test"),
        "{output}"
    );
    serde_json::from_value(snapshot["states"].clone()).unwrap_or_else(|error| {
        panic!("no per-family state counts in the snapshot ({error}):\n{output}")
    })
}

/// Runs `command` to completion within [`COMMAND_TIMEOUT`] and returns its standard output; fails
/// the test if it cannot start, runs too long or exits unsuccessfully.
fn run(command: &mut Command) -> String {
    let shown = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {shown}: {error}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} did not finish within {COMMAND_TIMEOUT:?}");
            }
            Err(error) => panic!("cannot wait for {shown}: {error}"),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success(),
        "{shown} failed ({status}):\n{stderr}{stdout}"
    );
    stdout
}

/// Reads a child's pipe to the end on a helper thread, so a full pipe never blocks the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

fn describe(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args().map(OsStr::to_string_lossy) {
        shown.push(' ');
        shown.push_str(&arg);
    }
    shown
}

/// Runs `test` on a new thread that first moves into a fresh network namespace with its loopback
/// interface up, and re-raises the thread's panic.
fn in_fresh_network_namespace(test: impl FnOnce() + Send + 'static) {
    let worker = thread::Builder::new()
        .name("accuracy-netns".into())
        .spawn(move || {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only the calling thread (and the
            // processes it starts from now on) into a new network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "unshare(CLONE_NEWNET) failed: {}. The accuracy test needs root (CAP_SYS_ADMIN) \
                     to count sockets in a network namespace of its own",
                    io::Error::last_os_error()
                );
            }
            run(Command::new("ip").args(["link", "set", "lo", "up"]));
            test();
        })
        .unwrap_or_else(|error| panic!("cannot start the test thread: {error}"));
    if let Err(panic) = worker.join() {
        std::panic::resume_unwind(panic);
    }
}
