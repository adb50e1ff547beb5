//! `sockfleet-bench-collect`: how long one count of a host's TCP sockets by state takes with
//! sockfleet's netlink counter, `ss -tan | awk`, the classic `netstat -n | awk` one-liner and
//! node_exporter's tcpstat collector, at about 1k, 20k and 100k sockets; and how much memory and CPU a
//! streaming agent uses at 100k. Every population lives in a fresh network namespace of its own, so
//! the host's sockets do not disturb the numbers. Needs root.
//!
//! Prints a Markdown report on stdout and writes it to `bench/RESULTS.md`; progress goes to stderr.
//! Exits 2 if sockfleet's counts ever differ from `ss`'s, 1 on any other failure.

mod counts;
mod limits;
mod measure;
mod node_exporter;
mod population;
mod prototype;
mod report;
mod size;
mod stream;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use crate::population::Mix;
use crate::size::{SizeConfig, run_size};
use crate::stream::{StreamConfig, run_stream};

/// Largest population accepted (ephemeral ports and memory stay well within bounds).
const MAX_SOCKETS: usize = 500_000;
/// Descriptors kept free besides the population's.
const SPARE_DESCRIPTORS: u64 = 1024;
/// How long `apt-get` may take when asked to install node_exporter.
const APT_TIMEOUT: Duration = Duration::from_secs(600);

/// Times sockfleet's socket counting against ss, netstat and node_exporter at several socket counts.
#[derive(Debug, Parser)]
#[command(name = "sockfleet-bench-collect", version, about, long_about = None)]
struct Args {
    /// Population sizes (sockets), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,20000,100000")]
    sizes: Vec<usize>,

    /// Timed repetitions per method and size (after one warm-up round).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=50))]
    repetitions: u16,

    /// Seconds to stream with a real agent and server at the largest size (0: skip; at most 45,
    /// because TIME_WAIT sockets last 60 s).
    #[arg(long, default_value_t = 20)]
    stream_seconds: u64,

    /// The streaming agent's collection interval, in milliseconds (100 or more).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    stream_interval_ms: u64,

    /// Where sockfleet-agent and sockfleet-server are [default: this binary's directory].
    #[arg(long)]
    bin_dir: Option<PathBuf>,

    /// Where to write the Markdown report.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    output: PathBuf,

    /// Leave node_exporter out even if it is installed.
    #[arg(long)]
    no_node_exporter: bool,

    /// If node_exporter is missing, `apt-get update && apt-get install -y prometheus-node-exporter`.
    #[arg(long)]
    install_node_exporter: bool,

    /// Instead of benchmarking, build the first size's population, print its namespace's path and keep
    /// it for this many seconds (at most 55), e.g. for `nsenter --net=PATH perf record ...`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=55))]
    hold_seconds: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("sockfleet-bench-collect: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` when a count mismatch was found.
fn run(args: &Args) -> anyhow::Result<bool> {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: every population lives in a network namespace of its own \
             (run it with sudo)"
        );
    }
    let mut sizes = args.sizes.clone();
    sizes.retain(|size| *size > 0);
    if sizes.is_empty() {
        bail!("--sizes names no population");
    }
    let mut largest_descriptors = 0;
    for &size in &sizes {
        if size > MAX_SOCKETS {
            bail!("{size} sockets is more than the {MAX_SOCKETS} this benchmark builds");
        }
        largest_descriptors = largest_descriptors.max(Mix::for_total(size)?.descriptors());
    }
    let fd_limit = limits::raise_fd_limit(largest_descriptors as u64 + SPARE_DESCRIPTORS)?;
    if let Some(seconds) = args.hold_seconds {
        size::hold(sizes[0], Duration::from_secs(seconds))?;
        return Ok(true);
    }
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find this binary's path")?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let agent = existing(&bin_dir.join("sockfleet-agent"))?;
    let server = existing(&bin_dir.join("sockfleet-server"))?;
    for tool in ["ss", "netstat", "awk", "sh"] {
        if !on_path(tool) {
            bail!("{tool} is not installed (ss: iproute2, netstat: net-tools)");
        }
    }
    let node_exporter = find_node_exporter(args);
    let work_dir = std::env::temp_dir().join(format!("sockfleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;

    let mut context = report::Context {
        cpu_model: cpu_model(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        kernel: first_line(
            &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ),
        tools: Vec::new(),
        started_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        repetitions: usize::from(args.repetitions),
        fd_limit: format!("{} soft / {} hard", fd_limit.soft, fd_limit.hard),
        command_line: std::env::args()
            .map(|arg| {
                Path::new(&arg)
                    .file_name()
                    .filter(|_| arg.starts_with('/'))
                    .map_or(arg.clone(), |name| name.to_string_lossy().into_owned())
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    context
        .tools
        .push(("ss".into(), tool_version("ss", &["-V"])));
    context
        .tools
        .push(("netstat".into(), tool_version("netstat", &["--version"])));
    context
        .tools
        .push(("awk".into(), tool_version("awk", &["--version"])));
    match &node_exporter {
        Ok(binary) => context
            .tools
            .push(("node_exporter".into(), node_exporter::version(binary))),
        Err(note) => context.tools.push(("node_exporter".into(), note.clone())),
    }

    let mut results = Vec::new();
    for &size in &sizes {
        let config = SizeConfig {
            size,
            repetitions: usize::from(args.repetitions),
            agent: agent.clone(),
            node_exporter: node_exporter.as_ref().ok().cloned(),
            work_dir: work_dir.clone(),
        };
        let mut result =
            run_size(&config).with_context(|| format!("benchmark at {size} sockets"))?;
        if let Err(note) = &node_exporter
            && result.node_exporter_note.is_some()
        {
            result.node_exporter_note = Some(note.clone());
        }
        for mismatch in &result.mismatches {
            eprintln!("!!! COUNT MISMATCH at {size} sockets: {mismatch}");
        }
        results.push(result);
    }

    let stream_result = if args.stream_seconds > 0 {
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let config = StreamConfig {
            size: largest,
            seconds: args.stream_seconds,
            interval: Duration::from_millis(args.stream_interval_ms),
            agent,
            server,
            work_dir: work_dir.clone(),
        };
        Some(run_stream(&config).with_context(|| {
            format!(
                "streaming agent (its log and the server's are in {})",
                work_dir.display()
            )
        })?)
    } else {
        None
    };

    let text = report::render(&context, &results, stream_result.as_ref());
    println!("{text}");
    std::fs::write(&args.output, &text)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!("wrote {}", args.output.display());
    let _ = std::fs::remove_dir_all(&work_dir);

    let mismatches: usize = results.iter().map(|r| r.mismatches.len()).sum();
    if mismatches > 0 {
        eprintln!("!!! {mismatches} COUNT MISMATCHES between sockfleet and ss; see the report");
        return Ok(false);
    }
    Ok(true)
}

/// node_exporter's path, or why it is left out.
fn find_node_exporter(args: &Args) -> Result<PathBuf, String> {
    if args.no_node_exporter {
        return Err("left out (--no-node-exporter)".into());
    }
    if let Some(binary) = node_exporter::find() {
        return Ok(binary);
    }
    if !args.install_node_exporter {
        let note = "not installed; `apt-get install prometheus-node-exporter` or pass \
                    --install-node-exporter"
            .to_owned();
        eprintln!("node_exporter: {note}");
        return Err(note);
    }
    eprintln!("installing prometheus-node-exporter with apt-get ...");
    let installed = apt_get(&["update"]).and_then(|()| {
        apt_get(&[
            "install",
            "-y",
            "--no-install-recommends",
            "prometheus-node-exporter",
        ])
    });
    match installed.map(|()| node_exporter::find()) {
        Ok(Some(binary)) => Ok(binary),
        Ok(None) => {
            Err("apt-get installed prometheus-node-exporter but no binary was found".into())
        }
        Err(error) => {
            let note = format!("could not be installed: {error:#}");
            eprintln!("node_exporter: {note}");
            Err(note)
        }
    }
}

fn apt_get(arguments: &[&str]) -> anyhow::Result<()> {
    let log = std::env::temp_dir().join("sockfleet-bench-apt.log");
    let mut command = Command::new("apt-get");
    command
        .args(arguments)
        .env("DEBIAN_FRONTEND", "noninteractive");
    measure::run_timed(&mut command, APT_TIMEOUT, &log).map(|_| ())
}

fn existing(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        bail!(
            "{} not found; build it first: cargo build --release --workspace (or pass --bin-dir)",
            path.display()
        )
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn tool_version(tool: &str, arguments: &[&str]) -> String {
    Command::new(tool)
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            first_line(&String::from_utf8_lossy(&text))
        })
        .unwrap_or_else(|_| "unknown version".into())
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}
