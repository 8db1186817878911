//! Following a rollout (`service update`, `service rollback`, `stack
//! deploy` of a changed service, `stack rollback`) until it ends, with
//! docker's per-slot progress (`2/6: running [=====>   ]`) and a verdict.
//!
//! Pure part: [`verdict`] (has the rollout ended, and did it do what was
//! asked) and [`render`] (the lines to show). The loop polls the API.
//! A rollout that paused, or an update that rolled back, is a failure: the
//! caller exits non-zero. On a terminal the lines are redrawn in place;
//! otherwise only changed lines are printed.

use super::client::{seg, Client};
use skein_protocol::api::{ServiceDetail, TaskRow};
use skein_protocol::{UpdateState, UpdateStatus};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
/// Without a rollout (a scale), the tasks must run this long to count.
const STABLE: Duration = Duration::from_millis(1000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// An update that made the service version `.0` or later.
    Update(u64),
    /// A rollback that made version `.0` or later.
    Rollback(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Waiting,
    Done(String),
    Failed(String),
}

/// Where the rollout of `d` stands for `op`. `converged`: every wanted key
/// runs an up-to-date task (used when no rollout is in progress).
pub fn verdict(d: &ServiceDetail, op: Op, converged: bool) -> Verdict {
    let min = match op {
        Op::Update(v) | Op::Rollback(v) => v,
    };
    if d.service.version < min {
        // A follower that has not applied the change yet.
        return Verdict::Waiting;
    }
    let st: Option<&UpdateStatus> = d.service.update_status.as_ref();
    let name = &d.service.spec.name;
    match (op, st.map(|s| s.state)) {
        (_, Some(s)) if s.in_progress() => Verdict::Waiting,
        (_, Some(UpdateState::Paused)) => Verdict::Failed(format!(
            "{name}: {}",
            st.map(|s| s.message.as_str()).unwrap_or("paused")
        )),
        (_, Some(UpdateState::RollbackPaused)) => Verdict::Failed(format!(
            "{name}: {}",
            st.map(|s| s.message.as_str()).unwrap_or("rollback paused")
        )),
        // An automatic rollback bumped the version past ours.
        (Op::Update(v), Some(UpdateState::RollbackCompleted)) if d.service.version > v => {
            Verdict::Failed(format!(
                "{name}: the update was rolled back: {}",
                st.map(|s| s.message.as_str()).unwrap_or("")
            ))
        }
        (Op::Rollback(_), Some(UpdateState::RollbackCompleted)) if converged => {
            Verdict::Done(format!("{name}: rollback completed"))
        }
        _ if converged => Verdict::Done(format!("{name}: service converged")),
        _ => Verdict::Waiting,
    }
}

fn stage(state: &str) -> u64 {
    match state {
        "new" => 1,
        "pending" => 2,
        "assigned" => 3,
        "starting" => 4,
        "running" => 5,
        _ => 0,
    }
}

fn bar(fill: u64, of: u64) -> String {
    const W: u64 = 30;
    let n = (fill * W).checked_div(of).unwrap_or(0).min(W);
    let mut s = "=".repeat(n as usize);
    if n < W {
        s.push('>');
        s.push_str(&" ".repeat((W - n - 1) as usize));
    }
    format!("[{s}]")
}

/// The lines docker shows: one per slot (or node), then the overall
/// progress and the rollout's message. Second value: converged.
pub fn render(d: &ServiceDetail) -> (Vec<String>, bool) {
    let mut keys: BTreeMap<String, Vec<&TaskRow>> = BTreeMap::new();
    for t in &d.tasks {
        let key = match t.slot {
            Some(s) => format!("{s:>6}"),
            None => t.node.clone(),
        };
        keys.entry(key).or_default().push(t);
    }
    let desired = d.service.spec.desired_replicas();
    let wanted: Vec<String> = match desired {
        Some(n) => (1..=n).map(|s| format!("{s:>6}")).collect(),
        // Global: the nodes that have a live task.
        None => keys
            .iter()
            .filter(|(_, ts)| ts.iter().any(|t| t.desired_state == "running"))
            .map(|(k, _)| k.clone())
            .collect(),
    };
    let total = wanted.len();
    let mut lines = Vec::new();
    let mut done = 0;
    for k in &wanted {
        let tasks = keys.get(k).map(Vec::as_slice).unwrap_or(&[]);
        // The newest task meant to run, up-to-date ones first.
        let live = tasks
            .iter()
            .filter(|t| t.desired_state == "running")
            .max_by_key(|t| (t.up_to_date, t.since));
        let label = match desired {
            Some(_) => format!("{}/{total}", k.trim()),
            None => k.clone(),
        };
        let line = match live {
            Some(t) if t.up_to_date => {
                if t.state == "running" {
                    done += 1;
                }
                let err = if t.error.is_empty() {
                    String::new()
                } else {
                    format!(" {}", t.error)
                };
                format!("{label}: {:<9} {}{err}", t.state, bar(stage(&t.state), 5))
            }
            Some(t) => format!("{label}: {:<9} {} (old version)", t.state, bar(0, 5)),
            None => format!("{label}: {:<9} {}", "waiting", bar(0, 5)),
        };
        lines.push(line);
    }
    let stale_running = d
        .tasks
        .iter()
        .any(|t| t.desired_state == "running" && !t.up_to_date);
    lines.push(format!("overall progress: {done} out of {total} tasks"));
    if let Some(s) = &d.service.update_status {
        lines.push(format!("{}: {}", s.state.as_str(), s.message));
    }
    (lines, done == total && !stale_running)
}

/// Follows the rollout of `service` until it ends; Ok(true) when it did
/// what `op` asked.
pub async fn follow(c: &Client, service: &str, op: Op) -> anyhow::Result<bool> {
    let tty = std::io::stdout().is_terminal();
    let mut shown: Vec<String> = Vec::new();
    let mut converged_since: Option<Instant> = None;
    loop {
        let d: ServiceDetail = match c.get_opt(&format!("/v1/services/{}", seg(service))).await? {
            Some(d) => d,
            None => {
                eprintln!("error: {service} was removed");
                return Ok(false);
            }
        };
        let (lines, converged) = render(&d);
        let stable = match (converged, converged_since) {
            (false, _) => {
                converged_since = None;
                false
            }
            (true, None) => {
                converged_since = Some(Instant::now());
                false
            }
            (true, Some(t)) => t.elapsed() >= STABLE || d.service.update_status.is_some(),
        };
        let mut out = std::io::stdout().lock();
        if tty {
            if !shown.is_empty() {
                write!(out, "\x1b[{}A", shown.len())?;
            }
            for l in &lines {
                writeln!(out, "\x1b[2K{l}")?;
            }
        } else {
            for (i, l) in lines.iter().enumerate() {
                if shown.get(i) != Some(l) {
                    writeln!(out, "{l}")?;
                }
            }
        }
        out.flush()?;
        drop(out);
        shown = lines;
        match verdict(&d, op, stable) {
            Verdict::Waiting => {}
            Verdict::Done(m) => {
                println!("{m}");
                return Ok(true);
            }
            Verdict::Failed(m) => {
                eprintln!("error: {m} (see `skein service ps {service}`)");
                return Ok(false);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Versions of the named services now (None: no such service yet): what
/// a stack deploy or rollback compares against to know its rollout.
pub async fn versions(c: &Client, names: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(d) = c
            .get_opt::<ServiceDetail>(&format!("/v1/services/{}", seg(n)))
            .await?
        {
            out.insert(n.clone(), d.service.version);
        }
    }
    Ok(out)
}

/// Follows several rollouts (they run at once on the cluster; they are
/// shown one after the other). True when all did what was asked.
pub async fn follow_all(c: &Client, rollouts: &[(String, Op)]) -> anyhow::Result<bool> {
    let mut ok = true;
    for (name, op) in rollouts {
        println!("{name}:");
        ok &= follow(c, name, *op).await?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{Service, ServiceSpec};

    fn detail(version: u64, state: Option<UpdateState>) -> ServiceDetail {
        ServiceDetail {
            service: Service {
                id: "s".into(),
                spec: ServiceSpec::new("web", "sleep"),
                previous_spec: None,
                version,
                update_status: state.map(|s| UpdateStatus::begin(s, 0, version, "why")),
                created_at: 0,
                updated_at: 0,
            },
            tasks: Vec::new(),
        }
    }

    #[test]
    fn an_update_that_rolled_back_or_paused_fails() {
        use UpdateState::*;
        assert_eq!(
            verdict(&detail(3, Some(Updating)), Op::Update(3), true),
            Verdict::Waiting
        );
        assert!(matches!(
            verdict(&detail(3, Some(Paused)), Op::Update(3), true),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            verdict(&detail(4, Some(RollbackCompleted)), Op::Update(3), true),
            Verdict::Failed(_)
        ));
        // An old rollback's status, and our update only scaled: fine.
        assert!(matches!(
            verdict(&detail(3, Some(RollbackCompleted)), Op::Update(3), true),
            Verdict::Done(_)
        ));
        assert!(matches!(
            verdict(&detail(4, Some(RollbackCompleted)), Op::Rollback(4), true),
            Verdict::Done(_)
        ));
        assert!(matches!(
            verdict(&detail(4, Some(RollbackPaused)), Op::Rollback(4), true),
            Verdict::Failed(_)
        ));
        // Not applied here yet.
        assert_eq!(
            verdict(&detail(2, Some(Completed)), Op::Update(3), true),
            Verdict::Waiting
        );
    }

    #[test]
    fn bars_fill_by_task_state() {
        assert_eq!(bar(5, 5), format!("[{}]", "=".repeat(30)));
        assert!(bar(0, 5).starts_with("[>"));
    }
}
