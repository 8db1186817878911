//! The orchestrator: leader-only. Watches the published cluster state and
//! proposes the commands that make tasks match services.
//!
//! Split in two: [`orchestrate`] is a pure function (state, now) -> commands,
//! built from [`reconcile`] (what tasks should exist) and [`placement`]
//! (where they go); [`Orchestrator`] is the actor that runs it whenever the
//! state changes or a restart delay expires, while this node leads. It waits
//! for each proposal to commit before deciding again, so it never acts twice
//! on the same state. A new leader reconciles everything once at start.

pub mod placement;
pub mod reconcile;
pub mod restart;
pub mod updater;

use crate::raft::RaftHandle;
use crate::store::ClusterState;
use skein_protocol::{Command, Millis, TaskState};
use std::time::Duration;
use tokio::sync::watch;

/// The commands that move `state` toward what its services ask for, and the
/// time to look again if nothing else happens.
pub fn orchestrate(
    state: &ClusterState,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
) -> (Vec<Command>, Option<Millis>) {
    let plan = reconcile::reconcile(state, now, new_id);
    let mut cmds = plan.commands.clone();
    if !plan.remove.is_empty() {
        cmds.push(Command::RemoveTasks(plan.remove.clone()));
    }
    if !plan.orphan.is_empty() {
        cmds.push(Command::SetTaskStatus(
            plan.orphan
                .iter()
                .map(|id| {
                    let node = state
                        .tasks
                        .get(id)
                        .and_then(|t| t.node_id.as_ref())
                        .and_then(|n| state.nodes.get(n))
                        .map(|n| n.name.clone())
                        .unwrap_or_default();
                    (
                        id.clone(),
                        skein_protocol::TaskStatus {
                            state: TaskState::Orphaned,
                            timestamp: now,
                            finished_at: Some(now),
                            error: format!("node {node} is down: the task was given up on"),
                            message: "orphaned".into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        ));
    }
    if !plan.shutdown.is_empty() {
        cmds.push(Command::SetDesiredState(
            plan.shutdown
                .iter()
                .map(|id| (id.clone(), TaskState::Shutdown))
                .collect(),
        ));
    }
    for (id, status) in &plan.update_status {
        cmds.push(Command::SetUpdateStatus {
            id: id.clone(),
            status: status.clone(),
        });
    }
    if !plan.create.is_empty() {
        cmds.push(Command::CreateTasks(plan.create.clone()));
    }
    // Place the pending tasks, the plan's new ones included. Loads come from
    // the current state: a task this plan stops still holds its node (and
    // its ports) until it has stopped, so nothing is placed on top of it.
    let leaving: std::collections::HashSet<&str> = plan
        .shutdown
        .iter()
        .chain(&plan.orphan)
        .chain(&plan.remove)
        .map(String::as_str)
        .collect();
    let pending: Vec<&skein_protocol::Task> = state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == TaskState::Running
                && t.status.state <= TaskState::Pending
                && !leaving.contains(t.id.as_str())
        })
        .chain(plan.create.iter())
        .collect();
    if !pending.is_empty() {
        let placed = placement::place(state, &pending);
        if !placed.assignments.is_empty() {
            cmds.push(Command::AssignTasks {
                assignments: placed.assignments,
                at: now,
            });
        }
        let created: std::collections::HashMap<&str, &skein_protocol::Task> =
            plan.create.iter().map(|t| (t.id.as_str(), t)).collect();
        let message_of = |id: &str| {
            state
                .tasks
                .get(id)
                .or_else(|| created.get(id).copied())
                .map(|t| t.status.message.clone())
        };
        let unplaced: Vec<_> = placed
            .unplaced
            .into_iter()
            .filter(|(id, msg)| message_of(id).is_some_and(|m| &m != msg))
            .collect();
        if !unplaced.is_empty() {
            cmds.push(Command::SetPendingMessage(unplaced));
        }
    }
    (cmds, plan.wake_at)
}

pub struct Orchestrator {
    raft: RaftHandle,
    shutdown: watch::Receiver<bool>,
}

impl Orchestrator {
    pub fn new(raft: RaftHandle, shutdown: watch::Receiver<bool>) -> Self {
        Orchestrator { raft, shutdown }
    }

    pub async fn run(mut self) {
        let mut published = self.raft.subscribe();
        let mut new_id = || crate::util::random_hex(6);
        // Rechecks now and then even without events (node timeouts, clocks).
        let idle = Duration::from_secs(2);
        loop {
            let snap = published.borrow_and_update().clone();
            let mut wait = idle;
            if snap.is_leader {
                let now = crate::util::now_ms();
                let (cmds, wake_at) = orchestrate(&snap.state, now, &mut new_id);
                if let Some(at) = wake_at {
                    wait = wait.min(Duration::from_millis(at.saturating_sub(now).max(10)));
                }
                if !cmds.is_empty() {
                    tracing::debug!(commands = cmds.len(), "orchestrator proposes");
                    if let Err(e) = self.raft.propose(Command::Batch(cmds)).await {
                        tracing::warn!(error = %e, "orchestrator proposal failed");
                        wait = Duration::from_millis(200);
                    } else {
                        continue;
                    }
                }
            }
            tokio::select! {
                r = published.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => return,
            }
            if *self.shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
