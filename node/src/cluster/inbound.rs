//! Routes what peers send to the part of this node that owns it, once
//! [`super::authority`] allowed it: a peer may ask only what the node it is
//! bound to may (refusals are answered with the reason and logged, at most
//! once a minute per peer and kind). Never blocks the network actor: slow
//! work (proposals, joins, reading snapshot chunks) runs in its own task and
//! answers through the request's reply channel.
//!
//! Snapshots: an authorised `MsgSnapshot` is not stepped here but handed to
//! the [`Fetcher`], which steps it once its image is stored and verified.
//! Snapshot chunk requests and transfer reports are Raft traffic: taken only
//! from the peer bound to the raft id they name, like raft messages.

use super::authority::{self, Caller, PeerIndex, Refusal};
use super::forward::{serve_propose, Proposer};
use super::join::serve_join;
use super::raft_link::{decode, PeerBook, Reassembly};
use super::snapshot_link::{serve_chunk, Fetcher};
use crate::net::{Inbound, NetHandle};
use crate::raft::RaftHandle;
use crate::store::ClusterState;
use skein_protocol::wire::{StatusReport, WireMessage, WireReply};
use skein_protocol::Command;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

pub struct Router {
    /// This node's id.
    pub node_id: String,
    pub raft: RaftHandle,
    pub net: NetHandle,
    pub book: PeerBook,
    pub proposer: Proposer,
    /// Heartbeats and session turns heard, for this manager's liveness monitor.
    pub heard: mpsc::Sender<String>,
    /// Serves worker sessions and batches their status reports.
    pub dispatch: crate::dispatcher::DispatcherHandle,
}

/// Who the peers are, rebuilt when they change (task changes, verdicts and
/// session moves, thousands in a rollout or a failover, leave it as it is).
#[derive(Default)]
struct Callers {
    /// The [`ClusterState::peers_key`] indexed.
    indexed: Option<u64>,
    index: PeerIndex,
    /// Last refusal logged per (peer, kind).
    logged: HashMap<(String, &'static str), Instant>,
}

impl Callers {
    fn of(
        &mut self,
        raft: &RaftHandle,
        book: &PeerBook,
        peer: &str,
    ) -> (Caller, Arc<ClusterState>) {
        let state = raft.current().state.clone();
        let key = state.peers_key();
        if self.indexed != Some(key) {
            self.index = PeerIndex::build(&state);
            self.indexed = Some(key);
        }
        (self.index.caller(peer, book.raft_of(peer)), state)
    }

    /// Logs a refusal (rate-limited per peer and kind) and makes its answer.
    fn refused(&mut self, peer: &str, kind: &'static str, r: &Refusal) -> WireReply {
        let now = Instant::now();
        let key = (peer.to_string(), kind);
        if self
            .logged
            .get(&key)
            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            if self.logged.len() > 10_000 {
                self.logged.clear();
            }
            self.logged.insert(key, now);
            tracing::warn!(%peer, what = kind, "refused {r}");
        }
        WireReply::Error(format!("refused: {r}"))
    }
}

impl Router {
    pub async fn run(self, mut rx: mpsc::Receiver<Inbound>, mut shutdown: watch::Receiver<bool>) {
        let mut chunks = Reassembly::default();
        let mut callers = Callers::default();
        let fetcher = Fetcher::start(
            self.raft.clone(),
            self.net.clone(),
            self.book.clone(),
            shutdown.clone(),
        );
        // A MsgSnapshot waits for its image; everything else goes to Raft at once.
        let step = |m: raft::eraftpb::Message| async {
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                fetcher.offer(m);
            } else {
                self.raft.step(m).await;
            }
        };
        loop {
            let inbound = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = shutdown.changed() => return,
            };
            let Inbound { peer, msg, reply } = inbound;
            let (caller, state) = callers.of(&self.raft, &self.book, &peer);
            match msg {
                WireMessage::Raft(bytes) => {
                    let Some(m) = decode(&bytes) else {
                        let _ = reply.send(WireReply::Error("undecodable raft message".into()));
                        continue;
                    };
                    match authority::check_raft(&caller, m.from) {
                        Ok(()) => {
                            let _ = reply.send(WireReply::Ack);
                            step(m).await;
                        }
                        Err(r) => {
                            let _ = reply.send(callers.refused(&peer, "raft", &r));
                        }
                    }
                }
                WireMessage::RaftChunk(c) => {
                    if let Err(r) = authority::check_raft_chunk(&caller) {
                        let _ = reply.send(callers.refused(&peer, "raft", &r));
                        continue;
                    }
                    let _ = reply.send(WireReply::Ack);
                    let Some(m) = chunks.add(&peer, c).as_deref().and_then(decode) else {
                        continue;
                    };
                    match authority::check_raft(&caller, m.from) {
                        Ok(()) => step(m).await,
                        Err(r) => {
                            callers.refused(&peer, "raft", &r);
                        }
                    }
                }
                WireMessage::Heartbeat { node_id, .. } => {
                    match authority::check_heartbeat(&caller, &node_id) {
                        Ok(()) => {
                            let _ = reply.send(WireReply::Ack);
                            let _ = self.heard.try_send(node_id);
                        }
                        Err(r) => {
                            let _ = reply.send(callers.refused(&peer, "heartbeat", &r));
                        }
                    }
                }
                WireMessage::Propose(cmd) => {
                    match authority::check_propose(&state, &caller, *cmd) {
                        // A worker asks whichever manager holds its session:
                        // that one forwards to the leader.
                        Ok(cmd) if matches!(caller, Caller::Worker { .. }) => {
                            let proposer = self.proposer.clone();
                            tokio::spawn(async move {
                                let r = match proposer.propose(cmd).await {
                                    Ok(()) => WireReply::Applied {
                                        index: proposer.raft().current().applied,
                                    },
                                    Err(super::forward::ForwardError::Refused {
                                        status,
                                        message,
                                    }) => WireReply::Refused { status, message },
                                    Err(e) => WireReply::Error(e.to_string()),
                                };
                                let _ = reply.send(r);
                            });
                        }
                        Ok(cmd) => {
                            let raft = self.raft.clone();
                            tokio::spawn(async move {
                                let _ = reply.send(serve_propose(&raft, cmd).await);
                            });
                        }
                        Err(r) => {
                            let _ = reply.send(callers.refused(&peer, "propose", &r));
                        }
                    }
                }
                WireMessage::Status(report) => {
                    let checked =
                        authority::check_heartbeat(&caller, &report.node_id).and_then(|()| {
                            authority::check_propose(
                                &state,
                                &caller,
                                Command::SetTaskStatus(report.updates),
                            )
                        });
                    match checked {
                        Ok(Command::SetTaskStatus(updates)) => {
                            let _ = self.heard.try_send(report.node_id.clone());
                            // Batched with every other worker's into few proposals.
                            let r = match self.dispatch.reporter().try_send(StatusReport {
                                node_id: report.node_id,
                                updates,
                            }) {
                                Ok(()) => WireReply::Ack,
                                Err(_) => WireReply::Error("retry: this manager is busy".into()),
                            };
                            let _ = reply.send(r);
                        }
                        Ok(_) => {
                            let _ = reply.send(WireReply::Error("unexpected status report".into()));
                        }
                        Err(r) => {
                            let _ = reply.send(callers.refused(&peer, "status", &r));
                        }
                    }
                }
                WireMessage::Session(req) => {
                    if let Err(r) = authority::check_heartbeat(&caller, &req.node_id) {
                        let _ = reply.send(callers.refused(&peer, "session", &r));
                        continue;
                    }
                    let manager = state
                        .nodes
                        .get(&self.node_id)
                        .is_some_and(|n| n.role == skein_protocol::NodeRole::Manager);
                    if !manager {
                        let _ = reply.send(WireReply::Error(
                            "retry: this node is not a manager: hold the session with another"
                                .into(),
                        ));
                        continue;
                    }
                    let _ = self.heard.try_send(req.node_id.clone());
                    // Answered by the dispatcher itself (no task per turn).
                    self.dispatch.turn(*req, reply);
                }
                WireMessage::Join(req) => {
                    if caller == Caller::Removed {
                        let r = Refusal(format!(
                            "a join from the peer of a removed node ({}): start it with an empty --data-dir to join as a new node",
                            req.node.name
                        ));
                        let _ = reply.send(callers.refused(&peer, "join", &r));
                        continue;
                    }
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
                    if let Err(r) = authority::check_manager(&caller, "a leadership hand-over") {
                        let _ = reply.send(callers.refused(&peer, "hand-over", &r));
                        continue;
                    }
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let r = match super::membership::hand_over(&raft).await {
                            Ok(()) => WireReply::Ack,
                            Err(e) => WireReply::Error(e),
                        };
                        let _ = reply.send(r);
                    });
                }
                WireMessage::SnapshotChunk(req) => {
                    if let Err(r) = authority::check_raft(&caller, req.from) {
                        let _ = reply.send(callers.refused(&peer, "snapshot", &r));
                        continue;
                    }
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(serve_chunk(&raft, req).await);
                    });
                }
                WireMessage::SnapshotStatus(s) => {
                    if let Err(r) = authority::check_raft(&caller, s.from) {
                        let _ = reply.send(callers.refused(&peer, "snapshot", &r));
                        continue;
                    }
                    let _ = reply.send(WireReply::Ack);
                    if !s.delivered {
                        tracing::info!(
                            peer = s.from,
                            "a peer could not receive the snapshot: sending again"
                        );
                    }
                    self.raft.report_snapshot(s.from, s.delivered).await;
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
