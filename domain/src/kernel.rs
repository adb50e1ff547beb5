//! The kernel's TCP counters and gauges, as agents read them and the alert rules consume them.

use serde::{Deserialize, Serialize};

/// The kernel's TCP counters and gauges at one moment, as the alert rules consume them.
///
/// Fields taken from `netstat` and `snmp` are monotonic counters since boot (or since the network
/// namespace was created): the server alerts on their rates, not their values. Fields taken from
/// `sockstat` are gauges. A counter the running kernel does not report is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    /// `TcpExt: TCPTimeWaitOverflow`: closing sockets that skipped TIME_WAIT (destroyed at once)
    /// because `net.ipv4.tcp_max_tw_buckets` was reached. Any rise fires `TimeWaitOverflow`: the
    /// protection TIME_WAIT gives against stray old segments was lost.
    pub time_wait_overflow: u64,
    /// `TcpExt: ListenOverflows`: SYNs and completing handshakes dropped because a listener's
    /// accept queue was full (the program does not `accept()` fast enough, or its backlog is too
    /// small). Its rise fires `ListenQueueOverflow`.
    pub listen_overflows: u64,
    /// `TcpExt: ListenDrops`: connection requests dropped at a listener for any reason, overflows
    /// included (so it is at least `listen_overflows`); the excess points at SYN-queue drops and
    /// memory failures. Read alongside `listen_overflows` for `ListenQueueOverflow`.
    pub listen_drops: u64,
    /// `TcpExt: TCPAbortOnMemory`: connections reset because there were too many orphans
    /// (`net.ipv4.tcp_max_orphans`) or TCP memory (`net.ipv4.tcp_mem`) was exhausted; the damage
    /// `OrphanPressure` warns of before it happens.
    pub abort_on_memory: u64,
    /// `Tcp: ActiveOpens`: outgoing connections started (`connect()`, CLOSED to SYN_SENT). Its rate
    /// is the connection churn behind TIME_WAIT build-up and ephemeral port pressure on clients.
    pub active_opens: u64,
    /// `Tcp: PassiveOpens`: incoming connections whose handshake completed. Its rate is the inbound
    /// connection churn behind a server's TIME_WAIT and listen queue load.
    pub passive_opens: u64,
    /// `Tcp: AttemptFails`: connection attempts that failed during the handshake (refused, reset or
    /// timed out); rising with `active_opens` flat, it shows failing backends or exhausted ports.
    pub attempt_fails: u64,
    /// `Tcp: EstabResets`: connections reset from ESTABLISHED or CLOSE_WAIT; context for resets the
    /// alert rules report.
    pub estab_resets: u64,
    /// `Tcp: OutRsts`: segments sent with RST (connections refused or aborted by this host, orphans
    /// reset under memory pressure); context for the listen and orphan rules.
    pub out_resets: u64,
    /// `Tcp: RetransSegs`: segments retransmitted; its rate shows loss or congestion, which keeps
    /// sockets in FIN_WAIT/LAST_ACK (and orphans alive) longer.
    pub retrans_segs: u64,
    /// `Tcp: InErrs`: segments received in error (bad checksum, malformed header); a sign of a
    /// faulty path or device rather than of a program.
    pub in_errs: u64,
    /// `sockstat` `TCP: orphan`: sockets no program holds any more (closed) that are still finishing
    /// their shutdown (FIN_WAIT1, FIN_WAIT2 before it becomes a minisocket, CLOSING, LAST_ACK). The
    /// kernel counts orphans for the whole host, not per namespace, as does its limit: `OrphanPressure`
    /// compares this with `net.ipv4.tcp_max_orphans`.
    pub orphans: u64,
    /// `sockstat` `TCP: tw`: the namespace's time-wait minisockets. This is NOT the TIME_WAIT count:
    /// orphaned FIN_WAIT2 sockets are kept as time-wait minisockets too and are included. Count
    /// TIME_WAIT from the socket dump; this gauge is cheap and serves for deriving the TIME_WAIT total
    /// without a full dump (`tw` minus the FIN_WAIT2 minisockets the dump shows).
    pub time_wait_sockstat: u64,
    /// `sockstat` `TCP: alloc`: full TCP sockets allocated on the whole host (every namespace),
    /// orphans included, time-wait minisockets and pending requests not; context for memory and
    /// orphan alerts.
    pub allocated: u64,
    /// `sockstat` `TCP: inuse`: the namespace's TCP sockets in the kernel's lookup tables (listening
    /// and connected, in every state except time-wait minisockets); a cheap cross-check of the
    /// socket dump's total.
    pub in_use: u64,
    /// `sockstat` `TCP: mem`: memory pages TCP buffers use on the whole host (every namespace),
    /// compared with the `net.ipv4.tcp_mem` thresholds (also in pages); under pressure the kernel
    /// shrinks buffers and resets orphans (`abort_on_memory`).
    pub memory_pages: u64,
}

impl KernelCounters {
    /// The field names, in the order of [`KernelCounters::to_array`].
    pub const FIELDS: [&'static str; 16] = [
        "time_wait_overflow",
        "listen_overflows",
        "listen_drops",
        "abort_on_memory",
        "active_opens",
        "passive_opens",
        "attempt_fails",
        "estab_resets",
        "out_resets",
        "retrans_segs",
        "in_errs",
        "orphans",
        "time_wait_sockstat",
        "allocated",
        "in_use",
        "memory_pages",
    ];

    /// The values in [`KernelCounters::FIELDS`] order, for storage columns and bounds checks.
    pub const fn to_array(&self) -> [u64; 16] {
        [
            self.time_wait_overflow,
            self.listen_overflows,
            self.listen_drops,
            self.abort_on_memory,
            self.active_opens,
            self.passive_opens,
            self.attempt_fails,
            self.estab_resets,
            self.out_resets,
            self.retrans_segs,
            self.in_errs,
            self.orphans,
            self.time_wait_sockstat,
            self.allocated,
            self.in_use,
            self.memory_pages,
        ]
    }

    /// Counters from values in [`KernelCounters::FIELDS`] order.
    pub const fn from_array(values: [u64; 16]) -> KernelCounters {
        let [
            time_wait_overflow,
            listen_overflows,
            listen_drops,
            abort_on_memory,
            active_opens,
            passive_opens,
            attempt_fails,
            estab_resets,
            out_resets,
            retrans_segs,
            in_errs,
            orphans,
            time_wait_sockstat,
            allocated,
            in_use,
            memory_pages,
        ] = values;
        KernelCounters {
            time_wait_overflow,
            listen_overflows,
            listen_drops,
            abort_on_memory,
            active_opens,
            passive_opens,
            attempt_fails,
            estab_resets,
            out_resets,
            retrans_segs,
            in_errs,
            orphans,
            time_wait_sockstat,
            allocated,
            in_use,
            memory_pages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KernelCounters;

    #[test]
    fn array_round_trip_keeps_field_order() {
        let values: [u64; 16] = std::array::from_fn(|index| index as u64 + 1);
        let counters = KernelCounters::from_array(values);
        assert_eq!(counters.time_wait_overflow, 1);
        assert_eq!(counters.memory_pages, 16);
        assert_eq!(counters.to_array(), values);
        let json = serde_json::to_value(counters).unwrap();
        for (name, value) in KernelCounters::FIELDS.iter().zip(values) {
            assert_eq!(json[name], value, "{name}");
        }
    }
}
