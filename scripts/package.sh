#!/usr/bin/env bash
# Builds the Debian package: target/debian/switchyard_VERSION-1_ARCH.deb (its path is the
# last line printed). Installs the cargo-deb tool from crates.io when it is missing.
#
# The package holds the release binaries switchyard (/usr/bin), and bank-sim and
# demo-traffic (/usr/lib/switchyard, for smoke tests), the systemd units, the annotated
# configuration (/etc/switchyard/switchyard.toml), the migrations, alert rules and
# dashboard (/usr/share/switchyard) and the operations guide (/usr/share/doc/switchyard).
# What goes where is [package.metadata.deb] in switch/Cargo.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# cargo-deb's version is pinned so that a package built today and one built next month
# come from the same tool.
cargo_deb_version="${CARGO_DEB_VERSION:-3.8.0}"

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: installing cargo-deb $cargo_deb_version (cargo install --locked)" >&2
  cargo install cargo-deb --locked --version "$cargo_deb_version" >&2
fi

# cargo-deb builds only the switch package's own binaries; bank-sim and demo-traffic live
# in loadtest, so everything is built first and cargo-deb packs what is there.
# PACKAGE_PROFILE=dev packs the debug build instead (the test command's: it is built
# already, and a release build would add minutes to every CI run); never ship that one.
profile="${PACKAGE_PROFILE:-release}"
case "$profile" in
  release) build_flag="--release" ;;
  dev) build_flag="" ;;
  *) echo "package: PACKAGE_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
# The test command has built the debug binaries already (SWITCHYARD_PREBUILT=1).
if [ "$profile" != dev ] || [ "${SWITCHYARD_PREBUILT:-0}" != 1 ]; then
  echo "package: cargo build $build_flag -p switch -p loadtest --bins" >&2
  # shellcheck disable=SC2086 # an empty flag must vanish
  cargo build $build_flag -p switch -p loadtest --bins >&2
fi
echo "package: cargo deb -p switch --no-build --strip --profile $profile" >&2
# Stripped (Debian policy for binaries); the release profile keeps debug info for profiling.
cargo deb -p switch --no-build --strip --profile "$profile" "$@" | tail -n 1
