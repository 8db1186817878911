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

/// Worker -> any manager: one turn of the worker's session. Every turn is
/// also a heartbeat. The manager answers at once when the worker's
/// assignments differ from `have`, else holds the turn up to `wait_ms` and
/// answers that nothing changed; the worker sends its next turn as soon as
/// it has the answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub node_id: NodeId,
    /// The assignments the worker holds: (task id, [`task_digest`] of its copy).
    pub have: Vec<(TaskId, u64)>,
    /// How long the manager may hold the turn when nothing changed.
    pub wait_ms: u64,
}

/// The answer to a [`SessionRequest`]: only what differs from what the
/// worker holds (a reconnect, to any manager, sends only what changed).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionReply {
    /// The manager's applied Raft index this answer is as of.
    pub index: u64,
    /// Assigned tasks the worker lacks or holds in another version.
    pub changed: Vec<Task>,
    /// Tasks the worker holds that are no longer its business.
    pub removed: Vec<TaskId>,
    /// Managers a worker may hold its session with, ready ones first.
    pub managers: Vec<ManagerInfo>,
    /// How long the next turn may be held (the heartbeat period, which may
    /// grow with the fleet).
    pub wait_ms: u64,
    /// The worker's role as the cluster has it: `manager` once promoted
    /// (the node then starts its Raft member and leaves the session).
    pub role: NodeRole,
}

/// A manager, as a worker knows it (to hold a session with, and to name
/// to a user who asked a worker for what only a manager can do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub node_id: NodeId,
    pub name: String,
    pub peer_id: String,
    /// Cluster transport address.
    pub addr: String,
    pub api_addr: String,
    pub raft_id: u64,
    /// The Raft leader when the list was made: sessions go to the other
    /// managers when there are any (the leader's time is for Raft).
    pub leader: bool,
}

/// A digest of one task as encoded on the wire: equal tasks, equal digests
/// (FNV-1a over the codec bytes; not a security measure).
pub fn task_digest(task: &Task) -> u64 {
    let bytes = crate::codec::encode(task).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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
    /// A worker's session turn (heartbeat and assignments).
    Session(Box<SessionRequest>),
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
    /// A forwarded proposal the leader's state refused, with the HTTP status
    /// the refusal means (404 no such object, 409 conflict, 400 otherwise):
    /// the same refusal answers alike on the leader and on a follower.
    Refused {
        status: u16,
        message: String,
    },
    Joined(Box<JoinAccepted>),
    Gossip(Box<crate::gossip::GossipReply>),
    Session(Box<SessionReply>),
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
