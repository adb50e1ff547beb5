//! Timing: wall time with `Instant`, CPU time from `getrusage` (this thread) or `wait4` (a child
//! process and every descendant it waited for, so a shell pipeline is charged in full).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One timed run.
///
/// `cpu` is exact (the scheduler's runtime); `user` and `system` split it the way the kernel samples
/// it, by clock tick (this kernel has no precise user/system accounting), so they are only meaningful
/// summed over many runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
    pub user: Duration,
    pub system: Duration,
}

/// The runs of one method at one size.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub samples: Vec<Sample>,
    /// CPU charged to another process (node_exporter) over all samples, when measured that way.
    pub server_cpu: Option<Duration>,
}

impl Series {
    pub fn push(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    pub fn median_wall(&self) -> Duration {
        median(self.samples.iter().map(|s| s.wall))
    }

    pub fn min_wall(&self) -> Duration {
        self.samples
            .iter()
            .map(|s| s.wall)
            .min()
            .unwrap_or_default()
    }

    pub fn median_cpu(&self) -> Duration {
        median(self.samples.iter().map(|s| s.cpu))
    }

    /// The share of CPU time spent in the kernel, over all runs (tick-sampled, so approximate).
    pub fn system_share(&self) -> Option<f64> {
        let system: Duration = self.samples.iter().map(|s| s.system).sum();
        let user: Duration = self.samples.iter().map(|s| s.user).sum();
        let total = (system + user).as_secs_f64();
        (total > 0.0).then(|| system.as_secs_f64() / total)
    }

    /// CPU per run of the process measured from outside (`server_cpu` / runs).
    pub fn server_cpu_per_run(&self) -> Option<Duration> {
        let runs = u32::try_from(self.samples.len()).ok().filter(|n| *n > 0)?;
        Some(self.server_cpu? / runs)
    }
}

fn median(values: impl Iterator<Item = Duration>) -> Duration {
    let mut sorted: Vec<Duration> = values.collect();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// CPU time the calling thread has used so far: (user, system).
pub fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    (timeval(usage.ru_utime), timeval(usage.ru_stime))
}

fn timeval(value: libc::timeval) -> Duration {
    let seconds = u64::try_from(value.tv_sec).unwrap_or(0);
    let micros = u64::try_from(value.tv_usec).unwrap_or(0);
    Duration::from_secs(seconds) + Duration::from_micros(micros)
}

/// The calling thread's exact CPU time (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_clock() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// Times `job` on the calling thread: wall and the thread's CPU time.
pub fn time_in_thread<R>(job: impl FnOnce() -> R) -> (Sample, R) {
    let (user0, system0) = thread_cpu();
    let clock0 = thread_clock();
    let started = Instant::now();
    let result = job();
    let wall = started.elapsed();
    let clock1 = thread_clock();
    let (user1, system1) = thread_cpu();
    (
        Sample {
            wall,
            cpu: clock1.saturating_sub(clock0),
            user: user1.saturating_sub(user0),
            system: system1.saturating_sub(system0),
        },
        result,
    )
}

/// Runs `command` to completion (killed, with its process group, after `timeout`), and returns the
/// sample and its standard output. Standard error goes to `stderr_file` and is shown on failure.
pub fn run_timed(
    command: &mut Command,
    timeout: Duration,
    stderr_file: &Path,
) -> anyhow::Result<(Sample, String)> {
    let shown = format!("{command:?}");
    let stderr = File::create(stderr_file)
        .with_context(|| format!("cannot create {}", stderr_file.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .process_group(0);

    let (pid_tx, pid_rx) = mpsc::channel::<libc::pid_t>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let Ok(pid) = pid_rx.recv() else {
            return false;
        };
        match done_rx.recv_timeout(timeout) {
            Err(RecvTimeoutError::Timeout) => {
                // SAFETY: kill takes no pointers; the negative pid names the child's process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                true
            }
            _ => false,
        }
    });

    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let _ = pid_tx.send(pid);
    let mut output = String::new();
    let read = child
        .stdout
        .take()
        .map_or(Ok(0), |mut out| out.read_to_string(&mut output));
    let (status, usage) = wait_with_usage(pid)?;
    let wall = started.elapsed();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);

    if killed {
        bail!("{shown} did not finish within {timeout:?} and was killed");
    }
    read.with_context(|| format!("cannot read the output of {shown}"))?;
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        let errors = fs::read_to_string(stderr_file).unwrap_or_default();
        bail!("{shown} failed (wait status {status:#x}):\n{errors}");
    }
    // At exit the kernel scales utime + stime to the exact runtime, so their sum is exact.
    let (user, system) = (timeval(usage.ru_utime), timeval(usage.ru_stime));
    Ok((
        Sample {
            wall,
            cpu: user + system,
            user,
            system,
        },
        output,
    ))
}

/// Reaps `pid` and returns its wait status and resource usage (including waited-for descendants).
fn wait_with_usage(pid: libc::pid_t) -> anyhow::Result<(libc::c_int, libc::rusage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid and writable for the duration of the call.
        let rc = unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) };
        if rc == pid {
            return Ok((status, usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error).with_context(|| format!("wait4({pid})"));
        }
    }
}

/// User and system CPU a running process has used (from `/proc/PID/stat`, clock-tick resolution).
pub fn process_cpu_split(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |number: usize| -> anyhow::Result<u64> {
        fields
            .get(number - 3)
            .and_then(|raw| raw.parse().ok())
            .with_context(|| format!("field {number} of /proc/{pid}/stat"))
    };
    // SAFETY: sysconf takes no pointers.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / per_second.max(1));
    Ok((time(field(14)?), time(field(15)?)))
}

/// Exact CPU time of a running process: the sum of its threads' scheduler runtimes
/// (`/proc/PID/task/*/schedstat`). Threads that have exited are not counted; node_exporter's (Go) are
/// long-lived.
pub fn process_runtime(pid: u32) -> anyhow::Result<Duration> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("cannot list /proc/{pid}/task"))?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let Ok(schedstat) = fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(total))
}

/// `VmRSS` and `VmHWM` of a running process, in KiB.
pub fn process_memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A duration in milliseconds with sensible precision for a table.
pub fn ms(duration: Duration) -> String {
    let millis = duration.as_secs_f64() * 1000.0;
    if millis >= 100.0 {
        format!("{millis:.0} ms")
    } else if millis >= 10.0 {
        format!("{millis:.1} ms")
    } else {
        format!("{millis:.2} ms")
    }
}
