#!/usr/bin/env python3
"""Driver of `scripts/bench.sh gossip`: skein's membership next to HashiCorp
Serf's, in one run on this machine.

  1. loopback, N processes each (default 20), explicit joins to one seed:
     - convergence: from launching the N-1 joiners to every process listing
       all N members alive (Serf: `serf members`; skein: GET /v1/members);
     - killed process (kill -9, its sockets close): time until the first
       other member and until every other member declares it failed/dead;
       for skein also until the leader's node table says `down` (what
       `skein node ls` shows); TRIALS trials, the victim restarted between;
     - bandwidth per process while idle: IP bytes each group sends on
       loopback (iptables counting rules on its own loopback address, so
       the count is the same for both), and skein's own membership metric
       (GET /v1/members -> gossip).
  2. network namespaces (root), 5 boxes each: a box cut off silently (its
     veth down, no packet either way): time until an observer declares it
     failed (Serf) / the leader marks it down (skein); healed between trials.
  3. the in-process simulation at N=1,000 (node/examples/gossip_sim.rs),
     whose output bench.sh passes in.

Prints a table with medians, ratios and the goals of issue 5.
Everything it starts is recorded in WORK/pids and WORK/netns; bench.sh's
trap stops and removes whatever is left. Traffic goes to loopback and to the
namespaces this script creates, nowhere else.
"""
import argparse
import json
import os
import random
import re
import socket
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import raft_bench as rb  # noqa: E402  (process bookkeeping, netns, helpers)

log = rb.log
ENV = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))


def http_json(url, timeout=1.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


_taken = set()


def port_on(ip):
    """A TCP port free on `ip` and outside the kernel's ephemeral range: the
    agents' own outgoing connections (hundreds at once while they join) take
    ephemeral ports, so a port picked there before launch could be taken by
    the time its agent binds it."""
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    ranges = [r for r in ((10000, lo - 1), (hi + 1, 65535)) if r[1] - r[0] > 1000]
    for _ in range(1000):
        a, b = random.choice(ranges)
        port = random.randint(a, b)
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                continue
        _taken.add(port)
        return port
    return rb.free_port()


def median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else float("nan")


def race(names, probe, timeout):
    """Polls probe(name) for every name in its own thread; returns
    {name: seconds from now until probe first returned true}."""
    t0 = time.monotonic()
    done = {}
    stop = threading.Event()

    def watch(n):
        while not stop.is_set() and time.monotonic() - t0 < timeout:
            try:
                if probe(n):
                    done[n] = time.monotonic() - t0
                    return
            except Exception:  # noqa: BLE001 - not there yet
                pass
            time.sleep(0.02)

    threads = [threading.Thread(target=watch, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    return done


class Joins:
    """Stamps a process's member-join log lines as they arrive (the pipe is
    read by a thread; no polling of the processes at all): first time each
    other member appeared in its log. Serf logs `EventMemberJoin: NAME`,
    skein `member alive peer=PEER` (membership at debug level)."""

    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, pattern, me, alarm):
        self.re = re.compile(pattern)
        self.alarm = re.compile(alarm)
        self.me = me
        self.first = {}
        # (when, line) of every suspicion / failure this process logged.
        self.alarms = []

    def feed(self, line):
        line = self.ANSI.sub("", line)
        m = self.re.search(line)
        if m and m.group(1) != self.me:
            self.first.setdefault(m.group(1), time.monotonic())
        if self.alarm.search(line):
            self.alarms.append((time.monotonic(), line.strip()))

    def seen_all_at(self, others):
        """When this process had seen `others` members join; None if not yet."""
        t = sorted(self.first.values())
        return t[others - 1] if len(t) >= others else None


# What counts as a false positive while idle: a member suspected or declared
# failed, or (skein) a node marked down.
SERF_ALARM = r"Suspect \S+ has failed|EventMemberFailed|EventMemberLeave"
SKEIN_ALARM = r"member (suspect|dead)|node status changes.*status=Down"


def alarms_since(joins, t):
    return [line for j in joins for (at, line) in j.alarms if at >= t]


# Convergence runs launch each process in a session of its own (default) or
# all in the bench's session, in a process group each (GOSSIP_SESSIONS=0):
# with the kernel's autogroup scheduling, a session per process splits the
# 2 cores into N equal groups, which changes how N busy processes share them.
OWN_SESSION = os.environ.get("GOSSIP_SESSIONS", "1") != "0"


def spawn_watched(argv, logfile, joins, env=None):
    """rb.spawn, with the output read through `joins` on its way to logfile."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=OWN_SESSION,
                         process_group=None if OWN_SESSION else 0, env=env)
    rb.PROCS.append(p)
    rb.record_pid(p.pid)

    def pump():
        with open(logfile, "ab") as out:
            for line in iter(p.stdout.readline, b""):
                joins.feed(line.decode(errors="replace"))
                out.write(line)
                out.flush()

    threading.Thread(target=pump, daemon=True).start()
    return p


def converged_after(joins, t0, n, timeout):
    """Seconds from t0 until every process had logged the other n-1 joining
    (waits up to timeout); None if some never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at = [j.seen_all_at(n - 1) for j in joins]
        if all(a is not None for a in at):
            return max(at) - t0
        time.sleep(0.1)
    return None


# --------------------------------------------------------------------------
# Serf

class Serf:
    def __init__(self, root, n, hosts=None):
        self.root = root
        self.n = n
        # hosts: [(netns, ip)] or loopback with free ports.
        self.hosts = hosts
        if hosts:
            self.bind = [f"{ip}:7946" for _, ip in hosts]
            self.rpc = [f"{ip}:7373" for _, ip in hosts]
        else:
            self.bind = [f"127.0.0.2:{port_on('127.0.0.2')}" for _ in range(n)]
            self.rpc = [f"127.0.0.1:{port_on('127.0.0.1')}" for _ in range(n)]
        self.procs = [None] * n

    def launch(self, i, join=True, joins=None):
        argv = ["serf", "agent", f"-node=serf{i}", f"-bind={self.bind[i]}", f"-rpc-addr={self.rpc[i]}",
                "-log-level=" + ("info" if joins else "warn")]
        if join and i != 0:
            argv.append(f"-join={self.bind[0]}")
        ns = self.hosts[i][0] if self.hosts else None
        logfile = os.path.join(self.root, f"serf{i}.log")
        if joins:
            self.procs[i] = spawn_watched(argv, logfile, joins)
        else:
            self.procs[i] = rb.spawn(argv, logfile, netns=ns)

    def members(self, observer, status=None):
        argv = ["serf", "members", f"-rpc-addr={self.rpc[observer]}", "-format=json"]
        if status:
            argv.append(f"-status={status}")
        ok, out, _ = rb.run(argv, timeout=3)
        if not ok:
            return None
        return {m["name"]: m["status"] for m in json.loads(out).get("members", [])}

    def alive_count(self, observer):
        m = self.members(observer) or {}
        return sum(1 for s in m.values() if s == "alive")

    def status_of(self, observer, i):
        return (self.members(observer) or {}).get(f"serf{i}")

    def start(self, measure=False):
        """Starts all N; with measure, returns seconds from launching the
        N-1 joiners until every agent had logged all the others joining."""
        joins = [Joins(r"EventMemberJoin: (\S+)", f"serf{i}", SERF_ALARM) for i in range(self.n)] if measure else None
        self.joins = joins
        self.launch(0, joins=joins and joins[0])
        rb.wait_until("serf seed", 20, lambda: self.members(0) is not None)
        t0 = time.monotonic()
        for i in range(1, self.n):
            self.launch(i, joins=joins and joins[i])
        conv = converged_after(joins, t0, self.n, 60) if measure else None
        rb.wait_until("every serf agent lists all alive", 60,
                      lambda: all(self.alive_count(o) == self.n for o in range(self.n)), interval=0.2)
        return conv

    def stop_all(self):
        for i in range(self.n):
            rb.stop(self.procs[i], grace=2)

    def kill(self, i):
        rb.kill9(self.procs[i])

    def restart(self, i):
        self.launch(i)
        rb.wait_until(f"serf{i} alive everywhere", 60,
                      lambda: all(self.status_of(o, i) == "alive" for o in range(self.n)), interval=0.2)

    def pid(self, i):
        return self.procs[i].pid


# --------------------------------------------------------------------------
# skein

class Skein:
    def __init__(self, binary, root, n, hosts=None, key=None):
        self.bin = binary
        self.root = root
        self.n = n
        self.hosts = hosts
        self.key = key
        if hosts:
            self.listen = [f"{ip}:7946" for _, ip in hosts]
            self.api = [f"{ip}:7947" for _, ip in hosts]
        else:
            self.listen = [f"127.0.0.3:{port_on('127.0.0.3')}" for _ in range(n)]
            self.api = [f"127.0.0.1:{port_on('127.0.0.1')}" for _ in range(n)]
        self.procs = [None] * n
        self.ids = [None] * n
        self.token = None

    def launch(self, i, joins=None):
        argv = [self.bin, "agent", "--name", f"g{i}", "--data-dir", os.path.join(self.root, f"g{i}"),
                "--api", self.api[i], "--listen", self.listen[i], "--runtime", "process", "--no-mdns"]
        if self.key:
            argv += ["--bootstrap-expect", "3", "--cluster-key", self.key]
            if i != 0:
                argv += ["--join", self.listen[0]]
        elif i != 0:
            argv += ["--join", self.listen[0], "--token", self.token]
        ns = self.hosts[i][0] if self.hosts else None
        logfile = os.path.join(self.root, f"g{i}.log")
        if joins:
            env = dict(ENV, RUST_LOG=ENV["RUST_LOG"]
                       + ",skein_node::membership=debug,skein_node::cluster::heartbeat=info")
            self.procs[i] = spawn_watched(argv, logfile, joins, env=env)
        else:
            self.procs[i] = rb.spawn(argv, logfile, env=ENV, netns=ns)

    def members(self, o):
        return http_json(f"http://{self.api[o]}/v1/members")

    def alive(self, o):
        return sum(1 for m in self.members(o)["members"] if m["state"] == "alive")

    def state_of(self, o, i):
        for m in self.members(o)["members"]:
            if m["name"] == f"g{i}":
                return m["state"]
        return None

    def nodes(self, o):
        return http_json(f"http://{self.api[o]}/v1/nodes")

    def status_of(self, o, i):
        for r in self.nodes(o):
            if r["name"] == f"g{i}":
                return r["status"]
        return None

    def leader(self):
        for o in range(self.n):
            try:
                for r in self.nodes(o):
                    if r.get("leader"):
                        return int(r["name"][1:])
            except Exception:  # noqa: BLE001
                continue
        return None

    def start_loopback(self, measure=False):
        """Starts all N (one seed, N-1 joining with a token); with measure,
        returns seconds from launching the joiners until every agent had
        logged all the others alive."""
        joins = [Joins(r"member alive peer=(\S+)", None, SKEIN_ALARM) for _ in range(self.n)] if measure else None
        self.joins = joins
        self.launch(0, joins=joins and joins[0])
        rb.wait_until("skein seed", 30, lambda: self.nodes(0))
        ok, out, err = rb.run([self.bin, "-H", f"http://{self.api[0]}", "join-token", "worker", "-q"], 10)
        if not ok:
            raise RuntimeError(f"join-token: {err}")
        self.token = out.strip()
        t0 = time.monotonic()
        for i in range(1, self.n):
            self.launch(i, joins=joins and joins[i])
        conv = converged_after(joins, t0, self.n, 90) if measure else None
        rb.wait_until("every agent lists all alive", 60,
                      lambda: all(self.alive(o) == self.n - 1 for o in range(self.n)), interval=0.2)
        rb.wait_until("all nodes ready", 60,
                      lambda: len([r for r in self.nodes(0) if r["status"] == "ready"]) == self.n)
        return conv

    def stop_all(self):
        for i in range(self.n):
            rb.stop(self.procs[i], grace=3)

    def kill(self, i):
        rb.kill9(self.procs[i])

    def restart(self, i):
        self.launch(i)
        rb.wait_until(f"g{i} alive and ready", 60,
                      lambda: all(self.state_of(o, i) == "alive" for o in range(self.n) if o != i)
                      and self.status_of(self.leader() or 0, i) == "ready", interval=0.2)

    def pid(self, i):
        return self.procs[i].pid


class LoopbackAccounting:
    """Counts the bytes (IP packets) a group of processes sends on loopback:
    each group binds its own loopback address (Serf 127.0.0.2, skein
    127.0.0.3) and two counting rules (no target, no verdict) in OUTPUT see
    every packet to or from that address exactly once. Needs root and
    iptables; removed on exit (and by bench.sh's trap)."""

    def __init__(self, ip):
        self.ip = ip
        self.rules = [["OUTPUT", "-o", "lo", "-d", ip],
                      ["OUTPUT", "-o", "lo", "-s", ip, "!", "-d", ip]]
        self.ok = os.geteuid() == 0 and rb.have("iptables")
        if not self.ok:
            return
        for r in self.rules:
            with open(os.path.join(rb.WORK, "netns"), "a") as f:
                f.write("rule - " + " ".join(r) + "\n")
            if subprocess.run(["iptables", "-I", *r], capture_output=True).returncode != 0:
                self.ok = False
        rb.CLEANUPS.append(self.remove)

    def remove(self):
        for r in self.rules:
            subprocess.run(["iptables", "-D", *r], capture_output=True)

    def bytes(self):
        if not self.ok:
            return None
        out = subprocess.run(["iptables", "-L", "OUTPUT", "-v", "-x", "-n"], capture_output=True).stdout.decode()
        total = 0
        for line in out.splitlines():
            f = line.split()
            # pkts bytes target? prot opt in out source destination
            if len(f) < 8 or not f[0].isdigit() or "lo" not in f:
                continue
            src, dst = f[-2], f[-1]
            if (src == "0.0.0.0/0" and dst == self.ip) or (src == self.ip and dst == "!" + self.ip):
                total += int(f[1])
        return total


def idle_window(acct, n, seconds, joins, label):
    """Leaves one cluster idle: IP bytes each process sends per second, and
    every suspicion or failure its processes log meanwhile."""
    log(f"{label}: idle for {seconds:.0f} s (wire bytes, false suspicions)")
    b0 = acct.bytes()
    t = time.monotonic()
    time.sleep(seconds)
    b1 = acct.bytes()
    wire = None if b0 is None or b1 is None else (b1 - b0) / n / seconds
    return wire, alarms_since(joins, t)


def loopback(a, root):
    """Per system, one after the other (so neither runs while the other is
    measured): convergence samples (a fresh cluster each; the last stays),
    an idle window (wire bytes, false suspicions), the kill trials."""
    res = {}
    n = a.n
    idle = max(a.idle, a.fp_idle)
    res["idle_s"] = idle
    log(f"serf: {n} agents on loopback, joining one seed")
    samples = []
    for k in range(a.conv_trials):
        serf = Serf(os.path.join(root, f"serf{k}"), n)
        os.makedirs(serf.root, exist_ok=True)
        samples.append(serf.start(measure=True))
        log(f"serf converged in {samples[-1]}")
        if k + 1 < a.conv_trials:
            serf.stop_all()
    res["serf_converge"] = median(samples)
    res["serf_converge_all"] = samples
    res["serf_wire"], res["serf_fp"] = idle_window(LoopbackAccounting("127.0.0.2"), n, idle, serf.joins, "serf")
    not_alive = [o for o in range(n) if serf.alive_count(o) != n]
    res["serf_fp"] += [f"serf{o} does not list all alive at the end" for o in not_alive]
    first, everyone = [], []
    for t in range(a.trials):
        victim = 1 + t % (n - 1)
        others = [o for o in range(n) if o != victim]
        serf.kill(victim)
        seen = race(others, lambda o: serf.status_of(o, victim) == "failed", 30)
        first.append(min(seen.values()) if seen else None)
        everyone.append(max(seen.values()) if len(seen) == len(others) else None)
        log(f"serf trial {t + 1}: first {first[-1]}, all {everyone[-1]}")
        serf.restart(victim)
    res["serf_kill_first"], res["serf_kill_all"] = median(first), median(everyone)
    serf.stop_all()

    log(f"skein: {n} agents on loopback, joining one seed with a token")
    samples = []
    for k in range(a.conv_trials):
        sk = Skein(a.skein, os.path.join(root, f"skein{k}"), n)
        os.makedirs(sk.root, exist_ok=True)
        samples.append(sk.start_loopback(measure=True))
        log(f"skein converged in {samples[-1]}")
        if k + 1 < a.conv_trials:
            sk.stop_all()
            rb.kill_task_processes()
    res["skein_converge"] = median(samples)
    res["skein_converge_all"] = samples
    res["skein_wire"], res["skein_fp"] = idle_window(LoopbackAccounting("127.0.0.3"), n, idle, sk.joins, "skein")
    down_now = [r["name"] for r in sk.nodes(sk.leader() or 0) if r["status"] != "ready"]
    res["skein_fp"] += [f"node {d} not ready at the end" for d in down_now]
    for name in ("serf", "skein"):
        for line in res[f"{name}_fp"][:10]:
            log(f"{name} false positive while idle: {line}")
    gossip = [sk.members(o)["gossip"] for o in range(n)]
    res["skein_gossip_out"] = median([g["bytes_out_per_s"] for g in gossip])
    res["skein_gossip_in"] = median([g["bytes_in_per_s"] for g in gossip])
    first, everyone, down = [], [], []
    for t in range(a.trials):
        leader = sk.leader() or 0
        victim = next(v % n for v in range(t + 1, t + 1 + n) if v % n not in (leader, 0))
        others = [o for o in range(n) if o != victim]
        t0 = time.monotonic()
        sk.kill(victim)
        marks = {}

        def leader_down():
            if "down" not in marks and sk.status_of(leader, victim) == "down":
                marks["down"] = time.monotonic() - t0
            return "down" in marks

        seen = race(others + ["L"], lambda o: leader_down() if o == "L" else sk.state_of(o, victim) == "dead", 30)
        seen.pop("L", None)
        first.append(min(seen.values()) if seen else None)
        everyone.append(max(seen.values()) if len(seen) == len(others) else None)
        down.append(marks.get("down"))
        log(f"skein trial {t + 1}: first {first[-1]}, all {everyone[-1]}, leader says down {down[-1]}")
        sk.restart(victim)
    res["skein_kill_first"], res["skein_kill_all"], res["skein_kill_down"] = median(first), median(everyone), median(down)
    sk.stop_all()
    rb.kill_task_processes()
    return res


def netns(a, root):
    res = {}
    lab = rb.Netns(f"g{os.getpid() % 1000}", 5, subnet="10.213.78")
    lab.up()
    hosts = list(zip(lab.names, lab.ips))
    # Serf
    serf = Serf(os.path.join(root, "serf-ns"), 5, hosts=hosts)
    os.makedirs(serf.root, exist_ok=True)
    serf.start()
    times = []
    for t in range(a.trials):
        victim = 1 + t % 4
        observer = 0
        lab.cut(victim)
        seen = race([observer], lambda o: serf.status_of(o, victim) == "failed", 40)
        times.append(seen.get(observer))
        lab.heal(victim)
        log(f"serf cut trial {t + 1}: {times[-1]}")
        rb.wait_until("serf heals", 60, lambda: all(serf.status_of(o, victim) == "alive" for o in range(5)), 0.3)
    res["serf_cut"] = median(times)
    for i in range(5):
        rb.stop(serf.procs[i], grace=2)
    # skein: bootstrap-expect 3 with one seed, as the boxes would run.
    sk = Skein(a.skein, os.path.join(root, "skein-ns"), 5, hosts=hosts, key="bench-gossip-key")
    os.makedirs(sk.root, exist_ok=True)
    for i in range(5):
        sk.launch(i)
    rb.wait_until("a 5-node skein cluster in the namespaces", 120,
                  lambda: sk.leader() is not None
                  and len([r for r in sk.nodes(sk.leader()) if r["status"] == "ready"]) == 5, 0.5)
    times = []
    for t in range(a.trials):
        leader = sk.leader()
        victim = next(v % 5 for v in range(t + 1, t + 6) if v % 5 != leader)
        lab.cut(victim)
        seen = race(["L"], lambda _o: sk.status_of(leader, victim) == "down", 40)
        times.append(seen.get("L"))
        lab.heal(victim)
        log(f"skein cut trial {t + 1}: {times[-1]}")
        rb.wait_until("skein heals", 90, lambda: sk.status_of(leader, victim) == "ready", 0.3)
    res["skein_cut"] = median(times)
    for i in range(5):
        rb.stop(sk.procs[i], grace=3)
    rb.kill_task_processes()
    return res


def fmt(x, unit=" s"):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.3f}{unit}" if unit == " s" else f"{x:,.0f}{unit}"


def ratio(a, b):
    try:
        return f"{a / b:.2f}x"
    except (TypeError, ZeroDivisionError):
        return "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skein", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--conv-trials", type=int, default=5)
    ap.add_argument("--fp-idle", type=float, default=60,
                    help="seconds both clusters stay idle while false suspicions are counted")
    ap.add_argument("--idle", type=float, default=10)
    ap.add_argument("--netns", action="store_true")
    ap.add_argument("--sim-output", default="")
    a = ap.parse_args()
    rb.WORK = a.work
    signal.signal(signal.SIGTERM, rb.on_signal)
    signal.signal(signal.SIGINT, rb.on_signal)
    ok = False
    try:
        res = loopback(a, a.work)
        if a.netns:
            res.update(netns(a, a.work))
        ok = True
    finally:
        if not ok:
            rb.keep_logs()
        rb.cleanup()
    g = lambda k: res.get(k)  # noqa: E731
    rows = [
        ("convergence, N joiners -> all see all", g("serf_converge"), g("skein_converge"), "no slower than Serf"),
        ("killed: first member declares it", g("serf_kill_first"), g("skein_kill_first"), ""),
        ("killed: every member declares it", g("serf_kill_all"), g("skein_kill_all"), ""),
        ("killed: leader marks node down", None, g("skein_kill_down"), "median < 1 s"),
    ]
    if a.netns:
        rows.append(("cut silently: marked failed/down", g("serf_cut"), g("skein_cut"), "median < 3 s"))
    print()
    print(f"gossip membership, N={a.n} on loopback (medians over {a.trials} trials; "
          f"convergence over {a.conv_trials}, from each process's own join log lines)")
    print(f"{'':42} {'serf':>10} {'skein':>10} {'skein/serf':>11}  goal")
    for name, s, k, goal in rows:
        print(f"{name:42} {fmt(s):>10} {fmt(k):>10} {ratio(k, s):>11}  {goal}")
    print(f"{'idle: bytes sent per process (IP, loopback)':42} {fmt(g('serf_wire'), ' B/s'):>10} "
          f"{fmt(g('skein_wire'), ' B/s'):>10} {ratio(g('skein_wire'), g('serf_wire')):>11}  "
          "all of skein's traffic: Raft heartbeats every 100 ms to every member dominate")
    print(f"{'idle: false suspicions/failures, ' + str(int(g('idle_s') or 0)) + ' s':42} "
          f"{len(g('serf_fp') or []):>10} {len(g('skein_fp') or []):>10} {'':>11}  none (issue: a 10-minute idle run)")
    print(f"{'skein membership metric out / in':42} {'':>10} {fmt(g('skein_gossip_out'), ' B/s'):>10} "
          f"{fmt(g('skein_gossip_in'), ' B/s'):>11}  membership payload, bounded (budget 16,384 B/s)")
    conv = lambda k: ", ".join(fmt(x) for x in (g(k) or []))  # noqa: E731
    print(f"convergence samples: serf {conv('serf_converge_all')}; skein {conv('skein_converge_all')}")
    if a.sim_output.strip():
        print()
        print(a.sim_output.strip())


if __name__ == "__main__":
    main()
