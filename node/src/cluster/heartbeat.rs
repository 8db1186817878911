//! Heartbeats. Every node tells the leader it is alive every interval; the
//! leader feeds what it hears into [`Liveness`] and commits the verdicts
//! (down / ready) as node status. Heartbeats themselves never touch Raft.

use super::raft_link::{peer_of, PeerBook};
use crate::dispatcher::liveness::Liveness;
use crate::net::NetHandle;
use crate::raft::RaftHandle;
use skein_protocol::wire::WireMessage;
use skein_protocol::Command;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

/// Leader side: tracks heartbeats and proposes node status changes.
pub async fn run_monitor(
    self_id: String,
    raft: RaftHandle,
    mut heard: mpsc::Receiver<String>,
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
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let p = raft.current();
        if !p.is_leader {
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
