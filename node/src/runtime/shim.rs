//! `skein shim`: the tiny supervisor that stays the parent of one process
//! task, so that its exit status is known even when the agent that started
//! it has died or restarted (containerd's shims do the same).
//!
//! Usage (built by `process.rs`, not by people):
//! `skein shim --task-dir DIR --grace-ms N [--stop-signal SIG] [--argv0 NAME] -- PROGRAM ARGS...`
//!
//! What it owns, all under the task dir (see `process.rs` for the layout):
//! - writes `shim.json` {pid, start_time, started_at} as its first act, then
//!   starts PROGRAM as the leader of a new process group, stdin /dev/null,
//!   stdout and stderr appended to `output.log`, and writes `child.json`;
//! - on SIGTERM or SIGINT it sends the stop signal (SIGTERM unless
//!   `--stop-signal`) to the child's whole process group, and SIGKILLs the
//!   group once the grace period has passed (the grace in `stop.json` if the
//!   agent wrote one, else `--grace-ms`);
//! - when the child exits it kills whatever is left of the task (its process
//!   group, its session, and orphans it adopted as a child subreaper), then
//!   writes `exit.json` {exit_code, finished_at} and exits.
//!
//! Invariants: every file is written atomically (tmp + rename, fsynced);
//! once `exit.json` exists no process of the task is left. No tokio here:
//! the shim is single-threaded, blocks the signals it handles and waits for
//! them with `sigtimedwait`, so it sleeps until something happens.

use super::procfs;
use crate::util::now_ms;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `{pid, start_time, started_at}` of the shim, written by the shim.
pub const SHIM_FILE: &str = "shim.json";
/// `{pid, start_time}` of the task's main process, written by the shim.
pub const CHILD_FILE: &str = "child.json";
/// `{exit_code, finished_at, error?}`, written once by the shim (or by the
/// agent when the shim died without writing it).
pub const EXIT_FILE: &str = "exit.json";
/// `{grace_ms}`, written by the agent just before it signals the shim to stop.
pub const STOP_FILE: &str = "stop.json";
/// The task's stdout and stderr.
pub const LOG_FILE: &str = "output.log";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: with the pid, the shim's identity.
    pub start_time: u64,
    /// Milliseconds since the epoch.
    pub started_at: u64,
    /// The kernel's boot id when the shim started: after a reboot the pid
    /// (and the session it names) may belong to anything.
    #[serde(default)]
    pub boot_id: String,
}

impl ShimRecord {
    /// The shim is running now: same boot, same pid, same start time.
    pub fn is_alive(&self) -> bool {
        procfs::same_boot(&self.boot_id) && procfs::alive(self.pid, self.start_time)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRecord {
    /// Also the task's process group id.
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, 128+signal when killed by a signal, -1 when unknown.
    pub exit_code: i32,
    pub finished_at: u64,
    /// Set when the program could not be started at all, or when the exit
    /// status was lost (the shim died); the text says what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub grace_ms: u64,
}

/// The part of the process runtime's `launch.json` the shim needs.
#[derive(Deserialize)]
struct LaunchFile {
    argv0: String,
    program: String,
    args: Vec<String>,
    grace_ms: u64,
    stop_signal: Option<String>,
}

/// Entry point of the hidden `skein shim` subcommand; `args` are the
/// arguments after `shim`. Returns the shim's exit code: 0 once the task's
/// exit has been recorded, 2 for bad arguments, 1 when recording failed.
pub fn run_shim(args: &[String]) -> i32 {
    let opts = match ShimOptions::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skein shim: {e}");
            eprintln!(
                "usage: skein shim --task-dir DIR --grace-ms N [--stop-signal SIG] [--argv0 NAME] -- PROGRAM [ARGS...]"
            );
            return 2;
        }
    };
    match supervise(&opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skein shim ({}): {e}", opts.task_dir.display());
            1
        }
    }
}

/// The parsed command line of `skein shim`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimOptions {
    pub task_dir: PathBuf,
    pub grace_ms: u64,
    pub stop_signal: i32,
    pub argv0: String,
    pub program: String,
    pub args: Vec<String>,
}

impl ShimOptions {
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut task_dir = None;
        let mut grace_ms = 10_000;
        let mut stop_signal = libc::SIGTERM;
        let mut argv0 = None;
        let mut it = args.iter();
        let mut rest = Vec::new();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--task-dir" => task_dir = Some(PathBuf::from(value("--task-dir")?)),
                "--grace-ms" => {
                    let v = value("--grace-ms")?;
                    grace_ms = v
                        .parse()
                        .map_err(|_| format!("--grace-ms {v:?} is not a number of milliseconds"))?;
                }
                "--stop-signal" => {
                    let v = value("--stop-signal")?;
                    stop_signal = parse_signal(&v).ok_or_else(|| {
                        format!("--stop-signal {v:?} is not a signal (use e.g. SIGTERM, INT or 15)")
                    })?;
                }
                "--argv0" => argv0 = Some(value("--argv0")?),
                "--" => {
                    rest.extend(it.by_ref().cloned());
                    break;
                }
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        let task_dir: PathBuf = task_dir.ok_or("--task-dir is required")?;
        if rest.is_empty() {
            // The agent's form: everything else is in the task dir's launch.json,
            // so `ps`/`pgrep -f` show the task's command line once, not twice.
            let path = task_dir.join("launch.json");
            let launch: LaunchFile = read_json(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .ok_or_else(|| format!("no program given after -- and no {}", path.display()))?;
            let stop_signal = match &launch.stop_signal {
                Some(s) => parse_signal(s)
                    .ok_or_else(|| format!("stop signal {s:?} in launch.json is not a signal"))?,
                None => stop_signal,
            };
            return Ok(ShimOptions {
                task_dir,
                grace_ms: launch.grace_ms,
                stop_signal,
                argv0: launch.argv0,
                program: launch.program,
                args: launch.args,
            });
        }
        let program = rest.remove(0);
        Ok(ShimOptions {
            task_dir,
            grace_ms,
            stop_signal,
            argv0: argv0.unwrap_or_else(|| program.clone()),
            program,
            args: rest,
        })
    }
}

/// A signal given as `SIGTERM`, `TERM` or `15` (names case-insensitive).
pub fn parse_signal(s: &str) -> Option<i32> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// The exit code of a `waitpid` status: the exit status, or 128+signal.
pub fn exit_code_of(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    }
}

/// Writes `value` as JSON to `path` atomically: a fsynced temporary file
/// renamed over the target, so readers see the old file or the whole new one.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable; best effort (not every fs allows it).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads a JSON record: None when the file does not exist or does not parse
/// (files are written atomically, so a bad file is damage, not a half write).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable runtime record");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The signals the shim waits for, blocked so they queue for `sigtimedwait`.
struct SignalSet(libc::sigset_t);

impl SignalSet {
    fn new(signals: &[i32]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        if unsafe { libc::sigemptyset(&mut set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for &s in signals {
            // SAFETY: as above.
            if unsafe { libc::sigaddset(&mut set, s) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }

    fn block(&self) -> io::Result<()> {
        // SAFETY: valid set; the shim is single-threaded.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    /// The next pending signal of the set, waiting at most `timeout`.
    fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: valid set and timespec; a null siginfo pointer is allowed.
        let r = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (r > 0).then_some(r)
    }
}

/// Runs in the task's process between fork and exec: only async-signal-safe calls.
fn child_pre_exec() -> io::Result<()> {
    // SAFETY: setpgid, sigemptyset, pthread_sigmask, signal and prctl are
    // async-signal-safe and touch only this (forked) process.
    unsafe {
        // Its own process group, so the whole task can be signalled at once.
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Start with no blocked signals (the shim blocks the ones it waits for).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // If the shim is killed, the task's main process goes too (its
        // leftovers are killed by the agent, which finds them by session).
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    Ok(())
}

/// Reaps every exited child (the task's main process and adopted orphans);
/// returns the wait status of `main` if it was among them.
fn reap_all(main: i32) -> Option<i32> {
    let mut main_status = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return main_status;
        }
        if r == main {
            main_status = Some(status);
        }
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Kills what is left of the task once its main process has exited: its
/// process group, anything else in the shim's session, and orphans the shim
/// adopted as subreaper (descendants that left the group with setsid).
fn kill_leftovers(me: i32, pgid: i32) {
    kill(-pgid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        reap_all(-1);
        let victims = procfs::processes_where(|s| {
            s.pid != me && (s.session == me || s.pgrp == pgid || s.ppid == me)
        });
        if victims.is_empty() || Instant::now() >= deadline {
            return;
        }
        for v in victims {
            kill(v.pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn supervise(o: &ShimOptions) -> io::Result<()> {
    let signals = SignalSet::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD])?;
    signals.block()?;
    // Orphaned descendants become our children, so they can be killed at the end.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    }
    // Our process name is "task-shim", not "skein": `pkill skein` or
    // `killall skein` aimed at the agent must not take the tasks with it.
    // (The full command line still says what this is.)
    const NAME: &[u8] = b"task-shim\0";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    let me = std::process::id() as i32;
    let my_start = procfs::start_time(me)
        .ok_or_else(|| io::Error::other("cannot read this process's /proc/self/stat"))?;
    write_json_atomic(
        &o.task_dir.join(SHIM_FILE),
        &ShimRecord {
            pid: me,
            start_time: my_start,
            started_at: now_ms(),
            boot_id: procfs::boot_id().unwrap_or_default().to_string(),
        },
    )?;

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.task_dir.join(LOG_FILE))?;
    let mut cmd = Command::new(&o.program);
    cmd.arg0(&o.argv0)
        .args(&o.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: child_pre_exec only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(child_pre_exec);
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            let msg = format!("cannot start program {:?}: {e}", o.program);
            let _ = writeln!(&log, "skein: {msg}");
            return write_json_atomic(
                &o.task_dir.join(EXIT_FILE),
                &ExitRecord {
                    exit_code: code,
                    finished_at: now_ms(),
                    error: Some(msg),
                },
            );
        }
    };
    let pid = child.id() as i32;
    // Reaped below with waitpid; std's handle is not needed any more.
    drop(child);
    let child_start = procfs::start_time(pid).unwrap_or(0);
    write_json_atomic(
        &o.task_dir.join(CHILD_FILE),
        &ChildRecord {
            pid,
            start_time: child_start,
        },
    )?;

    let mut stop_deadline: Option<Instant> = None;
    let mut killed = false;
    let status = loop {
        if let Some(status) = reap_all(pid) {
            break status;
        }
        let now = Instant::now();
        if let Some(deadline) = stop_deadline {
            if !killed && now >= deadline {
                kill(-pid, libc::SIGKILL);
                killed = true;
            }
        }
        let timeout = match stop_deadline {
            Some(d) if !killed => d.saturating_duration_since(now).min(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        let sig = signals.wait(timeout);
        // A first SIGTERM/SIGINT starts the stop; later ones change nothing.
        // SIGCHLD: reaped at the top of the loop. SIGHUP: ignored (the shim
        // has no terminal; a stray hangup must not orphan the task).
        let stop_requested = sig == Some(libc::SIGTERM) || sig == Some(libc::SIGINT);
        if stop_requested && stop_deadline.is_none() {
            let grace_ms = read_json::<StopRequest>(&o.task_dir.join(STOP_FILE))
                .ok()
                .flatten()
                .map(|r| r.grace_ms)
                .unwrap_or(o.grace_ms);
            kill(-pid, o.stop_signal);
            stop_deadline = Some(Instant::now() + Duration::from_millis(grace_ms));
        }
    };
    kill_leftovers(me, pid);
    write_json_atomic(
        &o.task_dir.join(EXIT_FILE),
        &ExitRecord {
            exit_code: exit_code_of(status),
            finished_at: now_ms(),
            error: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_command_line() {
        let o = ShimOptions::parse(&strings(&[
            "--task-dir",
            "/d/t1",
            "--grace-ms",
            "2500",
            "--stop-signal",
            "SIGINT",
            "--argv0",
            "sleep",
            "--",
            "/bin/sleep",
            "--",
            "60",
        ]))
        .expect("parses");
        assert_eq!(o.task_dir, PathBuf::from("/d/t1"));
        assert_eq!(o.grace_ms, 2500);
        assert_eq!(o.stop_signal, libc::SIGINT);
        assert_eq!(o.argv0, "sleep");
        assert_eq!(o.program, "/bin/sleep");
        assert_eq!(o.args, strings(&["--", "60"]));
    }

    #[test]
    fn refuses_bad_command_lines() {
        assert!(ShimOptions::parse(&strings(&["--", "x"])).is_err());
        assert!(ShimOptions::parse(&strings(&["--task-dir", "/d"])).is_err());
        assert!(ShimOptions::parse(&strings(&[
            "--task-dir",
            "/d",
            "--grace-ms",
            "soon",
            "--",
            "x"
        ]))
        .is_err());
        assert!(ShimOptions::parse(&strings(&[
            "--task-dir",
            "/d",
            "--stop-signal",
            "NOPE",
            "--",
            "x"
        ]))
        .is_err());
        assert!(ShimOptions::parse(&strings(&["--task-dir"])).is_err());
    }

    #[test]
    fn signals_by_name_short_name_and_number() {
        assert_eq!(parse_signal("SIGINT"), Some(libc::SIGINT));
        assert_eq!(parse_signal("int"), Some(libc::SIGINT));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn exit_codes_of_wait_statuses() {
        // Encoded as Linux does: exit status in bits 8-15, signal in bits 0-6.
        assert_eq!(exit_code_of(3 << 8), 3);
        assert_eq!(exit_code_of(libc::SIGKILL), 137);
        assert_eq!(exit_code_of(libc::SIGTERM), 143);
    }

    #[test]
    fn json_records_are_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(EXIT_FILE);
        assert_eq!(read_json::<ExitRecord>(&path).expect("read"), None);
        let rec = ExitRecord {
            exit_code: 3,
            finished_at: 42,
            error: None,
        };
        write_json_atomic(&path, &rec).expect("write");
        assert_eq!(read_json::<ExitRecord>(&path).expect("read"), Some(rec));
        assert!(!dir.path().join("exit.json.tmp").exists());
        fs::write(&path, b"{not json").expect("write");
        assert_eq!(read_json::<ExitRecord>(&path).expect("read"), None);
    }
}
