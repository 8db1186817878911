//! A rolling update survives its leader: 3 managers on loopback (process
//! runtime), the leader killed mid-update, and a new leader finishes the
//! update from the replicated state.

use skein_tests::{wait_for, Agent, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn update_state(a: &Agent, service: &str) -> Option<String> {
    let out = a.cli(&["service", "inspect", service]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let svc = v.as_array().and_then(|a| a.first()).cloned().unwrap_or(v);
    svc["update_status"]["state"].as_str().map(String::from)
}

#[test]
fn a_new_leader_finishes_an_update_the_old_one_started() {
    let mut managers = Cluster::start(3, 0, T).managers;
    let (old, new) = (["sleep", "3721"], ["sleep", "3722"]);
    let count = |managers: &[Agent], argv: &[&str], skip: Option<usize>| -> usize {
        managers
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, a)| a.task_processes(argv).len())
            .sum()
    };
    managers[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "sleep",
        "3721",
    ]);
    wait_for("6 old processes", T, || {
        (count(&managers, &old, None) == 6).then_some(())
    });
    managers[0].ok(&[
        "service",
        "update",
        "--detach",
        "--args",
        "3722",
        "--update-parallelism",
        "1",
        // Paced so that the leader dies mid-update.
        "--update-delay",
        "2s",
        "web",
    ]);
    // Mid-update: some slots done, not all.
    wait_for("the first slot updated", T, || {
        (count(&managers, &new, None) >= 1).then_some(())
    });
    assert!(
        count(&managers, &new, None) < 6,
        "the update is still going"
    );
    let leader = managers
        .iter()
        .position(|m| {
            m.nodes()
                .iter()
                .any(|n| n["leader"] == true && n["name"] == m.name.as_str())
        })
        .expect("a leader among the managers");
    managers[leader].kill9();
    let other = (leader + 1) % 3;
    wait_for("a new leader", T, || {
        managers[other]
            .nodes()
            .iter()
            .any(|n| n["leader"] == true && n["name"] != managers[leader].name.as_str())
            .then_some(())
    });
    wait_for("the new leader completes the update", T, || {
        (update_state(&managers[other], "web").as_deref() == Some("completed")).then_some(())
    });
    // Six new processes on the live managers, no old one there.
    wait_for("6 new processes on live nodes, no old", T, || {
        (count(&managers, &new, Some(leader)) == 6 && count(&managers, &old, Some(leader)) == 0)
            .then_some(())
    });
    let running = managers[other].running_tasks("web");
    assert_eq!(running.len(), 6);
    assert!(running
        .iter()
        .all(|t| t["node"] != managers[leader].name.as_str()));
}
