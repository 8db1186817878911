//! Deterministic simulation of a Raft cluster: N [`RaftCore`]s in one thread, each on its
//! own sled database in a temp dir, an in-memory network, a manual clock and one seeded RNG.
//!
//! The network queues every message with a delivery tick and delivers due messages in an
//! RNG-chosen order; it drops, duplicates and delays messages, and cuts links: partitions both
//! ways, and one way (a node hears its peers but they do not hear it, or the reverse).
//! A crash is a power loss: the core's storage journals every write since its last flush
//! ([`WriteJournal`]), and the crash undoes them (all of them, or all but a random prefix, as
//! sled's log may have reached the disk in part) before the sled handle is dropped; a restart
//! reopens what is left. Each node's clock drifts: a node skips or doubles a tick with its
//! own seeded chance (up to `MAX_DRIFT_PCT`), well inside the jitter of election timeouts.
//! raft-rs's election timeouts come from the seeded RNG too
//! ([`RaftCore::set_deterministic_timeouts`]), so a seed replays exactly.
//!
//! Invariants, checked after every handled `Ready` and every tick:
//! - at most one leader per term;
//! - an entry applied at an index is the same (term, type, data) on every node, forever,
//!   across crashes; a node applies indexes consecutively (a received snapshot must agree
//!   with the entries known at its index);
//! - equal applied indexes mean identical state machines;
//! - an acknowledged proposal is never `Rejected` (names are unique: a rejection would be a
//!   double apply), a `Dropped` proposal never shows up in the state;
//! - a node whose removal was acknowledged is out of the configuration of every node that
//!   applied as far as the leader that acknowledged it, and out of the final one; the last
//!   acknowledged change of each node holds in the final configuration;
//! - at the end, after healing and quiescing: one leader, every live member at the same
//!   applied index with the same state and configuration, every acknowledged proposal in it,
//!   nothing left pending. The members are the leader's final configuration (voters and
//!   learners); a node outside it that was not removed (its addition was never acknowledged)
//!   is stopped.
//!
//! Run more seeds by hand: `SKEIN_SIM_SEEDS=2000 cargo test -p skein-node --lib raft::sim --
//! --nocapture`; replay one: `SKEIN_SIM_SEED=17 cargo test -p skein-node --lib
//! raft::sim::partition -- --nocapture`. `SKEIN_SIM_TRACE=1` prints the event trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::snapshot::{copy_image, Descriptor};
use super::storage::WriteJournal;
use super::{Membership, Output, ProposeError, RaftCore, RaftOptions, SplitMix64};
use crate::store::ClusterState;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;
use skein_protocol::{codec, Command, Service, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ELECTION_TICKS: usize = 10;
/// How [`Sim::fail`]'s panic messages start.
const INVARIANT: &str = "raft sim invariant violated";
/// Largest clock drift: a node skips (slow clock) or doubles (fast clock) a tick with at most
/// this chance, so its election timeout stretches or shrinks by at most ~10%, where the
/// randomised timeouts spread over 100% (`[ELECTION_TICKS, 2 * ELECTION_TICKS)`).
const MAX_DRIFT_PCT: u64 = 10;

fn hash_bytes(parts: &[&[u8]]) -> u64 {
    // SipHash with fixed keys: the same on every run.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

fn state_hash(state: &ClusterState) -> u64 {
    hash_bytes(&[&codec::encode(state).expect("encode state")])
}

fn entry_hash(e: &Entry) -> u64 {
    hash_bytes(&[&[e.get_entry_type() as u8], &e.data])
}

fn service_cmd(n: u64) -> (String, Command) {
    let name = format!("svc{n}");
    let cmd = Command::CreateService(Service {
        id: format!("id{n}"),
        spec: ServiceSpec::new(name.clone(), "sleep"),
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: 0,
        updated_at: 0,
    });
    (name, cmd)
}

fn temp_dir() -> tempfile::TempDir {
    // tmpfs makes sled's fsyncs free; fall back to the default temp dir.
    tempfile::Builder::new()
        .prefix("skein-sim")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temp dir")
}

fn open_db(path: &std::path::Path) -> sled::Db {
    // No background flusher (the core flushes explicitly). sled's I/O threads may still hold
    // the file lock for a moment after a "crash" dropped every handle: retry until they let
    // go (wall-clock only; nothing the simulation observes depends on it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let opened = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .cache_capacity(8 << 20)
            .open();
        match opened {
            Ok(db) => return db,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("cannot open sled in {}: {e}", path.display()),
        }
    }
}

struct InFlight {
    at: u64,
    msg: Message,
}

/// The in-memory network.
#[derive(Default)]
struct Net {
    queue: Vec<InFlight>,
    /// Cut directed links (from, to).
    cut: BTreeSet<(u64, u64)>,
    drop_pct: u64,
    dup_pct: u64,
    delay_pct: u64,
    max_delay: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pending,
    Applied,
    Dropped,
    Uncertain,
    /// The node holding it crashed before answering.
    Lost,
}

struct Prop {
    name: String,
    node: u64,
    fate: Fate,
    /// Proposed to a leader cut off in a minority: must never be applied.
    minority: bool,
}

struct SimNode {
    dir: tempfile::TempDir,
    /// The database under `core` while the node is up (to cut the power under it).
    db: Option<sled::Db>,
    core: Option<RaftCore>,
    /// Undo records of the core's writes since its last flush, across incarnations.
    journal: Arc<WriteJournal>,
    /// Clock drift in percent: each tick is skipped (< 0) or doubled (> 0) with this chance.
    drift: i64,
    /// Founded the cluster (opens with `open`; everyone else joins).
    founder: bool,
    restarts: u64,
    /// Highest applied index handed out so far in this incarnation.
    last_applied: u64,
    /// Highest applied index ever (across incarnations).
    max_applied: u64,
    /// Removed from the cluster: not expected to converge.
    removed: bool,
    /// Its removal was acknowledged by a leader that had applied this index: every node that
    /// applied it must have left this node out of its configuration.
    removed_by: Option<u64>,
    snapshots_installed: u64,
    /// Last (role, term, leader) seen, to trace changes.
    seen: (StateRole, u64, u64),
    /// (applied, state hash) last computed.
    hashed: (u64, u64),
    /// Compare the state at the next change (just restarted).
    check_state: bool,
}

/// Aggregated over seeds, printed at the end of a scenario.
#[derive(Default)]
struct Stats {
    elections_fast: Vec<u64>,
    elections_timeout: Vec<u64>,
    snapshots: u64,
    acked: u64,
    dropped: u64,
    uncertain: u64,
    ticks: u64,
    crashes: u64,
    /// Crashes in the middle of a `Ready`, at a flush.
    flush_cuts: u64,
    /// Crashes that lost at least one unflushed write.
    power_losses: u64,
    lost_writes: u64,
    /// Acknowledged membership changes.
    conf_changes: u64,
}

impl Stats {
    fn add(&mut self, s: Stats) {
        self.elections_fast.extend(s.elections_fast);
        self.elections_timeout.extend(s.elections_timeout);
        self.snapshots += s.snapshots;
        self.acked += s.acked;
        self.dropped += s.dropped;
        self.uncertain += s.uncertain;
        self.ticks += s.ticks;
        self.crashes += s.crashes;
        self.flush_cuts += s.flush_cuts;
        self.power_losses += s.power_losses;
        self.lost_writes += s.lost_writes;
        self.conf_changes += s.conf_changes;
    }
}

struct Sim {
    seed: u64,
    rng: SplitMix64,
    now: u64,
    opts: RaftOptions,
    nodes: BTreeMap<u64, SimNode>,
    net: Net,
    /// Chance per mille that the power goes out at the first flush of an `advance`.
    power_cut_permille: u64,
    leaders: BTreeMap<u64, u64>,
    committed: BTreeMap<u64, (u64, u64)>,
    states: BTreeMap<u64, u64>,
    props: BTreeMap<u64, Prop>,
    next_prop: u64,
    /// Answers to sim-driven requests (membership, transfer) by id.
    answers: BTreeMap<u64, Result<(), ProposeError>>,
    trace: Vec<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, nodes: u64, snapshot_entries: u64) -> Sim {
        let mut sim = Sim {
            seed,
            rng: SplitMix64::new(seed ^ 0x5eed_5eed_5eed_5eed),
            now: 0,
            opts: RaftOptions {
                tick: Duration::from_millis(100),
                election_ticks: ELECTION_TICKS,
                heartbeat_ticks: 1,
                snapshot_entries,
            },
            nodes: BTreeMap::new(),
            net: Net::default(),
            power_cut_permille: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            states: BTreeMap::new(),
            props: BTreeMap::new(),
            next_prop: 1,
            answers: BTreeMap::new(),
            trace: Vec::new(),
            stats: Stats::default(),
        };
        sim.bootstrap(nodes);
        sim
    }

    fn log(&mut self, line: String) {
        if self.trace.len() > 4000 {
            self.trace.drain(..2000);
        }
        self.trace.push(format!("[t{}] {line}", self.now));
    }

    /// The last 60 events (all with `SKEIN_SIM_TRACE`).
    fn trace_tail(&self) -> String {
        let tail = self.trace.len().saturating_sub(60);
        if std::env::var_os("SKEIN_SIM_TRACE").is_some() {
            self.trace.join("\n")
        } else {
            self.trace[tail..].join("\n")
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "{INVARIANT} (seed {}, tick {}): {what}\n--- last events ---\n{}",
            self.seed,
            self.now,
            self.trace_tail()
        );
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.rng.below(100) < pct
    }

    // ---- nodes ----

    fn add_node(&mut self, id: u64, founder: bool) {
        let drift = self.rng.below(2 * MAX_DRIFT_PCT + 1) as i64 - MAX_DRIFT_PCT as i64;
        let node = SimNode {
            dir: temp_dir(),
            db: None,
            core: None,
            journal: WriteJournal::new(),
            drift,
            founder,
            restarts: 0,
            last_applied: 0,
            max_applied: 0,
            removed: false,
            removed_by: None,
            snapshots_installed: 0,
            seen: (StateRole::Follower, 0, 0),
            hashed: (u64::MAX, 0),
            check_state: true,
        };
        self.nodes.insert(id, node);
        self.start_node(id);
    }

    fn start_node(&mut self, id: u64) {
        let opts = self.opts.clone();
        let seed = self.seed;
        let n = self.nodes.get_mut(&id).unwrap();
        let db = open_db(n.dir.path());
        let mut core =
            RaftCore::open_journaled(&db, id, &opts, n.founder, n.journal.clone()).expect("open");
        n.db = Some(db);
        core.set_deterministic_timeouts(seed ^ (id << 32) ^ n.restarts.wrapping_mul(0x9e37));
        core.record_applied(true);
        n.last_applied = core.applied();
        n.check_state = true;
        let line = format!(
            "n{id} started (restart #{}, drift {:+}%) at snapshot {}",
            n.restarts,
            n.drift,
            core.applied()
        );
        n.core = Some(core);
        self.log(line);
        let out = self.core(id).start().expect("start");
        self.absorb(id, out);
    }

    /// A power loss: every write since the core's last flush is lost (or, half the time, all
    /// but a random prefix of them), then the process is gone.
    fn crash(&mut self, id: u64) {
        if !self.is_live(id) {
            return;
        }
        let unflushed = self.nodes[&id].journal.unflushed();
        let keep = if unflushed == 0 || self.chance(50) {
            0
        } else {
            self.rng.below(unflushed as u64 + 1) as usize
        };
        let n = self.nodes.get_mut(&id).unwrap();
        let core = n.core.take();
        let db = n.db.take().expect("a live node has its database");
        let lost = n.journal.lose_unflushed(&db, keep).expect("power loss");
        drop(core);
        drop(db);
        n.restarts += 1;
        for p in self.props.values_mut() {
            if p.node == id && p.fate == Fate::Pending {
                p.fate = Fate::Lost;
            }
        }
        self.stats.crashes += 1;
        if lost > 0 {
            self.stats.power_losses += 1;
            self.stats.lost_writes += lost as u64;
        }
        self.log(format!(
            "n{id} crashed: power loss, {lost} of {unflushed} unflushed writes lost"
        ));
    }

    fn restart(&mut self, id: u64) {
        if self.nodes[&id].core.is_none() {
            self.start_node(id);
        }
    }

    /// Handles the node's pending `Ready`s and absorbs the output. With `power_cut_permille`,
    /// the power may go out at the first flush in there: what was sent before it is out, the
    /// rest (persisted messages, answers) never leaves, and the node is down.
    fn advance(&mut self, id: u64) {
        let journal = self.nodes[&id].journal.clone();
        let armed = self.power_cut_permille > 0 && self.rng.below(1000) < self.power_cut_permille;
        journal.cut_at_next_flush(armed);
        let mut sent = Vec::new();
        let mut out = self
            .core(id)
            .advance_with(&mut |m| {
                if !journal.is_cut() {
                    sent.extend(m);
                }
            })
            .expect("advance");
        out.messages = sent;
        if !journal.is_cut() {
            journal.cut_at_next_flush(false);
            self.absorb(id, out);
            return;
        }
        self.log(format!("n{id} loses power while flushing"));
        self.stats.flush_cuts += 1;
        out.answers.clear();
        self.absorb(id, out);
        self.crash(id);
    }

    fn core(&mut self, id: u64) -> &mut RaftCore {
        self.nodes.get_mut(&id).unwrap().core.as_mut().unwrap()
    }

    fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn is_live(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.core.is_some())
    }

    /// The live member that leads at the highest term, if any.
    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.removed)
            .filter_map(|(&id, n)| n.core.as_ref().map(|c| (id, c)))
            .filter(|(_, c)| c.is_leader())
            .max_by_key(|(_, c)| c.term())
            .map(|(id, _)| id)
    }

    // ---- network ----

    fn send(&mut self, from: u64, mut msgs: Vec<Message>) {
        // raft-rs's per-peer order is deterministic; make the batch order so too.
        msgs.sort_by_key(|m| m.to);
        for msg in msgs {
            debug_assert_eq!(msg.from, from);
            if self.chance(self.net.drop_pct) {
                continue;
            }
            let copies = if self.chance(self.net.dup_pct) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = if self.net.max_delay > 0 && self.chance(self.net.delay_pct) {
                    1 + self.rng.below(self.net.max_delay)
                } else {
                    0
                };
                self.net.queue.push(InFlight {
                    at: self.now + delay,
                    msg: msg.clone(),
                });
            }
        }
    }

    /// Delivers every due message (and what they cause, when not delayed) in RNG order.
    fn deliver(&mut self) {
        for _ in 0..100_000 {
            let due: Vec<usize> = (0..self.net.queue.len())
                .filter(|&i| self.net.queue[i].at <= self.now)
                .collect();
            if due.is_empty() {
                return;
            }
            let pick = due[self.rng.below(due.len() as u64) as usize];
            let InFlight { msg, .. } = self.net.queue.swap_remove(pick);
            let (from, to) = (msg.from, msg.to);
            if !self.is_live(to) {
                // Connection refused: the transport tells the sender a snapshot did not make it.
                if msg.get_msg_type() == MessageType::MsgSnapshot && self.is_live(from) {
                    self.core(from).report_snapshot(to, false);
                }
                continue;
            }
            if self.net.cut.contains(&(from, to)) {
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot && !self.carry_image(&msg) {
                // The sender no longer has that image (or is down): the transfer fails.
                if self.is_live(from) {
                    self.core(from).report_snapshot(to, false);
                }
                continue;
            }
            self.core(to).step(msg);
            self.advance(to);
        }
        self.fail("message storm: 100000 deliveries in one tick".into());
    }

    /// The out-of-band part of a snapshot: copies the image `msg` names from the sender's
    /// storage into the receiver's (as the network fetcher would), false if it cannot.
    fn carry_image(&mut self, msg: &Message) -> bool {
        let Some(Ok(desc)) = Descriptor::decode(msg.get_snapshot().get_data()) else {
            return true;
        };
        if !self.is_live(msg.from) {
            return false;
        }
        let from = self.core(msg.from).storage().clone();
        let to = self.core(msg.to).storage().clone();
        match copy_image(&from, &to, &desc) {
            Ok(copied) => copied,
            Err(e) => self.fail(format!("n{}: copying image {:x}: {e}", msg.to, desc.id)),
        }
    }

    fn partition(&mut self, side: &BTreeSet<u64>) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if side.contains(&a) != side.contains(&b) {
                    self.net.cut.insert((a, b));
                }
            }
        }
        self.log(format!("partition: {side:?} | rest"));
    }

    /// One way: the nodes in `deaf` stop hearing every node outside it, which still hear them.
    fn deafen(&mut self, deaf: &BTreeSet<u64>) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &a in &ids {
            for &b in &ids {
                if !deaf.contains(&a) && deaf.contains(&b) {
                    self.net.cut.insert((a, b));
                }
            }
        }
        self.log(format!(
            "one way: {deaf:?} hear nobody else, the rest hear them"
        ));
    }

    /// Heals, then splits the nodes at random: both ways, one way (either side deaf to the
    /// other), or a single link cut in one direction.
    fn random_split(&mut self, pct: u64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut side = BTreeSet::new();
        for &i in &ids {
            if self.chance(pct) {
                side.insert(i);
            }
        }
        self.heal();
        match self.rng.below(4) {
            0 => self.partition(&side),
            1 => self.deafen(&side),
            2 => {
                let rest = ids.iter().copied().filter(|i| !side.contains(i)).collect();
                self.deafen(&rest);
            }
            _ => {
                let a = ids[self.rng.below(ids.len() as u64) as usize];
                let b = ids[self.rng.below(ids.len() as u64) as usize];
                if a != b {
                    self.net.cut.insert((a, b));
                    self.log(format!("one way: n{b} does not hear n{a}"));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.net.cut.clear();
        self.log("healed".into());
    }

    fn faults(&mut self, drop_pct: u64, dup_pct: u64, delay_pct: u64, max_delay: u64) {
        self.net.drop_pct = drop_pct;
        self.net.dup_pct = dup_pct;
        self.net.delay_pct = delay_pct;
        self.net.max_delay = max_delay;
    }

    // ---- clock ----

    fn tick(&mut self) {
        self.now += 1;
        self.stats.ticks += 1;
        for id in self.live() {
            // Clock drift: a slow clock misses a tick now and then, a fast one ticks twice.
            let drift = self.nodes[&id].drift;
            let ticks = if self.chance(drift.unsigned_abs()) {
                if drift < 0 {
                    0
                } else {
                    2
                }
            } else {
                1
            };
            for _ in 0..ticks {
                self.core(id).tick();
            }
            self.advance(id);
        }
        self.deliver();
        self.check_tick();
    }

    fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    // ---- outputs and invariants ----

    fn absorb(&mut self, id: u64, out: Output) {
        let Output {
            messages,
            answers,
            events: _,
            state_changed,
            entries,
            snapshot,
        } = out;
        if let Some((index, term)) = snapshot {
            if let Some(&(t, _)) = self.committed.get(&index) {
                if t != term {
                    self.fail(format!(
                        "n{id} installed a snapshot at {index} term {term}, but entry {index} has term {t}"
                    ));
                }
            }
            let n = self.nodes.get_mut(&id).unwrap();
            n.last_applied = index;
            n.snapshots_installed += 1;
            self.stats.snapshots += 1;
            self.log(format!("n{id} installed snapshot {index}/{term}"));
        }
        for e in &entries {
            let last = self.nodes[&id].last_applied;
            if e.index != last + 1 {
                self.fail(format!(
                    "n{id} applied entry {} right after {last} (gap or repeat)",
                    e.index
                ));
            }
            let h = entry_hash(e);
            match self.committed.get(&e.index) {
                Some(&(t, eh)) if (t, eh) != (e.term, h) => self.fail(format!(
                    "n{id} applied entry {} term {} but another node applied term {t} there (data equal: {})",
                    e.index, e.term, eh == h
                )),
                Some(_) => {}
                None => {
                    self.committed.insert(e.index, (e.term, h));
                }
            }
            let n = self.nodes.get_mut(&id).unwrap();
            n.last_applied = e.index;
        }
        {
            let n = self.nodes.get_mut(&id).unwrap();
            n.max_applied = n.max_applied.max(n.last_applied);
        }
        let applied = self.nodes[&id].core.as_ref().unwrap().applied();
        if applied != self.nodes[&id].last_applied {
            self.fail(format!(
                "n{id} reports applied {applied}, entries say {}",
                self.nodes[&id].last_applied
            ));
        }
        // Hashing the whole state is the costly part: every 4th index, and always after a
        // snapshot install or a restart (where a bug would show first).
        let n = self.nodes.get_mut(&id).unwrap();
        let must = std::mem::take(&mut n.check_state);
        if state_changed && (must || snapshot.is_some() || applied & 3 == 0) {
            let h = self.node_hash(id);
            match self.states.get(&applied) {
                Some(&other) if other != h => self.fail(format!(
                    "n{id} state or configuration at applied {applied} differs from another \
                     node's at the same index"
                )),
                Some(_) => {}
                None => {
                    self.states.insert(applied, h);
                }
            }
        }
        for (pid, result) in answers {
            self.answered(id, pid, result);
        }
        self.check_leader(id);
        if !messages.is_empty() {
            self.send(id, messages);
        }
    }

    fn answered(&mut self, id: u64, pid: u64, result: Result<(), ProposeError>) {
        let Some((name, node, minority)) = self
            .props
            .get(&pid)
            .map(|p| (p.name.clone(), p.node, p.minority))
        else {
            self.log(format!("n{id} answered request {pid}: {result:?}"));
            self.answers.insert(pid, result);
            return;
        };
        if node != id {
            self.fail(format!("proposal {pid} made on n{node} answered by n{id}"));
        }
        let fate = match result {
            Ok(()) => Fate::Applied,
            Err(ProposeError::Dropped) => Fate::Dropped,
            Err(ProposeError::Uncertain) => Fate::Uncertain,
            Err(e) => self.fail(format!("proposal {pid} ({name}) answered {e}")),
        };
        match fate {
            Fate::Dropped => self.stats.dropped += 1,
            Fate::Uncertain => self.stats.uncertain += 1,
            _ => {}
        }
        if fate == Fate::Applied {
            self.stats.acked += 1;
            if minority {
                self.fail(format!("{name} was proposed in a minority and got applied"));
            }
        }
        if let Some(p) = self.props.get_mut(&pid) {
            p.fate = fate;
        }
        self.log(format!("n{id} answered {name}: {fate:?}"));
    }

    fn node_hash(&mut self, id: u64) -> u64 {
        let n = self.nodes.get_mut(&id).unwrap();
        let c = n.core.as_ref().unwrap();
        if n.hashed.0 != c.applied() {
            // The configuration is part of the replicated state machine too.
            let cs = c.conf_state();
            let conf = format!(
                "{:?}/{:?}/{:?}",
                sorted(cs.voters),
                sorted(cs.learners),
                sorted(cs.voters_outgoing)
            );
            let h = hash_bytes(&[&state_hash(c.state()).to_le_bytes(), conf.as_bytes()]);
            n.hashed = (c.applied(), h);
        }
        n.hashed.1
    }

    fn check_leader(&mut self, id: u64) {
        let Some(core) = self.nodes[&id].core.as_ref() else {
            return;
        };
        let seen = (core.role(), core.term(), core.leader_id());
        if seen != self.nodes[&id].seen {
            self.nodes.get_mut(&id).unwrap().seen = seen;
            self.log(format!(
                "n{id} is {:?} in term {} (leader n{})",
                seen.0, seen.1, seen.2
            ));
        }
        let core = self.nodes[&id].core.as_ref().unwrap();
        if core.role() != StateRole::Leader {
            return;
        }
        let term = core.term();
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                self.fail(format!("two leaders in term {term}: n{other} and n{id}"))
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
                self.log(format!("n{id} leads term {term}"));
            }
        }
    }

    fn check_tick(&mut self) {
        let gone: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(&x, n)| n.removed_by.map(|at| (x, at)))
            .collect();
        for id in self.live() {
            self.check_leader(id);
            let c = self.nodes[&id].core.as_ref().unwrap();
            for &(x, at) in &gone {
                let cs = c.conf_state();
                if c.applied() >= at && (cs.voters.contains(&x) || cs.learners.contains(&x)) {
                    let msg = format!(
                        "n{id} applied {} but still has n{x} in its configuration, removed by {at}",
                        c.applied()
                    );
                    self.fail(msg);
                }
            }
            if c.applied() > c.commit() {
                let msg = format!("n{id} applied {} beyond commit {}", c.applied(), c.commit());
                self.fail(msg);
            }
        }
        // Dropped means "never applied": check against every live state.
        for id in self.live() {
            let state = self.nodes[&id].core.as_ref().unwrap().state().clone();
            for p in self.props.values() {
                if p.fate == Fate::Dropped && state.services.values().any(|s| s.spec.name == p.name)
                {
                    self.fail(format!(
                        "{} was answered Dropped but n{id} applied it",
                        p.name
                    ));
                }
            }
        }
    }

    // ---- requests ----

    /// Proposes a new unique service on `id` (if it leads). Returns the proposal id.
    fn propose_on(&mut self, id: u64, minority: bool) -> Option<u64> {
        if !self.is_live(id) || !self.core(id).is_leader() {
            return None;
        }
        let pid = self.next_prop;
        self.next_prop += 1;
        let (name, cmd) = service_cmd(pid);
        match self.core(id).propose(&cmd, pid) {
            Ok(()) => {
                self.props.insert(
                    pid,
                    Prop {
                        name: name.clone(),
                        node: id,
                        fate: Fate::Pending,
                        minority,
                    },
                );
                self.log(format!("n{id} proposed {name}"));
                self.advance(id);
                Some(pid)
            }
            Err(e) => {
                self.log(format!("n{id} refused {name}: {e}"));
                None
            }
        }
    }

    /// A few proposals to whoever leads.
    fn propose_some(&mut self) {
        if let Some(l) = self.leader() {
            let n = 1 + self.rng.below(3);
            for _ in 0..n {
                self.propose_on(l, false);
            }
        }
    }

    /// Runs a membership change on the leader, retrying until applied; `Err` if refused
    /// for a reason other than "not now".
    fn membership(&mut self, change: Membership) -> Result<(), String> {
        for _ in 0..40 * ELECTION_TICKS {
            if let Some(l) = self.leader() {
                let rid = self.next_prop;
                self.next_prop += 1;
                match self.core(l).propose_membership(change, rid) {
                    Ok(()) => {
                        self.log(format!("n{l} proposed {change:?}"));
                        self.advance(l);
                        match self.wait_answer(rid) {
                            Some(Ok(())) => return Ok(()),
                            Some(Err(e)) => self.log(format!("{change:?}: {e}; retrying")),
                            None => self.log(format!("{change:?}: no answer; retrying")),
                        }
                    }
                    Err(
                        ProposeError::NotLeader { .. }
                        | ProposeError::ConfChangeInProgress
                        | ProposeError::Dropped,
                    ) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            self.tick();
        }
        self.fail(format!("{change:?} never got applied"))
    }

    fn wait_answer(&mut self, rid: u64) -> Option<Result<(), String>> {
        for _ in 0..10 * ELECTION_TICKS {
            if let Some(r) = self.answers.remove(&rid) {
                return Some(r.map_err(|e| e.to_string()));
            }
            self.tick();
        }
        self.answers
            .remove(&rid)
            .map(|r| r.map_err(|e| e.to_string()))
    }

    fn transfer(&mut self, target: u64) -> Result<(), String> {
        let l = self.leader().ok_or("no leader")?;
        let rid = self.next_prop;
        self.next_prop += 1;
        self.core(l)
            .transfer_leader(target, rid)
            .map_err(|e| e.to_string())?;
        self.advance(l);
        self.wait_answer(rid).unwrap_or(Err("no answer".into()))
    }

    /// Ticks until some live node leads; returns the ticks it took.
    fn await_leader(&mut self, max: u64) -> u64 {
        for t in 0..max {
            if self.leader().is_some() {
                return t;
            }
            self.tick();
        }
        self.fail(format!("no leader after {max} ticks"))
    }

    // ---- phases ----

    fn bootstrap(&mut self, n: u64) {
        self.add_node(1, true);
        if !self.core(1).is_leader() {
            self.fail("a founding single voter must lead at once".into());
        }
        for id in 2..=n {
            self.add_node(id, false);
            if let Err(e) = self.membership(Membership::AddVoter(id)) {
                self.fail(format!("adding voter {id}: {e}"));
            }
        }
        self.ticks(2);
    }

    fn members(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.removed)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Heals the network, stops faults, restarts every crashed member, and waits until all
    /// members agree; then checks the end-state invariants.
    fn converge(&mut self) {
        self.heal();
        self.faults(0, 0, 0, 0);
        self.power_cut_permille = 0;
        for id in self.members() {
            self.restart(id);
        }
        let mut done = false;
        for _ in 0..60 * ELECTION_TICKS {
            self.tick();
            if self.converged() {
                done = true;
                break;
            }
        }
        if !done {
            let status: Vec<String> = self
                .members()
                .iter()
                .map(|&id| match self.nodes[&id].core.as_ref() {
                    Some(c) => format!(
                        "n{id}: {:?} term {} leader {} commit {} applied {} last {} voters {:?} \
                         learners {:?}",
                        c.role(),
                        c.term(),
                        c.leader_id(),
                        c.commit(),
                        c.applied(),
                        c.last_index(),
                        c.conf_state().voters,
                        c.conf_state().learners
                    ),
                    None => format!("n{id}: down"),
                })
                .collect();
            self.fail(format!("no convergence: {}", status.join("; ")));
        }
        // Nodes outside the final configuration whose addition was never acknowledged.
        let l = self.leader().unwrap();
        let cs = self.core(l).conf_state();
        for id in self.members() {
            if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
                self.nodes.get_mut(&id).unwrap().removed = true;
                self.crash(id);
                self.log(format!("n{id} is not in the final configuration: stopped"));
            }
        }
        // Old proposals on deposed leaders resolve within two election timeouts.
        self.ticks(2 * ELECTION_TICKS as u64 + 2);
        let members = self.members();
        let first = self.nodes[&members[0]].core.as_ref().unwrap();
        let state = first.state().clone();
        for &id in &members {
            let c = self.nodes[&id].core.as_ref().unwrap();
            if c.pending_proposals() != 0 {
                self.fail(format!(
                    "n{id} still has {} pending proposals",
                    c.pending_proposals()
                ));
            }
            if self.nodes[&id].max_applied > c.applied() {
                self.fail(format!(
                    "n{id} once applied {} but now only {}",
                    self.nodes[&id].max_applied,
                    c.applied()
                ));
            }
        }
        let names: BTreeSet<&str> = state
            .services
            .values()
            .map(|s| s.spec.name.as_str())
            .collect();
        for p in self.props.values() {
            let present = names.contains(p.name.as_str());
            match p.fate {
                Fate::Applied if !present => self.fail(format!(
                    "{} was acknowledged but is not in the state",
                    p.name
                )),
                Fate::Dropped if present => self.fail(format!(
                    "{} was answered Dropped but is in the state",
                    p.name
                )),
                Fate::Pending if self.is_live(p.node) => {
                    self.fail(format!("{} never got an answer", p.name))
                }
                _ => {}
            }
            if p.minority && present {
                self.fail(format!(
                    "{} was proposed in a minority and got applied",
                    p.name
                ));
            }
        }
        for name in &names {
            if !self.props.values().any(|p| p.name == *name) {
                self.fail(format!("{name} is in the state but was never proposed"));
            }
        }
    }

    /// One leader, which applied its whole log, and every member of its configuration (voters
    /// and learners) up, following it, at the same applied index, configuration and state.
    fn converged(&mut self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let lc = self.nodes[&l].core.as_ref().unwrap();
        if lc.commit() != lc.last_index() || lc.applied() != lc.commit() {
            return false;
        }
        let commit = lc.commit();
        let cs = lc.conf_state();
        let (voters, learners) = (sorted(cs.voters), sorted(cs.learners));
        let members: Vec<u64> = voters.iter().chain(&learners).copied().collect();
        for id in &members {
            match self.nodes.get(id) {
                None => self.fail(format!("n{id} is in the configuration but never existed")),
                Some(n) if n.removed => self.fail(format!(
                    "n{id} was removed (acknowledged) but is in the configuration again: \
                     voters {voters:?} learners {learners:?}"
                )),
                Some(_) => {}
            }
        }
        let agree = members.iter().all(|id| {
            self.nodes[id].core.as_ref().is_some_and(|c| {
                let cs = c.conf_state();
                c.applied() == commit
                    && c.commit() == commit
                    && c.leader_id() == l
                    && sorted(cs.voters) == voters
                    && sorted(cs.learners) == learners
            })
        });
        if !agree {
            return false;
        }
        let hash = self.node_hash(l);
        members.iter().all(|&id| self.node_hash(id) == hash)
    }
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

// ---- scenarios ----

/// Steady state with faults: random proposals to whoever leads.
fn steady(sim: &mut Sim) {
    sim.faults(3, 3, 20, 3);
    for _ in 0..200 {
        if sim.chance(40) {
            sim.propose_some();
        }
        sim.tick();
    }
    sim.converge();
    if sim.stats.acked == 0 {
        sim.fail("nothing was acknowledged in steady state".into());
    }
}

/// The leader crashes: another is elected; with the transport's "peer unreachable" report
/// (every live peer notices) in a few ticks, without it after an election timeout.
fn leader_crash(sim: &mut Sim) {
    sim.faults(1, 1, 10, 2);
    for round in 0..3 {
        for _ in 0..30 {
            if sim.chance(40) {
                sim.propose_some();
            }
            sim.tick();
        }
        sim.await_leader(30 * ELECTION_TICKS as u64);
        let old = sim.leader().unwrap();
        let old_term = sim.core(old).term();
        // Let the last heartbeats settle so followers are in the leader's lease.
        sim.crash(old);
        let notify = (sim.seed + round) & 1 == 0;
        if notify {
            // The transport reports a closed connection after what it delivered on it:
            // nothing from the dead node arrives after the report.
            sim.net.queue.retain(|f| f.msg.from != old);
            for id in sim.live() {
                sim.core(id).peer_unreachable(old);
                sim.advance(id);
            }
            // A tick is long next to a round trip: the network runs before the next tick.
            sim.deliver();
        }
        let mut took = None;
        for t in 0..30 * ELECTION_TICKS as u64 {
            if let Some(l) = sim.leader() {
                if sim.core(l).term() > old_term {
                    took = Some(t);
                    break;
                }
            }
            sim.tick();
        }
        let Some(t) = took else {
            sim.fail(format!("no new leader after n{old} crashed"))
        };
        sim.log(format!(
            "new leader {t} ticks after the crash (notified: {notify})"
        ));
        if notify {
            sim.stats.elections_fast.push(t);
        } else {
            sim.stats.elections_timeout.push(t);
        }
        // The new leader commits.
        let l = sim.leader().unwrap();
        if let Some(pid) = sim.propose_on(l, false) {
            for _ in 0..5 * ELECTION_TICKS {
                if sim.props[&pid].fate != Fate::Pending {
                    break;
                }
                sim.tick();
            }
        }
        sim.ticks(5);
        sim.restart(old);
    }
    sim.converge();
}

/// How the minority is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    BothWays,
    /// The minority hears nobody; the majority still hears it (and may take its entries).
    MinorityDeaf,
    /// The majority does not hear the minority, which still hears the majority (and may learn
    /// of its commits).
    MajorityDeaf,
}

/// A minority (often holding the leader) is cut off, both ways or one way: it cannot commit;
/// the majority elects and keeps committing; after healing everyone converges on the
/// majority's log.
fn partition(sim: &mut Sim) {
    sim.faults(2, 2, 10, 2);
    for _ in 0..30 {
        if sim.chance(40) {
            sim.propose_some();
        }
        sim.tick();
    }
    sim.await_leader(30 * ELECTION_TICKS as u64);
    let ids: Vec<u64> = sim.nodes.keys().copied().collect();
    let n = ids.len();
    let minority_size = (n - 1) / 2;
    let mut minority = BTreeSet::new();
    if sim.chance(60) {
        minority.insert(sim.leader().unwrap());
    }
    while minority.len() < minority_size {
        minority.insert(ids[sim.rng.below(n as u64) as usize]);
    }
    let majority: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    let cut = match sim.rng.below(4) {
        0 => Cut::MinorityDeaf,
        1 => Cut::MajorityDeaf,
        _ => Cut::BothWays,
    };
    match cut {
        Cut::BothWays => sim.partition(&minority),
        Cut::MinorityDeaf => sim.deafen(&minority),
        Cut::MajorityDeaf => sim.deafen(&majority),
    }
    let cut_commit = ids.iter().map(|&i| sim.core(i).commit()).max().unwrap();
    let acked_before = sim.stats.acked;
    for _ in 0..12 * ELECTION_TICKS {
        // Proposals on both sides; the minority's must never be applied unless the majority
        // hears it (its entries may then reach a majority and commit legitimately).
        for &m in &minority {
            if sim.chance(30) {
                sim.propose_on(m, cut != Cut::MinorityDeaf);
            }
        }
        let leader = majority
            .iter()
            .copied()
            .filter_map(|i| sim.nodes[&i].core.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.is_leader())
            .max_by_key(|(_, c)| c.term())
            .map(|(i, _)| i);
        if let Some(l) = leader {
            if sim.chance(40) {
                sim.propose_on(l, false);
            }
        }
        sim.tick();
        // A minority that hears the majority learns its commits.
        if cut == Cut::MajorityDeaf {
            continue;
        }
        for &m in &minority {
            let c = sim.core(m).commit();
            if c > cut_commit {
                sim.fail(format!(
                    "n{m} in the minority ({cut:?}) committed {c} (beyond {cut_commit} at the cut)"
                ));
            }
        }
    }
    if sim.stats.acked == acked_before {
        sim.fail("the majority side committed nothing during the partition".into());
    }
    sim.converge();
}

/// Random crashes and restarts (from sled), small `snapshot_entries` so the log compacts and
/// a follower that was down long catches up from a snapshot.
fn restart(sim: &mut Sim) {
    sim.faults(2, 2, 10, 2);
    sim.power_cut_permille = 3;
    for _ in 0..150 {
        if sim.chance(50) {
            sim.propose_some();
        }
        if sim.chance(4) {
            let live = sim.live();
            // Keep a quorum most of the time; sometimes lose it.
            if live.len() > 2 || (!live.is_empty() && sim.chance(20)) {
                let v = live[sim.rng.below(live.len() as u64) as usize];
                sim.crash(v);
            }
        }
        if sim.chance(8) {
            let down: Vec<u64> = sim
                .members()
                .into_iter()
                .filter(|&i| !sim.is_live(i))
                .collect();
            if !down.is_empty() {
                let v = down[sim.rng.below(down.len() as u64) as usize];
                sim.restart(v);
            }
        }
        sim.tick();
    }
    // A follower down while the log moves on by several snapshots must get a snapshot.
    sim.converge();
    let leader = sim.leader().unwrap();
    let follower = *sim.members().iter().find(|&&i| i != leader).unwrap();
    let before = sim.nodes[&follower].snapshots_installed;
    sim.crash(follower);
    let target = sim.core(leader).applied() + 4 * sim.opts.snapshot_entries;
    for _ in 0..40 * ELECTION_TICKS {
        if sim
            .leader()
            .is_some_and(|l| sim.core(l).applied() >= target)
        {
            break;
        }
        sim.propose_some();
        sim.tick();
    }
    sim.converge();
    if sim.nodes[&follower].snapshots_installed == before {
        sim.fail(format!(
            "n{follower} caught up without a snapshot after a long absence"
        ));
    }
}

/// Membership: a new node joins as a learner (from a snapshot), is promoted, leadership moves
/// to it, and the old leader is removed; refusals on the way.
fn membership(sim: &mut Sim) {
    sim.faults(1, 1, 10, 2);
    for _ in 0..20 {
        sim.propose_some();
        sim.tick();
    }
    let new_id = sim.nodes.keys().max().unwrap() + 1;
    sim.add_node(new_id, false);
    sim.membership(Membership::AddLearner(new_id)).unwrap();
    // The learner catches up (its first state comes from a snapshot).
    for _ in 0..30 * ELECTION_TICKS {
        sim.propose_some();
        sim.tick();
        let l = sim.leader();
        if l.is_some_and(|l| {
            sim.core(new_id).applied() >= sim.nodes[&l].core.as_ref().unwrap().commit()
        }) {
            break;
        }
    }
    if sim.nodes[&new_id].snapshots_installed == 0 {
        sim.fail("the learner did not start from a snapshot".into());
    }
    if sim.core(new_id).conf_state().learners != vec![new_id] {
        sim.fail("the learner does not see itself as learner".into());
    }
    // Two changes at once: the second is refused while the first is in flight.
    let mut l = 0;
    for _ in 0..30 * ELECTION_TICKS {
        if let Some(leader) = sim.leader() {
            match sim
                .core(leader)
                .propose_membership(Membership::AddVoter(new_id), 900_001)
            {
                Ok(()) => {
                    l = leader;
                    break;
                }
                Err(ProposeError::ConfChangeInProgress | ProposeError::NotLeader { .. }) => {}
                Err(e) => sim.fail(format!("promoting the learner: {e}")),
            }
        }
        sim.tick();
    }
    if l == 0 {
        sim.fail("could not propose the promotion".into());
    }
    match sim
        .core(l)
        .propose_membership(Membership::Remove(new_id), 900_002)
    {
        Err(ProposeError::ConfChangeInProgress) => {}
        other => sim.fail(format!(
            "a second change in flight was not refused: {other:?}"
        )),
    }
    sim.advance(l);
    if sim.wait_answer(900_001) != Some(Ok(())) {
        // Leadership may have moved: retry through the helper.
        sim.membership(Membership::AddVoter(new_id)).unwrap();
    }
    // Removing the leader itself is refused: transfer first.
    sim.await_leader(30 * ELECTION_TICKS as u64);
    let l = sim.leader().unwrap();
    match sim
        .core(l)
        .propose_membership(Membership::Remove(l), 900_003)
    {
        Err(ProposeError::LeaderMustTransfer) => {}
        other => sim.fail(format!("removing the leader was not refused: {other:?}")),
    }
    let mut moved = false;
    for _ in 0..5 {
        if sim.transfer(new_id).is_ok() {
            moved = true;
            break;
        }
        sim.ticks(ELECTION_TICKS as u64);
    }
    if !moved {
        sim.fail(format!("leadership never moved to n{new_id}"));
    }
    for _ in 0..10 {
        sim.propose_some();
        sim.tick();
    }
    sim.membership(Membership::Remove(l)).unwrap();
    sim.nodes.get_mut(&l).unwrap().removed = true;
    sim.log(format!("n{l} removed"));
    sim.ticks(3);
    sim.crash(l);
    for _ in 0..30 {
        if sim.chance(50) {
            sim.propose_some();
        }
        sim.tick();
    }
    sim.converge();
    let voters = {
        let l = sim.leader().unwrap();
        let mut v = sim.core(l).conf_state().voters;
        v.sort_unstable();
        v
    };
    if voters.contains(&l) || !voters.contains(&new_id) {
        sim.fail(format!("unexpected final voters {voters:?}"));
    }
}

/// A voter whose removal is in its log but not committed wins the next election (its log is
/// the longest), then commits and applies its own removal as the leader: it must step down,
/// and the others carry on without it. (raft-rs alone keeps it leading and panics.)
fn removed_leader(sim: &mut Sim) {
    sim.faults(0, 0, 0, 0);
    for _ in 0..10 {
        sim.propose_some();
        sim.tick();
    }
    sim.await_leader(30 * ELECTION_TICKS as u64);
    let l = sim.leader().unwrap();
    let others: Vec<u64> = sim.nodes.keys().copied().filter(|&i| i != l).collect();
    let (stay, gone) = if sim.chance(50) {
        (others[0], others[1])
    } else {
        (others[1], others[0])
    };
    // The change reaches `gone` only, and its acknowledgement never reaches the leader.
    sim.net.cut.insert((l, stay));
    sim.net.cut.insert((gone, l));
    let rid = sim.next_prop;
    sim.next_prop += 1;
    if let Err(e) = sim
        .core(l)
        .propose_membership(Membership::Remove(gone), rid)
    {
        sim.fail(format!("n{l} refused to remove n{gone}: {e}"));
    }
    sim.log(format!(
        "n{l} proposed Remove({gone}), cut off from n{stay}"
    ));
    sim.advance(l);
    sim.tick();
    let last = sim.core(l).last_index();
    if sim.core(gone).last_index() != last || sim.core(l).commit() >= last {
        sim.fail(format!(
            "the removal of n{gone} did not reach it uncommitted"
        ));
    }
    sim.crash(l);
    sim.net.queue.retain(|f| f.msg.from != l);
    sim.heal();
    let mut led = false;
    for _ in 0..30 * ELECTION_TICKS {
        sim.tick();
        led |= sim.leaders.values().any(|&x| x == gone);
        if led && sim.core(gone).applied() >= last {
            break;
        }
    }
    if !led {
        sim.fail(format!("n{gone} never led with its removal in its log"));
    }
    sim.converge();
    let cs = sim.core(sim.leader().unwrap()).conf_state();
    if cs.voters.contains(&gone) || cs.learners.contains(&gone) {
        sim.fail(format!("n{gone} is still a member: {cs:?}"));
    }
}

/// A membership change the churn scenario proposed and has not seen answered yet.
struct ChangeInFlight {
    rid: u64,
    /// The leader it was proposed to (its answer dies with it).
    node: u64,
    change: Membership,
    /// Give up waiting (the outcome stays unknown) after this tick.
    until: u64,
}

/// Proposes a random membership change to the leader, chosen from its configuration: add a
/// new node as a learner, promote a learner, remove a learner, or remove a voter other than
/// the leader (while at least three remain, and at most five).
fn propose_change(sim: &mut Sim, added: &mut u64) -> Option<ChangeInFlight> {
    const MAX_ADDED: u64 = 3;
    let l = sim.leader()?;
    let cs = sim.core(l).conf_state();
    let (voters, learners) = (sorted(cs.voters), sorted(cs.learners));
    let new_id = sim.nodes.keys().max().unwrap() + 1;
    let mut options = Vec::new();
    if *added < MAX_ADDED && learners.len() < 2 {
        options.push(Membership::AddLearner(new_id));
    }
    for &x in &learners {
        if voters.len() < 5 {
            options.push(Membership::AddVoter(x));
        }
        options.push(Membership::Remove(x));
    }
    if voters.len() > 3 {
        options.extend(
            voters
                .iter()
                .filter(|&&v| v != l)
                .map(|&v| Membership::Remove(v)),
        );
    }
    if options.is_empty() {
        return None;
    }
    let change = options[sim.rng.below(options.len() as u64) as usize];
    let rid = sim.next_prop;
    sim.next_prop += 1;
    match sim.core(l).propose_membership(change, rid) {
        Ok(()) => {}
        Err(ProposeError::ConfChangeInProgress | ProposeError::Dropped) => return None,
        Err(e) => sim.fail(format!("n{l} refused {change:?}: {e}")),
    }
    sim.log(format!("n{l} proposed {change:?}"));
    if change == Membership::AddLearner(new_id) {
        *added += 1;
        sim.add_node(new_id, false);
    }
    sim.advance(l);
    Some(ChangeInFlight {
        rid,
        node: l,
        change,
        until: sim.now + 10 * ELECTION_TICKS as u64,
    })
}

/// Membership churn: learners join (from a snapshot), get promoted, voters and learners get
/// removed, one change at a time, while nodes crash (power loss) and restart and the network
/// splits both ways and one way. A removed node keeps running for a while, then stops. At the
/// end the last acknowledged change of every node holds in the final configuration.
fn membership_churn(sim: &mut Sim) {
    sim.faults(3, 3, 20, 3);
    sim.power_cut_permille = 3;
    let mut in_flight: Option<ChangeInFlight> = None;
    // Per node: the last change proposed about it, and whether it was acknowledged.
    let mut last: BTreeMap<u64, (Membership, bool)> = BTreeMap::new();
    let mut stop_at: BTreeMap<u64, u64> = BTreeMap::new();
    let mut added = 0;
    for _ in 0..250 {
        match sim.rng.below(100) {
            0..=29 => sim.propose_some(),
            30..=44 if in_flight.is_none() => {
                in_flight = propose_change(sim, &mut added);
                if let Some(f) = &in_flight {
                    let target = match f.change {
                        Membership::AddVoter(x)
                        | Membership::AddLearner(x)
                        | Membership::Remove(x) => x,
                    };
                    last.insert(target, (f.change, false));
                }
            }
            45..=47 => {
                let live: Vec<u64> = sim
                    .members()
                    .into_iter()
                    .filter(|&i| sim.is_live(i))
                    .collect();
                if !live.is_empty() {
                    let v = live[sim.rng.below(live.len() as u64) as usize];
                    sim.crash(v);
                }
            }
            48..=53 => {
                let down: Vec<u64> = sim
                    .members()
                    .into_iter()
                    .filter(|&i| !sim.is_live(i))
                    .collect();
                if !down.is_empty() {
                    let v = down[sim.rng.below(down.len() as u64) as usize];
                    sim.restart(v);
                }
            }
            54..=56 => sim.random_split(40),
            57..=60 => sim.heal(),
            _ => {}
        }
        if let Some(f) = &in_flight {
            match sim.answers.remove(&f.rid) {
                Some(Ok(())) => {
                    sim.stats.conf_changes += 1;
                    match f.change {
                        Membership::AddVoter(x) | Membership::AddLearner(x) => {
                            last.insert(x, (f.change, true));
                        }
                        Membership::Remove(x) => {
                            last.insert(x, (f.change, true));
                            let at = sim.nodes[&f.node].core.as_ref().map(|c| c.applied());
                            let n = sim.nodes.get_mut(&x).unwrap();
                            n.removed = true;
                            n.removed_by = at;
                            let at = sim.now + sim.rng.below(3 * ELECTION_TICKS as u64);
                            stop_at.insert(x, at);
                        }
                    }
                    in_flight = None;
                }
                Some(Err(
                    ProposeError::Dropped
                    | ProposeError::Uncertain
                    | ProposeError::ConfChangeInProgress,
                )) => in_flight = None,
                Some(Err(e)) => sim.fail(format!("{:?} answered: {e}", f.change)),
                None if !sim.is_live(f.node) || sim.now > f.until => {
                    sim.log(format!("{:?}: outcome unknown", f.change));
                    in_flight = None;
                }
                None => {}
            }
        }
        let due: Vec<u64> = stop_at
            .iter()
            .filter(|(_, &at)| at <= sim.now)
            .map(|(&x, _)| x)
            .collect();
        for x in due {
            stop_at.remove(&x);
            sim.crash(x);
            sim.log(format!("n{x} stopped after its removal"));
        }
        sim.tick();
    }
    for x in std::mem::take(&mut stop_at).into_keys() {
        sim.crash(x);
    }
    sim.converge();
    let l = sim.leader().unwrap();
    let cs = sim.core(l).conf_state();
    for (&x, &(change, acked)) in &last {
        let holds = match change {
            Membership::AddVoter(_) => cs.voters.contains(&x),
            Membership::AddLearner(_) => cs.learners.contains(&x),
            Membership::Remove(_) => !cs.voters.contains(&x) && !cs.learners.contains(&x),
        };
        if acked && !holds {
            sim.fail(format!(
                "{change:?} was acknowledged last for n{x}, but the final configuration is \
                 voters {:?} learners {:?}",
                cs.voters, cs.learners
            ));
        }
    }
}

/// Everything at once: partitions (both ways and one way), crashes, restarts, proposals.
fn chaos(sim: &mut Sim) {
    sim.faults(5, 5, 25, 4);
    sim.power_cut_permille = 3;
    let ids: Vec<u64> = sim.nodes.keys().copied().collect();
    for _ in 0..200 {
        match sim.rng.below(100) {
            0..=39 => sim.propose_some(),
            40..=42 => {
                let v = ids[sim.rng.below(ids.len() as u64) as usize];
                sim.crash(v);
            }
            43..=48 => {
                let v = ids[sim.rng.below(ids.len() as u64) as usize];
                sim.restart(v);
            }
            49..=51 => sim.random_split(40),
            52..=54 => sim.heal(),
            _ => {}
        }
        sim.tick();
    }
    sim.converge();
}

/// Election storms: the network keeps splitting and nodes reboot (crash and restart from
/// disk in the same tick) while votes are in flight, so a vote that was not persisted would
/// let a node vote twice in a term.
fn elections(sim: &mut Sim) {
    sim.faults(3, 3, 40, 3);
    sim.power_cut_permille = 2;
    let ids: Vec<u64> = sim.nodes.keys().copied().collect();
    for _ in 0..200 {
        if sim.chance(30) {
            sim.propose_some();
        }
        if sim.chance(15) {
            // Mostly the leader: its peers see the connection drop and elect at once.
            let v = match sim.leader() {
                Some(l) if sim.chance(70) => l,
                _ => ids[sim.rng.below(ids.len() as u64) as usize],
            };
            sim.crash(v);
            sim.net.queue.retain(|f| f.msg.from != v);
            for id in sim.live() {
                sim.core(id).peer_unreachable(v);
                sim.advance(id);
            }
            sim.restart(v);
        }
        if sim.chance(20) {
            // Anyone, likely in the middle of voting.
            let v = ids[sim.rng.below(ids.len() as u64) as usize];
            sim.crash(v);
            sim.restart(v);
        }
        if sim.chance(10) {
            sim.random_split(50);
        } else if sim.chance(5) {
            sim.heal();
        }
        sim.tick();
    }
    sim.converge();
}

// ---- runner ----

fn seeds(default: u64) -> Vec<u64> {
    if let Some(one) = std::env::var("SKEIN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![one];
    }
    let n = std::env::var("SKEIN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

/// Seeds per scenario when `SKEIN_SIM_SEEDS` is not set.
const DEFAULT_SEEDS: u64 = 64;

fn run(name: &str, nodes: impl Fn(u64) -> u64, snapshot_entries: u64, f: fn(&mut Sim)) {
    let started = Instant::now();
    let mut total = Stats::default();
    let list = seeds(DEFAULT_SEEDS);
    for &seed in &list {
        let mut sim = None;
        let result = catch_unwind(AssertUnwindSafe(|| {
            f(sim.insert(Sim::new(seed, nodes(seed), snapshot_entries)));
        }));
        match (result, sim) {
            (Ok(()), Some(sim)) => {
                if std::env::var_os("SKEIN_SIM_TRACE").is_some() {
                    eprintln!("--- seed {seed} ---\n{}", sim.trace.join("\n"));
                }
                total.add(sim.stats);
            }
            (result, sim) => {
                let e = result.err().unwrap_or_else(|| Box::new("no simulation"));
                let ours = e
                    .downcast_ref::<String>()
                    .is_some_and(|m| m.starts_with(INVARIANT));
                if let (false, Some(sim)) = (ours, sim) {
                    // A panic in the core or raft-rs: show what led to it.
                    eprintln!(
                        "--- seed {seed}, tick {}: last events ---\n{}",
                        sim.now,
                        sim.trace_tail()
                    );
                }
                eprintln!(
                    "raft sim `{name}` failed with seed {seed}; replay it with \
                     SKEIN_SIM_SEED={seed} cargo test -p skein-node --lib raft::sim::{name} -- --nocapture"
                );
                resume_unwind(e);
            }
        }
    }
    let summary = |v: &[u64]| {
        if v.is_empty() {
            return "-".to_string();
        }
        let mut v = v.to_vec();
        v.sort_unstable();
        format!(
            "n={} median {} p90 {} max {} ticks",
            v.len(),
            v[v.len() / 2],
            v[v.len() * 9 / 10],
            v[v.len() - 1]
        )
    };
    eprintln!(
        "raft sim {name}: {} seeds, {} ticks, proposals {} applied / {} dropped / {} uncertain, \
         {} snapshots installed, {} crashes ({} at a flush; {} lost {} unflushed writes), {} \
         membership changes, {:.1?}; new leader after a crash: reported {}; timeout {}",
        list.len(),
        total.ticks,
        total.acked,
        total.dropped,
        total.uncertain,
        total.snapshots,
        total.crashes,
        total.flush_cuts,
        total.power_losses,
        total.lost_writes,
        total.conf_changes,
        started.elapsed(),
        summary(&total.elections_fast),
        summary(&total.elections_timeout),
    );
}

fn three_or_five(seed: u64) -> u64 {
    match seed % 3 {
        0 => 5,
        _ => 3,
    }
}

#[test]
fn steady_state() {
    run("steady_state", three_or_five, 50, steady);
}

#[test]
fn leader_crash_elects_a_new_leader() {
    run(
        "leader_crash_elects_a_new_leader",
        three_or_five,
        50,
        leader_crash,
    );
}

#[test]
fn minority_partition_cannot_commit() {
    run(
        "minority_partition_cannot_commit",
        |s| if s & 1 == 0 { 5 } else { 3 },
        50,
        partition,
    );
}

#[test]
fn crash_restart_and_snapshots() {
    run("crash_restart_and_snapshots", |_| 3, 8, restart);
}

#[test]
fn membership_changes() {
    run("membership_changes", |_| 3, 10, membership);
}

#[test]
fn election_storms() {
    run("election_storms", |_| 5, 20, elections);
}

#[test]
fn removed_voter_elected_before_its_removal_commits() {
    run(
        "removed_voter_elected_before_its_removal_commits",
        |_| 3,
        50,
        removed_leader,
    );
}

#[test]
fn membership_churn_under_faults() {
    run(
        "membership_churn_under_faults",
        three_or_five,
        12,
        membership_churn,
    );
}

#[test]
fn chaos_mix() {
    run("chaos_mix", three_or_five, 12, chaos);
}

/// The same seed gives the same history (power losses, drift and membership churn included).
#[test]
fn a_seed_replays_exactly() {
    let trace = |seed, f: fn(&mut Sim)| {
        let mut sim = Sim::new(seed, 3, 10);
        f(&mut sim);
        (sim.trace.clone(), sim.committed.clone(), sim.states.clone())
    };
    for f in [chaos as fn(&mut Sim), membership_churn] {
        let (a, b) = (trace(42, f), trace(42, f));
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2);
    }
}
