#!/usr/bin/env bash
# skein's main job, on this machine: start a local cluster, deploy the sample
# edge stack (examples/edge-stack.yml: a global, a replicated and a
# host-port service) and show it working. The stack runs on the process
# runtime, so no Docker engine is needed.
#
#   scripts/demo.sh            build, start, deploy, show; Ctrl-C cleans up
#   DEMO_KEEP=0 scripts/demo.sh  tear everything down at the end (no waiting)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> building skein"
cargo build --quiet -p skein-node
SKEIN="$PWD/target/debug/skein"

API_PORT="${DEMO_API_PORT:-7947}"
export SKEIN_HOST="127.0.0.1:${API_PORT}"
DATA="$(mktemp -d /tmp/skein-demo.XXXXXX)"
AGENT_PID=""

cleanup() {
  set +e
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    echo "==> removing the stack and stopping the agent"
    "$SKEIN" stack rm edge >/dev/null 2>&1
    kill "$AGENT_PID" 2>/dev/null
    wait "$AGENT_PID" 2>/dev/null
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if (exec 3<>"/dev/tcp/127.0.0.1/${API_PORT}") 2>/dev/null; then
  echo "port ${API_PORT} is in use (another skein agent?): set DEMO_API_PORT" >&2
  exit 1
fi

echo "==> starting a skein agent (data dir $DATA, API $SKEIN_HOST)"
"$SKEIN" agent --data-dir "$DATA" --name edge-01 --api "$SKEIN_HOST" --runtime process \
  --label zone=demo >"$DATA/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
  "$SKEIN" node ls >/dev/null 2>&1 && break
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$DATA/agent.log"; exit 1; }
  sleep 0.1
done

echo; echo "\$ skein node ls"
"$SKEIN" node ls

echo; echo "\$ skein stack deploy -c examples/edge-stack.yml edge"
"$SKEIN" stack deploy -c examples/edge-stack.yml edge

echo; echo "\$ skein stack services edge"
"$SKEIN" stack services edge

echo; echo "\$ skein stack ps edge"
"$SKEIN" stack ps edge

echo; echo "\$ curl http://127.0.0.1:8080/   (the host-port service)"
for _ in $(seq 1 50); do
  if curl -fsS -o /dev/null "http://127.0.0.1:8080/" 2>/dev/null; then break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:8080/" | head -5 || echo "(web did not answer)"

echo; echo "\$ skein service scale edge_worker=4"
"$SKEIN" service scale edge_worker=4

echo; echo "\$ skein service logs --tail 2 edge_worker"
"$SKEIN" service logs --tail 2 edge_worker

if [ "${DEMO_KEEP:-1}" = "0" ] || [ ! -t 0 ]; then
  echo; echo "==> demo done"
  exit 0
fi
echo
echo "The cluster is up. In another terminal, with SKEIN_HOST=$SKEIN_HOST:"
echo "  $SKEIN service ls | service ps edge_web | service logs edge_heartbeat | stack rm edge"
echo "Press Ctrl-C to remove the stack and stop the agent."
while kill -0 "$AGENT_PID" 2>/dev/null; do sleep 1; done
