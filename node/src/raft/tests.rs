//! The driver against a real sled log: restarts never lose or repeat an
//! applied command, compaction keeps the state, refusals change nothing.

use super::storage::SledStorage;
use super::*;
use raft::Storage as _;
use skein_protocol::{Service, ServiceSpec};
use std::collections::HashMap;

fn service(i: u32) -> Command {
    Command::CreateService(Service {
        id: format!("id{i}"),
        spec: ServiceSpec::new(format!("svc{i}"), "sleep"),
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: 0,
        updated_at: 0,
    })
}

/// Opens the sled db at `path`, waiting for a just-dropped handle's
/// background flusher to let go of the file lock.
pub(crate) fn reopen(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reopen {}: {e}", path.display()),
        }
    }
}

fn opts() -> RaftOptions {
    RaftOptions {
        tick: Duration::from_millis(10),
        snapshot_entries: 5,
        ..Default::default()
    }
}

async fn leader(h: &RaftHandle) {
    let mut sub = h.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !sub.borrow_and_update().is_leader {
            sub.changed().await.expect("raft alive");
        }
    })
    .await
    .expect("a single voter leads");
}

struct Running {
    handle: RaftHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), RaftError>>,
}

async fn start(db: &sled::Db) -> Running {
    let (node, handle) = RaftNode::open(db, 7, opts()).expect("open");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(node.run(rx));
    leader(&handle).await;
    Running { handle, stop, task }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("join").expect("clean stop");
    }
}

#[tokio::test]
async fn state_survives_restarts_and_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft");
    let before = {
        let db = sled::open(&path).expect("sled");
        let r = start(&db).await;
        for i in 0..23 {
            r.handle.propose(service(i)).await.expect("propose");
        }
        // A refused command is answered with apply's verdict and changes nothing.
        let err = r.handle.propose(service(0)).await.expect_err("duplicate");
        assert!(matches!(
            err,
            ProposeError::Rejected(ApplyError::ServiceExists(_))
        ));
        let p = r.handle.current();
        assert_eq!(p.state.services.len(), 23);
        let state = p.state.clone();
        r.stop().await;
        let storage = SledStorage::open(&db).expect("storage");
        assert!(
            storage.first_index().expect("first") > 5,
            "the log was compacted behind a snapshot"
        );
        state
    };
    for round in 0..2 {
        let db = reopen(&path);
        let r = start(&db).await;
        let p = r.handle.current();
        assert_eq!(p.state.services, before.services, "round {round}");
        r.stop().await;
    }
    let db = reopen(&path);
    let r = start(&db).await;
    r.handle
        .propose(service(99))
        .await
        .expect("propose after restarts");
    assert_eq!(r.handle.current().state.services.len(), 24);
    r.stop().await;
}

#[tokio::test]
async fn proposals_batch_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("raft")).expect("sled");
    let r = start(&db).await;
    let mut joins = Vec::new();
    for i in 0..40 {
        let h = r.handle.clone();
        // Every other one is a duplicate of an earlier name.
        joins.push(tokio::spawn(async move { h.propose(service(i / 2)).await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for j in joins {
        match j.await.expect("join") {
            Ok(()) => ok += 1,
            Err(ProposeError::Rejected(_)) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, refused), (20, 20));
    r.stop().await;
}

// ---- several actors wired in memory ----

struct Cluster {
    _dir: tempfile::TempDir,
    dbs: HashMap<u64, sled::Db>,
    handles: HashMap<u64, RaftHandle>,
    stops: HashMap<u64, watch::Sender<bool>>,
    tasks: HashMap<u64, tokio::task::JoinHandle<Result<(), RaftError>>>,
}

fn cluster_opts() -> RaftOptions {
    RaftOptions {
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 1,
        snapshot_entries: 20,
    }
}

/// The out-of-band part of a `MsgSnapshot`, in memory: copies the image it names from the
/// sender's storage to the receiver's. False if the sender no longer has it.
fn carry_image(from: &RaftHandle, to: &RaftHandle, m: &Message) -> bool {
    if m.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
        return true;
    }
    let Some(Ok(desc)) = snapshot::Descriptor::decode(m.get_snapshot().get_data()) else {
        return true;
    };
    let sink = to.images();
    for seq in sink.begin(&desc).expect("stage") {
        match from.images().serve(desc.id, seq).expect("serve") {
            Some(bytes) => sink.put(&desc, seq, &bytes).expect("put"),
            None => return false,
        }
    }
    sink.finish(&desc).expect("verified");
    true
}

impl Cluster {
    /// Node 1 founds the cluster; `joiners` open empty logs to join it. Every node's
    /// outbound messages are routed to the addressee's `step`.
    async fn start(joiners: &[u64], opts: RaftOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut dbs = HashMap::new();
        let mut nodes = Vec::new();
        let mut handles = HashMap::new();
        for &id in std::iter::once(&1).chain(joiners) {
            let db = sled::open(dir.path().join(format!("n{id}"))).expect("sled");
            let (node, handle) = if id == 1 {
                RaftNode::open(&db, id, opts.clone()).expect("open")
            } else {
                RaftNode::open_joining(&db, id, opts.clone()).expect("open joining")
            };
            dbs.insert(id, db);
            handles.insert(id, handle);
            nodes.push((id, node));
        }
        let mut stops = HashMap::new();
        let mut tasks = HashMap::new();
        for (id, mut node) in nodes {
            let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
            node.set_outbound(out_tx);
            let peers = handles.clone();
            tokio::spawn(async move {
                while let Some(m) = out_rx.recv().await {
                    let (Some(from), Some(h)) = (peers.get(&m.from), peers.get(&m.to)) else {
                        continue;
                    };
                    if !carry_image(from, h, &m) {
                        from.report_snapshot(m.to, false).await;
                        continue;
                    }
                    h.step(m).await;
                }
            });
            let (stop, rx) = watch::channel(false);
            stops.insert(id, stop);
            tasks.insert(id, tokio::spawn(node.run(rx)));
        }
        Cluster {
            _dir: dir,
            dbs,
            handles,
            stops,
            tasks,
        }
    }

    fn h(&self, id: u64) -> &RaftHandle {
        &self.handles[&id]
    }

    async fn stop(&mut self, id: u64) {
        let _ = self.stops[&id].send(true);
        if let Some(task) = self.tasks.remove(&id) {
            task.await.expect("join").expect("clean stop");
        }
    }

    /// Waits until `f` holds for node `id`'s published view.
    async fn until(&self, id: u64, what: &str, f: impl Fn(&Published) -> bool) -> Arc<Published> {
        let mut sub = self.h(id).subscribe();
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let p = sub.borrow_and_update().clone();
                if f(&p) {
                    return p;
                }
                sub.changed().await.expect("raft alive");
            }
        })
        .await;
        match r {
            Ok(p) => p,
            Err(_) => panic!(
                "n{id}: timed out waiting for {what}: {:?}",
                self.h(id).current()
            ),
        }
    }

    /// Adds `id` as a learner, waits until it caught up, promotes it.
    async fn join(&self, leader: u64, id: u64) {
        self.h(leader).add_learner(id).await.expect("add learner");
        let commit = self.h(leader).current().commit;
        self.until(id, "the learner to catch up", |p| p.applied >= commit)
            .await;
        self.h(leader).add_voter(id).await.expect("promote");
    }
}

#[tokio::test]
async fn three_actors_form_a_cluster_and_refuse_what_raft_would() {
    let mut c = Cluster::start(&[2, 3], cluster_opts()).await;
    c.until(1, "n1 to lead", |p| p.is_leader).await;
    for i in 0..30 {
        c.h(1).propose(service(i)).await.expect("propose");
    }
    // Joining nodes start uninitialised: no voters, no leader, nothing applied.
    let p2 = c.h(2).current();
    assert!(p2.voters.is_empty() && p2.applied == 0 && !p2.is_leader);

    c.join(1, 2).await;
    c.join(1, 3).await;
    let p = c.until(1, "three voters", |p| p.voters == [1, 2, 3]).await;
    assert!(p.learners.is_empty());
    assert_eq!(
        p.progress.iter().map(|pr| pr.raft_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The joiners started from a snapshot (the log was compacted behind it).
    assert!(SledStorage::open(&c.dbs[&2])
        .expect("storage")
        .snapshot_data()
        .expect("snapshot")
        .is_some());

    c.h(1).propose(service(100)).await.expect("propose");
    for id in [2, 3] {
        let p = c
            .until(id, "the new service", |p| {
                p.state.services.len() == 31 && p.voters == [1, 2, 3]
            })
            .await;
        assert_eq!(p.leader_id, 1);
    }

    // What raft-rs would refuse or drop is refused up front, with a reason.
    assert!(matches!(
        c.h(2).propose(service(200)).await,
        Err(ProposeError::NotLeader { leader: 1 })
    ));
    assert!(matches!(
        c.h(1).remove_node(1).await,
        Err(ProposeError::LeaderMustTransfer)
    ));
    assert!(matches!(
        c.h(1).remove_node(9).await,
        Err(ProposeError::NotAMember(9))
    ));
    assert!(matches!(
        c.h(1).transfer_leader(9).await,
        Err(ProposeError::NotAVoter(9))
    ));
    assert!(matches!(
        c.h(2).add_voter(4).await,
        Err(ProposeError::NotLeader { .. })
    ));
    // Adding an existing voter is a no-op, answered at once.
    c.h(1).add_voter(3).await.expect("idempotent");

    // Leadership moves on request; the old leader can then be removed.
    c.h(1).transfer_leader(3).await.expect("transfer");
    c.until(3, "n3 to lead", |p| p.is_leader).await;
    c.h(3).remove_node(1).await.expect("remove the old leader");
    let p = c.until(2, "n1 gone", |p| p.voters == [2, 3]).await;
    assert_eq!(p.leader_id, 3);
    c.h(3)
        .propose(service(300))
        .await
        .expect("two voters commit");
    c.until(2, "the write after removal", |p| {
        p.state.services.len() == 32
    })
    .await;
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
}

#[tokio::test]
async fn a_reported_leader_crash_elects_at_once() {
    // A long election timeout (2-4 s): only the fast path can elect within a second.
    let opts = RaftOptions {
        tick: Duration::from_millis(20),
        election_ticks: 100,
        heartbeat_ticks: 2,
        snapshot_entries: 20,
    };
    let mut c = Cluster::start(&[2, 3], opts).await;
    c.until(1, "n1 to lead", |p| p.is_leader).await;
    c.join(1, 2).await;
    c.join(1, 3).await;
    c.h(1).propose(service(1)).await.expect("propose");
    for id in [2, 3] {
        c.until(id, "the service", |p| p.state.services.len() == 1)
            .await;
    }

    c.stop(1).await;
    let crashed = std::time::Instant::now();
    // The transport noticed the closed connections.
    c.h(2).peer_unreachable(1).await;
    c.h(3).peer_unreachable(1).await;
    let mut sub2 = c.h(2).subscribe();
    let mut sub3 = c.h(3).subscribe();
    let leader = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            for sub in [&mut sub2, &mut sub3] {
                let p = sub.borrow_and_update().clone();
                if p.is_leader {
                    return p.raft_id;
                }
            }
            tokio::select! {
                _ = sub2.changed() => {}
                _ = sub3.changed() => {}
            }
        }
    })
    .await
    .expect("a new leader well within the election timeout");
    let took = crashed.elapsed();
    c.h(leader)
        .propose(service(2))
        .await
        .expect("the new leader commits");
    eprintln!("new leader n{leader} {took:?} after the crash was reported");
    for id in [2, 3] {
        c.stop(id).await;
    }
}

#[tokio::test]
async fn an_unreported_crash_still_elects_after_the_timeout() {
    let mut c = Cluster::start(&[2, 3], cluster_opts()).await;
    c.until(1, "n1 to lead", |p| p.is_leader).await;
    c.join(1, 2).await;
    c.join(1, 3).await;
    c.stop(1).await;
    let p = c
        .until(2, "a new leader", |p| p.leader_id == 2 || p.leader_id == 3)
        .await;
    c.h(p.leader_id)
        .propose(service(5))
        .await
        .expect("the new leader commits");
    // A peer that is not the leader going away changes nothing.
    let follower = 5 - p.leader_id;
    c.h(follower).peer_unreachable(1).await;
    c.h(p.leader_id).peer_unreachable(follower).await;
    c.h(p.leader_id)
        .propose(service(6))
        .await
        .expect("still leading");
    for id in [2, 3] {
        c.stop(id).await;
    }
}
