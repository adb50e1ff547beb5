//! Which container a process runs in, told from its cgroup path, and the Kubernetes pod it belongs
//! to: the names a network namespace gets in reports besides its inode.
//!
//! Container runtimes put each container in a cgroup named after its 64-hex-digit id:
//! - Docker: `/docker/<id>` (cgroupfs driver) or `/system.slice/docker-<id>.scope` (systemd driver);
//! - containerd (CRI): `/kubepods/burstable/pod<uid>/<id>`, or with the systemd driver
//!   `/kubepods.slice/.../cri-containerd-<id>.scope` (`...:cri-containerd:<id>` on cgroup v1);
//! - CRI-O: `crio-<id>.scope`; podman: `libpod-<id>.scope`.
//!
//! The monitor processes next to them (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`) are not
//! containers and are not taken for them.

use std::fs;
use std::path::Path;

/// Prefixes of a cgroup name that end in a container id.
const RUNTIME_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];
/// Length of a container id in hex digits.
const CONTAINER_ID_LEN: usize = 64;
/// Longest hostname Linux allows (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// The container id in the text of a `/proc/PID/cgroup` file: the deepest cgroup path component that
/// is a container id (bare or with a runtime's prefix and `.scope`). `None` for a process outside
/// containers (plain systemd services, user sessions).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        // `HIERARCHY:CONTROLLERS:PATH`; the path may itself hold colons.
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .filter_map(|path| path.split(['/', ':']).rev().find_map(id_in_component))
        .next()
        .map(str::to_owned)
}

/// Whether the process is in a Kubernetes pod's cgroup.
pub fn in_kubernetes_pod(cgroup: &str) -> bool {
    cgroup.contains("kubepods")
}

/// The hostname a pod's processes see, which Kubernetes sets to the pod's name: the first line of
/// `/etc/hostname` in the process's root (`PROC/PID/root/etc/hostname`). `None` if it cannot be
/// read or is not a hostname.
pub fn pod_hostname(proc_root: &Path, pid: u32) -> Option<String> {
    let path = proc_root.join(pid.to_string()).join("root/etc/hostname");
    let text = fs::read_to_string(path).ok()?;
    let name = text.lines().next()?.trim();
    let valid = !name.is_empty()
        && name.len() <= HOST_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    valid.then(|| name.to_owned())
}

/// The container id a cgroup path component names, if it names one.
fn id_in_component(component: &str) -> Option<&str> {
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| component.strip_prefix(prefix))
        .map_or(component, |rest| {
            rest.strip_suffix(".scope").unwrap_or(rest)
        });
    let is_id = id.len() == CONTAINER_ID_LEN
        && id
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    is_id.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a6f3e7d2c1b0a99887766554433221100ffeeddccbbaa998877665544332211";

    #[test]
    fn finds_the_ids_of_every_runtime() {
        let cases = [
            // Docker, cgroupfs driver, cgroup v1 and v2.
            format!("12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n"),
            format!("0::/docker/{ID}\n"),
            // Docker, systemd driver.
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // containerd under Kubernetes: cgroupfs driver, systemd driver, and the v1 form of it.
            format!("0::/kubepods/besteffort/pod0f1e2d3c-aaaa-bbbb-cccc-0123456789ab/{ID}\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod0f1e2d3c_aaaa_bbbb_cccc_0123456789ab.slice/cri-containerd-{ID}.scope\n"
            ),
            format!(
                "1:name=systemd:/system.slice/containerd.service/\
                 kubepods-burstable-pod0f1e2d3c_aaaa.slice:cri-containerd:{ID}\n"
            ),
            // CRI-O and podman.
            format!("0::/kubepods.slice/kubepods-pod1234.slice/crio-{ID}.scope\n"),
            format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
        ];
        for cgroup in &cases {
            assert_eq!(container_id(cgroup).as_deref(), Some(ID), "{cgroup}");
        }
        assert!(in_kubernetes_pod(&cases[3]));
        assert!(in_kubernetes_pod(&cases[6]));
        assert!(!in_kubernetes_pod(&cases[0]));
    }

    #[test]
    fn processes_outside_containers_have_none() {
        let cases = [
            "0::/system.slice/sshd.service\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/\n",
            // A 32-digit id (a machine id, a job id) is no container id.
            "4:memory:/process_api/b1ff0de5ea0007b14c561d8aecf169f9\n0::/\n",
            // Monitors next to containers.
            &format!("0::/machine.slice/libpod-conmon-{ID}.scope\n"),
            &format!("0::/system.slice/crio-conmon-{ID}.scope\n"),
            // Upper-case or too long.
            &format!("0::/docker/{}\n", ID.to_uppercase()),
            &format!("0::/docker/{ID}0\n"),
            "",
            "garbage without colons\n",
        ];
        for cgroup in cases {
            assert_eq!(container_id(cgroup), None, "{cgroup}");
        }
    }

    #[test]
    fn reads_a_pod_hostname_from_the_process_root() {
        let root =
            std::env::temp_dir().join(format!("sockfleet-container-test-{}", std::process::id()));
        let etc = root.join("42/root/etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("hostname"), "web-7d4b9c-x2x7q\n").unwrap();
        assert_eq!(pod_hostname(&root, 42).as_deref(), Some("web-7d4b9c-x2x7q"));
        fs::write(etc.join("hostname"), "bad\u{1b}[31mname\n").unwrap();
        assert_eq!(pod_hostname(&root, 42), None);
        fs::write(etc.join("hostname"), "\n").unwrap();
        assert_eq!(pod_hostname(&root, 42), None);
        assert_eq!(pod_hostname(&root, 43), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
