#!/usr/bin/env bash
# The seeded simulation of the whole switch (issue 10, docs/simulation.md): runs N seeds
# from a random start seed (or SEED=), prints each failing seed with the invariants it
# broke, and ends with `P passed, F failed`. Exits non-zero when any seed failed.
#   scripts/simulate.sh 500
#   SEED=1215 scripts/simulate.sh 1     # reproduces one seed exactly
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n="${1:-100}"
case "$n" in
  ''|*[!0-9]*) echo "usage: scripts/simulate.sh N (a number of seeds); SEED= for the first seed" >&2; exit 2 ;;
esac
cargo build --quiet -p sim --bin simulate
args=("$n")
if [ -n "${SEED:-}" ]; then
  args+=(--seed "$SEED")
fi
exec target/debug/simulate "${args[@]}"
