//! The scheduler: which node each unassigned task goes to. Pure: takes the
//! cluster state and the tasks to place, returns assignments and, for tasks
//! no node can take, a message saying why.
//!
//! A node can take a task when it is ready and active, offers the task's
//! runtime, satisfies every constraint, stays under the service's
//! `max_replicas_per_node`, has the task's host-mode ports free and enough
//! unreserved CPU and memory. Among those, placement preferences (spread over
//! a label) come first, then the node with the fewest tasks of the service,
//! then the fewest tasks overall, then the node id (so the result is
//! deterministic). Decisions made earlier in the same round count.

use crate::store::ClusterState;
use skein_protocol::{
    Constraint, ConstraintOp, Node, NodeId, NodeRole, Protocol, RuntimeKind, Task, TaskId,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub assignments: Vec<(TaskId, NodeId)>,
    pub unplaced: Vec<(TaskId, String)>,
}

/// What is already on a node: updated as the round assigns tasks.
#[derive(Default, Clone)]
struct Load {
    total: u64,
    ports: BTreeSet<(u16, Protocol)>,
    nano_cpus: u64,
    memory: u64,
}

/// Value of a constraint key on a node (None: the node has no such label).
pub fn node_attr<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    match key {
        "node.id" => Some(&node.id),
        "node.hostname" => Some(&node.description.hostname),
        "node.role" => Some(match node.role {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }),
        "node.platform.os" => Some(&node.description.os),
        "node.platform.arch" => Some(&node.description.arch),
        _ => key
            .strip_prefix("node.labels.")
            .or_else(|| key.strip_prefix("engine.labels."))
            .and_then(|l| node.labels.get(l))
            .map(String::as_str),
    }
}

/// Whether `node` satisfies every constraint (unparseable ones never match).
pub fn satisfies(node: &Node, constraints: &[String]) -> bool {
    constraints.iter().all(|c| match Constraint::parse(c) {
        Ok(c) => {
            let v = node_attr(node, &c.key);
            // `node.hostname` also matches the node's skein name, which users type more often.
            let eq = v.is_some_and(|v| v.eq_ignore_ascii_case(&c.value))
                || (c.key == "node.hostname" && node.name.eq_ignore_ascii_case(&c.value));
            match c.op {
                ConstraintOp::Eq => eq,
                ConstraintOp::Ne => !eq,
            }
        }
        Err(_) => false,
    })
}

/// Whether the node can run tasks of this runtime (None: its default one).
pub fn offers_runtime(node: &Node, runtime: Option<RuntimeKind>) -> bool {
    match runtime {
        Some(k) => node.description.runtimes.contains(&k),
        None => !node.description.runtimes.is_empty(),
    }
}

fn cpus_to_nano(c: Option<f64>) -> u64 {
    c.map(|c| (c * 1e9) as u64).unwrap_or(0)
}

/// Places `to_place` (tasks without a node, or global tasks whose node is
/// fixed and only needs checking) on the nodes of `state`.
///
/// Cost: what does not depend on load (availability, runtime, constraints)
/// is decided once per (runtime, constraints) and node; per task only the load
/// checks and the ranking run, over plain vectors indexed like the nodes.
pub fn place(state: &ClusterState, to_place: &[&Task]) -> Placement {
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut loads: Vec<Load> = vec![Load::default(); nodes.len()];
    // Tasks of each service per node, indexed like `nodes`.
    let mut per_service: HashMap<&str, Vec<u64>> = HashMap::new();
    for t in state.tasks.values().filter(|t| t.is_live()) {
        if t.status.state < skein_protocol::TaskState::Assigned {
            continue;
        }
        if let Some(&i) = t.node_id.as_deref().and_then(|n| index.get(n)) {
            add_load(&mut loads[i], t);
            per_service
                .entry(t.service_id.as_str())
                .or_insert_with(|| vec![0; nodes.len()])[i] += 1;
        }
    }
    // Keyed by exactly what fits_static reads from the task.
    type StaticKey<'a> = (Option<RuntimeKind>, &'a [String]);
    let mut static_fit: HashMap<StaticKey<'_>, Vec<Result<(), &'static str>>> = HashMap::new();
    let mut out = Placement::default();
    // Tasks of one service and spec version are alike: placed together as a
    // run, they share the static checks and a heap of candidate nodes.
    let mut order: Vec<&Task> = to_place.to_vec();
    order.sort_by(|a, b| (&a.service_id, a.spec_version).cmp(&(&b.service_id, b.spec_version)));
    let mut start = 0;
    while start < order.len() {
        let task = order[start];
        let alike = |t: &&&Task| {
            t.service_id == task.service_id
                && t.spec_version == task.spec_version
                && !is_fixed(t)
                && t.spec == task.spec
        };
        let end = if is_fixed(task) || !task.spec.placement.preferences.is_empty() {
            start + 1
        } else {
            start + order[start..].iter().take_while(alike).count()
        };
        let run = &order[start..end];
        start = end;
        let statics = static_fit
            .entry((
                task.spec.runtime,
                task.spec.placement.constraints.as_slice(),
            ))
            .or_insert_with(|| nodes.iter().map(|n| fits_static(n, task)).collect());
        let counts = per_service
            .entry(task.service_id.as_str())
            .or_insert_with(|| vec![0; nodes.len()]);
        if is_fixed(task) {
            // A global task: only its own node is a candidate.
            let verdict = match task.node_id.as_deref().and_then(|n| index.get(n)) {
                Some(&i) => statics[i]
                    .and_then(|()| fits_load(nodes[i], task, &loads[i], counts[i]))
                    .map(|()| i),
                None => Err("node not in the cluster"),
            };
            match verdict {
                Ok(i) => {
                    add_load(&mut loads[i], task);
                    counts[i] += 1;
                    out.assignments.push((task.id.clone(), nodes[i].id.clone()));
                }
                Err(r) => out
                    .unplaced
                    .push((task.id.clone(), unplaced_message(&[(r, 1)]))),
            }
            continue;
        }
        if !task.spec.placement.preferences.is_empty() {
            place_by_scan(&nodes, statics, &mut loads, counts, task, &mut out);
            continue;
        }
        place_run(&nodes, statics, &mut loads, counts, run, &mut out);
    }
    out
}

fn is_fixed(t: &Task) -> bool {
    t.slot.is_none() && t.node_id.is_some()
}

fn unplaced_message(reasons: &[(&'static str, u64)]) -> String {
    let detail = if reasons.is_empty() {
        "no nodes in the cluster".to_string()
    } else {
        reasons
            .iter()
            .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!("no suitable node ({detail})")
}

/// One task with spread preferences: rank every candidate node.
fn place_by_scan(
    nodes: &[&Node],
    statics: &[Result<(), &'static str>],
    loads: &mut [Load],
    counts: &mut [u64],
    task: &Task,
    out: &mut Placement,
) {
    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut best: Option<(Vec<u64>, u64, u64, usize)> = None;
    for (i, node) in nodes.iter().enumerate() {
        if let Err(r) = statics[i].and_then(|()| fits_load(node, task, &loads[i], counts[i])) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        let key = (
            spread_rank(nodes, counts, task, node),
            counts[i],
            loads[i].total,
            i,
        );
        if best.as_ref().is_none_or(|b| key < *b) {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, _, i)) => {
            add_load(&mut loads[i], task);
            counts[i] += 1;
            out.assignments.push((task.id.clone(), nodes[i].id.clone()));
        }
        None => {
            let reasons: Vec<_> = reasons.into_iter().collect();
            out.unplaced
                .push((task.id.clone(), unplaced_message(&reasons)));
        }
    }
}

/// Alike tasks without preferences: each goes to the fitting node with the
/// fewest tasks of the service, then the fewest tasks, then the lowest index
/// (the same choice as a scan over every node), found with a heap: a node
/// that does not fit this task is set aside and put back after it.
fn place_run(
    nodes: &[&Node],
    statics: &[Result<(), &'static str>],
    loads: &mut [Load],
    counts: &mut [u64],
    run: &[&Task],
    out: &mut Placement,
) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut static_reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
    for (i, fit) in statics.iter().enumerate() {
        match fit {
            Ok(()) => heap.push(Reverse((counts[i], loads[i].total, i))),
            Err(r) => *static_reasons.entry(r).or_default() += 1,
        }
    }
    let mut aside: Vec<Reverse<(u64, u64, usize)>> = Vec::new();
    for (n, task) in run.iter().enumerate() {
        let mut reasons = static_reasons.clone();
        let mut chosen = None;
        while let Some(Reverse((c, l, i))) = heap.pop() {
            match fits_load(nodes[i], task, &loads[i], counts[i]) {
                Ok(()) => {
                    chosen = Some(i);
                    break;
                }
                Err(r) => {
                    *reasons.entry(r).or_default() += 1;
                    aside.push(Reverse((c, l, i)));
                }
            }
        }
        heap.extend(aside.drain(..));
        match chosen {
            Some(i) => {
                add_load(&mut loads[i], task);
                counts[i] += 1;
                heap.push(Reverse((counts[i], loads[i].total, i)));
                out.assignments.push((task.id.clone(), nodes[i].id.clone()));
            }
            None => {
                // Nothing changed since: the rest of the run fits nowhere either.
                let reasons: Vec<_> = reasons.into_iter().collect();
                let message = unplaced_message(&reasons);
                for t in &run[n..] {
                    out.unplaced.push((t.id.clone(), message.clone()));
                }
                return;
            }
        }
    }
}

/// Replicated services that `node` could run (as if it were ready, with its
/// availability as given) whose live tasks are spread unevenly over the
/// nodes that could run them: the busiest has at least two more than the
/// idlest. What `node activate --rebalance` rolls again.
pub fn uneven_services<'a>(
    state: &'a ClusterState,
    node: &Node,
) -> Vec<&'a skein_protocol::Service> {
    let eligible = |n: &Node, spec: &skein_protocol::ServiceSpec| {
        n.availability == skein_protocol::Availability::Active
            && offers_runtime(n, spec.runtime)
            && satisfies(n, &spec.placement.constraints)
    };
    state
        .services
        .values()
        .filter(|svc| svc.spec.mode == skein_protocol::ServiceMode::Replicated)
        .filter(|svc| eligible(node, &svc.spec))
        .filter(|svc| {
            let mut counts: HashMap<&str, u64> = state
                .nodes
                .values()
                .filter(|n| n.id != node.id && n.schedulable() && eligible(n, &svc.spec))
                .map(|n| (n.id.as_str(), 0))
                .collect();
            counts.insert(node.id.as_str(), 0);
            for t in state.tasks.values() {
                if t.service_id == svc.id && t.is_live() {
                    if let Some(c) = t.node_id.as_deref().and_then(|n| counts.get_mut(n)) {
                        *c += 1;
                    }
                }
            }
            let max = counts.values().copied().max().unwrap_or(0);
            let min = counts.values().copied().min().unwrap_or(0);
            max >= min + 2
        })
        .collect()
}

fn add_load(load: &mut Load, t: &Task) {
    load.total += 1;
    load.ports.extend(t.spec.host_ports());
    load.nano_cpus += cpus_to_nano(t.spec.resources.reservations.cpus);
    load.memory += t.spec.resources.reservations.memory.unwrap_or(0);
}

/// What does not change while a round places tasks.
fn fits_static(node: &Node, task: &Task) -> Result<(), &'static str> {
    if !node.schedulable() {
        return Err("node not available for new tasks");
    }
    if !offers_runtime(node, task.spec.runtime) {
        return Err("runtime not offered");
    }
    if !satisfies(node, &task.spec.placement.constraints) {
        return Err("scheduling constraints not satisfied");
    }
    Ok(())
}

/// What depends on the tasks already on the node.
fn fits_load(node: &Node, task: &Task, load: &Load, of_service: u64) -> Result<(), &'static str> {
    let max = task.spec.placement.max_replicas_per_node;
    if max > 0 && of_service >= max {
        return Err("max replicas per node reached");
    }
    if task.spec.host_ports().any(|p| load.ports.contains(&p)) {
        return Err("host-mode port already in use");
    }
    let res = &node.description.resources;
    let want_cpu = cpus_to_nano(task.spec.resources.reservations.cpus);
    let want_mem = task.spec.resources.reservations.memory.unwrap_or(0);
    if (want_cpu > 0 && res.nano_cpus > 0 && load.nano_cpus + want_cpu > res.nano_cpus)
        || (want_mem > 0 && res.memory_bytes > 0 && load.memory + want_mem > res.memory_bytes)
    {
        return Err("insufficient resources");
    }
    Ok(())
}

/// For spread preferences: how many of the service's tasks already run on
/// nodes sharing this node's label value (lower is better), per preference.
/// Empty (no allocation) without preferences.
fn spread_rank(nodes: &[&Node], counts: &[u64], task: &Task, node: &Node) -> Vec<u64> {
    task.spec
        .placement
        .preferences
        .iter()
        .map(|p| {
            let value = node_attr(node, &p.spread);
            nodes
                .iter()
                .zip(counts)
                .filter(|(n, _)| node_attr(n, &p.spread) == value)
                .map(|(_, c)| *c)
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests;
