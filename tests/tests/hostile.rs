//! Hostile input against a real agent: every case is answered with an error
//! that says what is wrong, nothing is created, started or lost, and the
//! agent stays up with its resident memory under 100 MB throughout (sampled
//! every 20 ms while a case runs).
//!
//! Cases: a 1 GiB request body (413 long before the agent has read it), a
//! YAML alias bomb, deep nesting (YAML and JSON), 10,000 services in one
//! stack (file and API), negative and huge replicas, names with `/`, `..`,
//! NUL or 300 characters, bind mounts of `/` and of the agent's data dir,
//! 1 GiB of garbage on the cluster transport's port, a join token of another
//! cluster, a token replayed after rotation, and mutated JSON bodies on
//! every endpoint that reads one.
//!
//! The test prints a Markdown table of what was sent and what came back
//! (also written to `SKEIN_HOSTILE_TABLE` when set): the source of
//! `scripts/bench/hostile-inputs.md`.

use skein_tests::{process_alive, rss_kib, Agent, JSON_TOKENS};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The agent's resident memory must stay below this through every case.
const RSS_LIMIT_KIB: u64 = 100 * 1024;
const GIB: u64 = 1 << 30;

/// Samples a process's RSS every 20 ms; `take_peak` returns the peak since
/// the last call.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn new(pid: i32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }
    fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One row of the table.
struct Row {
    case: String,
    sent: String,
    answer: String,
    took: Duration,
    peak_kib: u64,
    after_kib: u64,
}

/// What came back: an HTTP status and the `message` of the JSON error body
/// (or the body itself), or a CLI's exit status and its stderr.
struct Answer {
    code: String,
    message: String,
}

impl Answer {
    fn text(&self) -> String {
        format!("{} {}", self.code, self.message)
    }
}

fn message_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| body.trim().to_string())
}

/// Reads an HTTP/1.1 response (headers, and a body of Content-Length bytes
/// when given) from `s`, waiting at most `limit`.
fn read_response(s: &mut TcpStream, limit: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some((status, body));
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
}

/// `METHOD PATH` with `body` as JSON.
fn request(a: &Agent, method: &str, path: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(&a.api).expect("connect to the API");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.api,
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send headers");
    // The server may answer (and close) before it read the whole body.
    let _ = s.write_all(body.as_bytes());
    match read_response(&mut s, Duration::from_secs(30)) {
        Some((status, body)) => Answer {
            code: status.to_string(),
            message: message_of(&body),
        },
        None => Answer {
            code: "no answer".into(),
            message: String::new(),
        },
    }
}

/// `skein -H API ARGS...`: exit status and stderr.
fn cli(a: &Agent, args: &[&str]) -> Answer {
    let out = a.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    Answer {
        code: match out.status.code() {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        },
        message: if stderr.trim().is_empty() {
            stdout.trim().to_string()
        } else {
            stderr.trim().to_string()
        },
    }
}

/// Streams a body of `total` bytes of JSON whitespace after `head`, framed
/// by `chunked` or by Content-Length, until the agent answers. Returns the
/// answer, the bytes sent when it came, and the bytes sent in all.
fn stream_huge_body(a: &Agent, path: &str, total: u64, chunked: bool) -> (Answer, u64, u64) {
    let mut s = TcpStream::connect(&a.api).expect("connect to the API");
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {total}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n",
        a.api
    );
    s.write_all(head.as_bytes()).expect("send headers");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = s.try_clone().expect("clone the socket");
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .expect("write timeout");
    let (sent2, stop2) = (sent.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let block = vec![b' '; 64 * 1024];
        let mut frame = Vec::with_capacity(block.len() + 16);
        if chunked {
            frame.extend_from_slice(format!("{:x}\r\n", block.len()).as_bytes());
        }
        frame.extend_from_slice(&block);
        if chunked {
            frame.extend_from_slice(b"\r\n");
        }
        while !stop2.load(Ordering::Relaxed) && sent2.load(Ordering::Relaxed) < total {
            match w.write(&frame) {
                Ok(n) => {
                    sent2.fetch_add(n as u64, Ordering::Relaxed);
                    if n < frame.len() {
                        // Keep the framing whole: finish this frame.
                        if w.write_all(&frame[n..]).is_err() {
                            return;
                        }
                        sent2.fetch_add((frame.len() - n) as u64, Ordering::Relaxed);
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    });
    let answer = read_response(&mut s, Duration::from_secs(60));
    let at_answer = sent.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let answer = match answer {
        Some((status, body)) => Answer {
            code: status.to_string(),
            message: message_of(&body),
        },
        None => Answer {
            code: "no answer".into(),
            message: String::new(),
        },
    };
    (answer, at_answer, sent.load(Ordering::Relaxed))
}

/// Streams up to `total` pseudo-random bytes to `addr` until the peer
/// closes or resets the connection (or stops reading for 10 s); returns the
/// bytes written and what ended it.
fn garbage_to(addr: &str, total: u64) -> (u64, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the cluster port");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let mut rng = Rng(0x0bad_c0de_dead_beef);
    let block: Vec<u8> = (0..64 * 1024).map(|_| (rng.next() >> 24) as u8).collect();
    let mut sent = 0u64;
    while sent < total {
        match s.write(&block) {
            Ok(0) => return (sent, "closed".into()),
            Ok(n) => sent += n as u64,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (sent, "stalled (the agent stopped reading)".into())
            }
            Err(e) => return (sent, format!("ended by the agent ({})", e.kind())),
        }
    }
    (sent, "still open".into())
}

fn spec_json(name: &str, extra: &str) -> String {
    let name = serde_json::to_string(name).expect("json string");
    format!(r#"{{"name":{name},"image":"sleep","command":["3900"]{extra}}}"#)
}

/// A tiny deterministic PRNG (xorshift64*), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate_json(rng: &mut Rng, seed: &str) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if at < b.len() => b[at] ^= 1 << rng.below(8),
            1 if at < b.len() => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                b.drain(at..end);
            }
            2 => b.insert(at, (rng.next() & 0xff) as u8),
            3 => b.truncate(at),
            _ => {
                let t = JSON_TOKENS[rng.below(JSON_TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
        }
    }
    b
}

struct Lab<'a> {
    agent: &'a Agent,
    pid: i32,
    sampler: Sampler,
    rows: Vec<Row>,
    problems: Vec<String>,
    files: tempfile::TempDir,
}

impl Lab<'_> {
    /// Runs one case: `f` sends it and returns the answer; `ok` says whether
    /// the answer is the clear refusal expected. Then checks that the agent
    /// is up, under the memory limit, and that nothing was created.
    fn case(
        &mut self,
        case: &str,
        sent: &str,
        f: impl FnOnce(&Agent) -> Answer,
        ok: impl FnOnce(&Answer) -> bool,
    ) {
        self.sampler.take_peak();
        let t = Instant::now();
        let answer = f(self.agent);
        let took = t.elapsed();
        if !ok(&answer) {
            self.problems
                .push(format!("{case}: unexpected answer: {}", answer.text()));
        }
        self.after(case, sent, answer.text(), took);
    }

    fn after(&mut self, case: &str, sent: &str, answer: String, took: Duration) {
        if !process_alive(self.pid) {
            panic!(
                "the agent died during {case:?}\n--- agent log ---\n{}",
                self.agent.log()
            );
        }
        let after_kib = rss_kib(self.pid).unwrap_or(0);
        let peak_kib = self.sampler.take_peak().max(after_kib);
        if peak_kib >= RSS_LIMIT_KIB {
            self.problems.push(format!(
                "{case}: agent RSS peaked at {} MiB",
                peak_kib / 1024
            ));
        }
        let services: Vec<String> = self
            .agent
            .json(&["service", "ls"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if services != ["keep"] {
            self.problems
                .push(format!("{case}: services are now {services:?}"));
        }
        let nodes = self.agent.nodes().len();
        if nodes != 1 {
            self.problems
                .push(format!("{case}: the cluster now has {nodes} nodes"));
        }
        let stray = self.agent.task_processes(&["sleep", "3900"]);
        if !stray.is_empty() {
            self.problems
                .push(format!("{case}: task processes started: {stray:?}"));
        }
        eprintln!(
            "case {case:?}: {answer} ({took:?}, RSS peak {} KiB, after {after_kib} KiB)",
            peak_kib
        );
        self.rows.push(Row {
            case: case.into(),
            sent: sent.into(),
            answer,
            took,
            peak_kib,
            after_kib,
        });
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.files.path().join(name);
        std::fs::write(&p, text).expect("write a stack file");
        p.display().to_string()
    }
}

fn is(code: &str) -> impl FnOnce(&Answer) -> bool + '_ {
    move |a| a.code == code && !a.message.is_empty()
}

fn says(code: &'static str, needle: &'static str) -> impl FnOnce(&Answer) -> bool {
    move |a| a.code == code && a.message.contains(needle)
}

fn cell(s: &str) -> String {
    let one_line = s.replace('\n', " ⏎ ").replace('|', "\\|");
    if one_line.chars().count() > 400 {
        let cut: String = one_line.chars().take(400).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

#[test]
fn hostile_inputs_get_clear_errors_and_the_agent_stays_small() {
    let a = Agent::start(&[]);
    let pid = a.pid().expect("the agent runs");
    // A service that must survive everything below, untouched.
    a.ok(&[
        "service",
        "create",
        "--name",
        "keep",
        "--replicas",
        "1",
        "sleep",
        "3911",
    ]);
    skein_tests::wait_for("keep running", Duration::from_secs(60), || {
        (a.running_tasks("keep").len() == 1).then_some(())
    });
    let data_dir = std::fs::canonicalize(a.data_dir()).expect("data dir");
    let mut lab = Lab {
        agent: &a,
        pid,
        sampler: Sampler::new(pid),
        rows: Vec::new(),
        problems: Vec::new(),
        files: tempfile::tempdir().expect("tempdir"),
    };
    let baseline = rss_kib(pid).unwrap_or(0);
    eprintln!("agent RSS before the cases: {baseline} KiB");

    // --- 1 GiB bodies -------------------------------------------------
    for (case, path, chunked) in [
        ("1 GiB body, Content-Length", "/v1/stacks", false),
        ("1 GiB body, chunked", "/v1/services", true),
    ] {
        lab.sampler.take_peak();
        let t = Instant::now();
        let (answer, at_answer, total) = stream_huge_body(&a, path, GIB, chunked);
        let took = t.elapsed();
        if answer.code != "413" {
            lab.problems
                .push(format!("{case}: answered {}", answer.text()));
        }
        if at_answer > 64 * 1024 * 1024 {
            lab.problems.push(format!(
                "{case}: the answer came only after {at_answer} bytes were sent"
            ));
        }
        let text = format!(
            "{} (answer after {:.1} MiB sent; {:.1} MiB sent in all)",
            answer.text(),
            at_answer as f64 / 1048576.0,
            total as f64 / 1048576.0
        );
        let framing = if chunked {
            "Transfer-Encoding: chunked"
        } else {
            "Content-Length: 1073741824"
        };
        lab.after(
            case,
            &format!("`POST {path}`, {framing}, 1 GiB of spaces streamed on a raw socket"),
            text,
            took,
        );
    }

    // --- YAML through the CLI (the stack file is parsed client-side) ----
    let mut bomb = String::from("x-a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!(
            "x-{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("services:\n  web:\n    image: sleep\n    command: *i\n");
    let f = lab.file("bomb.yml", &bomb);
    lab.case(
        "YAML alias bomb (billion laughs)",
        "`skein stack deploy -c bomb.yml bomb`: 9 anchors, each 9 aliases of the previous (9^9 = 387M strings)",
        |a| cli(a, &["stack", "deploy", "-c", &f, "bomb"]),
        is("exit 1"),
    );
    let deep = format!(
        "services:\n  web:\n    image: sleep\n    labels: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let f = lab.file("deep.yml", &deep);
    lab.case(
        "deep nesting, YAML",
        "`skein stack deploy -c deep.yml deep`: a value nested 100,000 flow sequences deep",
        |a| cli(a, &["stack", "deploy", "-c", &f, "deep"]),
        is("exit 1"),
    );
    let deep_json = format!(
        r#"{{"name":"deep","services":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    lab.case(
        "deep nesting, JSON",
        "`POST /v1/stacks` with `services` nested 100,000 arrays deep",
        |a| request(a, "POST", "/v1/stacks", &deep_json),
        // Typed bodies stop at the first value of the wrong type (and
        // serde_json at 128 levels in any case).
        is("422"),
    );
    let mut many = String::from("services:\n");
    for i in 0..10_000 {
        many.push_str(&format!(
            "  s{i}:\n    image: sleep\n    command: [\"3900\"]\n"
        ));
    }
    let f = lab.file("many.yml", &many);
    lab.case(
        "10,000 services in one stack file",
        "`skein stack deploy -c many.yml many` (10,000 services)",
        |a| cli(a, &["stack", "deploy", "-c", &f, "many"]),
        |x| x.code == "exit 1" && x.message.contains("10000 services"),
    );
    let services: Vec<String> = (0..10_000)
        .map(|i| spec_json(&format!("many_s{i}"), ""))
        .collect();
    let body = format!(r#"{{"name":"many","services":[{}]}}"#, services.join(","));
    let sent = format!(
        "`POST /v1/stacks` with 10,000 minimal service specs ({} KiB)",
        body.len() / 1024
    );
    lab.case(
        "10,000 services in one stack, API",
        &sent,
        |a| request(a, "POST", "/v1/stacks", &body),
        says("400", "10000 services"),
    );

    // --- replicas ------------------------------------------------------
    for (case, extra, code) in [
        ("replicas -1", r#","replicas":-1"#, "422"),
        ("replicas 10,001", r#","replicas":10001"#, "400"),
        (
            "replicas 2^64-1",
            r#","replicas":18446744073709551615"#,
            "400",
        ),
        (
            "replicas 2^64",
            r#","replicas":18446744073709551616"#,
            "422",
        ),
        ("replicas 1e30", r#","replicas":1e30"#, "422"),
    ] {
        let body = spec_json("reps", extra);
        lab.case(
            &format!("{case}, create"),
            &format!("`POST /v1/services` `{body}`"),
            |a| request(a, "POST", "/v1/services", &body),
            is(code),
        );
    }
    for (case, body, code) in [
        ("replicas -1, scale", r#"{"replicas":-1}"#, "422"),
        (
            "replicas 1,000,000, scale",
            r#"{"replicas":1000000}"#,
            "400",
        ),
    ] {
        lab.case(
            case,
            &format!("`POST /v1/services/keep/scale` `{body}`"),
            |a| request(a, "POST", "/v1/services/keep/scale", body),
            is(code),
        );
    }
    let f = lab.file(
        "neg.yml",
        "services:\n  web:\n    image: sleep\n    deploy:\n      replicas: -1\n",
    );
    lab.case(
        "replicas -1, stack file",
        "`skein stack deploy -c neg.yml neg` with `deploy.replicas: -1`",
        |a| cli(a, &["stack", "deploy", "-c", &f, "neg"]),
        is("exit 1"),
    );
    lab.case(
        "replicas -1, CLI flag",
        "`skein service create --name neg --replicas -1 sleep 3900`",
        |a| {
            cli(
                a,
                &[
                    "service",
                    "create",
                    "--name",
                    "neg",
                    "--replicas",
                    "-1",
                    "sleep",
                    "3900",
                ],
            )
        },
        is("exit 2"),
    );

    // --- names ---------------------------------------------------------
    let long = "x".repeat(300);
    for (case, name) in [
        ("name with /", "a/b"),
        ("name ..", ".."),
        ("name ../etc", "../etc"),
        ("name with NUL", "a\u{0}b"),
        ("name of 300 characters", long.as_str()),
    ] {
        let body = spec_json(name, "");
        lab.case(
            &format!("{case}, service"),
            &format!("`POST /v1/services` `{}`", cell(&body)),
            |a| request(a, "POST", "/v1/services", &body),
            is("400"),
        );
    }
    for (case, name) in [
        ("stack name ../etc", "../etc"),
        ("stack name with /", "a/b"),
    ] {
        let body = format!(
            r#"{{"name":{},"services":[{}]}}"#,
            serde_json::to_string(name).expect("json"),
            spec_json("s1", "")
        );
        lab.case(
            case,
            &format!("`POST /v1/stacks` `{body}`"),
            |a| request(a, "POST", "/v1/stacks", &body),
            is("400"),
        );
    }
    let f = lab.file("ok.yml", "services:\n  web:\n    image: sleep\n");
    lab.case(
        "stack name ../x, CLI",
        "`skein stack deploy -c ok.yml ../x`",
        |a| cli(a, &["stack", "deploy", "-c", &f, "../x"]),
        is("exit 1"),
    );
    lab.case(
        "service path with ../",
        "`DELETE /v1/services/..%2F..%2Fkeep`",
        |a| request(a, "DELETE", "/v1/services/..%2F..%2Fkeep", ""),
        is("404"),
    );

    // --- bind mounts ---------------------------------------------------
    let dd = data_dir.display().to_string();
    for (case, src) in [
        ("bind mount of /", "/".to_string()),
        ("bind mount of /srv/..", "/srv/..".to_string()),
        ("bind mount of the data dir", dd.clone()),
        ("bind mount inside the data dir", format!("{dd}/raft")),
        (
            "bind mount of a parent of the data dir",
            data_dir
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    ] {
        let extra = format!(
            r#","mounts":[{{"type":"bind","source":{},"target":"/host"}}]"#,
            serde_json::to_string(&src).expect("json")
        );
        let body = spec_json("binder", &extra);
        lab.case(
            case,
            &format!(
                "`POST /v1/services` with mount `{{type: bind, source: {src}, target: /host}}`"
            ),
            |a| request(a, "POST", "/v1/services", &body),
            is("400"),
        );
    }
    let f = lab.file(
        "root.yml",
        "services:\n  web:\n    image: sleep\n    volumes: [\"/:/host:ro\"]\n",
    );
    lab.case(
        "bind mount of /, stack file",
        "`skein stack deploy -c root.yml root` with `volumes: [\"/:/host:ro\"]`",
        |a| cli(a, &["stack", "deploy", "-c", &f, "root"]),
        is("exit 1"),
    );
    let f = lab.file(
        "data.yml",
        &format!("services:\n  web:\n    image: sleep\n    volumes: [\"{dd}:/steal\"]\n"),
    );
    lab.case(
        "bind mount of the data dir, stack file",
        "`skein stack deploy -c data.yml data` with `volumes: [\"DATA_DIR:/steal\"]`",
        |a| cli(a, &["stack", "deploy", "-c", &f, "data"]),
        is("exit 1"),
    );

    // --- garbage on the cluster transport -------------------------------
    lab.sampler.take_peak();
    let t = Instant::now();
    let (closed_after, how) = garbage_to(&a.listen, GIB);
    let took = t.elapsed();
    if closed_after >= GIB {
        lab.problems.push(format!(
            "garbage on the cluster port: the agent read all of 1 GiB ({how})"
        ));
    }
    lab.after(
        "1 GiB of garbage on the cluster port",
        "a raw TCP connection to `--listen` streaming 1 GiB of pseudo-random bytes (no handshake)",
        format!(
            "connection {how} after {:.1} MiB",
            closed_after as f64 / 1048576.0
        ),
        took,
    );

    // --- join tokens ---------------------------------------------------
    let other = Agent::start(&[]);
    let foreign = other.ok(&["join-token", "worker", "-q"]).trim().to_string();
    let join = a.listen.clone();
    lab.case(
        "join token of another cluster",
        "`skein agent --join A --token TOKEN_OF_B` (B: another single-node cluster)",
        |a| {
            let out = a.spawn_and_wait_exit("intruder", &["--join", &join, "--token", &foreign]);
            Answer {
                code: match out.status.code() {
                    Some(c) => format!("exit {c}"),
                    None => "killed after 60 s".into(),
                },
                message: last_error_line(&out),
            }
        },
        |x| x.code == "exit 1" && x.message.contains("token of another cluster"),
    );
    drop(other);
    let old = a.ok(&["join-token", "worker", "-q"]).trim().to_string();
    a.ok(&["join-token", "worker", "--rotate"]);
    let fresh = a.ok(&["join-token", "worker", "-q"]).trim().to_string();
    assert_ne!(old, fresh, "rotation changes the token");
    lab.case(
        "join token replayed after rotation",
        "`skein join-token worker --rotate`, then `skein agent --join A --token OLD_TOKEN`",
        |a| {
            let out = a.spawn_and_wait_exit("replayer", &["--join", &join, "--token", &old]);
            Answer {
                code: match out.status.code() {
                    Some(c) => format!("exit {c}"),
                    None => "killed after 60 s".into(),
                },
                message: last_error_line(&out),
            }
        },
        |x| x.code == "exit 1" && x.message.contains("rotated"),
    );

    // --- mutated bodies on every endpoint that reads one -----------------
    let endpoints: [(&str, String); 4] = [
        ("/v1/services/nosuch/scale", r#"{"replicas":3}"#.to_string()),
        (
            "/v1/services/nosuch/update",
            format!(r#"{{"version":1,"spec":{}}}"#, spec_json("nosuch", "")),
        ),
        (
            "/v1/nodes/nosuch/update",
            r#"{"availability":"drain","transfer_leadership":false,"rebalance":true}"#.to_string(),
        ),
        ("/v1/stacks/nosuch/rollback", r#"{"to":1}"#.to_string()),
    ];
    let n = std::env::var("SKEIN_HOSTILE_BODIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400usize);
    lab.sampler.take_peak();
    let t = Instant::now();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let (path, seed) = &endpoints[i % endpoints.len()];
        let body = mutate_json(&mut rng, seed);
        let mut s = TcpStream::connect(&a.api).expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
        let code = match read_response(&mut s, Duration::from_secs(10)) {
            Some((st, _)) => st.to_string(),
            None => "no answer".into(),
        };
        if code.starts_with('5') || code == "no answer" {
            lab.problems.push(format!(
                "mutated body to {path}: {code} for {:?}",
                String::from_utf8_lossy(&body)
            ));
        }
        *counts.entry(code).or_default() += 1;
    }
    let summary = counts
        .iter()
        .map(|(c, k)| format!("{c} ×{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    lab.after(
        &format!("{n} mutated JSON bodies"),
        "bodies of scale, service update, node update and stack rollback (on names that do not exist) with bytes flipped, cut, inserted and JSON tokens spliced in",
        summary,
        t.elapsed(),
    );

    // --- still serving, nothing lost -----------------------------------
    assert_eq!(a.running_tasks("keep").len(), 1, "keep still runs");
    let rows = std::mem::take(&mut lab.rows);
    let mut table = String::from(
        "| case | sent | answer (status, message) | took | agent RSS peak / after |\n|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} s | {:.1} / {:.1} MiB |\n",
            cell(&r.case),
            cell(&r.sent),
            cell(&r.answer),
            r.took.as_secs_f64(),
            r.peak_kib as f64 / 1024.0,
            r.after_kib as f64 / 1024.0
        ));
    }
    eprintln!("agent RSS before the cases: {baseline} KiB\n{table}");
    if let Ok(p) = std::env::var("SKEIN_HOSTILE_TABLE") {
        std::fs::write(&p, &table).expect("write the table");
    }
    assert!(
        lab.problems.is_empty(),
        "hostile input problems:\n{}\n--- agent log (tail) ---\n{}",
        lab.problems.join("\n"),
        tail(&a.log(), 40)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The agent's last error line (its exit reason), without log decoration.
fn last_error_line(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .rev()
        .find(|l| l.contains("rror") || l.contains("refused") || l.contains("invalid"))
        .or_else(|| text.lines().last())
        .unwrap_or("")
        .trim()
        .to_string()
}
