//! Turning collections into numbered reports.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sockfleet_domain::{NamespaceIdentity, Report, SysctlValues};

use crate::collect::Collection;

/// Numbers reports and decides which sysctls each one carries.
///
/// The first report of a run carries every sysctl, later ones only those that changed; after the agent
/// reconnects, [`ReportBuilder::send_full_sysctls`] makes the next report carry every sysctl again so a
/// server that lost track (or a new replica) gets the full picture. The same holds for each other
/// network namespace: all its sysctls the first time a report has it (or when its identity changed,
/// as when a new namespace got the inode of one that is gone), then only changes.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    last_sequence: u64,
    last_sysctls: Option<SysctlValues>,
    /// By inode: the identity and sysctls of each namespace in the last report.
    last_namespaces: HashMap<u64, (NamespaceIdentity, SysctlValues)>,
}

impl ReportBuilder {
    /// Makes the next report carry every sysctl, its own and every namespace's.
    pub fn send_full_sysctls(&mut self) {
        self.last_sysctls = None;
        self.last_namespaces.clear();
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
            Some(previous) => changes(previous, &collection.sysctls),
        };
        self.last_sysctls = Some(collection.sysctls);
        let mut previous_namespaces = std::mem::take(&mut self.last_namespaces);
        let namespaces = collection
            .namespaces
            .into_iter()
            .map(|mut namespace| {
                let all = namespace.sysctls;
                namespace.sysctls = match previous_namespaces.remove(&namespace.inode) {
                    Some((identity, previous)) if identity == namespace.identity => {
                        changes(&previous, &all)
                    }
                    _ => all.clone(),
                };
                self.last_namespaces
                    .insert(namespace.inode, (namespace.identity.clone(), all));
                namespace
            })
            .collect();
        Report {
            sequence: self.last_sequence,
            collected_at,
            states: collection.states,
            sysctls,
            kernel: collection.kernel,
            breakdowns: collection.breakdowns,
            namespaces,
        }
    }
}

/// The entries of `current` that differ from `previous`.
fn changes(previous: &SysctlValues, current: &SysctlValues) -> SysctlValues {
    current
        .iter()
        .filter(|(name, value)| previous.get(*name) != Some(*value))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use sockfleet_domain::{FamilyCounts, NamespaceReport};

    use super::*;

    fn sysctls(fin_timeout: &str) -> SysctlValues {
        [
            (
                "net.ipv4.tcp_fin_timeout".to_owned(),
                Some(fin_timeout.to_owned()),
            ),
            ("net.ipv4.tcp_tw_recycle".to_owned(), None),
        ]
        .into()
    }

    fn collection(fin_timeout: &str) -> Collection {
        Collection {
            states: FamilyCounts::default(),
            sysctls: sysctls(fin_timeout),
            kernel: None,
            breakdowns: None,
            namespaces: Vec::new(),
        }
    }

    fn namespace(inode: u64, name: &str, fin_timeout: &str) -> NamespaceReport {
        NamespaceReport {
            inode,
            identity: NamespaceIdentity {
                name: Some(name.to_owned()),
                ..NamespaceIdentity::default()
            },
            states: FamilyCounts::default(),
            sysctls: sysctls(fin_timeout),
            kernel: None,
            breakdowns: None,
        }
    }

    fn with_namespaces(namespaces: &[(u64, &str, &str)]) -> Collection {
        Collection {
            namespaces: namespaces
                .iter()
                .map(|(inode, name, fin_timeout)| namespace(*inode, name, fin_timeout))
                .collect(),
            ..collection("60")
        }
    }

    /// Each namespace's sysctls in a report: (inode, number of sysctls, fin_timeout if sent).
    fn namespace_sysctls(report: &Report) -> Vec<(u64, usize, Option<&str>)> {
        report
            .namespaces
            .iter()
            .map(|namespace| {
                (
                    namespace.inode,
                    namespace.sysctls.len(),
                    namespace
                        .sysctls
                        .get("net.ipv4.tcp_fin_timeout")
                        .and_then(Option::as_deref),
                )
            })
            .collect()
    }

    #[test]
    fn each_namespace_gets_its_full_set_first_then_changes_only() {
        let mut builder = ReportBuilder::default();
        let now = Utc::now();
        let first = builder.build(now, with_namespaces(&[(7, "a", "60"), (9, "b", "30")]));
        assert_eq!(
            namespace_sysctls(&first),
            [(7, 2, Some("60")), (9, 2, Some("30"))]
        );
        // The namespace sysctls do not leak into the host's, nor the host's into theirs.
        assert_eq!(first.sysctls, sysctls("60"));

        let second = builder.build(now, with_namespaces(&[(7, "a", "60"), (9, "b", "45")]));
        assert_eq!(second.sysctls.len(), 0);
        assert_eq!(
            namespace_sysctls(&second),
            [(7, 0, None), (9, 1, Some("45"))]
        );

        // A new namespace gets its full set; one that disappears is forgotten, so it gets its full
        // set again when it comes back.
        let third = builder.build(now, with_namespaces(&[(9, "b", "45"), (11, "c", "60")]));
        assert_eq!(
            namespace_sysctls(&third),
            [(9, 0, None), (11, 2, Some("60"))]
        );
        let fourth = builder.build(now, with_namespaces(&[(7, "a", "60"), (9, "b", "45")]));
        assert_eq!(
            namespace_sysctls(&fourth),
            [(7, 2, Some("60")), (9, 0, None)]
        );

        // Another namespace with an inode seen before (the old one is gone) gets its full set.
        let fifth = builder.build(now, with_namespaces(&[(7, "other", "60"), (9, "b", "45")]));
        assert_eq!(
            namespace_sysctls(&fifth),
            [(7, 2, Some("60")), (9, 0, None)]
        );

        // After a reconnect every namespace gets its full set again.
        builder.send_full_sysctls();
        let sixth = builder.build(now, with_namespaces(&[(7, "other", "60"), (9, "b", "45")]));
        assert_eq!(sixth.sysctls.len(), 2);
        assert_eq!(
            namespace_sysctls(&sixth),
            [(7, 2, Some("60")), (9, 2, Some("45"))]
        );
        assert_eq!(builder.last_sequence(), 6);
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
