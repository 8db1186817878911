//! `skein service update` and `skein service rollback`: build the new spec
//! from the current one and the flags (only what a flag names changes),
//! send it with the version it was made from, then follow the rollout
//! unless `--detach`. Exit code 1 when the rollout paused or rolled back.

use super::client::{seg, Client};
use super::progress::{self, Op};
use super::service::{parse_enum, parse_publish, RolloutArgs};
use anyhow::{anyhow, bail};
use clap::Args;
use skein_protocol::api::{ServiceDetail, ServiceUpdateRequest};
use skein_protocol::{
    defaults, Dur, HealthCheck, PublishMode, RestartCondition, Service, ServiceMode, ServiceSpec,
};

#[derive(Args)]
pub struct UpdateArgs {
    /// New image (process runtime: the program).
    #[arg(long)]
    image: Option<String>,
    /// New arguments, replacing the old ones: --args "A B".
    #[arg(long, allow_hyphen_values = true)]
    args: Option<String>,
    /// Add or change an environment variable KEY=VALUE.
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    /// Remove an environment variable by name.
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    /// Number of tasks (replicated services).
    #[arg(long)]
    replicas: Option<u64>,
    /// Publish a port: PUBLISHED:TARGET[/PROTO][,mode=host].
    #[arg(long = "publish-add")]
    publish_add: Vec<String>,
    /// Stop publishing a port: its published port (or PUBLISHED:TARGET).
    #[arg(long = "publish-rm")]
    publish_rm: Vec<String>,
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
    #[command(flatten)]
    rollout: RolloutArgs,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    force: bool,
    /// keep or stop-after=DURATION: what a worker no manager answers does
    /// with the tasks.
    #[arg(long)]
    on_disconnect: Option<skein_protocol::OnDisconnect>,
    /// Return at once instead of following the update.
    #[arg(short, long)]
    detach: bool,
    service: String,
}

/// `--args` as a shell would split it: whitespace separates, single quotes
/// keep everything, double quotes keep all but `\"` and `\\`, a backslash
/// outside quotes escapes the next character.
fn split_args(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => bail!("--args {s:?}: a single quote is not closed"),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => bail!("--args {s:?}: a double quote is not closed"),
                        },
                        Some(c) => w.push(c),
                        None => bail!("--args {s:?}: a double quote is not closed"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => cur.get_or_insert_with(String::new).push(c),
                None => bail!("--args {s:?}: ends with a lone backslash"),
            },
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(cur);
    Ok(out)
}

/// The spec `a` asks for, made from `old`.
pub fn updated_spec(old: &ServiceSpec, a: &UpdateArgs) -> anyhow::Result<ServiceSpec> {
    let mut spec = old.clone();
    if let Some(i) = &a.image {
        if i.trim().is_empty() {
            bail!("--image is empty: give an image (or a program for the process runtime)");
        }
        spec.image = i.clone();
    }
    if let Some(args) = &a.args {
        spec.command = split_args(args)?;
    }
    for k in &a.env_rm {
        let k = k.split_once('=').map_or(k.as_str(), |(k, _)| k);
        spec.env.remove(k);
    }
    for e in &a.env_add {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                spec.env.insert(k.to_string(), v.to_string());
            }
            _ => bail!("--env-add {e:?}: write KEY=VALUE"),
        }
    }
    if let Some(o) = a.on_disconnect {
        spec.on_disconnect = o;
    }
    if let Some(n) = a.replicas {
        if spec.mode == ServiceMode::Global {
            bail!(
                "--replicas: {} is a global service (one task per node); it has no replica count",
                spec.name
            );
        }
        spec.replicas = Some(n);
    }
    for p in &a.publish_rm {
        let before = spec.ports.len();
        let (published, target) = match p.split_once(':') {
            Some((pu, t)) => (
                pu.parse::<u16>().ok(),
                t.split('/').next().and_then(|t| t.parse::<u16>().ok()),
            ),
            None => (
                p.split('/').next().and_then(|x| x.parse::<u16>().ok()),
                None,
            ),
        };
        if published.is_none() {
            bail!("--publish-rm {p:?}: give the published port, e.g. --publish-rm 8080");
        }
        spec.ports
            .retain(|pc| !(pc.published == published && target.is_none_or(|t| t == pc.target)));
        if spec.ports.len() == before {
            bail!(
                "--publish-rm {p:?}: {} publishes no such port (see `skein service inspect {}`)",
                spec.name,
                spec.name
            );
        }
    }
    for p in &a.publish_add {
        let mut port = parse_publish(p)?;
        if port.mode == PublishMode::Ingress && port.published.is_some() {
            eprintln!(
                "warning: --publish-add {p}: skein has no ingress routing mesh yet; the port is \
                 published in host mode on each node that runs a task (add ,mode=host to silence this)"
            );
            port.mode = PublishMode::Host;
        }
        // Same published port: the new mapping replaces the old one.
        spec.ports.retain(|o| {
            !(o.published.is_some() && o.published == port.published && o.protocol == port.protocol)
        });
        spec.ports.push(port);
    }
    if a.no_healthcheck {
        spec.healthcheck = Some(HealthCheck {
            test: vec!["NONE".into()],
            interval: defaults::health_interval(),
            timeout: defaults::health_timeout(),
            retries: defaults::health_retries(),
            start_period: Dur::ZERO,
        });
    } else {
        let touched = a.health_cmd.is_some()
            || a.health_interval.is_some()
            || a.health_timeout.is_some()
            || a.health_retries.is_some()
            || a.health_start_period.is_some();
        if touched {
            let base = spec
                .healthcheck
                .clone()
                .filter(|h| h.test.first().map(String::as_str) != Some("NONE"));
            let test = match (&a.health_cmd, &base) {
                (Some(cmd), _) => vec!["CMD-SHELL".to_string(), cmd.clone()],
                (None, Some(h)) => h.test.clone(),
                (None, None) => bail!(
                    "--health-interval/--health-timeout/--health-retries/--health-start-period: {} has no health check; give --health-cmd too",
                    spec.name
                ),
            };
            spec.healthcheck = Some(HealthCheck {
                test,
                interval: a
                    .health_interval
                    .or(base.as_ref().map(|h| h.interval))
                    .unwrap_or_else(defaults::health_interval),
                timeout: a
                    .health_timeout
                    .or(base.as_ref().map(|h| h.timeout))
                    .unwrap_or_else(defaults::health_timeout),
                retries: a
                    .health_retries
                    .or(base.as_ref().map(|h| h.retries))
                    .unwrap_or_else(defaults::health_retries),
                start_period: a
                    .health_start_period
                    .or(base.as_ref().map(|h| h.start_period))
                    .unwrap_or(Dur::ZERO),
            });
        }
    }
    if let Some(c) = &a.restart_condition {
        spec.restart_policy.condition =
            parse_enum::<RestartCondition>(c, "--restart-condition", "none, on-failure, any")?;
    }
    a.rollout.apply(&mut spec)?;
    if a.force {
        spec.force_update += 1;
    }
    spec.validate()
        .map_err(|e| anyhow!("invalid service update: {e}"))?;
    Ok(spec)
}

pub async fn update(c: &Client, a: &UpdateArgs) -> anyhow::Result<i32> {
    let cur: ServiceDetail = c.get(&format!("/v1/services/{}", seg(&a.service))).await?;
    let spec = updated_spec(&cur.service.spec, a)?;
    let svc: Service = c
        .post(
            &format!("/v1/services/{}/update", seg(&cur.service.id)),
            &ServiceUpdateRequest {
                version: cur.service.version,
                spec,
            },
        )
        .await?;
    println!("{}", svc.spec.name);
    if a.detach {
        return Ok(0);
    }
    let ok = progress::follow(c, &svc.id, Op::Update(cur.service.version + 1)).await?;
    Ok(if ok { 0 } else { 1 })
}

pub async fn rollback(c: &Client, service: &str, detach: bool) -> anyhow::Result<i32> {
    let cur: ServiceDetail = c.get(&format!("/v1/services/{}", seg(service))).await?;
    let svc: Service = c
        .post(
            &format!("/v1/services/{}/rollback", seg(&cur.service.id)),
            &serde_json::json!({}),
        )
        .await?;
    println!("{}", svc.spec.name);
    if detach {
        return Ok(0);
    }
    let ok = progress::follow(c, &svc.id, Op::Rollback(cur.service.version + 1)).await?;
    Ok(if ok { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::UpdateOrder;

    fn args(argv: &[&str]) -> UpdateArgs {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: UpdateArgs,
        }
        let argv = ["update"].iter().chain(argv).copied();
        <Cmd as clap::Parser>::try_parse_from(argv)
            .expect("flags parse")
            .args
    }

    #[test]
    fn only_what_a_flag_names_changes() {
        let mut old = ServiceSpec::new("web", "sleep");
        old.command = vec!["3621".into()];
        old.env.insert("A".into(), "1".into());
        old.env.insert("B".into(), "2".into());
        let a = args(&[
            "--args",
            "3622",
            "--env-add",
            "C=3",
            "--env-rm",
            "A",
            "--update-parallelism",
            "2",
            "--update-monitor",
            "1s",
            "--update-order",
            "start-first",
            "web",
        ]);
        let new = updated_spec(&old, &a).expect("spec");
        assert_eq!(new.command, vec!["3622".to_string()]);
        assert_eq!(new.env.keys().collect::<Vec<_>>(), vec!["B", "C"]);
        assert_eq!(new.update_config.parallelism, 2);
        assert_eq!(new.update_config.monitor, Dur::from_secs(1));
        assert_eq!(new.update_config.order, UpdateOrder::StartFirst);
        assert_eq!(new.image, old.image);
        assert_eq!(new.rollback_config, old.rollback_config);
        let forced = updated_spec(&old, &args(&["--force", "web"])).expect("force");
        assert!(!forced.same_task_template(&old));
    }

    #[test]
    fn args_split_like_a_shell() {
        assert_eq!(split_args("3622").expect("one"), vec!["3622"]);
        assert_eq!(
            split_args(r#"-c 'echo "hi there"' "a b" c\ d ''"#).expect("quotes"),
            vec!["-c", "echo \"hi there\"", "a b", "c d", ""]
        );
        assert!(split_args("'open").is_err());
        assert!(split_args("\"open").is_err());
    }

    #[test]
    fn mistakes_name_the_flag() {
        let old = ServiceSpec::new("web", "sleep");
        let e = updated_spec(&old, &args(&["--publish-rm", "8080", "web"]))
            .expect_err("no such port")
            .to_string();
        assert!(e.starts_with("--publish-rm \"8080\""), "{e}");
        let e = updated_spec(&old, &args(&["--update-order", "sideways", "web"]))
            .expect_err("bad order")
            .to_string();
        assert!(e.contains("--update-order"), "{e}");
        let e = updated_spec(
            &old,
            &args(&["--rollback-failure-action", "rollback", "web"]),
        )
        .expect_err("rollback of a rollback")
        .to_string();
        assert!(e.contains("never rolled back"), "{e}");
    }
}
