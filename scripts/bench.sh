#!/usr/bin/env bash
# Benchmarks: skein next to its peers, in one run on this machine, with ratios.
#
#   scripts/bench.sh raft         leader failover (skein vs a 3-member etcd),
#                                 placements/s with 1,000 simulated nodes,
#                                 idle RSS of a manager and a worker
#   scripts/bench.sh raft-netns   leader silently cut off (its namespace's link
#                                 down): skein vs etcd; needs root
#   scripts/bench.sh placement    only the in-process placement benchmark
#   scripts/bench.sh gossip       membership: convergence, killed and (as root,
#                                 in namespaces) silently cut boxes, bandwidth,
#                                 skein vs HashiCorp Serf at N=20 on loopback;
#                                 plus the in-process simulation at N=1,000
#   scripts/bench.sh idle         idle cost of 1 manager + IDLE_WORKERS real
#                                 worker agents on loopback: CPU of all, of the
#                                 leader and of the busiest worker, RSS,
#                                 established connections
#   scripts/bench.sh fleet        3 real managers + the fleet simulator (one
#                                 process, N simulated workers on the real
#                                 session protocol) at N = 100, 1,000, 5,000:
#                                 idle CPU/RSS of each manager, global service
#                                 create -> N running, sessions back after
#                                 kill -9 of the busiest manager, silent worker
#                                 marked down
#   scripts/bench.sh update       service create / rolling update / rollback /
#                                 scale: skein (Docker runtime) vs Docker Swarm
#                                 mode on the same engine and image; inits a
#                                 loopback swarm if none is active, leaves it after
#
# Environment:
#   TRIALS=20            failover trials per system
#   ATTEMPT_TIMEOUT=0.15 client-side timeout of one write attempt, seconds
#   SETTLE=0.5           pause after a trial once the cluster is whole again
#   IDLE=10              seconds idle before reading RSS
#   E2E_TASKS=1000       replicas of the end-to-end placement run (0: skip)
#   NODES=1000 TASKS=100000 SERVICES=100   the in-process placement run
#   ONLY=skein,etcd,placement,rss          run only some parts (raft mode)
#   GOSSIP_N=20 GOSSIP_TRIALS=10           gossip mode: processes, trials
#   GOSSIP_CONV_TRIALS=5 GOSSIP_FP_IDLE=60 gossip mode: convergence samples, seconds
#                                          both clusters idle while false suspicions
#                                          are counted (600 for the issue's 10 minutes)
#   SIM_NODES=1000 SIM_IDLE_S=600          gossip mode: the simulation
#   IDLE_WORKERS=40 IDLE_WINDOW=20 IDLE_SAMPLES=5   idle mode
#   FLEET_NS=100,1000,5000 FLEET_SAMPLES=5 FLEET_IDLE_WINDOW=20   fleet mode;
#   FLEET_JOIN_CONCURRENCY=32 (simulated joins in flight), FLEET_SETTLE=10,
#   FLEET_HEARTBEAT_MS (managers' heartbeat_ms; default the agent's 1000)
#
# Everything started here (agents, etcd, namespaces, iptables rules, temp dirs,
# task processes) is stopped and removed on exit, Ctrl-C included. Traffic
# goes to loopback only, or to the namespaces that raft-netns creates.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

usage() {
  # The comment at the top of this file.
  sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'
}

MODE="${1:-}"
case "$MODE" in
  raft | raft-netns | placement | gossip | update | idle | fleet) ;;
  -h | --help | help)
    usage
    exit 0
    ;;
  "")
    usage
    exit 2
    ;;
  *)
    echo "unknown benchmark: $MODE" >&2
    usage >&2
    exit 2
    ;;
esac

TRIALS="${TRIALS:-20}"
ATTEMPT_TIMEOUT="${ATTEMPT_TIMEOUT:-0.15}"
SETTLE="${SETTLE:-0.5}"
IDLE="${IDLE:-10}"
E2E_TASKS="${E2E_TASKS:-1000}"
ONLY="${ONLY:-skein,etcd,placement,rss}"

WORK="$(mktemp -d /tmp/skein-bench.XXXXXX)"
DRIVER_PID=""

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  # The driver cleans up after itself; give it a moment, then make sure.
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -TERM "$DRIVER_PID" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DRIVER_PID" 2>/dev/null
  fi
  # Anything the driver started that still runs: only pids whose command
  # line names our work dir (so a recycled pid is never touched).
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$WORK"; then
        kill -KILL "$pid" 2>/dev/null
      fi
    done <"$WORK/pids"
  fi
  # Task processes: each runs under a shim (command line naming an agent's
  # data dir under $WORK) that leads a session of its own; kill those sessions.
  local sids="" pid sid
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [ "$pid" = "$$" ] && continue
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF "$WORK"; then
      sid="$(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ')"
      [ "$sid" = "$pid" ] && sids="$sids $sid"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  if [ -n "$sids" ]; then
    ps -eo pid=,sid= | while read -r pid sid; do
      case " $sids " in *" $sid "*) kill -KILL "$pid" 2>/dev/null ;; esac
    done
  fi
  # Docker objects of the update benchmark: skein's containers and networks
  # (by the agent's node id), the Swarm service, the Swarm if we made it.
  if [ -f "$WORK/docker" ]; then
    while read -r kind arg; do
      case "$kind" in
        docker-skein)
          local node
          node="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["node_id"])' "$arg/node.json" 2>/dev/null)"
          if [ -n "$node" ]; then
            docker ps -aq --filter "label=skein.node=$node" | xargs -r docker rm -f -v >/dev/null 2>&1
            docker network ls -q --filter "label=skein.node=$node" | xargs -r docker network rm >/dev/null 2>&1
          fi
          ;;
        docker-service) docker service rm "$arg" >/dev/null 2>&1 ;;
        docker-floor) docker ps -aq --filter "label=skein.bench-floor=$arg" | xargs -r docker rm -f -v >/dev/null 2>&1 ;;
        swarm-init) docker swarm leave --force >/dev/null 2>&1 ;;
      esac
    done < <(tac "$WORK/docker")
  fi
  # Namespaces, veths, bridges and iptables rules of raft-netns.
  if [ -f "$WORK/netns" ]; then
    while read -r kind name rest; do
      case "$kind" in
        ns)
          for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
          ip netns del "$name" 2>/dev/null
          ;;
        link) ip link del "$name" 2>/dev/null ;;
        rule) iptables -D $rest 2>/dev/null ;;
      esac
    done < <(tac "$WORK/netns")
  fi
  # The fleet simulator's directories live on a tmpfs, linked from $WORK.
  if [ -L "$WORK/shm" ]; then
    rm -rf "$(readlink "$WORK/shm")"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_skein() {
  # One cargo run for the binary and the example: they share one build of the
  # library (two runs would build it twice, with and without dev-dependencies).
  echo "==> building skein and the placement benchmark (release)" >&2
  cargo build --release --quiet -p skein-node --bin skein --example placement_bench
  SKEIN="$PWD/target/release/skein"
}

need_etcd() {
  if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    return
  fi
  echo "==> installing etcd-server and etcd-client (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  # The package's service is not wanted: policy-rc.d keeps it from starting
  # where it exists; stop it by name otherwise.
  $sudo apt-get install -y -qq etcd-server etcd-client >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl stop etcd || true
  fi
}

need_serf() {
  command -v serf >/dev/null && return
  echo "==> installing serf (Debian)" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends serf >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet serf 2>/dev/null; then
    $sudo systemctl stop serf || true
  fi
}

placement_bench() {
  echo "==> in-process placement benchmark (${NODES:-1000} nodes, ${TASKS:-100000} tasks)" >&2
  "$PWD/target/release/examples/placement_bench"
}

run_driver() {
  # In the background so that the trap runs at once on Ctrl-C and waits for it.
  python3 scripts/bench/raft_bench.py "$@" --skein "$SKEIN" --work "$WORK" \
    --trials "$TRIALS" --attempt-timeout "$ATTEMPT_TIMEOUT" --settle "$SETTLE" --idle "$IDLE" &
  DRIVER_PID=$!
  local rc=0
  wait "$DRIVER_PID" || rc=$?
  DRIVER_PID=""
  return "$rc"
}

case "$MODE" in
  update)
    echo "==> building skein (release)" >&2
    cargo build --release --quiet -p skein-node --bin skein
    SKEIN="$PWD/target/release/skein"
    # shellcheck source=scripts/bench/update_bench.sh
    source scripts/bench/update_bench.sh
    update_bench
    ;;
  placement)
    build_skein
    placement_bench
    ;;
  raft)
    build_skein
    case ",$ONLY," in *,etcd,*) need_etcd ;; esac
    PLACEMENT_OUT=""
    case ",$ONLY," in
      *,placement,*)
        PLACEMENT_OUT="$(placement_bench | tee /dev/stderr)"
        ;;
    esac
    run_driver raft --e2e-tasks "$E2E_TASKS" --only "$ONLY" --placement-output "$PLACEMENT_OUT"
    ;;
  idle)
    echo "==> building skein (release)" >&2
    cargo build --release --quiet -p skein-node --bin skein
    python3 scripts/bench/idle_bench.py "$PWD/target/release/skein" "$WORK" &
    DRIVER_PID=$!
    wait "$DRIVER_PID"
    DRIVER_PID=""
    ;;
  fleet)
    echo "==> building skein (release)" >&2
    cargo build --release --quiet -p skein-node --bin skein
    python3 scripts/bench/fleet_bench.py "$PWD/target/release/skein" "$WORK" &
    DRIVER_PID=$!
    rc=0
    wait "$DRIVER_PID" || rc=$?
    DRIVER_PID=""
    exit "$rc"
    ;;
  gossip)
    need_serf
    echo "==> building skein and the gossip simulation (release)" >&2
    cargo build --release --quiet -p skein-node --bin skein --example gossip_sim
    SKEIN="$PWD/target/release/skein"
    echo "==> in-process simulation (${SIM_NODES:-1000} nodes)" >&2
    SIM_OUT="$(NODES="${SIM_NODES:-1000}" IDLE_S="${SIM_IDLE_S:-600}" TRIALS="${SIM_TRIALS:-10}" \
      "$PWD/target/release/examples/gossip_sim" | tee /dev/stderr)"
    NETNS_FLAG=""
    if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v iptables >/dev/null; then
      NETNS_FLAG="--netns"
    else
      echo "==> not root (or no ip/iptables): skipping the silent-cut part" >&2
    fi
    python3 scripts/bench/gossip_bench.py --skein "$SKEIN" --work "$WORK" \
      --n "${GOSSIP_N:-20}" --trials "${GOSSIP_TRIALS:-10}" --idle "$IDLE" $NETNS_FLAG \
      --conv-trials "${GOSSIP_CONV_TRIALS:-5}" --fp-idle "${GOSSIP_FP_IDLE:-60}" \
      --sim-output "$SIM_OUT" &
    DRIVER_PID=$!
    rc=0
    wait "$DRIVER_PID" || rc=$?
    DRIVER_PID=""
    exit "$rc"
    ;;
  raft-netns)
    if [ "$(id -u)" != 0 ]; then
      echo "raft-netns needs root (ip netns, veth, iptables)" >&2
      exit 1
    fi
    build_skein
    case ",$ONLY," in *,etcd,*) need_etcd ;; esac
    run_driver raft-netns --only "$ONLY"
    ;;
esac
