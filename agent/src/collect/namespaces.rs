//! Finding the host's network namespaces: every namespace a process is in (`/proc/PID/ns/net`) and
//! every one `ip netns` named (a bind mount under `/run/netns`), each once, and what can be told
//! about who uses it.
//!
//! A namespace is identified by the device and inode of its nsfs file, which every path to it
//! shares. Only a process's main thread shows in `/proc/PID/ns/net`, so a namespace that only
//! threads have entered is not found. Entries that cannot be read (a process exiting, a process the
//! agent may not inspect) are skipped.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sockfleet_domain::NamespaceIdentity;

use super::container;

/// Where `ip netns add` mounts named namespaces.
pub const NAMED_NAMESPACES: &str = "/run/netns";
/// Pids remembered per namespace (the lowest), to look for a container id and a pod name.
const PIDS_KEPT: usize = 4;

/// The identity of a network namespace while it exists: device and inode of its nsfs file. Ordered
/// by inode first, the order in which namespaces are chosen when there are too many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceKey {
    pub inode: u64,
    pub device: u64,
}

impl NamespaceKey {
    /// The namespace a path (`/proc/PID/ns/net`, `/run/netns/NAME`) refers to.
    pub fn of(path: &Path) -> io::Result<NamespaceKey> {
        fs::metadata(path).map(|metadata| NamespaceKey::from(&metadata))
    }
}

impl From<&fs::Metadata> for NamespaceKey {
    fn from(metadata: &fs::Metadata) -> NamespaceKey {
        NamespaceKey {
            inode: metadata.ino(),
            device: metadata.dev(),
        }
    }
}

/// A network namespace that discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNamespace {
    pub key: NamespaceKey,
    /// Its name under `/run/netns` (the first in byte order if it has several).
    pub name: Option<String>,
    /// The lowest pids of processes in it, ascending (at most a few).
    pub pids: Vec<u32>,
    /// The path to enter it by: the named mount if there is one (it outlives processes), else the
    /// namespace of its lowest pid. Whoever opens it must check that it still is this namespace.
    pub path: PathBuf,
}

/// What one discovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The namespaces chosen, ordered by [`NamespaceKey`].
    pub found: Vec<FoundNamespace>,
    /// How many more there were beyond the limit.
    pub left_out: usize,
}

/// Finds network namespaces under a proc root and a directory of named namespaces; kept by the
/// collector thread so the number left out is logged only when it changes.
#[derive(Debug)]
pub struct NamespaceFinder {
    proc_root: PathBuf,
    named_dir: PathBuf,
    max: usize,
    last_left_out: usize,
}

impl NamespaceFinder {
    /// A finder reading `/proc` and `/run/netns` that chooses at most `max` namespaces.
    pub fn new(max: usize) -> NamespaceFinder {
        NamespaceFinder::with_roots("/proc", NAMED_NAMESPACES, max)
    }

    /// A finder reading `proc_root` and `named_dir` instead.
    pub fn with_roots(
        proc_root: impl Into<PathBuf>,
        named_dir: impl Into<PathBuf>,
        max: usize,
    ) -> NamespaceFinder {
        NamespaceFinder {
            proc_root: proc_root.into(),
            named_dir: named_dir.into(),
            max,
            last_left_out: 0,
        }
    }

    /// Every network namespace except `home`, at most the limit (the lowest keys); logs a warning
    /// when the number left out changes.
    pub fn discover(&mut self, home: NamespaceKey) -> Discovery {
        let mut all: BTreeMap<NamespaceKey, FoundNamespace> = BTreeMap::new();
        self.add_named(&mut all);
        self.add_processes(&mut all);
        all.remove(&home);
        let left_out = all.len().saturating_sub(self.max);
        if left_out != self.last_left_out {
            self.last_left_out = left_out;
            if left_out > 0 {
                tracing::warn!(
                    found = all.len(),
                    left_out,
                    max = self.max,
                    "more network namespaces than --max-namespaces; leaving out those with the highest inodes"
                );
            } else {
                tracing::info!("every network namespace is collected again");
            }
        }
        let mut found: Vec<FoundNamespace> = all.into_values().take(self.max).collect();
        for namespace in &mut found {
            namespace.path = match (&namespace.name, namespace.pids.first()) {
                (Some(name), _) => self.named_dir.join(name),
                (None, Some(pid)) => self.process_path(*pid, "ns/net"),
                (None, None) => PathBuf::new(),
            };
        }
        Discovery { found, left_out }
    }

    /// What can be told about a namespace: its name, its lowest pid and that process's command, and
    /// the container id and pod of the first of its processes that has them.
    pub fn identify(&self, found: &FoundNamespace) -> NamespaceIdentity {
        let pid = found.pids.first().copied();
        let mut identity = NamespaceIdentity {
            name: found.name.clone().filter(|name| valid_text(name)),
            pid,
            comm: pid.and_then(|pid| self.comm(pid)),
            ..NamespaceIdentity::default()
        };
        for &pid in &found.pids {
            let Ok(cgroup) = fs::read_to_string(self.process_path(pid, "cgroup")) else {
                continue;
            };
            if identity.container_id.is_none() {
                identity.container_id = container::container_id(&cgroup);
            }
            if identity.pod.is_none() && container::in_kubernetes_pod(&cgroup) {
                identity.pod = container::pod_hostname(&self.proc_root, pid);
            }
            if identity.container_id.is_some() && identity.pod.is_some() {
                break;
            }
        }
        identity
    }

    fn comm(&self, pid: u32) -> Option<String> {
        let raw = fs::read(self.process_path(pid, "comm")).ok()?;
        let name = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let name = String::from_utf8_lossy(name).into_owned();
        valid_text(&name).then_some(name)
    }

    fn process_path(&self, pid: u32, file: &str) -> PathBuf {
        self.proc_root.join(pid.to_string()).join(file)
    }

    fn add_named(&self, all: &mut BTreeMap<NamespaceKey, FoundNamespace>) {
        let Ok(entries) = fs::read_dir(&self.named_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(key) = NamespaceKey::of(&entry.path()) else {
                continue;
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let found = all.entry(key).or_insert_with(|| FoundNamespace {
                key,
                name: None,
                pids: Vec::new(),
                path: PathBuf::new(),
            });
            if found.name.as_ref().is_none_or(|known| name < *known) {
                found.name = Some(name);
            }
        }
    }

    fn add_processes(&self, all: &mut BTreeMap<NamespaceKey, FoundNamespace>) {
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            return;
        };
        let mut path = self.proc_root.clone();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            path.push(entry.file_name());
            path.push("ns/net");
            let key = NamespaceKey::of(&path);
            path.pop();
            path.pop();
            path.pop();
            let Ok(key) = key else {
                continue;
            };
            let found = all.entry(key).or_insert_with(|| FoundNamespace {
                key,
                name: None,
                pids: Vec::new(),
                path: PathBuf::new(),
            });
            keep_lowest(&mut found.pids, pid);
        }
    }
}

/// Inserts `pid` into the ascending `pids`, keeping only the lowest [`PIDS_KEPT`].
fn keep_lowest(pids: &mut Vec<u32>, pid: u32) {
    let at = pids.partition_point(|known| *known < pid);
    if at < PIDS_KEPT && pids.get(at) != Some(&pid) {
        pids.insert(at, pid);
        pids.truncate(PIDS_KEPT);
    }
}

/// Whether a name can go into a report as it is (the server refuses longer names and control
/// characters).
fn valid_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= NamespaceIdentity::MAX_TEXT_LEN
        && !text.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A directory standing in for `/proc` and `/run/netns`, where "namespaces" are plain files and
    /// two paths to one namespace are hard links to one file.
    struct FakeHost {
        root: PathBuf,
    }

    impl FakeHost {
        fn new(name: &str) -> FakeHost {
            let root = std::env::temp_dir().join(format!(
                "sockfleet-namespaces-{name}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("proc")).unwrap();
            fs::create_dir_all(root.join("netns")).unwrap();
            fs::create_dir_all(root.join("namespaces")).unwrap();
            FakeHost { root }
        }

        fn namespace(&self, name: &str) -> PathBuf {
            let path = self.root.join("namespaces").join(name);
            if !path.exists() {
                fs::write(&path, "").unwrap();
            }
            path
        }

        fn key(&self, namespace: &str) -> NamespaceKey {
            NamespaceKey::of(&self.namespace(namespace)).unwrap()
        }

        fn process(&self, pid: u32, namespace: &str, comm: &str, cgroup: &str) {
            let dir = self.root.join("proc").join(pid.to_string());
            fs::create_dir_all(dir.join("ns")).unwrap();
            fs::hard_link(self.namespace(namespace), dir.join("ns/net")).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("cgroup"), cgroup).unwrap();
        }

        fn named(&self, name: &str, namespace: &str) {
            fs::hard_link(
                self.namespace(namespace),
                self.root.join("netns").join(name),
            )
            .unwrap();
        }

        fn finder(&self, max: usize) -> NamespaceFinder {
            NamespaceFinder::with_roots(self.root.join("proc"), self.root.join("netns"), max)
        }
    }

    impl Drop for FakeHost {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn finds_each_namespace_once_names_it_and_leaves_home_out() {
        let host = FakeHost::new("dedup");
        host.process(1, "home", "systemd", "0::/init.scope\n");
        host.process(300, "web", "nginx", &format!("0::/docker/{ID}\n"));
        host.process(250, "web", "tini", &format!("0::/docker/{ID}\n"));
        host.process(900, "web", "worker", &format!("0::/docker/{ID}\n"));
        host.process(40, "named", "sleep", "0::/user.slice\n");
        host.named("blue", "named");
        host.named("azure", "named");
        host.named("empty", "unused");
        // Not processes: skipped.
        fs::create_dir_all(host.root.join("proc/self")).unwrap();
        fs::create_dir_all(host.root.join("proc/77")).unwrap();
        fs::write(host.root.join("proc/uptime"), "1 1\n").unwrap();

        let mut finder = host.finder(256);
        let discovery = finder.discover(host.key("home"));
        assert_eq!(discovery.left_out, 0);
        let mut expected = vec![
            FoundNamespace {
                key: host.key("web"),
                name: None,
                pids: vec![250, 300, 900],
                path: host.root.join("proc/250/ns/net"),
            },
            FoundNamespace {
                key: host.key("named"),
                name: Some("azure".into()),
                pids: vec![40],
                path: host.root.join("netns/azure"),
            },
            FoundNamespace {
                key: host.key("unused"),
                name: Some("empty".into()),
                pids: vec![],
                path: host.root.join("netns/empty"),
            },
        ];
        expected.sort_by_key(|found| found.key);
        assert_eq!(discovery.found, expected);

        let by_key = |namespace: &str| {
            let key = host.key(namespace);
            discovery
                .found
                .iter()
                .find(|found| found.key == key)
                .unwrap()
                .clone()
        };
        let web = by_key("web");
        assert_eq!(
            finder.identify(&web),
            NamespaceIdentity {
                name: None,
                container_id: Some(ID.into()),
                pod: None,
                pid: Some(250),
                comm: Some("tini".into()),
            }
        );
        let named = by_key("named");
        assert_eq!(
            finder.identify(&named),
            NamespaceIdentity {
                name: Some("azure".into()),
                pid: Some(40),
                comm: Some("sleep".into()),
                ..NamespaceIdentity::default()
            }
        );
        let empty = by_key("unused");
        assert_eq!(
            finder.identify(&empty),
            NamespaceIdentity {
                name: Some("empty".into()),
                ..NamespaceIdentity::default()
            }
        );
    }

    #[test]
    fn keeps_the_lowest_keys_up_to_the_limit() {
        let host = FakeHost::new("limit");
        for pid in 1..=10 {
            host.process(pid, &format!("ns{pid}"), "sh", "0::/\n");
        }
        let mut keys: Vec<NamespaceKey> =
            (1..=10).map(|pid| host.key(&format!("ns{pid}"))).collect();
        keys.sort();
        let home = keys.remove(4);
        let mut finder = host.finder(3);
        for _ in 0..2 {
            let discovery = finder.discover(home);
            assert_eq!(discovery.left_out, 6);
            let chosen: Vec<NamespaceKey> = discovery.found.iter().map(|found| found.key).collect();
            assert_eq!(chosen, keys[..3]);
        }
        assert_eq!(finder.last_left_out, 6);
        assert_eq!(host.finder(20).discover(home).found.len(), 9);
    }

    #[test]
    fn missing_roots_find_nothing() {
        let mut finder = NamespaceFinder::with_roots("/no/such/proc", "/no/such/netns", 5);
        let home = NamespaceKey {
            inode: 1,
            device: 1,
        };
        assert_eq!(finder.discover(home), Discovery::default());
    }

    #[test]
    fn lowest_pids_are_kept_in_order() {
        let mut pids = Vec::new();
        for pid in [50, 7, 300, 7, 20, 1, 99] {
            keep_lowest(&mut pids, pid);
        }
        assert_eq!(pids, [1, 7, 20, 50]);
    }

    #[test]
    fn names_a_report_cannot_carry_are_left_out() {
        assert!(valid_text("cni-1234"));
        assert!(!valid_text(""));
        assert!(!valid_text("a\nb"));
        assert!(!valid_text(&"x".repeat(256)));
    }

    /// A child process, killed when this drops.
    struct Sleeper(Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// With the real `/proc`: this process's namespace is home and left out; a namespace only a
    /// thread is in is not found, but is once a process lives in it.
    #[test]
    fn real_proc_finds_namespaces_with_processes_in_them() {
        let home = NamespaceKey::of(Path::new("/proc/thread-self/ns/net")).unwrap();
        let namespace = sockfleet_testkit::IsolatedNamespace::new();
        let isolated = NamespaceKey::of(Path::new(namespace.path())).unwrap();
        assert_ne!(isolated, home);
        let mut finder = NamespaceFinder::new(usize::MAX);

        let before = finder.discover(home);
        let keys: Vec<NamespaceKey> = before.found.iter().map(|found| found.key).collect();
        assert!(!keys.contains(&home), "{keys:?}");
        assert!(!keys.contains(&isolated), "{keys:?}");
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");

        let sleeper = namespace.run(|| {
            Sleeper(
                Command::new("sleep")
                    .arg("30")
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        });
        let after = finder.discover(home);
        let found = after
            .found
            .iter()
            .find(|found| found.key == isolated)
            .unwrap_or_else(|| panic!("the namespace with a process in it was not found"));
        assert_eq!(found.pids, [sleeper.0.id()]);
        assert_eq!(found.name, None);
        let identity = finder.identify(found);
        assert_eq!(identity.pid, Some(sleeper.0.id()));
        assert_eq!(identity.comm.as_deref(), Some("sleep"));
        drop(sleeper);
        assert!(
            !after.found.iter().any(|found| found.key == home),
            "home was found"
        );
    }
}
