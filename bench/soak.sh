#!/usr/bin/env bash
# The soak (issue: reliability): N minutes (default 30) of mixed traffic into
# one release sluice-mta while faults are injected on a schedule (kill -9 and
# restart, good and broken reloads, a sink outage, the spool volume full, a
# memory burst inside a memory cgroup); then every message the MTA answered
# 250 is checked against the sinks and the log records. Prints the report
# (messages, faults, duplicates, RSS/fds/threads at start and end) and exits
# non-zero if a message was lost or reached the wrong fate, or the MTA died
# unasked (an OOM kill is restarted and counted). Root is needed
# (a tmpfs spool and a memory cgroup). Not part of CI; bench/soak.py says
# what the traffic and the faults are.
#
#   bench/soak.sh                   # 30 minutes
#   MINUTES=5 bench/soak.sh --every 20
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/soak.sh needs root (a tmpfs spool, a memory cgroup)" >&2; exit 1; }
source bench/lib.sh
build_mta
exec python3 bench/soak.py --bin "$(realpath "$BIN")" --minutes "${MINUTES:-30}" "$@"
