//! The breakdowns sent with each report: ephemeral-port use per destination, CLOSE_WAIT sockets with
//! their owners and age, and accept queues of listening sockets (see [`sockfleet_domain::Breakdowns`]).
//!
//! A collection makes two netlink walks and counts every socket by family and state on the way, so it
//! can stand in for [`NetlinkCounter::count`]:
//! 1. LISTEN only, which the kernel answers from its table of listeners without touching the
//!    connections: the accept queues, and the ports that are listening;
//! 2. every other state: each socket whose local port is ephemeral (in the usable local port range
//!    and not a listening port, so the socket made an outgoing connection) counts for its destination,
//!    and each CLOSE_WAIT socket is noted.
//!
//! Each walk is one dump for both families where the kernel offers it (see [`NetlinkCounter::open`]),
//! so a collection walks the table of connections once, as a plain count does.
//!
//! **The cheap path.** Building the messages of TIME_WAIT sockets is most of a dump's cost on a busy
//! host (at 100k sockets, 88 % of them TIME_WAIT: about 18 ms of 35). When the last full collection
//! saw at least [`CHEAP_PATH_MIN_TIME_WAIT`] TIME_WAIT sockets, up to `FULL_DUMP_EVERY - 1`
//! collections in a row take the cheap path, then a full one runs again (and at once if the cheap
//! TIME_WAIT total falls below the threshold). The cheap path's second walk asks the kernel for every
//! state but LISTEN and TIME_WAIT, and `/proc/thread-self/net/sockstat` is read right after it. Then:
//! - the TIME_WAIT **total** is sockstat's `tw` minus the FIN_WAIT2 sockets of the walk that are
//!   time-wait minisockets (orphans, `idiag_timer == 3`, shown by `ss -tano` as `timer:(timewait,…)`),
//!   which `tw` also counts but the kernel reports as FIN_WAIT2. It equals `ss` while no socket
//!   changes state between the walk and the read;
//! - **estimated:** its split between IPv4 and IPv6 is the last full collection's proportion (all
//!   IPv4 if that saw none);
//! - **estimated:** each destination's TIME_WAIT sockets are the last full collection's, carried
//!   over (and counted in its `ephemeral` sockets too, as a full collection counts them); its other
//!   ephemeral sockets are current.
//!
//! Every other state, per family, and every other breakdown is exact on both paths. The protocol has
//! no flag for the estimated fields yet, so each cheap collection says so in a debug log.
//!
//! Then, only if there are CLOSE_WAIT sockets, their owners are looked up in `/proc/PID/fd`
//! ([`ProcessScanner`]): the descriptors that held them at the last collection are checked first,
//! and the process tables are read only for sockets still unaccounted for. The tables of the walks
//! live in the [`BreakdownCollector`] and are cleared, not freed, between collections, so a
//! steady-state walk allocates nothing per socket.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use sockfleet_domain::{
    Attribution, Breakdowns, CloseWaitSocket, DestinationUse, FamilyCounts, ListenQueue, Omitted,
    ProcessCloseWait, SysctlValues, TcpState, TopN,
};

use super::kernel_counters::read_sockstat_time_wait;
use super::netlink::{SocketView, SocketVisitor};
use super::process::ProcessScanner;
use super::{CollectError, NetlinkCounter};

/// The sysctl with the local port range `connect()` picks from.
const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
/// The sysctl with ports `connect()` must not pick.
const RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";
/// The kernel's default local port range, used if the setting is missing.
const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);
/// Tables keep at most this many times the room their last use needed (and at least
/// [`MIN_KEPT_ROOM`]), so a burst of sockets does not pin memory for good.
const ROOM_FACTOR: usize = 4;
const MIN_KEPT_ROOM: usize = 1024;
/// The TIME_WAIT sockets the last full collection must have seen for the next ones to take the cheap
/// path (see the module documentation); below it a full dump is cheap enough.
pub const CHEAP_PATH_MIN_TIME_WAIT: u64 = 20_000;
/// On the cheap path, a full collection still runs at least once every this many collections.
const FULL_DUMP_EVERY: u32 = 6;
/// `idiag_timer` of a time-wait minisocket.
const TIMEWAIT_TIMER: u8 = 3;

/// What one breakdown collection found: the per-state counts (as [`NetlinkCounter::count`] would
/// give them) and the breakdowns.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakdownCollection {
    pub states: FamilyCounts,
    pub breakdowns: Breakdowns,
}

/// Collects [`Breakdowns`]; lives on the collector thread, next to its [`NetlinkCounter`].
///
/// Besides reusable tables it remembers when each CLOSE_WAIT socket was first seen (by the kernel's
/// socket cookie, forgotten once the socket is gone) and which processes held them last.
#[derive(Debug)]
pub struct BreakdownCollector {
    top_n: TopN,
    generation: u64,
    /// CLOSE_WAIT socket cookie → when first seen, and the collection that saw it last.
    first_seen: HashMap<u64, Seen>,
    listening: PortSet,
    ephemeral: PortSet,
    listeners: Vec<ListenQueue>,
    destinations: HashMap<DestinationKey, Tally>,
    close_wait: Vec<CloseWaitEntry>,
    processes: ProcessScanner,
    /// Reused to rank destinations.
    ranked_destinations: Vec<DestinationUse>,
    /// The cheap path's threshold: [`CHEAP_PATH_MIN_TIME_WAIT`] unless set for a test.
    cheap_path_min_time_wait: u64,
    /// What the last full collection saw, once there has been one.
    last_full: Option<FullTimeWait>,
    /// Cheap collections since the last full one.
    cheap_since_full: u32,
    /// Reused to read sockstat.
    sockstat: String,
}

/// TIME_WAIT as the last full collection saw it, for the cheap collections after it.
#[derive(Debug, Default)]
struct FullTimeWait {
    /// When that full collection ran.
    collected_at: DateTime<Utc>,
    ipv4: u64,
    ipv6: u64,
    /// The destinations with TIME_WAIT sockets, and how many.
    destinations: Vec<(DestinationKey, u32)>,
}

/// How a collection walks the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Every state but LISTEN.
    Full,
    /// Every state but LISTEN and TIME_WAIT, TIME_WAIT from sockstat.
    Cheap,
}

impl BreakdownCollector {
    /// A collector keeping `top_n` entries per list, reading processes from `/proc`.
    pub fn new(top_n: TopN) -> BreakdownCollector {
        BreakdownCollector::with_proc_root(top_n, "/proc")
    }

    /// A collector reading processes from `proc_root` instead of `/proc`.
    pub fn with_proc_root(top_n: TopN, proc_root: impl Into<PathBuf>) -> BreakdownCollector {
        BreakdownCollector {
            top_n,
            generation: 0,
            first_seen: HashMap::new(),
            listening: PortSet::new(),
            ephemeral: PortSet::new(),
            listeners: Vec::new(),
            destinations: HashMap::new(),
            close_wait: Vec::new(),
            processes: ProcessScanner::new(proc_root),
            ranked_destinations: Vec::new(),
            cheap_path_min_time_wait: CHEAP_PATH_MIN_TIME_WAIT,
            last_full: None,
            cheap_since_full: 0,
            sockstat: String::new(),
        }
    }

    /// A collector (reading `/proc`) whose cheap path starts at `threshold` TIME_WAIT sockets instead
    /// of [`CHEAP_PATH_MIN_TIME_WAIT`]: for tests and the benchmark, to see the cheap path with fewer
    /// sockets (0: after the first collection, whatever the count).
    pub fn with_cheap_path_threshold(top_n: TopN, threshold: u64) -> BreakdownCollector {
        let mut collector = BreakdownCollector::new(top_n);
        collector.cheap_path_min_time_wait = threshold;
        collector
    }

    /// Whether the next collection takes the cheap path (see the module documentation).
    pub fn next_is_cheap(&self) -> bool {
        self.next_walk() == Walk::Cheap
    }

    fn next_walk(&self) -> Walk {
        match &self.last_full {
            Some(full)
                if full.ipv4 + full.ipv6 >= self.cheap_path_min_time_wait
                    && self.cheap_since_full + 1 < FULL_DUMP_EVERY =>
            {
                Walk::Cheap
            }
            _ => Walk::Full,
        }
    }

    /// How many entries each list keeps.
    pub fn top_n(&self) -> TopN {
        self.top_n
    }

    /// Walks the sockets of the counter's namespace and builds the breakdowns. `sysctls` are that
    /// namespace's (for the local port range); `now` is the collection's time, the first-seen time of
    /// CLOSE_WAIT sockets not seen before.
    pub fn collect(
        &mut self,
        counter: &mut NetlinkCounter,
        sysctls: &SysctlValues,
        now: DateTime<Utc>,
    ) -> Result<BreakdownCollection, CollectError> {
        let usable_local_ports = self.ephemeral.set_usable_ports(sysctls)?;
        self.generation += 1;
        let path = self.next_walk();

        let mut listen = ListenPass {
            listeners: &mut self.listeners,
            listening: &mut self.listening,
            counts: FamilyCounts::default(),
        };
        listen.restart();
        counter.visit([TcpState::Listen], &mut listen)?;
        let listen_counts = listen.counts;
        self.ephemeral.remove_all(&self.listening);

        let mut connections = ConnectionPass {
            ephemeral: &self.ephemeral,
            destinations: &mut self.destinations,
            close_wait: &mut self.close_wait,
            first_seen: &mut self.first_seen,
            generation: self.generation,
            now,
            counts: FamilyCounts::default(),
            fin_wait2_minisockets: 0,
        };
        connections.restart();
        let others = TcpState::ALL.into_iter().filter(|state| {
            *state != TcpState::Listen && (path == Walk::Full || *state != TcpState::TimeWait)
        });
        let walked = counter.visit(others, &mut connections);
        let mut connection_counts = connections.counts;
        let minisockets = connections.fin_wait2_minisockets;
        if let Err(error) = walked {
            self.cheap_since_full = FULL_DUMP_EVERY;
            return Err(error);
        }
        match path {
            Walk::Full => self.remember_full(&connection_counts, now),
            Walk::Cheap => self.estimate_time_wait(&mut connection_counts, minisockets)?,
        }
        let generation = self.generation;
        self.first_seen
            .retain(|_, seen| seen.generation == generation);

        let attribution = self.attribute();
        let breakdowns = Breakdowns {
            usable_local_ports,
            destinations: self.rank_destinations(),
            close_wait_sockets: self.rank_close_wait_sockets(),
            close_wait_processes: self.rank_processes(),
            listeners: self.rank_listeners(),
            attribution,
            omitted: Omitted {
                destinations: self.omitted(self.destinations.len()),
                close_wait_sockets: self.omitted(self.close_wait.len()),
                close_wait_processes: self.omitted(self.processes.owners().len()),
                listeners: self.omitted(self.listeners.len()),
            },
            time_wait_detail_from: match path {
                Walk::Full => None,
                Walk::Cheap => self.last_full.as_ref().map(|full| full.collected_at),
            },
        };
        self.trim();
        Ok(BreakdownCollection {
            states: FamilyCounts {
                ipv4: listen_counts.ipv4.plus(&connection_counts.ipv4),
                ipv6: listen_counts.ipv6.plus(&connection_counts.ipv6),
            },
            breakdowns,
        })
    }

    /// After a full collection: keeps its TIME_WAIT by family and by destination for the cheap ones.
    fn remember_full(&mut self, counts: &FamilyCounts, collected_at: DateTime<Utc>) {
        let full = self.last_full.get_or_insert_with(FullTimeWait::default);
        full.collected_at = collected_at;
        full.ipv4 = counts.ipv4.get(TcpState::TimeWait);
        full.ipv6 = counts.ipv6.get(TcpState::TimeWait);
        full.destinations.clear();
        full.destinations.extend(
            self.destinations
                .iter()
                .filter(|(_, tally)| tally.time_wait > 0)
                .map(|(key, tally)| (*key, tally.time_wait)),
        );
        if full.destinations.capacity() > ROOM_FACTOR * full.destinations.len().max(MIN_KEPT_ROOM) {
            full.destinations
                .shrink_to(full.destinations.len().max(MIN_KEPT_ROOM));
        }
        self.cheap_since_full = 0;
    }

    /// After a cheap walk: fills in TIME_WAIT from sockstat, split by family as the last full
    /// collection was, and carries that collection's TIME_WAIT destinations over.
    fn estimate_time_wait(
        &mut self,
        counts: &mut FamilyCounts,
        fin_wait2_minisockets: u64,
    ) -> Result<(), CollectError> {
        match read_sockstat_time_wait(&mut self.sockstat) {
            Ok(sockstat) => {
                self.apply_sockstat(counts, sockstat, fin_wait2_minisockets);
                Ok(())
            }
            Err(error) => {
                self.cheap_since_full = FULL_DUMP_EVERY;
                Err(error)
            }
        }
    }

    /// The cheap path's derivation from sockstat's `tw` (see [`BreakdownCollector::estimate_time_wait`]).
    fn apply_sockstat(
        &mut self,
        counts: &mut FamilyCounts,
        sockstat: u64,
        fin_wait2_minisockets: u64,
    ) {
        self.cheap_since_full += 1;
        let Some(full) = &self.last_full else {
            return;
        };
        let (ipv4, ipv6) = split_time_wait(
            sockstat.saturating_sub(fin_wait2_minisockets),
            full.ipv4,
            full.ipv6,
        );
        counts.ipv4.set(TcpState::TimeWait, ipv4);
        counts.ipv6.set(TcpState::TimeWait, ipv6);
        for (key, time_wait) in &full.destinations {
            let tally = self.destinations.entry(*key).or_default();
            tally.time_wait = tally.time_wait.saturating_add(*time_wait);
            tally.ephemeral = tally.ephemeral.saturating_add(*time_wait);
        }
        tracing::debug!(
            time_wait = ipv4 + ipv6,
            sockstat_tw = sockstat,
            fin_wait2_minisockets,
            estimated_ipv4 = ipv4,
            estimated_ipv6 = ipv6,
            carried_destinations = full.destinations.len(),
            "cheap collection: TIME_WAIT total from sockstat; its IPv4/IPv6 split and the \
             destinations' TIME_WAIT are estimates from the last full collection"
        );
        if ipv4 + ipv6 < self.cheap_path_min_time_wait {
            self.cheap_since_full = FULL_DUMP_EVERY;
        }
    }

    /// Finds the owners of the CLOSE_WAIT sockets, if there are any.
    fn attribute(&mut self) -> Attribution {
        let outcome = self
            .processes
            .scan(self.close_wait.iter().map(|socket| socket.inode));
        for socket in &mut self.close_wait {
            socket.pid = self.processes.owner_of(socket.inode);
        }
        outcome.attribution(self.processes.proc_root())
    }

    fn rank_destinations(&mut self) -> Vec<DestinationUse> {
        self.ranked_destinations.clear();
        self.ranked_destinations
            .extend(self.destinations.iter().map(|(key, tally)| DestinationUse {
                local_ip: key.local_ip,
                remote_ip: key.remote_ip,
                remote_port: key.remote_port,
                time_wait: tally.time_wait,
                ephemeral: tally.ephemeral,
            }));
        top(&mut self.ranked_destinations, self.top_n, destination_order).to_vec()
    }

    fn rank_close_wait_sockets(&mut self) -> Vec<CloseWaitSocket> {
        let oldest = top(&mut self.close_wait, self.top_n, |a, b| {
            (a.first_seen, a.inode, a.local, a.remote).cmp(&(
                b.first_seen,
                b.inode,
                b.local,
                b.remote,
            ))
        });
        let mut names = CommCache::default();
        oldest
            .iter()
            .map(|socket| CloseWaitSocket {
                inode: u64::from(socket.inode),
                local: socket.local,
                remote: socket.remote,
                pid: socket.pid,
                comm: socket.pid.and_then(|pid| names.comm(&self.processes, pid)),
                first_seen: socket.first_seen,
            })
            .collect()
    }

    fn rank_processes(&mut self) -> Vec<ProcessCloseWait> {
        let mut owners = self.processes.owners().to_vec();
        top(&mut owners, self.top_n, |a, b| {
            (Reverse(a.sockets), a.pid).cmp(&(Reverse(b.sockets), b.pid))
        })
        .iter()
        .map(|owner| ProcessCloseWait {
            pid: owner.pid,
            comm: self.processes.comm(owner.pid),
            close_wait: owner.sockets,
            open_fds: owner.open_fds,
            fd_limit: self.processes.fd_limit(owner.pid),
        })
        .collect()
    }

    fn rank_listeners(&mut self) -> Vec<ListenQueue> {
        top(&mut self.listeners, self.top_n, listener_order).to_vec()
    }

    fn omitted(&self, found: usize) -> u32 {
        u32::try_from(found.saturating_sub(self.top_n.as_usize())).unwrap_or(u32::MAX)
    }

    /// Gives back memory a burst of sockets left in the tables.
    fn trim(&mut self) {
        let keep = |len: usize| len.max(MIN_KEPT_ROOM);
        if self.destinations.capacity() > ROOM_FACTOR * keep(self.destinations.len()) {
            self.destinations.shrink_to(keep(self.destinations.len()));
        }
        if self.ranked_destinations.capacity() > ROOM_FACTOR * keep(self.ranked_destinations.len())
        {
            self.ranked_destinations
                .shrink_to(keep(self.ranked_destinations.len()));
        }
        if self.close_wait.capacity() > ROOM_FACTOR * keep(self.close_wait.len()) {
            self.close_wait.shrink_to(keep(self.close_wait.len()));
        }
        if self.first_seen.capacity() > ROOM_FACTOR * keep(self.first_seen.len()) {
            self.first_seen.shrink_to(keep(self.first_seen.len()));
        }
    }
}

impl Default for BreakdownCollector {
    fn default() -> BreakdownCollector {
        BreakdownCollector::new(TopN::DEFAULT)
    }
}

/// Splits a TIME_WAIT `total` between IPv4 and IPv6 in the proportion `ipv4 : ipv6` (all IPv4 if both
/// are 0), rounding IPv6 to the nearest.
fn split_time_wait(total: u64, ipv4: u64, ipv6: u64) -> (u64, u64) {
    let seen = u128::from(ipv4) + u128::from(ipv6);
    if seen == 0 {
        return (total, 0);
    }
    let share = (u128::from(total) * u128::from(ipv6) + seen / 2) / seen;
    let share = u64::try_from(share).unwrap_or(total).min(total);
    (total - share, share)
}

/// Destinations with the most ephemeral sockets first, then the most TIME_WAIT, then by address.
fn destination_order(a: &DestinationUse, b: &DestinationUse) -> Ordering {
    let key = |d: &DestinationUse| {
        (
            Reverse(d.ephemeral),
            Reverse(d.time_wait),
            d.local_ip,
            d.remote_ip,
            d.remote_port,
        )
    };
    key(a).cmp(&key(b))
}

/// Listeners with the fullest queue relative to its backlog first (a queue with a zero backlog is
/// full), then the longest queue, then by address.
fn listener_order(a: &ListenQueue, b: &ListenQueue) -> Ordering {
    // a.queued / a.backlog > b.queued / b.backlog, without division.
    let fuller = (u64::from(b.queued) * u64::from(a.backlog))
        .cmp(&(u64::from(a.queued) * u64::from(b.backlog)));
    let zero_backlog = |q: &ListenQueue| q.backlog == 0 && q.queued > 0;
    zero_backlog(b)
        .cmp(&zero_backlog(a))
        .then(fuller)
        .then(b.queued.cmp(&a.queued))
        .then(a.local.cmp(&b.local))
}

/// The first `n` of `items` in `order`, sorted; the rest of `items` is left in no particular order.
fn top<T>(items: &mut [T], n: TopN, order: impl Fn(&T, &T) -> Ordering) -> &[T] {
    let n = n.as_usize().min(items.len());
    if n < items.len() {
        items.select_nth_unstable_by(n, &order);
    }
    let head = items.get_mut(..n).unwrap_or_default();
    head.sort_unstable_by(order);
    head
}

/// Command names read for one report, so a process holding many sockets is read once.
#[derive(Default)]
struct CommCache(Vec<(u32, Option<String>)>);

impl CommCache {
    fn comm(&mut self, processes: &ProcessScanner, pid: u32) -> Option<String> {
        if let Some((_, comm)) = self.0.iter().find(|(known, _)| *known == pid) {
            return comm.clone();
        }
        let comm = processes.comm(pid);
        self.0.push((pid, comm.clone()));
        comm
    }
}

/// The first sighting of a CLOSE_WAIT socket.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: DateTime<Utc>,
    generation: u64,
}

/// A CLOSE_WAIT socket of the current collection.
#[derive(Debug, Clone, Copy)]
struct CloseWaitEntry {
    inode: u32,
    local: SocketAddr,
    remote: SocketAddr,
    first_seen: DateTime<Utc>,
    pid: Option<u32>,
}

/// `(local IP, remote IP, remote port)`, IPv4-mapped addresses as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DestinationKey {
    local_ip: IpAddr,
    remote_ip: IpAddr,
    remote_port: u16,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    time_wait: u32,
    ephemeral: u32,
}

/// The first walk: listening sockets.
struct ListenPass<'a> {
    listeners: &'a mut Vec<ListenQueue>,
    listening: &'a mut PortSet,
    counts: FamilyCounts,
}

impl SocketVisitor for ListenPass<'_> {
    fn socket(&mut self, socket: &SocketView<'_>) {
        self.counts
            .family_mut(socket.family())
            .increment(socket.state());
        self.listening.insert(socket.local_port());
        self.listeners.push(ListenQueue {
            local: canonical(socket.local()),
            queued: socket.rqueue(),
            backlog: socket.wqueue(),
        });
    }

    fn restart(&mut self) {
        self.listeners.clear();
        self.listening.clear();
        self.counts = FamilyCounts::default();
    }
}

/// The second walk: every state but LISTEN.
struct ConnectionPass<'a> {
    ephemeral: &'a PortSet,
    destinations: &'a mut HashMap<DestinationKey, Tally>,
    close_wait: &'a mut Vec<CloseWaitEntry>,
    first_seen: &'a mut HashMap<u64, Seen>,
    generation: u64,
    now: DateTime<Utc>,
    counts: FamilyCounts,
    /// FIN_WAIT2 sockets that are time-wait minisockets (orphans), which sockstat counts as `tw`.
    fin_wait2_minisockets: u64,
}

impl SocketVisitor for ConnectionPass<'_> {
    fn socket(&mut self, socket: &SocketView<'_>) {
        let state = socket.state();
        self.counts.family_mut(socket.family()).increment(state);
        if state == TcpState::FinWait2 && socket.timer() == TIMEWAIT_TIMER {
            self.fin_wait2_minisockets += 1;
        }
        if socket.remote_port() != 0 && self.ephemeral.contains(socket.local_port()) {
            let key = DestinationKey {
                local_ip: socket.local_ip().to_canonical(),
                remote_ip: socket.remote_ip().to_canonical(),
                remote_port: socket.remote_port(),
            };
            let tally = self.destinations.entry(key).or_default();
            tally.ephemeral = tally.ephemeral.saturating_add(1);
            if state == TcpState::TimeWait {
                tally.time_wait = tally.time_wait.saturating_add(1);
            }
        }
        if state == TcpState::CloseWait {
            let seen = self.first_seen.entry(socket.cookie()).or_insert(Seen {
                at: self.now,
                generation: self.generation,
            });
            seen.generation = self.generation;
            self.close_wait.push(CloseWaitEntry {
                inode: socket.inode(),
                local: canonical(socket.local()),
                remote: canonical(socket.remote()),
                first_seen: seen.at,
                pid: None,
            });
        }
    }

    fn restart(&mut self) {
        self.destinations.clear();
        self.close_wait.clear();
        self.counts = FamilyCounts::default();
        self.fin_wait2_minisockets = 0;
    }
}

fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A set of TCP ports, one bit each.
#[derive(Debug, Clone)]
struct PortSet(Box<[u64; 1024]>);

impl PortSet {
    fn new() -> PortSet {
        PortSet(Box::new([0; 1024]))
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }

    fn insert(&mut self, port: u16) {
        let (word, bit) = PortSet::position(port);
        if let Some(word) = self.0.get_mut(word) {
            *word |= bit;
        }
    }

    fn contains(&self, port: u16) -> bool {
        let (word, bit) = PortSet::position(port);
        self.0.get(word).is_some_and(|word| word & bit != 0)
    }

    /// Removes every port of `other`.
    fn remove_all(&mut self, other: &PortSet) {
        for (word, remove) in self.0.iter_mut().zip(other.0.iter()) {
            *word &= !remove;
        }
    }

    fn len(&self) -> u32 {
        self.0.iter().map(|word| word.count_ones()).sum()
    }

    fn position(port: u16) -> (usize, u64) {
        (usize::from(port / 64), 1 << (port % 64))
    }

    /// Makes this the set of ports `connect()` may choose: `ip_local_port_range` minus
    /// `ip_local_reserved_ports`. Returns how many there are.
    fn set_usable_ports(&mut self, sysctls: &SysctlValues) -> Result<u32, CollectError> {
        let value = |name: &str| sysctls.get(name).and_then(Option::as_deref);
        let (low, high) = match value(PORT_RANGE) {
            Some(raw) => parse_port_range(raw).ok_or_else(|| malformed(PORT_RANGE, raw))?,
            None => DEFAULT_PORT_RANGE,
        };
        self.clear();
        for port in low..=high {
            self.insert(port);
        }
        if let Some(raw) = value(RESERVED_PORTS) {
            let reserved = parse_port_list(raw).ok_or_else(|| malformed(RESERVED_PORTS, raw))?;
            for (first, last) in reserved {
                for port in first..=last {
                    let (word, bit) = PortSet::position(port);
                    if let Some(word) = self.0.get_mut(word) {
                        *word &= !bit;
                    }
                }
            }
        }
        Ok(self.len())
    }
}

fn malformed(name: &str, raw: &str) -> CollectError {
    CollectError::ProcMalformed {
        path: PathBuf::from("/proc/sys").join(name.replace('.', "/")),
        line: raw.to_owned(),
    }
}

/// `ip_local_port_range`: two ports, low then high, separated by white space.
fn parse_port_range(raw: &str) -> Option<(u16, u16)> {
    let mut ports = raw.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high)), None) = (ports.next(), ports.next(), ports.next()) else {
        return None;
    };
    (low <= high).then_some((low, high))
}

/// `ip_local_reserved_ports`: a comma-separated list of ports and ranges `a-b`; empty for none.
fn parse_port_list(raw: &str) -> Option<impl Iterator<Item = (u16, u16)>> {
    let mut ranges = Vec::new();
    for item in raw
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let range = match item.split_once('-') {
            Some((first, last)) => (first.trim().parse().ok()?, last.trim().parse().ok()?),
            None => {
                let port = item.parse().ok()?;
                (port, port)
            }
        };
        if range.0 > range.1 {
            return None;
        }
        ranges.push(range);
    }
    Some(ranges.into_iter())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::netlink::testing::FakeSocket;
    use super::*;

    fn sysctls(range: Option<&str>, reserved: Option<&str>) -> SysctlValues {
        let mut values = SysctlValues::new();
        values.insert(PORT_RANGE.into(), range.map(str::to_owned));
        values.insert(RESERVED_PORTS.into(), reserved.map(str::to_owned));
        values
    }

    #[test]
    fn usable_ports_are_the_range_minus_the_reserved_ones() {
        let mut ports = PortSet::new();
        let usable = |ports: &mut PortSet, range, reserved| {
            ports.set_usable_ports(&sysctls(range, reserved))
        };
        assert_eq!(
            usable(&mut ports, Some("32768 60999"), Some("")).unwrap(),
            28232
        );
        assert!(ports.contains(32768) && ports.contains(60999));
        assert!(!ports.contains(32767) && !ports.contains(61000));
        assert_eq!(usable(&mut ports, None, None).unwrap(), 28232);
        assert_eq!(
            usable(
                &mut ports,
                Some("1024 65535"),
                Some("8080,9000-9009, 70-80,65535")
            )
            .unwrap(),
            64512 - 1 - 10 - 1
        );
        assert!(!ports.contains(8080) && !ports.contains(9005) && !ports.contains(65535));
        assert!(ports.contains(9010) && ports.contains(65534));
        assert_eq!(
            usable(&mut ports, Some("40000 40000"), Some("40000")).unwrap(),
            0
        );
        for (range, reserved) in [
            ("60999 32768", ""),
            ("1 2 3", ""),
            ("32768", ""),
            ("a b", ""),
            ("1024 65536", ""),
            ("1024 2048", "9-8"),
            ("1024 2048", "x"),
            ("1024 2048", "1-2-3"),
        ] {
            assert!(
                matches!(
                    usable(&mut ports, Some(range), Some(reserved)),
                    Err(CollectError::ProcMalformed { .. })
                ),
                "{range:?} {reserved:?}"
            );
        }
    }

    #[test]
    fn top_n_keeps_the_first_in_order() {
        let three = TopN::new(3).unwrap();
        let mut items = [5, 1, 9, 3, 7, 2, 8];
        assert_eq!(top(&mut items, three, |a, b| b.cmp(a)), [9, 8, 7]);
        let mut few = [2, 1];
        assert_eq!(top(&mut few, three, Ord::cmp), [1, 2]);
        let mut none: [u8; 0] = [];
        assert!(top(&mut none, three, Ord::cmp).is_empty());
    }

    #[test]
    fn destinations_rank_by_ephemeral_then_time_wait() {
        let destination = |remote_port, time_wait, ephemeral| DestinationUse {
            local_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.2".parse().unwrap(),
            remote_port,
            time_wait,
            ephemeral,
        };
        let mut items = [
            destination(1, 0, 5),
            destination(2, 4, 5),
            destination(3, 9, 9),
            destination(4, 0, 1),
            destination(5, 4, 5),
        ];
        let ranked: Vec<u16> = top(&mut items, TopN::new(4).unwrap(), destination_order)
            .iter()
            .map(|d| d.remote_port)
            .collect();
        assert_eq!(ranked, [3, 2, 5, 1]);
    }

    #[test]
    fn listeners_rank_by_fill_ratio() {
        let listener = |port, queued, backlog| ListenQueue {
            local: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
            queued,
            backlog,
        };
        let mut items = [
            listener(1, 0, 128),
            listener(2, 64, 128),
            listener(3, 3, 4),
            listener(4, 1, 0),
            listener(5, 0, 0),
            listener(6, 2, 4),
            listener(7, 129, 128),
            listener(8, 1, 2),
        ];
        let ranked: Vec<u16> = top(&mut items, TopN::new(8).unwrap(), listener_order)
            .iter()
            .map(|l| l.local.port())
            .collect();
        assert_eq!(ranked, [4, 7, 3, 2, 6, 8, 1, 5]);
    }

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, second).unwrap()
    }

    /// A connection pass over `sockets` with the collector's tables, as `collect` runs it.
    fn connection_pass(
        collector: &mut BreakdownCollector,
        now: DateTime<Utc>,
        sockets: &[FakeSocket],
    ) -> FamilyCounts {
        collector.generation += 1;
        let mut pass = ConnectionPass {
            ephemeral: &collector.ephemeral,
            destinations: &mut collector.destinations,
            close_wait: &mut collector.close_wait,
            first_seen: &mut collector.first_seen,
            generation: collector.generation,
            now,
            counts: FamilyCounts::default(),
            fin_wait2_minisockets: 0,
        };
        pass.restart();
        for socket in sockets {
            socket.visit(&mut pass);
        }
        let counts = pass.counts;
        let generation = collector.generation;
        collector
            .first_seen
            .retain(|_, seen| seen.generation == generation);
        counts
    }

    fn close_wait(cookie: u64, inode: u32) -> FakeSocket {
        let mut socket = FakeSocket::new(TcpState::CloseWait, "127.0.0.1:8080", "127.0.0.1:40001");
        socket.cookie = cookie;
        socket.inode = inode;
        socket
    }

    #[test]
    fn first_seen_persists_and_is_pruned() {
        let mut collector = BreakdownCollector::default();
        connection_pass(
            &mut collector,
            at(0),
            &[close_wait(1, 11), close_wait(2, 12)],
        );
        connection_pass(
            &mut collector,
            at(10),
            &[close_wait(2, 12), close_wait(3, 13)],
        );
        let seen: Vec<(u32, DateTime<Utc>)> = collector
            .close_wait
            .iter()
            .map(|socket| (socket.inode, socket.first_seen))
            .collect();
        assert_eq!(seen, [(12, at(0)), (13, at(10))]);
        assert_eq!(collector.first_seen.len(), 2);
        assert!(!collector.first_seen.contains_key(&1));

        // Gone for one collection, the socket is new when it shows up again.
        connection_pass(&mut collector, at(20), &[close_wait(3, 13)]);
        connection_pass(
            &mut collector,
            at(30),
            &[close_wait(2, 12), close_wait(3, 13)],
        );
        let seen: Vec<(u32, DateTime<Utc>)> = collector
            .close_wait
            .iter()
            .map(|socket| (socket.inode, socket.first_seen))
            .collect();
        assert_eq!(seen, [(12, at(30)), (13, at(10))]);
        let oldest: Vec<u64> = collector
            .rank_close_wait_sockets()
            .iter()
            .map(|socket| socket.inode)
            .collect();
        assert_eq!(oldest, [13, 12]);
    }

    #[test]
    fn only_ephemeral_local_ports_count_for_destinations() {
        let mut collector = BreakdownCollector::new(TopN::new(2).unwrap());
        collector
            .ephemeral
            .set_usable_ports(&sysctls(Some("32768 60999"), Some("33000")))
            .unwrap();
        let mut listening = PortSet::new();
        listening.insert(40000);
        collector.ephemeral.remove_all(&listening);
        let sockets = [
            // Outgoing to 10.0.0.9:443, one in TIME_WAIT.
            FakeSocket::new(TcpState::Established, "10.0.0.1:32768", "10.0.0.9:443"),
            FakeSocket::new(TcpState::TimeWait, "10.0.0.1:50000", "10.0.0.9:443"),
            // A dual-stack socket to the same destination, IPv4-mapped: the same entry.
            FakeSocket::new(
                TcpState::SynSent,
                "[::ffff:10.0.0.1]:60999",
                "[::ffff:10.0.0.9]:443",
            ),
            // Another destination, and another local address.
            FakeSocket::new(TcpState::FinWait2, "10.0.0.1:45000", "10.0.0.9:80"),
            FakeSocket::new(TcpState::TimeWait, "10.0.0.2:45000", "10.0.0.9:80"),
            FakeSocket::new(
                TcpState::TimeWait,
                "[2001:db8::1]:45001",
                "[2001:db8::2]:80",
            ),
            // Not ephemeral: below the range, reserved, a listening port (an accepted connection).
            FakeSocket::new(TcpState::TimeWait, "10.0.0.1:8080", "10.0.0.7:50001"),
            FakeSocket::new(TcpState::Established, "10.0.0.1:33000", "10.0.0.9:443"),
            FakeSocket::new(TcpState::CloseWait, "10.0.0.1:40000", "10.0.0.8:50002"),
        ];
        let counts = connection_pass(&mut collector, at(0), &sockets);
        assert_eq!(counts.ipv4.get(TcpState::TimeWait), 3);
        assert_eq!(counts.ipv6.get(TcpState::TimeWait), 1);
        assert_eq!(counts.ipv6.get(TcpState::SynSent), 1);
        assert_eq!(counts.ipv4.total() + counts.ipv6.total(), 9);
        assert_eq!(collector.destinations.len(), 4);
        let ranked = collector.rank_destinations();
        let to = |local: &str, remote: &str, time_wait, ephemeral| {
            let remote: SocketAddr = remote.parse().unwrap();
            DestinationUse {
                local_ip: local.parse().unwrap(),
                remote_ip: remote.ip(),
                remote_port: remote.port(),
                time_wait,
                ephemeral,
            }
        };
        assert_eq!(
            ranked,
            [
                to("10.0.0.1", "10.0.0.9:443", 1, 3),
                to("10.0.0.2", "10.0.0.9:80", 1, 1),
            ]
        );
        assert_eq!(collector.omitted(collector.destinations.len()), 2);
        assert_eq!(collector.close_wait.len(), 1);
    }

    #[test]
    fn time_wait_splits_as_the_last_full_collection() {
        assert_eq!(split_time_wait(1000, 98, 2), (980, 20));
        assert_eq!(split_time_wait(1000, 0, 0), (1000, 0));
        assert_eq!(split_time_wait(0, 5, 5), (0, 0));
        assert_eq!(split_time_wait(7, 0, 3), (0, 7));
        assert_eq!(split_time_wait(5, 1, 1), (2, 3));
        assert_eq!(split_time_wait(u64::MAX, u64::MAX, 1), (u64::MAX - 1, 1));
    }

    fn time_wait_counts(ipv4: u64, ipv6: u64) -> FamilyCounts {
        let mut counts = FamilyCounts::default();
        counts.ipv4.set(TcpState::TimeWait, ipv4);
        counts.ipv6.set(TcpState::TimeWait, ipv6);
        counts.ipv4.set(TcpState::Established, 4);
        counts
    }

    #[test]
    fn cheap_path_needs_enough_time_wait_and_a_full_dump_every_sixth_time() {
        let mut collector = BreakdownCollector::with_cheap_path_threshold(TopN::DEFAULT, 100);
        // No full collection yet.
        assert!(!collector.next_is_cheap());
        collector.remember_full(&time_wait_counts(60, 39), Utc::now());
        assert!(
            !collector.next_is_cheap(),
            "99 TIME_WAIT is below the threshold"
        );
        collector.remember_full(&time_wait_counts(90, 10), Utc::now());
        let mut walks = Vec::new();
        for _ in 0..13 {
            if collector.next_is_cheap() {
                walks.push('c');
                collector.apply_sockstat(&mut time_wait_counts(0, 0), 150, 0);
            } else {
                walks.push('F');
                collector.remember_full(&time_wait_counts(90, 10), Utc::now());
            }
        }
        assert_eq!(String::from_iter(walks), "cccccFcccccFc");

        // A cheap total below the threshold sends the next collection to a full dump.
        collector.remember_full(&time_wait_counts(90, 10), Utc::now());
        collector.apply_sockstat(&mut time_wait_counts(0, 0), 120, 30);
        assert!(!collector.next_is_cheap());
        // As does a failed walk or sockstat read (`collect` sets the same).
        collector.remember_full(&time_wait_counts(90, 10), Utc::now());
        assert!(collector.next_is_cheap());
        collector.cheap_since_full = FULL_DUMP_EVERY;
        assert!(!collector.next_is_cheap());
    }

    #[test]
    fn cheap_time_wait_is_sockstat_minus_minisockets_with_the_last_split_and_destinations() {
        let mut collector = BreakdownCollector::with_cheap_path_threshold(TopN::DEFAULT, 1);
        collector
            .ephemeral
            .set_usable_ports(&sysctls(Some("32768 60999"), None))
            .unwrap();
        // A full walk: 3 IPv4 TIME_WAIT (2 to :443, 1 to :80), 1 IPv6.
        let full = [
            FakeSocket::new(TcpState::TimeWait, "10.0.0.1:50000", "10.0.0.9:443"),
            FakeSocket::new(TcpState::TimeWait, "10.0.0.1:50001", "10.0.0.9:443"),
            FakeSocket::new(TcpState::TimeWait, "10.0.0.1:50002", "10.0.0.9:80"),
            FakeSocket::new(
                TcpState::TimeWait,
                "[2001:db8::1]:50003",
                "[2001:db8::2]:80",
            ),
            FakeSocket::new(TcpState::Established, "10.0.0.1:50004", "10.0.0.9:443"),
        ];
        let counts = connection_pass(&mut collector, at(0), &full);
        collector.remember_full(&counts, Utc::now());
        assert!(collector.next_is_cheap());

        // A cheap walk: no TIME_WAIT; one orphaned FIN_WAIT2 (a time-wait minisocket) and one that
        // still has its owner.
        let mut orphan = FakeSocket::new(TcpState::FinWait2, "10.0.0.1:50005", "10.0.0.9:443");
        orphan.timer = TIMEWAIT_TIMER;
        let mut owned = FakeSocket::new(TcpState::FinWait2, "10.0.0.1:50006", "10.0.0.9:443");
        owned.timer = 0;
        let cheap = [
            orphan,
            owned,
            FakeSocket::new(TcpState::Established, "10.0.0.1:50004", "10.0.0.9:443"),
        ];
        collector.generation += 1;
        let mut pass = ConnectionPass {
            ephemeral: &collector.ephemeral,
            destinations: &mut collector.destinations,
            close_wait: &mut collector.close_wait,
            first_seen: &mut collector.first_seen,
            generation: collector.generation,
            now: at(10),
            counts: FamilyCounts::default(),
            fin_wait2_minisockets: 0,
        };
        pass.restart();
        for socket in &cheap {
            socket.visit(&mut pass);
        }
        let mut counts = pass.counts;
        let minisockets = pass.fin_wait2_minisockets;
        assert_eq!(minisockets, 1);
        // sockstat: 8 time-wait sockets, one of them the orphan: 7 TIME_WAIT, split 3 : 1.
        collector.apply_sockstat(&mut counts, 8, minisockets);
        assert_eq!(counts.ipv4.get(TcpState::TimeWait), 5);
        assert_eq!(counts.ipv6.get(TcpState::TimeWait), 2);
        assert_eq!(counts.ipv4.get(TcpState::FinWait2), 2);
        assert_eq!(counts.ipv4.get(TcpState::Established), 1);
        let ranked: Vec<(u16, u32, u32)> = collector
            .rank_destinations()
            .iter()
            .map(|d| (d.remote_port, d.time_wait, d.ephemeral))
            .collect();
        // :443 has 2 carried TIME_WAIT and 3 current sockets; the :80 ones are carried.
        assert_eq!(ranked, [(443, 2, 5), (80, 1, 1), (80, 1, 1)]);
        assert!(collector.next_is_cheap());
    }

    #[test]
    fn restart_forgets_the_interrupted_walk() {
        let mut collector = BreakdownCollector::default();
        collector
            .ephemeral
            .set_usable_ports(&sysctls(Some("32768 60999"), None))
            .unwrap();
        let mut pass = ConnectionPass {
            ephemeral: &collector.ephemeral,
            destinations: &mut collector.destinations,
            close_wait: &mut collector.close_wait,
            first_seen: &mut collector.first_seen,
            generation: 1,
            now: at(0),
            counts: FamilyCounts::default(),
            fin_wait2_minisockets: 0,
        };
        FakeSocket::new(TcpState::TimeWait, "10.0.0.1:50000", "10.0.0.9:443").visit(&mut pass);
        close_wait(5, 55).visit(&mut pass);
        pass.restart();
        close_wait(5, 55).visit(&mut pass);
        assert_eq!(pass.counts.ipv4.total(), 1);
        assert!(pass.destinations.is_empty());
        assert_eq!(pass.close_wait.len(), 1);
    }
}
