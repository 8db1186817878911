//! Authority follows identity: a box that holds the cluster key and a real
//! worker identity (root on one edge box) cannot change the cluster. The
//! hostile peer here speaks the real wire protocol from this test process;
//! the cluster is real agents on loopback.

use protobuf::Message as _;
use skein_node::net::{self, NetConfig};
use skein_protocol::token::JoinToken;
use skein_protocol::wire::{JoinRequest, WireMessage, WireReply};
use skein_protocol::{Command, Node, NodeRole};
use skein_tests::{free_port, wait_for, Agent};
use std::io::{Read, Write};
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

/// `GET path` on an agent's API, as JSON.
fn get(api: &str, path: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(api).expect("connect to the API");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn node_row(a: &Agent, name: &str) -> Option<serde_json::Value> {
    a.json(&["node", "ls"])
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

/// What the hostile box says about itself when it joins.
fn hostile_node(id: &str, peer: &str, addr: &str) -> Node {
    let mut n: Node = serde_json::from_value(serde_json::json!({
        "id": id, "name": "hostile", "role": "worker", "availability": "active",
        "status": "ready", "status_message": "", "addr": addr, "api_addr": "",
        "peer_id": peer, "raft_id": 0xbad, "region": "default", "labels": {},
        "description": {"hostname": "hostile", "os": "linux", "arch": "x86_64",
            "resources": {"nano_cpus": 1000000000, "memory_bytes": 1073741824},
            "runtimes": ["process"], "version": "0"},
        "manager_status": null, "created_at": 0, "updated_at": 0, "last_seen": 0
    }))
    .expect("a node");
    n.raft_id = 0xbad;
    n
}

#[test]
fn a_worker_identity_cannot_change_the_cluster_and_a_removed_one_is_refused() {
    let m1 = Agent::named("m1", &[]).launch();
    let token = m1.ok(&["join-token", "worker", "-q"]).trim().to_string();
    let mut w1 = Agent::named("w1", &["--join", &m1.listen, "--token", &token]).launch();
    let w1_raft_id: u64 = {
        let text = std::fs::read_to_string(w1.data_dir().join("node.json")).expect("node.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v["raft_id"].as_u64().expect("raft id")
    };
    let parsed: JoinToken = token.parse().expect("a token");
    let term_before = get(&m1.api, "/v1/info")["term"].as_u64().expect("term");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    rt.block_on(async {
        let mut cfg = NetConfig::new(parsed.cluster_key, dir.path().join("peer.key"));
        cfg.listen = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let (net, _inbound) = net::start(cfg, stop_rx).await.expect("transport");
        let me = net.peer_id();
        // A real join with a real worker token: this box is a worker now.
        let accepted = skein_node::cluster::join::request_join(
            &net,
            &m1.listen,
            JoinRequest {
                token: token.clone(),
                node: hostile_node("hostile-id", &me, &net.listen_addr().to_string()),
                peer_id: me.clone(),
                raft_id: 0xbad,
            },
        )
        .await
        .expect("join as a worker");
        assert_eq!(accepted.role, NodeRole::Worker);
        let (_, leader, _) = accepted.managers.first().cloned().expect("a manager");

        // It proposes to promote itself: refused.
        let promote = Command::UpdateNode {
            id: "hostile-id".into(),
            role: Some(NodeRole::Manager),
            availability: None,
            labels: None,
            at: 1,
        };
        let r = net
            .request(&leader, WireMessage::Propose(Box::new(promote)))
            .await
            .expect("an answer");
        assert!(
            matches!(&r, WireReply::Error(e) if e.contains("refused") && e.contains("worker")),
            "{r:?}"
        );
        // It removes another node: refused.
        let rm = Command::RemoveNode {
            id: w1.node_id().expect("w1's id"),
        };
        let r = net
            .request(&leader, WireMessage::Propose(Box::new(rm)))
            .await
            .expect("an answer");
        assert!(
            matches!(&r, WireReply::Error(e) if e.contains("refused")),
            "{r:?}"
        );
        // It speaks Raft as w1 with a far higher term (a real follower
        // would step down for it): refused, the leader's term is unchanged.
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeatResponse);
        m.from = w1_raft_id;
        m.to = 1;
        m.term = term_before + 1000;
        let bytes = m.write_to_bytes().expect("encode");
        let r = net
            .request(&leader, WireMessage::Raft(bytes))
            .await
            .expect("an answer");
        assert!(
            matches!(&r, WireReply::Error(e) if e.contains("refused")),
            "{r:?}"
        );
        // A heartbeat in w1's name: refused.
        let r = net
            .request(
                &leader,
                WireMessage::Heartbeat {
                    node_id: w1.node_id().expect("id"),
                    at: 1,
                },
            )
            .await
            .expect("an answer");
        assert!(
            matches!(&r, WireReply::Error(e) if e.contains("refused")),
            "{r:?}"
        );

        // Nothing changed.
        let row = node_row(&m1, "hostile").expect("the hostile box is a member");
        assert_eq!(row["role"], "worker");
        assert_eq!(get(&m1.api, "/v1/info")["term"].as_u64(), Some(term_before));
        assert_eq!(node_row(&m1, "w1").expect("w1")["status"], "ready");
        let log = m1.log();
        assert!(
            log.contains("refused") && log.contains(&me),
            "refusals are logged with the peer: {log}"
        );

        // Removed, the same identity is refused at connection.
        m1.ok(&["node", "rm", "--force", "hostile"]);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            net.add_peer(&leader, &m1.listen);
            let r = net
                .request(
                    &leader,
                    WireMessage::Heartbeat {
                        node_id: "hostile-id".into(),
                        at: 2,
                    },
                )
                .await;
            if r.is_err() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a removed node's peer still gets answers: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // A real removed worker, restarted with its old identity, is refused.
    w1.kill9();
    m1.ok(&["node", "rm", "--force", "w1"]);
    assert!(
        w1.data_dir().join("peer.key").exists(),
        "w1 keeps its identity key"
    );
    let before = m1.log().matches("refused a connection").count();
    w1.start_no_wait();
    wait_for("m1 to refuse the removed w1's connection", T, || {
        (m1.log().matches("refused a connection").count() > before).then_some(())
    });
    assert!(node_row(&m1, "w1").is_none(), "a removed node came back");
}
