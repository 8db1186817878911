//! The Raft driver: the only code that changes cluster state. It owns the raft-rs
//! `RawNode`, its sled-backed log ([`storage`]) and the replicated [`ClusterState`].
//!
//! Two layers:
//! - [`RaftCore`] (`raft_core.rs`): sans-IO. Ticks, peer messages and requests in; `advance()`
//!   handles the `Ready`s and returns messages to send and answered proposals. All Raft rules
//!   live there (Ready order, apply, snapshots and compaction, membership, fast elections).
//! - [`RaftNode`] (this file): the tokio actor around one core, with a cloneable
//!   [`RaftHandle`]. The handle proposes commands and membership changes (answered when
//!   applied, with apply's verdict), feeds peer messages and "peer unreachable" reports from
//!   the transport, and subscribes to [`Published`] views of the state.
//!
//! Snapshots are images in bounded chunks ([`snapshot`]); [`RaftHandle::images`] gives the
//! transport what it needs to serve and receive them, [`RaftHandle::snapshot_progress`] keeps
//! the leader waiting while a peer still reads one.
//!
//! Invariants of the actor:
//! - the state containing an applied proposal is published BEFORE the proposal is answered:
//!   a caller that reads the state after its answer sees its own write;
//! - requests queued together are handled in one batch: one `Ready`, one sled flush;
//! - a node that is the only voter campaigns at once on start;
//! - messages to peers go to the channel given to [`RaftNode::set_outbound`] (the transport);
//!   without one (a single voter) they are dropped.
//!
//! Joining: [`RaftNode::open`] founds a single-voter cluster on an empty log;
//! [`RaftNode::open_joining`] leaves an empty log uninitialised and waits for the leader to add
//! this raft id ([`RaftHandle::add_learner`] / [`RaftHandle::add_voter`]) and send a snapshot.
//! A node that joined must always be reopened with `open_joining` (or `open` once its log is
//! initialised): `open` on an empty log would found a second cluster.

mod logging;
mod raft_core;
#[cfg(test)]
mod sim;
pub mod snapshot;
pub mod storage;

pub use raft_core::{Membership, Output, RaftCore, SplitMix64};

use crate::store::{ApplyError, ClusterState, Event};
use raft::eraftpb::Message;
use skein_protocol::{codec, Command};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A consistent view of the cluster as of `applied`.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub state: Arc<ClusterState>,
    pub raft_id: u64,
    pub is_leader: bool,
    /// This node leads and has applied the first entry of its own term, so its state holds
    /// everything any earlier leader committed. Leader-only loops (orchestrator, liveness,
    /// voter keeper) act only then: before it, they could act on a view that misses a
    /// committed entry (and, e.g., start a second task for a slot).
    pub leader_ready: bool,
    /// 0 when no leader is known.
    pub leader_id: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// Voters of the configuration as of `applied`, sorted.
    pub voters: Vec<u64>,
    /// Learners (replicas that do not vote), sorted.
    pub learners: Vec<u64>,
    /// On the leader only (empty elsewhere): every voter's and learner's replication
    /// progress, sorted by raft id. `matched` is as of the last publish (publishes follow
    /// state, role and membership changes, not every acknowledgement).
    pub progress: Vec<PeerProgress>,
}

/// The leader's view of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerProgress {
    pub raft_id: u64,
    /// Highest log index known to be replicated on the peer.
    pub matched: u64,
    /// The peer answered within the last election timeout (check-quorum's measure).
    pub recent_active: bool,
    pub voter: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("{0}")]
    Rejected(#[from] ApplyError),
    #[error("the proposal was dropped (leadership changed): retry")]
    Dropped,
    #[error(
        "leadership was lost before the proposal committed: it may or may not be applied; \
         check the state before retrying"
    )]
    Uncertain,
    #[error("the raft node is shutting down")]
    Stopped,
    #[error("cannot encode the command: {0}")]
    Encode(String),
    #[error("the committed entry cannot be decoded ({0}): a newer or broken node wrote it; it was skipped")]
    Undecodable(String),
    #[error("another membership change is still being applied: retry when it is done")]
    ConfChangeInProgress,
    #[error("raft id 0 is not a valid node id")]
    InvalidPeer,
    #[error("raft node {0} is not a member of the cluster")]
    NotAMember(u64),
    #[error("raft node {0} is not a voter: only voters can lead")]
    NotAVoter(u64),
    #[error("cannot remove or demote the last voter: the cluster would have no quorum at all")]
    LastVoter,
    #[error("this node is the leader: transfer leadership to another voter first")]
    LeaderMustTransfer,
    #[error("raft refused the membership change: {0}")]
    ConfChange(String),
    #[error("leadership did not move to raft node {target} within an election timeout: check that it is up and caught up, then retry")]
    TransferFailed { target: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("raft storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("state snapshot is unreadable: {0}")]
    Snapshot(#[from] codec::CodecError),
    #[error("snapshot image: {0}")]
    Image(#[from] snapshot::ImageError),
}

type Reply = oneshot::Sender<Result<(), ProposeError>>;

enum Request {
    Propose {
        cmd: Box<Command>,
        reply: Reply,
    },
    Membership {
        change: Membership,
        reply: Reply,
    },
    TransferLeader {
        target: u64,
        reply: Reply,
    },
    /// A message from a peer.
    Step(Message),
    PeerUnreachable(u64),
    ReportSnapshot {
        peer: u64,
        delivered: bool,
    },
    SnapshotProgress(u64),
}

#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Request>,
    published: watch::Receiver<Arc<Published>>,
    events: broadcast::Sender<Event>,
    images: snapshot::SnapshotStore,
}

impl RaftHandle {
    async fn ask(&self, make: impl FnOnce(Reply) -> Request) -> Result<(), ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Proposes `cmd` and waits until it is applied (or refused by apply).
    pub async fn propose(&self, cmd: Command) -> Result<(), ProposeError> {
        self.ask(|reply| Request::Propose {
            cmd: Box::new(cmd),
            reply,
        })
        .await
    }

    /// Adds `raft_id` as a voter (or promotes a learner); answered once applied. Add a node
    /// with an empty log as a learner first and promote it once it has caught up
    /// ([`Published::progress`]), so the quorum never waits for it.
    pub async fn add_voter(&self, raft_id: u64) -> Result<(), ProposeError> {
        self.membership(Membership::AddVoter(raft_id)).await
    }

    /// Adds `raft_id` as a learner (gets the log, does not vote), or demotes a voter.
    pub async fn add_learner(&self, raft_id: u64) -> Result<(), ProposeError> {
        self.membership(Membership::AddLearner(raft_id)).await
    }

    /// Removes a voter or learner; answered once applied. Refuses the leader itself
    /// ([`ProposeError::LeaderMustTransfer`]) and the last voter.
    pub async fn remove_node(&self, raft_id: u64) -> Result<(), ProposeError> {
        self.membership(Membership::Remove(raft_id)).await
    }

    /// Any membership change (see [`RaftCore::propose_membership`]).
    pub async fn membership(&self, change: Membership) -> Result<(), ProposeError> {
        self.ask(|reply| Request::Membership { change, reply })
            .await
    }

    /// Hands leadership to voter `raft_id`; answered once it leads, or
    /// [`ProposeError::TransferFailed`] after an election timeout.
    pub async fn transfer_leader(&self, raft_id: u64) -> Result<(), ProposeError> {
        self.ask(|reply| Request::TransferLeader {
            target: raft_id,
            reply,
        })
        .await
    }

    /// Feeds a Raft message received from a peer.
    pub async fn step(&self, msg: Message) {
        let _ = self.tx.send(Request::Step(msg)).await;
    }

    /// The transport lost its connection to `raft_id`: if that is the leader, this node
    /// starts a (pre-)election at once instead of waiting out the election timeout.
    pub async fn peer_unreachable(&self, raft_id: u64) {
        let _ = self.tx.send(Request::PeerUnreachable(raft_id)).await;
    }

    /// The transport's verdict on a `MsgSnapshot` it carried to `raft_id` (all chunks
    /// delivered, or the transfer failed). Without it the leader waits ten election timeouts
    /// before sending a snapshot again.
    pub async fn report_snapshot(&self, raft_id: u64, delivered: bool) {
        let _ = self
            .tx
            .send(Request::ReportSnapshot {
                peer: raft_id,
                delivered,
            })
            .await;
    }

    /// A peer is still reading the image of the snapshot sent to `raft_id` (leader): the
    /// leader keeps waiting for it instead of deeming the snapshot lost.
    pub async fn snapshot_progress(&self, raft_id: u64) {
        let _ = self.tx.send(Request::SnapshotProgress(raft_id)).await;
    }

    /// This node's snapshot images, for the transport (serve chunks, stage received ones).
    pub fn images(&self) -> &snapshot::SnapshotStore {
        &self.images
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

/// The actor: one [`RaftCore`] driven by a ticker, the handle's requests and peer messages.
pub struct RaftNode {
    core: RaftCore,
    tick: Duration,
    /// Callers waiting for an answer, by proposal id.
    replies: HashMap<u64, Reply>,
    next_id: u64,
    rx: mpsc::Receiver<Request>,
    published: watch::Sender<Arc<Published>>,
    events: broadcast::Sender<Event>,
    /// Messages to peers (None: a single voter has no peers).
    outbound: Option<mpsc::UnboundedSender<Message>>,
}

impl RaftNode {
    /// Opens the log in `db`. An empty log becomes a new cluster whose only
    /// voter is `raft_id`; an existing one resumes where it stopped.
    pub fn open(
        db: &sled::Db,
        raft_id: u64,
        opts: RaftOptions,
    ) -> Result<(RaftNode, RaftHandle), RaftError> {
        let core = RaftCore::open(db, raft_id, &opts)?;
        Ok(Self::with_core(core, &opts))
    }

    /// Opens the log in `db` to join an existing cluster: an empty log waits, uninitialised,
    /// for the leader to add `raft_id` and send a snapshot; an existing one resumes.
    pub fn open_joining(
        db: &sled::Db,
        raft_id: u64,
        opts: RaftOptions,
    ) -> Result<(RaftNode, RaftHandle), RaftError> {
        let core = RaftCore::open_joining(db, raft_id, &opts)?;
        Ok(Self::with_core(core, &opts))
    }

    fn with_core(mut core: RaftCore, opts: &RaftOptions) -> (RaftNode, RaftHandle) {
        core.set_background_snapshots(true);
        let (tx, rx) = mpsc::channel(1024);
        let (published, published_rx) = watch::channel(Arc::new(core.published()));
        let (events, _) = broadcast::channel(4096);
        let handle = RaftHandle {
            tx,
            published: published_rx,
            events: events.clone(),
            images: snapshot::SnapshotStore::new(core.storage().clone()),
        };
        let node = RaftNode {
            core,
            tick: opts.tick,
            replies: HashMap::new(),
            next_id: 1,
            rx,
            published,
            events,
            outbound: None,
        };
        (node, handle)
    }

    /// Where messages for peers go (the transport).
    pub fn set_outbound(&mut self, tx: mpsc::UnboundedSender<Message>) {
        self.outbound = Some(tx);
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), RaftError> {
        // Replays the log after the snapshot, then campaigns if this is the only voter.
        let mut out = self.core.start()?;
        send(&self.outbound, std::mem::take(&mut out.messages));
        self.finish(out);
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.core.tick(),
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
                    // Bounded: an image of hundreds of MB is written in about a second.
                    if let Err(e) = self.core.finish_snapshot(Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "snapshot not recorded at shutdown");
                    }
                    self.core.storage().flush()?;
                    for (_, reply) in self.replies.drain() {
                        let _ = reply.send(Err(ProposeError::Stopped));
                    }
                    tracing::info!("raft node stopped");
                    return Ok(());
                }
            }
            let outbound = &self.outbound;
            let out = self.core.advance_with(&mut |msgs| send(outbound, msgs))?;
            self.finish(out);
        }
    }

    fn handle_request(&mut self, req: Request) {
        let id = self.next_id;
        let (result, reply) = match req {
            Request::Propose { cmd, reply } => (self.core.propose(&cmd, id), reply),
            Request::Membership { change, reply } => {
                (self.core.propose_membership(change, id), reply)
            }
            Request::TransferLeader { target, reply } => {
                (self.core.transfer_leader(target, id), reply)
            }
            Request::Step(msg) => {
                self.core.step(msg);
                return;
            }
            Request::PeerUnreachable(peer) => {
                self.core.peer_unreachable(peer);
                return;
            }
            Request::ReportSnapshot { peer, delivered } => {
                self.core.report_snapshot(peer, delivered);
                return;
            }
            Request::SnapshotProgress(peer) => {
                self.core.snapshot_in_progress(peer);
                return;
            }
        };
        self.next_id += 1;
        match result {
            Ok(()) => {
                self.replies.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Events, then the new state, then the answers (a caller must see its own write).
    fn finish(&mut self, out: Output) {
        for e in out.events {
            let _ = self.events.send(e);
        }
        self.publish();
        for (id, result) in out.answers {
            if let Some(reply) = self.replies.remove(&id) {
                let _ = reply.send(result);
            }
        }
    }

    fn publish(&mut self) {
        let next = self.core.published();
        self.published.send_if_modified(|cur| {
            let changed = !Arc::ptr_eq(&cur.state, &next.state)
                || cur.is_leader != next.is_leader
                || cur.leader_ready != next.leader_ready
                || cur.leader_id != next.leader_id
                || cur.term != next.term
                || cur.applied != next.applied
                || cur.voters != next.voters
                || cur.learners != next.learners
                || cur.progress.len() != next.progress.len()
                || cur
                    .progress
                    .iter()
                    .zip(&next.progress)
                    .any(|(a, b)| a.raft_id != b.raft_id || a.recent_active != b.recent_active);
            if changed {
                *cur = Arc::new(next);
            }
            changed
        });
    }
}

fn send(outbound: &Option<mpsc::UnboundedSender<Message>>, msgs: Vec<Message>) {
    if let Some(out) = outbound {
        for m in msgs {
            let _ = out.send(m);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
