//! Writes from any node: a command proposed here goes into the local Raft
//! node when it leads, and is forwarded to the leader otherwise (and the
//! leader's verdict comes back). The caller cannot tell the difference: a
//! refusal by the leader's state comes back typed ([`ForwardError::Refused`],
//! with the HTTP status it means), so the API answers it alike everywhere.
//!
//! Every write is wrapped in a [`Command::Once`] with a fresh request id, so
//! the proposer may send it again whenever it cannot tell whether an attempt
//! committed: when the leader it asked is replaced (it follows the new one at
//! once instead of waiting out the request timeout), when an attempt takes
//! longer than [`ATTEMPT_TIMEOUT`], or when leadership was lost mid-flight.
//! The replicated state applies one request id once and answers repeats with
//! the first verdict, so a retry never applies a write twice.

use super::raft_link::{peer_of, PeerBook};
use crate::net::NetHandle;
use crate::raft::{ProposeError, Published, RaftHandle};
use skein_protocol::command::RequestId;
use skein_protocol::wire::{WireMessage, WireReply};
use skein_protocol::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long one forwarded attempt may take before it is sent again (to the
/// same leader, if it is still the one this node knows).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write keeps being retried before its last error is returned.
pub const PROPOSE_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Proposer {
    raft: RaftHandle,
    net: Option<NetHandle>,
    book: PeerBook,
    next_seq: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Local(#[from] ProposeError),
    #[error("{0}")]
    Remote(String),
    /// The leader's state refused the proposal (typed: see `WireReply::Refused`).
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("no leader is known: the cluster has no quorum right now (check `skein node ls`)")]
    NoLeader,
    #[error("cannot reach the leader: {0}")]
    Unreachable(String),
}

/// What one attempt came to.
enum Attempt {
    Done(Result<(), ForwardError>),
    /// Worth trying again (same request id), after `pause`.
    Retry {
        error: ForwardError,
        pause: bool,
    },
}

impl Proposer {
    pub fn new(raft: RaftHandle, net: Option<NetHandle>, book: PeerBook) -> Self {
        // Random start: request ids of a restarted node never repeat old ones.
        let start = crate::util::random_u64() >> 1;
        Proposer {
            raft,
            net,
            book,
            next_seq: Arc::new(AtomicU64::new(start)),
        }
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    fn request_id(&self) -> RequestId {
        RequestId {
            origin: self.raft.current().raft_id,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Proposes `cmd` at the leader and waits until it is applied there.
    /// Retries across leader changes and lost answers without ever applying
    /// `cmd` twice (see the module header).
    pub async fn propose(&self, cmd: Command) -> Result<(), ForwardError> {
        let cmd = match cmd {
            once @ Command::Once { .. } => once,
            cmd => Command::Once {
                request: self.request_id(),
                cmd: Box::new(cmd),
            },
        };
        let deadline = Instant::now() + PROPOSE_DEADLINE;
        let mut sub = self.raft.subscribe();
        let mut pauses = 0u64;
        loop {
            match self.attempt(&cmd, &mut sub).await {
                Attempt::Done(result) => return result,
                Attempt::Retry { error, pause } => {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    if pause {
                        pauses += 1;
                        let wait = Duration::from_millis(50 * pauses.min(6));
                        // Wake early when a (new) leader becomes known.
                        let _ = tokio::time::timeout(wait, leader_known(&mut sub)).await;
                    }
                }
            }
        }
    }

    async fn attempt(&self, cmd: &Command, sub: &mut watch::Receiver<Arc<Published>>) -> Attempt {
        let leader = match self.raft.propose(cmd.clone()).await {
            Ok(()) => return Attempt::Done(Ok(())),
            Err(ProposeError::NotLeader { leader }) => leader,
            // Lost before or while committing: safe to send again.
            Err(e @ (ProposeError::Dropped | ProposeError::Uncertain)) => {
                return Attempt::Retry {
                    error: e.into(),
                    pause: true,
                }
            }
            Err(e) => return Attempt::Done(Err(e.into())),
        };
        let Some(net) = &self.net else {
            return Attempt::Done(Err(ProposeError::NotLeader { leader }.into()));
        };
        let peer = (leader != 0)
            .then(|| peer_of(&self.raft, &self.book, leader))
            .flatten();
        let Some(peer) = peer else {
            return Attempt::Retry {
                error: ForwardError::NoLeader,
                pause: true,
            };
        };
        let request = net.request(&peer, WireMessage::Propose(Box::new(cmd.clone())));
        let answer = tokio::select! {
            answer = request => answer,
            // The leader we asked was replaced: ask the new one at once.
            () = leader_moves_from(sub, leader) => {
                return Attempt::Retry {
                    error: ForwardError::Unreachable(format!("leader {leader} was replaced")),
                    pause: false,
                };
            }
            () = tokio::time::sleep(ATTEMPT_TIMEOUT) => {
                return Attempt::Retry {
                    error: ForwardError::Unreachable(format!(
                        "leader {leader} did not answer within {ATTEMPT_TIMEOUT:?}"
                    )),
                    pause: false,
                };
            }
        };
        match answer {
            Ok(WireReply::Applied { index }) => {
                self.wait_applied_locally(index).await;
                Attempt::Done(Ok(()))
            }
            Ok(WireReply::Error(e)) if e.starts_with(NOT_LEADER) || e.starts_with(RETRY) => {
                Attempt::Retry {
                    error: ForwardError::Remote(e),
                    pause: true,
                }
            }
            Ok(WireReply::Error(e)) => Attempt::Done(Err(ForwardError::Remote(e))),
            Ok(WireReply::Refused { status, message }) => {
                Attempt::Done(Err(ForwardError::Refused { status, message }))
            }
            Ok(other) => Attempt::Done(Err(ForwardError::Remote(format!(
                "unexpected answer {other:?}"
            )))),
            Err(e) => Attempt::Retry {
                error: ForwardError::Unreachable(e.to_string()),
                pause: true,
            },
        }
    }

    /// Makes the leader hand leadership to another manager, wherever the
    /// leader is; returns once it has moved.
    pub async fn hand_over_leadership(&self) -> Result<(), ForwardError> {
        let p = self.raft.current();
        if p.is_leader {
            return super::membership::hand_over(&self.raft)
                .await
                .map_err(ForwardError::Remote);
        }
        let (Some(net), true) = (&self.net, p.leader_id != 0) else {
            return Err(ForwardError::NoLeader);
        };
        let Some(peer) = peer_of(&self.raft, &self.book, p.leader_id) else {
            return Err(ForwardError::NoLeader);
        };
        match net.request(&peer, WireMessage::HandOverLeadership).await {
            Ok(WireReply::Ack) => Ok(()),
            Ok(WireReply::Error(e)) => Err(ForwardError::Remote(e)),
            Ok(other) => Err(ForwardError::Remote(format!("unexpected answer {other:?}"))),
            Err(e) => Err(ForwardError::Unreachable(e.to_string())),
        }
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
/// How a leader-side answer starts when the proposal may be sent again
/// (dropped or uncertain at the leader).
pub const RETRY: &str = "retry: ";

/// Resolves once some leader is known.
async fn leader_known(sub: &mut watch::Receiver<Arc<Published>>) {
    loop {
        if sub.borrow_and_update().leader_id != 0 {
            return;
        }
        if sub.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves once this node knows a leader other than `leader`.
async fn leader_moves_from(sub: &mut watch::Receiver<Arc<Published>>, leader: u64) {
    loop {
        let now = sub.borrow_and_update().leader_id;
        if now != 0 && now != leader {
            return;
        }
        if sub.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

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
        Err(e @ (ProposeError::Dropped | ProposeError::Uncertain)) => {
            WireReply::Error(format!("{RETRY}{e}"))
        }
        Err(e @ ProposeError::Rejected(_)) => WireReply::Refused {
            status: crate::api::status_of(&e).as_u16(),
            message: e.to_string(),
        },
        Err(e) => WireReply::Error(e.to_string()),
    }
}
