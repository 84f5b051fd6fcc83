#!/usr/bin/env bash
# End-to-end test of scripts/deploy.sh on a fresh Debian root (run by scripts/test.sh, as
# root; or alone: scripts/deploy-test.sh [PACKAGE.deb]).
#
# A minimal Debian bookworm root is made with debootstrap once and kept as a tarball,
# target/deploy-test/bookworm-minbase.tar.gz (delete it to start from a new one); each run
# unpacks it afresh. Inside it, through chroot, deploy.sh installs PostgreSQL and Redis
# from Debian's archive, the package, the configuration, runs the migrations, starts the
# bank simulator and the switch (the fallback without systemd: a chroot has no init) and
# runs its smoke test. Then, from outside, this script checks the admin listener and the
# metrics, runs deploy.sh a second time (it must keep the keys and pass again), and at exit
# stops every process running in the root, unmounts and deletes it.
#
# Everything listens on 127.0.0.1, on ports picked free here (a chroot shares the host's
# network). Downloaded .debs are cached in target/deploy-test/apt-archives. Inside the root
# /usr/sbin/policy-rc.d forbids maintainer scripts to start services, as is usual for
# chroots: the services are started by deploy.sh. DEPLOY_TEST_MIRROR picks the Debian mirror.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"
work="$repo/target/deploy-test"
tarball="$work/bookworm-minbase.tar.gz"
archives="$work/apt-archives"
mirror="${DEPLOY_TEST_MIRROR:-http://deb.debian.org/debian}"
# The whole chroot part (both deploy.sh runs) may take this long at most.
deploy_limit_s=1200
start=$SECONDS
step() { printf 'deploy-test: %s (%d s)\n' "$*" "$((SECONDS - start))"; }

[ "$(id -u)" = 0 ] || { echo "deploy-test: needs root (debootstrap, chroot, mount)" >&2; exit 1; }
deb="${1:-$(ls -t target/debian/switchyard_*.deb 2>/dev/null | head -n 1 || true)}"
[ -r "$deb" ] || { echo "deploy-test: no package: run scripts/package.sh first" >&2; exit 1; }
mkdir -p "$work" "$archives/partial"
# The root with PostgreSQL and Redis installed takes about 600 MB; say so plainly rather
# than let dpkg fail halfway with "No space left on device".
need_mb=1500
free_mb="$(df -Pm "$work" | awk 'NR == 2 { print $4 }')"
if [ "$free_mb" -lt "$need_mb" ]; then
  echo "deploy-test: only $free_mb MB free under $work; the test needs $need_mb MB" >&2
  exit 1
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    step "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap </dev/null >/dev/null
  }
  step "debootstrap --variant=minbase bookworm from $mirror (once; cached as $tarball)"
  fresh="$(mktemp -d "$work/debootstrap-XXXXXX")"
  if ! debootstrap --variant=minbase bookworm "$fresh/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    rm -rf "$fresh"
    echo "deploy-test: debootstrap failed (log: $work/debootstrap.log)" >&2
    exit 1
  fi
  tar -C "$fresh/root" -czf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$fresh"
fi

root="$(mktemp -d "$work/root-XXXXXX")"
mounted=()

# Stops what runs inside the root (every process whose root directory is it), unmounts,
# and deletes the root only when nothing is mounted below it any more.
cleanup() {
  local pid i m left
  for i in 1 2; do
    for pid in /proc/[0-9]*; do
      [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ] || continue
      kill "$([ "$i" = 1 ] && echo -TERM || echo -KILL)" "${pid#/proc/}" 2>/dev/null || true
    done
    [ "$i" = 1 ] && sleep 3
  done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m="${mounted[$i]}"
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  left="$(awk -v r="$root" 'index($2, r) == 1 { print $2 }' /proc/mounts)"
  if [ -n "$left" ]; then
    echo "deploy-test: still mounted, $root kept: $left" >&2
  else
    rm -rf "$root"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "unpacking a fresh root in $root"
tar -C "$root" -xzf "$tarball"
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount_all() {
  bind_one proc /proc -t proc
  bind_one sysfs /sys -t sysfs
  bind_one /dev /dev --bind
  bind_one /dev/pts /dev/pts --bind
  bind_one "$archives" /var/cache/apt/archives --bind
}
bind_one() {
  mkdir -p "$root$2"
  mount "${@:3}" "$1" "$root$2"
  mounted+=("$root$2")
}
mount_all

# shellcheck source=scripts/services.sh
. scripts/services.sh # for _sy_free_port only: no server of its own is started here
pg_port="$(_sy_free_port)"
redis_port="$(_sy_free_port)"
merchant="127.0.0.1:$(_sy_free_port)"
admin="127.0.0.1:$(_sy_free_port)"
sim="127.0.0.1:$(_sy_free_port)"
sim_control="127.0.0.1:$(_sy_free_port)"

mkdir -p "$root/root/deploy"
cp scripts/deploy.sh "$root/root/deploy/"
cp "$deb" "$root/root/deploy/"
args=(--deb "/root/deploy/$(basename "$deb")" --pg-port "$pg_port" --redis-port "$redis_port"
  --merchant-listen "$merchant" --admin-listen "$admin"
  --bank-sim-listen "$sim" --bank-sim-control "$sim_control")

# run_deploy LOG: deploy.sh in the root, with a clean environment as on a fresh machine,
# its output shown as it comes (from the log file: the daemons it starts must not keep a
# pipe of ours open).
run_deploy() {
  local log="$1" pid status=0
  : >"$log"
  timeout "$deploy_limit_s" chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb /bin/bash /root/deploy/deploy.sh "${args[@]}" \
    >"$log" 2>&1 </dev/null &
  pid=$!
  tail -n +1 -f --pid="$pid" "$log" | sed 's/^/  | /'
  wait "$pid" || status=$?
  [ "$status" = 0 ] || echo "deploy-test: deploy.sh failed with status $status (124: over $deploy_limit_s s)" >&2
  return "$status"
}

step "chroot: scripts/deploy.sh ${args[*]}"
run_deploy "$work/deploy-1.log"

# From outside the root: the admin listener answers, and the smoke purchase was counted.
get() {
  local addr="$1" path="$2" reply
  exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$addr" >&3
  reply="$(cat <&3)"
  exec 3<&-
  printf '%s\n' "$reply"
}
step "checking http://$admin/healthz and /metrics from outside the root"
get "$admin" /healthz | grep -qx 'ok' || { echo "deploy-test: /healthz did not answer ok" >&2; exit 1; }
get "$admin" /metrics | grep -E '^switchyard_requests_total\{[^}]*rc="00"' ||
  { echo "deploy-test: no approved request in the metrics" >&2; exit 1; }
grep -q 'Generated secrets' "$work/deploy-1.log" || { echo "deploy-test: no keys were generated" >&2; exit 1; }
keys_before="$(grep KEY_HEX "$root/etc/switchyard/switchyard.env")"
collation="$(chroot "$root" runuser -u postgres -- psql -p "$pg_port" -tAc \
  "SELECT datcollate || '/' || datctype || '/' || pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'switchyard'")"
[ "$collation" = "C/C/UTF8" ] ||
  { echo "deploy-test: the database's locale is $collation, not C/C/UTF8" >&2; exit 1; }

step "chroot: scripts/deploy.sh again (an upgrade in place: keys kept, smoke test again)"
run_deploy "$work/deploy-2.log"
[ "$(grep KEY_HEX "$root/etc/switchyard/switchyard.env")" = "$keys_before" ] ||
  { echo "deploy-test: the second run changed the keys" >&2; exit 1; }
if grep -q 'Generated secrets' "$work/deploy-2.log"; then
  echo "deploy-test: the second run printed new secrets" >&2
  exit 1
fi

step "passed; stopping what runs in the root"
