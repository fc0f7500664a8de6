#!/usr/bin/env bash
# Fleet throttles (issue: a fleet that sends as one MTA), in one run:
#
# 1. Relay cost: smtp-source -> sluice-mta -> smtp-sink, COUNT 2 KB messages
#    over 50 sessions, with no throttle, with local throttles, and with the
#    same throttles shared through a Redis on loopback (a queue and a path
#    max_message_rate that never bind, so every message makes two checks:
#    two Redis round trips in the shared case). Rate, and CPU per message
#    (Redis's included, smtp-source's and smtp-sink's not).
# 2. Accuracy: three sluice-mta processes sharing one path max_message_rate
#    of 1/s, 100/s and 1,000/s in Redis, flooded; the fleet's rate as
#    delivered to one smtp-sink (the slope of arrivals over time after the
#    first burst, from the dump files' modification times).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-20000}
PORT=2525
SINK=2600
REDIS=2700
PASSWORD=bench-redis-pw

build_mta

WORK=$(mktemp -d /var/tmp/sluice-throttles.XXXXXX)
chmod 755 "$WORK" # smtp-sink writes the dump as nobody
cleanup() {
  pkill -f "$WORK/" 2>/dev/null || true
  pkill -f "smtp-sink.*:$SINK" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

shared_init() {
  echo "kumo.configure_redis_throttles { node = 'redis://127.0.0.1:$REDIS/', password = '$PASSWORD', fleet_size = $1 }"
}

# the relay with throttles as given; prints "rate cpu_ms_per_msg"
relay_with() {
  local init=$1 queue=$2 path=$3
  rm -rf "$WORK/spool" "$WORK/logs"
  write_relay_policy "$WORK" "$PORT" "$SINK" "$init" "$queue" "$path"
  RUST_LOG=warn "$BIN" --policy "$WORK/policy.lua" 2>"$WORK/sluice.log" &
  local pid=$!
  wait_port $PORT
  sleep 1 # shared: Redis reached (else the first checks run on split shares)
  relay 2048 50
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

start_redis $REDIS $PASSWORD
never_q="max_message_rate = '1000000/s'"
never_p="max_message_rate = '1000000/s'"
echo "relay: $COUNT messages of 2 KB, 50 sessions, smtp-source -> sluice-mta -> smtp-sink"
printf "%-34s %10s %12s\n" "throttles" "msgs/s" "cpu ms/msg"
# (each run to a file: a process substitution would let the next start
# while the last MTA still drains)
relay_with "" "" "" > "$WORK/none.out"
read -r n_rate n_cpu < "$WORK/none.out"
printf "%-34s %10s %12s\n" "none" "$n_rate" "$n_cpu"
relay_with "" "$never_q" "$never_p" > "$WORK/local.out"
read -r l_rate l_cpu < "$WORK/local.out"
printf "%-34s %10s %12s\n" "local (queue + path rate)" "$l_rate" "$l_cpu"
relay_with "$(shared_init 1)" "$never_q" "$never_p" > "$WORK/shared.out"
read -r s_rate s_cpu < "$WORK/shared.out"
printf "%-34s %10s %12s\n" "shared in Redis (queue + path)" "$s_rate" "$s_cpu"
awk -v s="$s_rate" -v l="$l_rate" -v n="$n_rate" \
  'BEGIN { printf "shared / local: %.2f; local / none: %.2f\n", s / l, l / n }'
result "relay 2 KB, throttles shared in Redis" "$s_rate" "$l_rate" "msg/s" higher "local throttles"
result "relay 2 KB, cpu per message, shared" "$s_cpu" "$l_cpu" "ms" lower "local throttles"

# the fleet's achieved rate for one shared path limit of $1/s over 3 nodes,
# flooded for about $2 seconds
accuracy() {
  local limit=$1 secs=$2 total per pids=()
  total=$((limit * secs + limit))
  per=$(((total + 2) / 3))
  total=$((per * 3))
  rm -rf "$WORK/dump" && mkdir -p "$WORK/dump" && chmod 777 "$WORK/dump"
  /usr/sbin/smtp-sink -u nobody -d "$WORK/dump/%s." 127.0.0.1:$SINK 1024 >/dev/null 2>&1 &
  local sink=$!
  wait_port $SINK
  for i in 1 2 3; do
    local dir="$WORK/node$i" port=$((PORT + 10 + i))
    rm -rf "$dir" && mkdir -p "$dir"
    write_relay_policy "$dir" "$port" "$SINK" "$(shared_init 3)" "" "max_message_rate = '$limit/s', connection_limit = 100"
    RUST_LOG=warn "$BIN" --policy "$dir/policy.lua" 2>"$dir/sluice.log" &
    pids+=($!)
    wait_port "$port"
  done
  sleep 1
  local sources=()
  for i in 1 2 3; do
    /usr/sbin/smtp-source -d -s 20 -m "$per" -l 2048 -f sender@bench.local \
      -t rcpt@example.com 127.0.0.1:$((PORT + 10 + i)) &
    sources+=($!)
  done
  wait "${sources[@]}"
  local deadline=$((SECONDS + secs * 3 + 60))
  while [ "$(find "$WORK/dump" -type f | wc -l)" -lt "$total" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.5
  done
  kill "${pids[@]}" "$sink" 2>/dev/null || true
  wait "${pids[@]}" "$sink" 2>/dev/null || true
  python3 - "$WORK/dump" "$limit" "$total" <<'PY'
import os, sys
d, limit, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = sorted(os.stat(os.path.join(d, f)).st_mtime for f in os.listdir(d))
steady = t[limit:]
n = len(steady)
mt = sum(steady) / n
mi = (n - 1) / 2
num = sum((x - mt) * (i - mi) for i, x in enumerate(steady))
den = sum((x - mt) ** 2 for x in steady)
rate = num / den
print(f"{limit:>6}/s   delivered {len(t)}/{total}   achieved {rate:8.2f}/s   error {100 * (rate / limit - 1):+6.1f}%")
PY
}

echo
echo "accuracy: three nodes, one path max_message_rate shared in Redis"
accuracy 1 30
accuracy 100 10
accuracy 1000 10
