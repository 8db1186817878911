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
    /// [`managers_digest`] of the manager list the worker holds: the answer
    /// carries the list only when the manager's differs.
    pub managers: u64,
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
    /// Managers a worker may hold its session with, ready ones first;
    /// empty when the worker's list is already this one.
    pub managers: Vec<ManagerInfo>,
    /// How long the next turn may be held (the heartbeat period, which may
    /// grow with the fleet).
    pub wait_ms: u64,
    /// The worker's role as the cluster has it: `manager` once promoted
    /// (the node then starts its Raft member and leaves the session).
    pub role: NodeRole,
    /// The peer id of the manager to hold the session with from the next
    /// turn on (empty: stay). A manager holding more than its share of the
    /// fleet's sessions (the others restarted or joined late) hands a few
    /// a second to the one holding fewest, so sessions spread back and a
    /// manager's failure moves only its share.
    pub move_to: String,
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
    fnv(&crate::codec::encode(task).unwrap_or_default())
}

/// A digest of a manager list as encoded on the wire (0 for none), like
/// [`task_digest`].
pub fn managers_digest(managers: &[ManagerInfo]) -> u64 {
    if managers.is_empty() {
        return 0;
    }
    fnv(&crate::codec::encode(&managers).unwrap_or_default())
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A raft-rs `eraftpb::Message`, protobuf-encoded.
    Raft(#[serde(with = "crate::bytes")] Vec<u8>),
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
    /// A node receiving a snapshot asks the leader that sent it for one chunk of its image
    /// (pull: the receiver keeps a bounded number of requests in flight).
    SnapshotChunk(SnapshotChunkRequest),
    /// A node that received a snapshot tells the leader that sent it how the transfer ended.
    SnapshotStatus(SnapshotStatus),
}

/// One chunk of a snapshot image, asked by the receiving raft node `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunkRequest {
    /// The asking node's raft id (Raft traffic is taken only from its owner).
    pub from: u64,
    /// The image id the snapshot's descriptor names.
    pub snapshot: u64,
    pub seq: u32,
}

/// The end of a snapshot transfer, as the receiving raft node `from` saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub from: u64,
    pub snapshot: u64,
    /// Every chunk received, verified and handed to Raft (false: the leader sends again).
    pub delivered: bool,
}

/// The answer to a [`SnapshotChunkRequest`]: at most a few MiB (the image's chunk size).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub snapshot: u64,
    pub seq: u32,
    /// CRC-32 (IEEE) of `bytes`.
    pub crc: u32,
    #[serde(with = "crate::bytes")]
    pub bytes: Vec<u8>,
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
    SnapshotChunk(SnapshotChunk),
    /// This node no longer has that snapshot image (a newer snapshot replaced it): the
    /// receiver gives up and the leader sends the newer one.
    SnapshotGone {
        snapshot: u64,
    },
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
    #[serde(with = "crate::bytes")]
    pub bytes: Vec<u8>,
}
