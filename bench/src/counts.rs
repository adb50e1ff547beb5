//! Reading the counts each tool prints, so they can be compared with sockfleet's.

use anyhow::{Context, bail};
use sockfleet_domain::{FamilyCounts, StateCounts, TcpState};

/// A state name as `ss` (`TIME-WAIT`, `ESTAB`, `UNCONN`), netstat (`TIME_WAIT`) or node_exporter
/// (`time_wait`) spells it.
pub fn state_from_tool(name: &str) -> Option<TcpState> {
    match name {
        // ss names TCP_CLOSE "UNCONN"; netstat "CLOSE".
        "UNCONN" => Some(TcpState::Close),
        "LISTENING" => Some(TcpState::Listen),
        other => TcpState::from_name(other),
    }
}

/// Counts `ss -tan` output (one family) by its first column.
pub fn parse_ss_listing(output: &str) -> anyhow::Result<StateCounts> {
    let mut counts = StateCounts::default();
    for line in output.lines().skip(1) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let state =
            state_from_tool(name).with_context(|| format!("unknown state {name:?} from ss"))?;
        counts.increment(state);
    }
    Ok(counts)
}

/// Reads the `STATE COUNT` lines the awk one-liners print.
pub fn parse_awk_totals(output: &str) -> anyhow::Result<StateCounts> {
    let mut counts = StateCounts::default();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
            bail!("unexpected line {line:?} from awk");
        };
        let state =
            state_from_tool(name).with_context(|| format!("unknown state {name:?} from awk"))?;
        let count: u64 = count
            .parse()
            .with_context(|| format!("count {count:?} from awk"))?;
        counts.set(state, counts.get(state) + count);
    }
    Ok(counts)
}

/// Reads `node_tcp_connection_states{state="..."} N` from node_exporter's `/metrics` body.
pub fn parse_node_exporter(body: &str) -> anyhow::Result<StateCounts> {
    let mut counts = StateCounts::default();
    let mut seen = false;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("node_tcp_connection_states{state=\"") else {
            continue;
        };
        let (name, value) = rest
            .split_once("\"}")
            .with_context(|| format!("malformed metric line {line:?}"))?;
        // tcpstat also reports the bytes queued on all sockets under this metric name.
        if name.ends_with("_queued_bytes") {
            continue;
        }
        let state = state_from_tool(name)
            .with_context(|| format!("unknown state {name:?} from node_exporter"))?;
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("malformed value in {line:?}"))?;
        counts.set(state, value as u64);
        seen = true;
    }
    if !seen {
        bail!("no node_tcp_connection_states in the /metrics body (is the tcpstat collector on?)");
    }
    Ok(counts)
}

/// The `states` object of `sockfleet-agent --once` output.
pub fn parse_agent_once(json: &str) -> anyhow::Result<FamilyCounts> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("sockfleet-agent --once printed no JSON")?;
    let states = value
        .get("states")
        .cloned()
        .context("no \"states\" in the snapshot")?;
    serde_json::from_value(states).context("malformed \"states\" in the snapshot")
}

/// `TIME_WAIT 87xxx, ESTABLISHED ...`: the non-zero states, biggest first.
pub fn describe(counts: &StateCounts) -> String {
    let mut states: Vec<(TcpState, u64)> = counts.iter().filter(|(_, n)| *n > 0).collect();
    states.sort_by_key(|(state, n)| (std::cmp::Reverse(*n), *state));
    states
        .iter()
        .map(|(state, n)| format!("{} {n}", state.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-state differences `other - reference`, e.g. `listen -214, established +2`; empty when equal.
pub fn difference(reference: &StateCounts, other: &StateCounts) -> String {
    TcpState::ALL
        .into_iter()
        .filter_map(|state| {
            let delta = other.get(state) as i64 - reference.get(state) as i64;
            (delta != 0).then(|| format!("{} {delta:+}", state.name()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_tool() {
        let ss =
            "State Recv-Q Send-Q Local Peer\nTIME-WAIT 0 0 a b\nESTAB 0 0 a b\nLISTEN 0 4096 a b\n";
        let counts = parse_ss_listing(ss).unwrap();
        assert_eq!(counts.get(TcpState::TimeWait), 1);
        assert_eq!(counts.total(), 3);

        let awk = "TIME-WAIT 5\nESTAB 2\nCLOSE-WAIT 1\nFIN-WAIT-2 1\nLISTEN 3\n";
        assert_eq!(parse_awk_totals(awk).unwrap().total(), 12);
        let netstat = "TIME_WAIT 5\nESTABLISHED 2\nCLOSE_WAIT 1\nFIN_WAIT2 1\n";
        let counts = parse_awk_totals(netstat).unwrap();
        assert_eq!(counts.get(TcpState::FinWait2), 1);
        assert_eq!(counts.get(TcpState::Established), 2);

        let metrics = "# HELP x\nnode_tcp_connection_states{state=\"time_wait\"} 7\n\
                       node_tcp_connection_states{state=\"established\"} 3\n\
                       node_tcp_connection_states{state=\"rx_queued_bytes\"} 0\nother 1\n";
        let counts = parse_node_exporter(metrics).unwrap();
        assert_eq!(counts.get(TcpState::TimeWait), 7);
        assert_eq!(counts.total(), 10);
        assert!(parse_node_exporter("up 1\n").is_err());
    }

    #[test]
    fn describes_and_diffs() {
        let mut a = StateCounts::default();
        a.set(TcpState::TimeWait, 10);
        a.set(TcpState::Listen, 2);
        let mut b = a;
        b.set(TcpState::Listen, 0);
        assert_eq!(describe(&a), "time_wait 10, listen 2");
        assert_eq!(difference(&a, &b), "listen -2");
        assert_eq!(difference(&a, &a), "");
    }
}
