#!/usr/bin/env python3
"""Fleet at scale (scripts/bench.sh fleet): 3 real manager agents plus the
fleet simulator (`skein fleet-sim`: one process, N simulated workers, each with
its own identity, its own connection and the real session protocol over a fake
runtime), on loopback, for each N in FLEET_NS.

Per N, on a fresh cluster:
- idle CPU (% of one core, FLEET_SAMPLES windows of FLEET_IDLE_WINDOW s) and
  RSS of each manager (the leader marked), and of the simulator;
- time from `skein service create --mode global` to every node's task
  running (N simulated workers + the 3 managers, from `GET /v1/services`),
  FLEET_SAMPLES times (the service is removed between samples);
- time to mark a silent simulated worker down: from the moment its session
  stops (its connections stay open) to `GET /v1/nodes/{id}` saying down,
  FLEET_SAMPLES workers;
- time for every session to be back after `kill -9` of the manager serving
  the most sessions: until each session it held was answered by another
  manager and every live simulated worker is online (the simulator times
  both); the killed manager is restarted between samples, and the next
  sample waits until the sessions have spread back over the non-leaders
  (timed: the managers hand sessions to the one holding fewest);
- last, every session stopped at once (connections kept): the managers' and
  the simulator's CPU for the connections alone, to split the idle cost.
A measurement that fails or times out is reported as such and the next one
runs. Every row is the median of the samples with min..max (n says how many).
The simulated workers' directories go on /dev/shm (each fsyncs its kept
assignments, as on a disk of its own).

Usage: fleet_bench.py SKEIN_BIN WORKDIR
"""
import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN, WORK = sys.argv[1], sys.argv[2]
NS = [int(x) for x in os.environ.get("FLEET_NS", "100,1000,5000").split(",") if x]
SAMPLES = int(os.environ.get("FLEET_SAMPLES", "5"))
WINDOW = float(os.environ.get("FLEET_IDLE_WINDOW", "20"))
SETTLE = float(os.environ.get("FLEET_SETTLE", "10"))
JOIN_CONC = int(os.environ.get("FLEET_JOIN_CONCURRENCY", "32"))
JOIN_TIMEOUT = float(os.environ.get("FLEET_JOIN_TIMEOUT", "600"))
OP_TIMEOUT = float(os.environ.get("FLEET_OP_TIMEOUT", "120"))
# The managers' heartbeat period (the sessions' turn period; a node is down
# after 3 missed): the agent's default (1 s) unless set.
HEARTBEAT_MS = os.environ.get("FLEET_HEARTBEAT_MS", "")
SPREAD_TIMEOUT = float(os.environ.get("FLEET_SPREAD_TIMEOUT", "240"))
TICK = os.sysconf("SC_CLK_TCK")
GOALS = {"cpu": 20.0, "rss": 300.0, "global": 10.0, "back": 3.0, "down": 3.0}


def raise_fd_limit():
    """Managers hold a connection per worker: lift the open-file limit (root
    may raise the hard limit; children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (262144, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def low_free_port(used):
    """A port below the ephemeral range (the simulator's listeners take
    ephemeral ones), free now."""
    for p in range(20000, 32000):
        if p in used:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        used.add(p)
        return p
    raise RuntimeError("no free port in 20000..32000")


def record_pid(pid):
    with open(os.path.join(WORK, "pids"), "a") as f:
        f.write(f"{pid}\n")


def http(api, method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{api}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def cli(api, *args, timeout=60):
    return subprocess.run([BIN, "-H", api, *args], capture_output=True, text=True, timeout=timeout)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def mem_mb(pid, key="VmRSS:"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def med(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def wait_until(what, timeout, fn, every=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            r = fn()
            if r:
                return r
        except (OSError, ValueError, urllib.error.URLError) as e:
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


class Manager:
    def __init__(self, name, d, used):
        self.name, self.dir = name, d
        self.api = f"127.0.0.1:{low_free_port(used)}"
        self.listen = f"127.0.0.1:{low_free_port(used)}"
        self.extra = []
        self.proc = None
        os.makedirs(d, exist_ok=True)

    def start(self):
        log = open(os.path.join(self.dir, "agent.log"), "a")
        argv = [BIN, "agent", "--data-dir", os.path.join(self.dir, "data"), "--name", self.name,
                "--api", self.api, "--listen", self.listen, "--runtime", "process"] + self.extra
        if HEARTBEAT_MS:
            conf = os.path.join(self.dir, "agent.toml")
            with open(conf, "w") as f:
                f.write(f"heartbeat_ms = {int(HEARTBEAT_MS)}\n")
            argv += ["--config", conf]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        record_pid(self.proc.pid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Sim:
    """The fleet simulator: commands on stdin, JSON lines on stdout."""

    def __init__(self, n, join, token, d):
        self.n = n
        self.events = queue.Queue()
        self.status = {}
        self.lock = threading.Lock()
        self.errlog = open(os.path.join(WORK, f"sim-{n}.log"), "w")
        argv = [BIN, "fleet-sim", "--join", ",".join(join), "--token", token, "--workers", str(n),
                "--dir", d, "--join-concurrency", str(JOIN_CONC), "--status-ms", "250", "--exit-on-eof"]
        env = dict(os.environ)
        if os.environ.get("FLEET_SIM_RUST_LOG"):
            env["RUST_LOG"] = os.environ["FLEET_SIM_RUST_LOG"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.errlog, text=True, bufsize=1, env=env)
        record_pid(self.proc.pid)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "status":
                with self.lock:
                    self.status = ev
            else:
                if ev.get("event") == "join_failed":
                    print(f"   sim: join failed: {ev.get('error')}", file=sys.stderr)
                self.events.put(ev)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def latest(self):
        with self.lock:
            return dict(self.status)

    def wait_event(self, kind, timeout, pred=lambda e: True):
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"simulator event {kind}: not within {timeout:.0f} s (status {self.latest()})")
            if self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited ({self.proc.returncode}); see {self.errlog.name}")
            try:
                ev = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if ev.get("event") == kind and pred(ev):
                return ev
            if ev.get("event") == "error":
                print(f"   sim: {ev.get('error')}", file=sys.stderr)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def leader_of(ms):
    """The manager the others' `node ls` marks as leader (asked of a live one)."""
    for m in ms:
        if not m.alive():
            continue
        try:
            rows = http(m.api, "GET", "/v1/nodes")
        except (OSError, ValueError, urllib.error.URLError):
            continue
        name = next((r["name"] for r in rows if r.get("leader")), None)
        if name:
            return next((x for x in ms if x.name == name), None)
    return None


def cluster_ready(m, n_total):
    rows = http(m.api, "GET", "/v1/nodes", timeout=60)
    ready = sum(1 for r in rows if r["status"] == "ready")
    return ready == n_total and len(rows) == n_total


def row(label, v, unit, goal=None, fmt="{:.1f}"):
    if not v:
        return f"| {label} | no sample | | 0 | |"
    g = ""
    if goal is not None:
        g = "met" if med(v) <= goal else "MISSED"
        g = f"≤ {goal:g}{unit}: {g}"
    f = lambda x: fmt.format(x)
    return f"| {label} | {f(med(v))}{unit} | {f(min(v))}..{f(max(v))}{unit} | {len(v)} | {g} |"


def run_n(n, shm_root, out):
    used = set()
    base = os.path.join(WORK, f"n{n}")
    ms = [Manager(f"m{i}", os.path.join(base, f"m{i}"), used) for i in (1, 2, 3)]
    sim = None
    notes = []
    r = {"cpu": {}, "conn_cpu": {}, "rss_idle": {}, "glob": [], "glob_sim": [], "down": [], "back": [], "spread": [],
         "moved": [], "killed": [], "live": n, "idle_lead": None}
    peak = {m.name: 0.0 for m in ms}

    def note_peak(m):
        if m.alive():
            peak[m.name] = max(peak[m.name], mem_mb(m.proc.pid, "VmHWM:"))

    def phase(name, fn):
        """Runs one measurement; a failure is reported and the next one runs."""
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - any failure is reported, not hidden
            notes.append(f"{name}: FAILED: {e}")
            print(f"   {name} failed: {e}", file=sys.stderr)
            return False

    def start_cluster():
        print(f"==> N={n}: starting 3 managers", file=sys.stderr)
        ms[0].start()
        wait_until("m1's API", 60, lambda: cli(ms[0].api, "node", "ls").returncode == 0)
        mtoken = cli(ms[0].api, "join-token", "manager", "-q").stdout.strip()
        r["wtoken"] = cli(ms[0].api, "join-token", "worker", "-q").stdout.strip()
        for m in ms[1:]:
            m.extra = ["--join", ms[0].listen, "--token", mtoken]
            m.start()
        for m in ms:
            wait_until(f"3 ready managers seen by {m.name}", 120, lambda m=m: cluster_ready(m, 3), every=0.5)

    def start_sim():
        nonlocal sim
        print(f"==> N={n}: starting the simulator ({JOIN_CONC} joins at a time)", file=sys.stderr)
        t0 = time.time()
        sim = Sim(n, [m.listen for m in ms], r["wtoken"], os.path.join(shm_root, f"n{n}"))
        joined = sim.wait_event("all_joined", JOIN_TIMEOUT)
        r["join_s"] = time.time() - t0
        if joined.get("failed"):
            notes.append(f"{joined['failed']} of {n} simulated workers failed to join (see the simulator's log)")
        r["live"] = live = n - int(joined.get("failed", 0))
        wait_until("every simulated session online", OP_TIMEOUT,
                   lambda: sim.latest().get("online", 0) >= live, every=0.25)
        r["online_s"] = time.time() - t0
        wait_until(f"{live + 3} ready nodes", OP_TIMEOUT, lambda: cluster_ready(ms[0], live + 3), every=1.0)
        r["ready_s"] = time.time() - t0
        print(f"   {live} joined in {r['join_s']:.1f} s, online at {r['online_s']:.1f} s, "
              f"all ready at {r['ready_s']:.1f} s", file=sys.stderr)
        time.sleep(SETTLE)

    def idle(key, label):
        lead = leader_of(ms)
        if key == "cpu":
            r["idle_lead"] = lead.name if lead else None
        print(f"==> N={n}: {label}, {SAMPLES} windows of {WINDOW:.0f} s (leader {lead.name if lead else '?'})",
              file=sys.stderr)
        procs = {m.name: m.proc.pid for m in ms}
        procs["sim"] = sim.proc.pid
        cpu = r[key] = {k: [] for k in procs}
        for _ in range(SAMPLES):
            a = {k: cpu_ticks(p) for k, p in procs.items()}
            time.sleep(WINDOW)
            b = {k: cpu_ticks(p) for k, p in procs.items()}
            for k in procs:
                cpu[k].append(100.0 * (b[k] - a[k]) / TICK / WINDOW)
        if key == "cpu":
            r["rss_idle"] = {k: mem_mb(p) for k, p in procs.items()}
            r["load"] = os.getloadavg()[0]

    def global_service():
        print(f"==> N={n}: global service, {SAMPLES} samples", file=sys.stderr)
        live = r["live"]
        for s in range(SAMPLES):
            api = (leader_of(ms) or ms[0]).api
            name = f"fleet{s}"
            t0 = time.time()
            c = cli(api, "service", "create", "--name", name, "--mode", "global", "--detach",
                    "sleep", "3601", timeout=OP_TIMEOUT)
            if c.returncode != 0:
                raise RuntimeError(f"service create failed: {c.stderr.strip()}")
            sim_done = None
            deadline = time.time() + OP_TIMEOUT
            while True:
                now = time.time()
                if now > deadline:
                    raise TimeoutError(f"global service {name}: not all {live + 3} running in {OP_TIMEOUT:.0f} s "
                                       f"(simulator: {sim.latest().get('running')} running)")
                if sim_done is None and sim.latest().get("running", 0) >= live:
                    sim_done = now - t0
                rows = http(api, "GET", "/v1/services")
                svc = next((x for x in rows if x["name"] == name), None)
                if svc and svc["running"] >= live + 3:
                    break
                time.sleep(0.1)
            r["glob"].append(time.time() - t0)
            r["glob_sim"].append(sim_done if sim_done is not None else time.time() - t0)
            print(f"   sample {s + 1}: {r['glob'][-1]:.2f} s to {live + 3} running", file=sys.stderr)
            c = cli(api, "service", "rm", name, timeout=OP_TIMEOUT)
            if c.returncode != 0:
                raise RuntimeError(f"service rm failed: {c.stderr.strip()}")
            wait_until("the service's tasks gone from the simulated workers", OP_TIMEOUT,
                       lambda: sim.latest().get("running", 1) == 0, every=0.25)
            time.sleep(2)

    def silent():
        print(f"==> N={n}: silent worker -> down, {SAMPLES} samples", file=sys.stderr)
        for s in range(SAMPLES):
            idx = (s * 7919 + 1) % n
            sim.send(f"silence {idx}")
            ev = sim.wait_event("silenced", 30, lambda e: e.get("index") == idx)
            r["silenced"] = r.get("silenced", 0) + 1
            api = (leader_of(ms) or ms[0]).api
            node = ev["node_id"]
            t_down = wait_until(f"{ev['name']} marked down", OP_TIMEOUT,
                                lambda: time.time() if http(api, "GET", f"/v1/nodes/{node}")["status"] == "down"
                                else None, every=0.05)
            r["down"].append(t_down - ev["at_ms"] / 1000.0)
            print(f"   sample {s + 1}: {ev['name']} down {r['down'][-1]:.2f} s after its session stopped",
                  file=sys.stderr)

    def kills():
        print(f"==> N={n}: kill -9 of the busiest manager, {SAMPLES} samples", file=sys.stderr)
        for s in range(SAMPLES):
            peers = {}
            rows = http(ms[0].api, "GET", "/v1/nodes")
            for m in ms:
                mid = next(x["id"] for x in rows if x["name"] == m.name)
                peers[http(ms[0].api, "GET", f"/v1/nodes/{mid}")["peer_id"]] = m
            by = sim.latest().get("by_manager", {})
            peer, _ = max(((p, by.get(p, 0)) for p in peers), key=lambda x: x[1])
            victim = peers[peer]
            lead = leader_of(ms)
            was_leader = lead is not None and lead.name == victim.name
            note_peak(victim)
            sim.send(f"move {peer}")
            armed = sim.wait_event("move_armed", 30, lambda e: e.get("peer") == peer)
            t_kill = time.time()
            victim.proc.kill()
            victim.proc.wait()
            ev = sim.wait_event("moved", OP_TIMEOUT, lambda e: e.get("peer") == peer)
            r["back"].append(ev["all_online_ms"] / 1000.0 - t_kill)
            r["moved"].append(max(ev["last_move_ms"] / 1000.0 - t_kill, 0.0))
            who = f"{victim.name}{' (leader)' if was_leader else ''}"
            r["killed"].append(f"{who}: {armed['sessions']}")
            print(f"   sample {s + 1}: killed {who} holding {armed['sessions']} sessions; moved "
                  f"{r['moved'][-1]:.2f} s, all online {r['back'][-1]:.2f} s", file=sys.stderr)
            # Back in the cluster before the next sample.
            victim.start()
            other = next(m for m in ms if m is not victim)
            wait_until(f"{victim.name} back", OP_TIMEOUT, lambda: any(
                x["name"] == victim.name and x["status"] == "ready" and x.get("reachability", "reachable") == "reachable"
                for x in http(other.api, "GET", "/v1/nodes")) and leader_of(ms) is not None, every=0.5)
            wait_until("every simulated session online", OP_TIMEOUT,
                       lambda: sim.latest().get("online", 0) >= r["live"] - r.get("silenced", 0), every=0.25)
            # The sessions spread back over the managers before the next
            # sample (a healthy cluster's steady state): timed, and the wait
            # is given up (noted) after SPREAD_TIMEOUT.
            t_back = time.time()
            try:
                wait_until("sessions spread back over the non-leaders", SPREAD_TIMEOUT,
                           lambda: spread_evenly(peers, sim.latest().get("by_manager", {}), leader_of(ms)),
                           every=0.5)
                r["spread"].append(time.time() - t_back)
                print(f"   sessions spread back in {r['spread'][-1]:.1f} s", file=sys.stderr)
            except TimeoutError as e:
                notes.append(f"kill sample {s + 1}: {e} (by manager: {sim.latest().get('by_manager')})")
            time.sleep(3)

    def connections_only():
        # Every session stops; the connections stay: what the managers pay
        # for the connections alone (and for judging the nodes down).
        sim.send("silence-all")
        sim.wait_event("silenced_all", 60)
        wait_until("every simulated worker down", OP_TIMEOUT,
                   lambda: sum(1 for x in http(ms[0].api, "GET", "/v1/nodes") if x["status"] == "down") >= r["live"],
                   every=1.0)
        time.sleep(SETTLE)
        idle("conn_cpu", "idle CPU with every session stopped (connections only)")

    try:
        ok = phase("cluster start", start_cluster) and phase("simulator start", start_sim)
        if ok:
            phase("idle CPU", lambda: idle("cpu", "idle CPU"))
            phase("global service", global_service)
            phase("silent worker", silent)
            phase("kill -9", kills)
            phase("connections only", connections_only)
        for m in ms:
            note_peak(m)
    finally:
        if sim:
            sim.stop()
        for m in ms:
            m.stop()
        shutil.rmtree(os.path.join(shm_root, f"n{n}"), ignore_errors=True)
    lines = report(n, r, peak, ms, notes)
    out.extend(lines)
    print("\n".join(lines))
    sys.stdout.flush()


def spread_evenly(peers, by, lead):
    """Every non-leader manager holds its share of the sessions held by
    non-leaders, within 10% (and 2)."""
    if lead is None:
        return False
    counts = [by.get(p, 0) for p, m in peers.items() if m.name != lead.name]
    if len(counts) < 2:
        return True
    share = sum(counts) / len(counts)
    return max(counts) <= share * 1.1 + 2


def report(n, r, peak, ms, notes):
    live, lead = r["live"], r["idle_lead"]
    mark = lambda name: f"{name}{' (leader)' if name == lead else ''}"
    hb = f", heartbeat_ms = {HEARTBEAT_MS}" if HEARTBEAT_MS else ""
    lines = [f"### N = {n} simulated workers + 3 managers{hb}", ""]
    if "join_s" in r:
        lines.append(f"{live} joined in {r['join_s']:.1f} s ({JOIN_CONC} joins at a time)"
                     + (f", every session online {r['online_s']:.1f} s after the simulator started" if "online_s" in r else "")
                     + (f", all {live + 3} nodes ready in `node ls` at {r['ready_s']:.1f} s" if "ready_s" in r else "")
                     + (f"; 1-minute load average during the idle windows {r['load']:.1f}" if "load" in r else "")
                     + ".")
        lines.append("")
    lines.append("| what | median | min..max | n | goal at 5,000 |")
    lines.append("|---|---|---|---|---|")
    for m in ms:
        lines.append(row(f"{mark(m.name)} idle CPU (% of one core, {WINDOW:.0f} s windows)", r["cpu"].get(m.name), " %",
                         GOALS["cpu"] if m.name == lead else None))
    lines.append(row(f"the simulator ({live} workers) idle CPU", r["cpu"].get("sim"), " %"))
    for m in ms:
        idle_rss = r["rss_idle"].get(m.name, 0)
        worst = max(idle_rss, peak.get(m.name, 0))
        lines.append(f"| {m.name} RSS idle / peak (VmHWM, over its processes) | {idle_rss:.0f} MB / "
                     f"{peak.get(m.name, 0):.0f} MB | | 1 | ≤ {GOALS['rss']:g} MB: {'met' if worst <= GOALS['rss'] else 'MISSED'} |")
    if "sim" in r["rss_idle"]:
        lines.append(f"| the simulator RSS idle | {r['rss_idle']['sim']:.0f} MB | | 1 | |")
    lines.append(row(f"`service create --mode global` to {live + 3} tasks running (API)", r["glob"], " s",
                     GOALS["global"], "{:.2f}"))
    lines.append(row(f"... to {live} running on the simulated workers (simulator, 250 ms status)", r["glob_sim"],
                     " s", None, "{:.2f}"))
    lines.append(row("`kill -9` of the busiest manager to every session back online", r["back"], " s",
                     GOALS["back"], "{:.2f}"))
    lines.append(row("... to the last of its sessions answered by another manager", r["moved"], " s", None, "{:.2f}"))
    lines.append(row("after the killed manager restarted: its share of the sessions back with it",
                     r["spread"], " s", None, "{:.1f}"))
    lines.append(row("silent simulated worker (session stopped, connections open) to down in the API",
                     r["down"], " s", GOALS["down"], "{:.2f}"))
    for m in ms:
        lines.append(row(f"{m.name} CPU with every session stopped, connections open", r["conn_cpu"].get(m.name),
                         " %"))
    lines.append(row("the simulator CPU with every session stopped", r["conn_cpu"].get("sim"), " %"))
    lines.append("")
    if r["killed"]:
        lines.append("Killed (sessions held): " + "; ".join(r["killed"]) + ".")
        lines.append("")
    for x in notes:
        lines.append(x)
        lines.append("")
    return lines


def main():
    raise_fd_limit()
    # The simulated workers fsync their kept assignments: on a tmpfs, as on
    # N separate disks, that costs nothing shared.
    link = os.path.join(WORK, "shm")
    shm_root = tempfile.mkdtemp(prefix="skein-fleet.", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.symlink(shm_root, link)
    out = []
    try:
        print(f"## Fleet: 3 managers + the fleet simulator on loopback, N = {', '.join(map(str, NS))}")
        print()
        for n in NS:
            run_n(n, link, out)
    finally:
        shutil.rmtree(shm_root, ignore_errors=True)


main()
