//! Maintenance as a field tech does it, on 3 managers + 1 worker on loopback
//! (process runtime): drain, pause, activate, through the CLI, checked with
//! `service ps`, `node ps` and the task processes themselves.

use skein_tests::{require, wait_for, Agent, Cluster};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

/// Tasks on `node` that are not finished, as `node ps` shows them.
fn live_on(via: &Agent, node: &str) -> Vec<serde_json::Value> {
    via.json(&["node", "ps", node])
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|t| {
                    !matches!(
                        t["state"].as_str().unwrap_or(""),
                        "complete" | "failed" | "shutdown" | "rejected" | "orphaned"
                    )
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn drain_wait(via: &Agent, node: &str, extra: &[&str]) -> String {
    let mut args = vec!["node", "drain", node, "--wait"];
    args.extend(extra);
    let out = via.ok(&args);
    eprintln!("$ skein {}\n{out}", args.join(" "));
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with(&format!("Node {node} drained in ")),
        "drain --wait ends with a one-line summary: {out}"
    );
    out
}

#[test]
fn drain_pause_and_activate_a_worker_and_the_leader() {
    let mut c = Cluster::start(3, 1, T);
    let (m2, w1) = (&c.managers[1], &c.workers[0]);
    m2.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "8",
        "sleep",
        "3801",
    ]);
    m2.ok(&[
        "service", "create", "--name", "agent", "--mode", "global", "sleep", "3802",
    ]);
    wait_for("the global task on all 4 nodes", T, || {
        (m2.running_nodes("agent").len() == 4).then_some(())
    });
    assert!(
        m2.running_nodes("web").contains(&"w1".to_string()),
        "some replicas run on the worker before the drain: {:?}",
        (
            m2.running_nodes("web"),
            m2.nodes(),
            m2.ok(&["service", "ps", "web"])
        )
    );

    // Drain the worker: replicas move, the global task stops, nothing left.
    let out = drain_wait(m2, "w1", &[]);
    assert!(out.contains("moved to"), "{out}");
    assert!(out.contains("stopped (global task)"), "{out}");
    assert!(live_on(m2, "w1").is_empty(), "{:?}", live_on(m2, "w1"));
    let web = m2.running_nodes("web");
    assert_eq!(web.len(), 8, "{web:?}");
    assert!(!web.contains(&"w1".to_string()), "{web:?}");
    assert_eq!(m2.running_nodes("agent"), ["m1", "m2", "m3"]);
    assert!(w1.task_processes(&["sleep", "3801"]).is_empty());
    assert!(w1.task_processes(&["sleep", "3802"]).is_empty());
    let row = m2
        .nodes()
        .into_iter()
        .find(|n| n["name"] == "w1")
        .expect("w1 listed");
    assert_eq!(row["availability"], "drain");

    // kill -9 and restart the drained worker: it comes back drained and runs nothing.
    c.workers[0].restart();
    let (m2, w1) = (&c.managers[1], &c.workers[0]);
    wait_for("w1 ready again", T, || {
        m2.nodes()
            .iter()
            .any(|n| n["name"] == "w1" && n["status"] == "ready")
            .then_some(())
    });
    let row = m2
        .nodes()
        .into_iter()
        .find(|n| n["name"] == "w1")
        .expect("w1 listed");
    assert_eq!(row["availability"], "drain", "drain survives a restart");
    assert!(live_on(m2, "w1").is_empty());
    assert!(w1.task_processes(&["sleep", "3801"]).is_empty());

    // Drain the leader: it keeps leading (or hands over) and writes go on.
    let leader = c.leader(m2).expect("a leader").name.clone();
    drain_wait(m2, &leader, &[]);
    assert!(live_on(m2, &leader).is_empty());
    assert_eq!(m2.running_nodes("web").len(), 8);
    m2.ok(&[
        "service",
        "create",
        "--name",
        "after-drain",
        "--replicas",
        "1",
        "sleep",
        "3803",
    ]);
    let managers: Vec<serde_json::Value> = m2
        .nodes()
        .into_iter()
        .filter(|n| n["role"] == "manager")
        .collect();
    assert_eq!(managers.len(), 3);
    assert!(
        managers.iter().all(|n| n["reachability"] == "reachable"),
        "a drained manager keeps its raft duties: {managers:?}"
    );
    assert_eq!(m2.nodes().iter().filter(|n| n["leader"] == true).count(), 1);
    // --transfer-leadership hands leadership to another manager.
    let leader = c.leader(m2).expect("a leader").name.clone();
    let out = m2.ok(&[
        "node",
        "update",
        "--availability",
        "drain",
        "--transfer-leadership",
        &leader,
    ]);
    assert!(out.contains("availability: drain"), "{out}");
    wait_for("leadership moved away from the drained leader", T, || {
        c.leader(m2).filter(|a| a.name != leader).map(|_| ())
    });

    // The worker back to active: its global task returns, replicas stay put.
    m2.ok(&["node", "update", "--availability", "active", "w1"]);
    wait_for("the global task back on w1", T, || {
        m2.running_nodes("agent")
            .contains(&"w1".to_string())
            .then_some(())
    });
    assert!(!m2.running_nodes("web").contains(&"w1".to_string()));

    // Pause it: its task keeps running, a scale-up places nothing there.
    m2.ok(&["node", "pause", "w1"]);
    m2.ok(&["service", "scale", "web=12"]);
    let web = m2.running_nodes("web");
    assert_eq!(web.len(), 12, "{web:?}");
    assert!(!web.contains(&"w1".to_string()), "{web:?}");
    assert!(
        !web.contains(&leader),
        "the drained leader gets nothing: {web:?}"
    );
    assert!(m2.running_nodes("agent").contains(&"w1".to_string()));
    assert_eq!(w1.task_processes(&["sleep", "3802"]).len(), 1);

    // Active again with --rebalance: the replicas spread over w1 too.
    let out = m2.ok(&["node", "activate", "w1", "--rebalance"]);
    assert!(out.contains("Rebalancing web"), "{out}");
    wait_for("web spread again, w1 included", T, || {
        let web = m2.running_nodes("web");
        let on_w1 = web.iter().filter(|n| *n == "w1").count();
        (web.len() == 12 && on_w1 >= 3).then_some(())
    });
}

#[test]
fn a_start_first_service_never_drops_below_its_replicas_during_a_drain() {
    let c = Cluster::start(1, 2, T);
    let m1 = &c.managers[0];
    m1.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "6",
        "--update-order",
        "start-first",
        "--update-parallelism",
        "2",
        "sleep",
        "3811",
    ]);
    let before = m1.running_nodes("api");
    assert!(before.contains(&"w1".to_string()), "{before:?}");
    // Watch the running count from another thread for the whole drain.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(AtomicUsize::new(usize::MAX));
    let samples = Arc::new(AtomicUsize::new(0));
    let api = m1.api.clone();
    let watcher = {
        let (stop, lowest, samples) = (stop.clone(), lowest.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = Command::new(skein_tests::skein_bin())
                    .args(["-H", &api, "service", "ls", "--format", "json"])
                    .output()
                    .expect("run skein");
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
                if let Some(row) = v
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["name"] == "api"))
                {
                    let running = row["running"].as_u64().unwrap_or(0) as usize;
                    lowest.fetch_min(running, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    drain_wait(m1, "w1", &[]);
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    assert!(samples.load(Ordering::SeqCst) > 0);
    assert_eq!(
        lowest.load(Ordering::SeqCst),
        6,
        "running replicas dipped during the drain"
    );
    assert!(live_on(m1, "w1").is_empty());
    assert_eq!(c.workers[0].task_processes(&["sleep", "3811"]).len(), 0);
}

#[test]
fn a_drain_that_cannot_place_replacements_says_where_capacity_is_missing() {
    let c = Cluster::start(1, 1, T);
    let m1 = &c.managers[0];
    m1.ok(&[
        "service",
        "create",
        "--name",
        "one-each",
        "--replicas",
        "2",
        "--update-order",
        "start-first",
        "--replicas-max-per-node",
        "1",
        "sleep",
        "3821",
    ]);
    let out = m1.cli(&["node", "drain", "w1", "--wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot leave w1"), "{err}");
    assert!(err.contains("max replicas per node reached"), "{err}");
    // It keeps running there until a deadline says otherwise.
    assert_eq!(live_on(m1, "w1").len(), 1);
    let out = m1.cli(&["node", "drain", "w1", "--deadline", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("deadline passed"), "{text}");
    assert!(text.contains("1 replacement without a node"), "{text}");
    assert!(live_on(m1, "w1").is_empty());
}

/// What a person sees in a terminal: `node drain --wait` in a tmux pane,
/// captured as rendered text.
#[test]
fn drain_wait_reads_well_in_a_terminal() {
    let tmux_here = Command::new("tmux").arg("-V").output().is_ok();
    if !require("tmux", tmux_here, "drain_wait_reads_well_in_a_terminal") {
        return;
    }
    let c = Cluster::start(1, 1, T);
    let m1 = &c.managers[0];
    m1.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "sleep",
        "3831",
    ]);
    let session = format!("skein-drain-{}", std::process::id());
    let socket = c.managers[0].dir.path().join("tmux.sock");
    let socket = socket.to_string_lossy().to_string();
    let script = format!(
        "{} -H {} node drain w1 --wait; echo EXIT=$?; sleep 600",
        skein_tests::skein_bin().display(),
        m1.api
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-S", &socket])
            .args(args)
            .output()
            .expect("run tmux")
    };
    struct Kill<'a>(&'a dyn Fn(&[&str]) -> std::process::Output);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            (self.0)(&["kill-server"]);
        }
    }
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "30",
        &script,
    ]);
    assert!(started.status.success(), "{started:?}");
    let _kill = Kill(&tmux);
    let screen = wait_for("the drain to finish in the pane", T, || {
        let out = tmux(&["capture-pane", "-p", "-t", &session]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("EXIT=").then_some(text)
    });
    eprintln!("{screen}");
    let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("Draining w1"), "{screen}");
    let summary = lines[lines.len() - 2];
    assert!(summary.starts_with("Node w1 drained in "), "{screen}");
    assert!(summary.ends_with("tasks moved."), "{screen}");
    assert_eq!(lines[lines.len() - 1], "EXIT=0", "{screen}");
    assert!(
        screen.lines().any(|l| l.contains(": moved to m1")),
        "{screen}"
    );
    // No progress bar left behind, no stray control characters.
    assert!(!screen.contains('['), "{screen}");
    assert!(
        !screen.chars().any(|c| c.is_control() && c != '\n'),
        "{screen}"
    );
}
