#!/usr/bin/env bash
# One-command deployment of Switchyard on a Debian machine (bookworm or later), as root:
#
#     scripts/deploy.sh                       # everything on this machine, with a bank simulator
#     scripts/deploy.sh --banks banks.toml    # real banks ([[bank]] tables), no purchase smoke test
#     scripts/deploy.sh --database-url postgres://... --redis-url redis://...   # existing servers
#
# In order: installs PostgreSQL and Redis from Debian's packages (unless existing ones are
# given), creates the database role and the database, installs the switchyard package,
# writes /etc/switchyard/switchyard.toml and, with generated keys, passwords and admin tokens
# (printed once, on the first run only), /etc/switchyard/switchyard.env, runs the migrations,
# starts the service and runs a smoke test: the bank links sign on, a merchant signs on and
# a purchase is answered 00, and the admin listener's GET /healthz answers.
#
# With systemd as PID 1 the services are systemd units (switchyard, switchyard-bank-sim,
# postgresql, redis-server). Without it (a chroot, a container without an init) the
# fallback starts them directly: PostgreSQL with pg_ctlcluster, Redis and the bank
# simulator as daemons, the switch in the background as the switchyard user with its log in
# /var/log/switchyard/switchyard.log and its PID in /run/switchyard/switchyard.pid. Nothing
# restarts them then: that mode is for trials and tests, not production.
#
# Running it again keeps the keys, passwords and tokens (the keys are permanent for a
# database), upgrades the package, rewrites the configuration and restarts the switch.
# Every option can also be given as an environment variable (DEPLOY_ and the option's name
# in capitals, dashes as underscores: --pg-port 5433 or DEPLOY_PG_PORT=5433).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/deploy.sh [options]
  --deb FILE               the package (default: the newest target/debian/switchyard_*.deb,
                           built with scripts/package.sh when there is none)
  --database-url URL       an existing PostgreSQL database for the switch (no local install)
  --redis-url URL          an existing Redis (no local install)
  --pg-port PORT           port of the local PostgreSQL (default 5432)
  --redis-port PORT        port of the local Redis (default 6379)
  --merchant-listen ADDR   the merchant listener, plain TCP (default 127.0.0.1:7000)
  --admin-listen ADDR      the admin listener: metrics, /healthz, links (default 127.0.0.1:9100)
  --banks FILE             [[bank]] tables of the real banks; without it a bank simulator
                           (bank id "sim", smoke tests only) is configured and started
  --bank-sim-listen ADDR   the simulator's bank-link address (default 127.0.0.1:9001)
  --bank-sim-control ADDR  the simulator's HTTP control address (default 127.0.0.1:9091)
  --no-smoke               skip the smoke test
EOF
}

log() { printf '\n==> deploy: %s\n' "$*"; }
die() {
  printf 'deploy: %s\n' "$*" >&2
  exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deb="${DEPLOY_DEB:-}"
database_url="${DEPLOY_DATABASE_URL:-}"
redis_url="${DEPLOY_REDIS_URL:-}"
pg_port="${DEPLOY_PG_PORT:-5432}"
redis_port="${DEPLOY_REDIS_PORT:-6379}"
merchant_listen="${DEPLOY_MERCHANT_LISTEN:-127.0.0.1:7000}"
admin_listen="${DEPLOY_ADMIN_LISTEN:-127.0.0.1:9100}"
banks_file="${DEPLOY_BANKS:-}"
sim_listen="${DEPLOY_BANK_SIM_LISTEN:-127.0.0.1:9001}"
sim_control="${DEPLOY_BANK_SIM_CONTROL:-127.0.0.1:9091}"
smoke="${DEPLOY_SMOKE:-1}"

while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="${2:?$1 needs a value}"; shift 2 ;;
    --database-url) database_url="${2:?$1 needs a value}"; shift 2 ;;
    --redis-url) redis_url="${2:?$1 needs a value}"; shift 2 ;;
    --pg-port) pg_port="${2:?$1 needs a value}"; shift 2 ;;
    --redis-port) redis_port="${2:?$1 needs a value}"; shift 2 ;;
    --merchant-listen) merchant_listen="${2:?$1 needs a value}"; shift 2 ;;
    --admin-listen) admin_listen="${2:?$1 needs a value}"; shift 2 ;;
    --banks) banks_file="${2:?$1 needs a value}"; shift 2 ;;
    --bank-sim-listen) sim_listen="${2:?$1 needs a value}"; shift 2 ;;
    --bank-sim-control) sim_control="${2:?$1 needs a value}"; shift 2 ;;
    --no-smoke) smoke=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

etc=/etc/switchyard
config="$etc/switchyard.toml"
env_file="$etc/switchyard.env"
run_dir=/run/switchyard
log_dir=/var/log/switchyard
# How long the switch may take to answer /healthz after it is started (seconds).
ready_wait_s=90

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and a system service)"
command -v apt-get >/dev/null || die "apt-get not found: this script is for Debian"
[ -z "$banks_file" ] || [ -r "$banks_file" ] || die "--banks: cannot read $banks_file"
export DEBIAN_FRONTEND=noninteractive

# systemd is in charge when it is PID 1 (the test sd_booted() makes).
if [ -d /run/systemd/system ]; then has_systemd=1; else has_systemd=0; fi

# --- helpers ---------------------------------------------------------------------------

# 32 random bytes as 64 hex digits (coreutils only: openssl may not be installed).
random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

# A single-quoted value for the environment file, which both systemd and sh read.
quote() { printf "'%s'" "$1"; }

# GET http://ADDR/PATH [bearer TOKEN] with bash's /dev/tcp (curl may not be installed);
# prints the body, fails unless the status is 200.
http_get() {
  local addr="$1" path="$2" token="${3:-}" auth="" reply
  [ -z "$token" ] || auth="Authorization: Bearer $token"$'\r\n'
  exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$path" "$addr" "$auth" >&3
  reply="$(cat <&3)"
  exec 3<&-
  case "$(head -n 1 <<<"$reply")" in *" 200 "*) ;; *) return 1 ;; esac
  sed '1,/^\r\{0,1\}$/d' <<<"$reply"
}

# True when the JSON of GET /links lists at least one link and all of them are ready.
all_links_ready() {
  local total ready
  total="$(grep -o '"state":' <<<"$1" | wc -l)"
  ready="$(grep -o '"state":"ready"' <<<"$1" | wc -l)"
  [ "$total" -gt 0 ] && [ "$total" = "$ready" ]
}

# Runs a command as the service user with the service's environment. With PIDFILE set,
# the command's PID goes there (setpriv and bash exec, so it is the command's own).
as_service() {
  SWITCHYARD_CONFIG="$config" setpriv --reuid=switchyard --regid=switchyard --init-groups \
    bash -c 'set -a; . "$1"; set +a; shift
      [ -z "${PIDFILE:-}" ] || echo "$$" >"$PIDFILE"
      exec "$@"' as_service "$env_file" "$@"
}

# A switchyard command as the service would run it.
sy() { RUST_LOG=warn as_service /usr/bin/switchyard "$@"; }

# apt's and dpkg's chatter goes to this file; its tail is shown when a step fails.
apt_log=/var/log/switchyard-deploy-apt.log
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >>"$apt_log" 2>&1 || { tail -n 20 "$apt_log" >&2; die "apt-get update failed (log: $apt_log)"; }
    apt_updated=1
  fi
  apt-get install -y -qq -o Dpkg::Options::=--force-confold "$@" </dev/null >>"$apt_log" 2>&1 ||
    { tail -n 20 "$apt_log" >&2; die "apt-get install $* failed (log: $apt_log)"; }
}

find_deb() {
  if [ -n "$deb" ]; then
    [ -r "$deb" ] || die "--deb: cannot read $deb"
    return
  fi
  deb="$(ls -t "$here"/../target/debian/switchyard_*.deb 2>/dev/null | head -n 1 || true)"
  if [ -z "$deb" ]; then
    command -v cargo >/dev/null || die "no package in target/debian/ and no cargo to build one: give --deb FILE"
    log "building the package (scripts/package.sh)"
    deb="$("$here/package.sh" | tail -n 1)"
  fi
  [ -r "$deb" ] || die "no package found (looked for target/debian/switchyard_*.deb)"
  deb="$(realpath "$deb")"
}

# --- PostgreSQL ------------------------------------------------------------------------

pg_cluster() { pg_lsclusters --no-header | awk 'NR == 1 { print $1, $2 }'; }

setup_local_postgres() {
  local version name password
  log "PostgreSQL: installing Debian's postgresql, port $pg_port"
  apt_install postgresql
  read -r version name <<<"$(pg_cluster)"
  [ -n "$version" ] || pg_createcluster --start-conf=auto "$(ls /usr/lib/postgresql | sort -V | tail -n 1)" main
  read -r version name <<<"$(pg_cluster)"
  if [ "$(pg_conftool -s "$version" "$name" show port)" != "$pg_port" ]; then
    pg_conftool "$version" "$name" set port "$pg_port"
    pg_conftool "$version" "$name" set listen_addresses localhost
    if [ "$has_systemd" = 1 ]; then systemctl restart "postgresql@$version-$name"; fi
  fi
  if [ "$has_systemd" = 1 ]; then
    systemctl enable --now "postgresql@$version-$name" >/dev/null
  elif ! pg_ctlcluster "$version" "$name" status >/dev/null 2>&1; then
    pg_ctlcluster "$version" "$name" start
  fi
  # The role's password is kept from an earlier run (it is in the database URL there).
  password="$(sed -n 's|^postgres://switchyard:\([^@]*\)@.*|\1|p' <<<"${SWITCHYARD__DATABASE__URL:-}")"
  [ -n "$password" ] || password="$(random_hex | cut -c1-32)"
  log "PostgreSQL: role and database switchyard"
  # The database compares text as bytes (locale C, UTF-8), whatever the cluster's locale:
  # the journal's keys (request keys, order references, ledger accounts) then sort the
  # same on every host and after every C library upgrade, which can otherwise change a
  # libc locale's collation under existing indexes (PostgreSQL wiki, "Locale data
  # changes"); and comparisons skip strcoll. The switch has no case-insensitive query.
  runuser -u postgres -- psql -q -p "$pg_port" -v ON_ERROR_STOP=1 -v pw="$password" <<'SQL'
SELECT format('CREATE ROLE switchyard LOGIN PASSWORD %L', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'switchyard') \gexec
SELECT format('ALTER ROLE switchyard LOGIN PASSWORD %L', :'pw') \gexec
SELECT 'CREATE DATABASE switchyard OWNER switchyard TEMPLATE template0 ENCODING ''UTF8'' LOCALE ''C'''
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'switchyard') \gexec
SQL
  database_url="postgres://switchyard:$password@127.0.0.1:$pg_port/switchyard"
}

# --- Redis -----------------------------------------------------------------------------

setup_local_redis() {
  log "Redis: installing Debian's redis-server, port $redis_port"
  apt_install redis-server
  sed -i "s/^port .*/port $redis_port/" /etc/redis/redis.conf
  if [ "$has_systemd" = 1 ]; then
    systemctl enable redis-server >/dev/null
    systemctl restart redis-server
  elif ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    install -d -o redis -g redis /run/redis /var/log/redis
    runuser -u redis -- redis-server /etc/redis/redis.conf --daemonize yes --supervised no \
      --pidfile /run/redis/redis-server.pid
  fi
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
  done
  [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] || die "Redis does not answer on port $redis_port"
  redis_url="redis://127.0.0.1:$redis_port/"
}

# --- configuration ---------------------------------------------------------------------

# Secrets: kept from an earlier run, generated (and printed, once) otherwise.
write_env_file() {
  local master pan viewer operator fresh=0
  master="${SWITCHYARD__SECURITY__MASTER_KEY_HEX:-}"
  pan="${SWITCHYARD__SECURITY__PAN_HASH_KEY_HEX:-}"
  viewer="${DEPLOY_VIEWER_TOKEN:-}"
  operator="${DEPLOY_OPERATOR_TOKEN:-}"
  if [ -z "$master" ]; then
    fresh=1
    master="$(random_hex)"
    pan="$(random_hex)"
    viewer="viewer-$(random_hex | cut -c1-32)"
    operator="operator-$(random_hex | cut -c1-32)"
  fi
  umask 027
  cat >"$env_file.new" <<EOF
# Written by scripts/deploy.sh: the switch's secrets, read by switchyard.service
# (EnvironmentFile=). Back this file up with the database: without these keys the sealed
# MAC keys and card data in the database cannot be read.
SWITCHYARD__DATABASE__URL=$(quote "$database_url")
SWITCHYARD__REDIS__URL=$(quote "$redis_url")
SWITCHYARD__SECURITY__MASTER_KEY_HEX=$(quote "$master")
SWITCHYARD__SECURITY__PAN_HASH_KEY_HEX=$(quote "$pan")
SWITCHYARD__ADMIN__TOKENS=$(quote "[{ token = \"$viewer\", role = \"viewer\" }, { token = \"$operator\", role = \"operator\" }]")
DEPLOY_VIEWER_TOKEN=$(quote "$viewer")
DEPLOY_OPERATOR_TOKEN=$(quote "$operator")
EOF
  chown root:switchyard "$env_file.new"
  chmod 0640 "$env_file.new"
  mv "$env_file.new" "$env_file"
  umask 022
  viewer_token="$viewer"
  if [ "$fresh" = 1 ]; then
    cat <<EOF

  Generated secrets (shown this once; they are in $env_file, mode 0640 root:switchyard):
    master key         $master
    PAN hash key       $pan
    admin viewer token $viewer
    admin operator     $operator
  Store them in your secret store now. Losing the keys makes the data unreadable.
EOF
  else
    echo "kept the keys, passwords and tokens of the earlier deployment ($env_file)"
  fi
}

write_config() {
  local tmp="$config.new"
  {
    cat <<EOF
# Written by scripts/deploy.sh; /usr/share/doc/switchyard/examples/switchyard.toml has
# every setting with its meaning. Secrets (database URL, keys, admin tokens) are in
# $env_file, which overrides this file (SWITCHYARD__SECTION__KEY).

[switch]
instance_id = 1
# switchyard.service's TimeoutStopSec (45 s) covers a deadline up to 14 s.
shutdown_deadline_ms = 10000
reload_interval_ms = 5000
log_json = true

[merchant_listener]
# Plain TCP on loopback. In production add tls = { addr, cert_pem, key_pem } and drop tcp.
tcp = "$merchant_listen"

[database]
# The URL (with the role's password) comes from $env_file.
url = "postgres://switchyard@127.0.0.1:$pg_port/switchyard"
pool_size = 16

[redis]
url = "redis://127.0.0.1:$redis_port/"
key_prefix = "sy:"

[admin]
addr = "$admin_listen"
EOF
    if [ -n "$banks_file" ]; then
      printf '\n# The banks, from %s.\n' "$banks_file"
      cat "$banks_file"
    else
      cat <<EOF

# The bank simulator started by deploy.sh (switchyard-bank-sim): smoke tests only. Replace
# this table with the real banks' (scripts/deploy.sh --banks FILE) before real traffic.
[[bank]]
id = "sim"
dialect = "bank-bcd-v1"
addr = "$sim_listen"
links = 2
acquirer_id = "123456"
timeout_ms = 3000
EOF
    fi
  } >"$tmp"
  chown root:switchyard "$tmp"
  chmod 0640 "$tmp"
  mv "$tmp" "$config"
}

# --- services --------------------------------------------------------------------------

# Stops a process started by the fallback, by its PID file.
stop_pidfile() {
  local file="$1" pid
  pid="$(cat "$file" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid"
  # The switch's graceful stop takes at most 3 x its deadline + 3 s (see the unit).
  for _ in $(seq 1 450); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

start_bank_sim() {
  printf 'BANK_SIM_LISTEN=%s\nBANK_SIM_CONTROL=%s\n' "$sim_listen" "$sim_control" >"$etc/bank-sim.env"
  if [ "$has_systemd" = 1 ]; then
    systemctl enable switchyard-bank-sim >/dev/null
    systemctl restart switchyard-bank-sim
    return
  fi
  stop_pidfile "$run_dir/bank-sim.pid"
  RUST_LOG=warn setsid setpriv --reuid=nobody --regid=nogroup --clear-groups \
    /usr/lib/switchyard/bank-sim \
    --listen "$sim_listen" --control "$sim_control" \
    >"$log_dir/bank-sim.out" 2>>"$log_dir/bank-sim.log" </dev/null &
  echo $! >"$run_dir/bank-sim.pid"
}

start_switch() {
  if [ "$has_systemd" = 1 ]; then
    systemctl enable switchyard >/dev/null
    systemctl restart switchyard
    return
  fi
  stop_pidfile "$run_dir/switchyard.pid"
  rm -f "$run_dir/switchyard.pid"
  PIDFILE="$run_dir/switchyard.pid" as_service setsid /usr/bin/switchyard run \
    >>"$log_dir/switchyard.log" 2>&1 </dev/null &
  for _ in $(seq 1 50); do
    [ -s "$run_dir/switchyard.pid" ] && return 0
    sleep 0.1
  done
}

# Sends SIGHUP (reload merchants and routes) to the running switch.
reload_switch() {
  if [ "$has_systemd" = 1 ]; then
    systemctl reload switchyard
  else
    kill -HUP "$(cat "$run_dir/switchyard.pid")"
  fi
}

wait_healthy() {
  for _ in $(seq 1 $((ready_wait_s * 10))); do
    if [ "$(http_get "$admin_listen" /healthz 2>/dev/null)" = ok ]; then
      echo "GET http://$admin_listen/healthz: ok"
      return 0
    fi
    sleep 0.1
  done
  if [ "$has_systemd" = 1 ]; then
    journalctl -u switchyard -n 30 --no-pager >&2 || true
  else
    tail -n 30 "$log_dir/switchyard.log" >&2 || true
  fi
  die "the switch did not answer GET /healthz on $admin_listen within $ready_wait_s s"
}

# --- smoke test ------------------------------------------------------------------------

# The bank links sign on (GET /links lists them ready), a fresh merchant signs on and
# buys (answered 00), then the merchant is disabled again.
smoke_test() {
  local id key links
  log "smoke test: bank links signed on"
  for _ in $(seq 1 600); do
    links="$(http_get "$admin_listen" /links "$viewer_token" || true)"
    all_links_ready "$links" && break
    sleep 0.1
  done
  echo "GET /links: $links"
  all_links_ready "$links" || die "the bank links did not all sign on within 60 s"
  [ -n "$banks_file" ] && { echo "real banks configured: no smoke purchase"; return 0; }

  log "smoke test: a purchase through the switch to the bank simulator"
  # Cards 4 and 51-55 go to the simulator (the probe purchases of demo-traffic use both).
  sy route list | grep -q '"bank":"sim"' || {
    sy route add --low 4 --high 4 --bank sim
    sy route add --low 51 --high 55 --bank sim
  }
  id="SMOKE$(date -u +%m%d%H%M%S)"
  key="$(sy merchant add --id "$id" --name "deploy smoke test" --currencies 840 \
    --limit-minor 100000 | tail -n 1 | sed -n 's/.*"mac_key_hex":"\([0-9a-f]*\)".*/\1/p')"
  [ -n "$key" ] || die "merchant add printed no MAC key"
  reload_switch
  /usr/lib/switchyard/demo-traffic --smoke --addr "$merchant_listen" --merchant "$id" --key "$key"
  sy merchant disable "$id" >/dev/null
  echo "smoke merchant $id disabled again"
}

# --- main ------------------------------------------------------------------------------

main() {
  local start=$SECONDS
  find_deb
  echo "package: $deb"
  # The service users must be able to enter the working directory.
  cd /
  if [ "$has_systemd" = 0 ]; then
    echo "systemd is not PID 1 here: services are started directly (fallback; see the top of this script)"
  fi
  # Values of an earlier deployment (passwords, keys, tokens) are kept.
  if [ -r "$env_file" ]; then
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
  fi
  [ -n "$database_url" ] || setup_local_postgres
  [ -n "$redis_url" ] || setup_local_redis

  log "installing $(basename "$deb")"
  apt_install "$deb"
  install -d -o switchyard -g switchyard -m 0750 "$run_dir" "$log_dir"

  log "writing $config and $env_file"
  write_env_file
  write_config
  sy check-config

  log "switchyard migrate"
  sy migrate

  if [ -z "$banks_file" ]; then
    log "starting the bank simulator on $sim_listen (control http://$sim_control)"
    start_bank_sim
  fi
  log "starting the switch"
  start_switch
  wait_healthy
  if [ "$smoke" = 1 ]; then smoke_test; fi

  log "deployed in $((SECONDS - start)) s"
  cat <<EOF
  merchants connect to  $merchant_listen (plain TCP; add TLS for real merchants)
  admin and metrics     http://$admin_listen/healthz  http://$admin_listen/metrics
  configuration         $config (secrets in $env_file)
  logs                  $([ "$has_systemd" = 1 ] && echo "journalctl -u switchyard" || echo "$log_dir/switchyard.log")
  add a merchant        sudo sh -c 'set -a; . $env_file; exec switchyard merchant add --config $config --id ID --name NAME --currencies 840 --limit-minor 100000'
  operating it          /usr/share/doc/switchyard/operations.md
EOF
}

main
