//! Failure detection for the dispatcher: which nodes are down. Pure: fed the
//! times this manager last heard from each node, it returns the verdicts to
//! propose (as [`skein_protocol::Command::NodeVerdicts`]). Heartbeats stay in
//! memory; only transitions are committed.
//!
//! Who judges whom: every manager judges the nodes whose session it holds
//! (`Node::session`); the leader also judges the nodes nobody holds (no
//! session yet, or their manager is gone, down or demoted), managers among
//! them. A node this manager hears from while the state gives its session
//! to another manager (or none) is taken over: `ready` by this manager.
//! Managers are judged by the leader only (their heartbeats go to it), never
//! through a session (see [`ClusterState::session_judge`]).
//!
//! Rules for a judged node: it is `down` once nothing was heard from it for
//! `grace`, or when gossip declared it dead (failed probes that `k` other
//! members confirmed, see [`crate::membership::swim`]) and nothing was heard
//! from it since: at once when the verdict came with strong evidence (this
//! manager's own connection to it had closed: its kernel answered for a
//! dead process), else once it has also been silent for half the grace
//! period (so a busy node whose probes were slow is not marked down while
//! its heartbeats still arrive); silence is counted from when this manager
//! started watching, took over the leadership, or came back from a pause
//! ([`Liveness::resumed`]) at the earliest, and from when it first saw the
//! node (a node that just joined is not down before its first heartbeat
//! could arrive), and from when its judge last changed (its session's
//! manager went down: the node needs a moment to move its session, and its
//! turns went to the old judge); a down or unknown node that is heard from
//! again is `ready`. This manager's own node is always alive.

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
    /// Each node's judge (see [`ClusterState::session_judge`]) and when it
    /// last changed.
    judges: HashMap<NodeId, (Option<NodeId>, u64)>,
}

impl Liveness {
    pub fn new(grace_ms: u64, now: u64) -> Self {
        Liveness {
            grace_ms,
            since: now,
            heard: HashMap::new(),
            dead: HashMap::new(),
            first_seen: HashMap::new(),
            judges: HashMap::new(),
        }
    }

    /// Notes which manager judges each node now. A node whose judge changed
    /// (its session's manager went down or away) is counted silent only
    /// from now: its turns went to its old judge, and moving its session to
    /// another manager takes it a moment. Without this, the leader marked a
    /// live worker down the moment its session manager was cut off (it had
    /// never heard from it), and its tasks ran twice until it was back.
    pub fn judges_seen(&mut self, state: &ClusterState, now: u64) {
        for id in state.nodes.keys() {
            let judge = state.session_judge(id);
            match self.judges.get_mut(id) {
                Some((j, at)) => {
                    if j.as_deref() != judge {
                        *j = judge.map(str::to_string);
                        *at = now;
                    }
                }
                None => {
                    self.judges
                        .insert(id.clone(), (judge.map(str::to_string), 0));
                }
            }
        }
        if self.judges.len() > state.nodes.len() {
            self.judges.retain(|id, _| state.nodes.contains_key(id));
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
            if !self.first_seen.contains_key(id) {
                self.first_seen.insert(id.clone(), now);
            }
        }
        if self.first_seen.len() > state.nodes.len() {
            self.first_seen.retain(|id, _| state.nodes.contains_key(id));
        }
    }

    pub fn heard(&mut self, node: &str, now: u64) {
        match self.heard.get_mut(node) {
            Some(e) => *e = (*e).max(now),
            None => {
                self.heard.insert(node.to_string(), now);
            }
        }
    }

    /// This manager was not running for a while (a SIGSTOP, a VM pause, a
    /// long stall) or just took over the leadership: silence counts only
    /// from `now`. What was heard before is kept (it is real), but nothing
    /// is judged on time that passed while this manager could not listen.
    pub fn resumed(&mut self, now: u64) {
        self.since = now;
        for t in self.heard.values_mut() {
            *t = (*t).max(now);
        }
        self.dead.clear();
    }

    /// This manager became the leader: nodes it never heard from get a full
    /// grace period from now (their heartbeats went to the old leader).
    pub fn took_over(&mut self, now: u64) {
        self.since = now;
    }

    /// When `node` was last heard from (or when watching began, or when
    /// it was first seen, whichever is later).
    pub fn last_heard(&self, node: &str) -> u64 {
        let first = self.first_seen.get(node).copied().unwrap_or(self.since);
        let judged_since = self.judges.get(node).map_or(0, |(_, at)| *at);
        self.heard
            .get(node)
            .copied()
            .unwrap_or(self.since.max(first))
            .max(judged_since)
    }

    /// The verdicts to propose now: (node, new status, message). `leader`:
    /// this manager leads (and so judges the nodes nobody holds). Each
    /// node's judge is the one [`Liveness::judges_seen`] last noted (call it
    /// first whenever the judges may have changed): a lookup per node per
    /// call was a tenth of a manager's CPU at 5,000 nodes.
    pub fn changes(
        &self,
        state: &ClusterState,
        now: u64,
        self_node: &str,
        leader: bool,
    ) -> Vec<(NodeId, NodeStatus, String)> {
        let mut out = Vec::new();
        for n in state.nodes.values() {
            let judge = match self.judges.get(&n.id) {
                Some((j, _)) => j.as_deref(),
                None => state.session_judge(&n.id),
            };
            let heard_lately = self.heard.get(&n.id).is_some_and(|h| {
                now.saturating_sub(*h) < self.grace_ms
                    && self.dead.get(&n.id).is_none_or(|(d, _)| d < h)
            });
            let held_elsewhere = match judge {
                Some(j) => j != self_node,
                None => !leader,
            };
            let worker = n.role != skein_protocol::NodeRole::Manager;
            if n.id != self_node && heard_lately && held_elsewhere && worker {
                // Its session is here now: take it over.
                out.push((n.id.clone(), NodeStatus::Ready, String::new()));
                continue;
            }
            let mine = match judge {
                Some(j) => j == self_node,
                None => leader || n.id == self_node,
            };
            if !mine {
                continue;
            }
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
            l.changes(&st, 3999, "me", true).is_empty(),
            "a new leader gives a full grace"
        );
        l.heard("a", 2000);
        assert!(l.changes(&st, 4999, "me", true).is_empty());
        let c = l.changes(&st, 5000, "me", true);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
    }

    #[test]
    fn a_down_node_heard_again_is_ready() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Down)]);
        let mut l = Liveness::new(3000, 0);
        assert!(
            l.changes(&st, 100, "me", true).is_empty(),
            "not heard yet: stays down"
        );
        l.heard("a", 200);
        let c = l.changes(&st, 300, "me", true);
        assert_eq!(c, vec![("a".to_string(), NodeStatus::Ready, String::new())]);
    }

    #[test]
    fn a_gossip_verdict_marks_down_before_the_grace_period() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Ready)]);
        let mut l = Liveness::new(3000, 0);
        l.heard("a", 1000);
        // Strong evidence (the connection closed): down at once.
        l.declared_dead("a", 1200, true);
        let c = l.changes(&st, 1300, "me", true);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
        assert!(c[0].2.contains("gossip"), "{}", c[0].2);
        // A heartbeat after the verdict wins: the node refuted and is alive.
        l.heard("a", 1400);
        assert!(l.changes(&st, 1500, "me", true).is_empty());
        // Without strong evidence, also silent for half the grace period.
        l.declared_dead("a", 1600, false);
        assert!(l.changes(&st, 1400 + 1499, "me", true).is_empty());
        let c = l.changes(&st, 1400 + 1500, "me", true);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
        // A verdict about the leader itself is ignored.
        l.declared_dead("me", 1500, true);
        assert!(l
            .changes(&st, 1600, "me", true)
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
        assert!(l.changes(&st, 10_500, "me", true).is_empty());
        let c = l.changes(&st, 13_000, "me", true);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.as_str(), c[0].1), ("new", NodeStatus::Down));
    }

    #[test]
    fn a_manager_judges_only_the_nodes_whose_session_it_holds() {
        let mut st = state(&[
            ("me", NodeStatus::Ready),
            ("other", NodeStatus::Ready),
            ("w", NodeStatus::Ready),
            ("orphan", NodeStatus::Ready),
        ]);
        for m in ["me", "other"] {
            st.nodes.get_mut(m).expect("manager").role = skein_protocol::NodeRole::Manager;
        }
        st.nodes.get_mut("w").expect("w").role = skein_protocol::NodeRole::Worker;
        st.nodes.get_mut("w").expect("w").session = "other".into();
        st.nodes.get_mut("orphan").expect("o").role = skein_protocol::NodeRole::Worker;
        let l = Liveness::new(3000, 0);
        // Silent for long: `w` is other's to judge; the orphan is the leader's.
        let c = l.changes(&st, 10_000, "me", false);
        assert!(
            c.is_empty(),
            "a follower judges nobody it does not hold: {c:?}"
        );
        let c = l.changes(&st, 10_000, "me", true);
        let ids: Vec<&str> = c.iter().map(|(id, _, _)| id.as_str()).collect();
        assert!(ids.contains(&"orphan") && !ids.contains(&"w"), "{c:?}");
        // When its manager is down, the leader judges `w` too.
        st.nodes.get_mut("other").expect("other").status = NodeStatus::Down;
        let c = l.changes(&st, 10_000, "me", true);
        assert!(
            c.iter()
                .any(|(id, s, _)| id == "w" && *s == NodeStatus::Down),
            "{c:?}"
        );
    }

    #[test]
    fn a_worker_whose_session_moved_here_is_taken_over() {
        let mut st = state(&[
            ("me", NodeStatus::Ready),
            ("other", NodeStatus::Ready),
            ("w", NodeStatus::Ready),
        ]);
        for m in ["me", "other"] {
            st.nodes.get_mut(m).expect("manager").role = skein_protocol::NodeRole::Manager;
        }
        st.nodes.get_mut("w").expect("w").role = skein_protocol::NodeRole::Worker;
        st.nodes.get_mut("w").expect("w").session = "other".into();
        let mut l = Liveness::new(3000, 0);
        l.heard("w", 5000);
        assert_eq!(
            l.changes(&st, 5100, "me", false),
            vec![("w".to_string(), NodeStatus::Ready, String::new())]
        );
        // Applied: the session is here; nothing more to say while it beats.
        st.apply(
            &skein_protocol::Command::NodeVerdicts {
                by: "me".into(),
                verdicts: vec![("w".into(), NodeStatus::Ready, String::new())],
                at: 5100,
            },
            &mut Vec::new(),
        )
        .expect("apply");
        assert_eq!(st.nodes["w"].session, "me");
        assert!(l.changes(&st, 5200, "me", false).is_empty());
        // `other` can no longer mark it down.
        st.apply(
            &skein_protocol::Command::NodeVerdicts {
                by: "other".into(),
                verdicts: vec![("w".into(), NodeStatus::Down, "silent".into())],
                at: 5300,
            },
            &mut Vec::new(),
        )
        .expect("apply");
        assert_eq!(st.nodes["w"].status, NodeStatus::Ready);
    }

    /// Seen in the chaos soak: the leader handed leadership to m1; the old
    /// leader, which had taken m1's session over, marked m1 down 2.5 s
    /// later (m1, now leading, sends heartbeats to nobody) and m1 stayed
    /// down for good (not its own judge).
    #[test]
    fn a_manager_is_judged_by_the_leader_whoever_took_its_session() {
        let mut st = state(&[("old", NodeStatus::Ready), ("new", NodeStatus::Ready)]);
        st.nodes.get_mut("new").expect("new").session = "old".into();
        let mut l = Liveness::new(3000, 0);
        l.heard("new", 1000);
        // The old leader, now a follower: not its to judge, nor to take over.
        assert!(l.changes(&st, 1500, "old", false).is_empty());
        assert!(l.changes(&st, 10_000, "old", false).is_empty());
        // Had it been marked down, the new leader marks itself ready.
        st.nodes.get_mut("new").expect("new").status = NodeStatus::Down;
        let mut l = Liveness::new(3000, 0);
        l.heard("old", 9_000);
        let c = l.changes(&st, 10_000, "new", true);
        assert_eq!(
            c,
            vec![("new".to_string(), NodeStatus::Ready, String::new())]
        );
        st.apply(
            &skein_protocol::Command::NodeVerdicts {
                by: "new".into(),
                verdicts: c,
                at: 10_000,
            },
            &mut Vec::new(),
        )
        .expect("apply");
        assert_eq!(st.nodes["new"].status, NodeStatus::Ready);
        // A silent manager is the leader's to mark down, whatever its session says.
        st.nodes.get_mut("new").expect("new").session = "old".into();
        let c = Liveness::new(3000, 0).changes(&st, 10_000, "old", true);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!((c[0].0.as_str(), c[0].1), ("new", NodeStatus::Down));
        st.apply(
            &skein_protocol::Command::NodeVerdicts {
                by: "old".into(),
                verdicts: c,
                at: 10_000,
            },
            &mut Vec::new(),
        )
        .expect("apply");
        assert_eq!(st.nodes["new"].status, NodeStatus::Down);
    }

    /// Seen in the 30-minute chaos soak: w1's session manager was cut off;
    /// the leader, which had never heard from w1, marked it down at once
    /// and its 12 tasks ran twice (w1 had its session back within 2 s).
    #[test]
    fn a_worker_whose_session_manager_went_down_gets_a_grace_period() {
        let mut st = state(&[
            ("me", NodeStatus::Ready),
            ("m2", NodeStatus::Ready),
            ("w", NodeStatus::Ready),
        ]);
        st.nodes.get_mut("w").expect("w").role = skein_protocol::NodeRole::Worker;
        st.nodes.get_mut("w").expect("w").session = "m2".into();
        let mut l = Liveness::new(3000, 0);
        l.saw(&st, 0);
        l.judges_seen(&st, 0);
        let about_w = |c: Vec<(NodeId, NodeStatus, String)>| -> Vec<NodeStatus> {
            c.into_iter()
                .filter(|(id, _, _)| id == "w")
                .map(|(_, s, _)| s)
                .collect()
        };
        assert!(about_w(l.changes(&st, 10_000, "me", true)).is_empty());
        // m2 is marked down at 10_000: w is the leader's to judge now.
        st.nodes.get_mut("m2").expect("m2").status = NodeStatus::Down;
        l.judges_seen(&st, 10_000);
        assert!(
            about_w(l.changes(&st, 12_999, "me", true)).is_empty(),
            "w gets a full grace period to move its session"
        );
        assert_eq!(
            about_w(l.changes(&st, 13_000, "me", true)),
            vec![NodeStatus::Down]
        );
    }

    #[test]
    fn a_paused_manager_counts_silence_only_from_when_it_is_back() {
        let st = state(&[("me", NodeStatus::Ready), ("a", NodeStatus::Ready)]);
        let mut l = Liveness::new(3000, 0);
        l.heard("a", 1000);
        // Asleep from 1500 to 60_000: on waking, a's silence is not counted.
        l.resumed(60_000);
        assert!(l.changes(&st, 60_100, "me", true).is_empty());
        assert!(l.changes(&st, 62_900, "me", true).is_empty());
        let c = l.changes(&st, 63_000, "me", true);
        assert_eq!((c[0].0.as_str(), c[0].1), ("a", NodeStatus::Down));
    }

    #[test]
    fn the_leader_itself_is_never_down() {
        let st = state(&[("me", NodeStatus::Unknown)]);
        let l = Liveness::new(10, 0);
        let c = l.changes(&st, 1_000_000, "me", true);
        assert_eq!(
            c,
            vec![("me".to_string(), NodeStatus::Ready, String::new())]
        );
    }
}
