//! One real agent on loopback, driven through the CLI as a user would.

use skein_tests::{wait_for, Agent};
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

#[test]
fn replicated_tasks_survive_an_agent_kill_and_restart() {
    let mut a = Agent::start(&[]);
    let argv = ["sleep", "3601"];
    a.ok(&[
        "service",
        "create",
        "--name",
        "s1",
        "--replicas",
        "3",
        "sleep",
        "3601",
    ]);
    assert_eq!(a.running_tasks("s1").len(), 3);
    assert_eq!(a.task_processes(&argv).len(), 3);

    a.kill9();
    // The tasks do not depend on the agent.
    assert_eq!(a.task_processes(&argv).len(), 3);
    let before: Vec<i32> = {
        let mut p = a.task_processes(&argv);
        p.sort();
        p
    };
    a.restart();
    // Give the restarted agent time to (wrongly) start or stop anything.
    wait_for("3 running tasks after restart", T, || {
        (a.running_tasks("s1").len() == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.running_tasks("s1").len(), 3);
    let mut after = a.task_processes(&argv);
    after.sort();
    assert_eq!(after, before, "the same 3 processes, adopted, none added");

    a.ok(&["service", "scale", "s1=5"]);
    assert_eq!(a.running_tasks("s1").len(), 5);
    assert_eq!(a.task_processes(&argv).len(), 5);

    a.ok(&["service", "rm", "s1"]);
    wait_for("no sleep 3601 left", T, || {
        a.task_processes(&argv).is_empty().then_some(())
    });
    let ls = a.json(&["service", "ls"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(0));
}

#[test]
fn a_global_service_runs_one_task_on_the_node() {
    let a = Agent::start(&[]);
    let argv = ["sleep", "3602"];
    a.ok(&[
        "service", "create", "--name", "g", "--mode", "global", "sleep", "3602",
    ]);
    let tasks = a.running_tasks("g");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["node"], "test-node");
    assert_eq!(a.task_processes(&argv).len(), 1);
    let ls = a.json(&["service", "ls"]);
    assert_eq!(ls[0]["mode"], "global");
    assert_eq!(ls[0]["replicas"], 1);
    assert_eq!(ls[0]["running"], 1);
    a.ok(&["service", "rm", "g"]);
    wait_for("no sleep 3602 left", T, || {
        a.task_processes(&argv).is_empty().then_some(())
    });
}

#[test]
fn mistakes_are_named_and_change_nothing() {
    let a = Agent::start(&[]);
    let out = a.cli(&["service", "ps", "no-such-service"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-service"), "{err}");

    let (status, body) = a.http("POST", "/v1/services", "application/json", "{\"name\": ");
    assert!((400..500).contains(&status), "{status} {body}");
    assert!(body.contains("message"), "{body}");
    let (status, _) = a.http(
        "POST",
        "/v1/services",
        "application/json",
        "{\"name\": \"x\"}",
    );
    assert!((400..500).contains(&status), "missing image: {status}");
    let (status, body) = a.http(
        "POST",
        "/v1/services",
        "application/json",
        "{\"name\": \"x\", \"image\": \"sleep\", \"mode\": \"global\", \"replicas\": 2}",
    );
    assert!((400..500).contains(&status), "{status}");
    assert!(body.contains("replicas"), "{body}");

    let stack = a.dir.path().join("typo.yml");
    std::fs::write(
        &stack,
        "services:\n  web:\n    image: sleep\n    command: [\"3603\"]\n    deploy:\n      replicas: 2\n      update_config:\n        paralelism: 2\n",
    )
    .expect("write stack");
    let out = a.cli(&[
        "stack",
        "deploy",
        "-c",
        stack.to_str().expect("utf8"),
        "typo",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paralelism"), "{err}");
    assert!(err.contains("typo.yml"), "names the file: {err}");
    assert!(err.contains(":8"), "names the line: {err}");
    assert_eq!(a.json(&["service", "ls"]).as_array().map(Vec::len), Some(0));
    assert!(a.task_processes(&["sleep", "3603"]).is_empty());

    // The agent is still fine after all that.
    a.ok(&["node", "ls"]);
}

#[test]
fn failed_tasks_are_restarted_by_policy_and_their_output_kept() {
    let a = Agent::start(&[]);
    let out = a.cli(&[
        "service",
        "create",
        "--name",
        "crashy",
        "--restart-delay",
        "200ms",
        "--restart-max-attempts",
        "2",
        "--detach",
        "sh",
        "-c",
        "echo boom; exit 3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = wait_for("three failed tasks", T, || {
        let rows = a.json(&["service", "ps", "crashy"]);
        let failed: Vec<serde_json::Value> = rows
            .as_array()?
            .iter()
            .filter(|t| t["state"] == "failed")
            .cloned()
            .collect();
        (failed.len() == 3).then_some(failed)
    });
    for r in &rows {
        assert_eq!(r["exit_code"], 3);
        assert!(r["error"].as_str().unwrap_or("").contains('3'), "{r}");
    }
    // No fourth attempt.
    std::thread::sleep(Duration::from_millis(1500));
    let rows = a.json(&["service", "ps", "crashy"]);
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    let logs = a.ok(&["service", "logs", "crashy"]);
    assert!(logs.matches("boom").count() >= 3, "{logs}");
}

#[test]
fn service_create_fails_when_the_program_does_not_exist() {
    let a = Agent::start(&[]);
    let out = a.cli(&[
        "service",
        "create",
        "--name",
        "ghost",
        "no-such-program-xyz",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-program-xyz"), "{err}");
}

/// Issue 3, process runtime: on-failure with max 2 attempts ends with exactly
/// three failed tasks, and `service ps` says why there is no fourth.
#[test]
fn on_failure_with_max_attempts_stops_after_three_failures() {
    let a = Agent::start(&[]);
    a.ok(&[
        "service",
        "create",
        "--name",
        "exit3",
        "--detach",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "2",
        "sh",
        "-c",
        "sleep 0.5; exit 3",
    ]);
    let failed = |a: &Agent| {
        a.json(&["service", "ps", "exit3"])
            .as_array()
            .map(|rows| rows.iter().filter(|t| t["state"] == "failed").count())
            .unwrap_or(0)
    };
    wait_for("three failed tasks", Duration::from_secs(60), || {
        (failed(&a) == 3).then_some(())
    });
    // The restart delay is 5s: wait longer than that and check nothing new started.
    std::thread::sleep(Duration::from_secs(6));
    let rows = a.json(&["service", "ps", "exit3"]);
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "no fourth task: {rows:?}");
    assert_eq!(failed(&a), 3);
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("max_attempts (2) reached"),
        "the newest task says why the slot stays down: {}",
        rows[0]
    );
}

/// Issue 3, process runtime: a failing health check replaces the task and
/// the failed task's error names the health check.
#[test]
fn an_unhealthy_process_task_is_replaced() {
    let a = Agent::start(&[]);
    a.ok(&[
        "service",
        "create",
        "--name",
        "sick",
        "--detach",
        "--health-cmd",
        "false",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--restart-delay",
        "0s",
        "sleep",
        "3604",
    ]);
    let failed = wait_for("a task failed by its health check", T, || {
        let rows = a.json(&["service", "ps", "sick"]);
        rows.as_array()?
            .iter()
            .find(|t| t["state"] == "failed")
            .cloned()
    });
    let err = failed["error"].as_str().unwrap_or("");
    assert!(err.contains("health check failed"), "{failed}");
    wait_for("a replacement task", T, || {
        let rows = a.json(&["service", "ps", "sick"]);
        (rows.as_array()?.len() >= 2).then_some(())
    });
    // Until it is healthy a task is never reported running.
    let rows = a.json(&["service", "ps", "sick"]);
    assert!(rows
        .as_array()
        .map(|r| r.iter().all(|t| t["state"] != "running"))
        .unwrap_or(false));
    a.ok(&["service", "rm", "sick"]);
    wait_for("no sleep 3604 left", T, || {
        a.task_processes(&["sleep", "3604"])
            .is_empty()
            .then_some(())
    });
}

#[test]
fn a_healthy_process_task_runs() {
    let a = Agent::start(&[]);
    a.ok(&[
        "service",
        "create",
        "--name",
        "fine",
        "--health-cmd",
        "true",
        "--health-interval",
        "200ms",
        "sleep",
        "3605",
    ]);
    let tasks = a.running_tasks("fine");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["health"], "healthy");
}

#[test]
fn join_tokens_are_printed_and_rotated() {
    let a = Agent::start(&[]);
    let worker = a.ok(&["join-token", "worker", "-q"]).trim().to_string();
    let manager = a.ok(&["join-token", "manager", "-q"]).trim().to_string();
    assert!(worker.starts_with("SKNTKN-1-"), "{worker}");
    assert_ne!(worker, manager);
    assert_eq!(
        a.ok(&["join-token", "worker", "-q"]).trim(),
        worker,
        "stable until rotated"
    );
    let full = a.ok(&["join-token", "worker"]);
    assert!(
        full.contains("skein agent --join") && full.contains(&worker),
        "{full}"
    );
    let rotated = a
        .ok(&["join-token", "worker", "--rotate", "-q"])
        .trim()
        .to_string();
    assert_ne!(rotated, worker);
    assert_eq!(a.ok(&["join-token", "manager", "-q"]).trim(), manager);
    let bad = a.cli(&["join-token", "admin"]);
    assert!(!bad.status.success());
}

#[test]
fn a_manager_that_lost_its_raft_log_refuses_to_found_a_second_cluster() {
    let mut a = Agent::start(&[]);
    let cluster = a.json(&["node", "ls"]);
    let first = cluster[0]["id"].as_str().expect("a node id").to_string();
    a.kill9();
    std::fs::remove_dir_all(a.data_dir().join("raft")).expect("remove the raft log");
    let out = a.run_to_exit(&[]);
    assert!(!out.status.success(), "started without its raft log");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("raft log")
            && err.contains("--force-new-cluster")
            && err.contains("node rm --force"),
        "{err}"
    );
    assert!(
        !a.data_dir().join("raft").exists(),
        "a refused start must not create a new log"
    );
    // On purpose: a new one-manager cluster from this node.
    a.restart_with(&["--force-new-cluster"]);
    let nodes = a.json(&["node", "ls"]);
    let nodes = nodes.as_array().expect("node rows");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["id"], first.as_str(), "same node identity");
    assert_eq!(nodes[0]["leader"], true, "{nodes:?}");
    // And it restarts from its new log without the flag's help.
    a.restart();
    // Waits until the task runs: its process exists before the test ends,
    // so the harness stops it (a detached create could leave one starting).
    a.ok(&["service", "create", "--name", "after", "sleep", "3822"]);
}
