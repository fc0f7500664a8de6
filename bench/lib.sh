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

# Install the peers and tools, build the release sluice-mta; sets BIN.
build_mta() {
  scripts/install-deps
  cargo build --release -p sluice-mta -q
  BIN=${CARGO_TARGET_DIR:-target}/release/sluice-mta
}
