//! The stack file: the compose file `docker stack deploy -c FILE NAME` takes,
//! turned into the [`ServiceSpec`]s of stack NAME.
//!
//! Owns: the compose shape (`services:` with their `deploy:` and `volumes:`
//! sections, and the top-level `version`, `networks`, `volumes`, `secrets`,
//! `configs` and `x-skein`), its translation into specs, and the errors and
//! warnings a user reads about it. Called by the CLI (`skein stack deploy`)
//! and the API.
//!
//! Invariants:
//! - all or nothing: an error means no [`Stack`]; every spec of a returned
//!   stack passed [`ServiceSpec::validate`], and no two services publish the
//!   same host port and protocol;
//! - nothing is silently dropped: every key of the file is used, refused with
//!   an error, or named in a warning; only `x-*` extension keys are ignored
//!   quietly, as compose does;
//! - every error and warning names the file, the line (and column when
//!   known) and the key path, e.g. `edge.yml:14:9: services.web.deploy.update_config:
//!   unknown key "paralelism" (did you mean "parallelism"?)`;
//! - spec names are `STACK_SERVICE` and carry the label [`STACK_LABEL`] = STACK,
//!   as `docker stack deploy` does; services come out sorted by name;
//! - a service's `volumes:` become [`ServiceSpec::mounts`]: relative bind
//!   paths are resolved against the stack file's directory and `~` against
//!   `$HOME`, as compose does; a named volume must be declared under the
//!   top-level `volumes:` and is named `STACK_VOLUME` on the engine, unless it
//!   is `external` or has a `name`, as `docker stack deploy` does.

use crate::suggest;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_norway::Value;
use skein_protocol::{
    validate_name, Dur, FailureAction, HealthCheck, Mount, MountKind, PlacementPreference,
    PortConfig, Protocol, PublishMode, RestartCondition, RuntimeKind, ServiceMode, ServiceSpec,
    UpdateConfig, UpdateOrder, MAX_STACK_SERVICES, STACK_LABEL,
};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A parsed stack: its services, sorted by name, and what the user should
/// know about the parts of the file skein ignores.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    pub services: Vec<ServiceSpec>,
    /// `FILE:LINE:COL: KEY.PATH: message`, in file order.
    pub warnings: Vec<String>,
}

/// Where in a file: `edge.yml:14:9`, `edge.yml:14` or `edge.yml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{file}: cannot read the stack file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid stack name {name:?}: {message}")]
    StackName { name: String, message: String },
    /// Something in the file. `path` is the key path (`services.web.deploy`),
    /// empty for the whole file (YAML syntax errors, top-level keys).
    #[error("{at}: {}{message}", path_prefix(.path))]
    Invalid {
        at: Position,
        path: String,
        message: String,
    },
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

impl StackError {
    /// The position in the file, for errors about its content.
    pub fn position(&self) -> Option<&Position> {
        match self {
            StackError::Invalid { at, .. } => Some(at),
            _ => None,
        }
    }
    /// The key path, for errors about the file's content.
    pub fn path(&self) -> Option<&str> {
        match self {
            StackError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Reads and parses a stack file; messages name the file as `path` is written.
/// Relative bind mount paths are resolved against the file's directory.
pub fn load_stack(path: &Path, stack_name: &str) -> Result<Stack, StackError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StackError::Read {
        file: file.clone(),
        source,
    })?;
    parse_stack_in(&text, &file, &dir_of(path), stack_name)
}

/// Parses the text of a stack file named `file` (used in messages) into the
/// specs of stack `stack_name`. Relative bind mount paths are resolved
/// against the directory of `file` (the current directory when `file` has
/// none); use [`parse_stack_in`] to give the directory.
pub fn parse_stack(text: &str, file: &str, stack_name: &str) -> Result<Stack, StackError> {
    parse_stack_in(text, file, &dir_of(Path::new(file)), stack_name)
}

/// [`parse_stack`], resolving relative bind mount paths (`./data:/data`)
/// against `base_dir`, as compose resolves them against the project
/// directory. A relative `base_dir` is taken from the current directory.
pub fn parse_stack_in(
    text: &str,
    file: &str,
    base_dir: &Path,
    stack_name: &str,
) -> Result<Stack, StackError> {
    validate_name(stack_name).map_err(|message| StackError::StackName {
        name: stack_name.to_string(),
        message,
    })?;
    if let Some(line) = flow_too_deep(text, MAX_FLOW_DEPTH) {
        return Err(StackError::Invalid {
            at: Position {
                file: file.to_string(),
                line: Some(line),
                column: None,
            },
            path: String::new(),
            message: format!(
                "invalid YAML: brackets nested more than {MAX_FLOW_DEPTH} levels deep: a stack file needs a few"
            ),
        });
    }
    let mut ctx = Ctx {
        file,
        base_dir: std::path::absolute(base_dir).ok(),
        home: std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from),
        index: KeyIndex::build(text),
        warnings: Vec::new(),
        volumes: Vec::new(),
    };
    let raw = ctx.parse_raw(text)?;
    let specs = ctx.convert(raw, stack_name)?;
    ctx.warn_dollars(text);
    let mut warnings = std::mem::take(&mut ctx.warnings);
    warnings.sort_by_key(|w| (w.0.unwrap_or(usize::MAX), w.1.unwrap_or(0)));
    let mut services = specs;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Stack {
        services,
        warnings: warnings.into_iter().map(|w| w.2).collect(),
    })
}

/// The directory a file is in: `.` for a bare file name.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

// ---------------------------------------------------------------------------
// Keys: what skein does with each compose key it does not map to a field.

const TOP_KEYS: &[&str] = &[
    "version", "services", "networks", "volumes", "secrets", "configs", "x-skein", "name",
    "include", "models",
];

const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "ports",
    "healthcheck",
    "labels",
    "stop_grace_period",
    "stop_signal",
    "working_dir",
    "deploy",
    "depends_on",
    "networks",
    "volumes",
    "x-skein",
];

/// The keys of a top-level volume declaration.
const VOLUME_DECL_KEYS: &[&str] = &["external", "name", "driver", "driver_opts", "labels"];

/// The modes of a short-syntax volume (`SOURCE:TARGET:MODE`), for suggestions.
const SHORT_MOUNT_MODES: &[&str] = &[
    "ro",
    "rw",
    "nocopy",
    "z",
    "Z",
    "shared",
    "slave",
    "private",
    "rshared",
    "rslave",
    "rprivate",
    "cached",
    "delegated",
    "consistent",
];

/// What networks are in skein today, said wherever a file declares them.
const NETWORKS_TODAY: &str = "networks are not implemented across nodes yet: the services of a \
    stack reach each other by service name only on the same node (Docker runtime); the process \
    runtime uses the host network";

/// Compose service keys skein cannot honour yet: refused, with a hint.
const SERVICE_UNSUPPORTED: &[(&str, &str)] = &[
    ("build", "build the image first and give it in `image`"),
    ("volumes_from", "list the mounts under `volumes`"),
    ("secrets", ""),
    ("configs", ""),
    ("env_file", "list the variables under `environment`"),
    ("devices", ""),
    ("device_cgroup_rules", ""),
    ("gpus", ""),
    ("cap_add", ""),
    ("cap_drop", ""),
    ("privileged", ""),
    ("user", ""),
    ("userns_mode", ""),
    ("security_opt", ""),
    ("read_only", ""),
    (
        "tmpfs",
        "list it under `volumes` as {type: tmpfs, target: PATH}",
    ),
    ("ulimits", ""),
    ("sysctls", ""),
    ("shm_size", ""),
    ("ipc", ""),
    ("pid", ""),
    ("cgroup", ""),
    ("cgroup_parent", ""),
    ("extra_hosts", ""),
    ("dns", ""),
    ("dns_opt", ""),
    ("dns_search", ""),
    ("isolation", ""),
    ("group_add", ""),
    ("credential_spec", ""),
    (
        "platform",
        "use a placement constraint such as node.platform.arch == x86_64",
    ),
    (
        "runtime",
        "to pick docker or process, use x-skein: {runtime: ...}",
    ),
    ("storage_opt", ""),
    ("blkio_config", ""),
    ("mem_limit", "use deploy.resources.limits.memory"),
    (
        "mem_reservation",
        "use deploy.resources.reservations.memory",
    ),
    ("memswap_limit", ""),
    ("mem_swappiness", ""),
    ("cpus", "use deploy.resources.limits.cpus"),
    ("cpu_shares", "use deploy.resources.limits.cpus"),
    ("cpu_quota", "use deploy.resources.limits.cpus"),
    ("cpu_period", "use deploy.resources.limits.cpus"),
    ("cpuset", ""),
    ("cpu_count", "use deploy.resources.limits.cpus"),
    ("cpu_percent", "use deploy.resources.limits.cpus"),
    ("cpu_rt_runtime", ""),
    ("cpu_rt_period", ""),
    ("pids_limit", "use deploy.resources.limits.pids"),
    ("oom_kill_disable", ""),
    ("oom_score_adj", ""),
    ("mac_address", ""),
    ("links", ""),
    ("external_links", ""),
    ("scale", "use deploy.replicas"),
    ("extends", ""),
    ("annotations", ""),
    ("post_start", ""),
    ("pre_stop", ""),
    ("develop", ""),
    ("provider", ""),
    ("use_api_socket", ""),
    ("label_file", "list the labels under `labels`"),
];

/// Compose service keys that do not change what a task runs: warned about.
const SERVICE_IGNORED: &[(&str, &str)] = &[
    ("container_name", "skein names each task's container itself"),
    ("hostname", "tasks keep their node's hostname"),
    ("domainname", "tasks keep their node's domain name"),
    (
        "restart",
        "use deploy.restart_policy (condition none, on-failure or any)",
    ),
    (
        "logging",
        "tasks log to files under the agent's data dir (skein service logs)",
    ),
    ("tty", "tasks get no terminal"),
    ("stdin_open", "tasks get no standard input"),
    (
        "init",
        "the process runtime already reaps a task's children",
    ),
    ("expose", "publish ports with `ports` instead"),
    (
        "network_mode",
        "skein picks the network: the stack's network on the Docker runtime, the host network on the process runtime",
    ),
    ("pull_policy", "images must already be on the node"),
    ("profiles", "every service of the file is deployed"),
    ("attach", ""),
];

// ---------------------------------------------------------------------------
// The compose shape, as serde reads it. Values that need words of their own
// (durations, sizes, ports, string-or-list) have their own types below.

#[derive(Deserialize)]
#[serde(expecting = "a stack file: a mapping with `services:`")]
struct RawFile {
    #[serde(default)]
    #[allow(dead_code)] // accepted and ignored, as docker stack deploy does
    version: Option<Value>,
    #[serde(default)]
    services: Option<Ordered<Option<RawService>>>,
    #[serde(default)]
    networks: Option<Value>,
    #[serde(default)]
    volumes: Option<Ordered<Option<RawVolumeDecl>>>,
    #[serde(default)]
    secrets: Option<Value>,
    #[serde(default)]
    configs: Option<Value>,
    #[serde(default, rename = "x-skein")]
    x_skein: Option<XSkein>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "x-skein settings: {runtime: process, on_disconnect: keep}"
)]
struct XSkein {
    #[serde(default)]
    runtime: Option<RuntimeKind>,
    /// keep or stop-after=DURATION (services only).
    #[serde(default)]
    on_disconnect: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a service: a mapping with `image:`")]
struct RawService {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    command: Option<StrOrList>,
    #[serde(default)]
    entrypoint: Option<StrOrList>,
    #[serde(default)]
    environment: Option<ListOrMap>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    healthcheck: Option<RawHealth>,
    #[serde(default)]
    labels: Option<ListOrMap>,
    #[serde(default)]
    stop_grace_period: Option<CDur>,
    #[serde(default)]
    stop_signal: Option<Scalar>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    deploy: Option<RawDeploy>,
    #[serde(default)]
    depends_on: Option<Value>,
    #[serde(default)]
    networks: Option<Value>,
    #[serde(default)]
    volumes: Option<Vec<RawMount>>,
    #[serde(default, rename = "x-skein")]
    x_skein: Option<XSkein>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// A top-level `volumes:` entry. Keys other than these are `x-*` extensions
/// (ignored) or errors.
#[derive(Deserialize)]
#[serde(expecting = "a volume: nothing, {external: true} or {name: NAME}")]
struct RawVolumeDecl {
    #[serde(default)]
    external: Option<External>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    driver_opts: Option<Value>,
    #[serde(default)]
    labels: Option<Value>,
    #[serde(flatten)]
    extra: BTreeMap<String, Value>,
}

/// `external: true`, or the older `external: {name: NAME}`.
struct External {
    yes: bool,
    name: Option<String>,
}

impl<'de> Deserialize<'de> for External {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, expecting = "external: {name: NAME}")]
        struct Named {
            #[serde(default)]
            name: Option<String>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = External;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<External, E> {
                Ok(External { yes: v, name: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<External, A::Error> {
                let n = Named::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(External {
                    yes: true,
                    name: n.name,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of a service's `volumes:`: the short syntax
/// (`[SOURCE:]TARGET[:MODE]`) or the long one.
enum RawMount {
    Short(String),
    Long(Box<LongMount>),
}

impl<'de> Deserialize<'de> for RawMount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a volume: \"./host/dir:/target[:ro]\", \"name:/target\", \"/target\" or {type: bind, source: ..., target: ...}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMount, E> {
                Ok(RawMount::Short(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawMount, A::Error> {
                LongMount::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(|l| RawMount::Long(Box::new(l)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mount: {type: bind, source: ./data, target: /data, read_only: true}"
)]
struct LongMount {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    bind: Option<RawBindOpts>,
    #[serde(default)]
    volume: Option<RawVolumeOpts>,
    #[serde(default)]
    tmpfs: Option<RawTmpfsOpts>,
    #[serde(default)]
    image: Option<Value>,
    #[serde(default)]
    consistency: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "bind options: {create_host_path: true}"
)]
struct RawBindOpts {
    #[serde(default)]
    create_host_path: Option<bool>,
    #[serde(default)]
    propagation: Option<Value>,
    #[serde(default)]
    selinux: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "volume options: {nocopy: true}")]
struct RawVolumeOpts {
    #[serde(default)]
    nocopy: Option<bool>,
    #[serde(default)]
    subpath: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "tmpfs options: {size: 64M}")]
struct RawTmpfsOpts {
    #[serde(default)]
    size: Option<Memory>,
    #[serde(default)]
    mode: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a healthcheck: {test: ..., interval: 30s, ...}"
)]
struct RawHealth {
    #[serde(default)]
    test: Option<StrOrList>,
    #[serde(default)]
    interval: Option<CDur>,
    #[serde(default)]
    timeout: Option<CDur>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<CDur>,
    #[serde(default)]
    start_interval: Option<Value>,
    #[serde(default)]
    disable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a deploy section: {mode: ..., replicas: ..., ...}"
)]
struct RawDeploy {
    #[serde(default)]
    mode: Option<ServiceMode>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    placement: Option<RawPlacement>,
    #[serde(default)]
    update_config: Option<RawUpdate>,
    #[serde(default)]
    rollback_config: Option<RawUpdate>,
    #[serde(default)]
    restart_policy: Option<RawRestart>,
    #[serde(default)]
    resources: Option<RawResources>,
    #[serde(default)]
    labels: Option<ListOrMap>,
    #[serde(default)]
    endpoint_mode: Option<EndpointMode>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EndpointMode {
    Vip,
    Dnsrr,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "placement: {constraints: [...], preferences: [...]}"
)]
struct RawPlacement {
    #[serde(default)]
    constraints: Option<Vec<String>>,
    #[serde(default)]
    preferences: Option<Vec<RawPreference>>,
    #[serde(default)]
    max_replicas_per_node: Option<u64>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a placement preference: {spread: node.labels.KEY}"
)]
struct RawPreference {
    spread: String,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "update settings: {parallelism: 1, delay: 10s, ...}"
)]
struct RawUpdate {
    #[serde(default)]
    parallelism: Option<u64>,
    #[serde(default)]
    delay: Option<CDur>,
    #[serde(default)]
    failure_action: Option<FailureAction>,
    #[serde(default)]
    monitor: Option<CDur>,
    #[serde(default)]
    max_failure_ratio: Option<f64>,
    #[serde(default)]
    order: Option<UpdateOrder>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a restart policy: {condition: on-failure, delay: 5s, ...}"
)]
struct RawRestart {
    #[serde(default)]
    condition: Option<RestartCondition>,
    #[serde(default)]
    delay: Option<CDur>,
    #[serde(default)]
    max_attempts: Option<u64>,
    #[serde(default)]
    window: Option<CDur>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "resources: {limits: {...}, reservations: {...}}"
)]
struct RawResources {
    #[serde(default)]
    limits: Option<RawAmounts>,
    #[serde(default)]
    reservations: Option<RawAmounts>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "resource amounts: {cpus: \"0.5\", memory: 512M}"
)]
struct RawAmounts {
    #[serde(default)]
    cpus: Option<Cpus>,
    #[serde(default)]
    memory: Option<Memory>,
    #[serde(default)]
    pids: Option<u64>,
    #[serde(default)]
    devices: Option<Value>,
    #[serde(default)]
    generic_resources: Option<Value>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a port: {target: 80, published: 8080, mode: host}"
)]
struct LongPort {
    target: u16,
    #[serde(default)]
    published: Option<PublishedPort>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    mode: Option<PublishMode>,
    #[serde(default)]
    host_ip: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    app_protocol: Option<Value>,
}

/// A mapping whose order matters (services: errors and warnings in file order).
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to definitions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("{k:?} is defined twice")));
                    }
                    let v = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A scalar as compose reads it into a string: strings as written, numbers
/// and booleans as text; None for null.
struct Scalar(Option<String>);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `command: sleep 10` or `command: ["sleep", "10"]`.
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for StrOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrOrList, E> {
                Ok(StrOrList::Str(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrOrList, E> {
                Ok(StrOrList::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrOrList, E> {
                Ok(StrOrList::Str(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<StrOrList, A::Error> {
                let mut out = Vec::new();
                while let Some(Scalar(item)) = s.next_element::<Scalar>()? {
                    match item {
                        Some(item) => out.push(item),
                        None => {
                            return Err(de::Error::custom(
                                "a list item is empty (null): quote it as \"\" or remove it",
                            ))
                        }
                    }
                }
                Ok(StrOrList::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `environment:` / `labels:` as a list of `K=V` (or `K`) or as a mapping.
enum ListOrMap {
    List(Vec<String>),
    /// Values: None for null (`KEY:` with nothing after it).
    Map(Vec<(String, Option<String>)>),
}

impl<'de> Deserialize<'de> for ListOrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ListOrMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of KEY=VALUE strings or a mapping of KEY: VALUE")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<ListOrMap, A::Error> {
                let mut out = Vec::new();
                while let Some(Scalar(item)) = s.next_element::<Scalar>()? {
                    match item {
                        Some(item) => out.push(item),
                        None => {
                            return Err(de::Error::custom(
                                "a list item is empty (null): write KEY=VALUE",
                            ))
                        }
                    }
                }
                Ok(ListOrMap::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<ListOrMap, A::Error> {
                let mut out = Vec::new();
                while let Some((Scalar(k), Scalar(v))) = m.next_entry::<Scalar, Scalar>()? {
                    let Some(k) = k else {
                        return Err(de::Error::custom("a key is empty (null)"));
                    };
                    out.push((k, v));
                }
                Ok(ListOrMap::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A compose duration: a string such as "10s" or "1m30s" (or the number 0).
struct CDur(Dur);

impl<'de> Deserialize<'de> for CDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CDur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\", \"1m30s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CDur, E> {
                v.parse::<Dur>().map(CDur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CDur, E> {
                if v == 0 {
                    Ok(CDur(Dur::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: a number needs a unit, e.g. \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CDur, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "invalid duration {v}: negative durations are not allowed"
                    ))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<CDur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a number needs a unit, e.g. \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// CPUs: "0.5" or 0.5.
struct Cpus(f64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs such as \"0.5\" or 2")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Cpus(v))
                } else {
                    Err(E::custom(format!(
                        "{v} is not a number of CPUs: write a positive number such as \"0.5\" or 2"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpus, E> {
                match v.trim().parse::<f64>() {
                    Ok(n) => self.visit_f64(n),
                    Err(_) => Err(E::custom(format!(
                        "{v:?} is not a number of CPUs: write e.g. \"0.5\" or 2"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A memory size: bytes as a number, or "512M", "1G", "1.5gb", "100k".
struct Memory(u64);

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a memory size such as \"512M\" or \"1G\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Memory, E> {
                Ok(Memory(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Memory, E> {
                u64::try_from(v).map(Memory).map_err(|_| {
                    E::custom(format!("memory size {v} is negative: write e.g. \"512M\""))
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Memory, E> {
                Err(E::custom(format!(
                    "memory size {v} is not a whole number of bytes: write e.g. \"512M\" or \"1.5G\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Memory, E> {
                parse_memory(v).map(Memory).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Docker's RAM sizes: a number, an optional unit b, k, m, g, t or p
/// (powers of 1024, any case), optionally followed by `b` or `ib`.
pub(crate) fn parse_memory(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid memory size {s:?}: write bytes or a size such as \"512M\" or \"1G\"");
    let t = s.trim().to_ascii_lowercase();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    if num.is_empty() {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim_start();
    let (power, rest) = match unit.chars().next() {
        None => (0, ""),
        Some('b') => (0, &unit[1..]),
        Some('k') => (1, &unit[1..]),
        Some('m') => (2, &unit[1..]),
        Some('g') => (3, &unit[1..]),
        Some('t') => (4, &unit[1..]),
        Some('p') => (5, &unit[1..]),
        Some(_) => return Err(bad()),
    };
    let suffix_ok = match (power, rest) {
        (_, "") => true,
        (0, _) => false,
        (_, "b" | "ib") => true,
        _ => false,
    };
    if !suffix_ok {
        return Err(bad());
    }
    let bytes = value * 1024f64.powi(power);
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("memory size {s:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A published port in the long syntax: a number, or a string holding one.
struct PublishedPort(u16);

impl<'de> Deserialize<'de> for PublishedPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PublishedPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PublishedPort, E> {
                u16::try_from(v)
                    .map(PublishedPort)
                    .map_err(|_| E::custom(format!("{v} is not a port number (1-65535)")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PublishedPort, E> {
                Err(E::custom(format!("{v} is not a port number (1-65535)")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PublishedPort, E> {
                port_number(v).map(PublishedPort).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn port_number(s: &str) -> Result<u16, String> {
    let t = s.trim();
    if t.contains('-') {
        return Err(format!(
            "{t:?} is a port range: ranges are not supported yet, list each port on its own"
        ));
    }
    t.parse::<u16>()
        .map_err(|_| format!("{t:?} is not a port number (1-65535)"))
}

/// One entry of `ports:`: the short syntax ("8080:80/udp", 80) or the long one.
enum RawPort {
    Short(PortConfig),
    Long(Box<LongPort>),
}

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a port: \"8080:80\", \"8080:80/udp\", \"80\" or {target: 80, published: 8080, mode: host}",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPort, E> {
                parse_short_port(v).map(RawPort::Short).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<RawPort, A::Error> {
                LongPort::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(|l| RawPort::Long(Box::new(l)))
            }
        }
        d.deserialize_any(V)
    }
}

/// "80", "8080:80", "8080:80/udp". A host IP ("127.0.0.1:8080:80") and
/// ranges ("8000-8010:8000-8010") are refused by name. The mode is ingress,
/// as in compose; the caller maps it to host.
fn parse_short_port(s: &str) -> Result<PortConfig, String> {
    let t = s.trim();
    let (ports, protocol) = match t.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => {
            return Err(format!(
                "{t:?}: unknown protocol {other:?}: use tcp or udp, e.g. \"8080:80/udp\""
            ))
        }
        None => (t, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published), *target),
        _ => {
            return Err(format!(
                "{t:?} binds the published port to a host IP: that is not supported yet; \
                 write \"PUBLISHED:TARGET\" (published on every address of the node)"
            ))
        }
    };
    let target = port_number(target).map_err(|m| format!("{t:?}: {m}"))?;
    let published = match published {
        Some(p) => Some(port_number(p).map_err(|m| format!("{t:?}: {m}"))?),
        None => None,
    };
    Ok(PortConfig {
        target,
        published,
        protocol,
        mode: PublishMode::Ingress,
    })
}

/// Splits a command line the way a POSIX shell splits words: whitespace
/// separates, single quotes keep everything, double quotes keep everything
/// but `\"`, `\\`, `\$` and `` \` `` escapes, a backslash outside quotes
/// escapes the next character. No expansion of any kind.
pub(crate) fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("a single quote (') is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some('\n') => {}
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("a double quote (\") is not closed".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("a double quote (\") is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(ch) => cur.push(ch),
                    None => return Err("the command ends with a lone backslash".into()),
                }
            }
            _ => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Translation into specs.

struct Ctx<'a> {
    file: &'a str,
    /// Where relative bind paths start (absolute); None if it is unknown.
    base_dir: Option<PathBuf>,
    /// What `~` stands for in bind paths.
    home: Option<PathBuf>,
    index: KeyIndex,
    /// (line, column, text)
    warnings: Vec<(Option<usize>, Option<usize>, String)>,
    /// The top-level named volumes, in file order.
    volumes: Vec<DeclaredVolume>,
}

struct DeclaredVolume {
    /// The key under the top-level `volumes:`.
    key: String,
    /// The volume's name on the engine.
    engine_name: String,
    used: bool,
}

impl Ctx<'_> {
    fn position(&self, path: &str) -> Position {
        let (line, column) = match self.index.locate(path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        Position {
            file: self.file.to_string(),
            line,
            column,
        }
    }

    fn err(&self, path: &str, message: impl Into<String>) -> StackError {
        StackError::Invalid {
            at: self.position(path),
            path: path.to_string(),
            message: message.into(),
        }
    }

    fn warn(&mut self, path: &str, message: impl fmt::Display) {
        let at = self.position(path);
        let text = format!("{at}: {}{message}", path_prefix(path));
        self.warnings.push((at.line, at.column, text));
    }

    /// YAML text -> the compose shape; errors located and reworded.
    fn parse_raw(&self, text: &str) -> Result<RawFile, StackError> {
        let mut value: Value = match serde_norway::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (line, column) = e.location().map(|l| (l.line(), l.column())).unzip();
                let msg = strip_mark(&e.to_string(), line, column);
                let (line, column) = match self.duplicate_key_at(&msg) {
                    Some((l, c)) => (Some(l), Some(c)),
                    None => (line, column),
                };
                return Err(StackError::Invalid {
                    at: Position {
                        file: self.file.to_string(),
                        line,
                        column,
                    },
                    path: String::new(),
                    message: format!("invalid YAML: {msg}"),
                });
            }
        };
        if !has_merge_key(&value) {
            return serde_norway::from_str(text).map_err(|e| self.serde_error(&e, true));
        }
        // serde_norway does not apply `<<: *anchor` merges itself: merge, then
        // read the merged document. Its lines are not the file's, so errors
        // are located by key path in the original text.
        value
            .apply_merge()
            .map_err(|e| self.err("", format!("invalid YAML merge (<<): {e}")))?;
        let merged = serde_norway::to_string(&value)
            .map_err(|e| self.err("", format!("cannot expand YAML merges (<<): {e}")))?;
        serde_norway::from_str(&merged).map_err(|e| self.serde_error(&e, false))
    }

    /// "services: duplicate entry with key \"web\"": where the second one is.
    fn duplicate_key_at(&self, msg: &str) -> Option<(usize, usize)> {
        let (parent, rest) = split_path(msg);
        let key = rest.strip_prefix("duplicate entry with key ")?;
        let key: String = serde_norway::from_str(key).ok()?;
        let path = join_path(parent, &key);
        self.index
            .entries
            .iter()
            .filter(|(p, _, _)| *p == path)
            .nth(1)
            .map(|(_, l, c)| (*l, *c))
    }

    fn serde_error(&self, e: &serde_norway::Error, lines_are_ours: bool) -> StackError {
        let loc = e.location().map(|l| (l.line(), l.column()));
        let full = strip_mark(&e.to_string(), loc.map(|l| l.0), loc.map(|l| l.1));
        let (path, msg) = split_path(&full);
        let reworded = suggest::reword(msg);
        let mut at = Position {
            file: self.file.to_string(),
            line: None,
            column: None,
        };
        if lines_are_ours {
            if let Some((l, c)) = loc {
                at.line = Some(l);
                at.column = Some(c);
            }
        }
        let exact = match &reworded.unknown_key {
            Some(k) => self.index.find(&join_path(path, k)),
            None if !lines_are_ours => self.index.locate(path),
            None => None,
        };
        if let Some((l, c)) = exact {
            at.line = Some(l);
            at.column = Some(c);
        }
        StackError::Invalid {
            at,
            path: path.to_string(),
            message: reworded.message,
        }
    }

    fn convert(&mut self, raw: RawFile, stack: &str) -> Result<Vec<ServiceSpec>, StackError> {
        // Top-level keys serde did not map.
        for key in self.sorted_by_line("", raw.extra.keys()) {
            match key.as_str() {
                k if k.starts_with("x-") => self.warn_skein_typo(k, k),
                "name" => self.warn(
                    "name",
                    "ignored: the stack's name comes from `skein stack deploy NAME`",
                ),
                "include" | "models" => {
                    return Err(self.err(
                        &key,
                        format!("skein does not support `{key}` yet: remove it"),
                    ))
                }
                _ => {
                    let mut msg = suggest::unknown_key(&key, TOP_KEYS);
                    if !msg.contains("did you mean") {
                        msg = format!(
                            "unknown key {key:?}: a stack file has version, services, networks, volumes, secrets, configs and x-* extension keys"
                        );
                    }
                    return Err(StackError::Invalid {
                        at: self.position(&key),
                        path: String::new(),
                        message: msg,
                    });
                }
            }
        }
        if let Some(names) = declared_names(raw.networks.as_ref()) {
            self.warn(
                "networks",
                format!("ignored network(s) {}: {NETWORKS_TODAY}", names.join(", ")),
            );
        }
        for (key, decl) in raw.volumes.map(|v| v.0).unwrap_or_default() {
            let engine_name = self.volume_decl(&key, decl, stack)?;
            self.volumes.push(DeclaredVolume {
                key,
                engine_name,
                used: false,
            });
        }
        if raw
            .x_skein
            .as_ref()
            .is_some_and(|x| x.on_disconnect.is_some())
        {
            return Err(self.err(
                "x-skein.on_disconnect",
                "on_disconnect goes on a service (services.NAME.x-skein.on_disconnect), not on the stack",
            ));
        }
        let top_runtime = raw.x_skein.and_then(|x| x.runtime);
        let services = match raw.services {
            Some(s) if !s.0.is_empty() => s.0,
            _ => return Err(self.err(
                "services",
                "the stack has no services: add a `services:` section with at least one service",
            )),
        };
        if services.len() > MAX_STACK_SERVICES {
            return Err(self.err(
                "services",
                format!(
                    "the stack has {} services, more than the {MAX_STACK_SERVICES} one stack may hold: split it into several stacks",
                    services.len()
                ),
            ));
        }
        let mut specs = Vec::with_capacity(services.len());
        let mut host_ports: BTreeMap<(u16, Protocol), (String, usize)> = BTreeMap::new();
        for (key, svc) in services {
            let base = format!("services.{key}");
            let Some(svc) = svc else {
                return Err(self.err(&base, "the service is empty: give it at least an `image:`"));
            };
            let spec = self.service(&key, svc, stack, top_runtime)?;
            if let Err(e) = spec.validate() {
                return Err(self.err(&spec_field_path(&base, &e.field), e.message));
            }
            for (i, p) in spec.ports.iter().enumerate() {
                let (PublishMode::Host, Some(published)) = (p.mode, p.published) else {
                    continue;
                };
                if let Some((other, j)) = host_ports.get(&(published, p.protocol)) {
                    return Err(self.err(
                        &format!("{base}.ports[{i}]"),
                        format!(
                            "port {published}/{} is already published in host mode by service {other:?} \
                             (services.{other}.ports[{j}]): two services cannot bind the same port on a node; \
                             publish a different port",
                            proto_name(p.protocol)
                        ),
                    ));
                }
                host_ports.insert((published, p.protocol), (key.clone(), i));
            }
            if let (ServiceMode::Replicated, Some(n), Some((port, proto))) =
                (spec.mode, spec.replicas, spec.host_ports().next())
            {
                if n > 1 {
                    self.warn(
                        &format!("{base}.deploy.replicas"),
                        format!(
                            "{n} replicas publish host port {port}/{}: a node can run only one of them, \
                             so they need {n} nodes",
                            proto_name(proto)
                        ),
                    );
                }
            }
            specs.push(spec);
        }
        let unused: Vec<&str> = self
            .volumes
            .iter()
            .filter(|v| !v.used)
            .map(|v| v.key.as_str())
            .collect();
        if !unused.is_empty() {
            let msg = format!(
                "{} declared but used by no service; ignored",
                unused.join(", ")
            );
            self.warn("volumes", msg);
        }
        // Using a secret or config on a service is an error, so every
        // declaration left here is unused.
        for (kind, decl) in [("secrets", &raw.secrets), ("configs", &raw.configs)] {
            if let Some(names) = declared_names(decl.as_ref()) {
                self.warn(
                    kind,
                    format!(
                        "{} declared but used by no service; ignored (skein does not support {kind} yet)",
                        names.join(", ")
                    ),
                );
            }
        }
        Ok(specs)
    }

    /// Keys of a mapping in the order they appear in the file.
    fn sorted_by_line<'k>(
        &self,
        parent: &str,
        keys: impl Iterator<Item = &'k String>,
    ) -> Vec<String> {
        let mut keys: Vec<(usize, String)> = keys
            .map(|k| {
                let line = self
                    .index
                    .find(&join_path(parent, k))
                    .map_or(usize::MAX, |(l, _)| l);
                (line, k.clone())
            })
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    fn service(
        &mut self,
        key: &str,
        raw: RawService,
        stack: &str,
        top_runtime: Option<RuntimeKind>,
    ) -> Result<ServiceSpec, StackError> {
        let base = format!("services.{key}");
        let at = |k: &str| format!("{base}.{k}");
        for extra in self.sorted_by_line(&base, raw.extra.keys()) {
            if extra.starts_with("x-") {
                self.warn_skein_typo(&at(&extra), &extra);
                continue;
            }
            if let Some((_, hint)) = SERVICE_UNSUPPORTED.iter().find(|(k, _)| *k == extra) {
                let hint = if hint.is_empty() {
                    "remove it".to_string()
                } else {
                    format!("{hint}, or remove it")
                };
                return Err(self.err(
                    &at(&extra),
                    format!("skein does not support `{extra}` yet: {hint}"),
                ));
            }
            if let Some((_, why)) = SERVICE_IGNORED.iter().find(|(k, _)| *k == extra) {
                let msg = if why.is_empty() {
                    "ignored: skein does not use it".to_string()
                } else {
                    format!("ignored: {why}")
                };
                self.warn(&at(&extra), msg);
                continue;
            }
            let known: Vec<&str> = SERVICE_KEYS
                .iter()
                .copied()
                .chain(SERVICE_UNSUPPORTED.iter().map(|(k, _)| *k))
                .chain(SERVICE_IGNORED.iter().map(|(k, _)| *k))
                .collect();
            let mut msg = suggest::unknown_key(&extra, &known);
            if !msg.contains("did you mean") {
                msg = format!(
                    "unknown key {extra:?}: not a compose service key (extensions must start with x-)"
                );
            }
            return Err(StackError::Invalid {
                at: self.position(&at(&extra)),
                path: base.clone(),
                message: msg,
            });
        }

        let Some(image) = raw.image else {
            return Err(self.err(
                &base,
                "missing key \"image\": give the image (on the process runtime, the program to run)",
            ));
        };
        let mut spec = ServiceSpec::new(format!("{stack}_{key}"), image);
        let x_skein = raw.x_skein.unwrap_or(XSkein {
            runtime: None,
            on_disconnect: None,
        });
        spec.runtime = x_skein.runtime.or(top_runtime);
        if let Some(o) = x_skein.on_disconnect {
            spec.on_disconnect = o
                .parse()
                .map_err(|e: String| self.err(&at("x-skein.on_disconnect"), e))?;
        }
        if let Some(c) = raw.entrypoint {
            spec.entrypoint = self.words(&at("entrypoint"), c)?;
        }
        if let Some(c) = raw.command {
            spec.command = self.words(&at("command"), c)?;
        }
        if let Some(env) = raw.environment {
            spec.env = self.env(&at("environment"), env)?;
        }
        if let Some(labels) = raw.labels {
            spec.container_labels = self.labels(&at("labels"), labels)?;
        }
        if let Some(ports) = raw.ports {
            for (i, p) in ports.into_iter().enumerate() {
                let port = self.port(&format!("{base}.ports[{i}]"), p)?;
                spec.ports.push(port);
            }
        }
        if let Some(h) = raw.healthcheck {
            spec.healthcheck = self.healthcheck(&at("healthcheck"), h)?;
        }
        if let Some(d) = raw.stop_grace_period {
            spec.stop_grace_period = d.0;
        }
        if let Some(Scalar(sig)) = raw.stop_signal {
            spec.stop_signal = sig;
        }
        if let Some(dir) = raw.working_dir {
            spec.working_dir = Some(dir);
        }
        if raw.depends_on.is_some() {
            self.warn(
                &at("depends_on"),
                "ignored, as docker stack deploy ignores it: services start in no particular order; \
                 make each one retry until what it needs is up",
            );
        }
        if raw.networks.is_some() {
            self.warn(&at("networks"), format!("ignored: {NETWORKS_TODAY}"));
        }
        if let Some(volumes) = raw.volumes {
            for (i, v) in volumes.into_iter().enumerate() {
                let path = format!("{base}.volumes[{i}]");
                let mount = match v {
                    RawMount::Short(s) => self.short_mount(&path, &s)?,
                    RawMount::Long(l) => self.long_mount(&path, *l)?,
                };
                let target = normalize(Path::new(&mount.target));
                if let Some(j) = spec
                    .mounts
                    .iter()
                    .position(|m| normalize(Path::new(&m.target)) == target)
                {
                    return Err(self.err(
                        &path,
                        format!(
                            "{} is already mounted by {base}.volumes[{j}]: mount one thing per target",
                            target.display()
                        ),
                    ));
                }
                spec.mounts.push(mount);
            }
            if spec.runtime == Some(RuntimeKind::Process) && !spec.mounts.is_empty() {
                self.warn(
                    &at("volumes"),
                    "ignored on the process runtime (x-skein runtime: process): its tasks see the \
                     node's own files; mounts apply on the Docker runtime only",
                );
            }
        }
        if let Some(d) = raw.deploy {
            self.deploy(&at("deploy"), d, &mut spec)?;
        }
        spec.labels
            .insert(STACK_LABEL.to_string(), stack.to_string());
        Ok(spec)
    }

    /// A top-level `volumes:` entry -> the volume's name on the engine.
    fn volume_decl(
        &mut self,
        key: &str,
        decl: Option<RawVolumeDecl>,
        stack: &str,
    ) -> Result<String, StackError> {
        let path = join_path("volumes", key);
        let at = |k: &str| join_path(&path, k);
        let Some(decl) = decl else {
            return self.engine_volume_name(&path, format!("{stack}_{key}"));
        };
        for extra in self.sorted_by_line(&path, decl.extra.keys()) {
            if extra.starts_with("x-") {
                self.warn_skein_typo(&at(&extra), &extra);
                continue;
            }
            return Err(StackError::Invalid {
                at: self.position(&at(&extra)),
                path: path.clone(),
                message: suggest::unknown_key(&extra, VOLUME_DECL_KEYS),
            });
        }
        let external = decl.external.unwrap_or(External {
            yes: false,
            name: None,
        });
        if let Some(driver) = &decl.driver {
            if external.yes {
                return Err(self.err(
                    &at("driver"),
                    "an external volume is created outside the stack: remove `driver` or `external`",
                ));
            }
            if driver != "local" {
                return Err(self.err(
                    &at("driver"),
                    format!(
                        "skein does not support volume driver {driver:?} yet: only the engine's \
                         local driver; remove `driver`"
                    ),
                ));
            }
        }
        match &decl.driver_opts {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) if m.is_empty() => {}
            Some(_) => {
                return Err(self.err(
                    &at("driver_opts"),
                    "skein does not support `driver_opts` yet: its volumes are plain local \
                     volumes; remove it",
                ))
            }
        }
        match &decl.labels {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) if m.is_empty() => {}
            Some(Value::Sequence(l)) if l.is_empty() => {}
            Some(_) => self.warn(&at("labels"), "ignored: skein does not label volumes yet"),
        }
        let engine_name = match (external.name, decl.name) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &at("name"),
                    "the name is given twice (`name` and `external.name`): keep `name`",
                ))
            }
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) if external.yes => key.to_string(),
            (None, None) => format!("{stack}_{key}"),
        };
        self.engine_volume_name(&path, engine_name)
    }

    fn engine_volume_name(&self, path: &str, name: String) -> Result<String, StackError> {
        match validate_name(&name) {
            Ok(()) => Ok(name),
            Err(m) => Err(self.err(path, format!("volume name {m}"))),
        }
    }

    /// The engine name of the named volume `name`, used at `path`: it must be
    /// declared under the top-level `volumes:`.
    fn use_volume(&mut self, path: &str, name: &str) -> Result<String, StackError> {
        if let Some(v) = self.volumes.iter_mut().find(|v| v.key == name) {
            v.used = true;
            return Ok(v.engine_name.clone());
        }
        let declared = self.volumes.iter().map(|v| v.key.as_str());
        let msg = match suggest::closest(name, declared) {
            Some(s) => format!(
                "volume {name:?} is not declared under the top-level `volumes:` (did you mean {s:?}?)"
            ),
            None => format!(
                "volume {name:?} is not declared: add `{name}:` under the top-level `volumes:` \
                 (with `external: true` if the volume exists already), or write a host path such \
                 as ./{name} to bind-mount a directory"
            ),
        };
        Err(self.err(path, msg))
    }

    /// A bind mount's host path, absolute: `~` is `$HOME`, anything relative
    /// starts at the stack file's directory.
    fn host_path(&self, path: &str, src: &str) -> Result<String, StackError> {
        if src.starts_with('/') {
            return Ok(src.to_string());
        }
        let resolved = if let Some(rest) = src.strip_prefix('~') {
            let rest = match rest.strip_prefix('/') {
                Some(r) => r,
                None if rest.is_empty() => "",
                None => {
                    return Err(self.err(
                        path,
                        format!("{src:?}: only ~/ is expanded (to $HOME), not ~user: write the absolute path"),
                    ))
                }
            };
            let Some(home) = &self.home else {
                return Err(self.err(
                    path,
                    format!("{src:?}: $HOME is not set, so ~ cannot be expanded: write the absolute path"),
                ));
            };
            home.join(rest)
        } else {
            let Some(base) = &self.base_dir else {
                return Err(self.err(
                    path,
                    format!("{src:?}: the stack file's directory is unknown, so a relative path cannot be resolved: write the absolute path"),
                ));
            };
            base.join(src)
        };
        let clean = normalize(&resolved);
        match clean.to_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(self.err(
                path,
                format!(
                    "{src:?} resolves to {}, which is not UTF-8: write the path differently",
                    clean.display()
                ),
            )),
        }
    }

    /// `[SOURCE:]TARGET[:MODE]`, as compose reads it: a SOURCE starting with
    /// `/`, `.` or `~` is a host path, anything else a named volume; no
    /// SOURCE is an anonymous volume.
    fn short_mount(&mut self, path: &str, s: &str) -> Result<Mount, StackError> {
        let form = "write [SOURCE:]TARGET[:ro], e.g. ./data:/data:ro or db-data:/var/lib/db";
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, None),
            [src, t] => (Some(*src), *t, None),
            [src, t, m] => (Some(*src), *t, Some(*m)),
            _ => return Err(self.err(path, format!("{s:?} has too many ':': {form}"))),
        };
        if source == Some("") {
            return Err(self.err(path, format!("{s:?} has an empty source: {form}")));
        }
        self.check_target(path, target, &format!("{s:?}: "))?;
        let kind = match source {
            None => MountKind::Volume,
            Some(src) if src.starts_with(['/', '.', '~']) => MountKind::Bind,
            Some(_) => MountKind::Volume,
        };
        let mut read_only = None;
        for opt in mode.into_iter().flat_map(|m| m.split(',')) {
            match opt {
                "ro" | "rw" => {
                    let ro = opt == "ro";
                    if read_only.is_some_and(|was| was != ro) {
                        return Err(self.err(path, format!("{s:?} is both ro and rw: keep one")));
                    }
                    read_only = Some(ro);
                }
                "nocopy" if kind == MountKind::Volume => self.warn(path, NOCOPY_IGNORED),
                "nocopy" => {
                    return Err(self.err(
                        path,
                        format!("{s:?}: nocopy applies to volumes, not to a host path"),
                    ))
                }
                "cached" | "delegated" | "consistent" => self.warn(
                    path,
                    format!("{opt} is ignored: it has no effect on Linux"),
                ),
                "z" | "Z" => {
                    return Err(self.err(
                        path,
                        format!("{s:?}: skein does not support SELinux relabelling ({opt}) yet: remove it"),
                    ))
                }
                "shared" | "slave" | "private" | "rshared" | "rslave" | "rprivate" => {
                    return Err(self.err(
                        path,
                        format!("{s:?}: skein does not support mount propagation ({opt}) yet: remove it"),
                    ))
                }
                other => {
                    let hint = suggest::closest(other, SHORT_MOUNT_MODES.iter().copied())
                        .map(|m| format!(" (did you mean {m:?}?)"))
                        .unwrap_or_default();
                    return Err(self.err(
                        path,
                        format!("{s:?}: unknown mode {other:?}{hint}: use ro or rw"),
                    ));
                }
            }
        }
        let source = match (kind, source) {
            (MountKind::Bind, Some(src)) => Some(self.host_path(path, src)?),
            (_, Some(name)) => Some(self.use_volume(path, name)?),
            (_, None) => None,
        };
        Ok(Mount {
            kind,
            source,
            target: target.to_string(),
            read_only: read_only.unwrap_or(false),
        })
    }

    fn check_target(&self, path: &str, target: &str, what: &str) -> Result<(), StackError> {
        if !target.starts_with('/') {
            return Err(self.err(
                path,
                format!("{what}target {target:?} must be an absolute path inside the task"),
            ));
        }
        if normalize(Path::new(target)) == Path::new("/") {
            return Err(self.err(path, format!("{what}cannot mount over / in the task")));
        }
        Ok(())
    }

    /// `{type: bind|volume|tmpfs, source, target, read_only, bind: {...}, ...}`.
    fn long_mount(&mut self, path: &str, l: LongMount) -> Result<Mount, StackError> {
        let at = |k: &str| join_path(path, k);
        let Some(kind_name) = l.kind else {
            return Err(self.err(path, "missing key \"type\": give bind, volume or tmpfs"));
        };
        let kind = match kind_name.as_str() {
            "bind" => MountKind::Bind,
            "volume" => MountKind::Volume,
            "tmpfs" => MountKind::Tmpfs,
            "npipe" | "image" | "cluster" => {
                return Err(self.err(
                    &at("type"),
                    format!(
                        "skein does not support {kind_name} mounts yet: use bind, volume or tmpfs"
                    ),
                ))
            }
            other => {
                return Err(self.err(
                    &at("type"),
                    suggest::unknown_value(other, &["bind", "volume", "tmpfs"]),
                ))
            }
        };
        let Some(target) = l.target else {
            return Err(self.err(
                path,
                "missing key \"target\": give the absolute path inside the task",
            ));
        };
        self.check_target(&at("target"), &target, "")?;
        for (key, given, wanted) in [
            ("bind", l.bind.is_some(), MountKind::Bind),
            ("volume", l.volume.is_some(), MountKind::Volume),
            ("tmpfs", l.tmpfs.is_some(), MountKind::Tmpfs),
        ] {
            if given && kind != wanted {
                return Err(self.err(
                    &at(key),
                    format!("`{key}` options apply to type: {key} only, this mount is type: {kind_name}: remove them"),
                ));
            }
        }
        if l.image.is_some() {
            return Err(self.err(
                &at("image"),
                format!("`image` options apply to type: image only, this mount is type: {kind_name}: remove them"),
            ));
        }
        if l.consistency.is_some() {
            self.warn(&at("consistency"), "ignored: it has no effect on Linux");
        }
        let source = l.source.filter(|s| !s.is_empty());
        let source = match kind {
            MountKind::Bind => {
                let Some(src) = source else {
                    return Err(self.err(
                        path,
                        "a bind mount needs `source`: the host path (relative paths start at the stack file's directory)",
                    ));
                };
                if let Some(b) = l.bind {
                    for (k, v) in [("propagation", &b.propagation), ("selinux", &b.selinux)] {
                        if v.is_some() {
                            return Err(self.err(
                                &at(&format!("bind.{k}")),
                                format!("skein does not support `{k}` yet: remove it"),
                            ));
                        }
                    }
                    if b.create_host_path == Some(true) {
                        self.warn(
                            &at("bind.create_host_path"),
                            "ignored, as docker stack deploy ignores it: create the host path on \
                             every node that may run the task",
                        );
                    }
                }
                Some(self.host_path(&at("source"), &src)?)
            }
            MountKind::Volume => {
                if let Some(v) = l.volume {
                    if v.subpath.is_some() {
                        return Err(self.err(
                            &at("volume.subpath"),
                            "skein does not support `subpath` yet: remove it",
                        ));
                    }
                    if v.nocopy == Some(true) {
                        self.warn(&at("volume.nocopy"), NOCOPY_IGNORED);
                    }
                }
                match source {
                    Some(name) => Some(self.use_volume(&at("source"), &name)?),
                    None => None,
                }
            }
            MountKind::Tmpfs => {
                if source.is_some() {
                    return Err(self.err(&at("source"), "a tmpfs has no source: remove `source`"));
                }
                if let Some(t) = l.tmpfs {
                    if t.size.is_some() {
                        self.warn(
                            &at("tmpfs.size"),
                            "ignored: skein cannot limit a tmpfs yet; it gets the engine's \
                             default size (up to half the node's memory)",
                        );
                    }
                    if t.mode.is_some() {
                        self.warn(
                            &at("tmpfs.mode"),
                            "ignored: skein cannot set a tmpfs's mode yet; it gets the engine's \
                             default (1777)",
                        );
                    }
                }
                None
            }
        };
        Ok(Mount {
            kind,
            source,
            target,
            read_only: l.read_only.unwrap_or(false),
        })
    }

    /// `x-skien:` is an extension compose ignores, but surely meant x-skein.
    fn warn_skein_typo(&mut self, path: &str, key: &str) {
        if suggest::distance(key, "x-skein") <= 2 {
            self.warn(
                path,
                format!("{key:?} is ignored as an extension key: did you mean \"x-skein\"?"),
            );
        }
    }

    fn words(&self, path: &str, v: StrOrList) -> Result<Vec<String>, StackError> {
        match v {
            StrOrList::List(l) => Ok(l),
            StrOrList::Str(s) => shell_split(&s).map_err(|m| {
                self.err(
                    path,
                    format!("{m}: close it, or write the command as a list"),
                )
            }),
        }
    }

    fn env(&mut self, path: &str, v: ListOrMap) -> Result<BTreeMap<String, String>, StackError> {
        let pairs: Vec<(String, Option<String>)> = match v {
            ListOrMap::Map(m) => m,
            ListOrMap::List(l) => l
                .into_iter()
                .map(|item| match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (item, None),
                })
                .collect(),
        };
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            if k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace) {
                return Err(self.err(
                    path,
                    format!("{k:?} is not a variable name: write NAME=VALUE, with no '=' or spaces in NAME"),
                ));
            }
            match v {
                Some(v) => {
                    out.insert(k, v);
                }
                None => self.warn(
                    &join_path(path, &k),
                    format!(
                        "{k} has no value: skein does not copy values from the deploying shell yet, \
                         so the variable is left unset; write {k}=VALUE"
                    ),
                ),
            }
        }
        Ok(out)
    }

    fn labels(&self, path: &str, v: ListOrMap) -> Result<BTreeMap<String, String>, StackError> {
        let pairs: Vec<(String, String)> = match v {
            ListOrMap::Map(m) => m
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect(),
            ListOrMap::List(l) => l
                .into_iter()
                .map(|item| match item.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (item, String::new()),
                })
                .collect(),
        };
        let mut out = BTreeMap::new();
        for (k, v) in pairs {
            if k.trim().is_empty() {
                return Err(self.err(
                    path,
                    format!("label {k:?}={v:?} has no key: write KEY=VALUE"),
                ));
            }
            out.insert(k, v);
        }
        Ok(out)
    }

    fn port(&mut self, path: &str, raw: RawPort) -> Result<PortConfig, StackError> {
        let short = matches!(raw, RawPort::Short(_));
        let mut port = match raw {
            RawPort::Short(p) => p,
            RawPort::Long(l) => {
                if l.host_ip.is_some() {
                    return Err(self.err(
                        &join_path(path, "host_ip"),
                        "binding a published port to a host IP is not supported yet: remove host_ip \
                         (the port is published on every address of the node)",
                    ));
                }
                for (k, v) in [("name", &l.name), ("app_protocol", &l.app_protocol)] {
                    if v.is_some() {
                        self.warn(
                            &join_path(path, k),
                            "ignored: skein does not use port metadata",
                        );
                    }
                }
                PortConfig {
                    target: l.target,
                    published: l.published.map(|p| p.0),
                    protocol: l.protocol.unwrap_or_default(),
                    mode: l.mode.unwrap_or(PublishMode::Ingress),
                }
            }
        };
        if port.mode == PublishMode::Ingress {
            let proto = proto_name(port.protocol);
            let msg = match port.published {
                Some(p) => format!(
                    "port {p}/{proto} uses ingress mode (the default), which skein does not have yet \
                     (no routing mesh): it is published in host mode, on the node running each task{}",
                    if short {
                        " (write {target: T, published: P, mode: host} to say so)"
                    } else {
                        " (write mode: host to say so)"
                    }
                ),
                None => format!(
                    "target port {}/{proto} has no published port and skein has no routing mesh: \
                     it is not published on any fixed port of the node (give published: and mode: host)",
                    port.target
                ),
            };
            self.warn(path, msg);
            port.mode = PublishMode::Host;
        }
        Ok(port)
    }

    fn healthcheck(&mut self, path: &str, h: RawHealth) -> Result<Option<HealthCheck>, StackError> {
        let disabled = h.disable == Some(true);
        if disabled && h.test.is_some() {
            return Err(self.err(
                &join_path(path, "disable"),
                "`disable: true` and `test` cannot both be set: keep one",
            ));
        }
        if h.start_interval.is_some() {
            self.warn(
                &join_path(path, "start_interval"),
                "ignored: skein checks at `interval` during the start period too",
            );
        }
        let test = if disabled {
            vec!["NONE".to_string()]
        } else {
            match h.test {
                Some(StrOrList::Str(s)) => vec!["CMD-SHELL".to_string(), s],
                Some(StrOrList::List(l)) => l,
                None => {
                    return Err(self.err(
                        path,
                        "missing key \"test\": give the check, e.g. test: [\"CMD\", \"curl\", \"-f\", \"http://localhost\"] \
                         (or disable: true)",
                    ))
                }
            }
        };
        let mut hc = HealthCheck {
            test,
            interval: skein_protocol::defaults::health_interval(),
            timeout: skein_protocol::defaults::health_timeout(),
            retries: skein_protocol::defaults::health_retries(),
            start_period: Dur::ZERO,
        };
        if let Some(d) = h.interval {
            hc.interval = d.0;
        }
        if let Some(d) = h.timeout {
            hc.timeout = d.0;
        }
        if let Some(r) = h.retries {
            hc.retries = r;
        }
        if let Some(d) = h.start_period {
            hc.start_period = d.0;
        }
        Ok(Some(hc))
    }

    fn deploy(
        &mut self,
        path: &str,
        d: RawDeploy,
        spec: &mut ServiceSpec,
    ) -> Result<(), StackError> {
        let at = |k: &str| join_path(path, k);
        let mode = d.mode.unwrap_or_default();
        spec.mode = mode;
        if let Some(n) = d.replicas {
            if n < 0 {
                return Err(self.err(
                    &at("replicas"),
                    format!("{n} is negative: give 0 or more replicas"),
                ));
            }
            if mode == ServiceMode::Global {
                return Err(self.err(
                    &at("replicas"),
                    "a global service runs one task on every node: remove `replicas`, or use mode: replicated",
                ));
            }
        }
        spec.replicas = match mode {
            ServiceMode::Global => None,
            ServiceMode::Replicated => Some(d.replicas.map_or(1, |n| n.unsigned_abs())),
        };
        if let Some(p) = d.placement {
            if let Some(c) = p.constraints {
                spec.placement.constraints = c;
            }
            if let Some(prefs) = p.preferences {
                spec.placement.preferences = prefs
                    .into_iter()
                    .map(|p| PlacementPreference { spread: p.spread })
                    .collect();
            }
            if let Some(m) = p.max_replicas_per_node {
                spec.placement.max_replicas_per_node = m;
            }
        }
        if let Some(u) = d.update_config {
            spec.update_config =
                self.update(&at("update_config"), u, UpdateConfig::update_default())?;
        }
        if let Some(u) = d.rollback_config {
            spec.rollback_config =
                self.update(&at("rollback_config"), u, UpdateConfig::rollback_default())?;
        }
        if let Some(r) = d.restart_policy {
            if let Some(c) = r.condition {
                spec.restart_policy.condition = c;
            }
            if let Some(v) = r.delay {
                spec.restart_policy.delay = v.0;
            }
            if let Some(v) = r.max_attempts {
                spec.restart_policy.max_attempts = v;
            }
            if let Some(v) = r.window {
                spec.restart_policy.window = v.0;
            }
        }
        if let Some(r) = d.resources {
            for (name, amounts, target) in [
                ("limits", r.limits, &mut spec.resources.limits),
                (
                    "reservations",
                    r.reservations,
                    &mut spec.resources.reservations,
                ),
            ] {
                let Some(a) = amounts else { continue };
                let here = format!("{path}.resources.{name}");
                for (k, v) in [
                    ("devices", &a.devices),
                    ("generic_resources", &a.generic_resources),
                ] {
                    if v.is_some() {
                        return Err(self.err(
                            &join_path(&here, k),
                            format!("skein does not support `{k}` yet: remove it"),
                        ));
                    }
                }
                target.cpus = a.cpus.map(|c| c.0);
                target.memory = a.memory.map(|m| m.0);
                target.pids = a.pids;
            }
        }
        if let Some(l) = d.labels {
            spec.labels = self.labels(&at("labels"), l)?;
        }
        if d.endpoint_mode == Some(EndpointMode::Dnsrr) {
            self.warn(
                &at("endpoint_mode"),
                "dnsrr is ignored: skein has no virtual IPs or service discovery across nodes yet",
            );
        }
        Ok(())
    }

    fn update(
        &self,
        path: &str,
        u: RawUpdate,
        mut out: UpdateConfig,
    ) -> Result<UpdateConfig, StackError> {
        if let Some(v) = u.parallelism {
            out.parallelism = v;
        }
        if let Some(v) = u.delay {
            out.delay = v.0;
        }
        if let Some(v) = u.failure_action {
            out.failure_action = v;
        }
        if let Some(v) = u.monitor {
            out.monitor = v.0;
        }
        if let Some(v) = u.max_failure_ratio {
            if !(0.0..=1.0).contains(&v) {
                return Err(self.err(
                    &join_path(path, "max_failure_ratio"),
                    format!(
                        "{v} is not between 0 and 1: it is the fraction of updated tasks that may fail, e.g. 0.2"
                    ),
                ));
            }
            out.max_failure_ratio = v;
        }
        if let Some(v) = u.order {
            out.order = v;
        }
        Ok(out)
    }

    /// One warning at the first `$`: compose interpolates `$VAR` and
    /// unescapes `$$`; skein passes text through as written.
    fn warn_dollars(&mut self, text: &str) {
        for (i, line) in text.lines().enumerate() {
            let content = line.trim_start();
            if content.starts_with('#') {
                continue;
            }
            if let Some(col) = line.find('$') {
                let text = format!(
                    "{}:{}:{}: `$` is passed as written: skein does not interpolate variables \
                     ($VAR, ${{VAR}}) or unescape $$ yet",
                    self.file,
                    i + 1,
                    col + 1
                );
                self.warnings.push((Some(i + 1), Some(col + 1), text));
                return;
            }
        }
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The names declared in a top-level `networks:`/`volumes:`/... mapping.
fn declared_names(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Mapping(m) if !m.is_empty() => Some(
            m.keys()
                .map(|k| match k {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .map(|s| s.trim().to_string())
                        .unwrap_or_default(),
                })
                .collect(),
        ),
        Value::Mapping(_) | Value::Null => None,
        _ => Some(vec!["(not a mapping)".to_string()]),
    }
}

/// Maps a [`skein_protocol::SpecError`] field back to the compose key path.
fn spec_field_path(base: &str, field: &str) -> String {
    let head = field.split(['.', '[']).next().unwrap_or_default();
    match head {
        "name" => base.to_string(),
        "replicas" | "update_config" | "rollback_config" | "placement" | "resources"
        | "restart_policy" => format!("{base}.deploy.{field}"),
        "failover" | "runtime" | "on_disconnect" => format!("{base}.x-skein.{field}"),
        "env" => format!("{base}.environment"),
        "mounts" => format!("{base}.volumes{}", &field["mounts".len()..]),
        "container_labels" => format!("{base}.labels"),
        _ => format!("{base}.{field}"),
    }
}

/// What a short or long `nocopy` gets.
const NOCOPY_IGNORED: &str = "nocopy is ignored: skein cannot carry it yet; a new volume gets a \
    copy of what the image has at the target (the engine's default)";

/// `a/./b/../c` -> `a/c`, without looking at the file system; `..` stops at `/`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !path.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn has_merge_key(v: &Value) -> bool {
    match v {
        Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(s) => s.iter().any(has_merge_key),
        Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{parent}{key}")
    } else {
        format!("{parent}.{key}")
    }
}

/// Drops serde_norway's " at line L column C" (the position is reported apart).
fn strip_mark(msg: &str, line: Option<usize>, column: Option<usize>) -> String {
    if let (Some(l), Some(c)) = (line, column) {
        let mark = format!(" at line {l} column {c}");
        if let Some(i) = msg.find(&mark) {
            let mut out = msg.to_string();
            out.replace_range(i..i + mark.len(), "");
            return out;
        }
    }
    msg.to_string()
}

/// serde_norway writes "PATH: message" for errors below the root.
fn split_path(msg: &str) -> (&str, &str) {
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`') {
            return (head, rest);
        }
    }
    ("", msg)
}

// ---------------------------------------------------------------------------
// KeyIndex: where each key path sits in the text, for errors serde cannot
// locate (found after parsing). An indentation-aware scan of block YAML;
// flow collections (`{a: 1}`) are located at the key that holds them.

struct KeyIndex {
    /// (path, line, column), 1-based, in file order.
    entries: Vec<(String, usize, usize)>,
}

/// Deepest `[`/`{` nesting read. The YAML parser (libyaml) takes time
/// quadratic in the flow depth (100,000 levels: half a minute), and its
/// deserializer refuses more than 128 levels anyway: refuse them first.
const MAX_FLOW_DEPTH: usize = 128;

/// The line on which `text`'s flow nesting (`[`, `{` outside quoted
/// scalars and comments) passes `limit`. Errs towards counting: brackets in
/// block scalars count too, which only matters past `limit` unclosed ones.
fn flow_too_deep(text: &str, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut quote: Option<char> = None;
    let mut prev = '\n';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        match quote {
            Some('"') => match c {
                // An escape: skip the escaped character (a line break too).
                '\\' => line += usize::from(chars.next() == Some('\n')),
                '"' => quote = None,
                _ => {}
            },
            Some(_) => {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
            }
            None => match c {
                '#' if prev.is_whitespace() => {
                    while chars.peek().is_some_and(|n| *n != '\n') {
                        chars.next();
                    }
                }
                // A quoted scalar starts a token (`it's` is plain text).
                '"' | '\'' if prev.is_whitespace() || "[{,:-".contains(prev) => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > limit {
                        return Some(line);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    None
}

/// Deepest key path the index records: positions are for messages about
/// real stack files (a few levels); a hostile `- - - - ...` line of 10,000
/// items made the index quadratic in memory and time.
const MAX_INDEX_DEPTH: usize = 64;

struct Frame {
    indent: usize,
    seg: String,
    item: bool,
    next_item: usize,
}

/// A value that continues on the next lines: skip them.
enum Open {
    /// A block scalar (`|`, `>`): lines indented more than this column.
    Block(usize),
    /// A flow collection: this many brackets are still open.
    Flow(usize),
    /// A quoted scalar: waiting for this quote.
    Quote(char),
}

impl KeyIndex {
    fn build(text: &str) -> KeyIndex {
        let mut entries = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_items = 0usize;
        let mut open: Option<Open> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            let content = line.trim_start_matches(' ');
            let indent = line.len() - content.len();
            match &mut open {
                Some(Open::Block(limit)) => {
                    if content.is_empty() || indent > *limit {
                        continue;
                    }
                    open = None;
                }
                Some(Open::Flow(depth)) => {
                    if let Some(d) = flow_depth(line, *depth) {
                        *depth = d;
                        if d == 0 {
                            open = None;
                        }
                    }
                    continue;
                }
                Some(Open::Quote(q)) => {
                    if quote_closes(line, *q).is_some() {
                        open = None;
                    }
                    continue;
                }
                None => {}
            }
            if content.is_empty()
                || content.starts_with('#')
                || content.starts_with('%')
                || (indent == 0 && (content.starts_with("---") || content.starts_with("...")))
            {
                continue;
            }
            let mut content = content;
            let mut col = indent;
            loop {
                if stack.len() >= MAX_INDEX_DEPTH {
                    break;
                }
                if content == "-" || content.starts_with("- ") {
                    while stack
                        .last()
                        .is_some_and(|f| f.indent > col || (f.indent == col && f.item))
                    {
                        stack.pop();
                    }
                    let idx = match stack.last_mut() {
                        Some(f) => {
                            f.next_item += 1;
                            f.next_item - 1
                        }
                        None => {
                            root_items += 1;
                            root_items - 1
                        }
                    };
                    let seg = format!("[{idx}]");
                    entries.push((join_frames(&stack, &seg), i + 1, col + 1));
                    stack.push(Frame {
                        indent: col,
                        seg,
                        item: true,
                        next_item: 0,
                    });
                    let rest = &content[1..];
                    let trimmed = rest.trim_start_matches(' ');
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        break;
                    }
                    col += 1 + (rest.len() - trimmed.len());
                    content = trimmed;
                    continue;
                }
                if let Some((key, value)) = split_key(content) {
                    while stack.last().is_some_and(|f| f.indent >= col) {
                        stack.pop();
                    }
                    entries.push((join_frames(&stack, &key), i + 1, col + 1));
                    stack.push(Frame {
                        indent: col,
                        seg: key,
                        item: false,
                        next_item: 0,
                    });
                    open = open_value(value, col);
                } else {
                    // A scalar sequence item, perhaps spanning lines.
                    open = open_value(content, col);
                }
                break;
            }
        }
        KeyIndex { entries }
    }

    /// The exact key path.
    fn find(&self, path: &str) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, l, c)| (*l, *c))
    }

    /// The key path, or its nearest ancestor present in the text.
    fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if p.is_empty() {
                return None;
            }
            if let Some(found) = self.find(p) {
                return Some(found);
            }
            p = if p.ends_with(']') {
                p.rfind('[').map_or("", |i| &p[..i])
            } else {
                p.rfind('.').map_or("", |i| &p[..i])
            };
        }
    }
}

fn join_frames(stack: &[Frame], last: &str) -> String {
    let mut path = String::new();
    for seg in stack.iter().map(|f| f.seg.as_str()).chain([last]) {
        path = join_path(&path, seg);
    }
    path
}

/// `key: value` -> (key, value). Quoted keys are unquoted; a plain key ends
/// at the first ": " (or a ':' ending the line).
fn split_key(content: &str) -> Option<(String, &str)> {
    let first = content.chars().next()?;
    if first == '"' || first == '\'' {
        let end = quote_closes(&content[1..], first)? + 1;
        let key = content[1..end].replace("\\\"", "\"").replace("''", "'");
        let rest = content[end + 1..].trim_start();
        let value = rest.strip_prefix(':')?;
        if !(value.is_empty() || value.starts_with([' ', '\t'])) {
            return None;
        }
        return Some((key, value.trim()));
    }
    if "[{#&*!|>%@`?,".contains(first) {
        return None;
    }
    let bytes = content.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && i > 0 && bytes[i - 1] == b' ' {
            return None;
        }
        if *b == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t') {
            let key = content[..i].trim_end();
            if key.is_empty() {
                return None;
            }
            return Some((key.to_string(), content[i + 1..].trim()));
        }
    }
    None
}

/// The byte offset of the quote that closes a scalar opened by `q`, in `s`
/// (which starts after the opening quote).
fn quote_closes(s: &str, q: char) -> Option<usize> {
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if q == '"' && c == '\\' {
            chars.next();
            continue;
        }
        if c == q {
            if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                continue;
            }
            return Some(i);
        }
    }
    None
}

/// Brackets still open after `line`, starting from `depth`; None if the line
/// only holds quoted text.
fn flow_depth(line: &str, mut depth: usize) -> Option<usize> {
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, '#') => break,
            _ => {}
        }
    }
    Some(depth)
}

/// Whether a value starting on this line continues on the next ones.
fn open_value(value: &str, owner_col: usize) -> Option<Open> {
    let v = value.trim();
    let first = v.chars().next()?;
    match first {
        '|' | '>' => Some(Open::Block(owner_col)),
        '[' | '{' => match flow_depth(v, 0) {
            Some(d) if d > 0 => Some(Open::Flow(d)),
            _ => None,
        },
        '"' | '\'' => match quote_closes(&v[1..], first) {
            Some(_) => None,
            None => Some(Open::Quote(first)),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
