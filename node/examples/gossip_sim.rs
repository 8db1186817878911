//! In-process membership simulation: N nodes (default 1,000) run the real
//! SWIM state machine (`skein_node::membership::swim`) over a simulated
//! network (event queue, per-message latency, optional loss, a gossipsub-like
//! mesh of `MESH` random neighbours that floods state changes). Deterministic
//! for a seed.
//!
//! Measures, over TRIALS trials each:
//! - killed node (its connections close: mesh neighbours notice at once and
//!   probes are refused) -> first node declares it dead, and all nodes do;
//! - silently cut node (no packet either way: probes time out);
//! - bandwidth per node (membership bytes in + out per second, idle and
//!   during failures, estimated from message sizes measured on the wire);
//! - false positives in an idle run of IDLE_S simulated seconds with LOSS
//!   message loss.
//!
//! Usage: cargo run --release -p skein-node --example gossip_sim
//! Environment: NODES=1000 TRIALS=10 IDLE_S=600 LOSS=0.001 SEED=1

use skein_node::membership::swim::{Out, Swim, SwimConfig};
use skein_node::membership::wire_size::{wire_sizes, WireSizes};
use skein_protocol::gossip::{MemberState, MemberUpdate};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// gossipsub's default mesh degree.
const MESH: usize = 6;
/// Bytes on the wire per message, from the real codec plus the transport's
/// framing (see `skein_node::membership::wire_size`).
fn sz() -> &'static WireSizes {
    static SIZES: std::sync::OnceLock<WireSizes> = std::sync::OnceLock::new();
    SIZES.get_or_init(wire_sizes)
}
const BUDGET: u64 = 16 * 1024;

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Clone, Debug)]
enum Ev {
    Tick(usize),
    /// A direct probe (or an indirect helper's probe) arrives at `to`.
    Probe {
        from: usize,
        to: usize,
        id: u64,
    },
    Ack {
        to: usize,
        id: u64,
    },
    ProbeTimeout {
        from: usize,
        id: u64,
    },
    /// `helper` is asked by `from` to probe `target`.
    ProbeFor {
        from: usize,
        helper: usize,
        target: usize,
    },
    Probed {
        to: usize,
        target: usize,
        reached: Option<bool>,
    },
    Gossip {
        to: usize,
        u: MemberUpdate,
    },
    Closed {
        at: usize,
        peer: usize,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A node's own probe.
    Direct,
    /// A helper's probe on behalf of this requester.
    For(usize),
    /// The requester's deadline for one helper's answer.
    Deadline,
}

struct Pending {
    target: usize,
    kind: Kind,
    done: bool,
}

struct Sim {
    now: u64,
    q: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: HashMap<usize, Ev>,
    seq: u64,
    next_ev: usize,
    nodes: Vec<Swim>,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    mesh: Vec<Vec<usize>>,
    /// Killed (connections close) or cut (silent).
    down: Vec<bool>,
    /// Down because killed (true) or cut (false).
    kill_kind: Vec<bool>,
    rng: u64,
    loss: f64,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    bytes: Vec<u64>,
    cfg: SwimConfig,
    /// (observer, peer) -> when declared dead.
    dead_at: HashMap<(usize, usize), u64>,
}

impl Sim {
    fn new(n: usize, seed: u64, loss: f64) -> Sim {
        let cfg = SwimConfig::default();
        let ids: Vec<String> = (0..n).map(|i| format!("n{i:05}")).collect();
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let mut nodes: Vec<Swim> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Swim::new(id.clone(), cfg.clone(), seed.wrapping_add(i as u64 * 7919)))
            .collect();
        for (i, s) in nodes.iter_mut().enumerate() {
            for (j, id) in ids.iter().enumerate() {
                if i != j {
                    s.heard_from(id, 0, 0);
                }
            }
        }
        let mut sim = Sim {
            now: 0,
            q: BinaryHeap::new(),
            evs: HashMap::new(),
            seq: 0,
            next_ev: 0,
            nodes,
            ids,
            index,
            mesh: vec![Vec::new(); n],
            down: vec![false; n],
            kill_kind: vec![false; n],
            rng: seed | 1,
            loss,
            pending: HashMap::new(),
            next_id: 0,
            bytes: vec![0; n],
            cfg,
            dead_at: HashMap::new(),
        };
        // A random symmetric mesh of about MESH links per node.
        for i in 0..n {
            while sim.mesh[i].len() < MESH / 2 {
                let j = (sim.rand() % n as u64) as usize;
                if j != i && !sim.mesh[i].contains(&j) {
                    sim.mesh[i].push(j);
                    sim.mesh[j].push(i);
                }
            }
        }
        for i in 0..n {
            let offset = sim.rand() % sim.cfg.probe_interval;
            sim.at(offset, Ev::Tick(i));
        }
        sim
    }

    fn rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// One-way latency on a LAN: 0.2-1.2 ms.
    fn lat(&mut self) -> u64 {
        // Milliseconds, at least 1 (the queue's resolution).
        1 + self.rand() % 2
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && (self.rand() % 1_000_000) as f64 / 1e6 < self.loss
    }

    fn at(&mut self, delay: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.evs.insert(id, ev);
        self.seq += 1;
        self.q.push(Reverse((self.now + delay, self.seq, id)));
    }

    /// Sends `ev` from `from` to `to` (counted both ways, dropped when either
    /// end is down or the message is lost).
    fn send(&mut self, from: usize, to: usize, bytes: u64, ev: Ev) {
        if self.down[from] {
            return;
        }
        self.bytes[from] += bytes;
        if self.down[to] || self.lost() {
            return;
        }
        self.bytes[to] += bytes;
        let d = self.lat();
        self.at(d, ev);
    }

    fn handle(&mut self, node: usize, outs: Vec<Out>) {
        for o in outs {
            match o {
                // The mesh forwards what it receives once, as gossipsub does.
                Out::Broadcast(u) | Out::Relay(u) => {
                    for k in 0..self.mesh[node].len() {
                        let to = self.mesh[node][k];
                        self.send(node, to, sz().gossip, Ev::Gossip { to, u: u.clone() });
                    }
                }
                Out::Changed { peer, state } => {
                    if state == MemberState::Dead {
                        let p = self.index[&peer];
                        self.dead_at.entry((node, p)).or_insert(self.now);
                    }
                }
                Out::Probe { target } => {
                    let t = self.index[&target];
                    self.probe(node, t, Kind::Direct);
                }
                Out::IndirectProbe { target, via } => {
                    let t = self.index[&target];
                    for h in via {
                        let helper = self.index[&h];
                        self.send(
                            node,
                            helper,
                            sz().indirect,
                            Ev::ProbeFor {
                                from: node,
                                helper,
                                target: t,
                            },
                        );
                        // The requester's own deadline for this helper.
                        let id = self.next_id;
                        self.next_id += 1;
                        self.pending.insert(
                            id,
                            Pending {
                                target: t,
                                kind: Kind::Deadline,
                                done: false,
                            },
                        );
                        self.at(
                            self.cfg.probe_timeout * 2 + 100,
                            Ev::ProbeTimeout { from: node, id },
                        );
                    }
                }
            }
        }
    }

    fn probe(&mut self, from: usize, to: usize, kind: Kind) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                target: to,
                kind,
                done: false,
            },
        );
        if self.down[to] && self.killed(to) {
            // Connection refused: the probe fails at once.
            self.bytes[from] += sz().probe;
            self.at(2, Ev::ProbeTimeout { from, id });
            return;
        }
        self.send(from, to, sz().probe, Ev::Probe { from, to, id });
        self.at(self.cfg.probe_timeout, Ev::ProbeTimeout { from, id });
    }

    fn killed(&self, n: usize) -> bool {
        self.down[n] && self.kill_kind[n]
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((t, _, id))) = self.q.pop() else {
            return false;
        };
        self.now = t;
        let Some(ev) = self.evs.remove(&id) else {
            return true;
        };
        match ev {
            Ev::Tick(i) => {
                self.at(self.cfg.probe_interval, Ev::Tick(i));
                if self.down[i] {
                    return true;
                }
                let now = self.now;
                let outs = self.nodes[i].tick(now);
                self.handle(i, outs);
                if let Some(p) = self.nodes[i].next_probe() {
                    let t = self.index[&p];
                    self.probe(i, t, Kind::Direct);
                }
                // Re-announces, spread over the period (anti-entropy).
                let period = skein_node::membership::announce_period(
                    5_000,
                    self.nodes.len(),
                    sz().announce,
                    BUDGET,
                );
                if self
                    .rand()
                    .is_multiple_of((period / self.cfg.probe_interval).max(1))
                {
                    // Flooded over the mesh: everyone receives it once (plus
                    // duplicates on mesh links), costs counted per link.
                    let per_node = sz().announce * skein_node::membership::MESH_COPIES;
                    for b in self.bytes.iter_mut() {
                        *b += per_node;
                    }
                }
            }
            Ev::Probe { from, to, id } => {
                if !self.down[to] {
                    self.send(to, from, sz().probe, Ev::Ack { to: from, id });
                }
            }
            Ev::Ack { to, id } => {
                if let Some(p) = self.pending.get_mut(&id) {
                    if p.done {
                        return true;
                    }
                    p.done = true;
                    let (target, kind) = (p.target, p.kind);
                    match kind {
                        Kind::Direct => {
                            let t = self.ids[target].clone();
                            self.nodes[to].probe_ok(&t);
                        }
                        Kind::For(requester) => {
                            self.send(
                                to,
                                requester,
                                sz().indirect,
                                Ev::Probed {
                                    to: requester,
                                    target,
                                    reached: Some(true),
                                },
                            );
                        }
                        Kind::Deadline => {}
                    }
                }
            }
            Ev::ProbeTimeout { from, id } => {
                let Some(p) = self.pending.remove(&id) else {
                    return true;
                };
                if p.done || self.down[from] {
                    return true;
                }
                let now = self.now;
                match p.kind {
                    Kind::Direct => {
                        let target = self.ids[p.target].clone();
                        let outs = self.nodes[from].probe_failed(&target, now);
                        self.handle(from, outs);
                    }
                    Kind::Deadline => {
                        // A helper never answered the requester.
                        let target = self.ids[p.target].clone();
                        let outs = self.nodes[from].indirect_result(&target, None, now);
                        self.handle(from, outs);
                    }
                    Kind::For(requester) => {
                        let target = p.target;
                        self.send(
                            from,
                            requester,
                            sz().indirect,
                            Ev::Probed {
                                to: requester,
                                target,
                                reached: Some(false),
                            },
                        );
                    }
                }
            }
            Ev::ProbeFor {
                from,
                helper,
                target,
            } => {
                self.probe(helper, target, Kind::For(from));
            }
            Ev::Probed {
                to,
                target,
                reached,
            } => {
                // Settle one of the requester's helper deadlines.
                let key = self
                    .pending
                    .iter()
                    .find(|(_, p)| p.target == target && p.kind == Kind::Deadline && !p.done)
                    .map(|(k, _)| *k);
                if let Some(k) = key {
                    self.pending.remove(&k);
                }
                let now = self.now;
                let t = self.ids[target].clone();
                let outs = self.nodes[to].indirect_result(&t, reached, now);
                self.handle(to, outs);
            }
            Ev::Gossip { to, u } => {
                let now = self.now;
                let outs = self.nodes[to].apply(&u, now);
                self.handle(to, outs);
            }
            Ev::Closed { at, peer } => {
                if !self.down[at] {
                    let p = self.ids[peer].clone();
                    let outs = self.nodes[at].connection_closed(&p);
                    self.handle(at, outs);
                }
            }
        }
        true
    }

    fn run_until(&mut self, t: u64) {
        while self.q.peek().is_some_and(|Reverse((at, _, _))| *at <= t) {
            self.step();
        }
        self.now = t;
    }
}

impl Sim {
    /// Node `n` fails: killed (its connections close) or cut (silent).
    fn fail(&mut self, n: usize, killed: bool) {
        self.down[n] = true;
        self.kill_kind[n] = killed;
        if killed {
            for k in 0..self.mesh[n].len() {
                let at = self.mesh[n][k];
                let d = self.lat();
                self.at(d, Ev::Closed { at, peer: n });
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() {
    let n: usize = env("NODES", 1000);
    let trials: usize = env("TRIALS", 10);
    let idle_s: u64 = env("IDLE_S", 600);
    let loss: f64 = env("LOSS", 0.001);
    let seed: u64 = env("SEED", 1);
    println!(
        "gossip_sim: {n} nodes, mesh {MESH}, SWIM {:?}",
        SwimConfig::default()
    );
    println!(
        "gossip_sim: bytes per message from the codec (probe/ack, indirect, gossip update, announce): {:?}",
        sz()
    );

    for (what, killed) in [("killed", true), ("cut", false)] {
        let (mut first, mut all, mut bw) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..trials {
            let mut sim = Sim::new(n, seed + trial as u64, 0.0);
            sim.run_until(2_000);
            let b0: u64 = sim.bytes.iter().sum();
            let victim = (sim.rand() % n as u64) as usize;
            let t0 = sim.now;
            sim.fail(victim, killed);
            let deadline = t0 + 30_000;
            let others = n - 1;
            while sim.now < deadline {
                let next = sim.now + 50;
                sim.run_until(next);
                let count = sim.dead_at.keys().filter(|(_, p)| *p == victim).count();
                if count >= others {
                    break;
                }
            }
            let times: Vec<u64> = sim
                .dead_at
                .iter()
                .filter(|((_, p), _)| *p == victim)
                .map(|(_, t)| t - t0)
                .collect();
            let b1: u64 = sim.bytes.iter().sum();
            // Bytes per node from the failure until every node knew.
            bw.push((b1 - b0) as f64 / n as f64);
            first.push(times.iter().min().copied().unwrap_or(u64::MAX) as f64 / 1000.0);
            all.push(if times.len() >= others {
                times.iter().max().copied().unwrap_or(0) as f64 / 1000.0
            } else {
                f64::INFINITY
            });
        }
        println!(
            "N={n} {what:6}: first node declares it dead median {:.3} s, all {} nodes median {:.3} s; {:.0} bytes per node from the failure until all knew",
            median(&mut first),
            n - 1,
            median(&mut all),
            median(&mut bw)
        );
    }

    // Idle run with message loss: no node may be declared dead.
    let mut sim = Sim::new(n, seed, loss);
    sim.run_until(1_000);
    let b0: u64 = sim.bytes.iter().sum();
    sim.run_until(1_000 + idle_s * 1000);
    let b1: u64 = sim.bytes.iter().sum();
    let false_dead = sim.dead_at.len();
    let suspects: usize = sim
        .nodes
        .iter()
        .map(|s| {
            s.members()
                .values()
                .filter(|m| m.state == MemberState::Suspect)
                .count()
        })
        .sum();
    println!(
        "N={n} idle {idle_s} s with {:.2}% message loss: {false_dead} false dead declarations, {suspects} suspects at the end; idle bandwidth {:.0} B/s per node (budget {BUDGET})",
        loss * 100.0,
        (b1 - b0) as f64 / n as f64 / idle_s as f64
    );
}
