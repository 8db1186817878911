//! The HTTP/JSON API (axum), under `/v1/`. Reads come from the published
//! Raft state; writes are validated here, proposed as commands and answered
//! once applied. Every failure is a JSON `{"message": ...}` with a 4xx for
//! what the caller can fix and 5xx otherwise; no input can crash the agent.

pub mod bootstrap;
mod update;
pub mod views;
pub mod worker;

use crate::raft::{ProposeError, RaftHandle};
use crate::store::{ApplyError, ClusterState};
use crate::worker::Runtimes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use skein_protocol::api::{
    ErrorBody, Info, ScaleRequest, StackDeployRequest, StackDeployResponse, StackRow,
};
use skein_protocol::{Command, Service, ServiceMode, ServiceSpec, STACK_LABEL};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub raft: RaftHandle,
    /// Writes: proposed here when leading, forwarded to the leader otherwise.
    pub proposer: crate::cluster::forward::Proposer,
    pub runtimes: Runtimes,
    pub node_id: String,
    pub node_name: String,
    pub cluster_id: String,
    /// Gossip membership (`GET /v1/members`), when it runs.
    pub membership: Option<crate::membership::MembershipHandle>,
}

/// An API error: status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        ApiError::new(status_of(&e), e.to_string())
    }
}

/// The HTTP status a proposal's failure means, wherever it was proposed.
pub fn status_of(e: &ProposeError) -> StatusCode {
    {
        match e {
            ProposeError::Rejected(ApplyError::ServiceExists(_)) => StatusCode::CONFLICT,
            ProposeError::Rejected(ApplyError::VersionConflict { .. }) => StatusCode::CONFLICT,
            ProposeError::Rejected(ApplyError::NoSuchService(_) | ApplyError::NoSuchNode(_)) => {
                StatusCode::NOT_FOUND
            }
            ProposeError::Rejected(_) => StatusCode::BAD_REQUEST,
            ProposeError::NotLeader { .. }
            | ProposeError::Dropped
            | ProposeError::Uncertain
            | ProposeError::ConfChangeInProgress
            | ProposeError::TransferFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProposeError::NotAMember(_) => StatusCode::NOT_FOUND,
            ProposeError::LeaderMustTransfer | ProposeError::LastVoter => StatusCode::CONFLICT,
            ProposeError::InvalidPeer
            | ProposeError::NotAVoter(_)
            | ProposeError::ConfChange(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::cluster::forward::ForwardError> for ApiError {
    fn from(e: crate::cluster::forward::ForwardError) -> Self {
        use crate::cluster::forward::ForwardError;
        match e {
            ForwardError::Local(p) => p.into(),
            ForwardError::Refused { status, message } => ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                message,
            ),
            ForwardError::Remote(m) => {
                // The leader refused: the same kinds of refusal as a local apply.
                let status =
                    if m.contains("already exists") || m.contains("changed by someone else") {
                        StatusCode::CONFLICT
                    } else if m.starts_with("no such") {
                        StatusCode::NOT_FOUND
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                ApiError::new(status, m)
            }
            ForwardError::NoLeader | ForwardError::Unreachable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                r.status(),
                format!(
                    "the request body is over the API's limit of {} MiB: send a smaller one \
                     (a stack holds at most {} services)",
                    API_BODY_LIMIT / (1024 * 1024),
                    skein_protocol::MAX_STACK_SERVICES
                ),
            );
        }
        ApiError::new(
            r.status(),
            format!("invalid request body: {}", r.body_text()),
        )
    }
}

/// The largest request body the API reads. A larger one is answered 413 as
/// soon as the limit is passed (or at once, when its Content-Length says
/// so), without reading the rest.
pub const API_BODY_LIMIT: usize = 2 * 1024 * 1024;

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/members", get(list_members))
        .route("/v1/nodes/{id}", get(get_node).delete(remove_node))
        .route("/v1/nodes/{id}/promote", post(promote_node))
        .route("/v1/nodes/{id}/demote", post(demote_node))
        .route("/v1/nodes/{id}/update", post(update_node))
        .route("/v1/nodes/{id}/stop-tasks", post(stop_node_tasks))
        .route("/v1/leave", post(leave))
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{id}", get(get_service).delete(remove_service))
        .route("/v1/services/{id}/scale", post(scale_service))
        .route("/v1/services/{id}/update", post(update::update_service))
        .route("/v1/services/{id}/rollback", post(update::rollback_service))
        .route("/v1/stacks/{name}/versions", get(update::stack_versions))
        .route("/v1/stacks/{name}/rollback", post(update::rollback_stack))
        .route("/v1/services/{id}/tasks", get(service_tasks))
        .route("/v1/services/{id}/logs", get(service_logs))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/join-token/{role}", get(join_token))
        .route("/v1/stacks", get(list_stacks).post(deploy_stack))
        .route("/v1/stacks/{name}", axum::routing::delete(remove_stack))
        .route("/v1/stacks/{name}/services", get(stack_services))
        .route("/v1/stacks/{name}/tasks", get(stack_tasks))
        .fallback(|| async {
            ApiError::not_found(
                "no such API path: see /v1/info, /v1/nodes, /v1/members, /v1/services, /v1/tasks, /v1/stacks",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            worker_guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(API_BODY_LIMIT))
        .with_state(state)
}

/// A worker's API changes nothing in the cluster: every write (and the join
/// tokens, which are secrets) answers 403 naming a manager to use. A worker
/// may still leave (`POST /v1/leave`): that is about itself only.
async fn worker_guard(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let path = req.uri().path();
    let guarded = (!read && path != "/v1/leave") || path.starts_with("/v1/join-token/");
    if guarded {
        let s = snapshot(&st);
        if let Some(refusal) = worker_refusal(&s, &st.node_id) {
            return ApiError::new(StatusCode::FORBIDDEN, refusal).into_response();
        }
    }
    next.run(req).await
}

/// Why this node's API may not change the cluster (None: it is a manager).
/// A manager demoted a moment ago answers like a worker until it starts
/// again as one.
pub fn worker_refusal(s: &ClusterState, node_id: &str) -> Option<String> {
    let me = s.nodes.get(node_id)?;
    (me.role == skein_protocol::NodeRole::Worker)
        .then(|| worker::refusal(&me.name, &crate::dispatcher::session_managers(s, 0)))
}

fn snapshot(st: &AppState) -> Arc<ClusterState> {
    st.raft.current().state.clone()
}

fn find_service<'a>(state: &'a ClusterState, key: &str) -> ApiResult<&'a Service> {
    state
        .find_service(key)
        .ok_or_else(|| ApiError::not_found(format!("no such service: {key}")))
}

async fn info(State(st): State<AppState>) -> Json<Info> {
    let p = st.raft.current();
    let leader_id = p
        .state
        .nodes
        .values()
        .find(|n| {
            n.manager_status
                .as_ref()
                .is_some_and(|m| m.raft_id == p.leader_id && p.leader_id != 0)
        })
        .map(|n| n.id.clone());
    Json(Info {
        node_id: st.node_id.clone(),
        node_name: st.node_name.clone(),
        cluster_id: st.cluster_id.clone(),
        leader_id,
        term: p.term,
        commit: p.commit,
        applied: p.applied,
        version: env!("CARGO_PKG_VERSION").to_string(),
        default_runtime: st.runtimes.default_kind().to_string(),
        role: p
            .state
            .nodes
            .get(&st.node_id)
            .map(|n| n.role.to_string())
            .unwrap_or_default(),
    })
}

/// This node's gossip view: itself, every member with its SWIM state, and
/// the gossip bandwidth metric (`gossip.bytes_out_per_s`, `bytes_in_per_s`,
/// `budget_bytes_per_s`).
async fn list_members(
    State(st): State<AppState>,
) -> Result<Json<crate::membership::Snapshot>, ApiError> {
    match &st.membership {
        Some(m) => Ok(Json(m.snapshot().as_ref().clone())),
        None => Err(ApiError::not_found(
            "gossip membership is not running on this node",
        )),
    }
}

async fn list_nodes(State(st): State<AppState>) -> Json<Vec<skein_protocol::api::NodeRow>> {
    let p = st.raft.current();
    Json(views::node_rows(&p.state, p.leader_id, &p.voters))
}

async fn get_node(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<skein_protocol::Node>> {
    let s = snapshot(&st);
    s.find_node(&id)
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no such node: {id}")))
}

#[derive(Deserialize, Default)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

fn find_node<'a>(state: &'a ClusterState, key: &str) -> ApiResult<&'a skein_protocol::Node> {
    state
        .find_node(key)
        .ok_or_else(|| ApiError::not_found(format!("no such node: {key}")))
}

/// Availability changes (drain, pause, active). Draining the leader with
/// `transfer_leadership` hands leadership over first; a drained manager
/// otherwise keeps every Raft duty, leadership included. `rebalance` (with
/// active) starts a forced rolling update of the replicated services the
/// node could run whose tasks are spread unevenly.
async fn update_node(
    State(st): State<AppState>,
    Path(key): Path<String>,
    body: Result<Json<skein_protocol::api::NodeUpdateRequest>, JsonRejection>,
) -> ApiResult<Json<skein_protocol::api::NodeUpdateResponse>> {
    let Json(req) = body?;
    let s = snapshot(&st);
    let node = find_node(&s, &key)?.clone();
    if req.rebalance
        && req.availability.unwrap_or(node.availability) != skein_protocol::Availability::Active
    {
        return Err(ApiError::bad(
            "rebalance: only an active node can take tasks: use it with availability active \
             (`skein node activate NODE --rebalance`)",
        ));
    }
    if req.transfer_leadership {
        let p = st.proposer.raft().current();
        let leads = node.raft_id != 0 && node.raft_id == p.leader_id;
        if leads {
            st.proposer.hand_over_leadership().await.map_err(|e| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("cannot hand over the leadership of {}: {e}", node.name),
                )
            })?;
        }
    }
    let now = crate::util::now_ms();
    let mut cmds = Vec::new();
    if let Some(a) = req.availability.filter(|a| *a != node.availability) {
        cmds.push(Command::UpdateNode {
            id: node.id.clone(),
            role: None,
            availability: Some(a),
            labels: None,
            at: now,
        });
    }
    let mut rebalanced = Vec::new();
    if req.rebalance {
        let mut active = node.clone();
        active.availability = skein_protocol::Availability::Active;
        for svc in crate::orchestrator::placement::uneven_services(&s, &active) {
            let mut spec = svc.spec.clone();
            spec.force_update += 1;
            rebalanced.push(svc.spec.name.clone());
            cmds.push(Command::UpdateService {
                id: svc.id.clone(),
                expected_version: svc.version,
                spec,
                previous_spec: Some(svc.spec.clone()),
                at: now,
            });
        }
    }
    if !cmds.is_empty() {
        st.proposer.propose(Command::Batch(cmds)).await?;
    }
    let after = snapshot(&st);
    Ok(Json(skein_protocol::api::NodeUpdateResponse {
        node: find_node(&after, &node.id)?.clone(),
        rebalanced,
    }))
}

/// A drain's deadline: stop every task still on the (drained) node now,
/// whether or not its replacement runs yet.
async fn stop_node_tasks(
    State(st): State<AppState>,
    Path(key): Path<String>,
) -> ApiResult<Json<skein_protocol::api::StopTasksResponse>> {
    let s = snapshot(&st);
    let node = find_node(&s, &key)?;
    if node.availability != skein_protocol::Availability::Drain {
        return Err(ApiError::bad(format!(
            "node {} is not drained: its tasks would only be started again; \
             drain it first (`skein node drain {}`)",
            node.name, node.name
        )));
    }
    let live: Vec<&skein_protocol::Task> = s
        .tasks
        .values()
        .filter(|t| {
            t.node_id.as_deref() == Some(node.id.as_str())
                && t.desired_state <= skein_protocol::TaskState::Running
                && !t.status.state.is_terminal()
        })
        .collect();
    if !live.is_empty() {
        st.proposer
            .propose(Command::SetDesiredState(
                live.iter()
                    .map(|t| (t.id.clone(), skein_protocol::TaskState::Shutdown))
                    .collect(),
            ))
            .await?;
    }
    Ok(Json(skein_protocol::api::StopTasksResponse {
        stopped: live.iter().map(|t| t.id.clone()).collect(),
    }))
}

async fn set_role(
    st: &AppState,
    key: &str,
    role: skein_protocol::NodeRole,
) -> ApiResult<Json<skein_protocol::Node>> {
    use crate::cluster::membership::{check_change, Change};
    let s = snapshot(st);
    let node = find_node(&s, key)?;
    if node.role == role {
        return Ok(Json(node.clone()));
    }
    if role == skein_protocol::NodeRole::Worker {
        check_change(&s, node, Change::Demote).map_err(ApiError::bad)?;
    }
    let id = node.id.clone();
    st.proposer
        .propose(Command::UpdateNode {
            id: id.clone(),
            role: Some(role),
            availability: None,
            labels: None,
            at: crate::util::now_ms(),
        })
        .await?;
    let after = snapshot(st);
    Ok(Json(find_node(&after, &id)?.clone()))
}

async fn promote_node(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<skein_protocol::Node>> {
    set_role(&st, &id, skein_protocol::NodeRole::Manager).await
}

async fn demote_node(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<skein_protocol::Node>> {
    set_role(&st, &id, skein_protocol::NodeRole::Worker).await
}

/// `DELETE /v1/nodes/{id}[?force=true]`: refuses a reachable node, and a
/// manager whose removal would lose quorum, unless forced.
async fn remove_node(
    State(st): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<ForceQuery>,
) -> ApiResult<StatusCode> {
    use crate::cluster::membership::{check_change, Change};
    let s = snapshot(&st);
    let node = find_node(&s, &key)?;
    if !q.force {
        if node.status == skein_protocol::NodeStatus::Ready {
            return Err(ApiError::bad(format!(
                "node {} is reachable: run `skein leave` on it, or wait until it is down, or use --force",
                node.name
            )));
        }
        if node.role == skein_protocol::NodeRole::Manager {
            return Err(ApiError::bad(format!(
                "node {} is a manager: demote it first (`skein node demote {}`), or use --force",
                node.name, node.name
            )));
        }
    }
    check_change(&s, node, Change::Remove).or_else(|e| {
        if q.force {
            Ok(())
        } else {
            Err(ApiError::bad(e))
        }
    })?;
    if node.id == st.node_id && s.nodes.len() > 1 {
        return Err(ApiError::bad("a node cannot remove itself: use `skein leave` on it, or `skein node rm` on another node"));
    }
    st.proposer
        .propose(Command::RemoveNode {
            id: node.id.clone(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/leave[?force=true]`: this node leaves the cluster. A manager
/// must be demoted first unless forced (and never if that loses quorum).
async fn leave(State(st): State<AppState>, Query(q): Query<ForceQuery>) -> ApiResult<StatusCode> {
    use crate::cluster::membership::{check_change, Change};
    let s = snapshot(&st);
    let node = find_node(&s, &st.node_id)?;
    if node.role == skein_protocol::NodeRole::Manager {
        if !q.force {
            return Err(ApiError::bad(format!(
                "this node ({}) is a manager: demote it first (`skein node demote {}`), or use --force",
                node.name, node.name
            )));
        }
        check_change(&s, node, Change::Remove).map_err(ApiError::bad)?;
    }
    if s.nodes.len() == 1 {
        return Err(ApiError::bad(
            "this is the only node of the cluster: stop the agent and remove its data dir instead",
        ));
    }
    st.proposer
        .propose(Command::RemoveNode {
            id: node.id.clone(),
        })
        .await?;
    tracing::warn!("this node left the cluster: its tasks stop; stop the agent and clear its data dir to join again");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_services(State(st): State<AppState>) -> Json<Vec<skein_protocol::api::ServiceRow>> {
    let s = snapshot(&st);
    Json(
        s.services
            .values()
            .map(|svc| views::service_row(&s, svc))
            .collect(),
    )
}

async fn get_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<skein_protocol::api::ServiceDetail>> {
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    Ok(Json(skein_protocol::api::ServiceDetail {
        service: svc.clone(),
        tasks: views::task_rows(&s, s.tasks_of(&svc.id)),
    }))
}

/// Fills what the server decides and checks the spec.
fn normalize(st: &AppState, mut spec: ServiceSpec) -> ApiResult<ServiceSpec> {
    if spec.mode == ServiceMode::Replicated && spec.replicas.is_none() {
        spec.replicas = Some(1);
    }
    spec.validate()
        .map_err(|e| ApiError::bad(format!("invalid service spec: {e}")))?;
    let protected: Vec<std::path::PathBuf> = st
        .runtimes
        .all()
        .flat_map(|r| r.protected_paths())
        .collect();
    if let Some(m) = exposes_protected(&spec, &protected) {
        return Err(ApiError::bad(format!("invalid service spec: {m}")));
    }
    Ok(spec)
}

/// Why a bind mount of `spec` would hand a task one of the `protected`
/// directories (this agent's data dir: cluster key, Raft log, task state):
/// the directory itself, anything inside it, or a directory holding it.
/// The source is compared as written (resolved lexically) and, when it
/// exists here, with its symlinks resolved.
fn exposes_protected(spec: &ServiceSpec, protected: &[std::path::PathBuf]) -> Option<String> {
    use std::path::PathBuf;
    for (i, m) in spec.mounts.iter().enumerate() {
        let (skein_protocol::MountKind::Bind, Some(src)) = (m.kind, m.source.as_deref()) else {
            continue;
        };
        let mut forms = vec![PathBuf::from(skein_protocol::clean_host_path(src))];
        if let Ok(real) = std::fs::canonicalize(src) {
            forms.push(real);
        }
        for p in protected {
            if forms.iter().any(|f| f.starts_with(p) || p.starts_with(f)) {
                return Some(format!(
                    "mounts[{i}].source: {src:?} would give the task the agent's data dir {} \
                     (cluster key, Raft log, task state), which skein refuses: bind another directory",
                    p.display()
                ));
            }
        }
    }
    None
}

fn new_service(spec: ServiceSpec, now: u64) -> Service {
    Service {
        id: crate::util::random_hex(6),
        spec,
        previous_spec: None,
        version: 1,
        update_status: None,
        created_at: now,
        updated_at: now,
    }
}

async fn create_service(
    State(st): State<AppState>,
    body: Result<Json<ServiceSpec>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Service>)> {
    let Json(spec) = body?;
    let spec = normalize(&st, spec)?;
    if snapshot(&st).service_by_name(&spec.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "service {:?} already exists: pick another name, or scale or remove it",
                spec.name
            ),
        ));
    }
    let svc = new_service(spec, crate::util::now_ms());
    st.proposer
        .propose(Command::CreateService(svc.clone()))
        .await?;
    Ok((StatusCode::CREATED, Json(svc)))
}

async fn remove_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let sid = find_service(&snapshot(&st), &id)?.id.clone();
    st.proposer
        .propose(Command::RemoveService {
            id: sid,
            at: crate::util::now_ms(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn scale_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ScaleRequest>, JsonRejection>,
) -> ApiResult<Json<Service>> {
    let Json(req) = body?;
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    if svc.spec.mode != ServiceMode::Replicated {
        return Err(ApiError::bad(format!(
            "service {} is global: scale works on replicated services only",
            svc.spec.name
        )));
    }
    let mut spec = svc.spec.clone();
    spec.replicas = Some(req.replicas);
    let spec = normalize(&st, spec)?;
    st.proposer
        .propose(Command::UpdateService {
            id: svc.id.clone(),
            expected_version: svc.version,
            spec,
            previous_spec: Some(svc.spec.clone()),
            at: crate::util::now_ms(),
        })
        .await?;
    let after = snapshot(&st);
    Ok(Json(find_service(&after, &svc.id)?.clone()))
}

async fn service_tasks(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<skein_protocol::api::TaskRow>>> {
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    Ok(Json(views::task_rows(&s, s.tasks_of(&svc.id))))
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
}

async fn service_logs(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<String> {
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    let mut tasks: Vec<_> = s
        .tasks_of(&svc.id)
        .filter(|t| t.node_id.as_deref() == Some(st.node_id.as_str()))
        .collect();
    tasks.sort_by_key(|t| (t.slot, t.created_at));
    let mut out = String::new();
    for t in tasks {
        let bytes = st
            .runtimes
            .logs(t, q.tail)
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let prefix = format!(
            "{}.{}@{}",
            t.display_name(),
            &t.id[..t.id.len().min(12)],
            st.node_name
        );
        for line in String::from_utf8_lossy(&bytes).lines() {
            out.push_str(&prefix);
            out.push_str("    | ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct TaskQuery {
    service: Option<String>,
    stack: Option<String>,
}

async fn list_tasks(
    State(st): State<AppState>,
    Query(q): Query<TaskQuery>,
) -> ApiResult<Json<Vec<skein_protocol::api::TaskRow>>> {
    let s = snapshot(&st);
    let service_id = match &q.service {
        Some(k) => Some(find_service(&s, k)?.id.clone()),
        None => None,
    };
    let rows = views::task_rows(
        &s,
        s.tasks.values().filter(|t| {
            service_id.as_ref().is_none_or(|id| &t.service_id == id)
                && q.stack
                    .as_ref()
                    .is_none_or(|stack| t.spec.labels.get(STACK_LABEL) == Some(stack))
        }),
    );
    Ok(Json(rows))
}

async fn get_task(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<skein_protocol::Task>> {
    let s = snapshot(&st);
    let mut it = s.tasks.values().filter(|t| t.id.starts_with(&id));
    match (it.next(), it.next()) {
        (Some(t), None) if !id.is_empty() => Ok(Json(t.clone())),
        (Some(_), Some(_)) => Err(ApiError::bad(format!("task id prefix {id} is ambiguous"))),
        _ => Err(ApiError::not_found(format!("no such task: {id}"))),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    rotate: bool,
}

/// `GET /v1/join-token/{worker|manager}[?rotate=true]`: the token, and the
/// address to join.
async fn join_token(
    State(st): State<AppState>,
    Path(role): Path<String>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Json<skein_protocol::api::JoinTokenResponse>> {
    let role = match role.as_str() {
        "worker" => skein_protocol::NodeRole::Worker,
        "manager" => skein_protocol::NodeRole::Manager,
        other => {
            return Err(ApiError::bad(format!(
                "unknown role {other:?}: ask for the worker or the manager token"
            )))
        }
    };
    if q.rotate {
        st.raft
            .propose(Command::RotateJoinSecret {
                role,
                secret: crate::util::random_hex(16),
            })
            .await?;
    }
    let s = snapshot(&st);
    let token = s.join_token(role).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has not recorded its identity yet: try again in a moment",
        )
    })?;
    let join_addr = s
        .nodes
        .get(&st.node_id)
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    Ok(Json(skein_protocol::api::JoinTokenResponse {
        role: match role {
            skein_protocol::NodeRole::Worker => "worker".into(),
            skein_protocol::NodeRole::Manager => "manager".into(),
        },
        token,
        join_addr,
    }))
}

async fn list_stacks(State(st): State<AppState>) -> Json<Vec<StackRow>> {
    let s = snapshot(&st);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for svc in s.services.values() {
        if let Some(stack) = svc.stack() {
            *counts.entry(stack.to_string()).or_default() += 1;
        }
    }
    Json(
        counts
            .into_iter()
            .map(|(name, services)| StackRow { name, services })
            .collect(),
    )
}

async fn deploy_stack(
    State(st): State<AppState>,
    body: Result<Json<StackDeployRequest>, JsonRejection>,
) -> ApiResult<Json<StackDeployResponse>> {
    let Json(req) = body?;
    skein_protocol::validate_name(&req.name)
        .map_err(|e| ApiError::bad(format!("stack name: {e}")))?;
    if req.services.len() > skein_protocol::MAX_STACK_SERVICES {
        return Err(ApiError::bad(format!(
            "stack {}: {} services, more than the {} one stack may hold: split it into several stacks",
            req.name,
            req.services.len(),
            skein_protocol::MAX_STACK_SERVICES
        )));
    }
    let s = snapshot(&st);
    let now = crate::util::now_ms();
    let mut cmds = Vec::new();
    let mut resp = StackDeployResponse {
        created: vec![],
        updated: vec![],
        unchanged: vec![],
        removed: vec![],
    };
    let mut names = std::collections::BTreeSet::new();
    let mut deployed = Vec::new();
    for spec in req.services {
        let mut spec = spec;
        spec.labels
            .insert(STACK_LABEL.to_string(), req.name.clone());
        let spec = normalize(&st, spec)
            .map_err(|e| ApiError::bad(format!("stack {}: {}", req.name, e.message)))?;
        if !names.insert(spec.name.clone()) {
            return Err(ApiError::bad(format!(
                "stack {}: service {} appears twice",
                req.name, spec.name
            )));
        }
        deployed.push(spec.clone());
        match s.service_by_name(&spec.name) {
            Some(existing) => {
                if existing.stack() != Some(req.name.as_str()) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "service {} exists and is not part of stack {}: remove it or rename the service",
                            spec.name, req.name
                        ),
                    ));
                }
                if existing.spec == spec {
                    resp.unchanged.push(spec.name.clone());
                } else {
                    resp.updated.push(spec.name.clone());
                    cmds.push(Command::UpdateService {
                        id: existing.id.clone(),
                        expected_version: existing.version,
                        previous_spec: Some(existing.spec.clone()),
                        spec,
                        at: now,
                    });
                }
            }
            None => {
                resp.created.push(spec.name.clone());
                cmds.push(Command::CreateService(new_service(spec, now)));
            }
        }
    }
    if req.prune {
        for svc in s.stack_services(&req.name) {
            if !names.contains(&svc.spec.name) {
                resp.removed.push(svc.spec.name.clone());
                cmds.push(Command::RemoveService {
                    id: svc.id.clone(),
                    at: now,
                });
            }
        }
    }
    let first_deploy = !s.stacks.contains_key(&req.name);
    if !cmds.is_empty() || first_deploy {
        // The deployed version is recorded with the deploy itself.
        cmds.push(update::record(&req.name, &deployed, now));
    }
    if !cmds.is_empty() {
        // One entry: the whole stack is deployed, or nothing of it.
        st.proposer.propose(Command::Batch(cmds)).await?;
    }
    Ok(Json(resp))
}

async fn remove_stack(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    let s = snapshot(&st);
    let services: Vec<&Service> = s.stack_services(&name).collect();
    if services.is_empty() {
        return Err(ApiError::not_found(format!(
            "nothing found in stack: {name}"
        )));
    }
    let now = crate::util::now_ms();
    let names = services.iter().map(|s| s.spec.name.clone()).collect();
    let cmds = services
        .iter()
        .map(|svc| Command::RemoveService {
            id: svc.id.clone(),
            at: now,
        })
        .collect();
    st.proposer.propose(Command::Batch(cmds)).await?;
    Ok(Json(names))
}

async fn stack_services(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<skein_protocol::api::ServiceRow>>> {
    let s = snapshot(&st);
    let rows: Vec<_> = s
        .stack_services(&name)
        .map(|svc| views::service_row(&s, svc))
        .collect();
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "nothing found in stack: {name}"
        )));
    }
    Ok(Json(rows))
}

async fn stack_tasks(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<skein_protocol::api::TaskRow>>> {
    let s = snapshot(&st);
    let ids: std::collections::BTreeSet<&str> =
        s.stack_services(&name).map(|svc| svc.id.as_str()).collect();
    if ids.is_empty() {
        return Err(ApiError::not_found(format!(
            "nothing found in stack: {name}"
        )));
    }
    Ok(Json(views::task_rows(
        &s,
        s.tasks
            .values()
            .filter(|t| ids.contains(t.service_id.as_str())),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{Mount, MountKind};

    fn binding(src: &str) -> ServiceSpec {
        let mut s = ServiceSpec::new("web", "nginx");
        s.mounts.push(Mount {
            kind: MountKind::Bind,
            source: Some(src.into()),
            target: "/x".into(),
            read_only: false,
        });
        s
    }

    #[test]
    fn binds_of_the_data_dir_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = std::fs::canonicalize(dir.path())
            .expect("canonical")
            .join("data");
        std::fs::create_dir_all(data.join("raft")).expect("mkdir");
        let protected = vec![data.clone()];
        let d = data.display().to_string();
        for src in [
            d.clone(),
            format!("{d}/raft"),
            format!("{d}/../data/./raft"),
            data.parent().expect("parent").display().to_string(),
        ] {
            let why = exposes_protected(&binding(&src), &protected).expect(&src);
            assert!(why.contains("data dir"), "{why}");
        }
        // Through a symlink.
        let link = dir.path().join("innocent");
        std::os::unix::fs::symlink(&data, &link).expect("symlink");
        assert!(exposes_protected(&binding(&link.display().to_string()), &protected).is_some());
        // Elsewhere, and volumes, are fine.
        assert!(exposes_protected(&binding("/srv/app"), &protected).is_none());
        let mut vol = binding("/srv/app");
        vol.mounts[0].kind = MountKind::Volume;
        vol.mounts[0].source = Some(d);
        assert!(exposes_protected(&vol, &protected).is_none());
    }
}
