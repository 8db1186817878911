//! The dispatcher: the link between the replicated state and each node's
//! worker. It sends a worker the set of tasks its node should know about
//! ([`Assignments`]) whenever that set changes, and turns the worker's
//! [`StatusReport`]s into Raft commands (forwarded to the leader by the
//! [`Proposer`] when this node does not lead).
//!
//! Every node is a Raft member (workers as learners), so assignments are
//! computed from this node's own copy of the committed state: the same data
//! the leader would stream, and a node cut off from the leader keeps running
//! what it was last given. Invariants: assignments come only from committed
//! state; a status report is proposed as is (apply drops anything that would
//! move a task backwards), and a report that could not be proposed is not
//! lost: the worker re-reports whatever the assignments show the store has
//! not caught up with.

pub mod liveness;

use crate::cluster::forward::Proposer;
use crate::raft::{Published, RaftHandle};
use skein_protocol::wire::{Assignments, StatusReport};
use skein_protocol::{Command, NodeId, Task, TaskState};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The tasks a node should hold: everything scheduled to it, finished ones
/// included (their logs stay until the task is reaped).
pub fn assignments_for(state: &crate::store::ClusterState, node_id: &str) -> Vec<Task> {
    state
        .tasks_on(node_id)
        .filter(|t| t.status.state >= TaskState::Assigned)
        .cloned()
        .collect()
}

enum Request {
    Connect {
        node_id: NodeId,
        tx: mpsc::Sender<Assignments>,
    },
}

#[derive(Clone)]
pub struct DispatcherHandle {
    req: mpsc::Sender<Request>,
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
    /// A sender for the worker's status reports.
    pub fn reporter(&self) -> mpsc::Sender<StatusReport> {
        self.reports.clone()
    }
}

struct Session {
    tx: mpsc::Sender<Assignments>,
    sequence: u64,
    last: Option<Vec<Task>>,
}

pub struct Dispatcher {
    raft: RaftHandle,
    proposer: Proposer,
    req_rx: mpsc::Receiver<Request>,
    reports_rx: mpsc::Receiver<StatusReport>,
    sessions: HashMap<NodeId, Session>,
}

impl Dispatcher {
    pub fn new(raft: RaftHandle, proposer: Proposer) -> (Dispatcher, DispatcherHandle) {
        let (req, req_rx) = mpsc::channel(16);
        let (reports, reports_rx) = mpsc::channel(256);
        (
            Dispatcher {
                raft,
                proposer,
                req_rx,
                reports_rx,
                sessions: HashMap::new(),
            },
            DispatcherHandle { req, reports },
        )
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut published = self.raft.subscribe();
        loop {
            tokio::select! {
                r = published.changed() => {
                    if r.is_err() { return; }
                    let snap = published.borrow_and_update().clone();
                    self.push_all(&snap).await;
                }
                Some(req) = self.req_rx.recv() => match req {
                    Request::Connect { node_id, tx } => {
                        self.sessions.insert(node_id, Session { tx, sequence: 0, last: None });
                        let snap = self.raft.current();
                        self.push_all(&snap).await;
                    }
                },
                Some(first) = self.reports_rx.recv() => {
                    let mut updates = first.updates;
                    while let Ok(more) = self.reports_rx.try_recv() {
                        updates.extend(more.updates);
                    }
                    if let Err(e) = self.proposer.propose(Command::SetTaskStatus(updates)).await {
                        tracing::warn!(error = %e, "task status not recorded; the worker will report again");
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn push_all(&mut self, snap: &Arc<Published>) {
        let mut gone = Vec::new();
        for (node_id, s) in self.sessions.iter_mut() {
            let tasks = assignments_for(&snap.state, node_id);
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
            self.sessions.remove(&n);
        }
    }
}
