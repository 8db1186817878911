//! Routes what peers send to the part of this node that owns it. Never
//! blocks the network actor: slow work (proposals, joins) runs in its own
//! task and answers through the request's reply channel.

use super::forward::{serve_propose, Proposer};
use super::join::serve_join;
use super::raft_link::{step_bytes, PeerBook, Reassembly};
use crate::net::{Inbound, NetHandle};
use crate::raft::RaftHandle;
use skein_protocol::wire::{WireMessage, WireReply};
use skein_protocol::Command;
use tokio::sync::{mpsc, watch};

pub struct Router {
    pub raft: RaftHandle,
    pub net: NetHandle,
    pub book: PeerBook,
    pub proposer: Proposer,
    /// Heartbeats heard, for the leader's liveness monitor.
    pub heard: mpsc::Sender<String>,
}

impl Router {
    pub async fn run(self, mut rx: mpsc::Receiver<Inbound>, mut shutdown: watch::Receiver<bool>) {
        let mut chunks = Reassembly::default();
        loop {
            let inbound = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = shutdown.changed() => return,
            };
            let Inbound { peer, msg, reply } = inbound;
            match msg {
                WireMessage::Raft(bytes) => {
                    let _ = reply.send(WireReply::Ack);
                    step_bytes(&self.raft, &bytes).await;
                }
                WireMessage::RaftChunk(c) => {
                    let _ = reply.send(WireReply::Ack);
                    if let Some(bytes) = chunks.add(&peer, c) {
                        step_bytes(&self.raft, &bytes).await;
                    }
                }
                WireMessage::Heartbeat { node_id, .. } => {
                    let _ = reply.send(WireReply::Ack);
                    let _ = self.heard.try_send(node_id);
                }
                WireMessage::Propose(cmd) => {
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(serve_propose(&raft, *cmd).await);
                    });
                }
                WireMessage::Status(report) => {
                    let raft = self.raft.clone();
                    let _ = self.heard.try_send(report.node_id.clone());
                    tokio::spawn(async move {
                        let r = serve_propose(&raft, Command::SetTaskStatus(report.updates)).await;
                        let _ = reply.send(r);
                    });
                }
                WireMessage::Join(req) => {
                    let (raft, net, book, proposer) = (
                        self.raft.clone(),
                        self.net.clone(),
                        self.book.clone(),
                        self.proposer.clone(),
                    );
                    tokio::spawn(async move {
                        let r = serve_join(&raft, &net, &book, &proposer, *req).await;
                        let _ = reply.send(r);
                    });
                }
                WireMessage::Gossip(_) => {
                    // The agent hands these to the membership actor first.
                    let _ = reply.send(WireReply::Error("membership is not running".into()));
                }
                WireMessage::HandOverLeadership => {
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let r = match super::membership::hand_over(&raft).await {
                            Ok(()) => WireReply::Ack,
                            Err(e) => WireReply::Error(e),
                        };
                        let _ = reply.send(r);
                    });
                }
                WireMessage::Assignments(_) => {
                    let _ = reply.send(WireReply::Error(
                        "assignments are read from the replicated state, not sent".into(),
                    ));
                }
            }
        }
    }
}
