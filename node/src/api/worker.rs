//! A worker node's API. A worker holds only its own assignments, not the
//! cluster's state, and has only the authority of its role: it answers
//! what it knows of itself (`GET /v1/info`, its gossip view
//! `GET /v1/members`), lets the node leave (`POST /v1/leave`, proposed
//! through the manager holding its session), and answers everything else
//! with 403 naming a manager to ask (as `docker node ls` on a Swarm worker
//! does).

use super::ApiError;
use crate::membership::{MembershipHandle, Snapshot};
use crate::net::NetHandle;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use skein_protocol::api::Info;
use skein_protocol::wire::ManagerInfo;
use skein_protocol::Command;
use tokio::sync::watch;

#[derive(Clone)]
pub struct WorkerApi {
    pub node_id: String,
    pub node_name: String,
    pub raft_id: u64,
    pub cluster_id: String,
    pub default_runtime: String,
    pub membership: MembershipHandle,
    pub net: NetHandle,
    /// The managers this worker knows (from its session).
    pub managers: watch::Receiver<Vec<ManagerInfo>>,
}

pub fn router(state: WorkerApi) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/members", get(members))
        .route("/v1/leave", post(leave))
        .fallback(|State(st): State<WorkerApi>| async move {
            let managers = st.managers.borrow().clone();
            ApiError::new(StatusCode::FORBIDDEN, refusal(&st.node_name, &managers))
        })
        .with_state(state)
}

/// What a worker says when asked for what only a manager has, naming a
/// manager to ask (`managers`: ready ones first).
pub fn refusal(node_name: &str, managers: &[ManagerInfo]) -> String {
    let hint = match managers.iter().find(|m| !m.api_addr.is_empty()) {
        Some(m) => format!(
            "run it against a manager, e.g. {} (`skein -H {} ...` on that host)",
            m.name, m.api_addr
        ),
        None => "run it against a manager".to_string(),
    };
    format!(
        "this node ({node_name}) is a worker: it holds only its own tasks, not the cluster's \
         state, and cannot change the cluster or hand out join tokens; {hint}"
    )
}

async fn info(State(st): State<WorkerApi>) -> Json<Info> {
    Json(Info::local(
        &st.node_id,
        &st.node_name,
        &st.cluster_id,
        &st.default_runtime,
        "worker",
    ))
}

async fn members(State(st): State<WorkerApi>) -> Json<Snapshot> {
    Json(st.membership.snapshot().as_ref().clone())
}

async fn leave(State(st): State<WorkerApi>) -> Result<StatusCode, ApiError> {
    let managers = st.managers.borrow().clone();
    crate::worker::session::propose_via(
        &st.net,
        &managers,
        st.raft_id,
        Command::RemoveNode {
            id: st.node_id.clone(),
        },
    )
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot leave: no manager took the request ({e}); try again once a manager is reachable"),
        )
    })?;
    tracing::warn!("this node left the cluster: its tasks stop; stop the agent and clear its data dir to join again");
    Ok(StatusCode::NO_CONTENT)
}
