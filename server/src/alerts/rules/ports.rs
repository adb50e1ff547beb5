//! `EphemeralPortPressure`: how close `connect()` to one destination is to running out of local ports.

use std::collections::HashSet;

use super::text::{annotations, count, percent};
use super::{Finding, Sample, Trackers};
use crate::alerts::hysteresis::Thresholds;
use crate::alerts::model::{Labels, RuleName};
use crate::alerts::settings::Rules;

/// Sockets per (local IP, remote IP, remote port) / usable local ports, per destination in the top-N.
pub fn pressure(
    sample: &Sample<'_>,
    rules: &Rules,
    trackers: &mut Trackers<'_>,
) -> Option<Vec<Finding>> {
    let breakdowns = sample.breakdowns?;
    let usable = breakdowns.usable_local_ports;
    if usable == 0 {
        return None;
    }
    let rule = RuleName::EphemeralPortPressure;
    let thresholds = Thresholds::of(&rules.ephemeral_port_pressure);
    let mut findings = Vec::new();
    let mut seen = HashSet::new();
    for destination in &breakdowns.destinations {
        let subject = format!(
            "dst:{}->{}",
            destination.local_ip,
            std::net::SocketAddr::new(destination.remote_ip, destination.remote_port)
        );
        seen.insert(subject.clone());
        let ratio = f64::from(destination.ephemeral) / f64::from(usable);
        let Some(severity) = trackers.level(rule, &subject, ratio, &thresholds) else {
            continue;
        };
        let remote = std::net::SocketAddr::new(destination.remote_ip, destination.remote_port);
        findings.push(Finding {
            subject,
            severity,
            value: ratio,
            labels: Labels::from([
                ("remote".to_owned(), remote.to_string()),
                ("local_ip".to_owned(), destination.local_ip.to_string()),
            ]),
            annotations: annotations(
                format!(
                    "Local ports to {remote} at {} of the usable range {}",
                    percent(ratio),
                    sample.place()
                ),
                format!(
                    "{} sockets from {} to {remote} hold a local port ({} of them in TIME_WAIT); \
                     {} ports are usable (ip_local_port_range minus ip_local_reserved_ports). At \
                     100% connect() fails with EADDRNOTAVAIL.",
                    count(u64::from(destination.ephemeral)),
                    destination.local_ip,
                    count(u64::from(destination.time_wait)),
                    count(u64::from(usable))
                ),
                "Reuse connections to this destination (keep-alive, pooling); spread them over more \
                 source addresses or destination ports; on this client net.ipv4.tcp_tw_reuse=1 \
                 lets new connections take TIME_WAIT ports; widen ip_local_port_range if it was \
                 narrowed.",
            ),
        });
    }
    // A destination that left the top-N (or has no sockets any more) is below its levels.
    for subject in trackers.subjects(rule) {
        if !seen.contains(&subject) {
            trackers.forget(rule, &subject);
        }
    }
    Some(findings)
}
