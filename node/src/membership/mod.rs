//! Membership: who is in the gossip network and whether they are alive.
//! Owns the member table (through the pure [`swim`] detector), every
//! member's last [`Announce`], this node's own announce and incarnation, and
//! the gossip bandwidth budget.
//!
//! - [`swim`]: the failure detector and member table (pure);
//! - [`bootstrap`]: zero-touch cluster formation (pure);
//! - this module: the actor that runs them over the network: it publishes
//!   batches of claims on the gossip topic, probes one member per period
//!   (directly, then through `k` helpers), answers probes, syncs the whole
//!   table with every newly connected peer it keeps or does not know yet
//!   (push-pull), keeps connections to its ring neighbours only, and on a
//!   manager to the other managers (see [`swim`]: a few per node whatever
//!   the fleet size; a worker's session keeps its one manager;
//!   any other member is dialled when a request needs it and the
//!   connection closes when idle), dials peers mDNS shows it that it does
//!   not know yet, and publishes a snapshot.
//!
//! Invariants: a member's own announce (gossipsub signs and checks the
//! source; a probe or push-pull comes over its own connection) replaces
//! what is held; a copy passed on by another member (a push-pull view, a
//! newcomer's announce relayed by the member it reached) only when it is of
//! a later incarnation or the member is new here, and every change of an
//! announce raises its incarnation; only members holding the cluster key
//! can publish or sync at all; a newcomer is relayed once, by the member
//! it dialled, so everyone knows it before connecting to it (connections to
//! members learned second hand are spread over the next seconds); gossip
//! published per second stays under
//! `budget_bytes_per_s` (the periodic re-announce is skipped when over;
//! state changes are batched and never dropped); every request is answered.
//! Who calls it: the agent starts it ([`start`]); the inbound router passes
//! it membership requests; the leader's liveness monitor subscribes to
//! [`MemberEvent`]s.

pub mod bootstrap;
pub mod swim;

use crate::net::{GossipIn, Keeper, NetEvent, NetHandle};
use serde::Serialize;
use skein_protocol::gossip::{
    Announce, GossipBatch, GossipReply, GossipRequest, MemberState, MemberUpdate,
};
use skein_protocol::wire::{WireMessage, WireReply};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use swim::{Out, Swim, SwimConfig};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info};

#[derive(Clone, Debug)]
pub struct MembershipConfig {
    pub swim: SwimConfig,
    /// Re-announce this node this often (state changes go out at once).
    pub announce_every: Duration,
    /// Gossip budget per node, bytes per second published.
    pub budget_bytes_per_s: u64,
    /// `--join` seeds: dialled at start and while no member is alive.
    pub seeds: Vec<String>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            swim: SwimConfig::default(),
            announce_every: Duration::from_secs(5),
            budget_bytes_per_s: 16 * 1024,
            seeds: Vec::new(),
        }
    }
}

/// A member's state changed in this node's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    pub peer: String,
    pub node_id: String,
    pub state: MemberState,
}

/// One member, as shown by the API.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub peer: String,
    pub node_id: String,
    pub name: String,
    pub state: MemberState,
    pub incarnation: u64,
    pub role: skein_protocol::NodeRole,
    pub cluster_id: String,
    pub addrs: Vec<String>,
    /// Milliseconds since the state last changed.
    pub for_ms: u64,
}

/// The gossip bandwidth metric (membership traffic: gossip batches
/// published and received, probes and syncs sent and answered).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GossipStats {
    pub bytes_out_total: u64,
    pub bytes_in_total: u64,
    /// Average over the last 10 s.
    pub bytes_out_per_s: u64,
    pub bytes_in_per_s: u64,
    pub budget_bytes_per_s: u64,
    pub announces_skipped: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Snapshot {
    pub me: Announce,
    pub members: Vec<MemberView>,
    pub gossip: GossipStats,
}

impl Snapshot {
    pub fn alive(&self) -> impl Iterator<Item = &MemberView> {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
    }
}

enum Cmd {
    Request {
        peer: String,
        req: GossipRequest,
        reply: oneshot::Sender<WireReply>,
    },
    SetSelf(Box<Announce>),
}

/// Cheap handle on the membership actor.
#[derive(Clone)]
pub struct MembershipHandle {
    cmd: mpsc::Sender<Cmd>,
    view: watch::Receiver<Arc<Snapshot>>,
    events: broadcast::Sender<MemberEvent>,
    announces: watch::Receiver<Arc<BTreeMap<String, Announce>>>,
}

impl MembershipHandle {
    /// The current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.view.clone()
    }

    /// Announces of the members not dead (alive or suspect), by peer id.
    pub fn announces(&self) -> watch::Receiver<Arc<BTreeMap<String, Announce>>> {
        self.announces.clone()
    }

    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// Replaces what this node announces about itself (the incarnation
    /// stays the actor's) and announces it at once.
    pub async fn set_self(&self, a: Announce) {
        let _ = self.cmd.send(Cmd::SetSelf(Box::new(a))).await;
    }

    /// Answers a membership request from `peer`.
    pub fn serve(&self, peer: String, req: GossipRequest, reply: oneshot::Sender<WireReply>) {
        if let Err(e) = self.cmd.try_send(Cmd::Request { peer, req, reply }) {
            let (why, reply) = match e {
                mpsc::error::TrySendError::Full(Cmd::Request { reply, .. }) => {
                    ("membership busy", Some(reply))
                }
                mpsc::error::TrySendError::Closed(Cmd::Request { reply, .. }) => {
                    ("membership stopped", Some(reply))
                }
                _ => ("membership unavailable", None),
            };
            if let Some(r) = reply {
                let _ = r.send(WireReply::Error(why.into()));
            }
        }
    }
}

/// Where a batch came from (what of it is first hand).
#[derive(Clone, Copy)]
enum Via<'a> {
    /// Published on the gossip topic by this peer (gossipsub checks the
    /// signature), or its side of a probe.
    From(&'a str),
    /// A push-pull with this peer: its whole view.
    Sync(&'a str),
}

enum Done {
    Probe {
        target: String,
        reply: Option<GossipBatch>,
        bytes: u64,
    },
    Indirect {
        target: String,
        reached: Option<bool>,
    },
    Synced {
        peer: String,
        reply: Option<GossipBatch>,
        bytes: u64,
    },
    /// A batch with this node's announce could not be published (no
    /// subscribed peer yet): announce again at the next tick.
    AnnounceLost,
}

struct Actor {
    net: NetHandle,
    cfg: MembershipConfig,
    swim: Swim,
    me: Announce,
    announces: BTreeMap<String, Announce>,
    /// Peers handed to the network to keep connected: the ring neighbours
    /// and the managers.
    added: HashSet<String>,
    /// The ring neighbours and the managers (whom this node syncs with when
    /// a connection comes up).
    near: HashSet<String>,
    /// The member set changed: recompute which peers to keep.
    rewire_due: bool,
    /// mDNS / seed dials recently tried (peer or address -> when).
    tried: HashMap<String, u64>,
    queue: BTreeMap<String, MemberUpdate>,
    /// Newcomers' announces to pass on with the next batch (see
    /// [`Actor::take_batch`]).
    relay: BTreeMap<String, Announce>,
    /// Peers whose connection they dialled to this node.
    inbound: HashSet<String>,
    /// When to publish what waits (claims, relays) ahead of the next tick.
    flush_at: Option<tokio::time::Instant>,
    announce_due: bool,
    last_announce: u64,
    promise: bootstrap::Promise,
    /// (time, bytes out, bytes in) for the last 10 s.
    window: VecDeque<(u64, u64, u64)>,
    stats: GossipStats,
    view_tx: watch::Sender<Arc<Snapshot>>,
    ann_tx: watch::Sender<Arc<BTreeMap<String, Announce>>>,
    events: broadcast::Sender<MemberEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    dirty: bool,
}

/// Starts the membership actor for this node (`me` is its first announce).
pub fn start(
    net: NetHandle,
    me: Announce,
    cfg: MembershipConfig,
    shutdown: watch::Receiver<bool>,
) -> MembershipHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (view_tx, view_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (ann_tx, ann_rx) = watch::channel(Arc::new(BTreeMap::new()));
    let (events, _) = broadcast::channel(1024);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let seed = crate::util::random_u64();
    let actor = Actor {
        swim: Swim::new(net.peer_id(), cfg.swim.clone(), seed),
        net,
        me,
        announces: BTreeMap::new(),
        added: HashSet::new(),
        near: HashSet::new(),
        rewire_due: false,
        tried: HashMap::new(),
        queue: BTreeMap::new(),
        relay: BTreeMap::new(),
        inbound: HashSet::new(),
        flush_at: None,
        announce_due: true,
        last_announce: 0,
        promise: Default::default(),
        window: VecDeque::new(),
        stats: GossipStats {
            budget_bytes_per_s: cfg.budget_bytes_per_s,
            ..Default::default()
        },
        cfg,
        view_tx,
        ann_tx,
        events: events.clone(),
        done_tx,
        dirty: true,
    };
    tokio::spawn(actor.run(cmd_rx, done_rx, shutdown));
    MembershipHandle {
        cmd: cmd_tx,
        view: view_rx,
        events,
        announces: ann_rx,
    }
}

/// When to dial a member learned of second hand: a random time within the
/// next seconds, so that boxes joining together (each learning of all the
/// others at once) do not all open their connections in the same instant.
/// Nothing waits for these connections: membership news reaches a member
/// over the ones it has, and a request for a member dials it at once.
pub fn dial_spread() -> Duration {
    Duration::from_millis(DIAL_SPREAD_MIN_MS + crate::util::random_u64() % DIAL_SPREAD_MS)
}

const DIAL_SPREAD_MIN_MS: u64 = 300;
/// How much later the larger peer id of two neighbours dials (see
/// [`Actor::rewire`]).
const SECOND_DIAL: Duration = Duration::from_secs(4);
const DIAL_SPREAD_MS: u64 = 2_700;

/// How long a claim or a newcomer's announce waits for others to share
/// its batch.
const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// gossipsub sends a message over every mesh link (degree 6 by default):
/// each node sends and receives about this many copies of each one.
pub const MESH_COPIES: u64 = 6;

/// How often each node re-announces itself: every member receives every
/// member's announces (in about [`MESH_COPIES`] copies, in and out), so the
/// period grows with the cluster to keep that under half the per-node
/// budget, the other half being for probes and state changes (at 1,000
/// members of ~400 bytes and 16 KiB/s: every ~5 min; the count cap below
/// makes it ~8 min). It is only
/// anti-entropy: state changes go out at once, and new peers get the whole
/// table by push-pull when they connect. Bytes are not the only cost: each
/// copy received is a signed message to check, so the period also keeps the
/// announces a node receives under [`ANNOUNCES_PER_S`] whatever the fleet
/// size (a fixed period would cost every node more as the fleet grows).
pub fn announce_period(base_ms: u64, members: usize, announce_bytes: u64, budget: u64) -> u64 {
    let needed = (members as u64)
        .saturating_mul(announce_bytes)
        .saturating_mul(MESH_COPIES)
        .saturating_mul(1000)
        / (budget / 2).max(1);
    let spaced = (members as u64).saturating_mul(1000) / ANNOUNCES_PER_S;
    base_ms.max(needed).max(spaced)
}

/// How many members' periodic announces a node receives per second at most
/// (see [`announce_period`]).
pub const ANNOUNCES_PER_S: u64 = 2;

/// Whether an announce replaces the one held for its member: its owner's
/// own (first hand) whenever it differs; a copy passed on by another member
/// only for a member not known here or at a later incarnation (the copy can
/// be older than what its owner said since; every change of an announce
/// raises its incarnation).
fn takes(held: Option<&Announce>, new: &Announce, first_hand: bool) -> bool {
    match held {
        None => true,
        Some(old) if first_hand => old != new,
        Some(old) => new.incarnation > old.incarnation,
    }
}

fn encoded_len<T: serde::Serialize>(v: &T) -> u64 {
    skein_protocol::codec::encode(v).map_or(0, |b| b.len() as u64)
}

impl Actor {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Cmd>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut gossip = self.net.gossip();
        let mut events = self.net.events();
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.swim.probe_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.me.peer = self.net.peer_id();
        self.dial_seeds();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.on_tick(),
                () = tokio::time::sleep_until(self.flush_at.unwrap_or_else(tokio::time::Instant::now)), if self.flush_at.is_some() => {
                    let now = self.now();
                    self.flush(now);
                }
                m = gossip.recv() => match m {
                    Ok(m) => self.on_gossip(m),
                    Err(broadcast::error::RecvError::Lagged(n)) => debug!(missed = n, "gossip receiver lagged"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                e = events.recv() => match e {
                    Ok(e) => self.on_net(e),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(c) = cmd_rx.recv() => self.on_cmd(c),
                Some(d) = done_rx.recv() => self.on_done(d),
            }
            if self.rewire_due {
                self.rewire();
            }
            if self.dirty {
                self.publish_view();
            }
        }
    }

    /// Keeps connections to the ring neighbours and the managers, and only
    /// those (the network closes the others when idle).
    fn rewire(&mut self) {
        self.rewire_due = false;
        let me = self.me.peer.clone();
        let neighbours: Vec<String> = self.swim.neighbours().to_vec();
        // A manager keeps the other managers connected too; a worker keeps
        // only its neighbours (its session keeps its one manager): a
        // fleet of workers does not hold a connection to every manager.
        let manager = self.me.role == skein_protocol::NodeRole::Manager;
        let managers: Vec<String> = self
            .announces
            .iter()
            .filter(|(p, a)| {
                manager
                    && a.role == skein_protocol::NodeRole::Manager
                    && self.swim.state_of(p) != Some(MemberState::Dead)
            })
            .map(|(p, _)| p.clone())
            .collect();
        self.near = neighbours.iter().chain(&managers).cloned().collect();
        let wanted: HashSet<String> = self.near.clone();
        let lonely = self.net.connected_count() == 0;
        for p in wanted.difference(&self.added) {
            if let Some(addr) = self.announces.get(p).and_then(|a| a.addrs.first()) {
                // Spread over the next seconds: a newcomer's neighbours all
                // learn of it at once. Of two neighbours the smaller id
                // dials first; the other only if no connection came by then
                // (both dialling at once would leave two connections).
                let after = if lonely {
                    Duration::ZERO
                } else if *p > me || managers.contains(p) {
                    dial_spread()
                } else {
                    SECOND_DIAL + dial_spread()
                };
                self.net.keep(p, addr, after, Keeper::Gossip);
            }
        }
        for p in self.added.difference(&wanted) {
            self.net.release(p, Keeper::Gossip);
        }
        self.added = wanted
            .into_iter()
            .filter(|p| self.announces.contains_key(p))
            .collect();
    }

    fn now(&self) -> u64 {
        crate::util::now_ms()
    }

    fn count(&mut self, out: u64, inb: u64) {
        self.stats.bytes_out_total += out;
        self.stats.bytes_in_total += inb;
        let now = self.now();
        self.window.push_back((now, out, inb));
        while self
            .window
            .front()
            .is_some_and(|(t, _, _)| now.saturating_sub(*t) > 10_000)
        {
            self.window.pop_front();
        }
    }

    fn rate(&self, last_ms: u64) -> (u64, u64) {
        let now = self.now();
        let (o, i) = self
            .window
            .iter()
            .filter(|(t, _, _)| now.saturating_sub(*t) <= last_ms)
            .fold((0, 0), |(o, i), (_, a, b)| (o + a, i + b));
        (o * 1000 / last_ms.max(1), i * 1000 / last_ms.max(1))
    }

    fn dial_seeds(&mut self) {
        let now = self.now();
        for s in self.cfg.seeds.clone() {
            if self
                .tried
                .get(&s)
                .is_some_and(|t| now.saturating_sub(*t) < 5_000)
            {
                continue;
            }
            self.tried.insert(s.clone(), now);
            let net = self.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.dial(&s).await {
                    info!(seed = %s, error = %e, "cannot reach the --join seed; will retry");
                }
            });
        }
    }

    fn handle(&mut self, outs: Vec<Out>) {
        for o in outs {
            match o {
                Out::Broadcast(u) => {
                    let keep = self
                        .queue
                        .get(&u.peer)
                        .is_none_or(|q| (u.incarnation, u.state) > (q.incarnation, q.state));
                    if keep {
                        self.queue.insert(u.peer.clone(), u);
                        self.flush_soon();
                    }
                }
                // gossipsub forwards what others published: nothing to resend.
                Out::Relay(_) => {}
                Out::Changed { peer, state } => {
                    self.dirty = true;
                    self.rewire_due = true;
                    let node_id = self
                        .announces
                        .get(&peer)
                        .map(|a| a.node_id.clone())
                        .unwrap_or_default();
                    let name = self
                        .announces
                        .get(&peer)
                        .map(|a| a.name.clone())
                        .unwrap_or_default();
                    if state == MemberState::Alive {
                        debug!(%peer, %name, "member alive");
                    } else {
                        info!(%peer, %name, %state, "member {state}");
                    }
                    let _ = self.events.send(MemberEvent {
                        peer,
                        node_id,
                        state,
                    });
                }
                Out::Probe { target } => self.probe(target),
                Out::IndirectProbe { target, via } => {
                    let timeout = self.cfg.swim.probe_timeout;
                    for helper in via {
                        let (net, tx, target) =
                            (self.net.clone(), self.done_tx.clone(), target.clone());
                        let req = GossipRequest::ProbeFor {
                            target: target.clone(),
                            timeout_ms: timeout,
                        };
                        tokio::spawn(async move {
                            let ask = net.request(&helper, WireMessage::Gossip(Box::new(req)));
                            let reached = match tokio::time::timeout(
                                Duration::from_millis(timeout * 2 + 100),
                                ask,
                            )
                            .await
                            {
                                Ok(Ok(WireReply::Gossip(r))) => match *r {
                                    GossipReply::Probed { reachable } => Some(reachable),
                                    _ => None,
                                },
                                _ => None,
                            };
                            let _ = tx.send(Done::Indirect { target, reached });
                        });
                    }
                }
            }
        }
    }

    fn batch(&self, updates: Vec<MemberUpdate>, announces: Vec<Announce>) -> GossipBatch {
        GossipBatch {
            from: self.me.peer.clone(),
            announces,
            updates,
        }
    }

    fn probe(&mut self, target: String) {
        let batch = self.batch(vec![self.swim.self_update()], Vec::new());
        let bytes = encoded_len(&batch);
        let (net, tx) = (self.net.clone(), self.done_tx.clone());
        let timeout = Duration::from_millis(self.cfg.swim.probe_timeout);
        tokio::spawn(async move {
            let req = WireMessage::Gossip(Box::new(GossipRequest::Probe(batch)));
            let reply = match tokio::time::timeout(timeout, net.request(&target, req)).await {
                Ok(Ok(WireReply::Gossip(r))) => match *r {
                    GossipReply::Ack(b) => Some(b),
                    _ => None,
                },
                _ => None,
            };
            let _ = tx.send(Done::Probe {
                target,
                reply,
                bytes,
            });
        });
    }

    fn on_tick(&mut self) {
        let now = self.now();
        let outs = self.swim.tick(now);
        self.handle(outs);
        if let Some(t) = self.swim.next_probe() {
            self.probe(t);
        }
        if self.swim.live().next().is_none() {
            self.dial_seeds();
        }
        // Re-announce periodically, within the budget.
        // While bootstrapping, proposals must spread fast (a publish made
        // before gossipsub knows its peers is lost): announce every second.
        let announce_every = if self.me.cluster_id.is_empty() {
            1_000
        } else {
            announce_period(
                self.cfg.announce_every.as_millis() as u64,
                self.swim.members().len() + 1,
                encoded_len(&self.me),
                self.cfg.budget_bytes_per_s,
            )
        };
        if now.saturating_sub(self.last_announce) >= announce_every {
            let (out_rate, _) = self.rate(1000);
            if self.announce_due || out_rate < self.cfg.budget_bytes_per_s {
                self.announce_due = true;
            } else {
                self.stats.announces_skipped += 1;
                self.last_announce = now;
            }
        }
        self.flush(now);
        let (o, i) = self.rate(10_000);
        if (o, i) != (self.stats.bytes_out_per_s, self.stats.bytes_in_per_s) {
            self.stats.bytes_out_per_s = o;
            self.stats.bytes_in_per_s = i;
            self.dirty = true;
        }
    }

    /// Publishes what waits (this node's announce when due, claims,
    /// newcomers to pass on) as one batch.
    fn flush(&mut self, now: u64) {
        self.flush_at = None;
        if self.announce_due || !self.queue.is_empty() || !self.relay.is_empty() {
            let updates: Vec<MemberUpdate> =
                std::mem::take(&mut self.queue).into_values().collect();
            let mut announces = if self.announce_due {
                self.me.incarnation = self.swim.incarnation();
                self.last_announce = now;
                vec![self.me.clone()]
            } else {
                Vec::new()
            };
            announces.extend(std::mem::take(&mut self.relay).into_values());
            self.announce_due = false;
            let with_announce = !announces.is_empty();
            let batch = self.batch(updates, announces);
            match skein_protocol::codec::encode(&batch) {
                Ok(bytes) => {
                    self.count(bytes.len() as u64, 0);
                    if with_announce {
                        let (net, tx) = (self.net.clone(), self.done_tx.clone());
                        tokio::spawn(async move {
                            if !net.publish_confirmed(bytes).await {
                                let _ = tx.send(Done::AnnounceLost);
                            }
                        });
                    } else {
                        self.net.publish(bytes);
                    }
                }
                Err(e) => debug!(error = %e, "gossip batch not encoded"),
            }
        }
    }

    /// Something waits to be spread: publish it shortly, not at the next
    /// tick (what arrives meanwhile goes in the same batch).
    fn flush_soon(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(tokio::time::Instant::now() + FLUSH_DELAY);
        }
    }

    /// Takes what a batch says. A member's own announce (first hand:
    /// published by it, or its side of a push-pull) replaces the one held
    /// whenever it differs and proves the member alive; one passed on by
    /// another member is taken only when it is new here or of a later
    /// incarnation (a copy can be older than what its owner said since),
    /// and counts as that member's alive claim at that incarnation.
    fn take_batch(&mut self, b: GossipBatch, via: Via<'_>) {
        let now = self.now();
        let (from, sync) = match via {
            Via::From(p) => (p, false),
            Via::Sync(p) => (p, true),
        };
        for a in b.announces {
            if a.peer == self.me.peer {
                continue;
            }
            let first_hand = a.peer == from;
            let held = self.announces.get(&a.peer);
            let take = takes(held, &a, first_hand);
            let held_addr = held.and_then(|h| h.addrs.first().cloned());
            let held_role = held.map(|h| h.role);
            let (peer, incarnation) = (a.peer.clone(), a.incarnation);
            if take {
                if held.is_none() && first_hand && sync && self.inbound.contains(from) {
                    // A newcomer reached this node: pass its announce on
                    // once, so members it has no connection to yet know
                    // it now rather than when it dials them.
                    self.relay.insert(peer.clone(), a.clone());
                    self.flush_soon();
                }
                if let Some(addr) = a.addrs.first() {
                    // Known by address: dialled when a request needs it;
                    // kept connected only as a neighbour or a manager.
                    // (A kept peer's address is updated in place.)
                    if held_addr.as_ref() != Some(addr) {
                        self.net.learn(&a.peer, addr);
                    }
                    // Managers are kept: a role change rewires.
                    if held_role != Some(a.role) {
                        self.rewire_due = true;
                    }
                }
                self.announces.insert(a.peer.clone(), a);
                self.dirty = true;
            }
            // After the announce is in: state-change events carry its node id.
            let outs = if first_hand {
                self.swim.heard_from(&peer, incarnation, now)
            } else {
                self.swim.apply(
                    &MemberUpdate {
                        peer,
                        incarnation,
                        state: MemberState::Alive,
                    },
                    now,
                )
            };
            self.handle(outs);
        }
        for u in b.updates {
            // A member is known by its own announce (which says where it
            // is); claims about strangers wait for it.
            if u.peer != self.me.peer && !self.announces.contains_key(&u.peer) {
                continue;
            }
            let outs = self.swim.apply(&u, now);
            if u.peer == self.me.peer && !outs.is_empty() {
                info!(claim = %u.state, incarnation = u.incarnation, "refuting a claim about this node");
                self.announce_due = true;
            }
            self.handle(outs);
        }
    }

    fn on_gossip(&mut self, m: GossipIn) {
        self.count(0, m.data.len() as u64);
        match skein_protocol::codec::decode::<GossipBatch>(&m.data) {
            Ok(b) if b.from == m.source => self.take_batch(b, Via::From(&m.source)),
            Ok(_) => {
                debug!(source = %m.source, "gossip batch from another sender than it claims; dropped")
            }
            Err(e) => debug!(source = %m.source, error = %e, "undecodable gossip"),
        }
    }

    fn full_batch(&self) -> GossipBatch {
        let mut me = self.me.clone();
        me.incarnation = self.swim.incarnation();
        let mut announces = vec![me];
        announces.extend(
            self.announces
                .iter()
                .filter(|(p, _)| self.swim.state_of(p) != Some(MemberState::Dead))
                .map(|(_, a)| a.clone()),
        );
        self.batch(self.swim.snapshot(), announces)
    }

    fn on_net(&mut self, e: NetEvent) {
        let now = self.now();
        match e {
            NetEvent::Connected { peer, inbound, .. } => {
                if inbound {
                    self.inbound.insert(peer.clone());
                } else {
                    self.inbound.remove(&peer);
                }
                // Push-pull: both sides learn each other's whole view from
                // one exchange, so one side asks: the smaller peer id (both
                // see the connection come up, whoever dialled). Only with a
                // peer it keeps or does not know yet: a connection made for
                // one request (a probe, a helper's) is not worth a table.
                let known = self.announces.contains_key(&peer);
                if self.me.peer > peer && known {
                    return;
                }
                if known && !self.near.contains(&peer) {
                    return;
                }
                let batch = self.full_batch();
                let bytes = encoded_len(&batch);
                let (net, tx) = (self.net.clone(), self.done_tx.clone());
                tokio::spawn(async move {
                    let req = WireMessage::Gossip(Box::new(GossipRequest::Sync(batch)));
                    let reply = match net.request(&peer, req).await {
                        Ok(WireReply::Gossip(r)) => match *r {
                            GossipReply::Sync(b) => Some(b),
                            _ => None,
                        },
                        _ => None,
                    };
                    let _ = tx.send(Done::Synced { peer, reply, bytes });
                });
            }
            NetEvent::Disconnected { peer } => {
                self.inbound.remove(&peer);
                let outs = self.swim.connection_closed(&peer);
                self.handle(outs);
            }
            NetEvent::Discovered { peer, addr } => {
                // A member already known needs no connection from mDNS.
                let connected = self.announces.contains_key(&peer) || self.net.is_connected(&peer);
                let recent = self
                    .tried
                    .get(&peer)
                    .is_some_and(|t| now.saturating_sub(*t) < 10_000);
                if !connected && !recent {
                    self.tried.insert(peer.clone(), now);
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        if let Err(e) = net.dial(&addr).await {
                            debug!(%peer, %addr, error = %e, "mDNS peer not reachable");
                        }
                    });
                }
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        let now = self.now();
        match d {
            Done::Probe {
                target,
                reply,
                bytes,
            } => match reply {
                Some(b) => {
                    self.count(bytes, encoded_len(&b));
                    self.swim.probe_ok(&target);
                    self.take_batch(b, Via::From(&target));
                }
                None => {
                    self.count(bytes, 0);
                    let outs = self.swim.probe_failed(&target, now);
                    self.handle(outs);
                }
            },
            Done::Indirect { target, reached } => {
                let outs = self.swim.indirect_result(&target, reached, now);
                self.handle(outs);
            }
            Done::AnnounceLost => self.announce_due = true,
            Done::Synced { peer, reply, bytes } => {
                let inb = reply.as_ref().map_or(0, encoded_len);
                self.count(bytes, inb);
                if let Some(b) = reply {
                    self.take_batch(b, Via::Sync(&peer));
                }
            }
        }
    }

    fn on_cmd(&mut self, c: Cmd) {
        let now = self.now();
        match c {
            Cmd::SetSelf(a) => {
                let mut a = *a;
                a.peer = self.me.peer.clone();
                a.incarnation = self.me.incarnation;
                if a != self.me {
                    // A changed announce gets a new incarnation: copies
                    // other members pass on are ordered by it.
                    self.swim.raise_incarnation();
                }
                if a.role != self.me.role {
                    // A manager keeps the other managers connected.
                    self.rewire_due = true;
                }
                self.me = a;
                self.announce_due = true;
                self.dirty = true;
            }
            Cmd::Request { peer, req, reply } => match req {
                GossipRequest::Probe(b) => {
                    self.count(0, encoded_len(&b));
                    self.take_batch(b, Via::From(&peer));
                    let ack = self.batch(vec![self.swim.self_update()], Vec::new());
                    self.count(encoded_len(&ack), 0);
                    let _ = reply.send(WireReply::Gossip(Box::new(GossipReply::Ack(ack))));
                }
                GossipRequest::ProbeFor { target, timeout_ms } => {
                    let net = self.net.clone();
                    let ping = self.batch(vec![self.swim.self_update()], Vec::new());
                    let timeout = Duration::from_millis(timeout_ms.clamp(50, 5_000));
                    tokio::spawn(async move {
                        let req = WireMessage::Gossip(Box::new(GossipRequest::Probe(ping)));
                        let ok = matches!(
                            tokio::time::timeout(timeout, net.request(&target, req)).await,
                            Ok(Ok(WireReply::Gossip(_)))
                        );
                        let _ = reply.send(WireReply::Gossip(Box::new(GossipReply::Probed {
                            reachable: ok,
                        })));
                    });
                }
                GossipRequest::Sync(b) => {
                    self.count(0, encoded_len(&b));
                    self.take_batch(b, Via::Sync(&peer));
                    let full = self.full_batch();
                    self.count(encoded_len(&full), 0);
                    let _ = reply.send(WireReply::Gossip(Box::new(GossipReply::Sync(full))));
                }
                GossipRequest::Confirm { founder, set } => {
                    let r = if founder != peer {
                        Err("the founder must ask for itself".to_string())
                    } else {
                        self.promise.confirm(
                            &founder,
                            &set,
                            &self.me.proposal,
                            !self.me.cluster_id.is_empty(),
                            now,
                        )
                    };
                    let (ok, reason) = match r {
                        Ok(()) => (true, String::new()),
                        Err(e) => (false, e),
                    };
                    let _ = reply.send(WireReply::Gossip(Box::new(GossipReply::Confirmed {
                        ok,
                        reason,
                    })));
                }
            },
        }
    }

    fn publish_view(&mut self) {
        self.dirty = false;
        let now = self.now();
        let members = self
            .swim
            .members()
            .iter()
            .map(|(p, m)| {
                let a = self.announces.get(p);
                MemberView {
                    peer: p.clone(),
                    node_id: a.map(|a| a.node_id.clone()).unwrap_or_default(),
                    name: a.map(|a| a.name.clone()).unwrap_or_default(),
                    state: m.state,
                    incarnation: m.incarnation,
                    role: a.map(|a| a.role).unwrap_or_default(),
                    cluster_id: a.map(|a| a.cluster_id.clone()).unwrap_or_default(),
                    addrs: a.map(|a| a.addrs.clone()).unwrap_or_default(),
                    for_ms: now.saturating_sub(m.since),
                }
            })
            .collect();
        let mut me = self.me.clone();
        me.incarnation = self.swim.incarnation();
        self.view_tx.send_replace(Arc::new(Snapshot {
            me,
            members,
            gossip: self.stats.clone(),
        }));
        let alive: BTreeMap<String, Announce> = self
            .announces
            .iter()
            .filter(|(p, _)| {
                matches!(
                    self.swim.state_of(p),
                    Some(MemberState::Alive | MemberState::Suspect)
                )
            })
            .map(|(p, a)| (p.clone(), a.clone()))
            .collect();
        self.ann_tx.send_replace(Arc::new(alive));
    }
}

/// The bootstrap confirmation round, founder side: asks every other box of
/// `set` to confirm this founder. True when all did.
pub async fn confirm_round(net: &NetHandle, set: &[String]) -> Result<(), String> {
    let me = net.peer_id();
    for p in set.iter().filter(|p| **p != me) {
        let req = GossipRequest::Confirm {
            founder: me.clone(),
            set: set.to_vec(),
        };
        match net.request(p, WireMessage::Gossip(Box::new(req))).await {
            Ok(WireReply::Gossip(r)) => match *r {
                GossipReply::Confirmed { ok: true, .. } => {}
                GossipReply::Confirmed { reason, .. } => return Err(format!("{p}: {reason}")),
                other => return Err(format!("{p}: unexpected answer {other:?}")),
            },
            Ok(other) => return Err(format!("{p}: unexpected answer {other:?}")),
            Err(e) => return Err(format!("{p}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{announce_period, takes};
    use skein_protocol::gossip::Announce;

    #[test]
    fn an_announce_passed_on_never_replaces_a_newer_one() {
        let old = Announce {
            peer: "p".into(),
            name: "a".into(),
            incarnation: 3,
            ..Default::default()
        };
        let renamed = Announce {
            name: "b".into(),
            ..old.clone()
        };
        let later = Announce {
            incarnation: 4,
            ..renamed.clone()
        };
        // Unknown here: taken, first or second hand.
        assert!(takes(None, &old, false));
        assert!(takes(None, &old, true));
        // From its owner: any change.
        assert!(takes(Some(&old), &renamed, true));
        assert!(!takes(Some(&old), &old, true));
        // Passed on: only a later incarnation, never an older copy.
        assert!(!takes(Some(&old), &renamed, false));
        assert!(takes(Some(&old), &later, false));
        assert!(!takes(Some(&later), &old, false));
    }

    #[test]
    fn re_announces_slow_down_to_stay_within_the_budget() {
        assert_eq!(announce_period(5_000, 10, 300, 16 * 1024), 5_000);
        let p = announce_period(5_000, 1_000, 400, 16 * 1024);
        assert!(p > 200_000 && p <= 500_000, "{p}");
        // What every node sends and receives for all re-announces stays
        // under half the budget.
        assert!(1_000 * 400 * super::MESH_COPIES * 1000 / p <= 8 * 1024);
    }

    #[test]
    fn a_node_receives_no_more_announces_per_second_as_the_fleet_grows() {
        // Small announces fit the byte budget at any size: the count alone
        // slows them down, so each node checks about the same number of
        // signed announces per second at 40 members as at 5,000.
        for members in [10usize, 40, 200, 1_000, 5_000] {
            let p = announce_period(5_000, members, 100, 16 * 1024);
            let per_s = members as f64 * 1000.0 / p as f64;
            assert!(per_s <= super::ANNOUNCES_PER_S as f64, "{members}: {per_s}");
        }
        assert_eq!(announce_period(5_000, 40, 100, 16 * 1024), 20_000);
    }
}
