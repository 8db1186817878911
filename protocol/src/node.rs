//! Nodes: what a machine in the cluster is (description), what the cluster
//! decided about it (role, availability) and what was observed (status).
//! Writers: the node itself writes its description and address; an operator
//! writes role and availability; the leader writes status.

use crate::{Millis, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    #[default]
    Manager,
    Worker,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        })
    }
}

/// Operator's intent for scheduling: `active` takes tasks, `pause` keeps its
/// tasks but takes no new ones, `drain` moves its tasks elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    #[default]
    Unknown,
    Ready,
    Down,
}

/// What a node can offer: CPUs in nano-CPUs (1e9 = one CPU) and memory in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

/// What the node says about itself when it joins or restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    /// `linux`, as Go's GOOS spells it, for `node.platform.os` constraints.
    pub os: String,
    /// `x86_64`, `aarch64`, ...: `node.platform.arch`.
    pub arch: String,
    pub resources: NodeResources,
    /// Runtimes this node can run tasks on: `process`, `docker`.
    pub runtimes: Vec<crate::spec::RuntimeKind>,
    pub version: String,
}

/// Raft facts about a manager node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub raft_id: u64,
    /// Address other managers reach its Raft transport on.
    pub addr: String,
    pub leader: bool,
    /// `reachable` / `unreachable`, as `docker node ls` shows it.
    pub reachability: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Unique, human name (`--name`, default: the hostname).
    pub name: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub status: NodeStatus,
    pub status_message: String,
    /// Address the node is reached at (its `--listen` address).
    pub addr: String,
    /// API address of the node's agent.
    pub api_addr: String,
    /// The node's libp2p peer id (empty for a node that never networked).
    #[serde(default)]
    pub peer_id: String,
    /// The node's Raft id (a member of Raft while it is a manager; also
    /// names its requests).
    #[serde(default)]
    pub raft_id: u64,
    /// Region of the cluster this node belongs to (federation).
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub description: NodeDescription,
    pub manager_status: Option<ManagerStatus>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Last time the leader heard from the node.
    pub last_seen: Millis,
    /// The manager holding this node's session (its node id; empty: none
    /// yet). That manager judges the node's liveness.
    #[serde(default)]
    pub session: NodeId,
}

impl Node {
    /// Whether the scheduler may place new tasks here.
    pub fn schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && self.availability == Availability::Active
    }
}
