//! Real swarms on 127.0.0.1, port 0. Every wait polls a condition under a
//! deadline; nothing sleeps for a fixed time hoping something happened.

use super::*;
use std::future::Future;
use std::path::Path;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

const DEADLINE: Duration = Duration::from_secs(10);

struct Node {
    net: NetHandle,
    /// Messages this node received, in order: (from peer, message).
    got: UnboundedReceiver<(String, WireMessage)>,
    stop: watch::Sender<bool>,
}

impl Node {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(DEADLINE, self.net.stopped())
            .await
            .expect("the actor stops within the deadline");
    }
}

fn config(key: u8, dir: &Path, name: &str, port: u16) -> NetConfig {
    let mut cfg = NetConfig::new([key; 32], dir.join(format!("{name}.key")));
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    cfg.request_timeout = Duration::from_secs(3);
    cfg
}

fn fast() -> Tuning {
    Tuning {
        backoff_max: Duration::from_millis(500),
        ..Tuning::default()
    }
}

async fn start_node(cfg: NetConfig, tuning: Tuning) -> Node {
    let (stop, rx) = watch::channel(false);
    let (net, mut inbound) = actor::start(cfg, tuning, rx).await.expect("start");
    let (tx, got) = mpsc::unbounded_channel();
    let me = net.peer_id();
    tokio::spawn(async move {
        while let Some(Inbound { peer, msg, reply }) = inbound.recv().await {
            let answer = match &msg {
                WireMessage::Raft(bytes) => {
                    WireReply::Error(format!("{me} got {} bytes", bytes.len()))
                }
                _ => WireReply::Ack,
            };
            // Record first: once the requester has its reply, the message is here.
            let _ = tx.send((peer, msg));
            let _ = reply.send(answer);
        }
    });
    Node { net, got, stop }
}

async fn node(key: u8, dir: &Path, name: &str) -> Node {
    start_node(config(key, dir, name, 0), fast()).await
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(rx: &mut broadcast::Receiver<NetEvent>) -> NetEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an event within the deadline")
        .expect("event channel open")
}

fn heartbeat(n: &str) -> WireMessage {
    WireMessage::Heartbeat {
        node_id: n.into(),
        at: 7,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[tokio::test]
async fn two_nodes_dial_request_send_and_events() {
    let dir = tmp();
    let a = node(1, dir.path(), "a").await;
    let mut b = node(1, dir.path(), "b").await;
    let mut a_events = a.net.events();
    let mut b_events = b.net.events();

    let t = Instant::now();
    let got = a
        .net
        .dial(&b.net.listen_addr().to_string())
        .await
        .expect("dial");
    assert_eq!(got, b.net.peer_id());
    eprintln!("dial took {:?}", t.elapsed());
    // Dialling again reuses the connection.
    assert_eq!(
        a.net
            .dial(&b.net.listen_addr().to_string())
            .await
            .expect("dial"),
        b.net.peer_id()
    );
    match next_event(&mut a_events).await {
        NetEvent::Connected {
            peer,
            addr,
            inbound,
        } => {
            assert_eq!(peer, b.net.peer_id());
            assert_eq!(addr, b.net.listen_addr().to_string());
            assert!(!inbound, "a dialled b");
        }
        other => panic!("unexpected {other:?}"),
    }
    match next_event(&mut b_events).await {
        // b sees a's ephemeral port: no address check.
        NetEvent::Connected { peer, inbound, .. } => {
            assert_eq!(peer, a.net.peer_id());
            assert!(inbound, "a dialled b");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.net.connected(), vec![b.net.peer_id()]);
    eventually("b sees a", || async {
        b.net.connected() == vec![a.net.peer_id()]
    })
    .await;

    // Request/reply both ways, with a payload in the reply.
    let reply = a
        .net
        .request(&b.net.peer_id(), WireMessage::Raft(vec![1, 2, 3]))
        .await
        .expect("a -> b");
    assert_eq!(
        reply,
        WireReply::Error(format!("{} got 3 bytes", b.net.peer_id()))
    );
    let reply = b
        .net
        .request(&a.net.peer_id(), heartbeat("b"))
        .await
        .expect("b -> a");
    assert_eq!(reply, WireReply::Ack);

    // Fire-and-forget arrives (in any order: one stream per message).
    while b.got.try_recv().is_ok() {}
    for i in 0..5u8 {
        a.net.send(&b.net.peer_id(), WireMessage::Raft(vec![i]));
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let (from, msg) = tokio::time::timeout(DEADLINE, b.got.recv())
            .await
            .expect("sent messages arrive")
            .expect("open");
        if from == a.net.peer_id() {
            if let WireMessage::Raft(bytes) = msg {
                seen.extend(bytes);
            }
        }
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);

    // A request to an unknown, unconnected peer fails at once.
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    assert_eq!(
        a.net.request(&stranger, heartbeat("a")).await,
        Err(NetError::UnknownPeer(stranger.clone()))
    );
    assert!(matches!(
        a.net.request("not-a-peer", heartbeat("a")).await,
        Err(NetError::BadPeerId(_))
    ));

    // b stops: a hears Disconnected.
    let b_id = b.net.peer_id();
    b.stop().await;
    loop {
        match next_event(&mut a_events).await {
            NetEvent::Disconnected { peer } if peer == b_id => break,
            _ => continue,
        }
    }
    assert!(a.net.connected().is_empty());
    a.stop().await;
}

/// Collects log lines (the tests run on one thread: a thread-local
/// subscriber sees the actors too).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn wrong_cluster_key_fails_fast_with_a_clear_message() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tmp();
    let a = node(1, dir.path(), "a").await;
    let b = node(2, dir.path(), "b").await;
    let t = Instant::now();
    let err = b
        .net
        .dial(&a.net.listen_addr().to_string())
        .await
        .expect_err("different keys cannot connect");
    let took = t.elapsed();
    eprintln!("wrong key detected in {took:?}: {err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(err.to_string().contains("wrong cluster key?"), "{err}");
    assert!(a.net.connected().is_empty() && b.net.connected().is_empty());
    // Both sides say so in their logs.
    let want = format!(
        "connection to {} failed during the handshake: wrong cluster key?",
        a.net.listen_addr()
    );
    assert!(logs.text().contains(&want), "{}", logs.text());
    eventually("the listener logs it too", || async {
        logs.text()
            .contains("failed during the handshake: wrong cluster key?")
            && logs.text().contains("connection from 127.0.0.1:")
    })
    .await;

    // A closed port is not a key problem.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = b
        .net
        .dial(&format!("127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, NetError::Unreachable { .. }), "{err}");
    assert!(matches!(
        b.net.dial("no-port-here").await,
        Err(NetError::BadAddress { .. })
    ));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_known_peer_is_redialled_after_it_restarts() {
    let dir = tmp();
    let a = node(1, dir.path(), "a").await;
    let b = node(1, dir.path(), "b").await;
    let (b_id, b_addr) = (b.net.peer_id(), b.net.listen_addr());
    let mut a_events = a.net.events();
    a.net.add_peer(&b_id, &b_addr.to_string());
    eventually("a connects to b", || async {
        a.net.connected() == vec![b_id.clone()]
    })
    .await;
    assert_eq!(
        a.net.request(&b_id, heartbeat("a")).await,
        Ok(WireReply::Ack)
    );

    b.stop().await;
    loop {
        if let NetEvent::Disconnected { peer } = next_event(&mut a_events).await {
            assert_eq!(peer, b_id);
            break;
        }
    }
    // While b is down, requests fail rather than hang.
    let t = Instant::now();
    assert!(a.net.request(&b_id, heartbeat("a")).await.is_err());
    eprintln!("request to a stopped peer failed in {:?}", t.elapsed());

    // b comes back on the same port with the same identity.
    let t = Instant::now();
    let b = start_node(config(1, dir.path(), "b", b_addr.port()), fast()).await;
    assert_eq!(b.net.peer_id(), b_id);
    eventually("a re-dials b", || async {
        a.net.connected() == vec![b_id.clone()]
    })
    .await;
    eprintln!("re-dialled in {:?} after the restart", t.elapsed());
    assert_eq!(
        a.net.request(&b_id, heartbeat("a")).await,
        Ok(WireReply::Ack)
    );
    // Requests the other way work over the connection a dialled.
    assert_eq!(
        b.net.request(&a.net.peer_id(), heartbeat("b")).await,
        Ok(WireReply::Ack)
    );

    // Once removed, b is not re-dialled after it goes away.
    a.net.remove_peer(&b_id);
    b.stop().await;
    eventually("a sees b gone", || async { a.net.connected().is_empty() }).await;
    assert!(a.net.request(&b_id, heartbeat("a")).await.is_err());
    a.stop().await;
}

#[tokio::test]
async fn a_learned_peer_is_dialled_for_a_request_and_its_idle_connection_closed() {
    let dir = tmp();
    let quick_close = Tuning {
        idle_close: Duration::from_millis(400),
        ..fast()
    };
    let a = start_node(config(1, dir.path(), "a", 0), quick_close).await;
    let b = node(1, dir.path(), "b").await;
    let c = node(1, dir.path(), "c").await;
    let (b_id, c_id) = (b.net.peer_id(), c.net.peer_id());
    // c is kept, b only known by address.
    a.net.add_peer(&c_id, &c.net.listen_addr().to_string());
    eventually("a connects to c", || async {
        a.net.connected() == vec![c_id.clone()]
    })
    .await;
    assert!(matches!(
        a.net.request(&b_id, heartbeat("a")).await,
        Err(NetError::UnknownPeer(_))
    ));
    a.net.learn(&b_id, &b.net.listen_addr().to_string());
    assert_eq!(
        a.net.request(&b_id, heartbeat("a")).await,
        Ok(WireReply::Ack)
    );
    assert!(a.net.connected().contains(&b_id));
    // Unused, the connection to b closes; the one to c (older, as idle)
    // stays because c is kept.
    eventually("a closes its idle connection to b", || async {
        !a.net.connected().contains(&b_id)
    })
    .await;
    assert_eq!(a.net.connected(), vec![c_id.clone()]);
    // b is still reachable on demand.
    assert_eq!(
        a.net.request(&b_id, heartbeat("a")).await,
        Ok(WireReply::Ack)
    );
    // Once nobody keeps c, its connection closes as well.
    a.net.remove_peer(&c_id);
    eventually("a closes its connection to c", || async {
        !a.net.connected().contains(&c_id)
    })
    .await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
async fn oversized_frames_are_refused_and_the_connection_survives() {
    let dir = tmp();
    // The sender may build frames up to 64 MiB; the receiver keeps 16 MiB.
    let big_sender = Tuning {
        max_rpc_frame: skein_protocol::codec::MAX_FRAME,
        ..fast()
    };
    let a = start_node(config(1, dir.path(), "a", 0), big_sender).await;
    let mut b = node(1, dir.path(), "b").await;
    let b_id = b.net.peer_id();
    a.net.add_peer(&b_id, &b.net.listen_addr().to_string());
    eventually("connected", || async {
        a.net.connected() == vec![b_id.clone()]
    })
    .await;

    let t = Instant::now();
    let err = a
        .net
        .request(&b_id, WireMessage::Raft(vec![7; MAX_RPC_FRAME + 1]))
        .await
        .expect_err("b refuses the frame");
    eprintln!("oversized request refused in {:?}: {err}", t.elapsed());
    assert!(b.got.try_recv().is_err(), "b's application never saw it");

    // The same connection still carries requests both ways.
    assert_eq!(a.net.connected(), vec![b_id.clone()]);
    assert_eq!(
        a.net.request(&b_id, heartbeat("a")).await,
        Ok(WireReply::Ack)
    );
    assert_eq!(
        b.net.request(&a.net.peer_id(), heartbeat("b")).await,
        Ok(WireReply::Ack)
    );

    // With the default limit the sender refuses before anything is sent.
    let err = b
        .net
        .request(
            &a.net.peer_id(),
            WireMessage::Raft(vec![7; MAX_RPC_FRAME + 1]),
        )
        .await
        .expect_err("too large to send");
    assert!(matches!(err, NetError::TooLarge { .. }), "{err}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_identity_survives_restarts() {
    let dir = tmp();
    let a = node(1, dir.path(), "a").await;
    let first = a.net.peer_id();
    a.stop().await;
    let mode = std::fs::metadata(dir.path().join("a.key"))
        .expect("key file")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let a = node(1, dir.path(), "a").await;
    assert_eq!(a.net.peer_id(), first);
    a.stop().await;

    // A corrupt key file is an error that says what to do.
    std::fs::write(dir.path().join("bad.key"), b"garbage").expect("write");
    let (_stop, rx) = watch::channel(false);
    match start(config(1, dir.path(), "bad", 0), rx).await {
        Err(e @ NetError::Keypair { .. }) => assert!(e.to_string().contains("delete it"), "{e}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a corrupt key must not start"),
    }
}

#[tokio::test]
async fn a_busy_port_is_a_clear_error() {
    let dir = tmp();
    let a = node(1, dir.path(), "a").await;
    let (_stop, rx) = watch::channel(false);
    let cfg = config(1, dir.path(), "b", a.net.listen_addr().port());
    match start(cfg, rx).await {
        Err(e @ NetError::Listen { .. }) => {
            assert!(e.to_string().contains("another --listen"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("two listeners on one port"),
    }
    a.stop().await;
}

#[tokio::test]
async fn addresses_are_checked_before_use() {
    for good in ["10.0.0.5:7946", "[::1]:7946", "edge-07.local:7946"] {
        assert_eq!(check_host_port(good), Ok(()), "{good}");
    }
    for bad in [
        "10.0.0.5",
        "edge-07",
        ":7946",
        "host:0",
        "host:99999",
        "a b:1",
    ] {
        assert!(check_host_port(bad).is_err(), "{bad}");
    }
    let dir = tmp();
    let mut cfg = config(1, dir.path(), "a", 0);
    cfg.advertise = Some("10.0.0.5".into());
    let (_stop, rx) = watch::channel(false);
    match start(cfg, rx).await {
        Err(e @ NetError::BadAddress { .. }) => assert!(e.to_string().contains("HOST:PORT"), "{e}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a bad --advertise must not start"),
    }
    let mut cfg = config(1, dir.path(), "a", 0);
    cfg.advertise = Some("10.0.0.5:7000".into());
    let a = start_node(cfg, fast()).await;
    assert_eq!(a.net.advertise_addr(), "10.0.0.5:7000");
    a.stop().await;
}

#[tokio::test]
async fn a_channel_carries_many_exchanges_on_one_stream_and_is_bounded_per_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = node(5, dir.path(), "a").await;
    let mut b = node(5, dir.path(), "b").await;
    let b_peer = b.net.peer_id();
    let b_addr = b.net.listen_addr().to_string();
    a.net.add_peer(&b_peer, &b_addr);
    let mut chan = a.net.channel(&b_peer, &b_addr).expect("channel");
    for i in 0..5u64 {
        let reply = chan
            .call(&WireMessage::Heartbeat {
                node_id: "a".into(),
                at: i,
            })
            .await
            .expect("a reply on the channel");
        assert_eq!(reply, WireReply::Ack);
        let (from, msg) = b.got.recv().await.expect("b heard it");
        assert_eq!(from, a.net.peer_id(), "the sender is the channel's peer");
        assert_eq!(
            msg,
            WireMessage::Heartbeat {
                node_id: "a".into(),
                at: i
            }
        );
    }
    // More channels than a peer may hold: the extra ones are refused.
    let mut extra = Vec::new();
    let mut refused = 0;
    for _ in 0..channel::STREAMS_PER_PEER {
        let mut c = a.net.channel(&b_peer, &b_addr).expect("channel");
        match c.call(&heartbeat("a")).await {
            Ok(r) => {
                assert_eq!(r, WireReply::Ack);
                extra.push(c);
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(extra.len(), channel::STREAMS_PER_PEER - 1);
    assert_eq!(refused, 1, "the peer's channel past the limit is refused");
    // Closing channels frees their places.
    drop(extra);
    eventually("a closed channel frees its place", || {
        let net = a.net.clone();
        let peer = b_peer.clone();
        let addr = b_addr.clone();
        async move {
            let mut c = net.channel(&peer, &addr).expect("channel");
            c.call(&heartbeat("a")).await.is_ok()
        }
    })
    .await;
    // The first channel still works; once b stops, a call fails (no hang).
    assert_eq!(chan.call(&heartbeat("a")).await, Ok(WireReply::Ack));
    while b.got.try_recv().is_ok() {}
    b.stop().await;
    let failed = tokio::time::timeout(DEADLINE, chan.call(&heartbeat("a")))
        .await
        .expect("a call to a stopped peer ends");
    assert!(failed.is_err(), "{failed:?}");
    let _ = a.got.try_recv();
    a.stop().await;
}
