//! Finding the processes that hold given sockets, by reading the `socket:[INODE]` links in
//! `/proc/PID/fd`, and what those processes are: command name, open descriptors, descriptor limit.
//!
//! Walking every process's descriptors is the expensive part of a collection, so a scan looks only for
//! the inodes asked for, visits first the processes that held sockets last time, and stops as soon as
//! every inode is found. `/proc` shows the host's processes (the PID namespace of the agent) whatever
//! network namespace the collector thread entered.

use std::collections::HashMap;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sockfleet_domain::Attribution;

/// What a scan could read.
#[derive(Debug, Default)]
pub(crate) struct ScanOutcome {
    /// Inodes asked for that no readable descriptor table holds.
    pub missing: u32,
    /// Processes whose descriptor table was read.
    pub readable: u32,
    /// Processes whose descriptor table the agent may not read.
    pub unreadable: u32,
    /// One of those, for the message.
    pub unreadable_example: Option<u32>,
    /// Why the process list itself could not be read.
    pub listing_failed: Option<String>,
}

impl ScanOutcome {
    /// The scan told as a report says it: complete, partial with the reason, or unavailable.
    pub fn attribution(&self, proc_root: &Path) -> Attribution {
        if self.missing == 0 {
            return Attribution::Complete;
        }
        let root = proc_root.display();
        if let Some(error) = &self.listing_failed {
            return Attribution::Unavailable {
                reason: format!("cannot list the processes in {root}: {error}"),
            };
        }
        let fix = "run the agent as root or grant it CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH";
        if self.readable == 0 {
            return Attribution::Unavailable {
                reason: format!(
                    "permission denied reading the descriptors ({root}/PID/fd) of every process: {fix}"
                ),
            };
        }
        let reason = match self.unreadable_example {
            Some(pid) if self.unreadable > 0 => format!(
                "permission denied reading {root}/{pid}/fd and the descriptors of {} other processes: {fix}",
                self.unreadable - 1
            ),
            _ => format!(
                "{} sockets were not found in any process's descriptors: closed during the scan, or held by \
                 processes the agent cannot see (another PID namespace, {root} mounted with hidepid)",
                self.missing
            ),
        };
        Attribution::Partial {
            unattributed_sockets: self.missing,
            unreadable_processes: self.unreadable,
            reason,
        }
    }
}

/// A process found holding sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub pid: u32,
    /// How many of the inodes asked for it holds.
    pub sockets: u32,
    /// How many descriptors it has open, if its whole table could be read.
    pub open_fds: Option<u32>,
}

/// Maps socket inodes to the processes holding them; kept between collections so its tables are
/// reused and the last owners are visited first.
#[derive(Debug)]
pub(crate) struct ProcessScanner {
    proc_root: PathBuf,
    /// Inode asked for → the pid found holding it.
    wanted: HashMap<u32, Option<u32>>,
    owners: Vec<Owner>,
    /// Pids of the last scan's owners, visited first by the next one.
    previous: Vec<u32>,
    /// Reused for `PROC/PID/fd`.
    path: PathBuf,
}

impl ProcessScanner {
    /// A scanner of the processes under `proc_root` (normally `/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> ProcessScanner {
        ProcessScanner {
            proc_root: proc_root.into(),
            wanted: HashMap::new(),
            owners: Vec::new(),
            previous: Vec::new(),
            path: PathBuf::new(),
        }
    }

    /// Where the processes are listed.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Looks for the processes holding `inodes` (0 is skipped: no process holds such a socket).
    pub fn scan(&mut self, inodes: impl IntoIterator<Item = u32>) -> ScanOutcome {
        self.wanted.clear();
        self.owners.clear();
        self.wanted.extend(
            inodes
                .into_iter()
                .filter(|inode| *inode != 0)
                .map(|inode| (inode, None)),
        );
        let mut scan = Scan {
            missing: u32::try_from(self.wanted.len()).unwrap_or(u32::MAX),
            outcome: ScanOutcome::default(),
        };
        if scan.missing > 0 {
            let mut previous = std::mem::take(&mut self.previous);
            previous.sort_unstable();
            for &pid in &previous {
                if scan.missing == 0 {
                    break;
                }
                self.scan_process(pid, &mut scan);
            }
            if scan.missing > 0 {
                self.scan_all(&previous, &mut scan);
            }
            self.previous = previous;
        }
        self.previous.clear();
        self.previous
            .extend(self.owners.iter().map(|owner| owner.pid));
        scan.outcome.missing = scan.missing;
        scan.outcome
    }

    /// The process found holding `inode` by the last scan.
    pub fn owner_of(&self, inode: u32) -> Option<u32> {
        self.wanted.get(&inode).copied().flatten()
    }

    /// The processes found holding sockets by the last scan, in the order found.
    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }

    /// `PROC/PID/comm`: the process's command name, at most 15 bytes.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let raw = fs::read(self.proc_root.join(pid.to_string()).join("comm")).ok()?;
        let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// The soft "Max open files" limit in `PROC/PID/limits`; `None` if unreadable or unlimited.
    pub fn fd_limit(&self, pid: u32) -> Option<u64> {
        let limits =
            fs::read_to_string(self.proc_root.join(pid.to_string()).join("limits")).ok()?;
        parse_fd_limit(&limits)
    }

    /// Visits every process in the process list except those in `skip` (already visited; sorted),
    /// until nothing is missing.
    fn scan_all(&mut self, skip: &[u32], scan: &mut Scan) {
        let entries = match fs::read_dir(&self.proc_root) {
            Ok(entries) => entries,
            Err(error) => {
                scan.outcome.listing_failed = Some(error.to_string());
                return;
            }
        };
        for entry in entries {
            if scan.missing == 0 {
                break;
            }
            let Ok(entry) = entry else { continue };
            let Some(pid) = parse_decimal(entry.file_name().as_bytes()) else {
                continue;
            };
            if skip.binary_search(&pid).is_err() {
                self.scan_process(pid, scan);
            }
        }
    }

    /// Reads one process's descriptor table, noting the wanted sockets in it.
    fn scan_process(&mut self, pid: u32, scan: &mut Scan) {
        self.path.clear();
        self.path.push(&self.proc_root);
        self.path.push(pid.to_string());
        self.path.push("fd");
        let entries = match fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(error) => return scan.unreadable_if_denied(pid, &error),
        };
        let mut open_fds = Some(0u32);
        let mut found = 0u32;
        for entry in entries {
            // A descriptor closed while the table is read is simply gone.
            let Ok(entry) = entry else { continue };
            open_fds = open_fds.map(|count| count.saturating_add(1));
            let target = match fs::read_link(entry.path()) {
                Ok(target) => target,
                Err(error) if is_denied(&error) => {
                    // Listing the table is allowed but reading the links is not.
                    scan.unreadable_if_denied(pid, &error);
                    open_fds = None;
                    break;
                }
                Err(_) => continue,
            };
            let Some(inode) = socket_inode(target.as_os_str().as_bytes()) else {
                continue;
            };
            if let Some(slot @ None) = self.wanted.get_mut(&inode) {
                *slot = Some(pid);
                found += 1;
                scan.missing = scan.missing.saturating_sub(1);
            }
        }
        if open_fds.is_some() {
            scan.outcome.readable = scan.outcome.readable.saturating_add(1);
        }
        if found > 0 {
            self.owners.push(Owner {
                pid,
                sockets: found,
                open_fds,
            });
        }
    }
}

/// A scan in progress.
struct Scan {
    missing: u32,
    outcome: ScanOutcome,
}

impl Scan {
    /// Counts `pid` as unreadable if `error` is a refusal; a process that exited meanwhile is not.
    fn unreadable_if_denied(&mut self, pid: u32, error: &io::Error) {
        if is_denied(error) {
            self.outcome.unreadable = self.outcome.unreadable.saturating_add(1);
            self.outcome.unreadable_example.get_or_insert(pid);
        }
    }
}

fn is_denied(error: &io::Error) -> bool {
    error.kind() == ErrorKind::PermissionDenied
}

/// The inode of a `socket:[INODE]` descriptor link.
fn socket_inode(link: &[u8]) -> Option<u32> {
    parse_decimal(link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?)
}

/// A plain decimal number (no sign, no spaces), as in pids and inode links.
fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The soft limit on the "Max open files" line of a `/proc/PID/limits` table.
fn parse_fd_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A fake `/proc` in a fresh temporary directory, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str) -> FakeProc {
            let root = std::env::temp_dir()
                .join(format!("sockfleet-fake-proc-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            FakeProc(root)
        }

        /// A process with descriptors linking to `links` (in fd order), a comm and a limits table.
        fn process(&self, pid: u32, comm: &str, links: &[&str]) {
            let dir = self.0.join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            for (fd, link) in links.iter().enumerate() {
                symlink(link, dir.join("fd").join(fd.to_string())).unwrap();
            }
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("limits"), LIMITS).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
";

    #[test]
    fn parses_links_and_limits() {
        assert_eq!(socket_inode(b"socket:[123456]"), Some(123456));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[-1]"), None);
        assert_eq!(socket_inode(b"pipe:[123]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[99999999999]"), None);
        assert_eq!(parse_fd_limit(LIMITS), Some(1024));
        assert_eq!(
            parse_fd_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            None
        );
        assert_eq!(parse_fd_limit("Max cpu time 1 1 seconds"), None);
    }

    #[test]
    fn finds_owners_counts_descriptors_and_reads_comm() {
        let proc = FakeProc::new("owners");
        proc.process(10, "idle", &["/dev/null", "pipe:[5]"]);
        proc.process(
            20,
            "leaky",
            &["/dev/null", "socket:[100]", "socket:[101]", "socket:[7]"],
        );
        proc.process(30, "other", &["socket:[102]", "anon_inode:[eventfd]"]);
        fs::create_dir_all(proc.0.join("self")).unwrap();
        fs::write(proc.0.join("uptime"), "1 1\n").unwrap();

        let mut scanner = ProcessScanner::new(&proc.0);
        let outcome = scanner.scan([100, 101, 102, 0, 999]);
        assert_eq!(outcome.missing, 1, "{outcome:?}");
        assert_eq!(outcome.unreadable, 0);
        assert_eq!(outcome.readable, 3);
        assert_eq!(scanner.owner_of(100), Some(20));
        assert_eq!(scanner.owner_of(101), Some(20));
        assert_eq!(scanner.owner_of(102), Some(30));
        assert_eq!(scanner.owner_of(999), None);
        assert_eq!(scanner.owner_of(7), None);
        let mut owners = scanner.owners().to_vec();
        owners.sort_by_key(|owner| owner.pid);
        assert_eq!(
            owners,
            [
                Owner {
                    pid: 20,
                    sockets: 2,
                    open_fds: Some(4)
                },
                Owner {
                    pid: 30,
                    sockets: 1,
                    open_fds: Some(2)
                },
            ]
        );
        assert_eq!(scanner.comm(20).as_deref(), Some("leaky"));
        assert_eq!(scanner.fd_limit(20), Some(1024));
        assert_eq!(scanner.comm(40), None);
        assert_eq!(scanner.fd_limit(40), None);
        match outcome.attribution(scanner.proc_root()) {
            Attribution::Partial {
                unattributed_sockets: 1,
                unreadable_processes: 0,
                reason,
            } => {
                assert!(reason.contains("not found"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn visits_last_owners_first_and_stops_when_all_are_found() {
        let proc = FakeProc::new("early");
        proc.process(1, "first", &["socket:[1]"]);
        proc.process(50, "holder", &["socket:[500]", "socket:[501]"]);
        let mut scanner = ProcessScanner::new(&proc.0);
        let outcome = scanner.scan([500, 501]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(
            outcome.attribution(scanner.proc_root()),
            Attribution::Complete
        );

        // Pid 1 now shares socket 501 (as after a fork). Next time pid 50, the last owner, is read
        // first, and nothing after it: the socket stays with pid 50.
        symlink("socket:[501]", proc.0.join("1").join("fd").join("9")).unwrap();
        let outcome = scanner.scan([501]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(outcome.readable, 1, "{outcome:?}");
        assert_eq!(
            scanner.owners(),
            [Owner {
                pid: 50,
                sockets: 1,
                open_fds: Some(2)
            }]
        );
        assert_eq!(scanner.owner_of(501), Some(50));

        // Without a last owner, the whole list is read in order and the first holder wins.
        let mut fresh = ProcessScanner::new(&proc.0);
        let outcome = fresh.scan([1, 501]);
        assert_eq!(outcome.missing, 0);
        assert!(fresh.owner_of(1) == Some(1) && fresh.owner_of(501).is_some());
    }

    #[test]
    fn nothing_wanted_reads_nothing() {
        let mut scanner = ProcessScanner::new("/nonexistent/proc");
        let outcome = scanner.scan([0, 0]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(outcome.readable, 0);
        assert_eq!(
            outcome.attribution(scanner.proc_root()),
            Attribution::Complete
        );
    }

    #[test]
    fn attribution_says_why_it_is_incomplete() {
        let root = Path::new("/proc");
        let missing_listing = ScanOutcome {
            missing: 3,
            listing_failed: Some("Permission denied (os error 13)".into()),
            ..ScanOutcome::default()
        };
        assert!(matches!(
            missing_listing.attribution(root),
            Attribution::Unavailable { reason } if reason.contains("cannot list the processes in /proc")
        ));
        let all_denied = ScanOutcome {
            missing: 3,
            unreadable: 40,
            unreadable_example: Some(1),
            ..ScanOutcome::default()
        };
        assert!(matches!(
            all_denied.attribution(root),
            Attribution::Unavailable { reason } if reason.contains("CAP_SYS_PTRACE")
        ));
        let some_denied = ScanOutcome {
            missing: 2,
            readable: 5,
            unreadable: 3,
            unreadable_example: Some(77),
            ..ScanOutcome::default()
        };
        match some_denied.attribution(root) {
            Attribution::Partial {
                unattributed_sockets: 2,
                unreadable_processes: 3,
                reason,
            } => assert!(
                reason.starts_with(
                    "permission denied reading /proc/77/fd and the descriptors of 2 other"
                ),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_real_proc_for_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let own = fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&listener)
        ))
        .unwrap();
        let inode = socket_inode(own.as_os_str().as_bytes()).unwrap();
        let mut scanner = ProcessScanner::new("/proc");
        let outcome = scanner.scan([inode]);
        assert_eq!(outcome.missing, 0, "{outcome:?}");
        assert_eq!(scanner.owner_of(inode), Some(std::process::id()));
        assert!(scanner.fd_limit(std::process::id()).is_some());
        assert!(scanner.comm(std::process::id()).is_some());
    }
}
