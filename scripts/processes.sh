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

# Stops every started process (TERM, then KILL after 10 s), then the private services.
stop_all() {
  local pid i
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
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

# start_bank_sim NAME DIR: starts a bank simulator (binary in $bin) logging to DIR/NAME.log,
# waits for it, and sets listen[NAME] (its bank links) and control[NAME] (its control
# endpoint); the caller declares both arrays (`declare -A listen control`). Its PID is the
# last of `started`.
start_bank_sim() {
  local name="$1" dir="$2" line
  RUST_LOG=warn "$bin/bank-sim" --listen 127.0.0.1:0 --control 127.0.0.1:0 \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  started+=($!)
  line="$(wait_ready "$dir/$name.out" $! "$name")" || return 1
  listen[$name]="$(json_str listen "$line")"
  control[$name]="$(json_str control "$line")"
}

# json_str KEY JSON: the string value of KEY in a one-line JSON object.
json_str() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$2"; }
