//! Raft messages over the network. Outbound: each message raft-rs emits is
//! protobuf-encoded and sent fire-and-forget to the peer that holds the
//! target raft id (found in the replicated node table, or in a local table
//! for nodes still joining); a message larger than [`CHUNK`] (an append
//! carrying a large entry) is split into [`RaftChunk`]s. A `MsgSnapshot` is
//! small: it carries only the image's descriptor, and the image follows out
//! of band ([`super::snapshot_link`]), so no state size makes a message
//! large. Inbound: messages (and reassembled chunks) are stepped into the
//! local node. When the connection to the current leader drops, Raft is told
//! at once so a follower can start an election instead of waiting out the
//! timeout.

use crate::net::{NetEvent, NetHandle};
use crate::raft::RaftHandle;
use protobuf::Message as _;
use raft::eraftpb::Message;
use skein_protocol::wire::{RaftChunk, WireMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Largest raft message sent in one frame; larger ones are chunked.
pub const CHUNK: usize = 4 * 1024 * 1024;
/// Most chunked messages being reassembled at once (per link).
const MAX_PARTIAL: usize = 8;

/// Largest encoded `MsgSnapshot` this process sent (tests check it stays small).
static LARGEST_SNAPSHOT_SENT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The largest encoded `MsgSnapshot` any node in this process sent, in bytes.
pub fn largest_snapshot_message_sent() -> usize {
    LARGEST_SNAPSHOT_SENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// raft id -> peer id, for members the replicated state does not list yet.
#[derive(Clone, Default)]
pub struct PeerBook {
    extra: Arc<Mutex<Bindings>>,
}

/// raft id <-> peer, both ways (a lookup per inbound message must not scan
/// every node this manager admitted).
#[derive(Default)]
struct Bindings {
    peer_of: HashMap<u64, String>,
    raft_of: HashMap<String, u64>,
}

impl PeerBook {
    pub fn insert(&self, raft_id: u64, peer: String) {
        if let Ok(mut m) = self.extra.lock() {
            if let Some(old) = m.peer_of.insert(raft_id, peer.clone()) {
                if m.raft_of.get(&old) == Some(&raft_id) {
                    m.raft_of.remove(&old);
                }
            }
            if let Some(old) = m.raft_of.insert(peer.clone(), raft_id) {
                if old != raft_id && m.peer_of.get(&old) == Some(&peer) {
                    m.peer_of.remove(&old);
                }
            }
        }
    }
    fn extra(&self, raft_id: u64) -> Option<String> {
        self.extra.lock().ok()?.peer_of.get(&raft_id).cloned()
    }
    /// The raft id this book binds `peer` to (a node admitted by this
    /// node, or a manager named in this node's join answer).
    pub fn raft_of(&self, peer: &str) -> Option<u64> {
        self.extra.lock().ok()?.raft_of.get(peer).copied()
    }
}

/// The peer id holding `raft_id`: the node table first, then the book.
pub fn peer_of(raft: &RaftHandle, book: &PeerBook, raft_id: u64) -> Option<String> {
    let p = raft.current();
    let known = p
        .state
        .nodes
        .values()
        .find(|n| n.raft_id == raft_id && !n.peer_id.is_empty())
        .map(|n| n.peer_id.clone());
    known.or_else(|| book.extra(raft_id))
}

fn raft_id_of_peer(raft: &RaftHandle, peer: &str) -> Option<u64> {
    let p = raft.current();
    let known = p
        .state
        .nodes
        .values()
        .find(|n| n.peer_id == peer && n.raft_id != 0)
        .map(|n| n.raft_id);
    known
}

/// Sends what raft-rs emits; runs until `out` closes or shutdown.
pub async fn run_outbound(
    mut out: mpsc::UnboundedReceiver<Message>,
    raft: RaftHandle,
    net: NetHandle,
    book: PeerBook,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_chunk_id: u64 = crate::util::random_u64();
    loop {
        let msg = tokio::select! {
            m = out.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.changed() => return,
        };
        let Some(peer) = peer_of(&raft, &book, msg.to) else {
            tracing::debug!(to = msg.to, "no address for raft peer yet");
            continue;
        };
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        if msg.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            LARGEST_SNAPSHOT_SENT.fetch_max(bytes.len(), std::sync::atomic::Ordering::Relaxed);
        }
        if bytes.len() <= CHUNK {
            net.send(&peer, WireMessage::Raft(bytes));
            continue;
        }
        next_chunk_id = next_chunk_id.wrapping_add(1);
        let total = bytes.len().div_ceil(CHUNK) as u32;
        tracing::info!(
            to = msg.to,
            bytes = bytes.len(),
            chunks = total,
            "sending a large raft message in chunks"
        );
        for (index, piece) in bytes.chunks(CHUNK).enumerate() {
            net.send(
                &peer,
                WireMessage::RaftChunk(RaftChunk {
                    id: next_chunk_id,
                    index: index as u32,
                    total,
                    bytes: piece.to_vec(),
                }),
            );
        }
    }
}

/// Reassembles chunked raft messages.
#[derive(Default)]
pub struct Reassembly {
    partial: HashMap<(String, u64), Vec<Option<Vec<u8>>>>,
}

impl Reassembly {
    /// Adds a piece; returns the whole message once every piece is in.
    pub fn add(&mut self, peer: &str, c: RaftChunk) -> Option<Vec<u8>> {
        if c.total == 0 || c.index >= c.total || c.total > 4096 {
            return None;
        }
        let key = (peer.to_string(), c.id);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
            // Drop the oldest-looking entry: raft will resend what it needs.
            if let Some(k) = self.partial.keys().next().cloned() {
                self.partial.remove(&k);
            }
        }
        let slots = self
            .partial
            .entry(key.clone())
            .or_insert_with(|| vec![None; c.total as usize]);
        if slots.len() != c.total as usize {
            self.partial.remove(&key);
            return None;
        }
        slots[c.index as usize] = Some(c.bytes);
        if slots.iter().all(Option::is_some) {
            let parts = self.partial.remove(&key)?;
            return Some(parts.into_iter().flatten().flatten().collect());
        }
        None
    }
}

/// Decodes one raft message (None, logged, when it does not decode).
pub fn decode(bytes: &[u8]) -> Option<Message> {
    match Message::parse_from_bytes(bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable raft message dropped");
            None
        }
    }
}

/// Tells Raft when the connection to a member drops.
pub async fn watch_disconnects(
    net: NetHandle,
    raft: RaftHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = net.events();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(NetEvent::Disconnected { peer }) => {
                    if let Some(id) = raft_id_of_peer(&raft, &peer) {
                        raft.peer_unreachable(id).await;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_reassemble_in_any_order() {
        let mut r = Reassembly::default();
        let data: Vec<u8> = (0..100u8).collect();
        let pieces: Vec<RaftChunk> = data
            .chunks(30)
            .enumerate()
            .map(|(i, p)| RaftChunk {
                id: 7,
                index: i as u32,
                total: 4,
                bytes: p.to_vec(),
            })
            .collect();
        let mut out = None;
        for c in pieces.into_iter().rev() {
            out = r.add("p", c);
        }
        assert_eq!(out, Some(data));
        assert!(r.partial.is_empty());
        assert_eq!(
            r.add(
                "p",
                RaftChunk {
                    id: 1,
                    index: 5,
                    total: 2,
                    bytes: vec![]
                }
            ),
            None
        );
    }
}
