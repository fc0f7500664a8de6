#!/usr/bin/env bash
# Injection benchmark (issue: MTA foundation): Postfix's smtp-source sends
# COUNT messages of SIZE bytes over SESSIONS concurrent sessions into
# sluice-mta, then, in the same run, into Postfix on the same port and disk.
# Both sync their spool before replying 250. Postfix keeps the mail on its
# own spool (hold queue); sluice-mta keeps it too (the bench policy holds
# mail in a queue whose maildir cannot be written, retrying in an hour), or,
# with DELIVER=1, also delivers every message into a maildir while injecting.
#
# Prints messages/s for both, the ratio, and CPU milliseconds per message
# (whole-machine busy time minus smtp-source's own).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-20000}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-50}
RUNS=${RUNS:-1}
PORT=2525

build_mta

WORK=$(mktemp -d /var/tmp/sluice-bench.XXXXXX)
trap 'pkill -f "$WORK/policy.lua" 2>/dev/null || true; stop_postfix; rm -rf "$WORK"' EXIT

# one run of smtp-source against whatever listens on $PORT; prints "rate cpu_ms_per_msg"
inject() {
  local busy0 busy1 t0 t1 src_cpu
  busy0=$(machine_busy_ms)
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$WORK/src.time" \
    /usr/sbin/smtp-source -d -s "$SESSIONS" -m "$COUNT" -l "$SIZE" \
      -f sender@bench.local -t rcpt@example.com 127.0.0.1:$PORT
  t1=$(date +%s.%N)
  busy1=$(machine_busy_ms)
  src_cpu=$(awk '{ print int(($1 + $2) * 1000) }' "$WORK/src.time")
  awk -v n="$COUNT" -v t0="$t0" -v t1="$t1" -v b="$((busy1 - busy0 - src_cpu))" \
    'BEGIN { printf "%.0f %.2f\n", n / (t1 - t0), b / n }'
}

run_sluice() {
  rm -rf "$WORK/data"
  mkdir -p "$WORK/data"
  local protocol="maildir_path = '$WORK/data/blocked/maildir'"
  if [ "${DELIVER:-0}" = 1 ]; then protocol="maildir_path = '$WORK/data/maildir'"; else touch "$WORK/data/blocked"; fi
  cat > "$WORK/policy.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$WORK/data/spool' }
  kumo.define_spool { name = 'meta', path = '$WORK/data/spool' }
  kumo.configure_local_logs { log_dir = '$WORK/data/logs' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:$PORT', max_recipients_per_message = 1024 }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { retry_interval = '1 hour', protocol = { $protocol } }
end)
LUA
  RUST_LOG=warn "$BIN" --policy "$WORK/policy.lua" 2>"$WORK/sluice.log" &
  local pid=$!
  wait_port $PORT
  inject
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# the load rig's ceiling: smtp-source straight into smtp-sink (no spool at all)
run_sink() {
  /usr/sbin/smtp-sink -u nobody 127.0.0.1:$PORT 1024 >/dev/null 2>&1 &
  local pid=$!
  wait_port $PORT
  inject
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
}

run_postfix() {
  stop_postfix
  configure_postfix
  # keep every message on Postfix's spool: the hold queue
  postconf -e "smtpd_end_of_data_restrictions = check_client_access static:HOLD"
  postfix start >/dev/null 2>&1
  wait_port $PORT
  inject
  stop_postfix
}

echo "injection: $COUNT messages of $SIZE bytes, $SESSIONS sessions, deliver=${DELIVER:-0}"
printf "%-12s %10s %14s\n" "server" "msgs/s" "cpu ms/msg"
for i in $(seq 1 "$RUNS"); do
  run_sluice > "$WORK/sluice.out"
  run_postfix > "$WORK/postfix.out"
  run_sink > "$WORK/sink.out"
  read -r s_rate s_cpu < "$WORK/sluice.out"
  read -r p_rate p_cpu < "$WORK/postfix.out"
  read -r k_rate k_cpu < "$WORK/sink.out"
  printf "%-12s %10s %14s\n" "sluice-mta" "$s_rate" "$s_cpu" "postfix" "$p_rate" "$p_cpu" "smtp-sink" "$k_rate" "$k_cpu"
  awk -v s="$s_rate" -v p="$p_rate" -v k="$k_rate" \
    'BEGIN { printf "ratio sluice/postfix %.2fx; sluice at %.0f%% of the rig ceiling\n", s / p, 100 * s / k }'
done
