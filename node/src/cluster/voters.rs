//! Keeping a self-formed cluster's voters at an odd target (`--voters`,
//! default `--bootstrap-expect`): when a manager is removed or lost for good
//! (down for [`LOST_AFTER_MS`]), the leader promotes a healthy worker, and
//! then demotes the lost manager so the count stays odd. The decision is
//! [`next_change`] (pure); [`run`] is the leader-only loop that proposes it.
//! Only clusters formed with `--bootstrap-expect` run this: in a cluster
//! joined with tokens, roles stay the operator's choice.
//!
//! Invariants: one change per round (raft-rs changes membership one at a
//! time; the membership reconciler turns roles into voters and learners);
//! a promotion first, a demotion after, so the count of reachable voters
//! never drops on our account; a worker must have been in the cluster for
//! [`SETTLE_MS`] (so bootstrap's own managers, which join within seconds,
//! are never raced by a worker).

use crate::raft::RaftHandle;
use crate::store::ClusterState;
use skein_protocol::{Availability, Command, NodeId, NodeRole, NodeStatus};
use std::time::Duration;

/// A manager down this long is lost for good.
pub const LOST_AFTER_MS: u64 = 60_000;
/// A worker must be this old before it is promoted.
pub const SETTLE_MS: u64 = 15_000;

/// The role change to make now, if any.
pub fn next_change(state: &ClusterState, target: usize, now: u64) -> Option<(NodeId, NodeRole)> {
    let managers: Vec<_> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager)
        .collect();
    let lost = |n: &&skein_protocol::Node| {
        n.status == NodeStatus::Down && now.saturating_sub(n.updated_at) >= LOST_AFTER_MS
    };
    let healthy = managers.iter().filter(|n| !lost(n)).count();
    if healthy < target {
        let mut workers: Vec<_> = state
            .nodes
            .values()
            .filter(|n| {
                n.role == NodeRole::Worker
                    && n.status == NodeStatus::Ready
                    && n.availability == Availability::Active
                    && now.saturating_sub(n.created_at) >= SETTLE_MS
            })
            .collect();
        workers.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        if let Some(w) = workers.first() {
            return Some((w.id.clone(), NodeRole::Manager));
        }
        return None;
    }
    // Enough healthy managers: a lost one only makes the count even.
    let mut gone: Vec<_> = managers.iter().filter(|n| lost(n)).collect();
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    gone.first().map(|n| (n.id.clone(), NodeRole::Worker))
}

/// Leader-only loop.
pub async fn run(
    raft: RaftHandle,
    target: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let p = raft.current();
        if !p.leader_ready {
            continue;
        }
        let now = crate::util::now_ms();
        let Some((id, role)) = next_change(&p.state, target, now) else {
            continue;
        };
        let name = p
            .state
            .nodes
            .get(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        match role {
            NodeRole::Manager => {
                tracing::info!(node = %name, target, "promoting a healthy worker to keep {target} managers")
            }
            NodeRole::Worker => {
                tracing::info!(node = %name, "demoting a manager lost for good (the count stays odd)")
            }
        }
        let cmd = Command::UpdateNode {
            id,
            role: Some(role),
            availability: None,
            labels: None,
            at: now,
        };
        if let Err(e) = raft.propose(cmd).await {
            tracing::debug!(error = %e, "role change deferred");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::node;

    fn add(s: &mut ClusterState, id: &str, role: NodeRole, status: NodeStatus, since: u64) {
        let mut n = node(id);
        n.role = role;
        n.status = status;
        n.created_at = 0;
        n.updated_at = since;
        s.nodes.insert(id.into(), n);
    }

    #[test]
    fn a_lost_manager_is_replaced_then_demoted() {
        use NodeRole::*;
        use NodeStatus::*;
        let mut s = ClusterState::default();
        add(&mut s, "m1", Manager, Ready, 0);
        add(&mut s, "m2", Manager, Ready, 0);
        add(&mut s, "m3", Manager, Down, 100_000);
        add(&mut s, "w1", Worker, Ready, 0);
        add(&mut s, "w2", Worker, Down, 0);
        // Down, but not for long: nothing yet.
        assert_eq!(next_change(&s, 3, 100_000 + LOST_AFTER_MS - 1), None);
        let now = 100_000 + LOST_AFTER_MS;
        assert_eq!(next_change(&s, 3, now), Some(("w1".into(), Manager)));
        // After the promotion, the lost one is demoted: 3 voters again.
        if let Some(n) = s.nodes.get_mut("w1") {
            n.role = Manager;
        }
        assert_eq!(next_change(&s, 3, now), Some(("m3".into(), Worker)));
        if let Some(n) = s.nodes.get_mut("m3") {
            n.role = Worker;
        }
        assert_eq!(next_change(&s, 3, now), None);
    }

    #[test]
    fn a_removed_manager_is_replaced_by_a_settled_worker() {
        use NodeRole::*;
        use NodeStatus::*;
        let mut s = ClusterState::default();
        add(&mut s, "m1", Manager, Ready, 0);
        add(&mut s, "m2", Manager, Ready, 0);
        add(&mut s, "w1", Worker, Ready, 0);
        if let Some(n) = s.nodes.get_mut("w1") {
            n.created_at = 10_000;
        }
        assert_eq!(next_change(&s, 3, 10_000 + SETTLE_MS - 1), None, "too new");
        assert_eq!(
            next_change(&s, 3, 10_000 + SETTLE_MS),
            Some(("w1".into(), Manager))
        );
        // A drained worker is not a candidate.
        if let Some(n) = s.nodes.get_mut("w1") {
            n.availability = Availability::Drain;
        }
        assert_eq!(next_change(&s, 3, 10_000 + SETTLE_MS), None);
    }

    #[test]
    fn a_full_cluster_is_left_alone() {
        use NodeRole::*;
        use NodeStatus::*;
        let mut s = ClusterState::default();
        for m in ["m1", "m2", "m3"] {
            add(&mut s, m, Manager, Ready, 0);
        }
        add(&mut s, "w1", Worker, Ready, 0);
        assert_eq!(next_change(&s, 3, 1_000_000), None);
        assert_eq!(next_change(&s, 5, 1_000_000), Some(("w1".into(), Manager)));
    }
}
