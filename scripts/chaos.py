#!/usr/bin/env python3
"""Driver of `scripts/chaos.sh`: a chaos soak of real skein agents.

3 managers and 2 workers (`skein agent --runtime process`), each in its own
network namespace on a bridge of its own (10.231.X.0/24, X from our pid).
For --minutes N a fault thread injects, at random:
  kill     kill -9 of an agent, restarted on its data dir 0.5..5 s later
  cut      silent cut of a node for 3..10 s: its veth down, or iptables
           DROP of everything from and to the other nodes in its namespace
  oneway   one-way loss for 3..10 s: iptables in the node's namespace drops
           only what comes in from (INPUT) or only what goes out to (OUTPUT)
           the other nodes
  transfer leadership handed over (`node update --transfer-leadership` on
           the leader)
  drain    `node drain` of a node, `node activate` 5..15 s later
while a client thread writes through a random manager's API (from the host,
over the bridge): `service create` (1..3 replicas, start-first or
stop-first updates), rolling updates (`service update --args`), `service
scale`, `service rm`. Every task is `sleep <version>` with CHAOS_RUN=<tag>
in its environment; only workers run tasks (`node.role==worker`).

Checks:
  lost writes      every write whose CLI exited 0 is on every manager at the
                   end (a create is there unless a later rm was tried, an rm's
                   service is gone, an update's args and a scale's replicas
                   are there or were replaced by a later attempted write)
  over-replicated  once a second, the task processes themselves (found in
                   /proc by CHAOS_RUN in their environment, the namespace
                   telling the node) are counted per slot: more than 1 (2
                   for a start-first service: the update's surge) is a
                   violation. A node that is down to the cluster keeps its
                   copies until it is back (skein has no fencing: a killed
                   agent's tasks run on, a cut worker's copies are stopped
                   when it returns), so while a worker is faulted and for
                   GRACE s after it healed its processes are not counted;
                   after that a stale copy counts like any other. Nor is a
                   slot counted that has a copy on a worker some manager
                   showed not ready within GRACE s (polled twice a second):
                   those samples, and how often a worker no fault touched
                   was marked down, are printed apart.
  converged        after the last heal, within 30 s: every manager sees 5
                   ready nodes, every service at its replica count, and on
                   the workers exactly one process per slot
  no panics        no agent log says "panicked"
Exits 0 only when every check passes.

Everything it starts is recorded under WORK (pids, namespaces, links, the
host iptables rule) so chaos.sh's trap can undo it if this driver dies.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

GRACE = 15.0  # seconds after a worker's fault heals (or it was seen down) before its processes count again
SETTLE = 3.0  # seconds a sample waits for the node status seen around it
CONVERGE_LIMIT = 30.0
MAX_SERVICES = 8

WORK = None
BIN = None
TAG = None
LOCK = threading.Lock()
STOP = threading.Event()  # the writer and the fault loop
STOP_SAMPLER = threading.Event()


def log(msg):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def note(line):
    with open(os.path.join(WORK, "undo"), "a") as f:
        f.write(line + "\n")


def sh(*argv, check=True, timeout=30):
    r = subprocess.run(list(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.decode(errors='replace').strip()}")
    return r


# --------------------------------------------------------------------------
# the lab: a bridge, one namespace per node

class Lab:
    def __init__(self, names):
        pid = os.getpid()
        self.tag = f"{pid % 100000}"
        self.net = f"10.231.{pid % 250}"
        self.bridge = f"skcb{self.tag}"
        self.gw = f"{self.net}.1"
        self.names = names
        self.ns = {n: f"skc{self.tag}{n}" for n in names}
        self.hostveth = {n: f"skc{self.tag}{n}h" for n in names}
        self.ip = {n: f"{self.net}.{11 + i}" for i, n in enumerate(names)}
        self.inode = {}
        self.rules = {n: [] for n in names}  # iptables rules in force per namespace

    def up(self):
        routes = sh("ip", "-4", "route", "show").stdout.decode()
        if f"{self.net}." in routes:
            raise RuntimeError(f"{self.net}.0/24 is already routed on this host: pick another run")
        note(f"link {self.bridge}")
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gw}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        # Where Docker runs, FORWARD's policy is DROP and bridged frames meet it.
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        note("rule " + " ".join(rule))
        sh("iptables", "-I", *rule)
        for n in self.names:
            ns, host, peer = self.ns[n], self.hostveth[n], f"skc{self.tag}{n}p"
            note(f"ns {ns}")
            sh("ip", "netns", "add", ns)
            note(f"link {host}")
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", host, "master", self.bridge)
            sh("ip", "link", "set", host, "up")
            self.x(n, "ip", "addr", "add", f"{self.ip[n]}/24", "dev", peer)
            self.x(n, "ip", "link", "set", peer, "up")
            self.x(n, "ip", "link", "set", "lo", "up")
            self.inode[os.stat(f"/run/netns/{ns}").st_ino] = n

    def x(self, n, *argv, check=True):
        return sh("ip", "netns", "exec", self.ns[n], *argv, check=check)

    def link(self, n, up):
        sh("ip", "link", "set", self.hostveth[n], "up" if up else "down")

    def drop(self, n, chain):
        """Drops, in n's namespace, what comes from (INPUT) or goes to (OUTPUT)
        the other nodes; the host (the client, on the bridge address) still
        reaches its API."""
        flag = "-s" if chain == "INPUT" else "-d"
        for rule in ([chain, flag, self.gw, "-j", "ACCEPT"],
                     [chain, flag, f"{self.net}.0/24", "-j", "DROP"]):
            self.x(n, "iptables", "-A", *rule)
            self.rules[n].append(rule)

    def undrop(self, n):
        for rule in self.rules[n]:
            self.x(n, "iptables", "-D", *rule, check=False)
        self.rules[n] = []

    def node_of(self, pid):
        try:
            return self.inode.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            return None

    def down(self):
        for n in self.names:
            ns = self.ns[n]
            r = sh("ip", "netns", "pids", ns, check=False)
            for p in r.stdout.decode().split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(0.2)
        for n in self.names:
            sh("ip", "netns", "del", self.ns[n], check=False)
            sh("ip", "link", "del", self.hostveth[n], check=False)
        sh("iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT", check=False)
        sh("ip", "link", "del", self.bridge, check=False)


# --------------------------------------------------------------------------
# agents

class Cluster:
    MANAGERS = ["m1", "m2", "m3"]
    WORKERS = ["w1", "w2"]

    def __init__(self, lab):
        self.lab = lab
        self.procs = {}
        self.env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))

    def dir(self, n):
        return os.path.join(WORK, n)

    def api(self, n):
        return f"{self.lab.ip[n]}:7947"

    def argv(self, n, join=None, token=None):
        a = [BIN, "agent", "--data-dir", os.path.join(self.dir(n), "data"), "--name", n,
             "--api", self.api(n), "--listen", f"{self.lab.ip[n]}:7946",
             "--runtime", "process", "--no-mdns"]
        if join:
            a += ["--join", join, "--token", token]
        return a

    def spawn(self, n, join=None, token=None):
        os.makedirs(self.dir(n), exist_ok=True)
        out = open(os.path.join(self.dir(n), "agent.log"), "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.lab.ns[n]] + self.argv(n, join, token),
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=self.env)
        out.close()
        with open(os.path.join(WORK, "pids"), "a") as f:
            f.write(f"{p.pid}\n")
        self.procs[n] = p

    def alive(self, n):
        p = self.procs.get(n)
        return p is not None and p.poll() is None

    def kill9(self, n):
        p = self.procs.pop(n, None)
        if p is None:
            return
        # `ip netns exec` execs the agent: the pid is the agent's.
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    def stop_all(self):
        for n in list(self.procs):
            p = self.procs[n]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for n in list(self.procs):
            p = self.procs[n]
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            self.kill9(n)

    def cli(self, n, args, timeout=20):
        try:
            r = subprocess.run([BIN, "-H", self.api(n)] + args, capture_output=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None, "", "timed out"
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def get(self, n, path, timeout=3):
        try:
            with urllib.request.urlopen(f"http://{self.api(n)}{path}", timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def nodes(self, n):
        return self.get(n, "/v1/nodes")

    def leader(self):
        for m in random.sample(self.MANAGERS, 3):
            rows = self.nodes(m)
            if rows:
                lead = [r["name"] for r in rows if r.get("leader") is True]
                if len(lead) == 1:
                    return lead[0], rows
        return None, None

    def start(self):
        lab = self.lab
        self.spawn("m1")
        wait_until("m1's API", 60, lambda: self.nodes("m1"))
        mt = wait_until("a manager token", 30, lambda: (lambda r: r[1].strip() if r[0] == 0 else None)(
            self.cli("m1", ["join-token", "manager", "-q"])))
        wt = wait_until("a worker token", 30, lambda: (lambda r: r[1].strip() if r[0] == 0 else None)(
            self.cli("m1", ["join-token", "worker", "-q"])))
        for m in ["m2", "m3"]:
            self.spawn(m, f"{lab.ip['m1']}:7946", mt)
            wait_until(f"{m} to join", 60, lambda m=m: self.nodes(m))
        self.spawn("w1", f"{lab.ip['m1']}:7946", wt)
        self.spawn("w2", f"{lab.ip['m2']}:7946", wt)
        wait_until("5 ready nodes seen by every manager", 90, self.all_ready)

    def all_ready(self):
        for m in self.MANAGERS:
            rows = self.nodes(m)
            if not rows or len(rows) != 5 or any(r.get("status") != "ready" for r in rows):
                return False
            if sum(1 for r in rows if r.get("leader") is True) != 1:
                return False
        return True


def wait_until(what, timeout, f, interval=0.3):
    end = time.time() + timeout
    while time.time() < end:
        v = f()
        if v:
            return v
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------
# ground truth: task processes in /proc

def task_processes(lab):
    """[(node, service, slot, task_id, pid)] of our runs' task processes."""
    out = []
    marker = f"CHAOS_RUN={TAG}".encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
            if marker not in env:
                continue
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if os.path.basename(argv[0]) != b"sleep":
                continue
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
        except OSError:
            continue
        vars_ = dict(kv.split(b"=", 1) for kv in env.split(b"\0") if b"=" in kv)
        node = lab.node_of(d)
        out.append((node, vars_.get(b"SKEIN_SERVICE_NAME", b"").decode(),
                    vars_.get(b"SKEIN_TASK_SLOT", b"").decode(),
                    vars_.get(b"SKEIN_TASK_ID", b"").decode(), int(d)))
    return out


# --------------------------------------------------------------------------
# shared state between threads

class State:
    def __init__(self):
        self.faulted = {}  # node -> description, while a fault is in force
        self.excluded_until = {}  # worker -> time its processes count again
        self.order = {}  # service -> "start-first" | "stop-first"
        self.writes = []  # dicts: seq, kind, service, value, acked
        self.faults = {k: 0 for k in ["kill", "cut-link", "cut-iptables", "oneway-in", "oneway-out",
                                      "transfer", "drain"]}
        self.fault_failures = 0
        self.samples = 0
        self.over = []  # (time, service, slot, [(node, task, pid)])
        self.max_per_slot = 0
        self.died = []  # (time, node, exit status) of agents that exited on their own
        self.beside = 0  # samples where a faulted worker's copy ran beside its replacement
        self.down_seen = {}  # worker -> times some manager showed it not ready
        self.down_dups = []  # like `over`, on a worker the cluster had marked down
        self.false_downs = []  # (time, worker) marked down with no fault on it

    def excluded(self, node, now):
        return node in self.faulted or self.excluded_until.get(node, 0) > now


ST = State()


def down_near(node, t):
    """Whether some manager showed `node` not ready within GRACE s before
    `t` or SETTLE s after it (a replacement starts after the verdict; the
    watcher polls only twice a second)."""
    return any(t - GRACE <= d <= t + SETTLE for d in ST.down_seen.get(node, ()))


def judge(pending, final=False):
    """Decides the samples older than SETTLE s (all when `final`)."""
    now = time.time()
    keep = []
    for t, svc, slot, ps, allowed in pending:
        if not final and t > now - SETTLE:
            keep.append((t, svc, slot, ps, allowed))
            continue
        if any(down_near(node, t) for node, _, _ in ps):
            ST.down_dups.append((time.strftime("%H:%M:%S", time.localtime(t)), svc, slot, ps))
        else:
            ST.over.append((time.strftime("%H:%M:%S", time.localtime(t)), svc, slot, ps))
            log(f"OVER-REPLICATED: {svc} slot {slot} runs {len(ps)} (allowed {allowed}): {ps}")
    return keep


def sampler(lab):
    pending = []
    while not STOP_SAMPLER.is_set():
        t0 = time.time()
        with LOCK:
            excl_before = {n for n in lab.names if ST.excluded(n, t0)}
        procs = task_processes(lab)
        t1 = time.time()
        with LOCK:
            excl = excl_before | {n for n in lab.names if ST.excluded(n, t1)}
            slots = {}
            aside = {}  # copies on faulted workers, not counted
            for node, svc, slot, task, pid in procs:
                if slot == "":
                    continue
                if node in excl:
                    aside.setdefault((svc, slot), []).append(node)
                    continue
                slots.setdefault((svc, slot), []).append((node, task, pid))
            ST.samples += 1
            # For the record: a faulted worker's copy running beside its
            # replacement (skein does not fence: by design until it is back).
            if any(k in slots for k in aside):
                ST.beside += 1
            for (svc, slot), ps in slots.items():
                ST.max_per_slot = max(ST.max_per_slot, len(ps))
                allowed = 2 if ST.order.get(svc) == "start-first" else 1
                if len(ps) > allowed:
                    pending.append((t0, svc, slot, ps, allowed))
            pending = judge(pending)
        STOP_SAMPLER.wait(max(0.0, 1.0 - (time.time() - t0)))
    with LOCK:
        judge(pending, final=True)


def watcher(cl):
    """Twice a second, what every manager says of the workers: when one is
    not ready, and how often a worker no fault touched was marked down."""
    was_down = {w: False for w in cl.WORKERS}
    while not STOP_SAMPLER.is_set():
        t = time.time()
        down = set()
        for m in cl.MANAGERS:
            rows = cl.get(m, "/v1/nodes", timeout=1)
            for r in rows or ():
                if r.get("name") in was_down and r.get("status") != "ready":
                    down.add(r["name"])
        with LOCK:
            for w in cl.WORKERS:
                if w in down:
                    ST.down_seen.setdefault(w, []).append(t)
                    if not was_down[w] and not ST.excluded(w, t):
                        ST.false_downs.append((time.strftime("%H:%M:%S", time.localtime(t)), w))
                        log(f"note: {w} is marked down though no fault touches it")
                was_down[w] = w in down
        STOP_SAMPLER.wait(max(0.0, 0.5 - (time.time() - t)))


# --------------------------------------------------------------------------
# the client

def writer(cl, rng):
    seq = 0
    live = []  # services we created and did not try to remove
    while not STOP.is_set():
        seq += 1
        m = rng.choice(cl.MANAGERS)
        r = rng.random()
        if len(live) < 3 or (r < 0.2 and len(live) < MAX_SERVICES):
            name = f"c{seq}"
            replicas = rng.randint(1, 3)
            order = rng.choice(["start-first", "stop-first"])
            with LOCK:
                ST.order[name] = order
            args = ["service", "create", "--detach", "--name", name, "--replicas", str(replicas),
                    "--env", f"CHAOS_RUN={TAG}", "--constraint", "node.role==worker",
                    "--update-order", order, "--update-parallelism", "1", "--update-delay", "0s",
                    "--update-monitor", "1s", "--restart-delay", "1s", "--stop-grace-period", "2s"]
            if rng.random() < 0.5:
                args += ["--on-disconnect", "stop-after=2s"]
            args += ["sleep", str(1000000 + seq)]
            w = {"seq": seq, "kind": "create", "service": name, "replicas": replicas,
                 "args": 1000000 + seq}
            live.append(name)
        elif r < 0.6:
            name = rng.choice(live)
            detach = rng.random() < 0.7
            args = ["service", "update", "--args", str(1000000 + seq), name]
            if detach:
                args.insert(2, "--detach")
            w = {"seq": seq, "kind": "update", "service": name, "args": 1000000 + seq}
        elif r < 0.85:
            name = rng.choice(live)
            n = rng.randint(1, 3)
            args = ["service", "scale", "--detach", f"{name}={n}"]
            w = {"seq": seq, "kind": "scale", "service": name, "replicas": n}
        else:
            name = rng.choice(live)
            live.remove(name)
            args = ["service", "rm", "--detach", name]
            w = {"seq": seq, "kind": "rm", "service": name}
        t0 = time.time()
        code, out, err = cl.cli(m, args, timeout=60 if "--detach" not in args else 20)
        w["at"] = time.strftime("%H:%M:%S", time.localtime(t0))
        w["took"] = round(time.time() - t0, 2)
        w["acked"] = code == 0
        w["via"] = m
        w["error"] = "" if code == 0 else (err.strip().splitlines() or ["?"])[-1][:200]
        with LOCK:
            ST.writes.append(w)
        STOP.wait(rng.uniform(0.2, 1.0))


# --------------------------------------------------------------------------
# faults

class Faults:
    def __init__(self, cl, lab, rng):
        self.cl, self.lab, self.rng = cl, lab, rng
        self.active = {}  # node -> (kind, heal_at)
        self.drained = {}  # node -> activate_at

    def start_one(self):
        rng = self.rng
        kind = rng.choices(["kill", "cut", "oneway", "transfer", "drain"], [3, 3, 3, 2, 2])[0]
        if kind == "transfer":
            lead, _ = self.cl.leader()
            if lead is None:
                return
            code, _, err = self.cl.cli(self.via(),
                                       ["node", "update", "--availability", self.availability(lead),
                                        "--transfer-leadership", lead], timeout=15)
            ST.faults["transfer"] += 1
            if code != 0:
                ST.fault_failures += 1
            log(f"fault: leadership transfer away from {lead}: {'ok' if code == 0 else err.strip()[:120]}")
            return
        if kind == "drain":
            if self.drained:
                return
            n = rng.choice(self.cl.MANAGERS + self.cl.WORKERS)
            code, _, err = self.cl.cli(self.via(), ["node", "drain", n], timeout=15)
            ST.faults["drain"] += 1
            if code != 0:
                ST.fault_failures += 1
            log(f"fault: drain {n}: {'ok' if code == 0 else err.strip()[:120]}")
            self.drained[n] = time.time() + rng.uniform(5, 15)
            return
        # At most one manager and one worker faulted at a time: the cluster
        # keeps its quorum and somewhere to run tasks.
        group = rng.choice([self.cl.MANAGERS, self.cl.WORKERS])
        if any(n in group for n in self.active):
            return
        n = rng.choice(group)
        if kind == "kill":
            self.cl.kill9(n)
            label = "kill"
            heal = rng.uniform(0.5, 5)
        elif kind == "cut":
            if rng.random() < 0.5:
                self.lab.link(n, False)
                label = "cut-link"
            else:
                self.lab.drop(n, "INPUT")
                self.lab.drop(n, "OUTPUT")
                label = "cut-iptables"
            heal = rng.uniform(3, 10)
        else:
            chain = rng.choice(["INPUT", "OUTPUT"])
            self.lab.drop(n, chain)
            label = "oneway-in" if chain == "INPUT" else "oneway-out"
            heal = rng.uniform(3, 10)
        ST.faults[label] += 1
        with LOCK:
            ST.faulted[n] = label
        self.active[n] = (label, time.time() + heal)
        log(f"fault: {label} {n} for {heal:.1f} s")

    def via(self):
        """A manager to send a fault's command to: one not faulted itself."""
        ok = [m for m in self.cl.MANAGERS if m not in self.active]
        return self.rng.choice(ok or self.cl.MANAGERS)

    def availability(self, n):
        return "drain" if n in self.drained else "active"

    def heal(self, n):
        label, _ = self.active.pop(n)
        if label == "cut-link":
            self.lab.link(n, True)
        elif label != "kill":
            self.lab.undrop(n)
        if not self.cl.alive(n):
            self.cl.spawn(n)
        with LOCK:
            ST.faulted.pop(n, None)
            ST.excluded_until[n] = time.time() + GRACE
        log(f"heal: {label} {n}")

    def activate(self, n):
        for _ in range(20 if STOP.is_set() else 3):
            code, _, err = self.cl.cli(self.via(), ["node", "activate", n], timeout=15)
            if code == 0:
                self.drained.pop(n, None)
                log(f"heal: activate {n}")
                return True
            time.sleep(1)
        log(f"activate {n} failed: {err.strip()[:120]}")
        return False

    def check_alive(self):
        """An agent that exited without being killed here is a failure
        (a crash, or "no raft leader after 30s" at a restart)."""
        for n, p in list(self.cl.procs.items()):
            if p.poll() is not None:
                self.cl.procs.pop(n)
                ST.died.append((time.strftime("%H:%M:%S"), n, p.returncode))
                log(f"UNEXPECTED: agent {n} exited with status {p.returncode}")
                if n not in self.active:
                    # Started again in a second, like a killed one.
                    self.active[n] = ("kill", time.time() + 1)
                    with LOCK:
                        ST.faulted[n] = "died"

    def tick(self):
        self.check_alive()
        now = time.time()
        for n, (_, at) in list(self.active.items()):
            if at <= now:
                self.heal(n)
        for n, at in list(self.drained.items()):
            if at <= now:
                if not self.activate(n):
                    self.drained[n] = now + 2

    def heal_all(self):
        for n in list(self.active):
            self.heal(n)
        for n in list(self.drained):
            if not self.activate(n):
                raise RuntimeError(f"cannot activate {n} after the chaos")


# --------------------------------------------------------------------------
# checks

def converged(cl, lab):
    """None when converged, else what is still missing."""
    services = None
    for m in cl.MANAGERS:
        rows = cl.nodes(m)
        if not rows or len(rows) != 5:
            return f"{m} sees {len(rows) if rows else 'no'} nodes"
        bad = [r["name"] for r in rows if r.get("status") != "ready"]
        if bad:
            return f"{m} sees {bad} not ready"
        svcs = cl.get(m, "/v1/services")
        if svcs is None:
            return f"{m}: no service list"
        off = [f"{s['name']} {s['running']}/{s['replicas']}" for s in svcs if s["running"] != s["replicas"]]
        if off:
            return f"{m}: {off}"
        if services is None:
            services = {s["name"]: s["replicas"] for s in svcs}
    per = {}
    for node, svc, slot, _, _ in task_processes(lab):
        per.setdefault(svc, []).append(slot)
    for name, replicas in services.items():
        slots = per.pop(name, [])
        if len(slots) != replicas or len(set(slots)) != len(slots):
            return f"{name}: processes in slots {sorted(slots)}, replicas {replicas}"
    if per:
        return f"processes of services that no longer exist: {sorted(per)}"
    return None


def lost_writes(cl):
    """Acknowledged writes missing on some manager: [(manager, write, found)]."""
    lost = []
    writes = sorted(ST.writes, key=lambda w: w["seq"])
    for m in cl.MANAGERS:
        rows = cl.get(m, "/v1/services", timeout=10)
        if rows is None:
            return [(m, None, "no answer")]
        have = {}
        for r in rows:
            d = cl.get(m, f"/v1/services/{r['name']}", timeout=10)
            if d is None:
                return [(m, None, f"no answer for {r['name']}")]
            spec = d["spec"]
            have[r["name"]] = (spec.get("replicas"), int((spec.get("command") or ["0"])[0]))
        for i, w in enumerate(writes):
            if not w["acked"]:
                continue
            name = w["service"]
            later = [x for x in writes[i + 1:] if x["service"] == name]
            if w["kind"] == "rm":
                if name in have:
                    lost.append((m, w, "still there"))
                continue
            if any(x["kind"] == "rm" for x in later):
                continue  # a removal was at least tried after it
            if name not in have:
                lost.append((m, w, "missing"))
                continue
            replicas, args = have[name]
            if w["kind"] in ("create", "scale"):
                ok = {w["replicas"]} | {x["replicas"] for x in later if x["kind"] == "scale"}
                if replicas not in ok:
                    lost.append((m, w, f"replicas {replicas}"))
            if w["kind"] in ("create", "update"):
                ok = {w["args"]} | {x["args"] for x in later if x["kind"] == "update"}
                if args not in ok:
                    lost.append((m, w, f"args {args}"))
    return lost


def panics(cl):
    found = []
    for n in cl.MANAGERS + cl.WORKERS:
        try:
            with open(os.path.join(cl.dir(n), "agent.log"), errors="replace") as f:
                for line in f:
                    if "panicked" in line:
                        found.append(f"{n}: {line.strip()[:300]}")
        except OSError:
            pass
    return found


# --------------------------------------------------------------------------

def main():
    global WORK, BIN, TAG
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep-logs", default="")
    a = ap.parse_args()
    WORK, BIN = a.work, a.bin
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    TAG = f"{os.getpid()}-{seed}"
    rng = random.Random(seed)
    random.seed(seed + 1)

    def on_term(*_):
        # Once: the cleanup below must run to its end whatever comes next.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    lab = Lab(Cluster.MANAGERS + Cluster.WORKERS)
    cl = Cluster(lab)
    ok = False
    try:
        log(f"seed {seed}, subnet {lab.net}.0/24, {a.minutes} min of faults, binary {BIN}")
        lab.up()
        cl.start()
        log("cluster of 3 managers + 2 workers is up")
        threads = [threading.Thread(target=sampler, args=(lab,), daemon=True),
                   threading.Thread(target=writer, args=(cl, random.Random(seed + 2)), daemon=True),
                   threading.Thread(target=watcher, args=(cl,), daemon=True)]
        for t in threads:
            t.start()
        faults = Faults(cl, lab, rng)
        end = time.time() + a.minutes * 60
        next_fault = time.time() + rng.uniform(1, 3)
        while time.time() < end:
            faults.tick()
            if time.time() >= next_fault:
                faults.start_one()
                next_fault = time.time() + rng.uniform(1.5, 5)
            time.sleep(0.2)
        log("chaos over: stopping the client, healing everything")
        STOP.set()
        threads[1].join(timeout=90)
        faults.check_alive()
        faults.heal_all()
        healed = time.time()
        # The sampler keeps counting through convergence.
        last = None
        conv = None
        while time.time() - healed < 120:
            last = converged(cl, lab)
            if last is None:
                conv = time.time() - healed
                break
            time.sleep(0.5)
        log(f"converged in {conv:.1f} s" if conv is not None else f"not converged after 120 s: {last}")
        # Followers apply what is committed a moment later: retry a little.
        lost = lost_writes(cl)
        for _ in range(10):
            if not lost:
                break
            time.sleep(2)
            lost = lost_writes(cl)
        STOP_SAMPLER.set()
        threads[0].join(timeout=10)
        threads[2].join(timeout=10)
        pan = panics(cl)

        acked = [w for w in ST.writes if w["acked"]]
        by_kind = {}
        for w in ST.writes:
            k = by_kind.setdefault(w["kind"], [0, 0])
            k[0] += 1
            k[1] += w["acked"]
        print()
        print("chaos soak summary")
        print(f"  seed {seed}; {a.minutes:g} min of faults; 3 managers + 2 workers in network namespaces")
        print("  faults:      " + ", ".join(f"{k} {v}" for k, v in ST.faults.items())
              + f" (fault commands that failed: {ST.fault_failures})")
        print("  writes:      " + ", ".join(f"{k} {v[1]}/{v[0]} acknowledged" for k, v in sorted(by_kind.items()))
              + f"; {len(acked)} acknowledged of {len(ST.writes)}")
        print(f"  lost writes: {len(lost)}")
        for m, w, why in lost[:20]:
            print(f"    {m}: {why}: {w}")
        print(f"  over-replicated samples: {len(ST.over)} (of {ST.samples} samples; most processes seen in one slot: {ST.max_per_slot})")
        for t, svc, slot, ps in ST.over[:20]:
            print(f"    {t} {svc} slot {slot}: {ps}")
        print(f"  (not counted: a faulted worker's processes, until {GRACE:g} s after it healed; samples where"
              f" such a copy ran beside its replacement: {ST.beside})")
        print(f"  (not counted either: {len(ST.down_dups)} samples of a slot running twice with a copy on a worker"
              f" the cluster had marked down within {GRACE:g} s: skein does not fence, the copies stop when it is back)")
        for t, svc, slot, ps in ST.down_dups[:5]:
            print(f"    {t} {svc} slot {slot}: {ps}")
        print(f"  workers marked down while no fault touched them: {len(ST.false_downs)}"
              + (" (" + ", ".join(f"{w} at {t}" for t, w in ST.false_downs[:10]) + ")" if ST.false_downs else ""))
        if conv is not None:
            print(f"  converged in {conv:.1f} s after the last heal (limit {CONVERGE_LIMIT:g} s)")
        else:
            print(f"  NOT converged 120 s after the last heal: {last}")
        print(f"  agents that exited on their own: {len(ST.died)}")
        for t, n, code in ST.died[:10]:
            print(f"    {t} {n}: exit status {code} (restarted)")
        print(f"  panics: {len(pan)}")
        for p in pan[:10]:
            print(f"    {p}")
        ok = (not lost and not ST.over and conv is not None and conv <= CONVERGE_LIMIT and not pan
              and not ST.died)
        print(f"  result: {'PASS' if ok else 'FAIL'}")
        sys.stdout.flush()
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as e:  # noqa: BLE001 - report and clean up
        log(f"error: {e}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        STOP.set()
        STOP_SAMPLER.set()
        if not ok and a.keep_logs:
            import shutil
            os.makedirs(a.keep_logs, exist_ok=True)
            for n in lab.names:
                src = os.path.join(WORK, n, "agent.log")
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(a.keep_logs, f"{n}.log"))
            with open(os.path.join(a.keep_logs, "writes.json"), "w") as f:
                json.dump(ST.writes, f, indent=1)
            log(f"logs kept in {a.keep_logs}")
        cl.stop_all()
        lab.down()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
