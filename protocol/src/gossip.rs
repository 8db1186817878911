//! Membership gossip: what nodes say about themselves and about each other,
//! on the cluster's gossip topic and in direct probes. Types only.
//!
//! Invariants: a member's state claims are ordered by `(incarnation, state)`
//! with `Alive < Suspect < Dead` at equal incarnation; only the member itself
//! raises its incarnation (to refute a suspicion). Everything here is small:
//! an [`Announce`] is a few hundred bytes.

use crate::node::{NodeResources, NodeRole};
use crate::spec::RuntimeKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's state as one node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
        })
    }
}

/// A claim about one member, spread by gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member's libp2p peer id.
    pub peer: String,
    pub incarnation: u64,
    pub state: MemberState,
}

/// What a node says about itself (published periodically and on change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub peer: String,
    pub incarnation: u64,
    /// The node id (16 hex digits).
    pub node_id: String,
    pub name: String,
    /// The role it holds, or for a box not in a cluster yet, `Manager` when
    /// it may become one (bootstrap).
    pub role: NodeRole,
    pub region: String,
    /// HOST:PORT addresses other nodes can dial.
    pub addrs: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub resources: NodeResources,
    pub runtimes: Vec<RuntimeKind>,
    /// The cluster this node belongs to; empty while it is bootstrapping.
    pub cluster_id: String,
    /// `--bootstrap-expect` (0: not bootstrapping).
    pub bootstrap_expect: u32,
    /// While bootstrapping: the founding set this box currently proposes
    /// (sorted peer ids), empty when it has not seen enough boxes yet.
    pub proposal: Vec<String>,
}

/// What goes out on the gossip topic: a batch of announces and updates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipBatch {
    pub from: String,
    pub announces: Vec<Announce>,
    pub updates: Vec<MemberUpdate>,
}

/// Direct membership requests (request-response), answered by [`GossipReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipRequest {
    /// "Are you alive?" carrying the sender's updates (piggyback).
    Probe(GossipBatch),
    /// Ask a member to probe `target` for the sender (indirect probe).
    ProbeFor { target: String, timeout_ms: u64 },
    /// Push-pull: the sender's whole view; the reply carries the receiver's.
    Sync(GossipBatch),
    /// Bootstrap: `founder` asks to found a cluster with exactly `set`.
    Confirm { founder: String, set: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipReply {
    Ack(GossipBatch),
    /// Answer to [`GossipRequest::ProbeFor`].
    Probed {
        reachable: bool,
    },
    Sync(GossipBatch),
    /// Answer to [`GossipRequest::Confirm`]; `reason` says why not.
    Confirmed {
        ok: bool,
        reason: String,
    },
}
