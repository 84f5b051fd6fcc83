#!/usr/bin/env bash
# The demo: a whole Switchyard on this machine, then a merchant walking through the
# interesting cases, then what the bank recorded. Keeps running until Ctrl-C.
#
# Starts (and at exit stops) everything itself: a private PostgreSQL and Redis
# (scripts/services.sh), two bank simulators (bank-a: cards starting 4, bank-b: cards
# 51-55), the switch with its admin listener (metrics, health, links), and a private
# Prometheus (Debian's `prometheus`, installed when missing) scraping the switch with the
# alert rules of ops/prometheus/alerts.yml. Files (config, logs) go under target/demo/.
# Everything listens on 127.0.0.1 only, on free ports.
#
# SWITCHYARD_DEMO_CHECK=1 (scripts/test.sh uses it): instead of running until Ctrl-C, check
# what the demo shows operators (the switch's /healthz and /metrics, Prometheus scraping it
# with the alert rules loaded), then stop as Ctrl-C would; non-zero if anything is missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
dir="$root/target/demo"
bin="$root/target/debug"
# How long a process may take to print its ready line (in tenths of a second).
ready_wait_tenths=600
# The switch's bank timeout: the 91 case waits this long.
bank_timeout_ms=2000

# shellcheck source=scripts/services.sh
. scripts/services.sh

# shellcheck source=scripts/processes.sh
. scripts/processes.sh

say() { printf '\n==> %s\n' "$*"; }

prom_data="$dir/prometheus-data"
removes="the demo's PostgreSQL cluster (its database, merchants, transactions) and Redis
  under target/test-services/, and Prometheus's data ($prom_data); it keeps the
  configuration and logs in $dir/"
demo_stop() {
  stop_all
  rm -rf "$prom_data"
  printf '\n==> stopped; removed %s\n' "$removes"
}
trap demo_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private Prometheus on a free port, scraping the switch's admin listener as job
# "switchyard" (the name the alert rules expect) with ops/prometheus/alerts.yml loaded.
start_prometheus() {
  local port
  if ! command -v prometheus >/dev/null; then
    echo "installing Debian's prometheus (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
      </dev/null >/dev/null
  fi
  port="$(_sy_free_port)"
  prom_addr="127.0.0.1:$port"
  cat >"$dir/prometheus.yml" <<EOF
# Written by scripts/demo.sh.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $root/ops/prometheus/alerts.yml
scrape_configs:
  - job_name: switchyard
    static_configs:
      - targets: ["$admin_addr"]
EOF
  rm -rf "$prom_data"
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$prom_data" \
    --web.listen-address="$prom_addr" >"$dir/prometheus.log" 2>&1 &
  started+=($!)
  for _ in $(seq 1 "$ready_wait_tenths"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "Prometheus on http://$prom_addr (log: $dir/prometheus.log)"
      return 0
    fi
    sleep 0.1
  done
  echo "Prometheus did not start; its log:" >&2
  tail -n 20 "$dir/prometheus.log" >&2
  return 1
}

say "Ctrl-C (at any time) stops everything the demo started and removes $removes"

say "starting private PostgreSQL and Redis"
services_start

# The test command has built everything already (SWITCHYARD_PREBUILT=1): building again with
# another feature set would only rebuild the same binaries.
if [ "${SWITCHYARD_PREBUILT:-0}" != 1 ]; then
  say "building (cargo build --workspace)"
  cargo build --workspace
fi

mkdir -p "$dir"
rm -f "$dir"/*.out "$dir"/*.log "$dir"/switchyard.toml

declare -A listen control
for bank in bank-a bank-b; do
  start_bank_sim "$bank" "$dir"
  echo "$bank: bank links on ${listen[$bank]}, record at http://${control[$bank]}/record"
done

db_url="postgres://postgres@127.0.0.1:${SWITCHYARD_TEST_PG_PORT}/switchyard"
"$SWITCHYARD_TEST_PG_BIN/psql" -q "$SWITCHYARD_TEST_PG_URL" -c 'CREATE DATABASE switchyard' >/dev/null

config="$dir/switchyard.toml"
# The demo's admin tokens (a real deployment generates its own: scripts/deploy.sh).
viewer_token="demo-viewer-token-000000000000"
operator_token="demo-operator-token-00000000000"
cat >"$config" <<EOF
# Written by scripts/demo.sh; see config/switchyard.example.toml for every setting.
[switch]
instance_id = 1
shutdown_deadline_ms = 5000
reload_interval_ms = 1000

[merchant_listener]
tcp = "127.0.0.1:0"

[database]
url = "$db_url"
pool_size = 8
journal_writers = 2

[redis]
url = "$SWITCHYARD_TEST_REDIS_URL"
key_prefix = "demo:"

[security]
master_key_hex = "$(printf '11%.0s' $(seq 1 32))"
pan_hash_key_hex = "$(printf '22%.0s' $(seq 1 32))"

[admin]
addr = "127.0.0.1:0"
tokens = [
  { token = "$viewer_token", role = "viewer" },
  { token = "$operator_token", role = "operator" },
]

[[bank]]
id = "bank-a"
dialect = "bank-bcd-v1"
addr = "${listen[bank-a]}"
acquirer_id = "123456"
timeout_ms = $bank_timeout_ms

[[bank]]
id = "bank-b"
dialect = "bank-bcd-v1"
addr = "${listen[bank-b]}"
acquirer_id = "123456"
timeout_ms = $bank_timeout_ms
EOF
echo "configuration: $config"

sy() { RUST_LOG=warn "$bin/switchyard" "$@" --config "$config"; }

say "switchyard migrate"
sy migrate

say "switchyard merchant add"
merchant_id="DEMOMERCHANT001"
terminal="DEMO0001"
added="$(sy merchant add --id "$merchant_id" --name "Demo Shop" --currencies 840,978 \
  --limit-minor 1000000 --rate 100 --burst 200 2>/dev/null | tail -n 1)"
key="$(json_str mac_key_hex "$added")"
if [ -z "$key" ]; then
  echo "merchant add printed no key: $added" >&2
  exit 1
fi
echo "merchant id (DE42): $merchant_id"
echo "terminal   (DE41): $terminal"
echo "MAC key (hex)    : $key"

say "switchyard route add (4 -> bank-a, 51-55 -> bank-b)"
sy route add --low 4 --high 4 --bank bank-a
sy route add --low 51 --high 55 --bank bank-b

say "switchyard run"
RUST_LOG=info "$bin/switchyard" run --config "$config" >"$dir/switch.out" 2>"$dir/switch.log" &
switch_pid=$!
started+=("$switch_pid")
line="$(wait_ready "$dir/switch.out" "$switch_pid" switchyard)"
merchant_addr="$(json_str merchant_tcp "$line")"
admin_addr="$(json_str admin "$line")"
echo "switch (pid $switch_pid) listening for merchants on $merchant_addr; log: $dir/switch.log"
echo "admin listener on http://$admin_addr (metrics, /healthz, /links)"

say "starting a private Prometheus (scraping the switch every 5 s, alert rules of ops/)"
start_prometheus

say "demo traffic"
"$bin/demo-traffic" --addr "$merchant_addr" --merchant "$merchant_id" --key "$key" \
  --bank-control "${control[bank-a]}" --bank-control "${control[bank-b]}"

# GET http://ADDR/PATH with bash's /dev/tcp (curl may not be installed): the body.
http_body() {
  local addr="$1" path="$2" reply
  exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$addr" >&3
  reply="$(cat <&3)"
  exec 3<&-
  sed '1,/^\r\{0,1\}$/d' <<<"$reply"
}

# What the operators' side of the demo promises, checked: health, the approval counted in
# the metrics, Prometheus scraping the switch (target up) with the rules of ops/ loaded.
check_operators_side() {
  local rules metrics
  [ "$(http_body "$admin_addr" /healthz)" = ok ] || { echo "demo check: /healthz is not ok" >&2; return 1; }
  # Read whole before grep: `http_body | grep -q` under pipefail fails whenever grep quits at
  # its match while sed is still writing the rest (SIGPIPE).
  metrics="$(http_body "$admin_addr" /metrics)"
  grep -q '^switchyard_requests_total{mti="0200",rc="00"}' <<<"$metrics" ||
    { echo "demo check: no approval in /metrics" >&2; return 1; }
  rules="$(grep -cE '^[[:space:]]*- alert:' ops/prometheus/alerts.yml)"
  for _ in $(seq 1 300); do
    if http_body "$prom_addr" /api/v1/targets | grep -q '"health":"up"' &&
      [ "$(http_body "$prom_addr" /api/v1/rules | grep -o '"type":"alerting"' | wc -l)" = "$rules" ]; then
      echo "demo check: /healthz ok, approvals in /metrics, Prometheus scrapes the switch with $rules alert rules"
      return 0
    fi
    sleep 0.1
  done
  echo "demo check: Prometheus does not scrape the switch with the $rules rules of ops/ within 30 s" >&2
  return 1
}

say "running"
cat <<EOF
Operators' side:
  health:      curl http://$admin_addr/healthz
  metrics:     curl http://$admin_addr/metrics      (switchyard_requests_total by rc, latencies, links)
  bank links:  curl -H 'Authorization: Bearer $viewer_token' http://$admin_addr/links
  sign a link off and on (operator token; SwitchyardBankLinkNotReady goes pending in Prometheus):
               curl -X POST -H 'Authorization: Bearer $operator_token' http://$admin_addr/links/bank-a.0/sign-off
               curl -X POST -H 'Authorization: Bearer $operator_token' http://$admin_addr/links/bank-a.0/sign-on
  Prometheus:  http://$prom_addr/classic/alerts (the alert rules and their state), http://$prom_addr/classic/targets
               (the scrape), http://$prom_addr/classic/graph (queries; Debian's build has only the classic UI)
               curl -s 'http://$prom_addr/api/v1/query?query=sum+by+(rc)(switchyard_requests_total)'
  what each metric and alert means, and the runbook: docs/operations.md

Back office (accounts, refunds with maker-checker, merchants, routes, links):
  the first superadmin (the password from stdin: 12 to 128 characters with upper and lower
  case, a digit and a symbol):
               $bin/switchyard account add --config $config --username alice --role superadmin
  the console: http://$admin_addr/console (log in, then enrol TOTP with the QR code shown)
  the API:     http://$admin_addr/v1/... (POST /v1/login; every route in http://$admin_addr/openapi.json)
  how to get in, roles and the rest: docs/operations.md

Merchants' side:
EOF
cat <<EOF
The switch listens for merchants on $merchant_addr (port ${merchant_addr##*:}).
  merchant $merchant_id, terminal $terminal (any DE41 works), MAC key $key
  try it:   $bin/demo-traffic --addr $merchant_addr --merchant $merchant_id --key $key --no-wait
  or load:  $bin/loadgen --addr $merchant_addr --merchant $merchant_id --key $key --rate 50 --duration 10 --no-ceiling \\
              --bank-control ${control[bank-a]} --bank-control ${control[bank-b]}
  bank records: curl http://${control[bank-a]}/record  http://${control[bank-b]}/record
Press Ctrl-C to stop everything; it removes $removes.
EOF
if [ "${SWITCHYARD_DEMO_CHECK:-0}" = 1 ]; then
  check_operators_side
  exit
fi
wait "$switch_pid"
