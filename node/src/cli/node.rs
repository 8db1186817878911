//! Node maintenance from the command line: `node update --availability`,
//! `node drain [--wait] [--deadline D] [--transfer-leadership]`,
//! `node activate`, `node pause`, `node ps`.
//!
//! `drain --wait` follows the node until it runs no task: one line per task
//! that leaves (where its replacement runs, or that a global task stopped),
//! a progress bar on a terminal, and a one-line summary at the end. It exits
//! non-zero when replacements could not be placed, saying why (the
//! scheduler's reason: which rule ruled out how many nodes). A deadline stops
//! whatever is still on the node when it passes.
//!
//! The pure part, [`DrainView::observe`], turns one listing of the cluster's
//! tasks into what changed since the last one; the loop around it does I/O.

use super::client::{seg, Client};
use indicatif::{ProgressBar, ProgressStyle};
use skein_protocol::api::{NodeUpdateRequest, NodeUpdateResponse, StopTasksResponse, TaskRow};
use skein_protocol::{Availability, Dur, Node};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
/// How long a drain may make no progress, with replacements that no node can
/// take, before `--wait` gives up (without a deadline).
const STUCK_GRACE: Duration = Duration::from_secs(5);
/// After the node is empty: how long to wait for replacements to run.
const SETTLE_GRACE: Duration = Duration::from_secs(30);

pub async fn update(
    c: &Client,
    node: &str,
    availability: Availability,
    transfer_leadership: bool,
) -> anyhow::Result<Node> {
    let r: NodeUpdateResponse = c
        .post(
            &format!("/v1/nodes/{}/update", seg(node)),
            &NodeUpdateRequest {
                availability: Some(availability),
                transfer_leadership,
                rebalance: false,
            },
        )
        .await?;
    Ok(r.node)
}

/// `skein node activate NODE [--rebalance]`.
pub async fn activate(c: &Client, node: &str, rebalance: bool) -> anyhow::Result<i32> {
    let r: NodeUpdateResponse = c
        .post(
            &format!("/v1/nodes/{}/update", seg(node)),
            &NodeUpdateRequest {
                availability: Some(Availability::Active),
                transfer_leadership: false,
                rebalance,
            },
        )
        .await?;
    println!("Node {} is active.", r.node.name);
    if rebalance {
        if r.rebalanced.is_empty() {
            println!("Nothing to rebalance: every service it could run is spread evenly.");
        } else {
            println!(
                "Rebalancing {} (a forced rolling update each, update_config.parallelism at a \
                 time; follow it with `skein service ps`).",
                r.rebalanced.join(", ")
            );
        }
    }
    Ok(0)
}

fn is_terminal(state: &str) -> bool {
    matches!(
        state,
        "complete" | "failed" | "shutdown" | "rejected" | "orphaned"
    )
}

/// What one task on the node came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its replacement runs on another node.
    Moved { to: String },
    /// A global task: stopped, not replaced.
    Stopped,
    /// Stopped, and its replacement cannot be placed (the scheduler's reason).
    Unplaced { why: String },
}

/// A drain in progress, as seen from task listings.
#[derive(Debug, Default)]
pub struct DrainView {
    pub node: String,
    /// Tasks on the node when the drain started: id -> (name, service, slot).
    pub started_with: BTreeMap<String, (String, String, Option<u64>)>,
    pub outcomes: BTreeMap<String, Outcome>,
    /// Live tasks still on the node, with their state.
    pub remaining: BTreeMap<String, String>,
    /// Replicated tasks still on the node whose replacement no node can take.
    pub blocked: BTreeMap<String, String>,
}

impl DrainView {
    pub fn new(node: &str, tasks: &[TaskRow]) -> DrainView {
        let started_with = tasks
            .iter()
            .filter(|t| t.node == node && t.desired_state == "running" && !is_terminal(&t.state))
            .map(|t| (t.id.clone(), (t.name.clone(), t.service.clone(), t.slot)))
            .collect();
        DrainView {
            node: node.to_string(),
            started_with,
            ..Default::default()
        }
    }

    /// Reads one listing; returns the lines to print for what changed.
    pub fn observe(&mut self, tasks: &[TaskRow]) -> Vec<String> {
        let mut lines = Vec::new();
        self.remaining = tasks
            .iter()
            .filter(|t| t.node == self.node && !is_terminal(&t.state))
            .map(|t| (t.id.clone(), t.state.clone()))
            .collect();
        self.blocked.clear();
        for (id, (name, service, slot)) in &self.started_with {
            let gone = !self.remaining.contains_key(id);
            let outcome = match slot {
                None if gone => Some(Outcome::Stopped),
                None => None,
                Some(slot) => {
                    // The slot's live task elsewhere: the replacement.
                    let replacement = tasks.iter().find(|t| {
                        &t.service == service
                            && t.slot == Some(*slot)
                            && t.node != self.node
                            && t.desired_state == "running"
                            && !is_terminal(&t.state)
                    });
                    let unplaced_reason = tasks
                        .iter()
                        .find(|t| {
                            &t.service == service
                                && t.slot == Some(*slot)
                                && t.node.is_empty()
                                && t.state == "pending"
                                && t.error.starts_with("no suitable node")
                        })
                        .map(|t| t.error.clone());
                    match (replacement, unplaced_reason) {
                        (Some(r), _) if gone && r.state == "running" => {
                            Some(Outcome::Moved { to: r.node.clone() })
                        }
                        (_, Some(why)) if gone => Some(Outcome::Unplaced { why }),
                        (_, Some(why)) => {
                            self.blocked.insert(name.clone(), why);
                            None
                        }
                        _ => None,
                    }
                }
            };
            if let Some(o) = outcome {
                if self.outcomes.get(id) != Some(&o) {
                    lines.push(match &o {
                        Outcome::Moved { to } => format!("  {name}: moved to {to}"),
                        Outcome::Stopped => format!("  {name}: stopped (global task)"),
                        Outcome::Unplaced { why } => {
                            format!("  {name}: stopped, but its replacement cannot run: {why}")
                        }
                    });
                    self.outcomes.insert(id.clone(), o);
                }
            }
        }
        lines
    }

    pub fn moved(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Moved { .. }))
    }
    pub fn stopped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Stopped))
    }
    pub fn unplaced(&self) -> Vec<(&str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(id, o)| match o {
                Outcome::Unplaced { why } => Some((
                    self.started_with
                        .get(id)
                        .map(|s| s.0.as_str())
                        .unwrap_or(id),
                    why.as_str(),
                )),
                _ => None,
            })
            .collect()
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.values().filter(|o| f(o)).count()
    }
    /// Every task the drain started with has an outcome.
    pub fn settled(&self) -> bool {
        self.started_with
            .keys()
            .all(|id| self.outcomes.contains_key(id))
    }

    /// What the progress line says now.
    pub fn status(&self) -> String {
        if self.remaining.is_empty() {
            return "waiting for replacements to run".into();
        }
        let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
        for s in self.remaining.values() {
            *by_state.entry(s.as_str()).or_default() += 1;
        }
        let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let mut out = format!("on the node: {}", states.join(", "));
        if !self.blocked.is_empty() {
            out.push_str(&format!(
                "; {} waiting for a node to take the replacement",
                self.blocked.len()
            ));
        }
        out
    }

    /// The one-line summary.
    pub fn summary(&self, took: Duration) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = vec![plural(self.moved(), "task moved", "tasks moved")];
        if self.stopped() > 0 {
            parts.push(plural(
                self.stopped(),
                "global task stopped",
                "global tasks stopped",
            ));
        }
        let unplaced = self.unplaced();
        if !unplaced.is_empty() {
            parts.push(plural(
                unplaced.len(),
                "replacement without a node",
                "replacements without a node",
            ));
        }
        format!(
            "Node {} drained in {:.1}s: {}.",
            self.node,
            took.as_secs_f64(),
            parts.join(", ")
        )
    }
}

pub struct DrainOptions {
    pub wait: bool,
    pub deadline: Option<Dur>,
    pub transfer_leadership: bool,
}

/// `skein node drain NODE`: returns the exit code.
pub async fn drain(c: &Client, node: &str, opts: &DrainOptions) -> anyhow::Result<i32> {
    let before: Vec<TaskRow> = c.get("/v1/tasks").await?;
    let n = update(c, node, Availability::Drain, opts.transfer_leadership).await?;
    if !opts.wait && opts.deadline.is_none() {
        println!(
            "Node {} is draining: its tasks are moving to other nodes.",
            n.name
        );
        return Ok(0);
    }
    let mut view = DrainView::new(&n.name, &before);
    let started = Instant::now();
    let deadline = opts.deadline.map(|d| started + d.as_duration());
    let tty = std::io::stdout().is_terminal();
    println!(
        "Draining {} ({} task{} on it){}",
        n.name,
        view.started_with.len(),
        if view.started_with.len() == 1 {
            ""
        } else {
            "s"
        },
        match opts.deadline {
            Some(d) => format!(", deadline {d}"),
            None => String::new(),
        }
    );
    let bar = if tty {
        let bar = ProgressBar::new(view.started_with.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("  [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };
    let say = |line: &str| match &bar {
        Some(b) => b.println(line),
        None => println!("{line}"),
    };
    let mut forced = false;
    let mut last_progress = Instant::now();
    let mut emptied_at: Option<Instant> = None;
    let mut last_status = String::new();
    let code = loop {
        let tasks: Vec<TaskRow> = c.get("/v1/tasks").await?;
        let lines = view.observe(&tasks);
        if !lines.is_empty() {
            last_progress = Instant::now();
        }
        for l in &lines {
            say(l);
        }
        let status = view.status();
        match &bar {
            Some(b) => {
                b.set_position(view.outcomes.len() as u64);
                b.set_message(status.clone());
            }
            None if status != last_status && !view.remaining.is_empty() => {
                println!("  {status}");
            }
            None => {}
        }
        last_status = status;
        if view.remaining.is_empty() {
            let since = *emptied_at.get_or_insert_with(Instant::now);
            if view.settled() || since.elapsed() >= SETTLE_GRACE {
                break if view.unplaced().is_empty() { 0 } else { 1 };
            }
        }
        if let Some(d) = deadline.filter(|d| !forced && Instant::now() >= *d) {
            let _ = d;
            forced = true;
            let r: StopTasksResponse = c
                .post(
                    &format!("/v1/nodes/{}/stop-tasks", seg(&n.name)),
                    &serde_json::json!({}),
                )
                .await?;
            say(&format!(
                "  deadline passed: stopping the {} task{} still on {}",
                r.stopped.len(),
                if r.stopped.len() == 1 { "" } else { "s" },
                n.name
            ));
        }
        let stuck = !view.remaining.is_empty()
            && !view.blocked.is_empty()
            && view.blocked.len() >= view.remaining.len()
            && last_progress.elapsed() >= STUCK_GRACE;
        if stuck && deadline.is_none() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            eprintln!(
                "error: {} task{} cannot leave {}: no node can take the replacement{}:",
                view.blocked.len(),
                if view.blocked.len() == 1 { "" } else { "s" },
                n.name,
                if view.blocked.len() == 1 { "" } else { "s" },
            );
            for (name, why) in &view.blocked {
                eprintln!("  {name}: {why}");
            }
            eprintln!(
                "They keep running on {}. Add capacity (another node, or relax the service's \
                 constraints or max_replicas_per_node), or run `skein node drain {} --deadline 0s` \
                 to stop them anyway.",
                n.name, n.name
            );
            return Ok(1);
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let unplaced = view.unplaced();
    if !unplaced.is_empty() {
        for (name, why) in &unplaced {
            eprintln!("  {name}: no replacement running: {why}");
        }
    }
    println!("{}", view.summary(started.elapsed()));
    if !unplaced.is_empty() {
        eprintln!(
            "error: {} replica{} of the drained tasks could not be placed: add capacity or \
             relax the services' constraints",
            unplaced.len(),
            if unplaced.len() == 1 { "" } else { "s" }
        );
    }
    Ok(code)
}

/// `skein node ps NODE`: the tasks on a node, as `service ps` shows them.
pub async fn ps(c: &Client, node: &str) -> anyhow::Result<Vec<TaskRow>> {
    let n: Node = c.get(&format!("/v1/nodes/{}", seg(node))).await?;
    let tasks: Vec<TaskRow> = c.get("/v1/tasks").await?;
    Ok(tasks.into_iter().filter(|t| t.node == n.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, service: &str, slot: Option<u64>, node: &str, state: &str) -> TaskRow {
        TaskRow {
            id: id.into(),
            name: match slot {
                Some(s) => format!("{service}.{s}"),
                None => format!("{service}.{node}"),
            },
            service: service.into(),
            slot,
            node: node.into(),
            desired_state: "running".into(),
            state: state.into(),
            since: 0,
            image: String::new(),
            error: String::new(),
            exit_code: None,
            health: None,
            up_to_date: true,
        }
    }

    #[test]
    fn a_drain_is_followed_task_by_task_and_summed_up() {
        let start = vec![
            row("w1", "web", Some(1), "b", "running"),
            row("w2", "web", Some(2), "a", "running"),
            row("g1", "agent", None, "b", "running"),
        ];
        let mut v = DrainView::new("b", &start);
        assert_eq!(v.started_with.len(), 2);
        // The replacement starts on a; the old task still runs (start-first).
        let mut mid = start.clone();
        mid.push(row("w1b", "web", Some(1), "a", "starting"));
        assert!(v.observe(&mid).is_empty());
        assert_eq!(v.remaining.len(), 2);
        // Replacement running, old one stopped, global task stopped.
        let mut end = vec![
            row("w1b", "web", Some(1), "a", "running"),
            row("w2", "web", Some(2), "a", "running"),
        ];
        end.push(TaskRow {
            desired_state: "shutdown".into(),
            ..row("w1", "web", Some(1), "b", "shutdown")
        });
        let lines = v.observe(&end);
        assert_eq!(
            lines,
            vec!["  agent.b: stopped (global task)", "  web.1: moved to a"]
        );
        assert!(v.remaining.is_empty() && v.settled());
        assert_eq!(
            v.summary(Duration::from_millis(2500)),
            "Node b drained in 2.5s: 1 task moved, 1 global task stopped."
        );
    }

    #[test]
    fn replacements_no_node_can_take_are_reported_with_the_reason() {
        let start = vec![row("w1", "web", Some(1), "b", "running")];
        let mut v = DrainView::new("b", &start);
        let mut waiting = start.clone();
        waiting.push(TaskRow {
            error: "no suitable node (max replicas per node reached on 1 node)".into(),
            ..row("w1b", "web", Some(1), "", "pending")
        });
        assert!(v.observe(&waiting).is_empty());
        assert_eq!(v.blocked.len(), 1);
        assert!(
            v.status().contains("1 waiting for a node"),
            "{}",
            v.status()
        );
        // Stopped anyway (deadline): the slot has no node.
        let forced = vec![
            TaskRow {
                desired_state: "shutdown".into(),
                ..row("w1", "web", Some(1), "b", "shutdown")
            },
            waiting[1].clone(),
        ];
        let lines = v.observe(&forced);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("cannot run: no suitable node"),
            "{}",
            lines[0]
        );
        assert_eq!(v.unplaced().len(), 1);
        assert!(v
            .summary(Duration::from_secs(1))
            .ends_with("0 tasks moved, 1 replacement without a node."));
    }
}
