//! Runtimes: how a node runs a task. The worker is the only caller; it owns
//! the decision of what should run, a runtime only does what it is told and
//! reports what it sees. Invariants every runtime keeps:
//! - at most one live instance per task id, also across agent restarts
//!   (`list` finds instances started by an earlier agent process);
//! - `stop` stops all of a task (its whole process group / container),
//!   gracefully first, forcibly after the grace period.

pub mod docker;
pub mod fake;
pub mod process;
pub mod procfs;
pub mod shim;

use skein_protocol::{RuntimeKind, Task};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type RtFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The task cannot start as specified (no such program or image): the
    /// worker reports the task rejected/failed with this message.
    #[error("{0}")]
    Invalid(String),
    #[error("runtime I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// What a runtime sees of one task instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub task_id: String,
    /// Container id, or the task's process id.
    pub runtime_id: String,
    pub state: ObservedState,
    /// Milliseconds since the epoch.
    pub started_at: u64,
    /// The runtime's own health verdict (Docker's healthcheck); None when the
    /// runtime does not check health (the worker probes process tasks itself).
    pub health: Option<skein_protocol::task::Health>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedState {
    Running,
    /// Exited with `exit_code` (128+signal when killed by a signal).
    Exited {
        exit_code: i32,
        finished_at: u64,
    },
}

pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    /// Whether the runtime runs a task's health check itself and reports it
    /// in [`Observed::health`] (Docker). If not, the worker probes.
    fn checks_health(&self) -> bool {
        false
    }
    /// Starts the task and returns its runtime id. Fails with `Invalid` when
    /// the spec cannot run here (program or image missing).
    fn start<'a>(&'a self, task: &'a Task) -> RtFuture<'a, String>;
    /// Stops the task: the stop signal (SIGTERM) to all of it, then SIGKILL
    /// after `grace`. Returns once it has exited. Stopping a task that is not
    /// running is not an error.
    fn stop<'a>(&'a self, task_id: &'a str, grace: Duration) -> RtFuture<'a, ()>;
    /// Every task instance this runtime has on this node, running or exited,
    /// including those started before the agent restarted.
    fn list(&self) -> RtFuture<'_, Vec<Observed>>;
    /// Forgets an exited task: removes its container or its state, keeps nothing running.
    fn remove<'a>(&'a self, task_id: &'a str) -> RtFuture<'a, ()>;
    /// The task's output (stdout and stderr), the last `tail` lines if given.
    fn logs<'a>(&'a self, task_id: &'a str, tail: Option<usize>) -> RtFuture<'a, Vec<u8>>;
    /// Host directories no task may bind (the agent's data dir: its cluster
    /// key, Raft log and task state), canonical.
    fn protected_paths(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

/// The last `n` lines of `buf` (a final line without a newline counts as a
/// line); all of `buf` when it has fewer.
pub fn tail_lines(buf: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    // A newline ending the buffer ends the last line; it does not start one.
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &buf[i + 1..];
            }
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn tail_lines_counts_lines_not_newlines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
        assert_eq!(tail_lines(b"", 3), b"");
        assert_eq!(tail_lines(b"\n\n", 1), b"\n");
    }
}
