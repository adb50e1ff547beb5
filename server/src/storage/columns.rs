//! The 22 count columns of `reports`, spelled once, for both backends' SQL.
//!
//! `state_columns!(before, after)` expands at compile time to the comma-separated column list with each
//! name wrapped in `before`/`after`, e.g. `state_columns!("r.", "")` or `state_columns!("avg(", ")")`,
//! in the order of `Family::ALL` × `TcpState::ALL` that [`super::rows`] decodes.

macro_rules! state_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before, "v4_established", $after, ", ", $before, "v4_syn_sent", $after, ", ",
            $before, "v4_syn_recv", $after, ", ", $before, "v4_fin_wait1", $after, ", ",
            $before, "v4_fin_wait2", $after, ", ", $before, "v4_time_wait", $after, ", ",
            $before, "v4_close", $after, ", ", $before, "v4_close_wait", $after, ", ",
            $before, "v4_last_ack", $after, ", ", $before, "v4_listen", $after, ", ",
            $before, "v4_closing", $after, ", ",
            $before, "v6_established", $after, ", ", $before, "v6_syn_sent", $after, ", ",
            $before, "v6_syn_recv", $after, ", ", $before, "v6_fin_wait1", $after, ", ",
            $before, "v6_fin_wait2", $after, ", ", $before, "v6_time_wait", $after, ", ",
            $before, "v6_close", $after, ", ", $before, "v6_close_wait", $after, ", ",
            $before, "v6_last_ack", $after, ", ", $before, "v6_listen", $after, ", ",
            $before, "v6_closing", $after
        )
    };
}

pub(super) use state_columns;
