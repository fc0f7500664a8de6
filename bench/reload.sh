#!/usr/bin/env bash
# Reload-to-applied (issue: end to end): how long after a routing change the
# next message follows it. Two smtp-sinks, A and B; the MTA relays to one;
# the route is switched to the other and probe messages (one every 20 ms,
# bench/reload_probe.py) show when the change took effect. RUNS switches
# each, median reported.
#
# * sluice-mta, explicit: the policy module route.lua rewritten, then
#   POST /api/admin/bump-config-epoch (what `postfix reload` is to Postfix).
# * sluice-mta, watched: route.lua rewritten, nothing else; the policy
#   directory is checked every second (--reload-interval 1s; the chart's
#   default is 5 s, and the kubelet's own ConfigMap sync comes before it).
# * Postfix (peer, ../shared/docs/postfix-peer.md): `postconf -e relayhost=`
#   then `postfix reload`.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

RUNS=${RUNS:-5}
PORT=2525
ADMIN=8000
SINK_A=2600
SINK_B=2601

build_mta

WORK=$(mktemp -d /var/tmp/sluice-reload.XXXXXX)
chmod 755 "$WORK" # smtp-sink writes as nobody
trap 'pkill -f "$WORK/" 2>/dev/null || true; pkill -f "smtp-sink.*:260[01]" 2>/dev/null || true; stop_postfix; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT

for port in $SINK_A $SINK_B; do
  mkdir -p "$WORK/sink-$port" && chmod 777 "$WORK/sink-$port"
  /usr/sbin/smtp-sink -u nobody -d "$WORK/sink-$port/%s." 127.0.0.1:$port 256 >/dev/null 2>&1 &
  wait_port $port
done

mkdir -p "$WORK/policy"
cat > "$WORK/policy/init.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$WORK/spool' }
  kumo.define_spool { name = 'meta', path = '$WORK/spool' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:$PORT' }
  kumo.start_http_listener { listen = '127.0.0.1:$ADMIN' }
end)
local route = require 'route'
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    refresh_strategy = 'Epoch',
    protocol = { smtp = { mx_list = { '[127.0.0.1]:' .. route.port } } },
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path { prohibited_hosts = {}, enable_tls = 'Disabled', refresh_strategy = 'Epoch' }
end)
LUA
route() { echo "return { port = $1 }" > "$WORK/policy/route.lua.tmp" && mv "$WORK/policy/route.lua.tmp" "$WORK/policy/route.lua"; }

# switch the route RUNS times with "$@" after each change; the median delay
measure() { # $1: how to switch (a function taking the new port), rest: probe args
  local switch=$1 to t0
  shift
  local times=()
  for i in $(seq 1 "$RUNS"); do
    to=$(( i % 2 == 1 ? SINK_B : SINK_A ))
    rm -f "$WORK/sink-$to"/*
    t0=$(date +%s.%N)
    "$switch" "$to"
    times+=("$(python3 bench/reload_probe.py --port $PORT --t0 "$t0" --arrived "$WORK/sink-$to" "$@")") \
      || { echo "switch $i to $to: no probe arrived" >&2; exit 1; }
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f", a[int((NR + 1) / 2)] }'
}

sluice_switch() { route "$1"; }
postfix_switch() { postconf -e "relayhost = [127.0.0.1]:$1"; postfix reload >/dev/null 2>&1; }

start_sluice() { # $1: reload interval
  route $SINK_A
  rm -rf "$WORK/spool"
  RUST_LOG=warn "$BIN" --policy "$WORK/policy/init.lua" --reload-interval "$1" 2>>"$WORK/sluice.err" &
  pid=$!
  wait_port $PORT
}
# explicit reloads only: the watcher is as good as off
start_sluice 1h
explicit=$(measure sluice_switch --bump "http://127.0.0.1:$ADMIN/api/admin/bump-config-epoch")
kill "$pid"; wait "$pid" 2>/dev/null || true
start_sluice 1s
watched=$(measure sluice_switch)
kill "$pid"; wait "$pid" 2>/dev/null || true

stop_postfix
configure_postfix
postconf -e "relayhost = [127.0.0.1]:$SINK_A"
postfix start >/dev/null 2>&1
wait_port $PORT
pf=$(measure postfix_switch)
stop_postfix

echo "reload-to-applied, median of $RUNS switches (seconds):"
echo "  sluice-mta, bump-config-epoch  $explicit"
echo "  sluice-mta, watched (1 s)      $watched"
echo "  postfix reload                 $pf"
to_ms() { awk -v s="$1" 'BEGIN { printf "%.0f", s * 1000 }'; }
result "reload to applied, explicit reload" "$(to_ms "$explicit")" "$(to_ms "$pf")" ms lower "postfix reload"
result "reload to applied, file watched every 1 s" "$(to_ms "$watched")" "$(to_ms "$pf")" ms lower "postfix reload"
