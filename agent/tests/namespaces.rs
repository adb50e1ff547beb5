//! Network namespaces: `sockfleet-agent --once --all-namespaces=true` finds the namespaces made with
//! `ip netns add`, counts the sockets in each exactly as `ip netns exec NAME ss -tan` does, reads each
//! one's own sysctls, names the owner of its CLOSE_WAIT sockets, and leaves its own namespace's counts
//! alone.
//!
//! The agent runs from a namespace of the test's own (see `IsolatedNamespace`), so its own counts are
//! exact too. The named namespaces get random names and are deleted when the test ends, also when it
//! fails. Needs root and iproute2; without them it fails rather than skips.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sockfleet_domain::{
    FamilyCounts, NamespaceReport, Snapshot, StateCounts, TRACKED_SYSCTLS, TcpState,
};
use sockfleet_testkit::command::run;
use sockfleet_testkit::{
    IsolatedNamespace, SETTLE_TIMEOUT, open_known_states, show, ss_counts, wait_until_settled,
};

const AGENT: &str = env!("CARGO_BIN_EXE_sockfleet-agent");
/// The `tcp_fin_timeout` set in the second namespace, unlike any default.
const CHANGED_FIN_TIMEOUT: &str = "37";

/// Namespaces made with `ip netns add`, deleted with `ip netns del` when this drops.
struct NamedNamespaces {
    names: Vec<String>,
}

impl NamedNamespaces {
    fn add(suffixes: &[&str]) -> NamedNamespaces {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let prefix = format!("sf-test-{:x}{nanos:x}", std::process::id());
        let mut namespaces = NamedNamespaces { names: Vec::new() };
        for suffix in suffixes {
            let name = format!("{prefix}-{suffix}");
            run(Command::new("ip").args(["netns", "add", &name]));
            namespaces.names.push(name.clone());
            run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        }
        namespaces
    }

    fn path(name: &str) -> String {
        format!("/run/netns/{name}")
    }
}

impl Drop for NamedNamespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let deleted = Command::new("ip")
                .args(["netns", "del", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !deleted.is_ok_and(|status| status.success()) {
                eprintln!("could not delete the network namespace {name}");
            }
        }
    }
}

/// A child process, killed when this drops.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `job` on a thread inside the named namespace: the sockets it opens belong there.
fn inside<R: Send>(name: &str, job: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(NamedNamespaces::path(name))
                    .unwrap_or_else(|error| panic!("cannot open the namespace {name}: {error}"));
                // SAFETY: setns only reads the descriptor, open for the call; it moves this thread
                // alone, which ends with the job.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {name}: {}", io::Error::last_os_error());
                job()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sockets kept open while they live.
type Sockets = (Vec<TcpListener>, Vec<TcpStream>);

/// A small set of sockets, unlike `open_known_states` in every count: IPv4 listeners, established
/// pairs and one pair in FIN_WAIT2 / CLOSE_WAIT, and one IPv6 listener.
fn open_small_set() -> (Sockets, FamilyCounts) {
    const LISTENERS: usize = 3;
    const ESTABLISHED_PAIRS: usize = 2;
    let mut listeners: Vec<TcpListener> = (0..LISTENERS)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    listeners.push(TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap());
    let target = listeners[0].local_addr().unwrap();
    let mut streams = Vec::new();
    for _ in 0..=ESTABLISHED_PAIRS {
        let client = TcpStream::connect_timeout(&target, SETTLE_TIMEOUT).unwrap();
        let (server, _) = listeners[0].accept().unwrap();
        streams.extend([client, server]);
    }
    // The last pair: the client shuts down its sending side, the server never closes.
    streams[2 * ESTABLISHED_PAIRS]
        .shutdown(Shutdown::Write)
        .unwrap();
    let mut expected = FamilyCounts::default();
    expected.ipv4.set(TcpState::Listen, LISTENERS as u64);
    expected
        .ipv4
        .set(TcpState::Established, 2 * ESTABLISHED_PAIRS as u64);
    expected.ipv4.set(TcpState::FinWait2, 1);
    expected.ipv4.set(TcpState::CloseWait, 1);
    expected.ipv6.set(TcpState::Listen, 1);
    ((listeners, streams), expected)
}

/// `ip netns exec NAME ss -tan` per family, counted by its State column.
fn ss_in(name: &str) -> FamilyCounts {
    let count = |family: &str| {
        let output = run(Command::new("ip").args(["netns", "exec", name, "ss", "-tan", family]));
        let mut counts = StateCounts::default();
        for line in output.lines().skip(1) {
            let Some(state) = line.split_whitespace().next() else {
                continue;
            };
            let state = match state {
                "UNCONN" => TcpState::Close,
                other => TcpState::from_name(other)
                    .unwrap_or_else(|| panic!("unknown state {other:?} in:\n{output}")),
            };
            counts.increment(state);
        }
        counts
    };
    FamilyCounts {
        ipv4: count("-4"),
        ipv6: count("-6"),
    }
}

fn namespace_inode(name: &str) -> u64 {
    let path = NamedNamespaces::path(name);
    let output = run(Command::new("stat").args(["-L", "-c", "%i", &path]));
    output
        .trim()
        .parse()
        .unwrap_or_else(|error| panic!("stat printed {output:?}: {error}"))
}

/// One `sockfleet-agent --once` run with `extra` flags, from the calling thread's namespace.
fn agent_snapshot(extra: &[&str]) -> Snapshot {
    let mut command = Command::new(AGENT);
    command.args(["--once", "--host-id", "ns-test"]).args(extra);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SOCKFLEET_") {
            command.env_remove(&name);
        }
    }
    let output = run(&mut command);
    serde_json::from_str(&output)
        .unwrap_or_else(|error| panic!("the agent printed no snapshot ({error}):\n{output}"))
}

/// Waits until a process's command name is `comm` (it has exec'd).
fn wait_for_comm(pid: u32, comm: &str) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|read| read.trim() != comm)
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "process {pid} never became {comm}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn by_name<'a>(snapshot: &'a Snapshot, name: &str) -> &'a NamespaceReport {
    let matching: Vec<&NamespaceReport> = snapshot
        .namespaces
        .iter()
        .filter(|namespace| namespace.identity.name.as_deref() == Some(name))
        .collect();
    match matching.as_slice() {
        [namespace] => namespace,
        other => panic!(
            "{} reports of namespace {name} in {:#?}",
            other.len(),
            snapshot.namespaces
        ),
    }
}

#[test]
fn every_namespace_is_counted_like_ss_counts_it_there() {
    let named = NamedNamespaces::add(&["a", "b"]);
    let (a, b) = (named.names[0].as_str(), named.names[1].as_str());

    let (held_a, expected_a) = inside(a, || {
        let (held, expected) = open_known_states();
        wait_until_settled(&expected);
        (held, expected)
    });
    let (held_b, expected_b) = inside(b, || {
        let (held, expected) = open_small_set();
        wait_until_settled(&expected);
        (held, expected)
    });
    assert_ne!(show(&expected_a), show(&expected_b));
    run(Command::new("ip").args([
        "netns",
        "exec",
        b,
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv4.tcp_fin_timeout={CHANGED_FIN_TIMEOUT}"),
    ]));
    // A process in namespace a: it is then found through /proc as well as by its name, once.
    let sleeper = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", a, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_comm(sleeper.0.id(), "sleep");

    let home = IsolatedNamespace::new();
    let (home_held, home_inode) = home.run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let inode = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        (
            (listener, client, server),
            std::os::unix::fs::MetadataExt::ino(&inode),
        )
    });

    let ss_before = [ss_in(a), ss_in(b)];
    let (home_ss_before, snapshot, home_ss_after) = home.run(|| {
        let before = ss_counts();
        let snapshot = agent_snapshot(&["--all-namespaces=true"]);
        (before, snapshot, ss_counts())
    });
    let ss_after = [ss_in(a), ss_in(b)];

    for (index, (name, expected)) in [(a, &expected_a), (b, &expected_b)].into_iter().enumerate() {
        assert_eq!(
            show(&ss_before[index]),
            show(&ss_after[index]),
            "ss changed in {name} while the agent ran, though nothing there should move"
        );
        assert_eq!(show(&ss_before[index]), show(expected), "ss in {name}");
        let report = by_name(&snapshot, name);
        assert_eq!(
            show(&report.states),
            show(&ss_before[index]),
            "the agent's counts of {name} disagree with ip netns exec {name} ss -tan"
        );
        assert_eq!(report.inode, namespace_inode(name), "inode of {name}");
        assert_eq!(
            report.sysctls.len(),
            TRACKED_SYSCTLS.len(),
            "a snapshot carries every sysctl of {name}"
        );
        assert!(report.kernel.is_some(), "kernel counters of {name}");

        let breakdowns = report
            .breakdowns
            .as_ref()
            .unwrap_or_else(|| panic!("no breakdowns for {name}"));
        let close_wait =
            expected.ipv4.get(TcpState::CloseWait) + expected.ipv6.get(TcpState::CloseWait);
        assert_eq!(
            breakdowns
                .close_wait_processes
                .iter()
                .map(|process| (process.pid, u64::from(process.close_wait)))
                .collect::<Vec<_>>(),
            [(std::process::id(), close_wait)],
            "the owner of the CLOSE_WAIT sockets in {name}"
        );
        assert!(
            breakdowns
                .close_wait_sockets
                .iter()
                .all(|socket| socket.pid == Some(std::process::id())),
            "{:?}",
            breakdowns.close_wait_sockets
        );
        let listening = expected.ipv4.get(TcpState::Listen) + expected.ipv6.get(TcpState::Listen);
        assert_eq!(
            breakdowns.listeners.len() as u64,
            listening,
            "listeners in {name}"
        );
    }

    let report_a = by_name(&snapshot, a);
    assert_eq!(report_a.identity.pid, Some(sleeper.0.id()));
    assert_eq!(report_a.identity.comm.as_deref(), Some("sleep"));
    let report_b = by_name(&snapshot, b);
    assert_eq!(
        (report_b.identity.pid, report_b.identity.comm.as_deref()),
        (None, None)
    );

    let fin_timeout =
        |sysctls: &BTreeMap<String, Option<String>>| sysctls["net.ipv4.tcp_fin_timeout"].clone();
    assert_eq!(
        fin_timeout(&report_b.sysctls).as_deref(),
        Some(CHANGED_FIN_TIMEOUT),
        "namespace b's own sysctl"
    );
    assert_ne!(
        fin_timeout(&report_a.sysctls).as_deref(),
        Some(CHANGED_FIN_TIMEOUT)
    );
    assert_ne!(
        fin_timeout(&snapshot.sysctls).as_deref(),
        Some(CHANGED_FIN_TIMEOUT)
    );

    // The agent's own namespace: left out of the list, counted as ss counts it.
    assert!(
        snapshot
            .namespaces
            .iter()
            .all(|namespace| namespace.inode != home_inode),
        "the agent's own namespace is listed among the others"
    );
    assert_eq!(show(&home_ss_before), show(&home_ss_after));
    assert_eq!(
        show(&snapshot.states),
        show(&home_ss_before),
        "the agent's own counts disagree with ss there"
    );
    let mut home_expected = FamilyCounts::default();
    home_expected.ipv4.set(TcpState::Listen, 1);
    home_expected.ipv4.set(TcpState::Established, 2);
    assert_eq!(show(&snapshot.states), show(&home_expected));
    let inodes: Vec<u64> = snapshot
        .namespaces
        .iter()
        .map(|namespace| namespace.inode)
        .collect();
    assert!(
        inodes.windows(2).all(|pair| pair[0] < pair[1]),
        "{inodes:?}"
    );

    // Without --all-namespaces the list is empty.
    let own_only = home.run(|| agent_snapshot(&["--all-namespaces=false"]));
    assert!(own_only.namespaces.is_empty(), "{:?}", own_only.namespaces);
    assert_eq!(show(&own_only.states), show(&home_expected));

    drop((held_a, held_b, home_held, sleeper));
}
