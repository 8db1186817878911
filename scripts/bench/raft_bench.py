#!/usr/bin/env python3
"""Driver of `scripts/bench.sh raft` (and `raft-netns`): skein's Raft next to etcd's.

Measures, on this machine, in one run:
  1. leader failover: kill -9 the leader of a 3-manager cluster, time from the
     kill to the next successfully committed write sent (tight retry loop,
     small per-attempt timeout) to a surviving manager; restart the killed one
     on its data dir, wait until the cluster is whole again; TRIALS times; the
     same for a 3-member etcd cluster. p50 and p99 (nearest rank).
  2. placements per second: the in-process benchmark (node/examples/
     placement_bench.rs, output passed in by bench.sh) and end to end through
     a real single agent (service create --replicas N until every task is
     assigned, read through the HTTP API).
  3. idle RSS of a manager and a worker of a running cluster.
Prints a table with ratios, the goals of issue 4 and PASS/MISS.

Everything it starts is recorded in WORK/pids (pid per line) and stopped on
exit; bench.sh's trap stops whatever is left. Traffic goes to loopback only
(and, for raft-netns, to the namespaces this script creates).
"""

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

# --------------------------------------------------------------------------
# process bookkeeping and cleanup

WORK = None
# Agents log raft-rs's election lines too (a few per election), so that a run
# that goes wrong can be read afterwards.
AGENT_ENV = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info,raft=info"))
PROCS = []  # Popen objects we started and have not reaped
CLEANUPS = []  # callables, run in reverse order at exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def record_pid(pid):
    with open(os.path.join(WORK, "pids"), "a") as f:
        f.write(f"{pid}\n")


def spawn(argv, logfile, env=None, netns=None):
    """Starts a long-running process (own session, output to logfile)."""
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    out = open(logfile, "ab")
    p = subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    out.close()
    PROCS.append(p)
    record_pid(p.pid)
    return p


def kill9(p):
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()
    if p in PROCS:
        PROCS.remove(p)


def stop(p, grace=5.0):
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    kill9(p)


def processes_under(path):
    """Pids of processes whose command line mentions `path` (task shims of our agents)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            pids.append(int(d))
    return pids


def session_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def kill_task_processes(path=None):
    """Task processes our agents started: each task runs under a shim whose
    command line names the agent's data dir (inside WORK) and which leads a
    session of its own; the task is in that session. Kill those sessions."""
    me = os.getpid()
    own_sid = session_of(me)
    sids = set()
    for pid in processes_under(path or WORK):
        sid = session_of(pid)
        # Only sessions led by a process of ours, never the one this driver runs in.
        if sid == pid and sid != own_sid:
            sids.add(sid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not sids:
        return
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me and session_of(int(d)) in sids:
            try:
                os.kill(int(d), signal.SIGKILL)
            except ProcessLookupError:
                pass


def cleanup():
    # A second Ctrl-C or bench.sh's TERM must not cut the cleanup short.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    for p in list(PROCS):
        try:
            kill9(p)
        except Exception:
            pass
    kill_task_processes()
    while CLEANUPS:
        f = CLEANUPS.pop()
        try:
            f()
        except Exception as e:
            log(f"cleanup step failed: {e}")


def keep_logs():
    """After a failure: copy the agents' and etcd's logs out of WORK (which is removed)."""
    dest = f"/tmp/skein-bench-logs-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    for root, _dirs, files in os.walk(WORK):
        for f in files:
            if f.endswith(".log"):
                rel = os.path.relpath(os.path.join(root, f), WORK)
                if rel.count(os.sep) > 3:  # task output logs: not needed
                    continue
                os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
                shutil.copy(os.path.join(root, f), os.path.join(dest, rel))
                n += 1
    if n:
        log(f"logs kept in {dest}")


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# helpers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(argv, timeout, env=None, netns=None):
    """Runs a short command; returns (ok, stdout, stderr); a timeout is a failure."""
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    try:
        r = subprocess.run(
            argv, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return False, "", "timeout"
    return r.returncode == 0, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def wait_until(what, timeout, f, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = f()
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last = e
            v = None
        if v is not None and v is not False:
            return v
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


def pct(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(1, math.ceil(p / 100 * len(v)))
    return v[k - 1]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------
# the systems under test. Each offers: start(), leader() -> index or None,
# whole() -> bool, write(i, n) -> bool, pid(i), kill9(i), restart(i), stop().

class Skein:
    label = "skein"
    member = "m"

    def __init__(self, binary, root, attempt_timeout, hosts=None):
        self.bin = binary
        self.root = os.path.join(root, "skein")
        self.t = attempt_timeout
        # hosts: [(netns or None, ip)] per manager; loopback by default.
        self.hosts = hosts or [(None, "127.0.0.1")] * 3
        self.n = len(self.hosts)
        self.api = []
        self.listen = []
        for ns, ip in self.hosts:
            if ns:
                self.api.append(f"{ip}:7947")
                self.listen.append(f"{ip}:7946")
            else:
                self.api.append(f"127.0.0.1:{free_port()}")
                self.listen.append(f"127.0.0.1:{free_port()}")
        self.procs = [None] * self.n
        self.worker = None
        self.worker_dir = None

    def dir(self, i):
        return os.path.join(self.root, f"m{i + 1}")

    def _argv(self, i, join=None, token=None):
        a = [self.bin, "agent", "--data-dir", self.dir(i), "--name", f"m{i + 1}",
             "--api", self.api[i], "--listen", self.listen[i], "--runtime", "process"]
        if join:
            a += ["--join", join, "--token", token]
        return a

    def _launch(self, i, join=None, token=None):
        os.makedirs(self.dir(i), exist_ok=True)
        self.procs[i] = spawn(self._argv(i, join, token), os.path.join(self.dir(i), "agent.log"),
                              env=AGENT_ENV, netns=self.hosts[i][0])
        wait_until(f"skein m{i + 1}'s API", 30, lambda: self.cli(i, ["node", "ls", "--format", "json"])[0])

    def cli(self, i, args, timeout=5.0):
        return run([self.bin, "-H", self.api[i]] + args, timeout)

    def start(self):
        self._launch(0)
        ok, tok, err = wait_until("a manager join token", 30,
                                  lambda: (lambda r: r if r[0] else None)(self.cli(0, ["join-token", "manager", "-q"])))
        token = tok.strip()
        for i in range(1, self.n):
            self._launch(i, join=self.listen[0], token=token)
        wait_until("3 ready skein managers with one leader", 60, self.whole)
        # `node ls` shows a joining manager as a ready manager while it is still
        # a Raft learner; only the logs tell when it becomes a voter.
        wait_until("every manager a Raft voter", 60, self.all_voters)

    def all_voters(self):
        for i in range(self.n):
            try:
                with open(os.path.join(self.dir(i), "agent.log"), errors="replace") as f:
                    lines = [x for x in f if "membership changed" in x]
            except OSError:
                return False
            if not lines:
                return False
            last = lines[-1]
            voters = last.split("voters=[", 1)[1].split("]", 1)[0] if "voters=[" in last else ""
            learners = last.split("learners=[", 1)[1].split("]", 1)[0] if "learners=[" in last else "x"
            if len([v for v in voters.split(",") if v.strip()]) != self.n or learners.strip():
                return False
        return True

    def add_worker(self):
        ok, tok, err = self.cli(0, ["join-token", "worker", "-q"])
        if not ok:
            raise RuntimeError(f"worker token: {err}")
        self.worker_dir = os.path.join(self.root, "w1")
        os.makedirs(self.worker_dir, exist_ok=True)
        api = f"127.0.0.1:{free_port()}"
        argv = [self.bin, "agent", "--data-dir", self.worker_dir, "--name", "w1", "--api", api,
                "--listen", f"127.0.0.1:{free_port()}", "--runtime", "process",
                "--join", self.listen[0], "--token", tok.strip()]
        self.worker = spawn(argv, os.path.join(self.worker_dir, "agent.log"), env=AGENT_ENV)

        def four_ready():
            ok, out, _ = self.cli(0, ["node", "ls", "--format", "json"])
            nodes = json.loads(out) if ok else []
            return len(nodes) == self.n + 1 and all(x["status"] == "ready" for x in nodes)
        wait_until("the worker to be ready", 60, four_ready)

    def nodes(self, i):
        ok, out, _ = self.cli(i, ["node", "ls", "--format", "json"], timeout=2.0)
        return json.loads(out) if ok else None

    def leader(self):
        names = set()
        for i in range(self.n):
            if self.procs[i] is None or self.procs[i].poll() is not None:
                continue
            ns = self.nodes(i)
            if ns is None:
                return None
            lead = [x["name"] for x in ns if x.get("leader") is True]
            if len(lead) != 1:
                return None
            names.add(lead[0])
        if len(names) != 1:
            return None
        name = names.pop()
        return int(name[1:]) - 1 if name.startswith("m") else None

    def whole(self):
        """Every manager answers, sees 3 ready managers and the same single leader."""
        for i in range(self.n):
            if self.procs[i] is None or self.procs[i].poll() is not None:
                return False
            ns = self.nodes(i)
            if ns is None:
                return False
            mgrs = [x for x in ns if x.get("role") == "manager"]
            if len(mgrs) != self.n or any(x.get("status") != "ready" for x in mgrs):
                return False
        return self.leader() is not None

    def write(self, i, n):
        ok, _, _ = self.cli(i, ["service", "create", "--detach", "--name", f"bench-{n}",
                                "--replicas", "0", "sleep", "1"], timeout=self.t)
        return ok

    def missing(self, names):
        """Acknowledged writes that some manager does not have (should be none)."""
        lost = set()
        for i in range(self.n):
            ok, out, err = self.cli(i, ["service", "ls", "--format", "json"], timeout=10)
            if not ok:
                raise RuntimeError(f"service ls on m{i + 1}: {err.strip()}")
            have = {x["name"] for x in json.loads(out)}
            lost |= {f"bench-{n}" for n in names} - have
        return sorted(lost)

    def pid(self, i):
        return self.procs[i].pid

    def kill9(self, i):
        kill9(self.procs[i])
        self.procs[i] = None

    def restart(self, i):
        self.procs[i] = spawn(self._argv(i), os.path.join(self.dir(i), "agent.log"),
                              env=AGENT_ENV, netns=self.hosts[i][0])

    def stop(self):
        for p in self.procs + [self.worker]:
            if p is not None:
                stop(p)


class Etcd:
    label = "etcd"
    member = "e"

    def __init__(self, root, attempt_timeout, hosts=None):
        self.root = os.path.join(root, "etcd")
        self.t = attempt_timeout
        self.hosts = hosts or [(None, "127.0.0.1")] * 3
        self.n = len(self.hosts)
        self.client = []
        self.peer = []
        for ns, ip in self.hosts:
            if ns:
                self.client.append(f"http://{ip}:2379")
                self.peer.append(f"http://{ip}:2380")
            else:
                self.client.append(f"http://127.0.0.1:{free_port()}")
                self.peer.append(f"http://127.0.0.1:{free_port()}")
        self.procs = [None] * self.n
        self.ids = {}  # member id -> index
        self.env = dict(os.environ, ETCDCTL_API="3")

    def dir(self, i):
        return os.path.join(self.root, f"e{i + 1}")

    def _argv(self, i):
        cluster = ",".join(f"e{j + 1}={self.peer[j]}" for j in range(self.n))
        return ["etcd", "--name", f"e{i + 1}", "--data-dir", os.path.join(self.dir(i), "data"),
                "--listen-client-urls", self.client[i], "--advertise-client-urls", self.client[i],
                "--listen-peer-urls", self.peer[i], "--initial-advertise-peer-urls", self.peer[i],
                "--initial-cluster", cluster, "--initial-cluster-token", f"bench-{os.getpid()}",
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"]

    def _launch(self, i):
        os.makedirs(self.dir(i), exist_ok=True)
        self.procs[i] = spawn(self._argv(i), os.path.join(self.dir(i), "etcd.log"), env=self.env,
                              netns=self.hosts[i][0])

    def ctl(self, endpoints, args, timeout):
        ms = max(1, int(timeout * 1000))
        return run(["etcdctl", f"--endpoints={endpoints}", f"--dial-timeout={ms}ms",
                    f"--command-timeout={ms}ms"] + args, timeout + 0.5, env=self.env)

    def start(self):
        for i in range(self.n):
            self._launch(i)
        wait_until("3 etcd members with one leader", 60, self.whole)

    def status(self, i):
        ok, out, _ = self.ctl(self.client[i], ["endpoint", "status", "-w", "json"], 2.0)
        if not ok:
            return None
        st = json.loads(out)
        return st[0]["Status"] if st else None

    def leader(self):
        leaders = set()
        for i in range(self.n):
            if self.procs[i] is None or self.procs[i].poll() is not None:
                continue
            st = self.status(i)
            if st is None:
                return None
            self.ids[st["header"]["member_id"]] = i
            leaders.add(st.get("leader", 0))
        if len(leaders) != 1:
            return None
        lid = leaders.pop()
        return self.ids.get(lid) if lid else None

    def whole(self):
        for i in range(self.n):
            if self.procs[i] is None or self.procs[i].poll() is not None:
                return False
            if self.status(i) is None:
                return False
        return self.leader() is not None

    def write(self, i, n):
        ok, _, _ = self.ctl(self.client[i], ["put", f"bench-{n}", "v"], self.t)
        return ok

    def missing(self, names):
        lost = set()
        for i in range(self.n):
            ok, out, err = self.ctl(self.client[i], ["get", "bench-", "--prefix", "--keys-only"], 10)
            if not ok:
                raise RuntimeError(f"etcdctl get on e{i + 1}: {err.strip()}")
            have = {x for x in out.split() if x}
            lost |= {f"bench-{n}" for n in names} - have
        return sorted(lost)

    def pid(self, i):
        return self.procs[i].pid

    def kill9(self, i):
        kill9(self.procs[i])
        self.procs[i] = None

    def restart(self, i):
        self._launch(i)

    def stop(self):
        for p in self.procs:
            if p is not None:
                stop(p)


# --------------------------------------------------------------------------
# measurements

def baseline_latency(sysm, written, n=20):
    """Write latency with no fault, through the same client, for reference."""
    lat = []
    for k in range(n):
        i = k % sysm.n
        t0 = time.monotonic()
        if sysm.write(i, f"base-{k}"):
            lat.append(time.monotonic() - t0)
            written.append(f"base-{k}")
    return lat


def failover_trials(sysm, trials, settle, written, cut=None, heal=None):
    """kill -9 (or cut off, with cut/heal) the leader; time to the next committed write."""
    samples = []
    attempts_total = 0
    seq = 0
    for trial in range(trials):
        lead = wait_until(f"{sysm.label}: a leader", 60, sysm.leader)
        survivors = [i for i in range(sysm.n) if i != lead]
        t0 = time.monotonic()
        if cut:
            cut(lead)
        else:
            os.kill(sysm.pid(lead), signal.SIGKILL)
        attempts = 0
        deadline = t0 + 60
        while True:
            target = survivors[attempts % len(survivors)]
            attempts += 1
            seq += 1
            if sysm.write(target, f"t{trial}-{seq}"):
                dt = time.monotonic() - t0
                written.append(f"t{trial}-{seq}")
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sysm.label}: no write committed within 60 s of losing the leader")
        samples.append(dt)
        attempts_total += attempts
        log(f"{sysm.label} trial {trial + 1}/{trials}: leader {sysm.member}{lead + 1} "
            f"{'cut off' if cut else 'killed'}, write committed after {dt * 1000:.0f} ms ({attempts} attempt(s))")
        # Bring it back and wait until the cluster is whole again.
        if cut:
            heal(lead)
        else:
            sysm.kill9(lead)  # reaps it
            sysm.restart(lead)
        wait_until(f"{sysm.label}: the cluster whole again after trial {trial + 1}", 120, sysm.whole, 0.2)
        # The returning member must be able to commit through the cluster.
        back = iter(range(10**6))

        def write_back():
            name = f"back-{trial}-{next(back)}"
            if sysm.write(lead, name):
                written.append(name)
                return True
            return False
        wait_until(f"{sysm.label}: a write through the returning member", 60, write_back, 0.1)
        time.sleep(settle)
    return samples, attempts_total


def e2e_placement(binary, root, replicas):
    """One real agent: time `service create --replicas N` until the API shows
    every task assigned to a node (committed through Raft on one manager)."""
    d = os.path.join(root, "e2e")
    os.makedirs(d, exist_ok=True)
    api = f"127.0.0.1:{free_port()}"
    argv = [binary, "agent", "--data-dir", d, "--name", "e2e", "--api", api,
            "--listen", f"127.0.0.1:{free_port()}", "--runtime", "process"]
    p = spawn(argv, os.path.join(d, "agent.log"))
    try:
        wait_until("the e2e agent", 30,
                   lambda: run([binary, "-H", api, "node", "ls"], 2)[0] and
                   run([binary, "-H", api, "service", "create", "--detach", "--name", "warm",
                        "--replicas", "0", "sleep", "1"], 5)[0])
        url = f"http://{api}/v1/tasks?service=place"
        t0 = time.monotonic()
        ok, out, err = run([binary, "-H", api, "service", "create", "--detach", "--name", "place",
                            "--replicas", str(replicas), "--restart-condition", "none", "true"], 60)
        if not ok:
            raise RuntimeError(f"e2e service create failed: {err.strip()}")
        t_created = time.monotonic() - t0

        def all_assigned():
            with urllib.request.urlopen(url, timeout=10) as r:
                tasks = json.load(r)
            n = sum(1 for t in tasks if t.get("node") and t.get("state") not in (None, "new", "pending"))
            return n >= replicas
        # Every 20 ms: a tighter poll of a 1,000-task listing would load the agent it measures.
        wait_until(f"{replicas} tasks assigned", 120, all_assigned, 0.02)
        dt = time.monotonic() - t0
        return replicas / dt, dt, t_created
    finally:
        # The worker would go on starting the short tasks for a while: not
        # part of the measurement. Stop the agent hard and its tasks with it.
        kill9(p)
        kill_task_processes(d)


# --------------------------------------------------------------------------
# network namespaces (raft-netns)

class Netns:
    """A bridge on the host and one namespace per member, linked by veth pairs.
    Addresses are in a private range that exists only on this bridge."""

    def __init__(self, tag, count, subnet="10.213.77"):
        self.tag = tag
        self.count = count
        self.bridge = f"skbr{tag}"
        self.subnet = subnet
        self.names = [f"skb{tag}n{i + 1}" for i in range(count)]
        self.hostveth = [f"skv{tag}h{i + 1}" for i in range(count)]
        self.ips = [f"{subnet}.{i + 11}" for i in range(count)]
        self.rule = None

    def sh(self, *argv):
        r = subprocess.run(list(argv), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.decode().strip()}")

    def note(self, line):
        # bench.sh's trap undoes these (in reverse) if this driver dies first.
        with open(os.path.join(WORK, "netns"), "a") as f:
            f.write(line + "\n")

    def up(self):
        CLEANUPS.append(self.down)
        self.note(f"link {self.bridge}")
        self.sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.sh("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        self.sh("ip", "link", "set", self.bridge, "up")
        # Docker sets FORWARD's policy to DROP and bridged frames go through iptables.
        self.rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self.note("rule - " + " ".join(self.rule))
        self.sh("iptables", "-I", *self.rule)
        for i, ns in enumerate(self.names):
            peer = f"skv{self.tag}p{i + 1}"
            self.note(f"ns {ns}")
            self.sh("ip", "netns", "add", ns)
            self.note(f"link {self.hostveth[i]}")
            self.sh("ip", "link", "add", self.hostveth[i], "type", "veth", "peer", "name", peer)
            self.sh("ip", "link", "set", peer, "netns", ns)
            self.sh("ip", "link", "set", self.hostveth[i], "master", self.bridge)
            self.sh("ip", "link", "set", self.hostveth[i], "up")
            self.sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ips[i]}/24", "dev", peer)
            self.sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            self.sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        wait_until("the namespaces to answer", 10,
                   lambda: all(subprocess.run(["ping", "-c1", "-W1", ip], capture_output=True).returncode == 0
                               for ip in self.ips) if have("ping") else True)

    def cut(self, i):
        self.sh("ip", "link", "set", self.hostveth[i], "down")

    def heal(self, i):
        self.sh("ip", "link", "set", self.hostveth[i], "up")

    def down(self):
        if self.rule:
            subprocess.run(["iptables", "-D", *self.rule], capture_output=True)
            self.rule = None
        for ns in self.names:
            # Anything still running inside (ours) dies with a SIGKILL by pid.
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            for pid in r.stdout.decode().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for v in self.hostveth:
            subprocess.run(["ip", "link", "del", v], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def have(cmd):
    return any(os.access(os.path.join(d, cmd), os.X_OK) for d in os.environ.get("PATH", "").split(":"))


# --------------------------------------------------------------------------
# report

def fmt_s(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f} s"


def fmt_mb(b):
    return "-" if b is None else f"{b / 1e6:.1f} MB"


def fmt_rate(r):
    return "-" if r is None else f"{r:,.0f}/s"


def ratio(a, b):
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return "-"
    return f"{a / b:.2f}x"


def verdict(ok):
    return "PASS" if ok else "MISS"


def table(rows, header):
    widths = [max(len(str(r[c])) for r in rows + [header]) for c in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


# --------------------------------------------------------------------------

def main():
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["raft", "raft-netns"])
    ap.add_argument("--skein", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--attempt-timeout", type=float, default=0.15)
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--e2e-tasks", type=int, default=1000)
    ap.add_argument("--placement-output", default="")
    ap.add_argument("--only", default="skein,etcd,placement,rss")
    a = ap.parse_args()
    WORK = a.work
    only = set(a.only.split(","))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = time.monotonic()
    try:
        if a.mode == "raft":
            report_raft(a, only)
        else:
            report_netns(a, only)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        cleanup()
        return 130
    except Exception as e:  # noqa: BLE001 - report, clean up, fail
        log(f"FAILED: {e}")
        cleanup()
        keep_logs()
        return 1
    cleanup()
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0


def failover_block(sysm, a, results, key, cut=None, heal=None):
    log(f"{sysm.label}: starting 3 members")
    sysm.start()
    written = []
    base = baseline_latency(sysm, written)
    results[key + "_base"] = pct(base, 50) if base else None
    samples, attempts = failover_trials(sysm, a.trials, a.settle, written, cut, heal)
    results[key] = samples
    results[key + "_attempts"] = attempts
    # Every acknowledged write must be on every member once the cluster is whole.
    wait_until(f"{sysm.label}: whole before the check", 60, sysm.whole, 0.2)
    lost = sysm.missing(written)
    results[key + "_acked"] = len(written)
    results[key + "_lost"] = lost
    if lost:
        log(f"{sysm.label}: {len(lost)} acknowledged write(s) missing on some member: {lost[:10]}")


def report_raft(a, only):
    r = {}
    skein = Skein(a.skein, WORK, a.attempt_timeout)
    if "skein" in only:
        CLEANUPS.append(skein.stop)
        failover_block(skein, a, r, "skein")
        if "rss" in only:
            log("skein: adding a worker, then idle for the RSS reading")
            skein.add_worker()
            time.sleep(a.idle)
            lead = wait_until("a leader", 30, skein.leader)
            r["rss_leader"] = rss_bytes(skein.pid(lead))
            r["rss_managers"] = [rss_bytes(skein.pid(i)) for i in range(skein.n)]
            r["rss_worker"] = rss_bytes(skein.worker.pid)
        skein.stop()
    if "etcd" in only:
        etcd = Etcd(WORK, a.attempt_timeout)
        CLEANUPS.append(etcd.stop)
        failover_block(etcd, a, r, "etcd")
        if "rss" in only:
            time.sleep(a.idle)
            r["rss_etcd"] = [rss_bytes(etcd.pid(i)) for i in range(etcd.n)]
        etcd.stop()
    if "placement" in only and a.e2e_tasks > 0:
        log(f"end-to-end placement: one agent, service create --replicas {a.e2e_tasks}")
        rate, dt, t_created = e2e_placement(a.skein, WORK, a.e2e_tasks)
        r["e2e"] = (rate, dt, t_created)
    print_raft(a, r)


def parse_placement(text):
    """The RESULT line of placement_bench."""
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    return {}


def print_raft(a, r):
    print()
    print(f"skein vs etcd, Raft on this machine ({os.cpu_count()} cores), {a.trials} failover trials each")
    print(f"failover: time from `kill -9` of the leader to the next committed write, retried in a tight loop "
          f"against the two survivors (alternating), {a.attempt_timeout:.2f} s timeout per attempt; each write is one "
          f"CLI run (skein: `skein service create --detach --replicas 0`, etcd: `etcdctl put`), so it includes "
          f"that client's start-up; an attempt that hangs is abandoned and retried, so a sample's resolution is about "
          f"one attempt timeout; p50/p99 are nearest-rank.")
    print("both use their default Raft timing: skein tick 100 ms, election 10 ticks; etcd heartbeat 100 ms, election 1000 ms.")
    print("a killed process's connections are reset by its kernel, and both systems act on that before any Raft "
          "timeout fires: these rows measure 'process crash: connection reset seen', not election timing alone; "
          "'silent cut: timeouts only' is `bench.sh raft-netns` (a link cut in a namespace, nothing reset).")
    print()
    rows = []
    sk, et = r.get("skein"), r.get("etcd")
    for p in (50, 99):
        s = pct(sk, p) if sk else None
        e = pct(et, p) if et else None
        goal, v = "-", ""
        if p == 99:
            goal = "< 0.5 s"
            v = verdict(s is not None and s < 0.5) if s is not None else "n/a"
        rows.append([f"process crash (connection reset seen): leader kill -9 -> next committed write, p{p}",
                     fmt_s(s), fmt_s(e), ratio(s, e), goal, v])
    if sk and et:
        rows.append(["  (min .. max)", f"{min(sk):.3f} .. {max(sk):.3f} s", f"{min(et):.3f} .. {max(et):.3f} s",
                     "", "", ""])
    rows.append(["write with no fault, p50 (same client)", fmt_s(r.get("skein_base")), fmt_s(r.get("etcd_base")),
                 ratio(r.get("skein_base"), r.get("etcd_base")), "-", ""])
    rows.append(["silent cut (timeouts only): leader cut off -> write, p99", "not in this mode", "", "", "< 2.5 s",
                 "see `bench.sh raft-netns`"])
    pl = parse_placement(a.placement_output) if a.placement_output else {}
    nomad = 3750.0
    for key, what in (("bulk", "placements/s, in-process, all services at once"),
                      ("arrive", "placements/s, in-process, services arriving")):
        if key in pl:
            v = float(pl[key])
            # In-process (no Raft, no network): no ratio against Nomad's
            # end-to-end figure, which pays for both.
            rows.append([f"{what} ({int(pl['nodes']):,} nodes, {int(pl['tasks']):,} tasks)",
                         fmt_rate(v), "not comparable (in-process)", "", ">= 10,000/s", verdict(v >= 10000)])
    if "e2e" in r:
        rate, dt, _ = r["e2e"]
        rows.append([f"placements/s, end to end, 1 agent = 1 node ({a.e2e_tasks:,} tasks in {dt:.2f} s)",
                     fmt_rate(rate), "Nomad C1M 3,750/s", ratio(rate, nomad), "(1,000 nodes)",
                     "n/a: 1 node, not 1,000"])
    if "rss_leader" in r:
        etcd_rss = max(r["rss_etcd"]) if r.get("rss_etcd") else None
        rows.append(["idle RSS, manager (the leader)", fmt_mb(r["rss_leader"]),
                     fmt_mb(etcd_rss) + " (etcd member, max)" if etcd_rss else "-",
                     ratio(r["rss_leader"], etcd_rss), "< 40 MB", verdict(r["rss_leader"] < 40e6)])
        rows.append(["idle RSS, manager (largest of 3)", fmt_mb(max(r["rss_managers"])), "", "", "< 40 MB",
                     verdict(max(r["rss_managers"]) < 40e6)])
        rows.append(["idle RSS, worker", fmt_mb(r["rss_worker"]), "-", "", "< 20 MB",
                     verdict(r["rss_worker"] < 20e6)])
    print(table(rows, ["measure", "skein", "etcd / reference", "ratio", "goal", "verdict"]))
    print()
    print_samples(r)
    if pl:
        print("placement (in-process): orchestrate() + scheduler + ClusterState::apply, one thread, no Raft "
              "(no log append, fsync, replication or network); see node/examples/placement_bench.rs.")
    if "e2e" in r:
        rate, dt, tc = r["e2e"]
        print(f"placement (end to end): one real agent (a single-manager Raft with sled), `skein service create "
              f"--detach --replicas {a.e2e_tasks} true`, timed from the request until GET /v1/tasks shows every task "
              f"assigned to a node (the create call itself returned after {tc:.3f} s); one node, so the scheduler "
              f"chooses among 1 node, not 1,000.")
    if "rss_leader" in r:
        print(f"idle RSS: VmRSS after {a.idle:.0f} s idle; managers " +
              ", ".join(fmt_mb(x) for x in r["rss_managers"]) +
              (("; etcd members " + ", ".join(fmt_mb(x) for x in r["rss_etcd"])) if r.get("rss_etcd") else "") +
              ". MB = 10^6 bytes.")


def print_samples(r):
    for key in ("skein", "etcd"):
        if r.get(key):
            print(f"{key:5} failover samples (s): " + " ".join(f"{x:.3f}" for x in r[key]))
            lost = r.get(key + "_lost", [])
            print(f"{key:5} acknowledged writes checked on every member afterwards: {r.get(key + '_acked', 0)}, "
                  + (f"MISSING {len(lost)}: {' '.join(lost[:10])}" if lost else "none missing"))


def report_netns(a, only):
    if os.geteuid() != 0:
        raise RuntimeError("raft-netns needs root (ip netns, iptables)")
    tag = str(os.getpid() % 10000)
    r = {}
    if "skein" in only:
        net = Netns(tag + "s", 3, subnet="10.213.77")
        net.up()
        skein = Skein(a.skein, WORK, a.attempt_timeout, hosts=list(zip(net.names, net.ips)))
        # The CLI runs on the host and reaches the agents over the bridge.
        CLEANUPS.append(skein.stop)
        failover_block(skein, a, r, "skein", cut=net.cut, heal=net.heal)
        skein.stop()
        net.down()
    if "etcd" in only:
        net = Netns(tag + "e", 3, subnet="10.213.78")
        net.up()
        etcd = Etcd(WORK, a.attempt_timeout, hosts=list(zip(net.names, net.ips)))
        CLEANUPS.append(etcd.stop)
        failover_block(etcd, a, r, "etcd", cut=net.cut, heal=net.heal)
        etcd.stop()
        net.down()
    print()
    print(f"skein vs etcd, leader silently cut off: each member in its own network namespace on a bridge; "
          f"`ip link set <leader's host-side veth> down` (no packet either way), then writes retried against the "
          f"two survivors ({a.attempt_timeout:.2f} s per attempt, which is also the resolution) until one commits; "
          f"link up again between trials. "
          f"{a.trials} trials each, nearest-rank percentiles.")
    print()
    rows = []
    sk, et = r.get("skein"), r.get("etcd")
    for p in (50, 99):
        s = pct(sk, p) if sk else None
        e = pct(et, p) if et else None
        goal, v = ("< 2.5 s", verdict(s is not None and s < 2.5)) if p == 99 else ("-", "")
        rows.append([f"leader cut off -> next committed write, p{p}", fmt_s(s), fmt_s(e), ratio(s, e), goal, v])
    rows.append(["write with no fault, p50 (same client)", fmt_s(r.get("skein_base")), fmt_s(r.get("etcd_base")),
                 ratio(r.get("skein_base"), r.get("etcd_base")), "-", ""])
    print(table(rows, ["measure", "skein", "etcd", "ratio", "goal", "verdict"]))
    print()
    print_samples(r)


if __name__ == "__main__":
    sys.exit(main())
