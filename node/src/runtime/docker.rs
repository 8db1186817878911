//! The Docker runtime: each task is one container on the local engine,
//! driven through bollard. The worker is the only caller; `mod.rs` states the
//! contract every runtime keeps.
//!
//! Owns, on the engine: the containers labelled `skein.node=<this node's id>`,
//! and the per-stack bridge networks `skein_<stack>` (labelled `skein.stack`).
//!
//! Invariants:
//! - A task's container is named `skein.<service>.<slot|node>.<task-id>` and
//!   labelled `skein.service`, `skein.service.id`, `skein.task`, `skein.node`
//!   (and `skein.stack` in a stack), over the spec's `container_labels`. The
//!   engine is the only state: a fresh runtime (an agent restart) finds the
//!   same containers by listing `skein.node=<id>`, running or exited. The
//!   only memory is a cache of containers' inspections, each kept while the
//!   listing shows the same state and health for that container (containers
//!   have no restart policy and are never started twice), so a poll inspects
//!   only containers whose state changed.
//! - At most one container per task id: `start` adopts the task's container
//!   when there is one (starting it only if it was created and never
//!   started); a concurrent create loses on the engine-unique name (409) and
//!   adopts the winner's. A container whose start fails is removed, so the
//!   error is all that remains of that task.
//! - Never pulls: an image missing on this node is an `Invalid` error at
//!   once (no registry may be reachable).
//! - The services of one stack on one node share the bridge network
//!   `skein_<stack>`, where each task answers to its service's short name
//!   (`web` for `shop_web`) and full name. The network is created on the
//!   first start and removed, best effort, with the stack's last container.
//!   Networks do not span nodes yet: the log says so when one is created.
//!   Starts and network clean-up of one stack are serialised by a per-stack
//!   lock, so a network is never removed under a container being started.
//! - `Observed.health` is Docker's health status while the container runs;
//!   None without a check, and None once it has exited (Docker marks every
//!   stopped container that had a check "unhealthy": no verdict of the check).
//! - A created-but-never-started container (an agent killed between create
//!   and start) is listed as Exited with code -1, so the worker can see and
//!   remove it.

use super::{Observed, ObservedState, RtFuture, Runtime, RuntimeError};
use crate::util::now_ms;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    ContainerSummary, ContainerSummaryStateEnum, EndpointSettings, HealthConfig, HealthStatusEnum,
    HostConfig, Mount as DockerMount, MountType, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, ListNetworksOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use skein_protocol::task::Health;
use skein_protocol::{
    Dur, MountKind, Protocol, PublishMode, RuntimeKind, ServiceSpec, Task, STACK_LABEL,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

pub const LABEL_SERVICE: &str = "skein.service";
pub const LABEL_SERVICE_ID: &str = "skein.service.id";
pub const LABEL_TASK: &str = "skein.task";
pub const LABEL_NODE: &str = "skein.node";
pub const LABEL_STACK: &str = "skein.stack";
/// Stack networks are named `skein_<stack>`.
pub const NETWORK_PREFIX: &str = "skein_";

/// How long `connect` waits for the engine to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Every request but `stop` (which waits out the grace period) gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a stop request may take beyond the grace period (the kill and exit).
const STOP_SLACK: Duration = Duration::from_secs(30);
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// Runs tasks as containers on one Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    node_id: String,
    /// The engine address, for messages.
    host: String,
    /// The engine sees this machine's file system (a unix socket), so bind
    /// sources can be checked here before the engine is asked.
    local_engine: bool,
    stack_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Container id -> what the listing showed of its state when it was
    /// inspected, and the observation: valid while the listing shows the same.
    observed: Mutex<HashMap<String, (String, Observed)>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("node_id", &self.node_id)
            .field("host", &self.host)
            .finish()
    }
}

/// Connects to the engine at `DOCKER_HOST` (the local unix socket when it
/// is unset), negotiates the API version, and fails within about 3 s when no
/// engine answers. `node_id` labels every container this runtime creates.
pub async fn connect(node_id: &str) -> Result<DockerRuntime, RuntimeError> {
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    let docker = Docker::connect_with_host(&host)
        .map_err(|e| {
            RuntimeError::Other(format!(
                "cannot use the Docker engine at {host} (DOCKER_HOST): {e}"
            ))
        })?
        .with_timeout(REQUEST_TIMEOUT);
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
        // The engine on these machines (API 1.41) refuses bollard's default
        // API version with 400 on every request: negotiate it down first.
        let docker = docker.negotiate_version().await?;
        let version = docker.version().await?;
        Ok::<_, DockerError>((docker, version))
    })
    .await;
    let (docker, version) = match answer {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return Err(RuntimeError::Other(format!(
                "no Docker engine answers at {host}: {e}"
            )))
        }
        Err(_) => {
            return Err(RuntimeError::Other(format!(
                "no Docker engine answered at {host} within {}s",
                CONNECT_TIMEOUT.as_secs()
            )))
        }
    };
    info!(
        node_id,
        host = %host,
        engine = version.version.as_deref().unwrap_or("?"),
        api = %docker.client_version(),
        "connected to the Docker engine"
    );
    Ok(DockerRuntime {
        docker,
        node_id: node_id.to_string(),
        local_engine: host.starts_with("unix://"),
        host,
        stack_locks: Mutex::new(HashMap::new()),
        observed: Mutex::new(HashMap::new()),
    })
}

/// The bridge network of a stack on this node, and a service's names on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackNetwork {
    pub stack: String,
    /// `skein_<stack>`.
    pub name: String,
    /// The service's short name (without `<stack>_`) and its full name.
    pub aliases: Vec<String>,
}

/// The stack network of a service in a stack (`labels[STACK_LABEL]`), None
/// for a service on its own.
pub fn stack_network(spec: &ServiceSpec) -> Option<StackNetwork> {
    let stack = spec.labels.get(STACK_LABEL)?.trim();
    if stack.is_empty() {
        return None;
    }
    let mut aliases = Vec::new();
    if let Some(short) = spec.name.strip_prefix(&format!("{stack}_")) {
        if !short.is_empty() {
            aliases.push(short.to_string());
        }
    }
    aliases.push(spec.name.clone());
    Some(StackNetwork {
        stack: stack.to_string(),
        name: format!("{NETWORK_PREFIX}{stack}"),
        aliases,
    })
}

/// `skein.<service>.<slot|node>.<task-id>`.
pub fn container_name(task: &Task, node_id: &str) -> String {
    let place = match (task.slot, &task.node_id) {
        (Some(slot), _) => slot.to_string(),
        (None, Some(node)) => node.clone(),
        (None, None) => node_id.to_string(),
    };
    format!("skein.{}.{}.{}", task.service_name, place, task.id)
}

/// What `start` creates for a task.
#[derive(Clone, Debug)]
pub struct ContainerPlan {
    pub name: String,
    pub body: ContainerCreateBody,
    /// Parts of the spec this runtime does not honour, for the log.
    pub warnings: Vec<String>,
}

/// The container for `task` on node `node_id`, checked before anything
/// touches the engine. `bind_source_exists` says whether a bind mount's host
/// path exists (always true when the engine is not on this machine). The
/// stack network, if any, is attached by [`attach_network`] once it exists.
pub fn plan_container(
    task: &Task,
    node_id: &str,
    bind_source_exists: impl Fn(&str) -> bool,
) -> Result<ContainerPlan, RuntimeError> {
    let spec = &task.spec;
    let invalid = |m: String| Err(RuntimeError::Invalid(m));
    check_task_id(&task.id)?;
    if spec.image.trim().is_empty() {
        return invalid(format!("service {:?} has no image", spec.name));
    }
    let mut warnings = Vec::new();

    let mut env: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return invalid(format!(
                "environment variable {k:?} of service {:?} is not valid: names are non-empty without '=', and neither may hold NUL",
                spec.name
            ));
        }
        env.insert(k, v);
    }
    let slot = task.slot.map(|s| s.to_string()).unwrap_or_default();
    env.insert("SKEIN_TASK_ID", &task.id);
    env.insert("SKEIN_TASK_SLOT", &slot);
    env.insert("SKEIN_SERVICE_NAME", &task.service_name);
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();

    if let Some(w) = &spec.working_dir {
        if !w.starts_with('/') {
            return invalid(format!(
                "working_dir {w:?} of service {:?} must be an absolute path inside the container",
                spec.name
            ));
        }
    }

    let mut labels: HashMap<String, String> = spec
        .container_labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_SERVICE.into(), task.service_name.clone());
    labels.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    labels.insert(LABEL_TASK.into(), task.id.clone());
    labels.insert(LABEL_NODE.into(), node_id.to_string());
    if let Some(net) = stack_network(spec) {
        labels.insert(LABEL_STACK.into(), net.stack);
    }

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.target, proto_name(p.protocol));
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        match p.mode {
            PublishMode::Host => {
                bindings
                    .entry(key)
                    .or_default()
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: None,
                        // Empty: the engine picks a free port, as Swarm does for
                        // host mode without a published port.
                        host_port: Some(p.published.map(|n| n.to_string()).unwrap_or_default()),
                    });
            }
            PublishMode::Ingress => {
                if let Some(published) = p.published {
                    warnings.push(format!(
                        "port {published}:{}/{} is not published: ingress publishing (the routing mesh) is not implemented yet; publish with mode=host",
                        p.target,
                        proto_name(p.protocol)
                    ));
                }
            }
        }
    }

    let mut mounts = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return invalid(format!(
                "mounts[{i}].target {:?} of service {:?} must be an absolute path inside the container",
                m.target, spec.name
            ));
        }
        let (typ, source) = match m.kind {
            MountKind::Bind => {
                let Some(src) = m.source.as_deref().filter(|s| s.starts_with('/')) else {
                    return invalid(format!(
                        "mounts[{i}] of service {:?}: a bind mount needs an absolute host path as its source",
                        spec.name
                    ));
                };
                if !bind_source_exists(src) {
                    return invalid(format!(
                        "mounts[{i}] of service {:?}: bind source {src:?} does not exist on this node: create it first, or fix the mount's source",
                        spec.name
                    ));
                }
                (MountType::BIND, Some(src.to_string()))
            }
            // A named volume is created by the engine on first use; no source: anonymous.
            MountKind::Volume => (MountType::VOLUME, m.source.clone()),
            MountKind::Tmpfs => (MountType::TMPFS, None),
        };
        mounts.push(DockerMount {
            target: Some(m.target.clone()),
            source,
            typ: Some(typ),
            read_only: m.read_only.then_some(true),
            ..Default::default()
        });
    }

    let healthcheck = match &spec.healthcheck {
        None => None,
        Some(hc) => {
            let test = match hc.test.first().map(String::as_str) {
                Some("NONE") => vec!["NONE".to_string()],
                Some("CMD") if hc.test.len() >= 2 => hc.test.clone(),
                Some("CMD-SHELL") if hc.test.len() >= 2 => {
                    vec!["CMD-SHELL".to_string(), hc.test[1..].join(" ")]
                }
                _ => {
                    return invalid(format!(
                        "healthcheck.test {:?} of service {:?} must be [\"CMD\", prog, args...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]",
                        hc.test, spec.name
                    ))
                }
            };
            if test[0] == "NONE" {
                Some(HealthConfig {
                    test: Some(test),
                    ..Default::default()
                })
            } else {
                Some(HealthConfig {
                    test: Some(test),
                    interval: nanos(hc.interval),
                    timeout: nanos(hc.timeout),
                    retries: Some(i64::from(hc.retries)),
                    start_period: nanos(hc.start_period),
                    ..Default::default()
                })
            }
        }
    };

    let limits = &spec.resources.limits;
    let nano_cpus = match limits.cpus {
        Some(c) if c.is_nan() || c < 0.0 => {
            return invalid(format!(
                "resources.limits.cpus {c} of service {:?} is not a positive number of CPUs",
                spec.name
            ))
        }
        Some(c) if c > 0.0 => Some((c * 1e9).round().min(i64::MAX as f64) as i64),
        _ => None,
    };
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);

    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        nano_cpus,
        memory: limits.memory.filter(|m| *m > 0).map(to_i64),
        pids_limit: limits.pids.filter(|p| *p > 0).map(to_i64),
        // skein restarts tasks itself, as new tasks.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(spec.image.clone()),
        // Empty: the image's own. An entrypoint replaces the image's
        // entrypoint, and then, as in Docker, the image's command is not used.
        entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(env),
        working_dir: spec.working_dir.clone(),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: Some(grace_secs(spec.stop_grace_period.as_duration()).into()),
        host_config: Some(host_config),
        ..Default::default()
    };
    Ok(ContainerPlan {
        name: container_name(task, node_id),
        body,
        warnings,
    })
}

/// Puts the container on the stack network `network_id` (an engine id, so
/// two networks with one name cannot make it ambiguous), answering to the
/// service's names.
pub fn attach_network(body: &mut ContainerCreateBody, net: &StackNetwork, network_id: &str) {
    let host = body.host_config.get_or_insert_with(HostConfig::default);
    host.network_mode = Some(network_id.to_string());
    body.networking_config = Some(NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network_id.to_string(),
            EndpointSettings {
                aliases: Some(net.aliases.clone()),
                ..Default::default()
            },
        )])),
    });
}

/// What a container's inspected state means for its task; None when the
/// engine reports no usable state.
pub fn observe(
    task_id: &str,
    container_id: &str,
    state: &ContainerState,
    created: Option<&str>,
    now: u64,
) -> Option<Observed> {
    let started_at = state
        .started_at
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .unwrap_or(0);
    let exited = |exit_code: i32, finished_at: u64| Observed {
        task_id: task_id.to_string(),
        runtime_id: container_id.to_string(),
        state: ObservedState::Exited {
            exit_code,
            finished_at,
        },
        started_at,
        health: None,
    };
    let exit_code = state
        .exit_code
        .map(|c| i32::try_from(c).unwrap_or(-1))
        .unwrap_or(-1);
    let finished_at = state
        .finished_at
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .unwrap_or(now);
    match state.status? {
        ContainerStateStatusEnum::RUNNING
        | ContainerStateStatusEnum::PAUSED
        | ContainerStateStatusEnum::RESTARTING
        | ContainerStateStatusEnum::STOPPING => Some(Observed {
            task_id: task_id.to_string(),
            runtime_id: container_id.to_string(),
            state: ObservedState::Running,
            started_at,
            health: state
                .health
                .as_ref()
                .and_then(|h| h.status)
                .and_then(|s| match s {
                    HealthStatusEnum::STARTING => Some(Health::Starting),
                    HealthStatusEnum::HEALTHY => Some(Health::Healthy),
                    HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
                    HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
                }),
        }),
        ContainerStateStatusEnum::EXITED
        | ContainerStateStatusEnum::DEAD
        | ContainerStateStatusEnum::REMOVING => Some(exited(exit_code, finished_at)),
        // Created and never started: it never ran, and never will by itself.
        ContainerStateStatusEnum::CREATED => Some(exited(
            -1,
            created.and_then(parse_rfc3339_ms).unwrap_or(now),
        )),
        ContainerStateStatusEnum::EMPTY => None,
    }
}

/// What a container listing shows of its state: the state and the
/// parenthesized parts of the status (`(healthy)`, `(health: starting)`,
/// `(137)`), without the ever-changing "Up 3 seconds". An inspection stays
/// valid while this does not change.
pub fn listed_state(state: Option<ContainerSummaryStateEnum>, status: Option<&str>) -> String {
    let mut out = format!("{state:?}");
    let mut depth = 0usize;
    for ch in status.unwrap_or_default().chars() {
        match ch {
            '(' => {
                depth += 1;
                out.push(ch);
            }
            ')' if depth > 0 => {
                depth -= 1;
                out.push(ch);
            }
            _ if depth > 0 => out.push(ch),
            _ => {}
        }
    }
    out
}

/// Milliseconds since the epoch of an RFC 3339 time as the engine writes it
/// (`2024-05-01T12:00:00.123456789Z`, or with a `+02:00` offset); None for
/// anything else and for times before 1970 (the engine's "never" is
/// `0001-01-01T00:00:00Z`).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let digits = |from: usize, to: usize| -> Option<i64> {
        let part = b.get(from..to)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter().try_fold(0i64, |acc, d| {
            acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 7)?, digits(8, 10)?);
    let (hour, min, sec) = (digits(11, 13)?, digits(14, 16)?, digits(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (h, m) = (digits(i + 1, i + 3)?, digits(i + 4, i + 6)?);
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    if secs < 0 {
        return None;
    }
    u64::try_from(secs * 1000 + millis).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Task ids name containers: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128.
fn check_task_id(task_id: &str) -> Result<(), RuntimeError> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 128
        && task_id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "task id {task_id:?} cannot name a container: use letters, digits, '-', '_' and '.'"
        )))
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A duration in nanoseconds for the engine; None (the engine's default)
/// for zero.
fn nanos(d: Dur) -> Option<i64> {
    (!d.is_zero())
        .then(|| i64::try_from(d.as_millis().saturating_mul(1_000_000)).unwrap_or(i64::MAX))
}

/// The engine counts stop timeouts in whole seconds: round up, so a task
/// never gets less than its grace period.
fn grace_secs(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words for an error, without bollard's wrapping.
fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

fn missing_image(image: &str) -> RuntimeError {
    RuntimeError::Invalid(format!(
        "image {image:?} not found on this node (no registry is reachable); build or load it first"
    ))
}

fn label_filter(labels: &[String]) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), labels.to_vec())])
}

impl DockerRuntime {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The engine address this runtime talks to (`unix:///var/run/docker.sock`).
    pub fn host(&self) -> &str {
        &self.host
    }

    fn engine_error(&self, what: &str, e: &DockerError) -> RuntimeError {
        RuntimeError::Other(format!(
            "Docker engine at {}: {what}: {}",
            self.host,
            engine_message(e)
        ))
    }

    fn stack_lock(&self, stack: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .stack_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(stack.to_string()).or_default().clone()
    }

    /// Containers on the engine with all of `labels` (`key=value`), any state.
    async fn containers(&self, labels: &[String]) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(label_filter(labels)),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.engine_error("cannot list containers", &e))
    }

    /// This node's container of `task_id`, if it has one.
    async fn find(&self, task_id: &str) -> Result<Option<ContainerSummary>, RuntimeError> {
        let mut found = self
            .containers(&[
                format!("{LABEL_NODE}={}", self.node_id),
                format!("{LABEL_TASK}={task_id}"),
            ])
            .await?;
        if found.len() > 1 {
            warn!(
                task_id,
                count = found.len(),
                "several containers carry this task's labels; using the oldest"
            );
            found.sort_by_key(|c| c.created.unwrap_or(0));
        }
        Ok(found.into_iter().next())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.engine_error(&format!("cannot inspect container {id}"), &e)),
        }
    }

    async fn start_task(&self, task: &Task) -> Result<String, RuntimeError> {
        check_task_id(&task.id)?;
        let net = stack_network(&task.spec);
        // One start at a time per stack: the network must not be removed
        // between its check and the container's start.
        let lock = net.as_ref().map(|n| self.stack_lock(&n.stack));
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };

        // A task that has a container keeps it, whatever changed meanwhile.
        if let Some(c) = self.find(&task.id).await? {
            return self.adopt(task, &c).await;
        }
        let local = self.local_engine;
        let mut plan = plan_container(task, &self.node_id, |p| !local || Path::new(p).exists())?;
        match self.docker.inspect_image(&task.spec.image).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => return Err(missing_image(&task.spec.image)),
            Err(e) => {
                return Err(
                    self.engine_error(&format!("cannot inspect image {:?}", task.spec.image), &e)
                )
            }
        }
        if let Some(n) = &net {
            let network_id = self.ensure_network(n).await?;
            attach_network(&mut plan.body, n, &network_id);
        }
        for w in &plan.warnings {
            warn!(task_id = %task.id, service = %task.service_name, "{w}");
        }
        let opts = CreateContainerOptions {
            name: Some(plan.name.clone()),
            ..Default::default()
        };
        let id = match self.docker.create_container(Some(opts), plan.body).await {
            Ok(r) => {
                for w in r.warnings.iter().filter(|w| !w.is_empty()) {
                    warn!(task_id = %task.id, "engine: {w}");
                }
                r.id
            }
            Err(e) if status_code(&e) == Some(409) => {
                // Created meanwhile (by an earlier start of this task): adopt it.
                return match self.find(&task.id).await? {
                    Some(c) => self.adopt(task, &c).await,
                    None => Err(RuntimeError::Other(format!(
                        "task {}: the container name {} is taken by a container that is not this task's on this node; remove it (docker rm)",
                        task.id, plan.name
                    ))),
                };
            }
            Err(e) if status_code(&e) == Some(404) && engine_message(&e).contains("image") => {
                return Err(missing_image(&task.spec.image))
            }
            Err(e) if status_code(&e) == Some(400) => {
                return Err(RuntimeError::Invalid(format!(
                    "task {}: the Docker engine refused its container: {}",
                    task.id,
                    engine_message(&e)
                )))
            }
            Err(e) => {
                return Err(self.engine_error(&format!("cannot create container {}", plan.name), &e))
            }
        };
        if let Err(e) = self.start_created(&task.id, &id).await {
            if let Some(n) = &net {
                // Still holding the stack's lock.
                self.remove_network_if_unused(&n.stack).await;
            }
            return Err(e);
        }
        info!(task_id = %task.id, container = %short(&id), name = %plan.name, image = %task.spec.image, "started container");
        Ok(id)
    }

    /// The task already has container `c`: start it if it never was, and
    /// return its id (running or exited: a task runs at most once).
    async fn adopt(&self, task: &Task, c: &ContainerSummary) -> Result<String, RuntimeError> {
        let id = c.id.clone().unwrap_or_default();
        if id.is_empty() {
            return Err(RuntimeError::Other(format!(
                "task {}: the engine listed its container without an id",
                task.id
            )));
        }
        let never_started = self
            .inspect(&id)
            .await?
            .and_then(|i| i.state)
            .and_then(|s| s.status)
            == Some(ContainerStateStatusEnum::CREATED);
        if never_started {
            info!(task_id = %task.id, container = %short(&id), "starting the task's container, created earlier but never started");
            self.start_created(&task.id, &id).await?;
        } else {
            debug!(task_id = %task.id, container = %short(&id), "task already has a container: adopted");
        }
        Ok(id)
    }

    /// Starts a created container; one that cannot start is removed, and the
    /// error says why (`Invalid` when the engine says the spec is at fault).
    async fn start_created(&self, task_id: &str, id: &str) -> Result<(), RuntimeError> {
        let e = match self.docker.start_container(id, None).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let rm = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        if let Err(rm_err) = self.docker.remove_container(id, Some(rm)).await {
            warn!(task_id, container = %short(id), error = %rm_err, "cannot remove a container that failed to start");
        }
        let msg = engine_message(&e);
        Err(match status_code(&e) {
            Some(400) => {
                RuntimeError::Invalid(format!("task {task_id}: its container cannot start: {msg}"))
            }
            _ => RuntimeError::Other(format!(
                "task {task_id}: the Docker engine could not start its container: {msg}"
            )),
        })
    }

    /// The id of the stack's network, created if missing. Call with the
    /// stack's lock held.
    async fn ensure_network(&self, net: &StackNetwork) -> Result<String, RuntimeError> {
        if let Some(id) = self
            .stack_networks(&net.name, false)
            .await?
            .into_iter()
            .next()
        {
            return Ok(id);
        }
        let req = NetworkCreateRequest {
            name: net.name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([
                (LABEL_STACK.to_string(), net.stack.clone()),
                (LABEL_NODE.to_string(), self.node_id.clone()),
            ])),
            ..Default::default()
        };
        let created =
            self.docker.create_network(req).await.map_err(|e| {
                self.engine_error(&format!("cannot create network {}", net.name), &e)
            })?;
        warn!(
            stack = %net.stack,
            network = %net.name,
            "created the stack's bridge network on this node: its services reach each other by service name only on this node (networks across nodes are not implemented yet)"
        );
        // Another agent on this engine may have created one too (the engine
        // allows duplicate names): everyone uses the oldest.
        Ok(self
            .stack_networks(&net.name, false)
            .await?
            .into_iter()
            .next()
            .unwrap_or(created.id))
    }

    /// Ids of the networks named exactly `name`, oldest first; only those
    /// skein created (labelled `skein.stack`) when `ours_only`.
    async fn stack_networks(
        &self,
        name: &str,
        ours_only: bool,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        if ours_only {
            filters.insert("label".into(), vec![LABEL_STACK.to_string()]);
        }
        let nets = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| self.engine_error("cannot list networks", &e))?;
        // The name filter matches substrings: keep exact matches.
        let mut nets: Vec<(String, String)> = nets
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect();
        nets.sort();
        Ok(nets.into_iter().map(|(_, id)| id).collect())
    }

    /// Removes the stack's network when no container of the stack is left on
    /// the engine (best effort: the engine refuses while anything uses it).
    /// Call with the stack's lock held.
    async fn remove_network_if_unused(&self, stack: &str) {
        let name = format!("{NETWORK_PREFIX}{stack}");
        match self.containers(&[format!("{LABEL_STACK}={stack}")]).await {
            Ok(left) if left.is_empty() => {}
            Ok(_) => return,
            Err(e) => {
                debug!(network = %name, error = %e, "keeping the network");
                return;
            }
        }
        let ids = match self.stack_networks(&name, true).await {
            Ok(ids) => ids,
            Err(e) => {
                debug!(network = %name, error = %e, "keeping the network");
                return;
            }
        };
        for id in ids {
            match self.docker.remove_network(&id).await {
                Ok(()) => {
                    info!(network = %name, "removed the stack's network: its last container is gone")
                }
                Err(e) => {
                    debug!(network = %name, error = %engine_message(&e), "network not removed")
                }
            }
        }
    }

    async fn stop_task(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(c) = self.find(task_id).await? else {
            return Ok(());
        };
        let id = c.id.unwrap_or_default();
        let Some(state) = self.inspect(&id).await?.and_then(|i| i.state) else {
            return Ok(());
        };
        if !state.running.unwrap_or(false) {
            return Ok(());
        }
        self.stop_container(task_id, &id, Some(grace)).await
    }

    /// Stops a running container: its stop signal, then SIGKILL after
    /// `grace` (the container's own stop timeout when None). Returns once it
    /// has exited.
    async fn stop_container(
        &self,
        task_id: &str,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<(), RuntimeError> {
        let wait = grace.unwrap_or(Duration::from_secs(600)) + STOP_SLACK;
        let docker = self.docker.clone().with_timeout(wait);
        let opts = StopContainerOptions {
            t: grace.map(grace_secs),
            signal: None,
        };
        info!(task_id, container = %short(id), grace_ms = grace.map(|g| g.as_millis() as u64), "stopping container");
        match docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(404) | Some(304)) => Ok(()),
            Err(e) => Err(self.engine_error(&format!("cannot stop container {}", short(id)), &e)),
        }
    }

    async fn list_tasks(&self) -> Result<Vec<Observed>, RuntimeError> {
        let containers = self
            .containers(&[format!("{LABEL_NODE}={}", self.node_id)])
            .await?;
        let now = now_ms();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut to_inspect = Vec::new();
        {
            let cache = self
                .observed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for c in containers {
                let (Some(id), Some(task_id)) = (
                    c.id.clone(),
                    c.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).cloned(),
                ) else {
                    continue;
                };
                seen.insert(id.clone());
                let listed = listed_state(c.state, c.status.as_deref());
                match cache.get(&id) {
                    Some((l, o)) if o.task_id == task_id && *l == listed => out.push(o.clone()),
                    _ => to_inspect.push((id, task_id, listed)),
                }
            }
        }
        let mut inspections = tokio::task::JoinSet::new();
        for (id, task_id, listed) in to_inspect {
            let docker = self.docker.clone();
            inspections.spawn(async move {
                let r = docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await;
                (id, task_id, listed, r)
            });
        }
        let mut fresh = Vec::new();
        while let Some(joined) = inspections.join_next().await {
            let Ok((id, task_id, listed, r)) = joined else {
                continue;
            };
            let inspected = match r {
                Ok(i) => i,
                // Removed since it was listed.
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => {
                    return Err(
                        self.engine_error(&format!("cannot inspect container {}", short(&id)), &e)
                    )
                }
            };
            let Some(state) = inspected.state.as_ref() else {
                continue;
            };
            let Some(o) = observe(&task_id, &id, state, inspected.created.as_deref(), now) else {
                continue;
            };
            fresh.push((id, (listed, o.clone())));
            out.push(o);
        }
        {
            let mut cache = self
                .observed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache.retain(|id, _| seen.contains(id));
            cache.extend(fresh);
        }
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(out)
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), RuntimeError> {
        let found = self
            .containers(&[
                format!("{LABEL_NODE}={}", self.node_id),
                format!("{LABEL_TASK}={task_id}"),
            ])
            .await?;
        let mut stacks = HashSet::new();
        for c in found {
            let Some(id) = c.id.clone() else { continue };
            if let Some(stack) = c.labels.as_ref().and_then(|l| l.get(LABEL_STACK)) {
                stacks.insert(stack.clone());
            }
            if let Some(inspected) = self.inspect(&id).await? {
                if inspected.state.as_ref().and_then(|s| s.running) == Some(true) {
                    let grace = inspected
                        .config
                        .as_ref()
                        .and_then(|c| c.stop_timeout)
                        .and_then(|s| u64::try_from(s).ok())
                        .map(Duration::from_secs);
                    self.stop_container(task_id, &id, grace).await?;
                }
            }
            let rm = RemoveContainerOptions {
                force: true,
                // Its anonymous volumes go with it; named volumes stay.
                v: true,
                link: false,
            };
            match self.docker.remove_container(&id, Some(rm)).await {
                Ok(()) => info!(task_id, container = %short(&id), "removed container"),
                // Gone already, or being removed by someone else.
                Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => {}
                Err(e) => {
                    return Err(
                        self.engine_error(&format!("cannot remove container {}", short(&id)), &e)
                    )
                }
            }
            self.observed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&id);
        }
        for stack in stacks {
            let lock = self.stack_lock(&stack);
            let _guard = lock.lock().await;
            self.remove_network_if_unused(&stack).await;
        }
        Ok(())
    }

    async fn read_logs(&self, task_id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        use futures_core::Stream;
        // A task that never got a container (e.g. its image is missing) has
        // no output.
        let Some(id) = self.find(task_id).await?.and_then(|c| c.id) else {
            return Ok(Vec::new());
        };
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        let mut stream = std::pin::pin!(self.docker.logs(&id, Some(opts)));
        let mut out = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
            match chunk {
                Ok(c) => out.extend_from_slice(c.as_ref()),
                Err(e) if status_code(&e) == Some(404) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(self.engine_error(
                        &format!("cannot read the logs of container {}", short(&id)),
                        &e,
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }
    fn checks_health(&self) -> bool {
        true
    }
    fn start<'a>(&'a self, task: &'a Task) -> RtFuture<'a, String> {
        Box::pin(self.start_task(task))
    }
    fn stop<'a>(&'a self, task_id: &'a str, grace: Duration) -> RtFuture<'a, ()> {
        Box::pin(self.stop_task(task_id, grace))
    }
    fn list(&self) -> RtFuture<'_, Vec<Observed>> {
        Box::pin(self.list_tasks())
    }
    fn remove<'a>(&'a self, task_id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(self.remove_task(task_id))
    }
    fn logs<'a>(&'a self, task_id: &'a str, tail: Option<usize>) -> RtFuture<'a, Vec<u8>> {
        Box::pin(self.read_logs(task_id, tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{HealthCheck, Mount, PortConfig, ServiceMode, TaskState, TaskStatus};

    fn task(id: &str, spec: ServiceSpec, slot: Option<u64>) -> Task {
        Task {
            id: id.to_string(),
            service_id: "svc1".into(),
            service_name: spec.name.clone(),
            slot,
            node_id: None,
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at: 0,
            restarts: Vec::new(),
        }
    }

    fn plan(t: &Task) -> ContainerPlan {
        plan_container(t, "node1", |_| true).expect("plans")
    }

    #[test]
    fn names_and_labels_say_whose_container_it_is() {
        let mut spec = ServiceSpec::new("web", "skein-test:v1");
        spec.container_labels.insert("team".into(), "edge".into());
        spec.container_labels
            .insert(LABEL_NODE.into(), "spoofed".into());
        let p = plan(&task("t1", spec.clone(), Some(3)));
        assert_eq!(p.name, "skein.web.3.t1");
        let labels = p.body.labels.expect("labels");
        assert_eq!(labels[LABEL_SERVICE], "web");
        assert_eq!(labels[LABEL_SERVICE_ID], "svc1");
        assert_eq!(labels[LABEL_TASK], "t1");
        assert_eq!(labels[LABEL_NODE], "node1", "skein's labels win");
        assert_eq!(labels["team"], "edge");
        assert!(!labels.contains_key(LABEL_STACK));

        spec.mode = ServiceMode::Global;
        let mut t = task("t2", spec.clone(), None);
        t.node_id = Some("nodeA".into());
        assert_eq!(plan(&t).name, "skein.web.nodeA.t2");
        t.node_id = None;
        assert_eq!(plan(&t).name, "skein.web.node1.t2");
        assert!(matches!(
            plan_container(&task("../x", spec, None), "node1", |_| true),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn command_entrypoint_env_and_stop_settings() {
        let mut spec = ServiceSpec::new("web", "img");
        let p = plan(&task("t1", spec.clone(), Some(1)));
        assert_eq!(p.body.cmd, None, "the image's command");
        assert_eq!(p.body.entrypoint, None, "the image's entrypoint");
        assert_eq!(p.body.stop_timeout, Some(10));
        assert_eq!(
            p.body
                .host_config
                .as_ref()
                .and_then(|h| h.restart_policy.clone()),
            Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None
            })
        );

        spec.entrypoint = vec!["sh".into(), "-c".into()];
        spec.command = vec!["echo hi".into()];
        spec.env.insert("FOO".into(), "bar".into());
        spec.env.insert("SKEIN_TASK_ID".into(), "spoofed".into());
        spec.working_dir = Some("/srv".into());
        spec.stop_signal = Some("SIGINT".into());
        spec.stop_grace_period = Dur::from_millis(1500);
        let p = plan(&task("t1", spec.clone(), Some(2)));
        assert_eq!(
            p.body.entrypoint,
            Some(vec!["sh".to_string(), "-c".to_string()])
        );
        assert_eq!(p.body.cmd, Some(vec!["echo hi".to_string()]));
        let env = p.body.env.expect("env");
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&"SKEIN_TASK_ID=t1".to_string()));
        assert!(env.contains(&"SKEIN_TASK_SLOT=2".to_string()));
        assert!(env.contains(&"SKEIN_SERVICE_NAME=web".to_string()));
        assert_eq!(p.body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(p.body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(p.body.stop_timeout, Some(2), "1.5s rounds up");

        let mut bad = spec.clone();
        bad.working_dir = Some("srv".into());
        assert!(matches!(
            plan_container(&task("t1", bad, None), "n", |_| true),
            Err(RuntimeError::Invalid(_))
        ));
        let mut bad = spec;
        bad.env.insert("A=B".into(), "x".into());
        assert!(matches!(
            plan_container(&task("t1", bad, None), "n", |_| true),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn host_ports_are_bound_and_ingress_ports_warned_about() {
        let mut spec = ServiceSpec::new("web", "img");
        spec.ports = vec![
            PortConfig {
                target: 8080,
                published: Some(18080),
                protocol: Protocol::Tcp,
                mode: PublishMode::Host,
            },
            PortConfig {
                target: 53,
                published: Some(5353),
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            },
            PortConfig {
                target: 9000,
                published: None,
                protocol: Protocol::Tcp,
                mode: PublishMode::Host,
            },
            PortConfig {
                target: 80,
                published: Some(8000),
                protocol: Protocol::Tcp,
                mode: PublishMode::Ingress,
            },
        ];
        let p = plan(&task("t1", spec, Some(1)));
        let b = p
            .body
            .host_config
            .and_then(|h| h.port_bindings)
            .expect("bindings");
        let port = |k: &str| {
            b[k].as_ref().expect("binding")[0]
                .host_port
                .clone()
                .expect("host port")
        };
        assert_eq!(port("8080/tcp"), "18080");
        assert_eq!(port("53/udp"), "5353");
        assert_eq!(port("9000/tcp"), "", "the engine picks one");
        assert!(!b.contains_key("80/tcp"));
        let exposed = p.body.exposed_ports.expect("exposed");
        assert!(exposed.contains(&"80/tcp".to_string()));
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("8000:80/tcp"), "{}", p.warnings[0]);
    }

    #[test]
    fn healthchecks_keep_compose_semantics_in_nanoseconds() {
        let mut spec = ServiceSpec::new("web", "img");
        spec.healthcheck = Some(HealthCheck {
            test: vec![
                "CMD-SHELL".into(),
                "wget -q -O- http://127.0.0.1:8080/health".into(),
            ],
            interval: Dur::from_secs(1),
            timeout: Dur::from_millis(500),
            retries: 2,
            start_period: Dur::ZERO,
        });
        let hc = plan(&task("t1", spec.clone(), None))
            .body
            .healthcheck
            .expect("hc");
        assert_eq!(
            hc.test,
            Some(vec![
                "CMD-SHELL".to_string(),
                "wget -q -O- http://127.0.0.1:8080/health".to_string()
            ])
        );
        assert_eq!(hc.interval, Some(1_000_000_000));
        assert_eq!(hc.timeout, Some(500_000_000));
        assert_eq!(hc.retries, Some(2));
        assert_eq!(hc.start_period, None);

        spec.healthcheck = Some(HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            interval: Dur::from_secs(30),
            timeout: Dur::from_secs(30),
            retries: 3,
            start_period: Dur::from_secs(5),
        });
        let hc = plan(&task("t1", spec.clone(), None))
            .body
            .healthcheck
            .expect("hc");
        assert_eq!(hc.test, Some(vec!["CMD".to_string(), "true".to_string()]));
        assert_eq!(hc.start_period, Some(5_000_000_000));

        if let Some(hc) = spec.healthcheck.as_mut() {
            hc.test = vec!["NONE".into()];
        }
        let hc = plan(&task("t1", spec.clone(), None))
            .body
            .healthcheck
            .expect("hc");
        assert_eq!(hc.test, Some(vec!["NONE".to_string()]));
        assert_eq!(hc.interval, None);

        if let Some(hc) = spec.healthcheck.as_mut() {
            hc.test = vec!["wget".into()];
        }
        assert!(matches!(
            plan_container(&task("t1", spec, None), "n", |_| true),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn resources_and_mounts() {
        let mut spec = ServiceSpec::new("web", "img");
        spec.resources.limits.cpus = Some(0.5);
        spec.resources.limits.memory = Some(64 << 20);
        spec.resources.limits.pids = Some(100);
        spec.mounts = vec![
            Mount {
                kind: MountKind::Bind,
                source: Some("/etc".into()),
                target: "/host-etc".into(),
                read_only: true,
            },
            Mount {
                kind: MountKind::Volume,
                source: Some("data".into()),
                target: "/data".into(),
                read_only: false,
            },
            Mount {
                kind: MountKind::Volume,
                source: None,
                target: "/scratch".into(),
                read_only: false,
            },
            Mount {
                kind: MountKind::Tmpfs,
                source: None,
                target: "/run".into(),
                read_only: false,
            },
        ];
        let h = plan(&task("t1", spec.clone(), None))
            .body
            .host_config
            .expect("host config");
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.pids_limit, Some(100));
        let m = h.mounts.expect("mounts");
        assert_eq!(m[0].typ, Some(MountType::BIND));
        assert_eq!(m[0].source.as_deref(), Some("/etc"));
        assert_eq!(m[0].read_only, Some(true));
        assert_eq!(m[1].typ, Some(MountType::VOLUME));
        assert_eq!(m[1].source.as_deref(), Some("data"));
        assert_eq!(m[1].read_only, None);
        assert_eq!(m[2].source, None, "anonymous volume");
        assert_eq!(m[3].typ, Some(MountType::TMPFS));

        match plan_container(&task("t1", spec, None), "n", |p| p != "/etc") {
            Err(RuntimeError::Invalid(msg)) => {
                assert!(msg.contains("\"/etc\" does not exist"), "{msg}")
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn stack_services_share_a_network_and_answer_to_their_short_name() {
        let mut spec = ServiceSpec::new("shop_web", "img");
        assert_eq!(stack_network(&spec), None);
        spec.labels.insert(STACK_LABEL.into(), "shop".into());
        let net = stack_network(&spec).expect("in a stack");
        assert_eq!(net.name, "skein_shop");
        assert_eq!(net.aliases, vec!["web".to_string(), "shop_web".to_string()]);
        let mut p = plan(&task("t1", spec, Some(1)));
        assert_eq!(
            p.body.labels.as_ref().map(|l| l[LABEL_STACK].clone()),
            Some("shop".to_string())
        );
        attach_network(&mut p.body, &net, "netid");
        assert_eq!(
            p.body.host_config.and_then(|h| h.network_mode).as_deref(),
            Some("netid")
        );
        let eps = p
            .body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(
            eps["netid"].aliases,
            Some(vec!["web".to_string(), "shop_web".to_string()])
        );
    }

    #[test]
    fn rfc3339_times_parse_to_epoch_millis() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T15:28:15.401043954Z"),
            Some(1_795_706_895_401)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T12:00:00.5Z"),
            Some(951_825_600_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T14:00:00+02:00"),
            parse_rfc3339_ms("2000-02-29T12:00:00Z")
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T10:30:00-01:30"),
            parse_rfc3339_ms("2000-02-29T12:00:00Z")
        );
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None, "never");
        for bad in [
            "",
            "2000-02-29",
            "2000-13-01T00:00:00Z",
            "2000-02-29T12:00:00",
            "2000-02-29T12:00:00.Z",
            "2000-02-29T12:00:00Zjunk",
            "+000-02-29T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn observations_follow_the_engine_state() {
        let state = |status, exit_code, health: Option<HealthStatusEnum>| ContainerState {
            status: Some(status),
            running: Some(status == ContainerStateStatusEnum::RUNNING),
            exit_code: Some(exit_code),
            started_at: Some("1970-01-01T00:00:01Z".into()),
            finished_at: Some("1970-01-01T00:00:02Z".into()),
            health: health.map(|s| bollard::models::Health {
                status: Some(s),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = observe(
            "t",
            "c",
            &state(
                ContainerStateStatusEnum::RUNNING,
                0,
                Some(HealthStatusEnum::UNHEALTHY),
            ),
            None,
            99,
        )
        .expect("observed");
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.started_at, 1000);
        assert_eq!(o.health, Some(Health::Unhealthy));
        assert_eq!(o.runtime_id, "c");
        let o = observe(
            "t",
            "c",
            &state(ContainerStateStatusEnum::RUNNING, 0, None),
            None,
            99,
        )
        .expect("observed");
        assert_eq!(o.health, None);
        let o = observe(
            "t",
            "c",
            &state(
                ContainerStateStatusEnum::EXITED,
                3,
                Some(HealthStatusEnum::UNHEALTHY),
            ),
            None,
            99,
        )
        .expect("observed");
        assert_eq!(
            o.state,
            ObservedState::Exited {
                exit_code: 3,
                finished_at: 2000
            }
        );
        assert_eq!(o.health, None, "a stopped container's health is no verdict");
        let mut created = state(ContainerStateStatusEnum::CREATED, 0, None);
        created.started_at = Some("0001-01-01T00:00:00Z".into());
        let o = observe("t", "c", &created, Some("1970-01-01T00:00:05Z"), 99).expect("observed");
        assert_eq!(
            o.state,
            ObservedState::Exited {
                exit_code: -1,
                finished_at: 5000
            }
        );
        assert_eq!(o.started_at, 0);
    }

    #[test]
    fn listed_states_ignore_uptime_but_not_state_health_or_exit_code() {
        use ContainerSummaryStateEnum as S;
        let up = |st: &str| listed_state(Some(S::RUNNING), Some(st));
        assert_eq!(up("Up 2 seconds"), up("Up About a minute"));
        assert_eq!(up("Up 2 seconds (healthy)"), up("Up 3 minutes (healthy)"));
        assert_ne!(
            up("Up 2 seconds (health: starting)"),
            up("Up 3 seconds (healthy)")
        );
        assert_ne!(
            up("Up 2 seconds"),
            listed_state(Some(S::EXITED), Some("Exited (0) 1 second ago"))
        );
        assert_ne!(
            listed_state(Some(S::EXITED), Some("Exited (0) 1 second ago")),
            listed_state(Some(S::EXITED), Some("Exited (137) 1 second ago"))
        );
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::ZERO), 0);
        assert_eq!(grace_secs(Duration::from_millis(1)), 1);
        assert_eq!(grace_secs(Duration::from_secs(10)), 10);
        assert_eq!(grace_secs(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    /// The runtime against the real engine, when there is one: start is
    /// idempotent, list sees running and exited containers (also from a
    /// fresh runtime), logs and remove work. Without an engine: see
    /// `skein_tests::require`.
    #[tokio::test]
    async fn against_the_local_engine() {
        let node = format!("unit-{}", crate::util::random_hex(4));
        let rt = match connect(&node).await {
            Ok(rt) => rt,
            Err(e) => {
                // Fails under SKEIN_REQUIRE_ALL=1 (CI), reported as skipped otherwise.
                skein_tests::require(
                    &format!("a Docker engine ({e})"),
                    false,
                    "runtime::docker::tests::against_the_local_engine",
                );
                return;
            }
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-test-image.sh");
        let built = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .expect("run make-test-image.sh");
        assert!(built.success(), "make-test-image.sh failed");

        let cleanup = |rt: &DockerRuntime| {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker rm -f -v $(docker ps -aq --filter label={LABEL_NODE}={}) >/dev/null 2>&1",
                    rt.node_id
                ))
                .status();
        };
        struct Guard<'a, F: Fn(&DockerRuntime)>(&'a DockerRuntime, F);
        impl<F: Fn(&DockerRuntime)> Drop for Guard<'_, F> {
            fn drop(&mut self) {
                (self.1)(self.0)
            }
        }
        let _guard = Guard(&rt, cleanup);

        let mut spec = ServiceSpec::new("unit", "skein-test:v1");
        spec.entrypoint = vec!["sh".into(), "-c".into()];
        spec.command = vec!["echo out; echo err >&2; exit 3".into()];
        let exits = task(&format!("e{}", crate::util::random_hex(4)), spec, Some(1));
        let id = rt.start(&exits).await.expect("start");
        assert_eq!(rt.start(&exits).await.expect("again"), id, "idempotent");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let exited = loop {
            let list = rt.list().await.expect("list");
            if let Some(o) = list.iter().find(|o| o.task_id == exits.id) {
                if let ObservedState::Exited { exit_code, .. } = o.state {
                    break (exit_code, o.runtime_id.clone());
                }
            }
            assert!(std::time::Instant::now() < deadline, "never exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(exited, (3, id.clone()));
        // An exited task is adopted, never run again.
        assert_eq!(rt.start(&exits).await.expect("adopt"), id);
        let logs = String::from_utf8(rt.logs(&exits.id, None).await.expect("logs")).expect("utf8");
        assert!(logs.contains("out") && logs.contains("err"), "{logs:?}");
        let tail =
            String::from_utf8(rt.logs(&exits.id, Some(1)).await.expect("logs")).expect("utf8");
        assert_eq!(tail.lines().count(), 1, "{tail:?}");

        let serve = task(
            &format!("s{}", crate::util::random_hex(4)),
            ServiceSpec::new("unit", "skein-test:v1"),
            Some(2),
        );
        let sid = rt.start(&serve).await.expect("start");
        let fresh = connect(&node).await.expect("connect again");
        let list = fresh.list().await.expect("list");
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list
            .iter()
            .any(|o| o.runtime_id == sid && o.state == ObservedState::Running && o.started_at > 0));
        fresh
            .stop(&serve.id, Duration::from_secs(5))
            .await
            .expect("stop");
        let o = fresh.list().await.expect("list");
        assert!(o
            .iter()
            .any(|o| o.task_id == serve.id && o.state != ObservedState::Running));
        fresh.remove(&serve.id).await.expect("remove");
        fresh.remove(&exits.id).await.expect("remove");
        assert!(fresh.list().await.expect("list").is_empty());
        assert!(fresh.logs(&serve.id, None).await.expect("logs").is_empty());

        let missing = task(
            "m1",
            ServiceSpec::new("unit", "skein-test:no-such-tag"),
            Some(3),
        );
        match rt.start(&missing).await {
            Err(RuntimeError::Invalid(msg)) => assert_eq!(
                msg,
                "image \"skein-test:no-such-tag\" not found on this node (no registry is reachable); build or load it first"
            ),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
