//! Spreading sessions back over the managers. Pure: from the state (who
//! holds which worker's session, `Node::session`) it says how many sessions
//! this manager hands over in the next second, and to whom.
//!
//! Why: a worker whose manager fails moves its session to another one, and
//! nothing moved it back when that manager returned; after a few restarts
//! one manager held the whole fleet, and its next failure moved every
//! session at once (at 1,000 workers: 6.7 s to be back, against 2.3 s for
//! half of them).
//!
//! Rules: only managers other than the Raft leader share sessions (the
//! leader's own move away by the worker's rule, see
//! [`crate::worker::session`]); a non-leader holding more than its share
//! (the sessions held by non-leaders, split evenly) plus a slack of 5%
//! (at least 2) hands over, in one second, at most `per_sec` and at most
//! half of what it holds beyond its share, to the non-leader holding
//! fewest. Halving the excess each second damps the swing the state's lag
//! would cause (a moved session shows as moved once its new manager has
//! committed the take-over).

use crate::store::ClusterState;
use skein_protocol::{NodeRole, NodeStatus};
use std::collections::HashMap;

/// Sessions to hand over from `me` within the next second: the peer id of
/// the manager to send them to, and how many. `leader`: the Raft leader's
/// raft id (0: unknown; then nothing moves).
pub fn handover(
    state: &ClusterState,
    me: &str,
    leader: u64,
    per_sec: usize,
) -> Option<(String, usize)> {
    if leader == 0 || per_sec == 0 {
        return None;
    }
    let sharers: Vec<&skein_protocol::Node> = state
        .nodes
        .values()
        .filter(|n| {
            n.role == NodeRole::Manager
                && n.status == NodeStatus::Ready
                && n.raft_id != leader
                && !n.peer_id.is_empty()
                && !n.addr.is_empty()
        })
        .collect();
    if sharers.len() < 2 || !sharers.iter().any(|n| n.id == me) {
        return None;
    }
    let mut held: HashMap<&str, usize> = sharers.iter().map(|n| (n.id.as_str(), 0)).collect();
    for n in state.nodes.values() {
        if n.role == NodeRole::Manager || n.status != NodeStatus::Ready {
            continue;
        }
        if let Some(c) = held.get_mut(n.session.as_str()) {
            *c += 1;
        }
    }
    let total: usize = held.values().sum();
    let share = total.div_ceil(sharers.len());
    let mine = held.get(me).copied().unwrap_or(0);
    let slack = (share / 20).max(2);
    if mine <= share + slack {
        return None;
    }
    let to = sharers.iter().filter(|n| n.id != me).min_by_key(|n| {
        (
            held.get(n.id.as_str()).copied().unwrap_or(0),
            n.name.as_str(),
        )
    })?;
    let n = ((mine - share) / 2).clamp(1, per_sec);
    Some((to.peer_id.clone(), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::node;
    use skein_protocol::Node;

    fn manager(id: &str, raft_id: u64) -> Node {
        Node {
            raft_id,
            peer_id: format!("peer-{id}"),
            addr: format!("/ip4/127.0.0.1/tcp/{raft_id}"),
            ..node(id)
        }
    }

    fn worker(id: &str, session: &str) -> Node {
        Node {
            role: NodeRole::Worker,
            session: session.into(),
            ..node(id)
        }
    }

    /// Leader L (raft 1), non-leaders a, b; `on_a` workers on a, `on_b` on b.
    fn fleet(on_a: usize, on_b: usize) -> ClusterState {
        let mut s = ClusterState::default();
        for m in [manager("l", 1), manager("a", 2), manager("b", 3)] {
            s.nodes.insert(m.id.clone(), m);
        }
        for i in 0..on_a {
            let w = worker(&format!("wa{i}"), "a");
            s.nodes.insert(w.id.clone(), w);
        }
        for i in 0..on_b {
            let w = worker(&format!("wb{i}"), "b");
            s.nodes.insert(w.id.clone(), w);
        }
        s
    }

    #[test]
    fn a_manager_holding_the_whole_fleet_hands_half_its_excess_to_the_emptiest() {
        // a restarted and holds nothing; b holds all 1,000.
        let s = fleet(0, 1000);
        assert_eq!(handover(&s, "b", 1, 100), Some(("peer-a".into(), 100)));
        assert_eq!(handover(&s, "b", 1, 1000), Some(("peer-a".into(), 250)));
        // The emptier one gives nothing.
        assert_eq!(handover(&s, "a", 1, 100), None);
    }

    #[test]
    fn an_even_spread_within_the_slack_stays_put() {
        assert_eq!(handover(&fleet(500, 500), "a", 1, 100), None);
        assert_eq!(handover(&fleet(480, 520), "b", 1, 100), None);
        assert_eq!(handover(&fleet(3, 5), "b", 1, 100), None);
        // Just past the slack: one at a time.
        assert_eq!(
            handover(&fleet(3, 10), "b", 1, 100),
            Some(("peer-a".into(), 1))
        );
    }

    #[test]
    fn the_leader_down_managers_and_an_unknown_leader_take_no_part() {
        let s = fleet(0, 1000);
        // The leader's own sessions leave it by the worker's rule.
        assert_eq!(handover(&s, "l", 1, 100), None);
        // No leader known: nothing moves.
        assert_eq!(handover(&s, "b", 0, 100), None);
        // a is down: b is the only sharer left.
        let mut down = s.clone();
        if let Some(a) = down.nodes.get_mut("a") {
            a.status = NodeStatus::Down;
        }
        assert_eq!(handover(&down, "b", 1, 100), None);
        // With b the leader, a is alone too.
        assert_eq!(handover(&s, "a", 3, 100), None);
    }

    #[test]
    fn workers_that_are_down_do_not_count() {
        let mut s = fleet(0, 10);
        for i in 0..10 {
            if let Some(w) = s.nodes.get_mut(format!("wb{i}").as_str()) {
                w.status = NodeStatus::Down;
            }
        }
        assert_eq!(handover(&s, "b", 1, 100), None);
    }
}
