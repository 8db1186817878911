//! Messages between nodes. Today dispatcher and worker share a process and
//! exchange these over channels; the network transport carries the same
//! values through [`crate::codec`].

use crate::{Command, Millis, NodeId, Task, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};

/// Leader -> node: the complete set of tasks the node should know about.
/// A task missing from the set is no longer the node's business.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub node_id: NodeId,
    /// Increases with every set sent to this node; a worker ignores older sets.
    pub sequence: u64,
    pub tasks: Vec<Task>,
}

/// Node -> leader: observed task statuses (only changes, or all on resync).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub node_id: NodeId,
    pub updates: Vec<(TaskId, TaskStatus)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A raft-rs `eraftpb::Message`, protobuf-encoded.
    Raft(Vec<u8>),
    Assignments(Assignments),
    Status(StatusReport),
    Heartbeat {
        node_id: NodeId,
        at: Millis,
    },
    /// A follower forwards a client's command to the leader.
    Propose(Box<Command>),
}
