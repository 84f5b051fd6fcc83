#!/usr/bin/env bash
# THE test command: formatting, lints, then the whole workspace's tests against a private
# PostgreSQL and a private Redis (started here on free ports, stopped at exit), then the
# fault run (scripts/chaos.sh), the Debian package and the deployment script, tested on a
# fresh Debian root.
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
# The scripts below run these binaries as built (another cargo build of theirs, with another
# feature set, would only rebuild the same programs).
export SWITCHYARD_PREBUILT=1

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

# The demo (the README's first command), the Debian package and the one-command
# deployment, end to end on a fresh Debian root (scripts/deploy-test.sh says how). They run
# whatever cargo test said.
phase "demo: SWITCHYARD_DEMO_CHECK=1 scripts/demo.sh (admin listener, private Prometheus with the alert rules)"
demo_status=0
SWITCHYARD_DEMO_CHECK=1 scripts/demo.sh </dev/null || demo_status=$?

# The package of the debug build the tests used: packaging and deployment are what is
# tested here, and a release build would add minutes to every run.
phase "packaging: PACKAGE_PROFILE=dev scripts/package.sh (cargo deb)"
package_status=0
deb="$(PACKAGE_PROFILE=dev scripts/package.sh </dev/null | tail -n 1)" || package_status=$?
deploy_status=0
if [ "$package_status" = 0 ]; then
  phase "deployment: scripts/deploy-test.sh $deb (debootstrap root, chroot, deploy.sh, smoke test)"
  scripts/deploy-test.sh "$deb" </dev/null || deploy_status=$?
else
  deploy_status=$package_status
fi

phase "done: cargo test exited with $status, chaos.sh with $chaos_status, demo.sh with $demo_status, package.sh with $package_status, deploy-test.sh with $deploy_status"
[ "$status" = 0 ] && [ "$chaos_status" = 0 ] && [ "$demo_status" = 0 ] && [ "$package_status" = 0 ] && [ "$deploy_status" = 0 ]
