#!/usr/bin/env bash
# The standard benchmark, end to end: private PostgreSQL (durable: fsync and synchronous
# commit on) and Redis, a release build, two bank simulators, the switch, a merchant and
# routes; then loadgen runs the ceiling (the same load through a bare frame relay to a
# bank simulator) and the switch, reconciles both against the bank simulators' records,
# and writes reports under target/bench/<time>/ (and target/bench/latest): latency, CPU
# per answered request of every program (by PID tree, over the measured window), the
# switch's journal batches and Redis calls, and PostgreSQL's top statements
# (pg_stat_statements, enabled in the private cluster), PostgreSQL's WAL flushes, Redis's
# own stalls (redis-latency.txt, its latency monitor), and the disk's write + fdatasync
# latency tail (disk.json, from fsync-probe).
#
# Environment (defaults in brackets):
#   RATE [2000]  DURATION [20]  WARMUP [5]  CONNECTIONS [16]
#   MIX [purchase=90,decline=5,timeout=1,retransmit=4]
#   SEARCH [0]: 1 raises the rate until p99 passes P99_TARGET_MS [50] (SEARCH_MAX [20000])
#   BANK_TIMEOUT_MS [2000]  SWITCH_LOG [warn] (RUST_LOG of the switch)
#   SWITCH_WRAPPER [] a command the switch runs under (e.g. valgrind --tool=callgrind)
#   DURABLE [1]: 0 leaves PostgreSQL as services.sh starts it (fsync off)
#   PG_SHARED_BUFFERS [2GB]: the private cluster's shared_buffers
#   PG_WAL_INIT_ZERO [on]: the private cluster's wal_init_zero
#   PG_WAL_SYNC_METHOD [PostgreSQL's default, fdatasync]: the private cluster's
#     wal_sync_method (open_datasync: one write with O_DSYNC per flush instead of a write
#     and an fdatasync; as durable)
#   SOCKETS [1]: the switch reaches PostgreSQL and Redis by unix socket (0: loopback TCP)
#   RUNTIME_THREADS [1]: [switch] runtime_threads (1: a single-threaded runtime, the least
#     CPU per purchase when the switch shares 2 cores with PostgreSQL and Redis; 0: one
#     thread per core, the switch's default)
#     The relay of the ceiling run gets the same setting, so that it is the same kind of
#     program (before 2026-12-03 "evening" in docs/loadtest.md it always ran one thread
#     per core).
#   HARNESS_RUNTIME_THREADS [1]: loadgen's and the bank simulators' runtime threads (1: a
#     single thread, which leaves the two cores to the programs measured; 0: one per core,
#     as before 2026-12-03 "evening")
#   JOURNAL_WRITERS, JOURNAL_BATCH_MAX, JOURNAL_COMMIT_INTERVAL_US [the switch's defaults]:
#     [database] settings to try
#   SCHEDULE [tick]: when loadgen sends each request: tick (on tokio's 1 ms timer, in
#     bursts at each tick, as every earlier figure was measured) or precise (at its due
#     time, a timerfd per connection; see docs/loadtest.md)
#   PRELOAD [0]: historical transactions written before the switch starts
#     (scripts/bench-preload.sql; the standard run uses PRELOAD=1000000)
#   SWITCHYARD_TEST_PG_LOCALE [C]: the private cluster's locale (scripts/services.sh)
#   SWITCHYARD_BIN [target/release/switchyard], PRELOAD_SQL [scripts/bench-preload.sql]:
#     another build of the switch and the preload that fits its schema, for runs of two
#     versions one after the other on the same host (e.g. a copy of an older commit's
#     binary and `git show OLD:scripts/bench-preload.sql`)
# Refuses to start while another benchmark's loadgen is running.
# See docs/loadtest.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$(pwd)"
bin="$root/target/release"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/$stamp"
work="$out/work"
ready_wait_tenths=600

RATE="${RATE:-2000}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-5}"
CONNECTIONS="${CONNECTIONS:-16}"
MIX="${MIX:-purchase=90,decline=5,timeout=1,retransmit=4}"
SEARCH="${SEARCH:-0}"
P99_TARGET_MS="${P99_TARGET_MS:-50}"
SEARCH_MAX="${SEARCH_MAX:-20000}"
BANK_TIMEOUT_MS="${BANK_TIMEOUT_MS:-2000}"
SWITCH_LOG="${SWITCH_LOG:-warn}"
DURABLE="${DURABLE:-1}"
PRELOAD="${PRELOAD:-0}"
SCHEDULE="${SCHEDULE:-tick}"
RUNTIME_THREADS="${RUNTIME_THREADS:-1}"
HARNESS_RUNTIME_THREADS="${HARNESS_RUNTIME_THREADS:-1}"
SWITCHYARD_BIN="${SWITCHYARD_BIN:-$bin/switchyard}"
PRELOAD_SQL="${PRELOAD_SQL:-scripts/bench-preload.sql}"
case "$SCHEDULE" in tick | precise) ;; *) echo "SCHEDULE must be tick or precise, not '$SCHEDULE'" >&2; exit 1 ;; esac
case "$PRELOAD" in '' | *[!0-9]*) echo "PRELOAD must be a number of transactions, not '$PRELOAD'" >&2; exit 1 ;; esac

# Two benchmarks at once measure each other: refuse while another loadgen runs.
# (/proc directly: procps may not be installed.)
for cmdline in /proc/[0-9]*/cmdline; do
  if tr '\0' ' ' <"$cmdline" 2>/dev/null | grep -q '^[^ ]*target/release/loadgen '; then
    other="${cmdline#/proc/}"
    echo "another benchmark is running (loadgen pid ${other%/cmdline}); wait for it to finish" >&2
    exit 1
  fi
done

# shellcheck source=scripts/services.sh
. scripts/services.sh

# shellcheck source=scripts/processes.sh
. scripts/processes.sh
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
say() { printf '\n==> %s (%d s)\n' "$*" "$((SECONDS - t0))"; }



mkdir -p "$work"

say "starting private PostgreSQL and Redis"
services_start
pg_conf="$SWITCHYARD_TEST_PG_DATA/postgresql.conf"
if [ "$DURABLE" = 1 ]; then
  # services.sh turns durability off for tests; the benchmark measures it on.
  cat >>"$pg_conf" <<EOF

# scripts/bench.sh: durable commits
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
fi
# Statement statistics for the report; a preloaded library needs a restart, not a reload.
cat >>"$pg_conf" <<EOF

# scripts/bench.sh: statement statistics
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_planning = on
# How long WAL writes and flushes take (pg_stat_wal), to split a commit's time between
# the statement and its flush.
track_wal_io_timing = on

# scripts/bench.sh: memory as a database server is given it. PostgreSQL's default
# shared_buffers (128MB) is sized to start anywhere; its manual suggests a quarter of RAM
# on a dedicated server. The preloaded journal (about 1 GB with its indexes at
# PRELOAD=1000000) then stays in shared buffers instead of being copied in from the OS
# page cache on every miss.
shared_buffers = ${PG_SHARED_BUFFERS:-2GB}
# Checkpoints spaced as on a write-heavy server (the defaults, 1GB of WAL or 5 minutes,
# are sized for small ones): fewer full-page images in the WAL after each checkpoint.
max_wal_size = 8GB
checkpoint_timeout = 15min
# What the database did in the background, in work/postgres.log: a stall in the latency
# series can be matched with an autovacuum or a checkpoint.
log_autovacuum_min_duration = 0
log_checkpoints = on
# Statements of 50 ms or more, and lock waits of 20 ms or more, with their times: to
# match the switch's "slow journal commit" lines (same threshold) with their cause.
log_min_duration_statement = 50
log_lock_waits = on
deadlock_timeout = 20ms
# Whether a new 16 MB WAL segment is written full of zeros when it is created, inside the
# commit that needs it (see docs/loadtest.md, 2026-12-03).
wal_init_zero = ${PG_WAL_INIT_ZERO:-on}
$( [ -n "${PG_WAL_SYNC_METHOD:-}" ] && echo "wal_sync_method = $PG_WAL_SYNC_METHOD" || true)
EOF
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}
as_pg "$SWITCHYARD_TEST_PG_BIN/pg_ctl" -D "$SWITCHYARD_TEST_PG_DATA" \
  -l "$SWITCHYARD_TEST_PG_DATA/server.log" -w -t 60 restart >/dev/null
psql() { "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$SWITCHYARD_TEST_PG_URL" "$@"; }
echo "PostgreSQL fsync=$(psql -c 'SHOW fsync') synchronous_commit=$(psql -c 'SHOW synchronous_commit')" \
  "shared_preload_libraries=$(psql -c 'SHOW shared_preload_libraries')"
# The first line of postmaster.pid is the postmaster's pid (after the restart).
pg_pid="$(head -n 1 "$SWITCHYARD_TEST_PG_DATA/postmaster.pid")"
# services.sh starts Redis with its pidfile in its own directory.
redis_pid="$(cat "$_sy_redis_dir/redis.pid")"
echo "postmaster pid $pg_pid, redis pid $redis_pid"
# Redis's latency monitor: events (a command, the expiry cycle, ...) of at least 5 ms are
# kept; reset just before the runs, read after them into the report's directory.
redis_cli() { redis-cli -h 127.0.0.1 -p "$SWITCHYARD_TEST_REDIS_PORT" "$@"; }
redis_cli CONFIG SET latency-monitor-threshold 5 >/dev/null

say "release build (switchyard, bank-sim, loadgen, relay)"
cargo build --release -p switch -p loadtest

# The disk's own tail, with nothing else running: the switch answers after two durable
# commits, so its p99 cannot beat the WAL flush's; the relay never touches the disk.
say "disk: write + fdatasync under the database's directory for 5 s (fsync-probe)"
"$bin/fsync-probe" --dir "$SWITCHYARD_TEST_PG_DATA" --seconds 5 | tee "$out/disk.json"

declare -A listen control
bank_pids=()
for bank in bank-a bank-b; do
  start_bank_sim "$bank" "$work" --runtime-threads "$HARNESS_RUNTIME_THREADS"
  bank_pids+=("${started[-1]}")
  echo "$bank: links ${listen[$bank]}, control ${control[$bank]}"
done

psql -c 'CREATE DATABASE switchyard_bench'
bench_db_url="postgres://postgres@127.0.0.1:${SWITCHYARD_TEST_PG_PORT}/switchyard_bench"
"$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$bench_db_url" -c 'CREATE EXTENSION pg_stat_statements'
config="$work/switchyard.toml"
# The switch reaches the database and Redis on this machine through their unix sockets
# (SOCKETS=1), as a deployment that runs them beside it would: on loopback TCP the sender
# also runs the receiver's protocol processing (docs/loadtest.md, 2026-12-03).
if [ "${SOCKETS:-1}" = 1 ]; then
  pg_sock_enc="$(printf '%s' "$SWITCHYARD_TEST_PG_SOCKET_DIR" | sed 's#/#%2F#g')"
  switch_db_url="postgres://postgres@${pg_sock_enc}:${SWITCHYARD_TEST_PG_PORT}/switchyard_bench"
  switch_redis_url="redis+unix://$SWITCHYARD_TEST_REDIS_SOCKET"
else
  switch_db_url="$bench_db_url"
  switch_redis_url="$SWITCHYARD_TEST_REDIS_URL"
fi
cat >"$config" <<EOF
# Written by scripts/bench.sh.
[switch]
instance_id = 1
runtime_threads = $RUNTIME_THREADS
shutdown_deadline_ms = 10000
reload_interval_ms = 5000

[merchant_listener]
tcp = "127.0.0.1:0"
idle_timeout_ms = 600000

[database]
url = "$switch_db_url"
$( [ -n "${JOURNAL_WRITERS:-}" ] && echo "journal_writers = $JOURNAL_WRITERS" || true)
$( [ -n "${JOURNAL_BATCH_MAX:-}" ] && echo "journal_batch_max = $JOURNAL_BATCH_MAX" || true)
$( [ -n "${JOURNAL_COMMIT_INTERVAL_US:-}" ] && echo "journal_commit_interval_us = $JOURNAL_COMMIT_INTERVAL_US" || true)

[redis]
url = "$switch_redis_url"
key_prefix = "bench:"

[security]
master_key_hex = "$(printf '11%.0s' $(seq 1 32))"
pan_hash_key_hex = "$(printf '22%.0s' $(seq 1 32))"

[admin]
addr = "127.0.0.1:0"

[[bank]]
id = "bank-a"
dialect = "bank-bcd-v1"
addr = "${listen[bank-a]}"
acquirer_id = "123456"
timeout_ms = $BANK_TIMEOUT_MS

[[bank]]
id = "bank-b"
dialect = "bank-bcd-v1"
addr = "${listen[bank-b]}"
acquirer_id = "123456"
timeout_ms = $BANK_TIMEOUT_MS
EOF

sy() { RUST_LOG=warn "$SWITCHYARD_BIN" "$@" --config "$config"; }
say "migrate, merchant, routes"
sy migrate
merchant_id="BENCHMERCHANT01"
added="$(sy merchant add --id "$merchant_id" --name "Bench Merchant" --currencies 840 \
  --limit-minor 100000000 --rate 1000000 --burst 1000000 2>/dev/null | tail -n 1)"
key="$(json_str mac_key_hex "$added")"
[ -n "$key" ] || { echo "merchant add printed no key: $added" >&2; exit 1; }
sy route add --low 4 --high 4 --bank bank-a
sy route add --low 51 --high 55 --bank bank-b

preload_args=()
if [ "$PRELOAD" -gt 0 ]; then
  say "preloading $PRELOAD historical transactions ($PRELOAD_SQL)"
  preload_t0="$EPOCHREALTIME"
  if ! "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$bench_db_url" -v ON_ERROR_STOP=1 \
    -v n="$PRELOAD" -v merchant="$merchant_id" -f "$PRELOAD_SQL" >"$work/preload.log" 2>&1; then
    cat "$work/preload.log" >&2
    echo "PRELOAD FAILED: $PRELOAD_SQL no longer fits the schema (migrations/*.sql)?" \
      "Fix the preload or run with PRELOAD=0." >&2
    exit 1
  fi
  preload_s="$(awk -v a="$preload_t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  echo "preloaded $PRELOAD transactions in $preload_s s"
  preload_args=(--preload-rows "$PRELOAD" --preload-seconds "$preload_s")
  # A server that has been running recycles its WAL segments at each checkpoint; one that
  # has not creates each new 16 MB segment by writing it full of zeros, inside a commit.
  # Measured (scraping the switch every second): seconds in which a segment was created
  # had commit maxima of 87-92 ms against 21-34 ms in the others. A checkpoint after the
  # preload recycles the preload's segments, as a running server's would be.
  "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$bench_db_url" -c 'CHECKPOINT'
  # The preload's own VACUUM ANALYZE can run before its session has reported its inserts
  # to the statistics system (a backend reports at most once a second); they then count
  # as changes since that ANALYZE, and autovacuum analyzes the tables during the runs
  # (seen: one autoanalyze of each in the measured window). History's statistics are
  # settled on a real server, so analyze again from a session of its own.
  "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$bench_db_url" \
    -c 'ANALYZE transaction_rows, settlements, ledger_postings'
else
  # A server that has run before has WAL segments to recycle; a new cluster has none, and
  # creates each 16 MB segment by writing it full of zeros inside the commit that first
  # needs it: at 5,000/s, one every two seconds, and p99 of 55-85 ms in every other second
  # of the run (2026-12-03, docs/loadtest.md). The preload leaves such segments; without
  # it, WAL is written and checkpointed here, so that PRELOAD=0 measures an empty journal
  # on a server that has run, not a new server's first gigabytes: 2 KB per request of the
  # switch run (the journal writes about 1.6 KB per purchase), at least 1 GB, at most 6 GB
  # (max_wal_size keeps 8 GB; a search's later steps may outrun it).
  wal_warmup_kb_per_request=2
  wal_warmup_min_mb=1024
  wal_warmup_max_mb=6144
  wal_warmup_row_bytes=560 # WAL per row of the scratch table (500 bytes of text)
  wal_mb=$(( RATE * (DURATION + WARMUP) * wal_warmup_kb_per_request / 1024 ))
  wal_mb=$(( wal_mb < wal_warmup_min_mb ? wal_warmup_min_mb : wal_mb ))
  wal_mb=$(( wal_mb > wal_warmup_max_mb ? wal_warmup_max_mb : wal_mb ))
  say "writing $wal_mb MB of WAL for the runs to recycle (no preload)"
  "$SWITCHYARD_TEST_PG_BIN/psql" -X -qAt "$bench_db_url" -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE bench_wal_warmup AS SELECT g, repeat('w', 500) AS w
        FROM generate_series(1, $(( wal_mb * 1048576 / wal_warmup_row_bytes ))) g" \
    -c 'DROP TABLE bench_wal_warmup' -c 'CHECKPOINT' >/dev/null
fi

say "starting the switch"
RUST_LOG="$SWITCH_LOG" ${SWITCH_WRAPPER:-} "$SWITCHYARD_BIN" run --config "$config" >"$work/switch.out" 2>"$work/switch.log" &
switch_pid=$!
started+=("$switch_pid")
line="$(wait_ready "$work/switch.out" "$switch_pid" switchyard)"
merchant_addr="$(json_str merchant_tcp "$line")"
admin_addr="$(json_str admin "$line")"
echo "switch pid $switch_pid, merchants on $merchant_addr"

args=(
  --addr "$merchant_addr" --merchant "$merchant_id" --key "$key"
  --connections "$CONNECTIONS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
  --mix "$MIX"
  --bank-control "${control[bank-a]}" --bank-control "${control[bank-b]}"
  --switch-pid "$switch_pid"
  --pid "postgres=$pg_pid" --pid "redis=$redis_pid"
  --pid "bank_sim=${bank_pids[0]}" --pid "bank_sim=${bank_pids[1]}"
  --switch-metrics "$admin_addr" --redis "127.0.0.1:$SWITCHYARD_TEST_REDIS_PORT"
  --pg-url "$bench_db_url" "${preload_args[@]}"
  --relay-upstream "${listen[bank-a]}" --relay-control "${control[bank-a]}"
  --out "$out"
  --runtime-threads "$HARNESS_RUNTIME_THREADS" --relay-runtime-threads "$RUNTIME_THREADS"
)
if [ "$SCHEDULE" = precise ]; then
  args+=(--precise-schedule)
fi
if [ "$SEARCH" = 1 ]; then
  args+=(--search --p99-target-ms "$P99_TARGET_MS" --search-max "$SEARCH_MAX")
  say "loadgen: search from $RATE/s for p99 <= $P99_TARGET_MS ms ($DURATION s per step)"
else
  say "loadgen: relay then switch at $RATE/s for $DURATION s (+$WARMUP s warm-up), $SCHEDULE schedule"
fi
status=0
redis_cli LATENCY RESET >/dev/null
"$bin/loadgen" "${args[@]}" || status=$?
# The switch's own per-stage histograms (Redis, journal commits, bank round trips, the
# latency it adds) for the run, next to the harness's report.
mkdir -p "$out"
curl -fsS "http://$admin_addr/metrics" >"$out/switch-metrics.txt" 2>/dev/null || true
cp "$SWITCHYARD_TEST_PG_DATA/server.log" "$work/postgres.log" 2>/dev/null || true
# Redis's own stalls of 5 ms or more during the runs: LATENCY LATEST (event, when last in
# unix s, last ms, worst ms), then each event's history (unix s, ms; up to 160 samples).
{
  echo "# LATENCY LATEST"
  redis_cli LATENCY LATEST
  for event in command fast-command expire-cycle eviction-cycle; do
    echo "# LATENCY HISTORY $event"
    redis_cli LATENCY HISTORY "$event"
  done
} >"$out/redis-latency.txt" 2>&1 || true

# The switch must still be alive after the load (a crash is a finding, not a detail).
if ! kill -0 "$switch_pid" 2>/dev/null; then
  echo "the switch exited during the benchmark; see $work/switch.log" >&2
  status=3
fi
echo "switch log: $(grep -c 'ERROR' "$work/switch.log" || true) ERROR and $(grep -c 'WARN' "$work/switch.log" || true) WARN lines ($work/switch.log)"
ln -sfn "$stamp" "$root/target/bench/latest"
say "done: reports in $out (report.json, table.txt, chart.svg); loadgen exit $status"
exit "$status"
