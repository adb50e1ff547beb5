//! Prototypes of cheaper collections, to show where the time of a full dump goes and what a change in
//! the agent could gain. Not used by sockfleet itself.
//!
//! - One dump for both families: the legacy `TCPDIAG_GETSOCK` request asks `inet_diag` with
//!   `AF_UNSPEC`, so the kernel walks its established hash once instead of once per family (the hash is
//!   shared by both families, and each `SOCK_DIAG_BY_FAMILY` dump walks all of it). Replies still carry
//!   each socket's family.
//! - TIME_WAIT from `/proc/net/sockstat`: dump every state but TIME_WAIT (a kernel-side filter) and take
//!   the TIME_WAIT total from sockstat's `tw`, minus the orphaned FIN_WAIT2 sockets the dump shows as
//!   time-wait minisockets (`idiag_timer == 3`), which `tw` also counts. The per-family split of
//!   TIME_WAIT is lost; the total is exact while nothing changes between the two reads.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, bail};
use sockfleet_domain::{Family, FamilyCounts, TcpState};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY`: the per-family request `ss` and the agent use (replies may carry it).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the legacy request, answered for both families at once.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const HEADER_LEN: usize = 16;
/// Bytes of `inet_diag_msg`.
const SOCKET_MESSAGE_LEN: usize = 72;
/// Every TCP state including `TCP_NEW_SYN_RECV` (12), as `ss` asks.
pub const ALL_STATES: u32 = 0x1ffe;
/// Every state but TIME_WAIT.
pub const ALL_BUT_TIME_WAIT: u32 = ALL_STATES & !(1 << TcpState::TimeWait as u32);
/// `idiag_timer` of a time-wait minisocket.
const TIMEWAIT_TIMER: u8 = 3;
const RECEIVE_BUFFER: usize = 256 << 10;

/// What a dump found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dumped {
    pub counts: FamilyCounts,
    /// FIN_WAIT2 sockets that are time-wait minisockets (orphans).
    pub fin_wait2_minisockets: u64,
}

pub struct RawDiag {
    socket: OwnedFd,
    buffer: Vec<u8>,
    sequence: u32,
}

impl RawDiag {
    /// Opens a `NETLINK_SOCK_DIAG` socket in the calling thread's namespace.
    pub fn open() -> anyhow::Result<RawDiag> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("socket(NETLINK_SOCK_DIAG)");
        }
        // SAFETY: `fd` is a freshly created descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let size: libc::c_int = 4 << 20;
        // SAFETY: `size` is a live c_int for the call; failure only leaves the default buffer.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                4,
            );
        }
        Ok(RawDiag {
            socket,
            buffer: vec![0; RECEIVE_BUFFER],
            sequence: 0,
        })
    }

    /// Dumps the TCP sockets of both families in `states` with one `TCPDIAG_GETSOCK` request and
    /// counts them by family and state.
    pub fn dump(&mut self, states: u32) -> anyhow::Result<Dumped> {
        let mut dumped = Dumped::default();
        self.sequence = self.sequence.wrapping_add(1);
        let request = encode(states, self.sequence);
        // SAFETY: `request` is a live byte slice for the call; the kernel is the destination (the
        // socket is unconnected, so send to pid 0 via sendto).
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                std::ptr::from_ref(&kernel).cast(),
                u32::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(12),
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error()).context("sending the dump request");
        }
        loop {
            // SAFETY: the buffer is live and writable for its whole length during the call.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    0,
                )
            };
            let length = usize::try_from(received)
                .map_err(|_| io::Error::last_os_error())
                .context("receiving the dump")?;
            if walk(&self.buffer[..length], self.sequence, &mut dumped)? {
                return Ok(dumped);
            }
        }
    }
}

/// A `TCPDIAG_GETSOCK` dump request for `states`.
fn encode(states: u32, sequence: u32) -> Vec<u8> {
    let total = HEADER_LEN + 60;
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&u32::try_from(total).unwrap_or(0).to_ne_bytes());
    bytes.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    bytes.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    bytes.extend_from_slice(&sequence.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req: family (ignored: the kernel dumps AF_UNSPEC), src_len, dst_len, ext,
    // id (48 bytes), states, dbs.
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&[0u8; 48]);
    bytes.extend_from_slice(&states.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes
}

/// Counts the sockets of one datagram; `true` at `NLMSG_DONE`.
fn walk(mut datagram: &[u8], sequence: u32, dumped: &mut Dumped) -> anyhow::Result<bool> {
    while datagram.len() >= HEADER_LEN {
        let word = |at: usize| {
            u32::from_ne_bytes([
                datagram[at],
                datagram[at + 1],
                datagram[at + 2],
                datagram[at + 3],
            ])
        };
        let length = word(0) as usize;
        let message_type = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let flags = u16::from_ne_bytes([datagram[6], datagram[7]]);
        if length < HEADER_LEN || length > datagram.len() {
            bail!("malformed netlink message of {length} bytes");
        }
        if word(8) != sequence {
            bail!("reply to another request");
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            bail!("the dump was interrupted by a change; retry");
        }
        let payload = &datagram[HEADER_LEN..length];
        match message_type {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = payload
                    .first_chunk::<4>()
                    .map_or(0, |raw| i32::from_ne_bytes(*raw));
                if code != 0 {
                    bail!(
                        "the kernel refused the dump: {}",
                        io::Error::from_raw_os_error(-code)
                    );
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK if payload.len() >= SOCKET_MESSAGE_LEN => {
                let family = match i32::from(payload[0]) {
                    libc::AF_INET => Family::Ipv4,
                    libc::AF_INET6 => Family::Ipv6,
                    other => bail!("a TCP socket of family {other}"),
                };
                let state = TcpState::from_diag(payload[1])
                    .with_context(|| format!("unknown state {}", payload[1]))?;
                if state == TcpState::FinWait2 && payload[2] == TIMEWAIT_TIMER {
                    dumped.fin_wait2_minisockets += 1;
                }
                dumped.counts.family_mut(family).increment(state);
            }
            _ => {}
        }
        datagram = datagram
            .get(length.next_multiple_of(4)..)
            .unwrap_or_default();
    }
    Ok(false)
}

/// `tw` of `/proc/net/sockstat` in the calling thread's namespace (`/proc/net` would follow the
/// process's main thread).
pub fn sockstat_time_wait() -> anyhow::Result<u64> {
    let text = fs::read_to_string("/proc/thread-self/net/sockstat")
        .context("cannot read /proc/thread-self/net/sockstat")?;
    let line = text
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .context("no TCP line in sockstat")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|pair| pair[0] == "tw")
        .and_then(|pair| pair[1].parse().ok())
        .context("no tw in sockstat's TCP line")
}

/// The fast-path prototype: everything but TIME_WAIT from one dump, TIME_WAIT from sockstat. The
/// TIME_WAIT total is put under IPv4 (its family is unknown this way).
pub fn count_without_time_wait_dump(diag: &mut RawDiag) -> anyhow::Result<FamilyCounts> {
    let dumped = diag.dump(ALL_BUT_TIME_WAIT)?;
    let tw = sockstat_time_wait()?;
    let mut counts = dumped.counts;
    counts.ipv4.set(
        TcpState::TimeWait,
        tw.saturating_sub(dumped.fin_wait2_minisockets),
    );
    Ok(counts)
}
