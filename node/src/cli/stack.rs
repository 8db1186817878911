//! `skein stack ...`: deploy a compose file, list stacks, their services
//! and tasks, their deployed versions, roll them back, remove them. The file is parsed and checked here (errors name
//! the file, line and key) and sent whole: nothing of a bad stack deploys.

use super::client::{seg, Client};
use super::output::{self, Format};
use super::progress::{self, Op};
use super::wait;
use clap::Subcommand;
use skein_protocol::api::{
    ServiceRow, StackDeployRequest, StackDeployResponse, StackRollbackRequest, StackRow,
    StackVersionRow, TaskRow,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum StackCmd {
    /// Deploy or update a stack from a compose file.
    #[command(alias = "up")]
    Deploy {
        /// The compose file.
        #[arg(short = 'c', long = "compose-file")]
        compose_file: PathBuf,
        /// Remove services of the stack that the file no longer has.
        #[arg(long)]
        prune: bool,
        /// Return at once instead of waiting for the services to converge.
        #[arg(short, long)]
        detach: bool,
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the tasks of a stack.
    Ps {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the services of a stack.
    Services {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Put every service of a stack back to a deployed version together
    /// (default: the one before the newest), each with its rollback settings.
    Rollback {
        name: String,
        /// The version to go back to (see `skein stack versions NAME`).
        #[arg(long)]
        to: Option<u64>,
        /// Return at once instead of following the rollback.
        #[arg(short, long)]
        detach: bool,
    },
    /// List the deployed versions a stack keeps (the last 10).
    #[command(alias = "history")]
    Versions {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove stacks.
    #[command(alias = "remove", alias = "down")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(c: Client, cmd: StackCmd) -> anyhow::Result<i32> {
    match cmd {
        StackCmd::Deploy {
            compose_file,
            prune,
            detach,
            name,
        } => {
            let stack = skein_config::stack::load_stack(&compose_file, &name)?;
            for w in &stack.warnings {
                eprintln!("warning: {w}");
            }
            let names: Vec<String> = stack.services.iter().map(|s| s.name.clone()).collect();
            let before = progress::versions(&c, &names).await?;
            let resp: StackDeployResponse = c
                .post(
                    "/v1/stacks",
                    &StackDeployRequest {
                        name: name.clone(),
                        services: stack.services,
                        prune,
                    },
                )
                .await?;
            for s in &resp.created {
                println!("Creating service {s}");
            }
            for s in &resp.updated {
                println!("Updating service {s}");
            }
            for s in &resp.removed {
                println!("Removing service {s}");
            }
            if detach || names.is_empty() {
                return Ok(0);
            }
            let ok = wait_stack(&c, &resp, &before, Op::Update).await?;
            Ok(if ok { 0 } else { 1 })
        }
        StackCmd::Rollback { name, to, detach } => {
            let names: Vec<String> = c
                .get::<Vec<ServiceRow>>(&format!("/v1/stacks/{}/services", seg(&name)))
                .await
                .map(|rows| rows.into_iter().map(|r| r.name).collect())
                .unwrap_or_default();
            let before = progress::versions(&c, &names).await?;
            let resp: StackDeployResponse = c
                .post(
                    &format!("/v1/stacks/{}/rollback", seg(&name)),
                    &StackRollbackRequest { to },
                )
                .await?;
            for s in &resp.created {
                println!("Creating service {s}");
            }
            for s in &resp.updated {
                println!("Rolling back service {s}");
            }
            for s in &resp.removed {
                println!("Removing service {s}");
            }
            if detach {
                return Ok(0);
            }
            let ok = wait_stack(&c, &resp, &before, Op::Rollback).await?;
            Ok(if ok { 0 } else { 1 })
        }
        StackCmd::Versions { name, format } => {
            let rows: Vec<StackVersionRow> = c
                .get(&format!("/v1/stacks/{}/versions", seg(&name)))
                .await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                Format::Table => {
                    println!("{:<8} {:<25} SERVICES", "VERSION", "DEPLOYED");
                    for r in rows {
                        println!(
                            "{:<8} {:<25} {}",
                            r.version,
                            output::ago(r.deployed_at),
                            r.services.join(", ")
                        );
                    }
                }
            }
            Ok(0)
        }
        StackCmd::Ls { format } => {
            let rows: Vec<StackRow> = c.get("/v1/stacks").await?;
            output::print_stacks(&rows, format)?;
            Ok(0)
        }
        StackCmd::Ps { name, format } => {
            let rows: Vec<TaskRow> = c.get(&format!("/v1/stacks/{}/tasks", seg(&name))).await?;
            output::print_tasks(&rows, format)?;
            Ok(0)
        }
        StackCmd::Services { name, format } => {
            let rows: Vec<ServiceRow> = c
                .get(&format!("/v1/stacks/{}/services", seg(&name)))
                .await?;
            output::print_services(&rows, format)?;
            Ok(0)
        }
        StackCmd::Rm { names } => {
            let mut failed = false;
            for n in &names {
                let tasks: Vec<TaskRow> = c
                    .get(&format!("/v1/stacks/{}/tasks", seg(n)))
                    .await
                    .unwrap_or_default();
                match c.delete(&format!("/v1/stacks/{}", seg(n))).await {
                    Ok(()) => {
                        println!("Removing stack {n}");
                        let ids: Vec<String> = tasks.into_iter().map(|t| t.id).collect();
                        wait::tasks_gone(&c, &ids, Duration::from_secs(60)).await?;
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
    }
}

/// Waits for a deploy or rollback: new services until they converge,
/// changed ones until their rollout ends. True when all worked.
async fn wait_stack(
    c: &Client,
    resp: &StackDeployResponse,
    before: &BTreeMap<String, u64>,
    op: fn(u64) -> Op,
) -> anyhow::Result<bool> {
    let mut ok = true;
    if !resp.created.is_empty() {
        ok &= wait::converge(c, &resp.created, Duration::from_secs(180)).await?;
    }
    let rollouts: Vec<(String, Op)> = resp
        .updated
        .iter()
        .map(|n| (n.clone(), op(before.get(n).copied().unwrap_or(0) + 1)))
        .collect();
    ok &= progress::follow_all(c, &rollouts).await?;
    Ok(ok)
}
