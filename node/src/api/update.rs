//! API for rollouts: `service update`, `service rollback`, stack versions
//! and `stack rollback`. Checks what the caller can get wrong, then proposes
//! one command (or one batch): the updater in the orchestrator does the rest.
//! Invariant: a stack deploy that changes anything records the deployed
//! version in the same Raft entry, so history and services never disagree.

use super::{find_service, new_service, normalize, snapshot, ApiError, ApiResult, AppState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use skein_protocol::api::{
    ServiceUpdateRequest, StackDeployResponse, StackRollbackRequest, StackVersionRow,
};
use skein_protocol::{Command, Service, ServiceSpec, STACK_LABEL};

/// `POST /v1/services/{id}/update`: replace the spec; a changed task
/// template starts a rolling update, any update resumes a paused one.
pub(super) async fn update_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ServiceUpdateRequest>, JsonRejection>,
) -> ApiResult<Json<Service>> {
    let Json(req) = body?;
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    if req.spec.name != svc.spec.name {
        return Err(ApiError::bad(format!(
            "spec.name: a service cannot be renamed ({} -> {}): create a new service instead",
            svc.spec.name, req.spec.name
        )));
    }
    if req.spec.mode != svc.spec.mode {
        return Err(ApiError::bad(format!(
            "spec.mode: service {} cannot change mode: remove it and create it again",
            svc.spec.name
        )));
    }
    let spec = normalize(&st, req.spec)?;
    st.proposer
        .propose(Command::UpdateService {
            id: svc.id.clone(),
            expected_version: req.version,
            spec,
            previous_spec: Some(svc.spec.clone()),
            at: crate::util::now_ms(),
        })
        .await?;
    let after = snapshot(&st);
    Ok(Json(find_service(&after, &svc.id)?.clone()))
}

/// `POST /v1/services/{id}/rollback`: back to the previous spec, driven by
/// its rollback settings. The replaced spec becomes the previous one, so a
/// second rollback goes forward again.
pub(super) async fn rollback_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Service>> {
    let s = snapshot(&st);
    let svc = find_service(&s, &id)?;
    let Some(prev) = svc.previous_spec.clone() else {
        return Err(ApiError::bad(format!(
            "service {} has no previous spec to roll back to (it was never updated, or an \
             automatic rollback already restored it)",
            svc.spec.name
        )));
    };
    st.proposer
        .propose(Command::RollbackService {
            id: svc.id.clone(),
            expected_version: svc.version,
            spec: prev,
            keep_previous: true,
            message: "rollback started: manually requested".into(),
            at: crate::util::now_ms(),
        })
        .await?;
    let after = snapshot(&st);
    Ok(Json(find_service(&after, &svc.id)?.clone()))
}

/// `GET /v1/stacks/{name}/versions`: the recorded versions, oldest first.
pub(super) async fn stack_versions(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<StackVersionRow>>> {
    let s = snapshot(&st);
    let versions = s
        .stacks
        .get(&name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::not_found(format!("no deployed versions of stack: {name}")))?;
    Ok(Json(
        versions
            .iter()
            .map(|v| StackVersionRow {
                version: v.version,
                deployed_at: v.deployed_at,
                services: v.services.iter().map(|s| s.name.clone()).collect(),
            })
            .collect(),
    ))
}

/// `POST /v1/stacks/{name}/rollback`: every service of the stack back to a
/// recorded version together (one Raft entry); each changed service rolls
/// back with its own rollback settings. Recorded as a new version, so a
/// second rollback goes forward again.
pub(super) async fn rollback_stack(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<StackRollbackRequest>, JsonRejection>,
) -> ApiResult<Json<StackDeployResponse>> {
    let Json(req) = body?;
    let s = snapshot(&st);
    let versions = s
        .stacks
        .get(&name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::not_found(format!("no deployed versions of stack: {name}")))?;
    let known = || {
        versions
            .iter()
            .map(|v| v.version.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let target = match req.to {
        Some(n) => versions.iter().find(|v| v.version == n).ok_or_else(|| {
            ApiError::not_found(format!(
                "--to {n}: stack {name} has no version {n}; it keeps versions {}",
                known()
            ))
        })?,
        None => match versions.len() {
            0 | 1 => {
                return Err(ApiError::bad(format!(
                    "stack {name} has only one deployed version ({}): nothing to roll back to",
                    known()
                )))
            }
            n => &versions[n - 2],
        },
    };
    let now = crate::util::now_ms();
    let mut cmds = Vec::new();
    let mut resp = StackDeployResponse {
        created: vec![],
        updated: vec![],
        unchanged: vec![],
        removed: vec![],
    };
    let wanted: std::collections::BTreeSet<&str> =
        target.services.iter().map(|s| s.name.as_str()).collect();
    for spec in &target.services {
        match s.service_by_name(&spec.name) {
            Some(existing) if existing.stack() != Some(name.as_str()) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "service {} exists and is not part of stack {name}: remove or rename it",
                        spec.name
                    ),
                ));
            }
            Some(existing) if &existing.spec == spec => resp.unchanged.push(spec.name.clone()),
            Some(existing) => {
                resp.updated.push(spec.name.clone());
                cmds.push(Command::RollbackService {
                    id: existing.id.clone(),
                    expected_version: existing.version,
                    spec: spec.clone(),
                    keep_previous: true,
                    message: format!(
                        "rollback started: stack {name} rolled back to version {}",
                        target.version
                    ),
                    at: now,
                });
            }
            None => {
                resp.created.push(spec.name.clone());
                cmds.push(Command::CreateService(new_service(spec.clone(), now)));
            }
        }
    }
    for svc in s.stack_services(&name) {
        if !wanted.contains(svc.spec.name.as_str()) {
            resp.removed.push(svc.spec.name.clone());
            cmds.push(Command::RemoveService {
                id: svc.id.clone(),
                at: now,
            });
        }
    }
    if !cmds.is_empty() {
        cmds.push(Command::RecordStackVersion {
            stack: name.clone(),
            services: target.services.clone(),
            at: now,
        });
        st.proposer.propose(Command::Batch(cmds)).await?;
    }
    Ok(Json(resp))
}

/// The specs a stack deploy records: the normalized specs of the request.
pub(super) fn record(name: &str, specs: &[ServiceSpec], at: u64) -> Command {
    Command::RecordStackVersion {
        stack: name.to_string(),
        services: specs
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.labels.insert(STACK_LABEL.to_string(), name.to_string());
                s
            })
            .collect(),
        at,
    }
}
