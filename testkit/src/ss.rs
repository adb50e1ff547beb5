//! iproute2's `ss`, the reference the agent's counts are checked against.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use sockfleet_domain::{FamilyCounts, StateCounts, TcpState};

use crate::command::run;
use crate::sockets::SETTLE_TIMEOUT;

/// `ss -tan` per family, counted by its State column.
pub fn ss_counts() -> FamilyCounts {
    FamilyCounts {
        ipv4: parse_ss(&run(Command::new("ss").args(["-tan", "-4"]))),
        ipv6: parse_ss(&run(Command::new("ss").args(["-tan", "-6"]))),
    }
}

fn parse_ss(output: &str) -> StateCounts {
    let mut counts = StateCounts::default();
    for line in output.lines().skip(1) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        // ss names TCP_CLOSE "UNCONN"; the other names are its usual spellings (ESTAB, TIME-WAIT).
        let state = match name {
            "UNCONN" => TcpState::Close,
            other => TcpState::from_name(other)
                .unwrap_or_else(|| panic!("unknown state {other:?} in ss output:\n{output}")),
        };
        counts.increment(state);
    }
    counts
}

/// Polls `ss` until it shows `target`: closing handshakes finish on the kernel's time, not ours.
pub fn wait_until_settled(target: &FamilyCounts) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = ss_counts();
        if now == *target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sockets did not reach their states within {SETTLE_TIMEOUT:?}:\n  ss shows {}\n  expected {}",
            show(&now),
            show(target)
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The counts as JSON with state names, so a failed comparison says which state differs.
pub fn show(counts: &FamilyCounts) -> String {
    serde_json::to_string(counts).unwrap_or_else(|error| format!("{counts:?} ({error})"))
}

/// Per-state sum of two family counts.
pub fn plus(left: &FamilyCounts, right: &FamilyCounts) -> FamilyCounts {
    FamilyCounts {
        ipv4: left.ipv4.plus(&right.ipv4),
        ipv6: left.ipv6.plus(&right.ipv6),
    }
}
