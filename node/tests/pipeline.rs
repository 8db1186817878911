//! The whole agent pipeline in one process: Raft over a real sled log, the
//! orchestrator, the dispatcher and a worker on the fake runtime. What goes
//! in is a service; what comes out is tasks started, restarted and stopped.

use skein_node::cluster::forward::Proposer;
use skein_node::cluster::raft_link::PeerBook;
use skein_node::dispatcher::Dispatcher;
use skein_node::orchestrator::Orchestrator;
use skein_node::raft::{RaftHandle, RaftNode, RaftOptions};
use skein_node::runtime::fake::FakeRuntime;
use skein_node::worker::{Runtimes, Worker};
use skein_protocol::{
    Command, Dur, ManagerStatus, Node, NodeDescription, NodeRole, NodeStatus, RuntimeKind, Service,
    ServiceSpec, TaskState,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

async fn until(h: &RaftHandle, what: &str, f: impl Fn(&skein_node::store::ClusterState) -> bool) {
    let mut sub = h.subscribe();
    let ok = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if f(&sub.borrow_and_update().state) {
                return;
            }
            if sub.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting until {what}");
}

async fn until_fake(fake: &FakeRuntime, what: &str, f: impl Fn(&FakeRuntime) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f(fake) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn running(s: &skein_node::store::ClusterState, svc: &str) -> usize {
    s.tasks_of(svc)
        .filter(|t| t.status.state == TaskState::Running && t.desired_state == TaskState::Running)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_goes_in_and_tasks_come_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path().join("raft")).expect("sled");
    let opts = RaftOptions {
        tick: Duration::from_millis(20),
        ..Default::default()
    };
    let (node, raft) = RaftNode::open(&db, 42, opts).expect("raft");
    let (stop, stop_rx) = watch::channel(false);
    let raft_task = tokio::spawn(node.run(stop_rx.clone()));
    until(&raft, "a leader", |_| raft.current().is_leader).await;

    raft.propose(Command::UpsertNode(Node {
        id: "n1".into(),
        name: "edge-01".into(),
        role: NodeRole::Manager,
        availability: Default::default(),
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: String::new(),
        api_addr: String::new(),
        peer_id: String::new(),
        raft_id: 0,
        region: "default".into(),
        labels: Default::default(),
        description: NodeDescription {
            runtimes: vec![RuntimeKind::Process],
            ..Default::default()
        },
        manager_status: Some(ManagerStatus {
            raft_id: 42,
            ..Default::default()
        }),
        created_at: 0,
        updated_at: 0,
        last_seen: 0,
        session: String::new(),
    }))
    .await
    .expect("register node");

    let fake = FakeRuntime::new();
    let proposer = Proposer::new(raft.clone(), None, PeerBook::default());
    let (dispatcher, dispatch) = Dispatcher::new(raft.clone(), proposer);
    tokio::spawn(dispatcher.run(stop_rx.clone()));
    let assignments = dispatch.connect("n1".into()).await;
    let worker = Worker::new(
        "n1".into(),
        Runtimes::new(Arc::new(fake.clone())),
        assignments,
        dispatch.reporter(),
    )
    .with_poll_interval(Duration::from_millis(20));
    tokio::spawn(worker.run(stop_rx.clone()));
    tokio::spawn(Orchestrator::new(raft.clone(), stop_rx.clone()).run());

    let mut spec = ServiceSpec::new("web", "sleep");
    spec.replicas = Some(3);
    spec.restart_policy.delay = Dur::from_millis(100);
    raft.propose(Command::CreateService(Service {
        id: "svc".into(),
        spec: spec.clone(),
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: 0,
        updated_at: 0,
    }))
    .await
    .expect("create");
    until(&raft, "3 tasks run", |s| running(s, "svc") == 3).await;
    assert_eq!(fake.running().len(), 3);

    // A task dies: its slot gets a new task after the restart delay.
    let victim = fake.running()[0].clone();
    assert!(fake.exit(&victim, 1));
    until(&raft, "the failure is recorded", |s| {
        s.tasks
            .get(&victim)
            .is_some_and(|t| t.status.state == TaskState::Failed)
    })
    .await;
    until(&raft, "3 tasks run again", |s| running(s, "svc") == 3).await;
    assert_eq!(fake.started(), 4);

    // Scale down: two tasks are stopped, one keeps running.
    let svc = raft.current().state.services["svc"].clone();
    let mut smaller = svc.spec.clone();
    smaller.replicas = Some(1);
    raft.propose(Command::UpdateService {
        id: "svc".into(),
        expected_version: svc.version,
        spec: smaller,
        previous_spec: Some(svc.spec),
        at: 0,
    })
    .await
    .expect("scale");
    until_fake(&fake, "one task runs", |f| f.running().len() == 1).await;

    // Remove: everything stops and the tasks are reaped.
    raft.propose(Command::RemoveService {
        id: "svc".into(),
        at: 0,
    })
    .await
    .expect("remove");
    until_fake(&fake, "nothing runs", |f| f.running().is_empty()).await;
    until(&raft, "tasks are reaped", |s| s.tasks.is_empty()).await;

    let _ = stop.send(true);
    raft_task.await.expect("join").expect("raft stops cleanly");
}
