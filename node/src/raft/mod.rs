//! The Raft driver: owns the raft-rs `RawNode`, its sled-backed log and the
//! replicated [`ClusterState`]. The only code that changes cluster state.
//!
//! Shape: an actor ([`RaftNode::run`]) with a cloneable [`RaftHandle`]. The
//! handle proposes commands (the reply comes when the entry is applied, with
//! apply's verdict) and subscribes to [`Published`] snapshots of the state.
//! Invariants:
//! - every `Ready` is handled in raft-rs's documented order: send messages,
//!   apply a snapshot, apply committed entries, append entries, persist the
//!   hard state, flush (once per Ready), only then send persisted messages,
//!   `advance`, the same for the `LightReady`, `advance_apply`;
//! - state changes only by applying committed entries in log order; the
//!   applied index is stored atomically with the state-machine snapshot, and
//!   a restart rebuilds state from that snapshot plus the log after it, so no
//!   entry is applied twice or skipped;
//! - pre-vote and check-quorum are on; the log is compacted behind a
//!   snapshot every `snapshot_entries` applied entries.

mod logging;
pub mod storage;

use crate::store::{ApplyError, ClusterState, Event};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use skein_protocol::{codec, Command};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use storage::SledStorage;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A consistent view of the cluster as of `applied`.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub state: Arc<ClusterState>,
    pub raft_id: u64,
    pub is_leader: bool,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("{0}")]
    Rejected(#[from] ApplyError),
    #[error("the proposal was dropped (leadership changed): retry")]
    Dropped,
    #[error("the raft node is shutting down")]
    Stopped,
    #[error("cannot encode the command: {0}")]
    Encode(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("raft storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("state snapshot on disk is unreadable: {0}")]
    Snapshot(#[from] codec::CodecError),
}

type Reply = oneshot::Sender<Result<(), ProposeError>>;

enum Request {
    Propose {
        cmd: Box<Command>,
        reply: Reply,
    },
    /// A message from a peer (the transport issue wires this up).
    Step(Message),
}

#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Request>,
    published: watch::Receiver<Arc<Published>>,
    events: broadcast::Sender<Event>,
}

impl RaftHandle {
    /// Proposes `cmd` and waits until it is applied (or refused by apply).
    pub async fn propose(&self, cmd: Command) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Propose {
                cmd: Box::new(cmd),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
    /// Feeds a Raft message received from a peer.
    pub async fn step(&self, msg: Message) {
        let _ = self.tx.send(Request::Step(msg)).await;
    }
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.clone()
    }
    pub fn current(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }
    /// What changed, after each apply (lagging receivers miss events and
    /// must re-read [`RaftHandle::current`]).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Timing and compaction settings.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub snapshot_entries: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 1000,
        }
    }
}

pub struct RaftNode {
    node: RawNode<SledStorage>,
    store: SledStorage,
    state: Arc<ClusterState>,
    applied: u64,
    last_snapshot: u64,
    opts: RaftOptions,
    pending: HashMap<u64, Reply>,
    /// Answers for applied proposals, sent only after the state that
    /// contains them is published: a caller that reads the state after its
    /// answer must see its own write.
    answered: Vec<(Reply, Result<(), ProposeError>)>,
    next_proposal: u64,
    rx: mpsc::Receiver<Request>,
    published: watch::Sender<Arc<Published>>,
    events: broadcast::Sender<Event>,
    /// Messages to peers (None: a single voter has no peers).
    outbound: Option<mpsc::UnboundedSender<Message>>,
    last_term: u64,
}

impl RaftNode {
    /// Opens the log in `db`. An empty log becomes a new cluster whose only
    /// voter is `raft_id`; an existing one resumes where it stopped.
    pub fn open(
        db: &sled::Db,
        raft_id: u64,
        opts: RaftOptions,
    ) -> Result<(RaftNode, RaftHandle), RaftError> {
        let store = SledStorage::open(db)?;
        if !store.is_initialized() {
            let mut cs = ConfState::default();
            cs.mut_voters().push(raft_id);
            store.initialize(cs)?;
            store.flush()?;
            tracing::info!(raft_id, "initialized a new single-voter raft log");
        }
        let (state, applied) = match store.snapshot_data()? {
            Some((meta, data)) if !data.is_empty() => {
                let state: ClusterState = codec::decode(&data)?;
                (state, meta.index)
            }
            Some((meta, _)) => (ClusterState::default(), meta.index),
            None => (ClusterState::default(), 0),
        };
        let cfg = raft::Config {
            id: raft_id,
            election_tick: opts.election_ticks,
            heartbeat_tick: opts.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let node = RawNode::new(&cfg, store.clone(), &logging::logger())?;
        let (tx, rx) = mpsc::channel(1024);
        let first = Arc::new(Published {
            state: Arc::new(state.clone()),
            raft_id,
            ..Default::default()
        });
        let (published, published_rx) = watch::channel(first);
        let (events, _) = broadcast::channel(4096);
        let handle = RaftHandle {
            tx,
            published: published_rx,
            events: events.clone(),
        };
        let rn = RaftNode {
            node,
            store,
            state: Arc::new(state),
            applied,
            last_snapshot: applied,
            opts,
            pending: HashMap::new(),
            answered: Vec::new(),
            next_proposal: 1,
            rx,
            published,
            events,
            outbound: None,
            last_term: 0,
        };
        Ok((rn, handle))
    }

    /// Where messages for peers go (the transport).
    pub fn set_outbound(&mut self, tx: mpsc::UnboundedSender<Message>) {
        self.outbound = Some(tx);
    }

    fn single_voter(&self) -> bool {
        let cs = self.node.raft.prs().conf();
        let voters: Vec<u64> = cs.voters().ids().iter().collect();
        voters == [self.node.raft.id]
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RaftError> {
        if self.single_voter() {
            // Nobody to wait for: lead at once instead of after an election timeout.
            self.node.campaign()?;
        }
        let mut ticker = tokio::time::interval(self.opts.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.handle_ready()?;
        self.publish();
        self.send_answers();
        loop {
            tokio::select! {
                _ = ticker.tick() => { self.node.tick(); }
                req = self.rx.recv() => match req {
                    Some(r) => {
                        self.handle_request(r);
                        // Batch whatever else is queued into this Ready.
                        while let Ok(r) = self.rx.try_recv() {
                            self.handle_request(r);
                        }
                    }
                    None => return Ok(()),
                },
                _ = shutdown.changed() => {
                    self.store.flush()?;
                    for (_, reply) in self.pending.drain() {
                        let _ = reply.send(Err(ProposeError::Stopped));
                    }
                    tracing::info!("raft node stopped");
                    return Ok(());
                }
            }
            self.handle_ready()?;
            self.publish();
            self.send_answers();
        }
    }

    fn send_answers(&mut self) {
        for (reply, result) in self.answered.drain(..) {
            let _ = reply.send(result);
        }
    }

    fn handle_request(&mut self, req: Request) {
        match req {
            Request::Propose { cmd, reply } => {
                if self.node.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(ProposeError::NotLeader {
                        leader: self.node.raft.leader_id,
                    }));
                    return;
                }
                let data = match codec::encode(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Encode(e.to_string())));
                        return;
                    }
                };
                let id = self.next_proposal;
                self.next_proposal += 1;
                match self.node.propose(id.to_le_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(ProposeError::Dropped));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "proposal failed");
                        let _ = reply.send(Err(ProposeError::Dropped));
                    }
                }
            }
            Request::Step(msg) => {
                if let Err(e) = self.node.step(msg) {
                    tracing::debug!(error = %e, "ignoring raft message");
                }
            }
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        if let Some(out) = &self.outbound {
            for m in msgs {
                let _ = out.send(m);
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), RaftError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            let state: ClusterState = codec::decode(snap.get_data())?;
            self.applied = snap.get_metadata().index;
            self.last_snapshot = self.applied;
            self.state = Arc::new(state);
            self.store.apply_snapshot(snap)?;
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;
        if !ready.entries().is_empty() {
            self.store.append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.store.set_hard_state(hs)?;
        }
        self.store.flush()?;
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.node.advance_apply();
        self.maybe_snapshot()?;
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        let mut events = Vec::new();
        for entry in entries {
            self.applied = entry.index;
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if entry.data.is_empty() {
                        continue; // a new leader's empty entry
                    }
                    let result = match codec::decode::<Command>(&entry.data) {
                        Ok(cmd) => Arc::make_mut(&mut self.state).apply(&cmd, &mut events),
                        Err(e) => {
                            // Written by a newer or broken node: skip it identically everywhere.
                            tracing::error!(index = entry.index, error = %e, "undecodable log entry skipped");
                            Ok(())
                        }
                    };
                    if let Some(reply) = self.proposal_reply(&entry.context) {
                        self.answered
                            .push((reply, result.map_err(ProposeError::from)));
                    } else if let Err(e) = result {
                        tracing::debug!(index = entry.index, error = %e, "command refused by apply");
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.store.set_conf_state(&cs)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(raft::Error::CodecError)?;
                    let cs = self.node.apply_conf_change(&cc)?;
                    self.store.set_conf_state(&cs)?;
                }
            }
        }
        for e in events {
            let _ = self.events.send(e);
        }
        Ok(())
    }

    fn proposal_reply(&mut self, context: &[u8]) -> Option<Reply> {
        let bytes: [u8; 8] = context.try_into().ok()?;
        self.pending.remove(&u64::from_le_bytes(bytes))
    }

    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        if self.applied < self.last_snapshot + self.opts.snapshot_entries {
            return Ok(());
        }
        let data = codec::encode(self.state.as_ref())?;
        let cs = self.node.raft.prs().conf().to_conf_state();
        self.store.create_snapshot(self.applied, cs, data)?;
        self.store.compact(self.applied)?;
        self.store.flush()?;
        self.last_snapshot = self.applied;
        tracing::info!(index = self.applied, "log compacted behind a snapshot");
        Ok(())
    }

    fn publish(&mut self) {
        let raft = &self.node.raft;
        let term = raft.term;
        if term != self.last_term {
            // Proposals from an earlier term may never commit: tell their callers.
            if raft.state != StateRole::Leader {
                for (_, reply) in self.pending.drain() {
                    let _ = reply.send(Err(ProposeError::Dropped));
                }
            }
            self.last_term = term;
        }
        let next = Published {
            state: self.state.clone(),
            raft_id: raft.id,
            is_leader: raft.state == StateRole::Leader,
            leader_id: raft.leader_id,
            term,
            commit: raft.raft_log.committed,
            applied: self.applied,
        };
        self.published.send_if_modified(|cur| {
            let changed = !Arc::ptr_eq(&cur.state, &next.state)
                || cur.is_leader != next.is_leader
                || cur.leader_id != next.leader_id
                || cur.term != next.term
                || cur.applied != next.applied;
            if changed {
                *cur = Arc::new(next);
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests;
