//! Reading the tracked TCP sysctls from `/proc/sys`.

use std::io::ErrorKind;
use std::path::PathBuf;

use sockfleet_domain::{SysctlValues, TRACKED_SYSCTLS};

use super::CollectError;

/// Reads every tracked sysctl of the calling thread's network namespace.
///
/// A setting the kernel does not have (its file is missing) is reported as `None`; whitespace inside a
/// value (`ip_local_port_range` is tab-separated) is normalised to single spaces.
pub fn read_sysctls() -> Result<SysctlValues, CollectError> {
    let mut values = SysctlValues::new();
    for name in TRACKED_SYSCTLS {
        let path = sysctl_path(name);
        let value = match std::fs::read_to_string(&path) {
            Ok(raw) => Some(raw.split_whitespace().collect::<Vec<_>>().join(" ")),
            Err(error) if error.kind() == ErrorKind::NotFound => None,
            Err(source) => return Err(CollectError::Proc { path, source }),
        };
        values.insert((*name).to_owned(), value);
    }
    Ok(values)
}

fn sysctl_path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_tracked_sysctl() {
        let values = read_sysctls().unwrap();
        assert_eq!(values.len(), TRACKED_SYSCTLS.len());
        let fin_timeout = values["net.ipv4.tcp_fin_timeout"].as_deref().unwrap();
        assert!(fin_timeout.parse::<u32>().is_ok(), "{fin_timeout}");
        let range = values["net.ipv4.ip_local_port_range"].as_deref().unwrap();
        assert_eq!(range.split(' ').count(), 2, "{range:?}");
    }

    #[test]
    fn maps_dotted_names_to_paths() {
        assert_eq!(
            sysctl_path("net.core.somaxconn"),
            PathBuf::from("/proc/sys/net/core/somaxconn")
        );
    }
}
