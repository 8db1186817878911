//! Raft log commands: the only way cluster state changes. Every command
//! carries the timestamps and ids it needs, so applying it is deterministic
//! on every manager (apply never reads a clock or a random source).

use crate::{
    Availability, Millis, Node, NodeId, NodeRole, NodeStatus, Service, ServiceId, ServiceSpec,
    Task, TaskId, TaskState, TaskStatus, UpdateStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Deployed versions kept per stack (`stack rollback --to` reaches back this far).
pub const STACK_VERSIONS: usize = 10;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A node joins or describes itself again (restart, new address or labels).
    UpsertNode(Node),
    SetNodeStatus {
        id: NodeId,
        status: NodeStatus,
        message: String,
        at: Millis,
    },
    /// Operator's changes to a node; None leaves a field as it is.
    UpdateNode {
        id: NodeId,
        role: Option<NodeRole>,
        availability: Option<Availability>,
        labels: Option<BTreeMap<String, String>>,
        at: Millis,
    },
    RemoveNode {
        id: NodeId,
    },
    CreateService(Service),
    /// Replace a service's spec. Refused unless the stored version is
    /// `expected_version` (optimistic concurrency between API callers).
    UpdateService {
        id: ServiceId,
        expected_version: u64,
        spec: ServiceSpec,
        previous_spec: Option<ServiceSpec>,
        at: Millis,
    },
    SetUpdateStatus {
        id: ServiceId,
        status: Option<UpdateStatus>,
    },
    /// Puts `spec` back (a previous spec) and starts driving it with its
    /// rollback settings: `update_status` becomes rollback_started. A manual
    /// rollback keeps the replaced spec as `previous_spec` (so two go back
    /// and forth); an automatic one clears it (never rolled back twice).
    /// Refused unless the stored version is `expected_version`.
    RollbackService {
        id: ServiceId,
        expected_version: u64,
        spec: ServiceSpec,
        keep_previous: bool,
        message: String,
        at: Millis,
    },
    /// Records a deployed version of a stack (the last [`STACK_VERSIONS`]
    /// are kept): the specs of all its services as deployed.
    RecordStackVersion {
        stack: String,
        services: Vec<ServiceSpec>,
        at: Millis,
    },
    /// Removes the service; its tasks are told to shut down and are reaped
    /// once they have stopped.
    RemoveService {
        id: ServiceId,
        at: Millis,
    },
    CreateTasks(Vec<Task>),
    /// The orchestrator's intent for tasks (only ever raised).
    SetDesiredState(Vec<(TaskId, TaskState)>),
    /// The scheduler's placement decisions; moves tasks to `assigned`.
    AssignTasks {
        assignments: Vec<(TaskId, NodeId)>,
        at: Millis,
    },
    /// The scheduler could not place these tasks: they stay pending with a message.
    SetPendingMessage(Vec<(TaskId, String)>),
    /// What workers observed. A status that would move a task backwards is ignored.
    SetTaskStatus(Vec<(TaskId, TaskStatus)>),
    RemoveTasks(Vec<TaskId>),
    /// Several commands applied as one entry, in order.
    Batch(Vec<Command>),
    /// The founding manager records the cluster's identity once; later
    /// copies of this command change nothing.
    InitCluster(ClusterSecrets),
    /// A new join secret for a role: tokens with the old one stop working.
    RotateJoinSecret {
        role: NodeRole,
        secret: String,
    },
    /// Liveness verdicts of the manager `by` about nodes it judges (see the
    /// dispatcher): `ready` makes `by` the manager holding the node's
    /// session; `down` applies only when `by` holds it, or when nobody that
    /// can does (no session, or its manager is gone, down or not a manager
    /// any more), so a manager a worker left cannot mark it down.
    NodeVerdicts {
        by: NodeId,
        verdicts: Vec<(NodeId, NodeStatus, String)>,
        at: Millis,
    },
    /// `cmd`, applied at most once per `request`: a proposer that cannot tell
    /// whether its first attempt committed (the leader went silent, or lost
    /// leadership mid-flight) sends the same request again, and the copy that
    /// commits second only returns the first one's verdict.
    Once {
        request: RequestId,
        cmd: Box<Command>,
    },
}

/// Names one client request across retries: the proposing node's raft id
/// and a number it never reuses (random start, then counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: u64,
    pub seq: u64,
}

/// The cluster's identity and join secrets, replicated to every manager so
/// any of them can hand out and check join tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    pub cluster_id: String,
    /// The transport's pre-shared key, hex.
    pub cluster_key: String,
    pub worker_secret: String,
    pub manager_secret: String,
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::UpsertNode(_) => "upsert_node",
            Command::SetNodeStatus { .. } => "set_node_status",
            Command::NodeVerdicts { .. } => "node_verdicts",
            Command::UpdateNode { .. } => "update_node",
            Command::RemoveNode { .. } => "remove_node",
            Command::CreateService(_) => "create_service",
            Command::UpdateService { .. } => "update_service",
            Command::SetUpdateStatus { .. } => "set_update_status",
            Command::RollbackService { .. } => "rollback_service",
            Command::RecordStackVersion { .. } => "record_stack_version",
            Command::RemoveService { .. } => "remove_service",
            Command::CreateTasks(_) => "create_tasks",
            Command::SetDesiredState(_) => "set_desired_state",
            Command::AssignTasks { .. } => "assign_tasks",
            Command::SetPendingMessage(_) => "set_pending_message",
            Command::SetTaskStatus(_) => "set_task_status",
            Command::RemoveTasks(_) => "remove_tasks",
            Command::Batch(_) => "batch",
            Command::InitCluster(_) => "init_cluster",
            Command::RotateJoinSecret { .. } => "rotate_join_secret",
            Command::Once { cmd, .. } => cmd.kind(),
        }
    }
}
