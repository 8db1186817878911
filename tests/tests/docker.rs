//! The Docker runtime against the real engine, driven through the CLI of a
//! `--runtime docker` agent as a user would. Without an engine answering
//! `docker info` every test fails under `SKEIN_REQUIRE_ALL=1` (CI) and is
//! reported as skipped otherwise ([`skein_tests::require`]), and builds the
//! skein-test images (`scripts/make-test-image.sh`) when they are missing.
//! Dropping the agent removes every container and network it created, also
//! when a test fails.

use skein_tests::{docker, ensure_test_images, free_port, require_docker, wait_for, Agent};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A `--runtime docker` agent, or None (after saying why) without an engine.
fn docker_agent(test: &str) -> Option<Agent> {
    if !require_docker(test) {
        return None;
    }
    ensure_test_images();
    Some(Agent::start_with_runtime("docker", &[]))
}

/// The body of `GET http://127.0.0.1:PORT/`, if something answers.
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

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(id: &str, format: &str) -> String {
    let out = docker(&["inspect", "-f", format, id]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn rows(a: &Agent, service: &str) -> Vec<serde_json::Value> {
    a.json(&["service", "ps", service])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Asserts `check` holds on every poll for `window`: that nothing changes
/// when nothing should.
fn holds_for(window: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Err(e) = check() {
            panic!("{what}: {e}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_global_service_publishes_its_host_port() {
    let Some(a) = docker_agent("a_global_service_publishes_its_host_port") else {
        return;
    };
    let port = free_port();
    a.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--mode",
        "global",
        "--publish",
        &format!("{port}:8080,mode=host"),
        "skein-test:v1",
    ]);
    let body = wait_for("the service to answer on its host port", T, || {
        http_get(port).filter(|b| b.contains("skein-test"))
    });
    assert_eq!(body.trim(), "skein-test v1");
    let ids = a.containers(&["skein.service=web"]);
    assert_eq!(ids.len(), 1, "one container on the one node: {ids:?}");
    let tasks = a.running_tasks("web");
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        inspect(&ids[0], "{{.Name}}"),
        format!(
            "/skein.web.{}.{}",
            a.node_id().expect("node id"),
            tasks[0]["id"].as_str().expect("task id")
        ),
        "a global task's container is named after its node"
    );

    a.ok(&["service", "rm", "web"]);
    wait_for("the container to be removed", T, || {
        a.containers(&[]).is_empty().then_some(())
    });
    assert_eq!(http_get(port), None, "nothing answers on the port any more");
}

#[test]
fn replicated_containers_are_labelled_and_adopted_after_an_agent_kill() {
    let Some(mut a) =
        docker_agent("replicated_containers_are_labelled_and_adopted_after_an_agent_kill")
    else {
        return;
    };
    a.ok(&[
        "service",
        "create",
        "--name",
        "rep",
        "--replicas",
        "3",
        "skein-test:v1",
    ]);
    let tasks = a.running_tasks("rep");
    assert_eq!(tasks.len(), 3);
    let node = a.node_id().expect("node id");
    let mut before = a.containers(&["skein.service=rep"]);
    before.sort();
    assert_eq!(before.len(), 3, "{before:?}");
    for t in &tasks {
        let task_id = t["id"].as_str().expect("task id");
        let slot = t["slot"].as_u64().expect("slot");
        let ids = a.containers(&[&format!("skein.task={task_id}")]);
        assert_eq!(ids.len(), 1, "one container for task {task_id}");
        assert_eq!(
            inspect(&ids[0], "{{.Name}}"),
            format!("/skein.rep.{slot}.{task_id}")
        );
        let labels = inspect(
            &ids[0],
            r#"{{index .Config.Labels "skein.service"}} {{index .Config.Labels "skein.node"}} {{index .Config.Labels "skein.service.id"}}"#,
        );
        let labels: Vec<&str> = labels.split(' ').collect();
        assert_eq!(labels[..2], ["rep", node.as_str()]);
        assert!(!labels[2].is_empty(), "skein.service.id is set");
        assert_eq!(inspect(&ids[0], "{{.HostConfig.RestartPolicy.Name}}"), "no");
        assert_eq!(inspect(&ids[0], "{{.State.Status}}"), "running");
    }

    a.kill9();
    // The containers do not depend on the agent.
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=skein.node={node}"),
        "--filter",
        "status=running",
    ]);
    assert_eq!(String::from_utf8_lossy(&running.stdout).lines().count(), 3);
    a.restart();
    wait_for("3 running tasks after the restart", T, || {
        (a.running_tasks("rep").len() == 3).then_some(())
    });
    // Give the restarted agent time to (wrongly) start or remove anything.
    holds_for(
        Duration::from_secs(3),
        "the same 3 containers, adopted",
        || {
            let mut now = a.containers(&["skein.service=rep"]);
            now.sort();
            if now != before {
                return Err(format!("{now:?} != {before:?}"));
            }
            Ok(())
        },
    );
    let mut after_tasks: Vec<String> = a
        .running_tasks("rep")
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    let mut before_tasks: Vec<String> = tasks
        .iter()
        .filter_map(|t| t["id"].as_str().map(String::from))
        .collect();
    after_tasks.sort();
    before_tasks.sort();
    assert_eq!(after_tasks, before_tasks, "the same tasks, none replaced");

    a.ok(&["service", "rm", "rep"]);
    wait_for("every container of the service removed", T, || {
        a.containers(&[]).is_empty().then_some(())
    });
}

#[test]
fn a_missing_image_fails_service_create_and_names_the_image() {
    let Some(a) = docker_agent("a_missing_image_fails_service_create_and_names_the_image") else {
        return;
    };
    let started = Instant::now();
    let out = a.cli(&[
        "service",
        "create",
        "--name",
        "ghost",
        "skein-test:no-such-tag",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create succeeded: {err}");
    assert!(err.contains("skein-test:no-such-tag"), "{err}");
    assert!(err.contains("not found on this node"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed promptly, not after a pull: {:?}",
        started.elapsed()
    );
    assert!(a.containers(&[]).is_empty(), "no container was created");
}

#[test]
fn on_failure_restarts_end_after_max_attempts() {
    let Some(a) = docker_agent("on_failure_restarts_end_after_max_attempts") else {
        return;
    };
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
        "--restart-delay",
        "200ms",
        "skein-test:v1",
        "sh",
        "-c",
        "sleep 0.5; exit 3",
    ]);
    let failed = |a: &Agent| -> Vec<serde_json::Value> {
        rows(a, "exit3")
            .into_iter()
            .filter(|t| t["state"] == "failed")
            .collect()
    };
    let three = wait_for("three failed tasks", T, || {
        let f = failed(&a);
        (f.len() == 3).then_some(f)
    });
    for t in &three {
        assert_eq!(t["exit_code"], 3, "{t}");
    }
    // Far longer than the restart delay: no fourth task.
    holds_for(
        Duration::from_secs(3),
        "exactly three tasks, all failed",
        || {
            let all = rows(&a, "exit3");
            let failed = all.iter().filter(|t| t["state"] == "failed").count();
            if all.len() != 3 || failed != 3 {
                return Err(format!("{all:?}"));
            }
            Ok(())
        },
    );
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=skein.node={}", a.node_id().expect("node id")),
        "--filter",
        "status=running",
    ]);
    assert!(
        running.stdout.is_empty(),
        "no container runs: {}",
        String::from_utf8_lossy(&running.stdout)
    );
}

#[test]
fn services_of_a_stack_reach_each_other_by_name() {
    let Some(a) = docker_agent("services_of_a_stack_reach_each_other_by_name") else {
        return;
    };
    // Stack networks are per engine: a name of its own keeps runs apart.
    let stack = format!("dk{}x{}", std::process::id(), free_port());
    let file = a.dir.path().join("stack.yml");
    std::fs::write(
        &file,
        "services:\n  web:\n    image: skein-test:v1\n  client:\n    image: skein-test:v1\n    stop_grace_period: 1s\n    command: [\"sh\", \"-c\", \"while true; do wget -q -O- http://web:8080/ || echo fetch failed; sleep 0.3; done\"]\n",
    )
    .expect("write the stack file");
    a.ok(&[
        "stack",
        "deploy",
        "-c",
        file.to_str().expect("utf-8 path"),
        &stack,
    ]);
    let client = format!("{stack}_client");
    wait_for("the client to fetch from web by name", T, || {
        a.ok(&["service", "logs", &client])
            .contains("skein-test v1")
            .then_some(())
    });
    let network = format!("skein_{stack}");
    let ids = a.containers(&[&format!("skein.stack={stack}")]);
    assert_eq!(ids.len(), 2, "{ids:?}");
    for id in &ids {
        assert_eq!(
            inspect(id, "{{.HostConfig.NetworkMode}}"),
            inspect(&network, "{{.Id}}"),
            "every task of the stack is on {network}"
        );
    }

    a.ok(&["stack", "rm", &stack]);
    wait_for("the stack's containers and network removed", T, || {
        (a.containers(&[]).is_empty()
            && !docker(&["network", "inspect", &network]).status.success())
        .then_some(())
    });
}

/// Issue 3 on Docker: a failing health check (the engine's own) replaces the
/// task and the failed task's error names the health check; a passing one
/// makes the task running and healthy.
#[test]
fn health_checks_on_docker() {
    let Some(a) = docker_agent("health_checks_on_docker") else {
        return;
    };
    a.ok(&[
        "service",
        "create",
        "--name",
        "sick",
        "--detach",
        "--health-cmd",
        "wget -q -O- http://127.0.0.1:8080/health",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        "--restart-delay",
        "0s",
        "skein-test:unhealthy",
    ]);
    let failed = wait_for("a task failed by its health check", T, || {
        rows(&a, "sick")
            .into_iter()
            .find(|t| t["state"] == "failed")
    });
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .contains("health check failed"),
        "{failed}"
    );
    wait_for("a replacement task", T, || {
        (rows(&a, "sick").len() >= 2).then_some(())
    });
    assert!(rows(&a, "sick").iter().all(|t| t["state"] != "running"));

    a.ok(&[
        "service",
        "create",
        "--name",
        "fine",
        "--health-cmd",
        "wget -q -O- http://127.0.0.1:8080/health",
        "--health-interval",
        "1s",
        "skein-test:v1",
    ]);
    let running = a.running_tasks("fine");
    assert_eq!(running.len(), 1);
    assert_eq!(running[0]["health"], "healthy");
}
