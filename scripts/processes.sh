# shellcheck shell=bash
# Processes the demo and the benchmark start: track them, wait for their ready lines, stop
# them (and the private services) at exit. Source after scripts/services.sh:
#
#     . scripts/services.sh
#     . scripts/processes.sh
#     trap stop_all EXIT
#
# Callers append the PIDs they start to `started` and set `ready_wait_tenths`.

started=()
ready_wait_tenths="${ready_wait_tenths:-600}"

# stop_pids PID...: TERM, then KILL those still alive after 10 s.
stop_pids() {
  local pid i
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}

# children_of PID: the PIDs of a process's direct children (from /proc: procps may not be
# installed).
children_of() {
  cat /proc/"$1"/task/*/children 2>/dev/null || true
}

# Stops every started process (TERM, then KILL after 10 s), then the private services.
# A process that runs under a wrapper (bench.sh's SWITCH_WRAPPER, e.g. `perf stat`) is
# stopped first, so the wrapper can write what it measured and exit by itself: stopping
# the wrapper alone left the switch running.
stop_all() {
  local pid children=()
  for pid in "${started[@]}"; do
    # shellcheck disable=SC2207
    children+=($(children_of "$pid"))
  done
  stop_pids "${children[@]}"
  stop_pids "${started[@]}"
  started=()
  services_stop
}

# wait_ready OUT_FILE PID NAME: prints the ready line once OUT_FILE has it.
wait_ready() {
  local out="$1" pid="$2" name="$3" i
  for i in $(seq 1 "$ready_wait_tenths"); do
    if grep -q '"ready"' "$out" 2>/dev/null; then
      grep -m 1 '"ready"' "$out"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited before it was ready; its log:" >&2
      tail -n 30 "${out%.out}.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "$name was not ready after $((ready_wait_tenths / 10)) s" >&2
  return 1
}

# start_bank_sim NAME DIR [ARG...]: starts a bank simulator (binary in $bin, with ARGs
# after its addresses, e.g. --runtime-threads 1) logging to DIR/NAME.log,
# waits for it, and sets listen[NAME] (its bank links) and control[NAME] (its control
# endpoint); the caller declares both arrays (`declare -A listen control`). Its PID is the
# last of `started`.
start_bank_sim() {
  local name="$1" dir="$2" line
  shift 2
  RUST_LOG=warn "$bin/bank-sim" --listen 127.0.0.1:0 --control 127.0.0.1:0 "$@" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  started+=($!)
  line="$(wait_ready "$dir/$name.out" $! "$name")" || return 1
  listen[$name]="$(json_str listen "$line")"
  control[$name]="$(json_str control "$line")"
}

# json_str KEY JSON: the string value of KEY in a one-line JSON object.
json_str() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$2"; }
