//! Accuracy: `sockfleet-agent --once` reports exactly what `ss -tan` shows, per family and state.
//!
//! Each test works in a fresh network namespace of its own (see `IsolatedNamespace`), and every process
//! it starts (`ss`, the agent) runs there. The only sockets there are the ones the test makes, on
//! 127.0.0.1 and ::1, so the counts are exact even while other tests run. The test needs root
//! (CAP_SYS_ADMIN); without it, it fails rather than skips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;

use sockfleet_agent::collect::NetlinkCounter;
use sockfleet_domain::{Family, FamilyCounts, TcpState};
use sockfleet_testkit::command::run;
use sockfleet_testkit::{
    IsolatedNamespace, SETTLE_TIMEOUT, open_known_states, plus, show, ss_counts, wait_until_settled,
};

const AGENT: &str = env!("CARGO_BIN_EXE_sockfleet-agent");

#[test]
fn netlink_collector_matches_ss() {
    IsolatedNamespace::new().run(|| check_collector("netlink"));
}

#[test]
fn procfs_collector_matches_ss() {
    IsolatedNamespace::new().run(|| check_collector("procfs"));
}

/// Request sockets (the kernel's `TCP_NEW_SYN_RECV`, which `ss` shows as SYN-RECV) of IPv4, IPv6 and
/// dual-stack listeners, next to every other state and the IPv4-mapped sockets of a dual-stack
/// listener: the single dump for both families, the two per-family dumps and the agent all count
/// what `ss` shows, family by family.
#[test]
fn both_request_forms_count_request_and_mapped_sockets_as_ss_does() {
    IsolatedNamespace::new().run(|| {
        let baseline = ss_counts();
        let mut single = NetlinkCounter::open().unwrap();
        let mut per_family = NetlinkCounter::open_per_family().unwrap();
        assert!(!per_family.dumps_both_families_at_once());
        if !single.dumps_both_families_at_once() {
            eprintln!("this kernel refuses TCPDIAG_GETSOCK; only the per-family dumps are checked");
        }
        assert_eq!(show(&single.count().unwrap()), show(&baseline));

        let (held, expected) = open_known_states();
        let (requests, syn_recv) = open_request_sockets();
        let target = plus(&plus(&baseline, &expected), &syn_recv);
        wait_until_settled(&target);

        let ss_before = ss_counts();
        let one_dump = single.count().unwrap();
        let two_dumps = per_family.count().unwrap();
        let agent = agent_counts("netlink");
        let ss_after = ss_counts();
        assert_eq!(
            show(&ss_before),
            show(&ss_after),
            "ss changed while sockfleet counted, though nothing in the namespace should move"
        );
        assert_eq!(show(&ss_before), show(&target));
        assert_eq!(
            show(&one_dump),
            show(&ss_before),
            "the counter (one dump for both families: {}) disagrees with ss -tan",
            single.dumps_both_families_at_once()
        );
        assert_eq!(
            show(&two_dumps),
            show(&ss_before),
            "the per-family dumps disagree with ss -tan"
        );
        assert_eq!(
            show(&agent),
            show(&ss_before),
            "sockfleet-agent --once disagrees with ss -tan"
        );
        drop((held, requests));
    });
}

/// Listeners with `TCP_DEFER_ACCEPT` and clients that send nothing: the server side of each connection
/// stays a request socket (SYN-RECV) while the client is ESTABLISHED. Returns them with the counts they
/// add: on 127.0.0.1, on ::1, and IPv4 clients of a dual-stack `[::]` listener (IPv6 request sockets
/// with v4-mapped addresses).
fn open_request_sockets() -> ((Vec<TcpListener>, Vec<TcpStream>), FamilyCounts) {
    let mut listeners = Vec::new();
    let mut clients = Vec::new();
    let mut counts = FamilyCounts::default();
    let plan = [
        (
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            3,
        ),
        (
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            2,
        ),
        (
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            4,
        ),
    ];
    for (listen_on, connect_to, connections) in plan {
        let listener = TcpListener::bind(SocketAddr::new(listen_on, 0)).unwrap();
        let seconds: libc::c_int = 60;
        // SAFETY: the descriptor is the listener's, open for the call; `seconds` is a live c_int.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&seconds).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            0,
            "TCP_DEFER_ACCEPT: {}",
            std::io::Error::last_os_error()
        );
        let server = if listen_on.is_ipv4() {
            &mut counts.ipv4
        } else {
            &mut counts.ipv6
        };
        server.increment(TcpState::Listen);
        for _ in 0..connections {
            server.increment(TcpState::SynRecv);
        }
        let target = SocketAddr::new(connect_to, listener.local_addr().unwrap().port());
        for _ in 0..connections {
            clients.push(TcpStream::connect_timeout(&target, SETTLE_TIMEOUT).unwrap());
            let client = if connect_to.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            };
            counts.family_mut(client).increment(TcpState::Established);
        }
        listeners.push(listener);
    }
    ((listeners, clients), counts)
}

fn check_collector(collector: &str) {
    let baseline_ss = ss_counts();
    let baseline_agent = agent_counts(collector);
    assert_eq!(
        show(&baseline_agent),
        show(&baseline_ss),
        "--collector {collector} disagrees with ss in the empty namespace"
    );

    let (held, expected) = open_known_states();
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
