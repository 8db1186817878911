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
    for task in to_place {
        let fixed = task.slot.is_none() && task.node_id.is_some();
        let statics = static_fit
            .entry((
                task.spec.runtime,
                task.spec.placement.constraints.as_slice(),
            ))
            .or_insert_with(|| nodes.iter().map(|n| fits_static(n, task)).collect());
        let counts = per_service
            .entry(task.service_id.as_str())
            .or_insert_with(|| vec![0; nodes.len()]);
        let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut best: Option<(Vec<u64>, u64, u64, usize)> = None;
        for (i, node) in nodes.iter().enumerate() {
            if fixed && task.node_id.as_deref() != Some(node.id.as_str()) {
                continue;
            }
            if let Err(r) = statics[i].and_then(|()| fits_load(node, task, &loads[i], counts[i])) {
                *reasons.entry(r).or_default() += 1;
                continue;
            }
            let key = (
                spread_rank(&nodes, counts, task, node),
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
                let detail = if reasons.is_empty() {
                    "no nodes in the cluster".to_string()
                } else {
                    reasons
                        .iter()
                        .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                out.unplaced
                    .push((task.id.clone(), format!("no suitable node ({detail})")));
            }
        }
    }
    out
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
