//! One owner for the tasks an agent run spawns (mini-redis style): every
//! actor the agent starts is spawned here under a name, sees the same stop
//! signal, and is waited for when the run ends.
//!
//! Invariants: a task spawned here is never detached: [`TaskSet::shutdown`]
//! signals stop, waits for every task up to a bound, then aborts (and names)
//! the ones still running, so a run always ends within the bound; a task that
//! ends by itself before the stop is reported by [`TaskSet::next_ended`] (the
//! agent decides whether that is fatal: Raft's is).

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

pub struct TaskSet {
    set: JoinSet<&'static str>,
    stop_tx: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
}

impl Default for TaskSet {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskSet {
    pub fn new() -> Self {
        let (stop_tx, stop) = watch::channel(false);
        TaskSet {
            set: JoinSet::new(),
            stop_tx,
            stop,
        }
    }

    /// The stop signal: becomes `true` once the run ends (also for actors
    /// other modules spawn, like the network and membership).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    /// Spawns `task` under `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.set.spawn(async move {
            task.await;
            name
        });
    }

    /// How many tasks still run.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next task that ended (its name, or why it did not end well);
    /// pending while none did (forever when the set is empty).
    pub async fn next_ended(&mut self) -> Result<&'static str, JoinError> {
        match self.set.join_next().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Signals stop and waits for every task, at most `bound`; the ones
    /// still running then are aborted (and counted: the return value).
    pub async fn shutdown(mut self, bound: Duration) -> usize {
        let _ = self.stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + bound;
        while !self.set.is_empty() {
            match tokio::time::timeout_at(deadline, self.set.join_next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "a task failed while stopping"),
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if self.set.is_empty() {
            return 0;
        }
        let left = self.set.len();
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
        tracing::warn!(
            tasks = left,
            bound_ms = bound.as_millis() as u64,
            "tasks did not stop in time: aborted"
        );
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_tasks_that_stop_and_aborts_the_rest_within_the_bound() {
        let mut tasks = TaskSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stop = tasks.stop_signal();
        tasks.spawn("polite", async move {
            let _ = stop.changed().await;
            let _ = done_tx.send("polite");
        });
        tasks.spawn("stubborn", std::future::pending());
        assert_eq!(tasks.len(), 2);
        let t = tokio::time::Instant::now();
        let aborted = tasks.shutdown(Duration::from_millis(200)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(aborted, 1);
        assert_eq!(done_rx.recv().await, Some("polite"));
    }

    #[tokio::test]
    async fn a_task_that_ends_by_itself_is_reported() {
        let mut tasks = TaskSet::new();
        tasks.spawn("short", async {});
        tasks.spawn("long", std::future::pending());
        assert_eq!(tasks.next_ended().await.ok(), Some("short"));
        assert_eq!(tasks.shutdown(Duration::from_millis(50)).await, 1);
    }
}
