//! The SWIM failure detector and member table, as a pure state machine: no
//! clock, no network, no randomness of its own (a seeded xorshift). The
//! actor ([`super::actor`]) feeds it what it hears and the time, and
//! performs what it returns ([`Out`]).
//!
//! Rules (SWIM with memberlist's incarnations):
//! - every claim about a member is ordered by `(incarnation, state)` with
//!   `Alive < Suspect < Dead` at equal incarnation, and a claim is taken
//!   only when it is greater than what the table holds: so the table is a
//!   join-semilattice, and nodes that heard the same claims in any order
//!   hold the same states;
//! - a claim that this node is suspect or dead is refuted: the node raises
//!   its incarnation above the claim's and broadcasts itself alive (which
//!   then beats the claim everywhere). This node is never in its own table;
//! - a probe that fails asks `k` other members to probe the member
//!   ("indirect confirmation"); when every helper answers that it cannot
//!   reach it either, the member is dead at once; when one reaches it,
//!   nothing happens (only this node's link is bad: a lost packet costs
//!   three small requests, not a cluster-wide suspicion); when helpers do
//!   not answer (or there are none), the member becomes suspect, which
//!   spreads and which the member refutes; an unrefuted suspect is dead
//!   after `suspect_timeout`;
//! - a closed connection (the peer's process died: its kernel answered)
//!   is strong evidence: the member is probed at once, not at its turn;
//! - each node probes only its ring neighbours (Rapid's monitoring
//!   overlay): the live members and this node are placed on `rings`
//!   pseudo-random rings (a fixed hash of ring number and peer id, so every
//!   node that holds the same table computes the same rings), and a node's
//!   neighbours are its predecessor and successor on each ring. The
//!   relation is symmetric and forms a random regular graph: every member
//!   is watched by up to `2 * rings` others whatever the fleet size, the
//!   graph stays connected with a diameter of O(log n) (gossip crosses it
//!   in a few hops), and a node needs connections only to its neighbours.
//!   In a cluster of at most `2 * rings + 1` nodes everyone is a neighbour;
//! - probing is a randomised round robin over the neighbours: each is
//!   probed once per round, so a silent member is found within
//!   `2 * rings` periods by each of its watchers (SWIM's bounded detection
//!   time, now independent of the fleet size);
//! - dead members stay in the table for `dead_retain` (so their dead claim
//!   keeps beating older alive claims), then are forgotten;
//! - a node spreads only its own verdicts and refutations
//!   ([`Out::Broadcast`]); newer claims it learned from others come out as
//!   [`Out::Relay`], which the transport's own forwarding covers.

use skein_protocol::gossip::{MemberState, MemberUpdate};
use std::collections::{BTreeMap, HashMap};

/// Timing knobs, in milliseconds.
#[derive(Clone, Debug)]
pub struct SwimConfig {
    /// One probe per this period.
    pub probe_interval: u64,
    /// How long a direct probe waits for its answer.
    pub probe_timeout: u64,
    /// How many members are asked to probe a member that missed a probe.
    pub indirect_k: usize,
    /// A suspect nobody refuted is dead after this long.
    pub suspect_timeout: u64,
    /// Dead members are forgotten after this long.
    pub dead_retain: u64,
    /// Monitoring rings (each gives a node up to two neighbours to probe
    /// and stay connected to); 0 probes every member.
    pub rings: usize,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_interval: 250,
            probe_timeout: 500,
            indirect_k: 3,
            suspect_timeout: 2_000,
            dead_retain: 60_000,
            rings: 3,
        }
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub incarnation: u64,
    pub state: MemberState,
    /// When the state last changed (this node's clock).
    pub since: u64,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Spread this claim (gossip): this node's own verdict or refutation.
    Broadcast(MemberUpdate),
    /// A newer claim learned from someone else. Over gossipsub, the
    /// transport already forwards it (the real node drops this; republishing
    /// would make every member re-send every claim); a network without
    /// forwarding (the simulation's mesh) passes it on.
    Relay(MemberUpdate),
    /// A member's state changed in this node's table.
    Changed { peer: String, state: MemberState },
    /// Probe `target` directly now.
    Probe { target: String },
    /// Ask each of `via` to probe `target` and report with
    /// [`Swim::indirect_result`].
    IndirectProbe { target: String, via: Vec<String> },
}

/// An indirect confirmation in flight.
#[derive(Clone, Debug)]
struct Pending {
    asked: usize,
    reachable: usize,
    unreachable: usize,
    answered: usize,
}

#[derive(Clone, Debug)]
pub struct Swim {
    me: String,
    incarnation: u64,
    cfg: SwimConfig,
    members: BTreeMap<String, Member>,
    order: Vec<String>,
    next: usize,
    rng: u64,
    pending: HashMap<String, Pending>,
    /// This node's ring neighbours (see the module header), recomputed when
    /// the set of live members changed.
    neighbours: Vec<String>,
    ring_dirty: bool,
}

/// Where `peer` sits on ring `ring`: FNV-1a over the ring number and the
/// peer id, finished with a 64-bit mixer (so similar ids spread out).
fn ring_position(ring: usize, peer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in (ring as u64).to_le_bytes().iter().chain(peer.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `me`'s neighbours among `live` (which does not hold `me`): its
/// predecessor and successor on each of `rings` rings; everyone when the
/// cluster is small or `rings` is 0. Sorted, no duplicates.
pub fn ring_neighbours(me: &str, live: &[&str], rings: usize) -> Vec<String> {
    if rings == 0 || live.len() <= 2 * rings {
        let mut all: Vec<String> = live.iter().map(|p| p.to_string()).collect();
        all.sort();
        all.dedup();
        return all;
    }
    let mut out = std::collections::BTreeSet::new();
    let mut ring: Vec<(u64, &str)> = Vec::with_capacity(live.len() + 1);
    for r in 0..rings {
        ring.clear();
        ring.push((ring_position(r, me), me));
        ring.extend(live.iter().map(|p| (ring_position(r, p), *p)));
        ring.sort_unstable();
        let n = ring.len();
        if let Some(i) = ring.iter().position(|(_, p)| *p == me) {
            out.insert(ring[(i + n - 1) % n].1.to_string());
            out.insert(ring[(i + 1) % n].1.to_string());
        }
    }
    out.remove(me);
    out.into_iter().collect()
}

fn rank(s: MemberState) -> u8 {
    match s {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Dead => 2,
    }
}

impl Swim {
    pub fn new(me: impl Into<String>, cfg: SwimConfig, seed: u64) -> Self {
        Swim {
            me: me.into(),
            incarnation: 0,
            cfg,
            members: BTreeMap::new(),
            order: Vec::new(),
            next: 0,
            rng: seed | 1,
            pending: HashMap::new(),
            neighbours: Vec::new(),
            ring_dirty: false,
        }
    }

    /// This node's ring neighbours: the members it probes and keeps
    /// connections to (see the module header).
    pub fn neighbours(&mut self) -> &[String] {
        if self.ring_dirty {
            self.ring_dirty = false;
            let live: Vec<&str> = self
                .members
                .iter()
                .filter(|(_, m)| m.state != MemberState::Dead)
                .map(|(p, _)| p.as_str())
                .collect();
            self.neighbours = ring_neighbours(&self.me, &live, self.cfg.rings);
        }
        &self.neighbours
    }

    fn is_neighbour(&mut self, peer: &str) -> bool {
        self.neighbours().iter().any(|p| p == peer)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn config(&self) -> &SwimConfig {
        &self.cfg
    }

    /// This node's incarnation: raised to refute a claim about it, and when
    /// what it announces about itself changes.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What this node announces changed: a new incarnation orders the new
    /// announce after the old one everywhere (and beats older claims).
    pub fn raise_incarnation(&mut self) {
        self.incarnation += 1;
    }

    /// Every member but this node, dead ones included (until forgotten).
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    pub fn state_of(&self, peer: &str) -> Option<MemberState> {
        self.members.get(peer).map(|m| m.state)
    }

    /// Members not dead, this node excluded.
    pub fn live(&self) -> impl Iterator<Item = &String> {
        self.members
            .iter()
            .filter(|(_, m)| m.state != MemberState::Dead)
            .map(|(p, _)| p)
    }

    /// The claim this node makes about itself.
    pub fn self_update(&self) -> MemberUpdate {
        MemberUpdate {
            peer: self.me.clone(),
            incarnation: self.incarnation,
            state: MemberState::Alive,
        }
    }

    /// Every claim in the table (for push-pull sync), this node's included.
    pub fn snapshot(&self) -> Vec<MemberUpdate> {
        let mut v = vec![self.self_update()];
        v.extend(self.members.iter().map(|(p, m)| MemberUpdate {
            peer: p.clone(),
            incarnation: m.incarnation,
            state: m.state,
        }));
        v
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Takes a claim heard from someone. Returns what changed and what to
    /// spread (a refutation when the claim is about this node).
    pub fn apply(&mut self, u: &MemberUpdate, now: u64) -> Vec<Out> {
        self.record(u, now, false)
    }

    /// [`Swim::apply`]; `own` when the claim is this node's verdict.
    fn record(&mut self, u: &MemberUpdate, now: u64, own: bool) -> Vec<Out> {
        let mut out = Vec::new();
        if u.peer == self.me {
            if u.state != MemberState::Alive && u.incarnation >= self.incarnation {
                self.incarnation = u.incarnation + 1;
                out.push(Out::Broadcast(self.self_update()));
            } else if u.incarnation > self.incarnation {
                // Our own alive claim from a previous life (a restart lost
                // the count): carry on from it. Taking max(alive claims,
                // other claims + 1) keeps the result independent of order.
                self.incarnation = u.incarnation;
                out.push(Out::Broadcast(self.self_update()));
            }
            return out;
        }
        let newer = match self.members.get(&u.peer) {
            None => true,
            Some(m) => (u.incarnation, rank(u.state)) > (m.incarnation, rank(m.state)),
        };
        if !newer {
            return out;
        }
        let old = self.members.get(&u.peer).map(|m| m.state);
        let was_live = old.is_some_and(|s| s != MemberState::Dead);
        if was_live != (u.state != MemberState::Dead) {
            self.ring_dirty = true;
        }
        self.members.insert(
            u.peer.clone(),
            Member {
                incarnation: u.incarnation,
                state: u.state,
                since: if old == Some(u.state) {
                    self.members.get(&u.peer).map_or(now, |m| m.since)
                } else {
                    now
                },
            },
        );
        if u.state != MemberState::Suspect {
            self.pending.remove(&u.peer);
        }
        out.push(if own {
            Out::Broadcast(u.clone())
        } else {
            Out::Relay(u.clone())
        });
        if old != Some(u.state) {
            out.push(Out::Changed {
                peer: u.peer.clone(),
                state: u.state,
            });
        }
        out
    }

    /// Sets `peer`'s state at its current incarnation (this node's own
    /// verdict) and spreads it.
    fn declare(&mut self, peer: &str, state: MemberState, now: u64) -> Vec<Out> {
        let Some(m) = self.members.get(peer) else {
            return Vec::new();
        };
        let u = MemberUpdate {
            peer: peer.to_string(),
            incarnation: m.incarnation,
            state,
        };
        self.record(&u, now, true)
    }

    /// The next member to probe (randomised round robin over the live
    /// neighbours).
    pub fn next_probe(&mut self) -> Option<String> {
        for _ in 0..2 {
            while self.next < self.order.len() {
                let p = self.order[self.next].clone();
                self.next += 1;
                if self
                    .members
                    .get(&p)
                    .is_some_and(|m| m.state != MemberState::Dead)
                {
                    return Some(p);
                }
            }
            // New round: shuffle the neighbours (Fisher-Yates).
            let mut order: Vec<String> = self.neighbours().to_vec();
            for i in (1..order.len()).rev() {
                let j = (self.random() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            self.order = order;
            self.next = 0;
            if self.order.is_empty() {
                return None;
            }
        }
        None
    }

    /// A direct probe was answered (or anything else proved `peer` alive
    /// and reachable right now): an ongoing confirmation ends.
    pub fn probe_ok(&mut self, peer: &str) {
        if let Some(p) = self.pending.get_mut(peer) {
            p.reachable += 1;
        }
    }

    /// A direct probe failed: `k` others are asked to probe the member (it
    /// becomes suspect at once only when there is nobody to ask).
    pub fn probe_failed(&mut self, peer: &str, now: u64) -> Vec<Out> {
        let Some(m) = self.members.get(peer) else {
            return Vec::new();
        };
        if m.state == MemberState::Dead || self.pending.contains_key(peer) {
            return Vec::new();
        }
        let mut out = Vec::new();
        // Helpers: other neighbours first (this node is connected to them),
        // then any live member.
        let alive = |s: &Swim, p: &str| p != peer && s.state_of(p) == Some(MemberState::Alive);
        let near: Vec<String> = self.neighbours().to_vec();
        let mut helpers: Vec<String> = near.iter().filter(|p| alive(self, p)).cloned().collect();
        let want = self.cfg.indirect_k;
        self.shuffle_prefix(&mut helpers, want);
        helpers.truncate(want);
        if helpers.len() < want {
            let mut far: Vec<String> = self
                .members
                .iter()
                .filter(|(p, m)| {
                    p.as_str() != peer && m.state == MemberState::Alive && !near.contains(p)
                })
                .map(|(p, _)| p.clone())
                .collect();
            let more = want - helpers.len();
            self.shuffle_prefix(&mut far, more);
            far.truncate(more);
            helpers.extend(far);
        }
        if !helpers.is_empty() {
            self.pending.insert(
                peer.to_string(),
                Pending {
                    asked: helpers.len(),
                    reachable: 0,
                    unreachable: 0,
                    answered: 0,
                },
            );
            out.push(Out::IndirectProbe {
                target: peer.to_string(),
                via: helpers,
            });
        } else if self.state_of(peer) == Some(MemberState::Alive) {
            out.extend(self.declare(peer, MemberState::Suspect, now));
        }
        out
    }

    /// Moves `k` random elements of `v` to its front (partial Fisher-Yates).
    fn shuffle_prefix(&mut self, v: &mut [String], k: usize) {
        let k = k.min(v.len());
        for i in 0..k {
            let j = i + (self.random() % (v.len() - i) as u64) as usize;
            v.swap(i, j);
        }
    }

    /// One helper's answer about `target`: `Some(true)` reached it,
    /// `Some(false)` could not, `None` the helper itself did not answer.
    pub fn indirect_result(&mut self, target: &str, reached: Option<bool>, now: u64) -> Vec<Out> {
        let Some(p) = self.pending.get_mut(target) else {
            return Vec::new();
        };
        p.answered += 1;
        match reached {
            Some(true) => p.reachable += 1,
            Some(false) => p.unreachable += 1,
            None => {}
        }
        if p.answered < p.asked && p.reachable == 0 {
            return Vec::new();
        }
        let Some(p) = self.pending.remove(target) else {
            return Vec::new();
        };
        if p.reachable > 0 {
            // Someone reached it: only this node's link is bad.
            return Vec::new();
        }
        if p.unreachable == p.asked {
            // Every helper confirms: dead now.
            return self.declare(target, MemberState::Dead, now);
        }
        // Some helpers did not answer: suspect, which the member may refute.
        if self.state_of(target) == Some(MemberState::Alive) {
            return self.declare(target, MemberState::Suspect, now);
        }
        Vec::new()
    }

    /// The connection to `peer` closed: probe it now.
    pub fn connection_closed(&mut self, peer: &str) -> Vec<Out> {
        // Only a neighbour's connection is kept open: the others close when
        // idle, which says nothing about the member.
        if !self.is_neighbour(peer) {
            return Vec::new();
        }
        match self.members.get(peer) {
            Some(m) if m.state != MemberState::Dead => vec![Out::Probe {
                target: peer.to_string(),
            }],
            _ => Vec::new(),
        }
    }

    /// A member heard from directly (a probe answered, its own announce
    /// with its incarnation): an alive claim at that incarnation.
    pub fn heard_from(&mut self, peer: &str, incarnation: u64, now: u64) -> Vec<Out> {
        self.probe_ok(peer);
        self.apply(
            &MemberUpdate {
                peer: peer.to_string(),
                incarnation,
                state: MemberState::Alive,
            },
            now,
        )
    }

    /// Time passes: suspects past their timeout die; old dead are forgotten.
    pub fn tick(&mut self, now: u64) -> Vec<Out> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(p, m)| {
                m.state == MemberState::Suspect
                    && now.saturating_sub(m.since) >= self.cfg.suspect_timeout
                    && self.pending.get(*p).is_none_or(|q| q.reachable == 0)
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut out = Vec::new();
        for p in expired {
            self.pending.remove(&p);
            out.extend(self.declare(&p, MemberState::Dead, now));
        }
        let retain = self.cfg.dead_retain;
        self.members
            .retain(|_, m| !(m.state == MemberState::Dead && now.saturating_sub(m.since) > retain));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use MemberState::*;

    fn up(peer: &str, inc: u64, state: MemberState) -> MemberUpdate {
        MemberUpdate {
            peer: peer.into(),
            incarnation: inc,
            state,
        }
    }

    fn swim() -> Swim {
        Swim::new("me", SwimConfig::default(), 7)
    }

    fn changed(out: &[Out], peer: &str) -> Option<MemberState> {
        out.iter().find_map(|o| match o {
            Out::Changed { peer: p, state } if p == peer => Some(*state),
            _ => None,
        })
    }

    #[test]
    fn a_suspicion_about_me_is_refuted_with_a_higher_incarnation() {
        let mut s = swim();
        let out = s.apply(&up("me", 0, Suspect), 10);
        assert_eq!(s.incarnation(), 1);
        assert_eq!(out, vec![Out::Broadcast(up("me", 1, Alive))]);
        // The refutation beats the suspicion at every other node.
        let mut other = Swim::new("b", SwimConfig::default(), 1);
        other.apply(&up("me", 0, Suspect), 10);
        other.apply(&up("me", 1, Alive), 11);
        assert_eq!(other.state_of("me"), Some(Alive));
        // An old claim does not make me bump again.
        assert!(s.apply(&up("me", 0, Dead), 12).is_empty());
        assert!(s.members().get("me").is_none(), "never in my own table");
    }

    #[test]
    fn only_own_verdicts_are_spread_others_claims_are_relayed() {
        let mut s = swim();
        // Learned from someone else (gossip, a sync, an announce): relayed.
        let out = s.heard_from("a", 0, 1);
        assert_eq!(out[0], Out::Relay(up("a", 0, Alive)));
        assert!(!out.iter().any(|o| matches!(o, Out::Broadcast(_))));
        let out = s.apply(&up("a", 0, Suspect), 2);
        assert_eq!(out[0], Out::Relay(up("a", 0, Suspect)));
        // This node's own verdict: spread.
        s.heard_from("b", 0, 3);
        let mut out = s.probe_failed("b", 4);
        out.extend(s.indirect_result("b", Some(false), 5));
        assert!(
            out.iter()
                .any(|o| matches!(o, Out::Broadcast(u) if u.peer == "b")),
            "{out:?}"
        );
    }

    #[test]
    fn a_failed_probe_asks_k_others_who_confirm_it_dead() {
        let mut s = swim();
        for p in ["a", "b", "c", "d", "e"] {
            s.heard_from(p, 0, 0);
        }
        let out = s.probe_failed("a", 100);
        assert_eq!(changed(&out, "a"), None, "no suspicion for one lost probe");
        let via = out
            .iter()
            .find_map(|o| match o {
                Out::IndirectProbe { target, via } if target == "a" => Some(via.clone()),
                _ => None,
            })
            .expect("indirect probe");
        assert_eq!(via.len(), 3);
        assert!(!via.contains(&"a".to_string()));
        // Two helpers cannot reach it: not yet dead.
        assert!(s.indirect_result("a", Some(false), 110).is_empty());
        assert!(s.indirect_result("a", Some(false), 120).is_empty());
        // The third confirms: dead at once, long before the suspect timeout.
        let out = s.indirect_result("a", Some(false), 130);
        assert_eq!(changed(&out, "a"), Some(Dead));
        assert_eq!(s.state_of("a"), Some(Dead));
    }

    #[test]
    fn a_helper_that_reaches_the_member_saves_it() {
        let mut s = swim();
        for p in ["a", "b"] {
            s.heard_from(p, 0, 0);
        }
        s.probe_failed("a", 100);
        let out = s.indirect_result("a", Some(true), 110);
        assert!(out.is_empty(), "no claim when a helper reached it");
        assert_eq!(s.state_of("a"), Some(Alive));
        assert!(s.tick(100 + 60_000).is_empty());
    }

    #[test]
    fn silent_helpers_make_a_suspect_that_dies_unless_refuted() {
        let mut s = swim();
        for p in ["a", "b", "c"] {
            s.heard_from(p, 0, 0);
        }
        s.probe_failed("a", 100);
        s.indirect_result("a", Some(false), 200);
        let out = s.indirect_result("a", None, 300);
        assert_eq!(changed(&out, "a"), Some(Suspect));
        assert!(out.contains(&Out::Broadcast(up("a", 0, Suspect))));
        // Refuted: alive, and the timeout does nothing.
        s.apply(&up("a", 1, Alive), 400);
        assert!(changed(&s.tick(300 + 2000), "a").is_none());
        // Not refuted: dead after the timeout.
        s.probe_failed("b", 3000);
        s.indirect_result("b", None, 3100);
        s.indirect_result("b", None, 3100);
        assert_eq!(changed(&s.tick(3100 + 2000), "b"), Some(Dead));
    }

    #[test]
    fn an_unrefuted_suspect_dies_after_the_timeout() {
        let mut s = swim();
        s.heard_from("a", 3, 0);
        s.apply(&up("a", 3, Suspect), 1000);
        assert!(changed(&s.tick(2999), "a").is_none());
        let out = s.tick(3000);
        assert_eq!(changed(&out, "a"), Some(Dead));
        assert!(out.contains(&Out::Broadcast(up("a", 3, Dead))));
        // Forgotten after the retention.
        s.tick(3000 + 60_001);
        assert!(s.state_of("a").is_none());
    }

    #[test]
    fn a_lone_pair_still_detects_through_the_timeout() {
        let mut s = swim();
        s.heard_from("a", 0, 0);
        let out = s.probe_failed("a", 10);
        assert_eq!(changed(&out, "a"), Some(Suspect));
        assert!(!out.iter().any(|o| matches!(o, Out::IndirectProbe { .. })));
        assert_eq!(changed(&s.tick(10 + 2000), "a"), Some(Dead));
    }

    #[test]
    fn a_dead_member_comes_back_only_with_a_new_incarnation() {
        let mut s = swim();
        s.heard_from("a", 2, 0);
        s.apply(&up("a", 2, Dead), 10);
        assert!(s.apply(&up("a", 2, Alive), 20).is_empty());
        assert_eq!(s.state_of("a"), Some(Dead));
        let out = s.apply(&up("a", 3, Alive), 30);
        assert_eq!(changed(&out, "a"), Some(Alive));
    }

    #[test]
    fn a_closed_connection_probes_at_once() {
        let mut s = swim();
        s.heard_from("a", 0, 0);
        assert_eq!(
            s.connection_closed("a"),
            vec![Out::Probe { target: "a".into() }]
        );
        assert!(s.connection_closed("zz").is_empty());
    }

    #[test]
    fn every_live_member_is_probed_once_per_round() {
        let mut s = swim();
        for p in ["a", "b", "c", "d"] {
            s.heard_from(p, 0, 0);
        }
        s.apply(&up("d", 0, Dead), 1);
        for _ in 0..3 {
            let mut round: Vec<String> = (0..3).filter_map(|_| s.next_probe()).collect();
            round.sort();
            assert_eq!(round, vec!["a", "b", "c"]);
        }
    }

    fn fleet(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("12D3KooPeer{i:05}")).collect()
    }

    fn neighbours_of(all: &[String], me: &str, rings: usize) -> Vec<String> {
        let live: Vec<&str> = all
            .iter()
            .map(|s| s.as_str())
            .filter(|p| *p != me)
            .collect();
        ring_neighbours(me, &live, rings)
    }

    #[test]
    fn small_clusters_watch_everyone() {
        let all = fleet(7);
        assert_eq!(neighbours_of(&all, &all[0], 3).len(), 6);
    }

    #[test]
    fn ring_neighbours_are_few_symmetric_and_connect_the_fleet() {
        let all = fleet(2_000);
        let map: BTreeMap<&str, Vec<String>> = all
            .iter()
            .map(|p| (p.as_str(), neighbours_of(&all, p, 3)))
            .collect();
        for (p, ns) in &map {
            assert!(
                (2..=6).contains(&ns.len()),
                "{p} has {} neighbours",
                ns.len()
            );
            for q in ns {
                assert!(
                    map[q.as_str()].iter().any(|x| x == p),
                    "{p} watches {q} but not the other way round"
                );
            }
        }
        // Every member is reachable from any other in few hops.
        let mut depth: HashMap<&str, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([(all[0].as_str(), 0)]);
        depth.insert(&all[0], 0);
        while let Some((p, d)) = queue.pop_front() {
            for q in &map[p] {
                if !depth.contains_key(q.as_str()) {
                    depth.insert(q, d + 1);
                    queue.push_back((q, d + 1));
                }
            }
        }
        assert_eq!(depth.len(), all.len(), "the overlay is not connected");
        let diameter = depth.values().max().copied().unwrap_or(0);
        assert!(diameter <= 16, "gossip needs {diameter} hops");
    }

    #[test]
    fn probes_go_to_neighbours_only_and_a_death_reshapes_the_rings() {
        let all = fleet(50);
        let me = all[0].clone();
        let mut s = Swim::new(me.clone(), SwimConfig::default(), 3);
        for p in &all[1..] {
            s.heard_from(p, 0, 0);
        }
        let ns = neighbours_of(&all, &me, 3);
        let probed: std::collections::BTreeSet<String> =
            (0..200).filter_map(|_| s.next_probe()).collect();
        assert_eq!(probed.into_iter().collect::<Vec<_>>(), ns);
        // A non-neighbour's closed connection says nothing.
        let far = all[1..]
            .iter()
            .find(|p| !ns.contains(p))
            .cloned()
            .unwrap_or_default();
        assert!(s.connection_closed(&far).is_empty());
        // A neighbour dies: its place on the rings goes to someone else.
        s.apply(&up(&ns[0], 0, Dead), 1);
        let rest: Vec<String> = all.iter().filter(|p| **p != ns[0]).cloned().collect();
        assert_eq!(s.neighbours().to_vec(), neighbours_of(&rest, &me, 3));
    }

    fn arb_update() -> impl Strategy<Value = MemberUpdate> {
        (
            prop::sample::select(vec!["me", "a", "b", "c"]),
            0u64..4,
            prop::sample::select(vec![Alive, Suspect, Dead]),
        )
            .prop_map(|(p, i, s)| up(p, i, s))
    }

    proptest! {
        /// The table is a join-semilattice: the same claims in any order
        /// give the same states and incarnations.
        #[test]
        fn order_does_not_matter(updates in prop::collection::vec(arb_update(), 0..40), seed in any::<u64>()) {
            let mut a = swim();
            for u in &updates { a.apply(u, 0); }
            let mut shuffled = updates.clone();
            let mut r = seed | 1;
            for i in (1..shuffled.len()).rev() {
                r ^= r << 13; r ^= r >> 7; r ^= r << 17;
                shuffled.swap(i, (r % (i as u64 + 1)) as usize);
            }
            let mut b = swim();
            for u in &shuffled { b.apply(u, 0); }
            let view = |s: &Swim| s.members().iter().map(|(p, m)| (p.clone(), m.incarnation, m.state)).collect::<Vec<_>>();
            prop_assert_eq!(view(&a), view(&b));
            prop_assert_eq!(a.incarnation(), b.incarnation());
        }

        /// This node is never in its own table, and after any claims about
        /// it, its own alive claim beats every one of them.
        #[test]
        fn i_always_refute(updates in prop::collection::vec(arb_update(), 0..40)) {
            let mut s = swim();
            for u in &updates {
                s.apply(u, 0);
                prop_assert!(s.members().get("me").is_none());
            }
            for u in updates.iter().filter(|u| u.peer == "me") {
                prop_assert!((s.incarnation(), 0) > (u.incarnation, rank(u.state)) || u.state == Alive);
            }
        }

        /// Incarnations never go down, and states at one incarnation only
        /// move towards dead.
        #[test]
        fn claims_only_move_forward(updates in prop::collection::vec(arb_update(), 0..40)) {
            let mut s = swim();
            let mut seen: BTreeMap<String, (u64, u8)> = BTreeMap::new();
            for (t, u) in updates.iter().enumerate() {
                s.apply(u, t as u64);
                for (p, m) in s.members() {
                    let now = (m.incarnation, rank(m.state));
                    if let Some(before) = seen.get(p) {
                        prop_assert!(now >= *before);
                    }
                    seen.insert(p.clone(), now);
                }
            }
        }
    }
}
