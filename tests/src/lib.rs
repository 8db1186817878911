//! Harness for the multi-process tests: real `skein agent` processes on
//! loopback, driven through the real CLI. Every agent gets a fresh data dir
//! and free API port; dropping an [`Agent`] kills it and every task process
//! it started (also when the test failed), then removes its data dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `skein` binary under test: `SKEIN_BIN`, else the workspace's debug build.
pub fn skein_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKEIN_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/skein");
    assert!(
        p.exists(),
        "{} does not exist: run `cargo build` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// A TCP port nobody uses on 127.0.0.1 right now, outside the kernel's
/// ephemeral range: agents' outgoing connections take ephemeral ports, so a
/// port picked there for an agent that starts later could be taken by then.
/// Distinct within this test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Below the ephemeral range when there is room, else above it.
    let (start, len) = if lo > 11_000 {
        (10_000, lo - 10_000)
    } else {
        (hi + 1, 65_535 - hi)
    };
    // Spread test processes (run in parallel) over the range.
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for _ in 0..len.min(5_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = start + (seed.wrapping_add(n.wrapping_mul(104_729)) % len.max(1));
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The output of `child` once it exits, or once it is killed after `limit`.
fn output_within(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("agent output")
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Processes whose argv is exactly `argv`.
pub fn processes_with_argv(argv: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        // Zombies have an empty cmdline and are not counted.
        if !args.is_empty() && args.iter().map(String::as_str).eq(argv.iter().copied()) {
            out.push(pid);
        }
    }
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields resume after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The start time of `pid` (clock ticks after boot, field 22 of
/// `/proc/PID/stat`), as the runtime records it in shim.json and child.json.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// Runs `docker ARGS...` (output captured; a missing CLI gives a failed Output).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: e.to_string().into_bytes(),
        })
}

/// Whether a Docker engine answers here (`docker info`).
pub fn docker_available() -> bool {
    docker(&["info"]).status.success()
}

/// Whether a test may run, given whether its prerequisite (Docker, root,
/// tmux, ...) is here. Every test that needs something the machine may lack
/// asks this first and returns at once when it answers false:
///
/// - present: true;
/// - missing and `SKEIN_REQUIRE_ALL=1` (`scripts/test.sh` sets it after
///   `scripts/setup.sh` installed everything): panics, naming what is
///   missing and how to get it, so CI never passes having tested less;
/// - missing otherwise: prints a skip line and appends `TEST<TAB>PREREQ` to
///   the skip report (`SKEIN_SKIP_REPORT`, default `target/skein-skipped.txt`),
///   which `scripts/test.sh` sums up at its end. Returns false.
pub fn require(prereq: &str, available: bool, test: &str) -> bool {
    if available {
        return true;
    }
    let how =
        "scripts/setup.sh installs Docker (docker.io, and starts dockerd), tmux and iproute2; \
               the network-namespace tests also need root";
    if std::env::var("SKEIN_REQUIRE_ALL").is_ok_and(|v| v.trim() == "1") {
        panic!(
            "{test}: missing prerequisite: {prereq} (SKEIN_REQUIRE_ALL=1 forbids skipping): {how}"
        );
    }
    eprintln!("SKIPPED {test}: missing prerequisite: {prereq} ({how})");
    let report = skip_report_path();
    if let Some(dir) = report.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One short line per write with O_APPEND: parallel test processes do not
    // interleave within a line.
    let line = format!("{test}\t{}\n", prereq.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&report)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        eprintln!("(could not record the skip in {}: {e})", report.display());
    }
    false
}

/// Where [`require`] records skipped tests: `SKEIN_SKIP_REPORT`, else
/// `target/skein-skipped.txt` in the workspace.
pub fn skip_report_path() -> PathBuf {
    match std::env::var_os("SKEIN_SKIP_REPORT") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/skein-skipped.txt"),
    }
}

/// [`require`] for a Docker engine (`docker info` answers; honours
/// `DOCKER_HOST`).
pub fn require_docker(test: &str) -> bool {
    require(
        "a Docker engine answering `docker info`",
        docker_available(),
        test,
    )
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `cmd` is on the PATH.
pub fn have_command(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A process's resident set (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with(['Z', 'X']))
    })
}

/// Builds the skein-test images (`scripts/make-test-image.sh`) unless they
/// are there already; panics with the script's output when it fails.
pub fn ensure_test_images() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let have = ["v1", "v2", "unhealthy"].iter().all(|t| {
        docker(&["image", "inspect", &format!("skein-test:{t}")])
            .status
            .success()
    });
    if have {
        return;
    }
    let out = Command::new("bash")
        .arg("scripts/make-test-image.sh")
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("run bash scripts/make-test-image.sh");
    assert!(
        out.status.success(),
        "scripts/make-test-image.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Agent {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub api: String,
    extra: Vec<String>,
    /// The `--runtime` the agent runs with.
    runtime: String,
    /// `--name`.
    pub name: String,
    /// The cluster transport's address (`--listen`), kept across restarts.
    pub listen: String,
}

impl Agent {
    /// A new single-node cluster on the process runtime.
    pub fn start(extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Agent {
            child: None,
            dir,
            api: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            runtime: "process".into(),
            name: "test-node".into(),
            listen: format!("127.0.0.1:{}", free_port()),
        };
        a.spawn();
        a
    }

    /// An agent named `name` with extra flags (e.g. `--join`), not started:
    /// call [`Agent::launch`]. For clusters of several agents.
    pub fn named(name: &str, extra: &[&str]) -> Agent {
        Agent {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            api: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            runtime: "process".into(),
            name: name.into(),
            listen: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// Runs an agent made with [`Agent::named`] with `--runtime RUNTIME`;
    /// dropping it then also removes the containers it created.
    pub fn with_runtime(mut self, runtime: &str) -> Agent {
        self.runtime = runtime.into();
        self
    }

    /// Starts an agent made with [`Agent::named`]; waits for its API.
    pub fn launch(mut self) -> Agent {
        self.spawn();
        self
    }

    /// A new single-node cluster with `--runtime RUNTIME` (docker, auto or
    /// process). Dropping it also removes the containers and networks its
    /// Docker runtime created (by the `skein.node` label).
    pub fn start_with_runtime(runtime: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Agent {
            child: None,
            dir,
            api: format!("127.0.0.1:{}", free_port()),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            runtime: runtime.into(),
            name: "test-node".into(),
            listen: format!("127.0.0.1:{}", free_port()),
        };
        a.spawn();
        a
    }

    /// This agent's node id (from `<data-dir>/node.json`).
    pub fn node_id(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir().join("node.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["node_id"].as_str().map(String::from)
    }

    /// Ids of this agent's containers (label `skein.node`) that also carry
    /// every label of `labels` (`key=value`), running or not.
    pub fn containers(&self, labels: &[&str]) -> Vec<String> {
        let Some(node) = self.node_id() else {
            return Vec::new();
        };
        let mut args = vec![
            "ps".to_string(),
            "-aq".into(),
            "--no-trunc".into(),
            "--filter".into(),
            format!("label=skein.node={node}"),
        ];
        for l in labels {
            args.push("--filter".into());
            args.push(format!("label={l}"));
        }
        let out = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Removes this agent's containers and the networks it created.
    fn remove_containers(&self) {
        let Some(node) = self.node_id() else {
            return;
        };
        let ids = self.containers(&[]);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        let out = docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=skein.node={node}"),
        ]);
        for net in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            docker(&["network", "rm", net]);
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        self.spawn_process();
        // A manager lists its cluster; a worker (which holds no cluster
        // state) says it is one once it serves its API.
        wait_for("the agent's API", Duration::from_secs(30), || {
            let out = self.cli(&["node", "ls", "--format", "json"]);
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ready")
                || String::from_utf8_lossy(&out.stderr).contains("is a worker"))
            .then_some(())
        });
    }

    /// `skein agent` with this agent's data dir, runtime, addresses, name
    /// and extra flags.
    fn agent_command(&self) -> Command {
        let mut cmd = Command::new(skein_bin());
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--runtime",
                &self.runtime,
                "--api",
                &self.api,
                "--name",
                &self.name,
                "--listen",
                &self.listen,
            ])
            .args(&self.extra);
        cmd
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let log2 = log.try_clone().expect("agent log");
        let child = self
            .agent_command()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("start skein agent");
        self.child = Some(child);
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Runs another agent named `name` with `extra` flags in a fresh data
    /// dir and returns its output once it exits (it is killed after 60 s).
    pub fn spawn_and_wait_exit(&self, name: &str, extra: &[&str]) -> Output {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = format!("127.0.0.1:{}", free_port());
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(skein_bin())
            .arg("agent")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--runtime",
                "process",
                "--api",
                &api,
                "--listen",
                &listen,
                "--name",
                name,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skein agent");
        output_within(child, Duration::from_secs(60))
    }

    /// `kill -9` the agent: its tasks keep running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the (stopped) agent again on its data dir without waiting for
    /// its API (a node the cluster may refuse).
    pub fn start_no_wait(&mut self) {
        self.kill9();
        self.spawn_process();
    }

    /// Starts the agent again on the same data dir with `extra` flags added
    /// (kept for later restarts).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        self.extra.extend(extra.iter().map(|s| s.to_string()));
        self.spawn();
    }

    /// Runs the (stopped) agent on its data dir with `extra` flags added
    /// and returns its output once it exits (it is killed after 30 s).
    pub fn run_to_exit(&mut self, extra: &[&str]) -> Output {
        self.kill9();
        let child = self
            .agent_command()
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skein agent");
        output_within(child, Duration::from_secs(30))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs `skein -H API ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(skein_bin())
            .args(["-H", &self.api])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run skein")
    }

    /// Runs the CLI and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "skein {args:?} failed: {}\n{}\n--- agent log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a listing with `--format json` and parses it.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {text}"))
    }

    /// `service ps` rows that are running and meant to be.
    pub fn running_tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let rows = self.json(&["service", "ps", service]);
        rows.as_array()
            .map(|a| {
                a.iter()
                    .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A raw HTTP request to the API; returns (status, body).
    pub fn http(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.api).expect("connect to API");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    /// Processes with exactly `argv` that this agent's runtime started
    /// (their parent is a shim working in this agent's data dir), so tests
    /// running side by side, or anything else on the machine, do not count.
    pub fn task_processes(&self, argv: &[&str]) -> Vec<i32> {
        let dir = self.data_dir().to_string_lossy().into_owned();
        processes_with_argv(argv)
            .into_iter()
            .filter(|pid| parent_of(*pid).is_some_and(|pp| cmdline(pp).contains(&dir)))
            .collect()
    }

    /// Kills every task process this agent's runtime started.
    fn kill_tasks(&self) {
        let tasks = self.data_dir().join("tasks");
        let Ok(dir) = std::fs::read_dir(&tasks) else {
            return;
        };
        for e in dir.flatten() {
            for (file, group) in [("child.json", true), ("shim.json", false)] {
                let Ok(text) = std::fs::read_to_string(e.path().join(file)) else {
                    continue;
                };
                let rec = serde_json::from_str::<serde_json::Value>(&text).ok();
                let pid = rec
                    .as_ref()
                    .and_then(|v| v["pid"].as_i64())
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 1);
                let start = rec.as_ref().and_then(|v| v["start_time"].as_u64());
                // Only the very process recorded, or what is left of its
                // group: a pid that ended may name someone else's process (or
                // process group) now, and pids wrap quickly on a busy machine
                // (the likely cause of a chaos soak's agents all dying of
                // SIGKILL at once while tests ran beside it).
                // Linux does not reuse a pid while a group of that id lives,
                // so with no process of that pid the group is the task's.
                let ours = |p: &i32| match start_time(*p) {
                    Some(t) => Some(t) == start,
                    None => group,
                };
                if let Some(pid) = pid.filter(ours) {
                    // SAFETY: kill(2) with a pid read from our own task dir; no memory is touched.
                    unsafe {
                        libc::kill(if group { -pid } else { pid }, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        self.kill_tasks();
        if self.runtime != "process" {
            self.remove_containers();
        }
    }
}

/// Several agents on loopback forming one cluster: the first manager founds
/// it, the others join with tokens (every other worker through the second
/// manager: any manager admits).
pub struct Cluster {
    pub managers: Vec<Agent>,
    pub workers: Vec<Agent>,
}

impl Cluster {
    /// Starts `managers` managers (m1..) and `workers` workers (w1..) and
    /// waits until every manager sees all of them ready.
    pub fn start(managers: usize, workers: usize, timeout: Duration) -> Cluster {
        Cluster::start_with_runtime("process", managers, workers, timeout)
    }

    /// [`Cluster::start`] with `--runtime RUNTIME` on every node.
    pub fn start_with_runtime(
        runtime: &str,
        managers: usize,
        workers: usize,
        timeout: Duration,
    ) -> Cluster {
        let m1 = Agent::named("m1", &[]).with_runtime(runtime).launch();
        let mt = m1.ok(&["join-token", "manager", "-q"]).trim().to_string();
        let wt = m1.ok(&["join-token", "worker", "-q"]).trim().to_string();
        let join = m1.listen.clone();
        let mut ms = vec![m1];
        for i in 2..=managers {
            ms.push(
                Agent::named(&format!("m{i}"), &["--join", &join, "--token", &mt])
                    .with_runtime(runtime)
                    .launch(),
            );
        }
        let mut ws = Vec::new();
        for i in 1..=workers {
            let via = if i % 2 == 0 && ms.len() > 1 {
                ms[1].listen.clone()
            } else {
                join.clone()
            };
            ws.push(
                Agent::named(&format!("w{i}"), &["--join", &via, "--token", &wt])
                    .with_runtime(runtime)
                    .launch(),
            );
        }
        let c = Cluster {
            managers: ms,
            workers: ws,
        };
        let n = managers + workers;
        // Workers hold no cluster state: the managers are asked.
        for a in c.managers.iter() {
            wait_for(
                &format!("{n} ready nodes seen from {}", a.name),
                timeout,
                || {
                    let rows = a.nodes();
                    (rows.len() == n && rows.iter().all(|x| x["status"] == "ready")).then_some(())
                },
            );
        }
        c
    }

    pub fn all(&self) -> impl Iterator<Item = &Agent> {
        self.managers.iter().chain(self.workers.iter())
    }

    /// The manager `node ls` (asked on `via`) marks as leader.
    pub fn leader(&self, via: &Agent) -> Option<&Agent> {
        let rows = via.nodes();
        let name = rows
            .iter()
            .find(|r| r["leader"] == true)
            .and_then(|r| r["name"].as_str())?
            .to_string();
        self.managers.iter().find(|m| m.name == name)
    }
}

impl Agent {
    /// `node ls` rows.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.json(&["node", "ls"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Node names of the running tasks of `service`, sorted.
    pub fn running_nodes(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .running_tasks(service)
            .iter()
            .map(|t| t["node"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    }
}

/// JSON syntax the fuzz and hostile-input tests splice into valid bodies.
pub const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "-1",
    "1e400",
    "18446744073709551616",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"../..\"",
    "\"/\"",
    "[[[[[[[[",
    "true",
];
