#!/usr/bin/env bash
# THE test command: formatting, lints, then the whole workspace's tests against a private
# PostgreSQL and a private Redis (started here on free ports, stopped at exit), then the
# fault run (scripts/chaos.sh).
# Runs the same on a developer's machine and in CI (CI=true, no stdin, a fresh clone, root).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
phase() { printf '\n==> %s (%d s)\n' "$*" "$((SECONDS - start))"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is not on PATH" >&2
  exit 1
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

phase "cargo fmt --all -- --check"
cargo fmt --all -- --check

phase "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# shellcheck source=scripts/services.sh
. scripts/services.sh
trap services_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

phase "starting private PostgreSQL and Redis"
services_start

phase "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# --no-fail-fast: one failing test binary does not hide the results of the others; the exit
# status is still non-zero when anything failed.
phase "cargo test --workspace --no-fail-fast"
status=0
cargo test --workspace --no-fail-fast </dev/null || status=$?

# The fault run (issue 11): the switch under load while it, Redis, PostgreSQL and the bank
# links are broken, then reconciled three ways. 60 s of load by default (DURATION= makes it
# longer); it starts its own PostgreSQL and Redis, since it stops and kills them.
phase "scripts/chaos.sh (fault run, ${DURATION:-60} s of load)"
chaos_status=0
scripts/chaos.sh </dev/null || chaos_status=$?

phase "done: cargo test exited with $status, scripts/chaos.sh with $chaos_status"
if [ "$status" = 0 ]; then
  status="$chaos_status"
fi
exit "$status"
