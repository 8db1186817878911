//! The updater driven through the whole orchestrator against an in-memory
//! cluster with a fake worker: properties of what a user would see while a
//! rollout runs (tasks down, tasks running) and where it ends.

use crate::orchestrator::orchestrate;
use crate::orchestrator::tests::Sim;
use proptest::prelude::*;
use skein_protocol::{
    Command, FailureAction, PortConfig, Protocol, PublishMode, ServiceMode, ServiceSpec, TaskState,
    TaskStatus, UpdateOrder, UpdateState,
};
use std::collections::BTreeSet;

/// A cluster whose fake worker runs what it is assigned at once, except
/// programs whose arguments are in `bad`: those exit (0) as soon as they start.
struct Driver {
    sim: Sim,
    next: u64,
    prefix: &'static str,
    bad: BTreeSet<Vec<String>>,
    /// Milliseconds per round.
    tick: u64,
}

impl Driver {
    fn new(nodes: &[&str]) -> Driver {
        Driver {
            sim: Sim::new(nodes),
            next: 0,
            prefix: "t",
            bad: BTreeSet::new(),
            tick: 500,
        }
    }

    /// The orchestrator's half of a round; true if it proposed anything.
    fn orchestrate(&mut self) -> bool {
        let (prefix, mut next) = (self.prefix, self.next);
        let mut ids = || {
            next += 1;
            format!("{prefix}{next:05}")
        };
        let (cmds, _) = orchestrate(&self.sim.state, self.sim.now, &mut ids);
        self.next = next;
        if cmds.is_empty() {
            return false;
        }
        self.sim.apply(Command::Batch(cmds));
        true
    }

    /// The worker's half: start what is assigned, stop what should stop.
    fn work(&mut self) -> bool {
        let now = self.sim.now;
        let mut updates = Vec::new();
        for t in self.sim.state.tasks.values() {
            let st = t.status.state;
            if t.desired_state > TaskState::Running && !st.is_terminal() {
                updates.push((
                    t.id.clone(),
                    TaskStatus {
                        state: TaskState::Shutdown,
                        timestamp: now,
                        started_at: t.status.started_at,
                        finished_at: Some(now),
                        ..Default::default()
                    },
                ));
            } else if st == TaskState::Assigned {
                let bad = self.bad.contains(&t.spec.command);
                updates.push((
                    t.id.clone(),
                    TaskStatus {
                        state: if bad {
                            TaskState::Complete
                        } else {
                            TaskState::Running
                        },
                        timestamp: now,
                        started_at: Some(now),
                        finished_at: bad.then_some(now),
                        exit_code: bad.then_some(0),
                        ..Default::default()
                    },
                ));
            }
        }
        if updates.is_empty() {
            return false;
        }
        self.sim.apply(Command::SetTaskStatus(updates));
        true
    }

    /// Runs rounds until nothing changes for 20 s of simulated time,
    /// checking `each` after every half-round.
    fn run(&mut self, mut each: impl FnMut(&Sim)) {
        let mut quiet = 0u64;
        for _ in 0..2000 {
            let a = self.orchestrate();
            each(&self.sim);
            let b = self.work();
            each(&self.sim);
            self.sim.now += self.tick;
            if a || b {
                quiet = 0;
            } else {
                quiet += self.tick;
                if quiet >= 20_000 {
                    return;
                }
            }
        }
        panic!("the rollout did not settle");
    }

    fn state(&self, id: &str) -> Option<UpdateState> {
        self.sim.state.services[id]
            .update_status
            .as_ref()
            .map(|s| s.state)
    }

    fn rollback(&mut self, id: &str) {
        let svc = self.sim.state.services[id].clone();
        self.sim.apply(Command::RollbackService {
            id: id.into(),
            expected_version: svc.version,
            spec: svc.previous_spec.clone().expect("a previous spec"),
            keep_previous: true,
            message: "rollback started: manually requested".into(),
            at: self.sim.now,
        });
    }
}

fn spec(name: &str, replicas: u64, arg: &str) -> ServiceSpec {
    let mut s = ServiceSpec::new(name, "sleep");
    s.command = vec![arg.into()];
    s.replicas = Some(replicas);
    s
}

/// Running tasks meant to run, of `svc`.
fn running(sim: &Sim, svc: &str) -> Vec<(Option<u64>, Option<String>, Vec<String>)> {
    sim.state
        .tasks_of(svc)
        .filter(|t| t.status.state == TaskState::Running && t.desired_state == TaskState::Running)
        .map(|t| (t.slot, t.node_id.clone(), t.spec.command.clone()))
        .collect()
}

/// Slots 1..=n with no running task meant to run.
fn slots_down(sim: &Sim, svc: &str, n: u64) -> usize {
    let up: BTreeSet<u64> = running(sim, svc).iter().filter_map(|r| r.0).collect();
    (1..=n).filter(|s| !up.contains(s)).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Stop-first: never more than `parallelism` slots down at once; the
    /// update ends with every slot on the new spec and says completed.
    #[test]
    fn stop_first_never_has_more_than_parallelism_down(
        replicas in 1u64..8,
        parallelism in 0u64..4,
        monitor_ms in prop::sample::select(vec![0u64, 1000, 2500]),
        delay_ms in prop::sample::select(vec![0u64, 1500]),
        nodes in 1usize..4,
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut d = Driver::new(&refs);
        let id = d.sim.create(spec("web", replicas, "1"));
        d.run(|_| {});
        d.sim.update(&id, |s| {
            s.command = vec!["2".into()];
            s.update_config.parallelism = parallelism;
            s.update_config.monitor = skein_protocol::Dur::from_millis(monitor_ms);
            s.update_config.delay = skein_protocol::Dur::from_millis(delay_ms);
        });
        let limit = if parallelism == 0 { replicas } else { parallelism.min(replicas) } as usize;
        let mut worst = 0;
        d.run(|sim| worst = worst.max(slots_down(sim, &id, replicas)));
        prop_assert!(worst <= limit, "{} slots down at once, parallelism {}", worst, parallelism);
        let r = running(&d.sim, &id);
        prop_assert_eq!(r.len() as u64, replicas);
        prop_assert!(r.iter().all(|t| t.2 == vec!["2".to_string()]));
        prop_assert_eq!(d.state(&id), Some(UpdateState::Completed));
    }

    /// Start-first: never fewer running than desired while updating.
    #[test]
    fn start_first_never_runs_fewer_than_desired(
        replicas in 1u64..8,
        parallelism in 0u64..4,
        monitor_ms in prop::sample::select(vec![0u64, 1000]),
        nodes in 1usize..4,
    ) {
        let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut d = Driver::new(&refs);
        let id = d.sim.create(spec("web", replicas, "1"));
        d.run(|_| {});
        d.sim.update(&id, |s| {
            s.command = vec!["2".into()];
            s.update_config.parallelism = parallelism;
            s.update_config.order = UpdateOrder::StartFirst;
            s.update_config.monitor = skein_protocol::Dur::from_millis(monitor_ms);
        });
        let mut fewest = usize::MAX;
        d.run(|sim| fewest = fewest.min(running(sim, &id).len()));
        prop_assert!(fewest as u64 >= replicas, "only {} running", fewest);
        let r = running(&d.sim, &id);
        prop_assert_eq!(r.len() as u64, replicas);
        prop_assert!(r.iter().all(|t| t.2 == vec!["2".to_string()]));
    }

    /// A failing update with failure_action rollback, or a good one rolled
    /// back by hand, ends on the previous spec, update settings included.
    #[test]
    fn a_rollback_ends_on_the_previous_spec(
        replicas in 1u64..7,
        parallelism in 0u64..3,
        start_first in any::<bool>(),
        manual in any::<bool>(),
        ratio in prop::sample::select(vec![0.0f64, 0.3]),
    ) {
        let mut d = Driver::new(&["n0", "n1"]);
        let mut first = spec("web", replicas, "1");
        first.update_config.parallelism = 1;
        let id = d.sim.create(first.clone());
        d.run(|_| {});
        if !manual {
            d.bad.insert(vec!["2".to_string()]);
        }
        d.sim.update(&id, |s| {
            s.command = vec!["2".into()];
            s.update_config.parallelism = parallelism;
            s.update_config.failure_action = FailureAction::Rollback;
            s.update_config.max_failure_ratio = ratio;
            s.update_config.monitor = skein_protocol::Dur::from_secs(2);
            if start_first {
                s.update_config.order = UpdateOrder::StartFirst;
            }
        });
        d.run(|_| {});
        if manual {
            prop_assert_eq!(d.state(&id), Some(UpdateState::Completed));
            d.rollback(&id);
            d.run(|_| {});
        }
        let svc = &d.sim.state.services[&id];
        prop_assert_eq!(d.state(&id), Some(UpdateState::RollbackCompleted));
        prop_assert_eq!(&svc.spec, &first);
        let r = running(&d.sim, &id);
        prop_assert_eq!(r.len() as u64, replicas);
        prop_assert!(r.iter().all(|t| t.2 == vec!["1".to_string()]));
        // An automatic rollback is never rolled back again; a manual one can be.
        prop_assert_eq!(svc.previous_spec.is_some(), manual);
    }
}

#[test]
fn a_failing_update_pauses_and_a_new_update_resumes() {
    let mut d = Driver::new(&["n0"]);
    let mut s = spec("web", 4, "1");
    // A failed task is not restarted, so the simulation goes quiet.
    s.restart_policy.condition = skein_protocol::RestartCondition::None;
    let id = d.sim.create(s);
    d.run(|_| {});
    d.bad.insert(vec!["2".to_string()]);
    d.sim.update(&id, |s| {
        s.command = vec!["2".into()];
        s.update_config.monitor = skein_protocol::Dur::from_secs(2);
    });
    d.run(|_| {});
    let st = d.sim.state.services[&id]
        .update_status
        .clone()
        .expect("status");
    assert_eq!(st.state, UpdateState::Paused);
    assert!(st.message.contains("task web.1 exited"), "{}", st.message);
    // Paused: slots 2-4 still run the old version.
    let old = running(&d.sim, &id)
        .into_iter()
        .filter(|t| t.2 == vec!["1".to_string()])
        .count();
    assert_eq!(old, 3);
    d.sim.update(&id, |s| s.command = vec!["3".into()]);
    d.run(|_| {});
    assert_eq!(d.state(&id), Some(UpdateState::Completed));
    assert!(running(&d.sim, &id)
        .iter()
        .all(|t| t.2 == vec!["3".to_string()]));
}

#[test]
fn a_failing_rollback_pauses_and_is_never_rolled_back() {
    let mut d = Driver::new(&["n0"]);
    let mut s = spec("web", 2, "1");
    s.restart_policy.condition = skein_protocol::RestartCondition::None;
    let id = d.sim.create(s);
    d.run(|_| {});
    d.sim.update(&id, |s| {
        s.command = vec!["2".into()];
        s.update_config.failure_action = FailureAction::Rollback;
        s.rollback_config.failure_action = FailureAction::Rollback;
    });
    d.run(|_| {});
    // Now the old version is the one that fails: the rollback pauses.
    d.bad.insert(vec!["1".to_string()]);
    d.rollback(&id);
    d.run(|_| {});
    let st = d.sim.state.services[&id]
        .update_status
        .clone()
        .expect("status");
    assert_eq!(st.state, UpdateState::RollbackPaused, "{}", st.message);
    assert!(st.message.starts_with("rollback paused"), "{}", st.message);
}

#[test]
fn global_services_update_node_by_node() {
    let mut d = Driver::new(&["a", "b", "c", "d"]);
    let mut g = spec("agent", 0, "1");
    g.mode = ServiceMode::Global;
    g.replicas = None;
    let id = d.sim.create(g);
    d.run(|_| {});
    assert_eq!(running(&d.sim, &id).len(), 4);
    d.sim.update(&id, |s| s.command = vec!["2".into()]);
    let mut fewest = usize::MAX;
    d.run(|sim| fewest = fewest.min(running(sim, &id).len()));
    assert_eq!(fewest, 3, "one node at a time");
    let r = running(&d.sim, &id);
    assert_eq!(r.len(), 4);
    assert!(r.iter().all(|t| t.2 == vec!["2".to_string()]));
    assert_eq!(d.state(&id), Some(UpdateState::Completed));
}

#[test]
fn start_first_with_a_host_port_is_done_stop_first_and_says_so() {
    let mut d = Driver::new(&["n0", "n1"]);
    let mut s = spec("web", 2, "1");
    s.ports.push(PortConfig {
        target: 80,
        published: Some(8080),
        protocol: Protocol::Tcp,
        mode: PublishMode::Host,
    });
    s.update_config.order = UpdateOrder::StartFirst;
    let id = d.sim.create(s);
    d.run(|_| {});
    d.sim.update(&id, |s| s.command = vec!["2".into()]);
    let mut most_live = 0;
    let mut said = false;
    d.run(|sim| {
        let live = sim.state.tasks_of(&id).filter(|t| t.is_live()).count();
        most_live = most_live.max(live);
        said |= sim.state.services[&id]
            .update_status
            .as_ref()
            .is_some_and(|s| s.message.contains("start-first done stop-first"));
    });
    assert!(
        most_live <= 2,
        "never two tasks on one port: {most_live} live"
    );
    assert!(said, "the status said start-first was done stop-first");
    let st = d.sim.state.services[&id]
        .update_status
        .clone()
        .expect("status");
    assert_eq!(st.state, UpdateState::Completed);
    assert!(
        running(&d.sim, &id)
            .iter()
            .all(|t| t.2 == vec!["2".to_string()]),
        "updated"
    );
    assert!(
        st.message
            .starts_with("update completed; start-first done stop-first for web."),
        "{}",
        st.message
    );
}

#[test]
fn a_new_leader_continues_the_update_from_the_replicated_state() {
    let mut d = Driver::new(&["n0"]);
    let id = d.sim.create(spec("web", 6, "1"));
    d.run(|_| {});
    d.sim.update(&id, |s| {
        s.command = vec!["2".into()];
        s.update_config.parallelism = 2;
        s.update_config.monitor = skein_protocol::Dur::from_secs(3);
    });
    // The old leader runs a few rounds, then is gone.
    for _ in 0..4 {
        d.orchestrate();
        d.work();
        d.sim.now += d.tick;
    }
    let mid = running(&d.sim, &id);
    let updated = mid.iter().filter(|t| t.2 == vec!["2".to_string()]).count();
    assert!(updated > 0 && updated < 6, "mid-update: {updated} of 6");
    // A new leader: same replicated state, nothing else.
    let mut next = Driver::new(&[]);
    next.sim.state = d.sim.state.clone();
    next.sim.now = d.sim.now;
    next.prefix = "u";
    let mut worst = 0;
    next.run(|sim| worst = worst.max(slots_down(sim, &id, 6)));
    assert!(worst <= 2);
    assert_eq!(next.state(&id), Some(UpdateState::Completed));
    let r = running(&next.sim, &id);
    assert_eq!(r.len(), 6);
    assert!(r.iter().all(|t| t.2 == vec!["2".to_string()]));
}

#[test]
fn a_clock_ahead_on_the_node_that_took_the_update_hides_no_failure() {
    let mut d = Driver::new(&["n0"]);
    let mut s = spec("web", 2, "1");
    s.restart_policy.condition = skein_protocol::RestartCondition::None;
    let id = d.sim.create(s);
    d.run(|_| {});
    d.bad.insert(vec!["2".to_string()]);
    d.sim.update(&id, |s| s.command = vec!["2".into()]);
    // The update was stamped by a node whose clock runs an hour ahead.
    if let Some(st) = d
        .sim
        .state
        .services
        .get_mut(&id)
        .and_then(|s| s.update_status.as_mut())
    {
        st.started += 3_600_000;
    }
    d.run(|_| {});
    assert_eq!(d.state(&id), Some(UpdateState::Paused));
}
