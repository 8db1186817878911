//! Tasks: one scheduled instance of a service. The orchestrator writes
//! `desired_state` and `node_id`; the worker on that node writes `status`.
//! Task state is totally ordered and only moves forward: `apply` refuses a
//! status that would move it back.

use crate::{Millis, NodeId, ServiceId, ServiceSpec, TaskId};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
}

impl TaskState {
    /// Past running: the task will not run again.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    /// When the task entered `state`.
    pub timestamp: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub exit_code: Option<i32>,
    /// Why the task failed or was rejected; empty otherwise.
    pub error: String,
    /// What is happening, in a few words ("starting", "scheduling: no suitable node").
    pub message: String,
    pub health: Option<Health>,
    /// Runtime handle: container id or process id.
    pub runtime_id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service_id: ServiceId,
    pub service_name: String,
    /// Replicated services: the slot (1-based) this task fills.
    pub slot: Option<u64>,
    /// Global services: the node this task belongs to. Replicated: where the
    /// scheduler put it (None until assigned).
    pub node_id: Option<NodeId>,
    /// The service version this task was made from.
    pub spec_version: u64,
    /// A copy of the service spec at that version: what the worker runs.
    pub spec: ServiceSpec,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    pub created_at: Millis,
    /// When this slot (or global node) was restarted by its restart policy,
    /// inherited from the task this one replaced: what `max_attempts` and
    /// `window` count. Empty for a slot's first task and after a spec change.
    #[serde(default)]
    pub restarts: Vec<Millis>,
}

impl Task {
    /// `web.2` for replicated tasks, `web.<node-id>` for global ones.
    pub fn display_name(&self) -> String {
        match (self.slot, &self.node_id) {
            (Some(slot), _) => format!("{}.{}", self.service_name, slot),
            (None, Some(node)) => format!("{}.{}", self.service_name, node),
            (None, None) => format!("{}.{}", self.service_name, self.id),
        }
    }
    /// Desired to run and not finished: counts toward the service's replicas.
    pub fn is_live(&self) -> bool {
        self.desired_state <= TaskState::Running && !self.status.state.is_terminal()
    }
}
