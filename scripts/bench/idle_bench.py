#!/usr/bin/env python3
"""Idle cost of a fleet of real agents on this box (scripts/bench.sh idle).

One manager plus IDLE_WORKERS real `skein agent` workers on loopback, joined
with a worker token. Once every node is ready and the cluster has settled,
the CPU time of every process is read from /proc over IDLE_WINDOW seconds,
IDLE_SAMPLES times: each row is the median with min..max. Also printed: RSS
of the manager and of the workers (median, max), open TCP connections of the
manager and of a worker (from /proc/PID/fd sockets and /proc/net/tcp).

Usage: idle_bench.py SKEIN_BIN WORKDIR
"""
import json
import os
import subprocess
import sys
import time
import urllib.request

BIN, WORK = sys.argv[1], sys.argv[2]
N = int(os.environ.get("IDLE_WORKERS", "40"))
WINDOW = float(os.environ.get("IDLE_WINDOW", "20"))
SAMPLES = int(os.environ.get("IDLE_SAMPLES", "5"))
SETTLE = float(os.environ.get("IDLE_SETTLE", "10"))
TICK = os.sysconf("SC_CLK_TCK")
procs = []


def port(i):
    return 21000 + i


def spawn(name, idx, extra):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    log = open(os.path.join(d, "agent.log"), "w")
    argv = [BIN, "agent", "--data-dir", os.path.join(d, "data"), "--name", name,
            "--api", f"127.0.0.1:{port(2 * idx)}", "--listen", f"127.0.0.1:{port(2 * idx + 1)}",
            "--runtime", "process"] + extra
    p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    with open(os.path.join(WORK, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    procs.append((name, p))
    return p


def cli(api, *args):
    return subprocess.run([BIN, "-H", api, *args], capture_output=True, text=True, timeout=30)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tcp_established(pid):
    """Established TCP connections held by pid (its socket inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "01" and cols[9] in inodes:
                        n += 1
        except OSError:
            pass
    return n


def med(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def row(label, v, unit):
    return f"| {label} | {med(v):.1f}{unit} | {min(v):.1f}..{max(v):.1f}{unit} |"


def main():
    m = spawn("m1", 0, [])
    api = f"127.0.0.1:{port(0)}"
    for _ in range(200):
        if cli(api, "node", "ls").returncode == 0:
            break
        time.sleep(0.1)
    token = cli(api, "join-token", "worker", "-q").stdout.strip()
    for i in range(1, N + 1):
        spawn(f"w{i}", i, ["--join", f"127.0.0.1:{port(1)}", "--token", token])
        time.sleep(0.05)
    deadline = time.time() + 180
    while time.time() < deadline:
        out = cli(api, "node", "ls", "--format", "json")
        if out.returncode == 0:
            rows = json.loads(out.stdout)
            if len(rows) == N + 1 and all(r["status"] == "ready" for r in rows):
                break
        time.sleep(0.5)
    else:
        sys.exit(f"not all {N + 1} nodes ready in 180 s")
    time.sleep(SETTLE)
    total, leader, worker_max = [], [], []
    for _ in range(SAMPLES):
        a = {name: cpu_ticks(p.pid) for name, p in procs}
        time.sleep(WINDOW)
        b = {name: cpu_ticks(p.pid) for name, p in procs}
        pct = {k: 100.0 * (b[k] - a[k]) / TICK / WINDOW for k in a}
        total.append(sum(pct.values()))
        leader.append(pct["m1"])
        worker_max.append(max(v for k, v in pct.items() if k != "m1"))
    wrss = [rss_mb(p.pid) for name, p in procs if name != "m1"]
    wconn = [tcp_established(p.pid) for name, p in procs if name != "m1"]
    print(f"## Idle fleet: 1 manager + {N} workers on loopback, {SAMPLES} windows of {WINDOW:.0f} s")
    print()
    print("| what | median | min..max |")
    print("|---|---|---|")
    print(row(f"all {N + 1} processes, CPU (% of one core)", total, " %"))
    print(row("the manager (leader), CPU", leader, " %"))
    print(row("the busiest worker, CPU", worker_max, " %"))
    print(row("worker RSS (over workers)", wrss, " MB"))
    print(f"| manager RSS | {rss_mb(m.pid):.1f} MB | |")
    print(row("worker established TCP connections (over workers)", wconn, ""))
    print(f"| manager established TCP connections | {tcp_established(m.pid)} | |")


try:
    main()
finally:
    for _, p in procs:
        p.terminate()
    for _, p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
