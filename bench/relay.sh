#!/usr/bin/env bash
# Relay benchmark (issue: delivery protocols): smtp-source -> MTA -> smtp-sink,
# COUNT messages per case, for bodies of 2 KB and 50 KB and 50 and 200
# concurrent sessions; in the same run the same through Postfix configured as
# ../shared/docs/postfix-peer.md says (relayhost [127.0.0.1]:2600). Both MTAs
# sync their spool before replying 250. The sink exits after COUNT messages,
# so its exit is the end-to-end finish. Prints messages/s, the ratio, and CPU
# ms per relayed message (machine busy time minus smtp-source's and smtp-sink's).
#
# Tuning: sluice's egress path gets max_ready = 20000, the same in-memory
# bound as Postfix's qmgr_message_active_limit. With KumoMTA's default of
# 1024, an injection burst faster than delivery overflows the ready queue
# and the overflow waits a random 0-60 s (spec §3.2, ReadyQueueWasFull).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-20000}
SIZES=${SIZES:-"2048 51200"}
SESSIONS_LIST=${SESSIONS_LIST:-"50 200"}
PORT=2525
SINK=2600

build_mta

WORK=$(mktemp -d /var/tmp/sluice-relay.XXXXXX)
trap 'pkill -f "$WORK/policy.lua" 2>/dev/null || true; pkill -f "smtp-sink.*:$SINK" 2>/dev/null || true; stop_postfix; rm -rf "$WORK"' EXIT

write_relay_policy "$WORK" "$PORT" "$SINK"

run_sluice() {
  rm -rf "$WORK/spool" "$WORK/logs"
  RUST_LOG=warn "$BIN" --policy "$WORK/policy.lua" 2>"$WORK/sluice.log" &
  local pid=$!
  wait_port $PORT
  relay "$@"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_postfix() {
  stop_postfix
  configure_postfix
  postfix start >/dev/null 2>&1
  wait_port $PORT
  relay "$@"
  stop_postfix
}

echo "relay: $COUNT messages per case, smtp-source -> MTA -> smtp-sink"
printf "%-8s %-9s %-12s %10s %12s\n" "size" "sessions" "server" "msgs/s" "cpu ms/msg"
for size in $SIZES; do
  for sessions in $SESSIONS_LIST; do
    run_sluice "$size" "$sessions" > "$WORK/s.out"
    run_postfix "$size" "$sessions" > "$WORK/p.out"
    read -r s_rate s_cpu < "$WORK/s.out"
    read -r p_rate p_cpu < "$WORK/p.out"
    printf "%-8s %-9s %-12s %10s %12s\n" "$size" "$sessions" sluice-mta "$s_rate" "$s_cpu" "$size" "$sessions" postfix "$p_rate" "$p_cpu"
    awk -v s="$s_rate" -v p="$p_rate" 'BEGIN { printf "                      ratio %.2fx\n", s / p }'
    result "relay, $((size / 1024)) KB, $sessions sessions" "$s_rate" "$p_rate" "msg/s" higher Postfix
  done
done
