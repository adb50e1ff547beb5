//! Finding the processes that hold given sockets, by reading the `socket:[INODE]` links in
//! `/proc/PID/fd`, and what those processes are: command name, open descriptors, descriptor limit.
//!
//! Reading descriptor links is the expensive part of a collection (a few microseconds each, and a busy
//! server holds tens of thousands), so a scan reads as few as it can:
//! 1. Each socket found last time is checked where it was found: one `readlinkat` of that process's
//!    descriptor. The link names the socket's inode only while that process holds that socket, so a
//!    closed descriptor, a reused descriptor number, an exited process or a reused pid simply fail
//!    the check. In the steady state this is all a scan reads.
//! 2. Sockets still unaccounted for are looked for in the whole descriptor tables of last time's
//!    owners (a leaking process tends to leak more), then of every other process, stopping as soon as
//!    every one is found.
//! 3. A socket that a complete scan (every readable process, every descriptor) did not find (held by
//!    the kernel, by a process the agent cannot read or see, or in flight between processes) is not
//!    looked for again by the next [`RESCAN_UNFOUND_AFTER`] scans; it stays reported as missing, with
//!    the complete scan's reason. Sockets not seen before are always looked for.
//!
//! `/proc` shows the host's processes (the PID namespace of the agent) whatever network namespace
//! the collector thread entered.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sockfleet_domain::Attribution;

/// Scans after a complete one that leave the sockets it did not find alone.
pub(crate) const RESCAN_UNFOUND_AFTER: u32 = 5;
/// `statfs` type of procfs.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

/// What a scan could read.
#[derive(Debug, Default, Clone)]
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
    /// Descriptor links read (what a scan costs).
    pub links_read: u32,
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
    /// How many descriptors it has open, if that could be read.
    pub open_fds: Option<u32>,
}

/// Where a socket was found: a process and one of its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    pid: u32,
    fd: u32,
}

/// Maps socket inodes to the processes holding them; kept between collections so its tables are
/// reused and last time's findings are checked first.
#[derive(Debug)]
pub(crate) struct ProcessScanner {
    proc_root: PathBuf,
    /// Whether `proc_root` is procfs, whose `PID/fd` directories have the number of open descriptors
    /// as their size (Linux 6.2 and later); `None` until first needed.
    procfs: Option<bool>,
    /// Inode asked for → the pid found holding it.
    wanted: HashMap<u32, Option<u32>>,
    owners: Vec<Owner>,
    /// Pids whose descriptors this scan counted while reading their table.
    counted: Vec<u32>,
    /// Inode → where the last scan found it.
    holders: HashMap<u32, Holder>,
    /// Inode → where this scan found it; becomes `holders`.
    found_at: HashMap<u32, Holder>,
    /// Reused to check `holders` process by process: (pid, fd, inode).
    checks: Vec<(u32, u32, u32)>,
    /// Pids of the last scan's owners, read first by the next scan that must search.
    previous: Vec<u32>,
    /// Inodes the last complete scan did not find, still asked for.
    unfound: HashSet<u32>,
    /// What the last complete scan could read, to tell why `unfound` sockets are missing.
    last_complete: ScanOutcome,
    scans_since_complete: u32,
    /// Reused for `PROC/PID/fd`.
    path: PathBuf,
}

impl ProcessScanner {
    /// A scanner of the processes under `proc_root` (normally `/proc`).
    pub fn new(proc_root: impl Into<PathBuf>) -> ProcessScanner {
        ProcessScanner {
            proc_root: proc_root.into(),
            procfs: None,
            wanted: HashMap::new(),
            owners: Vec::new(),
            counted: Vec::new(),
            holders: HashMap::new(),
            found_at: HashMap::new(),
            checks: Vec::new(),
            previous: Vec::new(),
            unfound: HashSet::new(),
            last_complete: ScanOutcome::default(),
            scans_since_complete: 0,
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
        self.counted.clear();
        self.found_at.clear();
        self.wanted.extend(
            inodes
                .into_iter()
                .filter(|inode| *inode != 0)
                .map(|inode| (inode, None)),
        );
        let wanted = &self.wanted;
        self.unfound.retain(|inode| wanted.contains_key(inode));
        let asked = u32::try_from(self.wanted.len()).unwrap_or(u32::MAX);
        let defer = !self.unfound.is_empty() && self.scans_since_complete < RESCAN_UNFOUND_AFTER;
        let mut scan = Scan {
            missing: asked,
            searching: asked,
            defer,
            outcome: ScanOutcome::default(),
        };
        if scan.missing > 0 {
            self.check_holders(&mut scan);
        }
        if defer {
            // The unfound sockets had no holder to check, so all of them are still missing.
            let deferred = u32::try_from(self.unfound.len()).unwrap_or(u32::MAX);
            scan.searching = scan.searching.saturating_sub(deferred);
        }
        let mut complete = false;
        if scan.searching > 0 {
            let mut previous = std::mem::take(&mut self.previous);
            previous.sort_unstable();
            previous.dedup();
            for &pid in &previous {
                if scan.searching == 0 {
                    break;
                }
                self.scan_process(pid, &mut scan);
            }
            if scan.searching > 0 {
                complete = self.scan_all(&previous, &mut scan);
            }
            self.previous = previous;
        }
        self.count_descriptors_of_checked_owners();

        let wanted = &self.wanted;
        if complete {
            self.unfound.clear();
            self.unfound.extend(
                wanted
                    .iter()
                    .filter(|(_, pid)| pid.is_none())
                    .map(|(inode, _)| *inode),
            );
            self.last_complete = scan.outcome.clone();
            self.scans_since_complete = 0;
        } else {
            self.unfound
                .retain(|inode| wanted.get(inode).is_some_and(Option::is_none));
            self.scans_since_complete = self.scans_since_complete.saturating_add(1);
        }
        std::mem::swap(&mut self.holders, &mut self.found_at);
        self.previous.clear();
        self.previous
            .extend(self.owners.iter().map(|owner| owner.pid));
        self.trim();

        let mut outcome = if scan.missing > 0 && !complete {
            // What is missing was left to an earlier complete scan: tell what that one could read.
            ScanOutcome {
                links_read: scan.outcome.links_read,
                ..self.last_complete.clone()
            }
        } else {
            scan.outcome
        };
        outcome.missing = scan.missing;
        outcome
    }

    /// The process found holding `inode` by the last scan.
    pub fn owner_of(&self, inode: u32) -> Option<u32> {
        self.wanted.get(&inode).copied().flatten()
    }

    /// The processes found holding sockets by the last scan.
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

    /// Checks each wanted socket where the last scan found it: one link per socket, each process's
    /// descriptor directory opened once.
    fn check_holders(&mut self, scan: &mut Scan) {
        let mut checks = std::mem::take(&mut self.checks);
        checks.clear();
        checks.extend(self.wanted.keys().filter_map(|inode| {
            let holder = self.holders.get(inode)?;
            Some((holder.pid, holder.fd, *inode))
        }));
        checks.sort_unstable();
        for group in checks.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(pid, ..)) = group.first() else {
                continue;
            };
            self.set_fd_path(pid);
            // Exited or no longer readable: its sockets are searched for like new ones.
            let Ok(directory) = File::open(&self.path) else {
                continue;
            };
            let mut confirmed = 0u32;
            for &(_, fd, inode) in group {
                scan.outcome.links_read = scan.outcome.links_read.saturating_add(1);
                if let Ok(Some(linked)) = fd_socket_inode(&directory, fd)
                    && linked == inode
                    && self.take(inode, Holder { pid, fd }, scan)
                {
                    confirmed += 1;
                }
            }
            if confirmed > 0 {
                self.credit(pid, confirmed, None);
            }
        }
        self.checks = checks;
    }

    /// Notes that `holder` holds `inode` if that is wanted and not found yet; says whether it was.
    fn take(&mut self, inode: u32, holder: Holder, scan: &mut Scan) -> bool {
        let Some(slot @ None) = self.wanted.get_mut(&inode) else {
            return false;
        };
        *slot = Some(holder.pid);
        self.found_at.insert(inode, holder);
        scan.missing = scan.missing.saturating_sub(1);
        if !(scan.defer && self.unfound.contains(&inode)) {
            scan.searching = scan.searching.saturating_sub(1);
        }
        true
    }

    /// Adds `sockets` to `pid`'s entry among the owners; `open_fds` is set when its table was read.
    fn credit(&mut self, pid: u32, sockets: u32, open_fds: Option<Option<u32>>) {
        let owner = match self.owners.iter_mut().find(|owner| owner.pid == pid) {
            Some(owner) => owner,
            None => {
                self.owners.push(Owner {
                    pid,
                    sockets: 0,
                    open_fds: None,
                });
                let last = self.owners.len() - 1;
                &mut self.owners[last]
            }
        };
        owner.sockets = owner.sockets.saturating_add(sockets);
        if let Some(open_fds) = open_fds {
            owner.open_fds = open_fds;
        }
    }

    /// Owners whose table was not read (their sockets were confirmed one link each) get their
    /// descriptor count from the directory's size on procfs, else by listing it.
    fn count_descriptors_of_checked_owners(&mut self) {
        for index in 0..self.owners.len() {
            let pid = self.owners[index].pid;
            if self.counted.contains(&pid) {
                continue;
            }
            let open_fds = self.count_descriptors(pid);
            self.owners[index].open_fds = open_fds;
        }
    }

    fn count_descriptors(&mut self, pid: u32) -> Option<u32> {
        let procfs = *self
            .procfs
            .get_or_insert_with(|| is_procfs(&self.proc_root));
        self.set_fd_path(pid);
        if procfs
            && let Ok(metadata) = fs::metadata(&self.path)
            && metadata.len() > 0
        {
            return u32::try_from(metadata.len()).ok();
        }
        let entries = fs::read_dir(&self.path).ok()?;
        let count = entries.filter(Result::is_ok).count();
        u32::try_from(count).ok()
    }

    /// Visits every process in the process list except those in `skip` (already read; sorted), until
    /// nothing searched for is missing. Says whether it got through the whole list (or could not read
    /// it at all), so that what is still missing is not in any readable table.
    fn scan_all(&mut self, skip: &[u32], scan: &mut Scan) -> bool {
        let entries = match fs::read_dir(&self.proc_root) {
            Ok(entries) => entries,
            Err(error) => {
                scan.outcome.listing_failed = Some(error.to_string());
                return true;
            }
        };
        for entry in entries {
            if scan.searching == 0 {
                return false;
            }
            let Ok(entry) = entry else { continue };
            let Some(pid) = parse_decimal(entry.file_name().as_bytes()) else {
                continue;
            };
            if skip.binary_search(&pid).is_err() {
                self.scan_process(pid, scan);
            }
        }
        // Found all it searched for in the last table (whose rest was then not read): not complete.
        scan.searching > 0
    }

    /// Reads one process's descriptor table, noting the wanted sockets in it, until nothing searched
    /// for is missing.
    fn scan_process(&mut self, pid: u32, scan: &mut Scan) {
        self.set_fd_path(pid);
        let listed =
            File::open(&self.path).and_then(|directory| Ok((fs::read_dir(&self.path)?, directory)));
        let (entries, directory) = match listed {
            Ok(listed) => listed,
            Err(error) => return scan.unreadable_if_denied(pid, &error),
        };
        self.counted.push(pid);
        let mut open_fds = Some(0u32);
        let mut found = 0u32;
        let mut stopped = false;
        for entry in entries {
            // A descriptor closed while the table is read is simply gone.
            let Ok(entry) = entry else { continue };
            let Some(fd) = parse_decimal(entry.file_name().as_bytes()) else {
                continue;
            };
            open_fds = open_fds.map(|count| count.saturating_add(1));
            scan.outcome.links_read = scan.outcome.links_read.saturating_add(1);
            let inode = match fd_socket_inode(&directory, fd) {
                Ok(Some(inode)) => inode,
                Ok(None) => continue,
                Err(error) if is_denied(&error) => {
                    // Listing the table is allowed but reading the links is not.
                    scan.unreadable_if_denied(pid, &error);
                    open_fds = None;
                    break;
                }
                Err(_) => continue,
            };
            if self.take(inode, Holder { pid, fd }, scan) {
                found += 1;
                if scan.searching == 0 {
                    stopped = true;
                    break;
                }
            }
        }
        if stopped {
            open_fds = self.count_descriptors(pid);
        }
        if open_fds.is_some() {
            scan.outcome.readable = scan.outcome.readable.saturating_add(1);
        }
        let known = self.owners.iter().any(|owner| owner.pid == pid);
        if found > 0 || known {
            self.credit(pid, found, Some(open_fds));
        }
    }

    fn set_fd_path(&mut self, pid: u32) {
        self.path.clear();
        self.path.push(&self.proc_root);
        self.path.push(pid.to_string());
        self.path.push("fd");
    }

    /// Gives back memory a burst of CLOSE_WAIT sockets left in the tables.
    fn trim(&mut self) {
        const ROOM_FACTOR: usize = 4;
        const MIN_KEPT_ROOM: usize = 256;
        let keep = |len: usize| len.max(MIN_KEPT_ROOM);
        let len = self.wanted.len();
        if self.wanted.capacity() > ROOM_FACTOR * keep(len) {
            self.wanted.shrink_to(keep(len));
        }
        for map in [&mut self.holders, &mut self.found_at] {
            if map.capacity() > ROOM_FACTOR * keep(len) {
                map.shrink_to(keep(len));
            }
        }
        if self.checks.capacity() > ROOM_FACTOR * keep(len) {
            self.checks.shrink_to(keep(len));
        }
    }
}

/// A scan in progress.
struct Scan {
    /// Wanted inodes not found yet.
    missing: u32,
    /// Of those, the ones this scan looks for (the others are left to the next complete scan).
    searching: u32,
    /// Whether the last complete scan's unfound inodes are left alone this time.
    defer: bool,
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

/// The socket inode that descriptor `fd` links to, read in its process's opened `PROC/PID/fd`
/// directory; `None` if it is not a socket.
fn fd_socket_inode(directory: &File, fd: u32) -> io::Result<Option<u32>> {
    // The descriptor number in decimal, NUL-terminated.
    let mut name = [0u8; 12];
    let mut digits = [0u8; 10];
    let mut rest = fd;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (to, from) in name.iter_mut().zip(digits[..len].iter().rev()) {
        *to = *from;
    }
    // "socket:[4294967295]" is 19 bytes; anything longer is not a socket link.
    let mut target = [0u8; 32];
    // SAFETY: `name` is NUL-terminated (at most 10 digits in 12 zeroed bytes), `target` is writable
    // for the length passed, and the directory descriptor stays open for the call.
    let read = unsafe {
        libc::readlinkat(
            directory.as_raw_fd(),
            name.as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    };
    let read = usize::try_from(read).map_err(|_| io::Error::last_os_error())?;
    Ok(target.get(..read).and_then(socket_inode))
}

/// Whether `path` is on procfs.
fn is_procfs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut info: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `info` is writable, both live for the call.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut info) };
    // `f_type` is a signed or unsigned word depending on the architecture.
    #[allow(clippy::unnecessary_cast)]
    let kind = info.f_type as i64;
    rc == 0 && kind == PROC_SUPER_MAGIC
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

        /// Points descriptor `fd` of `pid` at `link`, replacing what it pointed at.
        fn link(&self, pid: u32, fd: u32, link: &str) {
            let path = self.0.join(pid.to_string()).join("fd").join(fd.to_string());
            let _ = fs::remove_file(&path);
            symlink(link, path).unwrap();
        }

        /// The process exits.
        fn remove(&self, pid: u32) {
            fs::remove_dir_all(self.0.join(pid.to_string())).unwrap();
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
    fn checks_last_holders_first_and_stops_when_all_are_found() {
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

        // Pid 1 now shares socket 501 (as after a fork), and pid 50 opened another descriptor. Next
        // time the one descriptor that held 501 is read, and nothing else: the socket stays with
        // pid 50, whose descriptors are counted without reading their links.
        proc.link(1, 9, "socket:[501]");
        proc.link(50, 7, "/dev/null");
        let outcome = scanner.scan([501]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(outcome.links_read, 1, "{outcome:?}");
        assert_eq!(outcome.readable, 0, "{outcome:?}");
        assert_eq!(
            scanner.owners(),
            [Owner {
                pid: 50,
                sockets: 1,
                open_fds: Some(3)
            }]
        );
        assert_eq!(scanner.owner_of(501), Some(50));
        assert_eq!(
            outcome.attribution(scanner.proc_root()),
            Attribution::Complete
        );

        // A socket not seen before is searched for in the last owners' tables first.
        proc.link(50, 8, "socket:[502]");
        let outcome = scanner.scan([501, 502]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(outcome.readable, 1, "{outcome:?}");
        // The check, then pid 50's table until 502 turns up (listing order is the file system's).
        assert!((2..=1 + 4).contains(&outcome.links_read), "{outcome:?}");
        assert_eq!(
            scanner.owners(),
            [Owner {
                pid: 50,
                sockets: 2,
                open_fds: Some(4)
            }]
        );

        // Without a last owner, the whole list is read in order and the first holder wins.
        let mut fresh = ProcessScanner::new(&proc.0);
        let outcome = fresh.scan([1, 501]);
        assert_eq!(outcome.missing, 0);
        assert!(fresh.owner_of(1) == Some(1) && fresh.owner_of(501).is_some());
    }

    #[test]
    fn a_socket_that_moved_is_found_where_it_is_now() {
        let proc = FakeProc::new("moved");
        proc.process(20, "was", &["socket:[700]", "socket:[701]"]);
        proc.process(30, "now", &["/dev/null"]);
        let mut scanner = ProcessScanner::new(&proc.0);
        scanner.scan([700, 701]);
        assert_eq!(scanner.owner_of(700), Some(20));

        // Pid 20 closed the socket and reused the descriptor number for another socket; pid 30
        // received it.
        proc.link(20, 0, "socket:[702]");
        proc.link(30, 3, "socket:[700]");
        let outcome = scanner.scan([700, 701]);
        assert_eq!(outcome.missing, 0, "{outcome:?}");
        assert_eq!(scanner.owner_of(700), Some(30));
        assert_eq!(scanner.owner_of(701), Some(20));
        let mut owners = scanner.owners().to_vec();
        owners.sort_by_key(|owner| owner.pid);
        assert_eq!(
            owners,
            [
                Owner {
                    pid: 20,
                    sockets: 1,
                    open_fds: Some(2)
                },
                Owner {
                    pid: 30,
                    sockets: 1,
                    open_fds: Some(2)
                },
            ]
        );
    }

    #[test]
    fn an_exited_process_or_a_reused_pid_owns_nothing() {
        let proc = FakeProc::new("exited");
        proc.process(40, "old", &["/dev/null", "/dev/null", "socket:[800]"]);
        let mut scanner = ProcessScanner::new(&proc.0);
        scanner.scan([800]);
        assert_eq!(scanner.owner_of(800), Some(40));

        // Pid 40 is now another process, with another socket at the same descriptor number; the
        // socket 800 went to pid 41.
        proc.remove(40);
        proc.process(40, "new", &["/dev/null", "/dev/null", "socket:[801]"]);
        proc.process(41, "heir", &["/dev/null", "/dev/null", "socket:[800]"]);
        let outcome = scanner.scan([800]);
        assert_eq!(outcome.missing, 0);
        assert_eq!(scanner.owner_of(800), Some(41));
        assert_eq!(scanner.owners().len(), 1, "{:?}", scanner.owners());

        // Pid 41 exited, and the socket with it from every table: nobody owns it.
        proc.remove(41);
        let outcome = scanner.scan([800]);
        assert_eq!(outcome.missing, 1);
        assert_eq!(scanner.owner_of(800), None);
        assert!(scanner.owners().is_empty());
    }

    #[test]
    fn sockets_a_complete_scan_missed_wait_for_the_next_complete_scan() {
        let proc = FakeProc::new("unfound");
        proc.process(60, "holder", &["socket:[900]", "/dev/null"]);
        proc.process(61, "other", &["/dev/null"]);
        let mut scanner = ProcessScanner::new(&proc.0);
        let first = scanner.scan([900, 999]);
        assert_eq!(first.missing, 1);
        assert_eq!(first.readable, 2);
        let reason = first.attribution(scanner.proc_root());
        assert!(
            matches!(&reason, Attribution::Partial { reason, .. } if reason.contains("not found")),
            "{reason:?}"
        );

        // Another process gets socket 999 (passed over a Unix socket, say).
        proc.process(62, "late", &["socket:[999]"]);
        for round in 0..RESCAN_UNFOUND_AFTER {
            // A socket not seen before is still looked for, and found in the last owner.
            let mut wanted = vec![900, 999];
            if round == 2 {
                proc.link(60, 5, "socket:[950]");
                wanted.push(950);
            }
            let outcome = scanner.scan(wanted);
            assert_eq!(outcome.missing, 1, "round {round}: {outcome:?}");
            assert_eq!(scanner.owner_of(999), None);
            assert_eq!(outcome.attribution(scanner.proc_root()), reason);
            if round == 2 {
                assert_eq!(scanner.owner_of(950), Some(60));
                assert!((2..=1 + 3).contains(&outcome.links_read), "{outcome:?}");
            } else {
                assert_eq!(outcome.links_read, 1, "round {round}: {outcome:?}");
            }
        }
        let outcome = scanner.scan([900, 999]);
        assert_eq!(outcome.missing, 0, "{outcome:?}");
        assert_eq!(scanner.owner_of(999), Some(62));
        assert_eq!(scanner.owner_of(900), Some(60));
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

        // The next scan reads the one link, and counts the descriptors without reading them.
        let outcome = scanner.scan([inode]);
        assert_eq!(outcome.missing, 0, "{outcome:?}");
        assert_eq!(outcome.links_read, 1, "{outcome:?}");
        assert_eq!(scanner.owner_of(inode), Some(std::process::id()));
        let [owner] = scanner.owners() else {
            panic!("{:?}", scanner.owners());
        };
        assert!(owner.open_fds.is_some_and(|open| open >= 1), "{owner:?}");
        assert!(is_procfs(Path::new("/proc")));
        assert!(!is_procfs(&std::env::temp_dir()));
        drop(listener);
    }

    #[test]
    fn reads_socket_links_by_descriptor_number() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&listener)).unwrap();
        let own = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let directory = File::open("/proc/self/fd").unwrap();
        assert_eq!(
            fd_socket_inode(&directory, fd).unwrap(),
            socket_inode(own.as_os_str().as_bytes())
        );
        let null = File::open("/dev/null").unwrap();
        let null_fd = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&null)).unwrap();
        assert_eq!(fd_socket_inode(&directory, null_fd).unwrap(), None);
        assert!(fd_socket_inode(&directory, 999_999).is_err());
        drop((listener, null));
    }
}
