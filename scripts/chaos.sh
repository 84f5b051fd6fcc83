#!/usr/bin/env bash
# shellcheck disable=SC2317 # the fault steps are called by name from the schedule
# The fault run (issue 11): a careful merchant (chaos-merchant) sends purchases, and
# reverses some of them, at a steady rate while the switch is killed (-9) and restarted
# several times, Redis is restarted, flushed and stopped for 10 s, PostgreSQL is stopped
# with `pg_ctl -m immediate` for a short and a long time (longer than the switch's outcome
# retry budget), and bank links are cut and flap. Then the switch is restarted once more
# (recovery runs), the run waits (bounded) for every transaction and reversal to settle,
# and reconciles three ways: the merchant's answers, the bank simulators' records, the
# journal and ledger. It prints the lost, doubled, phantom and unresolved counts (and the
# journal, ledger and answer consistency counts) and `switchyard ledger check`, writes
# summary.json, and exits non-zero when any count is not zero or the ledger check fails.
#
# Everything runs privately under target/chaos/<time>/ (target/chaos/latest): PostgreSQL
# and Redis of its own (scripts/services.sh), two bank simulators, the switch on a free
# port, debug builds (the test command's). See docs/operations.md, "Fault run".
#
# Environment (defaults in brackets):
#   DURATION [60]  seconds of orders; the faults are spread over it (at least 60)
#   RATE [150]     orders started per second
#   CONNECTIONS [4]  merchant connections
#   BANK_TIMEOUT_MS [2000]  the switch's bank timeout
#   GIVE_UP_MS [90000]  the merchant gives up on a request without a final answer this
#                       long after its first send
#   SETTLE_S [90]  how long to wait for transactions and reversals to settle at the end
#   SWITCH_LOG [warn]  RUST_LOG of the switch
#   OUTCOME_WAIT_MS [60000]  the switch's switch.outcome_wait_ms; below the long outage
#                     (15 s), e.g. 10000, requests at the bank when it begins are left
#                     unanswered and reversed by the in-doubt sweep instead
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
bin="$root/target/debug"

DURATION="${DURATION:-60}"
RATE="${RATE:-150}"
CONNECTIONS="${CONNECTIONS:-4}"
BANK_TIMEOUT_MS="${BANK_TIMEOUT_MS:-2000}"
GIVE_UP_MS="${GIVE_UP_MS:-90000}"
SETTLE_S="${SETTLE_S:-90}"
SWITCH_LOG="${SWITCH_LOG:-warn}"
OUTCOME_WAIT_MS="${OUTCOME_WAIT_MS:-60000}"
for v in DURATION RATE CONNECTIONS BANK_TIMEOUT_MS GIVE_UP_MS SETTLE_S OUTCOME_WAIT_MS; do
  case "${!v}" in '' | *[!0-9]*) echo "chaos.sh: $v must be a whole number, not '${!v}'" >&2; exit 2 ;; esac
done
if [ "$DURATION" -lt 60 ]; then
  echo "chaos.sh: DURATION must be at least 60 (the faults take about a minute)" >&2
  exit 2
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/chaos/$stamp"
mkdir -p "$out"
ln -sfn "$stamp" "$root/target/chaos/latest"
faults_log="$out/faults.log"
: >"$faults_log"
ready_wait_tenths=600

# shellcheck source=scripts/services.sh
. scripts/services.sh
# shellcheck source=scripts/processes.sh
. scripts/processes.sh
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
say() { printf '\n==> %s (%d s)\n' "$*" "$((SECONDS - t0))"; }
load_t0=""
# fault WHAT: one line in faults.log (and on stdout), timed from the start of the load.
fault() {
  local at
  at="$(awk -v a="$load_t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  printf 't=%s s: %s\n' "$at" "$*" | tee -a "$faults_log"
}
findings=0
finding() {
  fault "FINDING: $*"
  findings=$((findings + 1))
}

# The test command has built everything already (SWITCHYARD_PREBUILT=1).
if [ "${SWITCHYARD_PREBUILT:-0}" != 1 ]; then
  say "debug build (switchyard, bank-sim, chaos-merchant)"
  cargo build -p switch -p loadtest --bins
fi

say "private PostgreSQL and Redis"
services_start
# services.sh turns commit durability off for speed; an immediate stop would then lose
# commits the switch was told about, which is not the fault under test.
cat >>"$SWITCHYARD_TEST_PG_DATA/postgresql.conf" <<EOF

# scripts/chaos.sh: a commit acknowledged is in the WAL (the processes are killed, not the OS)
synchronous_commit = on
EOF
pg_ctl() { _sy_as_pg "$SWITCHYARD_TEST_PG_BIN/pg_ctl" -D "$SWITCHYARD_TEST_PG_DATA" "$@"; }
pg_ctl -l "$SWITCHYARD_TEST_PG_DATA/server.log" -w -t 60 restart >/dev/null
psql() { "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$SWITCHYARD_TEST_PG_URL" "$@"; }
redis_port="$SWITCHYARD_TEST_REDIS_PORT"
redis_pidfile="$_sy_redis_dir/redis.pid"

declare -A listen control
for bank in bank-a bank-b; do
  start_bank_sim "$bank" "$out"
done

merchant_port="$(_sy_free_port)"
config="$out/switchyard.toml"
cat >"$config" <<EOF
# Written by scripts/chaos.sh.
[switch]
instance_id = 1
# The single-threaded runtime the benchmark uses; the tests run the default (one per core).
runtime_threads = 1
shutdown_deadline_ms = 10000
reload_interval_ms = 5000
outcome_wait_ms = $OUTCOME_WAIT_MS

[merchant_listener]
# A fixed port: the merchant reconnects to the same address after every restart.
tcp = "127.0.0.1:$merchant_port"
idle_timeout_ms = 600000

[database]
url = "$SWITCHYARD_TEST_PG_URL"

[redis]
url = "$SWITCHYARD_TEST_REDIS_URL"

[security]
master_key_hex = "$(printf '11%.0s' $(seq 1 32))"
pan_hash_key_hex = "$(printf '22%.0s' $(seq 1 32))"

[admin]
addr = "127.0.0.1:0"
EOF
for bank in bank-a bank-b; do
  cat >>"$config" <<EOF

[[bank]]
id = "$bank"
dialect = "bank-bcd-v1"
addr = "${listen[$bank]}"
acquirer_id = "123456"
timeout_ms = $BANK_TIMEOUT_MS
reconnect_min_ms = 100
reconnect_max_ms = 1000
EOF
done

sy() { RUST_LOG=warn "$bin/switchyard" "$@" --config "$config"; }
say "migrate, merchant, routes"
sy migrate >/dev/null
merchant_id="CHAOSMERCHANT01"
added="$(sy merchant add --id "$merchant_id" --name "Chaos Merchant" --currencies 840 \
  --limit-minor 100000000 --rate 100000 --burst 100000 2>/dev/null | tail -n 1)"
key="$(json_str mac_key_hex "$added")"
[ -n "$key" ] || { echo "merchant add printed no key: $added" >&2; exit 1; }
sy route add --low 4 --high 4 --bank bank-a >/dev/null
sy route add --low 51 --high 55 --bank bank-b >/dev/null

switch_pid=""
switch_runs=0
ready_s=""
# switch_start: starts the switch (switch_pid) and waits for its ready line; ready_s says
# how long that took. Not in a subshell: switch_pid and started must stick.
switch_start() {
  switch_runs=$((switch_runs + 1))
  local base="$out/switch-$switch_runs" t
  t="$EPOCHREALTIME"
  RUST_LOG="$SWITCH_LOG" "$bin/switchyard" run --config "$config" >"$base.out" 2>"$base.log" &
  switch_pid=$!
  started+=("$switch_pid")
  wait_ready "$base.out" "$switch_pid" switchyard >/dev/null
  ready_s="$(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
}
# forget PID: drop a process that is gone from the list stop_all stops.
forget() {
  local keep=() p
  for p in "${started[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  started=("${keep[@]}")
}
# wait_gone PID TENTHS: true once PID has exited (a zombie counts as gone).
wait_gone() {
  for _ in $(seq 1 "$2"); do
    _sy_alive "$1" || return 0
    sleep 0.1
  done
  return 1
}
# switch_check: a switch that exited on its own is a finding; it is started again.
switch_check() {
  if ! _sy_alive "$switch_pid"; then
    local rc=0
    wait "$switch_pid" 2>/dev/null || rc=$?
    finding "the switch (pid $switch_pid) exited on its own with status $rc; see $out/switch-$switch_runs.log"
    forget "$switch_pid"
    switch_start
    fault "switch started again, ready in $ready_s s"
  fi
}

f_kill() {
  switch_check
  local old="$switch_pid"
  kill -9 "$old"
  wait_gone "$old" 100 || { echo "the switch survived kill -9" >&2; exit 1; }
  wait "$old" 2>/dev/null || true
  forget "$old"
  switch_start
  fault "kill -9 switch (pid $old); restarted, ready in $ready_s s"
}

redis_up() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --pidfile "$redis_pidfile" --dir "$_sy_redis_dir" \
    --logfile "$_sy_redis_dir/redis.log" >/dev/null
  for _ in $(seq 1 100); do
    [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "Redis did not come back on port $redis_port" >&2
  exit 1
}
redis_down() {
  local pid
  pid="$(cat "$redis_pidfile" 2>/dev/null)" || pid=""
  redis-cli -h 127.0.0.1 -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  wait_gone "$pid" 100 || kill -9 "$pid" 2>/dev/null || true
}
f_redis_restart() {
  redis_down
  redis_up
  fault "Redis restarted (empty)"
}
f_redis_flush() {
  redis-cli -h 127.0.0.1 -p "$redis_port" flushall >/dev/null
  fault "Redis FLUSHALL"
}
f_redis_outage() {
  redis_down
  fault "Redis stopped"
  sleep "$1"
  redis_up
  fault "Redis started again after $1 s"
}

f_pg_outage() {
  pg_ctl -m immediate -w stop >/dev/null
  fault "PostgreSQL stopped (pg_ctl -m immediate)"
  sleep "$1"
  pg_ctl -l "$SWITCHYARD_TEST_PG_DATA/server.log" -w -t 60 start >/dev/null
  fault "PostgreSQL started again after $1 s"
}

# http_post HOST:PORT PATH: a POST without a body; true on a 2xx status (bash's /dev/tcp:
# no curl needed).
http_post() {
  local status=""
  {
    printf 'POST %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n' "$2" "$1" >&3
    read -r _ status _ <&3 || true
  } 3<>"/dev/tcp/${1%:*}/${1##*:}" || return 1
  [ "${status:0:1}" = 2 ]
}
bank_cut() {
  http_post "${control[$1]}" "/links/cut?down_ms=$2" ||
    { echo "chaos.sh: cutting $1's links failed" >&2; exit 1; }
}
f_bank_cut() {
  bank_cut "$1" "$2"
  fault "$1 links cut, refused for $2 ms"
  sleep "$(awk -v ms="$2" 'BEGIN { printf "%.1f", ms / 1000 }')"
}
f_bank_flap() {
  for _ in $(seq 1 "$2"); do
    bank_cut "$1" 300
    sleep 1
  done
  fault "$1 links flapped $2 times (cut, down 0.3 s, up 0.7 s)"
}

say "starting the switch"
switch_start
echo "switch ready in $ready_s s, merchants on 127.0.0.1:$merchant_port"

say "load: $RATE orders/s for $DURATION s, with faults"
"$bin/chaos-merchant" run --addr "127.0.0.1:$merchant_port" --merchant "$merchant_id" --key "$key" \
  --rate "$RATE" --duration-s "$DURATION" --connections "$CONNECTIONS" \
  --give-up-ms "$GIVE_UP_MS" --wait-links --out "$out/orders.json" \
  >"$out/merchant.out" 2>"$out/merchant.log" &
merchant_pid=$!
started+=("$merchant_pid")
wait_ready "$out/merchant.out" "$merchant_pid" chaos-merchant >/dev/null
load_t0="$EPOCHREALTIME"

# The faults in order, each after a pause; the pauses share what the faults leave of
# DURATION (the faults themselves take about 50 s, the restarts included). No restart
# follows the long PostgreSQL outage until the load has ended: what it leaves behind must
# be resolved by the running switch, not by the recovery of a restart.
schedule=(
  "f_kill"
  "f_redis_restart"
  "f_bank_cut bank-a 3000"
  "f_pg_outage 5"
  "f_kill"
  "f_redis_outage 10"
  "f_bank_flap bank-b 5"
  "f_kill"
  "f_pg_outage 15"
  "f_redis_flush"
)
gap="$(awk -v d="$DURATION" -v n="${#schedule[@]}" 'BEGIN { g = (d - 50) / (n + 1); if (g < 1) g = 1; printf "%.1f", g }')"
for step in "${schedule[@]}"; do
  sleep "$gap"
  switch_check
  $step
done

say "load ends; waiting for the merchant's last final answers"
merchant_wait_tenths=$(((DURATION + GIVE_UP_MS / 1000 + 60) * 10))
if ! wait_gone "$merchant_pid" "$merchant_wait_tenths"; then
  echo "chaos-merchant did not finish within $((merchant_wait_tenths / 10)) s" >&2
  exit 1
fi
merchant_status=0
wait "$merchant_pid" || merchant_status=$?
forget "$merchant_pid"
tail -n 3 "$out/merchant.log"
[ "$merchant_status" = 0 ] || { echo "chaos-merchant failed ($merchant_status); see $out/merchant.log" >&2; exit 1; }

switch_check
# What the switch's database connections are doing now (a stuck pool shows here).
psql -c "SELECT pid, state, wait_event_type, wait_event, now() - xact_start AS in_transaction,
    now() - query_start AS in_query, left(regexp_replace(query, '\s+', ' ', 'g'), 160)
  FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
  ORDER BY xact_start NULLS LAST" >"$out/pg-activity.txt" 2>&1 || true
fault "database sessions after the load: $(cut -d'|' -f2 "$out/pg-activity.txt" | sort | uniq -c | tr -s ' \n' ' ')(pg-activity.txt)"
# Every request must have an outcome by now without a restart's recovery (issue 11: an outage
# longer than the outcome-retry budget never leaves a transaction authorising).
left="$(psql -c "SELECT count(*) FROM transactions WHERE state = 'authorising'")"
if [ "$left" != 0 ]; then
  finding "$left transaction(s) still authorising after the load, before the last restart:"
  psql -c "SELECT id, rrn, kind, stan, order_ref, response_code, updated_at FROM transactions
    WHERE state = 'authorising' ORDER BY id LIMIT 10" | sed 's/^/    /' | tee -a "$faults_log"
else
  fault "after the load, before the last restart: no transaction authorising"
fi
say "restarting the switch (graceful stop, start: recovery runs)"
kill "$switch_pid"
wait_gone "$switch_pid" 300 || { finding "the switch did not stop within 30 s of SIGTERM"; kill -9 "$switch_pid"; }
wait "$switch_pid" 2>/dev/null || true
forget "$switch_pid"
switch_start
fault "switch restarted gracefully, ready in $ready_s s"

say "waiting for transactions and reversals to settle (at most $SETTLE_S s)"
unsettled_sql="SELECT (SELECT count(*) FROM transactions WHERE state IN ('authorising', 'reversing'))
  + (SELECT count(*) FROM reversals WHERE state = 'pending')"
settle_t="$EPOCHREALTIME"
for _ in $(seq 1 $((SETTLE_S * 4))); do
  [ "$(psql -c "$unsettled_sql")" = 0 ] && break
  sleep 0.25
done
fault "settled to $(psql -c "$unsettled_sql") open after $(awk -v a="$settle_t" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s"

say "reconciling"
ledger_status=0
sy ledger check >"$out/ledger-check.txt" 2>&1 || ledger_status=$?
status=0
"$bin/chaos-merchant" reconcile --orders "$out/orders.json" \
  --bank-control "${control[bank-a]}" --bank-control "${control[bank-b]}" \
  --pg-url "$SWITCHYARD_TEST_PG_URL" --settle-s 0 \
  --ledger-status "$ledger_status" --ledger-output "$out/ledger-check.txt" \
  --faults "$faults_log" --summary "$out/summary.json" | tee "$out/summary.txt" || status=$?
switch_check
# The journal as it ended, for diagnosing what the summary names (card data left out).
psql -c "\copy (SELECT t.id, t.instance_id, t.terminal_id, t.stan, t.transmitted_at, t.mti, t.kind,
  t.amount_minor, t.order_ref, t.rrn, t.bank_id, t.original_id, t.state, t.response_code, t.auth_code,
  t.reason, t.created_at, t.updated_at, r.state AS reversal_state, r.reason AS reversal_reason,
  r.attempts AS reversal_attempts, r.last_response_code AS reversal_rc
  FROM transactions t LEFT JOIN reversals r ON r.transaction_id = t.id ORDER BY t.id)
  TO '$out/journal.csv' CSV HEADER" || echo "could not write $out/journal.csv" >&2
if command -v curl >/dev/null; then
  for bank in bank-a bank-b; do
    curl -fsS "http://${control[$bank]}/record" >"$out/$bank.record.json" ||
      echo "could not write $out/$bank.record.json" >&2
  done
fi
echo "switch logs: $(cat "$out"/switch-*.log | grep -c ERROR || true) ERROR lines ($out/switch-*.log)"
if [ "$findings" -gt 0 ]; then
  echo "chaos.sh: $findings finding(s) beside the reconciliation (see $faults_log)" >&2
  [ "$status" != 0 ] || status=1
fi
say "done: $out (summary.json); exit $status"
exit "$status"
