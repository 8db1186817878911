//! The `skein` command line: clap definitions and dispatch. Every command
//! except `agent` and the hidden `shim` talks to an agent's HTTP API
//! (`-H/--host` or `SKEIN_HOST`, default http://127.0.0.1:7947).
//! Errors print one line saying what went wrong and exit non-zero.

mod client;
mod node;
mod output;
mod progress;
mod service;
mod stack;
mod update;
mod wait;

use clap::{Args, Parser, Subcommand};
use client::Client;
use output::Format;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "skein",
    version,
    about = "A peer-to-peer container orchestrator for edge fleets",
    propagate_version = true
)]
struct Cli {
    /// Agent API to talk to.
    #[arg(
        short = 'H',
        long = "host",
        env = "SKEIN_HOST",
        global = true,
        default_value = "http://127.0.0.1:7947"
    )]
    host: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the skein agent on this machine.
    Agent(Box<AgentArgs>),
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage stacks (compose files).
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Take the node this command talks to out of the cluster.
    Leave {
        /// Leave even as a manager (never if that would lose quorum).
        #[arg(short, long)]
        force: bool,
    },
    /// Print (or rotate) the token a new node joins with.
    JoinToken {
        /// worker or manager.
        role: String,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token: the old one stops working for new joins.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Args)]
struct AgentArgs {
    /// TOML config file (also SKEIN_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the raft log and task state live (also SKEIN_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// This node's name (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// API listen address, default 127.0.0.1:7947 (also SKEIN_API).
    #[arg(long)]
    api: Option<String>,
    /// Cluster listen address HOST:PORT (also SKEIN_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// auto, docker or process (also SKEIN_RUNTIME).
    #[arg(long)]
    runtime: Option<String>,
    /// Node label KEY=VALUE, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Region this node's cluster belongs to.
    #[arg(long)]
    region: Option<String>,
    /// Address (HOST:PORT) of a manager to join, repeatable; needs --token
    /// (with --cluster-key: seeds to find the other boxes through).
    #[arg(long)]
    join: Vec<String>,
    /// Form a cluster by itself once this many boxes with the same
    /// --cluster-key see each other (odd: 1, 3, 5); later boxes join it.
    #[arg(long)]
    bootstrap_expect: Option<u32>,
    /// Shared secret of a self-forming cluster (also SKEIN_CLUSTER_KEY).
    #[arg(long)]
    cluster_key: Option<String>,
    /// Raft voters a self-formed cluster keeps: lost managers are replaced
    /// by healthy workers (odd; default: --bootstrap-expect).
    #[arg(long)]
    voters: Option<u32>,
    /// Do not look for other boxes on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// A manager whose Raft log (<data-dir>/raft) is lost refuses to start;
    /// with this flag it founds a new one-manager cluster instead (the old
    /// cluster's state is gone from this node).
    #[arg(long)]
    force_new_cluster: bool,
    /// Join token from `skein join-token worker|manager` (also SKEIN_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// Address other nodes reach this one at, HOST:PORT (also SKEIN_ADVERTISE).
    #[arg(long)]
    advertise: Option<String>,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one or more nodes in detail (JSON).
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make workers managers (raft voters).
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (demoting the leader hands leadership over first).
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability: active (runs tasks), pause (keeps its
    /// tasks, gets no new ones) or drain (its tasks move elsewhere).
    Update {
        #[arg(long, value_enum)]
        availability: AvailabilityArg,
        /// When the node leads the cluster: hand leadership to another manager first.
        #[arg(long)]
        transfer_leadership: bool,
        node: String,
    },
    /// Move every task off a node (maintenance): replicated tasks are replaced
    /// elsewhere first when their service updates start-first; global tasks stop.
    Drain {
        node: String,
        /// Follow the drain until the node runs no task (exit non-zero when
        /// replacements could not be placed).
        #[arg(long)]
        wait: bool,
        /// Stop whatever is still on the node after this long (e.g. 2m); implies --wait.
        #[arg(long)]
        deadline: Option<skein_protocol::Dur>,
        /// When the node leads the cluster: hand leadership to another manager first.
        #[arg(long)]
        transfer_leadership: bool,
    },
    /// Put a node back in service (global tasks return at once).
    Activate {
        node: String,
        /// Also spread the replicated services it could run again (a forced
        /// rolling update of each unevenly spread one).
        #[arg(long)]
        rebalance: bool,
    },
    /// Keep a node's tasks running but place nothing new on it.
    Pause { node: String },
    /// List the tasks on a node.
    Ps {
        node: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove nodes from the cluster (they are locked out).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Remove even a reachable node or a manager.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for skein_protocol::Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => skein_protocol::Availability::Active,
            AvailabilityArg::Pause => skein_protocol::Availability::Pause,
            AvailabilityArg::Drain => skein_protocol::Availability::Drain,
        }
    }
}

fn availability_text(a: skein_protocol::Availability) -> &'static str {
    match a {
        skein_protocol::Availability::Active => "active",
        skein_protocol::Availability::Pause => "pause",
        skein_protocol::Availability::Drain => "drain",
    }
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    let agent = matches!(cli.cmd, Cmd::Agent(_));
    if !agent {
        // `skein service ps | head` must end quietly, not panic on a closed pipe.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    init_tracing(agent);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn node_action(
    c: &Client,
    nodes: &[String],
    action: &str,
    done: &str,
) -> anyhow::Result<i32> {
    let mut failed = false;
    for n in nodes {
        match c
            .post::<_, skein_protocol::Node>(
                &format!("/v1/nodes/{}/{action}", client::seg(n)),
                &serde_json::json!({}),
            )
            .await
        {
            Ok(node) => println!("Node {} {done}.", node.name),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn init_tracing(agent: bool) {
    use std::io::IsTerminal;
    // raft-rs narrates every election at info: keep that for RUST_LOG=raft=info.
    let default = if agent { "info,raft=warn" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let client = || Client::new(&cli.host);
    match cli.cmd {
        Cmd::Agent(a) => {
            let over = skein_config::agent::AgentOverrides {
                config: a.config,
                data_dir: a.data_dir,
                name: a.name,
                api: a.api,
                listen: a.listen,
                runtime: a.runtime,
                labels: a.labels,
                region: a.region,
                join: a.join,
                token: a.token,
                advertise: a.advertise,
                bootstrap_expect: a.bootstrap_expect,
                cluster_key: a.cluster_key,
                voters: a.voters,
                no_mdns: a.no_mdns,
                force_new_cluster: a.force_new_cluster,
            };
            let cfg = skein_config::agent::load_agent_config(&over, &|k| std::env::var(k).ok())?;
            crate::agent::run(cfg).await?;
            Ok(0)
        }
        Cmd::Node(NodeCmd::Ls { format }) => {
            let rows: Vec<skein_protocol::api::NodeRow> = client()?.get("/v1/nodes").await?;
            output::print_nodes(&rows, format)?;
            Ok(0)
        }
        Cmd::Node(NodeCmd::Promote { nodes }) => {
            node_action(&client()?, &nodes, "promote", "promoted to manager").await
        }
        Cmd::Node(NodeCmd::Demote { nodes }) => {
            node_action(&client()?, &nodes, "demote", "demoted to worker").await
        }
        Cmd::Node(NodeCmd::Update {
            availability,
            transfer_leadership,
            node,
        }) => {
            let n =
                node::update(&client()?, &node, availability.into(), transfer_leadership).await?;
            println!(
                "Node {} availability: {}.",
                n.name,
                availability_text(n.availability)
            );
            Ok(0)
        }
        Cmd::Node(NodeCmd::Drain {
            node,
            wait,
            deadline,
            transfer_leadership,
        }) => {
            let opts = node::DrainOptions {
                wait,
                deadline,
                transfer_leadership,
            };
            node::drain(&client()?, &node, &opts).await
        }
        Cmd::Node(NodeCmd::Activate { node, rebalance }) => {
            node::activate(&client()?, &node, rebalance).await
        }
        Cmd::Node(NodeCmd::Pause { node }) => {
            let n = node::update(
                &client()?,
                &node,
                skein_protocol::Availability::Pause,
                false,
            )
            .await?;
            println!(
                "Node {} is paused: its tasks keep running, nothing new is placed on it.",
                n.name
            );
            Ok(0)
        }
        Cmd::Node(NodeCmd::Ps { node, format }) => {
            let rows = node::ps(&client()?, &node).await?;
            output::print_tasks(&rows, format)?;
            Ok(0)
        }
        Cmd::Node(NodeCmd::Rm { nodes, force }) => {
            let c = client()?;
            let mut failed = false;
            for n in &nodes {
                let q = if force { "?force=true" } else { "" };
                match c.delete(&format!("/v1/nodes/{}{q}", client::seg(n))).await {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        Cmd::Leave { force } => {
            let q = if force { "?force=true" } else { "" };
            client()?
                .post_empty(&format!("/v1/leave{q}"), &serde_json::json!({}))
                .await?;
            println!("Node left the cluster.");
            Ok(0)
        }
        Cmd::Node(NodeCmd::Inspect { nodes }) => {
            let c = client()?;
            let mut out = Vec::new();
            for n in &nodes {
                let v: serde_json::Value = c.get(&format!("/v1/nodes/{}", client::seg(n))).await?;
                out.push(v);
            }
            output::print_inspect(out)?;
            Ok(0)
        }
        Cmd::JoinToken {
            role,
            quiet,
            rotate,
        } => {
            let q = if rotate { "?rotate=true" } else { "" };
            let t: skein_protocol::api::JoinTokenResponse = client()?
                .get(&format!("/v1/join-token/{}{q}", client::seg(&role)))
                .await?;
            if quiet {
                println!("{}", t.token);
            } else {
                if rotate {
                    println!("Successfully rotated the {} join token.\n", t.role);
                }
                println!(
                    "To add a {} to this cluster, run the following command:\n",
                    t.role
                );
                println!(
                    "    skein agent --join {} --token {}\n",
                    t.join_addr, t.token
                );
            }
            Ok(0)
        }
        Cmd::Service(cmd) => service::run(client()?, cmd).await,
        Cmd::Stack(cmd) => stack::run(client()?, cmd).await,
    }
}
