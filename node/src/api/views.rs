//! Rows for listings: the exact keys `--format json` prints and the CLI's
//! tables show. Pure functions of the cluster state.

use crate::orchestrator::reconcile::global_eligible;
use crate::store::ClusterState;
use skein_protocol::api::{NodeRow, ServiceRow, TaskRow};
use skein_protocol::{
    Availability, NodeRole, NodeStatus, Protocol, PublishMode, Service, ServiceMode, Task,
    TaskState,
};

/// `voters`: the raft voters this node knows of; a manager not among them
/// yet is shown `joining` (it cannot vote until it has caught up).
pub fn node_rows(state: &ClusterState, leader_raft_id: u64, voters: &[u64]) -> Vec<NodeRow> {
    let mut rows: Vec<NodeRow> = state
        .nodes
        .values()
        .map(|n| NodeRow {
            id: n.id.clone(),
            name: n.name.clone(),
            role: match n.role {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }
            .into(),
            availability: match n.availability {
                Availability::Active => "active",
                Availability::Pause => "pause",
                Availability::Drain => "drain",
            }
            .into(),
            status: match n.status {
                NodeStatus::Ready => "ready",
                NodeStatus::Down => "down",
                NodeStatus::Unknown => "unknown",
            }
            .into(),
            leader: leader_raft_id != 0
                && n.manager_status
                    .as_ref()
                    .is_some_and(|m| m.raft_id == leader_raft_id),
            addr: n.addr.clone(),
            region: n.region.clone(),
            reachability: match (n.role, n.status) {
                (NodeRole::Worker, _) => String::new(),
                (NodeRole::Manager, NodeStatus::Ready)
                    if !voters.is_empty() && !voters.contains(&n.raft_id) =>
                {
                    "joining".into()
                }
                (NodeRole::Manager, NodeStatus::Ready) => "reachable".into(),
                (NodeRole::Manager, _) => "unreachable".into(),
            },
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows
}

pub fn ports_text(svc: &Service) -> String {
    svc.spec
        .ports
        .iter()
        .map(|p| {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            let published = p.published.map(|x| x.to_string()).unwrap_or_default();
            let host = if p.mode == PublishMode::Host {
                "host:"
            } else {
                "*:"
            };
            format!("{host}{published}->{}/{proto}", p.target)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn service_row(state: &ClusterState, svc: &Service) -> ServiceRow {
    let running = state
        .tasks_of(&svc.id)
        .filter(|t| t.status.state == TaskState::Running && t.desired_state == TaskState::Running)
        .count() as u64;
    let (mode, replicas) = match svc.spec.mode {
        ServiceMode::Replicated => ("replicated", svc.spec.desired_replicas().unwrap_or(0)),
        ServiceMode::Global => ("global", global_eligible(state, &svc.spec).count() as u64),
    };
    ServiceRow {
        id: svc.id.clone(),
        name: svc.spec.name.clone(),
        mode: mode.into(),
        replicas,
        running,
        image: svc.spec.image.clone(),
        ports: ports_text(svc),
    }
}

/// Why a finished slot has no new task (or when it gets one): only for the
/// newest task of its slot, when that task ended by itself on the current spec.
fn restart_note(state: &ClusterState, t: &Task, now: u64) -> Option<String> {
    if !matches!(
        t.status.state,
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    ) {
        return None;
    }
    let svc = state.services.get(&t.service_id)?;
    if !t.spec.same_task_template(&svc.spec) {
        return None;
    }
    let newer = state.tasks_of(&t.service_id).any(|o| {
        o.slot == t.slot
            && (t.slot.is_some() || o.node_id == t.node_id)
            && (o.created_at, &o.id) > (t.created_at, &t.id)
    });
    if newer {
        return None;
    }
    if let Some(slot) = t.slot {
        if slot > svc.spec.desired_replicas().unwrap_or(0) {
            return None;
        }
    }
    crate::orchestrator::restart::explain(t, &svc.spec.restart_policy, now)
}

pub fn task_rows<'a>(state: &ClusterState, tasks: impl Iterator<Item = &'a Task>) -> Vec<TaskRow> {
    let now = crate::util::now_ms();
    let mut tasks: Vec<&Task> = tasks.collect();
    // Like docker: by name, current task first, then its history newest first.
    tasks.sort_by(|a, b| {
        (
            &a.service_name,
            a.slot,
            &a.node_id,
            std::cmp::Reverse(a.created_at),
        )
            .cmp(&(
                &b.service_name,
                b.slot,
                &b.node_id,
                std::cmp::Reverse(b.created_at),
            ))
    });
    tasks
        .into_iter()
        .map(|t| TaskRow {
            id: t.id.clone(),
            name: t.display_name(),
            service: t.service_name.clone(),
            slot: t.slot,
            node: t
                .node_id
                .as_ref()
                .map(|id| {
                    state
                        .nodes
                        .get(id)
                        .map(|n| n.name.clone())
                        .unwrap_or_else(|| id.clone())
                })
                .unwrap_or_default(),
            desired_state: t.desired_state.to_string(),
            state: t.status.state.to_string(),
            since: t.status.timestamp,
            image: t.spec.image.clone(),
            error: {
                let base = if t.status.error.is_empty()
                    && (t.status.state == TaskState::Pending
                        || t.status.message.contains("while no manager was reachable"))
                {
                    t.status.message.clone()
                } else {
                    t.status.error.clone()
                };
                match restart_note(state, t, now) {
                    Some(note) if base.is_empty() => note,
                    Some(note) => format!("{base}; {note}"),
                    None => base,
                }
            },
            exit_code: t.status.exit_code,
            health: t.status.health.map(|h| format!("{h:?}").to_lowercase()),
            up_to_date: state
                .services
                .get(&t.service_id)
                .is_some_and(|s| t.spec.same_task_template(&s.spec)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::tests::node;

    #[test]
    fn node_ls_shows_managers_that_do_not_vote_yet_as_joining() {
        let mut st = ClusterState::default();
        for (id, raft_id, role, status) in [
            ("a", 1, NodeRole::Manager, NodeStatus::Ready),
            ("b", 2, NodeRole::Manager, NodeStatus::Ready),
            ("c", 3, NodeRole::Manager, NodeStatus::Down),
            ("d", 4, NodeRole::Worker, NodeStatus::Ready),
        ] {
            let mut n = node(id);
            n.raft_id = raft_id;
            n.role = role;
            n.status = status;
            n.manager_status = (role == NodeRole::Manager).then(|| skein_protocol::ManagerStatus {
                raft_id,
                ..Default::default()
            });
            st.nodes.insert(id.into(), n);
        }
        // b was promoted but raft has not made it a voter yet.
        let rows = node_rows(&st, 1, &[1, 3]);
        let seen: Vec<(&str, &str, bool)> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.reachability.as_str(), r.leader))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("name-a", "reachable", true),
                ("name-b", "joining", false),
                ("name-c", "unreachable", false),
                ("name-d", "", false),
            ]
        );
    }
}
