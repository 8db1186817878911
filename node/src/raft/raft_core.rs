//! The sans-IO Raft core: one raft-rs `RawNode` over its sled log, the replicated
//! [`ClusterState`] it applies, snapshots and compaction, and the proposals in flight.
//!
//! No tokio, no clock, no network: callers feed it ticks ([`RaftCore::tick`]), peer messages
//! ([`RaftCore::step`]) and requests (propose, membership, leadership transfer, peer
//! unreachable), then call [`RaftCore::advance`], which handles every pending `Ready` and
//! returns what to send and which proposals are now answered. The tokio actor
//! ([`super::RaftNode`]) and the deterministic simulation (`sim.rs`) both drive this type.
//!
//! Invariants:
//! - every `Ready` is handled in raft-rs's documented order: send `messages()`, apply the
//!   snapshot, apply `committed_entries` (conf changes via `apply_conf_change`), append
//!   `entries()`, persist the hard state, flush (once per Ready, skipped when nothing was
//!   written, e.g. heartbeats), only then hand out `persisted_messages()`, `advance`, the
//!   same for the `LightReady`, `advance_apply`. Extra flushes only after applying a conf
//!   change from the `LightReady` (its commit index must be durable before the new
//!   configuration is acted on) and after taking a snapshot;
//! - the commit index is durable with or before anything applied is: the state machine only
//!   reaches disk as a snapshot, taken at an index `<=` the stored commit, flushed with it;
//! - state changes only by applying committed entries in log order. The state machine is
//!   durable only as a snapshot whose metadata carries its applied index and configuration
//!   (one sled batch); a restart rebuilds from that snapshot and re-applies the committed log
//!   after it, so no entry is applied twice or skipped;
//! - a proposal is tracked by the (index, term) raft gave it: it is answered with apply's
//!   verdict when that entry is applied, `Dropped` when another entry is applied at its index,
//!   `Uncertain` when its fate cannot be known (a snapshot covered it, or this node stayed
//!   without leadership for two election timeouts);
//! - once anything is applied a real snapshot (index >= 1) exists, so a peer joining with an
//!   empty log always starts from a snapshot that carries the whole configuration;
//! - no state size stops Raft: a snapshot is an image streamed from the in-memory state into
//!   bounded records and chunks ([`super::snapshot`]), never one encoding of the whole
//!   state (with background snapshots and a large state: on a thread, from the state as of
//!   the snapshot index, recorded and compacted behind only once written, dropped if a
//!   received snapshot overtook it); raft-rs's `Snapshot.data` is only the image's
//!   descriptor. A `MsgSnapshot` is
//!   stepped only once its image is stored complete on this node (the transport fetched and
//!   verified it): raft-rs never accepts a snapshot this node could not install;
//! - `apply` is deterministic; a conf change raft-rs refuses at apply time is refused alike on
//!   every node (logged, answered with an error), never fatal.

use super::logging;
use super::snapshot::{self, Descriptor, ImageError, SnapshotStore};
use super::storage::SledStorage;
use super::{PeerProgress, ProposeError, Published, RaftError, RaftOptions};
use crate::store::{ClusterState, Event};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole, INVALID_ID};
use skein_protocol::{codec, Command};
use std::collections::BTreeMap;
use std::sync::Arc;

/// raft-rs keeps a peer it sent a snapshot to paused until the peer acknowledges it or the
/// transport reports the outcome ([`RaftCore::report_snapshot`]). If neither happens (a lost
/// message, a transport that does not report), the leader gives up after this many election
/// timeouts and sends a new one, so a follower is never stranded.
const SNAPSHOT_WAIT_TIMEOUTS: usize = 10;

/// States with at least this many objects (nodes, services, tasks) are snapshotted on a
/// thread when background snapshots are on; smaller ones take milliseconds in line.
const BACKGROUND_OBJECTS: usize = 10_000;

/// A membership change, proposed through [`RaftCore::propose_membership`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Add a voter, or promote a learner to voter.
    AddVoter(u64),
    /// Add a learner (receives the log, does not vote), or demote a voter.
    AddLearner(u64),
    /// Remove a voter or a learner.
    Remove(u64),
}

impl Membership {
    fn raft_id(self) -> u64 {
        match self {
            Membership::AddVoter(id) | Membership::AddLearner(id) | Membership::Remove(id) => id,
        }
    }
}

/// What one [`RaftCore::advance`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages for peers, in the order they may be sent (empty from `advance_with`, which
    /// hands them to its callback instead).
    pub messages: Vec<Message>,
    /// Proposals whose fate is now known, by the id given when proposing: `Ok` or
    /// `Err(Rejected)` (applied, with apply's verdict), or an error saying it was not applied
    /// (`Dropped`, `ConfChange`, `TransferFailed`, ...) or may have been (`Uncertain`).
    pub answers: Vec<(u64, Result<(), ProposeError>)>,
    /// What changed in the state, in apply order.
    pub events: Vec<Event>,
    /// The state or applied index changed.
    pub state_changed: bool,
    /// Every applied entry, only with [`RaftCore::record_applied`] (for invariant checks).
    pub entries: Vec<Entry>,
    /// (index, term) of a snapshot received from the leader and installed.
    pub snapshot: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Command,
    Membership,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    term: u64,
    kind: Kind,
}

#[derive(Debug)]
struct Transfer {
    id: u64,
    target: u64,
    ticks_left: usize,
}

/// splitmix64: a tiny deterministic generator (election-timeout jitter in simulations).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The sans-IO Raft node. See the module header.
pub struct RaftCore {
    node: RawNode<SledStorage>,
    store: SledStorage,
    state: Arc<ClusterState>,
    applied: u64,
    last_snapshot: u64,
    snapshot_entries: u64,
    election_ticks: usize,
    /// Proposals in flight, by log index.
    pending: BTreeMap<u64, Pending>,
    /// Ticks since this node last was leader (while proposals are pending).
    leaderless_ticks: usize,
    transfer: Option<Transfer>,
    /// Ticks until a staggered campaign after the leader became unreachable.
    campaign_in: Option<usize>,
    /// Leader: ticks each peer has been waiting for a snapshot (see `SNAPSHOT_WAIT_TIMEOUTS`).
    snapshot_wait: BTreeMap<u64, usize>,
    /// Answers decided outside `advance` (ticks, no-op requests), handed out by it.
    answers: Vec<(u64, Result<(), ProposeError>)>,
    record: bool,
    jitter: Option<SplitMix64>,
    /// A voter to send `MsgTimeoutNow` once the current `Ready` is done (see
    /// `step_down_removed`).
    timeout_now: Option<u64>,
    /// Write snapshot images on a thread instead of inside `advance`.
    background_snapshots: bool,
    /// A snapshot whose image a thread is writing, and where its result comes.
    building: Option<(
        SnapshotAt,
        std::sync::mpsc::Receiver<Result<Descriptor, ImageError>>,
    )>,
}

/// Where a snapshot is taken: the applied index, its term and configuration, and the peer
/// that asked for it (if one did).
#[derive(Debug)]
struct SnapshotAt {
    index: u64,
    term: u64,
    conf: ConfState,
    requested: Option<u64>,
}

impl RaftCore {
    /// Opens the log in `db`. An empty log becomes a new cluster whose only voter is
    /// `raft_id`; an existing one resumes where it stopped.
    pub fn open(db: &sled::Db, raft_id: u64, opts: &RaftOptions) -> Result<RaftCore, RaftError> {
        Self::open_inner(SledStorage::open(db)?, raft_id, opts, true)
    }

    /// Opens the log in `db` for a node joining an existing cluster: an empty log stays empty
    /// and uninitialised (no configuration, never campaigns) until the leader, after adding
    /// `raft_id` with [`Membership::AddVoter`] or [`Membership::AddLearner`], sends it a
    /// snapshot. An existing log resumes where it stopped, like [`RaftCore::open`].
    pub fn open_joining(
        db: &sled::Db,
        raft_id: u64,
        opts: &RaftOptions,
    ) -> Result<RaftCore, RaftError> {
        Self::open_inner(SledStorage::open(db)?, raft_id, opts, false)
    }

    /// [`RaftCore::open`] (`found`) or [`RaftCore::open_joining`] over a storage that records
    /// its unflushed writes in `journal`, so the simulation can cut the power.
    #[cfg(test)]
    pub(crate) fn open_journaled(
        db: &sled::Db,
        raft_id: u64,
        opts: &RaftOptions,
        found: bool,
        journal: std::sync::Arc<super::storage::WriteJournal>,
    ) -> Result<RaftCore, RaftError> {
        let store = SledStorage::open_journaled(db, journal)?;
        Self::open_inner(store, raft_id, opts, found)
    }

    fn open_inner(
        store: SledStorage,
        raft_id: u64,
        opts: &RaftOptions,
        found: bool,
    ) -> Result<RaftCore, RaftError> {
        if found && !store.is_initialized() {
            let mut cs = ConfState::default();
            cs.mut_voters().push(raft_id);
            store.initialize(cs)?;
            store.flush()?;
            tracing::info!(raft_id, "initialized a new single-voter raft log");
        }
        let (state, applied) = match store.snapshot_data()? {
            Some((meta, data)) => (load_state(&store, &data)?, meta.index),
            None => (ClusterState::default(), 0),
        };
        let election_ticks = opts.election_ticks.max(2);
        let cfg = raft::Config {
            id: raft_id,
            election_tick: election_ticks,
            heartbeat_tick: opts.heartbeat_ticks,
            min_election_tick: election_ticks,
            max_election_tick: 2 * election_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let logger = logging::logger().new(slog::o!("raft_id" => raft_id));
        let node = RawNode::new(&cfg, store.clone(), &logger)?;
        Ok(RaftCore {
            node,
            store,
            state: Arc::new(state),
            applied,
            last_snapshot: applied,
            snapshot_entries: opts.snapshot_entries.max(1),
            election_ticks,
            pending: BTreeMap::new(),
            leaderless_ticks: 0,
            transfer: None,
            campaign_in: None,
            snapshot_wait: BTreeMap::new(),
            answers: Vec::new(),
            record: false,
            jitter: None,
            timeout_now: None,
            background_snapshots: false,
            building: None,
        })
    }

    /// Re-applies the committed log after the snapshot (a restart), then campaigns at once if
    /// this node is the only voter. Call once before anything else.
    pub fn start(&mut self) -> Result<Output, RaftError> {
        let mut out = self.advance()?;
        if self.is_sole_voter() {
            // Nobody to wait for: lead at once instead of after an election timeout.
            self.node.campaign()?;
            let more = self.advance()?;
            merge(&mut out, more);
        }
        Ok(out)
    }

    /// Draws election timeouts from a seeded generator instead of raft-rs's thread RNG, so a
    /// simulation replays exactly.
    pub fn set_deterministic_timeouts(&mut self, seed: u64) {
        self.jitter = Some(SplitMix64::new(seed));
        self.rejitter();
    }

    /// Writes snapshot images of large states on a thread (the actor does; the deterministic
    /// simulation does not): a large state's image then never holds up ticks, heartbeats
    /// and proposals.
    pub fn set_background_snapshots(&mut self, on: bool) {
        self.background_snapshots = on;
    }

    /// A snapshot image is being written in the background.
    pub fn snapshot_in_flight(&self) -> bool {
        self.building.is_some()
    }

    /// Records every applied entry in [`Output::entries`].
    pub fn record_applied(&mut self, on: bool) {
        self.record = on;
    }

    // ---- inputs ----

    /// One tick of the logical clock.
    pub fn tick(&mut self) {
        self.node.tick();
        if self.is_leader() || self.pending.is_empty() {
            self.leaderless_ticks = 0;
        } else {
            self.leaderless_ticks += 1;
            if self.leaderless_ticks >= 2 * self.election_ticks {
                // Partitioned away from any leader: the caller must not wait forever.
                for (_, p) in std::mem::take(&mut self.pending) {
                    self.answers.push((p.id, Err(ProposeError::Uncertain)));
                }
                self.leaderless_ticks = 0;
            }
        }
        if let Some(t) = &mut self.transfer {
            t.ticks_left = t.ticks_left.saturating_sub(1);
            if t.ticks_left == 0 {
                let target = t.target;
                let id = t.id;
                self.transfer = None;
                self.answers
                    .push((id, Err(ProposeError::TransferFailed { target })));
            }
        }
        self.watch_snapshots();
        if let Some(n) = self.campaign_in {
            if n <= 1 {
                self.campaign_in = None;
                let raft = &self.node.raft;
                if raft.state == StateRole::Follower
                    && raft.leader_id == INVALID_ID
                    && raft.promotable()
                {
                    tracing::info!(
                        raft_id = raft.id,
                        term = raft.term,
                        "no leader yet after it became unreachable: campaigning"
                    );
                    let _ = self.node.campaign();
                }
            } else {
                self.campaign_in = Some(n - 1);
            }
        }
        self.rejitter();
    }

    /// A message from a peer. Messages for another raft id are ignored, and so is a
    /// `MsgSnapshot` whose image the transport has not stored complete (raft-rs would accept
    /// it and this node could not install it).
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.node.raft.id {
            tracing::debug!(to = msg.to, "ignoring a raft message for another node");
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            if let Some(desc) = Descriptor::decode(msg.get_snapshot().get_data()) {
                let stored = desc
                    .ok()
                    .map(|d| SnapshotStore::new(self.store.clone()).is_complete(&d));
                if !matches!(stored, Some(Ok(true))) {
                    tracing::warn!(
                        raft_id = self.node.raft.id,
                        from = msg.from,
                        "ignoring a snapshot whose image was not received"
                    );
                    return;
                }
            }
        }
        if let Err(e) = self.node.step(msg) {
            tracing::debug!(error = %e, "ignoring raft message");
        }
        self.rejitter();
    }

    /// Starts an election now (a pre-vote first).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        self.node.campaign()?;
        self.rejitter();
        Ok(())
    }

    /// Proposes `cmd`; its answer comes in [`Output::answers`] under `id` (ids are the
    /// caller's; keep them unique among proposals in flight).
    pub fn propose(&mut self, cmd: &Command, id: u64) -> Result<(), ProposeError> {
        self.ensure_leader()?;
        let data = codec::encode(cmd).map_err(|e| ProposeError::Encode(e.to_string()))?;
        let before = self.node.raft.raft_log.last_index();
        self.node
            .propose(id.to_le_bytes().to_vec(), data)
            .map_err(dropped)?;
        self.track(before, id, Kind::Command)
    }

    /// Proposes a membership change (one node at a time: a single-change ConfChangeV2, which
    /// raft-rs applies without joint consensus); answered under `id` when applied. Refuses,
    /// before proposing, what raft-rs would refuse or silently drop: another change still in
    /// flight, removing the last voter, removing or demoting the leader itself (transfer
    /// leadership first), removing a non-member. Adding an existing voter (or learner) as
    /// such is answered `Ok` at once.
    pub fn propose_membership(&mut self, change: Membership, id: u64) -> Result<(), ProposeError> {
        self.ensure_leader()?;
        let peer = change.raft_id();
        if peer == INVALID_ID {
            return Err(ProposeError::InvalidPeer);
        }
        let cs = self.node.raft.prs().conf().to_conf_state();
        if !cs.voters_outgoing.is_empty()
            || self.node.raft.has_pending_conf()
            || self.pending.values().any(|p| p.kind == Kind::Membership)
        {
            return Err(ProposeError::ConfChangeInProgress);
        }
        let voter = cs.voters.contains(&peer);
        let learner = cs.learners.contains(&peer);
        let me = self.node.raft.id;
        let change_type = match change {
            Membership::AddVoter(_) if voter => return self.done_now(id),
            Membership::AddVoter(_) => ConfChangeType::AddNode,
            Membership::AddLearner(_) if learner => return self.done_now(id),
            Membership::AddLearner(_) | Membership::Remove(_) if peer == me => {
                return Err(ProposeError::LeaderMustTransfer);
            }
            Membership::AddLearner(_) if voter && cs.voters.len() == 1 => {
                return Err(ProposeError::LastVoter);
            }
            Membership::AddLearner(_) => ConfChangeType::AddLearnerNode,
            Membership::Remove(_) if !voter && !learner => {
                return Err(ProposeError::NotAMember(peer));
            }
            Membership::Remove(_) if voter && cs.voters.len() == 1 => {
                return Err(ProposeError::LastVoter);
            }
            Membership::Remove(_) => ConfChangeType::RemoveNode,
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = peer;
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(vec![single].into());
        let before = self.node.raft.raft_log.last_index();
        self.node
            .propose_conf_change(id.to_le_bytes().to_vec(), cc)
            .map_err(dropped)?;
        tracing::info!(raft_id = me, ?change, "proposed a membership change");
        self.track(before, id, Kind::Membership)
    }

    /// Hands leadership to voter `target`; answered `Ok` under `id` once `target` leads (as
    /// far as this node knows), `TransferFailed` after an election timeout otherwise.
    pub fn transfer_leader(&mut self, target: u64, id: u64) -> Result<(), ProposeError> {
        self.ensure_leader()?;
        if target == self.node.raft.id {
            return self.done_now(id);
        }
        if !self.node.raft.prs().conf().voters().contains(target) {
            return Err(ProposeError::NotAVoter(target));
        }
        if let Some(old) = self.transfer.take() {
            self.answers.push((
                old.id,
                Err(ProposeError::TransferFailed { target: old.target }),
            ));
        }
        self.node.transfer_leader(target);
        self.transfer = Some(Transfer {
            id,
            target,
            ticks_left: self.election_ticks + 1,
        });
        Ok(())
    }

    /// The transport lost its connection to `peer` (a crashed process, a rebooting host).
    /// The leader stops pipelining to it (probe) and counts a snapshot in flight to it as
    /// failed; a voting follower whose leader it was
    /// forgets that leader (so it grants pre-votes at once instead of honouring the leader's
    /// lease) and campaigns (a pre-vote) at once if it is first in line (lowest raft id among
    /// the remaining voters), `2 × rank` ticks later otherwise unless a leader showed up
    /// (the first in line may be down too, or behind): every follower notices the same crash,
    /// and staggering avoids a split vote.
    pub fn peer_unreachable(&mut self, peer: u64) {
        self.node.report_unreachable(peer);
        let in_snapshot = self.is_leader()
            && self
                .node
                .raft
                .prs()
                .get(peer)
                .is_some_and(|pr| pr.state == ProgressState::Snapshot);
        if in_snapshot {
            // The connection carrying it is gone: resend once the peer is back.
            self.report_snapshot(peer, false);
        }
        let raft = &self.node.raft;
        let me = raft.id;
        if raft.state == StateRole::Leader || peer != raft.leader_id || !raft.promotable() {
            return;
        }
        let mut others: Vec<u64> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&id| id != peer)
            .collect();
        others.sort_unstable();
        let rank = others.iter().position(|&id| id == me).unwrap_or(0);
        tracing::info!(
            raft_id = me,
            leader = peer,
            term = raft.term,
            rank,
            "leader unreachable: electing a new one without waiting out the timeout"
        );
        self.node.raft.leader_id = INVALID_ID;
        if rank == 0 {
            let _ = self.node.campaign();
        } else {
            // At least one whole tick, so the first in line can finish its pre-vote and
            // vote round trips (a concurrent campaign would split the vote).
            self.campaign_in = Some(2 * rank);
        }
        self.rejitter();
    }

    /// The transport's verdict on a snapshot it carried to `peer`: delivered (raft-rs then
    /// waits for the peer's acknowledgement) or failed (raft-rs retries after a heartbeat).
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(peer, status);
        self.snapshot_wait.remove(&peer);
    }

    /// Leader: `peer` is still receiving the snapshot's image (it just read a chunk), so the
    /// wait for its answer starts over: a large image may take longer than the limit.
    pub fn snapshot_in_progress(&mut self, peer: u64) {
        if let Some(ticks) = self.snapshot_wait.get_mut(&peer) {
            *ticks = 0;
        }
    }

    /// Leader: counts the ticks peers wait in the Snapshot state; past the limit the snapshot
    /// is deemed lost.
    fn watch_snapshots(&mut self) {
        if !self.is_leader() {
            self.snapshot_wait.clear();
            return;
        }
        let limit = SNAPSHOT_WAIT_TIMEOUTS * self.election_ticks;
        let waiting: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(&id, _)| id)
            .collect();
        self.snapshot_wait.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_wait.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks > limit {
                tracing::warn!(
                    raft_id = self.node.raft.id,
                    peer = id,
                    "no answer to the snapshot sent to a peer: sending a new one"
                );
                self.report_snapshot(id, false);
            }
        }
    }

    // ---- the Ready loop ----

    /// Handles every pending `Ready` (see the module header) and returns what to send and
    /// what was decided. `messages` are in sending order.
    pub fn advance(&mut self) -> Result<Output, RaftError> {
        let mut msgs = Vec::new();
        let mut out = self.advance_with(&mut |m| msgs.extend(m))?;
        out.messages = msgs;
        Ok(out)
    }

    /// Like [`RaftCore::advance`], but hands messages to `send` as soon as they may go: the
    /// leader's `messages()` before the disk flush (replication in parallel with the local
    /// write), persisted messages after it.
    pub fn advance_with(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<Output, RaftError> {
        let mut out = Output::default();
        // A background snapshot finished: record it (its compaction and any retry to the
        // peer that asked go out with this round).
        self.poll_snapshot()?;
        // Each round consumes what raft produced; applying can produce more (a conf change
        // probing new peers, a snapshot made on request), so loop until quiet.
        for _ in 0..16 {
            if !self.node.has_ready() {
                break;
            }
            self.handle_ready(send, &mut out)?;
        }
        self.check_transfer();
        self.rejitter();
        out.answers.append(&mut self.answers);
        Ok(out)
    }

    fn handle_ready(
        &mut self,
        send: &mut dyn FnMut(Vec<Message>),
        out: &mut Output,
    ) -> Result<(), RaftError> {
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            send(ready.take_messages());
        }
        let mut wrote = false;
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(snap, out)?;
            wrote = true;
        }
        let committed = ready.take_committed_entries();
        wrote |= self.apply_entries(committed, out)?;
        if !ready.entries().is_empty() {
            self.store.append(ready.entries())?;
            wrote = true;
        }
        if let Some(hs) = ready.hs() {
            self.store.set_hard_state(hs)?;
            wrote = true;
        }
        if wrote || ready.must_sync() {
            self.store.flush()?;
        }
        if !ready.persisted_messages().is_empty() {
            send(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            // Durable with the next flush (or the snapshot's): raft itself only needs the
            // log and the vote on disk; a conf change below forces the flush now.
            self.store.set_commit(commit)?;
        }
        let msgs = light.take_messages();
        if !msgs.is_empty() {
            send(msgs);
        }
        if self.apply_entries(light.take_committed_entries(), out)? {
            self.store.flush()?;
        }
        self.node.advance_apply();
        if let Some(to) = self.timeout_now.take() {
            // The next Ready carries it.
            self.node.raft.send_timeout_now(to);
        }
        self.maybe_snapshot()?;
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot, out: &mut Output) -> Result<(), RaftError> {
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        // The image was received and verified before the message was stepped (see `step`).
        let state = load_state(&self.store, snap.get_data())?;
        self.store.apply_snapshot(snap)?;
        // Everything may have changed: tell watchers about every object, old and new.
        let old = std::mem::replace(&mut self.state, Arc::new(state));
        all_events(&old, &mut out.events);
        all_events(&self.state, &mut out.events);
        self.applied = index;
        self.last_snapshot = index;
        // Proposals the snapshot covers may or may not be in it.
        let covered: Vec<u64> = self.pending.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            if let Some(p) = self.pending.remove(&i) {
                out.answers.push((p.id, Err(ProposeError::Uncertain)));
            }
        }
        out.snapshot = Some((index, term));
        out.state_changed = true;
        tracing::info!(
            raft_id = self.node.raft.id,
            index,
            term,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Applies committed entries in order. Returns whether a conf change was applied (its
    /// commit must be durable before anyone acts on the new configuration).
    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<bool, RaftError> {
        let mut conf_changed = false;
        for entry in entries {
            let index = entry.index;
            let result: Option<Result<(), ProposeError>> = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => None, // a new leader's entry
                EntryType::EntryNormal => match codec::decode::<Command>(&entry.data) {
                    Ok(cmd) => {
                        let r = Arc::make_mut(&mut self.state).apply(&cmd, &mut out.events);
                        Some(r.map_err(ProposeError::from))
                    }
                    Err(e) => {
                        // Written by a newer or broken node: skip it identically everywhere.
                        tracing::error!(index, error = %e, "undecodable log entry skipped");
                        Some(Err(ProposeError::Undecodable(e.to_string())))
                    }
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    conf_changed = true;
                    let r = self.node.apply_conf_change(&cc);
                    Some(self.conf_changed(r, index))
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    conf_changed = true;
                    let r = self.node.apply_conf_change(&cc);
                    Some(self.conf_changed(r, index))
                }
            };
            self.applied = index;
            out.state_changed = true;
            self.answer(&entry, result, out);
            if self.record {
                out.entries.push(entry);
            }
        }
        Ok(conf_changed)
    }

    /// Records the outcome of `RawNode::apply_conf_change` for the entry at `index`.
    fn conf_changed(
        &mut self,
        applied: raft::Result<ConfState>,
        index: u64,
    ) -> Result<(), ProposeError> {
        match applied {
            Ok(cs) => {
                if let Err(e) = self.store.set_conf_state(&cs) {
                    // Only the diagnostic copy: restarts use the snapshot's configuration.
                    tracing::warn!(error = %e, "cannot record the new configuration");
                }
                tracing::info!(
                    raft_id = self.node.raft.id,
                    index,
                    voters = ?cs.voters,
                    learners = ?cs.learners,
                    "membership changed"
                );
                if self.is_leader() && !cs.voters.contains(&self.node.raft.id) {
                    self.step_down_removed();
                }
                Ok(())
            }
            Err(e) => {
                // Deterministic: every node refuses the same entry the same way.
                tracing::error!(index, error = %e, "conf change refused by raft");
                Err(ProposeError::ConfChange(e.to_string()))
            }
        }
    }

    /// This leader just applied its own removal or demotion. `propose_membership` refuses that
    /// change on the leader, but the node it removes can win an election while the change is
    /// still uncommitted, then commit and apply it as leader. raft-rs keeps such a node leading
    /// (an untested branch of `post_conf_change`) and panics at its next commit check (its own
    /// progress is gone). So it steps down at once, in the same term (it cannot be re-elected:
    /// it is no voter now), and once the `Ready` is done (raft-rs refuses new messages from a
    /// follower in between) tells a caught-up voter, if any, to campaign at once instead of
    /// after an election timeout.
    fn step_down_removed(&mut self) {
        let raft = &mut self.node.raft;
        let last = raft.raft_log.last_index();
        let voters = raft.prs().conf().voters().ids();
        let successor = raft
            .prs()
            .iter()
            .filter(|(id, pr)| voters.contains(**id) && pr.matched == last)
            .map(|(&id, _)| id)
            .min();
        tracing::warn!(
            raft_id = raft.id,
            term = raft.term,
            ?successor,
            "this leader was removed from the voters: stepping down"
        );
        let term = raft.term;
        raft.become_follower(term, INVALID_ID);
        self.timeout_now = successor;
    }

    /// Answers the proposals this entry decides: its own, and any older one it overtook.
    fn answer(
        &mut self,
        entry: &Entry,
        result: Option<Result<(), ProposeError>>,
        out: &mut Output,
    ) {
        let mut result = result;
        while let Some(first) = self.pending.first_entry() {
            let index = *first.key();
            if index > entry.index {
                break;
            }
            let p = first.remove();
            let same = index == entry.index && p.term == entry.term;
            let answer = if same && entry.context.as_ref() == p.id.to_le_bytes().as_slice() {
                result.take().unwrap_or(Ok(()))
            } else if same
                && p.kind == Kind::Membership
                && entry.get_entry_type() == EntryType::EntryNormal
                && entry.data.is_empty()
            {
                // raft-rs replaced the conf change with an empty entry (it was not safe).
                Err(ProposeError::ConfChangeInProgress)
            } else if index == entry.index {
                Err(ProposeError::Dropped)
            } else {
                Err(ProposeError::Uncertain)
            };
            out.answers.push((p.id, answer));
        }
        if let Some(Err(e)) = result {
            tracing::debug!(index = entry.index, error = %e, "command refused by apply");
        }
    }

    fn check_transfer(&mut self) {
        let Some(t) = &self.transfer else { return };
        if self.node.raft.leader_id == t.target {
            let id = t.id;
            self.transfer = None;
            self.answers.push((id, Ok(())));
        }
    }

    /// Snapshots the state at the applied index and compacts the log behind it, when
    /// `snapshot_entries` entries were applied since the last one, when only the `initialize`
    /// placeholder exists (a joining peer must start from a real snapshot), or when a peer
    /// asked for a snapshot the stored one cannot serve. With background snapshots the image
    /// is written by a thread from the state as of now (an `Arc`: no copy) while this node
    /// goes on; [`RaftCore::advance_with`] picks the result up.
    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        if self.building.is_some() {
            return self.poll_snapshot();
        }
        let requested = self.store.take_snapshot_request();
        let fresh = self.applied > self.last_snapshot;
        let due = self.applied >= self.last_snapshot + self.snapshot_entries
            || (self.last_snapshot == 0 && self.applied > 0)
            || (requested.is_some() && fresh);
        if !due || !fresh {
            return Ok(());
        }
        let at = SnapshotAt {
            index: self.applied,
            term: self.node.raft.raft_log.term(self.applied)?,
            conf: self.node.raft.prs().conf().to_conf_state(),
            requested,
        };
        let raft_id = self.node.raft.id;
        // In line when it is quick (a small state), and always for the first real snapshot:
        // until it exists the log starts at index 1, and a joining peer would be sent entries
        // without the founding configuration instead of a snapshot.
        let st = &self.state;
        let small = st.tasks.len() + st.services.len() + st.nodes.len() < BACKGROUND_OBJECTS;
        if !self.background_snapshots || self.last_snapshot == 0 || small {
            // Streamed from the state into bounded chunks: no size is too large to snapshot.
            let desc = snapshot::write_image(&self.store, raft_id, at.index, at.term, &self.state)?;
            return self.take_snapshot(at, desc);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (store, state) = (self.store.clone(), self.state.clone());
        let (index, term) = (at.index, at.term);
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let _ = tx.send(snapshot::write_image(&store, raft_id, index, term, &state));
            });
        match spawned {
            Ok(_) => self.building = Some((at, rx)),
            Err(e) => tracing::warn!(error = %e, "cannot start a snapshot thread: retrying later"),
        }
        Ok(())
    }

    /// Shutdown: waits (at most `limit`) for a background snapshot's image and records it,
    /// so a restart replays less of the log.
    pub fn finish_snapshot(&mut self, limit: std::time::Duration) -> Result<(), RaftError> {
        self.poll_snapshot_within(limit)
    }

    /// Picks up a background snapshot once its image is written.
    fn poll_snapshot(&mut self) -> Result<(), RaftError> {
        self.poll_snapshot_within(std::time::Duration::ZERO)
    }

    fn poll_snapshot_within(&mut self, limit: std::time::Duration) -> Result<(), RaftError> {
        use std::sync::mpsc::RecvTimeoutError;
        let Some((_, rx)) = &self.building else {
            return Ok(());
        };
        let result = match rx.recv_timeout(limit) {
            Err(RecvTimeoutError::Timeout) => return Ok(()),
            Ok(r) => r,
            Err(RecvTimeoutError::Disconnected) => Err(ImageError::Bad {
                id: 0,
                why: "the snapshot thread died".into(),
            }),
        };
        let Some((at, _)) = self.building.take() else {
            return Ok(());
        };
        match result {
            Ok(desc) if at.index > self.last_snapshot => self.take_snapshot(at, desc),
            Ok(desc) => {
                // A newer snapshot (one received from the leader) came first.
                self.store.delete_image(desc.id)?;
                Ok(())
            }
            Err(e) => {
                tracing::error!(raft_id = self.node.raft.id, index = at.index, error = %e, "snapshot image not written: retrying later");
                let id = snapshot::image_id(self.node.raft.id, at.index, at.term);
                self.store.delete_image(id)?;
                Ok(())
            }
        }
    }

    /// Records the snapshot whose image `desc` was written at `at`, compacts behind it.
    fn take_snapshot(&mut self, at: SnapshotAt, desc: Descriptor) -> Result<(), RaftError> {
        let c = &at.conf;
        let listed: Vec<u64> = (c.voters.iter().chain(&c.learners))
            .chain(c.voters_outgoing.iter().chain(&c.learners_next))
            .copied()
            .collect();
        self.store
            .create_snapshot(at.index, at.conf, desc.encode())?;
        // Keep a margin of log behind the snapshot so a briefly lagging follower catches up
        // from the log rather than with a whole snapshot.
        let keep = self.snapshot_entries / 2;
        let compact_to = at.index.saturating_sub(keep);
        if compact_to > 1 {
            self.store.compact(compact_to)?;
        }
        self.store.flush()?;
        self.last_snapshot = at.index;
        tracing::debug!(
            raft_id = self.node.raft.id,
            index = at.index,
            bytes = desc.size,
            "snapshot taken, log compacted behind it"
        );
        // A peer that asked while the image was being written may be served by it: no
        // second image for it then (only if the new one does not list it).
        let during = self.store.take_snapshot_request();
        for peer in at.requested.into_iter().chain(during) {
            if !listed.contains(&peer) {
                self.store.request_snapshot(peer);
            } else if self.is_leader() && self.node.raft.prs().get(peer).is_some() {
                // Retry now instead of at the next heartbeat response.
                self.node.raft.send_append(peer);
            }
        }
        Ok(())
    }

    // ---- helpers ----

    fn ensure_leader(&self) -> Result<(), ProposeError> {
        if self.node.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.node.raft.leader_id,
            });
        }
        Ok(())
    }

    fn track(&mut self, before: u64, id: u64, kind: Kind) -> Result<(), ProposeError> {
        let index = self.node.raft.raft_log.last_index();
        if index <= before {
            return Err(ProposeError::Dropped);
        }
        let term = self.node.raft.term;
        if let Some(old) = self.pending.insert(index, Pending { id, term, kind }) {
            // Our log was cut back below an earlier proposal of ours and the index reused:
            // the earlier entry is gone for good.
            self.answers.push((old.id, Err(ProposeError::Dropped)));
        }
        Ok(())
    }

    fn done_now(&mut self, id: u64) -> Result<(), ProposeError> {
        self.answers.push((id, Ok(())));
        Ok(())
    }

    fn rejitter(&mut self) {
        if let Some(rng) = &mut self.jitter {
            let raft = &mut self.node.raft;
            if raft.election_elapsed == 0 {
                let min = self.election_ticks as u64;
                let t = min + rng.below(min);
                raft.set_randomized_election_timeout(t as usize);
            }
        }
    }

    fn is_sole_voter(&self) -> bool {
        let voters: Vec<u64> = self.node.raft.prs().conf().voters().ids().iter().collect();
        voters == [self.node.raft.id]
    }

    // ---- reads ----

    pub fn raft_id(&self) -> u64 {
        self.node.raft.id
    }
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }
    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }
    /// 0 when no leader is known.
    pub fn leader_id(&self) -> u64 {
        self.node.raft.leader_id
    }
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }
    pub fn commit(&self) -> u64 {
        self.node.raft.raft_log.committed
    }
    pub fn applied(&self) -> u64 {
        self.applied
    }
    /// Index of the last entry in the log (persisted or not).
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }
    /// The configuration as of the applied index.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }
    /// Index of the latest local snapshot (0: none yet).
    pub fn snapshot_index(&self) -> u64 {
        self.last_snapshot
    }
    /// Proposals (and membership changes) waiting for their answer.
    pub fn pending_proposals(&self) -> usize {
        self.pending.len()
    }
    /// The storage (read-only uses: tests, diagnostics).
    pub fn storage(&self) -> &SledStorage {
        &self.store
    }

    /// What [`super::RaftHandle`] publishes.
    pub fn published(&self) -> Published {
        let raft = &self.node.raft;
        let cs = raft.prs().conf().to_conf_state();
        let mut voters = cs.voters.clone();
        voters.sort_unstable();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        let mut progress = Vec::new();
        if raft.state == StateRole::Leader {
            for (&id, pr) in raft.prs().iter() {
                progress.push(PeerProgress {
                    raft_id: id,
                    matched: pr.matched,
                    recent_active: id == raft.id || pr.recent_active,
                    voter: voters.contains(&id),
                });
            }
            progress.sort_unstable_by_key(|p| p.raft_id);
        }
        let is_leader = raft.state == StateRole::Leader;
        // A leader's first entry of its term (raft-rs appends an empty one on election) is
        // applied once the applied entry carries the current term: everything committed by
        // earlier leaders is then applied here too.
        let leader_ready = is_leader
            && self.applied > 0
            && raft.raft_log.term(self.applied).ok() == Some(raft.term);
        Published {
            state: self.state.clone(),
            raft_id: raft.id,
            is_leader,
            leader_ready,
            leader_id: raft.leader_id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: self.applied,
            voters,
            learners,
            progress,
        }
    }
}

/// The state a snapshot's data stands for: the image it names, or (written by an older
/// version) the whole state encoded at once; empty data is the empty state.
fn load_state(store: &SledStorage, data: &[u8]) -> Result<ClusterState, RaftError> {
    if data.is_empty() {
        return Ok(ClusterState::default());
    }
    match Descriptor::decode(data) {
        Some(Ok(desc)) => Ok(snapshot::restore(store, &desc)?),
        Some(Err(e)) => Err(RaftError::Storage(super::storage::StorageError::Corrupt(
            format!("snapshot descriptor: {e}"),
        ))),
        None => Ok(codec::decode(data)?),
    }
}

fn dropped(e: raft::Error) -> ProposeError {
    match e {
        raft::Error::ProposalDropped => ProposeError::Dropped,
        e => {
            tracing::warn!(error = %e, "proposal failed");
            ProposeError::Dropped
        }
    }
}

fn all_events(state: &ClusterState, events: &mut Vec<Event>) {
    events.extend(state.nodes.keys().cloned().map(Event::Node));
    events.extend(state.services.keys().cloned().map(Event::Service));
    events.extend(state.tasks.keys().cloned().map(Event::Task));
}

fn merge(into: &mut Output, more: Output) {
    into.messages.extend(more.messages);
    into.answers.extend(more.answers);
    into.events.extend(more.events);
    into.state_changed |= more.state_changed;
    into.entries.extend(more.entries);
    if more.snapshot.is_some() {
        into.snapshot = more.snapshot;
    }
}
