#!/usr/bin/env bash
# Latency benchmark (issue: deferred_queue): SMTP transaction latency (DATA
# to the final reply, as Python's smtplib sees it) with an
# smtp_server_message_received handler that takes 50 ms, once on a plain
# listener and once, in the same run, with deferred_queue = true (where the
# same 50 ms runs in smtp_server_message_deferred_inject, after the 250).
# Messages are delivered into a maildir in both cases.
#
# The peer, in the same run: Postfix configured as
# ../shared/docs/postfix-peer.md says, relaying to an smtp-sink. Postfix runs
# no policy handler at all, so its figure is the floor both sluice runs are
# measured against.
#
# Prints p50, p99 and max in milliseconds for each, and how long the
# deferred run took until every message was delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-2000}
SESSIONS=${SESSIONS:-20}
DEFER_WORKERS=${DEFER_WORKERS:-32}
PORT=2525

build_mta

WORK=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
SINK=2600
trap 'pkill -f "$WORK/" 2>/dev/null || true; pkill -f "smtp-sink.*:$SINK" 2>/dev/null || true; stop_postfix; rm -rf "$WORK"' EXIT

policy() { # $1: run name, $2: listener extra keys
  cat > "$WORK/$1.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$WORK/$1/spool' }
  kumo.configure_local_logs { log_dir = '$WORK/$1/logs' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:$PORT', relay_hosts = { '127.0.0.1' } $2 }
end)
local function work(msg) kumo.sleep(0.05) msg:set_meta('checked', true) end
kumo.on('smtp_server_message_received', work)
kumo.on('smtp_server_message_deferred_inject', work)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { maildir_path = '$WORK/$1/maildir' } }
end)
-- the seed's advice for the deferred queue: room for the fan-in; the
-- handler waits rather than computes, so more workers than CPUs
kumo.on('get_egress_path_config', function(routing_domain)
  return kumo.make_egress_path { connection_limit = $DEFER_WORKERS, max_ready = 80000 }
end)
LUA
}

# percentiles of the client's replies: "p50 p99 max"
percentiles() {
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if r["code"] != 250]
assert not bad, f"{len(bad)} messages not accepted: {bad[:3]}"
ms = sorted(r["ms"] for r in rows)
pct = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
print(f"{pct(0.50):.1f} {pct(0.99):.1f} {ms[-1]:.1f}")
PY
}

send() { # $1: run name
  python3 tests/clients/smtp_send.py --port $PORT --count "$COUNT" \
    --concurrency "$SESSIONS" --size 2048 > "$WORK/$1.jsonl"
}

run() { # $1: run name, $2: listener extra keys
  policy "$1" "$2"
  "$BIN" --policy "$WORK/$1.lua" 2>"$WORK/$1.err" &
  local pid=$! t0
  wait_port $PORT
  t0=$(date +%s.%N)
  send "$1"
  while [ "$(ls "$WORK/$1/maildir/new" 2>/dev/null | wc -l)" -lt "$COUNT" ]; do sleep 0.05; done
  local all_delivered
  all_delivered=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }')
  kill "$pid"; wait "$pid" || true
  read -r p50 p99 max < <(percentiles "$WORK/$1.jsonl")
  printf "%-22s p50 %6s ms  p99 %6s ms  max %6s ms  all delivered after %s s\n" \
    "sluice-mta $1" "$p50" "$p99" "$max" "$all_delivered"
  echo "$p50 $p99" > "$WORK/$1.pct"
}

run_postfix() {
  stop_postfix
  configure_postfix
  /usr/sbin/smtp-sink -u nobody 127.0.0.1:$SINK 256 >/dev/null 2>&1 &
  postfix start >/dev/null 2>&1
  wait_port $PORT
  send postfix
  stop_postfix
  pkill -f "smtp-sink.*:$SINK" || true
  read -r p50 p99 max < <(percentiles "$WORK/postfix.jsonl")
  printf "%-22s p50 %6s ms  p99 %6s ms  max %6s ms  (no policy handler)\n" \
    "postfix" "$p50" "$p99" "$max"
  echo "$p50 $p99" > "$WORK/postfix.pct"
}

echo "$COUNT messages, $SESSIONS sessions, 50 ms policy handler, $DEFER_WORKERS deferred-inject workers"
run plain ""
run deferred ", deferred_queue = true"
run_postfix
read -r pf50 pf99 < "$WORK/postfix.pct"
for r in plain deferred; do
  read -r s50 s99 < "$WORK/$r.pct"
  label="50 ms policy, $r listener"
  [ "$r" = deferred ] && label="50 ms policy, deferred_queue"
  result "latency p50, $label" "$s50" "$pf50" ms lower "Postfix, no policy"
  result "latency p99, $label" "$s99" "$pf99" ms lower "Postfix, no policy"
done
