//! Rolling updates and rollbacks on the Docker runtime, with the local test
//! images: skein-test:v1 and :v2 (good) and :unhealthy (its health check
//! fails), through the CLI of a `--runtime docker` agent. Without an engine
//! each test fails under `SKEIN_REQUIRE_ALL=1` and is reported as skipped
//! otherwise; dropping the agent removes its containers, also when a test
//! fails.

use skein_tests::{
    docker, ensure_test_images, free_port, require_docker, wait_for, Agent, Cluster,
};
use std::io::{Read, Write};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
const HEALTH: &str = "wget -q -O- http://127.0.0.1:8080/health";

fn docker_agent(test: &str) -> Option<Agent> {
    if !require_docker(test) {
        return None;
    }
    ensure_test_images();
    Some(Agent::start_with_runtime("docker", &[]))
}

fn inspect(a: &Agent, service: &str) -> serde_json::Value {
    let text = a.ok(&["service", "inspect", service]);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad inspect JSON: {e}: {text}"));
    match v {
        serde_json::Value::Array(mut items) if !items.is_empty() => items.remove(0),
        other => other,
    }
}

/// Images of the tasks that run and are meant to.
fn running_images(a: &Agent, service: &str) -> Vec<String> {
    a.running_tasks(service)
        .iter()
        .map(|t| t["image"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn all_on(a: &Agent, service: &str, image: &str, n: usize) {
    wait_for(&format!("{n} tasks of {service} on {image}"), T, || {
        let imgs = running_images(a, service);
        (imgs.len() == n && imgs.iter().all(|i| i == image)).then_some(())
    });
}

fn http_get(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[test]
fn docker_good_update_then_a_bad_one_rolls_back_by_itself() {
    let Some(a) = docker_agent("docker_good_update_then_a_bad_one_rolls_back_by_itself") else {
        return;
    };
    a.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--health-cmd",
        HEALTH,
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "skein-test:v1",
    ]);
    all_on(&a, "web", "skein-test:v1", 3);
    let out = a.ok(&[
        "service",
        "update",
        "--image",
        "skein-test:v2",
        "--update-parallelism",
        "2",
        "--update-monitor",
        "2s",
        "web",
    ]);
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    all_on(&a, "web", "skein-test:v2", 3);
    assert_eq!(inspect(&a, "web")["update_status"]["state"], "completed");

    let out = a.cli(&[
        "service",
        "update",
        "--image",
        "skein-test:unhealthy",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "20s",
        "web",
    ]);
    assert!(
        !out.status.success(),
        "a rolled-back update must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let svc = inspect(&a, "web");
    assert_eq!(svc["update_status"]["state"], "rollback_completed");
    assert_eq!(svc["spec"]["image"], "skein-test:v2");
    assert!(
        svc["update_status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unhealthy"),
        "{}",
        svc["update_status"]
    );
    all_on(&a, "web", "skein-test:v2", 3);
    let ps = a.json(&["service", "ps", "web"]);
    assert!(
        ps.as_array()
            .into_iter()
            .flatten()
            .any(|t| t["image"] == "skein-test:unhealthy" && t["state"] == "failed"),
        "service ps shows the failed task: {ps}"
    );
}

#[test]
fn docker_pause_then_resume_and_start_first_keeps_every_replica_up() {
    let Some(a) = docker_agent("docker_pause_then_resume_and_start_first_keeps_every_replica_up")
    else {
        return;
    };
    a.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "--health-cmd",
        HEALTH,
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "skein-test:v1",
    ]);
    all_on(&a, "api", "skein-test:v1", 2);
    // The default failure action pauses; one slot was tried, one still on v1.
    let out = a.cli(&[
        "service",
        "update",
        "--image",
        "skein-test:unhealthy",
        "--update-monitor",
        "20s",
        "api",
    ]);
    assert!(!out.status.success(), "a paused update must fail");
    let svc = inspect(&a, "api");
    assert_eq!(svc["update_status"]["state"], "paused");
    assert!(
        svc["update_status"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("update paused: task api."),
        "{}",
        svc["update_status"]
    );
    assert!(running_images(&a, "api").contains(&"skein-test:v1".to_string()));

    // Resume with a good image, start-first: two replicas run throughout.
    a.ok(&[
        "service",
        "update",
        "--detach",
        "--image",
        "skein-test:v2",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        "api",
    ]);
    wait_for("the update to complete", T, || {
        let running = running_images(&a, "api").len();
        // Slot 1 may be empty from the paused attempt until it is replaced;
        // the slot that still ran v1 must never go down.
        assert!(running >= 1, "start-first dropped a running replica");
        (inspect(&a, "api")["update_status"]["state"] == "completed").then_some(())
    });
    all_on(&a, "api", "skein-test:v2", 2);
}

#[test]
fn docker_global_service_with_a_host_port_updates_stop_first_and_says_so() {
    let Some(a) =
        docker_agent("docker_global_service_with_a_host_port_updates_stop_first_and_says_so")
    else {
        return;
    };
    let port = free_port();
    a.ok(&[
        "service",
        "create",
        "--name",
        "edge",
        "--mode",
        "global",
        "--publish",
        &format!("{port}:8080,mode=host"),
        "--update-order",
        "start-first",
        "skein-test:v1",
    ]);
    wait_for("v1 answers", T, || {
        http_get(port).filter(|b| b.contains("skein-test v1"))
    });
    a.ok(&["service", "update", "--image", "skein-test:v2", "edge"]);
    wait_for("v2 answers", T, || {
        http_get(port).filter(|b| b.contains("skein-test v2"))
    });
    let svc = inspect(&a, "edge");
    assert_eq!(svc["update_status"]["state"], "completed");
    let msg = svc["update_status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("start-first done stop-first"), "{msg}");
    assert!(msg.contains(&format!("host port {port}/tcp")), "{msg}");
    all_on(&a, "edge", "skein-test:v2", 1);
}

#[test]
fn docker_stack_rollback_reverts_both_services() {
    let Some(a) = docker_agent("docker_stack_rollback_reverts_both_services") else {
        return;
    };
    let file = |name: &str, front: &str, back: &str| {
        let path = a.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "services:\n  front:\n    image: {front}\n    deploy:\n      replicas: 2\n      update_config:\n        parallelism: 2\n        monitor: 1s\n  back:\n    image: {back}\n    deploy:\n      replicas: 1\n      update_config:\n        monitor: 1s\n"
            ),
        )
        .expect("write stack file");
        path.to_string_lossy().into_owned()
    };
    let v1 = file("v1.yml", "skein-test:v1", "skein-test:v1");
    let v2 = file("v2.yml", "skein-test:v2", "skein-test:v2");
    a.ok(&["stack", "deploy", "-c", &v1, "shop"]);
    a.ok(&["stack", "deploy", "-c", &v2, "shop"]);
    all_on(&a, "shop_front", "skein-test:v2", 2);
    all_on(&a, "shop_back", "skein-test:v2", 1);
    a.ok(&["stack", "rollback", "shop"]);
    all_on(&a, "shop_front", "skein-test:v1", 2);
    all_on(&a, "shop_back", "skein-test:v1", 1);
    for s in ["shop_front", "shop_back"] {
        assert_eq!(
            inspect(&a, s)["update_status"]["state"],
            "rollback_completed"
        );
    }
}

/// Images of the containers of `a`'s node that run right now (from the
/// engine, not from skein's view).
fn engine_running_images(a: &Agent) -> Vec<String> {
    let Some(node) = a.node_id() else {
        return Vec::new();
    };
    let out = docker(&[
        "ps",
        "--filter",
        &format!("label=skein.node={node}"),
        "--filter",
        "status=running",
        "--format",
        "{{.Image}}",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn docker_a_new_leader_finishes_an_update_the_old_one_started() {
    if !require_docker("docker_a_new_leader_finishes_an_update_the_old_one_started") {
        return;
    }
    ensure_test_images();
    let mut c = Cluster::start_with_runtime("docker", 3, 0, T);
    c.managers[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "skein-test:v1",
    ]);
    all_on(&c.managers[0], "web", "skein-test:v1", 6);
    c.managers[0].ok(&[
        "service",
        "update",
        "--detach",
        "--image",
        "skein-test:v2",
        "--update-parallelism",
        "1",
        // Paced so that the leader dies mid-update.
        "--update-delay",
        "2s",
        "web",
    ]);
    let v2 = |a: &Agent| {
        running_images(a, "web")
            .iter()
            .filter(|i| *i == "skein-test:v2")
            .count()
    };
    wait_for("the first slot updated", T, || {
        (v2(&c.managers[0]) >= 1).then_some(())
    });
    assert!(v2(&c.managers[0]) < 6, "the update is still going");
    let old = wait_for("a leader", T, || {
        c.leader(&c.managers[0]).map(|m| m.name.clone())
    });
    let leader = c
        .managers
        .iter()
        .position(|m| m.name == old)
        .expect("the leader is one of the managers");
    c.managers[leader].kill9();
    let other = (leader + 1) % 3;
    wait_for("a new leader", T, || {
        c.leader(&c.managers[other])
            .filter(|m| m.name != old)
            .map(|_| ())
    });
    wait_for("the new leader completes the update", T, || {
        (inspect(&c.managers[other], "web")["update_status"]["state"] == "completed").then_some(())
    });
    all_on(&c.managers[other], "web", "skein-test:v2", 6);
    // The engine agrees: on the live nodes, six v2 containers and no v1.
    wait_for("6 v2 containers on the live nodes, no v1", T, || {
        let images: Vec<String> = c
            .managers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .flat_map(|(_, a)| engine_running_images(a))
            .collect();
        let v2 = images.iter().filter(|i| *i == "skein-test:v2").count();
        let v1 = images.iter().filter(|i| *i == "skein-test:v1").count();
        (v2 == 6 && v1 == 0).then_some(())
    });
    let running = c.managers[other].running_tasks("web");
    assert!(running.iter().all(|t| t["node"] != old.as_str()));
}
