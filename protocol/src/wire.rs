//! Messages between nodes: every request is a [`WireMessage`] answered by a
//! [`WireReply`], carried by the network transport through [`crate::codec`]
//! (dispatcher and worker on one node exchange the same values in-process).

use crate::{Command, Millis, Node, NodeId, NodeRole, Task, TaskId, TaskStatus};
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
    /// A new node asks a manager to let it in.
    Join(Box<JoinRequest>),
    /// Part of a large raft message (a snapshot), split below the frame limit.
    RaftChunk(RaftChunk),
    /// Membership: probes, indirect probes, push-pull sync, bootstrap.
    Gossip(Box<crate::gossip::GossipRequest>),
    /// Asks the leader to hand leadership to another manager (drain of the
    /// leader with `--transfer-leadership`). Answered once it moved.
    HandOverLeadership,
}

/// The answer to every [`WireMessage`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireReply {
    Ack,
    /// A forwarded proposal was applied at the leader, at this log index.
    Applied {
        index: u64,
    },
    /// The request was refused or failed; the text says why and what to do.
    Error(String),
    Joined(Box<JoinAccepted>),
    Gossip(Box<crate::gossip::GossipReply>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The token as the user pasted it.
    pub token: String,
    /// The joining node's description (id, name, addresses, labels, runtimes).
    pub node: Node,
    /// The joining node's libp2p peer id.
    pub peer_id: String,
    pub raft_id: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinAccepted {
    pub cluster_id: String,
    pub role: NodeRole,
    /// Managers to talk to: (raft id, peer id, address).
    pub managers: Vec<(u64, String, String)>,
}

/// One piece of a raft message too large for one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RaftChunk {
    /// Same for every piece of one message.
    pub id: u64,
    pub index: u32,
    pub total: u32,
    pub bytes: Vec<u8>,
}
