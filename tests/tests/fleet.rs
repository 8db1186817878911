//! A fleet's sessions over the managers: 3 manager agents and the fleet
//! simulator (`skein fleet-sim`, simulated workers on the real session
//! protocol). A non-leader manager killed and restarted gets its share of
//! the sessions back: they do not stay piled on the manager that took them
//! over (whose next failure would then move the whole fleet at once).

use serde_json::Value;
use skein_tests::{skein_bin, wait_for, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const WORKERS: u64 = 60;

/// The simulator, killed when dropped (also when the test fails).
struct Sim {
    child: Child,
    status: Arc<Mutex<Value>>,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start(join: &str, token: &str) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let workers = WORKERS.to_string();
        let mut child = Command::new(skein_bin())
            .args(["fleet-sim", "--join", join, "--token", token, "--workers"])
            .arg(&workers)
            .arg("--dir")
            .arg(dir.path())
            .args(["--status-ms", "250", "--exit-on-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start skein fleet-sim");
        let status = Arc::new(Mutex::new(Value::Null));
        let out = child.stdout.take().expect("simulator stdout");
        let latest = status.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["event"] == "status" {
                    if let Ok(mut s) = latest.lock() {
                        *s = v;
                    }
                }
            }
        });
        Sim {
            child,
            status,
            _dir: dir,
        }
    }

    fn status(&self) -> Value {
        self.status.lock().map(|s| s.clone()).unwrap_or(Value::Null)
    }

    /// Sessions each manager (by peer id) is answering now.
    fn held_by(&self, peer: &str) -> u64 {
        self.status()["by_manager"][peer].as_u64().unwrap_or(0)
    }

    fn all_online(&self) -> bool {
        self.status()["online"].as_u64() == Some(WORKERS)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_spread_back_to_a_restarted_manager() {
    let mut c = Cluster::start(3, 0, T);
    let token = c.managers[0].ok(&["join-token", "worker", "-q"]);
    let join: Vec<String> = c.managers.iter().map(|m| m.listen.clone()).collect();
    let sim = Sim::start(&join.join(","), token.trim());
    wait_for("every simulated worker online", T, || {
        sim.all_online().then_some(())
    });
    let peers: Vec<String> = c
        .managers
        .iter()
        .map(|m| {
            let out = m.ok(&["node", "inspect", &m.name]);
            let v: Value = serde_json::from_str(&out).expect("node inspect prints JSON");
            let node = if v.is_array() { &v[0] } else { &v };
            node["peer_id"]
                .as_str()
                .expect("a manager's peer_id")
                .to_string()
        })
        .collect();
    let leader = c.leader(&c.managers[0]).expect("a leader").name.clone();
    let others: Vec<usize> = (0..3).filter(|i| c.managers[*i].name != leader).collect();
    // Sessions go to the non-leaders.
    wait_for("the sessions on the two non-leaders", T, || {
        let on: u64 = others.iter().map(|i| sim.held_by(&peers[*i])).sum();
        (on >= WORKERS - 2).then_some(())
    });
    let (victim, survivor) = if sim.held_by(&peers[others[0]]) >= sim.held_by(&peers[others[1]]) {
        (others[0], others[1])
    } else {
        (others[1], others[0])
    };
    c.managers[victim].kill9();
    wait_for("every session back on another manager", T, || {
        (sim.all_online() && sim.held_by(&peers[victim]) == 0).then_some(())
    });
    c.managers[victim].restart();
    // Back with its share (half of the non-leaders' sessions, within the
    // slack the managers allow), handed over by the survivor.
    wait_for(
        "the restarted manager's share of the sessions back",
        T,
        || {
            let (v, s) = (sim.held_by(&peers[victim]), sim.held_by(&peers[survivor]));
            (sim.all_online() && v >= WORKERS / 2 - 5 && s <= WORKERS / 2 + 5).then_some(())
        },
    );
}
