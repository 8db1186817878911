#!/usr/bin/env bash
# scripts/bench.sh update: skein and Docker Swarm mode side by side on the
# same Docker engine, same local image (skein-test:v1/v2), same settings:
# create 6 replicas, rolling update (parallelism 2, monitor 1s), rollback
# (the default rollback settings on both), scale 6 -> 18. Each command waits
# until its change converged, as both CLIs do without --detach. The whole
# sequence runs UPDATE_SAMPLES times (default 5) per system, the service
# removed in between; each row is the median with min..max.
#
# Sourced by scripts/bench.sh (which owns $WORK, $SKEIN and the cleanup
# trap): everything started here is recorded under $WORK so the trap removes
# it, the Swarm too if this run initialized it.

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Seconds (3 decimals) that "$@" takes; fails the benchmark if it fails.
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  if ! "$@" >"$WORK/last.out" 2>&1; then
    echo "failed: $*" >&2
    cat "$WORK/last.out" >&2
    return 1
  fi
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

# Starts N containers of skein-test:v1 at once (docker run -d) and waits
# until all started; floor_clean removes them.
engine_floor() {
  local n=$1 i pids=()
  for i in $(seq 1 "$n"); do
    docker run -d --label "skein.bench-floor=$$" skein-test:v1 >/dev/null &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || return 1; done
}
# Containers of the skein service / the Swarm service still present.
skein_containers() { docker ps -aq --filter "label=skein.service=skein-bench" 2>/dev/null; }
swarm_containers() { docker ps -aq --filter "label=com.docker.swarm.service.name=skein-bench-swarm" 2>/dev/null; }

# Waits (60 s at most) until LISTER prints nothing: the next sample starts
# from an engine with none of the previous one's containers.
wait_gone() {
  local what=$1 lister=$2 i
  for i in $(seq 1 300); do
    [ -z "$($lister)" ] && return 0
    sleep 0.2
  done
  echo "update: containers of $what still present after 60 s" >&2
  return 1
}

floor_clean() {
  docker ps -aq --filter "label=skein.bench-floor=$$" | xargs -r docker rm -f -v >/dev/null 2>&1 || true
}

update_bench() {
  command -v docker >/dev/null || { echo "update: the docker CLI is missing (apt-get install docker.io)" >&2; return 1; }
  docker info >/dev/null 2>&1 || { echo "update: no Docker engine answers" >&2; return 1; }
  bash scripts/make-test-image.sh

  # --- skein: one agent on the Docker runtime --------------------------------
  local api listen
  api="127.0.0.1:$(free_port)"
  listen="127.0.0.1:$(free_port)"
  "$SKEIN" agent --data-dir "$WORK/agent" --runtime docker --api "$api" --listen "$listen" \
    --name bench >"$WORK/agent.log" 2>&1 &
  echo $! >>"$WORK/pids"
  disown "$!" 2>/dev/null || true
  echo "docker-skein $WORK/agent" >>"$WORK/docker"
  local up=0
  for _ in $(seq 1 150); do
    if "$SKEIN" -H "$api" node ls 2>/dev/null | grep -q ready; then up=1; break; fi
    sleep 0.2
  done
  [ "$up" = 1 ] || { echo "the skein agent did not start:" >&2; cat "$WORK/agent.log" >&2; return 1; }
  local sk=(-H "$api")
  local svc=skein-bench
  echo "==> skein (docker runtime)" >&2
  local samples="${UPDATE_SAMPLES:-5}" n t
  local k_create="" k_update="" k_rollback="" k_scale=""
  for n in $(seq 1 "$samples"); do
    t=$(timed "$SKEIN" "${sk[@]}" service create --name "$svc" --replicas 6 \
      --update-parallelism 2 --update-monitor 1s skein-test:v1)
    k_create+=" $t"
    t=$(timed "$SKEIN" "${sk[@]}" service update --image skein-test:v2 "$svc")
    k_update+=" $t"
    t=$(timed "$SKEIN" "${sk[@]}" service rollback "$svc")
    k_rollback+=" $t"
    t=$(timed "$SKEIN" "${sk[@]}" service scale "$svc=18")
    k_scale+=" $t"
    timed "$SKEIN" "${sk[@]}" service rm "$svc" >/dev/null
    wait_gone "skein sample $n" skein_containers
    echo "   skein sample $n/$samples done" >&2
  done

  # --- Docker Swarm mode on the same engine ----------------------------------
  if [ "$(swarm_state)" != active ]; then
    echo "==> docker swarm init (loopback; left again at the end)" >&2
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:0 >/dev/null
    echo "swarm-init" >>"$WORK/docker"
  fi
  local sw=skein-bench-swarm
  echo "docker-service $sw" >>"$WORK/docker"
  echo "==> Docker Swarm mode" >&2
  local s_create="" s_update="" s_rollback="" s_scale=""
  for n in $(seq 1 "$samples"); do
    t=$(timed docker service create --quiet --name "$sw" --replicas 6 --no-resolve-image \
      --update-parallelism 2 --update-monitor 1s skein-test:v1)
    s_create+=" $t"
    t=$(timed docker service update --quiet --no-resolve-image --image skein-test:v2 "$sw")
    s_update+=" $t"
    t=$(timed docker service rollback --quiet "$sw")
    s_rollback+=" $t"
    t=$(timed docker service scale "$sw=18")
    s_scale+=" $t"
    timed docker service rm "$sw" >/dev/null
    wait_gone "swarm sample $n" swarm_containers
    echo "   swarm sample $n/$samples done" >&2
  done

  # --- The engine alone: N containers of the image started at once --------
  # (what neither orchestrator can go below; both CLIs then wait 1 s more,
  # the update monitor, before they call the service converged).
  echo "docker-floor $$" >>"$WORK/docker"
  local f6="" f12=""
  for n in $(seq 1 "$samples"); do
    t=$(timed engine_floor 6)
    f6+=" $t"
    floor_clean
    t=$(timed engine_floor 12)
    f12+=" $t"
    floor_clean
  done

  echo
  python3 - "$samples" <<PY
import statistics, sys
n = sys.argv[1]
def vals(s): return [float(x) for x in s.split()]
def cell(v): return f"{statistics.median(v):.2f} ({min(v):.2f}..{max(v):.2f})"
rows = [("create 6", "$s_create", "$k_create"),
        ("rolling update (parallelism 2, 1s)", "$s_update", "$k_update"),
        ("rollback (default settings)", "$s_rollback", "$k_rollback"),
        ("scale 6 -> 18", "$s_scale", "$k_scale")]
print(f"6 replicas of skein-test (Docker), median (min..max) of {n} samples, seconds")
print(f"{'':38} {'swarm':>20} {'skein':>20} {'ratio':>6}")
for name, s, k in rows:
    s, k = vals(s), vals(k)
    print(f"{name:38} {cell(s):>20} {cell(k):>20} {statistics.median(k) / statistics.median(s):6.2f}")
print("goal: each ratio (of medians) <= 0.60")
print()
f6, f12 = vals("$f6"), vals("$f12")
sc, ss = statistics.median(vals("$s_create")), statistics.median(vals("$s_scale"))
print("the engine alone, N \`docker run -d\` of the image at once until all started:")
print(f"  6 containers: {cell(f6)} s (+1 s stability wait = {(statistics.median(f6) + 1) / sc:.2f} of Swarm's create)")
print(f"  12 containers: {cell(f12)} s (+1 s stability wait = {(statistics.median(f12) + 1) / ss:.2f} of Swarm's scale 6 -> 18)")
PY
}
