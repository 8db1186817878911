//! Raft membership follows the replicated node table. Users change roles
//! (`node promote/demote`) and remove nodes (`node rm`, `leave`) with
//! ordinary commands; the leader then brings Raft in line: managers join as
//! learners and become voters once caught up, workers (demoted managers)
//! and removed nodes leave Raft, and a leader that was demoted hands
//! leadership over first. Only managers are Raft members.
//!
//! [`check_change`] is the pure guard the API applies before a role change or
//! removal: it refuses anything that would leave the managers without a
//! quorum of reachable voters, or the cluster without a manager.

use crate::raft::{Published, RaftHandle};
use crate::store::ClusterState;
use skein_protocol::{Node, NodeRole, NodeStatus};
use std::time::Duration;

/// A change to the set of managers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Demote,
    Remove,
}

/// Refuses a demotion or removal of `node` that would lose quorum: after
/// it, the reachable managers must still be a majority of the managers.
pub fn check_change(state: &ClusterState, node: &Node, change: Change) -> Result<(), String> {
    if node.role != NodeRole::Manager {
        return Ok(());
    }
    let managers: Vec<&Node> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.id != node.id)
        .collect();
    if managers.is_empty() {
        return Err(format!(
            "{} is the last manager: promote another node first (`skein node promote NODE`)",
            node.name
        ));
    }
    let reachable = managers
        .iter()
        .filter(|n| n.status == NodeStatus::Ready)
        .count();
    if reachable * 2 <= managers.len() {
        let what = match change {
            Change::Demote => "demoting",
            Change::Remove => "removing",
        };
        return Err(format!(
            "{what} {} would leave {reachable} of {} managers reachable: the cluster would lose its quorum. Bring managers back (or promote workers) first",
            node.name,
            managers.len()
        ));
    }
    Ok(())
}

/// Leader-only loop that makes Raft membership match the node table.
pub async fn run(raft: RaftHandle, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return,
        }
        let p = raft.current();
        if !p.leader_ready {
            continue;
        }
        if let Err(e) = step(&raft, &p).await {
            tracing::debug!(error = %e, "membership change deferred");
        }
    }
}

fn matched(p: &Published, raft_id: u64) -> u64 {
    p.progress
        .iter()
        .find(|pp| pp.raft_id == raft_id)
        .map(|pp| pp.matched)
        .unwrap_or(0)
}

/// The voter a leader hands over to: ready, and the most caught up.
pub fn successor(p: &Published) -> Option<&Node> {
    p.state
        .nodes
        .values()
        .filter(|o| {
            o.raft_id != p.raft_id && p.voters.contains(&o.raft_id) && o.status == NodeStatus::Ready
        })
        .max_by_key(|o| matched(p, o.raft_id))
}

/// On the leader: hands leadership to [`successor`] and waits until it took
/// over. Refuses, with the reason, when no other voter is ready.
pub async fn hand_over(raft: &RaftHandle) -> Result<(), String> {
    let p = raft.current();
    if !p.is_leader {
        return Err(format!(
            "{} (leader: {})",
            super::forward::NOT_LEADER,
            p.leader_id
        ));
    }
    let Some(t) = successor(&p) else {
        return Err(
            "no other manager is ready to take over the leadership: start or promote one first"
                .into(),
        );
    };
    tracing::info!(to = %t.name, "leader hands over leadership (drain)");
    raft.transfer_leader(t.raft_id)
        .await
        .map_err(|e| e.to_string())
}

/// One change at a time: raft-rs applies membership changes one by one.
async fn step(raft: &RaftHandle, p: &Published) -> Result<(), crate::raft::ProposeError> {
    let me = p.raft_id;
    // Members no node in the table claims: removed nodes.
    for id in p.voters.iter().chain(p.learners.iter()) {
        if *id != me && !p.state.nodes.values().any(|n| n.raft_id == *id) {
            tracing::info!(raft_id = id, "removing a deleted node from raft");
            return raft.remove_node(*id).await;
        }
    }
    for n in p.state.nodes.values() {
        if n.raft_id == 0 {
            continue;
        }
        let is_voter = p.voters.contains(&n.raft_id);
        let is_learner = p.learners.contains(&n.raft_id);
        match n.role {
            // A promoted worker: it starts its Raft member once its session
            // tells it; it gets the log as a learner first.
            NodeRole::Manager if !is_voter && !is_learner && n.status != NodeStatus::Down => {
                tracing::info!(node = %n.name, "manager joins raft as a learner");
                return raft.add_learner(n.raft_id).await;
            }
            NodeRole::Manager
                if is_learner
                    && n.status != NodeStatus::Down
                    && matched(p, n.raft_id) + 10 >= p.commit =>
            {
                tracing::info!(node = %n.name, "manager becomes a raft voter");
                return raft.add_voter(n.raft_id).await;
            }
            NodeRole::Worker if is_voter => {
                if n.raft_id == me {
                    // Demoted leader: hand over to a caught-up reachable voter first.
                    if let Some(t) = successor(p) {
                        tracing::info!(to = %t.name, "demoted leader transfers leadership");
                        return raft.transfer_leader(t.raft_id).await;
                    }
                } else {
                    tracing::info!(node = %n.name, "demoted manager leaves raft");
                    return raft.remove_node(n.raft_id).await;
                }
            }
            NodeRole::Worker if is_learner => {
                tracing::info!(node = %n.name, "worker leaves raft (workers hold sessions)");
                return raft.remove_node(n.raft_id).await;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::node;

    fn cluster(managers: &[(&str, NodeStatus)], workers: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, st) in managers {
            let mut n = node(id);
            n.status = *st;
            s.nodes.insert(id.to_string(), n);
        }
        for id in workers {
            let mut n = node(id);
            n.role = NodeRole::Worker;
            s.nodes.insert(id.to_string(), n);
        }
        s
    }

    #[test]
    fn quorum_is_kept() {
        use NodeStatus::*;
        let s = cluster(&[("a", Ready), ("b", Ready), ("c", Ready)], &["w"]);
        assert!(check_change(&s, &s.nodes["a"], Change::Demote).is_ok());
        assert!(check_change(&s, &s.nodes["w"], Change::Remove).is_ok());
        let s = cluster(&[("a", Ready), ("b", Ready), ("c", Down)], &[]);
        let err = check_change(&s, &s.nodes["a"], Change::Demote).expect_err("quorum");
        assert!(err.contains("quorum"), "{err}");
        // Removing the down one is fine: the two left are both reachable.
        assert!(check_change(&s, &s.nodes["c"], Change::Remove).is_ok());
        let s = cluster(&[("a", Ready)], &["w"]);
        assert!(check_change(&s, &s.nodes["a"], Change::Demote)
            .expect_err("last")
            .contains("last manager"));
    }
}
