//! The Markdown report: machine, collection times, targets, counts, streaming agent.

use std::fmt::Write as _;
use std::time::Duration;

use sockfleet_domain::TcpState;

use crate::counts::describe;
use crate::measure::{Series, ms};
use crate::size::{NETSTAT_PIPELINE, SS_PIPELINE, SizeResult};
use crate::stream::{StreamResult, WARM_UP_COLLECTIONS};

/// The targets.
const SPEEDUP_OVER_SS: f64 = 3.0;
const SPEEDUP_OVER_NETSTAT: f64 = 30.0;
const RSS_TARGET_KIB: u64 = 10 * 1024;
const CPU_TARGET: Duration = Duration::from_millis(30);
/// The targets are stated at this many sockets.
const TARGET_SOCKETS: u64 = 100_000;

/// What the report describes besides the measurements.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub tools: Vec<(String, String)>,
    pub started_at: String,
    pub repetitions: usize,
    pub fd_limit: String,
    pub command_line: String,
}

pub fn render(context: &Context, sizes: &[SizeResult], stream: Option<&StreamResult>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# sockfleet collection benchmark\n");
    let _ = writeln!(
        out,
        "- Machine: {} × {}, Linux {}",
        context.cpus, context.cpu_model, context.kernel
    );
    for (tool, version) in &context.tools {
        let _ = writeln!(out, "- {tool}: {version}");
    }
    let _ = writeln!(
        out,
        "- Run: {} (`{}`)",
        context.started_at, context.command_line
    );
    let _ = writeln!(
        out,
        "- {} timed repetitions per method and size after one warm-up round, methods interleaved; \
         RLIMIT_NOFILE {}",
        context.repetitions, context.fd_limit
    );
    let _ = writeln!(out);

    collection_table(&mut out, sizes);
    targets_table(&mut out, sizes, stream);
    where_time_goes(&mut out, sizes);
    counts_table(&mut out, sizes);
    if let Some(stream) = stream {
        stream_table(&mut out, stream);
    }
    notes(&mut out, sizes, stream);
    out
}

fn collection_table(out: &mut String, sizes: &[SizeResult]) {
    let _ = writeln!(out, "## Collection time\n");
    let _ = writeln!(
        out,
        "Wall time of one full count of the namespace's TCP sockets by state. CPU is user + system \
         time: of the calling thread for the in-process counter (`CLOCK_THREAD_CPUTIME_ID`), of the \
         process and every descendant it waited for otherwise (`wait4`; a shell pipeline is charged \
         in full), and of the node_exporter process per scrape (its threads' scheduler runtime) for \
         node_exporter. The `BreakdownCollector` rows are more than a count: each is an agent's whole \
         collection but for the sysctls and the report. The kernel share is the system part of that CPU over all runs (sampled by \
         clock tick, so approximate). \"× sockfleet\" is the method's median wall time over the \
         in-process counter's.\n"
    );
    let _ = writeln!(
        out,
        "| sockets | method | wall median | wall min | CPU median (kernel share) | × sockfleet |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
    for size in sizes {
        let base = size.netlink.median_wall();
        let counter = if size.single_dump {
            "sockfleet `NetlinkCounter::count()` (in-process; one `TCPDIAG_GETSOCK` dump)"
        } else {
            "sockfleet `NetlinkCounter::count()` (in-process; this kernel refuses the single dump)"
        };
        let mut rows: Vec<(&str, &Series, bool)> = vec![
            (counter, &size.netlink, false),
            (
                "`sockfleet-agent --once` (whole process)",
                &size.agent_once,
                false,
            ),
            ("`ss -tan \\| awk …`", &size.ss, false),
            ("`netstat -n \\| awk …`", &size.netstat, false),
        ];
        if let Some(node) = &size.node_exporter {
            rows.push(("node_exporter tcpstat (`GET /metrics`)", node, true));
        }
        rows.push((
            "sockfleet with one `SOCK_DIAG_BY_FAMILY` dump per family (its fallback)",
            &size.per_family,
            false,
        ));
        rows.push((
            "sockfleet `BreakdownCollector::collect()` (in-process: counts, breakdowns, CLOSE_WAIT owners; full dump every time)",
            &size.breakdown_full,
            false,
        ));
        rows.push((
            "sockfleet `BreakdownCollector::collect()`, adaptive as in the agent (cheap path: TIME_WAIT from sockstat, a full dump every 6th time)",
            &size.breakdown,
            false,
        ));
        rows.push((
            "*prototype:* one dump without TIME_WAIT + `/proc/net/sockstat` tw",
            &size.sockstat_tw,
            false,
        ));
        for (index, (name, series, external_cpu)) in rows.into_iter().enumerate() {
            let sockets = if index == 0 {
                group(size.sockets())
            } else {
                String::new()
            };
            let cpu = if external_cpu {
                series
                    .server_cpu_per_run()
                    .map_or_else(|| "n/a".to_owned(), |cpu| format!("{} (exporter)", ms(cpu)))
            } else {
                match series.system_share() {
                    Some(share) => {
                        format!("{} ({:.0} % sys)", ms(series.median_cpu()), share * 100.0)
                    }
                    None => ms(series.median_cpu()),
                }
            };
            let ratio = if index == 0 {
                "1×".to_owned()
            } else {
                format!("{:.1}×", ratio(series.median_wall(), base))
            };
            let _ = writeln!(
                out,
                "| {sockets} | {name} | {} | {} | {cpu} | {ratio} |",
                ms(series.median_wall()),
                ms(series.min_wall()),
            );
        }
        if size.node_exporter.is_none()
            && let Some(note) = &size.node_exporter_note
        {
            let _ = writeln!(out, "| | node_exporter tcpstat | skipped: {note} | | | |");
        }
    }
    let _ = writeln!(
        out,
        "\nThe pipelines, run with `sh -c`: `{SS_PIPELINE}` and `{NETSTAT_PIPELINE}`.\n"
    );
}

fn targets_table(out: &mut String, sizes: &[SizeResult], stream: Option<&StreamResult>) {
    let _ = writeln!(out, "## Targets\n");
    let at = target_size(sizes);
    let _ = writeln!(out, "| target | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    match at {
        Some(size) => {
            let sockets = group(size.sockets());
            let base = size.netlink.median_wall();
            let over_ss = ratio(size.ss.median_wall(), base);
            let over_netstat = ratio(size.netstat.median_wall(), base);
            let _ = writeln!(
                out,
                "| ≥ {SPEEDUP_OVER_SS}× faster than `ss -tan \\| awk` at {sockets} sockets | {over_ss:.1}× \
                 ({} vs {}) | {} |",
                ms(base),
                ms(size.ss.median_wall()),
                yes(over_ss >= SPEEDUP_OVER_SS)
            );
            let _ = writeln!(
                out,
                "| ≥ {SPEEDUP_OVER_NETSTAT}× faster than the netstat one-liner at {sockets} sockets | \
                 {over_netstat:.1}× ({} vs {}) | {} |",
                ms(base),
                ms(size.netstat.median_wall()),
                yes(over_netstat >= SPEEDUP_OVER_NETSTAT)
            );
            let cpu = size.netlink.median_cpu();
            let _ = writeln!(
                out,
                "| CPU per collection ≤ {} at {sockets} sockets (in-process counter, a full dump) | {} | {} |",
                ms(CPU_TARGET),
                ms(cpu),
                yes(cpu <= CPU_TARGET)
            );
            let cpu = size.breakdown.median_cpu();
            let _ = writeln!(
                out,
                "| CPU per collection ≤ {} at {sockets} sockets (in-process breakdown collection, adaptive as in \
                 the agent; {} of {} recorded collections took the cheap path) | {} median, {} mean | {} |",
                ms(CPU_TARGET),
                size.breakdown_cheap_rounds,
                size.breakdown.samples.len(),
                ms(cpu),
                ms(mean_cpu(&size.breakdown)),
                yes(cpu <= CPU_TARGET)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| speed and CPU targets (stated at 100k sockets) | no size ≥ 100k was run | — |"
            );
        }
    }
    if let Some(stream) = stream {
        let sockets = group(stream.counts.combined().total());
        if let Some(cpu) = stream.cpu_per_collection() {
            let _ = writeln!(
                out,
                "| CPU per collection ≤ {} (streaming agent process, all work included) at {sockets} sockets \
                 | {} | {} |",
                ms(CPU_TARGET),
                ms(cpu),
                yes(cpu <= CPU_TARGET)
            );
        }
        let steady = stream.steady_rss_kib();
        let _ = writeln!(
            out,
            "| steady agent RSS ≤ 10 MB while streaming at {sockets} sockets | {} (max {}) | {} |",
            mib(steady),
            mib(stream.max_rss_kib()),
            yes(steady <= RSS_TARGET_KIB)
        );
    }
    let mismatches: usize = sizes.iter().map(|size| size.mismatches.len()).sum();
    let rounds: usize = sizes
        .iter()
        .map(|size| size.netlink.samples.len() + 1)
        .sum();
    let _ = writeln!(
        out,
        "| counts identical to `ss` (per state; per family at the start and end of each size) | {} | {} |",
        if mismatches == 0 {
            format!("identical in all {rounds} rounds at {} sizes", sizes.len())
        } else {
            format!("{mismatches} mismatches (see notes)")
        },
        yes(mismatches == 0)
    );
    let _ = writeln!(out);
}

/// The size the targets are stated at: the smallest of at least ~100k sockets.
fn target_size(sizes: &[SizeResult]) -> Option<&SizeResult> {
    sizes
        .iter()
        .filter(|size| size.sockets() >= TARGET_SOCKETS * 95 / 100)
        .min_by_key(|size| size.sockets())
}

fn where_time_goes(out: &mut String, sizes: &[SizeResult]) {
    let Some(size) = target_size(sizes).or_else(|| sizes.iter().max_by_key(|s| s.sockets())) else {
        return;
    };
    let sockets = size.sockets();
    let time_wait = size.reference.combined().get(TcpState::TimeWait);
    let counter = size.netlink.median_cpu();
    let kernel = size.netlink.system_share().unwrap_or(1.0);
    let per_family = size.per_family.median_cpu();
    let no_time_wait = size.sockstat_tw.median_cpu();
    let _ = writeln!(
        out,
        "## Where the time goes (at {} sockets)\n",
        group(sockets)
    );
    let _ = writeln!(
        out,
        "- sockfleet's counter spends {:.0} % of its {} of CPU in the kernel producing the dump; \
         reading the replies in user space costs next to nothing. Its wall time is its CPU time: \
         `recvmsg` runs the dump.",
        kernel * 100.0,
        ms(counter)
    );
    if size.single_dump {
        let _ = writeln!(
            out,
            "- The kernel's established hash holds both families, and each per-family \
             `SOCK_DIAG_BY_FAMILY` dump walks all of it: two per-family dumps (`ss`'s way, and the \
             counter's fallback for kernels that refuse the legacy request) cost {}. The counter's one \
             `TCPDIAG_GETSOCK` dump for both families walks it once and saves {}.",
            ms(per_family),
            ms(per_family.saturating_sub(counter))
        );
    } else {
        let _ = writeln!(
            out,
            "- This kernel refused the single `TCPDIAG_GETSOCK` dump, so the counter sends one \
             `SOCK_DIAG_BY_FAMILY` dump per family, and each walks the whole established hash."
        );
    }
    let _ = writeln!(
        out,
        "- Building and copying the messages of the {} TIME_WAIT sockets costs {} (one dump with \
         them minus one dump without them, whose total comes from `/proc/net/sockstat` instead).",
        group(time_wait),
        ms(counter.saturating_sub(no_time_wait))
    );
    let _ = writeln!(
        out,
        "- The remaining {} is one walk over every socket (the kernel's state filter skips \
         TIME_WAIT sockets but still visits each one, a cache miss apiece) plus the {} other \
         sockets' messages. No `sock_diag` dump can cost less than that walk.",
        ms(no_time_wait),
        group(sockets.saturating_sub(time_wait))
    );
    for (name, series) in [
        ("`ss -tan | awk`", &size.ss),
        ("`netstat -n | awk`", &size.netstat),
    ] {
        if let Some(share) = series.system_share() {
            let _ = writeln!(
                out,
                "- {name}: {} of CPU, {:.0} % of it in user space (formatting text, then awk \
                 parsing it), {:.0} % in the kernel{}.",
                ms(series.median_cpu()),
                (1.0 - share) * 100.0,
                share * 100.0,
                if name.contains("netstat") {
                    " (which formats `/proc/net/tcp{,6}` as text)"
                } else {
                    " (the same netlink dump, per family)"
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "- A whole breakdown collection with a full dump (a LISTEN dump, one \
         dump of every other state with per-destination tallies, and the owners of the {} CLOSE_WAIT \
         sockets, checked at the descriptors that held them last time), costs {} of CPU, {:.0} % \
         of it in the kernel.",
        group(size.reference.combined().get(TcpState::CloseWait)),
        ms(size.breakdown_full.median_cpu()),
        size.breakdown_full.system_share().unwrap_or(1.0) * 100.0
    );
    let _ = writeln!(
        out,
        "- The agent's adaptive collection takes the cheap path (every state but LISTEN and TIME_WAIT \
         dumped, the TIME_WAIT total from sockstat) on {} of the {} recorded collections here: median \
         {} of CPU, mean {} with the full dump every sixth time; the full dump every time costs {}. \
         On the cheap path TIME_WAIT's IPv4/IPv6 split and per-destination TIME_WAIT are carried \
         over from the last full dump.",
        size.breakdown_cheap_rounds,
        size.breakdown.samples.len(),
        ms(size.breakdown.median_cpu()),
        ms(mean_cpu(&size.breakdown)),
        ms(size.breakdown_full.median_cpu())
    );
    let fastest = size.sockstat_tw.median_wall();
    let _ = writeln!(
        out,
        "- With the sockstat prototype the count takes {}: {:.1}× faster than `ss -tan | awk` and \
         {:.1}× faster than the netstat one-liner.\n",
        ms(fastest),
        ratio(size.ss.median_wall(), fastest),
        ratio(size.netstat.median_wall(), fastest)
    );
}

/// The mean CPU of a series (for the adaptive collection, whose full dumps the median hides).
fn mean_cpu(series: &Series) -> Duration {
    let samples = series.samples.len().max(1);
    series
        .samples
        .iter()
        .map(|sample| sample.cpu)
        .sum::<Duration>()
        / u32::try_from(samples).unwrap_or(u32::MAX)
}

fn counts_table(out: &mut String, sizes: &[SizeResult]) {
    let _ = writeln!(out, "## Counts seen\n");
    let _ = writeln!(
        out,
        "The population (built before each size, in a fresh network namespace) and what each tool saw \
         in the last round. sockfleet equals `ss`; `netstat -n` leaves out listeners; node_exporter \
         also sees its own scrape connection and the TIME_WAIT sockets earlier scrapes left.\n"
    );
    let _ = writeln!(
        out,
        "| requested | built in | `ss -tan` (= sockfleet) | `netstat -n` | node_exporter |"
    );
    let _ = writeln!(out, "|---:|---:|---|---|---|");
    for size in sizes {
        let node = size
            .node_exporter_counts
            .as_ref()
            .map_or_else(|| "—".to_owned(), describe);
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {} | {} | {node} |",
            group(size.requested as u64),
            size.build_time.as_secs_f64(),
            describe(&size.reference.combined()),
            describe(&size.netstat_counts),
        );
    }
    let _ = writeln!(out);
}

fn stream_table(out: &mut String, stream: &StreamResult) {
    let _ = writeln!(out, "## Agent streaming\n");
    let _ = writeln!(
        out,
        "A real `sockfleet-agent --server URL --interval {} --netns <bench namespace>` streaming to a \
         real `sockfleet-server` (SQLite) for {:.0} s. RSS from `/proc/PID/status` once a second; \
         steady = median over the second half. CPU per collection = the agent's user + system time \
         after its first {} collections, divided by the collections in that time (includes \
         encoding and sending the reports).\n",
        humanize(stream.interval),
        stream.duration.as_secs_f64(),
        WARM_UP_COLLECTIONS
    );
    let _ = writeln!(
        out,
        "| sockets | collections | steady RSS | max RSS | VmHWM | CPU / collection | server stored TIME_WAIT |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} |\n",
        group(stream.counts.combined().total()),
        stream.collections,
        mib(stream.steady_rss_kib()),
        mib(stream.max_rss_kib()),
        mib(stream.hwm_kib),
        stream.cpu_per_collection().map_or_else(
            || "n/a".to_owned(),
            |cpu| match stream.system_share() {
                Some(share) => format!("{} ({:.0} % sys)", ms(cpu), share * 100.0),
                None => ms(cpu),
            }
        ),
        stream
            .server_time_wait
            .map_or_else(|| "n/a".to_owned(), group),
    );
}

fn notes(out: &mut String, sizes: &[SizeResult], stream: Option<&StreamResult>) {
    let mut lines = Vec::new();
    for size in sizes {
        let label = group(size.requested as u64);
        for mismatch in &size.mismatches {
            lines.push(format!("**MISMATCH** at {label}: {mismatch}"));
        }
        for note in &size.notes {
            lines.push(format!("{label}: {note}"));
        }
        let mut prototype = size.prototype_mismatches.clone();
        prototype.dedup();
        for mismatch in prototype {
            lines.push(format!(
                "{label}: prototype mismatch (not sockfleet's counts): {mismatch}"
            ));
        }
        if size.tw_buckets.0 != size.tw_buckets.1 {
            lines.push(format!(
                "{label}: raised tcp_max_tw_buckets in the namespace from {} to {}",
                size.tw_buckets.0, size.tw_buckets.1
            ));
        }
    }
    if let Some(stream) = stream {
        for note in &stream.notes {
            lines.push(format!("streaming: {note}"));
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Notes\n");
    for line in lines {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
}

fn ratio(value: Duration, base: Duration) -> f64 {
    if base.is_zero() {
        return f64::INFINITY;
    }
    value.as_secs_f64() / base.as_secs_f64()
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// 100000 → 100,000.
pub fn group(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(100_000), "100,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
