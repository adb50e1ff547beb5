//! The agent the server can run for its own host (`--local-agent`), so one command shows a newcomer
//! their machine on the dashboard.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sockfleet_agent::collect::CollectorChoice;
use sockfleet_agent::config::{DEFAULT_MAX_NAMESPACES, all_namespaces_by_default};
use sockfleet_agent::identity::HostIdentity;
use sockfleet_agent::run::{AgentSettings, run_agent};
use sockfleet_agent::stream::BacklogLimits;
use sockfleet_domain::TopN;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Collection period of the local agent unless the server sets one for all agents.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Reports the local agent keeps while its server is busy.
const BACKLOG: usize = 8640;

/// Starts the in-process agent streaming to the server at `listen`; it stops (after delivering what it
/// holds) when `shutdown` is cancelled.
pub fn spawn(
    listen: SocketAddr,
    interval: Option<Duration>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let identity = match HostIdentity::detect(None) {
            Ok(identity) => identity,
            Err(error) => {
                tracing::error!(%error, "the local agent cannot identify this host; not starting it");
                return;
            }
        };
        let settings = AgentSettings {
            identity,
            labels: BTreeMap::from([("sockfleet.agent".to_owned(), "local".to_owned())]),
            interval: interval.unwrap_or(DEFAULT_INTERVAL),
            collector: CollectorChoice::Auto,
            netns: None,
            backlog: BACKLOG,
            // In the server's own process: memory only, with the agent's default bound.
            backlog_memory: BacklogLimits::DEFAULT_MEMORY_BYTES,
            spool: None,
            top_n: TopN::DEFAULT,
            all_namespaces: all_namespaces_by_default(),
            max_namespaces: DEFAULT_MAX_NAMESPACES as usize,
        };
        if let Err(error) = run_agent(settings, server_url(listen), shutdown).await {
            tracing::error!(error = format!("{error:#}"), "the local agent failed");
        }
    })
}

/// The URL at which the server itself is reachable: a wildcard listen address is reached on loopback.
fn server_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_become_loopback() {
        assert_eq!(
            server_url("0.0.0.0:7070".parse().unwrap()),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            server_url("[::]:7070".parse().unwrap()),
            "http://[::1]:7070"
        );
        assert_eq!(
            server_url("10.1.2.3:7070".parse().unwrap()),
            "http://10.1.2.3:7070"
        );
    }
}
