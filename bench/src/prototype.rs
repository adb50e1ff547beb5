//! A prototype of a cheaper collection, to show where the time of a full dump goes. The agent's
//! `BreakdownCollector` now takes this path on most collections when TIME_WAIT sockets abound (its
//! cheap path); this plain count measures the path on its own.
//!
//! TIME_WAIT from `/proc/net/sockstat`: dump every state but TIME_WAIT (a kernel-side filter) with
//! sockfleet's own counter, and take the TIME_WAIT total from sockstat's `tw`, minus the orphaned
//! FIN_WAIT2 sockets the dump shows as time-wait minisockets (`idiag_timer == 3`), which `tw` also
//! counts. The per-family split of TIME_WAIT is lost; the total is exact while nothing changes between
//! the two reads.
//!
//! (The other prototype an earlier version of this benchmark measured, one `TCPDIAG_GETSOCK` dump for
//! both families, is now how `NetlinkCounter` counts.)

use std::fs;

use anyhow::Context;
use sockfleet_agent::collect::{NetlinkCounter, SocketView, SocketVisitor};
use sockfleet_domain::{FamilyCounts, TcpState};

/// `idiag_timer` of a time-wait minisocket.
const TIMEWAIT_TIMER: u8 = 3;

/// Counts by family and state, and the FIN_WAIT2 sockets that are time-wait minisockets (orphans).
#[derive(Debug, Default)]
struct Counting {
    counts: FamilyCounts,
    fin_wait2_minisockets: u64,
}

impl SocketVisitor for Counting {
    fn socket(&mut self, socket: &SocketView<'_>) {
        let state = socket.state();
        if state == TcpState::FinWait2 && socket.timer() == TIMEWAIT_TIMER {
            self.fin_wait2_minisockets += 1;
        }
        self.counts.family_mut(socket.family()).increment(state);
    }

    fn restart(&mut self) {
        *self = Counting::default();
    }
}

/// `tw` of `/proc/net/sockstat` in the calling thread's namespace (`/proc/net` would follow the
/// process's main thread).
fn sockstat_time_wait() -> anyhow::Result<u64> {
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

/// Everything but TIME_WAIT from one dump, TIME_WAIT from sockstat. The TIME_WAIT total is put under
/// IPv4 (its family is unknown this way).
pub fn count_without_time_wait_dump(counter: &mut NetlinkCounter) -> anyhow::Result<FamilyCounts> {
    let mut counting = Counting::default();
    let states = TcpState::ALL
        .into_iter()
        .filter(|state| *state != TcpState::TimeWait);
    counter
        .visit(states, &mut counting)
        .context("netlink dump failed")?;
    let tw = sockstat_time_wait()?;
    let mut counts = counting.counts;
    counts.ipv4.set(
        TcpState::TimeWait,
        tw.saturating_sub(counting.fin_wait2_minisockets),
    );
    Ok(counts)
}
