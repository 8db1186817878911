use super::*;
use proptest::prelude::*;
use skein_protocol::{NodeStatus, ServiceSpec, TaskStatus};

fn service(id: &str, name: &str) -> Service {
    Service {
        id: id.into(),
        spec: ServiceSpec::new(name, "sleep"),
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: 1,
        updated_at: 1,
    }
}

fn task(id: &str, svc: &str) -> Task {
    Task {
        id: id.into(),
        service_id: svc.into(),
        service_name: "web".into(),
        slot: Some(1),
        node_id: None,
        spec_version: 1,
        spec: ServiceSpec::new("web", "sleep"),
        desired_state: TaskState::Running,
        status: TaskStatus::default(),
        created_at: 1,
        restarts: Vec::new(),
    }
}

fn status(state: TaskState) -> TaskStatus {
    TaskStatus {
        state,
        ..Default::default()
    }
}

#[test]
fn duplicate_service_names_are_refused() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    st.apply(&Command::CreateService(service("a", "web")), &mut ev)
        .expect("first");
    let err = st
        .apply(&Command::CreateService(service("b", "web")), &mut ev)
        .expect_err("second");
    assert_eq!(err, ApplyError::ServiceExists("web".into()));
    assert_eq!(st.services.len(), 1);
}

#[test]
fn stale_updates_are_refused() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    st.apply(&Command::CreateService(service("a", "web")), &mut ev)
        .expect("create");
    let update = |v| Command::UpdateService {
        id: "a".into(),
        expected_version: v,
        spec: ServiceSpec::new("web", "sleep2"),
        previous_spec: None,
        at: 2,
    };
    st.apply(&update(1), &mut ev).expect("current version");
    assert_eq!(st.services["a"].version, 2);
    assert!(matches!(
        st.apply(&update(1), &mut ev),
        Err(ApplyError::VersionConflict { found: 2, .. })
    ));
}

#[test]
fn a_failing_batch_changes_nothing() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    let before = st.clone();
    let res = st.apply(
        &Command::Batch(vec![
            Command::CreateService(service("a", "web")),
            Command::CreateTasks(vec![task("t1", "a")]),
            Command::RemoveService {
                id: "nope".into(),
                at: 3,
            },
        ]),
        &mut ev,
    );
    assert!(res.is_err());
    assert_eq!(st, before);
    assert!(ev.is_empty());
}

#[test]
fn removing_a_service_shuts_its_tasks_down() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    st.apply(&Command::CreateService(service("a", "web")), &mut ev)
        .expect("create");
    st.apply(&Command::CreateTasks(vec![task("t1", "a")]), &mut ev)
        .expect("tasks");
    st.apply(
        &Command::RemoveService {
            id: "a".into(),
            at: 2,
        },
        &mut ev,
    )
    .expect("remove");
    assert!(st.services.is_empty());
    assert_eq!(st.tasks["t1"].desired_state, TaskState::Shutdown);
}

#[test]
fn lookups_by_name_id_and_prefix() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    st.apply(&Command::CreateService(service("abc123", "web")), &mut ev)
        .expect("create");
    st.apply(&Command::CreateService(service("abd456", "db")), &mut ev)
        .expect("create");
    assert_eq!(
        st.find_service("web").map(|s| s.id.as_str()),
        Some("abc123")
    );
    assert_eq!(
        st.find_service("abd").map(|s| s.id.as_str()),
        Some("abd456")
    );
    assert!(st.find_service("ab").is_none(), "ambiguous prefix");
    assert!(st.find_service("").is_none());
    assert!(st.find_service("zzz").is_none());
}

fn any_state() -> impl Strategy<Value = TaskState> {
    prop_oneof![
        Just(TaskState::New),
        Just(TaskState::Pending),
        Just(TaskState::Assigned),
        Just(TaskState::Starting),
        Just(TaskState::Running),
        Just(TaskState::Complete),
        Just(TaskState::Failed),
        Just(TaskState::Shutdown),
        Just(TaskState::Rejected),
        Just(TaskState::Orphaned),
    ]
}

proptest! {
    /// Whatever order status reports and desired-state changes arrive in, a
    /// task's observed and desired states never move backwards.
    #[test]
    fn task_states_only_move_forward(
        ops in proptest::collection::vec((any::<bool>(), any_state()), 1..40)
    ) {
        let mut st = ClusterState::default();
        let mut ev = Vec::new();
        st.apply(&Command::CreateTasks(vec![task("t", "s")]), &mut ev).expect("create");
        let mut last = (TaskState::New, TaskState::Running);
        for (is_status, state) in ops {
            let cmd = if is_status {
                Command::SetTaskStatus(vec![("t".into(), status(state))])
            } else {
                Command::SetDesiredState(vec![("t".into(), state)])
            };
            st.apply(&cmd, &mut ev).expect("apply");
            let t = &st.tasks["t"];
            prop_assert!(t.status.state >= last.0);
            prop_assert!(t.desired_state >= last.1);
            last = (t.status.state, t.desired_state);
        }
    }
}

#[test]
fn an_unplaced_task_told_to_stop_is_done() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    let mut t = task("t1", "a");
    t.status.state = TaskState::Pending;
    st.apply(&Command::CreateTasks(vec![t]), &mut ev)
        .expect("create");
    st.apply(
        &Command::SetDesiredState(vec![("t1".into(), TaskState::Shutdown)]),
        &mut ev,
    )
    .expect("stop");
    assert_eq!(st.tasks["t1"].status.state, TaskState::Shutdown);
}

#[test]
fn join_tokens_are_checked_and_rotated() {
    use skein_protocol::{ClusterSecrets, NodeRole};
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    let secrets = ClusterSecrets {
        cluster_id: "c0ffee".into(),
        cluster_key: "ab".repeat(32),
        worker_secret: "1".repeat(32),
        manager_secret: "2".repeat(32),
    };
    st.apply(&Command::InitCluster(secrets.clone()), &mut ev)
        .expect("init");
    // A second InitCluster changes nothing.
    let mut other = secrets.clone();
    other.cluster_id = "bad".into();
    st.apply(&Command::InitCluster(other), &mut ev)
        .expect("init again");
    assert_eq!(st.cluster_id, "c0ffee");
    let worker = st.join_token(NodeRole::Worker).expect("token");
    let manager = st.join_token(NodeRole::Manager).expect("token");
    assert_eq!(st.check_join_token(&worker), Ok(NodeRole::Worker));
    assert_eq!(st.check_join_token(&manager), Ok(NodeRole::Manager));
    st.apply(
        &Command::RotateJoinSecret {
            role: NodeRole::Worker,
            secret: "3".repeat(32),
        },
        &mut ev,
    )
    .expect("rotate");
    assert!(st
        .check_join_token(&worker)
        .expect_err("rotated")
        .contains("rotated"));
    assert_eq!(st.check_join_token(&manager), Ok(NodeRole::Manager));
    assert!(st.check_join_token("garbage").is_err());
}

#[test]
fn a_new_template_starts_an_update_and_any_update_resumes_a_pause() {
    use skein_protocol::{UpdateState, UpdateStatus};
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    st.apply(&Command::CreateService(service("a", "web")), &mut ev)
        .expect("create");
    let update = |st: &ClusterState, f: &dyn Fn(&mut ServiceSpec)| {
        let s = &st.services["a"];
        let mut spec = s.spec.clone();
        f(&mut spec);
        Command::UpdateService {
            id: "a".into(),
            expected_version: s.version,
            spec,
            previous_spec: Some(s.spec.clone()),
            at: 7,
        }
    };
    // A scale is not a rollout.
    let c = update(&st, &|s| s.replicas = Some(3));
    st.apply(&c, &mut ev).expect("scale");
    assert_eq!(st.services["a"].update_status, None);
    let c = update(&st, &|s| s.command = vec!["2".into()]);
    st.apply(&c, &mut ev).expect("update");
    let u = st.services["a"].update_status.clone().expect("status");
    assert_eq!((u.state, u.started), (UpdateState::Updating, 7));
    // Paused, then a scale alone resumes it.
    st.services.get_mut("a").expect("svc").update_status = Some(UpdateStatus::begin(
        UpdateState::Paused,
        7,
        3,
        "update paused: x",
    ));
    let c = update(&st, &|s| s.replicas = Some(4));
    st.apply(&c, &mut ev).expect("resume");
    assert_eq!(
        st.services["a"].update_status.as_ref().map(|u| u.state),
        Some(UpdateState::Updating)
    );
}

#[test]
fn manual_rollbacks_swap_specs_and_automatic_ones_clear_the_previous() {
    use skein_protocol::UpdateState;
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    let mut svc = service("a", "web");
    let old = svc.spec.clone();
    let mut new = old.clone();
    new.command = vec!["2".into()];
    svc.spec = new.clone();
    svc.previous_spec = Some(old.clone());
    st.apply(&Command::CreateService(svc), &mut ev)
        .expect("create");
    let rollback = |st: &ClusterState, keep: bool| Command::RollbackService {
        id: "a".into(),
        expected_version: st.services["a"].version,
        spec: st.services["a"].previous_spec.clone().expect("previous"),
        keep_previous: keep,
        message: "rollback started: test".into(),
        at: 9,
    };
    let c = rollback(&st, true);
    st.apply(&c, &mut ev).expect("rollback");
    let s = &st.services["a"];
    assert_eq!((&s.spec, s.previous_spec.as_ref()), (&old, Some(&new)));
    assert_eq!(
        s.update_status.as_ref().map(|u| u.state),
        Some(UpdateState::RollbackStarted)
    );
    let c = rollback(&st, false);
    st.apply(&c, &mut ev).expect("back again, automatically");
    let s = &st.services["a"];
    assert_eq!((&s.spec, s.previous_spec.as_ref()), (&new, None));
    // A stale rollback is refused.
    let stale = Command::RollbackService {
        id: "a".into(),
        expected_version: 1,
        spec: old,
        keep_previous: true,
        message: String::new(),
        at: 10,
    };
    assert!(matches!(
        st.apply(&stale, &mut ev),
        Err(ApplyError::VersionConflict { .. })
    ));
}

#[test]
fn a_stack_keeps_its_last_ten_versions() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    for i in 0..13u64 {
        let mut spec = ServiceSpec::new("app_web", "sleep");
        spec.command = vec![i.to_string()];
        st.apply(
            &Command::RecordStackVersion {
                stack: "app".into(),
                services: vec![spec],
                at: i,
            },
            &mut ev,
        )
        .expect("record");
    }
    let v = &st.stacks["app"];
    assert_eq!(v.len(), skein_protocol::STACK_VERSIONS);
    assert_eq!(v.first().map(|x| x.version), Some(4));
    assert_eq!(v.last().map(|x| x.version), Some(13));
    assert_eq!(
        v.last().map(|x| x.services[0].command.clone()),
        Some(vec!["12".to_string()])
    );
}

fn once(seq: u64, cmd: Command) -> Command {
    Command::Once {
        request: RequestId { origin: 7, seq },
        cmd: Box::new(cmd),
    }
}

#[test]
fn a_request_sent_twice_is_applied_once_and_answered_alike() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    let create = once(1, Command::CreateService(service("a", "web")));
    st.apply(&create, &mut ev).expect("first attempt");
    let after_first = st.services.clone();
    ev.clear();
    // The retry of the same request: same (successful) verdict, no change,
    // although applying the bare command again would be refused.
    st.apply(&create, &mut ev)
        .expect("the retry answers like the first");
    assert!(ev.is_empty(), "a repeat changes nothing: {ev:?}");
    assert_eq!(st.services, after_first);
    // Another request with the same content is a new write and is refused.
    let err = st
        .apply(
            &once(2, Command::CreateService(service("b", "web"))),
            &mut ev,
        )
        .expect_err("a second create under a new id");
    assert_eq!(err, ApplyError::ServiceExists("web".into()));
    // ...and its repeat gets the same refusal, even once the name is free.
    st.apply(
        &Command::RemoveService {
            id: "a".into(),
            at: 2,
        },
        &mut ev,
    )
    .expect("remove");
    st.services.clear();
    let again = st
        .apply(
            &once(2, Command::CreateService(service("b", "web"))),
            &mut ev,
        )
        .expect_err("the repeat keeps the first verdict");
    assert_eq!(again, ApplyError::ServiceExists("web".into()));
    assert!(st.services.is_empty());
}

#[test]
fn request_verdicts_are_bounded_and_survive_a_snapshot() {
    let mut st = ClusterState::default();
    let mut ev = Vec::new();
    for seq in 0..(RECENT_REQUESTS as u64 + 10) {
        st.apply(&once(seq, Command::RemoveTasks(Vec::new())), &mut ev)
            .expect("apply");
    }
    assert_eq!(st.recent_requests.len(), RECENT_REQUESTS);
    let oldest = RequestId { origin: 7, seq: 0 };
    let newest = RequestId {
        origin: 7,
        seq: RECENT_REQUESTS as u64 + 9,
    };
    assert!(st.recent_requests.get(&oldest).is_none());
    assert!(st.recent_requests.get(&newest).is_some());
    let bytes = skein_protocol::codec::encode(&st).expect("encode");
    let back: ClusterState = skein_protocol::codec::decode(&bytes).expect("decode");
    assert_eq!(back, st);
}

/// The roster stamp moves with who the peers are, not with a worker's
/// verdict or session move (thousands of those in a 5,000-node rollout,
/// each of which made every node-walking pass run again); the sessions
/// stamp moves with the session moves; a verdict that changes nothing
/// writes nothing.
#[test]
fn the_roster_moves_with_the_peers_and_not_with_worker_verdicts() {
    let mut s = ClusterState::default();
    let mut ev = Vec::new();
    let mut m = crate::orchestrator::tests::node("m1");
    m.peer_id = "peer-m1".into();
    let mut w = crate::orchestrator::tests::node("w1");
    w.role = skein_protocol::NodeRole::Worker;
    w.peer_id = "peer-w1".into();
    let r0 = s.peers_key();
    s.apply(&Command::UpsertNode(m.clone()), &mut ev)
        .expect("m1");
    s.apply(&Command::UpsertNode(w.clone()), &mut ev)
        .expect("w1");
    assert_ne!(s.peers_key(), r0, "a new node is a new peer");
    let verdict = |by: &str, status: NodeStatus| Command::NodeVerdicts {
        by: by.into(),
        verdicts: vec![("w1".into(), status, String::new())],
        at: 5,
    };
    // A worker taken over, marked down, ready again: the roster stays.
    let (r1, j1, t1) = (s.peers_key(), s.judges_key(), s.nodes.stamp());
    s.apply(&verdict("m1", NodeStatus::Ready), &mut ev)
        .expect("take");
    assert_eq!(s.nodes["w1"].session, "m1");
    assert_eq!(s.peers_key(), r1);
    assert_ne!(s.judges_key(), j1, "w1's judge changed");
    let (j2, t2) = (s.judges_key(), s.nodes.stamp());
    assert_ne!(t2, t1);
    // The same verdict again writes nothing.
    s.apply(&verdict("m1", NodeStatus::Ready), &mut ev)
        .expect("again");
    assert_eq!((s.judges_key(), s.nodes.stamp()), (j2, t2));
    s.apply(&verdict("m1", NodeStatus::Down), &mut ev)
        .expect("down");
    assert_eq!(s.nodes["w1"].status, NodeStatus::Down);
    assert_eq!(s.judges_key(), j2, "a worker's verdict moves neither stamp");
    // The same node describing itself again (an agent restart): no change.
    s.apply(&Command::UpsertNode(w.clone()), &mut ev)
        .expect("w1 again");
    assert_eq!(s.peers_key(), r1);
    // A manager's status, a new address, a removal: the roster moves.
    let mgr_down = Command::SetNodeStatus {
        id: "m1".into(),
        status: NodeStatus::Down,
        message: String::new(),
        at: 6,
    };
    s.apply(&mgr_down, &mut ev).expect("m1 down");
    let r2 = s.peers_key();
    assert_ne!(r2, r1, "the managers a session may use changed");
    w.addr = "10.0.0.9:7946".into();
    s.apply(&Command::UpsertNode(w), &mut ev).expect("w1 moved");
    let r3 = s.peers_key();
    assert_ne!(r3, r2);
    s.apply(&Command::RemoveNode { id: "w1".into() }, &mut ev)
        .expect("rm");
    assert_ne!(s.peers_key(), r3);
}
