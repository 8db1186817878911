//! ServiceSpec: what a user asks for, with Docker Swarm's defaults for every
//! field left out. Field names follow the compose file's `deploy:` keys so the
//! JSON of `service inspect` reads like the stack file that produced it.
//!
//! Invariant: a spec that passed [`ServiceSpec::validate`] can be scheduled
//! (every constraint parses, ports are sane, the mode and replicas agree).

use crate::Dur;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where a task runs: a Docker container or a plain supervised process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Process,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        })
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(RuntimeKind::Docker),
            "process" => Ok(RuntimeKind::Process),
            _ => Err(format!("unknown runtime {s:?}: use docker or process")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Replicated,
    Global,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// `host` binds the published port on the node running the task; `ingress`
/// (Swarm's routing mesh) is accepted in the model but not implemented yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    pub target: u16,
    #[serde(default)]
    pub published: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: PublishMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Compose form: `["CMD", prog, args...]`, `["CMD-SHELL", "cmd"]` or `["NONE"]`.
    pub test: Vec<String>,
    #[serde(default = "defaults::health_interval")]
    pub interval: Dur,
    #[serde(default = "defaults::health_timeout")]
    pub timeout: Dur,
    #[serde(default = "defaults::health_retries")]
    pub retries: u32,
    #[serde(default)]
    pub start_period: Dur,
}

/// What a mount attaches: a host path, a named volume or a tmpfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    #[default]
    Volume,
    Tmpfs,
}

/// A mount, as the compose file's long `volumes:` syntax writes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    #[serde(rename = "type", default)]
    pub kind: MountKind,
    /// Host path (bind), volume name (volume; None: anonymous), unused for tmpfs.
    #[serde(default)]
    pub source: Option<String>,
    /// Absolute path inside the task.
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl fmt::Display for RestartCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartCondition::None => "none",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::Any => "any",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default)]
    pub condition: RestartCondition,
    #[serde(default = "defaults::restart_delay")]
    pub delay: Dur,
    /// 0: unlimited.
    #[serde(default)]
    pub max_attempts: u64,
    /// Window in which `max_attempts` are counted; 0: since the slot began.
    #[serde(default)]
    pub window: Dur,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: defaults::restart_delay(),
            max_attempts: 0,
            window: Dur::ZERO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Tasks updated at once; 0: all at once.
    #[serde(default = "defaults::parallelism")]
    pub parallelism: u64,
    #[serde(default)]
    pub delay: Dur,
    #[serde(default)]
    pub failure_action: FailureAction,
    #[serde(default = "defaults::update_monitor")]
    pub monitor: Dur,
    #[serde(default)]
    pub max_failure_ratio: f64,
    #[serde(default)]
    pub order: UpdateOrder,
}

impl UpdateConfig {
    /// Swarm's `update_config` defaults.
    pub fn update_default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Dur::ZERO,
            failure_action: FailureAction::Pause,
            monitor: defaults::update_monitor(),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
    /// Swarm's `rollback_config` defaults: as update, but monitor 0s.
    pub fn rollback_default() -> Self {
        UpdateConfig {
            monitor: Dur::ZERO,
            ..Self::update_default()
        }
    }
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self::update_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementPreference {
    /// `node.labels.zone`: spread tasks evenly over the values of this label.
    pub spread: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub preferences: Vec<PlacementPreference>,
    /// 0: unlimited.
    #[serde(default)]
    pub max_replicas_per_node: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPUs, fractional (0.5 = half a CPU).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    #[serde(default)]
    pub pids: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub limits: ResourceAmounts,
    #[serde(default)]
    pub reservations: ResourceAmounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// The operator moves the service back.
    #[default]
    Manual,
    /// Back to a preferred region once it has been healthy for `failback_after`.
    Auto,
}

/// Region failover (federation issue): the ordered regions that may run this
/// service, how long the active region may be silent before the next takes
/// over, and how it comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverPolicy {
    pub regions: Vec<String>,
    #[serde(default = "defaults::takeover_after")]
    pub takeover_after: Dur,
    #[serde(default)]
    pub failback: Failback,
    #[serde(default = "defaults::failback_after")]
    pub failback_after: Dur,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// None: each node's default runtime.
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
    /// Docker: the image. Process runtime: the program (looked up in PATH).
    pub image: String,
    /// Overrides the image's entrypoint (process runtime: the program).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Overrides the image's command: the arguments after the program.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Labels on the service (`deploy.labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels on each task's container (the compose service's `labels`).
    #[serde(default)]
    pub container_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub mode: ServiceMode,
    /// Replicated services only; None for global.
    #[serde(default)]
    pub replicas: Option<u64>,
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Bind mounts, named volumes and tmpfs (Docker runtime).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default = "UpdateConfig::update_default")]
    pub update_config: UpdateConfig,
    #[serde(default = "UpdateConfig::rollback_default")]
    pub rollback_config: UpdateConfig,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default = "defaults::stop_grace_period")]
    pub stop_grace_period: Dur,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub failover: Option<FailoverPolicy>,
    /// Bumped by `service update --force`: makes every task out of date
    /// so all are replaced even though nothing else changed.
    #[serde(default)]
    pub force_update: u64,
    /// What a worker cut off from every manager does with its tasks.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
}

/// What a worker that no manager answers does with a service's tasks
/// (`--on-disconnect`): `keep` them running (the default; offline autonomy),
/// or `stop-after=DURATION` of being cut off, for a singleton that must not
/// run twice while the cluster starts a replacement elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum OnDisconnect {
    #[default]
    Keep,
    StopAfter(Dur),
}

impl fmt::Display for OnDisconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnDisconnect::Keep => f.write_str("keep"),
            OnDisconnect::StopAfter(d) => write!(f, "stop-after={d}"),
        }
    }
}

impl From<OnDisconnect> for String {
    fn from(o: OnDisconnect) -> String {
        o.to_string()
    }
}

impl TryFrom<String> for OnDisconnect {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::str::FromStr for OnDisconnect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "keep" {
            return Ok(OnDisconnect::Keep);
        }
        match t.strip_prefix("stop-after=") {
            Some(d) => match d.parse::<Dur>() {
                Ok(d) if d.as_millis() > 0 => Ok(OnDisconnect::StopAfter(d)),
                Ok(_) => Err(format!(
                    "{t:?}: the duration must be above zero, e.g. stop-after=30s"
                )),
                Err(e) => Err(format!("{t:?}: {e}")),
            },
            None => Err(format!(
                "{t:?}: write keep or stop-after=DURATION (e.g. stop-after=30s)"
            )),
        }
    }
}

pub mod defaults {
    use crate::Dur;
    pub fn parallelism() -> u64 {
        1
    }
    pub fn update_monitor() -> Dur {
        Dur::from_secs(5)
    }
    pub fn restart_delay() -> Dur {
        Dur::from_secs(5)
    }
    pub fn stop_grace_period() -> Dur {
        Dur::from_secs(10)
    }
    pub fn health_interval() -> Dur {
        Dur::from_secs(30)
    }
    pub fn health_timeout() -> Dur {
        Dur::from_secs(30)
    }
    pub fn health_retries() -> u32 {
        3
    }
    pub fn takeover_after() -> Dur {
        Dur::from_secs(30)
    }
    pub fn failback_after() -> Dur {
        Dur::from_secs(300)
    }
}

impl ServiceSpec {
    /// A replicated spec with every default: the base the CLI and stack file fill in.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            runtime: None,
            image: image.into(),
            entrypoint: Vec::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            working_dir: None,
            labels: BTreeMap::new(),
            container_labels: BTreeMap::new(),
            mode: ServiceMode::Replicated,
            replicas: Some(1),
            ports: Vec::new(),
            mounts: Vec::new(),
            healthcheck: None,
            restart_policy: RestartPolicy::default(),
            update_config: UpdateConfig::update_default(),
            rollback_config: UpdateConfig::rollback_default(),
            placement: Placement::default(),
            resources: Resources::default(),
            stop_grace_period: defaults::stop_grace_period(),
            stop_signal: None,
            failover: None,
            force_update: 0,
            on_disconnect: OnDisconnect::Keep,
        }
    }

    /// Desired task count for a replicated service (None for global).
    pub fn desired_replicas(&self) -> Option<u64> {
        match self.mode {
            ServiceMode::Replicated => Some(self.replicas.unwrap_or(1)),
            ServiceMode::Global => None,
        }
    }

    /// Whether a task made from `other` runs the same thing as one made from
    /// `self`: everything but the scale (mode/replicas) and the service-level
    /// settings that do not touch a running task.
    pub fn same_task_template(&self, other: &ServiceSpec) -> bool {
        self.runtime == other.runtime
            && self.image == other.image
            && self.entrypoint == other.entrypoint
            && self.command == other.command
            && self.env == other.env
            && self.working_dir == other.working_dir
            && self.container_labels == other.container_labels
            && self.ports == other.ports
            && self.mounts == other.mounts
            && self.healthcheck == other.healthcheck
            && self.resources == other.resources
            && self.stop_grace_period == other.stop_grace_period
            && self.stop_signal == other.stop_signal
            && self.placement == other.placement
            && self.force_update == other.force_update
    }

    /// Ports a task occupies on its node, as (port, protocol). There is no
    /// routing mesh yet, so ingress-mode ports are bound on the node too.
    pub fn host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.ports
            .iter()
            .filter_map(|p| p.published.map(|port| (port, p.protocol)))
    }

    /// Checks everything that makes a spec impossible to run. The error names
    /// the field and says how to fix it.
    pub fn validate(&self) -> Result<(), SpecError> {
        let e = |field: &str, message: String| {
            Err(SpecError {
                field: field.to_string(),
                message,
            })
        };
        if let Err(m) = validate_name(&self.name) {
            return e("name", m);
        }
        if self.image.trim().is_empty() {
            return e(
                "image",
                "is empty: give an image (or a program for the process runtime)".into(),
            );
        }
        match (self.mode, self.replicas) {
            (ServiceMode::Global, Some(_)) => return e(
                "replicas",
                "a global service runs one task per node: remove `replicas` or use mode replicated"
                    .into(),
            ),
            (ServiceMode::Replicated, Some(n)) if n > 10_000 => {
                return e(
                    "replicas",
                    format!("{n} is more than the 10000 skein allows"),
                )
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.target == 0 {
                return e(&format!("ports[{i}].target"), "must be 1-65535".into());
            }
            if p.published == Some(0) {
                return e(&format!("ports[{i}].published"), "must be 1-65535".into());
            }
            if let Some(pubp) = p.published {
                if !seen.insert((pubp, p.protocol)) {
                    return e(
                        &format!("ports[{i}].published"),
                        format!("port {pubp}/{} is published twice", proto_name(p.protocol)),
                    );
                }
            }
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if !m.target.starts_with('/') {
                return e(
                    &format!("mounts[{i}].target"),
                    format!("{:?} must be an absolute path inside the task", m.target),
                );
            }
            if m.target.contains('\0') || m.source.as_deref().is_some_and(|s| s.contains('\0')) {
                return e(
                    &format!("mounts[{i}]"),
                    "a path contains a NUL character: remove it".into(),
                );
            }
            match (m.kind, m.source.as_deref()) {
                (MountKind::Bind, Some(src)) if src.starts_with('/') => {
                    if clean_host_path(src) == "/" {
                        return e(
                            &format!("mounts[{i}].source"),
                            format!(
                                "{src:?} binds the host's whole root filesystem into the task, which skein refuses: bind only the directory the task needs"
                            ),
                        );
                    }
                }
                (MountKind::Bind, _) => {
                    return e(
                        &format!("mounts[{i}].source"),
                        "a bind mount needs an absolute host path as its source".into(),
                    )
                }
                (MountKind::Volume, Some(name)) => {
                    if let Err(m) = validate_name(name) {
                        return e(&format!("mounts[{i}].source"), format!("volume name {m}"));
                    }
                }
                (MountKind::Volume, None) | (MountKind::Tmpfs, _) => {}
            }
        }
        if let Some(hc) = &self.healthcheck {
            match hc.test.first().map(String::as_str) {
                Some("CMD") | Some("CMD-SHELL") if hc.test.len() >= 2 => {}
                Some("NONE") => {}
                _ => return e(
                    "healthcheck.test",
                    "must be [\"CMD\", prog, args...], [\"CMD-SHELL\", \"command\"] or [\"NONE\"]"
                        .into(),
                ),
            }
            if hc.interval.is_zero() {
                return e("healthcheck.interval", "must be more than 0s".into());
            }
            if hc.timeout.is_zero() {
                return e("healthcheck.timeout", "must be more than 0s".into());
            }
        }
        for (field, uc) in [
            ("update_config", &self.update_config),
            ("rollback_config", &self.rollback_config),
        ] {
            if !(0.0..=1.0).contains(&uc.max_failure_ratio) || uc.max_failure_ratio.is_nan() {
                return e(
                    &format!("{field}.max_failure_ratio"),
                    format!("{} is not between 0 and 1", uc.max_failure_ratio),
                );
            }
        }
        for (i, c) in self.placement.constraints.iter().enumerate() {
            if let Err(m) = Constraint::parse(c) {
                return e(&format!("placement.constraints[{i}]"), m);
            }
        }
        for (i, p) in self.placement.preferences.iter().enumerate() {
            if !p.spread.starts_with("node.labels.") && !p.spread.starts_with("engine.labels.") {
                return e(
                    &format!("placement.preferences[{i}].spread"),
                    format!(
                        "{:?}: spread over a node label, e.g. node.labels.zone",
                        p.spread
                    ),
                );
            }
        }
        for (field, amount) in [
            ("resources.limits.cpus", self.resources.limits.cpus),
            (
                "resources.reservations.cpus",
                self.resources.reservations.cpus,
            ),
        ] {
            if let Some(c) = amount {
                if c.is_nan() || c < 0.0 {
                    return e(field, format!("{c} is not a positive number of CPUs"));
                }
            }
        }
        if let Some(f) = &self.failover {
            if f.regions.is_empty() {
                return e("failover.regions", "list at least one region".into());
            }
        }
        Ok(())
    }
}

/// The most services one stack may hold: a stack is deployed as one Raft
/// entry, and a file with more is a mistake (or an attack), not a stack.
pub const MAX_STACK_SERVICES: usize = 1_000;

/// An absolute host path with `.`, `..` and repeated `/` resolved lexically
/// (`/srv/../` is `/`), as the engine would see it; symlinks are not followed.
pub fn clean_host_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Service names become DNS-like names and file names: letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit, at most 63 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty: give the service a name".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{name:?} is not a valid name: use letters, digits, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

/// A placement constraint: `node.labels.zone == east`, `node.role != manager`.
/// Keys: `node.id`, `node.hostname`, `node.role`, `node.platform.os`,
/// `node.platform.arch`, `node.labels.KEY`, `engine.labels.KEY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub op: ConstraintOp,
    pub value: String,
}

impl Constraint {
    pub fn parse(s: &str) -> Result<Constraint, String> {
        let (key, op, value) = if let Some((k, v)) = s.split_once("==") {
            (k, ConstraintOp::Eq, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, ConstraintOp::Ne, v)
        } else {
            return Err(format!(
                "{s:?} has no == or !=: write e.g. \"node.labels.zone == east\""
            ));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{s:?} has no value after the operator"));
        }
        let known = matches!(
            key,
            "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
        ) || key
            .strip_prefix("node.labels.")
            .or_else(|| key.strip_prefix("engine.labels."))
            .is_some_and(|l| !l.is_empty());
        if !known {
            return Err(format!(
                "unknown constraint key {key:?}: use node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.KEY"
            ));
        }
        Ok(Constraint {
            key: key.to_string(),
            op,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_swarms() {
        let s: ServiceSpec =
            serde_json::from_str(r#"{"name":"web","image":"nginx"}"#).expect("parse");
        assert_eq!(s.update_config.parallelism, 1);
        assert_eq!(s.update_config.delay, Dur::ZERO);
        assert_eq!(s.update_config.failure_action, FailureAction::Pause);
        assert_eq!(s.update_config.monitor, Dur::from_secs(5));
        assert_eq!(s.update_config.max_failure_ratio, 0.0);
        assert_eq!(s.update_config.order, UpdateOrder::StopFirst);
        assert_eq!(s.rollback_config.monitor, Dur::ZERO);
        assert_eq!(s.rollback_config.parallelism, 1);
        assert_eq!(s.restart_policy.condition, RestartCondition::Any);
        assert_eq!(s.restart_policy.delay, Dur::from_secs(5));
        assert_eq!(s.stop_grace_period, Dur::from_secs(10));
        assert_eq!(s, {
            let mut n = ServiceSpec::new("web", "nginx");
            n.replicas = None;
            n
        });
    }

    #[test]
    fn refuses_binding_the_host_root() {
        let bind = |src: &str| {
            let mut s = ServiceSpec::new("web", "nginx");
            s.mounts.push(Mount {
                kind: MountKind::Bind,
                source: Some(src.into()),
                target: "/host".into(),
                read_only: true,
            });
            s.validate()
        };
        for src in ["/", "//", "/.", "/srv/..", "/../..", "/srv/./../"] {
            let err = bind(src).expect_err(src);
            assert_eq!(err.field, "mounts[0].source", "{src}");
            assert!(err.message.contains("root filesystem"), "{err}");
        }
        assert!(bind("/srv/data").is_ok());
        assert!(bind("/srv/../data").is_ok());
        assert!(bind("/srv/\0x").is_err());
        assert_eq!(clean_host_path("/a//b/./c/../d/"), "/a/b/d");
        assert_eq!(clean_host_path("/.."), "/");
    }

    #[test]
    fn names_with_separators_nul_or_300_characters_are_refused() {
        for name in [
            "a/b",
            "..",
            "../etc",
            "a\0b",
            &"x".repeat(300),
            "",
            ".hidden",
        ] {
            assert!(validate_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn validate_names_the_field() {
        let mut s = ServiceSpec::new("web", "nginx");
        s.mode = ServiceMode::Global;
        let err = s.validate().expect_err("global with replicas");
        assert_eq!(err.field, "replicas");
        let mut s = ServiceSpec::new("bad name", "nginx");
        assert_eq!(s.validate().expect_err("name").field, "name");
        s.name = "ok".into();
        s.placement.constraints.push("node.colour == red".into());
        assert_eq!(
            s.validate().expect_err("constraint").field,
            "placement.constraints[0]"
        );
    }

    #[test]
    fn constraints_parse() {
        let c = Constraint::parse("node.labels.zone == east").expect("parse");
        assert_eq!(c.key, "node.labels.zone");
        assert_eq!(c.op, ConstraintOp::Eq);
        assert_eq!(c.value, "east");
        let c = Constraint::parse("node.role!=manager").expect("parse");
        assert_eq!(c.op, ConstraintOp::Ne);
        assert!(Constraint::parse("node.role manager").is_err());
        assert!(Constraint::parse("node.labels. == x").is_err());
    }
}
