//! Reading TCP sockets through netlink `sock_diag`, the way `ss` reads them.
//!
//! One `NETLINK_SOCK_DIAG` socket and one receive buffer are kept for the life of the collector. A
//! walk sends a dump request with the kernel-side state filter and visits the replies in place: each
//! socket is handed to a [`SocketVisitor`] as a [`SocketView`] borrowed from the receive buffer, which
//! decodes only the fields asked for. Counting reads just the family and state bytes and allocates
//! nothing per socket.
//!
//! The kernel keeps the connections of both families in one established hash, and a per-family
//! `SOCK_DIAG_BY_FAMILY` dump walks all of it, skipping the other family's sockets: two per-family
//! dumps walk it twice. The legacy `TCPDIAG_GETSOCK` request (`inet_diag_req`, message type 18) is
//! answered for both families (`AF_UNSPEC`) in one walk, and each reply still names its socket's
//! family, so a walk sends that one request. It reports exactly the sockets the two per-family dumps
//! report, with the same family and state: request sockets (`TCP_NEW_SYN_RECV`) as SYN_RECV,
//! dual-stack sockets talking IPv4 as IPv6 with mapped addresses. Should a kernel refuse it (the
//! legacy interface is optional: `EINVAL`, `ENOENT`, `EOPNOTSUPP`), [`NetlinkCounter::open`] notices
//! with its probe and the collector sends the two per-family requests instead, for good.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr as InetSocketAddr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_ALIGNTO, NLMSG_DONE,
    NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, AF_UNSPEC, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetRequestBuffer, InetResponseBuffer, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use sockfleet_domain::{Family, FamilyCounts, TcpState};

use super::CollectError;

/// Kernel socket receive buffer asked for, so a burst of dump replies is not dropped.
const SOCKET_RECEIVE_BUFFER: libc::c_int = 4 << 20;
/// Size of the reusable datagram buffer; the kernel caps a dump datagram at 32 KiB.
const DATAGRAM_BUFFER: usize = 256 << 10;
/// How long one `recv` may wait for the kernel before the collection fails.
const RECEIVE_TIMEOUT_SECONDS: libc::time_t = 5;
/// How often a family's dump is restarted after the kernel flagged it inconsistent.
const MAX_DUMP_ATTEMPTS: usize = 4;
/// The kernel's internal state of a request socket; dumped as `SYN_RECV`.
const TCP_NEW_SYN_RECV: u32 = 12;
/// Every TCP state, as `ss` asks for them (its `SS_ALL` includes `TCP_NEW_SYN_RECV`).
const ALL_STATES: u32 = StateFlags::all().bits() | 1 << TCP_NEW_SYN_RECV;
/// Only listening sockets: what the probe at open asks for. The kernel answers from its table of
/// listeners without walking the connections.
const LISTEN_ONLY: u32 = 1 << TcpState::Listen as u32;
/// `TCPDIAG_GETSOCK`: the legacy dump request, answered for both families; its replies carry this type.
const TCPDIAG_GETSOCK: u16 = 18;
/// Bytes of a netlink header.
const HEADER_LEN: usize = 16;
/// Bytes of a serialized `inet_diag_req_v2` request with its netlink header.
const BY_FAMILY_REQUEST_LEN: usize = HEADER_LEN + size_of::<InetRequestBuffer>();
/// Bytes of a legacy `inet_diag_req` with its netlink header: family, source and destination prefix
/// lengths, extensions (1 byte each), the 48-byte `inet_diag_sockid`, the state mask and `dbs` (4
/// bytes each).
const LEGACY_REQUEST_LEN: usize = HEADER_LEN + 4 + 48 + 4 + 4;
/// Room for either request.
const REQUEST_LEN: usize = if LEGACY_REQUEST_LEN > BY_FAMILY_REQUEST_LEN {
    LEGACY_REQUEST_LEN
} else {
    BY_FAMILY_REQUEST_LEN
};
/// Bytes of the fixed `inet_diag_msg` that starts every socket in a reply.
const SOCKET_MESSAGE_LEN: usize = size_of::<InetResponseBuffer>();

// Offsets in `inet_diag_msg` (include/uapi/linux/inet_diag.h). The `inet_diag_sockid` at offset 4 holds
// the ports in network byte order, then source and destination addresses (16 bytes each: an IPv4
// address fills the first 4), the interface index and the 64-bit cookie as two host-order halves.
// The fields after it are in host byte order.
const OFFSET_FAMILY: usize = 0;
const OFFSET_STATE: usize = 1;
const OFFSET_TIMER: usize = 2;
const OFFSET_SOURCE_PORT: usize = 4;
const OFFSET_DESTINATION_PORT: usize = 6;
const OFFSET_SOURCE_ADDRESS: usize = 8;
const OFFSET_DESTINATION_ADDRESS: usize = 24;
const OFFSET_COOKIE: usize = 44;
const OFFSET_EXPIRES: usize = 52;
const OFFSET_RQUEUE: usize = 56;
const OFFSET_WQUEUE: usize = 60;
const OFFSET_INODE: usize = 68;

/// Counts TCP sockets by family and state through netlink `sock_diag`.
///
/// It exists so repeated collections reuse one socket and one buffer: after [`NetlinkCounter::open`]
/// a collection costs the kernel's dump and a walk over the bytes, nothing more.
pub struct NetlinkCounter {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
    /// The request form the kernel accepted at open.
    request: DumpRequest,
}

/// How a walk asks the kernel for the sockets of both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpRequest {
    /// One legacy `TCPDIAG_GETSOCK` dump: one walk over the kernel's tables.
    BothFamilies,
    /// One `SOCK_DIAG_BY_FAMILY` dump per family, as `ss` sends them: two walks.
    PerFamily,
    /// A message type `sock_diag` does not know, to see a refusal handled.
    #[cfg(test)]
    Refused,
}

/// One dump request: its netlink message type and the family asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    message_type: u16,
    family: u8,
}

impl DumpRequest {
    /// The dumps one walk sends, in order.
    fn asks(self) -> &'static [Ask] {
        match self {
            DumpRequest::BothFamilies => &[Ask {
                message_type: TCPDIAG_GETSOCK,
                family: AF_UNSPEC,
            }],
            DumpRequest::PerFamily => &[
                Ask {
                    message_type: SOCK_DIAG_BY_FAMILY,
                    family: AF_INET,
                },
                Ask {
                    message_type: SOCK_DIAG_BY_FAMILY,
                    family: AF_INET6,
                },
            ],
            #[cfg(test)]
            DumpRequest::Refused => &[Ask {
                message_type: 17,
                family: AF_UNSPEC,
            }],
        }
    }
}

/// Whether a failed probe means that the kernel does not offer a request form (it answered with an
/// error, or with something that is not a dump), so the next form is worth a try; an I/O failure of
/// the socket itself would fail any form alike.
fn refused(error: &CollectError) -> bool {
    matches!(
        error,
        CollectError::NetlinkKernel { .. } | CollectError::NetlinkMalformed(_)
    )
}

impl NetlinkCounter {
    /// Opens the `NETLINK_SOCK_DIAG` socket (in the calling thread's network namespace), allocates the
    /// receive buffer that every later collection reuses, and probes the kernel with a dump of the
    /// listening sockets (cheap: the connections are not walked).
    ///
    /// The probe decides, once, how later walks ask: one `TCPDIAG_GETSOCK` dump for both families if
    /// the kernel answers it, else (the kernel refused it) one `SOCK_DIAG_BY_FAMILY` dump per family.
    /// Fails if neither works.
    pub fn open() -> Result<NetlinkCounter, CollectError> {
        NetlinkCounter::open_preferring(&[DumpRequest::BothFamilies, DumpRequest::PerFamily])
    }

    /// Like [`NetlinkCounter::open`], but always with one `SOCK_DIAG_BY_FAMILY` dump per family (the
    /// form used when the kernel refuses the single dump); for comparisons.
    pub fn open_per_family() -> Result<NetlinkCounter, CollectError> {
        NetlinkCounter::open_preferring(&[DumpRequest::PerFamily])
    }

    /// Like [`NetlinkCounter::open`], for one of many counters (one per network namespace) that take
    /// turns with one receive buffer rather than keep one each: the probe uses `buffer`, which is
    /// handed back, and every later walk must go through [`NetlinkCounter::with_buffer`]. Should the
    /// open fail, `buffer` is left empty (and allocated again when next needed).
    pub fn open_sharing(buffer: &mut Vec<u8>) -> Result<NetlinkCounter, CollectError> {
        let mut counter = NetlinkCounter::open_preferring_with(
            &[DumpRequest::BothFamilies, DumpRequest::PerFamily],
            sized_buffer(std::mem::take(buffer)),
        )?;
        *buffer = std::mem::take(&mut counter.buffer);
        Ok(counter)
    }

    /// Runs `work` with `buffer` as the counter's receive buffer (allocated if it is not yet), then
    /// takes it back: how counters opened with [`NetlinkCounter::open_sharing`] walk.
    pub fn with_buffer<R>(
        &mut self,
        buffer: &mut Vec<u8>,
        work: impl FnOnce(&mut NetlinkCounter) -> R,
    ) -> R {
        let own = std::mem::replace(&mut self.buffer, sized_buffer(std::mem::take(buffer)));
        let result = work(self);
        *buffer = std::mem::replace(&mut self.buffer, own);
        result
    }

    /// Whether a walk is one dump for both families (`TCPDIAG_GETSOCK`) rather than one
    /// `SOCK_DIAG_BY_FAMILY` dump per family.
    pub fn dumps_both_families_at_once(&self) -> bool {
        self.request == DumpRequest::BothFamilies
    }

    /// Opens the socket and keeps the first request form of `preferred` whose probe the kernel
    /// answers, moving on only when it refused the previous one.
    fn open_preferring(preferred: &[DumpRequest]) -> Result<NetlinkCounter, CollectError> {
        NetlinkCounter::open_preferring_with(preferred, vec![0; DATAGRAM_BUFFER])
    }

    /// Like [`NetlinkCounter::open_preferring`], with `buffer` as the receive buffer.
    fn open_preferring_with(
        preferred: &[DumpRequest],
        buffer: Vec<u8>,
    ) -> Result<NetlinkCounter, CollectError> {
        let mut counter = NetlinkCounter {
            socket: open_socket().map_err(CollectError::NetlinkOpen)?,
            buffer,
            sequence: 0,
            request: DumpRequest::PerFamily,
        };
        let mut last_refusal = None;
        for &request in preferred {
            counter.request = request;
            match counter.walk(LISTEN_ONLY, &mut Counting::default()) {
                Ok(()) => {
                    if let Some(error) = last_refusal {
                        tracing::info!(
                            %error,
                            ?request,
                            "the kernel refused a sock_diag request form; using the next one"
                        );
                    }
                    return Ok(counter);
                }
                Err(error) if refused(&error) => last_refusal = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_refusal.unwrap_or_else(|| {
            CollectError::NetlinkMalformed("no sock_diag request form to try".into())
        }))
    }

    /// Counts every TCP socket of the namespace by the family the kernel reports and by state.
    ///
    /// After a failure the socket is replaced, so replies left over from an abandoned dump cannot
    /// confuse (or, as `EBUSY`, block) the next collection.
    pub fn count(&mut self) -> Result<FamilyCounts, CollectError> {
        let mut counting = Counting::default();
        self.walk(ALL_STATES, &mut counting)?;
        Ok(counting.counts)
    }

    /// Hands every TCP socket of the namespace whose state is one of `states` to `visitor`, in the
    /// kernel's order (both families mixed when one dump answers for both). The kernel skips the other
    /// states itself; asking for LISTEN alone does not even walk the table of connections.
    ///
    /// Should the kernel flag a dump as inconsistent, the visitor is told to [`SocketVisitor::restart`]
    /// and the walk starts again. After a failure the socket is replaced, as with
    /// [`NetlinkCounter::count`].
    pub fn visit<V: SocketVisitor + ?Sized>(
        &mut self,
        states: impl IntoIterator<Item = TcpState>,
        visitor: &mut V,
    ) -> Result<(), CollectError> {
        self.walk(state_mask(states), visitor)
    }

    /// Runs the walk and replaces the socket if it failed.
    fn walk<V: SocketVisitor + ?Sized>(
        &mut self,
        states: u32,
        visitor: &mut V,
    ) -> Result<(), CollectError> {
        let walked = self.walk_families(states, visitor);
        if walked.is_err()
            && let Ok(socket) = open_socket()
        {
            self.socket = socket;
        }
        walked
    }

    /// Dumps both families (with one request or one per family), starting over when the kernel says a
    /// dump was interrupted by a change.
    fn walk_families<V: SocketVisitor + ?Sized>(
        &mut self,
        states: u32,
        visitor: &mut V,
    ) -> Result<(), CollectError> {
        'attempt: for _ in 0..MAX_DUMP_ATTEMPTS {
            for &ask in self.request.asks() {
                if self.dump(ask, states, visitor)? == Consistency::Interrupted {
                    visitor.restart();
                    continue 'attempt;
                }
            }
            return Ok(());
        }
        Err(CollectError::NetlinkKernel {
            errno: libc::EINTR,
            message: format!("the socket dump was interrupted {MAX_DUMP_ATTEMPTS} times in a row"),
        })
    }

    /// Runs one dump into `visitor`.
    fn dump<V: SocketVisitor + ?Sized>(
        &mut self,
        ask: Ask,
        states: u32,
        visitor: &mut V,
    ) -> Result<Consistency, CollectError> {
        self.sequence = self.sequence.wrapping_add(1);
        self.send_request(ask, states)?;
        let mut dump = Dump::new(self.sequence, visitor);
        loop {
            let received = self.receive()?;
            let datagram = self.buffer.get(..received).unwrap_or_default();
            if dump.absorb(datagram)? == Progress::Done {
                break;
            }
        }
        Ok(if dump.interrupted {
            Consistency::Interrupted
        } else {
            Consistency::Consistent
        })
    }

    fn send_request(&self, ask: Ask, states: u32) -> Result<(), CollectError> {
        let mut bytes = [0u8; REQUEST_LEN];
        let length = encode_request(ask, states, self.sequence, &mut bytes)?;
        let request = bytes.get(..length).unwrap_or_default();
        loop {
            match self.socket.send(request, 0) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(CollectError::NetlinkIo(error)),
            }
        }
    }

    /// Receives one datagram into the buffer and returns its length.
    fn receive(&mut self) -> Result<usize, CollectError> {
        loop {
            let mut space: &mut [u8] = &mut self.buffer;
            match self.socket.recv(&mut space, libc::MSG_TRUNC) {
                Ok(length) if length > self.buffer.len() => {
                    return Err(CollectError::NetlinkMalformed(format!(
                        "a {length}-byte datagram does not fit the {}-byte receive buffer",
                        self.buffer.len()
                    )));
                }
                Ok(length) => return Ok(length),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Err(CollectError::NetlinkIo(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the kernel sent nothing for {RECEIVE_TIMEOUT_SECONDS} s"),
                    )));
                }
                Err(error) => return Err(CollectError::NetlinkIo(error)),
            }
        }
    }
}

/// `buffer`, or a new receive buffer if it is smaller than one.
fn sized_buffer(buffer: Vec<u8>) -> Vec<u8> {
    if buffer.len() < DATAGRAM_BUFFER {
        vec![0; DATAGRAM_BUFFER]
    } else {
        buffer
    }
}

fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.set_rx_buf_sz(SOCKET_RECEIVE_BUFFER)?;
    // Beyond net.core.rmem_max only with CAP_NET_ADMIN; the capped size above works too.
    let _ = set_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &SOCKET_RECEIVE_BUFFER,
    );
    let timeout = libc::timeval {
        tv_sec: RECEIVE_TIMEOUT_SECONDS,
        tv_usec: 0,
    };
    set_option(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

fn set_option<T>(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let length = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `value` is a live, initialised `T` of `length` bytes for the whole call, and the
    // descriptor belongs to `socket`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            length,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes the dump request `ask` for TCP sockets in `states` into `bytes`; returns its length.
fn encode_request(
    ask: Ask,
    states: u32,
    sequence: u32,
    bytes: &mut [u8; REQUEST_LEN],
) -> Result<usize, CollectError> {
    if ask.message_type == SOCK_DIAG_BY_FAMILY {
        encode_by_family_request(ask.family, states, sequence, bytes)
    } else {
        Ok(encode_legacy_request(
            ask.message_type,
            ask.family,
            states,
            sequence,
            bytes,
        ))
    }
}

/// The legacy `inet_diag_req` dump request (`TCPDIAG_GETSOCK`), which has no protocol field: the
/// message type says TCP. The kernel dumps both families whatever `family` says.
fn encode_legacy_request(
    message_type: u16,
    family: u8,
    states: u32,
    sequence: u32,
    bytes: &mut [u8; REQUEST_LEN],
) -> usize {
    let fields: [&[u8]; 9] = [
        // nlmsghdr: length, type, flags, sequence, port id (0: the kernel).
        &(LEGACY_REQUEST_LEN as u32).to_ne_bytes(),
        &message_type.to_ne_bytes(),
        &(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes(),
        &sequence.to_ne_bytes(),
        &0u32.to_ne_bytes(),
        // inet_diag_req: family, src_len, dst_len, ext; the socket id (any); states; dbs.
        &[family, 0, 0, 0],
        &[0; 48],
        &states.to_ne_bytes(),
        &0u32.to_ne_bytes(),
    ];
    bytes.fill(0);
    let mut at = 0;
    for field in fields {
        if let Some(target) = bytes.get_mut(at..at + field.len()) {
            target.copy_from_slice(field);
        }
        at += field.len();
    }
    LEGACY_REQUEST_LEN
}

/// The `inet_diag_req_v2` dump request (`SOCK_DIAG_BY_FAMILY`) for TCP sockets of `family`.
fn encode_by_family_request(
    family: u8,
    states: u32,
    sequence: u32,
    bytes: &mut [u8; REQUEST_LEN],
) -> Result<usize, CollectError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(states),
        socket_id,
    });
    let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    message.finalize();
    let length = message.buffer_len();
    let target = bytes.get_mut(..length).ok_or_else(|| {
        CollectError::NetlinkIo(io::Error::other(format!(
            "the sock_diag request needs {length} bytes, more than the {REQUEST_LEN} reserved"
        )))
    })?;
    message.serialize(target);
    Ok(length)
}

/// Receives the sockets of a walk.
pub trait SocketVisitor {
    /// Called once for every socket the kernel reports, in the order of the dump.
    fn socket(&mut self, socket: &SocketView<'_>);

    /// The kernel flagged a dump as inconsistent and the walk starts over: forget every socket
    /// seen since the walk began.
    fn restart(&mut self);
}

/// Counts sockets by family and state: the visitor behind [`NetlinkCounter::count`].
#[derive(Debug, Default)]
struct Counting {
    counts: FamilyCounts,
}

impl SocketVisitor for Counting {
    fn socket(&mut self, socket: &SocketView<'_>) {
        self.counts
            .family_mut(socket.family())
            .increment(socket.state());
    }

    fn restart(&mut self) {
        self.counts = FamilyCounts::default();
    }
}

/// The kernel's state filter for `states` (bit `1 << state`); SYN_RECV includes the kernel's internal
/// `TCP_NEW_SYN_RECV`, as `ss` asks for it.
fn state_mask(states: impl IntoIterator<Item = TcpState>) -> u32 {
    states.into_iter().fold(0, |mask, state| {
        let bit = 1 << (state as u32);
        if state == TcpState::SynRecv {
            mask | bit | 1 << TCP_NEW_SYN_RECV
        } else {
            mask | bit
        }
    })
}

/// One socket of a dump: a view of the kernel's `inet_diag_msg`, borrowed from the receive buffer and
/// decoded field by field on demand. Family and state are checked when the view is made.
#[derive(Debug, Clone, Copy)]
pub struct SocketView<'a> {
    message: &'a [u8; SOCKET_MESSAGE_LEN],
    family: Family,
    state: TcpState,
}

impl<'a> SocketView<'a> {
    /// Checks the start of a `SOCK_DIAG_BY_FAMILY` payload and views it.
    fn parse(payload: &'a [u8]) -> Result<SocketView<'a>, CollectError> {
        let message: &[u8; SOCKET_MESSAGE_LEN] =
            payload.first_chunk().ok_or_else(|| {
                CollectError::NetlinkMalformed(format!(
                    "a sock_diag message of {} bytes, shorter than the {SOCKET_MESSAGE_LEN}-byte inet_diag_msg",
                    payload.len()
                ))
            })?;
        let family = match message[OFFSET_FAMILY] {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            other => {
                return Err(CollectError::NetlinkMalformed(format!(
                    "a TCP socket of address family {other}"
                )));
            }
        };
        let state = message[OFFSET_STATE];
        let state = TcpState::from_diag(state).ok_or_else(|| {
            CollectError::NetlinkMalformed(format!("a TCP socket in unknown state {state}"))
        })?;
        Ok(SocketView {
            message,
            family,
            state,
        })
    }

    /// The socket's address family. A dual-stack socket talking IPv4 is IPv6 with mapped addresses.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The socket's state (the kernel's `TCP_NEW_SYN_RECV` request sockets are SYN_RECV, as in `ss`).
    pub fn state(&self) -> TcpState {
        self.state
    }

    /// The local address and port.
    pub fn local(&self) -> InetSocketAddr {
        InetSocketAddr::new(self.local_ip(), self.local_port())
    }

    /// The remote address and port; unspecified (port 0) for a listening socket.
    pub fn remote(&self) -> InetSocketAddr {
        InetSocketAddr::new(self.remote_ip(), self.remote_port())
    }

    /// The local address, as the kernel reports it (`::ffff:a.b.c.d` for a dual-stack socket's IPv4
    /// peer; see [`IpAddr::to_canonical`]).
    pub fn local_ip(&self) -> IpAddr {
        self.address(OFFSET_SOURCE_ADDRESS)
    }

    /// The remote address, as the kernel reports it.
    pub fn remote_ip(&self) -> IpAddr {
        self.address(OFFSET_DESTINATION_ADDRESS)
    }

    /// The local port.
    pub fn local_port(&self) -> u16 {
        u16::from_be_bytes(self.bytes(OFFSET_SOURCE_PORT))
    }

    /// The remote port; 0 for a listening socket.
    pub fn remote_port(&self) -> u16 {
        u16::from_be_bytes(self.bytes(OFFSET_DESTINATION_PORT))
    }

    /// The socket's inode, as in `/proc/PID/fd` links (`socket:[INODE]`); 0 when no process holds
    /// it: TIME_WAIT and request sockets, and connections not yet accepted.
    pub fn inode(&self) -> u32 {
        u32::from_ne_bytes(self.bytes(OFFSET_INODE))
    }

    /// The kernel's cookie for the socket: unique among the namespace's sockets while it lives, so
    /// it identifies one socket across dumps (inodes can be reused and are 0 for some sockets).
    pub fn cookie(&self) -> u64 {
        let low = u32::from_ne_bytes(self.bytes(OFFSET_COOKIE));
        let high = u32::from_ne_bytes(self.bytes(OFFSET_COOKIE + 4));
        u64::from(high) << 32 | u64::from(low)
    }

    /// For a listening socket, the connections waiting in its accept queue; otherwise bytes received
    /// and not yet read.
    pub fn rqueue(&self) -> u32 {
        u32::from_ne_bytes(self.bytes(OFFSET_RQUEUE))
    }

    /// For a listening socket, its backlog (the accept queue's limit); otherwise bytes sent and not
    /// yet acknowledged.
    pub fn wqueue(&self) -> u32 {
        u32::from_ne_bytes(self.bytes(OFFSET_WQUEUE))
    }

    /// The pending timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT (also on orphaned FIN_WAIT2
    /// minisockets), 4 zero-window probe.
    pub fn timer(&self) -> u8 {
        self.message[OFFSET_TIMER]
    }

    /// Milliseconds until the pending timer fires (0 without one).
    pub fn expires(&self) -> u32 {
        u32::from_ne_bytes(self.bytes(OFFSET_EXPIRES))
    }

    fn address(&self, offset: usize) -> IpAddr {
        let bytes: [u8; 16] = self.bytes(offset);
        match self.family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(bytes)),
        }
    }

    /// `N` bytes at `offset`; every offset used is a constant within the message.
    fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        self.message
            .get(offset..)
            .and_then(<[u8]>::first_chunk)
            .copied()
            .unwrap_or([0; N])
    }
}

/// Whether a dump has more datagrams to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// Whether the kernel flagged a finished dump as inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Consistent,
    Interrupted,
}

/// One dump in progress, handing its sockets to a visitor.
struct Dump<'v, V: ?Sized> {
    sequence: u32,
    visitor: &'v mut V,
    interrupted: bool,
}

impl<'v, V: SocketVisitor + ?Sized> Dump<'v, V> {
    fn new(sequence: u32, visitor: &'v mut V) -> Dump<'v, V> {
        Dump {
            sequence,
            visitor,
            interrupted: false,
        }
    }

    /// Visits the sockets of every message in one datagram, until `NLMSG_DONE`.
    fn absorb(&mut self, datagram: &[u8]) -> Result<Progress, CollectError> {
        let mut rest = datagram;
        while !rest.is_empty() {
            let message = NetlinkBuffer::new_checked(rest)
                .map_err(|error| CollectError::NetlinkMalformed(error.to_string()))?;
            if message.sequence_number() != self.sequence {
                return Err(CollectError::NetlinkMalformed(format!(
                    "reply with sequence number {} to request {}",
                    message.sequence_number(),
                    self.sequence
                )));
            }
            if message.flags() & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            match message.message_type() {
                NLMSG_DONE => {
                    done_status(message.payload())?;
                    return Ok(Progress::Done);
                }
                NLMSG_ERROR => error_status(message.payload())?,
                // A reply has the type of its request; each names its socket's family.
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    self.visitor.socket(&SocketView::parse(message.payload())?);
                }
                _ => {}
            }
            let length = message.length() as usize;
            let next = length.next_multiple_of(usize::from(NLMSG_ALIGNTO));
            rest = rest.get(next..).unwrap_or_default();
        }
        Ok(Progress::More)
    }
}

/// The outcome a dump's `NLMSG_DONE` carries: 0, or a negative errno when the dump failed midway.
fn done_status(payload: &[u8]) -> Result<(), CollectError> {
    let done = DoneBuffer::new_checked(payload)
        .map_err(|error| CollectError::NetlinkMalformed(error.to_string()))?;
    match done.code() {
        0 => Ok(()),
        code => Err(kernel_error(code)),
    }
}

/// An `NLMSG_ERROR` with a non-zero code is the kernel refusing the dump; a zero code is an ACK.
fn error_status(payload: &[u8]) -> Result<(), CollectError> {
    let error = ErrorBuffer::new_checked(payload)
        .map_err(|error| CollectError::NetlinkMalformed(error.to_string()))?;
    match error.code() {
        None => Ok(()),
        Some(code) => Err(kernel_error(code.get())),
    }
}

fn kernel_error(code: i32) -> CollectError {
    let errno = code.saturating_abs();
    CollectError::NetlinkKernel {
        errno,
        message: io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// Sockets as the kernel encodes them, for tests of visitors.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The fields of one `inet_diag_msg`.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct FakeSocket {
        pub state: u8,
        pub local: InetSocketAddr,
        pub remote: InetSocketAddr,
        pub inode: u32,
        pub cookie: u64,
        pub rqueue: u32,
        pub wqueue: u32,
        pub timer: u8,
        pub expires: u32,
    }

    impl FakeSocket {
        /// A socket in `state` between two addresses of the same family; everything else zero.
        pub(crate) fn new(state: TcpState, local: &str, remote: &str) -> FakeSocket {
            FakeSocket {
                state: state as u8,
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
                inode: 0,
                cookie: 0,
                rqueue: 0,
                wqueue: 0,
                timer: 0,
                expires: 0,
            }
        }

        /// The 72-byte `inet_diag_msg`, followed by one attribute as the kernel would add.
        pub(crate) fn encode(&self) -> Vec<u8> {
            let family = if self.local.is_ipv4() {
                AF_INET
            } else {
                AF_INET6
            };
            let mut bytes = vec![0u8; SOCKET_MESSAGE_LEN];
            bytes[OFFSET_FAMILY] = family;
            bytes[OFFSET_STATE] = self.state;
            bytes[OFFSET_TIMER] = self.timer;
            let mut put = |offset: usize, value: &[u8]| {
                bytes[offset..offset + value.len()].copy_from_slice(value);
            };
            put(OFFSET_SOURCE_PORT, &self.local.port().to_be_bytes());
            put(OFFSET_DESTINATION_PORT, &self.remote.port().to_be_bytes());
            for (offset, address) in [
                (OFFSET_SOURCE_ADDRESS, self.local.ip()),
                (OFFSET_DESTINATION_ADDRESS, self.remote.ip()),
            ] {
                match address {
                    IpAddr::V4(v4) => put(offset, &v4.octets()),
                    IpAddr::V6(v6) => put(offset, &v6.octets()),
                }
            }
            put(OFFSET_COOKIE, &(self.cookie as u32).to_ne_bytes());
            put(
                OFFSET_COOKIE + 4,
                &((self.cookie >> 32) as u32).to_ne_bytes(),
            );
            put(OFFSET_EXPIRES, &self.expires.to_ne_bytes());
            put(OFFSET_RQUEUE, &self.rqueue.to_ne_bytes());
            put(OFFSET_WQUEUE, &self.wqueue.to_ne_bytes());
            put(OFFSET_INODE, &self.inode.to_ne_bytes());
            bytes.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
            bytes
        }

        /// Hands the encoded socket to `visitor`, as a dump would.
        pub(crate) fn visit(&self, visitor: &mut impl SocketVisitor) {
            let bytes = self.encode();
            visitor.socket(&SocketView::parse(&bytes).unwrap());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    const SEQ: u32 = 7;

    fn message(message_type: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(HEADER_LEN + payload.len()).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&length.to_ne_bytes());
        bytes.extend_from_slice(&message_type.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&4242u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    /// A socket message as the kernel sends it: the 72-byte inet_diag_msg and one attribute.
    fn socket(family: u8, state: u8) -> Vec<u8> {
        let mut payload = vec![0u8; SOCKET_MESSAGE_LEN];
        payload[0] = family;
        payload[1] = state;
        payload.extend_from_slice(&[5, 0, 8, 0, 0, 0, 0, 0]);
        message(SOCK_DIAG_BY_FAMILY, 2, SEQ, &payload)
    }

    fn done(code: i32) -> Vec<u8> {
        message(NLMSG_DONE, 2, SEQ, &code.to_ne_bytes())
    }

    fn nlmsg_error(code: i32) -> Vec<u8> {
        let mut payload = code.to_ne_bytes().to_vec();
        payload.extend_from_slice(&message(SOCK_DIAG_BY_FAMILY, 0x301, SEQ, &[0; 56]));
        message(NLMSG_ERROR, 0, SEQ, &payload)
    }

    #[test]
    fn counts_every_message_of_multipart_datagrams() {
        let first = [
            socket(AF_INET, TcpState::Established as u8),
            socket(AF_INET6, TcpState::Listen as u8),
            socket(AF_INET, TcpState::Established as u8),
        ]
        .concat();
        let second = [
            socket(AF_INET, 12),
            socket(AF_INET6, TcpState::TimeWait as u8),
            done(0),
        ]
        .concat();
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        assert_eq!(dump.absorb(&first).unwrap(), Progress::More);
        assert_eq!(dump.absorb(&second).unwrap(), Progress::Done);
        assert!(!dump.interrupted);
        assert_eq!(dump.visitor.counts.ipv4.get(TcpState::Established), 2);
        assert_eq!(dump.visitor.counts.ipv4.get(TcpState::SynRecv), 1);
        assert_eq!(dump.visitor.counts.ipv6.get(TcpState::Listen), 1);
        assert_eq!(dump.visitor.counts.ipv6.get(TcpState::TimeWait), 1);
        assert_eq!(
            dump.visitor.counts.ipv4.total() + dump.visitor.counts.ipv6.total(),
            5
        );
    }

    #[test]
    fn stops_at_done() {
        let datagram = [done(0), socket(AF_INET, TcpState::Established as u8)].concat();
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        assert_eq!(dump.absorb(&datagram).unwrap(), Progress::Done);
        assert_eq!(dump.visitor.counts, FamilyCounts::default());
    }

    #[test]
    fn nlmsg_error_becomes_kernel_error() {
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        match dump.absorb(&nlmsg_error(-libc::ENOENT)) {
            Err(CollectError::NetlinkKernel { errno, message }) => {
                assert_eq!(errno, libc::ENOENT);
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("expected a kernel error, got {other:?}"),
        }
        let mut acking = Counting::default();
        let mut acked = Dump::new(SEQ, &mut acking);
        let datagram = [nlmsg_error(0), done(0)].concat();
        assert_eq!(acked.absorb(&datagram).unwrap(), Progress::Done);
    }

    #[test]
    fn failed_done_becomes_kernel_error() {
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        assert!(matches!(
            dump.absorb(&done(-libc::ENOBUFS)),
            Err(CollectError::NetlinkKernel { errno, .. }) if errno == libc::ENOBUFS
        ));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let whole = [socket(AF_INET, 1), done(0)].concat();
        for cut in 1..whole.len() {
            let mut counting = Counting::default();
            let mut dump = Dump::new(SEQ, &mut counting);
            let outcome = dump.absorb(&whole[..cut]);
            assert!(
                matches!(
                    outcome,
                    Err(CollectError::NetlinkMalformed(_)) | Ok(Progress::More)
                ),
                "cut at {cut}: {outcome:?}"
            );
            if cut < HEADER_LEN + SOCKET_MESSAGE_LEN {
                assert!(outcome.is_err(), "cut at {cut}: {outcome:?}");
            }
        }
        let short_socket = message(SOCK_DIAG_BY_FAMILY, 2, SEQ, &[AF_INET, 1, 0, 0]);
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&short_socket),
            Err(CollectError::NetlinkMalformed(_))
        ));
        let mut too_short_length = socket(AF_INET, 1);
        too_short_length[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&too_short_length),
            Err(CollectError::NetlinkMalformed(_))
        ));
        let short_done = message(NLMSG_DONE, 2, SEQ, &[0, 0]);
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&short_done),
            Err(CollectError::NetlinkMalformed(_))
        ));
    }

    #[test]
    fn foreign_sequence_and_unknown_values_are_errors() {
        let stale = message(NLMSG_DONE, 2, SEQ - 1, &0i32.to_ne_bytes());
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&stale),
            Err(CollectError::NetlinkMalformed(_))
        ));
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&socket(libc::AF_UNIX as u8, 1)),
            Err(CollectError::NetlinkMalformed(_))
        ));
        assert!(matches!(
            Dump::new(SEQ, &mut Counting::default()).absorb(&socket(AF_INET, 13)),
            Err(CollectError::NetlinkMalformed(_))
        ));
    }

    #[test]
    fn notes_interrupted_dumps() {
        let mut interrupted = socket(AF_INET, 1);
        interrupted[6..8].copy_from_slice(&(2 | NLM_F_DUMP_INTR).to_ne_bytes());
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        assert_eq!(
            dump.absorb(&[interrupted, done(0)].concat()).unwrap(),
            Progress::Done
        );
        assert!(dump.interrupted);
    }

    #[test]
    fn encodes_an_all_states_dump_request() {
        let mut bytes = [0u8; REQUEST_LEN];
        let ask = DumpRequest::PerFamily.asks()[1];
        let length = encode_request(ask, ALL_STATES, 99, &mut bytes).unwrap();
        assert_eq!(length, 72);
        let request = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(request.length(), 72);
        assert_eq!(request.message_type(), SOCK_DIAG_BY_FAMILY);
        assert_eq!(request.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(request.sequence_number(), 99);
        let payload = request.payload();
        assert_eq!(payload[0], AF_INET6);
        assert_eq!(payload[1], IPPROTO_TCP);
        assert_eq!(
            u32::from_ne_bytes(payload[4..8].try_into().unwrap()),
            0x1ffe
        );
    }

    #[test]
    fn encodes_the_legacy_request_for_both_families() {
        assert_eq!(LEGACY_REQUEST_LEN, 76);
        assert_eq!(REQUEST_LEN, 76);
        let [ask] = DumpRequest::BothFamilies.asks() else {
            panic!("one dump for both families");
        };
        let mut bytes = [0xaa; REQUEST_LEN];
        let length = encode_request(*ask, ALL_STATES, 0x0102_0304, &mut bytes).unwrap();
        assert_eq!(length, 76);
        let request = NetlinkBuffer::new_checked(&bytes[..length]).unwrap();
        assert_eq!(request.length(), 76);
        assert_eq!(request.message_type(), 18);
        assert_eq!(request.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(request.sequence_number(), 0x0102_0304);
        assert_eq!(request.port_number(), 0);
        // struct inet_diag_req: AF_UNSPEC, no prefixes, no extensions, any socket id, the states,
        // dbs 0.
        let payload = request.payload();
        assert_eq!(payload.len(), 60);
        assert_eq!(&payload[..4], &[0, 0, 0, 0]);
        assert!(payload[4..52].iter().all(|byte| *byte == 0));
        assert_eq!(
            u32::from_ne_bytes(payload[52..56].try_into().unwrap()),
            0x1ffe
        );
        assert_eq!(&payload[56..60], &[0, 0, 0, 0]);

        let mut listen_only = [0u8; REQUEST_LEN];
        encode_request(*ask, LISTEN_ONLY, 1, &mut listen_only).unwrap();
        assert_eq!(
            u32::from_ne_bytes(
                listen_only[HEADER_LEN + 52..HEADER_LEN + 56]
                    .try_into()
                    .unwrap()
            ),
            1 << 10
        );
    }

    #[test]
    fn per_family_request_asks_each_family_in_turn() {
        let asks: Vec<(u16, u8)> = DumpRequest::PerFamily
            .asks()
            .iter()
            .map(|ask| (ask.message_type, ask.family))
            .collect();
        assert_eq!(
            asks,
            [
                (SOCK_DIAG_BY_FAMILY, AF_INET),
                (SOCK_DIAG_BY_FAMILY, AF_INET6)
            ]
        );
    }

    #[test]
    fn counts_legacy_replies_by_the_family_in_each() {
        let legacy = |family: u8, state: u8| {
            let mut payload = vec![0u8; SOCKET_MESSAGE_LEN];
            payload[0] = family;
            payload[1] = state;
            message(TCPDIAG_GETSOCK, 2, SEQ, &payload)
        };
        let datagram = [
            legacy(AF_INET, TcpState::Listen as u8),
            legacy(AF_INET6, TcpState::Established as u8),
            // A request socket, and a dual-stack socket talking IPv4: IPv6 as the kernel says.
            legacy(AF_INET6, 12),
            legacy(AF_INET, TcpState::TimeWait as u8),
            legacy(AF_INET6, TcpState::TimeWait as u8),
            done(0),
        ]
        .concat();
        let mut counting = Counting::default();
        let mut dump = Dump::new(SEQ, &mut counting);
        assert_eq!(dump.absorb(&datagram).unwrap(), Progress::Done);
        let counts = dump.visitor.counts;
        assert_eq!(counts.ipv4.get(TcpState::Listen), 1);
        assert_eq!(counts.ipv4.get(TcpState::TimeWait), 1);
        assert_eq!(counts.ipv6.get(TcpState::Established), 1);
        assert_eq!(counts.ipv6.get(TcpState::SynRecv), 1);
        assert_eq!(counts.ipv6.get(TcpState::TimeWait), 1);
        assert_eq!(counts.ipv4.total() + counts.ipv6.total(), 5);
    }

    #[test]
    fn only_a_refusal_moves_on_to_the_next_request_form() {
        for errno in [libc::EINVAL, libc::ENOENT, libc::EOPNOTSUPP, libc::EPERM] {
            assert!(refused(&kernel_error(-errno)), "{errno}");
        }
        assert!(refused(&CollectError::NetlinkMalformed("x".into())));
        assert!(!refused(&CollectError::NetlinkIo(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel sent nothing"
        ))));
        assert!(!refused(&CollectError::NetlinkOpen(
            io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)
        )));
    }

    #[test]
    fn live_refused_request_falls_back_to_the_per_family_dumps() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // The kernel answers an unknown sock_diag message type with EINVAL.
        match NetlinkCounter::open_preferring(&[DumpRequest::Refused]) {
            Err(CollectError::NetlinkKernel { errno, .. }) => assert_eq!(errno, libc::EINVAL),
            Err(other) => panic!("expected a refusal, got {other:?}"),
            Ok(_) => panic!("expected a refusal"),
        }
        let mut counter =
            NetlinkCounter::open_preferring(&[DumpRequest::Refused, DumpRequest::PerFamily])
                .unwrap();
        assert_eq!(counter.request, DumpRequest::PerFamily);
        assert!(!counter.dumps_both_families_at_once());
        // Decided once: later walks use the per-family form on the same socket.
        for _ in 0..2 {
            let counts = counter.count().unwrap();
            assert!(counts.ipv4.get(TcpState::Listen) >= 1, "{counts:?}");
        }
        assert_eq!(counter.request, DumpRequest::PerFamily);
        drop(listener);
    }

    #[test]
    fn live_single_dump_counts_like_the_per_family_dumps() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let listener6 = TcpListener::bind("[::1]:0").unwrap();
        let client = std::net::TcpStream::connect(listener6.local_addr().unwrap()).unwrap();
        let mut single = NetlinkCounter::open().unwrap();
        // This kernel (and every one since 2.6) answers TCPDIAG_GETSOCK.
        assert!(single.dumps_both_families_at_once());
        let mut per_family = NetlinkCounter::open_per_family().unwrap();
        assert!(!per_family.dumps_both_families_at_once());
        let listeners = |counter: &mut NetlinkCounter| {
            let mut seen = Listeners::default();
            counter.visit([TcpState::Listen], &mut seen).unwrap();
            let mut addresses: Vec<InetSocketAddr> =
                seen.0.iter().map(|(local, ..)| *local).collect();
            addresses.sort();
            addresses
        };
        let (a, b) = (listeners(&mut single), listeners(&mut per_family));
        assert_eq!(a, b);
        assert!(a.contains(&listener.local_addr().unwrap()), "{a:?}");
        assert!(a.contains(&listener6.local_addr().unwrap()), "{a:?}");
        let counts = single.count().unwrap();
        assert!(counts.ipv6.get(TcpState::Established) >= 2, "{counts:?}");
        drop((client, listener, listener6));
    }

    #[test]
    fn live_counters_can_share_one_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut shared = Vec::new();
        let mut first = NetlinkCounter::open_sharing(&mut shared).unwrap();
        assert_eq!(shared.len(), DATAGRAM_BUFFER);
        assert!(first.buffer.is_empty());
        let mut second = NetlinkCounter::open_sharing(&mut shared).unwrap();
        let at = shared.as_ptr();
        for counter in [&mut first, &mut second] {
            let counts = counter
                .with_buffer(&mut shared, NetlinkCounter::count)
                .unwrap();
            assert!(counts.ipv4.get(TcpState::Listen) >= 1, "{counts:?}");
            assert!(counter.buffer.is_empty());
        }
        assert_eq!(shared.as_ptr(), at, "the buffer was not reallocated");
        // Without a buffer a walk fails instead of misreading.
        assert!(matches!(
            first.count(),
            Err(CollectError::NetlinkMalformed(_))
        ));
        drop(listener);
    }

    #[test]
    fn live_dump_sees_an_open_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let first = counter.count().unwrap();
        assert!(first.ipv4.get(TcpState::Listen) >= 1, "{first:?}");
        let again = counter.count().unwrap();
        assert!(again.ipv4.get(TcpState::Listen) >= 1, "{again:?}");
        drop(listener);
    }

    #[test]
    fn decodes_an_ipv4_socket_id() {
        let mut fake =
            testing::FakeSocket::new(TcpState::CloseWait, "127.0.0.1:8080", "10.1.2.3:54321");
        fake.inode = 0xdead_beef;
        fake.cookie = 0x0102_0304_0506_0708;
        fake.rqueue = 17;
        fake.wqueue = 4096;
        fake.timer = 2;
        fake.expires = 7000;
        let bytes = fake.encode();
        // The ports are big-endian on the wire whatever the host's byte order.
        assert_eq!(&bytes[4..8], &[0x1f, 0x90, 0xd4, 0x31]);
        assert_eq!(&bytes[8..12], &[127, 0, 0, 1]);
        let view = SocketView::parse(&bytes).unwrap();
        assert_eq!(view.family(), Family::Ipv4);
        assert_eq!(view.state(), TcpState::CloseWait);
        assert_eq!(view.local(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(view.remote(), "10.1.2.3:54321".parse().unwrap());
        assert_eq!(view.inode(), 0xdead_beef);
        assert_eq!(view.cookie(), 0x0102_0304_0506_0708);
        assert_eq!((view.rqueue(), view.wqueue()), (17, 4096));
        assert_eq!((view.timer(), view.expires()), (2, 7000));
    }

    #[test]
    fn decodes_ipv6_and_mapped_socket_ids() {
        let fake = testing::FakeSocket::new(
            TcpState::TimeWait,
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.7]:65535",
        );
        let bytes = fake.encode();
        let view = SocketView::parse(&bytes).unwrap();
        assert_eq!(view.family(), Family::Ipv6);
        assert_eq!(view.state(), TcpState::TimeWait);
        assert_eq!(view.local(), "[2001:db8::1]:443".parse().unwrap());
        // Reported as the kernel has it; callers canonicalise where they want IPv4.
        assert_eq!(
            view.remote_ip(),
            "::ffff:192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            view.remote_ip().to_canonical(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(view.remote_port(), 65535);
        assert_eq!(view.inode(), 0);
    }

    #[test]
    fn state_masks_follow_the_kernel_bits() {
        assert_eq!(state_mask(TcpState::ALL), ALL_STATES);
        assert_eq!(state_mask([TcpState::Listen]), 1 << 10);
        assert_eq!(
            state_mask([TcpState::CloseWait, TcpState::TimeWait]),
            1 << 8 | 1 << 6
        );
        assert_eq!(state_mask([TcpState::SynRecv]), 1 << 3 | 1 << 12);
        assert_eq!(state_mask([]), 0);
    }

    /// Records what a walk visits.
    #[derive(Default)]
    struct Listeners(Vec<(InetSocketAddr, u32, u32)>, usize);

    impl SocketVisitor for Listeners {
        fn socket(&mut self, socket: &SocketView<'_>) {
            assert_eq!(socket.state(), TcpState::Listen);
            self.0
                .push((socket.local(), socket.rqueue(), socket.wqueue()));
        }

        fn restart(&mut self) {
            self.0.clear();
            self.1 += 1;
        }
    }

    #[test]
    fn live_listen_walk_reports_the_accept_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        // SAFETY: the descriptor is the listener's, alive for the call; listen() on a listening
        // socket only changes its backlog.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 5) }, 0);
        let client = std::net::TcpStream::connect(address).unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut seen = Listeners::default();
            counter.visit([TcpState::Listen], &mut seen).unwrap();
            let ours = seen.0.iter().find(|(local, ..)| *local == address).copied();
            if ours == Some((address, 1, 5)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{ours:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop((client, listener));
    }
}
