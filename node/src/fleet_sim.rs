//! `skein fleet-sim` (hidden): the fleet simulator behind `scripts/bench.sh
//! fleet`. One process hosting N simulated workers against real managers.
//! Each simulated worker is what a worker agent is minus its gossip
//! membership and its API: its own libp2p identity (a key file in its own
//! directory) and its own network instance (swarm, listener, connections),
//! a join with a real worker token (as `agent::run_worker` joins), then the
//! real [`SessionClient`] and the real [`Worker`] on a [`FakeRuntime`], which
//! "starts" a task at once and reports it running. Nothing of the session
//! protocol is faked.
//!
//! Owns: the simulated workers' directories under `--dir` (put it on a
//! tmpfs: every worker fsyncs its kept assignments) and the control/status
//! protocol with the bench driver:
//! - stdout, one JSON object per line: `{"event":"status",...}` every
//!   `--status-ms` (joined, online, running, silenced, sessions per
//!   manager), and the answers to commands;
//! - stdin, one command per line: `status`; `silence I` (worker I stops its
//!   session turns and its status reports, its connections stay open: a
//!   silent cut-off as the managers see it); `move PEER` (from now, report
//!   when every live session held with manager PEER has been answered by
//!   another manager and every live worker is online; sent just before that
//!   manager is killed); `silence-all`; `quit`.
//!
//! Joins go through a semaphore (`--join-concurrency`) so thousands of
//! joins queue here instead of at the leader. Ends on SIGINT/SIGTERM, `quit`
//! or end of stdin with `--exit-on-eof`.

use crate::cluster::join::request_join;
use crate::net::{self, NetConfig, NetHandle};
use crate::runtime::fake::FakeRuntime;
use crate::worker::session::SessionClient;
use crate::worker::{Runtimes, Worker};
use anyhow::Context;
use skein_protocol::token::JoinToken;
use skein_protocol::wire::{JoinRequest, ManagerInfo, WireReply};
use skein_protocol::{Node, NodeDescription, NodeResources, NodeRole, NodeStatus, RuntimeKind};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

const USAGE: &str = "usage: skein fleet-sim --join HOST:PORT[,HOST:PORT...] --token TOKEN \
--workers N --dir DIR [--join-concurrency 32] [--status-ms 1000] [--prefix sim] [--exit-on-eof]";

struct Opts {
    join: Vec<String>,
    token: String,
    workers: usize,
    dir: PathBuf,
    concurrency: usize,
    status_ms: u64,
    prefix: String,
    exit_on_eof: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        join: Vec::new(),
        token: String::new(),
        workers: 0,
        dir: PathBuf::new(),
        concurrency: 32,
        status_ms: 1000,
        prefix: "sim".into(),
        exit_on_eof: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--exit-on-eof" {
            o.exit_on_eof = true;
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
        let num = |what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what} {v:?}: expected a number"))
        };
        match a.as_str() {
            "--join" => o
                .join
                .extend(v.split(',').filter(|s| !s.is_empty()).map(String::from)),
            "--token" => o.token = v.clone(),
            "--workers" => o.workers = num("--workers")? as usize,
            "--dir" => o.dir = PathBuf::from(v),
            "--join-concurrency" => o.concurrency = (num("--join-concurrency")? as usize).max(1),
            "--status-ms" => o.status_ms = num("--status-ms")?.max(50),
            "--prefix" => o.prefix = v.clone(),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if o.join.is_empty() || o.token.is_empty() || o.dir.as_os_str().is_empty() {
        return Err(format!("--join, --token and --dir are required\n{USAGE}"));
    }
    Ok(o)
}

/// Entry point of `skein fleet-sim ARGS`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    raise_fd_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Every simulated worker holds a listener and a few connections: take the
/// whole allowance of open files.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// What a simulated worker tells the aggregator.
enum Ev {
    Joined {
        i: usize,
        node_id: String,
        name: String,
        runtime: FakeRuntime,
        silence: oneshot::Sender<()>,
    },
    JoinFailed {
        i: usize,
        error: String,
    },
    Online {
        i: usize,
        online: bool,
    },
    Serving {
        i: usize,
        peer: String,
        at_ms: u64,
    },
    Silenced {
        i: usize,
        at_ms: u64,
    },
}

#[derive(Default)]
struct WState {
    node_id: String,
    name: String,
    joined: bool,
    online: bool,
    serving: String,
    silenced: bool,
    runtime: Option<FakeRuntime>,
    silence: Option<oneshot::Sender<()>>,
}

/// A `move PEER` under way.
struct Moving {
    peer: String,
    t0_ms: u64,
    pending: HashSet<usize>,
    count: usize,
    last_ms: u64,
}

struct Shared {
    join: Vec<String>,
    token: JoinToken,
    token_text: String,
    dir: PathBuf,
    prefix: String,
    joins: Semaphore,
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let token: JoinToken = opts
        .token
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--token: {e}"))?;
    if token.role != NodeRole::Worker {
        anyhow::bail!("--token: a worker token is needed (skein join-token worker -q)");
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create --dir {}", opts.dir.display()))?;
    let shared = Arc::new(Shared {
        join: opts.join.clone(),
        token,
        token_text: opts.token.clone(),
        dir: opts.dir.clone(),
        prefix: opts.prefix.clone(),
        joins: Semaphore::new(opts.concurrency),
    });
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(opts.workers);
    for i in 0..opts.workers {
        tasks.push(tokio::spawn(sim_worker(
            i,
            shared.clone(),
            ev_tx.clone(),
            shutdown.clone(),
        )));
    }
    drop(ev_tx);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let eof = opts.exit_on_eof;
    let stdin_shutdown = shutdown_tx.clone();
    // stdin is read on a thread of its own (blocking reads).
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if l.trim() == "quit" {
                let _ = stdin_shutdown.send(true);
                return;
            }
            if cmd_tx.blocking_send(l).is_err() {
                return;
            }
        }
        if eof {
            let _ = stdin_shutdown.send(true);
        }
    });
    let agg = tokio::spawn(aggregate(
        opts.workers,
        opts.status_ms,
        ev_rx,
        cmd_rx,
        shutdown.clone(),
    ));
    let mut stop = shutdown.clone();
    tokio::select! {
        _ = signal() => {}
        _ = stop.changed() => {}
    }
    let _ = shutdown_tx.send(true);
    // Bounded: every worker closes its network at once.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for t in tasks {
            let _ = t.await;
        }
        let _ = agg.await;
    })
    .await;
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// One simulated worker: join, then session + worker until shutdown.
async fn sim_worker(
    i: usize,
    shared: Arc<Shared>,
    ev: mpsc::UnboundedSender<Ev>,
    shutdown: watch::Receiver<bool>,
) {
    let name = format!("{}-{i:05}", shared.prefix);
    let dir = shared.dir.join(&name);
    let joined = match join(&shared, &name, &dir, &shutdown).await {
        Ok(j) => j,
        Err(e) => {
            let _ = ev.send(Ev::JoinFailed {
                i,
                error: format!("{e:#}"),
            });
            return;
        }
    };
    let Joined {
        net,
        node_id,
        managers,
    } = joined;
    let runtime = FakeRuntime::new();
    let (assign_tx, assign_rx) = mpsc::channel(16);
    let (report_tx, report_rx) = mpsc::channel(1024);
    let (client, mut session) = SessionClient::new(
        node_id.clone(),
        net.clone(),
        dir.clone(),
        managers,
        assign_tx,
        report_rx,
    );
    // The session stops on shutdown or when this worker is silenced.
    let (session_stop_tx, session_stop) = watch::channel(false);
    tokio::spawn(client.run(session_stop));
    let worker = Worker::new(
        node_id.clone(),
        Runtimes::new(Arc::new(runtime.clone())),
        assign_rx,
        report_tx,
    )
    .with_online(session.online.clone(), &dir)
    // A fake task never ends by itself: nothing for a frequent poll to
    // find (assignments and starts still act at once).
    .with_poll_interval(Duration::from_secs(5));
    tokio::spawn(worker.run(shutdown.clone()));
    let (silence_tx, mut silence_rx) = oneshot::channel();
    let _ = ev.send(Ev::Joined {
        i,
        node_id,
        name,
        runtime,
        silence: silence_tx,
    });
    let mut stop = shutdown.clone();
    // Until the session ends (silenced) or the aggregator is gone.
    let mut watching = true;
    loop {
        tokio::select! {
            r = session.online.changed(), if watching => {
                if r.is_err() { watching = false; continue; }
                let online = *session.online.borrow_and_update();
                let _ = ev.send(Ev::Online { i, online });
            }
            r = session.serving.changed(), if watching => {
                if r.is_err() { watching = false; continue; }
                let peer = session.serving.borrow_and_update().clone();
                let _ = ev.send(Ev::Serving { i, peer, at_ms: crate::util::now_ms() });
            }
            r = &mut silence_rx, if watching => {
                watching = false;
                if r.is_ok() {
                    let _ = session_stop_tx.send(true);
                    let _ = ev.send(Ev::Silenced { i, at_ms: crate::util::now_ms() });
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = session_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), net.stopped()).await;
}

struct Joined {
    net: NetHandle,
    node_id: String,
    managers: Vec<ManagerInfo>,
}

/// Starts this worker's network and joins, holding a join permit.
async fn join(
    shared: &Shared,
    name: &str,
    dir: &std::path::Path,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Joined> {
    let _permit = shared
        .joins
        .acquire()
        .await
        .map_err(|_| anyhow::anyhow!("stopping"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cfg = NetConfig::new(shared.token.cluster_key, dir.join("peer.key"));
    cfg.listen = "127.0.0.1:0"
        .parse()
        .context("the loopback listen address")?;
    let (net, inbound) = net::start(cfg, shutdown.clone())
        .await
        .context("cannot start this worker's network")?;
    tokio::spawn(refuse_inbound(inbound, shutdown.clone()));
    let raft_id = crate::util::random_u64();
    let node_id = format!("{raft_id:016x}");
    let addr = net.listen_addr().to_string();
    let now = crate::util::now_ms();
    let me = Node {
        id: node_id.clone(),
        name: name.to_string(),
        role: NodeRole::Worker,
        availability: Default::default(),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr,
        api_addr: String::new(),
        peer_id: net.peer_id(),
        raft_id,
        region: String::new(),
        labels: BTreeMap::from([("skein.fleet-sim".to_string(), "true".to_string())]),
        description: NodeDescription {
            hostname: name.to_string(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            resources: NodeResources {
                nano_cpus: 2_000_000_000,
                memory_bytes: 1 << 30,
            },
            runtimes: vec![RuntimeKind::Process],
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        manager_status: None,
        created_at: now,
        updated_at: now,
        last_seen: now,
        session: String::new(),
    };
    let req = JoinRequest {
        token: shared.token_text.clone(),
        node: me,
        peer_id: net.peer_id(),
        raft_id,
    };
    // As agent::join_cluster: transient trouble is retried (longer here: a
    // leader admitting thousands of nodes is slow), a refusal is final.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut last = None;
    let mut k = 0usize;
    while tokio::time::Instant::now() < deadline {
        let addr = &shared.join[(k + spread_of(name)) % shared.join.len()];
        k += 1;
        match request_join(&net, addr, req.clone()).await {
            Ok(a) => {
                return Ok(Joined {
                    managers: crate::agent::join_managers(&a),
                    net,
                    node_id,
                })
            }
            Err(e) => {
                let text = format!("{e:#}");
                let transient = text.contains("retry")
                    || text.contains("cannot reach")
                    || text.contains("cannot record")
                    || text.contains("failed");
                if !transient {
                    return Err(e);
                }
                last = Some(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("join: no address to join")))
}

/// Spreads the joins over the `--join` addresses.
fn spread_of(name: &str) -> usize {
    name.bytes().map(usize::from).sum()
}

/// As a worker agent does: no cluster requests are served here.
async fn refuse_inbound(mut rx: mpsc::Receiver<net::Inbound>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let inb = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.changed() => return,
        };
        let _ = inb.reply.send(WireReply::Error(
            "retry: this node is a worker: ask a manager".into(),
        ));
    }
}

/// Keeps every simulated worker's state; answers commands; prints status.
async fn aggregate(
    n: usize,
    status_ms: u64,
    mut ev: mpsc::UnboundedReceiver<Ev>,
    mut cmds: mpsc::Receiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut w: Vec<WState> = (0..n).map(|_| WState::default()).collect();
    let mut join_failed = 0usize;
    let mut moving: Option<Moving> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(status_ms));
    let started = crate::util::now_ms();
    let mut joined = 0usize;
    let mut all_joined = false;
    loop {
        tokio::select! {
            e = ev.recv() => {
                let Some(e) = e else { return };
                match e {
                    Ev::Joined { i, node_id, name, runtime, silence } => {
                        let s = &mut w[i];
                        s.node_id = node_id;
                        s.name = name;
                        s.joined = true;
                        s.runtime = Some(runtime);
                        s.silence = Some(silence);
                        joined += 1;
                    }
                    Ev::JoinFailed { i, error } => {
                        join_failed += 1;
                        emit(serde_json::json!({"event": "join_failed", "index": i, "error": error}));
                    }
                    Ev::Online { i, online } => w[i].online = online,
                    Ev::Serving { i, peer, at_ms } => {
                        if let Some(m) = &mut moving {
                            if peer != m.peer && m.pending.remove(&i) {
                                m.last_ms = m.last_ms.max(at_ms);
                            }
                        }
                        w[i].serving = peer;
                    }
                    Ev::Silenced { i, at_ms } => {
                        let s = &mut w[i];
                        s.silenced = true;
                        s.online = false;
                        if let Some(m) = &mut moving {
                            m.pending.remove(&i);
                        }
                        emit(serde_json::json!({
                            "event": "silenced", "index": i, "node_id": s.node_id,
                            "name": s.name, "at_ms": at_ms,
                        }));
                    }
                }
                if !all_joined && joined + join_failed == n {
                    all_joined = true;
                    let ms = crate::util::now_ms().saturating_sub(started);
                    emit(serde_json::json!({"event": "all_joined", "ms": ms, "joined": joined, "failed": join_failed}));
                }
                check_moved(&w, &mut moving);
            }
            Some(line) = cmds.recv() => {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some("status"), _) => emit(status(&w, join_failed)),
                    (Some("silence"), Some(idx)) => {
                        match idx.parse::<usize>().ok().and_then(|i| w.get_mut(i)) {
                            Some(s) => match s.silence.take() {
                                Some(tx) => { let _ = tx.send(()); }
                                None => emit(serde_json::json!({"event": "error", "error": format!("worker {idx} is not joined or already silent")})),
                            },
                            None => emit(serde_json::json!({"event": "error", "error": format!("no worker {idx}")})),
                        }
                    }
                    (Some("silence-all"), _) => {
                        let mut count = 0;
                        for s in w.iter_mut() {
                            if let Some(tx) = s.silence.take() {
                                let _ = tx.send(());
                                count += 1;
                            }
                        }
                        emit(serde_json::json!({"event": "silenced_all", "count": count, "at_ms": crate::util::now_ms()}));
                    }
                    (Some("move"), Some(peer)) => {
                        let pending: HashSet<usize> = w.iter().enumerate()
                            .filter(|(_, s)| s.joined && !s.silenced && s.serving == peer)
                            .map(|(i, _)| i)
                            .collect();
                        let now = crate::util::now_ms();
                        moving = Some(Moving { peer: peer.to_string(), t0_ms: now, count: pending.len(), pending, last_ms: now });
                        emit(serde_json::json!({"event": "move_armed", "peer": peer, "sessions": moving.as_ref().map_or(0, |m| m.count), "t0_ms": now}));
                        check_moved(&w, &mut moving);
                    }
                    _ => emit(serde_json::json!({"event": "error", "error": format!("unknown command {line:?}: status | silence I | silence-all | move PEER | quit")})),
                }
            }
            _ = tick.tick() => {
                // An online worker that is back on a session counts as soon as
                // the watch told us; re-check the move here too.
                check_moved(&w, &mut moving);
                emit(status(&w, join_failed));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Reports a `move` once every affected session is with another manager
/// and every live worker is online.
fn check_moved(w: &[WState], moving: &mut Option<Moving>) {
    let Some(m) = moving else { return };
    if !m.pending.is_empty() {
        return;
    }
    let live = w.iter().filter(|s| s.joined && !s.silenced);
    if live.clone().any(|s| !s.online || s.serving == m.peer) {
        return;
    }
    let now = crate::util::now_ms();
    emit(serde_json::json!({
        "event": "moved", "peer": m.peer, "sessions": m.count, "t0_ms": m.t0_ms,
        "last_move_ms": m.last_ms, "all_online_ms": now,
    }));
    *moving = None;
}

fn status(w: &[WState], join_failed: usize) -> serde_json::Value {
    let mut by_manager: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut joined, mut online, mut silenced, mut running) = (0, 0, 0, 0);
    for s in w {
        if !s.joined {
            continue;
        }
        joined += 1;
        if s.silenced {
            silenced += 1;
            continue;
        }
        if s.online {
            online += 1;
        }
        if !s.serving.is_empty() {
            *by_manager.entry(s.serving.as_str()).or_default() += 1;
        }
        if let Some(rt) = &s.runtime {
            running += rt.running().len();
        }
    }
    serde_json::json!({
        "event": "status", "t_ms": crate::util::now_ms(), "workers": w.len(),
        "joined": joined, "join_failed": join_failed, "online": online,
        "silenced": silenced, "running": running, "by_manager": by_manager,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_and_missing_ones_are_named() {
        let o = parse(&args(
            "--join 127.0.0.1:1,127.0.0.1:2 --token T --workers 5 --dir /tmp/x --exit-on-eof",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.join.len(), 2);
        assert_eq!(o.workers, 5);
        assert!(o.exit_on_eof);
        let e = parse(&args("--workers 5")).err().unwrap_or_default();
        assert!(e.contains("--join, --token and --dir are required"), "{e}");
        let e = parse(&args("--workers x --join a --token t --dir d"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("expected a number"), "{e}");
    }
}
