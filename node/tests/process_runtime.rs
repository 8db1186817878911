//! The process runtime against real processes: `sleep`, `sh -c`, and the
//! real shim (`skein shim`, the binary cargo builds for these tests).
//!
//! Every test owns a tempdir data dir inside a `Harness` whose Drop SIGKILLs
//! every process of every task in it (and any helper agent process), so a
//! failing assertion leaves nothing running. Processes are counted by
//! session (each task's shim leads one), never by name alone: other tests on
//! the machine may run `sleep 3601` too.

use skein_node::runtime::process::ProcessRuntime;
use skein_node::runtime::procfs::{self, ProcStat};
use skein_node::runtime::shim::{read_json, ShimRecord};
use skein_node::runtime::{Observed, ObservedState, Runtime, RuntimeError};
use skein_protocol::{ServiceSpec, Task, TaskState, TaskStatus};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_skein");
const PATIENCE: Duration = Duration::from_secs(20);

struct Harness {
    dir: tempfile::TempDir,
    rt: ProcessRuntime,
    helper: Option<std::process::Child>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path(), PathBuf::from(SHIM)).expect("runtime");
        Harness {
            dir,
            rt,
            helper: None,
        }
    }

    /// Another runtime on the same data dir: what a restarted agent creates.
    fn fresh_runtime(&self) -> ProcessRuntime {
        ProcessRuntime::new(self.dir.path(), PathBuf::from(SHIM)).expect("runtime")
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        self.rt.task_dir(id).expect("task dir")
    }

    fn shim(&self, id: &str) -> ShimRecord {
        read_json::<ShimRecord>(&self.task_dir(id).join("shim.json"))
            .expect("read shim.json")
            .expect("shim.json exists")
    }

    /// The live processes of every task of this data dir, shims excluded.
    fn task_processes(&self) -> Vec<ProcStat> {
        let shims: Vec<i32> = std::fs::read_dir(self.rt.tasks_dir())
            .expect("tasks dir")
            .flatten()
            .filter_map(|e| {
                read_json::<ShimRecord>(&e.path().join("shim.json"))
                    .ok()
                    .flatten()
            })
            .map(|s| s.pid)
            .collect();
        procfs::processes_where(|s| shims.contains(&s.session) && s.pid != s.session)
    }

    /// Task processes whose command line is exactly `argv`.
    fn processes_running(&self, argv: &[&str]) -> usize {
        self.task_processes()
            .iter()
            .filter(|p| procfs::cmdline(p.pid) == argv)
            .count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut helper) = self.helper.take() {
            let _ = helper.kill();
            let _ = helper.wait();
        }
        self.rt.kill_all_now();
    }
}

fn task(id: &str, argv: &[&str]) -> Task {
    let mut spec = ServiceSpec::new("web", argv[0]);
    spec.command = argv[1..].iter().map(|s| s.to_string()).collect();
    Task {
        id: id.to_string(),
        service_id: "svc1".into(),
        service_name: "web".into(),
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

/// Polls `f` until it yields a value, failing the test after PATIENCE.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn observed(rt: &ProcessRuntime, id: &str) -> Option<Observed> {
    rt.list()
        .await
        .expect("list")
        .into_iter()
        .find(|o| o.task_id == id)
}

async fn exit_code(rt: &ProcessRuntime, id: &str) -> i32 {
    eventually(&format!("task {id} to exit"), || async {
        match observed(rt, id).await.map(|o| o.state) {
            Some(ObservedState::Exited { exit_code, .. }) => Some(exit_code),
            _ => None,
        }
    })
    .await
}

fn alive(p: &ProcStat) -> bool {
    procfs::alive(p.pid, p.start_time)
}

#[tokio::test]
async fn three_tasks_are_adopted_by_a_fresh_runtime_and_never_started_twice() {
    let h = Harness::new();
    let mut ids = Vec::new();
    for id in ["t1", "t2", "t3"] {
        ids.push(
            h.rt.start(&task(id, &["sleep", "3601"]))
                .await
                .expect("start"),
        );
    }
    assert_eq!(h.processes_running(&["sleep", "3601"]), 3);

    // Each shim leads its own session, outside the agent's group and session.
    let me = procfs::stat(std::process::id() as i32).expect("own stat");
    for id in ["t1", "t2", "t3"] {
        let shim = procfs::stat(h.shim(id).pid).expect("shim stat");
        assert_eq!(shim.session, shim.pid);
        assert_ne!(shim.session, me.session);
        assert_ne!(shim.pgrp, me.pgrp);
    }

    let restarted = h.fresh_runtime();
    let list = restarted.list().await.expect("list");
    assert_eq!(list.len(), 3);
    for (o, id) in list.iter().zip(&ids) {
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(&o.runtime_id, id, "same runtime id after the restart");
    }
    for (t, id) in ["t1", "t2", "t3"].iter().zip(&ids) {
        let again = restarted
            .start(&task(t, &["sleep", "3601"]))
            .await
            .expect("start again");
        assert_eq!(&again, id);
        let again =
            h.rt.start(&task(t, &["sleep", "3601"]))
                .await
                .expect("start again");
        assert_eq!(&again, id);
    }
    assert_eq!(h.processes_running(&["sleep", "3601"]), 3);

    for t in ["t1", "t2", "t3"] {
        restarted
            .stop(t, Duration::from_secs(10))
            .await
            .expect("stop");
    }
    assert_eq!(h.processes_running(&["sleep", "3601"]), 0);
    for o in restarted.list().await.expect("list") {
        assert!(matches!(o.state, ObservedState::Exited { .. }), "{o:?}");
    }
}

#[tokio::test]
async fn concurrent_starts_of_one_task_make_one_process() {
    let h = Harness::new();
    let other = h.fresh_runtime();
    let t = task("t1", &["sleep", "3601"]);
    let (a, b) = tokio::join!(h.rt.start(&t), other.start(&t));
    assert_eq!(a.expect("start"), b.expect("start"));
    assert_eq!(h.processes_running(&["sleep", "3601"]), 1);
}

/// Not a test of its own: the "agent" process that
/// `tasks_survive_kill_9_of_the_agent` starts and kills. Does nothing unless
/// SKEIN_TEST_AGENT_DIR is set.
#[test]
#[ignore]
fn agent_helper_process() {
    let Some(dir) = std::env::var_os("SKEIN_TEST_AGENT_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    rt.block_on(async {
        let runtime = ProcessRuntime::new(&dir, PathBuf::from(SHIM)).expect("runtime");
        let mut ids = Vec::new();
        for id in ["t1", "t2", "t3"] {
            ids.push(
                runtime
                    .start(&task(id, &["sleep", "3601"]))
                    .await
                    .expect("start"),
            );
        }
        let tmp = dir.join("ready.tmp");
        std::fs::write(&tmp, ids.join("\n")).expect("write");
        std::fs::rename(&tmp, dir.join("ready")).expect("rename");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
}

#[tokio::test]
async fn tasks_survive_kill_9_of_the_agent() {
    let mut h = Harness::new();
    let helper = std::process::Command::new(std::env::current_exe().expect("test exe"))
        .args([
            "--exact",
            "agent_helper_process",
            "--ignored",
            "--nocapture",
        ])
        .env("SKEIN_TEST_AGENT_DIR", h.dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent helper");
    let helper_pid = helper.id() as i32;
    h.helper = Some(helper);
    let ready = h.dir.path().join("ready");
    let ids = eventually("the agent helper to start its tasks", || async {
        std::fs::read_to_string(&ready).ok()
    })
    .await;
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(h.processes_running(&["sleep", "3601"]), 3);

    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(helper_pid, libc::SIGKILL);
    }
    if let Some(mut helper) = h.helper.take() {
        let _ = helper.wait();
    }

    let restarted = h.fresh_runtime();
    let list = restarted.list().await.expect("list");
    assert_eq!(list.len(), 3);
    for (o, id) in list.iter().zip(&ids) {
        assert_eq!(o.state, ObservedState::Running);
        assert_eq!(o.runtime_id, *id);
    }
    for (t, id) in ["t1", "t2", "t3"].iter().zip(&ids) {
        let again = restarted
            .start(&task(t, &["sleep", "3601"]))
            .await
            .expect("start again");
        assert_eq!(again, *id);
    }
    assert_eq!(h.processes_running(&["sleep", "3601"]), 3);

    for t in ["t1", "t2", "t3"] {
        restarted
            .stop(t, Duration::from_secs(10))
            .await
            .expect("stop");
        assert!(matches!(
            observed(&restarted, t).await.map(|o| o.state),
            Some(ObservedState::Exited { exit_code: 143, .. })
        ));
    }
    assert_eq!(h.processes_running(&["sleep", "3601"]), 0);
}

#[tokio::test]
async fn stop_is_prompt_for_a_program_that_honours_sigterm() {
    let h = Harness::new();
    h.rt.start(&task("t1", &["sleep", "3601"]))
        .await
        .expect("start");
    let began = Instant::now();
    h.rt.stop("t1", Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(exit_code(&h.rt, "t1").await, 143);
    assert!(h.task_processes().is_empty());
}

#[tokio::test]
async fn stop_kills_a_program_that_ignores_sigterm_after_the_grace_period() {
    let h = Harness::new();
    h.rt.start(&task(
        "t1",
        &["sh", "-c", "trap '' TERM; sleep 3600; echo unreachable"],
    ))
    .await
    .expect("start");
    // Once sleep runs, the trap is in place.
    eventually("sleep under the trapping shell", || async {
        (h.processes_running(&["sleep", "3600"]) == 1).then_some(())
    })
    .await;
    let grace = Duration::from_millis(1500);
    let began = Instant::now();
    h.rt.stop("t1", grace).await.expect("stop");
    let took = began.elapsed();
    assert!(took >= grace, "killed before the grace period: {took:?}");
    assert!(took < grace + Duration::from_secs(5), "took {took:?}");
    assert_eq!(exit_code(&h.rt, "t1").await, 137);
    assert!(h.task_processes().is_empty());
}

#[tokio::test]
async fn the_stop_signal_of_the_spec_is_sent() {
    let h = Harness::new();
    let mut t = task(
        "t1",
        &[
            "sh",
            "-c",
            "trap 'echo got INT; exit 0' INT; trap '' TERM; while :; do sleep 0.05; done",
        ],
    );
    t.spec.stop_signal = Some("SIGINT".into());
    h.rt.start(&t).await.expect("start");
    eventually("the shell loop", || async {
        (!h.task_processes().is_empty()).then_some(())
    })
    .await;
    let began = Instant::now();
    h.rt.stop("t1", Duration::from_secs(10))
        .await
        .expect("stop");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(exit_code(&h.rt, "t1").await, 0);
    let logs = h.rt.logs("t1", None).await.expect("logs");
    assert!(String::from_utf8_lossy(&logs).contains("got INT"));
}

#[tokio::test]
async fn an_exit_code_is_reported() {
    let h = Harness::new();
    h.rt.start(&task("t1", &["sh", "-c", "exit 3"]))
        .await
        .expect("start");
    assert_eq!(exit_code(&h.rt, "t1").await, 3);
    // An exited task is not started again behind the worker's back.
    assert!(h
        .rt
        .start(&task("t1", &["sh", "-c", "exit 3"]))
        .await
        .is_err());
    h.rt.remove("t1").await.expect("remove");
    assert!(!h.task_dir("t1").exists());
    assert!(observed(&h.rt, "t1").await.is_none());
}

#[tokio::test]
async fn grandchildren_are_stopped_with_the_task() {
    let h = Harness::new();
    h.rt.start(&task(
        "t1",
        &[
            "sh",
            "-c",
            "sleep 3602 & sleep 3603 & setsid sleep 3604 & wait",
        ],
    ))
    .await
    .expect("start");
    let shim = h.shim("t1");
    // The three sleeps, found by ancestry (the setsid one left the session).
    let descendants = || {
        procfs::processes_where(|s| {
            let mut p = s.ppid;
            for _ in 0..16 {
                if p == shim.pid {
                    return true;
                }
                match procfs::stat(p) {
                    Some(st) if st.ppid > 1 => p = st.ppid,
                    _ => return false,
                }
            }
            false
        })
        .into_iter()
        .filter(|s| procfs::cmdline(s.pid).first().map(String::as_str) == Some("sleep"))
        .collect::<Vec<_>>()
    };
    let sleeps = eventually("three sleeps", || async {
        let d = descendants();
        (d.len() == 3).then_some(d)
    })
    .await;
    h.rt.stop("t1", Duration::from_secs(10))
        .await
        .expect("stop");
    for s in &sleeps {
        assert!(!alive(s), "{:?} survived the stop", procfs::cmdline(s.pid));
    }
    assert!(h.task_processes().is_empty());
}

#[tokio::test]
async fn output_and_environment_reach_the_logs() {
    let h = Harness::new();
    let work = tempfile::tempdir().expect("tempdir");
    let mut t = task(
        "t1",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; echo \"$SKEIN_TASK_ID $SKEIN_SERVICE_NAME $SKEIN_TASK_SLOT $GREETING\"; pwd",
        ],
    );
    t.spec.env.insert("GREETING".into(), "hello".into());
    t.spec.working_dir = Some(work.path().display().to_string());
    h.rt.start(&t).await.expect("start");
    assert_eq!(exit_code(&h.rt, "t1").await, 0);
    let logs = String::from_utf8(h.rt.logs("t1", None).await.expect("logs")).expect("utf8");
    let real_work = std::fs::canonicalize(work.path()).expect("canonical");
    assert_eq!(
        logs,
        format!("out\nerr\nt1 web 1 hello\n{}\n", real_work.display())
    );
    let last = h.rt.logs("t1", Some(1)).await.expect("logs");
    assert_eq!(last, format!("{}\n", real_work.display()).into_bytes());
    assert!(h.rt.logs("nope", None).await.is_err());
}

#[tokio::test]
async fn a_missing_program_is_invalid_and_starts_nothing() {
    let h = Harness::new();
    match h.rt.start(&task("t1", &["no-such-program-skein"])).await {
        Err(RuntimeError::Invalid(msg)) => {
            assert_eq!(msg, "program \"no-such-program-skein\" not found in PATH")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!h.task_dir("t1").exists());
    assert!(h.rt.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_program_that_cannot_be_executed_is_invalid() {
    let h = Harness::new();
    let bin = tempfile::tempdir().expect("tempdir");
    let prog = bin.path().join("not-a-binary");
    // Passes the PATH check, fails at exec (ENOENT from the missing interpreter).
    std::fs::write(&prog, b"#!/no/such/interpreter\necho hi\n").expect("write");
    set_mode(&prog, 0o755);
    match h
        .rt
        .start(&task("t1", &[prog.to_str().expect("utf8")]))
        .await
    {
        Err(RuntimeError::Invalid(msg)) => assert!(msg.contains("cannot start program"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!h.task_dir("t1").exists());
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test]
async fn a_killed_shim_leaves_no_process_and_an_exited_task() {
    let h = Harness::new();
    h.rt.start(&task("t1", &["sh", "-c", "sleep 3605 & wait"]))
        .await
        .expect("start");
    eventually("the task's sleep", || async {
        (h.processes_running(&["sleep", "3605"]) == 1).then_some(())
    })
    .await;
    let shim = h.shim("t1");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(shim.pid, libc::SIGKILL);
    }
    // The next look notices, kills what is left and records the task exited.
    let code = exit_code(&h.rt, "t1").await;
    assert_eq!(code, 137);
    assert!(h.task_processes().is_empty());
    assert_eq!(h.processes_running(&["sleep", "3605"]), 0);
}

#[tokio::test]
async fn stopping_or_removing_what_is_not_there_is_fine() {
    let h = Harness::new();
    h.rt.stop("nope", Duration::from_secs(1))
        .await
        .expect("stop unknown");
    h.rt.remove("nope").await.expect("remove unknown");
    h.rt.start(&task("t1", &["sleep", "3601"]))
        .await
        .expect("start");
    let shim = h.shim("t1");
    h.rt.remove("t1").await.expect("remove running");
    assert!(!h.task_dir("t1").exists());
    assert!(procfs::processes_where(|s| s.session == shim.pid).is_empty());
    assert!(h.rt.list().await.expect("list").is_empty());
    assert!(matches!(
        h.rt.start(&task("../x", &["sleep", "1"])).await,
        Err(RuntimeError::Invalid(_))
    ));
}

#[tokio::test]
async fn an_unresponsive_shim_is_killed_with_its_task_after_grace_plus_slack() {
    let h = Harness::new();
    h.rt.start(&task("t1", &["sleep", "3601"]))
        .await
        .expect("start");
    let shim = h.shim("t1");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(shim.pid, libc::SIGSTOP);
    }
    let began = Instant::now();
    h.rt.stop("t1", Duration::from_millis(200))
        .await
        .expect("stop");
    let took = began.elapsed();
    // The agent waits grace + 5 s for the shim, then kills the whole session.
    assert!(took >= Duration::from_secs(5), "took {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(exit_code(&h.rt, "t1").await, 137);
    assert!(procfs::processes_where(|s| s.session == shim.pid).is_empty());
}
