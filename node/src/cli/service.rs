//! `skein service ...`: create, ls, ps, inspect, scale, rm, logs (update and
//! rollback live in `update.rs`).

use super::client::{seg, Client};
use super::output::{self, Format};
use super::wait;
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use skein_protocol::api::{ScaleRequest, ServiceRow, TaskRow};
use skein_protocol::{
    validate_name, Dur, FailureAction, HealthCheck, Mount, MountKind, PlacementPreference,
    PortConfig, Protocol, PublishMode, RestartCondition, RuntimeKind, Service, ServiceMode,
    ServiceSpec, UpdateConfig, UpdateOrder,
};
use std::time::Duration;

#[derive(Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the tasks of a service.
    Ps {
        service: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show services in detail (JSON).
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service: only what the flags name changes; a new task
    /// template rolls out by the update settings. Resumes a paused update.
    Update(Box<super::update::UpdateArgs>),
    /// Put back the service's previous spec, driven by its rollback settings.
    Rollback {
        service: String,
        /// Return at once instead of following the rollback.
        #[arg(short, long)]
        detach: bool,
    },
    /// Set the replica count of replicated services: SERVICE=N...
    Scale {
        #[arg(required = true)]
        scales: Vec<String>,
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services (their tasks are stopped).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
        /// Return at once instead of waiting for the tasks to stop.
        #[arg(short, long)]
        detach: bool,
    },
    /// Print the output of a service's tasks.
    Logs {
        service: String,
        /// Only the last N lines of each task.
        #[arg(long)]
        tail: Option<usize>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Service name (default: derived from the image).
    #[arg(long)]
    name: Option<String>,
    /// Number of tasks (replicated mode).
    #[arg(long)]
    replicas: Option<u64>,
    /// replicated or global.
    #[arg(long, default_value = "replicated")]
    mode: String,
    /// Publish a port: PUBLISHED:TARGET[/PROTO][,mode=host] or
    /// published=P,target=T[,protocol=udp][,mode=host].
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Attach a mount (Docker runtime): type=bind|volume|tmpfs,source=SRC,target=/PATH[,readonly].
    /// type defaults to volume; src, destination, dst and ro are accepted too.
    #[arg(long = "mount", value_name = "type=...,source=...,target=...")]
    mounts: Vec<String>,
    /// Environment variable KEY=VALUE.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Service label KEY=VALUE.
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    /// Task (container) label KEY=VALUE.
    #[arg(long = "container-label")]
    container_labels: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==east.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Placement preference, e.g. spread=node.labels.zone.
    #[arg(long = "placement-pref")]
    placement_prefs: Vec<String>,
    /// Most tasks of this service on one node (0: no limit).
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    /// Health check command (run by a shell).
    #[arg(long)]
    health_cmd: Option<String>,
    #[arg(long)]
    health_interval: Option<Dur>,
    #[arg(long)]
    health_timeout: Option<Dur>,
    #[arg(long)]
    health_retries: Option<u32>,
    #[arg(long)]
    health_start_period: Option<Dur>,
    /// Disable any health check.
    #[arg(long)]
    no_healthcheck: bool,
    /// none, on-failure or any.
    #[arg(long)]
    restart_condition: Option<String>,
    #[arg(long)]
    restart_delay: Option<Dur>,
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    #[arg(long)]
    restart_window: Option<Dur>,
    #[command(flatten)]
    rollout: RolloutArgs,
    /// Time a task gets to stop before it is killed.
    #[arg(long)]
    stop_grace_period: Option<Dur>,
    /// What a worker no manager answers does with the tasks: keep (run
    /// on, the default) or stop-after=DURATION (a singleton that must not
    /// run twice).
    #[arg(long)]
    on_disconnect: Option<skein_protocol::OnDisconnect>,
    /// Signal that stops a task (default SIGTERM).
    #[arg(long)]
    stop_signal: Option<String>,
    /// docker or process (default: each node's default runtime).
    #[arg(long)]
    runtime: Option<RuntimeKind>,
    /// Working directory of the task.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Return at once instead of waiting for the service to converge.
    #[arg(short, long)]
    detach: bool,
    /// How long to wait for the service to converge.
    #[arg(long, default_value = "2m")]
    timeout: Dur,
    /// IMAGE [COMMAND [ARG...]] (process runtime: the program and its arguments).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND [ARG...]]"
    )]
    image_and_args: Vec<String>,
}

fn kv(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{flag} {s:?}: write KEY=VALUE"),
    }
}

pub(super) fn parse_enum<T: serde::de::DeserializeOwned>(
    v: &str,
    flag: &str,
    allowed: &str,
) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| anyhow!("{flag} {v:?}: use one of {allowed}"))
}

/// `8080:80`, `8080:80/udp`, `80`, with `,mode=host`; or the long
/// `published=8080,target=80,protocol=udp,mode=host`.
pub fn parse_publish(s: &str) -> anyhow::Result<PortConfig> {
    let bad =
        |why: &str| anyhow!("--publish {s:?}: {why} (write PUBLISHED:TARGET[/udp][,mode=host])");
    let port = |v: &str| v.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let mut pc = PortConfig {
        target: 0,
        published: None,
        protocol: Protocol::Tcp,
        mode: PublishMode::Ingress,
    };
    let mut opts: Vec<&str> = parts.collect();
    if first.contains('=') {
        opts.insert(0, first);
    } else {
        let (ports, proto) = match first.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (first, None),
        };
        if let Some(proto) = proto {
            pc.protocol = parse_enum(proto, "--publish protocol", "tcp, udp")?;
        }
        match ports.split_once(':') {
            Some((p, t)) => {
                pc.published = Some(port(p).ok_or_else(|| bad("bad published port"))?);
                pc.target = port(t).ok_or_else(|| bad("bad target port"))?;
            }
            None => pc.target = port(ports).ok_or_else(|| bad("bad port"))?,
        }
    }
    for o in opts {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| bad("options are KEY=VALUE"))?;
        match k.trim() {
            "mode" => pc.mode = parse_enum(v, "--publish mode", "host, ingress")?,
            "protocol" => pc.protocol = parse_enum(v, "--publish protocol", "tcp, udp")?,
            "published" => pc.published = Some(port(v).ok_or_else(|| bad("bad published port"))?),
            "target" => pc.target = port(v).ok_or_else(|| bad("bad target port"))?,
            other => return Err(bad(&format!("unknown option {other:?}"))),
        }
    }
    if pc.target == 0 {
        return Err(bad("no target port"));
    }
    Ok(pc)
}

/// Docker's `--mount`: comma-separated `key=value` options, keys `type`
/// (bind, volume or tmpfs; default volume), `source`|`src`,
/// `target`|`destination`|`dst`, and `readonly`|`ro` (alone, or `=true|false`).
pub fn parse_mount(s: &str) -> anyhow::Result<Mount> {
    let bad = |why: &str| {
        anyhow!("--mount {s:?}: {why} (write type=bind|volume|tmpfs,source=SRC,target=/PATH[,readonly])")
    };
    let mut kind = MountKind::Volume;
    let mut source: Option<String> = None;
    let mut target: Option<String> = None;
    let mut read_only = false;
    for field in s.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        let value_of = |key: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad(&format!("{key} needs a value: write {key}=...")))
        };
        match key.to_ascii_lowercase().as_str() {
            "" => return Err(bad("an option is empty")),
            "type" => {
                kind = match value_of("type")? {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    t @ ("npipe" | "image" | "cluster") => {
                        return Err(bad(&format!(
                            "type {t} is not supported yet: use bind, volume or tmpfs"
                        )))
                    }
                    t => {
                        return Err(bad(&format!(
                            "unknown type {t:?}: use bind, volume or tmpfs"
                        )))
                    }
                }
            }
            "source" | "src" => source = Some(value_of(key)?.to_string()),
            "target" | "destination" | "dst" => target = Some(value_of(key)?.to_string()),
            "readonly" | "ro" => {
                read_only = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(v) => {
                        return Err(bad(&format!(
                            "{key}={v}: use {key}, {key}=true or {key}=false"
                        )))
                    }
                }
            }
            other
                if other.starts_with("bind-")
                    || other.starts_with("volume-")
                    || other.starts_with("tmpfs-")
                    || other == "consistency" =>
            {
                return Err(bad(&format!(
                    "option {other:?} is not supported yet: remove it"
                )))
            }
            other => {
                return Err(bad(&format!(
                    "unknown option {other:?}: use type, source, target and readonly"
                )))
            }
        }
    }
    let target = target.ok_or_else(|| bad("no target: give target=/PATH inside the task"))?;
    if !target.starts_with('/') {
        return Err(bad(&format!(
            "target {target:?} must be an absolute path inside the task"
        )));
    }
    if target.trim_end_matches('/').is_empty() {
        return Err(bad("cannot mount over / in the task"));
    }
    match (kind, source.as_deref()) {
        (MountKind::Bind, None) => return Err(bad("a bind mount needs source=/HOST/PATH")),
        (MountKind::Bind, Some(src)) if !src.starts_with('/') => {
            return Err(bad(&format!(
                "bind source {src:?} must be an absolute host path"
            )))
        }
        (MountKind::Volume, Some(name)) => {
            validate_name(name).map_err(|m| bad(&format!("source: volume name {m}")))?
        }
        (MountKind::Tmpfs, Some(_)) => return Err(bad("a tmpfs has no source: remove it")),
        _ => {}
    }
    Ok(Mount {
        kind,
        source,
        target,
        read_only,
    })
}

/// The `--update-*` and `--rollback-*` flags of `service create` and
/// `service update`.
#[derive(Args)]
pub struct RolloutArgs {
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    #[arg(long)]
    pub update_delay: Option<Dur>,
    #[arg(long)]
    pub update_monitor: Option<Dur>,
    /// pause, continue or rollback.
    #[arg(long)]
    pub update_failure_action: Option<String>,
    #[arg(long)]
    pub update_max_failure_ratio: Option<f64>,
    /// stop-first or start-first.
    #[arg(long)]
    pub update_order: Option<String>,
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    #[arg(long)]
    pub rollback_delay: Option<Dur>,
    #[arg(long)]
    pub rollback_monitor: Option<Dur>,
    /// pause or continue.
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f64>,
    #[arg(long)]
    pub rollback_order: Option<String>,
}

impl RolloutArgs {
    /// Applies the flags given to the spec's update and rollback settings.
    pub(super) fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        apply_update_flags(
            &mut spec.update_config,
            UpdateFlags {
                prefix: "update",
                parallelism: self.update_parallelism,
                delay: self.update_delay,
                monitor: self.update_monitor,
                action: &self.update_failure_action,
                ratio: self.update_max_failure_ratio,
                order: &self.update_order,
            },
        )?;
        apply_update_flags(
            &mut spec.rollback_config,
            UpdateFlags {
                prefix: "rollback",
                parallelism: self.rollback_parallelism,
                delay: self.rollback_delay,
                monitor: self.rollback_monitor,
                action: &self.rollback_failure_action,
                ratio: self.rollback_max_failure_ratio,
                order: &self.rollback_order,
            },
        )?;
        if spec.rollback_config.failure_action == FailureAction::Rollback {
            bail!("--rollback-failure-action rollback: a rollback is never rolled back; use pause or continue");
        }
        Ok(())
    }
}

/// The `--update-*` or `--rollback-*` flags, as given.
pub(super) struct UpdateFlags<'a> {
    pub prefix: &'static str,
    pub parallelism: Option<u64>,
    pub delay: Option<Dur>,
    pub monitor: Option<Dur>,
    pub action: &'a Option<String>,
    pub ratio: Option<f64>,
    pub order: &'a Option<String>,
}

pub(super) fn apply_update_flags(uc: &mut UpdateConfig, f: UpdateFlags<'_>) -> anyhow::Result<()> {
    let UpdateFlags {
        prefix,
        parallelism,
        delay,
        monitor,
        action,
        ratio,
        order,
    } = f;
    if let Some(p) = parallelism {
        uc.parallelism = p;
    }
    if let Some(d) = delay {
        uc.delay = d;
    }
    if let Some(m) = monitor {
        uc.monitor = m;
    }
    if let Some(a) = action {
        uc.failure_action = parse_enum::<FailureAction>(
            a,
            &format!("--{prefix}-failure-action"),
            "pause, continue, rollback",
        )?;
    }
    if let Some(r) = ratio {
        uc.max_failure_ratio = r;
    }
    if let Some(o) = order {
        uc.order =
            parse_enum::<UpdateOrder>(o, &format!("--{prefix}-order"), "stop-first, start-first")?;
    }
    Ok(())
}

fn default_name(image: &str) -> String {
    let base = image
        .rsplit('/')
        .next()
        .unwrap_or(image)
        .split([':', '@'])
        .next()
        .unwrap_or("svc");
    let clean: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "svc" } else { clean };
    format!("{}-{}", clean, crate::util::random_hex(2))
}

pub fn build_spec(a: &CreateArgs) -> anyhow::Result<ServiceSpec> {
    let (image, command) = a
        .image_and_args
        .split_first()
        .ok_or_else(|| anyhow!("give an IMAGE (or a program, for the process runtime)"))?;
    let name = a.name.clone().unwrap_or_else(|| default_name(image));
    let mut spec = ServiceSpec::new(name, image.clone());
    spec.command = command.to_vec();
    spec.runtime = a.runtime;
    spec.mode = parse_enum::<ServiceMode>(&a.mode, "--mode", "replicated, global")?;
    match spec.mode {
        ServiceMode::Replicated => spec.replicas = Some(a.replicas.unwrap_or(1)),
        ServiceMode::Global => {
            if a.replicas.is_some() {
                bail!("--replicas cannot be used with --mode global (a global service runs one task per node)");
            }
            spec.replicas = None;
        }
    }
    if let Some(ep) = &a.entrypoint {
        spec.entrypoint = ep.split_whitespace().map(String::from).collect();
    }
    spec.working_dir = a.workdir.clone();
    for p in &a.publish {
        let mut port = parse_publish(p)?;
        if port.mode == PublishMode::Ingress && port.published.is_some() {
            // No routing mesh yet: say so instead of pretending.
            eprintln!(
                "warning: --publish {p}: skein has no ingress routing mesh yet; the port is \
                 published in host mode on each node that runs a task (add ,mode=host to silence this)"
            );
            port.mode = PublishMode::Host;
        }
        spec.ports.push(port);
    }
    for m in &a.mounts {
        let mount = parse_mount(m)?;
        let same = |t: &str| t.trim_end_matches('/') == mount.target.trim_end_matches('/');
        if spec.mounts.iter().any(|o| same(&o.target)) {
            bail!(
                "--mount {m:?}: {} is already the target of another --mount: mount one thing per target",
                mount.target
            );
        }
        spec.mounts.push(mount);
    }
    for e in &a.env {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            // `--env NAME` passes the variable from the CLI's environment, as docker does.
            None => (e.clone(), std::env::var(e).unwrap_or_default()),
        };
        spec.env.insert(k, v);
    }
    for l in &a.labels {
        let (k, v) = kv(l, "--label")?;
        spec.labels.insert(k, v);
    }
    for l in &a.container_labels {
        let (k, v) = kv(l, "--container-label")?;
        spec.container_labels.insert(k, v);
    }
    spec.placement.constraints = a.constraints.clone();
    for p in &a.placement_prefs {
        let (k, v) = kv(p, "--placement-pref")?;
        if k != "spread" {
            bail!("--placement-pref {p:?}: only spread=node.labels.KEY is supported");
        }
        spec.placement
            .preferences
            .push(PlacementPreference { spread: v });
    }
    if let Some(m) = a.replicas_max_per_node {
        spec.placement.max_replicas_per_node = m;
    }
    if a.no_healthcheck {
        spec.healthcheck = Some(HealthCheck {
            test: vec!["NONE".into()],
            interval: skein_protocol::defaults::health_interval(),
            timeout: skein_protocol::defaults::health_timeout(),
            retries: skein_protocol::defaults::health_retries(),
            start_period: Dur::ZERO,
        });
    } else if let Some(cmd) = &a.health_cmd {
        spec.healthcheck = Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), cmd.clone()],
            interval: a
                .health_interval
                .unwrap_or_else(skein_protocol::defaults::health_interval),
            timeout: a
                .health_timeout
                .unwrap_or_else(skein_protocol::defaults::health_timeout),
            retries: a
                .health_retries
                .unwrap_or_else(skein_protocol::defaults::health_retries),
            start_period: a.health_start_period.unwrap_or(Dur::ZERO),
        });
    } else if a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some()
    {
        bail!("--health-interval/--health-timeout/--health-retries/--health-start-period need --health-cmd");
    }
    if let Some(c) = &a.restart_condition {
        spec.restart_policy.condition =
            parse_enum::<RestartCondition>(c, "--restart-condition", "none, on-failure, any")?;
    }
    if let Some(d) = a.restart_delay {
        spec.restart_policy.delay = d;
    }
    if let Some(m) = a.restart_max_attempts {
        spec.restart_policy.max_attempts = m;
    }
    if let Some(w) = a.restart_window {
        spec.restart_policy.window = w;
    }
    a.rollout.apply(&mut spec)?;
    if let Some(g) = a.stop_grace_period {
        spec.stop_grace_period = g;
    }
    if let Some(o) = a.on_disconnect {
        spec.on_disconnect = o;
    }
    spec.stop_signal = a.stop_signal.clone();
    spec.validate()
        .map_err(|e| anyhow!("invalid service: {e}"))?;
    Ok(spec)
}

pub async fn run(c: Client, cmd: ServiceCmd) -> anyhow::Result<i32> {
    match cmd {
        ServiceCmd::Create(a) => {
            let spec = build_spec(&a)?;
            let svc: Service = c.post("/v1/services", &spec).await?;
            println!("{}", svc.id);
            if a.detach {
                return Ok(0);
            }
            let ok = wait::converge(
                &c,
                std::slice::from_ref(&svc.spec.name),
                a.timeout.as_duration(),
            )
            .await?;
            Ok(if ok { 0 } else { 1 })
        }
        ServiceCmd::Update(a) => super::update::update(&c, &a).await,
        ServiceCmd::Rollback { service, detach } => {
            super::update::rollback(&c, &service, detach).await
        }
        ServiceCmd::Ls { format } => {
            let rows: Vec<ServiceRow> = c.get("/v1/services").await?;
            output::print_services(&rows, format)?;
            Ok(0)
        }
        ServiceCmd::Ps { service, format } => {
            let rows: Vec<TaskRow> = c
                .get(&format!("/v1/services/{}/tasks", seg(&service)))
                .await?;
            output::print_tasks(&rows, format)?;
            Ok(0)
        }
        ServiceCmd::Inspect { services } => {
            let mut out = Vec::new();
            for s in &services {
                let v: serde_json::Value = c.get(&format!("/v1/services/{}", seg(s))).await?;
                out.push(v);
            }
            output::print_inspect(out)?;
            Ok(0)
        }
        ServiceCmd::Scale { scales, detach } => {
            // Check every argument first; then scale each, reporting each failure (as docker does).
            let mut wanted = Vec::new();
            for s in &scales {
                let (name, n) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{s:?}: write SERVICE=REPLICAS, e.g. web=5"))?;
                let n: u64 = n
                    .parse()
                    .with_context(|| format!("{s:?}: replicas must be a whole number >= 0"))?;
                wanted.push((name, n));
            }
            let mut names = Vec::new();
            let mut failed = false;
            for (name, n) in wanted {
                let path = format!("/v1/services/{}/scale", seg(name));
                match c
                    .post::<_, Service>(&path, &ScaleRequest { replicas: n })
                    .await
                {
                    Ok(svc) => {
                        println!("{} scaled to {n}", svc.spec.name);
                        names.push(svc.spec.name);
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            let converged = detach || names.is_empty() || {
                wait::converge(&c, &names, Duration::from_secs(120)).await?
            };
            Ok(if converged && !failed { 0 } else { 1 })
        }
        ServiceCmd::Rm { services, detach } => {
            let mut failed = false;
            let mut task_ids = Vec::new();
            for s in &services {
                let tasks: Vec<TaskRow> =
                    match c.get(&format!("/v1/services/{}/tasks", seg(s))).await {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("error: {e}");
                            failed = true;
                            continue;
                        }
                    };
                match c.delete(&format!("/v1/services/{}", seg(s))).await {
                    Ok(()) => {
                        println!("{s}");
                        task_ids.extend(tasks.into_iter().map(|t| t.id));
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if !detach {
                wait::tasks_gone(&c, &task_ids, Duration::from_secs(60)).await?;
            }
            Ok(if failed { 1 } else { 0 })
        }
        ServiceCmd::Logs { service, tail } => {
            let q = tail.map(|n| format!("?tail={n}")).unwrap_or_default();
            let text = c
                .get_text(&format!("/v1/services/{}/logs{q}", seg(&service)))
                .await?;
            print!("{text}");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_forms() {
        let p = parse_publish("8080:80").expect("short");
        assert_eq!(
            (p.published, p.target, p.mode),
            (Some(8080), 80, PublishMode::Ingress)
        );
        let p = parse_publish("53:53/udp,mode=host").expect("udp host");
        assert_eq!((p.protocol, p.mode), (Protocol::Udp, PublishMode::Host));
        let p = parse_publish("published=9000,target=90,mode=host").expect("long");
        assert_eq!((p.published, p.target), (Some(9000), 90));
        assert!(parse_publish("x:80").is_err());
        assert!(parse_publish("8080:80,colour=red").is_err());
        assert!(parse_publish("0:80").is_err());
    }

    #[test]
    fn mount_forms() {
        let m = parse_mount("type=bind,source=/x,target=/y,readonly").expect("bind");
        assert_eq!(
            m,
            Mount {
                kind: MountKind::Bind,
                source: Some("/x".into()),
                target: "/y".into(),
                read_only: true,
            }
        );
        let m = parse_mount("src=data,dst=/var/lib/data").expect("volume by default");
        assert_eq!(
            (m.kind, m.source.as_deref(), m.target.as_str(), m.read_only),
            (MountKind::Volume, Some("data"), "/var/lib/data", false)
        );
        let m = parse_mount("type=volume,destination=/anon,ro=false").expect("anonymous");
        assert_eq!((m.source, m.read_only), (None, false));
        let m = parse_mount("type=tmpfs,target=/run,readonly=true").expect("tmpfs");
        assert_eq!((m.kind, m.read_only), (MountKind::Tmpfs, true));
        let m = parse_mount("type=bind,source=/a,target=/b,ro=1").expect("ro=1");
        assert!(m.read_only);
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: CreateArgs,
        }
        let argv = ["create"].iter().chain(args).copied();
        <Cmd as clap::Parser>::try_parse_from(argv)
            .expect("flags parse")
            .args
    }

    #[test]
    fn mount_flags_go_into_the_spec() {
        let a = create_args(&[
            "--name",
            "web",
            "--mount",
            "type=bind,source=/srv/site,target=/site,ro",
            "--mount",
            "source=data,target=/data",
            "nginx",
        ]);
        let spec = build_spec(&a).expect("spec");
        assert_eq!(spec.mounts.len(), 2);
        assert_eq!(spec.mounts[0].source.as_deref(), Some("/srv/site"));
        assert!(spec.mounts[0].read_only);
        assert_eq!(spec.mounts[1].kind, MountKind::Volume);
        let a = create_args(&[
            "--mount",
            "type=tmpfs,target=/data",
            "--mount",
            "source=data,target=/data/",
            "nginx",
        ]);
        let e = build_spec(&a).expect_err("same target twice").to_string();
        assert!(
            e.starts_with("--mount \"source=data,target=/data/\": /data/ is already the target"),
            "{e}"
        );
    }

    #[test]
    fn mount_errors_name_the_flag_and_the_bad_part() {
        let err = |s: &str| match parse_mount(s) {
            Ok(m) => panic!("{s}: expected an error, got {m:?}"),
            Err(e) => e.to_string(),
        };
        for (s, want) in [
            ("type=bind,source=/x", "no target"),
            ("type=bind,target=/y", "a bind mount needs source"),
            (
                "type=bind,source=x,target=/y",
                "bind source \"x\" must be an absolute",
            ),
            ("type=nfs,target=/y", "unknown type \"nfs\""),
            ("type=npipe,target=/y", "type npipe is not supported yet"),
            ("source=/x,target=y", "target \"y\" must be an absolute"),
            ("target=/", "cannot mount over /"),
            ("target=/y,colour=red", "unknown option \"colour\""),
            (
                "target=/y,volume-nocopy",
                "option \"volume-nocopy\" is not supported yet",
            ),
            ("target=/y,readonly=maybe", "readonly=maybe"),
            ("type=tmpfs,source=x,target=/y", "a tmpfs has no source"),
            ("source=-bad,target=/y", "volume name"),
            ("target=", "target needs a value"),
            ("target=/y,", "an option is empty"),
        ] {
            let e = err(s);
            assert!(e.starts_with(&format!("--mount {s:?}: ")), "{s}: {e}");
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
