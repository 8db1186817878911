//! `FakeRuntime`: an in-memory [`Runtime`] for tests of the worker and for
//! deterministic simulations. It starts nothing; a test drives it
//! (`exit`, `fail_start`, `set_logs`, `set_now`) and inspects what the worker
//! asked of it (`started`, `stopped`, `running`).
//!
//! It keeps the same contract as the process runtime: `start` of a running
//! task returns its runtime id without starting another; `start` of an
//! exited task fails until it is removed; stopping or removing an unknown
//! task is Ok; `logs` of an unknown task is an error. Clones share state
//! (an `Arc<Mutex<_>>`: acceptable inside a test double, not between actors).

use super::{Observed, ObservedState, RtFuture, Runtime, RuntimeError};
use crate::util::now_ms;
use skein_protocol::{RuntimeKind, Task};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Exit code of a task the fake stops: killed by SIGTERM.
pub const STOPPED_EXIT_CODE: i32 = 128 + 15;

#[derive(Clone, Debug, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    kind: Option<RuntimeKind>,
    tasks: BTreeMap<String, FakeTask>,
    failing: BTreeSet<String>,
    started: usize,
    stopped: Vec<String>,
    next_pid: u64,
    now: Option<u64>,
}

#[derive(Debug)]
struct FakeTask {
    observed: Observed,
    logs: Vec<u8>,
}

impl Inner {
    fn now(&self) -> u64 {
        self.now.unwrap_or_else(now_ms)
    }
}

/// The program a task runs: its entrypoint's first word, else its image.
fn program_of(task: &Task) -> &str {
    task.spec
        .entrypoint
        .first()
        .map(String::as_str)
        .unwrap_or(&task.spec.image)
}

impl FakeRuntime {
    /// A fake process runtime.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that reports `kind` (e.g. to stand in for Docker).
    pub fn with_kind(kind: RuntimeKind) -> Self {
        let f = Self::default();
        f.lock().kind = Some(kind);
        f
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock must not hide the state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts of tasks running `program` (entrypoint[0], else the image) fail
    /// as the process runtime fails for a missing program.
    pub fn fail_start(&self, program: &str) {
        self.lock().failing.insert(program.to_string());
    }

    /// Makes a running task exit with `code`, as if its process ended.
    /// Returns false when there is no such running task.
    pub fn exit(&self, task_id: &str, code: i32) -> bool {
        let mut inner = self.lock();
        let now = inner.now();
        match inner.tasks.get_mut(task_id) {
            Some(t) if t.observed.state == ObservedState::Running => {
                t.observed.state = ObservedState::Exited {
                    exit_code: code,
                    finished_at: now,
                };
                true
            }
            _ => false,
        }
    }

    /// How many task instances were started (an idempotent re-start of a
    /// running task does not count).
    pub fn started(&self) -> usize {
        self.lock().started
    }

    /// Ids of the tasks that were running when `stop` was called, in order.
    pub fn stopped(&self) -> Vec<String> {
        self.lock().stopped.clone()
    }

    /// Ids of the running tasks, sorted.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .tasks
            .iter()
            .filter(|(_, t)| t.observed.state == ObservedState::Running)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What the fake reports for one task.
    pub fn task(&self, task_id: &str) -> Option<Observed> {
        self.lock().tasks.get(task_id).map(|t| t.observed.clone())
    }

    /// Replaces a task's output. Returns false for an unknown task.
    pub fn set_logs(&self, task_id: &str, logs: &[u8]) -> bool {
        match self.lock().tasks.get_mut(task_id) {
            Some(t) => {
                t.logs = logs.to_vec();
                true
            }
            None => false,
        }
    }

    /// Uses `ms` as "now" for every timestamp from here on (a manual clock).
    pub fn set_now(&self, ms: u64) {
        self.lock().now = Some(ms);
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        self.lock().kind.unwrap_or(RuntimeKind::Process)
    }

    fn start<'a>(&'a self, task: &'a Task) -> RtFuture<'a, String> {
        Box::pin(async move {
            let mut inner = self.lock();
            let program = program_of(task);
            if program.is_empty() || inner.failing.contains(program) {
                return Err(RuntimeError::Invalid(format!(
                    "program {program:?} not found in PATH"
                )));
            }
            if let Some(t) = inner.tasks.get(&task.id) {
                return match t.observed.state {
                    ObservedState::Running => Ok(t.observed.runtime_id.clone()),
                    ObservedState::Exited { exit_code, .. } => Err(RuntimeError::Other(format!(
                        "task {} already ran and exited with code {exit_code}; remove it before starting it again",
                        task.id
                    ))),
                };
            }
            inner.next_pid += 1;
            inner.started += 1;
            let runtime_id = format!("fake-{}", inner.next_pid);
            let now = inner.now();
            inner.tasks.insert(
                task.id.clone(),
                FakeTask {
                    observed: Observed {
                        task_id: task.id.clone(),
                        runtime_id: runtime_id.clone(),
                        state: ObservedState::Running,
                        started_at: now,
                        health: None,
                    },
                    logs: Vec::new(),
                },
            );
            Ok(runtime_id)
        })
    }

    fn stop<'a>(&'a self, task_id: &'a str, _grace: Duration) -> RtFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = self.lock();
            let now = inner.now();
            let was_running = match inner.tasks.get_mut(task_id) {
                Some(t) if t.observed.state == ObservedState::Running => {
                    t.observed.state = ObservedState::Exited {
                        exit_code: STOPPED_EXIT_CODE,
                        finished_at: now,
                    };
                    true
                }
                _ => false,
            };
            if was_running {
                inner.stopped.push(task_id.to_string());
            }
            Ok(())
        })
    }

    fn list(&self) -> RtFuture<'_, Vec<Observed>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .tasks
                .values()
                .map(|t| t.observed.clone())
                .collect())
        })
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(async move {
            self.stop(task_id, Duration::ZERO).await?;
            self.lock().tasks.remove(task_id);
            Ok(())
        })
    }

    fn logs<'a>(&'a self, task_id: &'a str, tail: Option<usize>) -> RtFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let inner = self.lock();
            let t = inner
                .tasks
                .get(task_id)
                .ok_or_else(|| RuntimeError::Other(format!("no task {task_id} on this node")))?;
            Ok(match tail {
                None => t.logs.clone(),
                Some(n) => super::tail_lines(&t.logs, n).to_vec(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{ServiceSpec, TaskState, TaskStatus};

    fn task(id: &str, image: &str) -> Task {
        let spec = ServiceSpec::new("web", image);
        Task {
            id: id.to_string(),
            service_id: "svc1".into(),
            service_name: spec.name.clone(),
            slot: Some(1),
            node_id: None,
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at: 0,
            restarts: Vec::new(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn start_is_idempotent_and_counted_once() {
        block_on(async {
            let rt = FakeRuntime::new();
            let a = rt.start(&task("t1", "sleep")).await.expect("start");
            let b = rt.start(&task("t1", "sleep")).await.expect("start again");
            assert_eq!(a, b);
            assert_eq!(rt.started(), 1);
            assert_eq!(rt.running(), vec!["t1".to_string()]);
            let list = rt.list().await.expect("list");
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].state, ObservedState::Running);
        });
    }

    #[test]
    fn failing_programs_are_invalid() {
        block_on(async {
            let rt = FakeRuntime::new();
            rt.fail_start("nope");
            match rt.start(&task("t1", "nope")).await {
                Err(RuntimeError::Invalid(msg)) => assert!(msg.contains("\"nope\"")),
                other => panic!("expected Invalid, got {other:?}"),
            }
            assert_eq!(rt.started(), 0);
            assert!(rt.list().await.expect("list").is_empty());
        });
    }

    #[test]
    fn exits_stops_and_removes() {
        block_on(async {
            let rt = FakeRuntime::new();
            rt.set_now(1_000);
            rt.start(&task("t1", "sleep")).await.expect("start");
            rt.start(&task("t2", "sleep")).await.expect("start");
            assert!(rt.exit("t1", 3));
            assert!(!rt.exit("t1", 4), "an exited task cannot exit again");
            assert_eq!(
                rt.task("t1").map(|o| o.state),
                Some(ObservedState::Exited {
                    exit_code: 3,
                    finished_at: 1_000
                })
            );
            assert!(rt.start(&task("t1", "sleep")).await.is_err());

            rt.stop("t2", Duration::from_secs(1)).await.expect("stop");
            rt.stop("t2", Duration::from_secs(1))
                .await
                .expect("stop twice");
            rt.stop("unknown", Duration::from_secs(1))
                .await
                .expect("stop unknown");
            assert_eq!(rt.stopped(), vec!["t2".to_string()]);
            assert!(matches!(
                rt.task("t2").map(|o| o.state),
                Some(ObservedState::Exited {
                    exit_code: STOPPED_EXIT_CODE,
                    ..
                })
            ));

            rt.remove("t1").await.expect("remove");
            rt.remove("unknown").await.expect("remove unknown");
            assert_eq!(rt.list().await.expect("list").len(), 1);
            rt.start(&task("t1", "sleep"))
                .await
                .expect("start after remove");
            assert_eq!(rt.started(), 3);
        });
    }

    #[test]
    fn logs_and_clones_share_state() {
        block_on(async {
            let rt = FakeRuntime::with_kind(RuntimeKind::Docker);
            assert_eq!(rt.kind(), RuntimeKind::Docker);
            let other = rt.clone();
            rt.start(&task("t1", "sleep")).await.expect("start");
            assert!(other.set_logs("t1", b"a\nb\nc\n"));
            assert_eq!(rt.logs("t1", None).await.expect("logs"), b"a\nb\nc\n");
            assert_eq!(rt.logs("t1", Some(1)).await.expect("logs"), b"c\n");
            assert!(rt.logs("nope", None).await.is_err());
        });
    }
}
