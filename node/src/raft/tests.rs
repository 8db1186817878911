//! The driver against a real sled log: restarts never lose or repeat an
//! applied command, compaction keeps the state, refusals change nothing.

use super::*;
use raft::Storage as _;
use skein_protocol::{Service, ServiceSpec};

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
fn reopen(path: &std::path::Path) -> sled::Db {
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
