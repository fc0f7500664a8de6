#!/usr/bin/env bash
# Instructions per relayed message, counted by valgrind's callgrind, for one
# or more sluice-mta binaries: the same relay as bench/relay.sh (smtp-source
# -> MTA -> smtp-sink), COUNT messages of SIZE bytes over SESSIONS sessions.
# Counting starts once the MTA listens (start-up and policy load are left
# out) and ends at exit. Instruction counts do not move with machine noise,
# so this is the way to compare two builds for a regression in the hot path:
#
#   bench/callgrind.sh old/sluice-mta new/sluice-mta
#   COUNT=5000 SIZE=51200 bench/callgrind.sh "$CARGO_TARGET_DIR/release/sluice-mta"
#
# Prints, per binary: instructions per message and the ratio to the first.
# With OUT=dir, each binary's callgrind.out is kept there (numbered in
# argument order) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-2000}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-20}
PORT=${PORT:-2535}
SINK=${SINK_PORT:-2610}
[ $# -ge 1 ] || { echo "usage: $0 sluice-mta [sluice-mta ...]" >&2; exit 2; }

WORK=$(mktemp -d /var/tmp/sluice-callgrind.XXXXXX)
trap 'pkill -f "$WORK/policy.lua" 2>/dev/null || true; pkill -f "smtp-sink.*:$SINK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

write_relay_policy "$WORK" "$PORT" "$SINK"

# instructions per message for one binary
count() {
  local bin=$1 out="$WORK/callgrind.out"
  rm -rf "$WORK/spool" "$WORK/logs" "$out"
  /usr/sbin/smtp-sink -u nobody -M "$COUNT" 127.0.0.1:$SINK 1024 >/dev/null 2>&1 &
  local sink=$!
  wait_port $SINK
  RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" --policy "$WORK/policy.lua" 2>"$WORK/valgrind.log" &
  local mta=$!
  # start-up under valgrind is slow: wait_port's 30 s, twice if need be
  wait_port $PORT || wait_port $PORT
  callgrind_control -i on "$mta" >/dev/null 2>&1
  /usr/sbin/smtp-source -d -s "$SESSIONS" -m "$COUNT" -l "$SIZE" \
    -f sender@bench.local -t rcpt@example.com 127.0.0.1:$PORT
  wait "$sink"
  kill -TERM "$mta"
  wait "$mta" 2>/dev/null || true
  awk -v n="$COUNT" '/^(summary|totals):/ { printf "%.0f\n", $2 / n; exit }' "$out"
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$out" "$OUT/callgrind.out.$2"
  fi
}

printf "%-60s %14s %8s\n" binary "instr/msg" ratio
first=
i=0
for bin in "$@"; do
  i=$((i + 1))
  ir=$(count "$bin" "$i")
  first=${first:-$ir}
  printf "%-60s %14s %8s\n" "$bin" "$ir" "$(awk -v a="$ir" -v b="$first" 'BEGIN { printf "%.3f", a / b }')"
done
