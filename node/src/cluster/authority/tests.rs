#![allow(clippy::unwrap_used)]

use super::*;
use crate::orchestrator::tests::node;
use skein_protocol::{Availability, Task, TaskState, TaskStatus};

fn member(id: &str, role: NodeRole, raft_id: u64) -> skein_protocol::Node {
    let mut n = node(id);
    n.role = role;
    n.raft_id = raft_id;
    n.peer_id = format!("peer-{id}");
    n
}

fn state() -> ClusterState {
    let mut s = ClusterState::default();
    for n in [
        member("m1", NodeRole::Manager, 1),
        member("w1", NodeRole::Worker, 2),
        member("w2", NodeRole::Worker, 3),
    ] {
        s.nodes.insert(n.id.clone(), n);
    }
    for (id, on) in [("t1", "w1"), ("t2", "w2")] {
        s.tasks.insert(
            id.into(),
            Task {
                id: id.into(),
                service_id: "s".into(),
                service_name: "web".into(),
                slot: Some(1),
                node_id: Some(on.into()),
                spec_version: 1,
                spec: skein_protocol::ServiceSpec::new("web", "sleep"),
                desired_state: TaskState::Running,
                status: TaskStatus::default(),
                created_at: 1,
                restarts: Vec::new(),
            },
        );
    }
    s.removed_peers.insert("peer-gone".into());
    s
}

fn running() -> TaskStatus {
    TaskStatus {
        state: TaskState::Running,
        ..Default::default()
    }
}

#[test]
fn peers_are_who_the_node_table_binds_them_to() {
    let s = state();
    let idx = PeerIndex::build(&s);
    assert_eq!(
        idx.caller("peer-m1", None),
        Caller::Manager {
            node_id: "m1".into(),
            raft_id: 1
        }
    );
    assert_eq!(
        idx.caller("peer-w1", None),
        Caller::Worker {
            node_id: "w1".into(),
            raft_id: 2
        }
    );
    assert_eq!(idx.caller("peer-gone", Some(9)), Caller::Removed);
    assert_eq!(idx.caller("stranger", None), Caller::Unknown);
    assert_eq!(
        idx.caller("stranger", Some(9)),
        Caller::Admitted { raft_id: 9 }
    );
}

#[test]
fn raft_messages_only_from_the_peer_owning_the_sender_id() {
    let s = state();
    let idx = PeerIndex::build(&s);
    let w1 = idx.caller("peer-w1", None);
    assert!(check_raft(&w1, 2).is_ok());
    // A worker claiming the manager's raft id (e.g. to grant votes or fake
    // a leader's heartbeat) is refused.
    assert!(check_raft(&w1, 1).is_err());
    assert!(check_raft(&idx.caller("stranger", None), 7).is_err());
    assert!(check_raft(&idx.caller("peer-gone", None), 7).is_err());
    assert!(check_raft(&Caller::Admitted { raft_id: 9 }, 9).is_ok());
    assert!(check_raft_chunk(&w1).is_ok());
    assert!(check_raft_chunk(&idx.caller("stranger", None)).is_err());
}

#[test]
fn a_worker_cannot_change_the_cluster() {
    let s = state();
    let idx = PeerIndex::build(&s);
    let w1 = idx.caller("peer-w1", None);
    let promote = Command::UpdateNode {
        id: "w1".into(),
        role: Some(NodeRole::Manager),
        availability: None,
        labels: None,
        at: 1,
    };
    let e = check_propose(&s, &w1, promote.clone()).unwrap_err();
    assert!(e.0.contains("update_node"), "{e}");
    assert!(check_propose(&s, &idx.caller("peer-m1", None), promote).is_ok());
    // Wrapped or batched, still refused.
    let once = Command::Once {
        request: skein_protocol::command::RequestId { origin: 2, seq: 1 },
        cmd: Box::new(Command::RemoveNode { id: "w2".into() }),
    };
    assert!(check_propose(&s, &w1, once).is_err());
    let batch = Command::Batch(vec![Command::SetTaskStatus(vec![])]);
    assert!(check_propose(&s, &w1, batch).is_err());
    assert!(check_manager(&w1, "a leadership hand-over").is_err());
    assert!(check_manager(&idx.caller("peer-m1", None), "x").is_ok());
    // Strangers may propose nothing at all.
    assert!(check_propose(&s, &Caller::Unknown, Command::SetTaskStatus(vec![])).is_err());
}

#[test]
fn a_worker_reports_only_its_own_tasks_and_heartbeats() {
    let s = state();
    let w1 = PeerIndex::build(&s).caller("peer-w1", None);
    let own = Command::SetTaskStatus(vec![("t1".into(), running()), ("reaped".into(), running())]);
    assert_eq!(
        check_propose(&s, &w1, own).unwrap(),
        Command::SetTaskStatus(vec![("t1".into(), running())]),
        "reports of tasks that no longer exist are dropped"
    );
    let other = Command::SetTaskStatus(vec![("t2".into(), running())]);
    assert!(check_propose(&s, &w1, other).is_err());
    assert!(check_heartbeat(&w1, "w1").is_ok());
    assert!(check_heartbeat(&w1, "w2").is_err());
}

#[test]
fn a_worker_describes_and_removes_only_itself_and_keeps_its_role() {
    let s = state();
    let w1 = PeerIndex::build(&s).caller("peer-w1", None);
    let mut me = member("w1", NodeRole::Manager, 1);
    me.availability = Availability::Active;
    me.peer_id = "peer-m1".into();
    me.addr = "10.0.0.9:7946".into();
    let Command::UpsertNode(n) = check_propose(&s, &w1, Command::UpsertNode(me)).unwrap() else {
        panic!("not an upsert");
    };
    assert_eq!(n.role, NodeRole::Worker, "a worker cannot promote itself");
    assert_eq!((n.raft_id, n.peer_id.as_str()), (2, "peer-w1"));
    assert_eq!(n.addr, "10.0.0.9:7946", "its own description is taken");
    assert!(check_propose(
        &s,
        &w1,
        Command::UpsertNode(member("w2", NodeRole::Worker, 3))
    )
    .is_err());
    assert!(check_propose(&s, &w1, Command::RemoveNode { id: "w1".into() }).is_ok());
    assert!(check_propose(&s, &w1, Command::RemoveNode { id: "m1".into() }).is_err());
}

#[test]
fn a_removed_node_leaves_its_peer_id_behind() {
    let mut s = state();
    s.apply(&Command::RemoveNode { id: "w2".into() }, &mut Vec::new())
        .unwrap();
    assert!(s.removed_peers.contains("peer-w2"));
    assert_eq!(
        PeerIndex::build(&s).caller("peer-w2", None),
        Caller::Removed
    );
}
