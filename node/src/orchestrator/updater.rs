//! The updater: one pure step of a rolling update or rollback of one
//! service. Reconcile finds the out-of-date tasks; this decides which of
//! them to replace now, in which order, and where the rollout stands.
//!
//! Owner: called by [`super::reconcile`] only (leader side). No I/O, no clock.
//! Everything it remembers between steps is in the replicated
//! [`UpdateStatus`] (state, the version the rollout began at, the failures
//! it counted)
//! or derivable from the tasks, so a new leader continues where the old one
//! stopped. Invariants:
//! - pacing is Swarm's: `parallelism` workers each replace one key, wait
//!   until its new task runs, wait `delay`, then take the next key; so under
//!   stop-first at most `parallelism` keys are down because of the update at
//!   any time. The monitor window runs alongside (it does not hold the next
//!   key back); the rollout completes once every key is done and the last
//!   new task has been watched for `delay + monitor`;
//! - start-first starts the new task first; reconcile stops the old one only
//!   once the new one runs (and is healthy). When the old and new task
//!   publish the same host port, that key is done stop-first instead and the
//!   status says so (two tasks cannot bind one port on one node);
//! - a task of this rollout that ends or turns unhealthy within `monitor`
//!   of starting counts as failed, once; when failed / updated exceeds
//!   `max_failure_ratio` the failure action runs: pause, continue, or
//!   rollback (an automatic rollback restores the previous spec and clears
//!   it). A rollback is never rolled back: its failures pause it.
//! - paused rollouts do nothing until the user updates the service again.

use skein_protocol::{
    Command, FailureAction, Millis, Service, ServiceSpec, Task, TaskId, TaskState, UpdateConfig,
    UpdateOrder, UpdateState, UpdateStatus,
};
use std::collections::BTreeSet;

/// What reconcile knows about the service's keys (slots or nodes).
pub struct Input<'a> {
    pub svc: &'a Service,
    /// Every task of the service, history included.
    pub tasks: &'a [&'a Task],
    /// Per key whose live task is out of date: that task, in key order.
    pub outdated: &'a [&'a Task],
    /// Keys whose new task does not run yet (or whose old task is still
    /// stopping with no replacement): the batch in progress.
    pub in_flight: u64,
    pub now: Millis,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// Stop these out-of-date tasks; reconcile fills their key once stopped.
    pub stop_first: Vec<TaskId>,
    /// Start a new task next to each of these; reconcile stops the old one
    /// once the new one runs.
    pub start_first: Vec<TaskId>,
    /// Write this update status (None inside: clear it).
    pub status: Option<UpdateStatus>,
    /// An automatic rollback to the previous spec.
    pub command: Option<Command>,
    /// Look again at this time even if nothing changes (monitor, delay).
    pub wake_at: Option<Millis>,
}

/// The settings that drive the rollout in `state`.
pub fn config_for(spec: &ServiceSpec, state: Option<UpdateState>) -> &UpdateConfig {
    match state {
        Some(s) if s.is_rollback() => &spec.rollback_config,
        _ => &spec.update_config,
    }
}

/// Whether `t` counts as a failure of the rollout that began at service
/// version `from`: made from the current spec since then, ended by itself
/// (or unhealthy), within `monitor` of starting (or never started).
pub fn failed_in_window(t: &Task, spec: &ServiceSpec, from: u64, monitor_ms: u64) -> bool {
    if t.spec_version < from
        || t.desired_state > TaskState::Running
        || !matches!(
            t.status.state,
            TaskState::Complete | TaskState::Failed | TaskState::Rejected
        )
        || !t.spec.same_task_template(spec)
    {
        return false;
    }
    match t.status.started_at {
        None => true,
        Some(s) => {
            let ended = t.status.finished_at.unwrap_or(t.status.timestamp);
            ended.saturating_sub(s) <= monitor_ms
        }
    }
}

fn describe_failure(t: &Task) -> String {
    let what = match t.status.state {
        TaskState::Rejected => "was rejected".to_string(),
        TaskState::Complete => "exited".to_string(),
        _ if t.status.message == "unhealthy" => "turned unhealthy".to_string(),
        _ => "failed".to_string(),
    };
    let when = match (t.status.started_at, t.status.finished_at) {
        (Some(s), Some(f)) => format!(" {:.1}s after it started", f.saturating_sub(s) as f64 / 1e3),
        _ => String::new(),
    };
    let code = t
        .status
        .exit_code
        .map(|c| format!(", exit code {c}"))
        .unwrap_or_default();
    let err = if t.status.error.is_empty() {
        String::new()
    } else {
        format!(": {}", t.status.error)
    };
    format!("task {} {what}{when}{code}{err}", t.display_name())
}

/// Host ports both the old task and the new spec publish.
fn shared_host_ports(old: &Task, spec: &ServiceSpec) -> Vec<String> {
    let new: BTreeSet<_> = spec.host_ports().collect();
    old.spec
        .host_ports()
        .filter(|p| new.contains(p))
        .map(|(port, proto)| {
            let proto = match proto {
                skein_protocol::Protocol::Tcp => "tcp",
                skein_protocol::Protocol::Udp => "udp",
            };
            format!("{port}/{proto}")
        })
        .collect()
}

/// Distinct keys (slot or node) with a task of the current spec made since
/// version `from`: the keys this rollout has updated so far.
fn updated_keys(tasks: &[&Task], spec: &ServiceSpec, from: u64) -> usize {
    tasks
        .iter()
        .filter(|t| t.spec_version >= from && t.spec.same_task_template(spec))
        .map(|t| {
            (
                t.slot,
                if t.slot.is_some() {
                    None
                } else {
                    t.node_id.as_deref()
                },
            )
        })
        .collect::<BTreeSet<_>>()
        .len()
}

pub fn step(input: &Input<'_>) -> Step {
    let Input {
        svc,
        tasks,
        outdated,
        in_flight,
        now,
    } = *input;
    let spec = &svc.spec;
    let mut out = Step::default();

    // Where the rollout stands; a new one begins when tasks are out of date
    // and none is in progress or paused.
    let mut status = match &svc.update_status {
        Some(s)
            if !matches!(
                s.state,
                UpdateState::Completed | UpdateState::RollbackCompleted
            ) =>
        {
            s.clone()
        }
        _ if !outdated.is_empty() && svc.version > 1 => UpdateStatus::begin(
            UpdateState::Updating,
            now,
            svc.version,
            "update in progress",
        ),
        _ => return out,
    };
    let before = svc.update_status.clone();
    let write = |out: &mut Step, status: &UpdateStatus| {
        if before.as_ref() != Some(status) {
            out.status = Some(status.clone());
        }
    };
    if matches!(
        status.state,
        UpdateState::Paused | UpdateState::RollbackPaused
    ) {
        return out;
    }
    let rollback = status.state.is_rollback();
    let uc = config_for(spec, Some(status.state));
    let monitor_ms = uc.monitor.as_millis();

    // Failures inside the monitor window, each counted once.
    let mut newly: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| {
            !status.failed.contains(&t.id)
                && failed_in_window(t, spec, status.from_version, monitor_ms)
        })
        .collect();
    newly.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    if let Some(last) = newly.last() {
        status.failed.extend(newly.iter().map(|t| t.id.clone()));
        let updated = updated_keys(tasks, spec, status.from_version).max(1);
        let ratio = status.failed.len() as f64 / updated as f64;
        if ratio > uc.max_failure_ratio {
            let why = describe_failure(last);
            let action = match (uc.failure_action, rollback) {
                (FailureAction::Continue, _) => FailureAction::Continue,
                (_, true) | (FailureAction::Pause, false) => FailureAction::Pause,
                (FailureAction::Rollback, false) => FailureAction::Rollback,
            };
            match action {
                FailureAction::Continue => {}
                FailureAction::Pause => {
                    let what = if rollback { "rollback" } else { "update" };
                    status.state = if rollback {
                        UpdateState::RollbackPaused
                    } else {
                        UpdateState::Paused
                    };
                    status.message = format!(
                        "{what} paused: {why} ({} of {updated} updated tasks failed); \
                         fix the spec and run `skein service update {}` to resume",
                        status.failed.len(),
                        spec.name
                    );
                    write(&mut out, &status);
                    return out;
                }
                FailureAction::Rollback => match &svc.previous_spec {
                    Some(prev) => {
                        out.command = Some(Command::RollbackService {
                            id: svc.id.clone(),
                            expected_version: svc.version,
                            spec: prev.clone(),
                            keep_previous: false,
                            message: format!("rollback started: update failed: {why}"),
                            at: now,
                        });
                        return out;
                    }
                    None => {
                        status.state = UpdateState::Paused;
                        status.message = format!(
                            "update paused: {why}; there is no previous spec to roll back to"
                        );
                        write(&mut out, &status);
                        return out;
                    }
                },
            }
        }
    }

    // Swarm's pacing: `parallelism` workers, each replaces one key, waits
    // until its new task runs, then waits `delay` before taking the next.
    // Failures are watched all along (above); the rollout completes once
    // every key is done and the last new task was watched for `monitor`.
    let delay_ms = uc.delay.as_millis();
    let started_at: Vec<Millis> = tasks
        .iter()
        .filter(|t| {
            t.spec_version >= status.from_version
                && t.is_live()
                && t.status.state == TaskState::Running
                && t.spec.same_task_template(spec)
        })
        .map(|t| t.status.started_at.unwrap_or(t.status.timestamp))
        .collect();
    let in_delay: Vec<Millis> = started_at
        .iter()
        .map(|s| s + delay_ms)
        .filter(|end| *end > now)
        .collect();
    let busy = in_flight + in_delay.len() as u64;

    if outdated.is_empty() {
        let watched_until = started_at
            .iter()
            .max()
            .map_or(now, |s| s + delay_ms + monitor_ms);
        if in_flight > 0 || watched_until > now {
            if in_flight == 0 {
                out.wake_at = Some(watched_until);
            }
            write(&mut out, &status);
            return out;
        }
        status.state = if rollback {
            UpdateState::RollbackCompleted
        } else {
            UpdateState::Completed
        };
        status.completed = Some(now);
        status.message = if rollback {
            match status.message.strip_prefix("rollback started: ") {
                Some(why) => format!("rollback completed: {why}"),
                None => "rollback completed".into(),
            }
        } else {
            // Keep saying where start-first could not be honoured.
            match status.message.split_once("; start-first done stop-first") {
                Some((_, note)) => format!("update completed; start-first done stop-first{note}"),
                None => "update completed".into(),
            }
        };
        write(&mut out, &status);
        return out;
    }

    // As many keys as there are free workers.
    let n = if uc.parallelism == 0 {
        outdated.len()
    } else {
        usize::try_from(uc.parallelism.saturating_sub(busy)).unwrap_or(usize::MAX)
    };
    if n == 0 {
        out.wake_at = in_delay.iter().min().copied();
        write(&mut out, &status);
        return out;
    }
    let mut note: Option<String> = None;
    for t in outdated.iter().take(n) {
        match uc.order {
            UpdateOrder::StopFirst => out.stop_first.push(t.id.clone()),
            UpdateOrder::StartFirst => {
                let shared = shared_host_ports(t, spec);
                if shared.is_empty() {
                    out.start_first.push(t.id.clone());
                } else {
                    let node = t.node_id.clone().unwrap_or_default();
                    note = Some(format!(
                        "start-first done stop-first for {} on node {node}: old and new task both publish host port {} and cannot bind it together",
                        t.display_name(),
                        shared.join(", ")
                    ));
                    out.stop_first.push(t.id.clone());
                }
            }
        }
    }
    let verb = if rollback { "rollback" } else { "update" };
    status.message = match note {
        Some(n) => format!("{verb} in progress; {n}"),
        None if status.message.contains("start-first done stop-first") => status.message.clone(),
        None if rollback => status.message.clone(),
        None => format!("{verb} in progress"),
    };
    write(&mut out, &status);
    out
}

#[cfg(test)]
mod tests;
