//! The eleven TCP states and per-state socket counts.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TCP socket state, numbered as the kernel numbers it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// The state with the kernel's number, or `None` for numbers the kernel does not use for TCP sockets
    /// (12 is `TCP_NEW_SYN_RECV`, which sock_diag reports as SYN_RECV; see [`TcpState::from_diag`]).
    pub fn from_kernel(number: u8) -> Option<TcpState> {
        TcpState::ALL
            .get(usize::from(number).checked_sub(1)?)
            .copied()
    }

    /// The state as `sock_diag` or `/proc/net/tcp` reports it, folding the kernel's internal
    /// `TCP_NEW_SYN_RECV` (12) into SYN_RECV as `ss` does.
    pub fn from_diag(number: u8) -> Option<TcpState> {
        match number {
            12 => Some(TcpState::SynRecv),
            other => TcpState::from_kernel(other),
        }
    }

    /// Position of the state in [`TcpState::ALL`] and in [`StateCounts`].
    pub const fn index(self) -> usize {
        self as usize - 1
    }

    /// The state's name in sockfleet's JSON, API parameters and SQL columns (`time_wait`).
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
        }
    }

    /// The state named `name` as in [`TcpState::name`]; also accepts `ss`'s spelling (`TIME-WAIT`, `FIN-WAIT-1`).
    pub fn from_name(name: &str) -> Option<TcpState> {
        let squashed: String = name
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let squashed = if squashed == "estab" {
            "established".to_owned()
        } else {
            squashed
        };
        TcpState::ALL
            .into_iter()
            .find(|state| state.name().replace('_', "") == squashed)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of sockets in each TCP state. Serialized as an object keyed by state name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts([u64; 11]);

impl StateCounts {
    /// Counts built from an array in [`TcpState::ALL`] order.
    pub const fn from_array(counts: [u64; 11]) -> StateCounts {
        StateCounts(counts)
    }

    /// The counts in [`TcpState::ALL`] order.
    pub const fn as_array(&self) -> &[u64; 11] {
        &self.0
    }

    /// How many sockets are in `state`.
    pub const fn get(&self, state: TcpState) -> u64 {
        self.0[state.index()]
    }

    /// Sets the count of `state`.
    pub fn set(&mut self, state: TcpState, count: u64) {
        self.0[state.index()] = count;
    }

    /// Counts one more socket in `state`.
    pub fn increment(&mut self, state: TcpState) {
        self.0[state.index()] += 1;
    }

    /// Sockets in all states together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each state with its count, in kernel order.
    pub fn iter(&self) -> impl Iterator<Item = (TcpState, u64)> + '_ {
        TcpState::ALL
            .into_iter()
            .map(|state| (state, self.get(state)))
    }

    /// Per-state sum of two count sets.
    pub fn plus(&self, other: &StateCounts) -> StateCounts {
        let mut sum = *self;
        for (slot, add) in sum.0.iter_mut().zip(other.0) {
            *slot += add;
        }
        sum
    }
}

impl Serialize for StateCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(TcpState::ALL.len()))?;
        for (state, count) in self.iter() {
            map.serialize_entry(state.name(), &count)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StateCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;

        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = StateCounts;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object mapping TCP state names to counts")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StateCounts, A::Error> {
                let mut counts = StateCounts::default();
                while let Some((name, count)) = map.next_entry::<String, u64>()? {
                    let state = TcpState::ALL
                        .into_iter()
                        .find(|state| state.name() == name)
                        .ok_or_else(|| de::Error::unknown_field(&name, &[]))?;
                    counts.set(state, count);
                }
                Ok(counts)
            }
        }

        deserializer.deserialize_map(CountsVisitor)
    }
}

/// An address family whose sockets are counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    /// The family's name in JSON (`ipv4`).
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// State counts for IPv4 and IPv6 sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyCounts {
    pub ipv4: StateCounts,
    pub ipv6: StateCounts,
}

impl FamilyCounts {
    /// The counts of one family.
    pub fn family(&self, family: Family) -> &StateCounts {
        match family {
            Family::Ipv4 => &self.ipv4,
            Family::Ipv6 => &self.ipv6,
        }
    }

    /// The counts of one family, for updating.
    pub fn family_mut(&mut self, family: Family) -> &mut StateCounts {
        match family {
            Family::Ipv4 => &mut self.ipv4,
            Family::Ipv6 => &mut self.ipv6,
        }
    }

    /// Both families added together.
    pub fn combined(&self) -> StateCounts {
        self.ipv4.plus(&self.ipv6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(12), None);
        assert_eq!(TcpState::from_diag(12), Some(TcpState::SynRecv));
    }

    #[test]
    fn names_accept_ss_spelling() {
        assert_eq!(TcpState::from_name("TIME-WAIT"), Some(TcpState::TimeWait));
        assert_eq!(TcpState::from_name("ESTAB"), Some(TcpState::Established));
        assert_eq!(TcpState::from_name("FIN-WAIT-1"), Some(TcpState::FinWait1));
        assert_eq!(TcpState::from_name("UNCONN"), None);
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_name(state.name()), Some(state));
        }
    }

    #[test]
    fn counts_serialize_as_named_object() {
        let mut counts = StateCounts::default();
        counts.set(TcpState::TimeWait, 7);
        let json = serde_json::to_value(counts).unwrap();
        assert_eq!(json["time_wait"], 7);
        assert_eq!(json.as_object().unwrap().len(), 11);
        let back: StateCounts = serde_json::from_value(json).unwrap();
        assert_eq!(back, counts);
        assert!(serde_json::from_str::<StateCounts>(r#"{"bogus": 1}"#).is_err());
    }
}
