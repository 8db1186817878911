//! `skein agent`: wires the actors of one node together and runs them until
//! SIGINT/SIGTERM. Owns the node's identity file (`<data-dir>/node.json`).
//!
//! Start-up order matters: the Raft log is replayed before anything reads
//! state; the worker connects (and so adopts live tasks) before the
//! orchestrator may replace anything. The API answers from the moment its
//! listener is bound: until Raft runs only `GET /v1/members` and
//! `GET /v1/info`, every other path a 503 saying why (starting, or forming
//! the cluster with `--bootstrap-expect`); then the full API on the same
//! listener (see [`crate::api::bootstrap`]). Shutdown stops the API and the
//! actors but leaves tasks running: a restarted agent adopts them.
//!
//! A run goes through named phases: identity ([`identity_phase`]), network
//! and membership ([`network_phase`]), bootstrap or join, Raft, actors. Every
//! actor a run spawns is owned by one [`TaskSet`]: the run ends by stopping
//! them all within [`STOP_BOUND`] (stragglers aborted), then the network.
//!
//! A node runs in its role: a manager runs Raft, the dispatcher and the
//! leader's loops, and its own worker in-process; a worker ([`run_worker`])
//! runs no Raft: a session with a manager, its worker, and a worker's API.
//! When the cluster changes the role (promote, demote), the actors stop
//! and start again in the new role on the same data dir; tasks keep
//! running and are adopted.

use crate::api::{self, AppState};
use crate::cluster::forward::Proposer;
use crate::cluster::inbound::Router;
use crate::cluster::join;
use crate::cluster::raft_link::{self, PeerBook};
use crate::dispatcher::heartbeat;
use crate::dispatcher::Dispatcher;
use crate::membership::{self, bootstrap, MembershipConfig, MembershipHandle};
use crate::net::{self, NetConfig, NetHandle};
use crate::orchestrator::Orchestrator;
use crate::raft::{RaftNode, RaftOptions};
use crate::runtime::docker;
use crate::runtime::process::ProcessRuntime;
use crate::taskset::TaskSet;
use crate::worker::session::{Kept, SessionClient};
use crate::worker::{Runtimes, Worker};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use skein_config::agent::{AgentConfig, RuntimeChoice};
use skein_protocol::gossip::Announce;
use skein_protocol::token::JoinToken;
use skein_protocol::wire::ManagerInfo;
use skein_protocol::wire::{JoinRequest, WireMessage};
use skein_protocol::{
    Command, ManagerStatus, Node, NodeDescription, NodeResources, NodeRole, NodeStatus,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Who this node is; written once when the data dir is new.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub raft_id: u64,
    pub cluster_id: String,
    /// The transport's pre-shared key, hex (from the founder or the join token).
    #[serde(default)]
    pub cluster_key: String,
    /// This node founded its cluster (false: it joined with a token).
    #[serde(default = "yes")]
    pub founder: bool,
    /// The role this node joined as (founders are managers).
    #[serde(default)]
    pub role: NodeRole,
}

fn yes() -> bool {
    true
}

impl Identity {
    /// The stored identity, or a new one (true) that is not written yet.
    fn load_or_new(data_dir: &Path) -> anyhow::Result<(Identity, bool)> {
        let path = data_dir.join("node.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let id: Identity = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is corrupt: restore it or start with an empty --data-dir",
                        path.display()
                    )
                })?;
                Ok((id, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let raft_id = crate::util::random_u64();
                let id = Identity {
                    node_id: format!("{raft_id:016x}"),
                    raft_id,
                    cluster_id: crate::util::random_hex(8),
                    cluster_key: crate::util::random_hex(32),
                    founder: true,
                    role: NodeRole::Manager,
                };
                Ok((id, true))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn persist(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join("node.json");
        let tmp = data_dir.join("node.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

fn describe(runtimes: &Runtimes) -> NodeDescription {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    NodeDescription {
        hostname,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        resources: NodeResources {
            nano_cpus: cpus * 1_000_000_000,
            memory_bytes: memory,
        },
        runtimes: runtimes.kinds(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The node's runtimes, default first: `process` runs the process runtime
/// only; `docker` the Docker runtime (and fails when no engine answers) with
/// the process runtime as a second; `auto` Docker when an engine answers,
/// else processes only.
async fn build_runtimes(cfg: &AgentConfig, node_id: &str) -> anyhow::Result<Runtimes> {
    let exe = std::env::current_exe().context("cannot find the skein binary's own path")?;
    let process = Arc::new(ProcessRuntime::new(&cfg.data_dir, exe)?);
    let docker = match cfg.runtime {
        RuntimeChoice::Process => None,
        RuntimeChoice::Docker => Some(docker::connect(node_id).await.map_err(|e| {
            anyhow::anyhow!(
                "--runtime docker: {e}. Start the Docker engine (or set DOCKER_HOST to where it listens), \
                 or start the agent with --runtime process or --runtime auto"
            )
        })?),
        RuntimeChoice::Auto => match docker::connect(node_id).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::info!(
                    reason = %e,
                    "runtime auto: no Docker engine, using the process runtime only"
                );
                None
            }
        },
    };
    Ok(match docker {
        Some(d) => {
            tracing::info!(
                host = d.host(),
                "runtime {}: docker (default) and process",
                cfg.runtime
            );
            let mut runtimes = Runtimes::new(Arc::new(d));
            runtimes.add(process);
            runtimes
        }
        None => {
            tracing::info!("runtime {}: process", cfg.runtime);
            Runtimes::new(process)
        }
    })
}

/// How one run of the node's actors ended.
/// How long stopping a run's actors (then the network) may take.
const STOP_BOUND: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Ended {
    /// SIGINT/SIGTERM: the agent stops (tasks keep running).
    Stopped,
    /// The cluster changed this node's role: start again as that.
    RoleChanged(NodeRole),
}

/// Runs the agent until SIGINT/SIGTERM. A role change (promote, demote)
/// stops the node's actors and starts them again in the new role, on the
/// same data dir, without touching its tasks (they are adopted).
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    // Everything that can refuse to start is checked before anything is
    // written: a failed first start must not leave a founded cluster behind.
    let listener = tokio::net::TcpListener::bind(cfg.api)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the API (another agent running? pick another with --api)",
                cfg.api
            )
        })?;
    // The API answers from now on, across role changes: first why it cannot
    // do more yet, then the API of the node's role, on this same listener
    // (see api::bootstrap).
    let (status_tx, status_rx) = watch::channel(format!(
        "the agent {} is starting: try again in a moment",
        cfg.name
    ));
    let (api_switch, app) =
        api::bootstrap::Switch::new(api::bootstrap::starting(status_rx.clone()));
    let (api_stop_tx, mut api_stop) = watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_stop.changed().await;
    });
    let server_task = tokio::spawn(async move { server.await });
    tracing::info!(api = %cfg.api, "API listening");
    let api = Api {
        switch: api_switch,
        status_tx,
        status_rx,
    };
    let result = loop {
        match run_once(&cfg, &api).await {
            Ok(Ended::Stopped) => break Ok(()),
            Ok(Ended::RoleChanged(role)) => {
                tracing::info!(%role, "this node's role changed: starting its actors again as a {role}");
                api.status_tx.send_replace(format!(
                    "the agent {} is starting again as a {role}: try again in a moment",
                    cfg.name
                ));
                api.switch
                    .serve(api::bootstrap::starting(api.status_rx.clone()));
            }
            Err(e) => break Err(e),
        }
    };
    let _ = api_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    result
}

/// The agent's API listener, kept across role changes.
struct Api {
    switch: api::bootstrap::Switch,
    status_tx: watch::Sender<String>,
    status_rx: watch::Receiver<String>,
}

async fn run_once(cfg: &AgentConfig, api_: &Api) -> anyhow::Result<Ended> {
    // Every actor of this run is spawned in `tasks` and stopped with it.
    let mut tasks = TaskSet::new();
    let shutdown = tasks.stop_signal();
    let (api_switch, status_tx) = (&api_.switch, &api_.status_tx);
    // Phase 1: who this node is (node.json, a join token, a cluster key).
    let Start {
        mut identity,
        fresh,
        token,
        bootstrapping,
    } = identity_phase(cfg)?;
    let runtimes = build_runtimes(cfg, &identity.node_id).await?;

    // Phase 2: the network and gossip membership (bootstrap needs them
    // before Raft).
    let Wired {
        net,
        advertise,
        announce,
        membership,
        router_rx,
    } = network_phase(cfg, &identity, &runtimes, bootstrapping, api_, &mut tasks).await?;
    // Phase 3: a box formed by itself finds or founds its cluster (a token
    // join is done below: a manager's once its Raft node runs, a worker's
    // in run_worker).
    let mut token = token;
    let mut join_addrs = cfg.join.clone();
    let mut founding_set = Vec::new();
    if bootstrapping {
        let key = cfg.cluster_key.clone().unwrap_or_default();
        let outcome = tokio::select! {
            r = bootstrap_phase(cfg, &net, &membership, announce.clone(), status_tx) => r?,
            _ = wait_for_signal() => {
                tasks.shutdown(STOP_BOUND).await;
                let _ = tokio::time::timeout(STOP_BOUND, net.stopped()).await;
                return Ok(Ended::Stopped);
            }
        };
        match outcome {
            Bootstrapped::Found { set } => {
                tracing::info!(
                    voters = set.len(),
                    "founding the cluster with the boxes that agreed"
                );
                identity.founder = true;
                status_tx.send_replace(format!(
                    "{} is founding its cluster with the {} boxes that agreed",
                    cfg.name,
                    set.len()
                ));
                founding_set = set;
            }
            Bootstrapped::Join {
                cluster_id,
                via,
                role,
            } => {
                tracing::info!(cluster = %cluster_id, ?role, "joining the cluster these boxes formed");
                status_tx.send_replace(format!(
                    "{} is joining the cluster {cluster_id} that its boxes formed",
                    cfg.name
                ));
                identity.cluster_id = cluster_id.clone();
                token = Some(JoinToken {
                    cluster_id,
                    cluster_key: bootstrap::derive_psk(&key),
                    role,
                    secret: bootstrap::derive_secret(&key, role),
                });
                join_addrs = via;
            }
        }
    }

    // Only managers are Raft members: a worker holds a session instead.
    if token.as_ref().map_or(identity.role, |t| t.role) == NodeRole::Worker {
        return run_worker(WorkerStart {
            cfg,
            identity,
            fresh,
            token,
            join_addrs,
            net,
            membership,
            runtimes,
            announce,
            advertise,
            api_switch,
            tasks,
            inbound: router_rx,
        })
        .await;
    }

    // Phase 4: Raft (the log, the node, its links), then the join.
    let db_path = cfg.data_dir.join("raft");
    // The Raft log is created before node.json is first written: a node
    // identity without it means the log was lost (a deleted directory, a
    // restored backup of node.json alone). A manager that lost its log has
    // forgotten its votes and its state: founding a new cluster with the same
    // key, or voting again, would split the cluster. A worker only replicates.
    if !fresh && !db_path.exists() {
        if let Some(refusal) = lost_log_refusal(&identity, cfg) {
            bail!(refusal);
        }
        if cfg.force_new_cluster {
            identity.cluster_id = crate::util::random_hex(8);
            identity.founder = true;
            identity.role = NodeRole::Manager;
            identity.persist(&cfg.data_dir)?;
            tracing::warn!(
                cluster = %identity.cluster_id,
                "--force-new-cluster: this node's raft log was lost; founding a new cluster as its only manager"
            );
        }
    }
    let db = sled::Config::new()
        .path(&db_path)
        .flush_every_ms(Some(200))
        .open()
        .with_context(|| {
            format!(
                "cannot open the raft log in {} (is another agent using this --data-dir?)",
                db_path.display()
            )
        })?;
    let opts = RaftOptions {
        tick: Duration::from_millis(cfg.raft.tick_ms),
        election_ticks: cfg.raft.election_ticks as usize,
        heartbeat_ticks: cfg.raft.heartbeat_ticks as usize,
        snapshot_entries: cfg.raft.snapshot_entries,
    };
    let has_log = crate::raft::storage::SledStorage::open(&db)
        .map(|s| s.is_initialized())
        .unwrap_or(true);
    let (mut raft_node, raft) = if has_log || identity.founder {
        RaftNode::open(&db, identity.raft_id, opts)?
    } else {
        RaftNode::open_joining(&db, identity.raft_id, opts)?
    };
    tracing::info!(
        node = %cfg.name,
        node_id = %identity.node_id,
        peer_id = %net.peer_id(),
        listen = %net.listen_addr(),
        advertise = %advertise,
        data_dir = %cfg.data_dir.display(),
        "{}",
        match (fresh, &token) {
            (true, None) => "starting a new cluster as its first manager",
            (true, Some(_)) => "joining a cluster",
            (false, _) => "resuming from the data dir",
        }
    );
    let book = PeerBook::default();
    // A worker that was promoted has no state yet: the managers its session
    // knew are whom it takes Raft traffic from until the log says more.
    for m in Kept::load(&cfg.data_dir).managers {
        if m.raft_id != 0 && !m.peer_id.is_empty() {
            book.insert(m.raft_id, m.peer_id.clone());
            net.add_peer(&m.peer_id, &m.addr);
        }
    }
    let (raft_out_tx, raft_out_rx) = tokio::sync::mpsc::unbounded_channel();
    raft_node.set_outbound(raft_out_tx);
    // How the raft node ended, if it did (the log is the only source of
    // truth: without it this node must not go on).
    let (raft_end_tx, mut raft_end) = tokio::sync::oneshot::channel();
    {
        let stop = shutdown.clone();
        tasks.spawn("raft", async move {
            let _ = raft_end_tx.send(raft_node.run(stop).await);
        });
    }
    tasks.spawn(
        "raft-outbound",
        raft_link::run_outbound(
            raft_out_rx,
            raft.clone(),
            net.clone(),
            book.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "raft-disconnects",
        raft_link::watch_disconnects(net.clone(), raft.clone(), shutdown.clone()),
    );
    let proposer = Proposer::new(raft.clone(), Some(net.clone()), book.clone());
    let (heard_tx, heard_rx) = tokio::sync::mpsc::channel(8192);
    let beat = Duration::from_millis(cfg.heartbeat_ms.max(50));
    let (dispatcher, dispatch) = Dispatcher::new(raft.clone(), proposer.clone());
    tasks.spawn(
        "dispatcher",
        dispatcher
            .with_hold(beat)
            .with_node(&identity.node_id)
            .run(shutdown.clone()),
    );
    tasks.spawn(
        "router",
        Router {
            node_id: identity.node_id.clone(),
            dispatch: dispatch.clone(),
            raft: raft.clone(),
            net: net.clone(),
            book: book.clone(),
            proposer: proposer.clone(),
            heard: heard_tx,
        }
        .run(router_rx, shutdown.clone()),
    );
    tasks.spawn(
        "keep-peers",
        keep_peers_connected(
            raft.clone(),
            net.clone(),
            identity.node_id.clone(),
            shutdown.clone(),
        ),
    );

    // The API serves reads from the local state at once (also while there
    // is no quorum); writes answer 503 until a leader is known.
    let app = api::router(AppState {
        raft: raft.clone(),
        proposer: proposer.clone(),
        runtimes: runtimes.clone(),
        node_id: identity.node_id.clone(),
        node_name: cfg.name.clone(),
        cluster_id: identity.cluster_id.clone(),
        membership: Some(membership.clone()),
    });
    api_switch.serve(app);
    tracing::info!(api = %cfg.api, "API serving the cluster");

    // What this node says about itself: sent with a join (the leader that
    // lets it in records it), otherwise registered below.
    let me = self_node(
        cfg,
        &identity,
        &runtimes,
        &advertise,
        &net.peer_id(),
        token.as_ref().map_or(identity.role, |t| t.role),
    );
    let registered = token.is_some();
    if let Some(t) = token {
        let accepted = join_cluster(&net, &join_addrs, &t, &me, identity.raft_id).await?;
        for (rid, peer, addr) in &accepted.managers {
            book.insert(*rid, peer.clone());
            // A manager keeps the managers connected (Raft); a worker's
            // session keeps the one it holds its session with.
            if accepted.role == skein_protocol::NodeRole::Manager {
                net.add_peer(peer, addr);
            } else {
                net.learn(peer, addr);
            }
        }
        identity.role = accepted.role;
        tracing::info!(role = ?accepted.role, cluster = %accepted.cluster_id, "joined the cluster");
    }
    if fresh {
        identity.persist(&cfg.data_dir)?;
    }

    // A manager's own worker takes its assignments from the manager's
    // dispatcher in-process.
    let assignments = dispatch.connect(identity.node_id.clone()).await;
    let worker = Worker::new(
        identity.node_id.clone(),
        runtimes.clone(),
        assignments,
        dispatch.reporter(),
    );
    let introduce = Introduce {
        proposer: proposer.clone(),
        membership: membership.clone(),
        identity: identity.clone(),
        announce,
        founding_set,
        register: (!registered).then_some(me),
        cluster_key: cfg.cluster_key.clone(),
    };
    introduce
        .run(&mut tasks, Some(Duration::from_secs(30)))
        .await?;

    // Phase 5: the manager's actors; then run until a signal, a role change
    // or the Raft node's end.
    tasks.spawn("worker", worker.run(shutdown.clone()));
    tasks.spawn(
        "orchestrator",
        Orchestrator::new(raft.clone(), shutdown.clone()).run(),
    );
    tasks.spawn(
        "raft-membership",
        crate::cluster::membership::run(raft.clone(), shutdown.clone()),
    );
    if cfg.cluster_key.is_some() && cfg.voters > 0 {
        tasks.spawn(
            "voters",
            crate::cluster::voters::run(raft.clone(), cfg.voters as usize, shutdown.clone()),
        );
    }
    tasks.spawn(
        "heartbeat",
        heartbeat::run_sender(
            identity.node_id.clone(),
            raft.clone(),
            net.clone(),
            book.clone(),
            beat,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "liveness",
        heartbeat::run_monitor(
            identity.node_id.clone(),
            proposer.clone(),
            heard_rx,
            Some(membership.events()),
            Some(net.clone()),
            // Turns come once per `beat`: two and a half missed ones is down.
            beat * 5 / 2,
            shutdown.clone(),
        ),
    );

    let mut demoted = false;
    let mut demoted_f = Box::pin(demotion(raft.clone(), identity.node_id.clone()));
    let raft_died = loop {
        tokio::select! {
            _ = wait_for_signal() => break false,
            ended = tasks.next_ended() => match ended {
                Ok("raft") => break true,
                Ok(name) => tracing::debug!(task = name, "task ended"),
                Err(e) => {
                    tasks.shutdown(STOP_BOUND).await;
                    bail!("an agent task crashed: {e}");
                }
            },
            () = &mut demoted_f => {
                demoted = true;
                break false;
            }
        }
    };
    drop(demoted_f);
    if demoted {
        // Leave Raft for a session: keep what the worker needs to go on
        // (its tasks, whom to ask), stop every actor, drop the log.
        let p = raft.current();
        let kept = Kept {
            index: p.applied,
            managers: crate::dispatcher::session_managers(&p.state, p.leader_id),
            tasks: crate::dispatcher::assignments_for(&p.state, &identity.node_id),
        };
        kept.save(&cfg.data_dir)
            .context("cannot keep this node's assignments for its session")?;
        identity.role = NodeRole::Worker;
        identity.founder = false;
        identity.persist(&cfg.data_dir)?;
        tracing::info!("this node was demoted and left raft: going on as a worker");
        tasks.shutdown(STOP_BOUND).await;
        let _ = tokio::time::timeout(STOP_BOUND, net.stopped()).await;
        drop(raft);
        drop(proposer);
        db.flush()?;
        drop(db);
        if let Err(e) = std::fs::remove_dir_all(&db_path) {
            tracing::warn!(error = %e, "cannot remove the old raft log");
        }
        return Ok(Ended::RoleChanged(NodeRole::Worker));
    }
    if raft_died {
        // The log is the only source of truth: without it this node must not go on.
        tasks.shutdown(STOP_BOUND).await;
        return match raft_end.try_recv() {
            Ok(Ok(())) => Err(anyhow::anyhow!("the raft node stopped unexpectedly")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the raft node failed")),
            Err(_) => Err(anyhow::anyhow!("the raft node crashed")),
        };
    }
    tracing::info!("shutting down (tasks keep running)");
    tasks.shutdown(STOP_BOUND).await;
    if let Ok(Err(e)) = raft_end.try_recv() {
        return Err(e.into());
    }
    let _ = tokio::time::timeout(STOP_BOUND, net.stopped()).await;
    db.flush()?;
    Ok(Ended::Stopped)
}

/// What the identity phase found.
struct Start {
    identity: Identity,
    /// No node.json before this start.
    fresh: bool,
    /// The join token to use (a fresh node started with --token).
    token: Option<JoinToken>,
    /// A fresh node with --cluster-key: it forms or finds its cluster.
    bootstrapping: bool,
}

/// Phase 1: this node's identity, from its data dir (created), or new, with
/// what --token / --cluster-key say about the cluster it belongs to.
fn identity_phase(cfg: &AgentConfig) -> anyhow::Result<Start> {
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}: pick another with --data-dir",
            cfg.data_dir.display()
        )
    })?;
    let (mut identity, fresh) = Identity::load_or_new(&cfg.data_dir)?;
    let token = match (&cfg.token, fresh) {
        (Some(t), true) => {
            let t: JoinToken = t
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--token: {e}"))?;
            identity.cluster_id = t.cluster_id.clone();
            identity.cluster_key = skein_protocol::token::hex(&t.cluster_key);
            identity.founder = false;
            // Announced from the start: gossip keeps managers connected.
            identity.role = t.role;
            Some(t)
        }
        (Some(_), false) => {
            tracing::info!("this node is already a cluster member: --join/--token ignored");
            None
        }
        (None, _) => None,
    };
    // Zero-touch bootstrap: the key derives from --cluster-key; a fresh box
    // finds its cluster (or forms it) below, before Raft starts.
    let mut bootstrapping = false;
    if let Some(k) = &cfg.cluster_key {
        let psk = skein_protocol::token::hex(&bootstrap::derive_psk(k));
        if fresh {
            identity.cluster_key = psk;
            identity.founder = false;
            bootstrapping = true;
        } else if identity.cluster_key != psk {
            tracing::warn!(
                "this data dir belongs to a cluster with another key: --cluster-key is ignored \
                 (start with an empty --data-dir to form or join the cluster of that key)"
            );
        }
    }
    Ok(Start {
        identity,
        fresh,
        token,
        bootstrapping,
    })
}

/// What the network phase started.
struct Wired {
    net: NetHandle,
    /// The address other nodes dial.
    advertise: String,
    /// This node's first gossip announce.
    announce: Announce,
    membership: MembershipHandle,
    /// Requests from peers other than membership's (Raft, joins, sessions).
    router_rx: tokio::sync::mpsc::Receiver<net::Inbound>,
}

/// Phase 2: the cluster transport and gossip membership; the API says the
/// node is forming or joining its cluster until the next phases replace it.
async fn network_phase(
    cfg: &AgentConfig,
    identity: &Identity,
    runtimes: &Runtimes,
    bootstrapping: bool,
    api_: &Api,
    tasks: &mut TaskSet,
) -> anyhow::Result<Wired> {
    let shutdown = tasks.stop_signal();
    let (api_switch, status_tx, status_rx) =
        (&api_.switch, &api_.status_tx, api_.status_rx.clone());
    let cluster_key = skein_protocol::token::unhex32(&identity.cluster_key).ok_or_else(|| {
        anyhow::anyhow!(
            "node.json holds no valid cluster key: restore it or start with an empty --data-dir"
        )
    })?;
    let listen: std::net::SocketAddr = cfg
        .listen
        .parse()
        .with_context(|| format!("--listen {}: write IP:PORT", cfg.listen))?;
    let mut net_cfg = NetConfig::new(cluster_key, cfg.data_dir.join("peer.key"));
    net_cfg.listen = listen;
    net_cfg.advertise = cfg.advertise.clone();
    // mDNS never answers on loopback: a node listening there keeps quiet.
    net_cfg.mdns = cfg.mdns && !listen.ip().is_loopback();
    if cfg.mdns && !net_cfg.mdns {
        tracing::info!("listening on loopback: mDNS discovery off");
    }
    let (net, mut inbound) = net::start(net_cfg, shutdown.clone())
        .await
        .with_context(|| format!("cannot start the cluster transport on {}", cfg.listen))?;
    let advertise = advertised(cfg, net.listen_addr());

    // Membership runs from the start: bootstrap needs it before Raft.
    let mut announce = self_announce(cfg, identity, runtimes, &advertise, &net.peer_id());
    if bootstrapping {
        announce.cluster_id.clear();
    }
    let membership = membership::start(
        net.clone(),
        announce.clone(),
        MembershipConfig {
            // Also with a token: membership connects while the join runs.
            seeds: cfg.join.clone(),
            ..Default::default()
        },
        shutdown.clone(),
    );
    if bootstrapping {
        status_tx.send_replace(format!(
            "{} is still forming its cluster (--bootstrap-expect {}): looking for boxes with the same cluster key",
            cfg.name, cfg.bootstrap_expect
        ));
    }
    api_switch.serve(api::bootstrap::forming(api::bootstrap::Forming {
        node_id: identity.node_id.clone(),
        node_name: cfg.name.clone(),
        default_runtime: runtimes.default_kind().to_string(),
        membership: membership.clone(),
        status: status_rx,
    }));
    // Membership requests go to the membership actor, the rest to the router.
    let (router_tx, router_rx) = tokio::sync::mpsc::channel(1024);
    {
        let membership = membership.clone();
        tasks.spawn("inbound", async move {
            while let Some(inb) = inbound.recv().await {
                let net::Inbound { peer, msg, reply } = inb;
                match msg {
                    WireMessage::Gossip(req) => membership.serve(peer, *req, reply),
                    msg => {
                        if router_tx
                            .send(net::Inbound { peer, msg, reply })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(Wired {
        net,
        advertise,
        announce,
        membership,
        router_rx,
    })
}

/// Resolves once this manager was demoted and has left Raft: its own node
/// is a worker in the state and its raft id is no longer a member (or 10 s
/// after the demotion, if it never learns of its removal).
async fn demotion(raft: crate::raft::RaftHandle, node_id: String) {
    let mut sub = raft.subscribe();
    let mut since: Option<tokio::time::Instant> = None;
    loop {
        let (worker, member) = {
            let p = sub.borrow_and_update();
            let worker = p
                .state
                .nodes
                .get(&node_id)
                .is_some_and(|n| n.role == NodeRole::Worker);
            let member = p.voters.contains(&p.raft_id) || p.learners.contains(&p.raft_id);
            (worker, member)
        };
        if worker {
            let at = *since.get_or_insert_with(tokio::time::Instant::now);
            if !member || at.elapsed() > Duration::from_secs(10) {
                return;
            }
        } else {
            since = None;
        }
        tokio::select! {
            r = sub.changed() => if r.is_err() { return std::future::pending().await },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What a worker node starts from (everything before Raft).
struct WorkerStart<'a> {
    cfg: &'a AgentConfig,
    identity: Identity,
    fresh: bool,
    token: Option<JoinToken>,
    join_addrs: Vec<String>,
    net: NetHandle,
    membership: MembershipHandle,
    runtimes: Runtimes,
    announce: Announce,
    advertise: String,
    api_switch: &'a api::bootstrap::Switch,
    tasks: TaskSet,
    inbound: tokio::sync::mpsc::Receiver<net::Inbound>,
}

/// A worker node: no Raft, no cluster state. It joins (first start), holds
/// a session with a manager (heartbeats, its assignments, status reports),
/// runs its tasks (also with no manager reachable, from the assignments it
/// kept), and answers its API from what it knows of itself. Promoted, it
/// starts again as a manager.
async fn run_worker(w: WorkerStart<'_>) -> anyhow::Result<Ended> {
    let WorkerStart {
        cfg,
        mut identity,
        fresh,
        token,
        join_addrs,
        net,
        membership,
        runtimes,
        mut announce,
        advertise,
        api_switch,
        mut tasks,
        inbound,
    } = w;
    let shutdown = tasks.stop_signal();
    let me = self_node(
        cfg,
        &identity,
        &runtimes,
        &advertise,
        &net.peer_id(),
        NodeRole::Worker,
    );
    let registered = token.is_some();
    let mut managers = Vec::new();
    if let Some(t) = token {
        let accepted = join_cluster(&net, &join_addrs, &t, &me, identity.raft_id).await?;
        managers = join_managers(&accepted);
        identity.role = accepted.role;
        tracing::info!(role = %accepted.role, cluster = %accepted.cluster_id, "joined the cluster");
    }
    if fresh {
        identity.persist(&cfg.data_dir)?;
    }
    tracing::info!(
        node = %cfg.name,
        node_id = %identity.node_id,
        peer_id = %net.peer_id(),
        "running as a worker: holding a session with a manager"
    );
    let (assign_tx, assign_rx) = tokio::sync::mpsc::channel(16);
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(1024);
    let (client, session) = SessionClient::new(
        identity.node_id.clone(),
        net.clone(),
        cfg.data_dir.clone(),
        managers,
        assign_tx,
        report_rx,
    );
    tasks.spawn("session", client.run(shutdown.clone()));
    let worker = Worker::new(
        identity.node_id.clone(),
        runtimes.clone(),
        assign_rx,
        report_tx,
    )
    .with_online(session.online.clone(), &cfg.data_dir);
    tasks.spawn("worker", worker.run(shutdown.clone()));
    tasks.spawn("refuse-inbound", refuse_inbound(inbound, shutdown.clone()));
    api_switch.serve(api::worker::router(api::worker::WorkerApi {
        node_id: identity.node_id.clone(),
        node_name: cfg.name.clone(),
        raft_id: identity.raft_id,
        cluster_id: identity.cluster_id.clone(),
        default_runtime: runtimes.default_kind().to_string(),
        membership: membership.clone(),
        net: net.clone(),
        managers: session.managers.clone(),
    }));
    tracing::info!(api = %cfg.api, "API serving this worker");
    announce.cluster_id = identity.cluster_id.clone();
    announce.role = NodeRole::Worker;
    announce.proposal = Vec::new();
    membership.set_self(announce).await;
    if !registered {
        // A restart: what this node says about itself (address, labels,
        // runtimes) may have changed. A manager may not be up yet.
        let (net, mut managers, origin) = (net.clone(), session.managers.clone(), identity.raft_id);
        let mut stop = shutdown.clone();
        tasks.spawn("register", async move {
            loop {
                let list = managers.borrow_and_update().clone();
                match crate::worker::session::propose_via(
                    &net,
                    &list,
                    origin,
                    Command::UpsertNode(me.clone()),
                )
                .await
                {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot register this node yet: retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let mut role = session.role.clone();
    let ended = loop {
        tokio::select! {
            _ = wait_for_signal() => break Ended::Stopped,
            ended = tasks.next_ended() => match ended {
                Ok(name) => tracing::debug!(task = name, "task ended"),
                Err(e) => {
                    tasks.shutdown(STOP_BOUND).await;
                    bail!("an agent task crashed: {e}");
                }
            },
            r = role.changed() => {
                if r.is_err() {
                    break Ended::Stopped;
                }
                if *role.borrow_and_update() == NodeRole::Manager {
                    break Ended::RoleChanged(NodeRole::Manager);
                }
            }
        }
    };
    if let Ended::RoleChanged(r) = &ended {
        identity.role = *r;
        identity.persist(&cfg.data_dir)?;
        // Its (empty) raft log: a manager whose log is missing refuses to start.
        std::fs::create_dir_all(cfg.data_dir.join("raft"))
            .context("cannot create the raft log directory")?;
        tracing::info!("this node was promoted: starting its raft member");
    } else {
        tracing::info!("shutting down (tasks keep running)");
    }
    tasks.shutdown(STOP_BOUND).await;
    let _ = tokio::time::timeout(STOP_BOUND, net.stopped()).await;
    Ok(ended)
}

/// A worker answers no cluster requests (Raft, joins, sessions): it says so.
async fn refuse_inbound(
    mut rx: tokio::sync::mpsc::Receiver<net::Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let inb = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.changed() => return,
        };
        let _ = inb.reply.send(skein_protocol::wire::WireReply::Error(
            "retry: this node is a worker: ask a manager".into(),
        ));
    }
}

/// Asks the managers at `addrs` to let this node in. Transient trouble (no
/// leader yet, a manager restarting) is retried for a while; a refused
/// token is final.
async fn join_cluster(
    net: &NetHandle,
    addrs: &[String],
    token: &JoinToken,
    me: &Node,
    raft_id: u64,
) -> anyhow::Result<skein_protocol::wire::JoinAccepted> {
    let req = JoinRequest {
        token: token.to_string(),
        node: me.clone(),
        peer_id: net.peer_id(),
        raft_id,
    };
    let mut last_err = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        for addr in addrs {
            match join::request_join(net, addr, req.clone()).await {
                Ok(a) => return Ok(a),
                Err(e) => {
                    let text = format!("{e:#}");
                    let transient =
                        text.contains("retry") || text.contains("cannot reach the leader");
                    if !transient {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("join: no address to join")))
}

/// The managers named in a join answer, as a session knows managers (their
/// names and API addresses come with the first session answer).
pub(crate) fn join_managers(accepted: &skein_protocol::wire::JoinAccepted) -> Vec<ManagerInfo> {
    accepted
        .managers
        .iter()
        .map(|(rid, peer, addr)| ManagerInfo {
            node_id: String::new(),
            name: format!("manager at {addr}"),
            peer_id: peer.clone(),
            addr: addr.clone(),
            api_addr: String::new(),
            raft_id: *rid,
            leader: false,
        })
        .collect()
}

/// The address other nodes dial: --advertise, else the listen address with
/// an unspecified host replaced by loopback (set --advertise on real hosts).
fn advertised(cfg: &AgentConfig, bound: std::net::SocketAddr) -> String {
    if let Some(a) = &cfg.advertise {
        return a.clone();
    }
    if bound.ip().is_unspecified() {
        if let Some(ip) = lan_ipv4() {
            tracing::info!(
                listen = %bound,
                "listening on all interfaces: other nodes are told {ip}:{} (set --advertise HOST:PORT to choose)",
                bound.port()
            );
            return format!("{ip}:{}", bound.port());
        }
        tracing::warn!(
            listen = %bound,
            "listening on all interfaces without --advertise: other nodes are told 127.0.0.1:{}; set --advertise HOST:PORT for nodes on other hosts",
            bound.port()
        );
        return format!("127.0.0.1:{}", bound.port());
    }
    bound.to_string()
}

/// The first IPv4 address of an interface that is up and not loopback
/// (what a box with one LAN link should advertise).
fn lan_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list that is only read here and freed with
    // freeifaddrs below; every pointer is checked for null before use.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a non-null node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
        let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
        if !ifa.ifa_addr.is_null() && up && !lo {
            // SAFETY: ifa_addr is non-null; its family says how to read it.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_link_local() {
                    found = Some(ip);
                    break;
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    found
}

/// Keeps a connection to every other manager and tells the network where
/// every other node is (addresses from the replicated node table: a worker
/// is dialled only when a request needs it, its session comes here by
/// itself), and refuses the peers of removed nodes.
async fn keep_peers_connected(
    raft: crate::raft::RaftHandle,
    net: NetHandle,
    self_id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sub = raft.subscribe();
    let mut known: std::collections::HashMap<String, (String, bool)> = Default::default();
    let mut denied = std::collections::BTreeSet::new();
    let mut seen: Option<u64> = None;
    loop {
        let state = sub.borrow_and_update().state.clone();
        // Published views change with every Raft step, who the peers are
        // with a few applied entries: a pass over the nodes only then.
        let key = state.peers_key();
        if seen != Some(key) {
            // Removed nodes are refused at connection (see cluster::authority),
            // a moment after their removal: a node that asked to leave gets
            // its answer first.
            for peer in state.removed_peers.iter() {
                if denied.contains(peer) {
                    continue;
                }
                let (net, peer2) = (net.clone(), peer.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    net.deny(&peer2);
                });
                denied.insert(peer.clone());
            }
            let mut present = std::collections::HashSet::with_capacity(state.nodes.len());
            for n in state.nodes.values() {
                if n.id == self_id || n.peer_id.is_empty() || n.addr.is_empty() {
                    continue;
                }
                present.insert(n.peer_id.as_str());
                let manager = n.role == skein_protocol::NodeRole::Manager;
                let same = known
                    .get(&n.peer_id)
                    .is_some_and(|(addr, m)| *addr == n.addr && *m == manager);
                if !same {
                    // Managers are kept connected (Raft); the other nodes come
                    // to this one (their sessions) and are only dialled when a
                    // request needs them (logs, a probe).
                    if manager {
                        net.add_peer(&n.peer_id, &n.addr);
                    } else {
                        net.remove_peer(&n.peer_id);
                        net.learn(&n.peer_id, &n.addr);
                    }
                    known.insert(n.peer_id.clone(), (n.addr.clone(), manager));
                }
            }
            let gone: Vec<String> = known
                .keys()
                .filter(|peer| !present.contains(peer.as_str()))
                .cloned()
                .collect();
            for peer in gone {
                net.remove_peer(&peer);
                known.remove(&peer);
            }
            seen = Some(key);
            // At most two passes a second: while a fleet's nodes churn (a
            // failover's takeovers, thousands of verdicts), a pass per
            // applied change was a tenth of a manager's CPU at 5,000 nodes.
            tokio::select! {
                _ = tokio::time::sleep(PEER_PASS_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            r = sub.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// The least time between two passes of [`keep_peers_connected`].
const PEER_PASS_EVERY: Duration = Duration::from_millis(500);

async fn wait_for_leader(
    raft: &crate::raft::RaftHandle,
    within: Option<Duration>,
) -> anyhow::Result<()> {
    let mut sub = raft.subscribe();
    let deadline = async {
        match within {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        if sub.borrow_and_update().leader_id != 0 {
            return Ok(());
        }
        tokio::select! {
            r = sub.changed() => r.context("raft stopped during start-up")?,
            _ = &mut deadline => bail!(
                "no raft leader after {:?}: this node cannot reach a quorum",
                within.unwrap_or_default()
            ),
        }
    }
}

/// Why a node whose Raft log is gone must not start (None: it may). See
/// the call site for the reasons.
fn lost_log_refusal(identity: &Identity, cfg: &AgentConfig) -> Option<String> {
    if cfg.force_new_cluster || (!identity.founder && identity.role != NodeRole::Manager) {
        return None;
    }
    Some(format!(
        "{} holds this node's identity ({}, a manager of cluster {}) but its raft log {} is gone: \
         starting would found a second cluster or vote with forgotten votes. To rejoin, remove the \
         old node on a manager (`skein node rm --force {}`), empty --data-dir and join again with \
         a token (`skein join-token manager` on a manager); to found a new cluster from this node \
         alone, start it with --force-new-cluster",
        cfg.data_dir.join("node.json").display(),
        identity.node_id,
        identity.cluster_id,
        cfg.data_dir.join("raft").display(),
        cfg.name,
    ))
}

/// What a node does once a leader is known: the founder records the
/// cluster's identity, the node announces its cluster and role on gossip
/// (bootstrapping boxes then join it) and, unless its join did, registers
/// what it says about itself (address, labels and runtimes may have changed
/// since the last start).
struct Introduce {
    proposer: Proposer,
    membership: MembershipHandle,
    identity: Identity,
    announce: Announce,
    founding_set: Vec<String>,
    register: Option<Node>,
    cluster_key: Option<String>,
}

impl Introduce {
    /// Waits for a leader (at most `deadline`, else for as long as it takes).
    async fn run(self, tasks: &mut TaskSet, deadline: Option<Duration>) -> anyhow::Result<()> {
        let raft = self.proposer.raft().clone();
        wait_for_leader(&raft, deadline).await?;
        if self.identity.founder {
            init_cluster(&self.proposer, &self.identity, self.cluster_key.as_deref()).await?;
        }
        let mut announce = self.announce;
        announce.cluster_id = self.identity.cluster_id.clone();
        announce.role = self.identity.role;
        announce.proposal = self.founding_set;
        self.membership.set_self(announce.clone()).await;
        let stop = tasks.stop_signal();
        tasks.spawn(
            "announce-role",
            announce_role(
                raft.clone(),
                self.membership.clone(),
                self.identity.node_id.clone(),
                announce,
                stop,
            ),
        );
        if let Some(me) = self.register {
            let name = me.name.clone();
            // A worker keeps trying: it may have started with no manager up.
            loop {
                match self.proposer.propose(Command::UpsertNode(me.clone())).await {
                    Ok(()) => break,
                    Err(e) if deadline.is_none() => {
                        tracing::info!(error = %e, "cannot register this node yet: retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot register node {name}"))
                    }
                }
            }
        }
        Ok(())
    }
}

/// The founder records the cluster's identity and first join secrets once
/// (derived from the cluster key for a self-formed cluster, so every box
/// with the key can join by itself).
async fn init_cluster(
    proposer: &Proposer,
    identity: &Identity,
    key: Option<&str>,
) -> anyhow::Result<()> {
    if !proposer
        .raft()
        .current()
        .state
        .secrets
        .cluster_id
        .is_empty()
    {
        return Ok(());
    }
    proposer
        .propose(Command::InitCluster(skein_protocol::ClusterSecrets {
            cluster_id: identity.cluster_id.clone(),
            cluster_key: identity.cluster_key.clone(),
            worker_secret: key.map_or_else(
                || crate::util::random_hex(16),
                |k| bootstrap::derive_secret(k, NodeRole::Worker),
            ),
            manager_secret: key.map_or_else(
                || crate::util::random_hex(16),
                |k| bootstrap::derive_secret(k, NodeRole::Manager),
            ),
        }))
        .await
        .context("cannot record the cluster's identity")?;
    Ok(())
}

/// This node as it describes itself to the cluster.
fn self_node(
    cfg: &AgentConfig,
    identity: &Identity,
    runtimes: &Runtimes,
    advertise: &str,
    peer_id: &str,
    role: NodeRole,
) -> Node {
    let now = crate::util::now_ms();
    Node {
        id: identity.node_id.clone(),
        name: cfg.name.clone(),
        role,
        availability: Default::default(),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: advertise.to_string(),
        api_addr: cfg.api.to_string(),
        peer_id: peer_id.to_string(),
        raft_id: identity.raft_id,
        region: cfg.region.clone(),
        labels: cfg.labels.clone(),
        description: describe(runtimes),
        manager_status: (role == NodeRole::Manager).then(|| ManagerStatus {
            raft_id: identity.raft_id,
            addr: advertise.to_string(),
            leader: false,
            reachability: "reachable".into(),
        }),
        created_at: now,
        updated_at: now,
        last_seen: now,
        session: String::new(),
    }
}

/// What this node says about itself on the gossip topic.
fn self_announce(
    cfg: &AgentConfig,
    identity: &Identity,
    runtimes: &Runtimes,
    advertise: &str,
    peer_id: &str,
) -> Announce {
    let d = describe(runtimes);
    Announce {
        peer: peer_id.to_string(),
        incarnation: 0,
        node_id: identity.node_id.clone(),
        name: cfg.name.clone(),
        role: identity.role,
        region: cfg.region.clone(),
        addrs: vec![advertise.to_string()],
        labels: cfg.labels.clone(),
        resources: d.resources,
        runtimes: d.runtimes,
        cluster_id: identity.cluster_id.clone(),
        bootstrap_expect: cfg.bootstrap_expect,
        proposal: Vec::new(),
    }
}

/// Keeps the role in this node's gossip announce in step with the
/// replicated node table (`node promote`/`demote`, the voter keeper), so
/// every node's `GET /v1/members` shows it. `announce` is what this node
/// announces now; only its role changes here.
async fn announce_role(
    raft: crate::raft::RaftHandle,
    membership: MembershipHandle,
    node_id: String,
    mut announce: Announce,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sub = raft.subscribe();
    loop {
        let role = sub
            .borrow_and_update()
            .state
            .nodes
            .get(&node_id)
            .map(|n| n.role);
        if let Some(role) = role.filter(|r| *r != announce.role) {
            tracing::info!(?role, was = ?announce.role, "announcing this node's new role");
            announce.role = role;
            membership.set_self(announce.clone()).await;
        }
        tokio::select! {
            r = sub.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

enum Bootstrapped {
    Found {
        set: Vec<String>,
    },
    Join {
        cluster_id: String,
        via: Vec<String>,
        role: NodeRole,
    },
}

/// Waits until this box founds the cluster (with the boxes that confirmed)
/// or finds one to join. See [`bootstrap`] for the rules.
async fn bootstrap_phase(
    cfg: &AgentConfig,
    net: &NetHandle,
    membership: &MembershipHandle,
    mut me: Announce,
    status: &watch::Sender<String>,
) -> anyhow::Result<Bootstrapped> {
    let mut announces = membership.announces();
    let mut last_why = String::new();
    let mut last_log = tokio::time::Instant::now();
    let peer = net.peer_id();
    tracing::info!(
        expect = cfg.bootstrap_expect,
        "looking for boxes with the same cluster key (mDNS{} and gossip)",
        if cfg.join.is_empty() {
            ""
        } else {
            ", --join seeds"
        }
    );
    loop {
        let alive = announces.borrow_and_update().clone();
        let others: Vec<&Announce> = alive.values().collect();
        match bootstrap::decide(&peer, cfg.bootstrap_expect, &others) {
            bootstrap::Decision::Join {
                cluster_id,
                via,
                role,
            } if !via.is_empty() => {
                return Ok(Bootstrapped::Join {
                    cluster_id,
                    via,
                    role,
                })
            }
            bootstrap::Decision::Join { .. } => {}
            bootstrap::Decision::Found { set } => {
                if me.proposal != set {
                    me.proposal = set.clone();
                    membership.set_self(me.clone()).await;
                }
                match membership::confirm_round(net, &set).await {
                    Ok(()) => return Ok(Bootstrapped::Found { set }),
                    Err(e) => {
                        tracing::info!(error = %e, "founding deferred: not every box confirmed");
                        status.send_replace(format!(
                            "{} is still forming its cluster (--bootstrap-expect {}): founding deferred, not every box confirmed ({e})",
                            cfg.name, cfg.bootstrap_expect
                        ));
                        let jitter = crate::util::random_u64() % 500;
                        tokio::time::sleep(Duration::from_millis(300 + jitter)).await;
                    }
                }
            }
            bootstrap::Decision::Wait { why, proposal } => {
                if me.proposal != proposal {
                    me.proposal = proposal;
                    membership.set_self(me.clone()).await;
                }
                if why != last_why {
                    status.send_replace(format!(
                        "{} is still forming its cluster (--bootstrap-expect {}): {why}",
                        cfg.name, cfg.bootstrap_expect
                    ));
                }
                if why != last_why || last_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!("bootstrap: {why}");
                    last_why = why;
                    last_log = tokio::time::Instant::now();
                }
            }
        }
        tokio::select! {
            r = announces.changed() => r.context("membership stopped during bootstrap")?,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
