//! Offline autonomy, as an edge box lives it: its manager goes away (here:
//! SIGSTOP, as a VM pause or a long stall would), and the worker keeps
//! running its work on its own, restarting what fails per the restart
//! policy and surviving its own restart; when the manager is back, nothing
//! that kept running is replaced.

use skein_tests::{wait_for, Cluster};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(40);
const ARGV: [&str; 2] = ["sleep", "3841"];
const SINGLETON: [&str; 2] = ["sleep", "3842"];

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(pid, sig) };
}

#[test]
fn a_worker_keeps_its_work_running_and_restarting_with_its_manager_stopped() {
    let mut c = Cluster::start(1, 1, T);
    let m1 = &c.managers[0];
    // Everything on the worker: the manager takes no tasks.
    m1.ok(&["node", "update", "--availability", "drain", "m1"]);
    m1.ok(&[
        "service",
        "create",
        "--name",
        "edge",
        "--replicas",
        "2",
        "--restart-delay",
        "1s",
        "sleep",
        "3841",
    ]);
    // A singleton that must not run twice: stopped once cut off for 2 s.
    m1.ok(&[
        "service",
        "create",
        "--name",
        "lock-holder",
        "--on-disconnect",
        "stop-after=2s",
        "sleep",
        "3842",
    ]);
    let w1 = &c.workers[0];
    wait_for("both replicas and the singleton running on w1", T, || {
        (w1.task_processes(&ARGV).len() == 2 && w1.task_processes(&SINGLETON).len() == 1)
            .then_some(())
    });
    let manager_pid = m1.pid().expect("m1 runs");
    signal(manager_pid, libc::SIGSTOP);
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            signal(self.0, libc::SIGCONT);
        }
    }
    let resume = Resume(manager_pid);
    let stopped = Instant::now();

    // A task dies with no manager reachable: the worker restarts it itself.
    let before = w1.task_processes(&ARGV);
    let victim = before[0];
    signal(victim, libc::SIGKILL);
    let killed = Instant::now();
    let pids = wait_for("the killed task to run again on w1", T, || {
        let now = w1.task_processes(&ARGV);
        (now.len() == 2 && !now.contains(&victim)).then_some(now)
    });
    eprintln!(
        "killed task running again after {:?} (restart delay 1s)",
        killed.elapsed()
    );
    assert!(pids.contains(&before[1]), "the other task kept running");

    // The worker agent itself is killed and restarted, manager still away:
    // it adopts both tasks from what it kept on disk.
    c.workers[0].kill9();
    c.workers[0].start_no_wait();
    let w1 = &c.workers[0];
    wait_for("the restarted worker to take its tasks back", T, || {
        w1.log()
            .contains("running the kept assignments until a manager answers")
            .then_some(())
    });
    let mut adopted = w1.task_processes(&ARGV);
    adopted.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(
        adopted, expected,
        "tasks kept running across the agent restart"
    );

    // The singleton stopped: the worker has been cut off for over 2 s.
    wait_for(
        "the stop-after singleton to stop on the cut-off worker",
        T,
        || w1.task_processes(&SINGLETON).is_empty().then_some(()),
    );

    // The manager comes back, after a pause longer than its 3 s grace
    // period: nothing is replaced, the node is ready.
    let pause = Duration::from_secs(6);
    std::thread::sleep(pause.saturating_sub(stopped.elapsed()));
    drop(resume);
    let m1 = &c.managers[0];
    wait_for("w1 ready as the manager sees it", T, || {
        m1.nodes()
            .iter()
            .any(|n| n["name"] == "w1" && n["status"] == "ready")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(10));
    let mut after = w1.task_processes(&ARGV);
    after.sort_unstable();
    assert_eq!(after, expected, "the same two processes still run");
    assert!(
        m1.nodes()
            .iter()
            .any(|n| n["name"] == "w1" && n["status"] == "ready"),
        "{:?}",
        m1.nodes()
    );
    let ps = m1.ok(&["service", "ps", "edge"]);
    assert!(
        ps.contains("restarted 1x on this node while no manager was reachable"),
        "{ps}"
    );
    assert_eq!(
        ps.lines().filter(|l| l.contains(" running ")).count(),
        2,
        "{ps}"
    );
    // The singleton runs again (a new task: it was stopped, not kept).
    wait_for("the singleton to run again", T, || {
        (w1.task_processes(&SINGLETON).len() == 1).then_some(())
    });
    let ps = m1.ok(&["service", "ps", "lock-holder"]);
    assert!(ps.contains("on-disconnect stop-after=2s"), "{ps}");
    let log = m1.log();
    assert!(
        log.contains("not running for a while"),
        "the manager noticed its pause"
    );
    assert!(
        !log.contains("no heartbeat for"),
        "the manager counted its own pause as the worker's silence"
    );
}
