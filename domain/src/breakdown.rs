//! The detail an agent sends with each report besides the per-state counts: which destinations use up
//! local ports, which processes hold CLOSE_WAIT sockets and since when, and how full the accept queues
//! of listening sockets are.
//!
//! Every list is bounded: the agent keeps the first [`TopN`] entries by the order each list documents
//! and says in [`Omitted`] how many it left out. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a
//! dual-stack socket reports for an IPv4 peer) appear as plain IPv4 addresses, so one destination is one
//! entry whichever family its sockets have.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How many entries each breakdown list may hold: from 1 to [`TopN::MAX`], 20 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct TopN(u32);

/// Why a number is not a usable [`TopN`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a breakdown holds 1 to {max} entries, not {0:?}", max = TopN::MAX)]
pub struct InvalidTopN(pub String);

impl TopN {
    /// The default bound of every list.
    pub const DEFAULT: TopN = TopN(20);
    /// The largest bound an agent may use and a server accepts.
    pub const MAX: u32 = 1000;

    /// Checks that `n` is within `1..=TopN::MAX`.
    pub fn new(n: u32) -> Result<TopN, InvalidTopN> {
        if (1..=TopN::MAX).contains(&n) {
            Ok(TopN(n))
        } else {
            Err(InvalidTopN(n.to_string()))
        }
    }

    /// The bound as a number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The bound as a length.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl Default for TopN {
    fn default() -> TopN {
        TopN::DEFAULT
    }
}

impl TryFrom<u32> for TopN {
    type Error = InvalidTopN;

    fn try_from(n: u32) -> Result<TopN, InvalidTopN> {
        TopN::new(n)
    }
}

impl From<TopN> for u32 {
    fn from(n: TopN) -> u32 {
        n.0
    }
}

impl FromStr for TopN {
    type Err = InvalidTopN;

    /// Parses a decimal number, as given on a command line.
    fn from_str(raw: &str) -> Result<TopN, InvalidTopN> {
        raw.trim()
            .parse::<u32>()
            .map_err(|_| InvalidTopN(raw.to_owned()))
            .and_then(TopN::new)
    }
}

impl fmt::Display for TopN {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The breakdowns of one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdowns {
    /// How many local ports `connect()` can choose from: the ports of `net.ipv4.ip_local_port_range`
    /// that `net.ipv4.ip_local_reserved_ports` does not reserve. A destination's
    /// [`DestinationUse::ephemeral`] divided by this is its ephemeral-port pressure.
    pub usable_local_ports: u32,
    /// The destinations of outgoing connections with the most sockets: most
    /// [`DestinationUse::ephemeral`] first, then most TIME_WAIT, then by address.
    pub destinations: Vec<DestinationUse>,
    /// The CLOSE_WAIT sockets seen longest: earliest [`CloseWaitSocket::first_seen`] first.
    pub close_wait_sockets: Vec<CloseWaitSocket>,
    /// The processes holding the most CLOSE_WAIT sockets, most first, then by pid.
    pub close_wait_processes: Vec<ProcessCloseWait>,
    /// The listening sockets with the fullest accept queues: highest queued / backlog first, then most
    /// queued, then by address.
    pub listeners: Vec<ListenQueue>,
    /// Whether every CLOSE_WAIT socket could be matched to a process, and if not, why.
    pub attribution: Attribution,
    /// How many entries each list left out.
    pub omitted: Omitted,
    /// `None` when this collection measured TIME_WAIT per family and per destination. Otherwise the
    /// time of the earlier full collection that the IPv4/IPv6 split of TIME_WAIT and the destinations'
    /// TIME_WAIT come from: on hosts with very many TIME_WAIT sockets the agent takes the current
    /// TIME_WAIT total from `/proc/net/sockstat` on most collections (exact) and walks them only on some.
    #[serde(default)]
    pub time_wait_detail_from: Option<DateTime<Utc>>,
}

/// Sockets to one destination `(local IP, remote IP, remote port)` whose local port is an ephemeral
/// one: in the usable local port range and not the port of a listening socket (so, outgoing
/// connections). The kernel needs a distinct local port for each of them, so
/// `ephemeral / usable_local_ports` is how close `connect()` to this destination is to `EADDRNOTAVAIL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DestinationUse {
    pub local_ip: IpAddr,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    /// Those of the sockets in TIME_WAIT; never more than `ephemeral`.
    pub time_wait: u32,
    /// Sockets in any state, TIME_WAIT included; at least 1.
    pub ephemeral: u32,
}

/// One CLOSE_WAIT socket and, where found, the process holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseWaitSocket {
    /// The socket's inode, as in `/proc/PID/fd` links (`socket:[INODE]`); 0 for a connection still in
    /// its listener's accept queue, which no process holds yet.
    pub inode: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The process holding the socket (the first one found if several share it); `None` when no
    /// process holds it or it could not be found (see [`Breakdowns::attribution`]).
    pub pid: Option<u32>,
    /// The command name of `pid` (`/proc/PID/comm`), if it could be read.
    pub comm: Option<String>,
    /// When the agent first saw this socket in CLOSE_WAIT (no earlier than the agent's start).
    pub first_seen: DateTime<Utc>,
}

/// A process holding CLOSE_WAIT sockets, with how close it is to running out of descriptors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCloseWait {
    pub pid: u32,
    /// `/proc/PID/comm`, if it could be read.
    pub comm: Option<String>,
    /// CLOSE_WAIT sockets attributed to the process; at least 1.
    pub close_wait: u32,
    /// Descriptors the process has open (entries of `/proc/PID/fd`), if they could be counted.
    pub open_fds: Option<u32>,
    /// The soft "Max open files" limit from `/proc/PID/limits`, if it could be read and is finite.
    pub fd_limit: Option<u64>,
}

/// A listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListenQueue {
    pub local: SocketAddr,
    /// Connections completed by the kernel and waiting for `accept()`. The kernel lets it reach
    /// `backlog + 1` before it drops or refuses new ones.
    pub queued: u32,
    /// The queue's limit: `listen()`'s backlog capped at `net.core.somaxconn`.
    pub backlog: u32,
}

/// How far the agent could match CLOSE_WAIT sockets to processes (through `/proc/PID/fd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Attribution {
    /// Every CLOSE_WAIT socket that a process can hold was found (or there were none); sockets still
    /// in an accept queue have no process.
    Complete,
    /// Some sockets were not found, because some processes' descriptors could not be read or for the
    /// reason given.
    Partial {
        /// CLOSE_WAIT sockets with an inode that were not found in any readable descriptor table.
        unattributed_sockets: u32,
        /// Processes whose `/proc/PID/fd` the agent was not allowed to read.
        unreadable_processes: u32,
        /// What went wrong and how to fix it, for people.
        reason: String,
    },
    /// No process's descriptors could be read; no socket has a pid.
    Unavailable {
        /// What went wrong and how to fix it, for people.
        reason: String,
    },
}

/// How many entries each list of [`Breakdowns`] left out beyond its [`TopN`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Omitted {
    pub destinations: u32,
    pub close_wait_sockets: u32,
    pub close_wait_processes: u32,
    pub listeners: u32,
}

/// Why breakdowns received from elsewhere are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBreakdowns {
    #[error("{list} has {len} entries; at most {max} are allowed", max = TopN::MAX)]
    TooLong { list: &'static str, len: usize },
    #[error("usable_local_ports is {0}, more than the 65536 ports there are")]
    TooManyPorts(u32),
    #[error("destination {0}: time_wait exceeds ephemeral, or ephemeral is 0")]
    BadDestination(String),
    #[error("process {0} is listed with 0 CLOSE_WAIT sockets")]
    EmptyProcess(u32),
    #[error("a command name or reason is longer than {max} bytes", max = Breakdowns::MAX_TEXT_LEN)]
    TextTooLong,
}

impl Breakdowns {
    /// Longest `comm` or `reason` accepted, in bytes.
    pub const MAX_TEXT_LEN: usize = 512;

    /// Breakdowns with nothing in them: what a host without sockets reports.
    pub fn empty(usable_local_ports: u32) -> Breakdowns {
        Breakdowns {
            usable_local_ports,
            destinations: Vec::new(),
            close_wait_sockets: Vec::new(),
            close_wait_processes: Vec::new(),
            listeners: Vec::new(),
            attribution: Attribution::Complete,
            omitted: Omitted::default(),
            time_wait_detail_from: None,
        }
    }

    /// Checks the invariants documented on each field, for values that crossed a boundary (the
    /// server calls this on what an agent sent).
    pub fn validate(&self) -> Result<(), InvalidBreakdowns> {
        let lists = [
            ("destinations", self.destinations.len()),
            ("close_wait_sockets", self.close_wait_sockets.len()),
            ("close_wait_processes", self.close_wait_processes.len()),
            ("listeners", self.listeners.len()),
        ];
        for (list, len) in lists {
            if len > TopN::MAX as usize {
                return Err(InvalidBreakdowns::TooLong { list, len });
            }
        }
        if self.usable_local_ports > 65536 {
            return Err(InvalidBreakdowns::TooManyPorts(self.usable_local_ports));
        }
        if let Some(bad) = self
            .destinations
            .iter()
            .find(|d| d.ephemeral == 0 || d.time_wait > d.ephemeral)
        {
            return Err(InvalidBreakdowns::BadDestination(format!(
                "{} -> {}",
                bad.local_ip,
                SocketAddr::new(bad.remote_ip, bad.remote_port)
            )));
        }
        if let Some(bad) = self.close_wait_processes.iter().find(|p| p.close_wait == 0) {
            return Err(InvalidBreakdowns::EmptyProcess(bad.pid));
        }
        let too_long =
            |text: &Option<String>| text.as_ref().is_some_and(|t| t.len() > Self::MAX_TEXT_LEN);
        let reason_too_long = match &self.attribution {
            Attribution::Complete => false,
            Attribution::Partial { reason, .. } | Attribution::Unavailable { reason } => {
                reason.len() > Self::MAX_TEXT_LEN
            }
        };
        if reason_too_long
            || self.close_wait_sockets.iter().any(|s| too_long(&s.comm))
            || self.close_wait_processes.iter().any(|p| too_long(&p.comm))
        {
            return Err(InvalidBreakdowns::TextTooLong);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use chrono::TimeZone;

    use super::*;

    fn sample() -> Breakdowns {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
        let remote = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 40000);
        Breakdowns {
            usable_local_ports: 28232,
            destinations: vec![DestinationUse {
                local_ip: local.ip(),
                remote_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                remote_port: 5432,
                time_wait: 3,
                ephemeral: 5,
            }],
            close_wait_sockets: vec![CloseWaitSocket {
                inode: 4242,
                local,
                remote,
                pid: Some(17),
                comm: Some("nginx".into()),
                first_seen: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            }],
            close_wait_processes: vec![ProcessCloseWait {
                pid: 17,
                comm: Some("nginx".into()),
                close_wait: 1,
                open_fds: Some(12),
                fd_limit: Some(1024),
            }],
            listeners: vec![ListenQueue {
                local,
                queued: 2,
                backlog: 511,
            }],
            attribution: Attribution::Partial {
                unattributed_sockets: 1,
                unreadable_processes: 3,
                reason: "permission denied".into(),
            },
            omitted: Omitted {
                destinations: 4,
                ..Omitted::default()
            },
            time_wait_detail_from: None,
        }
    }

    #[test]
    fn top_n_is_bounded() {
        assert_eq!(TopN::default().get(), 20);
        assert!(TopN::new(0).is_err());
        assert!(TopN::new(TopN::MAX + 1).is_err());
        assert_eq!("7".parse::<TopN>().unwrap().as_usize(), 7);
        assert!("x".parse::<TopN>().is_err());
        assert!("99999999999".parse::<TopN>().is_err());
        assert!(serde_json::from_str::<TopN>("0").is_err());
        assert_eq!(serde_json::to_string(&TopN::DEFAULT).unwrap(), "20");
    }

    #[test]
    fn serializes_readably_and_round_trips() {
        let breakdowns = sample();
        let json = serde_json::to_value(&breakdowns).unwrap();
        assert_eq!(json["destinations"][0]["remote_ip"], "10.0.0.1");
        assert_eq!(json["close_wait_sockets"][0]["local"], "127.0.0.1:8080");
        assert_eq!(json["close_wait_sockets"][0]["remote"], "[::1]:40000");
        assert_eq!(
            json["close_wait_sockets"][0]["first_seen"],
            "2025-01-02T03:04:05Z"
        );
        assert_eq!(json["attribution"]["status"], "partial");
        assert_eq!(json["attribution"]["unreadable_processes"], 3);
        assert_eq!(
            serde_json::to_value(Attribution::Complete).unwrap(),
            serde_json::json!({"status": "complete"})
        );
        let back: Breakdowns = serde_json::from_value(json).unwrap();
        assert_eq!(back, breakdowns);
    }

    #[test]
    fn validation_catches_broken_invariants() {
        assert_eq!(sample().validate(), Ok(()));
        assert_eq!(Breakdowns::empty(28232).validate(), Ok(()));

        let mut bad = sample();
        bad.destinations[0].time_wait = 6;
        assert!(matches!(
            bad.validate(),
            Err(InvalidBreakdowns::BadDestination(_))
        ));

        let mut bad = sample();
        bad.close_wait_processes[0].close_wait = 0;
        assert_eq!(bad.validate(), Err(InvalidBreakdowns::EmptyProcess(17)));

        let mut bad = sample();
        bad.usable_local_ports = 70000;
        assert_eq!(bad.validate(), Err(InvalidBreakdowns::TooManyPorts(70000)));

        let mut bad = sample();
        bad.listeners = vec![bad.listeners[0]; TopN::MAX as usize + 1];
        assert!(matches!(
            bad.validate(),
            Err(InvalidBreakdowns::TooLong {
                list: "listeners",
                ..
            })
        ));

        let mut bad = sample();
        bad.close_wait_sockets[0].comm = Some("x".repeat(Breakdowns::MAX_TEXT_LEN + 1));
        assert_eq!(bad.validate(), Err(InvalidBreakdowns::TextTooLong));
    }
}
