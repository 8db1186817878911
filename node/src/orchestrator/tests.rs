//! Simulation of the orchestrator against an in-memory cluster: reconcile,
//! place, apply, and a fake worker that runs what it is assigned. Checks what
//! a user would see (`service ps`) after each step.

use super::*;
use crate::store::ClusterState;
use proptest::prelude::*;
use skein_protocol::{
    Availability, Node, NodeDescription, NodeResources, NodeStatus, RestartCondition, RuntimeKind,
    Service, ServiceMode, ServiceSpec, Task, TaskStatus, UpdateOrder,
};
use std::collections::{BTreeMap, BTreeSet};

pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        name: format!("name-{id}"),
        role: skein_protocol::NodeRole::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        status_message: String::new(),
        addr: String::new(),
        api_addr: String::new(),
        peer_id: String::new(),
        raft_id: 0,
        region: "default".into(),
        labels: BTreeMap::new(),
        description: NodeDescription {
            hostname: format!("host-{id}"),
            os: "linux".into(),
            arch: "x86_64".into(),
            resources: NodeResources::default(),
            runtimes: vec![RuntimeKind::Process],
            version: String::new(),
        },
        manager_status: None,
        created_at: 0,
        updated_at: 0,
        last_seen: 0,
        session: String::new(),
    }
}

pub struct Sim {
    pub state: ClusterState,
    pub now: u64,
    next: u64,
    /// Exit code the fake worker gives a task of this service instead of running it.
    pub crash: BTreeMap<String, i32>,
    /// Rounds scoped by events, as the actor runs them (see [`Scope`]);
    /// otherwise every round looks at everything.
    pub scoped: bool,
    events: Vec<crate::store::Event>,
    carried: Vec<crate::store::Event>,
    wake: Option<Millis>,
}

impl Sim {
    pub fn new(nodes: &[&str]) -> Sim {
        let mut state = ClusterState::default();
        for n in nodes {
            state.nodes.insert(n.to_string(), node(n));
        }
        Sim {
            state,
            now: 1_000_000,
            next: 0,
            crash: BTreeMap::new(),
            scoped: false,
            events: Vec::new(),
            carried: Vec::new(),
            wake: None,
        }
    }

    pub fn apply(&mut self, cmd: Command) {
        self.state.apply(&cmd, &mut self.events).expect("apply");
    }

    pub fn create(&mut self, spec: ServiceSpec) -> String {
        let id = format!("svc-{}", spec.name);
        self.apply(Command::CreateService(Service {
            id: id.clone(),
            spec,
            previous_spec: None,
            version: 1,
            update_status: None,
            created_at: self.now,
            updated_at: self.now,
        }));
        id
    }

    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut ServiceSpec)) {
        let svc = self.state.services[id].clone();
        let mut spec = svc.spec.clone();
        f(&mut spec);
        self.apply(Command::UpdateService {
            id: id.into(),
            expected_version: svc.version,
            spec,
            previous_spec: Some(svc.spec),
            at: self.now,
        });
    }

    /// One orchestrator round and one worker round; returns whether anything changed.
    pub fn step(&mut self) -> bool {
        let before = self.state.clone();
        let mut next = self.next;
        let mut ids = || {
            next += 1;
            format!("t{next:04}")
        };
        let scope = if !self.scoped || self.wake.is_some_and(|w| w <= self.now) {
            self.wake = None;
            Scope::All
        } else {
            Scope::of_events(&self.state, self.carried.iter().chain(&self.events))
        };
        self.carried = std::mem::take(&mut self.events);
        let (cmds, wake) = orchestrate_scoped(&self.state, self.now, &mut ids, &scope);
        if let Some(at) = wake {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
        self.next = next;
        if !cmds.is_empty() {
            self.apply(Command::Batch(cmds));
        }
        // The fake worker: assigned -> running (or crash); desired shutdown -> shutdown.
        let mut updates = Vec::new();
        for t in self.state.tasks.values() {
            let st = t.status.state;
            if t.desired_state > TaskState::Running && !st.is_terminal() {
                updates.push((t.id.clone(), self.status(TaskState::Shutdown, None)));
            } else if st == TaskState::Assigned {
                match self.crash.get(&t.service_name) {
                    Some(code) => {
                        let state = if *code == 0 {
                            TaskState::Complete
                        } else {
                            TaskState::Failed
                        };
                        updates.push((t.id.clone(), self.status(state, Some(*code))));
                    }
                    None => updates.push((t.id.clone(), self.status(TaskState::Running, None))),
                }
            }
        }
        if !updates.is_empty() {
            self.apply(Command::SetTaskStatus(updates));
        }
        self.now += 1000;
        self.state != before
    }

    fn status(&self, state: TaskState, code: Option<i32>) -> TaskStatus {
        TaskStatus {
            state,
            timestamp: self.now,
            finished_at: state.is_terminal().then_some(self.now),
            exit_code: code,
            ..Default::default()
        }
    }

    /// Steps until nothing has changed for 10 simulated seconds (longer
    /// than any restart delay the tests use).
    pub fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..300 {
            if self.step() {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet == 10 {
                    return;
                }
            }
        }
        panic!("did not settle in 300 steps");
    }

    pub fn running<'a>(&'a self, svc: &'a str) -> Vec<&'a Task> {
        self.state
            .tasks_of(svc)
            .filter(|t| {
                t.status.state == TaskState::Running && t.desired_state == TaskState::Running
            })
            .collect()
    }

    /// What `service ps` shows as live: (slot or node) of running tasks.
    pub fn running_keys(&self, svc: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .running(svc)
            .iter()
            .map(|t| match t.slot {
                Some(s) => s.to_string(),
                None => t.node_id.clone().unwrap_or_default(),
            })
            .collect();
        v.sort();
        v
    }
}

fn replicated(name: &str, n: u64) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "sleep");
    s.command = vec!["3601".into()];
    s.replicas = Some(n);
    s
}

#[test]
fn replicated_service_runs_its_replicas_and_scales() {
    let mut sim = Sim::new(&["n1"]);
    let id = sim.create(replicated("s1", 3));
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["1", "2", "3"]);
    sim.update(&id, |s| s.replicas = Some(5));
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["1", "2", "3", "4", "5"]);
    // Scaling is not an update: the first three tasks are the same ones.
    sim.update(&id, |s| s.replicas = Some(2));
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["1", "2"]);
    sim.update(&id, |s| s.replicas = Some(0));
    sim.settle();
    assert!(sim.running(&id).is_empty());
}

#[test]
fn scaling_keeps_existing_tasks() {
    let mut sim = Sim::new(&["n1"]);
    let id = sim.create(replicated("s1", 2));
    sim.settle();
    let before: BTreeSet<String> = sim.running(&id).iter().map(|t| t.id.clone()).collect();
    sim.update(&id, |s| s.replicas = Some(4));
    sim.settle();
    let after: BTreeSet<String> = sim.running(&id).iter().map(|t| t.id.clone()).collect();
    assert!(before.is_subset(&after));
}

#[test]
fn global_service_runs_one_task_per_eligible_node() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let mut spec = ServiceSpec::new("agent", "sleep");
    spec.mode = ServiceMode::Global;
    spec.replicas = None;
    let id = sim.create(spec);
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["a", "b", "c"]);
    sim.apply(Command::UpdateNode {
        id: "b".into(),
        role: None,
        availability: Some(Availability::Drain),
        labels: None,
        at: 0,
    });
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["a", "c"]);
    sim.state.nodes.insert("d".into(), node("d"));
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["a", "c", "d"]);
}

#[test]
fn paused_nodes_keep_their_tasks_but_get_no_new_ones() {
    let mut sim = Sim::new(&["a", "b"]);
    let id = sim.create(replicated("web", 2));
    sim.settle();
    sim.apply(Command::UpdateNode {
        id: "b".into(),
        role: None,
        availability: Some(Availability::Pause),
        labels: None,
        at: 0,
    });
    sim.update(&id, |s| s.replicas = Some(4));
    sim.settle();
    let on_b = sim
        .running(&id)
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("b"))
        .count();
    assert_eq!(on_b, 1);
    assert_eq!(sim.running(&id).len(), 4);
}

#[test]
fn failed_tasks_restart_after_the_delay_and_stop_at_max_attempts() {
    let mut sim = Sim::new(&["n1"]);
    sim.crash.insert("bad".into(), 1);
    let mut spec = replicated("bad", 1);
    spec.restart_policy.max_attempts = 3;
    let id = sim.create(spec);
    sim.settle();
    // The first task plus three restarts, then the slot stays empty.
    assert_eq!(sim.state.tasks_of(&id).count(), 4);
    assert!(sim.running(&id).is_empty());
    let mut created: Vec<u64> = sim.state.tasks_of(&id).map(|t| t.created_at).collect();
    created.sort();
    for w in created.windows(2) {
        assert!(
            w[1] - w[0] >= 5000,
            "restarts honour the 5s delay: {created:?}"
        );
    }
}

#[test]
fn restart_condition_none_leaves_the_slot_empty() {
    let mut sim = Sim::new(&["n1"]);
    sim.crash.insert("once".into(), 0);
    let mut spec = replicated("once", 2);
    spec.restart_policy.condition = RestartCondition::None;
    let id = sim.create(spec);
    sim.settle();
    assert_eq!(sim.state.tasks_of(&id).count(), 2);
}

#[test]
fn on_failure_does_not_restart_clean_exits() {
    let mut sim = Sim::new(&["n1"]);
    sim.crash.insert("job".into(), 0);
    let mut spec = replicated("job", 1);
    spec.restart_policy.condition = RestartCondition::OnFailure;
    let id = sim.create(spec);
    sim.settle();
    let tasks: Vec<_> = sim.state.tasks_of(&id).collect();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].status.state, TaskState::Complete);
}

#[test]
fn history_is_bounded() {
    let mut sim = Sim::new(&["n1"]);
    sim.crash.insert("flappy".into(), 2);
    let mut spec = replicated("flappy", 1);
    spec.restart_policy.delay = skein_protocol::Dur::ZERO;
    spec.restart_policy.max_attempts = 12;
    let id = sim.create(spec);
    sim.settle();
    assert!(sim.state.tasks_of(&id).count() <= reconcile::HISTORY + 1);
}

#[test]
fn removed_service_tasks_stop_and_are_reaped() {
    let mut sim = Sim::new(&["n1"]);
    let id = sim.create(replicated("s1", 3));
    sim.settle();
    sim.apply(Command::RemoveService {
        id: id.clone(),
        at: 0,
    });
    sim.settle();
    assert!(sim.state.tasks.is_empty());
}

#[test]
fn unplaceable_tasks_stay_pending_with_the_reason() {
    let mut sim = Sim::new(&["n1"]);
    let mut spec = replicated("picky", 1);
    spec.placement
        .constraints
        .push("node.labels.zone == mars".into());
    let id = sim.create(spec);
    sim.settle();
    let t = sim.state.tasks_of(&id).next().expect("a task");
    assert_eq!(t.status.state, TaskState::Pending);
    assert!(
        t.status
            .message
            .contains("scheduling constraints not satisfied"),
        "{}",
        t.status.message
    );
}

fn roll(order: UpdateOrder) {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let mut spec = replicated("web", 3);
    spec.update_config.order = order;
    // No monitor window: this checks the order, the updater's own tests the timing.
    spec.update_config.monitor = skein_protocol::Dur::ZERO;
    let id = sim.create(spec);
    sim.settle();
    sim.update(&id, |s| s.image = "sleep2".into());
    let mut steps = 0;
    loop {
        let changed = sim.step();
        let running = sim.running(&id).len();
        let live: Vec<_> = sim.state.tasks_of(&id).filter(|t| t.is_live()).collect();
        match order {
            UpdateOrder::StopFirst => assert!(live.len() <= 3, "stop-first never exceeds replicas"),
            UpdateOrder::StartFirst => {
                assert!(running >= 3, "start-first never drops below replicas")
            }
        }
        // Parallelism 1: at most one slot is mid-replacement.
        let slots: BTreeSet<u64> = live.iter().filter_map(|t| t.slot).collect();
        assert!(live.len() <= slots.len() + 1);
        steps += 1;
        if !changed || steps > 100 {
            break;
        }
    }
    let running = sim.running(&id);
    assert_eq!(running.len(), 3);
    assert!(running.iter().all(|t| t.spec.image == "sleep2"));
    assert_eq!(
        sim.state.services[&id]
            .update_status
            .as_ref()
            .map(|s| s.state),
        Some(skein_protocol::UpdateState::Completed)
    );
}

#[test]
fn rolling_update_stop_first() {
    roll(UpdateOrder::StopFirst);
}

#[test]
fn rolling_update_start_first() {
    roll(UpdateOrder::StartFirst);
}

proptest! {
    /// Rounds scoped to the services that events touched (as the actor runs
    /// them) end where rounds over everything end, whatever happens to
    /// several services at once: scaling, crashing tasks, spec updates.
    #[test]
    fn scoped_rounds_end_where_full_rounds_end(
        nodes in 1usize..4,
        ops in proptest::collection::vec((0usize..3, 0u8..3, 0u64..6), 1..8),
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut full = Sim::new(&refs);
        let mut scoped = Sim::new(&refs);
        scoped.scoped = true;
        let mut ids = Vec::new();
        for sim in [&mut full, &mut scoped] {
            ids = (0..3).map(|i| {
                let mut spec = replicated(&format!("s{i}"), 2);
                spec.restart_policy.delay = skein_protocol::Dur(1500);
                sim.create(spec)
            }).collect();
        }
        for (svc, op, n) in ops {
            let id = ids[svc].clone();
            for sim in [&mut full, &mut scoped] {
                match op {
                    0 => sim.update(&id, |s| s.replicas = Some(n)),
                    1 => sim.update(&id, |s| s.command = vec![format!("{}", 3600 + n)]),
                    _ => {
                        // Tasks of this service crash from now on (or stop crashing).
                        let name = format!("s{svc}");
                        if n % 2 == 0 { sim.crash.insert(name, 1); } else { sim.crash.remove(&name); }
                    }
                }
                for _ in 0..12 { sim.step(); }
            }
        }
        for sim in [&mut full, &mut scoped] {
            sim.crash.clear();
            sim.settle();
        }
        for id in &ids {
            prop_assert_eq!(full.running_keys(id), scoped.running_keys(id), "service {}", id);
            let want = full.state.services[id].spec.replicas.unwrap_or(0) as usize;
            prop_assert_eq!(scoped.running_keys(id).len(), want, "service {}", id);
        }
    }

    /// Whatever the replica count, scale changes and node count, a
    /// replicated service settles on exactly one running task per slot
    /// 1..=replicas and never runs two tasks in one slot (stop-first).
    #[test]
    fn replicated_converges_to_one_task_per_slot(
        nodes in 1usize..5,
        scales in proptest::collection::vec(0u64..9, 1..5),
        max_per_node in 0u64..3,
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut sim = Sim::new(&refs);
        let mut spec = replicated("web", scales[0]);
        spec.placement.max_replicas_per_node = max_per_node;
        let id = sim.create(spec);
        for &n in &scales {
            sim.update(&id, |s| s.replicas = Some(n));
            for _ in 0..60 {
                let changed = sim.step();
                let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
                for t in sim.running(&id) {
                    *per_slot.entry(t.slot.unwrap_or(0)).or_default() += 1;
                }
                prop_assert!(per_slot.values().all(|&c| c == 1));
                if !changed { break; }
            }
            let capacity = if max_per_node == 0 { u64::MAX } else { max_per_node * nodes as u64 };
            let expect = n.min(capacity);
            let keys = sim.running_keys(&id);
            prop_assert_eq!(keys.len() as u64, expect);
            let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
            for t in sim.running(&id) {
                *per_node.entry(t.node_id.clone().unwrap_or_default()).or_default() += 1;
            }
            if max_per_node > 0 {
                prop_assert!(per_node.values().all(|&c| c <= max_per_node));
            }
            // Spread: without limits the busiest and idlest node differ by at most one.
            if max_per_node == 0 && expect >= nodes as u64 {
                let counts: Vec<u64> = names.iter().map(|n| per_node.get(n).copied().unwrap_or(0)).collect();
                let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
                prop_assert!(hi - lo <= 1, "uneven spread {:?}", counts);
            }
        }
    }
}

#[test]
fn unplaceable_tasks_do_not_block_their_slot_after_scaling_to_zero() {
    let mut sim = Sim::new(&["n1"]);
    let mut spec = replicated("picky", 2);
    spec.placement
        .constraints
        .push("node.labels.zone == mars".into());
    let id = sim.create(spec);
    sim.settle();
    sim.update(&id, |s| s.replicas = Some(0));
    sim.settle();
    assert!(sim
        .state
        .tasks_of(&id)
        .all(|t| t.status.state == TaskState::Shutdown));
    // Constraint fixed and scaled up again: new tasks are created and run.
    sim.update(&id, |s| {
        s.replicas = Some(2);
        s.placement.constraints.clear();
    });
    sim.settle();
    assert_eq!(sim.running_keys(&id), ["1", "2"]);
    sim.apply(Command::RemoveService {
        id: id.clone(),
        at: 0,
    });
    sim.settle();
    assert!(sim.state.tasks.is_empty(), "everything reaped");
}

fn set_status(sim: &mut Sim, node: &str, status: NodeStatus) {
    sim.apply(Command::SetNodeStatus {
        id: node.into(),
        status,
        message: String::new(),
        at: 0,
    });
}

#[test]
fn a_down_nodes_replicated_tasks_move_and_never_run_twice() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let id = sim.create(replicated("web", 6));
    let mut g = ServiceSpec::new("agent", "sleep");
    g.mode = ServiceMode::Global;
    g.replicas = None;
    let gid = sim.create(g);
    sim.settle();
    let on_c: Vec<String> = sim
        .running(&id)
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("c"))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(on_c.len(), 2);
    set_status(&mut sim, "c", NodeStatus::Down);
    // The fake worker of a down node reports nothing: freeze c's tasks.
    sim.settle();
    let running = sim.running(&id);
    assert_eq!(running.len(), 6, "all six replicas run again");
    assert!(running.iter().all(|t| t.node_id.as_deref() != Some("c")));
    for t in &on_c {
        assert_eq!(sim.state.tasks[t].status.state, TaskState::Orphaned);
    }
    // The global task stays bound to c; no new one elsewhere.
    assert_eq!(sim.state.tasks_of(&gid).filter(|t| t.is_live()).count(), 3);
    // c comes back: its old tasks stay finished, nothing is duplicated.
    set_status(&mut sim, "c", NodeStatus::Ready);
    sim.settle();
    assert_eq!(sim.running(&id).len(), 6);
    for t in &on_c {
        assert!(sim
            .state
            .tasks
            .get(t)
            .is_none_or(|t| t.status.state == TaskState::Orphaned));
    }
}

fn set_availability(sim: &mut Sim, node: &str, availability: Availability) {
    sim.apply(Command::UpdateNode {
        id: node.into(),
        role: None,
        availability: Some(availability),
        labels: None,
        at: sim.now,
    });
}

fn live_on<'a>(sim: &'a Sim, node: &str) -> Vec<&'a Task> {
    sim.state
        .tasks
        .values()
        .filter(|t| t.node_id.as_deref() == Some(node) && !t.status.state.is_terminal())
        .collect()
}

#[test]
fn draining_a_node_moves_replicas_and_stops_its_global_task() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let web = sim.create(replicated("web", 8));
    let mut spec = ServiceSpec::new("agent", "sleep");
    spec.mode = ServiceMode::Global;
    spec.replicas = None;
    let agent = sim.create(spec);
    sim.settle();
    assert!(sim
        .running(&web)
        .iter()
        .any(|t| t.node_id.as_deref() == Some("c")));
    set_availability(&mut sim, "c", Availability::Drain);
    sim.settle();
    assert!(live_on(&sim, "c").is_empty(), "{:?}", live_on(&sim, "c"));
    assert_eq!(sim.running(&web).len(), 8);
    assert_eq!(sim.running_keys(&agent), ["a", "b"]);
    // Back to active: the global task returns at once, replicas stay put.
    set_availability(&mut sim, "c", Availability::Active);
    sim.settle();
    assert_eq!(sim.running_keys(&agent), ["a", "b", "c"]);
    let web_on_c = sim
        .running(&web)
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("c"))
        .count();
    assert_eq!(
        web_on_c, 0,
        "replicated tasks are not moved back by themselves"
    );
}

#[test]
fn a_start_first_service_never_drops_below_its_replicas_during_a_drain() {
    let mut sim = Sim::new(&["a", "b", "c"]);
    let mut spec = replicated("web", 6);
    spec.update_config.order = UpdateOrder::StartFirst;
    spec.update_config.parallelism = 2;
    let web = sim.create(spec);
    sim.settle();
    set_availability(&mut sim, "b", Availability::Drain);
    for _ in 0..60 {
        let changed = sim.step();
        let running = sim.running(&web).len();
        assert!(running >= 6, "only {running} of 6 running during the drain");
        // Never two tasks of one slot still running afterwards, and never more
        // than the parallelism budget of extra ones while it moves.
        assert!(running <= 6 + 2, "{running} running");
        if !changed {
            break;
        }
    }
    assert!(live_on(&sim, "b").is_empty());
    assert_eq!(sim.running_keys(&web), ["1", "2", "3", "4", "5", "6"]);
}

#[test]
fn a_stop_first_drain_replaces_parallelism_tasks_at_a_time() {
    let mut sim = Sim::new(&["a", "b"]);
    let mut spec = replicated("web", 6);
    spec.update_config.parallelism = 2;
    let web = sim.create(spec);
    sim.settle();
    set_availability(&mut sim, "b", Availability::Drain);
    for _ in 0..60 {
        let changed = sim.step();
        let running = sim.running(&web).len();
        assert!(
            running >= 4,
            "only {running} of 6 running: more than 2 down at once"
        );
        if !changed {
            break;
        }
    }
    assert!(live_on(&sim, "b").is_empty());
    assert_eq!(sim.running(&web).len(), 6);
}

#[test]
fn a_start_first_task_stays_until_its_replacement_can_run() {
    let mut sim = Sim::new(&["a", "b"]);
    let mut spec = replicated("web", 2);
    spec.update_config.order = UpdateOrder::StartFirst;
    spec.placement.max_replicas_per_node = 1;
    let web = sim.create(spec);
    sim.settle();
    set_availability(&mut sim, "b", Availability::Drain);
    sim.settle();
    // Nowhere to go: the task on b keeps running, its replacement waits.
    assert_eq!(sim.running(&web).len(), 2);
    assert_eq!(live_on(&sim, "b").len(), 1);
    let pending: Vec<&Task> = sim
        .state
        .tasks_of(&web)
        .filter(|t| t.status.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0].status.message.contains("no suitable node"),
        "{}",
        pending[0].status.message
    );
    // Room appears: the move completes.
    sim.apply(Command::UpsertNode(node("c")));
    sim.settle();
    assert!(live_on(&sim, "b").is_empty());
    assert_eq!(sim.running(&web).len(), 2);
}

#[test]
fn a_drained_node_that_goes_down_stays_drained_when_it_returns() {
    let mut sim = Sim::new(&["a", "b"]);
    let web = sim.create(replicated("web", 4));
    sim.settle();
    set_availability(&mut sim, "b", Availability::Drain);
    sim.settle();
    set_status(&mut sim, "b", NodeStatus::Down);
    sim.settle();
    set_status(&mut sim, "b", NodeStatus::Ready);
    sim.update(&web, |s| s.replicas = Some(6));
    sim.settle();
    assert_eq!(sim.state.nodes["b"].availability, Availability::Drain);
    assert!(live_on(&sim, "b").is_empty());
    assert_eq!(sim.running(&web).len(), 6);
}
