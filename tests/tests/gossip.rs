//! Zero-touch bootstrap on separate "boxes": every agent runs in its own
//! network namespace on one Linux bridge (its own address, multicast on, so
//! mDNS works as on a LAN), started with only `--bootstrap-expect 3
//! --cluster-key K` (plus a name, a data dir and the process runtime).
//! Checks what an operator would see from every box: one cluster of 5, 3
//! managers, one leader, all ready; a box with another key stays out; a
//! killed box is marked down.
//!
//! Needs root and `ip` (CI runs as root): without them it fails under
//! `SKEIN_REQUIRE_ALL=1` and is reported as skipped otherwise.
//! Everything it creates (namespaces `skn-<pid>-<i>`, bridge, veths, an
//! iptables FORWARD rule on that bridge, processes) is removed on drop, also
//! when the test fails. Traffic only flows inside those namespaces.
//!
//! On loopback (no root needed): a box waiting for its cluster answers its
//! API (members, and why nothing else yet) and hands over to the full API
//! on the same address once the cluster forms; a promoted or demoted node's
//! role shows in every node's gossip membership.

use skein_tests::{have_command, is_root, require, skein_bin, wait_for, Agent, Cluster};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts an agent command at info level, its output (both streams) in `log`.
fn spawn_logged(cmd: &mut Command, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start skein agent")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the namespace lab can run here: root and `ip` (iproute2); see
/// [`skein_tests::require`].
fn lab_available(test: &str) -> bool {
    require(
        "root (network namespaces need it; CI runs as root)",
        is_root(),
        test,
    ) && require("`ip` (iproute2)", have_command("ip"), test)
}

/// A bridge with one namespace per box. Removed on drop.
struct Lab {
    bridge: String,
    ns: Vec<String>,
    hosts: Vec<String>,
    ips: Vec<String>,
    forward_rule: bool,
    procs: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(n: usize) -> Lab {
        let pid = std::process::id();
        let tag = pid % 100_000;
        let net = 20 + (pid % 200);
        let mut lab = Lab {
            bridge: format!("skb{tag}"),
            ns: Vec::new(),
            hosts: Vec::new(),
            ips: Vec::new(),
            forward_rule: false,
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        must(&["ip", "link", "add", &lab.bridge, "type", "bridge"]);
        // Multicast (mDNS) must pass: no snooping without a querier.
        let _ = run(&[
            "ip",
            "link",
            "set",
            &lab.bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        must(&["ip", "link", "set", &lab.bridge, "up"]);
        if have_command("iptables") {
            // Where Docker runs, bridged frames meet a FORWARD DROP policy.
            let ok = run(&[
                "iptables",
                "-I",
                "FORWARD",
                "-i",
                &lab.bridge,
                "-o",
                &lab.bridge,
                "-j",
                "ACCEPT",
            ]);
            lab.forward_rule = ok.status.success();
        }
        for i in 0..n {
            let ns = format!("skn-{pid}-{i}");
            let host = format!("skv{tag}h{i}");
            let peer = format!("skv{tag}n{i}");
            let ip = format!("10.213.{net}.{}", 10 + i);
            must(&["ip", "netns", "add", &ns]);
            lab.ns.push(ns.clone());
            must(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            lab.hosts.push(host.clone());
            must(&["ip", "link", "set", &host, "master", &lab.bridge]);
            must(&["ip", "link", "set", &host, "up"]);
            must(&["ip", "link", "set", &peer, "netns", &ns]);
            let x = |args: &[&str]| {
                let mut all = vec!["ip", "netns", "exec", &ns];
                all.extend_from_slice(args);
                must(&all);
            };
            x(&["ip", "link", "set", "lo", "up"]);
            x(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &peer]);
            x(&["ip", "link", "set", &peer, "multicast", "on"]);
            x(&["ip", "link", "set", &peer, "up"]);
            x(&["ip", "route", "add", "224.0.0.0/4", "dev", &peer]);
            lab.ips.push(ip);
            lab.procs.push(None);
        }
        lab
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("box{i}.log"))
    }

    /// Starts `skein agent` in box `i` with only the bootstrap flags.
    fn start(&mut self, i: usize, key: &str) {
        let data = self.dir.path().join(format!("box{i}"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns[i]])
            .arg(skein_bin())
            .args(["agent", "--bootstrap-expect", "3", "--cluster-key", key])
            .args(["--name", &format!("box{i}"), "--runtime", "process"])
            .arg("--data-dir")
            .arg(&data);
        self.procs[i] = Some(spawn_logged(&mut cmd, &self.log(i)));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `skein node ls --format json` run inside box `i`.
    fn nodes(&self, i: usize) -> Option<Vec<NodeRow>> {
        self.nodes_json(i)
            .map(|v| v.iter().map(NodeRow::from).collect())
    }

    fn nodes_json(&self, i: usize) -> Option<Vec<serde_json::Value>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns[i]])
            .arg(skein_bin())
            .args(["node", "ls", "--format", "json"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// What `skein node ls` run inside box `i` prints on stderr.
    fn node_ls_error(&self, i: usize) -> String {
        Command::new("ip")
            .args(["netns", "exec", &self.ns[i]])
            .arg(skein_bin())
            .args(["node", "ls"])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| format!("cannot run skein: {e}"))
    }

    fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    fn dump_logs(&self) {
        for i in 0..self.ns.len() {
            let text = self.log_text(i);
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            eprintln!("---- box{i} (last lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        for ns in &self.ns {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        for h in &self.hosts {
            let _ = run(&["ip", "link", "del", h]);
        }
        if self.forward_rule {
            let _ = run(&[
                "iptables",
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// A row of `node ls --format json`: what the test looks at.
#[derive(Debug)]
struct NodeRow {
    name: String,
    role: String,
    status: String,
    leader: bool,
}

impl From<&serde_json::Value> for NodeRow {
    fn from(v: &serde_json::Value) -> Self {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        NodeRow {
            name: s("name"),
            role: s("role"),
            status: s("status"),
            leader: v["leader"].as_bool().unwrap_or(false),
        }
    }
}

/// One cluster of `n`, `managers` managers, exactly one leader, all ready.
fn healthy(rows: &[NodeRow], n: usize, managers: usize) -> bool {
    rows.len() == n
        && rows.iter().all(|r| r.status == "ready")
        && rows.iter().filter(|r| r.role == "manager").count() == managers
        && rows.iter().filter(|r| r.leader).count() == 1
}

#[test]
fn five_boxes_form_one_cluster_by_themselves() {
    if !lab_available("five_boxes_form_one_cluster_by_themselves") {
        return;
    }
    let mut lab = Lab::new(6);
    let key = "edge-fleet-key-1";
    let started = Instant::now();
    for i in 0..5 {
        lab.start(i, key);
    }
    // Seen from every manager box: 5 nodes, 3 managers, one leader, all
    // ready; every worker box says it is a worker (it holds no cluster
    // state) and names a manager.
    let mut managers = Vec::new();
    for i in 0..5 {
        let rows = wait_for(
            &format!(
                "box{i} to show one healthy cluster of 5 with 3 managers, or say it is a worker"
            ),
            Duration::from_secs(90),
            || match lab.nodes(i) {
                Some(r) if healthy(&r, 5, 3) => Some(Some(r)),
                Some(_) => None,
                None => lab.node_ls_error(i).contains("is a worker").then_some(None),
            },
        );
        let Some(rows) = rows else { continue };
        managers.push(i);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for j in 0..5 {
            assert!(names.contains(&format!("box{j}").as_str()), "{names:?}");
        }
    }
    assert_eq!(managers.len(), 3, "manager boxes: {managers:?}");

    eprintln!(
        "one cluster of 5 seen from every box after {:?}",
        started.elapsed()
    );

    // A box with another key: it cannot connect, says why, and the
    // cluster does not change.
    let stranger = Instant::now();
    lab.start(5, "another-fleet-key");
    wait_for(
        "the box with another key to log why it cannot join",
        Duration::from_secs(30),
        || {
            (lab.log_text(5).contains("wrong cluster key?")
                || (0..5).any(|i| lab.log_text(i).contains("wrong cluster key?")))
            .then_some(())
        },
    );
    eprintln!("the stranger was refused after {:?}", stranger.elapsed());
    for &i in &managers {
        let rows = lab.nodes(i).expect("node ls");
        assert!(healthy(&rows, 5, 3), "box{i} after the stranger: {rows:?}");
    }
    // It keeps waiting for boxes of its own key: it neither founded nor
    // joined anything, and its API says so.
    let err = lab.node_ls_error(5);
    assert!(
        err.contains("still forming its cluster")
            && err.contains("waiting for boxes with the same cluster key"),
        "`node ls` on the box with another key: {err}"
    );
    let stranger_log = lab.log_text(5);
    assert!(
        stranger_log.contains("bootstrap: waiting for boxes with the same cluster key"),
        "{stranger_log}"
    );
    assert!(
        !stranger_log.contains("founding the cluster")
            && !stranger_log.contains("joining the cluster"),
        "the box with another key must not have formed or joined a cluster: {stranger_log}"
    );

    // Kill a worker box: the managers mark it down.
    let rows = lab.nodes(managers[0]).expect("node ls");
    let worker = rows
        .iter()
        .find(|r| r.role == "worker")
        .expect("a worker")
        .name
        .clone();
    let victim: usize = worker
        .trim_start_matches("box")
        .parse()
        .expect("box number");
    let watcher = managers[0];
    let killed = Instant::now();
    lab.kill(victim);
    wait_for(
        &format!("{worker} to be marked down"),
        Duration::from_secs(20),
        || {
            lab.nodes(watcher)
                .filter(|rows| rows.iter().any(|r| r.name == worker && r.status == "down"))
        },
    );
    eprintln!(
        "{worker} killed -> marked down in {:?} (as seen by box{watcher})",
        killed.elapsed()
    );
}

/// `GET path` on `api`; None while nothing answers there.
fn get(api: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).ok()?))
}

/// A box started with only the bootstrap flags (plus `--join` seeds, as
/// loopback has no mDNS). The harness's `launch` waits for a ready node,
/// which a box waiting for its cluster is not: this runs the process
/// itself and kills it on drop (the `Agent` keeps its ports and data dir).
struct BootBox {
    agent: Agent,
    child: Option<Child>,
}

impl BootBox {
    fn start(name: &str, key: &str, seeds: &[&str]) -> BootBox {
        let agent = Agent::named(name, &[]);
        let mut cmd = Command::new(skein_bin());
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(agent.data_dir())
            .args(["--api", &agent.api, "--listen", &agent.listen])
            .args(["--name", name, "--runtime", "process"])
            .args(["--bootstrap-expect", "3", "--cluster-key", key]);
        for s in seeds {
            cmd.args(["--join", s]);
        }
        let child = spawn_logged(&mut cmd, &agent.dir.path().join("agent.log"));
        BootBox {
            agent,
            child: Some(child),
        }
    }
}

impl Drop for BootBox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.agent.name, self.agent.log());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_box_waiting_for_its_cluster_answers_its_api() {
    let key = "loopback-fleet-key";
    let a = BootBox::start("box-a", key, &[]);
    let api = a.agent.api.clone();

    // Alone it waits for two more boxes; its API answers all along.
    let members = wait_for(
        "GET /v1/members to answer while box-a waits",
        Duration::from_secs(30),
        || get(&api, "/v1/members").filter(|(status, _)| *status == 200),
    )
    .1;
    assert_eq!(members["me"]["name"], "box-a", "{members}");
    assert_eq!(members["me"]["cluster_id"], "", "{members}");
    assert!(members["members"].is_array(), "{members}");

    // Every other path: 503 and why (what the agent logs as `bootstrap: ...`).
    let body = wait_for(
        "GET /v1/nodes to answer 503 with what box-a waits for",
        Duration::from_secs(30),
        || {
            get(&api, "/v1/nodes").filter(|(status, body)| {
                *status == 503
                    && body["message"].as_str().is_some_and(|m| {
                        m.contains("box-a is still forming its cluster (--bootstrap-expect 3)")
                            && m.contains("waiting for boxes with the same cluster key")
                    })
            })
        },
    )
    .1;
    assert!(
        a.agent
            .log()
            .contains("bootstrap: waiting for boxes with the same cluster key"),
        "{body}"
    );
    let (status, info) = get(&api, "/v1/info").expect("GET /v1/info");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["node_name"], "box-a", "{info}");
    assert_eq!(info["leader_id"], serde_json::Value::Null, "{info}");

    // The CLI says why instead of hanging.
    let out = a.agent.cli(&["node", "ls"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("still forming its cluster"),
        "`skein node ls` while forming: {err}"
    );

    // Two more boxes: the cluster forms, and the full API takes over on the
    // same address.
    let seed = a.agent.listen.clone();
    let _b = BootBox::start("box-b", key, &[&seed]);
    let _c = BootBox::start("box-c", key, &[&seed]);
    wait_for(
        "box-a's API to show a cluster of 3 ready managers",
        Duration::from_secs(90),
        || {
            let (status, rows) = get(&api, "/v1/nodes")?;
            let rows = rows.as_array()?.clone();
            (status == 200
                && rows.len() == 3
                && rows
                    .iter()
                    .all(|r| r["status"] == "ready" && r["role"] == "manager"))
            .then_some(())
        },
    );
    let (status, members) = get(&api, "/v1/members").expect("GET /v1/members");
    assert_eq!(status, 200, "{members}");
    assert_ne!(members["me"]["cluster_id"], "", "{members}");
}

/// The role `via`'s gossip membership shows for the node named `name`.
fn member_role(via: &Agent, name: &str) -> Option<String> {
    let (status, snap) = get(&via.api, "/v1/members")?;
    if status != 200 {
        return None;
    }
    let m = snap["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name && m["state"] == "alive")?;
    m["role"].as_str().map(String::from)
}

#[test]
fn members_show_the_role_a_node_is_promoted_or_demoted_to() {
    let c = Cluster::start(1, 1, Duration::from_secs(60));
    let (m1, w1) = (&c.managers[0], &c.workers[0]);
    wait_for(
        "m1's members to show w1 as a worker",
        Duration::from_secs(30),
        || (member_role(m1, "w1")? == "worker").then_some(()),
    );

    m1.ok(&["node", "promote", "w1"]);
    wait_for(
        "m1's members to show w1 as a manager",
        Duration::from_secs(30),
        || (member_role(m1, "w1")? == "manager").then_some(()),
    );
    wait_for(
        "w1 to announce itself as a manager",
        Duration::from_secs(30),
        || {
            let (_, snap) = get(&w1.api, "/v1/members")?;
            (snap["me"]["role"] == "manager").then_some(())
        },
    );

    m1.ok(&["node", "demote", "w1"]);
    wait_for(
        "m1's members to show w1 as a worker again",
        Duration::from_secs(30),
        || (member_role(m1, "w1")? == "worker").then_some(()),
    );
}
