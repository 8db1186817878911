//! Heartbeats. Every node tells the leader it is alive every interval; the
//! leader feeds what it hears into [`Liveness`] and commits the verdicts
//! (down / ready) as node status. Heartbeats themselves never touch Raft.

use super::raft_link::{peer_of, PeerBook};
use crate::dispatcher::liveness::Liveness;
use crate::membership::MemberEvent;
use crate::net::NetHandle;
use crate::raft::RaftHandle;
use skein_protocol::gossip::MemberState;
use skein_protocol::wire::WireMessage;
use skein_protocol::Command;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

async fn next_member_event(
    rx: &mut Option<broadcast::Receiver<MemberEvent>>,
) -> Option<MemberEvent> {
    match rx {
        Some(r) => loop {
            match r.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                }
            }
        },
        None => std::future::pending().await,
    }
}

/// Sends this node's heartbeat to the leader every `interval`.
pub async fn run_sender(
    node_id: String,
    raft: RaftHandle,
    net: NetHandle,
    book: PeerBook,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let p = raft.current();
        if p.is_leader || p.leader_id == 0 {
            continue;
        }
        if let Some(peer) = peer_of(&raft, &book, p.leader_id) {
            net.send(
                &peer,
                WireMessage::Heartbeat {
                    node_id: node_id.clone(),
                    at: crate::util::now_ms(),
                },
            );
        }
    }
}

/// Leader side: tracks heartbeats and gossip verdicts (`members`, when
/// membership runs) and proposes node status changes.
pub async fn run_monitor(
    self_id: String,
    raft: RaftHandle,
    mut heard: mpsc::Receiver<String>,
    mut members: Option<broadcast::Receiver<MemberEvent>>,
    net: Option<NetHandle>,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let grace_ms = grace.as_millis() as u64;
    let mut liveness: Option<Liveness> = None;
    let mut tick = tokio::time::interval(Duration::from_millis((grace_ms / 4).clamp(50, 1000)));
    loop {
        tokio::select! {
            Some(node) = heard.recv() => {
                if let Some(l) = liveness.as_mut() {
                    l.heard(&node, crate::util::now_ms());
                }
                continue;
            }
            Some(ev) = next_member_event(&mut members) => {
                let Some(l) = liveness.as_mut() else { continue };
                let p = raft.current();
                // The event names a peer; the node table maps it to a node.
                let node = p.state.nodes.values().find(|n| n.peer_id == ev.peer).map(|n| n.id.clone());
                let Some(node) = node else { continue };
                match ev.state {
                    MemberState::Dead => {
                        // Our own connection closed too: its kernel answered
                        // for a dead process (strong evidence).
                        let strong = net.as_ref().is_some_and(|n| !n.connected().contains(&ev.peer));
                        tracing::info!(node = %node, strong, "gossip declared the node dead");
                        l.declared_dead(&node, crate::util::now_ms(), strong);
                    }
                    MemberState::Alive => l.declared_alive(&node),
                    MemberState::Suspect => continue,
                }
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let p = raft.current();
        if !p.leader_ready {
            liveness = None;
            continue;
        }
        let now = crate::util::now_ms();
        // A new leader starts watching now: every node gets a full grace period.
        let l = liveness.get_or_insert_with(|| Liveness::new(grace_ms, now));
        l.saw(&p.state, now);
        let changes = l.changes(&p.state, now, &self_id);
        if changes.is_empty() {
            continue;
        }
        let cmds = changes
            .into_iter()
            .map(|(id, status, message)| {
                tracing::info!(node = %id, ?status, %message, "node status changes");
                Command::SetNodeStatus {
                    id,
                    status,
                    message,
                    at: now,
                }
            })
            .collect();
        if let Err(e) = raft.propose(Command::Batch(cmds)).await {
            tracing::debug!(error = %e, "node status not recorded; will retry");
        }
    }
}
