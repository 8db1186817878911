//! Long-lived request/reply channels on `/skein/chan/1`: one stream per
//! channel, kept open, carrying one request and then its reply at a time,
//! in the same frames as the RPC codec (`[u32 length][codec frame]`).
//!
//! Why: a worker's session is a turn a second for as long as the node runs.
//! As a request-response call, each turn opened a yamux stream, negotiated
//! the protocol, half-closed it both ways and went through the swarm task
//! on both ends: most of a manager's CPU at a thousand workers. On a kept
//! stream a turn is one frame each way, read and written by the channel's
//! own task; the swarm task is not involved.
//!
//! Owns: the client side ([`Channel`]) and the serving side ([`serve`]),
//! which hands each request to the same [`Inbound`] queue as the RPC path
//! (so the same checks of who may ask what apply) and writes its reply.
//!
//! Invariants:
//! - a request gets exactly one reply on its stream, in order; a client
//!   whose call failed or was abandoned (dropped mid-way: a timeout) drops
//!   the stream and opens a new one for the next call, so a late reply is
//!   never taken for the answer to another request;
//! - no frame above the RPC limit is sent or read (the length is checked
//!   before the body is read);
//! - a peer holds at most [`STREAMS_PER_PEER`] channels on this node and
//!   the node at most [`STREAMS_TOTAL`]; more are closed at once (logged);
//! - the serving side stops with the network (its tasks are aborted).

use super::codec::{read_frame, write_frame};
use super::{Inbound, NetError, NetHandle};
use libp2p::futures::StreamExt as _;
use libp2p::{PeerId, Stream, StreamProtocol};
use skein_protocol::codec;
use skein_protocol::wire::{WireMessage, WireReply};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// The channel protocol name.
pub const CHANNEL_PROTOCOL: &str = "/skein/chan/1";
/// Channels one peer may hold open on this node (a worker holds one; a
/// reconnect may overlap the old one briefly).
pub(crate) const STREAMS_PER_PEER: usize = 4;
/// Channels this node serves at once (above a fleet's worth of sessions).
pub(crate) const STREAMS_TOTAL: usize = 65_536;

/// A request/reply channel to one peer over one kept stream.
pub struct Channel {
    net: NetHandle,
    peer: PeerId,
    shown: String,
    /// Where to dial the peer when no connection is up.
    addr: String,
    stream: Option<Stream>,
}

impl Channel {
    pub(crate) fn new(net: NetHandle, peer: PeerId, addr: String) -> Channel {
        Channel {
            net,
            shown: peer.to_string(),
            peer,
            addr,
            stream: None,
        }
    }

    /// The peer this channel talks to.
    pub fn peer(&self) -> &str {
        &self.shown
    }

    /// Sends `msg` and waits for its reply, dialling the peer's address
    /// first when no connection is up (a dial that fails fails the call at
    /// once). Dropping the future mid-way (a caller's timeout) drops the
    /// stream too.
    pub async fn call(&mut self, msg: &WireMessage) -> Result<WireReply, NetError> {
        let frame = self.net.encode(msg)?;
        let max_frame = self.net.max_frame;
        // Taken out while in use: it comes back only after a whole exchange.
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let failed = |e: std::io::Error| NetError::Request {
            peer: self.shown.clone(),
            detail: super::actor::chain(&e),
        };
        write_frame(&mut stream, &frame, max_frame)
            .await
            .map_err(failed)?;
        let answer = read_frame(&mut stream, max_frame).await.map_err(failed)?;
        let reply = codec::decode::<WireReply>(&answer).map_err(|e| NetError::Request {
            peer: self.shown.clone(),
            detail: format!("bad reply: {e}"),
        })?;
        self.stream = Some(stream);
        Ok(reply)
    }

    async fn open(&mut self) -> Result<Stream, NetError> {
        if !self.net.is_connected(&self.shown) {
            // Through the peer's entry (kept or learned), so a dial already
            // under way for it is shared: two dials would leave two
            // connections, and a manager taking over a thousand sessions at
            // once would do every handshake twice.
            self.net.learn(&self.shown, &self.addr);
            self.net.connect(&self.shown).await?;
        }
        let mut control = self.net.streams.clone();
        control
            .open_stream(self.peer, StreamProtocol::new(CHANNEL_PROTOCOL))
            .await
            .map_err(|e| NetError::Request {
                peer: self.shown.clone(),
                detail: match e {
                    libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => format!(
                        "the peer does not speak {CHANNEL_PROTOCOL} (another skein version?)"
                    ),
                    other => other.to_string(),
                },
            })
    }
}

/// Serves the channels peers open to this node until `shutdown`: each
/// request goes to `inbound` like an RPC request, its reply back on the
/// stream it came on.
pub(crate) async fn serve(
    mut control: libp2p_stream::Control,
    inbound: mpsc::Sender<Inbound>,
    max_frame: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut incoming = match control.accept(StreamProtocol::new(CHANNEL_PROTOCOL)) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot serve {CHANNEL_PROTOCOL}: this node serves no worker sessions");
            return;
        }
    };
    let mut tasks: JoinSet<PeerId> = JoinSet::new();
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                let n = per_peer.entry(peer).or_default();
                if *n >= STREAMS_PER_PEER || tasks.len() >= STREAMS_TOTAL {
                    warn!(%peer, open = *n, "refused a channel: too many open (a misbehaving peer?)");
                    drop(stream);
                    continue;
                }
                *n += 1;
                tasks.spawn(serve_one(peer, stream, inbound.clone(), max_frame));
            }
            Some(done) = tasks.join_next() => {
                if let Ok(peer) = done {
                    if let Some(n) = per_peer.get_mut(&peer) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            per_peer.remove(&peer);
                        }
                    }
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    tasks.abort_all();
                    return;
                }
            }
        }
    }
}

/// One channel: request, reply, until the peer closes it or breaks a frame.
async fn serve_one(
    peer: PeerId,
    mut stream: Stream,
    inbound: mpsc::Sender<Inbound>,
    max_frame: usize,
) -> PeerId {
    let name = peer.to_string();
    loop {
        let frame = match read_frame(&mut stream, max_frame).await {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    warn!(%peer, error = %e, "refused a channel request");
                } else {
                    debug!(%peer, error = %e, "channel closed");
                }
                return peer;
            }
        };
        let reply = match codec::decode::<WireMessage>(&frame) {
            Err(e) => WireReply::Error(format!("bad request: {e}")),
            Ok(msg) => {
                let (tx, rx) = oneshot::channel();
                let request = Inbound {
                    peer: name.clone(),
                    msg,
                    reply: tx,
                };
                match inbound.try_send(request) {
                    Ok(()) => rx.await.unwrap_or_else(|_| super::unanswered()),
                    Err(e) => super::not_taken(&e),
                }
            }
        };
        let out = match codec::encode(&reply) {
            Ok(b) => b,
            Err(e) => {
                warn!(%peer, error = %e, "channel reply not encodable: closing the channel");
                return peer;
            }
        };
        if let Err(e) = write_frame(&mut stream, &out, max_frame).await {
            debug!(%peer, error = %e, "channel reply not sent");
            return peer;
        }
    }
}
