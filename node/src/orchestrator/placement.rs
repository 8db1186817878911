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
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub assignments: Vec<(TaskId, NodeId)>,
    pub unplaced: Vec<(TaskId, String)>,
}

/// What is already on a node: updated as the round assigns tasks.
#[derive(Default, Clone)]
struct Load {
    total: u64,
    per_service: BTreeMap<String, u64>,
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
pub fn place(state: &ClusterState, to_place: &[&Task]) -> Placement {
    let mut loads: BTreeMap<&str, Load> = BTreeMap::new();
    for n in state.nodes.values() {
        loads.insert(&n.id, Load::default());
    }
    for t in state.tasks.values().filter(|t| t.is_live()) {
        if let Some(load) = t.node_id.as_deref().and_then(|n| loads.get_mut(n)) {
            if t.status.state >= skein_protocol::TaskState::Assigned {
                add_load(load, t);
            }
        }
    }
    let mut out = Placement::default();
    for task in to_place {
        let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut candidates: Vec<&Node> = Vec::new();
        let fixed = task.slot.is_none() && task.node_id.is_some();
        for node in state.nodes.values() {
            if fixed && task.node_id.as_deref() != Some(node.id.as_str()) {
                continue;
            }
            match fits(node, task, &loads[node.id.as_str()]) {
                Ok(()) => candidates.push(node),
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        let best = candidates.into_iter().min_by_key(|n| {
            let load = &loads[n.id.as_str()];
            (
                spread_rank(state, &loads, task, n),
                load.per_service.get(&task.service_id).copied().unwrap_or(0),
                load.total,
                n.id.clone(),
            )
        });
        match best {
            Some(node) => {
                if let Some(load) = loads.get_mut(node.id.as_str()) {
                    add_load(load, task);
                }
                out.assignments.push((task.id.clone(), node.id.clone()));
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
    *load.per_service.entry(t.service_id.clone()).or_default() += 1;
    load.ports.extend(t.spec.host_ports());
    load.nano_cpus += cpus_to_nano(t.spec.resources.reservations.cpus);
    load.memory += t.spec.resources.reservations.memory.unwrap_or(0);
}

fn fits(node: &Node, task: &Task, load: &Load) -> Result<(), &'static str> {
    if !node.schedulable() {
        return Err("node not available for new tasks");
    }
    if !offers_runtime(node, task.spec.runtime) {
        return Err("runtime not offered");
    }
    if !satisfies(node, &task.spec.placement.constraints) {
        return Err("scheduling constraints not satisfied");
    }
    let max = task.spec.placement.max_replicas_per_node;
    if max > 0 && load.per_service.get(&task.service_id).copied().unwrap_or(0) >= max {
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
fn spread_rank(
    state: &ClusterState,
    loads: &BTreeMap<&str, Load>,
    task: &Task,
    node: &Node,
) -> Vec<u64> {
    task.spec
        .placement
        .preferences
        .iter()
        .map(|p| {
            let value = node_attr(node, &p.spread);
            state
                .nodes
                .values()
                .filter(|n| node_attr(n, &p.spread) == value)
                .map(|n| {
                    loads[n.id.as_str()]
                        .per_service
                        .get(&task.service_id)
                        .copied()
                        .unwrap_or(0)
                })
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests;
