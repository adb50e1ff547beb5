//! Conversion of the agent's reports into `sockfleet.v1` messages.

use std::net::{IpAddr, SocketAddr};

use chrono::{DateTime, Utc};
use sockfleet_domain::{
    Attribution, Breakdowns, KernelCounters, NamespaceIdentity, NamespaceReport, Report,
    StateCounts, SysctlValues,
};
use sockfleet_proto::v1;

/// The protobuf form of a report, with `dropped_reports` left at 0 (it is filled in when the report is
/// sent).
pub fn report_proto(report: &Report) -> v1::Report {
    v1::Report {
        sequence: report.sequence,
        collected_at: Some(timestamp(report.collected_at)),
        ipv4: Some(state_counts(&report.states.ipv4)),
        ipv6: Some(state_counts(&report.states.ipv6)),
        sysctls: sysctls(&report.sysctls),
        dropped_reports: 0,
        kernel: report.kernel.as_ref().map(kernel_counters),
        breakdowns: report.breakdowns.as_ref().map(breakdowns),
        namespaces: report.namespaces.iter().map(namespace_report).collect(),
    }
}

/// The message that carries a report on the stream.
pub fn report_message(report: v1::Report) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(v1::agent_message::Body::Report(report)),
    }
}

fn sysctls(values: &SysctlValues) -> Vec<v1::Sysctl> {
    values
        .iter()
        .map(|(name, value)| v1::Sysctl {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn namespace_report(namespace: &NamespaceReport) -> v1::NamespaceReport {
    v1::NamespaceReport {
        inode: namespace.inode,
        identity: Some(namespace_identity(&namespace.identity)),
        ipv4: Some(state_counts(&namespace.states.ipv4)),
        ipv6: Some(state_counts(&namespace.states.ipv6)),
        sysctls: sysctls(&namespace.sysctls),
        kernel: namespace.kernel.as_ref().map(kernel_counters),
        breakdowns: namespace.breakdowns.as_ref().map(breakdowns),
    }
}

/// Unknown names travel as empty strings and an unknown pid as 0.
fn namespace_identity(identity: &NamespaceIdentity) -> v1::NamespaceIdentity {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    v1::NamespaceIdentity {
        name: text(&identity.name),
        container_id: text(&identity.container_id),
        pod: text(&identity.pod),
        pid: identity.pid.unwrap_or(0),
        comm: text(&identity.comm),
    }
}

fn state_counts(counts: &StateCounts) -> v1::StateCounts {
    let [
        established,
        syn_sent,
        syn_recv,
        fin_wait1,
        fin_wait2,
        time_wait,
        close,
        close_wait,
        last_ack,
        listen,
        closing,
    ] = *counts.as_array();
    v1::StateCounts {
        established,
        syn_sent,
        syn_recv,
        fin_wait1,
        fin_wait2,
        time_wait,
        close,
        close_wait,
        last_ack,
        listen,
        closing,
    }
}

fn kernel_counters(counters: &KernelCounters) -> v1::KernelCounters {
    v1::KernelCounters {
        time_wait_overflow: counters.time_wait_overflow,
        listen_overflows: counters.listen_overflows,
        listen_drops: counters.listen_drops,
        abort_on_memory: counters.abort_on_memory,
        active_opens: counters.active_opens,
        passive_opens: counters.passive_opens,
        attempt_fails: counters.attempt_fails,
        estab_resets: counters.estab_resets,
        out_resets: counters.out_resets,
        retrans_segs: counters.retrans_segs,
        in_errs: counters.in_errs,
        orphans: counters.orphans,
        time_wait_sockstat: counters.time_wait_sockstat,
        allocated: counters.allocated,
        in_use: counters.in_use,
        memory_pages: counters.memory_pages,
    }
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Below 10^9, so it always fits.
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

fn endpoint(address: SocketAddr) -> v1::Endpoint {
    v1::Endpoint {
        ip: ip_bytes(address.ip()),
        port: u32::from(address.port()),
    }
}

fn breakdowns(breakdowns: &Breakdowns) -> v1::Breakdowns {
    let attribution = match &breakdowns.attribution {
        Attribution::Complete => v1::Attribution {
            status: v1::attribution::Status::Complete.into(),
            ..Default::default()
        },
        Attribution::Partial {
            unattributed_sockets,
            unreadable_processes,
            reason,
        } => v1::Attribution {
            status: v1::attribution::Status::Partial.into(),
            unattributed_sockets: *unattributed_sockets,
            unreadable_processes: *unreadable_processes,
            reason: reason.clone(),
        },
        Attribution::Unavailable { reason } => v1::Attribution {
            status: v1::attribution::Status::Unavailable.into(),
            reason: reason.clone(),
            ..Default::default()
        },
    };
    v1::Breakdowns {
        usable_local_ports: breakdowns.usable_local_ports,
        destinations: breakdowns
            .destinations
            .iter()
            .map(|use_| v1::DestinationUse {
                local_ip: ip_bytes(use_.local_ip),
                remote_ip: ip_bytes(use_.remote_ip),
                remote_port: u32::from(use_.remote_port),
                time_wait: use_.time_wait,
                ephemeral: use_.ephemeral,
            })
            .collect(),
        close_wait_sockets: breakdowns
            .close_wait_sockets
            .iter()
            .map(|socket| v1::CloseWaitSocket {
                inode: socket.inode,
                local: Some(endpoint(socket.local)),
                remote: Some(endpoint(socket.remote)),
                pid: socket.pid,
                comm: socket.comm.clone(),
                first_seen: Some(timestamp(socket.first_seen)),
            })
            .collect(),
        close_wait_processes: breakdowns
            .close_wait_processes
            .iter()
            .map(|process| v1::ProcessCloseWait {
                pid: process.pid,
                comm: process.comm.clone(),
                close_wait: process.close_wait,
                open_fds: process.open_fds,
                fd_limit: process.fd_limit,
            })
            .collect(),
        listeners: breakdowns
            .listeners
            .iter()
            .map(|listener| v1::ListenQueue {
                local: Some(endpoint(listener.local)),
                queued: listener.queued,
                backlog: listener.backlog,
            })
            .collect(),
        attribution: Some(attribution),
        omitted: Some(v1::Omitted {
            destinations: breakdowns.omitted.destinations,
            close_wait_sockets: breakdowns.omitted.close_wait_sockets,
            close_wait_processes: breakdowns.omitted.close_wait_processes,
            listeners: breakdowns.omitted.listeners,
        }),
        time_wait_detail_from: breakdowns.time_wait_detail_from.map(timestamp),
    }
}
