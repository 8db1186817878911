//! The process runtime: a task is a plain program run under a `skein shim`
//! supervisor (see `shim.rs`), the embedded default where no Docker engine
//! answers. The worker is the only caller.
//!
//! On-disk layout, one directory per task under `<data_dir>/tasks/`:
//! ```text
//! <data_dir>/tasks/.start.lock     flock taken while a task is being started
//! <data_dir>/tasks/<task_id>/
//!     launch.json   what was started (program, args, grace, stop signal)   agent
//!     shim.log      the shim's own stderr (why it failed, if it did)       shim
//!     shim.json     {pid, start_time, started_at} of the shim              shim
//!     child.json    {pid, start_time} of the task's main process           shim
//!     output.log    the task's stdout and stderr, appended                 task
//!     stop.json     {grace_ms} asked for by the last `stop`                agent
//!     exit.json     {exit_code, finished_at, error?}: the task has ended   shim (agent if the shim died)
//! ```
//!
//! Invariants:
//! - A task is Running exactly when its shim is alive (pid *and* start time
//!   from /proc match `shim.json`: a recycled pid is never taken for ours) and
//!   there is no `exit.json`. Nothing is kept in memory, so a fresh
//!   `ProcessRuntime` on the same data dir (an agent restart) sees the same
//!   tasks with the same runtime ids: it adopts them.
//! - At most one instance per task id: `start` holds `.start.lock` (an
//!   flock, so also across processes) while it checks and starts, and
//!   returns the live instance's runtime id instead of starting another.
//! - The shim is its own session leader (setsid) and the task its own
//!   process group inside that session, so killing or restarting the agent
//!   (or its process group) does not touch tasks, and stopping a task reaches
//!   all of it. When a shim dies without `exit.json` (e.g. `kill -9`), every
//!   process left in its session is killed and the task is recorded Exited
//!   (137 if something had to be killed, -1 if its status is simply lost).
//! - The environment of a task is NOT the agent's: it gets a minimal base
//!   (PATH, HOME, and LANG / LC_ALL / TZ when the agent has them), then the
//!   service's `env`, then SKEIN_TASK_ID, SKEIN_TASK_SLOT (empty for global
//!   services) and SKEIN_SERVICE_NAME. Credentials in the agent's environment
//!   do not leak into tasks.
//!
//! Limits: a descendant that leaves the task's session with setsid is found
//! only while the shim lives (the shim is a child subreaper and kills its
//! adopted orphans); cgroups would close that gap. Logs are not rotated. If
//! the agent runs under systemd, use `KillMode=process` so stopping the unit
//! leaves the shims (and tasks) running.

use super::procfs;
use super::shim::{
    read_json, write_json_atomic, ChildRecord, ExitRecord, ShimRecord, StopRequest, CHILD_FILE,
    EXIT_FILE, LOG_FILE, SHIM_FILE, STOP_FILE,
};
use super::{Observed, ObservedState, RtFuture, Runtime, RuntimeError};
use crate::util::now_ms;
use serde::{Deserialize, Serialize};
use skein_protocol::{RuntimeKind, Task};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The launch record of a task, written by the agent before the shim starts.
const LAUNCH_FILE: &str = "launch.json";
const SHIM_LOG_FILE: &str = "shim.log";
const START_LOCK_FILE: &str = ".start.lock";
/// How long `start` waits for the shim to start the program.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long after `stop`'s grace period the shim has to report the exit
/// before the agent kills the task's session itself.
const STOP_SLACK: Duration = Duration::from_secs(5);
/// How long `start` may wait for another start to release the lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_GRACE_MS: u64 = 10_000;

/// Runs tasks as supervised processes; state lives on disk under
/// `<data_dir>/tasks/`, so any number of instances on one data dir agree.
#[derive(Clone, Debug)]
pub struct ProcessRuntime {
    tasks_dir: PathBuf,
    shim_exe: PathBuf,
    base_env: BTreeMap<String, String>,
}

/// What `start` launched, as written to `launch.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub task_id: String,
    pub service_name: String,
    /// argv[0] as the user wrote it (`sleep`): what `ps` shows.
    pub argv0: String,
    /// The program's resolved path.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub working_dir: PathBuf,
    pub grace_ms: u64,
    pub stop_signal: Option<String>,
    pub env: BTreeMap<String, String>,
    pub created_at: u64,
}

/// A task directory as found on disk.
#[derive(Debug)]
enum Disk {
    Missing,
    /// The directory exists but the shim has not recorded itself yet.
    Starting,
    Live {
        shim: ShimRecord,
        child: Option<ChildRecord>,
    },
    Exited {
        shim: Option<ShimRecord>,
        child: Option<ChildRecord>,
        exit: ExitRecord,
    },
    /// The shim is gone (or never came up) and left no exit status.
    Lost {
        shim: Option<ShimRecord>,
    },
}

impl ProcessRuntime {
    /// A runtime keeping its state under `<data_dir>/tasks/`, starting
    /// shims with `shim_exe` (the `skein` binary: `std::env::current_exe()`).
    pub fn new(data_dir: &Path, shim_exe: PathBuf) -> Result<Self, RuntimeError> {
        let tasks = data_dir.join("tasks");
        fs::create_dir_all(&tasks)?;
        let tasks_dir = fs::canonicalize(&tasks)?;
        if !shim_exe.is_file() {
            return Err(RuntimeError::Other(format!(
                "the process runtime needs the skein binary to run its shims, but {} is not a file",
                shim_exe.display()
            )));
        }
        Ok(ProcessRuntime {
            tasks_dir,
            shim_exe,
            base_env: base_env(|k| std::env::var(k).ok()),
        })
    }

    /// `<data_dir>/tasks` (canonical).
    pub fn tasks_dir(&self) -> &Path {
        &self.tasks_dir
    }

    /// The directory of `task_id`; refuses ids that are not a plain file name.
    pub fn task_dir(&self, task_id: &str) -> Result<PathBuf, RuntimeError> {
        check_task_id(task_id)?;
        Ok(self.tasks_dir.join(task_id))
    }

    /// SIGKILLs every process of every task of this data dir at once, shims
    /// included, without waiting or recording anything. For test teardown
    /// and emergencies; the next `list` records the tasks as exited.
    pub fn kill_all_now(&self) {
        let Ok(entries) = fs::read_dir(&self.tasks_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(Some(s)) = read_json::<ShimRecord>(&dir.join(SHIM_FILE)) else {
                continue;
            };
            if let Ok(Some(c)) = read_json::<ChildRecord>(&dir.join(CHILD_FILE)) {
                if procfs::same_boot(&s.boot_id) && procfs::alive(c.pid, c.start_time) {
                    kill(-c.pid, libc::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while session_is_ours(&s)
                && procfs::signal_session(s.pid, libc::SIGKILL, true) > 0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    async fn start_task(&self, task: &Task) -> Result<String, RuntimeError> {
        let dir = self.task_dir(&task.id)?;
        let launch = plan_launch(task, &dir, &self.base_env)?;
        let _lock = StartLock::acquire(&self.tasks_dir).await?;

        let waiting_since = Instant::now();
        loop {
            match inspect(&dir)? {
                Disk::Missing => break,
                Disk::Live { shim, child } => {
                    let id = runtime_id(Some(&shim), child.as_ref());
                    debug!(task_id = %task.id, runtime_id = %id, "task already running: adopted");
                    return Ok(id);
                }
                Disk::Exited { exit, .. } => return Err(already_ran(&task.id, &exit)),
                Disk::Lost { shim } => {
                    self.finalize_lost(&dir, shim.as_ref(), "its supervisor (skein shim) died")
                        .await?;
                    let exit =
                        read_json::<ExitRecord>(&dir.join(EXIT_FILE))?.unwrap_or(ExitRecord {
                            exit_code: -1,
                            finished_at: now_ms(),
                            error: None,
                        });
                    return Err(already_ran(&task.id, &exit));
                }
                Disk::Starting if waiting_since.elapsed() < START_WAIT => {
                    tokio::time::sleep(POLL).await;
                }
                Disk::Starting => {
                    // An earlier start (by an agent that died meanwhile) never
                    // got its shim going: nothing of it runs; start afresh.
                    warn!(task_id = %task.id, "removing the remains of an interrupted start");
                    fs::remove_dir_all(&dir)?;
                    break;
                }
            }
        }

        fs::create_dir_all(&dir)?;
        write_json_atomic(&dir.join(LAUNCH_FILE), &launch)?;
        let shim_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(SHIM_LOG_FILE))?;
        // The shim reads the program, arguments, grace period and stop signal
        // from launch.json: its own command line stays short and does not
        // repeat the task's (so `pgrep -f 'sleep 3601'` finds the task once).
        let mut cmd = tokio::process::Command::new(&self.shim_exe);
        cmd.arg("shim")
            .arg("--task-dir")
            .arg(&dir)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.working_dir)
            .stdin(Stdio::null())
            .stdout(shim_log.try_clone()?)
            .stderr(shim_log)
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe. A session of its own takes the
        // shim out of the agent's process group and terminal: it survives the
        // agent being killed, Ctrl-C included.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut shim = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(RuntimeError::Other(format!(
                    "cannot run the skein shim {}: {e}",
                    self.shim_exe.display()
                )));
            }
        };
        let shim_pid = shim.id().map(|p| p as i32).unwrap_or(0);

        // Wait until the shim has started the program (child.json), or
        // could not (exit.json), or died.
        let deadline = Instant::now() + START_WAIT;
        let outcome = loop {
            if let Some(exit) = read_json::<ExitRecord>(&dir.join(EXIT_FILE))? {
                break StartOutcome::Exited(exit);
            }
            if let Some(child) = read_json::<ChildRecord>(&dir.join(CHILD_FILE))? {
                break StartOutcome::Started(child);
            }
            if let Some(status) = shim.try_wait()? {
                match read_json::<ExitRecord>(&dir.join(EXIT_FILE))? {
                    Some(exit) => break StartOutcome::Exited(exit),
                    None => break StartOutcome::ShimFailed(status.to_string()),
                }
            }
            if Instant::now() >= deadline {
                break StartOutcome::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // The agent reaps the shim while it is still its parent; after an
        // agent restart the shim's parent is init (or a subreaper).
        if matches!(outcome, StartOutcome::TimedOut) {
            let _ = shim.start_kill();
            procfs::signal_session(shim_pid, libc::SIGKILL, true);
        }
        tokio::spawn(async move {
            let _ = shim.wait().await;
        });

        match outcome {
            StartOutcome::Started(child) => {
                info!(task_id = %task.id, pid = child.pid, shim_pid, program = %launch.program.display(), "started task");
                Ok(child.pid.to_string())
            }
            StartOutcome::Exited(ExitRecord {
                error: Some(msg), ..
            }) => {
                let _ = fs::remove_dir_all(&dir);
                Err(RuntimeError::Invalid(format!("task {}: {msg}", task.id)))
            }
            StartOutcome::Exited(exit) => {
                // Started and already finished: `list` reports the exit.
                let child = read_json::<ChildRecord>(&dir.join(CHILD_FILE))?;
                info!(task_id = %task.id, exit_code = exit.exit_code, "task started and exited at once");
                Ok(child.map(|c| c.pid).unwrap_or(shim_pid).to_string())
            }
            StartOutcome::ShimFailed(status) => {
                let log = fs::read(dir.join(SHIM_LOG_FILE)).unwrap_or_default();
                let log = String::from_utf8_lossy(&log).trim().to_string();
                let _ = fs::remove_dir_all(&dir);
                Err(RuntimeError::Other(format!(
                    "the skein shim for task {} {status} before starting it: {log}",
                    task.id
                )))
            }
            StartOutcome::TimedOut => {
                let _ = fs::remove_dir_all(&dir);
                Err(RuntimeError::Other(format!(
                    "the skein shim for task {} did not start it within {}s (is the machine overloaded?)",
                    task.id,
                    START_WAIT.as_secs()
                )))
            }
        }
    }

    async fn stop_task(&self, task_id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let dir = self.task_dir(task_id)?;
        let waiting_since = Instant::now();
        loop {
            match inspect(&dir)? {
                Disk::Missing | Disk::Exited { .. } => return Ok(()),
                Disk::Starting if waiting_since.elapsed() < START_WAIT => {
                    tokio::time::sleep(POLL).await;
                }
                Disk::Starting => {
                    return self
                        .finalize_lost(&dir, None, "its supervisor (skein shim) never started")
                        .await
                }
                Disk::Lost { shim } => {
                    return self
                        .finalize_lost(&dir, shim.as_ref(), "its supervisor (skein shim) died")
                        .await
                }
                Disk::Live { shim, .. } => {
                    return self.stop_live(task_id, &dir, &shim, grace).await
                }
            }
        }
    }

    async fn stop_live(
        &self,
        task_id: &str,
        dir: &Path,
        shim: &ShimRecord,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        write_json_atomic(&dir.join(STOP_FILE), &StopRequest { grace_ms })?;
        if shim.is_alive() {
            kill(shim.pid, libc::SIGTERM);
        }
        info!(task_id, shim_pid = shim.pid, grace_ms, "stopping task");
        let deadline = Instant::now() + grace + STOP_SLACK;
        loop {
            if dir.join(EXIT_FILE).exists() {
                // Recorded; give the shim a moment to finish exiting.
                let gone_by = Instant::now() + Duration::from_secs(1);
                while shim.is_alive() && Instant::now() < gone_by {
                    tokio::time::sleep(POLL).await;
                }
                return Ok(());
            }
            if !shim.is_alive() {
                break;
            }
            if Instant::now() >= deadline {
                warn!(
                    task_id,
                    shim_pid = shim.pid,
                    "task did not stop in time: killing it"
                );
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        self.finalize_lost(
            dir,
            Some(shim),
            "it did not stop within its grace period and was killed by skein",
        )
        .await
    }

    /// Makes sure nothing of a task whose shim is gone (or stuck) still runs,
    /// and records it as exited if the shim did not.
    async fn finalize_lost(
        &self,
        dir: &Path,
        shim: Option<&ShimRecord>,
        why: &str,
    ) -> Result<(), RuntimeError> {
        let mut killed = false;
        if let Some(shim) = shim {
            let deadline = Instant::now() + Duration::from_secs(2);
            while session_is_ours(shim) {
                if procfs::signal_session(shim.pid, libc::SIGKILL, true) == 0 {
                    break;
                }
                killed = true;
                if Instant::now() >= deadline {
                    warn!(dir = %dir.display(), "task processes survive SIGKILL");
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if read_json::<ExitRecord>(&dir.join(EXIT_FILE))?.is_none() {
            let exit = ExitRecord {
                exit_code: if killed { 128 + libc::SIGKILL } else { -1 },
                finished_at: now_ms(),
                error: Some(format!("exit status unknown: {why}")),
            };
            warn!(dir = %dir.display(), exit_code = exit.exit_code, "{why}");
            write_json_atomic(&dir.join(EXIT_FILE), &exit)?;
        }
        Ok(())
    }

    async fn observe(&self, task_id: &str, dir: &Path) -> Result<Option<Observed>, RuntimeError> {
        let disk = match inspect(dir)? {
            Disk::Lost { shim } => {
                self.finalize_lost(dir, shim.as_ref(), "its supervisor (skein shim) died")
                    .await?;
                inspect(dir)?
            }
            other => other,
        };
        Ok(match disk {
            Disk::Missing | Disk::Starting | Disk::Lost { .. } => None,
            Disk::Live { shim, child } => Some(Observed {
                task_id: task_id.to_string(),
                runtime_id: runtime_id(Some(&shim), child.as_ref()),
                state: ObservedState::Running,
                started_at: shim.started_at,
                health: None,
            }),
            Disk::Exited { shim, child, exit } => Some(Observed {
                task_id: task_id.to_string(),
                runtime_id: runtime_id(shim.as_ref(), child.as_ref()),
                state: ObservedState::Exited {
                    exit_code: exit.exit_code,
                    finished_at: exit.finished_at,
                },
                started_at: shim.map(|s| s.started_at).unwrap_or(0),
                health: None,
            }),
        })
    }

    async fn list_tasks(&self) -> Result<Vec<Observed>, RuntimeError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.tasks_dir)?.flatten() {
            let name = entry.file_name();
            let Some(task_id) = name.to_str() else {
                continue;
            };
            if check_task_id(task_id).is_err() || !entry.path().is_dir() {
                continue;
            }
            match self.observe(task_id, &entry.path()).await {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                Err(e) => warn!(task_id, error = %e, "cannot read task state"),
            }
        }
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(out)
    }

    async fn remove_task(&self, task_id: &str) -> Result<(), RuntimeError> {
        let dir = self.task_dir(task_id)?;
        if !dir.exists() {
            return Ok(());
        }
        let grace_ms = read_json::<Launch>(&dir.join(LAUNCH_FILE))?
            .map(|l| l.grace_ms)
            .unwrap_or(DEFAULT_GRACE_MS);
        self.stop_task(task_id, Duration::from_millis(grace_ms))
            .await?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => {
                debug!(task_id, "removed task");
                Ok(())
            }
        }
    }

    fn read_logs(&self, task_id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        let dir = self.task_dir(task_id)?;
        if !dir.is_dir() {
            return Err(RuntimeError::Other(format!(
                "no task {task_id} on this node"
            )));
        }
        let mut file = match File::open(dir.join(LOG_FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        match tail {
            None => {
                let mut buf = Vec::new();
                file.read_to_end(&mut buf)?;
                Ok(buf)
            }
            Some(n) => Ok(read_tail(&mut file, n)?),
        }
    }
}

enum StartOutcome {
    Started(ChildRecord),
    Exited(ExitRecord),
    ShimFailed(String),
    TimedOut,
}

impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }
    /// The data dir (`tasks_dir` is `<data dir>/tasks`, canonical).
    fn protected_paths(&self) -> Vec<PathBuf> {
        self.tasks_dir
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect()
    }
    fn start<'a>(&'a self, task: &'a Task) -> RtFuture<'a, String> {
        Box::pin(self.start_task(task))
    }
    fn stop<'a>(&'a self, task_id: &'a str, grace: Duration) -> RtFuture<'a, ()> {
        Box::pin(self.stop_task(task_id, grace))
    }
    fn list(&self) -> RtFuture<'_, Vec<Observed>> {
        Box::pin(self.list_tasks())
    }
    fn remove<'a>(&'a self, task_id: &'a str) -> RtFuture<'a, ()> {
        Box::pin(self.remove_task(task_id))
    }
    fn logs<'a>(&'a self, task_id: &'a str, tail: Option<usize>) -> RtFuture<'a, Vec<u8>> {
        Box::pin(async move { self.read_logs(task_id, tail) })
    }
}

fn already_ran(task_id: &str, exit: &ExitRecord) -> RuntimeError {
    RuntimeError::Other(format!(
        "task {task_id} already ran and exited with code {}; remove it before starting it again",
        exit.exit_code
    ))
}

/// The runtime id of a task: its main process's pid, or the shim's until
/// the program has started.
fn runtime_id(shim: Option<&ShimRecord>, child: Option<&ChildRecord>) -> String {
    match (child, shim) {
        (Some(c), _) => c.pid.to_string(),
        (None, Some(s)) => s.pid.to_string(),
        (None, None) => String::new(),
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether the session named by the shim's pid can only hold this task's
/// processes: same boot, and the shim is alive with its recorded start time
/// or its pid is free (Linux keeps a pid out of reuse while it names a
/// session).
fn session_is_ours(shim: &ShimRecord) -> bool {
    if !procfs::same_boot(&shim.boot_id) {
        return false;
    }
    match procfs::stat(shim.pid) {
        None => true,
        Some(s) => s.start_time == shim.start_time,
    }
}

fn inspect(dir: &Path) -> Result<Disk, RuntimeError> {
    if !dir.is_dir() {
        return Ok(Disk::Missing);
    }
    let exit = read_json::<ExitRecord>(&dir.join(EXIT_FILE))?;
    let shim = read_json::<ShimRecord>(&dir.join(SHIM_FILE))?;
    let child = read_json::<ChildRecord>(&dir.join(CHILD_FILE))?;
    if let Some(exit) = exit {
        return Ok(Disk::Exited { shim, child, exit });
    }
    match shim {
        Some(s) if s.is_alive() => Ok(Disk::Live { shim: s, child }),
        shim => {
            // The shim may have written exit.json and exited since we looked.
            if let Some(exit) = read_json::<ExitRecord>(&dir.join(EXIT_FILE))? {
                let child = read_json::<ChildRecord>(&dir.join(CHILD_FILE))?;
                return Ok(Disk::Exited { shim, child, exit });
            }
            if shim.is_some() {
                return Ok(Disk::Lost { shim });
            }
            // No shim.json: a start in progress, or one that was interrupted.
            let since = fs::metadata(dir.join(LAUNCH_FILE))
                .or_else(|_| fs::metadata(dir))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if since < START_WAIT {
                Ok(Disk::Starting)
            } else {
                Ok(Disk::Lost { shim: None })
            }
        }
    }
}

/// Task ids name directories: a plain file name, nothing else.
fn check_task_id(task_id: &str) -> Result<(), RuntimeError> {
    let ok = !task_id.is_empty()
        && task_id.len() <= 128
        && !task_id.starts_with('.')
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "task id {task_id:?} cannot name a task directory: use letters, digits, '-', '_' and '.'"
        )))
    }
}

/// The environment every task starts from (see the module header).
fn base_env(get: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        get("PATH")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_PATH.to_string()),
    );
    env.insert(
        "HOME".to_string(),
        get("HOME")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    );
    for key in ["LANG", "LC_ALL", "TZ"] {
        if let Some(v) = get(key) {
            env.insert(key.to_string(), v);
        }
    }
    env
}

/// What to run for `task`, checked before anything starts: the program is
/// `entrypoint[0]` if there is an entrypoint, else the image; a bare name is
/// looked up in the task's PATH.
pub fn plan_launch(
    task: &Task,
    task_dir: &Path,
    base: &BTreeMap<String, String>,
) -> Result<Launch, RuntimeError> {
    let spec = &task.spec;
    let invalid = |msg: String| RuntimeError::Invalid(msg);
    let mut argv: Vec<String> = if spec.entrypoint.is_empty() {
        vec![spec.image.clone()]
    } else {
        spec.entrypoint.clone()
    };
    argv.extend(spec.command.iter().cloned());
    let argv0 = argv.remove(0);
    if argv0.trim().is_empty() {
        return Err(invalid(format!(
            "service {:?} has no program to run: set its image (the program) or entrypoint",
            spec.name
        )));
    }
    if let Some(bad) = std::iter::once(&argv0)
        .chain(argv.iter())
        .find(|a| a.contains('\0'))
    {
        return Err(invalid(format!("argument {bad:?} contains a NUL byte")));
    }
    // A process binds its own ports: nothing can map one port to another.
    if let Some(p) = spec
        .ports
        .iter()
        .find(|p| p.published.is_some_and(|pp| pp != p.target))
    {
        return Err(invalid(format!(
            "the process runtime cannot map published port {} to target port {}: the program \
             listens on the node's port itself, so publish {1}:{1} (and make the program listen \
             on {1}) or use the Docker runtime",
            p.published.unwrap_or(0),
            p.target
        )));
    }

    let mut env = base.clone();
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!(
                "environment variable {k:?} of service {:?} is not valid: names are non-empty without '=', and neither may hold NUL",
                spec.name
            )));
        }
        env.insert(k.clone(), v.clone());
    }
    env.insert("SKEIN_TASK_ID".into(), task.id.clone());
    env.insert(
        "SKEIN_TASK_SLOT".into(),
        task.slot.map(|s| s.to_string()).unwrap_or_default(),
    );
    env.insert("SKEIN_SERVICE_NAME".into(), task.service_name.clone());

    let working_dir = match &spec.working_dir {
        None => task_dir.to_path_buf(),
        Some(w) => {
            let p = PathBuf::from(w);
            if !p.is_absolute() {
                return Err(invalid(format!(
                    "working_dir {w:?} of service {:?} must be an absolute path",
                    spec.name
                )));
            }
            if !p.is_dir() {
                return Err(invalid(format!(
                    "working_dir {w:?} of service {:?} is not a directory on this node",
                    spec.name
                )));
            }
            p
        }
    };

    let program = if argv0.contains('/') {
        let p = working_dir.join(&argv0);
        if !is_executable(&p) {
            return Err(invalid(format!(
                "program {argv0:?} not found or not executable"
            )));
        }
        p
    } else {
        let path = env.get("PATH").map(String::as_str).unwrap_or(DEFAULT_PATH);
        find_in_path(&argv0, path)
            .ok_or_else(|| invalid(format!("program {argv0:?} not found in PATH")))?
    };

    if let Some(sig) = &spec.stop_signal {
        if super::shim::parse_signal(sig).is_none() {
            return Err(invalid(format!(
                "stop_signal {sig:?} of service {:?} is not a signal: use a name like SIGTERM or INT, or a number",
                spec.name
            )));
        }
    }

    Ok(Launch {
        task_id: task.id.clone(),
        service_name: task.service_name.clone(),
        argv0,
        program,
        args: argv,
        working_dir,
        grace_ms: spec.stop_grace_period.as_millis(),
        stop_signal: spec.stop_signal.clone(),
        env,
        created_at: now_ms(),
    })
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `name` looked up in the directories of `path` (`:`-separated, empty
/// entries skipped: a task's cwd is not a search directory).
pub fn find_in_path(name: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_executable(p))
}

/// The last `n` lines of `file`, reading only as much of its end as needed.
fn read_tail(file: &mut File, n: usize) -> io::Result<Vec<u8>> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.seek(SeekFrom::End(0))?;
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
        // n lines need n newlines before them, plus the one ending the file.
        let need = n + usize::from(buf.last() == Some(&b'\n'));
        if buf.iter().filter(|b| **b == b'\n').count() >= need {
            break;
        }
    }
    Ok(super::tail_lines(&buf, n).to_vec())
}

/// The flock that serialises starts (across processes too); released when
/// dropped (closing the file releases the lock).
struct StartLock {
    _file: File,
}

impl StartLock {
    async fn acquire(tasks_dir: &Path) -> Result<Self, RuntimeError> {
        let path = tasks_dir.join(START_LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(StartLock { _file: file });
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => return Err(err.into()),
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Other(format!(
                    "{} has been locked by another start for {}s",
                    path.display(),
                    LOCK_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_protocol::{ServiceSpec, TaskState, TaskStatus};

    fn task(id: &str, spec: ServiceSpec) -> Task {
        Task {
            id: id.to_string(),
            service_id: "svc1".into(),
            service_name: spec.name.clone(),
            slot: Some(2),
            node_id: None,
            spec_version: 1,
            spec,
            desired_state: TaskState::Running,
            status: TaskStatus::default(),
            created_at: 0,
            restarts: Vec::new(),
        }
    }

    fn base() -> BTreeMap<String, String> {
        base_env(|k| match k {
            "PATH" => Some(DEFAULT_PATH.to_string()),
            "HOME" => Some("/root".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("leak".into()),
            _ => None,
        })
    }

    #[test]
    fn image_is_the_program_and_command_its_arguments() {
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.command = vec!["3601".into()];
        let l =
            plan_launch(&task("t1", spec), Path::new("/data/tasks/t1"), &base()).expect("plans");
        assert_eq!(l.argv0, "sleep");
        assert!(l.program.is_absolute() && l.program.ends_with("sleep"));
        assert_eq!(l.args, vec!["3601".to_string()]);
        assert_eq!(l.working_dir, PathBuf::from("/data/tasks/t1"));
        assert_eq!(l.grace_ms, 10_000);
    }

    #[test]
    fn entrypoint_overrides_the_image() {
        let mut spec = ServiceSpec::new("web", "some/image:1");
        spec.entrypoint = vec!["sh".into(), "-c".into()];
        spec.command = vec!["echo hi".into()];
        let l = plan_launch(&task("t1", spec), Path::new("/tmp"), &base()).expect("plans");
        assert_eq!(l.argv0, "sh");
        assert_eq!(l.args, vec!["-c".to_string(), "echo hi".to_string()]);
    }

    #[test]
    fn a_missing_program_is_invalid_and_named() {
        let spec = ServiceSpec::new("web", "no-such-program-skein-test");
        match plan_launch(&task("t1", spec), Path::new("/tmp"), &base()) {
            Err(RuntimeError::Invalid(msg)) => {
                assert_eq!(
                    msg,
                    "program \"no-such-program-skein-test\" not found in PATH"
                )
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let spec = ServiceSpec::new("web", "/no/such/program");
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
        let spec = ServiceSpec::new("web", "");
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn the_task_path_is_searched() {
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.env.insert("PATH".into(), "/nonexistent".into());
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn environment_is_minimal_plus_spec_plus_skein_vars() {
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.env.insert("FOO".into(), "bar".into());
        spec.env.insert("HOME".into(), "/srv".into());
        spec.env.insert("SKEIN_TASK_ID".into(), "spoofed".into());
        let l = plan_launch(&task("t1", spec), Path::new("/tmp"), &base()).expect("plans");
        assert_eq!(l.env.get("FOO").map(String::as_str), Some("bar"));
        assert_eq!(l.env.get("HOME").map(String::as_str), Some("/srv"));
        assert_eq!(l.env.get("SKEIN_TASK_ID").map(String::as_str), Some("t1"));
        assert_eq!(l.env.get("SKEIN_TASK_SLOT").map(String::as_str), Some("2"));
        assert_eq!(
            l.env.get("SKEIN_SERVICE_NAME").map(String::as_str),
            Some("web")
        );
        assert!(!l.env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert!(l.env.contains_key("PATH"));
    }

    #[test]
    fn bad_working_dir_stop_signal_and_env_are_invalid() {
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.working_dir = Some("relative/dir".into());
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.working_dir = Some("/no/such/dir/skein".into());
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.stop_signal = Some("SIGBOGUS".into());
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
        let mut spec = ServiceSpec::new("web", "sleep");
        spec.env.insert("A=B".into(), "x".into());
        assert!(matches!(
            plan_launch(&task("t1", spec), Path::new("/tmp"), &base()),
            Err(RuntimeError::Invalid(_))
        ));
    }

    #[test]
    fn task_ids_must_be_plain_names() {
        assert!(check_task_id("abc-123_x.y").is_ok());
        for bad in ["", ".", "..", "../etc", "a/b", ".start.lock", "a b"] {
            assert!(check_task_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tail_reads_only_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&path, &text).expect("write");
        let mut f = File::open(&path).expect("open");
        assert_eq!(
            read_tail(&mut f, 2).expect("tail"),
            b"line 19998\nline 19999\n"
        );
        let mut f = File::open(&path).expect("open");
        assert_eq!(read_tail(&mut f, 100_000).expect("tail"), text.as_bytes());
        let mut f = File::open(&path).expect("open");
        assert_eq!(read_tail(&mut f, 0).expect("tail"), b"");
    }
}
