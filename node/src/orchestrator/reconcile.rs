//! Reconcile: what tasks should exist, as a pure function of the cluster
//! state and `now`. Returns a [`Plan`]; the orchestrator actor turns it into
//! Raft commands. Nothing here does I/O or reads a clock.
//!
//! Per service, tasks are grouped by key: the slot (replicated, 1..=replicas)
//! or the node (global, one per eligible node). For each key:
//! - a task that ended by itself (complete/failed/rejected) is marked done and
//!   replaced as its restart policy says (now, later, or never);
//! - a key whose previous task is still stopping gets no new task yet, so a
//!   slot never runs two tasks unless the update order is start-first;
//! - tasks whose spec is out of date are replaced `parallelism` at a time, in
//!   the update order (stop-first / start-first);
//! - keys beyond the replica count, or nodes no longer eligible, are shut down;
//! - a replicated task on a drained node is displaced: stop-first services
//!   stop it (`parallelism` at a time) and refill the slot elsewhere;
//!   start-first services start the replacement elsewhere first and stop the
//!   displaced task once the replacement runs (and is healthy), so a drain
//!   costs them no running replica;
//! - finished tasks are kept as history (the newest [`HISTORY`] per key) and
//!   reaped beyond that, or at once when their service is gone.

use super::placement::{offers_runtime, satisfies};
use super::restart::{decide, RestartDecision};
use crate::store::ClusterState;
use skein_protocol::{
    Millis, NodeStatus, Service, ServiceId, ServiceMode, Task, TaskId, TaskState, TaskStatus,
    UpdateOrder, UpdateStatus,
};
use std::collections::{BTreeMap, HashSet};

/// Finished tasks kept per slot (Swarm's task history retention default).
pub const HISTORY: usize = 5;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<Task>,
    pub shutdown: Vec<TaskId>,
    pub remove: Vec<TaskId>,
    pub update_status: Vec<(ServiceId, Option<UpdateStatus>)>,
    /// Tasks on a down node that are given up on (replicated ones move).
    pub orphan: Vec<TaskId>,
    /// Service-level commands: automatic rollbacks (proposed first).
    pub commands: Vec<skein_protocol::Command>,
    /// Earliest time reconcile has something to do without any new event.
    pub wake_at: Option<Millis>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.shutdown.is_empty()
            && self.remove.is_empty()
            && self.update_status.is_empty()
            && self.orphan.is_empty()
            && self.commands.is_empty()
    }
    fn wake(&mut self, at: Millis) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The task ended by itself (not shut down by the orchestrator).
fn ended(t: &Task) -> bool {
    matches!(
        t.status.state,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    )
}

/// `last` ended by itself: the restart history of its replacement when the
/// restart policy says to start it now; None when not now (a wake-up is
/// planned for when it may) or never.
fn restart_now(last: &Task, svc: &Service, now: Millis, plan: &mut Plan) -> Option<Vec<Millis>> {
    match decide(last, &svc.spec.restart_policy, now) {
        RestartDecision::Now { restarts } => Some(restarts),
        RestartDecision::At(at) => {
            plan.wake(at);
            None
        }
        RestartDecision::Never => None,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Slot(u64),
    Node(String),
}

fn key_of(t: &Task) -> Option<Key> {
    match (t.slot, &t.node_id) {
        (Some(s), _) => Some(Key::Slot(s)),
        (None, Some(n)) => Some(Key::Node(n.clone())),
        (None, None) => None,
    }
}

/// Wanted to run and not finished.
fn alive(t: &Task) -> bool {
    t.desired_state <= TaskState::Running && !t.status.state.is_terminal()
}

/// Told to stop, not stopped yet.
fn stopping(t: &Task) -> bool {
    t.desired_state > TaskState::Running && !t.status.state.is_terminal()
}

/// Ended on its own (not stopped by the orchestrator) and not yet marked done.
fn ended_unacknowledged(t: &Task) -> bool {
    t.desired_state <= TaskState::Running && t.status.state.is_terminal()
}

pub fn reconcile(state: &ClusterState, now: Millis, new_id: &mut dyn FnMut() -> String) -> Plan {
    reconcile_scoped(state, now, new_id, None)
}

/// [`reconcile`], limited to the services in `scope` (None: every service).
/// A scoped round skips what only a node change can cause (tasks on nodes
/// that left or went down): the caller makes every round that follows a
/// node change a full one.
pub fn reconcile_scoped(
    state: &ClusterState,
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
    scope: Option<&HashSet<ServiceId>>,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        if scope.is_some_and(|s| !s.contains(&t.service_id)) {
            continue;
        }
        let node_gone = t
            .node_id
            .as_deref()
            .is_some_and(|n| !state.nodes.contains_key(n));
        if node_gone {
            // Its node left the cluster: nothing will ever report on it again.
            plan.remove.push(t.id.clone());
            continue;
        }
        let node_down = t
            .node_id
            .as_deref()
            .and_then(|n| state.nodes.get(n))
            .is_some_and(|n| n.status == NodeStatus::Down);
        if node_down && !t.status.state.is_terminal() {
            // Nobody will hear from it while its node is down. A replicated
            // task moves (its slot is filled elsewhere); a task being stopped
            // is done. A global task stays bound to its node. When the node
            // comes back, its worker sees the task orphaned and stops it.
            let stays = t.slot.is_none()
                && t.desired_state <= TaskState::Running
                && state.services.contains_key(&t.service_id);
            if !stays {
                plan.orphan.push(t.id.clone());
                continue;
            }
        }
        if !state.services.contains_key(&t.service_id) {
            if t.status.state.is_terminal() {
                plan.remove.push(t.id.clone());
            } else if t.desired_state <= TaskState::Running {
                plan.shutdown.push(t.id.clone());
            }
            continue;
        }
        by_service.entry(&t.service_id).or_default().push(t);
    }
    let services: Box<dyn Iterator<Item = &Service>> = match scope {
        None => Box::new(state.services.values()),
        Some(ids) => {
            let mut ids: Vec<&ServiceId> = ids.iter().collect();
            ids.sort();
            Box::new(ids.into_iter().filter_map(|id| state.services.get(id)))
        }
    };
    for svc in services {
        let tasks = by_service.remove(svc.id.as_str()).unwrap_or_default();
        reconcile_service(state, svc, &tasks, now, new_id, &mut plan);
    }
    plan
}

fn reconcile_service(
    state: &ClusterState,
    svc: &Service,
    tasks: &[&Task],
    now: Millis,
    new_id: &mut dyn FnMut() -> String,
    plan: &mut Plan,
) {
    let mut by_key: BTreeMap<Key, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        match key_of(t) {
            Some(k) => by_key.entry(k).or_default().push(t),
            None => {
                if alive(t) {
                    plan.shutdown.push(t.id.clone());
                }
            }
        }
    }
    for list in by_key.values_mut() {
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    }

    // Which keys should exist, and may a new task be created for each.
    let wanted: BTreeMap<Key, bool> = match svc.spec.mode {
        ServiceMode::Replicated => (1..=svc.spec.desired_replicas().unwrap_or(0))
            .map(|s| (Key::Slot(s), true))
            .collect(),
        ServiceMode::Global => global_eligible(state, &svc.spec)
            .map(|n| (Key::Node(n.id.clone()), n.schedulable()))
            .collect(),
    };

    let current = |t: &Task| t.spec.same_task_template(&svc.spec);
    let displaced = |t: &Task| t.slot.is_some() && on_drained_node(state, t);
    let mut outdated: Vec<&Task> = Vec::new();
    // Current tasks on drained nodes, each with the slot's newest task.
    let mut to_move: Vec<(&Task, Option<&Task>)> = Vec::new();
    let mut in_flight = 0u64;

    // Keys no longer wanted: stop what runs there.
    for (key, list) in &by_key {
        if !wanted.contains_key(key) {
            for t in list.iter().filter(|t| alive(t) || ended_unacknowledged(t)) {
                plan.shutdown.push(t.id.clone());
            }
        }
    }

    for (key, may_create) in &wanted {
        let list = by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
        for t in list.iter().filter(|t| ended_unacknowledged(t)) {
            plan.shutdown.push(t.id.clone());
        }
        let live: Vec<&Task> = list.iter().copied().filter(|t| alive(t)).collect();
        let any_stopping = list.iter().any(|t| stopping(t));
        match live.as_slice() {
            [] => {
                if any_stopping {
                    in_flight += 1;
                    continue;
                }
                if !may_create {
                    continue;
                }
                let restarts = match list.last() {
                    Some(last) if current(last) && ended(last) => {
                        match restart_now(last, svc, now, plan) {
                            Some(r) => r,
                            None => continue,
                        }
                    }
                    _ => Vec::new(),
                };
                plan.create
                    .push(new_task(svc, key, now, new_id(), restarts));
                in_flight += 1;
            }
            [only] => {
                if !current(only) {
                    outdated.push(only);
                } else if displaced(only) {
                    to_move.push((only, list.last().copied()));
                } else if only.status.state < TaskState::Running {
                    in_flight += 1;
                }
            }
            many => {
                // Start-first replacement in progress, or duplicates: keep the
                // newest current task once it runs, stop the rest.
                let newest_current = many.iter().rev().find(|t| current(t));
                match newest_current {
                    Some(keep) if keep.status.state == TaskState::Running => {
                        for t in many.iter().filter(|t| t.id != keep.id) {
                            plan.shutdown.push(t.id.clone());
                        }
                    }
                    Some(keep) => {
                        in_flight += 1;
                        // Extra current duplicates beyond the one we wait for
                        // (a displaced task runs on until its replacement does).
                        for t in many
                            .iter()
                            .filter(|t| t.id != keep.id && current(t) && !displaced(t))
                        {
                            plan.shutdown.push(t.id.clone());
                        }
                    }
                    None => {
                        // All outdated: keep the newest, stop older duplicates.
                        let (newest, older) = many.split_last().unwrap_or((&many[0], &[]));
                        for t in older {
                            plan.shutdown.push(t.id.clone());
                        }
                        outdated.push(newest);
                    }
                }
            }
        }
    }

    // Rolling replacement of outdated tasks: the updater decides.
    let step = super::updater::step(&super::updater::Input {
        svc,
        tasks,
        outdated: &outdated,
        in_flight,
        now,
    });
    let replacing = (step.stop_first.len() + step.start_first.len()) as u64;
    plan.shutdown.extend(step.stop_first);
    for id in &step.start_first {
        if let Some(key) = outdated
            .iter()
            .find(|t| &t.id == id)
            .and_then(|t| key_of(t))
        {
            plan.create
                .push(new_task(svc, &key, now, new_id(), Vec::new()));
        }
    }
    if let Some(status) = step.status {
        plan.update_status.push((svc.id.clone(), Some(status)));
    }
    if let Some(cmd) = step.command {
        plan.commands.push(cmd);
    }
    if let Some(at) = step.wake_at {
        plan.wake(at);
    }

    // Tasks displaced by a drain, in the service's update order, within what
    // the rolling replacement left of the parallelism budget.
    let uc = &svc.spec.update_config;
    let mut budget = if uc.parallelism == 0 {
        u64::MAX
    } else {
        uc.parallelism.saturating_sub(in_flight + replacing)
    };
    for (t, newest) in to_move {
        if budget == 0 {
            break;
        }
        match uc.order {
            UpdateOrder::StopFirst => plan.shutdown.push(t.id.clone()),
            UpdateOrder::StartFirst => {
                let Some(key) = key_of(t) else { continue };
                // A replacement that ended by itself restarts as its policy says.
                let restarts = match newest {
                    Some(last) if last.id != t.id && current(last) && ended(last) => {
                        match restart_now(last, svc, now, plan) {
                            Some(r) => r,
                            None => continue,
                        }
                    }
                    _ => Vec::new(),
                };
                plan.create
                    .push(new_task(svc, &key, now, new_id(), restarts));
            }
        }
        budget -= 1;
    }

    // History: keep the newest HISTORY finished tasks per key.
    for list in by_key.values() {
        let finished: Vec<&&Task> = list
            .iter()
            .filter(|t| t.status.state.is_terminal() && t.desired_state > TaskState::Running)
            .collect();
        if finished.len() > HISTORY {
            for t in &finished[..finished.len() - HISTORY] {
                plan.remove.push(t.id.clone());
            }
        }
    }
}

/// Whether the task's node is being drained.
fn on_drained_node(state: &ClusterState, t: &Task) -> bool {
    t.node_id
        .as_deref()
        .and_then(|n| state.nodes.get(n))
        .is_some_and(|n| n.availability == skein_protocol::Availability::Drain)
}

/// Nodes that should run a task of a global service: not drained,
/// satisfying its constraints and offering its runtime. (Paused and down
/// nodes keep their task but get no new one.)
pub fn global_eligible<'a>(
    state: &'a ClusterState,
    spec: &'a skein_protocol::ServiceSpec,
) -> impl Iterator<Item = &'a skein_protocol::Node> + 'a {
    state.nodes.values().filter(move |n| {
        n.availability != skein_protocol::Availability::Drain
            && satisfies(n, &spec.placement.constraints)
            && offers_runtime(n, spec.runtime)
    })
}

fn new_task(svc: &Service, key: &Key, now: Millis, id: String, restarts: Vec<Millis>) -> Task {
    let (slot, node_id) = match key {
        Key::Slot(s) => (Some(*s), None),
        Key::Node(n) => (None, Some(n.clone())),
    };
    Task {
        id,
        service_id: svc.id.clone(),
        service_name: svc.spec.name.clone(),
        slot,
        node_id,
        spec_version: svc.version,
        spec: svc.spec.clone(),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Pending,
            timestamp: now,
            message: "pending".into(),
            ..Default::default()
        },
        created_at: now,
        restarts,
    }
}
