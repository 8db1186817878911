//! Writes from any node: a command proposed here goes into the local Raft
//! node when it leads, and is forwarded to the leader otherwise (and the
//! leader's verdict comes back). The caller cannot tell the difference,
//! except that a refusal from a remote leader arrives as text.

use super::raft_link::{peer_of, PeerBook};
use crate::net::NetHandle;
use crate::raft::{ProposeError, RaftHandle};
use skein_protocol::wire::{WireMessage, WireReply};
use skein_protocol::Command;
use std::time::Duration;

#[derive(Clone)]
pub struct Proposer {
    raft: RaftHandle,
    net: Option<NetHandle>,
    book: PeerBook,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Local(#[from] ProposeError),
    #[error("{0}")]
    Remote(String),
    #[error("no leader is known: the cluster has no quorum right now (check `skein node ls`)")]
    NoLeader,
    #[error("cannot reach the leader: {0}")]
    Unreachable(String),
}

impl Proposer {
    pub fn new(raft: RaftHandle, net: Option<NetHandle>, book: PeerBook) -> Self {
        Proposer { raft, net, book }
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// Proposes `cmd` at the leader and waits until it is applied there.
    /// Retries briefly across a leader change.
    pub async fn propose(&self, cmd: Command) -> Result<(), ForwardError> {
        let mut last = ForwardError::NoLeader;
        for attempt in 0..20u64 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 * attempt.min(6))).await;
            }
            match self.raft.propose(cmd.clone()).await {
                Ok(()) => return Ok(()),
                Err(ProposeError::NotLeader { leader }) => {
                    let Some(net) = &self.net else {
                        return Err(ProposeError::NotLeader { leader }.into());
                    };
                    if leader == 0 {
                        last = ForwardError::NoLeader;
                        continue;
                    }
                    let Some(peer) = peer_of(&self.raft, &self.book, leader) else {
                        last = ForwardError::NoLeader;
                        continue;
                    };
                    match net
                        .request(&peer, WireMessage::Propose(Box::new(cmd.clone())))
                        .await
                    {
                        Ok(WireReply::Applied { index }) => {
                            self.wait_applied_locally(index).await;
                            return Ok(());
                        }
                        Ok(WireReply::Error(e)) if e.starts_with(NOT_LEADER) => {
                            last = ForwardError::Remote(e);
                            continue;
                        }
                        Ok(WireReply::Error(e)) => return Err(ForwardError::Remote(e)),
                        Ok(other) => {
                            return Err(ForwardError::Remote(format!(
                                "unexpected answer {other:?}"
                            )))
                        }
                        Err(e) => {
                            last = ForwardError::Unreachable(e.to_string());
                            continue;
                        }
                    }
                }
                Err(ProposeError::Dropped) => {
                    last = ProposeError::Dropped.into();
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    /// After a remote commit, wait (briefly) until this node has applied
    /// the leader's index too, so a read here after a write sees the write.
    async fn wait_applied_locally(&self, index: u64) {
        let mut sub = self.raft.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if sub.borrow_and_update().applied >= index {
                    return;
                }
                if sub.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// How a leader-side refusal for "I am not the leader" starts, so the
/// forwarder can retry elsewhere.
pub const NOT_LEADER: &str = "not the leader";

/// Handles a forwarded proposal on this node.
pub async fn serve_propose(raft: &RaftHandle, cmd: Command) -> WireReply {
    match raft.propose(cmd).await {
        // The state is published before a proposal is answered, so the
        // applied index now covers this command.
        Ok(()) => WireReply::Applied {
            index: raft.current().applied,
        },
        Err(ProposeError::NotLeader { leader }) => {
            WireReply::Error(format!("{NOT_LEADER} (leader: {leader})"))
        }
        Err(e) => WireReply::Error(e.to_string()),
    }
}
