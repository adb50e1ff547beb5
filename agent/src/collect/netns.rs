//! Moving the collector thread between network namespaces with `setns`.
//!
//! A thread's network namespace decides what `/proc/sys/net`, `/proc/thread-self/net` and newly
//! opened sockets refer to. The collector thread lives in its home namespace (the agent's own, or
//! the one `--netns` names) and visits the others one at a time, always coming back.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use super::CollectError;
use super::namespaces::NamespaceKey;

/// The calling thread's own network namespace.
const THREAD_NAMESPACE: &str = "/proc/thread-self/ns/net";

/// Moves the calling thread into the network namespace at `path` for good.
pub fn enter_namespace(path: &Path) -> Result<(), CollectError> {
    let namespace_error = |source: io::Error| CollectError::Namespace {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(namespace_error)?;
    set_namespace(file.as_fd()).map_err(namespace_error)
}

/// The collector thread's home namespace, held open so the thread can always return to it.
#[derive(Debug)]
pub struct HomeNamespace {
    file: File,
    key: NamespaceKey,
}

impl HomeNamespace {
    /// The calling thread's current namespace.
    pub fn here() -> Result<HomeNamespace, CollectError> {
        let namespace_error = |source: io::Error| CollectError::Namespace {
            path: THREAD_NAMESPACE.into(),
            source,
        };
        let file = File::open(THREAD_NAMESPACE).map_err(namespace_error)?;
        let key = NamespaceKey::from(&file.metadata().map_err(namespace_error)?);
        Ok(HomeNamespace { file, key })
    }

    /// Which namespace home is.
    pub fn key(&self) -> NamespaceKey {
        self.key
    }

    /// Runs `work` on the calling thread inside the namespace at `path`, which must still be
    /// `expected` (a pid's namespace path may have become another's), then returns home.
    ///
    /// Fails with [`CollectError::Namespace`] if the namespace cannot be entered (the thread stays
    /// home), and with [`CollectError::NamespaceReturn`] if the thread cannot come back, after which
    /// it must not collect anything else. Should `work` panic, the thread returns home before the
    /// panic goes on.
    pub fn visit<R>(
        &self,
        path: &Path,
        expected: NamespaceKey,
        work: impl FnOnce() -> R,
    ) -> Result<R, CollectError> {
        let namespace_error = |source: io::Error| CollectError::Namespace {
            path: path.to_owned(),
            source,
        };
        let target = File::open(path).map_err(namespace_error)?;
        let key = NamespaceKey::from(&target.metadata().map_err(namespace_error)?);
        if key != expected {
            return Err(namespace_error(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "it is now namespace {} instead of {}",
                    key.inode, expected.inode
                ),
            )));
        }
        set_namespace(target.as_fd()).map_err(namespace_error)?;
        let away = Away {
            home: self.file.as_fd(),
            returned: false,
        };
        let result = work();
        away.come_back().map_err(CollectError::NamespaceReturn)?;
        Ok(result)
    }
}

/// The thread is away from home; dropping this without [`Away::come_back`] (a panic) still tries to
/// return.
struct Away<'a> {
    home: BorrowedFd<'a>,
    returned: bool,
}

impl Away<'_> {
    fn come_back(mut self) -> io::Result<()> {
        self.returned = true;
        set_namespace(self.home)
    }
}

impl Drop for Away<'_> {
    fn drop(&mut self) {
        if !self.returned {
            let _ = set_namespace(self.home);
        }
    }
}

fn set_namespace(namespace: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which the borrow keeps open for the call; it changes
    // the network namespace of the calling thread alone.
    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn visits_another_namespace_and_comes_back() {
        let namespace = sockfleet_testkit::IsolatedNamespace::new();
        let path = Path::new(namespace.path()).to_owned();
        let other = NamespaceKey::of(&path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let home = HomeNamespace::here().unwrap();
            assert_ne!(home.key(), other);
            let (inside, bound) = home
                .visit(&path, other, || {
                    // The port is free in the other namespace.
                    let bound = TcpListener::bind(("127.0.0.1", port)).is_ok();
                    (
                        NamespaceKey::of(Path::new(THREAD_NAMESPACE)).unwrap(),
                        bound,
                    )
                })
                .unwrap();
            assert_eq!(inside, other);
            assert!(bound);
            assert_eq!(
                NamespaceKey::of(Path::new(THREAD_NAMESPACE)).unwrap(),
                home.key()
            );

            // A path that is no longer the namespace expected is not entered.
            let wrong = NamespaceKey {
                inode: other.inode + 1,
                ..other
            };
            let refused = home.visit(&path, wrong, || panic!("entered the wrong namespace"));
            assert!(
                matches!(refused, Err(CollectError::Namespace { .. })),
                "{refused:?}"
            );
            let missing = home.visit(Path::new("/run/netns/sockfleet-no-such"), other, || ());
            assert!(
                matches!(missing, Err(CollectError::Namespace { .. })),
                "{missing:?}"
            );

            // A panic inside still brings the thread home.
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                home.visit(&path, other, || panic!("boom")).unwrap();
            }));
            assert!(panicked.is_err());
            assert_eq!(
                NamespaceKey::of(Path::new(THREAD_NAMESPACE)).unwrap(),
                home.key()
            );
        })
        .join()
        .unwrap();
        drop(listener);
    }
}
