#!/usr/bin/env bash
# scripts/bench.sh update: skein and Docker Swarm mode side by side on the
# same Docker engine, same local image (skein-test:v1/v2), same settings:
# create 6 replicas, rolling update (parallelism 2, monitor 1s), rollback
# (the default rollback settings on both), scale 6 -> 18. Each command waits
# until its change converged, as both CLIs do without --detach.
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
  local k_create k_update k_rollback k_scale
  k_create=$(timed "$SKEIN" "${sk[@]}" service create --name "$svc" --replicas 6 \
    --update-parallelism 2 --update-monitor 1s skein-test:v1)
  k_update=$(timed "$SKEIN" "${sk[@]}" service update --image skein-test:v2 "$svc")
  k_rollback=$(timed "$SKEIN" "${sk[@]}" service rollback "$svc")
  k_scale=$(timed "$SKEIN" "${sk[@]}" service scale "$svc=18")
  "$SKEIN" "${sk[@]}" service rm "$svc" >/dev/null 2>&1 || true

  # --- Docker Swarm mode on the same engine ----------------------------------
  if [ "$(swarm_state)" != active ]; then
    echo "==> docker swarm init (loopback; left again at the end)" >&2
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:0 >/dev/null
    echo "swarm-init" >>"$WORK/docker"
  fi
  local sw=skein-bench-swarm
  echo "docker-service $sw" >>"$WORK/docker"
  echo "==> Docker Swarm mode" >&2
  local s_create s_update s_rollback s_scale
  s_create=$(timed docker service create --quiet --name "$sw" --replicas 6 --no-resolve-image \
    --update-parallelism 2 --update-monitor 1s skein-test:v1)
  s_update=$(timed docker service update --quiet --no-resolve-image --image skein-test:v2 "$sw")
  s_rollback=$(timed docker service rollback --quiet "$sw")
  s_scale=$(timed docker service scale "$sw=18")
  docker service rm "$sw" >/dev/null 2>&1 || true

  # --- The engine alone: N containers of the image started at once --------
  # (what neither orchestrator can go below; both CLIs then wait 1 s more,
  # the update monitor, before they call the service converged).
  echo "docker-floor $$" >>"$WORK/docker"
  local f6 f12
  f6=$(timed engine_floor 6)
  floor_clean
  f12=$(timed engine_floor 12)
  floor_clean

  echo
  printf '%-38s %9s %9s %7s\n' "6 replicas of skein-test (Docker)" "swarm s" "skein s" "ratio"
  local row
  for row in "create 6:$s_create:$k_create" \
    "rolling update (parallelism 2, 1s):$s_update:$k_update" \
    "rollback (default settings):$s_rollback:$k_rollback" \
    "scale 6 -> 18:$s_scale:$k_scale"; do
    IFS=: read -r name s k <<<"$row"
    printf '%-38s %9s %9s %7s\n' "$name" "$s" "$k" "$(python3 -c "print(f'{$k / $s:.2f}')")"
  done
  echo "goal: each ratio <= 0.60"
  echo
  echo "the engine alone, N \`docker run -d\` of the image at once until all started:"
  printf '  6 containers: %s s (+1 s stability wait = %s of Swarm'"'"'s create)\n' "$f6" \
    "$(python3 -c "print(f'{($f6 + 1) / $s_create:.2f}')")"
  printf '  12 containers: %s s (+1 s stability wait = %s of Swarm'"'"'s scale 6 -> 18)\n' "$f12" \
    "$(python3 -c "print(f'{($f12 + 1) / $s_scale:.2f}')")"
}
