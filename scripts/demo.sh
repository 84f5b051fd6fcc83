#!/usr/bin/env bash
# The demo: a whole Switchyard on this machine, then a merchant walking through the
# interesting cases, then what the bank recorded. Keeps running until Ctrl-C.
#
# Starts (and at exit stops) everything itself: a private PostgreSQL and Redis
# (scripts/services.sh), two bank simulators (bank-a: cards starting 4, bank-b: cards
# 51-55), the switch. Files (config, logs) go under target/demo/.
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
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n==> %s\n' "$*"; }



say "starting private PostgreSQL and Redis"
services_start

say "building (cargo build --workspace)"
cargo build --workspace

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
echo "switch (pid $switch_pid) listening for merchants on $merchant_addr; log: $dir/switch.log"

say "demo traffic"
"$bin/demo-traffic" --addr "$merchant_addr" --merchant "$merchant_id" --key "$key" \
  --bank-control "${control[bank-a]}" --bank-control "${control[bank-b]}"

say "running"
cat <<EOF
The switch listens for merchants on $merchant_addr (port ${merchant_addr##*:}).
  merchant $merchant_id, terminal $terminal (any DE41 works), MAC key $key
  try it:   $bin/demo-traffic --addr $merchant_addr --merchant $merchant_id --key $key --no-wait
  or load:  $bin/loadgen --addr $merchant_addr --merchant $merchant_id --key $key --rate 50 --duration 10 --no-ceiling \\
              --bank-control ${control[bank-a]} --bank-control ${control[bank-b]}
  bank records: curl http://${control[bank-a]}/record  http://${control[bank-b]}/record
Press Ctrl-C to stop everything.
EOF
wait "$switch_pid"
