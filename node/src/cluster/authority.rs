//! Who may ask what of this node: authority follows identity, not the key.
//!
//! The cluster key keeps strangers off the wire and grants nothing else. A
//! peer's libp2p id is bound to one node (its node id, role and raft id) in
//! the replicated node table when the leader admits its join; from then on:
//! - Raft messages are taken only from the peer bound to their sender raft id;
//! - proposals (any command), leadership hand-over: managers only;
//! - a worker may only describe itself (on restart), report the status of
//!   its own tasks, send its own heartbeats, and leave;
//! - join requests and gossip: anyone with the key (a join is checked
//!   against its token, gossip only spreads claims about members);
//! - a removed node's peer id is refused outright.
//!
//! Pure: a [`PeerIndex`] built from the state answers who a peer is, and the
//! `check_*` functions decide; [`super::inbound::Router`] enforces the verdicts
//! and logs refusals with the peer and what it tried.

use crate::store::ClusterState;
use skein_protocol::{Command, NodeId, NodeRole};
use std::collections::{HashMap, HashSet};

/// Who sent a message, as the replicated state (and the join book) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Manager {
        node_id: NodeId,
        raft_id: u64,
    },
    Worker {
        node_id: NodeId,
        raft_id: u64,
    },
    /// Admitted by this node (the leader) a moment ago: bound to a raft id in
    /// the join book, not yet in the applied node table.
    Admitted {
        raft_id: u64,
    },
    Removed,
    Unknown,
}

impl Caller {
    fn raft_id(&self) -> Option<u64> {
        match self {
            Caller::Manager { raft_id, .. }
            | Caller::Worker { raft_id, .. }
            | Caller::Admitted { raft_id } => Some(*raft_id),
            Caller::Removed | Caller::Unknown => None,
        }
    }
}

/// A refusal, with what the peer tried and why it may not.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(why: impl Into<String>) -> Refusal {
    Refusal(why.into())
}

/// peer id -> node, built once per state.
#[derive(Debug, Default)]
pub struct PeerIndex {
    by_peer: HashMap<String, (NodeId, NodeRole, u64)>,
    removed: HashSet<String>,
}

impl PeerIndex {
    pub fn build(state: &ClusterState) -> Self {
        PeerIndex {
            by_peer: state
                .nodes
                .values()
                .filter(|n| !n.peer_id.is_empty())
                .map(|n| (n.peer_id.clone(), (n.id.clone(), n.role, n.raft_id)))
                .collect(),
            removed: state.removed_peers.iter().cloned().collect(),
        }
    }

    /// Who `peer` is. `book` is the raft id this node's join book binds the
    /// peer to (admitted, not applied yet), if any.
    pub fn caller(&self, peer: &str, book: Option<u64>) -> Caller {
        if self.removed.contains(peer) {
            return Caller::Removed;
        }
        match self.by_peer.get(peer) {
            Some((node_id, NodeRole::Manager, raft_id)) => Caller::Manager {
                node_id: node_id.clone(),
                raft_id: *raft_id,
            },
            Some((node_id, NodeRole::Worker, raft_id)) => Caller::Worker {
                node_id: node_id.clone(),
                raft_id: *raft_id,
            },
            None => book.map_or(Caller::Unknown, |raft_id| Caller::Admitted { raft_id }),
        }
    }
}

/// A Raft message whose sender field is `from`.
pub fn check_raft(caller: &Caller, from: u64) -> Result<(), Refusal> {
    match caller.raft_id() {
        Some(id) if id == from && id != 0 => Ok(()),
        Some(id) => Err(refuse(format!(
            "a raft message as raft node {from:x} from the peer of raft node {id:x}"
        ))),
        None => Err(refuse(format!(
            "a raft message as raft node {from:x} from a peer that is not a member"
        ))),
    }
}

/// A piece of a chunked Raft message (its sender is checked once whole).
pub fn check_raft_chunk(caller: &Caller) -> Result<(), Refusal> {
    match caller.raft_id() {
        Some(_) => Ok(()),
        None => Err(refuse("a raft message from a peer that is not a member")),
    }
}

/// Anything only a manager may ask (leadership hand-over).
pub fn check_manager(caller: &Caller, what: &str) -> Result<(), Refusal> {
    match caller {
        Caller::Manager { .. } => Ok(()),
        other => Err(refuse(format!(
            "{what}: only managers may ({})",
            who(other)
        ))),
    }
}

/// A heartbeat naming `node_id`.
pub fn check_heartbeat(caller: &Caller, node_id: &str) -> Result<(), Refusal> {
    match caller {
        Caller::Manager { node_id: own, .. } | Caller::Worker { node_id: own, .. }
            if own == node_id =>
        {
            Ok(())
        }
        other => Err(refuse(format!(
            "a heartbeat for node {node_id} ({})",
            who(other)
        ))),
    }
}

/// A proposal: a manager's goes through as it is; a worker's only when it
/// is about itself ([`own_command`]), and then as that function rewrites it.
pub fn check_propose(
    state: &ClusterState,
    caller: &Caller,
    cmd: Command,
) -> Result<Command, Refusal> {
    match caller {
        Caller::Manager { .. } => Ok(cmd),
        Caller::Worker { node_id, .. } => own_command(state, node_id, cmd),
        other => Err(refuse(format!(
            "a proposal ({}) ({})",
            command_name(&cmd),
            who(other)
        ))),
    }
}

/// What a worker may propose about itself, made safe: the status of tasks
/// assigned to it (reports of tasks that no longer exist are dropped), its
/// own description (the operator's fields and its identity stay as the
/// state has them), and leaving. Anything else is refused.
pub fn own_command(state: &ClusterState, node_id: &str, cmd: Command) -> Result<Command, Refusal> {
    match cmd {
        Command::Once { request, cmd } => Ok(Command::Once {
            request,
            cmd: Box::new(own_command(state, node_id, *cmd)?),
        }),
        Command::SetTaskStatus(updates) => {
            let mut mine = Vec::with_capacity(updates.len());
            for (id, status) in updates {
                match state.tasks.get(&id) {
                    None => {}
                    Some(t) if t.node_id.as_deref() == Some(node_id) => mine.push((id, status)),
                    Some(_) => {
                        return Err(refuse(format!(
                            "a status report for task {id}, which is not assigned to node {node_id}"
                        )))
                    }
                }
            }
            Ok(Command::SetTaskStatus(mine))
        }
        Command::UpsertNode(mut node) => {
            if node.id != node_id {
                return Err(refuse(format!(
                    "node {node_id} describing another node ({})",
                    node.id
                )));
            }
            let Some(old) = state.nodes.get(node_id) else {
                return Err(refuse(format!("node {node_id} is not in the cluster")));
            };
            node.role = old.role;
            node.availability = old.availability;
            node.manager_status = old.manager_status.clone();
            node.peer_id = old.peer_id.clone();
            node.raft_id = old.raft_id;
            node.created_at = old.created_at;
            node.session = old.session.clone();
            Ok(Command::UpsertNode(node))
        }
        Command::RemoveNode { id } if id == node_id => Ok(Command::RemoveNode { id }),
        other => Err(refuse(format!(
            "a proposal ({}) from worker node {node_id}: a worker may only report its own tasks, \
             describe itself and leave",
            command_name(&other)
        ))),
    }
}

fn who(caller: &Caller) -> String {
    match caller {
        Caller::Manager { node_id, .. } => format!("manager {node_id}"),
        Caller::Worker { node_id, .. } => format!("from worker node {node_id}"),
        Caller::Admitted { raft_id } => format!("from raft node {raft_id:x}, still joining"),
        Caller::Removed => "from a removed node".into(),
        Caller::Unknown => "from a peer that is not a member".into(),
    }
}

/// A command's name for logs (never its content: it may hold secrets).
pub fn command_name(cmd: &Command) -> String {
    match cmd {
        Command::Once { cmd, .. } => command_name(cmd),
        Command::Batch(cmds) => format!(
            "batch of {}",
            cmds.iter().map(command_name).collect::<Vec<_>>().join(", ")
        ),
        other => other.kind().to_string(),
    }
}

#[cfg(test)]
mod tests;
