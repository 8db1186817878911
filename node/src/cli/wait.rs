//! Waiting for services to converge, with a progress display: what
//! `service create`, `service scale` and `stack deploy` do unless `--detach`.
//! A service has converged when every wanted task is running and stays so
//! for a moment; waiting fails early when a task is rejected (its program
//! or image cannot run), when no node can take a task, or when tasks keep
//! failing, and prints why.

use super::client::{seg, Client};
use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use skein_protocol::api::{ServiceDetail, ServiceRow, TaskRow};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// docker's CLI polls every 200 ms too.
const POLL: Duration = Duration::from_millis(200);
/// Converged must hold for the service's update monitor, as docker's CLI
/// requires, but at least this long (a task that dies at once is not
/// "running")...
const STABLE_MIN: Duration = Duration::from_millis(1000);
/// ...and at most this long (docker's default monitor is 5s: too long to
/// keep someone waiting for tasks that already run).
const STABLE_MAX: Duration = Duration::from_millis(1500);
/// Failed tasks per service before we stop waiting.
const MAX_FAILURES: usize = 3;
const UNSCHEDULABLE_GRACE: Duration = Duration::from_secs(5);

struct Watch {
    bar: ProgressBar,
    converged_since: Option<Instant>,
    unschedulable_since: Option<Instant>,
    verdict: Option<Result<(), String>>,
    /// How long converged must hold; read once the service first converges.
    stable: Option<Duration>,
    seen_failed: std::collections::BTreeSet<String>,
}

/// Waits for each named service; true when all converged.
pub async fn converge(c: &Client, names: &[String], timeout: Duration) -> anyhow::Result<bool> {
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>20} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut watches: BTreeMap<String, Watch> = names
        .iter()
        .map(|n| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(n.clone());
            (
                n.clone(),
                Watch {
                    bar,
                    converged_since: None,
                    unschedulable_since: None,
                    verdict: None,
                    stable: None,
                    seen_failed: Default::default(),
                },
            )
        })
        .collect();
    let started = Instant::now();
    let start_ms = crate::util::now_ms();
    loop {
        for (name, w) in watches.iter_mut().filter(|(_, w)| w.verdict.is_none()) {
            let row: ServiceRow = match c
                .get::<Vec<ServiceRow>>("/v1/services")
                .await?
                .into_iter()
                .find(|r| &r.name == name)
            {
                Some(r) => r,
                None => {
                    w.verdict = Some(Err("the service was removed".into()));
                    continue;
                }
            };
            let tasks: Vec<TaskRow> = c
                .get(&format!("/v1/services/{}/tasks", seg(name)))
                .await
                .with_context(|| format!("cannot read the tasks of {name}"))?;
            w.bar.set_length(row.replicas);
            w.bar.set_position(row.running.min(row.replicas));
            let live: Vec<&TaskRow> = tasks
                .iter()
                .filter(|t| t.desired_state == "running")
                .collect();
            let not_yet = live.iter().filter(|t| t.state != "running").count();
            for t in tasks.iter().filter(|t| {
                (t.state == "failed" || t.state == "rejected")
                    && t.since >= start_ms.saturating_sub(1000)
            }) {
                if w.seen_failed.insert(t.id.clone()) {
                    w.bar
                        .println(format!("{name}: task {} {}: {}", t.name, t.state, t.error));
                }
            }
            if let Some(r) = tasks
                .iter()
                .find(|t| t.state == "rejected" && w.seen_failed.contains(&t.id))
            {
                w.verdict = Some(Err(format!("task {} was rejected: {}", r.name, r.error)));
                continue;
            }
            if w.seen_failed.len() >= MAX_FAILURES {
                w.verdict = Some(Err(format!("{} tasks failed", w.seen_failed.len())));
                continue;
            }
            let unschedulable = live
                .iter()
                .find(|t| t.state == "pending" && t.error.starts_with("no suitable node"));
            match unschedulable {
                Some(t) => {
                    let since = *w.unschedulable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= UNSCHEDULABLE_GRACE {
                        w.verdict = Some(Err(format!(
                            "task {} cannot be placed: {}",
                            t.name, t.error
                        )));
                        continue;
                    }
                    w.bar.set_message(t.error.clone());
                }
                None => w.unschedulable_since = None,
            }
            if row.running == row.replicas && not_yet == 0 {
                let since = *w.converged_since.get_or_insert_with(Instant::now);
                w.bar.set_message("running");
                let stable = match w.stable {
                    Some(d) => d,
                    None => {
                        let d = c
                            .get_opt::<ServiceDetail>(&format!("/v1/services/{}", seg(name)))
                            .await?
                            .map(|d| {
                                stable_window(d.service.spec.update_config.monitor.as_duration())
                            })
                            .unwrap_or(STABLE_MAX);
                        *w.stable.insert(d)
                    }
                };
                if since.elapsed() >= stable {
                    w.verdict = Some(Ok(()));
                }
            } else {
                w.converged_since = None;
                if unschedulable.is_none() {
                    w.bar.set_message(format!("{not_yet} starting"));
                }
            }
        }
        if watches.values().all(|w| w.verdict.is_some()) {
            break;
        }
        if started.elapsed() >= timeout {
            for w in watches.values_mut().filter(|w| w.verdict.is_none()) {
                w.verdict = Some(Err(format!("not converged after {}s", timeout.as_secs())));
            }
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut ok = true;
    for (name, w) in watches {
        w.bar.finish_and_clear();
        match w.verdict {
            Some(Ok(())) => println!(
                "{name}: converged ({} running)",
                w.bar.length().unwrap_or(0)
            ),
            Some(Err(why)) => {
                ok = false;
                eprintln!("error: {name} did not converge: {why} (see `skein service ps {name}`)");
            }
            None => {}
        }
    }
    Ok(ok)
}

/// How long a converged service must stay so: its update monitor (how
/// long it asks a new task to be watched), like docker's CLI, bounded by
/// [`STABLE_MIN`] and [`STABLE_MAX`].
fn stable_window(monitor: Duration) -> Duration {
    monitor.clamp(STABLE_MIN, STABLE_MAX)
}

/// Waits until the tasks have stopped (or are gone), bounded by `timeout`.
pub async fn tasks_gone(c: &Client, ids: &[String], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut left: Vec<String> = ids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for id in left {
            if let Some(t) = c
                .get_opt::<skein_protocol::Task>(&format!("/v1/tasks/{}", seg(&id)))
                .await?
            {
                if !t.status.state.is_terminal() {
                    still.push(id);
                }
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    if !left.is_empty() {
        eprintln!("warning: {} task(s) still stopping", left.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_window_follows_the_update_monitor_within_bounds() {
        assert_eq!(
            stable_window(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            stable_window(Duration::from_millis(1200)),
            Duration::from_millis(1200)
        );
        // docker's default 5s, and 0s: bounded.
        assert_eq!(stable_window(Duration::from_secs(5)), STABLE_MAX);
        assert_eq!(stable_window(Duration::ZERO), STABLE_MIN);
    }
}
