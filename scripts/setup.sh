#!/usr/bin/env bash
# Installs what skein's build, tests and demo need on a fresh Debian machine
# (as root, through apt-get), and makes sure a Docker engine is running when
# one can be had. Safe to run again: it only installs what is missing.
set -euo pipefail

log() { printf '==> %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
fi

need_pkgs=()
want() { # want COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
want cc gcc
want python3 python3
want curl curl
want pgrep procps
want ip iproute2
want iptables iptables
want tmux tmux
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
want docker docker.io

apt_updated=0
apt_install() {
  if [ -z "$SUDO" ] && [ "$(id -u)" -ne 0 ]; then
    log "not root and no sudo: please install: $*"
    return 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO apt-get update -qq || log "apt-get update failed; trying the install anyway"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing: ${need_pkgs[*]}"
  if ! apt_install "${need_pkgs[@]}"; then
    # Docker is optional for the process runtime: retry without it.
    rest=()
    for p in "${need_pkgs[@]}"; do [ "$p" = docker.io ] || rest+=("$p"); done
    if [ ${#rest[@]} -gt 0 ]; then apt_install "${rest[@]}"; fi
    log "docker.io could not be installed; Docker tests will be skipped"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "no Rust toolchain (cargo) found: install Rust (rustup) and run again"
    exit 1
  fi
fi

# A Docker engine: start dockerd if it is installed but not answering.
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  if command -v dockerd >/dev/null 2>&1; then
    log "starting dockerd"
    if command -v systemctl >/dev/null 2>&1 && systemctl start docker >/dev/null 2>&1; then
      :
    else
      ($SUDO dockerd >/tmp/skein-dockerd.log 2>&1 &)
    fi
    for _ in $(seq 1 30); do
      docker info >/dev/null 2>&1 && break
      sleep 1
    done
    docker info >/dev/null 2>&1 || log "dockerd did not come up (see /tmp/skein-dockerd.log); Docker tests will be skipped"
  fi
fi
