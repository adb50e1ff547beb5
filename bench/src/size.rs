//! One population size: build it in a fresh namespace and time every method side by side on it.

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use sockfleet_agent::collect::{BreakdownCollector, NetlinkCounter, read_sysctls};
use sockfleet_domain::{FamilyCounts, StateCounts, SysctlValues, TcpState, TopN};
use sockfleet_testkit::IsolatedNamespace;

use crate::counts::{
    describe, difference, parse_agent_once, parse_awk_totals, parse_node_exporter, parse_ss_listing,
};
use crate::limits::{read_sysctl, write_sysctl};
use crate::measure::{Sample, Series, process_runtime, run_timed, time_in_thread};
use crate::node_exporter::NodeExporter;
use crate::population::{self, Mix};
use crate::prototype::count_without_time_wait_dump;

/// The `ss` pipeline timed: `ss -tan` formatted, piped and counted by state.
pub const SS_PIPELINE: &str = "ss -tan | awk 'NR>1{++S[$1]}END{for(k in S) print k,S[k]}'";
/// The classic netstat one-liner, exactly as people run it.
pub const NETSTAT_PIPELINE: &str =
    "netstat -n | awk '/^tcp/{++S[$NF]}END{for (key in S) print key,S[key]}'";
/// TIME_WAIT (and orphaned FIN_WAIT2) sockets live this long after the population is built.
const TIME_WAIT_LIFETIME: Duration = Duration::from_secs(60);
/// Repetitions must end this long before the first sockets of the population start expiring.
const EXPIRY_MARGIN: Duration = Duration::from_secs(4);
/// How long any one command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the population may take to reach its expected counts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the size's run needs from the outside.
#[derive(Debug, Clone)]
pub struct SizeConfig {
    pub size: usize,
    pub repetitions: usize,
    pub agent: PathBuf,
    pub node_exporter: Option<PathBuf>,
    pub work_dir: PathBuf,
}

/// Everything measured at one size.
#[derive(Debug, Clone, Default)]
pub struct SizeResult {
    pub requested: usize,
    pub build_time: Duration,
    /// `net.ipv4.tcp_max_tw_buckets` in the namespace: as found, as set.
    pub tw_buckets: (String, String),
    /// `ss -tan -4` / `-6` counts right after building (the reference).
    pub reference: FamilyCounts,
    pub netlink: Series,
    /// Whether the counter dumps both families at once (`TCPDIAG_GETSOCK`) on this kernel.
    pub single_dump: bool,
    /// The counter with one `SOCK_DIAG_BY_FAMILY` dump per family (its fallback).
    pub per_family: Series,
    /// A whole breakdown collection in-process: what the agent does every interval (adaptive: the
    /// cheap path on most collections once a full one saw enough TIME_WAIT sockets).
    pub breakdown: Series,
    /// How many of the recorded adaptive breakdown collections took the cheap path.
    pub breakdown_cheap_rounds: usize,
    /// A breakdown collection that always makes the full dump (the cheap path switched off).
    pub breakdown_full: Series,
    /// Prototype: every state but TIME_WAIT dumped, TIME_WAIT from `/proc/net/sockstat`.
    pub sockstat_tw: Series,
    pub agent_once: Series,
    pub ss: Series,
    pub netstat: Series,
    pub node_exporter: Option<Series>,
    pub netstat_counts: StateCounts,
    pub node_exporter_counts: Option<StateCounts>,
    /// Why node_exporter was left out, if it was.
    pub node_exporter_note: Option<String>,
    /// Count mismatches between sockfleet and ss (any makes the run fail).
    pub mismatches: Vec<String>,
    /// Count mismatches between a prototype and ss (reported, not fatal).
    pub prototype_mismatches: Vec<String>,
    /// Other things worth saying in the report.
    pub notes: Vec<String>,
}

impl SizeResult {
    pub fn sockets(&self) -> u64 {
        self.reference.combined().total()
    }
}

/// Runs one size in a namespace of its own (so the previous size's TIME_WAIT sockets are gone).
pub fn run_size(config: &SizeConfig) -> anyhow::Result<SizeResult> {
    let mix = Mix::for_total(config.size)?;
    let namespace = IsolatedNamespace::new();
    let job_config = config.clone();
    namespace.run(move || measure_in_namespace(&job_config, mix))
}

fn measure_in_namespace(config: &SizeConfig, mix: Mix) -> anyhow::Result<SizeResult> {
    let mut result = SizeResult {
        requested: config.size,
        ..SizeResult::default()
    };
    result.tw_buckets = prepare_sysctls(mix)?;

    eprintln!(
        "[{}] building {} sockets ({} TIME_WAIT, {} ESTABLISHED, {} CLOSE_WAIT, {} FIN_WAIT2, {} LISTEN)",
        config.size,
        mix.total(),
        mix.time_wait_v4 + mix.time_wait_v6,
        2 * (mix.established_v4 + mix.established_v6),
        mix.close_wait,
        mix.close_wait,
        mix.listeners
    );
    let population = population::build(mix)?;
    result.build_time = population.build_time;
    eprintln!(
        "[{}] built in {:.2} s",
        config.size,
        population.build_time.as_secs_f64()
    );
    let deadline = population.started + TIME_WAIT_LIFETIME - EXPIRY_MARGIN;

    let mut counter = NetlinkCounter::open().context("cannot open the netlink counter")?;
    result.single_dump = counter.dumps_both_families_at_once();
    result.notes.extend(settle(&mut counter, &mix)?);
    result.reference = checked_reference(&mut counter, config, &mut result.mismatches)?;

    let exporter = start_node_exporter(config, &mut result);
    let exporter_cpu_start = exporter
        .as_ref()
        .and_then(|e| process_runtime(e.pid()).ok());

    let mut methods = Methods {
        config,
        counter: &mut counter,
        per_family: NetlinkCounter::open_per_family()
            .context("cannot open the per-family netlink counter")?,
        breakdowns: BreakdownCollector::default(),
        breakdowns_full: BreakdownCollector::with_cheap_path_threshold(TopN::DEFAULT, u64::MAX),
        sysctls: read_sysctls().context("cannot read the namespace's sysctls")?,
        exporter: exporter.as_ref(),
    };
    // One unrecorded round warms caches (and node_exporter) for every method alike.
    let warm_up = methods.round()?;
    warm_up.compare(&mut result.mismatches, &mut result.prototype_mismatches);
    let mut longest_round = warm_up.elapsed;
    let mut exporter_cpu_end = None;
    let mut node_series = Series::default();
    for repetition in 0..config.repetitions {
        if Instant::now() + longest_round > deadline {
            result.notes.push(format!(
                "stopped after {repetition} of {} repetitions: the population's TIME_WAIT sockets \
                 expire 60 s after it was built",
                config.repetitions
            ));
            break;
        }
        let round = methods.round()?;
        round.compare(&mut result.mismatches, &mut result.prototype_mismatches);
        longest_round = longest_round.max(round.elapsed);
        result.netlink.push(round.netlink);
        result.per_family.push(round.per_family);
        result.breakdown.push(round.breakdown);
        result.breakdown_cheap_rounds += usize::from(round.breakdown_cheap);
        result.breakdown_full.push(round.breakdown_full);
        result.sockstat_tw.push(round.sockstat_tw);
        result.agent_once.push(round.agent);
        result.ss.push(round.ss);
        result.netstat.push(round.netstat);
        result.netstat_counts = round.netstat_counts;
        if let Some((sample, counts)) = round.scrape {
            node_series.push(sample);
            result.node_exporter_counts = Some(counts);
        }
        exporter_cpu_end = exporter
            .as_ref()
            .and_then(|e| process_runtime(e.pid()).ok());
    }
    if exporter.is_some() {
        if let (Some(start), Some(end)) = (exporter_cpu_start, exporter_cpu_end) {
            // The warm-up scrape ran between `start` and the first recorded one: share the CPU out
            // over one scrape more than was recorded.
            let recorded = u32::try_from(node_series.samples.len()).unwrap_or(0);
            node_series.server_cpu = Some(end.saturating_sub(start) * recorded / (recorded + 1));
        }
        result.node_exporter = Some(node_series);
    }
    let scrapes = exporter.as_ref().map_or(0, NodeExporter::scrapes);
    drop(exporter);

    let end_check = checked_reference(&mut counter, config, &mut result.mismatches)?;
    // Every scrape leaves node_exporter's side of its connection in TIME_WAIT; nothing else changes.
    let mut expected_end = result.reference;
    let time_wait = expected_end.ipv4.get(TcpState::TimeWait);
    expected_end
        .ipv4
        .set(TcpState::TimeWait, time_wait + scrapes);
    if end_check != expected_end {
        result.notes.push(format!(
            "the population changed while measured: {} sockets at the start, {} at the end ({}; \
             {scrapes} scrapes of node_exporter account for time_wait +{scrapes})",
            result.reference.combined().total(),
            end_check.combined().total(),
            difference(&result.reference.combined(), &end_check.combined())
        ));
    }
    if Instant::now() > deadline + EXPIRY_MARGIN {
        result
            .notes
            .push("measuring overran the 60 s TIME_WAIT window".into());
    }
    drop(population);
    eprintln!(
        "[{}] done: {} repetitions",
        config.size,
        result.netlink.samples.len()
    );
    Ok(result)
}

/// Builds the population for `size` in a fresh namespace and keeps it for `duration`, printing the
/// namespace's path so other tools can be pointed at it.
pub fn hold(size: usize, duration: Duration) -> anyhow::Result<()> {
    let mix = Mix::for_total(size)?;
    let namespace = IsolatedNamespace::new();
    let (population, counts) = namespace.run(move || {
        prepare_sysctls(mix)?;
        let population = population::build(mix)?;
        let mut counter = NetlinkCounter::open().context("cannot open the netlink counter")?;
        if let Some(note) = settle(&mut counter, &mix)? {
            eprintln!("{note}");
        }
        let counts = counter.count().context("netlink count failed")?;
        anyhow::Ok((population, counts))
    })?;
    println!(
        "holding {} sockets ({}) in {} for {} s",
        counts.combined().total(),
        describe(&counts.combined()),
        namespace.path(),
        duration.as_secs()
    );
    thread::sleep(duration);
    drop(population);
    Ok(())
}

/// Raises `tcp_max_tw_buckets` in the namespace if the population would overflow it, and turns
/// `tcp_tw_reuse` off so that connect() never recycles a TIME_WAIT socket of the population (the default
/// 2 allows that on loopback, which real client traffic is not).
pub(crate) fn prepare_sysctls(mix: Mix) -> anyhow::Result<(String, String)> {
    let name = "net/ipv4/tcp_max_tw_buckets";
    let found = read_sysctl(name)?;
    let current: u64 = found
        .parse()
        .context("tcp_max_tw_buckets is not a number")?;
    // TIME_WAIT and orphaned FIN_WAIT2 minisockets both count against it.
    let needed = 2 * (mix.time_wait_v4 + mix.time_wait_v6 + mix.close_wait) as u64;
    if current < needed {
        write_sysctl(name, &needed.to_string())?;
    }
    write_sysctl("net/ipv4/tcp_tw_reuse", "0")?;
    Ok((found, read_sysctl(name)?))
}

/// Waits until the dump shows exactly what was built (closing handshakes finish asynchronously);
/// returns a note when it never does.
pub(crate) fn settle(counter: &mut NetlinkCounter, mix: &Mix) -> anyhow::Result<Option<String>> {
    let expected = mix.expected();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = counter.count().context("netlink count failed")?;
        if now == expected {
            return Ok(None);
        }
        if Instant::now() > deadline {
            return Ok(Some(format!(
                "the population did not reach its planned counts within {SETTLE_TIMEOUT:?} \
                 (dump minus plan: {}); measured as it is",
                difference(&expected.combined(), &now.combined())
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `ss -tan -4` and `-6` counts, taken between two equal netlink counts; a difference between ss and
/// sockfleet then is a real mismatch, recorded in `mismatches`.
fn checked_reference(
    counter: &mut NetlinkCounter,
    config: &SizeConfig,
    mismatches: &mut Vec<String>,
) -> anyhow::Result<FamilyCounts> {
    let stderr = config.work_dir.join("ss.stderr");
    let mut last = None;
    for _attempt in 0..5 {
        let before = counter.count().context("netlink count failed")?;
        let (_, v4) = run_timed(
            Command::new("ss").args(["-tan", "-4"]),
            COMMAND_TIMEOUT,
            &stderr,
        )?;
        let (_, v6) = run_timed(
            Command::new("ss").args(["-tan", "-6"]),
            COMMAND_TIMEOUT,
            &stderr,
        )?;
        let after = counter.count().context("netlink count failed")?;
        let ss = FamilyCounts {
            ipv4: parse_ss_listing(&v4)?,
            ipv6: parse_ss_listing(&v6)?,
        };
        if before == after && before == ss {
            return Ok(ss);
        }
        last = Some((before, ss, after));
    }
    let Some((before, ss, after)) = last else {
        bail!("no attempt was made to compare with ss");
    };
    if before == after {
        for (name, mine, theirs) in [
            ("IPv4", before.ipv4, ss.ipv4),
            ("IPv6", before.ipv6, ss.ipv6),
        ] {
            if mine != theirs {
                mismatches.push(format!(
                    "{name}: sockfleet differs from ss -tan by ({}) [sockfleet minus ss]",
                    difference(&theirs, &mine)
                ));
            }
        }
    } else {
        mismatches.push(format!(
            "the counts never held still for a comparison with ss (sockfleet {} then {})",
            describe(&before.combined()),
            describe(&after.combined())
        ));
    }
    Ok(ss)
}

fn start_node_exporter(config: &SizeConfig, result: &mut SizeResult) -> Option<NodeExporter> {
    let Some(binary) = &config.node_exporter else {
        result.node_exporter_note = Some("node_exporter is not installed".into());
        return None;
    };
    let log = config.work_dir.join("node_exporter.log");
    match NodeExporter::start(binary, &log) {
        Ok(exporter) => Some(exporter),
        Err(error) => {
            let note = format!("node_exporter could not be started: {error:#}");
            eprintln!("[{}] {note}", config.size);
            result.node_exporter_note = Some(note);
            None
        }
    }
}

/// The methods, run in one round in a fixed order.
struct Methods<'a> {
    config: &'a SizeConfig,
    counter: &'a mut NetlinkCounter,
    per_family: NetlinkCounter,
    /// Kept from round to round, as the agent keeps it from collection to collection.
    breakdowns: BreakdownCollector,
    /// The same with the cheap path switched off: a full dump every time.
    breakdowns_full: BreakdownCollector,
    sysctls: SysctlValues,
    exporter: Option<&'a NodeExporter>,
}

/// What one round measured.
struct Round {
    elapsed: Duration,
    netlink: Sample,
    netlink_counts: FamilyCounts,
    per_family: Sample,
    per_family_counts: FamilyCounts,
    breakdown: Sample,
    breakdown_counts: FamilyCounts,
    /// Whether the adaptive breakdown collection took the cheap path.
    breakdown_cheap: bool,
    breakdown_full: Sample,
    breakdown_full_counts: FamilyCounts,
    sockstat_tw: Sample,
    sockstat_tw_counts: FamilyCounts,
    agent: Sample,
    agent_counts: FamilyCounts,
    ss: Sample,
    ss_counts: StateCounts,
    netstat: Sample,
    netstat_counts: StateCounts,
    scrape: Option<(Sample, StateCounts)>,
}

impl Methods<'_> {
    /// Runs every method once.
    fn round(&mut self) -> anyhow::Result<Round> {
        let started = Instant::now();
        let work = &self.config.work_dir;

        let (netlink, counted) = time_in_thread(|| self.counter.count());
        let netlink_counts = counted.context("netlink count failed")?;

        let per_family = &mut self.per_family;
        let (per_family, counted) = time_in_thread(|| per_family.count());
        let per_family_counts = counted.context("per-family netlink count failed")?;

        let (breakdowns, sysctls) = (&mut self.breakdowns, &self.sysctls);
        let breakdown_cheap = breakdowns.next_is_cheap();
        let counter = &mut *self.counter;
        let (breakdown, collected) =
            time_in_thread(|| breakdowns.collect(counter, sysctls, Utc::now()));
        let breakdown_counts = collected.context("breakdown collection failed")?.states;

        let breakdowns = &mut self.breakdowns_full;
        let counter = &mut *self.counter;
        let (breakdown_full, collected) =
            time_in_thread(|| breakdowns.collect(counter, sysctls, Utc::now()));
        let breakdown_full_counts = collected
            .context("full breakdown collection failed")?
            .states;

        let counter = &mut *self.counter;
        let (sockstat_tw, counted) = time_in_thread(|| count_without_time_wait_dump(counter));
        let sockstat_tw_counts = counted.context("prototype: TIME_WAIT from sockstat")?;

        let (agent, agent_out) = run_timed(
            Command::new(&self.config.agent).args([
                "--once",
                "--host-id",
                "bench",
                "--collector",
                "netlink",
                "--log",
                "warn",
            ]),
            COMMAND_TIMEOUT,
            &work.join("agent.stderr"),
        )?;
        let agent_counts = parse_agent_once(&agent_out)?;

        let (ss, ss_out) = run_timed(
            Command::new("sh").args(["-c", SS_PIPELINE]),
            COMMAND_TIMEOUT,
            &work.join("ss.stderr"),
        )?;
        let ss_counts = parse_awk_totals(&ss_out)?;

        let (netstat, netstat_out) = run_timed(
            Command::new("sh").args(["-c", NETSTAT_PIPELINE]),
            COMMAND_TIMEOUT,
            &work.join("netstat.stderr"),
        )?;
        let netstat_counts = parse_awk_totals(&netstat_out)?;

        let scrape = match self.exporter {
            Some(exporter) => {
                let started = Instant::now();
                let body = exporter.scrape()?;
                let sample = Sample {
                    wall: started.elapsed(),
                    ..Sample::default()
                };
                Some((sample, parse_node_exporter(&body)?))
            }
            None => None,
        };

        Ok(Round {
            elapsed: started.elapsed(),
            netlink,
            netlink_counts,
            per_family,
            per_family_counts,
            breakdown,
            breakdown_counts,
            breakdown_cheap,
            breakdown_full,
            breakdown_full_counts,
            sockstat_tw,
            sockstat_tw_counts,
            agent,
            agent_counts,
            ss,
            ss_counts,
            netstat,
            netstat_counts,
            scrape,
        })
    }
}

impl Round {
    /// sockfleet (in-process and the agent process) against `ss -tan | awk` of the same round.
    fn compare(&self, mismatches: &mut Vec<String>, prototype_mismatches: &mut Vec<String>) {
        if self.per_family_counts != self.netlink_counts {
            mismatches.push(format!(
                "the per-family dumps differ from the single dump by ({}) [per-family minus single]",
                difference(
                    &self.netlink_counts.combined(),
                    &self.per_family_counts.combined()
                )
            ));
        }
        if self.breakdown_full_counts != self.netlink_counts {
            mismatches.push(format!(
                "the full breakdown collection's counts differ from count()'s by ({}) [breakdown minus count]",
                difference(
                    &self.netlink_counts.combined(),
                    &self.breakdown_full_counts.combined()
                )
            ));
        }
        // On the cheap path the IPv4/IPv6 split of TIME_WAIT is an estimate: the TIME_WAIT total and
        // every other state per family must match.
        let split_estimated = |counts: &FamilyCounts| {
            let mut counts = *counts;
            if self.breakdown_cheap {
                counts.ipv4.set(TcpState::TimeWait, 0);
                counts.ipv6.set(TcpState::TimeWait, 0);
            }
            counts
        };
        if self.breakdown_counts.combined() != self.netlink_counts.combined()
            || split_estimated(&self.breakdown_counts) != split_estimated(&self.netlink_counts)
        {
            mismatches.push(format!(
                "the breakdown collection's counts ({} path) differ from count()'s by ({}) \
                 [breakdown minus count]",
                if self.breakdown_cheap {
                    "cheap"
                } else {
                    "full"
                },
                difference(
                    &self.netlink_counts.combined(),
                    &self.breakdown_counts.combined()
                )
            ));
        }
        if self.sockstat_tw_counts.combined() != self.ss_counts {
            prototype_mismatches.push(format!(
                "TIME_WAIT from sockstat differs from `ss -tan` by ({})",
                difference(&self.ss_counts, &self.sockstat_tw_counts.combined())
            ));
        }
        if self.netlink_counts.combined() != self.ss_counts {
            mismatches.push(format!(
                "sockfleet's netlink counter differs from `ss -tan` by ({}) [sockfleet minus ss]",
                difference(&self.ss_counts, &self.netlink_counts.combined())
            ));
        }
        if self.agent_counts.combined() != self.ss_counts {
            mismatches.push(format!(
                "sockfleet-agent --once differs from `ss -tan` by ({}) [agent minus ss]",
                difference(&self.ss_counts, &self.agent_counts.combined())
            ));
        }
    }
}
