//! The replicated cluster state and its deterministic `apply`.
//!
//! Owner: the Raft driver, which applies committed commands in log order and
//! publishes the result. Everyone else reads published snapshots.
//! Invariants:
//! - `apply` is a pure function of (state, command): no clock, no randomness,
//!   no I/O, so every manager computes the same state from the same log;
//! - a task's observed state only moves forward; one writer per field
//!   (user: service spec; orchestrator: desired state and node; worker: status);
//! - a refused command changes nothing and says why ([`ApplyError`]), except
//!   that a refused [`Command::Once`] still records its request's verdict;
//! - a [`Command::Once`] is applied at most once per request id among the
//!   last [`RECENT_REQUESTS`] requests: a repeat returns the first verdict.

use serde::{Deserialize, Serialize};
use skein_protocol::command::RequestId;
use skein_protocol::{
    Command, Node, NodeId, Service, ServiceId, Task, TaskId, TaskState, STACK_LABEL,
};
use std::collections::BTreeMap;

mod table;
pub use table::{Stamp, Table};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub cluster_id: String,
    /// Set once by the founding manager (InitCluster).
    #[serde(default)]
    pub secrets: skein_protocol::ClusterSecrets,
    /// Nodes removed from the cluster: locked out for good.
    #[serde(default)]
    pub removed: std::collections::BTreeSet<NodeId>,
    pub nodes: Table<NodeId, Node>,
    pub services: Table<ServiceId, Service>,
    pub tasks: Table<TaskId, Task>,
    /// Deployed versions per stack, oldest first, at most
    /// [`skein_protocol::STACK_VERSIONS`] each.
    #[serde(default)]
    pub stacks: BTreeMap<String, Vec<skein_protocol::StackVersion>>,
    /// Verdicts of the last [`RECENT_REQUESTS`] [`Command::Once`] requests.
    #[serde(default)]
    pub recent_requests: RecentRequests,
    /// The transport identities (libp2p peer ids) of removed nodes: refused
    /// when they connect (see [`crate::cluster::authority`]).
    #[serde(default)]
    pub removed_peers: std::collections::BTreeSet<String>,
    /// Who the peers are: equal stamps, the same nodes with the same
    /// identity (name, peer id, addresses, raft id, role), the same
    /// managers' statuses and the same removed peers. Unlike the node
    /// table's stamp, a worker's verdict or session move leaves it as it is:
    /// at 5,000 nodes those come by the thousand in a rollout or a failover,
    /// and every pass keyed by it walks every node. Kept by [`Self::apply`];
    /// a write to `nodes` outside it must [`Stamp::touch`] it.
    #[serde(skip)]
    pub roster: Stamp,
    /// Equal stamps (and rosters), the same session managers for every
    /// node (`Node::session`, see [`Self::session_judge`]). Kept like `roster`.
    #[serde(skip)]
    pub sessions: Stamp,
}

/// A node's fields the [`ClusterState::roster`] stamp stands for.
fn roster_of(n: &Node) -> impl PartialEq + '_ {
    let manager = n.role == skein_protocol::NodeRole::Manager;
    (
        (&n.name, &n.peer_id, &n.addr, &n.api_addr),
        (n.raft_id, n.role, manager.then_some(n.status)),
    )
}

/// How many request verdicts are remembered. A proposer retries for seconds,
/// at most a few hundred requests a second reach one cluster: 4,096 covers
/// every retry window many times over and stays a few hundred KiB.
pub const RECENT_REQUESTS: usize = 4096;

/// The verdicts of recent requests, oldest first, with an index by id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRequests {
    order: std::collections::VecDeque<RequestId>,
    verdicts: BTreeMap<RequestId, Result<(), ApplyError>>,
}

impl RecentRequests {
    pub fn get(&self, id: &RequestId) -> Option<&Result<(), ApplyError>> {
        self.verdicts.get(id)
    }
    fn record(&mut self, id: RequestId, verdict: Result<(), ApplyError>) {
        if self.verdicts.insert(id, verdict).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > RECENT_REQUESTS {
            if let Some(old) = self.order.pop_front() {
                self.verdicts.remove(&old);
            }
        }
    }
    pub fn len(&self) -> usize {
        self.order.len()
    }
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Why a command was refused. Deterministic: every manager refuses alike.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("service {0:?} already exists: pick another name or update it")]
    ServiceExists(String),
    #[error("no such service: {0}")]
    NoSuchService(String),
    #[error(
        "service {name} was changed by someone else (version {found}, expected {expected}): retry"
    )]
    VersionConflict {
        name: String,
        found: u64,
        expected: u64,
    },
    #[error("no such node: {0}")]
    NoSuchNode(String),
    #[error("node name {0:?} is taken by another node")]
    NodeNameTaken(String),
    #[error("node {0} was removed from the cluster: start it with an empty --data-dir to join again as a new node")]
    NodeRemoved(String),
}

/// What changed, for watchers (the orchestrator wakes up on these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Node(NodeId),
    Service(ServiceId),
    Task(TaskId),
}

impl ClusterState {
    /// Applies one committed command. On error nothing changed.
    pub fn apply(&mut self, cmd: &Command, events: &mut Vec<Event>) -> Result<(), ApplyError> {
        if let Command::Once { request, cmd } = cmd {
            if let Some(verdict) = self.recent_requests.get(request) {
                return verdict.clone();
            }
            let verdict = self.apply(cmd, events);
            self.recent_requests.record(*request, verdict.clone());
            return verdict;
        }
        if let Command::Batch(cmds) = cmd {
            // All or nothing: check on a copy only when the batch could fail part-way.
            if cmds.iter().any(can_fail) {
                let mut copy = self.clone();
                let mut ev = Vec::new();
                for c in cmds {
                    copy.apply(c, &mut ev)?;
                }
                *self = copy;
                events.extend(ev);
            } else {
                for c in cmds {
                    self.apply(c, events)?;
                }
            }
            return Ok(());
        }
        self.apply_one(cmd, events)
    }

    fn apply_one(&mut self, cmd: &Command, ev: &mut Vec<Event>) -> Result<(), ApplyError> {
        match cmd {
            Command::UpsertNode(node) if self.removed.contains(&node.id) => {
                return Err(ApplyError::NodeRemoved(node.name.clone()));
            }
            Command::UpsertNode(node) => {
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.name == node.name && n.id != node.id)
                {
                    return Err(ApplyError::NodeNameTaken(other.name.clone()));
                }
                let old = self.nodes.get(&node.id);
                let merged = match old {
                    // The node describes itself; the operator's fields stay.
                    Some(old) => Node {
                        role: old.role,
                        availability: old.availability,
                        created_at: old.created_at,
                        session: old.session.clone(),
                        ..node.clone()
                    },
                    None => node.clone(),
                };
                if old.is_none_or(|o| roster_of(o) != roster_of(&merged)) {
                    self.roster.touch();
                }
                self.nodes.insert(node.id.clone(), merged);
                ev.push(Event::Node(node.id.clone()));
            }
            Command::SetNodeStatus {
                id,
                status,
                message,
                at,
            } => {
                let n = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NoSuchNode(id.clone()))?;
                if n.role == skein_protocol::NodeRole::Manager && n.status != *status {
                    self.roster.touch();
                }
                n.status = *status;
                n.status_message = message.clone();
                n.updated_at = *at;
                n.last_seen = *at;
                ev.push(Event::Node(id.clone()));
            }
            Command::NodeVerdicts { by, verdicts, at } => {
                for (id, status, message) in verdicts {
                    let judge = self.session_judge(id).map(str::to_string);
                    let Some(n) = self.nodes.get(id) else {
                        continue;
                    };
                    let ready = *status == skein_protocol::NodeStatus::Ready;
                    // Another manager holds the session: not ours to judge.
                    if !ready && judge.as_ref().is_some_and(|j| j != by) {
                        continue;
                    }
                    let take = ready && n.session != *by;
                    let same = n.status == *status && n.status_message == *message;
                    if !take && same {
                        // Nothing to write: the row (and the table's stamp)
                        // stays as it is.
                        continue;
                    }
                    if n.role == skein_protocol::NodeRole::Manager && n.status != *status {
                        self.roster.touch();
                    }
                    let Some(n) = self.nodes.get_mut(id) else {
                        continue;
                    };
                    if take {
                        n.session = by.clone();
                        self.sessions.touch();
                    }
                    if same {
                        continue;
                    }
                    n.status = *status;
                    n.status_message = message.clone();
                    n.updated_at = *at;
                    n.last_seen = *at;
                    ev.push(Event::Node(id.clone()));
                }
            }
            Command::UpdateNode {
                id,
                role,
                availability,
                labels,
                at,
            } => {
                let n = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NoSuchNode(id.clone()))?;
                if let Some(r) = role {
                    n.role = *r;
                    n.manager_status = match r {
                        skein_protocol::NodeRole::Manager => {
                            Some(n.manager_status.clone().unwrap_or(
                                skein_protocol::ManagerStatus {
                                    raft_id: n.raft_id,
                                    addr: n.addr.clone(),
                                    leader: false,
                                    reachability: "reachable".into(),
                                },
                            ))
                        }
                        skein_protocol::NodeRole::Worker => None,
                    };
                }
                if let Some(a) = availability {
                    n.availability = *a;
                }
                if let Some(l) = labels {
                    n.labels = l.clone();
                }
                n.updated_at = *at;
                // Rare (an operator's change): no need to tell which field.
                self.roster.touch();
                ev.push(Event::Node(id.clone()));
            }
            Command::RemoveNode { id } => {
                let node = self
                    .nodes
                    .remove(id)
                    .ok_or_else(|| ApplyError::NoSuchNode(id.clone()))?;
                self.removed.insert(id.clone());
                self.roster.touch();
                if !node.peer_id.is_empty() {
                    self.removed_peers.insert(node.peer_id.clone());
                }
                ev.push(Event::Node(id.clone()));
            }
            Command::CreateService(svc) => {
                if self.service_by_name(&svc.spec.name).is_some()
                    || self.services.contains_key(&svc.id)
                {
                    return Err(ApplyError::ServiceExists(svc.spec.name.clone()));
                }
                self.services.insert(svc.id.clone(), svc.clone());
                ev.push(Event::Service(svc.id.clone()));
            }
            Command::UpdateService {
                id,
                expected_version,
                spec,
                previous_spec,
                at,
            } => {
                let s = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NoSuchService(id.clone()))?;
                if s.version != *expected_version {
                    return Err(ApplyError::VersionConflict {
                        name: s.spec.name.clone(),
                        found: s.version,
                        expected: *expected_version,
                    });
                }
                // A new task template starts a rollout; any update resumes
                // a paused one (as in Swarm). A scale alone changes nothing.
                let paused = s.update_status.as_ref().is_some_and(|u| {
                    matches!(
                        u.state,
                        skein_protocol::UpdateState::Paused
                            | skein_protocol::UpdateState::RollbackPaused
                    )
                });
                if paused || !s.spec.same_task_template(spec) {
                    s.update_status = Some(skein_protocol::UpdateStatus::begin(
                        skein_protocol::UpdateState::Updating,
                        *at,
                        s.version + 1,
                        "update in progress",
                    ));
                }
                s.spec = spec.clone();
                s.previous_spec = previous_spec.clone();
                s.version += 1;
                s.updated_at = *at;
                ev.push(Event::Service(id.clone()));
            }
            Command::RollbackService {
                id,
                expected_version,
                spec,
                keep_previous,
                message,
                at,
            } => {
                let s = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NoSuchService(id.clone()))?;
                if s.version != *expected_version {
                    return Err(ApplyError::VersionConflict {
                        name: s.spec.name.clone(),
                        found: s.version,
                        expected: *expected_version,
                    });
                }
                let replaced = std::mem::replace(&mut s.spec, spec.clone());
                s.previous_spec = keep_previous.then_some(replaced);
                s.update_status = Some(skein_protocol::UpdateStatus::begin(
                    skein_protocol::UpdateState::RollbackStarted,
                    *at,
                    s.version + 1,
                    message.clone(),
                ));
                s.version += 1;
                s.updated_at = *at;
                ev.push(Event::Service(id.clone()));
            }
            Command::RecordStackVersion {
                stack,
                services,
                at,
            } => {
                let versions = self.stacks.entry(stack.clone()).or_default();
                let version = versions.last().map_or(1, |v| v.version + 1);
                versions.push(skein_protocol::StackVersion {
                    version,
                    deployed_at: *at,
                    services: services.clone(),
                });
                if versions.len() > skein_protocol::STACK_VERSIONS {
                    let extra = versions.len() - skein_protocol::STACK_VERSIONS;
                    versions.drain(..extra);
                }
            }
            Command::SetUpdateStatus { id, status } => {
                let s = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::NoSuchService(id.clone()))?;
                s.update_status = status.clone();
                ev.push(Event::Service(id.clone()));
            }
            Command::RemoveService { id, at: _ } => {
                self.services
                    .remove(id)
                    .ok_or_else(|| ApplyError::NoSuchService(id.clone()))?;
                for t in self.tasks.values_mut_where(|t| {
                    &t.service_id == id && t.desired_state < TaskState::Shutdown
                }) {
                    t.desired_state = TaskState::Shutdown;
                    stop_if_unplaced(t);
                    ev.push(Event::Task(t.id.clone()));
                }
                ev.push(Event::Service(id.clone()));
            }
            Command::CreateTasks(tasks) => {
                for t in tasks {
                    // Ids are unique by construction; an existing id is never overwritten.
                    if !self.tasks.contains_key(&t.id) {
                        self.tasks.insert(t.id.clone(), t.clone());
                        ev.push(Event::Task(t.id.clone()));
                    }
                }
            }
            Command::SetDesiredState(changes) => {
                for (id, desired) in changes {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if *desired > t.desired_state {
                            t.desired_state = *desired;
                            stop_if_unplaced(t);
                            ev.push(Event::Task(id.clone()));
                        }
                    }
                }
            }
            Command::AssignTasks { assignments, at } => {
                for (id, node) in assignments {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if t.status.state < TaskState::Assigned {
                            t.node_id = Some(node.clone());
                            t.status.state = TaskState::Assigned;
                            t.status.timestamp = *at;
                            t.status.message = "assigned".into();
                            ev.push(Event::Task(id.clone()));
                        }
                    }
                }
            }
            Command::SetPendingMessage(msgs) => {
                for (id, msg) in msgs {
                    if let Some(t) = self.tasks.get_mut(id) {
                        if t.status.state <= TaskState::Pending && &t.status.message != msg {
                            t.status.state = TaskState::Pending;
                            t.status.message = msg.clone();
                            ev.push(Event::Task(id.clone()));
                        }
                    }
                }
            }
            Command::SetTaskStatus(updates) => {
                for (id, status) in updates {
                    if let Some(t) = self.tasks.get_mut(id) {
                        let moves_forward = status.state > t.status.state;
                        let same_state_news = status.state == t.status.state && *status != t.status;
                        if moves_forward || same_state_news {
                            t.status = status.clone();
                            ev.push(Event::Task(id.clone()));
                        }
                    }
                }
            }
            Command::RemoveTasks(ids) => {
                for id in ids {
                    if self.tasks.remove(id).is_some() {
                        ev.push(Event::Task(id.clone()));
                    }
                }
            }
            Command::Batch(_) => return self.apply(cmd, ev),
            Command::InitCluster(secrets) => {
                if self.secrets.cluster_id.is_empty() {
                    self.secrets = secrets.clone();
                    self.cluster_id = secrets.cluster_id.clone();
                }
            }
            Command::RotateJoinSecret { role, secret } => match role {
                skein_protocol::NodeRole::Worker => self.secrets.worker_secret = secret.clone(),
                skein_protocol::NodeRole::Manager => self.secrets.manager_secret = secret.clone(),
            },
            // Nested inside a batch: deduplicated the same way.
            Command::Once { .. } => return self.apply(cmd, ev),
        }
        Ok(())
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// A service by exact id, exact name, or unique id prefix (as docker does).
    pub fn find_service(&self, key: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(key) {
            return Some(s);
        }
        if let Some(s) = self.service_by_name(key) {
            return Some(s);
        }
        let mut it = self.services.values().filter(|s| s.id.starts_with(key));
        match (it.next(), it.next()) {
            (Some(s), None) if !key.is_empty() => Some(s),
            _ => None,
        }
    }

    /// A node by exact id, exact name, or unique id prefix.
    pub fn find_node(&self, key: &str) -> Option<&Node> {
        if let Some(n) = self.nodes.get(key) {
            return Some(n);
        }
        if let Some(n) = self.nodes.values().find(|n| n.name == key) {
            return Some(n);
        }
        let mut it = self.nodes.values().filter(|n| n.id.starts_with(key));
        match (it.next(), it.next()) {
            (Some(n), None) if !key.is_empty() => Some(n),
            _ => None,
        }
    }

    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }

    /// Equal keys: who the peers are has not changed (see
    /// [`Self::roster`]); a pass over them can be skipped.
    pub fn peers_key(&self) -> u64 {
        self.roster.get()
    }

    /// Equal keys: every node's [`Self::session_judge`] is the same.
    pub fn judges_key(&self) -> (u64, u64) {
        (self.roster.get(), self.sessions.get())
    }

    /// The manager that judges `node`'s liveness: the one holding its
    /// session, while that one is a ready manager; None when nobody does
    /// (then the leader judges it). A manager node is always the leader's
    /// to judge: its heartbeats go to the leader only, so the manager that
    /// last took its session over (an old leader) would see it fall silent
    /// and mark it down, and the node could never mark itself ready again.
    pub fn session_judge(&self, node: &str) -> Option<&str> {
        let n = self.nodes.get(node)?;
        if n.role == skein_protocol::NodeRole::Manager {
            return None;
        }
        let m = self.nodes.get(&n.session)?;
        (m.role == skein_protocol::NodeRole::Manager
            && m.status == skein_protocol::NodeStatus::Ready
            && m.id != n.id)
            .then_some(m.id.as_str())
    }

    pub fn tasks_on<'a>(&'a self, node_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.node_id.as_deref() == Some(node_id))
    }

    /// Services of a stack, by the stack label.
    pub fn stack_services<'a>(&'a self, stack: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .values()
            .filter(move |s| s.spec.labels.get(STACK_LABEL).map(String::as_str) == Some(stack))
    }
}

/// A task no node has been given is the orchestrator's alone: told to
/// stop, it is done at once (no worker would ever report on it).
fn stop_if_unplaced(t: &mut Task) {
    if t.desired_state > TaskState::Running && t.status.state < TaskState::Assigned {
        t.status.state = TaskState::Shutdown;
        t.status.message = "shut down before it was placed".into();
    }
}

impl ClusterState {
    /// The join token for `role`, if the cluster's identity is recorded.
    pub fn join_token(&self, role: skein_protocol::NodeRole) -> Option<String> {
        let s = &self.secrets;
        let key = skein_protocol::token::unhex32(&s.cluster_key)?;
        let secret = match role {
            skein_protocol::NodeRole::Worker => &s.worker_secret,
            skein_protocol::NodeRole::Manager => &s.manager_secret,
        };
        Some(
            skein_protocol::token::JoinToken {
                cluster_id: s.cluster_id.clone(),
                cluster_key: key,
                role,
                secret: secret.clone(),
            }
            .to_string(),
        )
    }

    /// Checks a join token against this cluster: the role it grants, or
    /// why it is refused (in words the joining user can act on).
    pub fn check_join_token(&self, token: &str) -> Result<skein_protocol::NodeRole, String> {
        let t: skein_protocol::token::JoinToken = token.parse()?;
        if t.cluster_id != self.secrets.cluster_id {
            return Err(format!(
                "the token is for cluster {}, this is cluster {}: get a token from a manager of this cluster",
                t.cluster_id, self.secrets.cluster_id
            ));
        }
        let expected = match t.role {
            skein_protocol::NodeRole::Worker => &self.secrets.worker_secret,
            skein_protocol::NodeRole::Manager => &self.secrets.manager_secret,
        };
        if expected.is_empty() || &t.secret != expected {
            return Err(
                "the token is not valid (rotated, or mistyped): get a new one with `skein join-token worker|manager` on a manager"
                    .to_string(),
            );
        }
        Ok(t.role)
    }
}

fn can_fail(cmd: &Command) -> bool {
    !matches!(
        cmd,
        Command::CreateTasks(_)
            | Command::SetDesiredState(_)
            | Command::AssignTasks { .. }
            | Command::SetPendingMessage(_)
            | Command::SetTaskStatus(_)
            | Command::RemoveTasks(_)
            | Command::RecordStackVersion { .. }
    )
}

#[cfg(test)]
mod tests;
