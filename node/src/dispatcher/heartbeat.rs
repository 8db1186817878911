//! Heartbeats. A node tells the leader it is alive every interval (a worker
//! on a session tells its session's manager through its turns instead);
//! every manager feeds what it hears into [`Liveness`] and commits the
//! verdicts (down / ready) of the nodes it judges. Heartbeats themselves
//! never touch Raft.

use super::liveness::Liveness;
use crate::cluster::forward::Proposer;
use crate::cluster::raft_link::{peer_of, PeerBook};
use crate::membership::MemberEvent;
use crate::net::{NetEvent, NetHandle};
use crate::raft::RaftHandle;
use skein_protocol::gossip::MemberState;
use skein_protocol::wire::WireMessage;
use skein_protocol::Command;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// How long a closed connection counts as evidence for a death verdict.
const CLOSED_EVIDENCE: Duration = Duration::from_secs(10);

/// The next event of an optional subscription (pending forever without
/// one or once it closed; lagging skips what was missed).
async fn next_event<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>) -> Option<T> {
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

/// Manager side (runs on every node, acts while this node is a manager):
/// tracks heartbeats and session turns heard here and gossip verdicts
/// (`members`, when membership runs), and proposes the liveness verdicts of
/// the nodes this manager judges (see [`Liveness`]). A stall of this
/// process (SIGSTOP, a VM pause) is noticed and not counted as anyone's
/// silence.
pub async fn run_monitor(
    self_id: String,
    proposer: Proposer,
    mut heard: mpsc::Receiver<String>,
    mut members: Option<broadcast::Receiver<MemberEvent>>,
    net: Option<NetHandle>,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let raft = proposer.raft().clone();
    let grace_ms = grace.as_millis() as u64;
    let mut liveness: Option<Liveness> = None;
    let mut was_leader = false;
    // Verdicts are checked ten times per grace period: a silent node is
    // down within 1.1 grace periods (2.75 s with the defaults).
    let period = Duration::from_millis((grace_ms / 10).clamp(50, 500));
    let mut tick = tokio::time::interval(period);
    let mut last_turn = tokio::time::Instant::now();
    // Peers whose connection with this node closed lately: a gossip death
    // verdict about one of them comes with strong evidence (its kernel
    // answered for a dead process). Not being connected says nothing: a
    // manager holds connections only to the other managers and to the
    // workers whose sessions it serves.
    let mut net_events = net.as_ref().map(|n| n.events());
    let mut closed: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    // The roster and judges `liveness` last noted (see
    // `ClusterState::judges_key`).
    let mut seen_state: Option<(u64, u64)> = None;
    loop {
        tokio::select! {
            Some(ev) = next_event(&mut net_events) => {
                if let NetEvent::Disconnected { peer } = ev {
                    let now = tokio::time::Instant::now();
                    closed.retain(|_, t| now.duration_since(*t) < CLOSED_EVIDENCE);
                    closed.insert(peer, now);
                }
                continue;
            }
            Some(node) = heard.recv() => {
                if let Some(l) = liveness.as_mut() {
                    l.heard(&node, crate::util::now_ms());
                }
                continue;
            }
            Some(ev) = next_event(&mut members) => {
                let Some(l) = liveness.as_mut() else { continue };
                let p = raft.current();
                // The event names a peer; the node table maps it to a node.
                let node = p.state.nodes.values().find(|n| n.peer_id == ev.peer).map(|n| n.id.clone());
                let Some(node) = node else { continue };
                match ev.state {
                    MemberState::Dead => {
                        // Our own connection closed too: its kernel answered
                        // for a dead process (strong evidence).
                        let strong = closed.get(&ev.peer).is_some_and(|t| t.elapsed() < CLOSED_EVIDENCE)
                            && net.as_ref().is_some_and(|n| !n.is_connected(&ev.peer));
                        tracing::info!(node = %node, strong, "gossip declared the node dead");
                        l.declared_dead(&node, crate::util::now_ms(), strong);
                    }
                    MemberState::Alive => l.declared_alive(&node),
                    MemberState::Suspect => continue,
                }
            }
            _ = tick.tick() => {}
            _ = shutdown.changed() => {
                if let Some(h) = in_flight { h.abort(); }
                return;
            }
        }
        let now = crate::util::now_ms();
        // This loop runs at least every `period`: a much longer gap means
        // this process was not running (paused, or starved).
        let gap = last_turn.elapsed();
        last_turn = tokio::time::Instant::now();
        let p = raft.current();
        let manager = p
            .state
            .nodes
            .get(&self_id)
            .is_some_and(|n| n.role == skein_protocol::NodeRole::Manager);
        if !manager || p.leader_id == 0 {
            liveness = None;
            seen_state = None;
            was_leader = false;
            continue;
        }
        let l = liveness.get_or_insert_with(|| Liveness::new(grace_ms, now));
        if gap > period * 2 + grace / 2 {
            tracing::warn!(
                paused_ms = gap.as_millis() as u64,
                "this manager was not running for a while: every node it judges gets a full grace period from now"
            );
            l.resumed(now);
        }
        // Both walk every node: only when the nodes or their judges changed
        // (task changes and verdicts, thousands in a rollout, leave them).
        let key = p.state.judges_key();
        if seen_state != Some(key) {
            l.judges_seen(&p.state, now);
            l.saw(&p.state, now);
            seen_state = Some(key);
        }
        let leader = p.leader_ready;
        if leader && !was_leader {
            l.took_over(now);
        }
        was_leader = leader;
        // One proposal in flight at a time, awaited in its own task: this
        // loop keeps hearing session turns meanwhile (a loop blocked on a
        // slow commit would drop them and judge live nodes silent).
        if in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            continue;
        }
        let verdicts = l.changes(&p.state, now, &self_id, leader);
        if verdicts.is_empty() {
            continue;
        }
        for (id, status, message) in &verdicts {
            tracing::info!(node = %id, ?status, %message, "node status changes");
        }
        let cmd = Command::NodeVerdicts {
            by: self_id.clone(),
            verdicts,
            at: now,
        };
        let proposer = proposer.clone();
        in_flight = Some(tokio::spawn(async move {
            if let Err(e) = proposer.propose(cmd).await {
                tracing::debug!(error = %e, "node status not recorded; will retry");
            }
        }));
    }
}
