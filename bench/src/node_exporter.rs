//! Prometheus node_exporter with only its `tcpstat` collector, started in the benchmark's namespace.

use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The Debian package's binary name, then upstream's.
const BINARIES: [&str; 2] = ["prometheus-node-exporter", "node_exporter"];
/// How long node_exporter may take to answer its first scrape.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds node_exporter on `PATH`.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| BINARIES.map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// `node_exporter --version`'s first line.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|out| {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// A running node_exporter; killed when dropped.
pub struct NodeExporter {
    child: Child,
    address: SocketAddr,
    /// Scrapes answered so far; each leaves one TIME_WAIT socket behind (node_exporter closes first).
    scrapes: Cell<u64>,
}

impl NodeExporter {
    /// Starts `binary` in the calling thread's network namespace, listening on a free port of
    /// 127.0.0.1, and waits until it answers a scrape.
    pub fn start(binary: &Path, log: &Path) -> anyhow::Result<NodeExporter> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|probe| probe.local_addr())
            .context("cannot find a free port")?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args([
                "--collector.disable-defaults",
                "--collector.tcpstat",
                &format!("--web.listen-address={address}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. If the thread that
        // started node_exporter ends without killing it, the kernel does.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut exporter = NodeExporter {
            child,
            address,
            scrapes: Cell::new(0),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = exporter
                .child
                .try_wait()
                .context("waiting for node_exporter")?
            {
                let errors = std::fs::read_to_string(log).unwrap_or_default();
                bail!("node_exporter exited at start ({status}):\n{errors}");
            }
            if exporter.scrape().is_ok() {
                return Ok(exporter);
            }
            if Instant::now() > deadline {
                bail!("node_exporter did not answer on {address} within {START_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Scrapes answered so far.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.get()
    }

    /// `GET /metrics` over HTTP/1.0; returns the body. Must run in node_exporter's namespace.
    pub fn scrape(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.address, SCRAPE_TIMEOUT)
            .with_context(|| format!("cannot connect to {}", self.address))?;
        stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .context("cannot read the /metrics response")?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status = head.lines().next().unwrap_or_default();
        if !status.contains(" 200") {
            bail!("/metrics answered {status:?}");
        }
        self.scrapes.set(self.scrapes.get() + 1);
        Ok(body.to_owned())
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
