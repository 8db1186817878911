//! Placement throughput of skein's orchestrator, in one process.
//!
//! Builds an in-memory `ClusterState` with NODES ready nodes (default 1,000)
//! and SERVICES replicated services totalling TASKS tasks (default 100 x
//! 1,000 = 100,000), then times what the leader does to place them:
//! `orchestrator::orchestrate` (reconcile + scheduler) and applying the
//! commands it returns with `ClusterState::apply`, round after round, until
//! every task is assigned to a node.
//!
//! What this measures, and what it does not: the orchestrator, the scheduler
//! and the state machine's apply, single-threaded, with no Raft: no log
//! append, no sled flush, no replication to other managers, no network, no
//! dispatcher and no worker. The end-to-end number through a real agent is
//! measured separately by `scripts/bench.sh raft`.
//!
//! Two scenarios:
//! - `bulk`: every service exists before the clock starts, as after a stack
//!   deploy or a new leader's first reconcile;
//! - `arrive`: services arrive one at a time, each followed by the rounds
//!   that place it, as a live cluster sees them. Rounds are scoped as the
//!   orchestrator actor scopes them: to the services the events of the last
//!   two applies touched.
//!
//! Run: `cargo run --release -p skein-node --example placement_bench`
//! (env: NODES, TASKS, SERVICES, SCENARIOS=bulk,arrive). The last line is
//! machine-readable: `RESULT key=value ...`.

use skein_node::orchestrator::{orchestrate_scoped, Scope};
use skein_node::store::{ClusterState, Event};
use skein_protocol::{
    Availability, Command, Node, NodeDescription, NodeResources, NodeRole, NodeStatus, RuntimeKind,
    Service, ServiceSpec, TaskState,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A ready, active node offering the process runtime (as the orchestrator
/// tests build them).
fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        name: format!("name-{id}"),
        role: NodeRole::Worker,
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

fn service(i: usize, replicas: u64, now: u64) -> Service {
    let mut spec = ServiceSpec::new(format!("svc-{i:04}"), "sleep");
    spec.command = vec!["3600".into()];
    spec.replicas = Some(replicas);
    Service {
        id: format!("s{i:04}"),
        spec,
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: now,
        updated_at: now,
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => match v.trim().replace('_', "").parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("{key}={v:?} is not a positive number; using {default}");
                default
            }
        },
        Err(_) => default,
    }
}

fn base_state(nodes: usize) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..nodes {
        let id = format!("n{i:05}");
        state.nodes.insert(id.clone(), node(&id));
    }
    state
}

fn assigned(state: &ClusterState) -> usize {
    state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Assigned && t.node_id.is_some())
        .count()
}

#[derive(Default)]
struct Timing {
    rounds: usize,
    orchestrate: Duration,
    apply: Duration,
    commands: usize,
    /// bincode size of the largest batch (what one Raft entry would carry).
    largest_entry: usize,
}

/// One orchestrator round over `scope`, applied as the Raft driver would
/// apply the batch; the apply's events are added to `events`.
fn round(
    state: &mut ClusterState,
    now: u64,
    next_id: &mut u64,
    t: &mut Timing,
    scope: &Scope,
    events: &mut Vec<Event>,
) -> bool {
    let started = Instant::now();
    let mut ids = || {
        *next_id += 1;
        format!("t{:08}", *next_id)
    };
    let (cmds, _) = orchestrate_scoped(state, now, &mut ids, scope);
    t.orchestrate += started.elapsed();
    t.rounds += 1;
    if cmds.is_empty() {
        return false;
    }
    t.commands += cmds.len();
    let batch = Command::Batch(cmds);
    if let Ok(bytes) = skein_protocol::codec::encode(&batch) {
        t.largest_entry = t.largest_entry.max(bytes.len());
    } else {
        // Over the codec's frame limit: Raft could not carry it in one entry.
        t.largest_entry = usize::MAX;
    }
    let started = Instant::now();
    if let Err(e) = state.apply(&batch, events) {
        eprintln!("apply refused the orchestrator's batch: {e}");
        std::process::exit(1);
    }
    t.apply += started.elapsed();
    true
}

fn entry_size(n: usize) -> String {
    if n == usize::MAX {
        "over the 64 MiB codec limit".into()
    } else {
        format!("{:.1} MB", n as f64 / 1e6)
    }
}

/// Every service present at the start; rounds until all tasks are assigned.
fn bulk(nodes: usize, services: usize, per_service: u64, total: usize) -> f64 {
    let now = 1_000_000;
    let mut state = base_state(nodes);
    for i in 0..services {
        let svc = service(i, per_service, now);
        state.services.insert(svc.id.clone(), svc);
    }
    let mut t = Timing::default();
    let mut next_id = 0;
    let started = Instant::now();
    while assigned(&state) < total {
        let mut events = Vec::new();
        if !round(
            &mut state,
            now,
            &mut next_id,
            &mut t,
            &Scope::All,
            &mut events,
        ) {
            eprintln!("the orchestrator stopped with tasks unassigned");
            std::process::exit(1);
        }
        if t.rounds > 1000 {
            eprintln!("no convergence in 1000 rounds");
            std::process::exit(1);
        }
    }
    let wall = started.elapsed();
    let rate = total as f64 / wall.as_secs_f64();
    println!(
        "bulk:   {total} tasks of {services} services on {nodes} nodes placed in {:.3} s \
         ({} round(s); orchestrate {:.3} s, apply {:.3} s; largest batch {}) = {:.0} placements/s",
        wall.as_secs_f64(),
        t.rounds,
        t.orchestrate.as_secs_f64(),
        t.apply.as_secs_f64(),
        entry_size(t.largest_entry),
        rate
    );
    spread_check(&state, nodes, total);
    rate
}

/// Services arrive one at a time; each is placed before the next arrives.
fn arrive(nodes: usize, services: usize, per_service: u64, total: usize) -> f64 {
    let now = 1_000_000;
    let mut state = base_state(nodes);
    let mut t = Timing::default();
    let mut next_id = 0;
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut carried: Vec<Event> = Vec::new();
    for i in 0..services {
        let one = Instant::now();
        let mut events = Vec::new();
        if let Err(e) = state.apply(
            &Command::CreateService(service(i, per_service, now)),
            &mut events,
        ) {
            eprintln!("create service: {e}");
            std::process::exit(1);
        }
        let want = (i + 1) * per_service as usize;
        let mut guard = 0;
        while assigned(&state) < want {
            let scope = Scope::of_events(&state, carried.iter().chain(&events));
            carried = std::mem::take(&mut events);
            if !round(&mut state, now, &mut next_id, &mut t, &scope, &mut events) || guard > 100 {
                eprintln!("service {i} did not get placed");
                std::process::exit(1);
            }
            guard += 1;
        }
        slowest = slowest.max(one.elapsed());
    }
    let wall = started.elapsed();
    let rate = total as f64 / wall.as_secs_f64();
    println!(
        "arrive: {total} tasks arriving as {services} services of {per_service} on {nodes} nodes \
         placed in {:.3} s ({} rounds; orchestrate {:.3} s, apply {:.3} s; slowest service {:.3} s, \
         largest batch {}) = {:.0} placements/s",
        wall.as_secs_f64(),
        t.rounds,
        t.orchestrate.as_secs_f64(),
        t.apply.as_secs_f64(),
        slowest.as_secs_f64(),
        entry_size(t.largest_entry),
        rate
    );
    spread_check(&state, nodes, total);
    rate
}

/// The scheduler should have spread the tasks evenly: say so if it did not.
fn spread_check(state: &ClusterState, nodes: usize, total: usize) {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for t in state.tasks.values() {
        if let Some(n) = t.node_id.as_deref() {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let min = per_node.values().copied().min().unwrap_or(0);
    let max = per_node.values().copied().max().unwrap_or(0);
    println!(
        "        spread: {} of {nodes} nodes used, {min}..{max} tasks per node (ideal {})",
        per_node.len(),
        total.div_ceil(nodes)
    );
}

fn main() {
    let nodes = env_usize("NODES", 1000);
    let services = env_usize("SERVICES", 100);
    let total_wanted = env_usize("TASKS", 100_000);
    let per_service = total_wanted.div_ceil(services) as u64;
    let total = per_service as usize * services;
    let scenarios = std::env::var("SCENARIOS").unwrap_or_else(|_| "bulk,arrive".into());
    println!(
        "placement_bench: orchestrator + scheduler + apply in one process, single-threaded, \
         without Raft (no log, no fsync, no replication, no network)"
    );
    let mut fields = vec![
        format!("nodes={nodes}"),
        format!("tasks={total}"),
        format!("services={services}"),
    ];
    for s in scenarios
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let rate = match s {
            "bulk" => bulk(nodes, services, per_service, total),
            "arrive" => arrive(nodes, services, per_service, total),
            other => {
                eprintln!("unknown scenario {other:?}: use bulk and/or arrive");
                std::process::exit(2);
            }
        };
        fields.push(format!("{s}={rate:.0}"));
    }
    println!("RESULT {}", fields.join(" "));
}
