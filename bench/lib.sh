# Shared helpers for the benchmark scripts (sourced, not run).

# Wait until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && { exec 3>&- 3<&-; return 0; }
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# Busy CPU time of the whole machine so far, in milliseconds.
machine_busy_ms() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { print int(($2+$3+$4+$7+$8) * 1000 / hz) }' /proc/stat
}

# Configure Postfix as ../shared/docs/postfix-peer.md describes: smtpd on
# 127.0.0.1:2525, relaying to [127.0.0.1]:2600, no DNS, no TLS, no chroot.
configure_postfix() {
  cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
  postconf -e "myhostname = bench.local" "mydomain = bench.local" "myorigin = \$myhostname" \
    "mydestination =" "local_recipient_maps =" "local_transport = error:local delivery disabled" \
    "inet_interfaces = loopback-only" "inet_protocols = ipv4" "mynetworks = 127.0.0.0/8" \
    "relayhost = [127.0.0.1]:2600" "smtp_host_lookup = native" \
    "smtp_dns_support_level = disabled" "default_process_limit = 250" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" "smtpd_recipient_restrictions =" \
    "alias_maps =" "alias_database =" "maillog_file = /var/log/postfix.log" "biff = no" \
    "smtp_tls_security_level = none" "smtpd_tls_security_level = none"
  postconf -M# smtp/inet 2>/dev/null || true
  postconf -Me "127.0.0.1:2525/inet = 127.0.0.1:2525 inet n - n - - smtpd"
  postconf -F '*/*/chroot = n'
  postfix check
}

stop_postfix() {
  postfix stop >/dev/null 2>&1 || true
  postsuper -d ALL >/dev/null 2>&1 || true
  postsuper -d ALL hold >/dev/null 2>&1 || true
}

# One row of the summary table bench/run prints (a no-op when a script runs
# alone): result <what> <sluice> <peer> <unit> <higher|lower is better> <peer name>
result() {
  [ -n "${RESULTS:-}" ] || return 0
  printf '%s|%s|%s|%s|%s|%s\n' "$@" >> "$RESULTS"
}

# The relay benchmarks' policy, as $1/policy.lua: spool and logs under $1,
# a listener on 127.0.0.1:$2, everything relayed to [127.0.0.1]:$3, and
# max_ready = 20000 (relay.sh says why). Optional: $4 more Lua in init, $5
# more queue config keys, $6 more egress path keys.
write_relay_policy() {
  local dir=$1 port=$2 sink=$3 init=${4:-} queue=${5:-} path=${6:-}
  cat > "$dir/policy.lua" <<LUA
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '$dir/spool' }
  kumo.define_spool { name = 'meta', path = '$dir/spool' }
  kumo.configure_local_logs { log_dir = '$dir/logs' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:$port' }
  $init
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { smtp = { mx_list = { '[127.0.0.1]:$sink' } } }, $queue }
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path { prohibited_hosts = {}, enable_tls = 'Disabled', max_ready = 20000, $path }
end)
LUA
}

# Start a Redis on 127.0.0.1:$1 with password $2, no persistence; sets
# REDIS_PID.
start_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --requirepass "$2" --save '' --appendonly no \
    --dir /tmp >/dev/null 2>&1 &
  REDIS_PID=$!
  wait_port "$1"
}

# Install the peers and tools, build the release sluice-mta; sets BIN.
# SLUICE_MTA=path runs that binary instead (an A/B of two builds)
build_mta() {
  scripts/install-deps
  if [ -n "${SLUICE_MTA:-}" ]; then
    BIN=$SLUICE_MTA
    return
  fi
  cargo build --release -p sluice-mta -q
  BIN=${CARGO_TARGET_DIR:-target}/release/sluice-mta
}

# One relay run of $COUNT messages of $1 bytes over $2 sessions from
# smtp-source into whatever listens on $PORT, to an smtp-sink on $SINK;
# prints "rate cpu_ms_per_msg" (machine busy time less the source's and
# the sink's). Uses $WORK for the time files.
relay() {
  local size=$1 sessions=$2 busy0 busy1 t0 t1 other
  /usr/bin/time -f "%U %S" -o "$WORK/sink.time" \
    /usr/sbin/smtp-sink -u nobody -M "$COUNT" 127.0.0.1:$SINK 1024 >/dev/null 2>&1 &
  local sink=$!
  wait_port $SINK
  busy0=$(machine_busy_ms)
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$WORK/src.time" \
    /usr/sbin/smtp-source -d -s "$sessions" -m "$COUNT" -l "$size" \
      -f sender@bench.local -t rcpt@example.com 127.0.0.1:$PORT
  wait "$sink"
  t1=$(date +%s.%N)
  busy1=$(machine_busy_ms)
  other=$(cat "$WORK/src.time" "$WORK/sink.time" | awk '{ s += ($1 + $2) * 1000 } END { print int(s) }')
  awk -v n="$COUNT" -v t0="$t0" -v t1="$t1" -v b="$((busy1 - busy0 - other))" \
    'BEGIN { printf "%.0f %.2f\n", n / (t1 - t0), b / n }'
}
