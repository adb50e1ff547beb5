//! Checking what agents send and turning it into domain types. Every limit is explicit here.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use std::net::{IpAddr, SocketAddr};

use sockfleet_domain::{
    AgentHello, Attribution, Breakdowns, CloseWaitSocket, Collector, DestinationUse, FamilyCounts,
    HostId, KernelCounters, ListenQueue, NamespaceIdentity, NamespaceReport, Omitted,
    ProcessCloseWait, Report, StateCounts, SysctlValues,
};
use sockfleet_proto::v1;

/// Largest plausible number of sockets in one state of one family (far above what a host can hold).
pub const MAX_STATE_COUNT: u64 = 10_000_000;
/// Highest sequence number the databases can hold (a signed 64-bit column).
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;
/// Largest kernel counter accepted (the databases hold signed 64-bit integers).
pub const MAX_COUNTER: u64 = i64::MAX as u64;
/// Most network namespaces one report may carry besides the agent's own.
pub const MAX_NAMESPACES: usize = 1024;
/// Most entries in one breakdown list (the agent's largest top-N).
pub const MAX_BREAKDOWN_ENTRIES: usize = 1000;
/// Most sysctls one report may carry.
pub const MAX_SYSCTLS: usize = 128;
/// Longest sysctl name, in bytes.
pub const MAX_SYSCTL_NAME: usize = 128;
/// Longest sysctl value, in bytes (`ip_local_reserved_ports` can be a long list).
pub const MAX_SYSCTL_VALUE: usize = 4096;
/// Most labels one host may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Longest free-text field (hostname, kernel release, agent version, run id), in bytes.
pub const MAX_TEXT: usize = 255;
/// How far in the future a collection time may be (clock skew).
pub const MAX_CLOCK_AHEAD: TimeDelta = TimeDelta::minutes(10);
/// How old a collection time may be (an agent's backlog after a long outage).
pub const MAX_REPORT_AGE: TimeDelta = TimeDelta::days(30);
/// Collection periods an agent may announce.
pub const INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// Why a message was refused; the text names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Validates a hello (its protocol version is checked by the caller).
pub fn hello(message: v1::Hello) -> Result<AgentHello, Invalid> {
    let host_id =
        HostId::parse(&message.host_id).map_err(|e| invalid("hello.host_id", e.to_string()))?;
    let collector = Collector::from_name(&message.collector).ok_or_else(|| {
        invalid(
            "hello.collector",
            format!(
                "{:?} is not a known collector (netlink, procfs)",
                message.collector
            ),
        )
    })?;
    let interval = Duration::from_millis(u64::from(message.interval_ms));
    if !INTERVAL_RANGE.contains(&interval) {
        return Err(invalid(
            "hello.interval_ms",
            format!(
                "{} ms is outside {}..={} ms",
                message.interval_ms,
                INTERVAL_RANGE.start().as_millis(),
                INTERVAL_RANGE.end().as_millis()
            ),
        ));
    }
    let run_id = text("hello.run_id", message.run_id)?;
    if run_id.is_empty() {
        return Err(invalid("hello.run_id", "must not be empty"));
    }
    Ok(AgentHello {
        host_id,
        hostname: text("hello.hostname", message.hostname)?,
        kernel_release: text("hello.kernel_release", message.kernel_release)?,
        agent_version: text("hello.agent_version", message.agent_version)?,
        labels: labels(message.labels)?,
        run_id,
        collector,
        interval,
    })
}

fn text(field: &str, value: String) -> Result<String, Invalid> {
    if value.len() > MAX_TEXT {
        return Err(invalid(
            field,
            format!("{} bytes long; at most {MAX_TEXT} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(value)
}

fn labels(
    raw: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Invalid> {
    if raw.len() > MAX_LABELS {
        return Err(invalid(
            "hello.labels",
            format!("{} labels; at most {MAX_LABELS} allowed", raw.len()),
        ));
    }
    let mut labels = BTreeMap::new();
    for (key, value) in raw {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
        if !key_ok {
            return Err(invalid(
                format!("hello.labels[{key:?}]"),
                format!(
                    "a key must be 1-{MAX_LABEL_KEY} ASCII letters, digits, '_', '.', '-' or '/'"
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
            return Err(invalid(
                format!("hello.labels[{key:?}]"),
                format!(
                    "a value must be at most {MAX_LABEL_VALUE} bytes without control characters"
                ),
            ));
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

/// Validates a report against the current time `now`.
pub fn report(message: v1::Report, now: DateTime<Utc>) -> Result<(Report, u64), Invalid> {
    if message.sequence == 0 || message.sequence > MAX_SEQUENCE {
        return Err(invalid(
            "report.sequence",
            format!("{} is outside 1..={MAX_SEQUENCE}", message.sequence),
        ));
    }
    let timestamp = message
        .collected_at
        .ok_or_else(|| invalid("report.collected_at", "missing"))?;
    let collected_at = time("report.collected_at", timestamp)?;
    if collected_at > now + MAX_CLOCK_AHEAD {
        return Err(invalid(
            "report.collected_at",
            format!(
                "{collected_at} is more than 10 minutes ahead of the server's clock ({now}); check the host's clock"
            ),
        ));
    }
    if collected_at < now - MAX_REPORT_AGE {
        return Err(invalid(
            "report.collected_at",
            format!("{collected_at} is more than 30 days old"),
        ));
    }
    let states = FamilyCounts {
        ipv4: state_counts("report.ipv4", message.ipv4)?,
        ipv6: state_counts("report.ipv6", message.ipv6)?,
    };
    let report = Report {
        sequence: message.sequence,
        collected_at,
        states,
        sysctls: sysctls(message.sysctls)?,
        kernel: message.kernel.map(kernel_counters).transpose()?,
        breakdowns: message.breakdowns.map(breakdowns).transpose()?,
        namespaces: namespaces(message.namespaces)?,
    };
    Ok((report, message.dropped_reports))
}

fn state_counts(field: &str, counts: Option<v1::StateCounts>) -> Result<StateCounts, Invalid> {
    let Some(counts) = counts else {
        return Err(invalid(field, "missing"));
    };
    let values = [
        counts.established,
        counts.syn_sent,
        counts.syn_recv,
        counts.fin_wait1,
        counts.fin_wait2,
        counts.time_wait,
        counts.close,
        counts.close_wait,
        counts.last_ack,
        counts.listen,
        counts.closing,
    ];
    let parsed = StateCounts::from_array(values);
    if let Some((state, count)) = parsed.iter().find(|(_, count)| *count > MAX_STATE_COUNT) {
        return Err(invalid(
            format!("{field}.{state}"),
            format!("{count} is not a plausible socket count (at most {MAX_STATE_COUNT})"),
        ));
    }
    Ok(parsed)
}

fn namespaces(raw: Vec<v1::NamespaceReport>) -> Result<Vec<NamespaceReport>, Invalid> {
    if raw.len() > MAX_NAMESPACES {
        return Err(invalid(
            "report.namespaces",
            format!("{} namespaces; at most {MAX_NAMESPACES} allowed", raw.len()),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(raw.len());
    raw.into_iter()
        .enumerate()
        .map(|(index, namespace)| {
            let field = format!("report.namespaces[{index}]");
            if namespace.inode == 0 || namespace.inode > MAX_COUNTER {
                return Err(invalid(
                    format!("{field}.inode"),
                    format!("{} is not a namespace inode", namespace.inode),
                ));
            }
            if !seen.insert(namespace.inode) {
                return Err(invalid(
                    format!("{field}.inode"),
                    format!("namespace {} is listed twice", namespace.inode),
                ));
            }
            Ok(NamespaceReport {
                inode: namespace.inode,
                identity: namespace_identity(&field, namespace.identity.unwrap_or_default())?,
                states: FamilyCounts {
                    ipv4: state_counts(&format!("{field}.ipv4"), namespace.ipv4)?,
                    ipv6: state_counts(&format!("{field}.ipv6"), namespace.ipv6)?,
                },
                sysctls: sysctls(namespace.sysctls)?,
                kernel: namespace.kernel.map(kernel_counters).transpose()?,
                breakdowns: namespace.breakdowns.map(breakdowns).transpose()?,
            })
        })
        .collect()
}

fn namespace_identity(
    field: &str,
    raw: v1::NamespaceIdentity,
) -> Result<NamespaceIdentity, Invalid> {
    let text = |name: &str, value: String| -> Result<Option<String>, Invalid> {
        if value.len() > NamespaceIdentity::MAX_TEXT_LEN || value.chars().any(char::is_control) {
            return Err(invalid(
                format!("{field}.identity.{name}"),
                format!(
                    "must be at most {} bytes without control characters",
                    NamespaceIdentity::MAX_TEXT_LEN
                ),
            ));
        }
        Ok((!value.is_empty()).then_some(value))
    };
    Ok(NamespaceIdentity {
        name: text("name", raw.name)?,
        container_id: text("container_id", raw.container_id)?,
        pod: text("pod", raw.pod)?,
        pid: (raw.pid != 0).then_some(raw.pid),
        comm: text("comm", raw.comm)?,
    })
}

fn time(field: &str, timestamp: prost_types::Timestamp) -> Result<DateTime<Utc>, Invalid> {
    u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .ok_or_else(|| invalid(field, "not a valid timestamp"))
}

fn ip(field: &str, bytes: &[u8]) -> Result<IpAddr, Invalid> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(invalid(
        field,
        format!(
            "{} bytes is not an IPv4 (4) or IPv6 (16) address",
            bytes.len()
        ),
    ))
}

fn port(field: &str, port: u32) -> Result<u16, Invalid> {
    u16::try_from(port).map_err(|_| invalid(field, format!("{port} is not a port")))
}

fn endpoint(field: &str, endpoint: Option<v1::Endpoint>) -> Result<SocketAddr, Invalid> {
    let endpoint = endpoint.ok_or_else(|| invalid(field, "missing"))?;
    Ok(SocketAddr::new(
        ip(&format!("{field}.ip"), &endpoint.ip)?,
        port(&format!("{field}.port"), endpoint.port)?,
    ))
}

/// Converts breakdowns, then checks the invariants the domain type documents.
fn breakdowns(raw: v1::Breakdowns) -> Result<Breakdowns, Invalid> {
    let lists = [
        ("destinations", raw.destinations.len()),
        ("close_wait_sockets", raw.close_wait_sockets.len()),
        ("close_wait_processes", raw.close_wait_processes.len()),
        ("listeners", raw.listeners.len()),
    ];
    // Checked before converting, so an oversized list costs nothing more.
    if let Some((list, len)) = lists.iter().find(|(_, len)| *len > MAX_BREAKDOWN_ENTRIES) {
        return Err(invalid(
            format!("report.breakdowns.{list}"),
            format!("{len} entries; at most {MAX_BREAKDOWN_ENTRIES} allowed"),
        ));
    }
    let destinations = raw
        .destinations
        .into_iter()
        .map(|use_| {
            let field = "report.breakdowns.destinations";
            Ok(DestinationUse {
                local_ip: ip(&format!("{field}.local_ip"), &use_.local_ip)?,
                remote_ip: ip(&format!("{field}.remote_ip"), &use_.remote_ip)?,
                remote_port: port(&format!("{field}.remote_port"), use_.remote_port)?,
                time_wait: use_.time_wait,
                ephemeral: use_.ephemeral,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let close_wait_sockets = raw
        .close_wait_sockets
        .into_iter()
        .map(|socket| {
            let field = "report.breakdowns.close_wait_sockets";
            Ok(CloseWaitSocket {
                inode: socket.inode,
                local: endpoint(&format!("{field}.local"), socket.local)?,
                remote: endpoint(&format!("{field}.remote"), socket.remote)?,
                pid: socket.pid,
                comm: socket.comm,
                first_seen: time(
                    &format!("{field}.first_seen"),
                    socket
                        .first_seen
                        .ok_or_else(|| invalid(format!("{field}.first_seen"), "missing"))?,
                )?,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let close_wait_processes = raw
        .close_wait_processes
        .into_iter()
        .map(|process| ProcessCloseWait {
            pid: process.pid,
            comm: process.comm,
            close_wait: process.close_wait,
            open_fds: process.open_fds,
            fd_limit: process.fd_limit,
        })
        .collect();
    let listeners = raw
        .listeners
        .into_iter()
        .map(|listener| {
            Ok(ListenQueue {
                local: endpoint("report.breakdowns.listeners.local", listener.local)?,
                queued: listener.queued,
                backlog: listener.backlog,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let attribution = raw
        .attribution
        .ok_or_else(|| invalid("report.breakdowns.attribution", "missing"))?;
    let attribution = match v1::attribution::Status::try_from(attribution.status) {
        Ok(v1::attribution::Status::Complete) => Attribution::Complete,
        Ok(v1::attribution::Status::Partial) => Attribution::Partial {
            unattributed_sockets: attribution.unattributed_sockets,
            unreadable_processes: attribution.unreadable_processes,
            reason: attribution.reason,
        },
        Ok(v1::attribution::Status::Unavailable) => Attribution::Unavailable {
            reason: attribution.reason,
        },
        _ => {
            return Err(invalid(
                "report.breakdowns.attribution.status",
                format!("{} is not a known status", attribution.status),
            ));
        }
    };
    let omitted = raw.omitted.unwrap_or_default();
    let time_wait_detail_from = raw
        .time_wait_detail_from
        .map(|at| time("report.breakdowns.time_wait_detail_from", at))
        .transpose()?;
    let converted = Breakdowns {
        usable_local_ports: raw.usable_local_ports,
        destinations,
        close_wait_sockets,
        close_wait_processes,
        listeners,
        attribution,
        omitted: Omitted {
            destinations: omitted.destinations,
            close_wait_sockets: omitted.close_wait_sockets,
            close_wait_processes: omitted.close_wait_processes,
            listeners: omitted.listeners,
        },
        time_wait_detail_from,
    };
    converted
        .validate()
        .map_err(|error| invalid("report.breakdowns", error.to_string()))?;
    Ok(converted)
}

/// Counters are stored as signed 64-bit integers; anything above is not a real counter.
fn kernel_counters(raw: v1::KernelCounters) -> Result<KernelCounters, Invalid> {
    let counters = KernelCounters {
        time_wait_overflow: raw.time_wait_overflow,
        listen_overflows: raw.listen_overflows,
        listen_drops: raw.listen_drops,
        abort_on_memory: raw.abort_on_memory,
        active_opens: raw.active_opens,
        passive_opens: raw.passive_opens,
        attempt_fails: raw.attempt_fails,
        estab_resets: raw.estab_resets,
        out_resets: raw.out_resets,
        retrans_segs: raw.retrans_segs,
        in_errs: raw.in_errs,
        orphans: raw.orphans,
        time_wait_sockstat: raw.time_wait_sockstat,
        allocated: raw.allocated,
        in_use: raw.in_use,
        memory_pages: raw.memory_pages,
    };
    let too_large = KernelCounters::FIELDS
        .iter()
        .zip(counters.to_array())
        .find(|(_, value)| *value > MAX_COUNTER);
    if let Some((name, value)) = too_large {
        return Err(invalid(
            format!("report.kernel.{name}"),
            format!("{value} exceeds {MAX_COUNTER}"),
        ));
    }
    Ok(counters)
}

fn sysctls(raw: Vec<v1::Sysctl>) -> Result<SysctlValues, Invalid> {
    if raw.len() > MAX_SYSCTLS {
        return Err(invalid(
            "report.sysctls",
            format!("{} entries; at most {MAX_SYSCTLS} allowed", raw.len()),
        ));
    }
    let mut values = SysctlValues::new();
    for sysctl in raw {
        let name_ok = !sysctl.name.is_empty()
            && sysctl.name.len() <= MAX_SYSCTL_NAME
            && sysctl
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.'));
        if !name_ok {
            return Err(invalid(
                "report.sysctls.name",
                format!(
                    "{:?} is not a sysctl name (lowercase, digits, '_' and '.')",
                    sysctl.name
                ),
            ));
        }
        if let Some(value) = &sysctl.value
            && (value.len() > MAX_SYSCTL_VALUE || value.chars().any(char::is_control))
        {
            return Err(invalid(
                format!("report.sysctls[{}]", sysctl.name),
                format!(
                    "value must be at most {MAX_SYSCTL_VALUE} bytes without control characters"
                ),
            ));
        }
        if values.insert(sysctl.name.clone(), sysctl.value).is_some() {
            return Err(invalid(
                format!("report.sysctls[{}]", sysctl.name),
                "given twice",
            ));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_report(now: DateTime<Utc>) -> v1::Report {
        v1::Report {
            sequence: 1,
            collected_at: Some(prost_types::Timestamp {
                seconds: now.timestamp(),
                nanos: 0,
            }),
            ipv4: Some(v1::StateCounts {
                established: 3,
                ..Default::default()
            }),
            ipv6: Some(v1::StateCounts::default()),
            sysctls: vec![v1::Sysctl {
                name: "net.ipv4.tcp_fin_timeout".into(),
                value: Some("60".into()),
            }],
            dropped_reports: 0,
            kernel: Some(v1::KernelCounters {
                active_opens: 12,
                ..Default::default()
            }),
            breakdowns: Some(v1::Breakdowns {
                usable_local_ports: 28232,
                destinations: vec![v1::DestinationUse {
                    local_ip: vec![127, 0, 0, 1],
                    remote_ip: vec![127, 0, 0, 2],
                    remote_port: 5432,
                    time_wait: 3,
                    ephemeral: 5,
                }],
                listeners: vec![v1::ListenQueue {
                    local: Some(v1::Endpoint {
                        ip: vec![0; 16],
                        port: 7070,
                    }),
                    queued: 1,
                    backlog: 128,
                }],
                attribution: Some(v1::Attribution {
                    status: v1::attribution::Status::Complete.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            namespaces: vec![v1::NamespaceReport {
                inode: 4026532300,
                identity: Some(v1::NamespaceIdentity {
                    container_id: "3f2a".repeat(16),
                    pid: 4242,
                    comm: "nginx".into(),
                    ..Default::default()
                }),
                ipv4: Some(v1::StateCounts {
                    listen: 1,
                    ..Default::default()
                }),
                ipv6: Some(v1::StateCounts::default()),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn accepts_a_good_report() {
        let now = Utc::now();
        let (parsed, dropped) = report(good_report(now), now).unwrap();
        assert_eq!(
            parsed
                .states
                .ipv4
                .get(sockfleet_domain::TcpState::Established),
            3
        );
        assert_eq!(dropped, 0);
    }

    #[test]
    fn names_the_field_of_an_absurd_count() {
        let now = Utc::now();
        let mut message = good_report(now);
        message.ipv6 = Some(v1::StateCounts {
            time_wait: u64::MAX,
            ..Default::default()
        });
        let error = report(message, now).unwrap_err();
        assert_eq!(error.field, "report.ipv6.time_wait");
    }

    #[test]
    fn keeps_kernel_counters_and_refuses_impossible_ones() {
        let now = Utc::now();
        let (parsed, _) = report(good_report(now), now).unwrap();
        assert_eq!(parsed.kernel.map(|kernel| kernel.active_opens), Some(12));
        let mut message = good_report(now);
        message.kernel = Some(v1::KernelCounters {
            retrans_segs: u64::MAX,
            ..Default::default()
        });
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.kernel.retrans_segs"
        );
    }

    #[test]
    fn converts_breakdowns_and_names_bad_fields() {
        let now = Utc::now();
        let (parsed, _) = report(good_report(now), now).unwrap();
        let breakdowns = parsed.breakdowns.unwrap();
        assert_eq!(
            breakdowns.destinations[0].remote_ip.to_string(),
            "127.0.0.2"
        );
        assert_eq!(breakdowns.listeners[0].local.to_string(), "[::]:7070");

        let mut message = good_report(now);
        if let Some(breakdowns) = message.breakdowns.as_mut() {
            breakdowns.destinations[0].remote_ip = vec![1, 2, 3];
        }
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.breakdowns.destinations.remote_ip"
        );

        let mut message = good_report(now);
        if let Some(breakdowns) = message.breakdowns.as_mut() {
            breakdowns.destinations[0].time_wait = 9;
        }
        assert_eq!(report(message, now).unwrap_err().field, "report.breakdowns");

        let mut message = good_report(now);
        if let Some(breakdowns) = message.breakdowns.as_mut() {
            breakdowns.attribution = None;
        }
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.breakdowns.attribution"
        );
    }

    #[test]
    fn converts_namespaces_and_names_bad_fields() {
        let now = Utc::now();
        let (parsed, _) = report(good_report(now), now).unwrap();
        let namespace = &parsed.namespaces[0];
        assert_eq!(namespace.inode, 4026532300);
        assert_eq!(namespace.identity.pid, Some(4242));
        assert_eq!(namespace.identity.name, None, "empty text means unknown");
        assert_eq!(
            namespace
                .states
                .ipv4
                .get(sockfleet_domain::TcpState::Listen),
            1
        );

        let mut message = good_report(now);
        let duplicate = message.namespaces[0].clone();
        message.namespaces.push(duplicate);
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.namespaces[1].inode"
        );

        let mut message = good_report(now);
        message.namespaces[0].ipv6 = Some(v1::StateCounts {
            close_wait: u64::MAX,
            ..Default::default()
        });
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.namespaces[0].ipv6.close_wait"
        );

        let mut message = good_report(now);
        if let Some(identity) = message.namespaces[0].identity.as_mut() {
            identity.comm = "bad\ncomm".into();
        }
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.namespaces[0].identity.comm"
        );
    }

    #[test]
    fn refuses_times_far_from_now() {
        let now = Utc::now();
        let mut message = good_report(now);
        message.collected_at = Some(prost_types::Timestamp {
            seconds: now.timestamp() + 3600,
            nanos: 0,
        });
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.collected_at"
        );
        let mut message = good_report(now);
        message.collected_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.collected_at"
        );
    }

    #[test]
    fn refuses_bad_sysctls() {
        let now = Utc::now();
        let mut message = good_report(now);
        message.sysctls[0].name = "../../etc".into();
        assert_eq!(
            report(message, now).unwrap_err().field,
            "report.sysctls.name"
        );
    }

    #[test]
    fn validates_hello() {
        let good = v1::Hello {
            protocol_version: 1,
            host_id: "web-1".into(),
            hostname: "web-1".into(),
            kernel_release: "6.1.0".into(),
            agent_version: "0.1.0".into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            run_id: "abc".into(),
            collector: "netlink".into(),
            interval_ms: 10_000,
        };
        assert!(hello(good.clone()).is_ok());
        let mut bad = good.clone();
        bad.host_id = String::new();
        assert_eq!(hello(bad).unwrap_err().field, "hello.host_id");
        let mut bad = good.clone();
        bad.interval_ms = 1;
        assert_eq!(hello(bad).unwrap_err().field, "hello.interval_ms");
        let mut bad = good;
        bad.labels = [("bad key".to_owned(), String::new())].into();
        assert!(hello(bad).unwrap_err().field.starts_with("hello.labels"));
    }
}
