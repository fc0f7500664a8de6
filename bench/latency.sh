#!/usr/bin/env bash
# Latency benchmark (issue: deferred_queue): SMTP transaction latency (DATA
# to the final reply, as Python's smtplib sees it) with an
# smtp_server_message_received handler that takes 50 ms, once on a plain
# listener and once, in the same run, with deferred_queue = true (where the
# same 50 ms runs in smtp_server_message_deferred_inject, after the 250).
# Messages are delivered into a maildir in both cases.
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

scripts/install-deps
cargo build --release -p sluice-mta -q
BIN=${CARGO_TARGET_DIR:-target}/release/sluice-mta

WORK=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
trap 'pkill -f "$WORK/" 2>/dev/null || true; rm -rf "$WORK"' EXIT

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

run() { # $1: run name, $2: listener extra keys
  policy "$1" "$2"
  "$BIN" --policy "$WORK/$1.lua" 2>"$WORK/$1.err" &
  local pid=$! t0
  wait_port $PORT
  t0=$(date +%s.%N)
  python3 tests/clients/smtp_send.py --port $PORT --count "$COUNT" \
    --concurrency "$SESSIONS" --size 2048 > "$WORK/$1.jsonl"
  while [ "$(ls "$WORK/$1/maildir/new" 2>/dev/null | wc -l)" -lt "$COUNT" ]; do sleep 0.05; done
  local all_delivered
  all_delivered=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN { printf "%.1f", t1 - t0 }')
  kill "$pid"; wait "$pid" || true
  python3 - "$1" "$WORK/$1.jsonl" "$all_delivered" <<'PY'
import json, sys
name, path, delivered = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(path)]
bad = [r for r in rows if r["code"] != 250]
ms = sorted(r["ms"] for r in rows if r["code"] == 250)
pct = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]
print(f"{name:16} {len(ms)} x 250 ({len(bad)} other)  p50 {pct(0.50):6.1f} ms  p99 {pct(0.99):6.1f} ms"
      f"  max {ms[-1]:6.1f} ms  all delivered after {delivered} s")
PY
}

echo "$COUNT messages, $SESSIONS sessions, 50 ms policy handler, $DEFER_WORKERS deferred-inject workers"
run plain ""
run deferred ", deferred_queue = true"
