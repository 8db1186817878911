//! Failure detection for the dispatcher: which nodes are down. Pure: fed the
//! times the leader last heard from each node, it returns the status changes
//! to propose. Heartbeats stay in the leader's memory (not in Raft); only
//! the verdicts are committed.
//!
//! Rules: a node is `down` once nothing was heard from it for `grace`, or
//! when gossip declared it dead (failed probes that `k` other members
//! confirmed, see [`crate::membership::swim`]) and nothing was heard from it
//! since: at once when the verdict came with strong evidence (the leader's
//! own connection to it had closed: its kernel answered for a dead
//! process), else once it has also been silent for half the grace period
//! (so a busy node whose probes were slow is not marked down while its
//! heartbeats still arrive);
//! counted from when this leader took over at the earliest (a new leader
//! gives every node a full grace period) and from when this leader first
//! saw the node (a node that just joined is not down before its first
//! heartbeat could arrive); a down or unknown node that is
//! heard from again is `ready`. The leader's own node is always alive.

use crate::store::ClusterState;
use skein_protocol::{NodeId, NodeStatus};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct Liveness {
    grace_ms: u64,
    /// When this leader started watching.
    since: u64,
    heard: HashMap<NodeId, u64>,
    /// Gossip verdicts: node -> (when it was declared dead, strong evidence).
    dead: HashMap<NodeId, (u64, bool)>,
    /// When this leader first saw each node in the state.
    first_seen: HashMap<NodeId, u64>,
}

impl Liveness {
    pub fn new(grace_ms: u64, now: u64) -> Self {
        Liveness {
            grace_ms,
            since: now,
            heard: HashMap::new(),
            dead: HashMap::new(),
            first_seen: HashMap::new(),
        }
    }

    /// Gossip declared `node` dead at `now`; `strong` when this leader's
    /// connection to it had closed too. See the rules above.
    pub fn declared_dead(&mut self, node: &str, now: u64, strong: bool) {
        self.dead.insert(node.to_string(), (now, strong));
    }

    /// Gossip sees `node` alive again (it refuted): its heartbeats decide.
    pub fn declared_alive(&mut self, node: &str) {
        self.dead.remove(node);
    }

    /// Notes the nodes of `state` this leader had not seen before (call
    /// before [`Liveness::changes`]).
    pub fn saw(&mut self, state: &ClusterState, now: u64) {
        for id in state.nodes.keys() {
            self.first_seen.entry(id.clone()).or_insert(now);
        }
        self.first_seen.retain(|id, _| state.nodes.contains_key(id));
    }

    pub fn heard(&mut self, node: &str, now: u64) {
        let e = self.heard.entry(node.to_string()).or_insert(now);
        *e = (*e).max(now);
    }

    /// When `node` was last heard from (or when watching began, or when
    /// it was first seen, whichever is later).
    pub fn last_heard(&self, node: &str) -> u64 {
        let first = self.first_seen.get(node).copied().unwrap_or(self.since);
        self.heard
            .get(node)
            .copied()
            .unwrap_or(self.since.max(first))
    }

    /// The status changes to propose now: (node, new status, message).
    pub fn changes(
        &self,
        state: &ClusterState,
        now: u64,
        self_node: &str,
    ) -> Vec<(NodeId, NodeStatus, String)> {
        let mut out = Vec::new();
        for n in state.nodes.values() {
            let last = if n.id == self_node {
                now
            } else {
                self.last_heard(&n.id)
            };
            let silent = now.saturating_sub(last);
            let dead_at = self
                .dead
                .get(&n.id)
                .copied()
                .filter(|(d, strong)| *d > last && (*strong || silent >= self.grace_ms / 2))
                .map(|(d, _)| d);
            let alive = silent < self.grace_ms && (dead_at.is_none() || n.id == self_node);
            if let (NodeStatus::Ready, false, Some(d)) = (n.status, alive, dead_at) {
                if silent < self.grace_ms {
                    out.push((
                        n.id.clone(),
                        NodeStatus::Down,
                        format!(
                            "declared dead by gossip {} ms ago (probes failed, confirmed by other members)",
                            now.saturating_sub(d)
                        ),
                    ));
                    continue;
                }
            }
            match (n.status, alive) {
                (NodeStatus::Ready, false) => out.push((
                    n.id.clone(),
                    NodeStatus::Down,
                    format!("no heartbeat for {} ms", silent),
                )),
                (NodeStatus::Down | NodeStatus::Unknown, true)
                    if self.heard.contains_key(&n.id) || n.id == self_node =>
                {
                    out.push((n.id.clone(), NodeStatus::Ready, String::new()))
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::node;

    fn state(nodes: &[(&str, NodeStatus)]) -> ClusterState {
        let mut s = ClusterState::default();
        for (id, st) in nodes {
            let mut n = node(id);
            n.status = *st;
            s.nodes.insert(id.to_string(), n);
        }
        s
    }

    #[test]
    fn silent_nodes_go_down_after_the_grace_period() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Ready)]);
        let mut l = Liveness::new(3000, 1000);
        assert!(
            l.changes(&st, 3999, "me").is_empty(),
            "a new leader gives a full grace"
        );
        l.heard("a", 2000);
        assert!(l.changes(&st, 4999, "me").is_empty());
        let c = l.changes(&st, 5000, "me");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
    }

    #[test]
    fn a_down_node_heard_again_is_ready() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Down)]);
        let mut l = Liveness::new(3000, 0);
        assert!(
            l.changes(&st, 100, "me").is_empty(),
            "not heard yet: stays down"
        );
        l.heard("a", 200);
        let c = l.changes(&st, 300, "me");
        assert_eq!(c, vec![("a".to_string(), NodeStatus::Ready, String::new())]);
    }

    #[test]
    fn a_gossip_verdict_marks_down_before_the_grace_period() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Ready)]);
        let mut l = Liveness::new(3000, 0);
        l.heard("a", 1000);
        // Strong evidence (the connection closed): down at once.
        l.declared_dead("a", 1200, true);
        let c = l.changes(&st, 1300, "me");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
        assert!(c[0].2.contains("gossip"), "{}", c[0].2);
        // A heartbeat after the verdict wins: the node refuted and is alive.
        l.heard("a", 1400);
        assert!(l.changes(&st, 1500, "me").is_empty());
        // Without strong evidence, also silent for half the grace period.
        l.declared_dead("a", 1600, false);
        assert!(l.changes(&st, 1400 + 1499, "me").is_empty());
        let c = l.changes(&st, 1400 + 1500, "me");
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
        // A verdict about the leader itself is ignored.
        l.declared_dead("me", 1500, true);
        assert!(l
            .changes(&st, 1600, "me")
            .iter()
            .all(|(id, _, _)| id != "me"));
    }

    #[test]
    fn a_node_that_just_joined_gets_a_full_grace_period() {
        let mut st = state(&[("me", NodeStatus::Ready)]);
        let mut l = Liveness::new(3000, 0);
        l.saw(&st, 0);
        // Joins long after this leader took over; no heartbeat yet.
        st.nodes.insert("new".into(), {
            let mut n = node("new");
            n.status = NodeStatus::Ready;
            n
        });
        l.saw(&st, 10_000);
        assert!(l.changes(&st, 10_500, "me").is_empty());
        let c = l.changes(&st, 13_000, "me");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("new", NodeStatus::Down));
    }

    #[test]
    fn the_leader_itself_is_never_down() {
        let st = state(&[("me", NodeStatus::Unknown)]);
        let l = Liveness::new(10, 0);
        let c = l.changes(&st, 1_000_000, "me");
        assert_eq!(
            c,
            vec![("me".to_string(), NodeStatus::Ready, String::new())]
        );
    }
}
