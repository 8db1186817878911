//! Several agents on loopback forming one cluster: 3 managers and 2
//! workers, driven through the CLI against different nodes, with managers
//! and workers killed and restarted.

use skein_tests::{wait_for, Agent, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

fn token(a: &Agent, role: &str) -> String {
    a.ok(&["join-token", role, "-q"]).trim().to_string()
}

fn nodes(a: &Agent) -> Vec<serde_json::Value> {
    a.nodes()
}

fn start_cluster() -> Cluster {
    Cluster::start(3, 2, T)
}

/// Running tasks of `service` per node name, as `service ps` on `a` shows them.
fn running_nodes(a: &Agent, service: &str) -> Vec<String> {
    a.running_nodes(service)
}

#[test]
fn five_nodes_one_leader_and_replicas_spread() {
    let c = start_cluster();
    // Workers hold no cluster state: asked, they say so and name a manager.
    for w in &c.workers {
        wait_for("the worker to name a manager", T, || {
            let out = w.cli(&["node", "ls"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("is a worker"),
                "{err}"
            );
            err.contains("manager, e.g. m").then_some(())
        });
    }
    for a in c.managers.iter() {
        let n = nodes(a);
        assert_eq!(
            n.iter().filter(|x| x["role"] == "manager").count(),
            3,
            "{n:?}"
        );
        assert_eq!(n.iter().filter(|x| x["leader"] == true).count(), 1, "{n:?}");
    }
    // A worker cannot change the cluster: its API refuses and names a
    // manager to use; nothing is created.
    let create = [
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "sleep",
        "3710",
    ];
    let out = c.workers[0].cli(&create);
    assert!(!out.status.success(), "a worker's API accepted a write");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this node (w1) is a worker") && err.contains("manager, e.g. m"),
        "{err}"
    );
    assert!(c.managers[0]
        .json(&["service", "ls"])
        .as_array()
        .is_some_and(|a| a.is_empty()));
    // Nor may it hand out join tokens (secrets that would let a box in as a manager).
    assert!(!c.workers[0]
        .cli(&["join-token", "manager"])
        .status
        .success());
    // A write through a follower manager is forwarded to the leader.
    let follower = c
        .managers
        .iter()
        .find(|m| {
            nodes(m)
                .iter()
                .any(|n| n["name"] == m.name && n["leader"] == false)
        })
        .expect("a follower manager");
    follower.ok(&create);
    // The same refusal answers alike through the follower and the leader.
    let leader = c.leader(follower).expect("a leader");
    for via in [follower, leader] {
        let out = via.cli(&create);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("already exists") && err.contains("409"),
            "through {}: {err}",
            via.name
        );
    }
    let on = running_nodes(follower, "web");
    assert_eq!(
        on.len(),
        6,
        "{}\n{}",
        String::from_utf8_lossy(&follower.cli(&["service", "ps", "web"]).stdout),
        c.all()
            .map(|a| a
                .log()
                .lines()
                .filter(|l| l.contains("status changes") || l.contains("down"))
                .collect::<Vec<_>>()
                .join("\n"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut distinct = on.clone();
    distinct.dedup();
    assert!(distinct.len() >= 4, "spread over at least 4 nodes: {on:?}");
    let procs: usize = c
        .all()
        .map(|a| a.task_processes(&["sleep", "3710"]).len())
        .sum();
    assert_eq!(procs, 6);
}

#[test]
fn leader_and_worker_failures() {
    let mut c = start_cluster();
    c.managers[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "sleep",
        "3711",
    ]);
    let leader = c
        .managers
        .iter()
        .position(|m| {
            nodes(m)
                .iter()
                .any(|n| n["leader"] == true && n["name"] == m.name.as_str())
        })
        .expect("a leader among the managers");
    c.managers[leader].kill9();
    let other = (leader + 1) % 3;
    // Another manager accepts a write: a new leader commits it.
    wait_for("a write after the leader died", T, || {
        let out = c.managers[other].cli(&[
            "service",
            "create",
            "--name",
            "after",
            "--replicas",
            "1",
            "--detach",
            "sleep",
            "3712",
        ]);
        out.status.success().then_some(())
    });
    wait_for("a new leader", T, || {
        nodes(&c.managers[other])
            .iter()
            .any(|n| n["leader"] == true && n["name"] != c.managers[leader].name.as_str())
            .then_some(())
    });

    // Kill a worker: its replicas run elsewhere.
    let w = &c.workers[0];
    let lost = w.task_processes(&["sleep", "3711"]).len();
    c.workers[0].kill9();
    wait_for("six replicas on live nodes", T, || {
        let on = running_nodes(&c.managers[other], "web");
        (on.len() == 6 && !on.contains(&"w1".to_string()) && !on.contains(&c.managers[leader].name))
            .then_some(())
    });
    // Bring both back: nothing runs twice.
    c.workers[0].restart();
    c.managers[leader].restart();
    wait_for("stale tasks stopped", T, || {
        let procs: usize = c
            .all()
            .map(|a| a.task_processes(&["sleep", "3711"]).len())
            .sum();
        (procs == 6).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let procs: usize = c
        .all()
        .map(|a| a.task_processes(&["sleep", "3711"]).len())
        .sum();
    assert_eq!(
        procs, 6,
        "exactly six processes for six replicas (w1 had {lost})"
    );

    // Every manager killed and restarted: the state is intact.
    for m in c.managers.iter_mut() {
        m.kill9();
    }
    for m in c.managers.iter_mut() {
        m.restart();
    }
    wait_for("services back", T, || {
        let ls = c.managers[0].json(&["service", "ls"]);
        let names: Vec<&str> = ls
            .as_array()?
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        (names.contains(&"web") && names.contains(&"after")).then_some(())
    });
    wait_for("a leader again", T, || {
        nodes(&c.managers[0])
            .iter()
            .any(|n| n["leader"] == true)
            .then_some(())
    });
}

#[test]
fn a_minority_cannot_commit() {
    let c = start_cluster();
    // Freeze two of three managers: the one left is a minority.
    let frozen: Vec<i32> = c.managers[1..].iter().filter_map(|m| m.pid()).collect();
    for p in &frozen {
        // SAFETY: kill(2) on our own child processes.
        unsafe { libc::kill(*p, libc::SIGSTOP) };
    }
    let out = c.managers[0].cli(&[
        "service", "create", "--name", "nope", "--detach", "sleep", "3713",
    ]);
    for p in &frozen {
        // SAFETY: as above.
        unsafe { libc::kill(*p, libc::SIGCONT) };
    }
    assert!(!out.status.success(), "a minority committed a write");
    wait_for("the majority is back and commits", T, || {
        let o = c.managers[0].cli(&[
            "service", "create", "--name", "yes", "--detach", "sleep", "3714",
        ]);
        o.status.success().then_some(())
    });
}

#[test]
fn a_bad_token_is_refused_with_a_message() {
    let m1 = Agent::named("m1", &[]).launch();
    let wt = token(&m1, "worker");
    m1.ok(&["join-token", "worker", "--rotate"]);
    let out = m1.spawn_and_wait_exit("w9", &["--join", &m1.listen, "--token", &wt]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token"), "{err}");
}

#[test]
fn node_lifecycle_promote_demote_rm_leave() {
    let mut c = start_cluster();
    let m2 = &c.managers[1];
    m2.ok(&["node", "promote", "w1"]);
    wait_for("w1 is a manager", T, || {
        nodes(m2)
            .iter()
            .any(|n| n["name"] == "w1" && n["role"] == "manager")
            .then_some(())
    });
    // Demote whoever leads: leadership moves first, the cluster keeps working.
    let leader = nodes(m2)
        .iter()
        .find(|n| n["leader"] == true)
        .and_then(|n| n["name"].as_str().map(String::from))
        .expect("a leader");
    m2.ok(&["node", "demote", &leader]);
    wait_for("a new leader that is a manager", T, || {
        nodes(m2)
            .iter()
            .any(|n| n["leader"] == true && n["name"] != leader.as_str() && n["role"] == "manager")
            .then_some(())
    });
    m2.ok(&[
        "service", "create", "--name", "still", "--detach", "sleep", "3715",
    ]);
    // A reachable node is not removed without --force; a down one is.
    wait_for("w2 ready", T, || {
        nodes(m2)
            .iter()
            .any(|n| n["name"] == "w2" && n["status"] == "ready")
            .then_some(())
    });
    let out = m2.cli(&["node", "rm", "w2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reachable"), "{err}");
    c.workers[1].kill9();
    wait_for("w2 down", T, || {
        nodes(m2)
            .iter()
            .any(|n| n["name"] == "w2" && n["status"] == "down")
            .then_some(())
    });
    m2.ok(&["node", "rm", "w2"]);
    assert!(nodes(m2).iter().all(|n| n["name"] != "w2"));
    // A manager must be demoted before it leaves. (w1 is one now, unless an
    // election on this busy machine made it the leader demoted above.)
    // w1's own view: a manager lists itself as one; a worker holds no
    // cluster state and says it is one.
    let w1_manager = |a: &Agent| {
        let out = a.cli(&["node", "ls", "--format", "json"]);
        if !out.status.success() {
            return false;
        }
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|n| n["name"] == "w1" && n["role"] == "manager")
        })
    };
    if leader != "w1" {
        wait_for("w1 sees itself a manager", T, || {
            w1_manager(&c.workers[0]).then_some(())
        });
        let out = c.workers[0].cli(&["leave"]);
        assert!(!out.status.success(), "w1 is a manager now");
        c.workers[0].ok(&["node", "demote", "w1"]);
    }
    wait_for("w1 to say it is a worker", T, || {
        let out = c.workers[0].cli(&["node", "ls"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("is a worker")
            .then_some(())
    });
    c.workers[0].ok(&["leave"]);
    wait_for("w1 gone", T, || {
        nodes(m2).iter().all(|n| n["name"] != "w1").then_some(())
    });
}
