//! Reading Linux `/proc` for the process runtime: a process's identity (pid
//! plus start time, so a recycled pid is never mistaken for ours), its
//! process group and session, and signalling everything in one session.
//!
//! Invariants: nothing here trusts a bare pid. [`alive`] is true only for a
//! running (not zombie) process whose start time matches the one recorded
//! when it was started. Used by the shim (`shim.rs`) and the agent side
//! (`process.rs`); tests may use it to count processes.

use std::fs;

/// The fields of `/proc/PID/stat` the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Field 22: clock ticks since boot when the process started.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Parses the text of `/proc/PID/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).copied();
    Some(ProcStat {
        pid,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
    })
}

/// The stat of `pid`, or None when there is no such process (or /proc is unreadable).
pub fn stat(pid: i32) -> Option<ProcStat> {
    if pid <= 0 {
        return None;
    }
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The start time (field 22) of `pid`.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// True when `pid` is a live (not zombie) process that started at `start_time`.
pub fn alive(pid: i32, start_time: u64) -> bool {
    matches!(stat(pid), Some(s) if !s.is_zombie() && s.start_time == start_time)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once. A pid and
/// start time recorded during another boot say nothing about this one.
pub fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// Whether a record made with `recorded` boot id belongs to this boot (an
/// empty or unreadable id counts as this boot).
pub fn same_boot(recorded: &str) -> bool {
    recorded.is_empty()
        || match boot_id() {
            Some(b) => b == recorded,
            None => true,
        }
}

/// Every pid in /proc (empty if /proc is unreadable).
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// Every live (not zombie) process matching `pred`.
pub fn processes_where(pred: impl Fn(&ProcStat) -> bool) -> Vec<ProcStat> {
    all_pids()
        .into_iter()
        .filter_map(stat)
        .filter(|s| !s.is_zombie() && pred(s))
        .collect()
}

/// The argv of `pid` (empty when unreadable, e.g. a zombie or kernel thread).
pub fn cmdline(pid: i32) -> Vec<String> {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) => bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Sends `sig` to every live process of session `sid` (the leader included
/// when `include_leader`), except the calling process. Returns how many were
/// signalled.
///
/// Only call this for a session known to be a task's: its leader (the shim)
/// verified alive by pid and start time, or dead (Linux does not hand out a
/// pid again while it still names a session or process group, so members of
/// a dead shim's session are that task's processes).
pub fn signal_session(sid: i32, sig: i32, include_leader: bool) -> usize {
    if sid <= 1 {
        return 0;
    }
    let me = std::process::id() as i32;
    let victims =
        processes_where(|s| s.session == sid && s.pid != me && (include_leader || s.pid != sid));
    for v in &victims {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(v.pid, sig);
        }
    }
    victims.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.session, 4242);
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn boot_ids_compare() {
        let b = boot_id().expect("boot id").to_string();
        assert!(same_boot(&b));
        assert!(same_boot(""));
        assert!(!same_boot("00000000-0000-0000-0000-000000000000"));
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let st = start_time(me).expect("own stat");
        assert!(alive(me, st));
        assert!(!alive(me, st + 1));
        assert!(!alive(-5, st));
    }
}
