//! Conversion of the agent's reports into `sockfleet.v1` messages.

use sockfleet_domain::StateCounts;
use sockfleet_proto::v1;

use sockfleet_domain::Report;

/// The protobuf form of a pending report.
pub fn report_message(report: &Report, dropped_reports: u64) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(v1::agent_message::Body::Report(v1::Report {
            sequence: report.sequence,
            collected_at: Some(prost_types::Timestamp {
                seconds: report.collected_at.timestamp(),
                nanos: report.collected_at.timestamp_subsec_nanos() as i32,
            }),
            ipv4: Some(state_counts(&report.states.ipv4)),
            ipv6: Some(state_counts(&report.states.ipv6)),
            sysctls: report
                .sysctls
                .iter()
                .map(|(name, value)| v1::Sysctl {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            dropped_reports,
        })),
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
