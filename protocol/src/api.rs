//! HTTP API bodies (JSON). Listing rows carry exactly the keys the CLI's
//! `--format json` prints, so scripts see the same names either way.

use crate::{Service, ServiceSpec, Task};
use serde::{Deserialize, Serialize};

/// Every 4xx/5xx answer: `{"message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// A row of `node ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub availability: String,
    pub status: String,
    pub leader: bool,
    pub addr: String,
    pub region: String,
    /// Managers: `reachable` or `unreachable`; empty for workers.
    #[serde(default)]
    pub reachability: String,
}

/// A row of `service ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub mode: String,
    /// Desired task count (global: the number of eligible nodes).
    pub replicas: u64,
    pub running: u64,
    pub image: String,
    pub ports: String,
}

/// A row of `service ps` / `stack ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub id: String,
    /// `web.2`: the service and the slot (or node, for global services).
    pub name: String,
    pub service: String,
    pub slot: Option<u64>,
    /// The node's name.
    pub node: String,
    pub desired_state: String,
    pub state: String,
    /// When the task entered its state, ms since the epoch.
    pub since: u64,
    pub image: String,
    pub error: String,
    pub exit_code: Option<i32>,
    pub health: Option<String>,
    /// Made from the service's current spec (false: an older version,
    /// still running during an update, or history).
    #[serde(default)]
    pub up_to_date: bool,
}

/// `service inspect`: the service object plus a summary of its tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub service: Service,
    pub tasks: Vec<TaskRow>,
}

/// `POST /v1/services/{id}/update`: the whole new spec, and the version it
/// was made from (refused with 409 if the service changed meanwhile).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceUpdateRequest {
    pub version: u64,
    pub spec: ServiceSpec,
}

/// `POST /v1/stacks/{name}/rollback`: back to a recorded version (None: the
/// one before the newest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRollbackRequest {
    #[serde(default)]
    pub to: Option<u64>,
}

/// One recorded version of a stack (`stack history`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackVersionRow {
    pub version: u64,
    pub deployed_at: u64,
    pub services: Vec<String>,
}

/// `POST /v1/nodes/{id}/update`: the operator's changes to a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeUpdateRequest {
    /// active, pause or drain.
    #[serde(default)]
    pub availability: Option<crate::Availability>,
    /// When the node is the leader: hand leadership to another manager first.
    #[serde(default)]
    pub transfer_leadership: bool,
    /// With `active`: replicated services the node could run whose tasks are
    /// spread unevenly get a forced rolling update, so the scheduler spreads
    /// them again (update_config.parallelism at a time).
    #[serde(default)]
    pub rebalance: bool,
}

/// The answer to `POST /v1/nodes/{id}/update`: the node, and the services a
/// rebalance started rolling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeUpdateResponse {
    #[serde(flatten)]
    pub node: crate::Node,
    #[serde(default)]
    pub rebalanced: Vec<String>,
}

/// `POST /v1/nodes/{id}/stop-tasks`: what a drain's deadline stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopTasksResponse {
    pub stopped: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u64,
}

/// `POST /v1/stacks`: the services of one stack, already parsed from the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackDeployRequest {
    pub name: String,
    pub services: Vec<ServiceSpec>,
    /// Remove services of this stack that are not in `services`.
    #[serde(default)]
    pub prune: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDeployResponse {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

/// A row of `stack ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRow {
    pub name: String,
    pub services: u64,
}

/// `GET /v1/join-token/{role}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    pub role: String,
    pub token: String,
    /// Address a new node passes to `--join`.
    pub join_addr: String,
}

/// `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub node_id: String,
    pub node_name: String,
    pub cluster_id: String,
    pub leader_id: Option<String>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub version: String,
    pub default_runtime: String,
    /// `manager` or `worker` (empty while the node has no cluster yet).
    #[serde(default)]
    pub role: String,
}

impl Info {
    /// What a node that holds no replicated state says of itself (a box
    /// still forming its cluster, a worker): no leader, no Raft indexes.
    pub fn local(
        node_id: &str,
        node_name: &str,
        cluster_id: &str,
        default_runtime: &str,
        role: &str,
    ) -> Info {
        Info {
            node_id: node_id.to_string(),
            node_name: node_name.to_string(),
            cluster_id: cluster_id.to_string(),
            leader_id: None,
            term: 0,
            commit: 0,
            applied: 0,
            version: env!("CARGO_PKG_VERSION").to_string(),
            default_runtime: default_runtime.to_string(),
            role: role.to_string(),
        }
    }
}

/// `GET /v1/tasks/{id}` answers the task itself.
pub type TaskDetail = Task;
