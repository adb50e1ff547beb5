//! Counting TCP sockets through netlink `sock_diag`, the way `ss` reads them.
//!
//! One `NETLINK_SOCK_DIAG` socket and one receive buffer are kept for the life of the collector. A
//! collection sends one dump request per family and walks the replies in place: only the family and
//! state bytes of each socket are read, so counting allocates nothing per socket.

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_ALIGNTO, NLMSG_DONE,
    NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};
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
/// Bytes of a netlink header.
const HEADER_LEN: usize = 16;
/// Bytes of a serialized `inet_diag_req_v2` request with its netlink header.
const REQUEST_LEN: usize = HEADER_LEN + size_of::<InetRequestBuffer>();
/// Bytes of the fixed `inet_diag_msg` that starts every socket in a reply.
const SOCKET_MESSAGE_LEN: usize = size_of::<InetResponseBuffer>();

/// Counts TCP sockets by family and state through netlink `sock_diag`.
///
/// It exists so repeated collections reuse one socket and one buffer: after [`NetlinkCounter::open`]
/// a collection costs the kernel's dump and a walk over the bytes, nothing more.
pub struct NetlinkCounter {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl NetlinkCounter {
    /// Opens the `NETLINK_SOCK_DIAG` socket (in the calling thread's network namespace) and allocates
    /// the receive buffer that every later collection reuses.
    pub fn open() -> Result<NetlinkCounter, CollectError> {
        Ok(NetlinkCounter {
            socket: open_socket().map_err(CollectError::NetlinkOpen)?,
            buffer: vec![0; DATAGRAM_BUFFER],
            sequence: 0,
        })
    }

    /// Counts every TCP socket of the namespace by the family the kernel reports and by state.
    ///
    /// After a failure the socket is replaced, so replies left over from an abandoned dump cannot
    /// confuse (or, as `EBUSY`, block) the next collection.
    pub fn count(&mut self) -> Result<FamilyCounts, CollectError> {
        let counted = self.count_states(ALL_STATES);
        if counted.is_err()
            && let Ok(socket) = open_socket()
        {
            self.socket = socket;
        }
        counted
    }

    /// Counts the sockets whose state is in `states` (bit `1 << state`, the kernel's filter).
    fn count_states(&mut self, states: u32) -> Result<FamilyCounts, CollectError> {
        let mut counts = FamilyCounts::default();
        for family in [AF_INET, AF_INET6] {
            let dumped = self.dump(family, states)?;
            counts.ipv4 = counts.ipv4.plus(&dumped.ipv4);
            counts.ipv6 = counts.ipv6.plus(&dumped.ipv6);
        }
        Ok(counts)
    }

    /// Dumps one family, restarting when the kernel says the dump was interrupted by a change.
    fn dump(&mut self, family: u8, states: u32) -> Result<FamilyCounts, CollectError> {
        for _ in 0..MAX_DUMP_ATTEMPTS {
            self.sequence = self.sequence.wrapping_add(1);
            self.send_request(family, states)?;
            let mut dump = Dump::new(self.sequence);
            loop {
                let received = self.receive()?;
                let datagram = self.buffer.get(..received).unwrap_or_default();
                if dump.absorb(datagram)? == Progress::Done {
                    break;
                }
            }
            if !dump.interrupted {
                return Ok(dump.counts);
            }
        }
        Err(CollectError::NetlinkKernel {
            errno: libc::EINTR,
            message: format!(
                "the dump of address family {family} was interrupted {MAX_DUMP_ATTEMPTS} times in a row"
            ),
        })
    }

    fn send_request(&self, family: u8, states: u32) -> Result<(), CollectError> {
        let mut bytes = [0u8; REQUEST_LEN];
        let length = encode_request(family, states, self.sequence, &mut bytes)?;
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

/// Writes the dump request for TCP sockets of `family` in `states` into `bytes`; returns its length.
fn encode_request(
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

/// Whether a dump has more datagrams to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    More,
    Done,
}

/// The counts of one dump in progress.
#[derive(Debug)]
struct Dump {
    sequence: u32,
    counts: FamilyCounts,
    interrupted: bool,
}

impl Dump {
    fn new(sequence: u32) -> Dump {
        Dump {
            sequence,
            counts: FamilyCounts::default(),
            interrupted: false,
        }
    }

    /// Counts the sockets of every message in one datagram, until `NLMSG_DONE`.
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
                SOCK_DIAG_BY_FAMILY => self.count_socket(message.payload())?,
                _ => {}
            }
            let length = message.length() as usize;
            let next = length.next_multiple_of(usize::from(NLMSG_ALIGNTO));
            rest = rest.get(next..).unwrap_or_default();
        }
        Ok(Progress::More)
    }

    fn count_socket(&mut self, payload: &[u8]) -> Result<(), CollectError> {
        let (&[family, state], _) = payload
            .split_first_chunk::<2>()
            .filter(|_| payload.len() >= SOCKET_MESSAGE_LEN)
            .ok_or_else(|| {
                CollectError::NetlinkMalformed(format!(
                    "a sock_diag message of {} bytes, shorter than the {SOCKET_MESSAGE_LEN}-byte inet_diag_msg",
                    payload.len()
                ))
            })?;
        let family = match family {
            AF_INET => Family::Ipv4,
            AF_INET6 => Family::Ipv6,
            other => {
                return Err(CollectError::NetlinkMalformed(format!(
                    "a TCP socket of address family {other}"
                )));
            }
        };
        let state = TcpState::from_diag(state).ok_or_else(|| {
            CollectError::NetlinkMalformed(format!("a TCP socket in unknown state {state}"))
        })?;
        self.counts.family_mut(family).increment(state);
        Ok(())
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
        let mut dump = Dump::new(SEQ);
        assert_eq!(dump.absorb(&first).unwrap(), Progress::More);
        assert_eq!(dump.absorb(&second).unwrap(), Progress::Done);
        assert!(!dump.interrupted);
        assert_eq!(dump.counts.ipv4.get(TcpState::Established), 2);
        assert_eq!(dump.counts.ipv4.get(TcpState::SynRecv), 1);
        assert_eq!(dump.counts.ipv6.get(TcpState::Listen), 1);
        assert_eq!(dump.counts.ipv6.get(TcpState::TimeWait), 1);
        assert_eq!(dump.counts.ipv4.total() + dump.counts.ipv6.total(), 5);
    }

    #[test]
    fn stops_at_done() {
        let datagram = [done(0), socket(AF_INET, TcpState::Established as u8)].concat();
        let mut dump = Dump::new(SEQ);
        assert_eq!(dump.absorb(&datagram).unwrap(), Progress::Done);
        assert_eq!(dump.counts, FamilyCounts::default());
    }

    #[test]
    fn nlmsg_error_becomes_kernel_error() {
        let mut dump = Dump::new(SEQ);
        match dump.absorb(&nlmsg_error(-libc::ENOENT)) {
            Err(CollectError::NetlinkKernel { errno, message }) => {
                assert_eq!(errno, libc::ENOENT);
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("expected a kernel error, got {other:?}"),
        }
        let mut acked = Dump::new(SEQ);
        let datagram = [nlmsg_error(0), done(0)].concat();
        assert_eq!(acked.absorb(&datagram).unwrap(), Progress::Done);
    }

    #[test]
    fn failed_done_becomes_kernel_error() {
        let mut dump = Dump::new(SEQ);
        assert!(matches!(
            dump.absorb(&done(-libc::ENOBUFS)),
            Err(CollectError::NetlinkKernel { errno, .. }) if errno == libc::ENOBUFS
        ));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let whole = [socket(AF_INET, 1), done(0)].concat();
        for cut in 1..whole.len() {
            let mut dump = Dump::new(SEQ);
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
            Dump::new(SEQ).absorb(&short_socket),
            Err(CollectError::NetlinkMalformed(_))
        ));
        let mut too_short_length = socket(AF_INET, 1);
        too_short_length[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            Dump::new(SEQ).absorb(&too_short_length),
            Err(CollectError::NetlinkMalformed(_))
        ));
        let short_done = message(NLMSG_DONE, 2, SEQ, &[0, 0]);
        assert!(matches!(
            Dump::new(SEQ).absorb(&short_done),
            Err(CollectError::NetlinkMalformed(_))
        ));
    }

    #[test]
    fn foreign_sequence_and_unknown_values_are_errors() {
        let stale = message(NLMSG_DONE, 2, SEQ - 1, &0i32.to_ne_bytes());
        assert!(matches!(
            Dump::new(SEQ).absorb(&stale),
            Err(CollectError::NetlinkMalformed(_))
        ));
        assert!(matches!(
            Dump::new(SEQ).absorb(&socket(libc::AF_UNIX as u8, 1)),
            Err(CollectError::NetlinkMalformed(_))
        ));
        assert!(matches!(
            Dump::new(SEQ).absorb(&socket(AF_INET, 13)),
            Err(CollectError::NetlinkMalformed(_))
        ));
    }

    #[test]
    fn notes_interrupted_dumps() {
        let mut interrupted = socket(AF_INET, 1);
        interrupted[6..8].copy_from_slice(&(2 | NLM_F_DUMP_INTR).to_ne_bytes());
        let mut dump = Dump::new(SEQ);
        assert_eq!(
            dump.absorb(&[interrupted, done(0)].concat()).unwrap(),
            Progress::Done
        );
        assert!(dump.interrupted);
    }

    #[test]
    fn encodes_an_all_states_dump_request() {
        let mut bytes = [0u8; REQUEST_LEN];
        let length = encode_request(AF_INET6, ALL_STATES, 99, &mut bytes).unwrap();
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
    fn live_dump_sees_an_open_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut counter = NetlinkCounter::open().unwrap();
        let first = counter.count().unwrap();
        assert!(first.ipv4.get(TcpState::Listen) >= 1, "{first:?}");
        let again = counter.count().unwrap();
        assert!(again.ipv4.get(TcpState::Listen) >= 1, "{again:?}");
        drop(listener);
    }
}
