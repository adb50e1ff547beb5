//! Sockets in known TCP states on loopback, for checking counts against `ss`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use sockfleet_domain::{Family, FamilyCounts, StateCounts, TcpState};

/// How long the kernel gets to finish the closing handshakes a test starts.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer of the listener whose connections never read, so their window closes at once.
const TINY_RECEIVE_BUFFER: libc::c_int = 4096;

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
pub struct Held {
    listeners: Vec<TcpListener>,
    streams: Vec<TcpStream>,
}

/// Opens sockets in every interesting state on 127.0.0.1 and ::1 (and IPv4 clients of a dual-stack
/// listener) in the calling thread's network namespace; returns them with the counts they add.
pub fn open_known_states() -> (Held, FamilyCounts) {
    let mut held = Held::default();
    let mut expected = FamilyCounts::default();
    for (family, plan) in [(Family::Ipv4, &IPV4_PLAN), (Family::Ipv6, &IPV6_PLAN)] {
        open_sockets(plan, &mut held, expected.family_mut(family));
    }
    open_mapped_pairs(&mut held, &mut expected);
    (held, expected)
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
