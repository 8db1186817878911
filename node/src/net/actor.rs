//! The actor that owns the libp2p `Swarm`: builds it, binds the listener and
//! loops on commands, swarm events, re-dial timers, replies from the
//! application and the shutdown signal. See the module header in `mod.rs`.

use super::codec::{Req, Resp, RpcCodec};
use super::{
    check_host_port, keypair, resolve, show, to_multiaddr, to_socket, Command, GossipIn, Inbound,
    NetConfig, NetError, NetEvent, NetHandle, Tuning, COMMAND_QUEUE, GOSSIP_TOPIC,
    IDENTIFY_PROTOCOL, MAX_GOSSIP_MESSAGE, RPC_PROTOCOL,
};
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::core::ConnectedPoint;
use libp2p::futures::future::BoxFuture;
use libp2p::futures::stream::FuturesUnordered;
use libp2p::futures::StreamExt;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, mdns};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use libp2p::{SwarmBuilder, Transport as _};
use skein_protocol::wire::WireReply;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument as _};

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    rpc: request_response::Behaviour<RpcCodec>,
    gossip: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// How long a "TCP connected to ADDR" mark is kept to classify a later
/// failure of the same dial as a handshake failure.
const SEEN_WINDOW: Duration = Duration::from_secs(30);
/// Repeated warnings about the same address are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

struct PendingDial {
    shown: String,
    /// The address dialled: a second dial of it while this one is pending
    /// waits for this one (two would leave two connections to one peer).
    addr: SocketAddr,
    replies: Vec<oneshot::Sender<Result<String, NetError>>>,
}

impl PendingDial {
    fn answer(self, r: Result<String, NetError>) {
        for reply in self.replies {
            let _ = reply.send(r.clone());
        }
    }
}

enum Pending {
    Request {
        reply: oneshot::Sender<Result<WireReply, NetError>>,
    },
    Send {
        peer: PeerId,
    },
}

/// A peer we keep connected, or dial for a request.
struct Known {
    /// Who keeps it (bits of [`Keeper`]); 0: dialled for a request only,
    /// forgotten once its connection closes or the dial fails.
    keep: u8,
    addr: String,
    backoff: Duration,
    /// When to dial next (None: connected, dialling or resolving).
    next: Option<Instant>,
    dialing: Option<ConnectionId>,
    resolving: bool,
    /// When the current connection came up (decides whether a drop resets
    /// the backoff).
    since: Option<Instant>,
}

struct Resolved {
    peer: PeerId,
    addr: String,
    result: Result<Vec<SocketAddr>, NetError>,
}

struct Conn {
    peer: PeerId,
    remote: Option<SocketAddr>,
    dialer: bool,
}

type ReplyFuture = BoxFuture<'static, (PeerId, ResponseChannel<Resp>, Option<WireReply>)>;

pub(crate) struct Actor {
    swarm: Swarm<Behaviour>,
    listener: ListenerId,
    tuning: Tuning,
    request_timeout: Duration,
    cmd_rx: mpsc::Receiver<Command>,
    inbound_tx: mpsc::Sender<Inbound>,
    events: broadcast::Sender<NetEvent>,
    connected_tx: watch::Sender<std::collections::BTreeSet<String>>,
    /// The text form of each connected peer's id (base58 is not free: an
    /// inbound request would otherwise encode its sender every time).
    names: HashMap<PeerId, String>,
    gossip_tx: broadcast::Sender<GossipIn>,
    topic: gossipsub::IdentTopic,
    shutdown: watch::Receiver<bool>,
    /// Addresses whose TCP connect succeeded, from inside the transport.
    seen_rx: mpsc::UnboundedReceiver<SocketAddr>,
    seen: HashMap<SocketAddr, Instant>,
    resolved_tx: mpsc::UnboundedSender<Resolved>,
    resolved_rx: mpsc::UnboundedReceiver<Resolved>,
    known: HashMap<PeerId, Known>,
    /// Where peers nobody keeps are (learned), for requests to them.
    book: HashMap<PeerId, String>,
    /// When a request last went to or came from each connected peer.
    last_used: HashMap<PeerId, Instant>,
    dials: HashMap<ConnectionId, PendingDial>,
    requests: HashMap<OutboundRequestId, Pending>,
    replies: FuturesUnordered<ReplyFuture>,
    conns: HashMap<ConnectionId, Conn>,
    /// Why the last dial to a peer failed (to explain a failed request).
    last_error: HashMap<PeerId, NetError>,
    /// Still making a new identity key durable (waited for at shutdown).
    key_writer: Option<std::thread::JoinHandle<()>>,
    warned: HashMap<String, Instant>,
    /// Peers refused at connection (removed nodes): their connections are
    /// closed as soon as they are established.
    denied: std::collections::HashSet<PeerId>,
    /// `NetHandle::connect` calls waiting for a connection with a peer.
    waiting: HashMap<PeerId, Vec<oneshot::Sender<Result<(), NetError>>>>,
}

pub(crate) async fn start(
    cfg: NetConfig,
    tuning: Tuning,
    shutdown: watch::Receiver<bool>,
) -> Result<(NetHandle, mpsc::Receiver<Inbound>), NetError> {
    if let Some(adv) = &cfg.advertise {
        // Validate now: a typo should stop the agent, not surface later
        // (the shape only: a name may not resolve yet at boot).
        check_host_port(adv)?;
    }
    let (identity, key_writer) = keypair::load_or_create(&cfg.keypair_path)?;
    let local = identity.public().to_peer_id();
    let psk = PreSharedKey::new(cfg.cluster_key);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    // A manager is connected to every worker on its sessions: gossip must
    // not cost it per connection. Own messages go to the mesh (D peers), not
    // flooded to every subscribed peer, and the lazy gossip (IHAVE) of each
    // heartbeat goes to `gossip_lazy` peers, not a quarter of all peers.
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(tuning.gossip_heartbeat)
        .flood_publish(false)
        .gossip_factor(0.0)
        .max_transmit_size(MAX_GOSSIP_MESSAGE)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| setup(&e))?;
    let mdns = if cfg.mdns {
        let mc = mdns::Config {
            ttl: Duration::from_secs(60),
            query_interval: tuning.mdns_interval,
            enable_ipv6: false,
        };
        match mdns::tokio::Behaviour::new(mc, identity.public().to_peer_id()) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!(error = %e, "mDNS is not available here: discovery relies on --join seeds");
                None
            }
        }
    } else {
        None
    };
    let mdns = Toggle::from(mdns);

    let mut swarm = SwarmBuilder::with_existing_identity(identity)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn StdError + Send + Sync>> {
            let noise = noise::Config::new(key)?;
            Ok(tcp::tokio::Transport::new(tcp::Config::new().nodelay(true))
                .and_then(move |socket, endpoint: ConnectedPoint| {
                    if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                        if let Some(sa) = to_socket(address) {
                            let _ = seen_tx.send(sa);
                        }
                    }
                    PnetConfig::new(psk).handshake(socket)
                })
                .upgrade(Version::V1)
                .authenticate(noise)
                .multiplex(yamux::Config::default()))
        })
        .map_err(|e| setup(&e))?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn StdError + Send + Sync>> {
                Ok(Behaviour {
                    identify: identify::Behaviour::new(
                        identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                            .with_agent_version(format!("skein/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(tuning.ping_interval)
                            .with_timeout(tuning.ping_timeout),
                    ),
                    rpc: request_response::Behaviour::with_codec(
                        RpcCodec {
                            max_frame: tuning.max_rpc_frame,
                        },
                        [(StreamProtocol::new(RPC_PROTOCOL), ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(cfg.request_timeout)
                            .with_max_concurrent_streams(256),
                    ),
                    gossip: gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossip_cfg,
                    )?,
                    mdns,
                    stream: libp2p_stream::Behaviour::new(),
                })
            },
        )
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(tuning.idle_timeout))
        .with_connection_timeout(tuning.handshake_timeout)
        .build();

    let listen_err = |reason: String| NetError::Listen {
        addr: cfg.listen.to_string(),
        reason,
    };
    // libp2p-tcp listens with SO_REUSEPORT, so a second agent on the same
    // port would bind too and silently share the connections: probe first
    // with a plain socket, which fails when anything listens there.
    if cfg.listen.port() != 0 {
        std::net::TcpListener::bind(cfg.listen).map_err(|e| {
            listen_err(format!(
                "{e} (is another agent running there? choose another --listen)"
            ))
        })?;
    }
    let listener = swarm.listen_on(to_multiaddr(cfg.listen)).map_err(|e| {
        listen_err(format!(
            "{} (is another agent running there? choose another --listen)",
            chain(&e)
        ))
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let port = loop {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => match to_socket(&address) {
                Some(sa) => break sa.port(),
                None => continue,
            },
            Ok(SwarmEvent::ListenerError { error, .. }) => return Err(listen_err(chain(&error))),
            Ok(SwarmEvent::ListenerClosed { reason, .. }) => {
                return Err(listen_err(match reason {
                    Ok(()) => "the listener closed".into(),
                    Err(e) => chain(&e),
                }))
            }
            Ok(_) => continue,
            Err(_) => return Err(listen_err("no listen address within 5 s".into())),
        }
    };
    let listen = SocketAddr::new(cfg.listen.ip(), port);
    let advertise = cfg.advertise.clone().unwrap_or_else(|| listen.to_string());
    if let Some(adv) = &cfg.advertise {
        if let Ok(sa) = adv.parse::<SocketAddr>() {
            swarm.add_external_address(to_multiaddr(sa));
        }
    }
    info!(peer = %local, %listen, %advertise, "network listening");

    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (inbound_tx, inbound_rx) = mpsc::channel(tuning.inbound_queue.max(1));
    let (events, _) = broadcast::channel(256);
    let (gossip_tx, _) = broadcast::channel(4096);
    let topic = gossipsub::IdentTopic::new(GOSSIP_TOPIC);
    swarm
        .behaviour_mut()
        .gossip
        .subscribe(&topic)
        .map_err(|e| setup(&e))?;
    let (connected_tx, connected_rx) = watch::channel(std::collections::BTreeSet::new());
    let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
    let streams = swarm.behaviour().stream.new_control();
    tokio::spawn(
        super::channel::serve(
            streams.clone(),
            inbound_tx.clone(),
            tuning.max_rpc_frame,
            shutdown.clone(),
        )
        .instrument(tracing::Span::current()),
    );
    let handle = NetHandle {
        streams,
        cmd: cmd_tx,
        peer_id: local.to_string(),
        listen,
        advertise,
        events: events.clone(),
        connected: connected_rx,
        gossip: gossip_tx.clone(),
        request_timeout: cfg.request_timeout,
        handshake_timeout: tuning.handshake_timeout,
        max_frame: tuning.max_rpc_frame,
    };
    let actor = Actor {
        swarm,
        listener,
        tuning,
        request_timeout: cfg.request_timeout,
        cmd_rx,
        inbound_tx,
        events,
        connected_tx,
        names: HashMap::new(),
        gossip_tx,
        topic,
        shutdown,
        seen_rx,
        seen: HashMap::new(),
        resolved_tx,
        resolved_rx,
        known: HashMap::new(),
        book: HashMap::new(),
        last_used: HashMap::new(),
        dials: HashMap::new(),
        requests: HashMap::new(),
        replies: FuturesUnordered::new(),
        conns: HashMap::new(),
        last_error: HashMap::new(),
        key_writer,
        warned: HashMap::new(),
        denied: Default::default(),
        waiting: HashMap::new(),
    };
    tokio::spawn(actor.run().instrument(tracing::Span::current()));
    Ok((handle, inbound_rx))
}

impl Actor {
    async fn run(mut self) {
        let mut sweep =
            tokio::time::interval((self.tuning.idle_close / 4).max(Duration::from_millis(50)));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let next_dial = self.known.values().filter_map(|k| k.next).min();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break;
                    }
                }
                Some(cmd) = self.cmd_rx.recv() => self.on_command(cmd),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, channel, reply)) = self.replies.next() => {
                    let reply = reply.unwrap_or_else(super::unanswered);
                    if self.swarm.behaviour_mut().rpc.send_response(channel, Resp::Out(reply)).is_err() {
                        debug!(%peer, "reply not sent: the requester is gone or timed out");
                    }
                }
                Some(sa) = self.seen_rx.recv() => self.mark_seen(sa),
                Some(r) = self.resolved_rx.recv() => self.on_resolved(r),
                () = tokio::time::sleep_until(next_dial.unwrap_or(far)), if next_dial.is_some() => {
                    self.dial_due();
                }
                _ = sweep.tick() => self.close_idle(),
            }
        }
        self.shutdown_gracefully().await;
    }

    async fn shutdown_gracefully(mut self) {
        info!("network shutting down");
        for (_, d) in self.dials.drain() {
            d.answer(Err(NetError::Stopped));
        }
        for (_, p) in self.requests.drain() {
            if let Pending::Request { reply } = p {
                let _ = reply.send(Err(NetError::Stopped));
            }
        }
        for (_, ws) in self.waiting.drain() {
            for w in ws {
                let _ = w.send(Err(NetError::Stopped));
            }
        }
        self.known.clear();
        self.swarm.remove_listener(self.listener);
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let deadline = Instant::now() + self.tuning.shutdown_grace;
        while self.swarm.network_info().num_peers() > 0 {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                }) => {
                    let _ = self.events.send(NetEvent::Disconnected {
                        peer: peer_id.to_string(),
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    debug!("connections still open after the shutdown grace; dropping them");
                    break;
                }
            }
        }
        self.connected_tx.send_replace(Default::default());
        if let Some(w) = self.key_writer.take() {
            // Normally long done; a restart must find the same key.
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        // Drop the swarm (and its listening socket) before the command
        // receiver, so `NetHandle::stopped` means "the port is free".
        let Actor { swarm, cmd_rx, .. } = self;
        drop(swarm);
        drop(cmd_rx);
        info!("network stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial {
                addrs,
                shown,
                reply,
            } => self.dial_addr(addrs, shown, reply),
            Command::AddPeer {
                peer,
                addr,
                after,
                by,
            } => {
                if peer == *self.swarm.local_peer_id() {
                    debug!(%addr, "add_peer: that is this node; ignored");
                    return;
                }
                self.book.remove(&peer);
                let connected = self.swarm.is_connected(&peer);
                let min = self.tuning.backoff_min;
                let k = self.known.entry(peer).or_insert_with(|| Known {
                    keep: 0,
                    addr: addr.clone(),
                    backoff: min,
                    next: None,
                    dialing: None,
                    resolving: false,
                    since: None,
                });
                if k.addr != addr {
                    k.addr = addr;
                    k.backoff = min;
                }
                k.keep |= by as u8;
                if !connected && k.dialing.is_none() && !k.resolving {
                    let at = Instant::now() + after;
                    k.next = Some(k.next.map_or(at, |n| n.min(at)));
                }
                debug!(%peer, addr = %k.addr, "peer added");
            }
            Command::Publish { data, done } => {
                let topic = self.topic.clone();
                let ok = match self.swarm.behaviour_mut().gossip.publish(topic, data) {
                    Ok(_) => true,
                    Err(e) => {
                        // No peer yet (InsufficientPeers) is normal for a lone node.
                        debug!(error = %e, "gossip not published");
                        false
                    }
                };
                if let Some(d) = done {
                    let _ = d.send(ok);
                }
            }
            Command::RemovePeer { peer, by } => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.keep &= !(by as u8);
                    if k.keep == 0 {
                        debug!(%peer, "peer no longer kept");
                        if k.dialing.is_none() && !k.resolving {
                            k.next = None;
                            if let Some(k) = self.known.remove(&peer) {
                                self.book.insert(peer, k.addr);
                            }
                        }
                    }
                }
            }
            Command::Learn { peer, addr } => {
                if peer != *self.swarm.local_peer_id() {
                    match self.known.get_mut(&peer) {
                        Some(k) => k.addr = addr,
                        None => {
                            self.book.insert(peer, addr);
                        }
                    }
                }
            }
            Command::Deny { peer } => {
                self.known.remove(&peer);
                self.book.remove(&peer);
                if self.denied.insert(peer) && self.swarm.is_connected(&peer) {
                    warn!(%peer, "closing the connection of a removed node's peer");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Command::Request { peer, frame, reply } => {
                self.last_used.insert(peer, Instant::now());
                if !self.swarm.is_connected(&peer) {
                    if !self.dialable(peer) {
                        let _ = reply.send(Err(NetError::UnknownPeer(peer.to_string())));
                        return;
                    }
                    if let Some(k) = self.known.get(&peer) {
                        if k.dialing.is_none() && !k.resolving {
                            self.start_dial(peer);
                        }
                    }
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&peer, Req::Out(frame));
                self.requests.insert(id, Pending::Request { reply });
            }
            Command::Connect { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                if !self.dialable(peer) {
                    let _ = reply.send(Err(NetError::UnknownPeer(peer.to_string())));
                    return;
                }
                self.last_used.insert(peer, Instant::now());
                self.waiting.entry(peer).or_default().push(reply);
                self.start_dial(peer);
            }
            Command::Send { peer, frame } => {
                self.last_used.insert(peer, Instant::now());
                let dialing = self
                    .known
                    .get(&peer)
                    .is_some_and(|k| k.dialing.is_some() || k.resolving);
                if !self.swarm.is_connected(&peer) && !dialing {
                    debug!(%peer, "send: not connected, message dropped");
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&peer, Req::Out(frame));
                self.requests.insert(id, Pending::Send { peer });
            }
        }
    }

    /// `NetHandle::dial`: an address, any peer behind it.
    fn dial_addr(
        &mut self,
        addrs: Vec<SocketAddr>,
        shown: String,
        reply: oneshot::Sender<Result<String, NetError>>,
    ) {
        let existing = self
            .conns
            .values()
            .find(|c| c.dialer && c.remote.is_some_and(|r| addrs.contains(&r)));
        if let Some(c) = existing {
            let _ = reply.send(Ok(c.peer.to_string()));
            return;
        }
        if let Some(d) = self.dials.values_mut().find(|d| addrs.contains(&d.addr)) {
            d.replies.push(reply);
            return;
        }
        let Some(first) = addrs.first() else {
            let _ = reply.send(Err(NetError::BadAddress {
                addr: shown,
                reason: "no address".into(),
            }));
            return;
        };
        let opts = DialOpts::unknown_peer_id()
            .address(to_multiaddr(*first))
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(
                    id,
                    PendingDial {
                        shown,
                        addr: *first,
                        replies: vec![reply],
                    },
                );
            }
            Err(e) => {
                let err = self.classify(&e, Some(&shown), None);
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Starts dialling a known peer now (resolving its host name first if
    /// it has one).
    fn start_dial(&mut self, peer: PeerId) {
        let connected = self.swarm.is_connected(&peer);
        let Some(k) = self.known.get_mut(&peer) else {
            return;
        };
        k.next = None;
        if connected || k.dialing.is_some() || k.resolving {
            return;
        }
        match k.addr.parse::<SocketAddr>() {
            Ok(sa) => self.dial_known(peer, vec![to_multiaddr(sa)]),
            Err(_) => {
                k.resolving = true;
                let addr = k.addr.clone();
                let tx = self.resolved_tx.clone();
                tokio::spawn(async move {
                    let result = resolve(&addr).await;
                    let _ = tx.send(Resolved { peer, addr, result });
                });
            }
        }
    }

    fn on_resolved(&mut self, r: Resolved) {
        let Some(k) = self.known.get_mut(&r.peer) else {
            return;
        };
        k.resolving = false;
        if k.addr != r.addr {
            k.next = Some(Instant::now());
            return;
        }
        match r.result {
            Ok(addrs) => self.dial_known(r.peer, addrs.into_iter().map(to_multiaddr).collect()),
            Err(e) => {
                debug!(peer = %r.peer, error = %e, "cannot resolve the peer's address");
                self.fail_waiters(r.peer, &e);
                self.last_error.insert(r.peer, e);
                self.schedule_redial(r.peer);
            }
        }
    }

    /// Whether `peer` can be dialled: kept already, or known only by
    /// address (then entered, unkept, so the dial is tracked like any).
    fn dialable(&mut self, peer: PeerId) -> bool {
        if self.known.contains_key(&peer) {
            return true;
        }
        let Some(addr) = self.book.get(&peer).cloned() else {
            return false;
        };
        self.known.insert(
            peer,
            Known {
                keep: 0,
                addr,
                backoff: self.tuning.backoff_min,
                next: None,
                dialing: None,
                resolving: false,
                since: None,
            },
        );
        true
    }

    /// The `NetHandle::connect` calls waiting for `peer` learn that its dial failed.
    fn fail_waiters(&mut self, peer: PeerId, err: &NetError) {
        for w in self.waiting.remove(&peer).unwrap_or_default() {
            let _ = w.send(Err(err.clone()));
        }
    }

    fn dial_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                if let Some(k) = self.known.get_mut(&peer) {
                    k.dialing = Some(id);
                }
                debug!(%peer, "dialling known peer");
            }
            // Already connected or being dialled by someone else: the
            // outcome of that reaches `on_swarm_event` as well.
            Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => {
                let err = self.classify(&e, None, Some(peer));
                debug!(%peer, error = %err, "dial failed");
                self.fail_waiters(peer, &err);
                self.last_error.insert(peer, err);
                self.schedule_redial(peer);
            }
        }
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(_, k)| k.next.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.start_dial(peer);
        }
    }

    /// After a failed dial or a lost connection: try again after the
    /// backoff, which doubles up to the cap.
    fn schedule_redial(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        if self.known.get(&peer).is_some_and(|k| k.keep == 0) {
            // Nobody keeps it: no re-dial; its address stays known.
            if let Some(k) = self.known.remove(&peer) {
                self.book.insert(peer, k.addr);
            }
            return;
        }
        let max = self.tuning.backoff_max;
        if let Some(k) = self.known.get_mut(&peer) {
            k.dialing = None;
            if k.resolving {
                return;
            }
            k.next = Some(Instant::now() + k.backoff);
            debug!(%peer, backoff = ?k.backoff, "re-dial scheduled");
            k.backoff = (k.backoff * 2).min(max);
        }
    }

    fn mark_seen(&mut self, sa: SocketAddr) {
        let now = Instant::now();
        if self.seen.len() > 256 {
            self.seen
                .retain(|_, t| now.duration_since(*t) < SEEN_WINDOW);
        }
        self.seen.insert(sa, now);
    }

    fn should_warn(&mut self, key: &str) -> bool {
        let now = Instant::now();
        if self.warned.len() > 256 {
            self.warned
                .retain(|_, t| now.duration_since(*t) < WARN_EVERY);
        }
        match self.warned.get(key) {
            Some(t) if now.duration_since(*t) < WARN_EVERY => false,
            _ => {
                self.warned.insert(key.to_string(), now);
                true
            }
        }
    }

    /// Turns a dial error into what the user should hear. A failure after
    /// TCP connected is a handshake failure: with pnet, a wrong cluster key
    /// is by far the likeliest cause.
    fn classify(
        &mut self,
        error: &DialError,
        shown: Option<&str>,
        peer: Option<PeerId>,
    ) -> NetError {
        while let Ok(sa) = self.seen_rx.try_recv() {
            self.mark_seen(sa);
        }
        let name = |ma: &Multiaddr| shown.map_or_else(|| show(ma), str::to_string);
        match error {
            DialError::Transport(errors) => {
                let mut found = None;
                for (ma, e) in errors {
                    let tcp_ok = to_socket(ma)
                        .and_then(|sa| self.seen.remove(&sa))
                        .is_some_and(|t| t.elapsed() < SEEN_WINDOW);
                    let err = if tcp_ok {
                        NetError::Handshake {
                            addr: name(ma),
                            detail: chain(e),
                        }
                    } else {
                        NetError::Unreachable {
                            addr: name(ma),
                            detail: chain(e),
                        }
                    };
                    let better = matches!(err, NetError::Handshake { .. });
                    if found.is_none() || better {
                        found = Some(err);
                    }
                }
                found.unwrap_or_else(|| NetError::Unreachable {
                    addr: shown.unwrap_or("?").to_string(),
                    detail: "no address to dial".into(),
                })
            }
            DialError::WrongPeerId { obtained, address } => NetError::WrongPeer {
                addr: name(address),
                expected: peer.map_or_else(|| "?".into(), |p| p.to_string()),
                obtained: obtained.to_string(),
            },
            DialError::LocalPeerId { address } => NetError::Unreachable {
                addr: name(address),
                detail: "that address is this node itself".into(),
            },
            other => NetError::Unreachable {
                addr: shown
                    .map(str::to_string)
                    .or_else(|| peer.map(|p| p.to_string()))
                    .unwrap_or_else(|| "?".into()),
                detail: chain(other),
            },
        }
    }

    /// Closes the connections this node dialled to peers nobody keeps once
    /// no request went either way for `idle_close` (see the module header).
    /// Only this node's own dials: a connection the peer dialled is the
    /// peer's to close. Never one in use: closing fails the requests on it.
    fn close_idle(&mut self) {
        let now = Instant::now();
        let limit = self.tuning.idle_close;
        let mut dialled: HashMap<PeerId, Vec<ConnectionId>> = HashMap::new();
        for (id, c) in &self.conns {
            let e = dialled.entry(c.peer).or_default();
            if c.dialer {
                e.push(*id);
            }
        }
        self.last_used.retain(|p, _| dialled.contains_key(p));
        for (peer, ids) in dialled {
            let kept = self.known.get(&peer).is_some_and(|k| k.keep != 0);
            let idle = self
                .last_used
                .get(&peer)
                .is_none_or(|t| now.duration_since(*t) >= limit);
            if !ids.is_empty() && !kept && idle {
                debug!(%peer, "closing an idle connection nobody keeps");
                for id in ids {
                    self.swarm.close_connection(id);
                }
            }
        }
    }

    /// The text form of `peer` (cached while it is connected).
    fn name(&self, peer: &PeerId) -> String {
        self.names
            .get(peer)
            .cloned()
            .unwrap_or_else(|| peer.to_string())
    }

    /// `peer` is now connected (`up`) or not: the connected set changes in
    /// place, not rebuilt from every connection (thousands on a manager).
    fn publish_connected(&mut self, peer: PeerId, up: bool) {
        if up {
            let name = peer.to_string();
            self.names.insert(peer, name.clone());
            self.connected_tx.send_modify(|set| {
                set.insert(name);
            });
        } else if let Some(name) = self.names.remove(&peer) {
            self.connected_tx.send_modify(|set| {
                set.remove(&name);
            });
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = to_socket(endpoint.get_remote_address());
                let dialer = endpoint.is_dialer();
                if self.denied.contains(&peer_id) {
                    if let Some(d) = self.dials.remove(&connection_id) {
                        d.answer(Err(NetError::Unreachable {
                            addr: show(endpoint.get_remote_address()),
                            detail: "that peer belongs to a node removed from the cluster".into(),
                        }));
                    }
                    if self.should_warn(&format!("denied {peer_id}")) {
                        warn!(
                            peer = %peer_id,
                            addr = %show(endpoint.get_remote_address()),
                            "refused a connection: this peer belongs to a node removed from the cluster"
                        );
                    }
                    self.swarm.close_connection(connection_id);
                    return;
                }
                if dialer {
                    if let Some(sa) = remote {
                        self.seen.remove(&sa);
                    }
                }
                self.conns.insert(
                    connection_id,
                    Conn {
                        peer: peer_id,
                        remote,
                        dialer,
                    },
                );
                if let Some(d) = self.dials.remove(&connection_id) {
                    d.answer(Ok(peer_id.to_string()));
                }
                for w in self.waiting.remove(&peer_id).unwrap_or_default() {
                    let _ = w.send(Ok(()));
                }
                self.last_error.remove(&peer_id);
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.dialing = None;
                    k.next = None;
                    if k.since.is_none() {
                        k.since = Some(Instant::now());
                    }
                }
                if num_established.get() == 1 {
                    self.last_used.insert(peer_id, Instant::now());
                    let addr = show(endpoint.get_remote_address());
                    if self.known.get(&peer_id).is_some_and(|k| k.keep != 0) {
                        info!(peer = %peer_id, %addr, "connected");
                    } else {
                        debug!(peer = %peer_id, %addr, inbound = !dialer, "connected");
                    }
                    self.publish_connected(peer_id, true);
                    let _ = self.events.send(NetEvent::Connected {
                        peer: self.name(&peer_id),
                        addr,
                        inbound: !dialer,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.conns.remove(&connection_id);
                if num_established == 0 {
                    let kept = self.known.get(&peer_id).is_some_and(|k| k.keep != 0);
                    match &cause {
                        Some(c) if kept => {
                            info!(peer = %peer_id, cause = %chain(c), "disconnected")
                        }
                        None if kept => info!(peer = %peer_id, "disconnected"),
                        _ => debug!(peer = %peer_id, "disconnected"),
                    }
                    let _ = self.events.send(NetEvent::Disconnected {
                        peer: self.name(&peer_id),
                    });
                    self.publish_connected(peer_id, false);
                    let (min, stable) = (self.tuning.backoff_min, self.tuning.stable_after);
                    if let Some(k) = self.known.get_mut(&peer_id) {
                        if k.since.take().is_some_and(|t| t.elapsed() >= stable) {
                            k.backoff = min;
                        }
                    }
                    self.last_used.remove(&peer_id);
                    self.schedule_redial(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let pending = self.dials.remove(&connection_id);
                let err =
                    self.classify(&error, pending.as_ref().map(|d| d.shown.as_str()), peer_id);
                if let NetError::Handshake { addr, .. } = &err {
                    if self.should_warn(&format!("out {addr}")) {
                        warn!("{err}");
                    } else {
                        debug!("{err}");
                    }
                } else {
                    debug!(peer = ?peer_id.map(|p| p.to_string()), error = %err, "dial failed");
                }
                if let Some(d) = pending {
                    d.answer(Err(err.clone()));
                }
                if let Some(peer) = peer_id {
                    let ours = self
                        .known
                        .get(&peer)
                        .is_some_and(|k| k.dialing.is_none_or_eq(connection_id));
                    if ours && !self.swarm.is_connected(&peer) {
                        self.fail_waiters(peer, &err);
                    }
                    self.last_error.insert(peer, err);
                    if ours {
                        self.schedule_redial(peer);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: error @ ListenError::Transport(_),
                ..
            } => {
                let addr = show(&send_back_addr);
                let text = format!(
                    "connection from {addr} failed during the handshake: wrong cluster key? ({})",
                    chain(&error)
                );
                let ip = to_socket(&send_back_addr).map_or(addr, |sa| sa.ip().to_string());
                if self.should_warn(&format!("in {ip}")) {
                    warn!("{text}");
                } else {
                    debug!("{text}");
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(error = %chain(&error), "listener error");
            }
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                warn!(error = %chain(&e), "listener closed: no new connections will be accepted");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(e)) => self.on_rpc(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                message,
                ..
            })) => {
                if let Some(source) = message.source {
                    let _ = self.gossip_tx.send(GossipIn {
                        source: source.to_string(),
                        data: message.data,
                    });
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, ma) in found {
                    if let Some(sa) = to_socket(&ma) {
                        debug!(%peer, addr = %sa, "mDNS: discovered");
                        let _ = self.events.send(NetEvent::Discovered {
                            peer: peer.to_string(),
                            addr: sa.to_string(),
                        });
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(failure),
            })) if !matches!(failure, ping::Failure::Unsupported) => {
                info!(%peer, error = %failure, "peer stopped answering pings: closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocol_version != IDENTIFY_PROTOCOL {
                    warn!(peer = %peer_id, version = %info.protocol_version, agent = %info.agent_version,
                        "peer speaks another protocol version");
                } else {
                    debug!(peer = %peer_id, agent = %info.agent_version, "identified");
                }
            }
            _ => {}
        }
    }

    fn on_rpc(&mut self, event: request_response::Event<Req, Resp>) {
        use request_response::{Event, Message, OutboundFailure};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let result = match response {
                    Resp::In(Ok(reply)) => Ok(reply),
                    Resp::In(Err(text)) => Err(NetError::Request {
                        peer: peer.to_string(),
                        detail: text,
                    }),
                    Resp::Out(_) => Err(NetError::Request {
                        peer: peer.to_string(),
                        detail: "internal: outbound reply received".into(),
                    }),
                };
                match self.requests.remove(&request_id) {
                    Some(Pending::Request { reply }) => {
                        let _ = reply.send(result);
                    }
                    Some(Pending::Send { peer }) => {
                        if let Ok(WireReply::Error(text))
                        | Err(NetError::Request { detail: text, .. }) = &result
                        {
                            debug!(%peer, error = %text, "send: the peer refused the message");
                        }
                    }
                    None => {}
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let err = match error {
                    OutboundFailure::DialFailure => {
                        self.last_error
                            .get(&peer)
                            .cloned()
                            .unwrap_or(NetError::Unreachable {
                                addr: peer.to_string(),
                                detail: "could not connect".into(),
                            })
                    }
                    OutboundFailure::Timeout => NetError::Timeout {
                        peer: peer.to_string(),
                        timeout: self.request_timeout,
                    },
                    OutboundFailure::ConnectionClosed => NetError::Request {
                        peer: peer.to_string(),
                        detail: "the connection closed before the reply".into(),
                    },
                    OutboundFailure::UnsupportedProtocols => NetError::Request {
                        peer: peer.to_string(),
                        detail: format!(
                            "the peer does not speak {RPC_PROTOCOL} (another skein version?)"
                        ),
                    },
                    OutboundFailure::Io(e) => NetError::Request {
                        peer: peer.to_string(),
                        detail: chain(&e),
                    },
                };
                match self.requests.remove(&request_id) {
                    Some(Pending::Request { reply }) => {
                        let _ = reply.send(Err(err));
                    }
                    Some(Pending::Send { peer }) => debug!(%peer, error = %err, "send failed"),
                    None => {}
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                if let request_response::InboundFailure::Io(e) = &error {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        warn!(%peer, error = %e, "refused a request");
                        return;
                    }
                }
                debug!(%peer, error = %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(&mut self, peer: PeerId, request: Req, channel: ResponseChannel<Resp>) {
        self.last_used.insert(peer, Instant::now());
        let msg = match request {
            Req::In(Ok(msg)) => msg,
            Req::In(Err(text)) => {
                debug!(%peer, error = %text, "undecodable request");
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, Resp::Out(WireReply::Error(text)));
                return;
            }
            Req::Out(_) => return,
        };
        let (tx, rx) = oneshot::channel();
        let inbound = Inbound {
            peer: self.name(&peer),
            msg,
            reply: tx,
        };
        match self.inbound_tx.try_send(inbound) {
            Ok(()) => self
                .replies
                .push(Box::pin(async move { (peer, channel, rx.await.ok()) })),
            Err(e) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(channel, Resp::Out(super::not_taken(&e)));
            }
        }
    }
}

trait OptionEq<T> {
    fn is_none_or_eq(&self, v: T) -> bool;
}

impl<T: PartialEq> OptionEq<T> for Option<T> {
    fn is_none_or_eq(&self, v: T) -> bool {
        match self {
            None => true,
            Some(x) => *x == v,
        }
    }
}

/// An error and its sources, without the repetitions libp2p's nesting adds.
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        return format!("{e:?}");
    }
    parts.join(": ")
}
