//! Turning collections into numbered reports.

use chrono::{DateTime, Utc};
use sockfleet_domain::{Report, SysctlValues};

use crate::collect::Collection;

/// Numbers reports and decides which sysctls each one carries.
///
/// The first report of a run carries every sysctl, later ones only those that changed; after the agent
/// reconnects, [`ReportBuilder::send_full_sysctls`] makes the next report carry every sysctl again so a
/// server that lost track (or a new replica) gets the full picture.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    last_sequence: u64,
    last_sysctls: Option<SysctlValues>,
}

impl ReportBuilder {
    /// Makes the next report carry every sysctl.
    pub fn send_full_sysctls(&mut self) {
        self.last_sysctls = None;
    }

    /// The sequence of the last report built (0 before the first).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Builds the next report from a collection.
    pub fn build(&mut self, collected_at: DateTime<Utc>, collection: Collection) -> Report {
        self.last_sequence += 1;
        let sysctls = match &self.last_sysctls {
            None => collection.sysctls.clone(),
            Some(previous) => collection
                .sysctls
                .iter()
                .filter(|(name, value)| previous.get(*name) != Some(*value))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        };
        self.last_sysctls = Some(collection.sysctls);
        Report {
            sequence: self.last_sequence,
            collected_at,
            states: collection.states,
            sysctls,
            kernel: collection.kernel,
            breakdowns: collection.breakdowns,
            namespaces: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use sockfleet_domain::FamilyCounts;

    use super::*;

    fn collection(fin_timeout: &str) -> Collection {
        Collection {
            states: FamilyCounts::default(),
            sysctls: [
                (
                    "net.ipv4.tcp_fin_timeout".to_owned(),
                    Some(fin_timeout.to_owned()),
                ),
                ("net.ipv4.tcp_tw_recycle".to_owned(), None),
            ]
            .into(),
            kernel: None,
            breakdowns: None,
        }
    }

    #[test]
    fn full_set_first_then_changes_only() {
        let mut builder = ReportBuilder::default();
        let now = Utc::now();
        let first = builder.build(now, collection("60"));
        assert_eq!((first.sequence, first.sysctls.len()), (1, 2));
        let second = builder.build(now, collection("60"));
        assert_eq!((second.sequence, second.sysctls.len()), (2, 0));
        let third = builder.build(now, collection("30"));
        assert_eq!(third.sysctls.len(), 1);
        assert_eq!(
            third.sysctls["net.ipv4.tcp_fin_timeout"].as_deref(),
            Some("30")
        );
        builder.send_full_sysctls();
        assert_eq!(builder.build(now, collection("30")).sysctls.len(), 2);
        assert_eq!(builder.last_sequence(), 4);
    }
}
