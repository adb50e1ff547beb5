//! Who this host is: its stable id, hostname and kernel release.

use std::io;
use std::path::Path;

use sockfleet_domain::{HostId, InvalidHostId};

/// Why the host's identity could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read a machine id from /etc/machine-id or /var/lib/dbus/machine-id ({0}); pass --host-id"
    )]
    NoMachineId(#[source] io::Error),
    #[error("invalid host id {id:?}: {reason}")]
    InvalidHostId { id: String, reason: InvalidHostId },
}

/// The facts about this host that every hello and snapshot carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    pub host_id: HostId,
    pub hostname: String,
    pub kernel_release: String,
}

impl HostIdentity {
    /// Reads the identity of the running host; `configured_id` overrides the machine id.
    pub fn detect(configured_id: Option<&str>) -> Result<HostIdentity, IdentityError> {
        let raw_id = match configured_id {
            Some(id) => id.to_owned(),
            None => read_machine_id()?,
        };
        let host_id = HostId::parse(&raw_id).map_err(|reason| IdentityError::InvalidHostId {
            id: raw_id.clone(),
            reason,
        })?;
        Ok(HostIdentity {
            host_id,
            hostname: read_trimmed(Path::new("/proc/sys/kernel/hostname")).unwrap_or_default(),
            kernel_release: read_trimmed(Path::new("/proc/sys/kernel/osrelease"))
                .unwrap_or_default(),
        })
    }
}

fn read_machine_id() -> Result<String, IdentityError> {
    read_trimmed(Path::new("/etc/machine-id"))
        .or_else(|_| read_trimmed(Path::new("/var/lib/dbus/machine-id")))
        .map_err(IdentityError::NoMachineId)
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_id_wins_and_is_validated() {
        let identity = HostIdentity::detect(Some("web-1")).unwrap();
        assert_eq!(identity.host_id.as_str(), "web-1");
        assert!(!identity.kernel_release.is_empty());
        assert!(matches!(
            HostIdentity::detect(Some("bad id")),
            Err(IdentityError::InvalidHostId { .. })
        ));
    }
}
