//! Accuracy: `sockfleet-agent --once` reports exactly what `ss -tan` shows, per family and state.
//!
//! Each test works in a fresh network namespace of its own (see `IsolatedNamespace`), and every process
//! it starts (`ss`, the agent) runs there. The only sockets there are the ones the test makes, on
//! 127.0.0.1 and ::1, so the counts are exact even while other tests run. The test needs root
//! (CAP_SYS_ADMIN); without it, it fails rather than skips.

use std::process::Command;

use sockfleet_domain::FamilyCounts;
use sockfleet_testkit::command::run;
use sockfleet_testkit::{
    IsolatedNamespace, open_known_states, plus, show, ss_counts, wait_until_settled,
};

const AGENT: &str = env!("CARGO_BIN_EXE_sockfleet-agent");

#[test]
fn netlink_collector_matches_ss() {
    IsolatedNamespace::new().run(|| check_collector("netlink"));
}

#[test]
fn procfs_collector_matches_ss() {
    IsolatedNamespace::new().run(|| check_collector("procfs"));
}

fn check_collector(collector: &str) {
    let baseline_ss = ss_counts();
    let baseline_agent = agent_counts(collector);
    assert_eq!(
        show(&baseline_agent),
        show(&baseline_ss),
        "--collector {collector} disagrees with ss in the empty namespace"
    );

    let (held, expected) = open_known_states();
    let target = plus(&baseline_ss, &expected);
    wait_until_settled(&target);

    let ss_before = ss_counts();
    let agent = agent_counts(collector);
    let ss_after = ss_counts();
    assert_eq!(
        show(&ss_before),
        show(&ss_after),
        "ss changed while the agent ran, though nothing in the namespace should move"
    );
    assert_eq!(
        show(&agent),
        show(&ss_before),
        "sockfleet-agent --collector {collector} disagrees with ss -tan"
    );
    assert_eq!(
        show(&ss_before),
        show(&target),
        "ss did not move from its baseline by exactly the sockets the test made"
    );
    assert_eq!(
        show(&agent),
        show(&plus(&baseline_agent, &expected)),
        "--collector {collector} did not move from its baseline by exactly the sockets the test made"
    );
    drop(held);
}

/// The state counts of one `sockfleet-agent --once` run with the given collector.
fn agent_counts(collector: &str) -> FamilyCounts {
    let mut command = Command::new(AGENT);
    command.args([
        "--once",
        "--host-id",
        "accuracy-test",
        "--collector",
        collector,
    ]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SOCKFLEET_") {
            command.env_remove(&name);
        }
    }
    let output = run(&mut command);
    let snapshot: serde_json::Value = serde_json::from_str(&output)
        .unwrap_or_else(|error| panic!("the agent printed no JSON ({error}):\n{output}"));
    assert_eq!(
        snapshot["collector"].as_str(),
        Some(collector),
        "the agent used another collector:\n{output}"
    );
    assert_eq!(
        snapshot["host_id"].as_str(),
        Some("accuracy-test"),
        "{output}"
    );
    serde_json::from_value(snapshot["states"].clone()).unwrap_or_else(|error| {
        panic!("no per-family state counts in the snapshot ({error}):\n{output}")
    })
}
