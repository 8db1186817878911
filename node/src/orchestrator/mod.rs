//! The orchestrator: leader-only. Watches the published cluster state and
//! proposes the commands that make tasks match services.
//!
//! Split in two: [`orchestrate`] is a pure function (state, now) -> commands,
//! built from [`reconcile`] (what tasks should exist) and [`placement`]
//! (where they go); [`Orchestrator`] is the actor that runs it whenever the
//! state changes or a restart delay expires, while this node leads. It waits
//! for each proposal to commit before deciding again, so it never acts twice
//! on the same state. A new leader reconciles everything once at start.
//!
//! Rounds are scoped ([`Scope`]): a round woken by state changes looks only
//! at the services those changes touched (from the Raft driver's events), so
//! a live cluster's cost per change does not grow with its number of
//! services. A node change, lost events, a timer or the idle recheck make a
//! round look at everything. Events reach the actor before the state they
//! belong to is published, so each round also looks again at the services of
//! the previous round's events (they may have been read against an older
//! state).

pub mod placement;
pub mod reconcile;
pub mod restart;
pub mod updater;

use crate::raft::RaftHandle;
use crate::store::{ClusterState, Event};
use skein_protocol::{Command, Millis, ServiceId, TaskState};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Which services a round looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Services(HashSet<ServiceId>),
}

impl Scope {
    /// The services `events` touched, as of `state` (a task event counts for
    /// its service; a node event touches everything).
    pub fn of_events<'a>(
        state: &ClusterState,
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Scope {
        let mut ids = HashSet::new();
        for e in events {
            match e {
                Event::Node(_) => return Scope::All,
                Event::Service(id) => {
                    ids.insert(id.clone());
                }
                Event::Task(id) => {
                    if let Some(t) = state.tasks.get(id) {
                        ids.insert(t.service_id.clone());
                    }
                }
            }
        }
        Scope::Services(ids)
    }

    fn services(&self) -> Option<&HashSet<ServiceId>> {
        match self {
            Scope::All => None,
            Scope::Services(ids) => Some(ids),
        }
    }
}

/// The commands that move `state` toward what its services ask for, and the
/// time to look again if nothing else happens.
pub fn orchestrate(
    state: &ClusterState,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
) -> (Vec<Command>, Option<Millis>) {
    orchestrate_scoped(state, now, new_id, &Scope::All)
}

/// [`orchestrate`] for the services in `scope` only (placement still
/// considers every pending task).
pub fn orchestrate_scoped(
    state: &ClusterState,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
    scope: &Scope,
) -> (Vec<Command>, Option<Millis>) {
    if scope == &Scope::Services(HashSet::new()) {
        return (Vec::new(), None);
    }
    let plan = reconcile::reconcile_scoped(state, now, new_id, scope.services());
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
        let mut events = self.raft.events();
        let mut new_id = || crate::util::random_hex(6);
        // Looks at everything at least this often, whatever else happens.
        let idle = Duration::from_secs(2);
        // The next round looks at everything (start, leadership, timers).
        let mut full = true;
        let mut last_full = tokio::time::Instant::now();
        // Events of the previous round, looked at again (see the header).
        let mut carried: Vec<Event> = Vec::new();
        // Earliest time some service has something to do (restart delays).
        let mut wake: Option<Millis> = None;
        loop {
            let snap = published.borrow_and_update().clone();
            // Read after the state: every event of an apply up to `snap` is here.
            let mut fresh = Vec::new();
            loop {
                match events.try_recv() {
                    Ok(e) => fresh.push(e),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => full = true,
                    Err(_) => break,
                }
            }
            let now = crate::util::now_ms();
            if wake.is_some_and(|w| w <= now) || last_full.elapsed() >= idle {
                full = true;
            }
            let mut retry_in = None;
            if !snap.leader_ready {
                full = true;
                carried.clear();
                wake = None;
            } else {
                let scope = if full {
                    last_full = tokio::time::Instant::now();
                    wake = None;
                    Scope::All
                } else {
                    Scope::of_events(&snap.state, carried.iter().chain(&fresh))
                };
                full = false;
                carried = fresh;
                let (cmds, wake_at) = orchestrate_scoped(&snap.state, now, &mut new_id, &scope);
                if let Some(at) = wake_at {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                }
                if !cmds.is_empty() {
                    tracing::debug!(commands = cmds.len(), "orchestrator proposes");
                    if let Err(e) = self.raft.propose(Command::Batch(cmds)).await {
                        tracing::warn!(error = %e, "orchestrator proposal failed");
                        retry_in = Some(Duration::from_millis(200));
                    } else {
                        continue;
                    }
                }
            }
            let until_wake = wake.map(|w| Duration::from_millis(w.saturating_sub(now).max(10)));
            let wait = [
                Some(idle.saturating_sub(last_full.elapsed())),
                until_wake,
                retry_in,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(idle)
            .max(Duration::from_millis(10));
            tokio::select! {
                r = published.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => full = true,
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
