//! Breakdowns: per-destination ephemeral-port use and TIME_WAIT, CLOSE_WAIT sockets with their owning
//! process and first-seen time, and listeners' accept queues, checked against the sockets the test
//! makes and against `ss`.
//!
//! Each test works in a fresh network namespace of its own (see `IsolatedNamespace`) on 127.0.0.x, and
//! runs `BreakdownCollector` in-process on the namespace's thread, so the CLOSE_WAIT sockets belong to
//! this very process. Needs root (CAP_SYS_ADMIN); without it, it fails rather than skips.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use sockfleet_agent::collect::{BreakdownCollector, NetlinkCounter, read_sysctls};
use sockfleet_domain::{
    Attribution, Breakdowns, CloseWaitSocket, DestinationUse, FamilyCounts, ListenQueue, Omitted,
    ProcessCloseWait, TcpState, TopN,
};
use sockfleet_testkit::command::run;
use sockfleet_testkit::{IsolatedNamespace, SETTLE_TIMEOUT, show, ss_counts, wait_until_settled};

/// Connections left in the accept queue of the `queued` listener, and its backlog.
const QUEUED: usize = 4;
const QUEUE_BACKLOG: i32 = 7;
/// Backlog of the listener with one connection in CLOSE_WAIT that nobody accepted.
const UNACCEPTED_BACKLOG: i32 = 3;
/// TIME_WAIT sockets to the two TIME_WAIT destinations.
const TIME_WAIT_A: usize = 3;
const TIME_WAIT_B: usize = 5;
/// Accepted connections whose peer closed: CLOSE_WAIT sockets held by this process.
const HELD_CLOSE_WAIT: usize = 3;

/// Set in the environment of the unprivileged child run of this test binary.
const CHILD_ENV: &str = "SOCKFLEET_BREAKDOWN_CHILD";
/// Prefix of the line on which the child prints its breakdowns.
const CHILD_MARK: &str = "BREAKDOWNS ";

/// Counts the allocations each thread makes, to show that collections do not allocate per socket.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is passed on unchanged to the system allocator; counting touches only a
// thread-local `Cell` that needs no allocation or destructor.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: the caller's guarantees for `layout` are the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: `ptr` came from this allocator, which is the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `work` and returns its result with the allocations it made on this thread.
fn allocations<R>(work: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = work();
    (result, ALLOCATIONS.with(Cell::get) - before)
}

#[test]
fn breakdowns_match_the_sockets_made() {
    IsolatedNamespace::new().run(check_breakdowns);
}

#[test]
fn breakdowns_are_the_same_with_the_per_family_dumps() {
    IsolatedNamespace::new().run(|| {
        let scene = make_scene();
        wait_until_settled(&expected_counts());
        let sysctls = read_sysctls().unwrap();
        let now = Utc::now();
        let mut single = NetlinkCounter::open().unwrap();
        let mut per_family = NetlinkCounter::open_per_family().unwrap();
        assert!(!per_family.dumps_both_families_at_once());
        let with_one = BreakdownCollector::default()
            .collect(&mut single, &sysctls, now)
            .unwrap();
        let with_two = BreakdownCollector::default()
            .collect(&mut per_family, &sysctls, now)
            .unwrap();
        assert_eq!(show(&with_one.states), show(&expected_counts()));
        assert_eq!(show(&with_two.states), show(&with_one.states));
        let mut breakdowns = [with_one.breakdowns, with_two.breakdowns];
        for breakdowns in &mut breakdowns {
            // Descriptors come and go with the other tests of this process.
            for process in &mut breakdowns.close_wait_processes {
                process.open_fds = None;
            }
        }
        assert_eq!(breakdowns[0], breakdowns[1]);
        assert_eq!(
            breakdowns[0].destinations,
            expected_destinations(&scene),
            "{:#?}",
            breakdowns[0]
        );
        drop(scene);
    });
}

#[test]
fn attribution_without_permission_says_so() {
    IsolatedNamespace::new().run(check_unprivileged_attribution);
}

#[test]
fn steady_state_collections_do_not_allocate_per_socket() {
    IsolatedNamespace::new().run(|| {
        let listeners: Vec<TcpListener> = ["127.0.0.2:0", "127.0.0.3:0"]
            .into_iter()
            .map(|address| TcpListener::bind(address).unwrap())
            .collect();
        let make_time_wait = |count: usize| {
            for i in 0..count {
                let (client, server) = connect_pair(&listeners[i % listeners.len()]);
                drop((client, server));
            }
        };
        let sysctls = read_sysctls().unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let mut collector = BreakdownCollector::default();
        let mut measure = |counter: &mut NetlinkCounter| {
            // The first collections size the tables; the next one is the steady state.
            for _ in 0..2 {
                collector.collect(counter, &sysctls, Utc::now()).unwrap();
                counter.count().unwrap();
            }
            let (collection, collect) =
                allocations(|| collector.collect(counter, &sysctls, Utc::now()).unwrap());
            let (_, count) = allocations(|| counter.count().unwrap());
            (
                collection.states.ipv4.get(TcpState::TimeWait),
                collect,
                count,
            )
        };
        make_time_wait(100);
        let few = measure(&mut counter);
        make_time_wait(1900);
        let many = measure(&mut counter);
        println!("(TIME_WAIT, allocations by collect, by count): {few:?} then {many:?}");
        assert!(few.0 >= 50 && many.0 >= few.0 + 1500, "{few:?} {many:?}");
        assert_eq!(few.2, 0, "count() allocated");
        assert_eq!(many.2, 0, "count() allocated");
        assert_eq!(few.1, many.1, "collect allocated more with more sockets");
    });
}

/// Run by [`attribution_without_permission_says_so`] as user nobody in its namespace; prints what an
/// unprivileged collector reports.
#[test]
#[ignore = "run by attribution_without_permission_says_so as an unprivileged child"]
fn unprivileged_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut counter = NetlinkCounter::open().unwrap();
    let sysctls = read_sysctls().unwrap();
    let collection = BreakdownCollector::default()
        .collect(&mut counter, &sysctls, Utc::now())
        .unwrap();
    println!(
        "{CHILD_MARK}{}",
        serde_json::to_string(&collection.breakdowns).unwrap()
    );
}

/// The sockets of the main test, alive while this lives.
struct Scene {
    /// The listeners of each kind, by role.
    time_wait_a: TcpListener,
    time_wait_b: TcpListener,
    queued: TcpListener,
    close_wait: TcpListener,
    unaccepted: TcpListener,
    /// Client address per destination listener, as the kernel chose it.
    client_ip: IpAddr,
    queued_clients: Vec<TcpStream>,
    /// (client, accepted server) pairs; the client shut down its sending side.
    half_closed: Vec<(TcpStream, TcpStream)>,
    unaccepted_client: TcpStream,
}

fn check_breakdowns() {
    let empty = ss_counts();
    assert_eq!(show(&empty), show(&FamilyCounts::default()));

    let scene = make_scene();
    wait_until_settled(&expected_counts());

    let sysctls = read_sysctls().unwrap();
    let usable = usable_ports(&sysctls);
    let mut counter = NetlinkCounter::open().unwrap();
    let mut collector = BreakdownCollector::new(TopN::DEFAULT);
    let t0 = Utc::now();
    let fds_before = open_fds();
    let first = collector.collect(&mut counter, &sysctls, t0).unwrap();
    let fds_after = open_fds();

    // The counts on the way are the same as ss's and the plain counter's.
    assert_eq!(show(&first.states), show(&ss_counts()));
    assert_eq!(show(&first.states), show(&counter.count().unwrap()));
    assert_eq!(show(&first.states), show(&expected_counts()));

    let breakdowns = &first.breakdowns;
    breakdowns.validate().unwrap();
    assert_eq!(breakdowns.usable_local_ports, usable);
    assert_eq!(breakdowns.attribution, Attribution::Complete);
    assert_eq!(breakdowns.omitted, Omitted::default());
    assert_eq!(breakdowns.destinations, expected_destinations(&scene));
    assert_eq!(
        time_wait_per_destination(&breakdowns.destinations),
        ss_time_wait_per_destination(),
        "TIME_WAIT per destination differs from ss -tan state time-wait"
    );
    assert_eq!(breakdowns.listeners, expected_listeners(&scene));
    assert_eq!(
        breakdowns
            .listeners
            .iter()
            .map(|l| (l.local, (l.queued, l.backlog)))
            .collect::<BTreeMap<_, _>>(),
        ss_listen_queues(),
        "accept queues differ from ss -ltn"
    );
    assert_eq!(
        breakdowns.close_wait_sockets,
        expected_close_wait(&scene, t0)
    );

    let comm = expected_comm();
    let [process] = breakdowns.close_wait_processes.as_slice() else {
        panic!("expected this process alone: {breakdowns:#?}");
    };
    let open = process
        .open_fds
        .expect("the test's own descriptors are readable");
    // The other tests of this process open and close descriptors meanwhile, so only roughly: at least
    // the sockets this test holds, and about what /proc/self/fd showed around the collection.
    let held = 5 + QUEUED + 2 * HELD_CLOSE_WAIT + 1 + 1;
    assert!(
        (held as u32..=fds_before.max(fds_after) + 16).contains(&open),
        "{open} open descriptors reported; /proc/self/fd had {fds_before} before and {fds_after} after"
    );
    assert_eq!(
        *process,
        ProcessCloseWait {
            pid: std::process::id(),
            comm: Some(comm),
            close_wait: HELD_CLOSE_WAIT as u32,
            open_fds: Some(open),
            fd_limit: Some(soft_fd_limit()),
        }
    );

    // Ten seconds later nothing moved: the same sockets, first seen at the first collection.
    let second = collector
        .collect(&mut counter, &sysctls, t0 + TimeDelta::seconds(10))
        .unwrap();
    assert_eq!(show(&second.states), show(&first.states));
    // Descriptors come and go with the other tests of this process; the rest stays put.
    let without_fd_counts = |breakdowns: &Breakdowns| {
        let mut breakdowns = breakdowns.clone();
        for process in &mut breakdowns.close_wait_processes {
            process.open_fds = None;
        }
        breakdowns
    };
    assert_eq!(
        without_fd_counts(&second.breakdowns),
        without_fd_counts(&first.breakdowns)
    );

    // A smaller bound keeps the first entries of each list and counts the others.
    let mut two = BreakdownCollector::new(TopN::new(2).unwrap());
    let t1 = t0 + TimeDelta::seconds(20);
    let bounded = two.collect(&mut counter, &sysctls, t1).unwrap().breakdowns;
    assert_eq!(bounded.destinations, first.breakdowns.destinations[..2]);
    assert_eq!(bounded.listeners, first.breakdowns.listeners[..2]);
    assert_eq!(
        without_fd_counts(&bounded).close_wait_processes,
        without_fd_counts(&first.breakdowns).close_wait_processes
    );
    let mut oldest_two = first.breakdowns.close_wait_sockets[..2].to_vec();
    for socket in &mut oldest_two {
        socket.first_seen = t1;
    }
    assert_eq!(bounded.close_wait_sockets, oldest_two);
    assert_eq!(
        bounded.omitted,
        Omitted {
            destinations: 3,
            close_wait_sockets: 2,
            close_wait_processes: 0,
            listeners: 3,
        }
    );

    // Once a CLOSE_WAIT socket is closed it is gone from the breakdown; the others keep their age.
    let Scene {
        mut half_closed, ..
    } = scene;
    let (closed_client, closed_server) = half_closed.remove(0);
    let closed_inode = inode_of(&closed_server);
    drop(closed_server);
    let mut target = expected_counts();
    // The server's FIN ends the client's FIN_WAIT2 in TIME_WAIT; the closed side is gone.
    target
        .ipv4
        .set(TcpState::CloseWait, 1 + HELD_CLOSE_WAIT as u64 - 1);
    target
        .ipv4
        .set(TcpState::FinWait2, 1 + HELD_CLOSE_WAIT as u64 - 1);
    target
        .ipv4
        .set(TcpState::TimeWait, (TIME_WAIT_A + TIME_WAIT_B + 1) as u64);
    wait_until_settled(&target);
    let third = collector
        .collect(&mut counter, &sysctls, t0 + TimeDelta::seconds(30))
        .unwrap()
        .breakdowns;
    let remaining: Vec<CloseWaitSocket> = first
        .breakdowns
        .close_wait_sockets
        .iter()
        .filter(|socket| socket.inode != u64::from(closed_inode))
        .cloned()
        .collect();
    assert_eq!(third.close_wait_sockets, remaining);
    assert_eq!(
        third.close_wait_processes[0].close_wait,
        HELD_CLOSE_WAIT as u32 - 1
    );
    drop((closed_client, half_closed));
}

fn make_scene() -> Scene {
    let listen = |ip: &str| {
        let address = SocketAddr::new(ip.parse().unwrap(), 0);
        TcpListener::bind(address)
            .unwrap_or_else(|error| panic!("cannot listen on {address}: {error}"))
    };
    let time_wait_a = listen("127.0.0.2");
    let time_wait_b = listen("127.0.0.3");
    let queued = listen("127.0.0.4");
    relisten(&queued, QUEUE_BACKLOG);
    let close_wait = listen("127.0.0.5");
    let unaccepted = listen("127.0.0.6");
    relisten(&unaccepted, UNACCEPTED_BACKLOG);

    let mut client_ips = Vec::new();
    for (listener, count) in [(&time_wait_a, TIME_WAIT_A), (&time_wait_b, TIME_WAIT_B)] {
        for _ in 0..count {
            let (client, mut server) = connect_pair(listener);
            client_ips.push(client.local_addr().unwrap().ip());
            // The client closes first and so ends in TIME_WAIT once the server closes too.
            drop(client);
            server.set_read_timeout(Some(SETTLE_TIMEOUT)).unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(server.read(&mut byte).unwrap(), 0, "the client sent data");
        }
    }

    let queued_clients: Vec<TcpStream> = (0..QUEUED).map(|_| connect(&queued)).collect();
    let half_closed: Vec<(TcpStream, TcpStream)> = (0..HELD_CLOSE_WAIT)
        .map(|_| {
            let (client, server) = connect_pair(&close_wait);
            client.shutdown(Shutdown::Write).unwrap();
            (client, server)
        })
        .collect();
    let unaccepted_client = connect(&unaccepted);
    unaccepted_client.shutdown(Shutdown::Write).unwrap();

    client_ips.extend(queued_clients.iter().map(|c| c.local_addr().unwrap().ip()));
    client_ips.extend(
        half_closed
            .iter()
            .map(|(c, _)| c.local_addr().unwrap().ip()),
    );
    client_ips.push(unaccepted_client.local_addr().unwrap().ip());
    let client_ip = client_ips[0];
    assert!(
        client_ips.iter().all(|ip| *ip == client_ip),
        "the kernel chose several source addresses: {client_ips:?}"
    );
    Scene {
        time_wait_a,
        time_wait_b,
        queued,
        close_wait,
        unaccepted,
        client_ip,
        queued_clients,
        half_closed,
        unaccepted_client,
    }
}

/// What `ss` shows once the scene has settled.
fn expected_counts() -> FamilyCounts {
    let mut counts = FamilyCounts::default();
    let ipv4 = &mut counts.ipv4;
    ipv4.set(TcpState::Listen, 5);
    ipv4.set(TcpState::TimeWait, (TIME_WAIT_A + TIME_WAIT_B) as u64);
    // Queued clients and the connections waiting for accept().
    ipv4.set(TcpState::Established, 2 * QUEUED as u64);
    // The accepted ones and the one nobody accepted.
    ipv4.set(TcpState::CloseWait, HELD_CLOSE_WAIT as u64 + 1);
    ipv4.set(TcpState::FinWait2, HELD_CLOSE_WAIT as u64 + 1);
    counts
}

fn expected_destinations(scene: &Scene) -> Vec<DestinationUse> {
    let to = |listener: &TcpListener, time_wait: usize, ephemeral: usize| {
        let remote = listener.local_addr().unwrap();
        DestinationUse {
            local_ip: scene.client_ip,
            remote_ip: remote.ip(),
            remote_port: remote.port(),
            time_wait: time_wait as u32,
            ephemeral: ephemeral as u32,
        }
    };
    vec![
        to(&scene.time_wait_b, TIME_WAIT_B, TIME_WAIT_B),
        to(&scene.queued, 0, scene.queued_clients.len()),
        // Three each: TIME_WAIT breaks the tie.
        to(&scene.time_wait_a, TIME_WAIT_A, TIME_WAIT_A),
        to(&scene.close_wait, 0, HELD_CLOSE_WAIT),
        to(&scene.unaccepted, 0, 1),
    ]
}

fn expected_listeners(scene: &Scene) -> Vec<ListenQueue> {
    let queue = |listener: &TcpListener, queued: usize, backlog: u32| ListenQueue {
        local: listener.local_addr().unwrap(),
        queued: queued as u32,
        backlog,
    };
    // std's own backlog, whatever it is, capped by somaxconn as the kernel does.
    let default_backlog = ss_listen_queues()[&scene.time_wait_a.local_addr().unwrap()].1;
    assert!(default_backlog > 0);
    vec![
        queue(&scene.queued, QUEUED, QUEUE_BACKLOG as u32),
        queue(&scene.unaccepted, 1, UNACCEPTED_BACKLOG as u32),
        queue(&scene.time_wait_a, 0, default_backlog),
        queue(&scene.time_wait_b, 0, default_backlog),
        queue(&scene.close_wait, 0, default_backlog),
    ]
}

fn expected_close_wait(scene: &Scene, first_seen: DateTime<Utc>) -> Vec<CloseWaitSocket> {
    let pid = Some(std::process::id());
    let comm = Some(expected_comm());
    let mut sockets: Vec<CloseWaitSocket> = scene
        .half_closed
        .iter()
        .map(|(_, server)| CloseWaitSocket {
            inode: u64::from(inode_of(server)),
            local: server.local_addr().unwrap(),
            remote: server.peer_addr().unwrap(),
            pid,
            comm: comm.clone(),
            first_seen,
        })
        .collect();
    // Not accepted: no process holds it, and its inode is 0.
    sockets.push(CloseWaitSocket {
        inode: 0,
        local: scene.unaccepted.local_addr().unwrap(),
        remote: scene.unaccepted_client.local_addr().unwrap(),
        pid: None,
        comm: None,
        first_seen,
    });
    // All seen at once: by inode.
    sockets.sort_by_key(|socket| socket.inode);
    sockets
}

fn check_unprivileged_attribution() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let pairs: Vec<(TcpStream, TcpStream)> = (0..2)
        .map(|_| {
            let (client, server) = connect_pair(&listener);
            client.shutdown(Shutdown::Write).unwrap();
            (client, server)
        })
        .collect();
    let mut target = FamilyCounts::default();
    target.ipv4.set(TcpState::Listen, 1);
    target.ipv4.set(TcpState::CloseWait, 2);
    target.ipv4.set(TcpState::FinWait2, 2);
    wait_until_settled(&target);

    // A copy in a world-readable folder: the checkout may sit below a folder nobody cannot enter.
    let folder =
        std::env::temp_dir().join(format!("sockfleet-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let exe = folder.join("breakdown-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    for path in [&folder, &exe] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let output = run(Command::new(&exe)
        .args([
            "--exact",
            "unprivileged_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .uid(65534)
        .gid(65534));
    std::fs::remove_dir_all(&folder).unwrap();
    let line = output
        .lines()
        .find_map(|line| line.split_once(CHILD_MARK).map(|(_, json)| json))
        .unwrap_or_else(|| panic!("the child printed no breakdowns:\n{output}"));
    let breakdowns: Breakdowns = serde_json::from_str(line).unwrap();
    breakdowns.validate().unwrap();
    assert_eq!(breakdowns.close_wait_sockets.len(), 2, "{breakdowns:#?}");
    assert!(
        breakdowns
            .close_wait_sockets
            .iter()
            .all(|socket| socket.pid.is_none() && socket.inode != 0),
        "{breakdowns:#?}"
    );
    assert!(breakdowns.close_wait_processes.is_empty());
    match &breakdowns.attribution {
        Attribution::Partial {
            unattributed_sockets: 2,
            unreadable_processes,
            reason,
        } => {
            assert!(*unreadable_processes >= 1);
            assert!(
                reason.starts_with("permission denied reading /proc/")
                    && reason.contains("CAP_SYS_PTRACE"),
                "{reason}"
            );
        }
        other => panic!("expected a partial attribution, got {other:?}"),
    }
    drop((pairs, listener));
}

fn connect(listener: &TcpListener) -> TcpStream {
    let target = listener.local_addr().unwrap();
    TcpStream::connect_timeout(&target, SETTLE_TIMEOUT)
        .unwrap_or_else(|error| panic!("cannot connect to {target}: {error}"))
}

fn connect_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = connect(listener);
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Listens again with `backlog`: on a listening socket that only changes the backlog.
fn relisten(listener: &TcpListener, backlog: i32) {
    // SAFETY: the descriptor is the listener's, open for the duration of the call.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
}

/// The socket inode behind a stream, from its `/proc/self/fd` link.
fn inode_of(stream: &TcpStream) -> u32 {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", stream.as_raw_fd())).unwrap();
    let text = link.to_string_lossy();
    text.strip_prefix("socket:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inode| inode.parse().ok())
        .unwrap_or_else(|| panic!("not a socket link: {text}"))
}

/// This process's command name: the test binary's file name, cut to the kernel's 15 bytes.
fn expected_comm() -> String {
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().as_bytes();
    String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned()
}

fn open_fds() -> u32 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u32
}

fn soft_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live value passed.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur
}

/// Ports in the namespace's local port range, none reserved in a fresh namespace.
fn usable_ports(sysctls: &sockfleet_domain::SysctlValues) -> u32 {
    let range = sysctls["net.ipv4.ip_local_port_range"].as_deref().unwrap();
    let (low, high) = range.split_once(' ').unwrap();
    let reserved = sysctls["net.ipv4.ip_local_reserved_ports"]
        .as_deref()
        .unwrap();
    assert_eq!(reserved, "", "a fresh namespace reserves no ports");
    high.parse::<u32>().unwrap() - low.parse::<u32>().unwrap() + 1
}

type Destination = (IpAddr, IpAddr, u16);

fn time_wait_per_destination(destinations: &[DestinationUse]) -> BTreeMap<Destination, u32> {
    destinations
        .iter()
        .filter(|d| d.time_wait > 0)
        .map(|d| ((d.local_ip, d.remote_ip, d.remote_port), d.time_wait))
        .collect()
}

/// `ss -Htan state time-wait` grouped by (local IP, peer IP, peer port).
/// `ss -Htan state time-wait` per destination, by the collector's rule for outgoing sockets: a
/// socket whose local port is a listening port (an accepted connection, or an ephemeral port that
/// happens to equal one a listener got) is not counted.
fn ss_time_wait_per_destination() -> BTreeMap<Destination, u32> {
    let listening: std::collections::BTreeSet<u16> =
        ss_listen_queues().keys().map(SocketAddr::port).collect();
    let output = run(Command::new("ss").args(["-Htan", "state", "time-wait"]));
    let mut destinations = BTreeMap::new();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        // Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter).
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(peer)) = (fields.get(2), fields.get(3)) else {
            panic!("unexpected ss line {line:?}");
        };
        let local: SocketAddr = local.parse().unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        if listening.contains(&local.port()) {
            continue;
        }
        *destinations
            .entry((local.ip(), peer.ip(), peer.port()))
            .or_insert(0) += 1;
    }
    destinations
}

/// `ss -Hltn`: each listener's Recv-Q (queued connections) and Send-Q (backlog).
fn ss_listen_queues() -> BTreeMap<SocketAddr, (u32, u32)> {
    let output = run(Command::new("ss").args(["-Hltn"]));
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let parsed = (|| {
                Some((
                    fields.get(3)?.parse().ok()?,
                    (fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?),
                ))
            })();
            parsed.unwrap_or_else(|| panic!("unexpected ss line {line:?}"))
        })
        .collect()
}

/// Cost of one collection with about 20,000 sockets, most in TIME_WAIT, some held in CLOSE_WAIT.
/// Run with `cargo test --release -p sockfleet-agent --test breakdown -- --ignored --nocapture cost`.
#[test]
#[ignore = "a measurement, not a check; run in release mode"]
fn cost_with_twenty_thousand_sockets() {
    IsolatedNamespace::new().run(|| {
        const TIME_WAIT: usize = 20_000;
        const CLOSE_WAIT: usize = 200;
        let listeners: Vec<TcpListener> = (2..6)
            .map(|last| TcpListener::bind(format!("127.0.0.{last}:0")).unwrap())
            .collect();
        let started = Instant::now();
        for i in 0..TIME_WAIT {
            let (client, server) = connect_pair(&listeners[i % listeners.len()]);
            drop(client);
            drop(server);
        }
        let held: Vec<(TcpStream, TcpStream)> = (0..CLOSE_WAIT)
            .map(|_| {
                let (client, server) = connect_pair(&listeners[0]);
                client.shutdown(Shutdown::Write).unwrap();
                (client, server)
            })
            .collect();
        thread::sleep(Duration::from_millis(500));
        println!("made the sockets in {:?}", started.elapsed());
        let sysctls = read_sysctls().unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let mut collector = BreakdownCollector::default();
        let started = Instant::now();
        collector
            .collect(&mut counter, &sysctls, Utc::now())
            .unwrap();
        println!(
            "first collect, reading every process's descriptors until the owner is found: {:?}",
            started.elapsed()
        );
        let mut best_count = Duration::MAX;
        let mut best_collect = Duration::MAX;
        let mut last = None;
        for _ in 0..10 {
            let started = Instant::now();
            let counts = counter.count().unwrap();
            best_count = best_count.min(started.elapsed());
            let started = Instant::now();
            let collection = collector
                .collect(&mut counter, &sysctls, Utc::now())
                .unwrap();
            best_collect = best_collect.min(started.elapsed());
            assert_eq!(show(&collection.states), show(&counts));
            last = Some(collection);
        }
        let last = last.unwrap();
        println!("states: {}", show(&last.states));
        println!(
            "count(): {best_count:?}; breakdown collect (counts included): {best_collect:?}; \
             {} destinations, {} CLOSE_WAIT, attribution {:?}",
            last.breakdowns.destinations.len() + last.breakdowns.omitted.destinations as usize,
            last.states.ipv4.get(TcpState::CloseWait),
            last.breakdowns.attribution
        );
        assert_eq!(
            last.breakdowns.close_wait_processes[0].close_wait,
            CLOSE_WAIT as u32
        );
        drop(held);
    });
}

/// The cheap path (threshold lowered to [`CHEAP_THRESHOLD`]): TIME_WAIT from sockstat minus the
/// orphaned FIN_WAIT2 minisockets. Its total must equal `ss`'s, every other state per family too; a
/// full dump runs every sixth collection.
#[test]
fn cheap_collections_count_time_wait_as_ss_does() {
    const CHEAP_THRESHOLD: u64 = 50;
    const TIME_WAIT_V4: usize = 300;
    const TIME_WAIT_V6: usize = 30;
    const MORE_TIME_WAIT_V4: usize = 40;
    const ORPHANS: usize = 20;
    IsolatedNamespace::new().run(|| {
        let v4 = TcpListener::bind("127.0.0.2:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").unwrap();
        let make_time_wait = |listener: &TcpListener, count: usize| {
            for _ in 0..count {
                let (client, server) = connect_pair(listener);
                drop(client);
                drop(server);
            }
        };
        make_time_wait(&v4, TIME_WAIT_V4);
        make_time_wait(&v6, TIME_WAIT_V6);
        // Clients that closed first while their peers hold on: orphaned FIN_WAIT2 (time-wait
        // minisockets, which sockstat counts as `tw`) facing CLOSE_WAIT.
        let held: Vec<TcpStream> = (0..ORPHANS)
            .map(|_| {
                let (client, server) = connect_pair(&v4);
                drop(client);
                server
            })
            .collect();
        let mut expected = FamilyCounts::default();
        expected.ipv4.set(TcpState::Listen, 1);
        expected.ipv6.set(TcpState::Listen, 1);
        expected.ipv4.set(TcpState::TimeWait, TIME_WAIT_V4 as u64);
        expected.ipv6.set(TcpState::TimeWait, TIME_WAIT_V6 as u64);
        expected.ipv4.set(TcpState::FinWait2, ORPHANS as u64);
        expected.ipv4.set(TcpState::CloseWait, ORPHANS as u64);
        wait_until_settled(&expected);

        // The rule the cheap path relies on: ss shows orphaned FIN_WAIT2 sockets with the time-wait
        // timer (`idiag_timer == 3`).
        let fin_wait2 = run(Command::new("ss").args(["-Htano", "state", "fin-wait-2"]));
        let minisockets = fin_wait2
            .lines()
            .filter(|line| line.contains("timer:(timewait"))
            .count();
        assert_eq!(minisockets, ORPHANS, "{fin_wait2}");

        let ss_time_wait = || {
            run(Command::new("ss").args(["-Htan", "state", "time-wait"]))
                .lines()
                .count() as u64
        };
        let without_time_wait = |counts: &FamilyCounts| {
            let mut counts = *counts;
            counts.ipv4.set(TcpState::TimeWait, 0);
            counts.ipv6.set(TcpState::TimeWait, 0);
            counts
        };
        let sysctls = read_sysctls().unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let mut collector =
            BreakdownCollector::with_cheap_path_threshold(TopN::DEFAULT, CHEAP_THRESHOLD);
        let mut walks = String::new();
        let mut full_destinations = None;
        for collection in 0..8 {
            if collection == 3 {
                make_time_wait(&v4, MORE_TIME_WAIT_V4);
                expected.ipv4.set(
                    TcpState::TimeWait,
                    (TIME_WAIT_V4 + MORE_TIME_WAIT_V4) as u64,
                );
                wait_until_settled(&expected);
            }
            let cheap = collector.next_is_cheap();
            walks.push(if cheap { 'c' } else { 'F' });
            let collected = collector
                .collect(&mut counter, &sysctls, Utc::now())
                .unwrap();
            let ss = ss_counts();
            let states = &collected.states;
            let time_wait =
                states.ipv4.get(TcpState::TimeWait) + states.ipv6.get(TcpState::TimeWait);
            assert_eq!(
                time_wait,
                ss_time_wait(),
                "collection {collection}: {}",
                show(states)
            );
            assert_eq!(
                show(&without_time_wait(states)),
                show(&without_time_wait(&ss)),
                "collection {collection}"
            );
            let destinations = time_wait_per_destination(&collected.breakdowns.destinations);
            // The report says when its TIME_WAIT split and destinations were last measured.
            assert_eq!(
                collected.breakdowns.time_wait_detail_from.is_some(),
                cheap,
                "collection {collection}"
            );
            if !cheap {
                // A full dump is exact, per family and per destination.
                assert_eq!(show(states), show(&ss), "collection {collection}");
                assert_eq!(destinations, ss_time_wait_per_destination());
                full_destinations = Some(destinations);
            } else {
                if collection < 3 {
                    // Nothing changed since the full dump: its split is still right.
                    assert_eq!(show(states), show(&ss), "collection {collection}");
                }
                // Per destination, TIME_WAIT is the full dump's, carried over.
                assert_eq!(Some(destinations), full_destinations.clone());
            }
        }
        assert_eq!(walks, "FcccccFc");
        drop((held, v4, v6));
    });
}
