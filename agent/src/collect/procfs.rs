//! Counting TCP sockets from the `/proc` text tables, for kernels or sandboxes without netlink
//! `sock_diag`.
//!
//! The tables are read through `/proc/thread-self`, so a collector thread that entered another
//! network namespace with `setns` sees that namespace's sockets (`/proc/self/net` follows the
//! process's main thread instead).

use std::io;
use std::path::Path;

use ::procfs::net::TcpNetEntries;
use ::procfs::{FromReadSI, ProcError};
use sockfleet_domain::{FamilyCounts, StateCounts, TcpState};

use super::CollectError;

/// The IPv4 table of the calling thread's network namespace.
const TCP4_TABLE: &str = "/proc/thread-self/net/tcp";
/// The IPv6 table; absent when IPv6 is disabled.
const TCP6_TABLE: &str = "/proc/thread-self/net/tcp6";

/// Counts every TCP socket of the calling thread's network namespace by family and state from
/// `/proc/thread-self/net/tcp{,6}`; the fallback when netlink is unavailable.
///
/// A missing IPv6 table (IPv6 disabled) counts as no IPv6 sockets.
pub fn count_from_proc() -> Result<FamilyCounts, CollectError> {
    let mut counts = FamilyCounts::default();
    count_table(Path::new(TCP4_TABLE), false, &mut counts.ipv4)?;
    count_table(Path::new(TCP6_TABLE), true, &mut counts.ipv6)?;
    Ok(counts)
}

/// Adds the sockets of one table to `counts`; a missing table is empty when `missing_is_empty`.
fn count_table(
    path: &Path,
    missing_is_empty: bool,
    counts: &mut StateCounts,
) -> Result<(), CollectError> {
    let table = match TcpNetEntries::from_file(path, ::procfs::current_system_info()) {
        Ok(table) => table,
        Err(ProcError::NotFound(_)) if missing_is_empty => return Ok(()),
        Err(error) => return Err(read_error(path, error)),
    };
    for entry in &table.0 {
        let number = entry.state.to_u8();
        let state = TcpState::from_diag(number).ok_or_else(|| CollectError::ProcMalformed {
            path: path.to_owned(),
            line: format!("a socket in unknown state {number:02X}"),
        })?;
        counts.increment(state);
    }
    Ok(())
}

fn read_error(path: &Path, error: ProcError) -> CollectError {
    let failed = |source: io::Error| CollectError::Proc {
        path: path.to_owned(),
        source,
    };
    match error {
        ProcError::Io(source, _) => failed(source),
        ProcError::NotFound(_) => failed(io::ErrorKind::NotFound.into()),
        ProcError::PermissionDenied(_) => failed(io::ErrorKind::PermissionDenied.into()),
        ProcError::Incomplete(_) | ProcError::Other(_) | ProcError::InternalError(_) => {
            CollectError::ProcMalformed {
                path: path.to_owned(),
                line: error.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn counts_an_open_listener_and_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let counts = count_from_proc().unwrap();
        assert!(counts.ipv4.get(TcpState::Listen) >= 1, "{counts:?}");
        assert!(counts.ipv4.get(TcpState::Established) >= 2, "{counts:?}");
        drop((client, server, listener));
    }

    #[test]
    fn counts_an_ipv6_listener() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return;
        };
        let counts = count_from_proc().unwrap();
        assert!(counts.ipv6.get(TcpState::Listen) >= 1, "{counts:?}");
        drop(listener);
    }

    #[test]
    fn missing_ipv6_table_is_empty_but_missing_ipv4_table_is_an_error() {
        let missing = Path::new("/proc/thread-self/net/no-such-table");
        let mut counts = StateCounts::default();
        count_table(missing, true, &mut counts).unwrap();
        assert_eq!(counts, StateCounts::default());
        match count_table(missing, false, &mut counts) {
            Err(CollectError::Proc { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_table_is_an_error() {
        let dir =
            std::env::temp_dir().join(format!("sockfleet-procfs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = dir.join("tcp");
        std::fs::write(
            &table,
            "  sl  local_address rem_address   st\n   0: garbage\n",
        )
        .unwrap();
        let outcome = count_table(&table, false, &mut StateCounts::default());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(outcome, Err(CollectError::ProcMalformed { .. })),
            "{outcome:?}"
        );
    }
}
