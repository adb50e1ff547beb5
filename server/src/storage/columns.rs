//! The 22 count columns of `reports`, spelled once, for both backends' SQL.
//!
//! `state_columns!(before, after)` expands at compile time to the comma-separated column list with each
//! name wrapped in `before`/`after`, e.g. `state_columns!("r.", "")` or `state_columns!("avg(", ")")`,
//! in the order of `Family::ALL` × `TcpState::ALL` that [`super::rows`] decodes.

macro_rules! state_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            "v4_established",
            $after,
            ", ",
            $before,
            "v4_syn_sent",
            $after,
            ", ",
            $before,
            "v4_syn_recv",
            $after,
            ", ",
            $before,
            "v4_fin_wait1",
            $after,
            ", ",
            $before,
            "v4_fin_wait2",
            $after,
            ", ",
            $before,
            "v4_time_wait",
            $after,
            ", ",
            $before,
            "v4_close",
            $after,
            ", ",
            $before,
            "v4_close_wait",
            $after,
            ", ",
            $before,
            "v4_last_ack",
            $after,
            ", ",
            $before,
            "v4_listen",
            $after,
            ", ",
            $before,
            "v4_closing",
            $after,
            ", ",
            $before,
            "v6_established",
            $after,
            ", ",
            $before,
            "v6_syn_sent",
            $after,
            ", ",
            $before,
            "v6_syn_recv",
            $after,
            ", ",
            $before,
            "v6_fin_wait1",
            $after,
            ", ",
            $before,
            "v6_fin_wait2",
            $after,
            ", ",
            $before,
            "v6_time_wait",
            $after,
            ", ",
            $before,
            "v6_close",
            $after,
            ", ",
            $before,
            "v6_close_wait",
            $after,
            ", ",
            $before,
            "v6_last_ack",
            $after,
            ", ",
            $before,
            "v6_listen",
            $after,
            ", ",
            $before,
            "v6_closing",
            $after
        )
    };
}

/// The 16 columns of `kernel_counters` after its keys, in `KernelCounters` field order (see
/// [`super::rows::kernel_values`]).
macro_rules! kernel_columns {
    () => {
        concat!(
            "time_wait_overflow, listen_overflows, listen_drops, abort_on_memory, active_opens, ",
            "passive_opens, attempt_fails, estab_resets, out_resets, retrans_segs, in_errs, orphans, ",
            "time_wait_sockstat, allocated, in_use, memory_pages"
        )
    };
}

pub(super) use {kernel_columns, state_columns};

/// Every host with its labels, collection interval and latest report time: the same text on both
/// backends; decoded by [`super::rows::host_activity`].
pub(super) const HOST_ACTIVITY: &str = "SELECT h.host_id, h.labels, h.interval_ms, \
     (SELECT MAX(r.collected_at) FROM reports r WHERE r.host_key = h.host_key) \
     FROM hosts h ORDER BY h.host_id";

/// A host's latest reports with their counters and breakdowns, newest first: the same text on both
/// backends; decoded by [`super::rows::stored_sample`].
pub(super) const RECENT_SAMPLES: &str = concat!(
    "SELECT r.collected_at, ",
    state_columns!("r.", ""),
    ", ",
    kernel_columns!(),
    ", b.data FROM reports r JOIN hosts h ON h.host_key = r.host_key ",
    "LEFT JOIN kernel_counters k ON k.run_key = r.run_key AND k.sequence = r.sequence ",
    "LEFT JOIN breakdowns b ON b.run_key = r.run_key AND b.sequence = r.sequence ",
    "WHERE h.host_id = $1 ORDER BY r.collected_at DESC LIMIT $2"
);
