//! Rolling updates and rollbacks on one real agent (process runtime),
//! driven through the CLI as a user would: what runs before and after, what
//! `service inspect` and `service ps` say, and the exit codes.

use skein_tests::{wait_for, Agent};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn inspect(a: &Agent, service: &str) -> serde_json::Value {
    let text = a.ok(&["service", "inspect", service]);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad inspect JSON: {e}: {text}"));
    match v {
        serde_json::Value::Array(mut items) if !items.is_empty() => items.remove(0),
        other => other,
    }
}

fn update_state(a: &Agent, service: &str) -> String {
    inspect(a, service)["update_status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until exactly `n` processes run `argv` and none runs `gone`.
fn wait_processes(a: &Agent, argv: &[&str], n: usize, gone: &[&str]) {
    wait_for(&format!("{n} x {argv:?} and no {gone:?}"), T, || {
        (a.task_processes(argv).len() == n && a.task_processes(gone).is_empty()).then_some(())
    });
}

#[test]
fn update_rollback_and_automatic_rollback_of_processes() {
    let a = Agent::start(&[]);
    let old = ["sleep", "3621"];
    let new = ["sleep", "3622"];
    a.ok(&[
        "service",
        "create",
        "--name",
        "s",
        "--replicas",
        "4",
        "sleep",
        "3621",
    ]);
    wait_processes(&a, &old, 4, &new);

    // Rolling update, two at a time, each batch watched for 1s.
    let out = a.ok(&[
        "service",
        "update",
        "--args",
        "3622",
        "--update-parallelism",
        "2",
        "--update-monitor",
        "1s",
        "s",
    ]);
    assert!(out.contains("/4: running"), "per-slot progress: {out}");
    assert!(out.contains("overall progress: 4 out of 4 tasks"), "{out}");
    wait_processes(&a, &new, 4, &old);
    let svc = inspect(&a, "s");
    assert_eq!(svc["spec"]["update_config"]["parallelism"], 2);
    assert_eq!(svc["update_status"]["state"], "completed");
    assert_eq!(svc["spec"]["command"], serde_json::json!(["3622"]));

    // Manual rollback: the old processes and the old update settings.
    a.ok(&["service", "rollback", "s"]);
    wait_processes(&a, &old, 4, &new);
    let svc = inspect(&a, "s");
    assert_eq!(svc["spec"]["update_config"]["parallelism"], 1);
    assert_eq!(svc["update_status"]["state"], "rollback_completed");
    assert_eq!(svc["spec"]["command"], serde_json::json!(["3621"]));

    // A bad update (the program exits at once) rolls itself back and the
    // command says it failed.
    let out = a.cli(&[
        "service",
        "update",
        "--args",
        "0.2",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "3s",
        "s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rolled-back update must fail");
    assert!(stderr.contains("rolled back"), "{stderr}");
    wait_for("rollback_completed", T, || {
        (update_state(&a, "s") == "rollback_completed").then_some(())
    });
    wait_processes(&a, &old, 4, &["sleep", "0.2"]);
    let svc = inspect(&a, "s");
    assert_eq!(svc["spec"]["command"], serde_json::json!(["3621"]));
    assert!(
        svc["update_status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exited"),
        "says why: {}",
        svc["update_status"]
    );
    // An automatic rollback leaves nothing to roll back to.
    assert!(svc["previous_spec"].is_null(), "{}", svc["previous_spec"]);
    let ps = a.json(&["service", "ps", "s"]);
    let ended_new: Vec<_> = ps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| !t["up_to_date"].as_bool().unwrap_or(true))
        .filter(|t| t["state"] == "complete" || t["state"] == "failed")
        .collect();
    assert!(
        !ended_new.is_empty(),
        "service ps shows the failed tasks: {ps}"
    );
    assert_eq!(a.running_tasks("s").len(), 4);
}

#[test]
fn two_manual_rollbacks_go_back_and_forth_and_pause_resumes() {
    let a = Agent::start(&[]);
    a.ok(&[
        "service",
        "create",
        "--name",
        "p",
        "--replicas",
        "2",
        "sleep",
        "3631",
    ]);
    a.ok(&[
        "service",
        "update",
        "--args",
        "3632",
        "--update-monitor",
        "0s",
        "p",
    ]);
    a.ok(&["service", "rollback", "p"]);
    wait_processes(&a, &["sleep", "3631"], 2, &["sleep", "3632"]);
    a.ok(&["service", "rollback", "p"]);
    wait_processes(&a, &["sleep", "3632"], 2, &["sleep", "3631"]);
    assert_eq!(update_state(&a, "p"), "rollback_completed");

    // A failing update pauses (the default action) and says so.
    let out = a.cli(&[
        "service",
        "update",
        "--args",
        "0.1",
        "--update-monitor",
        "2s",
        "p",
    ]);
    assert!(!out.status.success(), "a paused update must fail");
    let svc = inspect(&a, "p");
    assert_eq!(svc["update_status"]["state"], "paused");
    let msg = svc["update_status"]["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("update paused: task p."), "{msg}");
    // Paused means stopped: what still runs the old version keeps running.
    let old_left = a.task_processes(&["sleep", "3632"]).len();
    let end = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < end {
        assert_eq!(a.task_processes(&["sleep", "3632"]).len(), old_left);
        assert_eq!(update_state(&a, "p"), "paused");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new update resumes with the fixed spec.
    a.ok(&[
        "service",
        "update",
        "--args",
        "3633",
        "--update-monitor",
        "0s",
        "p",
    ]);
    wait_processes(&a, &["sleep", "3633"], 2, &["sleep", "3632"]);
    assert_eq!(update_state(&a, "p"), "completed");
}

fn write_stack(a: &Agent, file: &str, web_arg: &str, db_arg: &str, web_action: &str) -> String {
    let path = a.dir.path().join(file);
    std::fs::write(
        &path,
        format!(
            "services:\n  web:\n    image: sleep\n    command: [\"{web_arg}\"]\n    deploy:\n      replicas: 2\n      update_config:\n        parallelism: 2\n        monitor: 2s\n        failure_action: {web_action}\n  db:\n    image: sleep\n    command: [\"{db_arg}\"]\n    deploy:\n      replicas: 1\n"
        ),
    )
    .expect("write stack file");
    path.to_string_lossy().into_owned()
}

#[test]
fn stack_deploy_updates_only_changed_services_and_stack_rollback_reverts_all() {
    let a = Agent::start(&[]);
    let v1 = write_stack(&a, "v1.yml", "3641", "3642", "pause");
    a.ok(&["stack", "deploy", "-c", &v1, "app"]);
    wait_processes(&a, &["sleep", "3641"], 2, &[]);
    wait_processes(&a, &["sleep", "3642"], 1, &[]);
    let db_pid = a.task_processes(&["sleep", "3642"]);

    // Only web changes: db keeps its process.
    let v2 = write_stack(&a, "v2.yml", "3643", "3642", "pause");
    let out = a.ok(&["stack", "deploy", "-c", &v2, "app"]);
    assert!(out.contains("Updating service app_web"), "{out}");
    assert!(!out.contains("Updating service app_db"), "{out}");
    wait_processes(&a, &["sleep", "3643"], 2, &["sleep", "3641"]);
    assert_eq!(a.task_processes(&["sleep", "3642"]), db_pid, "db untouched");

    // Both change; then the stack goes back to version 2 together, then to 1.
    let v3 = write_stack(&a, "v3.yml", "3644", "3645", "pause");
    a.ok(&["stack", "deploy", "-c", &v3, "app"]);
    wait_processes(&a, &["sleep", "3644"], 2, &["sleep", "3643"]);
    wait_processes(&a, &["sleep", "3645"], 1, &["sleep", "3642"]);
    let versions = a.json(&["stack", "versions", "app"]);
    assert_eq!(versions.as_array().map(Vec::len), Some(3), "{versions}");

    a.ok(&["stack", "rollback", "app"]);
    wait_processes(&a, &["sleep", "3643"], 2, &["sleep", "3644"]);
    wait_processes(&a, &["sleep", "3642"], 1, &["sleep", "3645"]);
    assert_eq!(update_state(&a, "app_web"), "rollback_completed");
    assert_eq!(update_state(&a, "app_db"), "rollback_completed");

    a.ok(&["stack", "rollback", "app", "--to", "1"]);
    wait_processes(&a, &["sleep", "3641"], 2, &["sleep", "3643"]);
    let out = a.cli(&["stack", "rollback", "app", "--to", "99"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no version 99"), "{err}");

    // A bad deploy: web exits at once, rolls itself back; deploy says it failed.
    let bad = write_stack(&a, "bad.yml", "0.1", "3642", "rollback");
    let out = a.cli(&["stack", "deploy", "-c", &bad, "app"]);
    assert!(
        !out.status.success(),
        "a deploy that rolled back must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_processes(&a, &["sleep", "3641"], 2, &["sleep", "0.1"]);
}
