use super::*;
use crate::runtime::fake::FakeRuntime;
use skein_protocol::ServiceSpec;
use std::time::Duration;

fn task(id: &str, image: &str) -> Task {
    Task {
        id: id.into(),
        service_id: "s".into(),
        service_name: "web".into(),
        slot: Some(1),
        node_id: Some("n1".into()),
        spec_version: 1,
        spec: ServiceSpec::new("web", image),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            ..Default::default()
        },
        created_at: 0,
        restarts: vec![],
    }
}

struct Harness {
    fake: FakeRuntime,
    tx: mpsc::Sender<Assignments>,
    reports: mpsc::Receiver<StatusReport>,
    seq: u64,
    _stop: watch::Sender<bool>,
    /// The store as the dispatcher would keep it.
    tasks: Vec<Task>,
}

impl Harness {
    fn start(fake: FakeRuntime) -> Harness {
        let (tx, rx) = mpsc::channel(16);
        let (rtx, reports) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        let w = Worker::new("n1".into(), Runtimes::new(Arc::new(fake.clone())), rx, rtx)
            .with_poll_interval(Duration::from_millis(10));
        tokio::spawn(w.run(stop_rx));
        Harness {
            fake,
            tx,
            reports,
            seq: 0,
            _stop: stop,
            tasks: vec![],
        }
    }

    async fn assign(&mut self, tasks: Vec<Task>) {
        self.tasks = tasks;
        self.push().await;
    }

    async fn push(&mut self) {
        self.seq += 1;
        let a = Assignments {
            node_id: "n1".into(),
            sequence: self.seq,
            tasks: self.tasks.clone(),
        };
        self.tx.send(a).await.expect("worker alive");
    }

    /// Applies reports (forward-only, as the store does) until `id` reaches `state`.
    async fn until(&mut self, id: &str, state: TaskState) -> TaskStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(t) = self.tasks.iter().find(|t| t.id == id) {
                if t.status.state == state {
                    return t.status.clone();
                }
            }
            let r = tokio::time::timeout_at(deadline, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("{id} never reached {state}"))
                .expect("reports open");
            for (tid, st) in r.updates {
                if let Some(t) = self.tasks.iter_mut().find(|t| t.id == tid) {
                    if st.state >= t.status.state {
                        t.status = st;
                    }
                }
            }
            self.push().await;
        }
    }
}

#[tokio::test]
async fn starts_an_assigned_task_once_and_reports_running() {
    let mut h = Harness::start(FakeRuntime::new());
    h.assign(vec![task("t1", "sleep")]).await;
    h.until("t1", TaskState::Running).await;
    // More assignment rounds do not start it again.
    for _ in 0..5 {
        h.push().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.fake.started(), 1);
}

#[tokio::test]
async fn adopts_a_task_the_runtime_already_runs() {
    let fake = FakeRuntime::new();
    let mut t = task("t1", "sleep");
    fake.start(&t).await.expect("pre-start");
    t.status.state = TaskState::Running;
    let mut h = Harness::start(fake);
    h.assign(vec![t]).await;
    for _ in 0..5 {
        h.push().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.fake.started(), 1, "adopted, not started again");
    assert_eq!(h.fake.running(), vec!["t1".to_string()]);
}

#[tokio::test]
async fn reports_exits_with_their_code() {
    let mut h = Harness::start(FakeRuntime::new());
    h.assign(vec![task("t1", "sleep")]).await;
    h.until("t1", TaskState::Running).await;
    assert!(h.fake.exit("t1", 3));
    let st = h.until("t1", TaskState::Failed).await;
    assert_eq!(st.exit_code, Some(3));
    assert_eq!(
        h.fake.started(),
        1,
        "a finished task is never restarted by the worker"
    );
}

#[tokio::test]
async fn stops_tasks_told_to_shut_down() {
    let mut h = Harness::start(FakeRuntime::new());
    h.assign(vec![task("t1", "sleep")]).await;
    h.until("t1", TaskState::Running).await;
    h.tasks[0].desired_state = TaskState::Shutdown;
    h.push().await;
    h.until("t1", TaskState::Shutdown).await;
    assert!(h.fake.running().is_empty());
    assert_eq!(h.fake.stopped(), vec!["t1".to_string()]);
}

#[tokio::test]
async fn rejects_what_cannot_start() {
    let fake = FakeRuntime::new();
    fake.fail_start("nope");
    let mut h = Harness::start(fake);
    h.assign(vec![task("t1", "nope")]).await;
    let st = h.until("t1", TaskState::Rejected).await;
    assert!(!st.error.is_empty());
}

#[tokio::test]
async fn removes_instances_nobody_assigned() {
    let fake = FakeRuntime::new();
    fake.start(&task("orphan", "sleep"))
        .await
        .expect("pre-start");
    let mut h = Harness::start(fake);
    h.assign(vec![]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.fake.task("orphan").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "orphan not removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn with_health(mut t: Task, cmd: &str) -> Task {
    t.spec.healthcheck = Some(skein_protocol::HealthCheck {
        test: vec!["CMD-SHELL".into(), cmd.into()],
        interval: skein_protocol::Dur::from_millis(100),
        timeout: skein_protocol::Dur::from_secs(2),
        retries: 2,
        start_period: skein_protocol::Dur::ZERO,
    });
    t
}

#[tokio::test]
async fn a_task_with_a_health_check_runs_once_healthy() {
    let mut h = Harness::start(FakeRuntime::new());
    h.assign(vec![with_health(task("t1", "sleep"), "true")])
        .await;
    let st = h.until("t1", TaskState::Running).await;
    assert_eq!(st.health, Some(Health::Healthy));
}

#[tokio::test]
async fn an_unhealthy_task_is_stopped_and_failed_naming_the_check() {
    let mut h = Harness::start(FakeRuntime::new());
    h.assign(vec![with_health(
        task("t1", "sleep"),
        "echo not ready; false",
    )])
    .await;
    let st = h.until("t1", TaskState::Failed).await;
    assert!(st.error.contains("health check failed"), "{}", st.error);
    assert!(st.error.contains("not ready"), "{}", st.error);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !h.fake.running().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unhealthy task not stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
