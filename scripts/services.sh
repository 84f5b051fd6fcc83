# shellcheck shell=bash
# Private PostgreSQL and Redis for tests and the demo.
#
# Source this file, then call `services_start` and arrange for `services_stop` to run at exit:
#
#     . scripts/services.sh
#     trap services_stop EXIT
#     services_start
#
# services_start installs the Debian packages `postgresql` and `redis-server` when a binary is
# missing (and `prometheus` when `promtool` is, for tests/tests/ops_rules.rs, `systemd`
# when `systemd-analyze` is, for tests/tests/packaging.rs, and `chromium` and
# `chromium-driver` when `chromedriver` is, for the console's browser test; a failure
# there is only logged, that test then fails on its own), picks free TCP ports, starts a PostgreSQL
# cluster of its own (data under target/test-services/pg-XXXX) and a Redis of its own
# (target/test-services/redis-XXXX), and exports for the tests:
#
#     SWITCHYARD_TEST_PG_URL     postgres://postgres@127.0.0.1:PORT/postgres
#     SWITCHYARD_TEST_PG_BIN     directory of pg_ctl, initdb, psql (/usr/lib/postgresql/15/bin)
#     SWITCHYARD_TEST_PG_DATA    the cluster's data directory (port and socket dir are in its
#                                postgresql.conf, so `pg_ctl -D DATA -l DATA/server.log -w start`
#                                brings it back on the same port)
#     SWITCHYARD_TEST_PG_PORT
#     SWITCHYARD_TEST_PG_SOCKET_DIR  the directory of the cluster's unix socket
#     SWITCHYARD_TEST_REDIS_URL  redis://127.0.0.1:PORT/
#     SWITCHYARD_TEST_REDIS_PORT
#     SWITCHYARD_TEST_REDIS_SOCKET  the path of Redis's unix socket
#
# SWITCHYARD_TEST_PG_LOCALE (default C) is the cluster's locale (initdb --locale): C.UTF-8 or a
# language's locale measures what a database made with a libc collation costs (bench.sh).
#
# It never touches a system-wide PostgreSQL or Redis (no systemctl, no service, no default
# ports). services_stop stops only what services_start started, is safe to call twice and
# after a partial start, and removes the data directories (logs are copied to
# target/test-services/last-logs/ first). Set SWITCHYARD_KEEP_TEST_SERVICES=1 to keep them.
#
# Functions return non-zero on failure; this file sets no shell options of its own.

_sy_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_sy_services_dir="${_sy_root}/target/test-services"
_sy_pg_data=""
_sy_pg_sock=""
_sy_redis_dir=""
_sy_redis_port=""
_sy_redis_sock=""

_sy_log() { printf 'services: %s\n' "$*" >&2; }

# Run a command as the PostgreSQL user (PostgreSQL refuses to run as root).
_sy_as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

# True when PID names a live process (a zombie counts as gone).
_sy_alive() {
  local pid="$1" stat state
  case "$pid" in '' | *[!0-9]*) return 1 ;; esac
  # /proc/PID/stat is "pid (comm) STATE ..."; read it directly (procps may not be installed).
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  state="${stat##*) }"
  state="${state%% *}"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

_sy_pg_bin_dir() {
  if [ -n "${SWITCHYARD_TEST_PG_BIN:-}" ] && [ -x "${SWITCHYARD_TEST_PG_BIN}/initdb" ]; then
    printf '%s\n' "$SWITCHYARD_TEST_PG_BIN"
    return 0
  fi
  if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
    printf '%s\n' /usr/lib/postgresql/15/bin
    return 0
  fi
  # Another Debian release ships another major version; take the newest installed.
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then
    printf '%s\n' "$d"
    return 0
  fi
  return 1
}

# Install the Debian packages when a binary is missing (only then, and quietly).
_sy_ensure_packages() {
  _sy_ensure_servers || return 1
  _sy_ensure_tools
  return 0
}

_sy_ensure_servers() {
  if _sy_pg_bin_dir >/dev/null && command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    _sy_log "PostgreSQL or Redis is missing and this is not root: install the Debian packages postgresql and redis-server"
    return 1
  fi
  _sy_log "installing postgresql and redis-server (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || { _sy_log "apt-get update failed"; return 1; }
  apt-get install -y -qq postgresql redis-server >/dev/null </dev/null ||
    { _sy_log "apt-get install postgresql redis-server failed"; return 1; }
  _sy_pg_bin_dir >/dev/null || { _sy_log "no PostgreSQL binaries under /usr/lib/postgresql after install"; return 1; }
  command -v redis-server >/dev/null || { _sy_log "no redis-server after install"; return 1; }
}

# Tools some tests need besides the servers: promtool (package prometheus) checks the alert
# rules in ops/, systemd-analyze (package systemd) the packaged units, chromium and
# chromium-driver drive the console in a browser (tests/tests/backoffice.rs). A failure is
# only logged: the test that needs the tool then fails and says why.
_sy_ensure_tools() {
  _sy_ensure_tool promtool prometheus
  _sy_ensure_tool systemd-analyze systemd
  _sy_ensure_tool chromedriver chromium chromium-driver
  return 0
}

# Usage: _sy_ensure_tool COMMAND PACKAGE...: installs the Debian packages when the command is
# missing.
_sy_ensure_tool() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    _sy_log "$cmd is missing and this is not root: install the Debian package(s) $*"
    return 1
  fi
  _sy_log "installing $* for $cmd (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || { _sy_log "apt-get update failed"; return 1; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null </dev/null ||
    { _sy_log "apt-get install $* failed"; return 1; }
  command -v "$cmd" >/dev/null || { _sy_log "no $cmd after installing $*"; return 1; }
}

# Print a TCP port that is free on 127.0.0.1 right now.
_sy_free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' && return 0
  fi
  # No python3: try random high ports until one refuses a connection.
  local p i
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      printf '%s\n' "$p"
      return 0
    fi
  done
  return 1
}

# Stop servers left behind by runs that were killed before their own services_stop ran.
_sy_reap_stale() {
  local d owner pid pgbin
  pgbin="$(_sy_pg_bin_dir 2>/dev/null)" || pgbin=""
  for d in "$_sy_services_dir"/pg-* "$_sy_services_dir"/redis-*; do
    [ -d "$d" ] || continue
    owner="$(cat "$d/owner.pid" 2>/dev/null)" || owner=""
    if [ -n "$owner" ]; then
      _sy_alive "$owner" && continue
    elif [ -z "$(find "$d" -maxdepth 0 -mmin +30 2>/dev/null)" ]; then
      continue # young and without owner: maybe another run is setting it up right now
    fi
    if [ -f "$d/postmaster.pid" ] && [ -n "$pgbin" ]; then
      pid="$(head -n 1 "$d/postmaster.pid" 2>/dev/null)"
      if _sy_alive "$pid"; then
        _sy_as_pg "$pgbin/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || kill -9 "$pid" 2>/dev/null
      fi
    fi
    if [ -f "$d/redis.pid" ]; then
      pid="$(cat "$d/redis.pid" 2>/dev/null)"
      _sy_alive "$pid" && kill -9 "$pid" 2>/dev/null
    fi
    rm -rf "$d"
  done
}

_sy_pg_start() {
  local pgbin="$1" suffix="$2" port attempt
  _sy_pg_data="$_sy_services_dir/pg-$suffix"
  mkdir -p "$_sy_pg_data"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$_sy_pg_data"
    chmod 700 "$_sy_pg_data"
    if ! runuser -u postgres -- test -w "$_sy_pg_data" 2>/dev/null; then
      # A parent directory is closed to the postgres user (a clone under /root, say).
      _sy_log "postgres cannot reach $_sy_pg_data; using a directory under /tmp instead"
      rmdir "$_sy_pg_data"
      _sy_pg_data="$(mktemp -d /tmp/switchyard-pg-XXXXXX)"
      chown postgres: "$_sy_pg_data"
      chmod 700 "$_sy_pg_data"
    fi
  fi
  if ! _sy_as_pg "$pgbin/initdb" -D "$_sy_pg_data" -U postgres -A trust -E UTF8 --locale="${SWITCHYARD_TEST_PG_LOCALE:-C}" \
    --no-sync >"$_sy_services_dir/initdb-$suffix.log" 2>&1; then
    _sy_log "initdb failed:"
    cat "$_sy_services_dir/initdb-$suffix.log" >&2
    return 1
  fi
  rm -f "$_sy_services_dir/initdb-$suffix.log"
  echo "$$" >"$_sy_pg_data/owner.pid"

  # The unix socket lives in the data directory unless that path is too long for a socket.
  _sy_pg_sock="$_sy_pg_data"
  if [ "${#_sy_pg_data}" -gt 80 ]; then
    _sy_pg_sock="$(mktemp -d /tmp/switchyard-pgsock-XXXXXX)"
    [ "$(id -u)" = 0 ] && chown postgres: "$_sy_pg_sock"
  fi

  for attempt in 1 2 3; do
    port="$(_sy_free_port)" || return 1
    # Settings go into postgresql.conf (the last occurrence wins), so a test can restart the
    # cluster with plain `pg_ctl -D DATA -l DATA/server.log -w start` on the same port.
    cat >>"$_sy_pg_data/postgresql.conf" <<EOF

# switchyard test settings (attempt $attempt)
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$_sy_pg_sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    if _sy_as_pg "$pgbin/pg_ctl" -D "$_sy_pg_data" -l "$_sy_pg_data/server.log" -w -t 60 start >/dev/null 2>&1; then
      export SWITCHYARD_TEST_PG_PORT="$port"
      export SWITCHYARD_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
      export SWITCHYARD_TEST_PG_SOCKET_DIR="$_sy_pg_sock"
      export SWITCHYARD_TEST_PG_BIN="$pgbin"
      export SWITCHYARD_TEST_PG_DATA="$_sy_pg_data"
      return 0
    fi
    _sy_log "PostgreSQL did not start on port $port (attempt $attempt); log tail:"
    tail -n 5 "$_sy_pg_data/server.log" >&2 2>/dev/null
  done
  return 1
}

_sy_redis_start() {
  local suffix="$1" port attempt i
  _sy_redis_dir="$_sy_services_dir/redis-$suffix"
  mkdir -p "$_sy_redis_dir"
  echo "$$" >"$_sy_redis_dir/owner.pid"
  # A unix socket as well (scripts/bench.sh can reach Redis through it), in the directory
  # unless that path is too long for a socket (108 bytes).
  _sy_redis_sock="$_sy_redis_dir/redis.sock"
  if [ "${#_sy_redis_sock}" -gt 100 ]; then
    _sy_redis_sock="$(mktemp -u /tmp/switchyard-redis-XXXXXX.sock)"
  fi
  for attempt in 1 2 3; do
    port="$(_sy_free_port)" || return 1
    if [ "$port" = "${SWITCHYARD_TEST_PG_PORT:-}" ]; then continue; fi
    rm -f "$_sy_redis_dir/redis.pid"
    if redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --unixsocket "$_sy_redis_sock" --unixsocketperm 700 \
      --daemonize yes --pidfile "$_sy_redis_dir/redis.pid" --dir "$_sy_redis_dir" \
      --logfile "$_sy_redis_dir/redis.log" >/dev/null 2>&1; then
      _sy_redis_port="$port"
      for i in $(seq 1 100); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
          export SWITCHYARD_TEST_REDIS_PORT="$port"
          export SWITCHYARD_TEST_REDIS_URL="redis://127.0.0.1:$port/"
          export SWITCHYARD_TEST_REDIS_SOCKET="$_sy_redis_sock"
          return 0
        fi
        sleep 0.1
      done
      _sy_redis_stop_only
    fi
    _sy_log "Redis did not start on port $port (attempt $attempt); log tail:"
    tail -n 5 "$_sy_redis_dir/redis.log" >&2 2>/dev/null
  done
  return 1
}

services_start() {
  local pgbin suffix t0
  t0=$SECONDS
  _sy_ensure_packages || return 1
  pgbin="$(_sy_pg_bin_dir)" || return 1
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres || return 1
  fi
  mkdir -p "$_sy_services_dir"
  _sy_reap_stale
  suffix="$(mktemp -u XXXXXX)"
  _sy_pg_start "$pgbin" "$suffix" || { _sy_log "could not start PostgreSQL"; return 1; }
  _sy_redis_start "$suffix" || { _sy_log "could not start Redis"; return 1; }
  _sy_log "PostgreSQL on 127.0.0.1:$SWITCHYARD_TEST_PG_PORT (data $SWITCHYARD_TEST_PG_DATA)," \
    "Redis on 127.0.0.1:$SWITCHYARD_TEST_REDIS_PORT; ready in $((SECONDS - t0)) s"
}

_sy_redis_stop_only() {
  local pid i
  [ -n "$_sy_redis_dir" ] || return 0
  pid="$(cat "$_sy_redis_dir/redis.pid" 2>/dev/null)"
  if [ -n "$_sy_redis_port" ]; then
    redis-cli -h 127.0.0.1 -p "$_sy_redis_port" shutdown nosave >/dev/null 2>&1
  fi
  if [ -n "$pid" ]; then
    for i in $(seq 1 50); do
      _sy_alive "$pid" || break
      sleep 0.1
    done
    if _sy_alive "$pid"; then
      kill -9 "$pid" 2>/dev/null
    fi
  fi
  # A socket Redis could not remove itself (killed), wherever it is (in /tmp when the
  # directory's path was too long).
  [ -n "$_sy_redis_sock" ] && rm -f "$_sy_redis_sock"
  _sy_redis_port=""
}

services_stop() {
  local pgbin keep="${SWITCHYARD_KEEP_TEST_SERVICES:-0}" logs="$_sy_services_dir/last-logs"
  if [ -n "$_sy_pg_data" ] && [ -d "$_sy_pg_data" ]; then
    pgbin="${SWITCHYARD_TEST_PG_BIN:-$(_sy_pg_bin_dir 2>/dev/null)}"
    if [ -f "$_sy_pg_data/postmaster.pid" ]; then
      _sy_as_pg "$pgbin/pg_ctl" -D "$_sy_pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
        _sy_as_pg "$pgbin/pg_ctl" -D "$_sy_pg_data" -m immediate -w stop >/dev/null 2>&1
    fi
  fi
  _sy_redis_stop_only
  mkdir -p "$logs" 2>/dev/null
  [ -n "$_sy_pg_data" ] && cp "$_sy_pg_data/server.log" "$logs/postgresql.log" 2>/dev/null
  [ -n "$_sy_redis_dir" ] && cp "$_sy_redis_dir/redis.log" "$logs/redis.log" 2>/dev/null
  if [ "$keep" != 1 ]; then
    [ -n "$_sy_pg_data" ] && rm -rf "$_sy_pg_data"
    [ -n "$_sy_redis_dir" ] && rm -rf "$_sy_redis_dir"
    [ -n "$_sy_pg_sock" ] && [ "$_sy_pg_sock" != "$_sy_pg_data" ] && rm -rf "$_sy_pg_sock"
  fi
  if [ -n "$_sy_pg_data$_sy_redis_dir" ]; then
    if [ "$keep" = 1 ]; then
      _sy_log "stopped PostgreSQL and Redis (data kept under $_sy_services_dir)"
    else
      _sy_log "stopped PostgreSQL and Redis"
    fi
  fi
  _sy_pg_data=""
  _sy_pg_sock=""
  _sy_redis_dir=""
  return 0
}
