//! Real `sockfleet-server` and `sockfleet-agent` processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary cargo built for these tests.
pub fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockfleet-server"))
}

/// The agent binary, built beside the server by the workspace build (`cargo build --workspace`).
pub fn agent_binary() -> PathBuf {
    let path = server_binary().with_file_name("sockfleet-agent");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub address: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts a server on `database_url` listening on `listen` (port 0 picks a free port) and waits until
    /// it prints its address.
    pub fn start(database_url: &str, listen: &str, extra: &[&str]) -> ServerProcess {
        let log =
            std::env::temp_dir().join(format!("sockfleet-server-{}.log", rand::random::<u64>()));
        let mut child = Command::new(server_binary())
            .args([
                "--listen",
                listen,
                "--database-url",
                database_url,
                "--log",
                "info,sockfleet=debug",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log file"))
            .spawn()
            .expect("start sockfleet-server");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let address = line
            .trim()
            .strip_prefix("sockfleet-server listening on http://")
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "server did not start (first line {line:?}); log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        ServerProcess {
            child,
            address,
            log,
        }
    }

    /// `http://ADDRESS`
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> String {
        terminate(&mut self.child, "sockfleet-server");
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running agent process; killed when dropped.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `sockfleet-agent --server URL` with extra flags. Other network namespaces are left out
    /// (`--all-namespaces=false`): they belong to whatever else runs on the machine.
    pub fn start(server_url: &str, extra: &[&str]) -> AgentProcess {
        let log =
            std::env::temp_dir().join(format!("sockfleet-agent-{}.log", rand::random::<u64>()));
        let child = Command::new(agent_binary())
            .args([
                "--server",
                server_url,
                "--log",
                "debug",
                "--all-namespaces=false",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log file"))
            .spawn()
            .expect("start sockfleet-agent");
        AgentProcess { child, log }
    }

    /// Sends SIGTERM, waits for a clean exit and returns the agent's log.
    pub fn stop(mut self) -> String {
        terminate(&mut self.child, "sockfleet-agent");
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn terminate(child: &mut Child, name: &str) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on a child we spawned and have not reaped yet, with a valid signal number.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => {
                assert!(
                    status.success(),
                    "{name} exited with {status} after SIGTERM"
                );
                return;
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("{name} did not exit within 20 s of SIGTERM");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
