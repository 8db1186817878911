//! The worker: node-side. Makes the tasks on this node match the
//! assignments the dispatcher sends, and reports what it observes.
//!
//! Invariants:
//! - a task id is started at most once on this node: a task the runtime
//!   already has (running or exited, also from before an agent restart) is
//!   adopted, never started again;
//! - until the first assignment set arrives nothing is started or removed,
//!   so a restarting agent adopts its live tasks before acting;
//! - runtime instances of tasks the node is no longer assigned are stopped
//!   and removed;
//! - the worker is the only writer of task status; it re-reports whatever
//!   the assignments show the store has not recorded yet.

pub mod health;
pub mod session;

use crate::runtime::{Observed, ObservedState, Runtime, RuntimeError};
use skein_protocol::task::Health;
use skein_protocol::wire::{Assignments, StatusReport};
use skein_protocol::{RuntimeKind, Task, TaskId, TaskState, TaskStatus};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The runtimes this node offers; the first one is its default.
#[derive(Clone)]
pub struct Runtimes {
    default: RuntimeKind,
    map: BTreeMap<RuntimeKind, Arc<dyn Runtime>>,
}

impl Runtimes {
    pub fn new(default: Arc<dyn Runtime>) -> Self {
        let kind = default.kind();
        let mut map = BTreeMap::new();
        map.insert(kind, default);
        Runtimes { default: kind, map }
    }
    pub fn add(&mut self, rt: Arc<dyn Runtime>) {
        self.map.insert(rt.kind(), rt);
    }
    pub fn default_kind(&self) -> RuntimeKind {
        self.default
    }
    /// Default first.
    pub fn kinds(&self) -> Vec<RuntimeKind> {
        let mut v = vec![self.default];
        v.extend(self.map.keys().copied().filter(|k| *k != self.default));
        v
    }
    pub fn for_task(&self, task: &Task) -> Option<&Arc<dyn Runtime>> {
        self.map.get(&task.spec.runtime.unwrap_or(self.default))
    }
    pub fn get(&self, kind: RuntimeKind) -> Option<&Arc<dyn Runtime>> {
        self.map.get(&kind)
    }
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        self.map.values()
    }
    /// A task's output, from whichever runtime has it.
    pub async fn logs(&self, task: &Task, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        match self.for_task(task) {
            Some(rt) => rt.logs(&task.id, tail).await,
            None => Ok(Vec::new()),
        }
    }
}

/// What finished in the background.
enum Done {
    Started {
        id: TaskId,
        result: Result<String, RuntimeError>,
    },
    Stopped {
        id: TaskId,
    },
    Removed {
        id: TaskId,
    },
    Probed {
        id: TaskId,
        began: u64,
        result: health::ProbeResult,
    },
}

#[derive(Default)]
struct Local {
    task: Option<Task>,
    /// This worker asked the runtime to start it.
    started: bool,
    /// A start or stop is in flight.
    busy: bool,
    /// Set when the start failed or the task turned unhealthy: reported
    /// instead of what the runtime shows.
    final_status: Option<TaskStatus>,
    /// Health of a process task, probed by this worker.
    tracker: Option<health::Tracker>,
    probing: bool,
    stop_done: bool,
    /// Last status sent and when.
    sent: Option<(TaskStatus, u64)>,
    /// Restarts this worker made itself while no manager was reachable.
    local_restarts: u64,
    /// When the next such restart is due.
    restart_due: Option<u64>,
}

pub struct Worker {
    node_id: String,
    runtimes: Runtimes,
    assignments: mpsc::Receiver<Assignments>,
    reports: mpsc::Sender<StatusReport>,
    tasks: HashMap<TaskId, Local>,
    sequence: u64,
    synced: bool,
    removing: HashSet<TaskId>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    poll: Duration,
    /// Whether a manager answers this node's session (None: the node's own
    /// manager serves it in-process, always reachable).
    online: Option<watch::Receiver<bool>>,
    /// Where local restart counts are kept across agent restarts.
    restarts_file: Option<std::path::PathBuf>,
    /// Since when (ms) no manager answers, as this worker noticed it.
    offline_since: Option<u64>,
}

/// Re-send a status the store has not recorded after this long.
const RESEND_MS: u64 = 2000;

impl Worker {
    pub fn new(
        node_id: String,
        runtimes: Runtimes,
        assignments: mpsc::Receiver<Assignments>,
        reports: mpsc::Sender<StatusReport>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Worker {
            node_id,
            runtimes,
            assignments,
            reports,
            tasks: HashMap::new(),
            sequence: 0,
            synced: false,
            removing: HashSet::new(),
            done_tx,
            done_rx,
            poll: Duration::from_millis(500),
            online: None,
            restarts_file: None,
            offline_since: None,
        }
    }

    /// Says when no manager answers this node's session: tasks that end
    /// meanwhile are restarted here, per their restart policy (the
    /// orchestrator, which normally replaces them, cannot).
    /// `data_dir` keeps the count of such restarts per task (shown in
    /// `service ps` once a manager hears of them), also across a restart
    /// of the agent.
    pub fn with_online(
        mut self,
        online: watch::Receiver<bool>,
        data_dir: &std::path::Path,
    ) -> Self {
        self.online = Some(online);
        let file = data_dir.join("local-restarts.json");
        let kept: HashMap<TaskId, u64> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for (id, n) in kept {
            self.tasks.entry(id).or_default().local_restarts = n;
        }
        self.restarts_file = Some(file);
        self
    }

    /// Writes the local restart counts of the tasks still assigned here.
    fn keep_restarts(&self) {
        let Some(file) = &self.restarts_file else {
            return;
        };
        let counts: HashMap<&TaskId, u64> = self
            .tasks
            .iter()
            .filter(|(_, l)| l.local_restarts > 0)
            .map(|(id, l)| (id, l.local_restarts))
            .collect();
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&counts)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot keep the local restart counts");
        }
    }

    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                a = self.assignments.recv() => match a {
                    Some(a) => self.on_assignments(a),
                    None => return,
                },
                Some(d) = self.done_rx.recv() => {
                    self.on_done(d);
                    // Starts finishing together: one sync (one listing) for all.
                    while let Ok(d) = self.done_rx.try_recv() {
                        self.on_done(d);
                    }
                }
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {
                    // Tasks keep running while the agent is away: nothing to stop here.
                    return;
                }
            }
            self.sync().await;
        }
    }

    fn on_assignments(&mut self, a: Assignments) {
        if a.sequence <= self.sequence && self.synced {
            return;
        }
        self.sequence = a.sequence;
        self.synced = true;
        let ids: HashSet<&TaskId> = a.tasks.iter().map(|t| &t.id).collect();
        for (id, local) in self.tasks.iter_mut() {
            if !ids.contains(id) {
                local.task = None;
            }
        }
        for t in a.tasks {
            let id = t.id.clone();
            self.tasks.entry(id).or_default().task = Some(t);
        }
    }

    fn on_done(&mut self, d: Done) {
        match d {
            Done::Started { id, result } => {
                if let Some(l) = self.tasks.get_mut(&id) {
                    l.busy = false;
                    if let Err(e) = result {
                        let state = match e {
                            RuntimeError::Invalid(_) => TaskState::Rejected,
                            _ => TaskState::Failed,
                        };
                        let now = crate::util::now_ms();
                        l.final_status = Some(TaskStatus {
                            state,
                            timestamp: now,
                            finished_at: Some(now),
                            error: e.to_string(),
                            message: "start failed".into(),
                            ..Default::default()
                        });
                    }
                }
            }
            Done::Stopped { id } => {
                if let Some(l) = self.tasks.get_mut(&id) {
                    l.busy = false;
                    l.stop_done = true;
                }
            }
            Done::Removed { id } => {
                self.removing.remove(&id);
            }
            Done::Probed { id, began, result } => {
                if let Some(l) = self.tasks.get_mut(&id) {
                    l.probing = false;
                    if let Some(t) = l.tracker.as_mut() {
                        t.record(result.ok, &result.output, began, crate::util::now_ms());
                    }
                }
            }
        }
    }

    /// Every task instance on this node and the runtime that has it; None
    /// when a runtime cannot list: its tasks would look gone, so the worker
    /// must not act on a partial picture.
    async fn observe(&self) -> Option<(HashMap<TaskId, Observed>, HashMap<TaskId, RuntimeKind>)> {
        let mut out = HashMap::new();
        let mut owner = HashMap::new();
        for rt in self.runtimes.all() {
            match rt.list().await {
                Ok(list) => {
                    for o in list {
                        owner.insert(o.task_id.clone(), rt.kind());
                        out.insert(o.task_id.clone(), o);
                    }
                }
                Err(e) => {
                    tracing::warn!(runtime = %rt.kind(), error = %e, "cannot list tasks; will retry");
                    return None;
                }
            }
        }
        Some((out, owner))
    }

    async fn sync(&mut self) {
        if !self.synced {
            return;
        }
        let Some((observed, owner)) = self.observe().await else {
            return;
        };
        let now = crate::util::now_ms();
        let mut updates = Vec::new();
        let offline = self.online.as_ref().is_some_and(|o| !*o.borrow());
        self.offline_since = if offline {
            Some(self.offline_since.unwrap_or(now))
        } else {
            None
        };
        let offline_for = self.offline_since.map(|t| now.saturating_sub(t));
        let mut restarted = false;

        // Runtime instances nobody assigned (removed services, reaped tasks).
        for id in observed.keys() {
            let assigned = self.tasks.get(id).is_some_and(|l| l.task.is_some());
            if !assigned && !self.removing.contains(id) {
                let Some(rt) = owner.get(id).and_then(|k| self.runtimes.get(*k)).cloned() else {
                    continue;
                };
                self.removing.insert(id.clone());
                let done = self.done_tx.clone();
                let id = id.clone();
                tracing::info!(task = %id, "removing a task this node is no longer assigned");
                tokio::spawn(async move {
                    if let Err(e) = rt.stop(&id, Duration::from_secs(10)).await {
                        tracing::warn!(task = %id, error = %e, "stop failed");
                    }
                    if let Err(e) = rt.remove(&id).await {
                        tracing::warn!(task = %id, error = %e, "remove failed");
                    }
                    let _ = done.send(Done::Removed { id });
                });
            }
        }
        self.tasks
            .retain(|id, l| l.task.is_some() || l.busy || observed.contains_key(id));

        for (id, local) in self.tasks.iter_mut() {
            let Some(task) = local.task.clone() else {
                continue;
            };
            if local.busy {
                continue;
            }
            let obs = observed.get(id);
            let stored = task.status.state;
            if let Some(why) = cut_off_stop(&task, offline_for) {
                if local.final_status.is_none() && !stored.is_terminal() {
                    tracing::warn!(task = %id, "{why}: stopping it (on-disconnect)");
                    local.final_status = Some(TaskStatus {
                        state: TaskState::Failed,
                        timestamp: now,
                        finished_at: Some(now),
                        error: why,
                        message: "stopped: cut off".into(),
                        started_at: task.status.started_at,
                        ..Default::default()
                    });
                }
            }
            let want: Option<TaskStatus> = if stored.is_terminal() {
                // Finished in the store: make sure nothing of it still runs.
                if matches!(obs, Some(o) if o.state == ObservedState::Running) {
                    Self::spawn_stop(&self.runtimes, &self.done_tx, local, &task);
                }
                None
            } else if task.desired_state > TaskState::Running {
                match obs {
                    Some(o) if o.state == ObservedState::Running && !local.stop_done => {
                        Self::spawn_stop(&self.runtimes, &self.done_tx, local, &task);
                        None
                    }
                    _ => Some(TaskStatus {
                        state: TaskState::Shutdown,
                        timestamp: now,
                        finished_at: Some(now),
                        exit_code: match obs.map(|o| &o.state) {
                            Some(ObservedState::Exited { exit_code, .. }) => Some(*exit_code),
                            _ => None,
                        },
                        message: "shutdown".into(),
                        runtime_id: obs.map(|o| o.runtime_id.clone()).unwrap_or_default(),
                        started_at: task.status.started_at,
                        ..Default::default()
                    }),
                }
            } else if let Some(fin) = local.final_status.clone() {
                if matches!(obs, Some(o) if o.state == ObservedState::Running) {
                    Self::spawn_stop(&self.runtimes, &self.done_tx, local, &task);
                }
                Some(fin)
            } else {
                match obs {
                    Some(o) if o.state == ObservedState::Running => {
                        let runtime_checks = self
                            .runtimes
                            .for_task(&task)
                            .is_some_and(|rt| rt.checks_health());
                        let mut status =
                            running_status(&self.done_tx, local, &task, o, runtime_checks, now);
                        if local.local_restarts > 0 && status.state == TaskState::Running {
                            status.message = format!(
                                "running (restarted {}x on this node while no manager was reachable)",
                                local.local_restarts
                            );
                        }
                        if status.state == TaskState::Failed {
                            // Unhealthy: stop it and say why, whatever it exits with.
                            local.final_status = Some(status.clone());
                            Self::spawn_stop(&self.runtimes, &self.done_tx, local, &task);
                        }
                        Some(status)
                    }
                    Some(o) => {
                        let exited = status_of(o, now);
                        if offline
                            && cut_off_stop(&task, offline_for).is_none()
                            && restarts_locally(&task, &exited, local.local_restarts)
                        {
                            let delay = task.spec.restart_policy.delay.as_millis();
                            let finished = exited.finished_at.unwrap_or(now);
                            let due = *local.restart_due.get_or_insert(finished + delay);
                            if now >= due {
                                Self::spawn_restart(&self.runtimes, &self.done_tx, local, &task);
                                restarted = true;
                            }
                            None
                        } else {
                            Some(exited)
                        }
                    }
                    None if local.started || stored >= TaskState::Starting => Some(TaskStatus {
                        state: TaskState::Failed,
                        timestamp: now,
                        finished_at: Some(now),
                        error: "task is gone from its node (lost while the agent was down?)".into(),
                        message: "lost".into(),
                        ..Default::default()
                    }),
                    None => match self.runtimes.for_task(&task) {
                        Some(rt) => {
                            local.started = true;
                            local.busy = true;
                            let rt = rt.clone();
                            let done = self.done_tx.clone();
                            let t = task.clone();
                            tokio::spawn(async move {
                                let result = rt.start(&t).await;
                                let _ = done.send(Done::Started { id: t.id, result });
                            });
                            Some(TaskStatus {
                                state: TaskState::Starting,
                                timestamp: now,
                                message: "starting".into(),
                                ..Default::default()
                            })
                        }
                        None => Some(TaskStatus {
                            state: TaskState::Rejected,
                            timestamp: now,
                            error: format!(
                                "runtime {} is not available on this node",
                                task.spec.runtime.map(|k| k.to_string()).unwrap_or_default()
                            ),
                            message: "rejected".into(),
                            ..Default::default()
                        }),
                    },
                }
            };
            if let Some(w) = want {
                if needs_report(&task.status, &w, local.sent.as_ref(), now) {
                    local.sent = Some((w.clone(), now));
                    updates.push((id.clone(), w));
                }
            }
        }
        if restarted {
            self.keep_restarts();
        }
        if !updates.is_empty() {
            let report = StatusReport {
                node_id: self.node_id.clone(),
                updates,
            };
            if self.reports.send(report).await.is_err() {
                tracing::warn!("dispatcher is gone; status not reported");
            }
        }
    }

    /// Starts an exited task again under the same id (its old instance is
    /// removed first). Only while no manager is reachable: see
    /// [`restarts_locally`].
    fn spawn_restart(
        runtimes: &Runtimes,
        done_tx: &mpsc::UnboundedSender<Done>,
        local: &mut Local,
        task: &Task,
    ) {
        let Some(rt) = runtimes.for_task(task).cloned() else {
            return;
        };
        local.busy = true;
        local.restart_due = None;
        local.local_restarts += 1;
        local.tracker = None;
        let mut t = task.clone();
        t.status.message = format!(
            "restarted {} time(s) on this node while no manager was reachable",
            local.local_restarts
        );
        tracing::warn!(task = %t.id, restarts = local.local_restarts, "no manager reachable: restarting the task here, per its restart policy");
        let done = done_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = rt.remove(&t.id).await {
                tracing::warn!(task = %t.id, error = %e, "cannot remove the ended instance");
            }
            let result = rt.start(&t).await;
            let _ = done.send(Done::Started { id: t.id, result });
        });
    }

    fn spawn_stop(
        runtimes: &Runtimes,
        done_tx: &mpsc::UnboundedSender<Done>,
        local: &mut Local,
        task: &Task,
    ) {
        let Some(rt) = runtimes.for_task(task).cloned() else {
            return;
        };
        local.busy = true;
        let done = done_tx.clone();
        let id = task.id.clone();
        let grace = task.spec.stop_grace_period.as_duration();
        tokio::spawn(async move {
            if let Err(e) = rt.stop(&id, grace).await {
                tracing::warn!(task = %id, error = %e, "stop failed");
            }
            let _ = done.send(Done::Stopped { id });
        });
    }
}

/// The status of a task its runtime shows running: `running` without a
/// health check or once healthy, `starting` until then, `failed` once
/// unhealthy. Starts this worker's probe when one is due (process tasks).
fn running_status(
    done_tx: &mpsc::UnboundedSender<Done>,
    local: &mut Local,
    task: &Task,
    o: &Observed,
    runtime_checks: bool,
    now: u64,
) -> TaskStatus {
    let mut st = status_of(o, now);
    let Some(hc) = health::effective(task.spec.healthcheck.as_ref()) else {
        return st;
    };
    let verdict = match o.health {
        Some(h) => h,
        // The runtime checks but has no verdict yet.
        None if runtime_checks => Health::Starting,
        None => {
            let tracker = local
                .tracker
                .get_or_insert_with(|| health::Tracker::new(hc, o.started_at));
            if !local.probing && tracker.due(now) {
                local.probing = true;
                let done = done_tx.clone();
                let (id, hc, env) = (task.id.clone(), hc.clone(), task.spec.env.clone());
                let dir = task.spec.working_dir.clone();
                tokio::spawn(async move {
                    let began = crate::util::now_ms();
                    let result = health::probe(&hc, &env, dir.as_deref()).await;
                    let _ = done.send(Done::Probed { id, began, result });
                });
            }
            tracker.status()
        }
    };
    st.health = Some(verdict);
    match verdict {
        Health::Healthy => {}
        Health::Starting => {
            st.state = TaskState::Starting;
            st.message = "starting: waiting for the health check".into();
        }
        Health::Unhealthy => {
            let detail = local
                .tracker
                .as_ref()
                .map(|t| t.last_failure.clone())
                .filter(|s| !s.is_empty());
            st.state = TaskState::Failed;
            st.finished_at = Some(now);
            st.message = "unhealthy".into();
            st.error = match detail {
                Some(d) => format!(
                    "health check failed {} times in a row: {d}",
                    hc.retries.max(1)
                ),
                None => format!("health check failed {} times in a row", hc.retries.max(1)),
            };
        }
    }
    st
}

/// Why a task whose service says `--on-disconnect stop-after=D` must stop
/// now that no manager has answered for `offline_for` ms (None: it runs on).
pub fn cut_off_stop(task: &Task, offline_for: Option<u64>) -> Option<String> {
    let skein_protocol::OnDisconnect::StopAfter(d) = task.spec.on_disconnect else {
        return None;
    };
    let off = offline_for?;
    (off >= d.as_millis() && task.desired_state == TaskState::Running).then(|| {
        format!(
            "no manager reachable for {}: stopped (on-disconnect {})",
            skein_protocol::Dur::from_millis(off),
            task.spec.on_disconnect
        )
    })
}

/// Whether a task that ended (`exited`) while no manager is reachable is
/// restarted on this node: its restart policy's condition allows it and its
/// attempts (counted here, since the node went offline) are not used up.
/// The orchestrator's own restart (a new task in the slot, maybe elsewhere)
/// takes over again once a manager answers.
pub fn restarts_locally(task: &Task, exited: &TaskStatus, done: u64) -> bool {
    use skein_protocol::spec::RestartCondition;
    let policy = &task.spec.restart_policy;
    let wanted = match policy.condition {
        RestartCondition::None => false,
        RestartCondition::OnFailure => exited.state == TaskState::Failed,
        RestartCondition::Any => true,
    };
    wanted
        && task.desired_state == TaskState::Running
        && (policy.max_attempts == 0 || done < policy.max_attempts)
}

/// The status a runtime observation means.
fn status_of(o: &Observed, now: u64) -> TaskStatus {
    match &o.state {
        ObservedState::Running => TaskStatus {
            state: TaskState::Running,
            timestamp: now,
            started_at: Some(o.started_at),
            message: "running".into(),
            runtime_id: o.runtime_id.clone(),
            ..Default::default()
        },
        ObservedState::Exited {
            exit_code,
            finished_at,
        } => TaskStatus {
            state: if *exit_code == 0 {
                TaskState::Complete
            } else {
                TaskState::Failed
            },
            timestamp: *finished_at,
            started_at: Some(o.started_at),
            finished_at: Some(*finished_at),
            exit_code: Some(*exit_code),
            error: if *exit_code == 0 {
                String::new()
            } else {
                format!("task exited with code {exit_code}")
            },
            message: "exited".into(),
            runtime_id: o.runtime_id.clone(),
            ..Default::default()
        },
    }
}

/// Report when the store is behind what we see, unless we just did.
fn needs_report(
    stored: &TaskStatus,
    want: &TaskStatus,
    sent: Option<&(TaskStatus, u64)>,
    now: u64,
) -> bool {
    let behind = want.state > stored.state
        || (want.state == stored.state
            && (want.runtime_id != stored.runtime_id || want.health != stored.health));
    if !behind {
        return false;
    }
    !matches!(sent, Some((s, at)) if s.state == want.state && now.saturating_sub(*at) < RESEND_MS)
}

#[cfg(test)]
mod tests;
