//! Services: the user's spec, the spec it replaced, and where an update or
//! rollback stands. `version` counts every spec change; tasks remember the
//! version they were made from. Writers: the user (spec), the orchestrator's
//! updater (update_status).

use crate::{Millis, ServiceId, ServiceSpec, STACK_LABEL};
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
