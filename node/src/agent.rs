//! `skein agent`: wires the actors of one node together and runs them until
//! SIGINT/SIGTERM. Owns the node's identity file (`<data-dir>/node.json`).
//!
//! Start-up order matters: the Raft log is replayed before anything reads
//! state; the worker connects (and so adopts live tasks) before the
//! orchestrator may replace anything; the API opens last. Shutdown stops the
//! API and the actors but leaves tasks running: a restarted agent adopts them.

use crate::api::{self, AppState};
use crate::dispatcher::Dispatcher;
use crate::orchestrator::Orchestrator;
use crate::raft::{RaftNode, RaftOptions};
use crate::runtime::docker;
use crate::runtime::process::ProcessRuntime;
use crate::worker::{Runtimes, Worker};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use skein_config::agent::{AgentConfig, RuntimeChoice};
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

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    if !cfg.join.is_empty() {
        bail!(
            "join = {:?}: joining an existing cluster is not available in this build yet; \
             start without --join/SKEIN_JOIN to found a new single-node cluster",
            cfg.join
        );
    }
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
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| {
        format!(
            "cannot create data dir {}: pick another with --data-dir",
            cfg.data_dir.display()
        )
    })?;
    let (identity, fresh) = Identity::load_or_new(&cfg.data_dir)?;
    let runtimes = build_runtimes(&cfg, &identity.node_id).await?;
    if fresh {
        identity.persist(&cfg.data_dir)?;
    }
    let db_path = cfg.data_dir.join("raft");
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
    tracing::info!(
        node = %cfg.name,
        node_id = %identity.node_id,
        data_dir = %cfg.data_dir.display(),
        "{}",
        if fresh { "starting a new cluster as its first manager" } else { "resuming from the data dir" }
    );
    let opts = RaftOptions {
        tick: Duration::from_millis(cfg.raft.tick_ms),
        election_ticks: cfg.raft.election_ticks as usize,
        heartbeat_ticks: cfg.raft.heartbeat_ticks as usize,
        snapshot_entries: cfg.raft.snapshot_entries,
    };
    let (raft_node, raft) = RaftNode::open(&db, identity.raft_id, opts)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut raft_task = tokio::spawn(raft_node.run(shutdown.clone()));

    wait_for_leader(&raft).await?;
    init_cluster(&raft, &identity).await?;
    register_self(&raft, &cfg, &identity, &runtimes).await?;

    let (dispatcher, dispatch) = Dispatcher::new(raft.clone());
    let dispatcher_task = tokio::spawn(dispatcher.run(shutdown.clone()));
    let assignments = dispatch.connect(identity.node_id.clone()).await;
    let worker = Worker::new(
        identity.node_id.clone(),
        runtimes.clone(),
        assignments,
        dispatch.reporter(),
    );
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let orchestrator_task = tokio::spawn(Orchestrator::new(raft.clone(), shutdown.clone()).run());

    let app = api::router(AppState {
        raft: raft.clone(),
        runtimes,
        node_id: identity.node_id.clone(),
        node_name: cfg.name.clone(),
        cluster_id: identity.cluster_id.clone(),
    });
    tracing::info!(api = %cfg.api, "API listening");
    let mut api_shutdown = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = api_shutdown.changed().await;
    });
    let server_task = tokio::spawn(async move { server.await });

    let raft_died = tokio::select! {
        _ = wait_for_signal() => None,
        r = &mut raft_task => Some(r),
    };
    if let Some(r) = raft_died {
        // The log is the only source of truth: without it this node must not go on.
        let _ = shutdown_tx.send(true);
        return match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("the raft node stopped unexpectedly")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the raft node failed")),
            Err(e) => Err(anyhow::anyhow!("the raft node crashed: {e}")),
        };
    }
    tracing::info!("shutting down (tasks keep running)");
    let _ = shutdown_tx.send(true);
    let bounded = Duration::from_secs(5);
    let _ = tokio::time::timeout(bounded, server_task).await;
    let _ = tokio::time::timeout(bounded, orchestrator_task).await;
    let _ = tokio::time::timeout(bounded, worker_task).await;
    let _ = tokio::time::timeout(bounded, dispatcher_task).await;
    if let Ok(Ok(Err(e))) = tokio::time::timeout(bounded, raft_task).await {
        return Err(e.into());
    }
    db.flush()?;
    Ok(())
}

async fn wait_for_leader(raft: &crate::raft::RaftHandle) -> anyhow::Result<()> {
    let mut sub = raft.subscribe();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    loop {
        if sub.borrow_and_update().leader_id != 0 {
            return Ok(());
        }
        tokio::select! {
            r = sub.changed() => r.context("raft stopped during start-up")?,
            _ = &mut deadline => bail!("no raft leader after 30s: this node cannot reach a quorum"),
        }
    }
}

/// The founder records the cluster's identity and first join secrets once.
async fn init_cluster(raft: &crate::raft::RaftHandle, identity: &Identity) -> anyhow::Result<()> {
    if !raft.current().state.secrets.cluster_id.is_empty() || identity.cluster_key.is_empty() {
        return Ok(());
    }
    raft.propose(Command::InitCluster(skein_protocol::ClusterSecrets {
        cluster_id: identity.cluster_id.clone(),
        cluster_key: identity.cluster_key.clone(),
        worker_secret: crate::util::random_hex(16),
        manager_secret: crate::util::random_hex(16),
    }))
    .await
    .context("cannot record the cluster's identity")?;
    Ok(())
}

async fn register_self(
    raft: &crate::raft::RaftHandle,
    cfg: &AgentConfig,
    identity: &Identity,
    runtimes: &Runtimes,
) -> anyhow::Result<()> {
    let now = crate::util::now_ms();
    let p = raft.current();
    let node = Node {
        id: identity.node_id.clone(),
        name: cfg.name.clone(),
        role: NodeRole::Manager,
        availability: Default::default(),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: cfg.listen.clone(),
        api_addr: cfg.api.to_string(),
        peer_id: String::new(),
        region: cfg.region.clone(),
        labels: cfg.labels.clone(),
        description: describe(runtimes),
        manager_status: Some(ManagerStatus {
            raft_id: identity.raft_id,
            addr: cfg.listen.clone(),
            leader: p.is_leader,
            reachability: "reachable".into(),
        }),
        created_at: now,
        updated_at: now,
        last_seen: now,
    };
    raft.propose(Command::UpsertNode(node))
        .await
        .with_context(|| format!("cannot register node {}", cfg.name))?;
    Ok(())
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
