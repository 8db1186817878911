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
//! - a non-leader holding more than its share of the fleet's sessions names
//!   the manager holding fewest in some answers, a few a second
//!   ([`balance`]): sessions spread back after a manager returns;
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
//! change costs the sessions it touches, not every session; an event may
//! arrive before the state it belongs to is published, so its task is looked
//! at again until a newer state is (see [`TaskIndex`]).

pub mod balance;
pub mod heartbeat;
pub mod liveness;

use crate::cluster::forward::Proposer;
use crate::raft::{Published, RaftHandle};
use crate::store::{ClusterState, Event};
use skein_protocol::wire::{
    managers_digest, task_digest, Assignments, ManagerInfo, SessionReply, SessionRequest,
    StatusReport, WireReply,
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
    /// The worker's [`managers_digest`] (the list is sent only on a change).
    managers: u64,
}

/// node -> its tasks, from events.
///
/// The Raft driver sends an apply's events before it publishes the state
/// they belong to, so an event read next to a published state may belong to
/// a newer one: read against the older state, it would leave the index (and
/// the digest cache) behind for good, and that node's worker would never
/// hear of the change. So [`TaskIndex::catch_up`] keeps looking again at the
/// tasks of the events it read until it is given a state applied beyond the
/// newest one published when they were read: the first such state holds
/// them (the driver publishes right after sending an apply's events).
#[derive(Default)]
struct TaskIndex {
    by_node: HashMap<NodeId, BTreeSet<TaskId>>,
    node_of: HashMap<TaskId, NodeId>,
    digests: HashMap<TaskId, u64>,
    /// Tasks of events read while the newest published state was applied
    /// up to `carried_until`: looked at again until a state goes beyond.
    carried: BTreeSet<TaskId>,
    carried_until: u64,
    /// Events were missed while the newest published state was applied up
    /// to this: rebuild until a state goes beyond.
    rebuild_until: Option<u64>,
}

impl TaskIndex {
    /// Brings the index to `state` (applied up to `applied`) after the task
    /// events `fresh` (`missed`: some events were lost, or there is no index
    /// yet), read while the newest published state was applied up to
    /// `latest`. Returns the nodes whose tasks may have changed; None: any
    /// node's may have.
    fn catch_up(
        &mut self,
        state: &ClusterState,
        applied: u64,
        fresh: Vec<TaskId>,
        latest: u64,
        missed: bool,
    ) -> Option<BTreeSet<NodeId>> {
        let settled = applied > self.carried_until;
        let mut ids = std::mem::take(&mut self.carried);
        if settled {
            // Looked at once more now, against a state that holds them.
            self.carried = fresh.iter().cloned().collect();
        }
        ids.extend(fresh);
        if !settled {
            self.carried = ids.clone();
        }
        self.carried_until = latest;
        let rebuild = missed || self.rebuild_until.is_some();
        if missed {
            self.rebuild_until = Some(latest);
        } else if self.rebuild_until.is_some_and(|p| applied > p) {
            self.rebuild_until = None;
        }
        if rebuild {
            self.rebuild(state);
            return None;
        }
        let mut touched = BTreeSet::new();
        for id in &ids {
            self.update(state, id, &mut touched);
        }
        Some(touched)
    }

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
    /// This manager's node id (empty: sessions are not spread).
    me: NodeId,
    /// Sessions to hand over this second (see [`balance`]).
    handover: Handover,
}

/// At most this many sessions a second leave a manager holding more than
/// its share: each costs its new manager a connection handshake.
const HANDOVERS_PER_SEC: usize = 50;

/// The current second's [`balance::handover`]: to whom, how many are left.
#[derive(Default)]
struct Handover {
    at: Option<Instant>,
    to: String,
    left: usize,
}

/// [`session_managers`] of one state and leader, computed once: a turn's
/// answer must not cost a scan of every node.
#[derive(Default)]
struct ManagersCache {
    /// The roster stamp and the leader the list was made for.
    of: Option<(u64, u64)>,
    list: Vec<ManagerInfo>,
    digest: u64,
}

impl ManagersCache {
    /// The list and its [`managers_digest`].
    fn get(&mut self, snap: &Published) -> (&[ManagerInfo], u64) {
        let key = (snap.state.peers_key(), snap.leader_id);
        if self.of != Some(key) {
            let list = session_managers(&snap.state, snap.leader_id);
            if list != self.list || self.of.is_none() {
                self.digest = managers_digest(&list);
                self.list = list;
            }
            self.of = Some(key);
        }
        (&self.list, self.digest)
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
                me: NodeId::new(),
                handover: Handover::default(),
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

    /// This manager's node id: it then hands sessions over when it holds
    /// more than its share (see [`balance`]).
    pub fn with_node(mut self, me: &str) -> Self {
        self.me = me.to_string();
        self
    }

    /// The manager the next answered turn is sent to instead (empty: stay).
    fn move_to(&mut self, snap: &Published) -> String {
        if self.me.is_empty() {
            return String::new();
        }
        let now = Instant::now();
        if self
            .handover
            .at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            let (to, left) =
                balance::handover(&snap.state, &self.me, snap.leader_id, HANDOVERS_PER_SEC)
                    .unwrap_or_default();
            self.handover = Handover {
                at: Some(now),
                to,
                left,
            };
        }
        if self.handover.left == 0 {
            return String::new();
        }
        self.handover.left -= 1;
        self.handover.to.clone()
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut published = self.raft.subscribe();
        let mut events = self.raft.events();
        let epoch = Instant::now();
        loop {
            let next_deadline = self
                .deadlines
                .peek()
                .map(|Reverse((at, _, _))| coalesce(*at, epoch, REPLY_TICK));
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
        let mut fresh = Vec::new();
        let mut missed = self.indexed.is_none();
        loop {
            match events.try_recv() {
                Ok(Event::Task(id)) => fresh.push(id),
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => missed = true,
                Err(_) => break,
            }
        }
        // Read after the events: the newest state any of them may follow.
        let latest = self.raft.current().applied;
        let touched = self
            .index
            .catch_up(&snap.state, snap.applied, fresh, latest, missed)
            .unwrap_or_else(|| self.held.keys().cloned().collect());
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
            let _ = reply.send(self.reply(&snap, &req.node_id, changed, removed, req.managers));
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
                managers: req.managers,
            },
        ) {
            // A newer turn replaces a held one (the worker gave up on it).
            let _ = old.reply.send(self.reply(
                &snap,
                &req.node_id,
                Vec::new(),
                Vec::new(),
                old.managers,
            ));
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
            let _ = h
                .reply
                .send(self.reply(&snap, node, changed, removed, h.managers));
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
                    let _ =
                        h.reply
                            .send(self.reply(&snap, &node, Vec::new(), Vec::new(), h.managers));
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
        held: u64,
    ) -> WireReply {
        let move_to = self.move_to(snap);
        let (list, digest) = self.managers.get(snap);
        WireReply::Session(Box::new(SessionReply {
            index: snap.applied,
            changed,
            removed,
            managers: if held == digest && held != 0 {
                Vec::new()
            } else {
                list.to_vec()
            },
            wait_ms: self.hold.as_millis() as u64,
            role: snap
                .state
                .nodes
                .get(node)
                .map_or(NodeRole::Worker, |n| n.role),
            move_to,
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

/// Held turns are answered on ticks of this length: the turns that fall due
/// within one tick are answered together (and come back together), so a
/// manager with thousands of sessions wakes a few dozen times a second for
/// them, not once per session. It adds at most one tick to a turn.
const REPLY_TICK: Duration = Duration::from_millis(50);

/// `at` moved to the end of its `tick`-long slot counted from `epoch`.
fn coalesce(at: Instant, epoch: Instant, tick: Duration) -> Instant {
    let tick_ns = tick.as_nanos().max(1);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let slots = since.div_ceil(tick_ns);
    let offset = u64::try_from(slots * tick_ns).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{ServiceSpec, TaskStatus};

    fn task(id: &str, node: &str, desired: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "s".into(),
            service_name: "api".into(),
            slot: Some(1),
            node_id: Some(node.into()),
            spec_version: 1,
            spec: ServiceSpec::new("api", "sleep"),
            desired_state: desired,
            status: TaskStatus {
                state: TaskState::Running,
                ..Default::default()
            },
            created_at: 0,
            restarts: vec![],
        }
    }

    fn state(tasks: &[Task]) -> ClusterState {
        let mut s = ClusterState::default();
        for t in tasks {
            s.tasks.insert(t.id.clone(), t.clone());
        }
        s
    }

    fn indexed(s: &ClusterState, applied: u64) -> TaskIndex {
        let mut index = TaskIndex::default();
        assert_eq!(index.catch_up(s, applied, Vec::new(), applied, true), None);
        assert_eq!(
            index.catch_up(s, applied + 1, Vec::new(), applied + 1, false),
            None
        );
        assert!(index
            .catch_up(s, applied + 1, Vec::new(), applied + 1, false)
            .is_some());
        index
    }

    fn w1() -> Option<BTreeSet<NodeId>> {
        Some(BTreeSet::from(["w1".to_string()]))
    }

    /// The drain hang: the orchestrator's shutdown of a displaced task was
    /// never sent to its worker. Its event was read next to the state before
    /// (the driver sends events, then publishes), a held turn cached the old
    /// task's digest, and the new state came with no event left to drop it.
    #[test]
    fn a_change_whose_event_comes_before_its_state_still_reaches_the_worker() {
        let old = task("t1", "w1", TaskState::Running);
        let s0 = state(std::slice::from_ref(&old));
        let mut index = indexed(&s0, 10);
        let have: HashMap<TaskId, u64> = [(old.id.clone(), task_digest(&old))].into();

        // The event of t1's shutdown (entry 12), read while s0 (11) is
        // still the newest published state.
        assert_eq!(index.catch_up(&s0, 11, vec!["t1".into()], 11, false), w1());
        // The held turn is looked at against s0: nothing to send yet.
        assert_eq!(index.diff(&s0, "w1", &have), (Vec::new(), Vec::new()));

        // Then the state with the shutdown is published, with no new event.
        let stopped = task("t1", "w1", TaskState::Shutdown);
        let s1 = state(std::slice::from_ref(&stopped));
        assert_eq!(index.catch_up(&s1, 12, Vec::new(), 12, false), w1());
        assert_eq!(
            index.diff(&s1, "w1", &have),
            (vec![stopped], Vec::new()),
            "the worker must be told to stop t1"
        );
        // Settled: not looked at again.
        assert_eq!(
            index.catch_up(&s1, 13, Vec::new(), 13, false),
            Some(BTreeSet::new())
        );
    }

    /// A publish with the same state (a leader or progress change) between
    /// reading the event and publishing its state does not end the wait.
    #[test]
    fn a_republished_older_state_does_not_settle_an_early_event() {
        let old = task("t1", "w1", TaskState::Running);
        let s0 = state(std::slice::from_ref(&old));
        let mut index = indexed(&s0, 10);
        let have: HashMap<TaskId, u64> = [(old.id.clone(), task_digest(&old))].into();
        index.catch_up(&s0, 11, vec!["t1".into()], 11, false);
        assert_eq!(index.diff(&s0, "w1", &have), (Vec::new(), Vec::new()));
        // s0 again (a new term, say), and still no t1 change in it.
        assert_eq!(index.catch_up(&s0, 11, Vec::new(), 11, false), w1());
        assert_eq!(index.diff(&s0, "w1", &have), (Vec::new(), Vec::new()));
        let stopped = task("t1", "w1", TaskState::Shutdown);
        let s1 = state(std::slice::from_ref(&stopped));
        assert_eq!(index.catch_up(&s1, 12, Vec::new(), 12, false), w1());
        assert_eq!(index.diff(&s1, "w1", &have), (vec![stopped], Vec::new()));
    }

    /// The rebalance flake: a task assigned to a node, whose event came
    /// before its state, was never indexed under that node.
    #[test]
    fn a_task_assigned_before_its_state_is_published_is_still_indexed() {
        let s0 = state(&[]);
        let mut index = indexed(&s0, 10);
        index.catch_up(&s0, 11, vec!["t2".into()], 11, false);
        let new = task("t2", "w1", TaskState::Running);
        let s1 = state(std::slice::from_ref(&new));
        assert_eq!(index.catch_up(&s1, 12, Vec::new(), 12, false), w1());
        assert_eq!(index.assigned(&s1, "w1"), vec![new.clone()]);
        assert_eq!(
            index.diff(&s1, "w1", &HashMap::new()),
            (vec![new], Vec::new())
        );
    }

    /// Events were missed: the index is rebuilt until a state beyond the
    /// newest one published then (the missed events may belong to it).
    #[test]
    fn missed_events_rebuild_the_index_until_a_newer_state() {
        let s0 = state(&[]);
        let mut index = indexed(&s0, 10);
        assert_eq!(index.catch_up(&s0, 11, Vec::new(), 11, true), None);
        assert_eq!(index.catch_up(&s0, 11, Vec::new(), 11, false), None);
        let new = task("t3", "w2", TaskState::Running);
        let s1 = state(std::slice::from_ref(&new));
        assert_eq!(index.catch_up(&s1, 12, Vec::new(), 12, false), None);
        assert_eq!(index.assigned(&s1, "w2"), vec![new]);
        assert!(index.catch_up(&s1, 13, Vec::new(), 13, false).is_some());
    }

    #[test]
    fn held_turns_fall_due_on_shared_ticks() {
        use super::coalesce;
        let epoch = tokio::time::Instant::now();
        let tick = std::time::Duration::from_millis(50);
        let ms = std::time::Duration::from_millis;
        // Deadlines within one slot share its end; none comes earlier.
        for (at, due) in [
            (1, 50),
            (49, 50),
            (50, 50),
            (51, 100),
            (1000, 1000),
            (1001, 1050),
        ] {
            assert_eq!(
                coalesce(epoch + ms(at), epoch, tick),
                epoch + ms(due),
                "{at} ms"
            );
        }
        assert_eq!(coalesce(epoch, epoch, tick), epoch);
    }
}
