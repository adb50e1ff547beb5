//! A network namespace of the test's own, so socket counts there are exact while other tests run.

use std::io;
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use crate::command::run;

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a fresh network namespace (loopback up) that runs closures on request.
///
/// Sockets the closures open belong to that namespace; processes they start inherit it. Other processes
/// reach it through [`IsolatedNamespace::path`], e.g. `sockfleet-agent --netns PATH`. Needs root
/// (CAP_SYS_ADMIN): without it the constructor panics rather than letting a test skip.
pub struct IsolatedNamespace {
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<thread::JoinHandle<()>>,
    path: String,
}

impl IsolatedNamespace {
    /// Starts the thread and moves it into a new network namespace.
    pub fn new() -> IsolatedNamespace {
        let (jobs, incoming) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("isolated-netns".into())
            .spawn(move || {
                // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread (and the
                // processes it starts from now on) into a new network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                run(Command::new("ip").args(["link", "set", "lo", "up"]));
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                let _ = ready_tx.send(Ok(format!(
                    "/proc/{}/task/{tid}/ns/net",
                    std::process::id()
                )));
                for job in incoming {
                    job();
                }
            })
            .unwrap_or_else(|error| panic!("cannot start the namespace thread: {error}"));
        let path = match ready_rx.recv() {
            Ok(Ok(path)) => path,
            Ok(Err(error)) => panic!(
                "unshare(CLONE_NEWNET) failed: {error}. Tests that count sockets need root \
                 (CAP_SYS_ADMIN) to work in a network namespace of their own"
            ),
            Err(_) => panic!("the namespace thread died while starting"),
        };
        IsolatedNamespace {
            jobs: Some(jobs),
            worker: Some(worker),
            path,
        }
    }

    /// `/proc/PID/task/TID/ns/net` of the namespace, valid while this value lives.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `job` inside the namespace and returns its result; a panic in `job` is re-raised here.
    pub fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (result_tx, result_rx) = mpsc::channel();
        let wrapped: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let _ = result_tx.send(outcome);
        });
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(wrapped).ok())
            .unwrap_or_else(|| panic!("the namespace thread has stopped"));
        match result_rx.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the namespace thread stopped while running a job"),
        }
    }
}

impl Default for IsolatedNamespace {
    fn default() -> IsolatedNamespace {
        IsolatedNamespace::new()
    }
}

impl Drop for IsolatedNamespace {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
