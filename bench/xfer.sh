#!/usr/bin/env bash
# xfer and spool handoff (issue: scale down and lose no mail), in one run:
#
# 1. Moving a node's queue to another node: COUNT messages of 2 KB (and
#    COUNT/5 of 50 KB) held on node A by a suspension are moved to node B
#    (which holds them too), by xfer (/api/admin/xfer/v1) and, as the peer,
#    by SMTP (A relays to B's ESMTP listener once the suspension is lifted:
#    what an operator would do without xfer, losing attempts and due
#    times). Rate from the request until A's spool is empty, and machine
#    CPU per message (both nodes).
# 2. A handoff: HANDOFF messages (2 KB) in the spool of a dead node, run by
#    `sluice-mta --handoff-to` into two live nodes; the time until it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-20000}
HANDOFF=${HANDOFF:-100000}

build_mta

WORK=$(mktemp -d /var/tmp/sluice-xfer.XXXXXX)
# the nodes of the last case, gone at once (their spools are thrown away)
kill_nodes() {
  pkill -9 -f "$WORK/" 2>/dev/null || true
  while pgrep -f "$WORK/" >/dev/null; do sleep 0.1; done
}
cleanup() {
  kill_nodes
  rm -rf "$WORK"
}
trap cleanup EXIT

# node NAME SMTP HTTP NEXT: a node holding example.com (suspended), whose
# SMTP deliveries go to 127.0.0.1:NEXT; sets PID_<NAME>
node() {
  local name=$1 smtp=$2 http=$3 next=$4 dir="$WORK/$1"
  mkdir -p "$dir"
  write_relay_policy "$dir" "$smtp" "$next" \
    "kumo.start_http_listener { listen = '127.0.0.1:$http' }"
  SLUICE_NODE_ID=$name RUST_LOG=warn "$BIN" --policy "$dir/policy.lua" 2>>"$dir/sluice.log" &
  disown
  eval "PID_$name=$!"
  wait_port "$smtp"
  wait_port "$http"
  curl -sf -o "$dir/suspend.json" -d '{"domain": "example.com", "reason": "bench", "duration": "1h"}' \
    "http://127.0.0.1:$http/api/admin/suspend/v1"
}

# spooled HTTP: the node's message_count
spooled() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk '$1 == "message_count" { print $2 }'
}

wait_spooled() { # port want(=|0) count
  local port=$1 op=$2 n=$3 have
  while :; do
    have=$(spooled "$port")
    if [ "$op" = ge ] && [ "${have:-0}" -ge "$n" ]; then return; fi
    if [ "$op" = eq ] && [ "${have:-0}" -eq "$n" ]; then return; fi
    sleep 0.05
  done
}

# move N messages of SIZE bytes from A to B by HOW (xfer|smtp); prints
# "rate cpu_ms_per_msg"
move() {
  local how=$1 n=$2 size=$3 busy0 busy1 t0 t1
  kill_nodes
  rm -rf "$WORK/a" "$WORK/b"
  node b 2526 8002 2699
  node a 2525 8001 2526
  /usr/sbin/smtp-source -d -s 50 -m "$n" -l "$size" -f sender@bench.local \
    -t rcpt@example.com 127.0.0.1:2525
  wait_spooled 8001 ge "$n"
  busy0=$(machine_busy_ms)
  t0=$(date +%s.%N)
  if [ "$how" = xfer ]; then
    curl -sf -o /dev/null -d '{"target": "http://127.0.0.1:8002", "reason": "bench"}' \
      http://127.0.0.1:8001/api/admin/xfer/v1
  else
    local id
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/a/suspend.json")
    curl -sf -o /dev/null -X DELETE -d "{\"id\": \"$id\"}" http://127.0.0.1:8001/api/admin/suspend/v1
  fi
  wait_spooled 8001 eq 0
  t1=$(date +%s.%N)
  busy1=$(machine_busy_ms)
  wait_spooled 8002 ge "$n"
  awk -v n="$n" -v t0="$t0" -v t1="$t1" -v b="$((busy1 - busy0))" \
    'BEGIN { printf "%.0f %.2f\n", n / (t1 - t0), b / n }'
}

echo "moving a held queue from node A to node B (both on this machine)"
printf "%-26s %10s %12s %10s %12s %8s\n" "messages" "xfer/s" "cpu ms/msg" "smtp/s" "cpu ms/msg" "ratio"
for spec in "$COUNT 2048 2KB" "$((COUNT / 5)) 51200 50KB"; do
  read -r n size label <<< "$spec"
  move xfer "$n" "$size" > "$WORK/x.out"
  read -r x_rate x_cpu < "$WORK/x.out"
  move smtp "$n" "$size" > "$WORK/s.out"
  read -r s_rate s_cpu < "$WORK/s.out"
  printf "%-26s %10s %12s %10s %12s %8s\n" "$n of $label" "$x_rate" "$x_cpu" "$s_rate" "$s_cpu" \
    "$(awk -v x="$x_rate" -v s="$s_rate" 'BEGIN { printf "%.2f", x / s }')"
  result "move a queue to another node, $label" "$x_rate" "$s_rate" "msg/s" higher "SMTP relay A to B"
  result "move a queue, $label, cpu per message" "$x_cpu" "$s_cpu" "ms" lower "SMTP relay A to B"
done

# the handoff: A dies with HANDOFF messages in its spool
kill_nodes
rm -rf "$WORK/a" "$WORK/b" "$WORK/c"
node a 2525 8001 2699
/usr/sbin/smtp-source -d -s 50 -m "$HANDOFF" -l 2048 -f sender@bench.local \
  -t rcpt@example.com 127.0.0.1:2525
wait_spooled 8001 ge "$HANDOFF"
kill -9 "$PID_a"
node b 2526 8002 2699
node c 2527 8003 2699
t0=$(date +%s.%N)
SLUICE_NODE_ID=drainer RUST_LOG=warn "$BIN" --policy "$WORK/a/policy.lua" \
  --handoff-to http://127.0.0.1:8002,http://127.0.0.1:8003 \
  --handoff-report "$WORK/handoff.json" 2>"$WORK/drainer.log"
t1=$(date +%s.%N)
b=$(spooled 8002)
c=$(spooled 8003)
awk -v n="$HANDOFF" -v t0="$t0" -v t1="$t1" -v b="$b" -v c="$c" 'BEGIN {
  printf "handoff of a dead node'"'"'s %d-message spool into two live nodes: %.1f s (%.0f msg/s); %d and %d received\n", n, t1 - t0, n / (t1 - t0), b, c }'
cat "$WORK/handoff.json"; echo
