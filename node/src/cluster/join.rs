//! Joining. A new node dials a manager given by `--join`, presents its
//! token, and gets in as the token's role. The leader checks the token
//! against the replicated join secrets and records the node (binding its
//! peer id to its node id, role and raft id); a manager is added to Raft as
//! a learner and promoted to voter once it has caught up (so a slow or
//! failing joiner never costs the cluster its quorum); a worker is not a
//! Raft member: it holds a session with a manager.
//! A manager that is not the leader relays the request to the leader.

use super::forward::Proposer;
use super::raft_link::{peer_of, PeerBook};
use crate::net::NetHandle;
use crate::raft::RaftHandle;
use skein_protocol::wire::{JoinAccepted, JoinRequest, WireMessage, WireReply};
use skein_protocol::{Command, ManagerStatus, NodeRole, NodeStatus};

/// The joining side: dial `addr`, ask to join, return what the cluster said.
pub async fn request_join(
    net: &NetHandle,
    addr: &str,
    req: JoinRequest,
) -> anyhow::Result<JoinAccepted> {
    let peer = net.dial(addr).await.map_err(|e| {
        // A token of another cluster carries that cluster's key: the
        // encrypted handshake with this one then fails (a timeout here).
        anyhow::anyhow!(
            "cannot reach the manager at {addr}: {e}. Check the address, and that the token \
                 comes from a manager of that cluster: a token of another cluster holds another \
                 cluster key, with which the connection cannot be set up"
        )
    })?;
    match net.request(&peer, WireMessage::Join(Box::new(req))).await {
        Ok(WireReply::Joined(ok)) => Ok(*ok),
        Ok(WireReply::Error(e)) => anyhow::bail!("the cluster refused to let this node join: {e}"),
        Ok(other) => anyhow::bail!("unexpected answer to a join request: {other:?}"),
        Err(e) => anyhow::bail!("join request to {addr} failed: {e}"),
    }
}

/// The manager side. Only the leader admits; others relay to it.
pub async fn serve_join(
    raft: &RaftHandle,
    net: &NetHandle,
    book: &PeerBook,
    proposer: &Proposer,
    req: JoinRequest,
) -> WireReply {
    let p = raft.current();
    if !p.is_leader {
        let Some(peer) = (p.leader_id != 0)
            .then(|| peer_of(raft, book, p.leader_id))
            .flatten()
        else {
            return WireReply::Error("no leader right now: retry in a moment".into());
        };
        return match net.request(&peer, WireMessage::Join(Box::new(req))).await {
            Ok(r) => r,
            Err(e) => WireReply::Error(format!("cannot reach the leader: {e}")),
        };
    }
    let role = match p.state.check_join_token(&req.token) {
        Ok(r) => r,
        Err(e) => return WireReply::Error(e),
    };
    if p.state.removed.contains(&req.node.id) {
        return WireReply::Error(format!(
            "node {} was removed from this cluster: start it with an empty --data-dir to join as a new node",
            req.node.name
        ));
    }
    if req.raft_id == 0 || req.peer_id.is_empty() {
        return WireReply::Error("the join request has no raft id or peer id".into());
    }
    if let Some(other) = p
        .state
        .nodes
        .values()
        .find(|n| n.name == req.node.name && n.id != req.node.id)
    {
        return WireReply::Error(format!(
            "a node named {:?} is already in the cluster ({}): start this one with another --name",
            req.node.name, other.id
        ));
    }
    book.insert(req.raft_id, req.peer_id.clone());
    let now = crate::util::now_ms();
    let mut node = req.node.clone();
    node.role = role;
    node.peer_id = req.peer_id.clone();
    node.raft_id = req.raft_id;
    node.status = NodeStatus::Ready;
    node.created_at = now;
    node.updated_at = now;
    node.last_seen = now;
    node.manager_status = (role == NodeRole::Manager).then(|| ManagerStatus {
        raft_id: req.raft_id,
        addr: node.addr.clone(),
        leader: false,
        reachability: "reachable".into(),
    });
    if let Err(e) = proposer.propose(Command::UpsertNode(node)).await {
        return WireReply::Error(format!("cannot record the node: {e}"));
    }
    // Only managers are Raft members (a learner first, a voter once caught
    // up: see cluster::membership); a worker holds a session instead.
    let already = p.voters.contains(&req.raft_id) || p.learners.contains(&req.raft_id);
    // Recorded is joined: answering an error now would lock the node out
    // under its name (a new attempt comes with a new node id). A manager
    // Raft could not take yet is added by the leader's membership loop,
    // which adds every manager that is not a Raft member.
    if role == NodeRole::Manager && !already {
        if let Err(e) = raft.add_learner(req.raft_id).await {
            tracing::info!(node = %req.node.name, error = %e, "new manager not in raft yet: the membership loop adds it");
        }
    }
    tracing::info!(node = %req.node.name, raft_id = req.raft_id, ?role, "node joined");
    let now = raft.current();
    let managers = now
        .state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && !n.peer_id.is_empty())
        .map(|n| (n.raft_id, n.peer_id.clone(), n.addr.clone()))
        .collect();
    WireReply::Joined(Box::new(JoinAccepted {
        cluster_id: now.state.cluster_id.clone(),
        role,
        managers,
    }))
}
