//! Sysctl advice that knows the kernel (`SysctlMisconfig`), and fleet drift (`SysctlDrift`): hosts of
//! one group whose TCP sysctls differ from the group's majority.

use std::collections::{BTreeMap, HashMap};

use sockfleet_domain::{HostId, SysctlValues};

use super::Finding;
use super::text::{annotations, count};
use crate::alerts::model::{Labels, Severity};
use crate::alerts::settings::{DriftRule, SysctlRule};

/// Ports in the default `ip_local_port_range` (32768–60999).
const DEFAULT_PORT_RANGE_SIZE: u64 = 28_232;
/// `tcp_fin_timeout`'s default, in seconds.
const DEFAULT_FIN_TIMEOUT: u64 = 60;

/// One piece of advice about one sysctl.
#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    pub sysctl: &'static str,
    pub value: String,
    pub severity: Severity,
    pub summary: String,
    pub description: String,
    pub action: &'static str,
}

fn number(sysctls: &SysctlValues, name: &str) -> Option<u64> {
    sysctls
        .get(name)
        .and_then(Option::as_deref)
        .and_then(|value| value.trim().parse().ok())
}

fn text<'a>(sysctls: &'a SysctlValues, name: &str) -> Option<&'a str> {
    sysctls.get(name).and_then(Option::as_deref)
}

/// Everything wrong with a scope's sysctls, as advice for people.
pub fn advice(sysctls: &SysctlValues) -> Vec<Advice> {
    let mut advice = Vec::new();
    if text(sysctls, "net.ipv4.tcp_tw_recycle").map(str::trim) == Some("1") {
        advice.push(Advice {
            sysctl: "net.ipv4.tcp_tw_recycle",
            value: "1".to_owned(),
            severity: Severity::Critical,
            summary: "tcp_tw_recycle is on".to_owned(),
            description: "net.ipv4.tcp_tw_recycle=1 drops SYNs from clients behind NAT (it trusts \
                          per-host TCP timestamps), and with the randomised timestamps of Linux \
                          4.10+ it breaks connections from everyone. Linux 4.12 removed it."
                .to_owned(),
            action: "Set net.ipv4.tcp_tw_recycle=0 now and remove it from /etc/sysctl.conf; advice \
                     found online to enable it is wrong. For clients short of ports use \
                     tcp_tw_reuse=1 instead.",
        });
    }
    if let (Some(buckets), Some(orphans)) = (
        number(sysctls, "net.ipv4.tcp_max_tw_buckets"),
        number(sysctls, "net.ipv4.tcp_max_orphans"),
    ) && buckets < orphans
    {
        advice.push(Advice {
            sysctl: "net.ipv4.tcp_max_tw_buckets",
            value: buckets.to_string(),
            severity: Severity::Warning,
            summary: "tcp_max_tw_buckets lowered below its default".to_owned(),
            description: format!(
                "net.ipv4.tcp_max_tw_buckets is {}; the kernel sets it, like tcp_max_orphans \
                 ({}), to half the established hash size at boot, so it was lowered. Past it \
                 closing sockets skip TIME_WAIT and are destroyed at once (TCPTimeWaitOverflow), \
                 which the kernel documentation warns against.",
                count(buckets),
                count(orphans)
            ),
            action: "Restore the default (or raise it); reduce TIME_WAIT by reusing connections \
                     instead.",
        });
    }
    if text(sysctls, "net.ipv4.tcp_syncookies").map(str::trim) == Some("0") {
        advice.push(Advice {
            sysctl: "net.ipv4.tcp_syncookies",
            value: "0".to_owned(),
            severity: Severity::Warning,
            summary: "SYN cookies are off".to_owned(),
            description: "net.ipv4.tcp_syncookies=0: under a SYN flood (or a burst bigger than \
                          tcp_max_syn_backlog) new connections are dropped instead of answered \
                          with cookies. The default is 1; it is a fallback, not a tuning."
                .to_owned(),
            action: "Set net.ipv4.tcp_syncookies=1.",
        });
    }
    if let Some(range) = text(sysctls, "net.ipv4.ip_local_port_range") {
        let mut bounds = range
            .split_whitespace()
            .filter_map(|bound| bound.parse::<u64>().ok());
        if let (Some(low), Some(high)) = (bounds.next(), bounds.next()) {
            let size = high.saturating_sub(low) + 1;
            let unprivileged =
                number(sysctls, "net.ipv4.ip_unprivileged_port_start").unwrap_or(1024);
            if low < unprivileged {
                advice.push(Advice {
                    sysctl: "net.ipv4.ip_local_port_range",
                    value: format!("{low} {high}"),
                    severity: Severity::Warning,
                    summary: "Local port range starts among privileged ports".to_owned(),
                    description: format!(
                        "net.ipv4.ip_local_port_range starts at {low}, below \
                         ip_unprivileged_port_start ({unprivileged}): outgoing connections can \
                         take ports that services expect to bind."
                    ),
                    action: "Start the range at or above ip_unprivileged_port_start (the default \
                             is 32768 60999); reserve ports with ip_local_reserved_ports.",
                });
            } else if size < DEFAULT_PORT_RANGE_SIZE {
                advice.push(Advice {
                    sysctl: "net.ipv4.ip_local_port_range",
                    value: format!("{low} {high}"),
                    severity: Severity::Warning,
                    summary: "Local port range narrower than the default".to_owned(),
                    description: format!(
                        "net.ipv4.ip_local_port_range gives {} ports, fewer than the default's {} \
                         (32768–60999): each destination can take fewer connections a minute \
                         before connect() fails with EADDRNOTAVAIL.",
                        count(size),
                        count(DEFAULT_PORT_RANGE_SIZE)
                    ),
                    action: "Widen the range (e.g. 10240 65535 on a client), keeping clear of \
                             ports services bind.",
                });
            }
        }
    }
    if let Some(fin_timeout) = number(sysctls, "net.ipv4.tcp_fin_timeout")
        && fin_timeout < DEFAULT_FIN_TIMEOUT
    {
        advice.push(Advice {
            sysctl: "net.ipv4.tcp_fin_timeout",
            value: fin_timeout.to_string(),
            severity: Severity::Warning,
            summary: "tcp_fin_timeout lowered: it does not shorten TIME_WAIT".to_owned(),
            description: format!(
                "net.ipv4.tcp_fin_timeout is {fin_timeout} s (default 60). It only limits how long \
                 an orphaned socket stays in FIN_WAIT2; TIME_WAIT lasts a fixed 60 s \
                 (TCP_TIMEWAIT_LEN) whatever this says."
            ),
            action: "If it was lowered to fight TIME_WAIT, restore 60 and reduce connection churn \
                     instead (keep-alive, pooling, tcp_tw_reuse=1 on clients).",
        });
    }
    advice
}

/// `SysctlMisconfig` findings for a scope: one per piece of advice not ignored.
pub fn misconfig(sample: &super::Sample<'_>, settings: &SysctlRule) -> Vec<Finding> {
    advice(sample.sysctls)
        .into_iter()
        .filter(|advice| !settings.ignore.contains(advice.sysctl))
        .map(|advice| Finding {
            subject: format!("sysctl:{}", advice.sysctl),
            severity: advice.severity,
            value: advice.value.parse().unwrap_or(0.0),
            labels: Labels::from([
                ("sysctl".to_owned(), advice.sysctl.to_owned()),
                ("value".to_owned(), advice.value),
            ]),
            annotations: annotations(
                format!("{} {}", advice.summary, sample.place()),
                advice.description,
                advice.action,
            ),
        })
        .collect()
}

/// A host whose sysctl differs from its group's majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub host_id: HostId,
    /// `label=value` of the group.
    pub group: String,
    pub sysctl: String,
    pub value: Option<String>,
    pub majority: Option<String>,
    /// Hosts in the group, and how many have the majority value.
    pub group_size: usize,
    pub majority_size: usize,
}

/// The hosts that differ from the strict majority (more than half) of a group sharing the value of
/// one of `settings.group_labels`, for every sysctl not ignored.
pub fn drift_candidates(
    hosts: &[(HostId, Labels, SysctlValues)],
    settings: &DriftRule,
) -> Vec<Drift> {
    let mut drifts = Vec::new();
    for label in &settings.group_labels {
        let mut groups: BTreeMap<&str, Vec<&(HostId, Labels, SysctlValues)>> = BTreeMap::new();
        for host in hosts {
            if let Some(value) = host.1.get(label) {
                groups.entry(value.as_str()).or_default().push(host);
            }
        }
        for (group_value, members) in groups {
            if members.len() < usize::try_from(settings.min_hosts).unwrap_or(usize::MAX) {
                continue;
            }
            let names: std::collections::BTreeSet<&String> = members
                .iter()
                .flat_map(|(_, _, sysctls)| sysctls.keys())
                .filter(|name| !settings.ignore.contains(*name))
                .collect();
            for name in names {
                let mut tally: HashMap<Option<&str>, usize> = HashMap::new();
                for (_, _, sysctls) in &members {
                    let value = sysctls.get(name).and_then(Option::as_deref);
                    *tally.entry(value).or_default() += 1;
                }
                let Some((majority, majority_size)) = tally
                    .iter()
                    .max_by_key(|(value, size)| (**size, std::cmp::Reverse(**value)))
                    .map(|(value, size)| (*value, *size))
                else {
                    continue;
                };
                if majority_size * 2 <= members.len() {
                    continue;
                }
                for (host_id, _, sysctls) in &members {
                    let value = sysctls.get(name).and_then(Option::as_deref);
                    if value != majority {
                        drifts.push(Drift {
                            host_id: host_id.clone(),
                            group: format!("{label}={group_value}"),
                            sysctl: name.clone(),
                            value: value.map(str::to_owned),
                            majority: majority.map(str::to_owned),
                            group_size: members.len(),
                            majority_size,
                        });
                    }
                }
            }
        }
    }
    drifts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(pairs: &[(&str, &str)]) -> SysctlValues {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Some((*value).to_owned())))
            .collect()
    }

    fn names(sysctls: &SysctlValues) -> Vec<&'static str> {
        advice(sysctls).iter().map(|advice| advice.sysctl).collect()
    }

    #[test]
    fn defaults_get_no_advice() {
        let defaults = sysctls(&[
            ("net.ipv4.tcp_fin_timeout", "60"),
            ("net.ipv4.tcp_max_tw_buckets", "262144"),
            ("net.ipv4.tcp_max_orphans", "262144"),
            ("net.ipv4.tcp_syncookies", "1"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.ip_unprivileged_port_start", "1024"),
        ]);
        assert!(advice(&defaults).is_empty());
        let mut without_recycle = defaults.clone();
        without_recycle.insert("net.ipv4.tcp_tw_recycle".to_owned(), None);
        assert!(
            advice(&without_recycle).is_empty(),
            "a kernel without it is fine"
        );
    }

    #[test]
    fn each_misconfiguration_is_named() {
        let recycle = sysctls(&[("net.ipv4.tcp_tw_recycle", "1")]);
        assert_eq!(advice(&recycle)[0].severity, Severity::Critical);
        assert_eq!(
            names(&sysctls(&[
                ("net.ipv4.tcp_max_tw_buckets", "5000"),
                ("net.ipv4.tcp_max_orphans", "65536"),
            ])),
            ["net.ipv4.tcp_max_tw_buckets"]
        );
        assert_eq!(
            names(&sysctls(&[("net.ipv4.tcp_syncookies", "0")])),
            ["net.ipv4.tcp_syncookies"]
        );
        assert_eq!(
            names(&sysctls(&[("net.ipv4.ip_local_port_range", "40000 50000")])),
            ["net.ipv4.ip_local_port_range"]
        );
        let privileged = advice(&sysctls(&[("net.ipv4.ip_local_port_range", "500 65535")]));
        assert!(privileged[0].summary.contains("privileged"));
        let fin = advice(&sysctls(&[("net.ipv4.tcp_fin_timeout", "15")]));
        assert!(fin[0].description.contains("TIME_WAIT lasts a fixed 60 s"));
    }

    #[test]
    fn drift_names_the_host_that_differs_from_its_group() {
        let host = |id: &str, role: &str, reuse: &str| {
            (
                HostId::parse(id).unwrap(),
                Labels::from([("role".to_owned(), role.to_owned())]),
                sysctls(&[("net.ipv4.tcp_tw_reuse", reuse)]),
            )
        };
        let hosts = [
            host("a", "web", "2"),
            host("b", "web", "2"),
            host("c", "web", "1"),
            host("d", "db", "1"),
        ];
        let settings = DriftRule {
            enabled: true,
            severity: Severity::Info,
            group_labels: vec!["role".to_owned()],
            min_hosts: 3,
            ignore: Default::default(),
        };
        let drifts = drift_candidates(&hosts, &settings);
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(drifts[0].host_id.as_str(), "c");
        assert_eq!(drifts[0].majority.as_deref(), Some("2"));
        assert_eq!(drifts[0].group, "role=web");
    }
}
