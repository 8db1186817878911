//! The network: one libp2p swarm per node, owned by one actor task.
//!
//! Transport: TCP, then pnet (the cluster key as the pre-shared key: a peer
//! without it never gets past the first bytes), then noise (peer identity),
//! then yamux. Behaviours: identify (`/skein/id/1`), ping (closes connections
//! whose peer stopped answering, so they get re-dialled) and request-response
//! on `/skein/rpc/1` with our own codec (`codec.rs`): a u32 big-endian length,
//! then a [`skein_protocol::codec`] frame of a [`WireMessage`] or [`WireReply`];
//! and kept request/reply streams on `/skein/chan/1` (`channel.rs`, the same
//! frames) for worker sessions, whose requests reach the same [`Inbound`]
//! queue.
//!
//! Who may call it: the agent starts it once ([`start`]); raft, the dispatcher
//! and join logic hold cheap [`NetHandle`] clones; whoever owns the
//! [`Inbound`] receiver answers every request (replying or dropping the
//! `reply` sender, never holding it forever).
//!
//! Invariants:
//! - only the actor task touches the `Swarm`; handles talk to it through a
//!   command channel and never block on the network in a sync method;
//! - no frame above the RPC limit ([`MAX_RPC_FRAME`]) is sent, and none is
//!   read: the length is checked before any of the body is read or allocated;
//! - every request gets exactly one answer: a reply, or an error when the
//!   peer, the connection or the timeout fails;
//! - a kept peer ([`NetHandle::add_peer`], by the cluster or by gossip
//!   membership: each keeper adds and removes its own) stays connected: when
//!   its last connection closes or a dial fails, it is re-dialled with a
//!   backoff that doubles from 100 ms up to 5 s (reset once a connection has
//!   lived 10 s);
//! - a peer whose address is only known ([`NetHandle::learn`]) is dialled
//!   when a request needs it, never re-dialled, and a connection this node
//!   dialled to a peer nobody keeps is closed once no request used it for
//!   [`Tuning::idle_close`]: connections stay bounded by what the node keeps
//!   (its managers and ring neighbours) plus what it is using right now.
//!   Connections others dialled to this node are theirs to close;
//! - a handshake that fails after TCP connected (wrong cluster key, or not a
//!   skein agent at all) is reported as such: a log line and a
//!   [`NetError::Handshake`] saying "wrong cluster key?";
//! - shutdown is graceful and bounded: pending calls fail with
//!   [`NetError::Stopped`], connections are closed, the listener released,
//!   all within about a second.

mod actor;
mod channel;
mod codec;
mod keypair;
#[cfg(test)]
mod tests;

pub use channel::{Channel, CHANNEL_PROTOCOL};
use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};
use skein_protocol::wire::{WireMessage, WireReply};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// The default agent port (the one Serf and Swarm's gossip use too).
pub const DEFAULT_PORT: u16 = 7946;
/// The request-response protocol name.
pub const RPC_PROTOCOL: &str = "/skein/rpc/1";
/// The identify protocol version we announce.
pub const IDENTIFY_PROTOCOL: &str = "/skein/id/1";
/// Largest request or reply frame sent or accepted. Snapshot images move
/// in 1 MiB chunks well below it (see `cluster::snapshot_link`).
pub const MAX_RPC_FRAME: usize = 16 * 1024 * 1024;
/// The gossipsub topic membership is spread on. Only nodes holding the
/// cluster key can connect at all, so one topic name serves every cluster.
pub const GOSSIP_TOPIC: &str = "/skein/members/1";
/// Largest gossip message sent or accepted.
pub const MAX_GOSSIP_MESSAGE: usize = 64 * 1024;

/// A message received on the gossip topic. `source` is the peer that
/// published (and signed) it, not the one that forwarded it.
#[derive(Clone, Debug)]
pub struct GossipIn {
    pub source: String,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// `--listen`, default 0.0.0.0:7946.
    pub listen: SocketAddr,
    /// `--advertise HOST:PORT`: what other nodes dial to reach this one.
    pub advertise: Option<String>,
    /// The pnet pre-shared key: only nodes with the same key can connect.
    pub cluster_key: [u8; 32],
    /// The ed25519 identity: created on first start (mode 0600), reused after.
    pub keypair_path: PathBuf,
    /// How long a request waits for its reply (default 5 s).
    pub request_timeout: Duration,
    /// Find peers on the LAN with mDNS (`--no-mdns` turns it off).
    pub mdns: bool,
}

impl NetConfig {
    /// The defaults: listen on 0.0.0.0:7946, no advertise address, 5 s requests.
    pub fn new(cluster_key: [u8; 32], keypair_path: impl Into<PathBuf>) -> Self {
        NetConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            advertise: None,
            cluster_key,
            keypair_path: keypair_path.into(),
            request_timeout: Duration::from_secs(5),
            mdns: false,
        }
    }
}

/// A request from a peer. Answer it through `reply`; dropping `reply` answers
/// with an error.
#[derive(Debug)]
pub struct Inbound {
    /// The sender's peer id.
    pub peer: String,
    pub msg: WireMessage,
    pub reply: oneshot::Sender<WireReply>,
}

/// The answer to a request the application could not take (`inbound`
/// queue full or closed): the same on the RPC path and on channels.
pub(crate) fn not_taken(e: &mpsc::error::TrySendError<Inbound>) -> WireReply {
    WireReply::Error(
        match e {
            mpsc::error::TrySendError::Full(_) => {
                "this node is overloaded (inbound queue full): retry later"
            }
            mpsc::error::TrySendError::Closed(_) => "this node is not accepting requests",
        }
        .into(),
    )
}

/// The answer to a request whose `reply` sender was dropped unanswered.
pub(crate) fn unanswered() -> WireReply {
    WireReply::Error("the request was dropped without an answer".into())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// The first connection to `peer` is up. `addr` is the remote socket
    /// address (for a connection the peer dialled, its ephemeral port).
    Connected {
        peer: String,
        addr: String,
        /// The peer dialled this node (a newcomer reaching a member).
        inbound: bool,
    },
    /// The last connection to `peer` closed.
    Disconnected { peer: String },
    /// mDNS found a peer on the LAN at `addr` (HOST:PORT); not dialled yet.
    Discovered { peer: String, addr: String },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("identity key {path}: {reason}")]
    Keypair { path: PathBuf, reason: String },
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("bad address {addr:?}: {reason} (expected HOST:PORT, e.g. 10.0.0.5:{DEFAULT_PORT})")]
    BadAddress { addr: String, reason: String },
    #[error("bad peer id {0:?}: expected a libp2p peer id such as 12D3KooW...")]
    BadPeerId(String),
    #[error("connection to {addr} failed during the handshake: wrong cluster key? (or not a skein agent; {detail})")]
    Handshake { addr: String, detail: String },
    #[error("cannot reach {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("{addr} is peer {obtained}, not the expected {expected} (was that node reinstalled?)")]
    WrongPeer {
        addr: String,
        expected: String,
        obtained: String,
    },
    #[error("no connection to peer {0} and no known address for it")]
    UnknownPeer(String),
    #[error("request to {peer} failed: {detail}")]
    Request { peer: String, detail: String },
    #[error("request to {peer} got no reply within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error("message of {size} bytes is over the {limit} byte RPC limit: send it in chunks")]
    TooLarge { size: usize, limit: usize },
    #[error("cannot encode the message: {0}")]
    Encode(String),
    #[error("cannot set up the network: {0}")]
    Setup(String),
    #[error("the network has stopped (the node is shutting down)")]
    Stopped,
}

/// Knobs the tests turn; the agent uses the defaults.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// TCP connect plus the pnet/noise/yamux handshake. A peer with the wrong
    /// key is often only rejected when this fires.
    pub handshake_timeout: Duration,
    /// Close a connection with no open stream after this long (libp2p's 10 s
    /// default would close quiet connections between known peers).
    pub idle_timeout: Duration,
    /// Close a connection this node dialled to a peer it does not keep
    /// once no request went either way for this long.
    pub idle_close: Duration,
    /// Frame limit for what this node reads and sends.
    pub max_rpc_frame: usize,
    /// A connection's liveness check (it closes when a ping goes
    /// unanswered for `ping_timeout`). Sessions, probes and Raft notice a
    /// silent peer far sooner by their own requests: this only clears out
    /// connections nothing uses, so it is rare (each ping is a stream
    /// opened on every connection of every node: every 10 s, a manager
    /// holding 2,500 sessions negotiated 500 ping streams a second) and
    /// patient (a busy peer is not a dead one: at 10 s, the pings of a
    /// 5,000-node rollout closed hundreds of live sessions' connections).
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A connection that lived this long resets the re-dial backoff.
    pub stable_after: Duration,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Inbound requests queued for the application before "busy" replies.
    pub inbound_queue: usize,
    /// gossipsub's mesh maintenance period.
    pub gossip_heartbeat: Duration,
    /// How often mDNS asks the LAN who is there.
    pub mdns_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(24 * 3600),
            idle_close: Duration::from_secs(10),
            max_rpc_frame: MAX_RPC_FRAME,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(1),
            inbound_queue: 1024,
            gossip_heartbeat: Duration::from_secs(1),
            mdns_interval: Duration::from_secs(5),
        }
    }
}

/// What handles ask of the actor.
pub(crate) enum Command {
    Dial {
        addrs: Vec<SocketAddr>,
        shown: String,
        reply: oneshot::Sender<Result<String, NetError>>,
    },
    AddPeer {
        peer: PeerId,
        addr: String,
        after: Duration,
        by: Keeper,
    },
    RemovePeer {
        peer: PeerId,
        by: Keeper,
    },
    /// Remember where `peer` is, to dial it when a request needs it.
    Learn {
        peer: PeerId,
        addr: String,
    },
    /// Refuse this peer from now on (a removed node).
    Deny {
        peer: PeerId,
    },
    Request {
        peer: PeerId,
        frame: Vec<u8>,
        reply: oneshot::Sender<Result<WireReply, NetError>>,
    },
    /// Answered once a connection with `peer` is up (dialled if needed,
    /// sharing a dial already under way) or its dial failed.
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Send {
        peer: PeerId,
        frame: Vec<u8>,
    },
    Publish {
        data: Vec<u8>,
        /// Told whether gossipsub took it (false: no subscribed peer yet).
        done: Option<oneshot::Sender<bool>>,
    },
}

/// Who keeps a peer connected: each keeper adds and removes only its own
/// claim; the peer stays kept while anyone keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keeper {
    /// The cluster: managers (Raft, sessions), a joining node's managers.
    Cluster = 1,
    /// Gossip membership: this node's ring neighbours (and, on a manager,
    /// the other managers).
    Gossip = 2,
    /// A worker's session: the one manager it holds it with.
    Session = 4,
}

/// Queue depth between handles and the actor.
const COMMAND_QUEUE: usize = 4096;

/// A cheap, cloneable handle on the network actor.
#[derive(Clone)]
pub struct NetHandle {
    cmd: mpsc::Sender<Command>,
    streams: libp2p_stream::Control,
    peer_id: String,
    listen: SocketAddr,
    advertise: String,
    events: broadcast::Sender<NetEvent>,
    connected: watch::Receiver<std::collections::BTreeSet<String>>,
    gossip: broadcast::Sender<GossipIn>,
    request_timeout: Duration,
    handshake_timeout: Duration,
    max_frame: usize,
}

/// Starts the network actor: loads or creates the identity, binds the
/// listener and returns once it is bound. Requests from peers arrive on the
/// returned receiver. The actor stops when `shutdown` becomes true (or its
/// sender is dropped).
pub async fn start(
    cfg: NetConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(NetHandle, mpsc::Receiver<Inbound>), NetError> {
    actor::start(cfg, Tuning::default(), shutdown).await
}

impl NetHandle {
    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// The bound listen address (port 0 resolved to the real port).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// What other nodes should dial: `--advertise`, else the listen address
    /// (with 0.0.0.0 left as is: the caller knows better).
    pub fn advertise_addr(&self) -> String {
        self.advertise.clone()
    }

    /// Connects to HOST:PORT and returns the remote peer id (at once when a
    /// connection we dialled to that address is already up).
    pub async fn dial(&self, addr: &str) -> Result<String, NetError> {
        let addrs = resolve(addr).await?;
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Dial {
                addrs,
                shown: addr.to_string(),
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        self.connection_answer(rx, addr).await
    }

    /// The actor's answer about a connection, waited for up to a handshake
    /// (plus slack); `shown` names the address or peer in the error.
    async fn connection_answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, NetError>>,
        shown: &str,
    ) -> Result<T, NetError> {
        let limit = self.handshake_timeout + Duration::from_secs(2);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::Unreachable {
                addr: shown.to_string(),
                detail: format!("no connection within {limit:?}"),
            }),
        }
    }

    /// Remembers a peer's address (HOST:PORT) and keeps a connection to it
    /// for the cluster, re-dialling with backoff when it drops.
    pub fn add_peer(&self, peer: &str, addr: &str) {
        self.keep(peer, addr, Duration::ZERO, Keeper::Cluster);
    }

    /// Keeps `peer` connected on behalf of `by`, the first dial `after` from
    /// now (unless a request for the peer needs the connection sooner).
    pub fn keep(&self, peer: &str, addr: &str, after: Duration, by: Keeper) {
        match PeerId::from_str(peer) {
            Ok(peer) => self.control(Command::AddPeer {
                peer,
                addr: addr.to_string(),
                after,
                by,
            }),
            Err(_) => tracing::warn!(peer, addr, "add_peer: {}", NetError::BadPeerId(peer.into())),
        }
    }

    /// The cluster no longer keeps `peer` ([`NetHandle::release`]).
    pub fn remove_peer(&self, peer: &str) {
        self.release(peer, Keeper::Cluster);
    }

    /// `by` no longer keeps `peer`: once nobody does, it is not re-dialled
    /// and a connection this node dialled to it closes when idle. Its
    /// address is still known for requests.
    pub fn release(&self, peer: &str, by: Keeper) {
        match PeerId::from_str(peer) {
            Ok(peer) => self.control(Command::RemovePeer { peer, by }),
            Err(_) => tracing::warn!(peer, "remove_peer: {}", NetError::BadPeerId(peer.into())),
        }
    }

    /// Remembers where `peer` is (HOST:PORT) without keeping a connection:
    /// a request to it dials it then.
    pub fn learn(&self, peer: &str, addr: &str) {
        match PeerId::from_str(peer) {
            Ok(peer) => self.control(Command::Learn {
                peer,
                addr: addr.to_string(),
            }),
            Err(_) => tracing::warn!(peer, addr, "learn: {}", NetError::BadPeerId(peer.into())),
        }
    }

    /// Refuses `peer` from now on: its open connections close, new ones are
    /// closed as soon as they are established (a removed node).
    pub fn deny(&self, peer: &str) {
        match PeerId::from_str(peer) {
            Ok(peer) => self.control(Command::Deny { peer }),
            Err(_) => tracing::warn!(peer, "deny: {}", NetError::BadPeerId(peer.into())),
        }
    }

    /// Sends `msg` and waits for the reply (at most the request timeout, plus
    /// a handshake when the peer must be dialled first).
    pub async fn request(&self, peer: &str, msg: WireMessage) -> Result<WireReply, NetError> {
        let peer_id = PeerId::from_str(peer).map_err(|_| NetError::BadPeerId(peer.into()))?;
        let frame = self.encode(&msg)?;
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Request {
                peer: peer_id,
                frame,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        let limit = self.request_timeout + self.handshake_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Stopped),
            Err(_) => Err(NetError::Timeout {
                peer: peer.to_string(),
                timeout: limit,
            }),
        }
    }

    /// A kept request/reply channel to `peer` at `addr` (HOST:PORT, dialled
    /// when no connection is up), see [`Channel`]: for exchanges that go on
    /// for as long as the node runs (a worker's session). Keep the peer
    /// ([`NetHandle::keep`]): a connection nobody keeps closes when no
    /// request used it for a while, and the channel's stream with it.
    pub fn channel(&self, peer: &str, addr: &str) -> Result<Channel, NetError> {
        let peer_id = PeerId::from_str(peer).map_err(|_| NetError::BadPeerId(peer.into()))?;
        Ok(Channel::new(self.clone(), peer_id, addr.to_string()))
    }

    /// Returns once a connection with `peer` is up: at once when one is,
    /// else after the dial of its kept or learned address (a dial already
    /// under way is shared, never doubled); fails when that dial fails.
    pub async fn connect(&self, peer: &str) -> Result<(), NetError> {
        let peer_id = PeerId::from_str(peer).map_err(|_| NetError::BadPeerId(peer.into()))?;
        if self.is_connected(peer) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Connect {
                peer: peer_id,
                reply,
            })
            .await
            .map_err(|_| NetError::Stopped)?;
        self.connection_answer(rx, peer).await
    }

    /// Fire-and-forget (raft messages): queued, never blocks; the message is
    /// dropped (logged at debug) when the peer is not connected and not
    /// being dialled, when the queue is full, or when delivery fails.
    pub fn send(&self, peer: &str, msg: WireMessage) {
        let peer_id = match PeerId::from_str(peer) {
            Ok(p) => p,
            Err(_) => {
                tracing::debug!(peer, "send: bad peer id, message dropped");
                return;
            }
        };
        let frame = match self.encode(&msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(peer, error = %e, "send: message dropped");
                return;
            }
        };
        if let Err(e) = self.cmd.try_send(Command::Send {
            peer: peer_id,
            frame,
        }) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "network stopped",
            };
            tracing::debug!(peer, why, "send: message dropped");
        }
    }

    /// Publishes `data` on the gossip topic (dropped, logged at debug, when
    /// no peer is connected or the queue is full).
    pub fn publish(&self, data: Vec<u8>) {
        if let Err(e) = self.cmd.try_send(Command::Publish { data, done: None }) {
            tracing::debug!(error = %e, "gossip not queued");
        }
    }

    /// Like [`NetHandle::publish`], and tells whether the message went out
    /// to at least one peer (false when nobody subscribed yet: retry).
    pub async fn publish_confirmed(&self, data: Vec<u8>) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .cmd
            .try_send(Command::Publish {
                data,
                done: Some(tx),
            })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Messages published on the gossip topic by other nodes.
    pub fn gossip(&self) -> broadcast::Receiver<GossipIn> {
        self.gossip.subscribe()
    }

    /// Connection events; a receiver that lags misses events (re-read
    /// [`NetHandle::connected`]).
    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    /// Peers with at least one open connection, sorted.
    pub fn connected(&self) -> Vec<String> {
        self.connected.borrow().iter().cloned().collect()
    }

    /// Whether `peer` has a connection with this node now.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.connected.borrow().contains(peer)
    }

    /// How many peers this node is connected with now.
    pub fn connected_count(&self) -> usize {
        self.connected.borrow().len()
    }

    /// Completes once the actor has stopped and released its listener.
    pub async fn stopped(&self) {
        self.cmd.closed().await
    }

    pub(crate) fn encode(&self, msg: &WireMessage) -> Result<Vec<u8>, NetError> {
        let frame = skein_protocol::codec::encode(msg).map_err(|e| match e {
            skein_protocol::codec::CodecError::TooLarge { size } => NetError::TooLarge {
                size,
                limit: self.max_frame,
            },
            other => NetError::Encode(other.to_string()),
        })?;
        if frame.len() > self.max_frame {
            return Err(NetError::TooLarge {
                size: frame.len(),
                limit: self.max_frame,
            });
        }
        Ok(frame)
    }

    fn control(&self, cmd: Command) {
        if let Err(e) = self.cmd.try_send(cmd) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "command queue full",
                mpsc::error::TrySendError::Closed(_) => "network stopped",
            };
            tracing::warn!(why, "peer list change dropped");
        }
    }
}

/// HOST:PORT to socket addresses (a DNS lookup when HOST is a name).
pub(crate) async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, NetError> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    check_host_port(addr)?;
    let bad = |reason: String| NetError::BadAddress {
        addr: addr.to_string(),
        reason,
    };
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| bad(format!("cannot resolve: {e}")))?
        .collect();
    if found.is_empty() {
        return Err(bad("the name resolves to no address".into()));
    }
    Ok(found)
}

/// Checks the shape of HOST:PORT (an IP literal, `[v6]:port` or a name)
/// without resolving it.
pub(crate) fn check_host_port(addr: &str) -> Result<(), NetError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let ok = match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(':')
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(NetError::BadAddress {
            addr: addr.to_string(),
            reason: "not HOST:PORT".into(),
        })
    }
}

pub(crate) fn to_multiaddr(sa: SocketAddr) -> Multiaddr {
    let ip = match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(sa.port()))
}

/// The IP and TCP port of a multiaddr (other parts ignored).
pub(crate) fn to_socket(ma: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in ma.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

/// A multiaddr as HOST:PORT when it is one, else as is.
pub(crate) fn show(ma: &Multiaddr) -> String {
    to_socket(ma).map_or_else(|| ma.to_string(), |sa| sa.to_string())
}
