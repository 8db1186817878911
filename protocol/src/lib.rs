//! skein-protocol: the shared language of skein.
//!
//! Types only: no I/O, no async runtime. Every crate speaks these types; the
//! Raft log, the wire and the HTTP API carry them. Invariants that hold here:
//! - task states are totally ordered and only move forward ([`TaskState`]);
//! - every spec has Docker Swarm's defaults when a field is left out;
//! - everything crossing a process boundary in binary goes through [`codec`],
//!   which carries a version byte and refuses oversized or corrupt input.

pub mod api;
pub mod bytes;
pub mod codec;
pub mod command;
pub mod duration;
pub mod gossip;
pub mod node;
pub mod service;
pub mod spec;
pub mod task;
pub mod token;
pub mod wire;

pub use command::{ClusterSecrets, Command, STACK_VERSIONS};
pub use duration::Dur;
pub use node::{
    Availability, ManagerStatus, Node, NodeDescription, NodeResources, NodeRole, NodeStatus,
};
pub use service::{Service, StackVersion, UpdateState, UpdateStatus};
pub use spec::*;
pub use task::{Task, TaskState, TaskStatus};

/// Node ids are 16 lowercase hex digits: the node's Raft id, printed.
pub type NodeId = String;
/// Service ids are 12+ lowercase hex digits, unique in the cluster.
pub type ServiceId = String;
/// Task ids are 12+ lowercase hex digits, unique in the cluster.
pub type TaskId = String;

/// Milliseconds since the Unix epoch: the clock every timestamp in the model uses.
pub type Millis = u64;

/// The label Docker puts on every service of a stack; skein does the same.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";
