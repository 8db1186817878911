//! The dispatcher (manager side): the link between the replicated state and
//! each node's worker. Any manager serves it, leader or not, from its own
//! applied state:
//! - the manager's own worker connects in-process ([`DispatcherHandle::connect`])
//!   and gets the whole set of its node's tasks ([`Assignments`]) whenever it
//!   changes;
//! - a worker on another node holds a session over the transport: each
//!   [`SessionRequest`] turn says what it holds (task ids and digests); the
//!   answer carries only what differs ([`SessionReply`]): at once when
//!   something does, else after holding the turn up to the heartbeat period.
//!   A reconnect, to this manager or another, so sends only what changed;
//! - status reports from every worker are batched into few Raft proposals
//!   (forwarded to the leader by the [`Proposer`]), one in flight at a time;
//! - [`heartbeat`] hears nodes (session turns, managers' heartbeats, gossip
//!   verdicts) and proposes the [`liveness`] verdicts of the nodes this
//!   manager judges.
//!
//! Invariants: assignments come only from committed state; a status report
//! is proposed as is (apply drops anything that would move a task
//! backwards); a report that could not be proposed is not lost: the worker
//! re-reports whatever its assignments show the store has not caught up
//! with. Which node a task belongs to is indexed from the Raft driver's
//! events (rebuilt from the state when events were missed), so a state
//! change costs the sessions it touches, not every session.

pub mod heartbeat;
pub mod liveness;

use crate::cluster::forward::Proposer;
use crate::raft::{Published, RaftHandle};
use crate::store::{ClusterState, Event};
use skein_protocol::wire::{
    task_digest, Assignments, ManagerInfo, SessionReply, SessionRequest, StatusReport, WireReply,
};
use skein_protocol::{Command, NodeId, NodeRole, NodeStatus, Task, TaskId, TaskState};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

/// The tasks a node should hold: everything scheduled to it, finished ones
/// included (their logs stay until the task is reaped).
pub fn assignments_for(state: &ClusterState, node_id: &str) -> Vec<Task> {
    state
        .tasks_on(node_id)
        .filter(|t| is_assigned(t))
        .cloned()
        .collect()
}

fn is_assigned(t: &Task) -> bool {
    t.status.state >= TaskState::Assigned
}

/// Most status updates proposed in one Raft entry.
const STATUS_BATCH: usize = 4096;
/// Turns waiting for the dispatcher before new ones are refused as busy.
const TURN_QUEUE: usize = 8192;

enum Request {
    Connect {
        node_id: NodeId,
        tx: mpsc::Sender<Assignments>,
    },
    Turn {
        req: SessionRequest,
        reply: oneshot::Sender<WireReply>,
    },
}

#[derive(Clone)]
pub struct DispatcherHandle {
    req: mpsc::Sender<Request>,
    turns: mpsc::Sender<Request>,
    reports: mpsc::Sender<StatusReport>,
}

impl DispatcherHandle {
    /// A worker connects: it will receive its node's assignments on the
    /// returned channel (the current set first).
    pub async fn connect(&self, node_id: NodeId) -> mpsc::Receiver<Assignments> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.req.send(Request::Connect { node_id, tx }).await;
        rx
    }
    /// A sender for status reports (this node's worker, or checked reports
    /// of remote workers).
    pub fn reporter(&self) -> mpsc::Sender<StatusReport> {
        self.reports.clone()
    }
    /// A remote worker's session turn (its sender already checked); the
    /// answer goes to `reply`, possibly after a hold.
    pub fn turn(&self, req: SessionRequest, reply: oneshot::Sender<WireReply>) {
        match self.turns.try_send(Request::Turn { req, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Request::Turn { reply, .. })) => {
                let _ = reply.send(WireReply::Error(
                    "retry: this manager is busy; try another".into(),
                ));
            }
            Err(mpsc::error::TrySendError::Closed(Request::Turn { reply, .. })) => {
                let _ = reply.send(WireReply::Error("retry: the dispatcher stopped".into()));
            }
            Err(_) => {}
        }
    }
}

struct Local {
    tx: mpsc::Sender<Assignments>,
    sequence: u64,
    last: Option<Vec<Task>>,
}

/// A remote worker's turn, held until something changes or its deadline.
struct Held {
    have: HashMap<TaskId, u64>,
    reply: oneshot::Sender<WireReply>,
    deadline: Instant,
    seq: u64,
}

/// node -> its tasks, from events.
#[derive(Default)]
struct TaskIndex {
    by_node: HashMap<NodeId, BTreeSet<TaskId>>,
    node_of: HashMap<TaskId, NodeId>,
    digests: HashMap<TaskId, u64>,
}

impl TaskIndex {
    fn rebuild(&mut self, state: &ClusterState) {
        self.by_node.clear();
        self.node_of.clear();
        self.digests.clear();
        for t in state.tasks.values() {
            if let Some(n) = &t.node_id {
                self.by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(t.id.clone());
                self.node_of.insert(t.id.clone(), n.clone());
            }
        }
    }

    /// Task `id` changed: re-index it; returns the nodes it left or is on.
    fn update(&mut self, state: &ClusterState, id: &TaskId, touched: &mut BTreeSet<NodeId>) {
        self.digests.remove(id);
        let now = state.tasks.get(id).and_then(|t| t.node_id.clone());
        let before = self.node_of.get(id).cloned();
        if before != now {
            if let Some(b) = &before {
                if let Some(set) = self.by_node.get_mut(b) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_node.remove(b);
                    }
                }
                self.node_of.remove(id);
            }
            if let Some(n) = &now {
                self.by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(id.clone());
                self.node_of.insert(id.clone(), n.clone());
            }
        }
        touched.extend(before);
        touched.extend(now);
    }

    /// [`assignments_for`] from the index (not a scan of every task).
    fn assigned(&self, state: &ClusterState, node: &str) -> Vec<Task> {
        self.by_node.get(node).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|id| state.tasks.get(id))
                .filter(|t| is_assigned(t))
                .cloned()
                .collect()
        })
    }

    fn digest(&mut self, t: &Task) -> u64 {
        *self
            .digests
            .entry(t.id.clone())
            .or_insert_with(|| task_digest(t))
    }

    /// What `node` lacks or holds in another version, and what it holds
    /// that is no longer its business.
    fn diff(
        &mut self,
        state: &ClusterState,
        node: &str,
        have: &HashMap<TaskId, u64>,
    ) -> (Vec<Task>, Vec<TaskId>) {
        let mut changed = Vec::new();
        let mut mine = BTreeSet::new();
        let ids: Vec<TaskId> = self
            .by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let Some(t) = state.tasks.get(&id).filter(|t| is_assigned(t)) else {
                continue;
            };
            mine.insert(id.clone());
            if have.get(&id) != Some(&self.digest(t)) {
                changed.push(t.clone());
            }
        }
        let removed = have
            .keys()
            .filter(|id| !mine.contains(*id))
            .cloned()
            .collect();
        (changed, removed)
    }
}

/// The managers a worker may hold a session with, ready ones first;
/// `leader`: the leader's raft id (0: unknown).
pub fn session_managers(state: &ClusterState, leader: u64) -> Vec<ManagerInfo> {
    let mut m: Vec<&skein_protocol::Node> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && !n.peer_id.is_empty() && !n.addr.is_empty())
        .collect();
    m.sort_by_key(|n| (n.status != NodeStatus::Ready, n.name.clone()));
    m.into_iter()
        .map(|n| ManagerInfo {
            node_id: n.id.clone(),
            name: n.name.clone(),
            peer_id: n.peer_id.clone(),
            addr: n.addr.clone(),
            api_addr: n.api_addr.clone(),
            raft_id: n.raft_id,
            leader: leader != 0 && n.raft_id == leader,
        })
        .collect()
}

pub struct Dispatcher {
    raft: RaftHandle,
    proposer: Proposer,
    req_rx: mpsc::Receiver<Request>,
    turns_rx: mpsc::Receiver<Request>,
    reports_rx: mpsc::Receiver<StatusReport>,
    locals: HashMap<NodeId, Local>,
    held: HashMap<NodeId, Held>,
    deadlines: BinaryHeap<Reverse<(Instant, u64, NodeId)>>,
    next_seq: u64,
    index: TaskIndex,
    indexed: Option<Arc<ClusterState>>,
    /// How long a turn is held when nothing changed (the heartbeat period).
    hold: Duration,
    pending_status: Vec<(TaskId, skein_protocol::TaskStatus)>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    /// The manager list of the last state answered from (every answer
    /// carries it; it changes only with the managers or the leader).
    managers: ManagersCache,
}

/// [`session_managers`] of one state and leader, computed once: a turn's
/// answer must not cost a scan of every node.
#[derive(Default)]
struct ManagersCache {
    of: Option<(Arc<ClusterState>, u64)>,
    list: Vec<ManagerInfo>,
}

impl ManagersCache {
    fn get(&mut self, snap: &Published) -> Vec<ManagerInfo> {
        let fresh = self
            .of
            .as_ref()
            .is_some_and(|(s, l)| Arc::ptr_eq(s, &snap.state) && *l == snap.leader_id);
        if !fresh {
            self.list = session_managers(&snap.state, snap.leader_id);
            self.of = Some((snap.state.clone(), snap.leader_id));
        }
        self.list.clone()
    }
}

impl Dispatcher {
    pub fn new(raft: RaftHandle, proposer: Proposer) -> (Dispatcher, DispatcherHandle) {
        let (req, req_rx) = mpsc::channel(16);
        let (turns, turns_rx) = mpsc::channel(TURN_QUEUE);
        let (reports, reports_rx) = mpsc::channel(1024);
        (
            Dispatcher {
                raft,
                proposer,
                req_rx,
                turns_rx,
                reports_rx,
                locals: HashMap::new(),
                held: HashMap::new(),
                deadlines: BinaryHeap::new(),
                next_seq: 0,
                index: TaskIndex::default(),
                indexed: None,
                hold: Duration::from_secs(1),
                pending_status: Vec::new(),
                in_flight: None,
                managers: ManagersCache::default(),
            },
            DispatcherHandle {
                req,
                turns,
                reports,
            },
        )
    }

    /// How long a remote worker's turn may be held (its heartbeat period).
    pub fn with_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut published = self.raft.subscribe();
        let mut events = self.raft.events();
        loop {
            let next_deadline = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                r = published.changed() => {
                    if r.is_err() { return; }
                    let snap = published.borrow_and_update().clone();
                    self.on_state(&snap, &mut events);
                    self.push_locals(&snap).await;
                }
                Some(req) = self.req_rx.recv() => self.on_request(req).await,
                Some(req) = self.turns_rx.recv() => self.on_request(req).await,
                Some(first) = self.reports_rx.recv() => {
                    self.pending_status.extend(first.updates);
                    while let Ok(more) = self.reports_rx.try_recv() {
                        self.pending_status.extend(more.updates);
                    }
                }
                _ = sleep_until(next_deadline) => self.expire(),
                _ = shutdown.changed() => return,
            }
            self.flush_status();
        }
    }

    async fn on_request(&mut self, req: Request) {
        match req {
            Request::Connect { node_id, tx } => {
                self.locals.insert(
                    node_id,
                    Local {
                        tx,
                        sequence: 0,
                        last: None,
                    },
                );
                let snap = self.raft.current();
                self.push_locals(&snap).await;
            }
            Request::Turn { req, reply } => self.on_turn(req, reply),
        }
    }

    /// Keeps the task index in step with the state; answers held turns of
    /// the nodes whose tasks changed.
    fn on_state(&mut self, snap: &Arc<Published>, events: &mut broadcast::Receiver<Event>) {
        let mut touched = BTreeSet::new();
        let mut lagged = self.indexed.is_none();
        loop {
            match events.try_recv() {
                Ok(Event::Task(id)) if !lagged => self.index.update(&snap.state, &id, &mut touched),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                Err(_) => break,
            }
        }
        if lagged {
            self.index.rebuild(&snap.state);
            touched = self.held.keys().cloned().collect();
        }
        self.indexed = Some(snap.state.clone());
        for node in touched {
            self.answer_if_changed(&snap.state, &node);
        }
    }

    fn on_turn(&mut self, req: SessionRequest, reply: oneshot::Sender<WireReply>) {
        let snap = self.raft.current();
        if self.indexed.is_none() {
            self.index.rebuild(&snap.state);
            self.indexed = Some(snap.state.clone());
        }
        let have: HashMap<TaskId, u64> = req.have.into_iter().collect();
        let (changed, removed) = self.index.diff(&snap.state, &req.node_id, &have);
        let hold = Duration::from_millis(req.wait_ms).min(self.hold);
        if !changed.is_empty() || !removed.is_empty() || hold.is_zero() {
            let _ = reply.send(self.reply(&snap, &req.node_id, changed, removed));
            return;
        }
        self.next_seq += 1;
        let deadline = Instant::now() + hold;
        if let Some(old) = self.held.insert(
            req.node_id.clone(),
            Held {
                have,
                reply,
                deadline,
                seq: self.next_seq,
            },
        ) {
            // A newer turn replaces a held one (the worker gave up on it).
            let _ = old
                .reply
                .send(self.reply(&snap, &req.node_id, Vec::new(), Vec::new()));
        }
        self.deadlines
            .push(Reverse((deadline, self.next_seq, req.node_id)));
    }

    fn answer_if_changed(&mut self, state: &ClusterState, node: &str) {
        let Some(h) = self.held.get(node) else {
            return;
        };
        let (changed, removed) = self.index.diff(state, node, &h.have);
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        if let Some(h) = self.held.remove(node) {
            let snap = self.raft.current();
            let _ = h.reply.send(self.reply(&snap, node, changed, removed));
        }
    }

    /// Answers the held turns whose deadline passed: nothing changed.
    fn expire(&mut self) {
        let now = Instant::now();
        let snap = self.raft.current();
        while let Some(Reverse((at, seq, node))) = self.deadlines.peek().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.held.get(&node).is_some_and(|h| h.seq == seq) {
                if let Some(h) = self.held.remove(&node) {
                    debug_assert!(h.deadline <= now);
                    let _ = h
                        .reply
                        .send(self.reply(&snap, &node, Vec::new(), Vec::new()));
                }
            }
        }
    }

    fn reply(
        &mut self,
        snap: &Published,
        node: &str,
        changed: Vec<Task>,
        removed: Vec<TaskId>,
    ) -> WireReply {
        WireReply::Session(Box::new(SessionReply {
            index: snap.applied,
            changed,
            removed,
            managers: self.managers.get(snap),
            wait_ms: self.hold.as_millis() as u64,
            role: snap
                .state
                .nodes
                .get(node)
                .map_or(NodeRole::Worker, |n| n.role),
        }))
    }

    /// Proposes the queued status updates, one proposal in flight at a time.
    fn flush_status(&mut self) {
        if self.pending_status.is_empty()
            || self.in_flight.as_ref().is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let n = self.pending_status.len().min(STATUS_BATCH);
        let updates: Vec<_> = self.pending_status.drain(..n).collect();
        let proposer = self.proposer.clone();
        self.in_flight = Some(tokio::spawn(async move {
            if let Err(e) = proposer.propose(Command::SetTaskStatus(updates)).await {
                tracing::warn!(error = %e, "task status not recorded; the worker will report again");
            }
        }));
    }

    async fn push_locals(&mut self, snap: &Arc<Published>) {
        if !self
            .indexed
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &snap.state))
        {
            self.index.rebuild(&snap.state);
            self.indexed = Some(snap.state.clone());
        }
        let mut gone = Vec::new();
        for (node_id, s) in self.locals.iter_mut() {
            // A state that does not know this node yet (a manager still
            // catching up after it joined or was promoted) would tell the
            // worker to stop everything it runs: wait for the real one.
            if !snap.state.nodes.contains_key(node_id) {
                continue;
            }
            let tasks = self.index.assigned(&snap.state, node_id);
            if s.last.as_ref() == Some(&tasks) {
                continue;
            }
            s.sequence += 1;
            let msg = Assignments {
                node_id: node_id.clone(),
                sequence: s.sequence,
                tasks: tasks.clone(),
            };
            if s.tx.send(msg).await.is_err() {
                gone.push(node_id.clone());
            } else {
                s.last = Some(tasks);
            }
        }
        for n in gone {
            self.locals.remove(&n);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
