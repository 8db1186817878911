#!/usr/bin/env bash
# Chaos soak: 3 managers + 2 workers (real `skein agent`s, process runtime),
# each in its own network namespace, under random faults for N minutes
# (kill -9 and restart, silent cuts, one-way packet loss, leadership
# transfers, drains) while a client creates, updates, scales and removes
# services. Checks: no acknowledged write lost on any manager, no slot ever
# running more task processes than allowed (1, 2 for a start-first update)
# on workers the cluster holds up, convergence within 30 s of the last heal,
# no agent panic or unexpected exit. Exit 0 only when every check passes.
# Details (and what is reported apart): scripts/chaos.py. Recorded runs:
# scripts/bench/chaos-results.md.
#
#   scripts/chaos.sh [--minutes N] [--seed S] [--keep-logs DIR]
#
# Needs root, `ip` and `iptables`. The binary: $SKEIN_BIN, else
# target/debug/skein (built here when missing). Everything it starts
# (agents, task processes, namespaces, veths, the bridge, iptables rules,
# temp dirs) is removed on exit, Ctrl-C and failures included. Traffic stays
# on its own bridge and namespaces (a 10.231.X.0/24 subnet).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes | --seed | --keep-logs)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      ARGS+=("$1" "$2")
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'
      exit 0
      ;;
    *)
      echo "unknown argument: $1 (see --help)" >&2
      exit 2
      ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "chaos.sh needs root (network namespaces, iptables)" >&2
  exit 1
fi
for c in ip iptables python3; do
  command -v "$c" >/dev/null || { echo "chaos.sh needs $c (scripts/setup.sh installs it)" >&2; exit 1; }
done

SKEIN_BIN="${SKEIN_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/skein}"
if [ ! -x "$SKEIN_BIN" ]; then
  echo "==> building skein (debug)" >&2
  cargo build --quiet -p skein-node --bin skein
fi

WORK="$(mktemp -d /tmp/skein-chaos.XXXXXX)"
DRIVER_PID=""

cleanup() {
  local rc=$?
  set +e
  # A second Ctrl-C or TERM (timeout(1) signals the whole group) must not
  # cut the cleanup short.
  trap - EXIT
  trap '' INT TERM
  # The driver cleans up after itself; give it time, then make sure.
  if [ -n "$DRIVER_PID" ] && kill -0 "$DRIVER_PID" 2>/dev/null; then
    kill -TERM "$DRIVER_PID" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$DRIVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$DRIVER_PID" 2>/dev/null
  fi
  # What the driver noted it made, undone in reverse: processes inside our
  # namespaces (agents, shims, tasks), the namespaces, links, the host rule.
  if [ -f "$WORK/undo" ]; then
    while read -r kind name rest; do
      case "$kind" in
        ns)
          for pid in $(ip netns pids "$name" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
          ip netns del "$name" 2>/dev/null
          ;;
        link) ip link del "$name" 2>/dev/null ;;
        rule) iptables -D "$name" $rest 2>/dev/null ;;
      esac
    done < <(tac "$WORK/undo")
  fi
  # Agents we started that somehow still run (their command line names WORK).
  if [ -f "$WORK/pids" ]; then
    while read -r pid; do
      if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$WORK"; then
        kill -KILL "$pid" 2>/dev/null
      fi
    done <"$WORK/pids"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 scripts/chaos.py --bin "$SKEIN_BIN" --work "$WORK" "${ARGS[@]}" &
DRIVER_PID=$!
wait "$DRIVER_PID"
