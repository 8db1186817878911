//! Services: the user's spec, the spec it replaced, and where an update or
//! rollback stands. `version` counts every spec change; tasks remember the
//! version they were made from. Writers: the user (spec), the orchestrator's
//! updater (update_status, and the spec on an automatic rollback).
//!
//! Everything the updater needs to continue after a leader change lives
//! here: the state, when this rollout began (tasks created since then belong
//! to it) and the tasks it already counted as failed.

use crate::{Millis, ServiceId, ServiceSpec, TaskId, STACK_LABEL};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started: Millis,
    pub completed: Option<Millis>,
    pub message: String,
    /// Tasks of this rollout that failed inside the monitor window, each
    /// counted once toward `max_failure_ratio`.
    #[serde(default)]
    pub failed: Vec<TaskId>,
    /// The service version this rollout began at: tasks made from this
    /// version on belong to it (versions, not clocks, so clock skew between
    /// the node that took the request and the leader cannot hide a task).
    #[serde(default)]
    pub from_version: u64,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
    /// A rollout is still moving (not paused, not done).
    pub fn in_progress(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
}

impl UpdateStatus {
    /// A rollout that begins at `at`, with the service at `version`.
    pub fn begin(state: UpdateState, at: Millis, version: u64, message: impl Into<String>) -> Self {
        UpdateStatus {
            state,
            started: at,
            completed: None,
            message: message.into(),
            failed: Vec::new(),
            from_version: version,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub spec: ServiceSpec,
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped on every spec change (scale included).
    pub version: u64,
    pub update_status: Option<UpdateStatus>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Service {
    /// The stack this service belongs to, if it was deployed by `stack deploy`.
    pub fn stack(&self) -> Option<&str> {
        self.spec.labels.get(STACK_LABEL).map(String::as_str)
    }
}

/// One deployed version of a stack: every service's spec as deployed.
/// Kept in the replicated state so `stack rollback` works on any manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackVersion {
    /// 1, 2, 3... per stack; never reused.
    pub version: u64,
    pub deployed_at: Millis,
    pub services: Vec<ServiceSpec>,
}
