#!/usr/bin/env bash
# THE test command. On a fresh machine it installs what is missing, then
# checks formatting and lints, builds once, and runs every test: unit and
# property tests, the simulation, and the multi-process agent tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build"
cargo build --workspace --all-targets --locked

if docker info >/dev/null 2>&1; then
  echo "==> test images"
  bash scripts/make-test-image.sh
fi

echo "==> cargo test"
# The agent tests run the real binary built above.
SKEIN_BIN="$PWD/target/debug/skein" cargo test --workspace --locked

echo "==> chaos soak (2 minutes)"
# Real agents in network namespaces under random faults while a client
# writes: no acknowledged write lost, no slot running twice, convergence.
SKEIN_BIN="$PWD/target/debug/skein" bash scripts/chaos.sh --minutes 2
