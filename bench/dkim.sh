#!/usr/bin/env bash
# DKIM signing benchmark (issue 19): the relay of bench/relay.sh —
# smtp-source -> MTA -> smtp-sink, COUNT messages of SIZE bytes over SESSIONS
# sessions — with every message DKIM-signed on the way, in one run:
#
#   sluice-mta unsigned, signing RSA-2048, signing Ed25519 (msg:dkim_sign in
#   smtp_server_message_received, relaxed/relaxed, five headers);
#   Postfix unsigned, and Postfix signing RSA-2048 through the OpenDKIM
#   milter (Debian's opendkim, set up as its README and opendkim.conf(5)
#   say: Mode s, Domain/Selector/KeyFile, an inet Socket named in
#   smtpd_milters, milter_default_action = tempfail so that a milter
#   failure never sends mail unsigned).
#
# Before the timed runs each signing setup relays one message to a dumping
# sink, and the run stops unless that message carries a DKIM-Signature
# (a signer that quietly does nothing would look fast).
#
# Prints messages/s and CPU ms per relayed message (machine busy time less
# smtp-source's and smtp-sink's; OpenDKIM's CPU counts for Postfix).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

COUNT=${COUNT:-20000}
SIZE=${SIZE:-2048}
SESSIONS=${SESSIONS:-50}
PORT=2525
SINK=2600
MILTER=8891

build_mta

WORK=$(mktemp -d /var/tmp/sluice-dkim.XXXXXX)
chmod 755 "$WORK"
# OpenDKIM refuses a configuration or key under a directory others may
# write (/var/tmp is one): its files live in a root-owned one
SAFE=$(mktemp -d /var/lib/sluice-dkim.XXXXXX)
chmod 755 "$SAFE"
cleanup() {
  pkill -f "$WORK/policy" 2>/dev/null || true
  pkill -f "smtp-sink.*:$SINK" 2>/dev/null || true
  pkill -f "opendkim -x $SAFE" 2>/dev/null || true
  postconf -e "smtpd_milters =" "non_smtpd_milters =" 2>/dev/null || true
  stop_postfix
  rm -rf "$WORK" "$SAFE"
}
trap cleanup EXIT

openssl genrsa -traditional -out "$WORK/rsa.pem" 2048 2>/dev/null
openssl genpkey -algorithm ed25519 -out "$WORK/ed.pem"

# $1: the signer constructor, $2 the key; empty for unsigned
sluice_policy() {
  local name=$WORK/policy-${1:-none}.lua
  write_relay_policy "$WORK" "$PORT" "$SINK"
  mv "$WORK/policy.lua" "$name"
  if [ -n "${1:-}" ]; then
    cat >> "$name" <<LUA
kumo.on('smtp_server_message_received', function(msg)
  msg:dkim_sign(kumo.dkim.$1 {
    domain = 'bench.local', selector = 's1', key = '$2',
    headers = { 'From', 'To', 'Subject', 'Date', 'Message-ID' },
    header_canonicalization = 'Relaxed', body_canonicalization = 'Relaxed',
  })
end)
LUA
  fi
  echo "$name"
}

start_sluice() {
  rm -rf "$WORK/spool" "$WORK/logs"
  RUST_LOG=warn "$BIN" --policy "$1" 2>"$WORK/sluice.log" &
  MTA_PID=$!
  wait_port $PORT
}

stop_sluice() {
  kill "$MTA_PID"
  wait "$MTA_PID" 2>/dev/null || true
}

start_opendkim() {
  install -o opendkim -g opendkim -m 0600 "$WORK/rsa.pem" "$SAFE/opendkim.key"
  cat > "$SAFE/opendkim.conf" <<CONF
Mode                s
Domain              bench.local
Selector            s1
KeyFile             $SAFE/opendkim.key
Canonicalization    relaxed/relaxed
SignHeaders         From,To,Subject,Date,Message-ID
Socket              inet:$MILTER@127.0.0.1
UserID              opendkim
Syslog              no
CONF
  opendkim -x "$SAFE/opendkim.conf" -f &
  DKIM_PID=$!
  wait_port $MILTER
}

stop_opendkim() {
  kill "$DKIM_PID" 2>/dev/null || true
  wait "$DKIM_PID" 2>/dev/null || true
}

# $1 = milter or empty
start_postfix() {
  stop_postfix
  configure_postfix
  if [ -n "${1:-}" ]; then
    postconf -e "smtpd_milters = inet:127.0.0.1:$MILTER" "non_smtpd_milters =" \
      "milter_default_action = tempfail" "milter_protocol = 6"
  fi
  postfix start >/dev/null 2>&1
  wait_port $PORT
}

# Relay one message to a sink that dumps it; fail unless it was signed.
assert_signs() {
  local what=$1 dump=$WORK/dump
  rm -rf "$dump"
  mkdir -p "$dump"
  chown nobody "$dump"
  /usr/sbin/smtp-sink -u nobody -d "$dump/%s." -M 1 127.0.0.1:$SINK 16 >/dev/null 2>&1 &
  local sink=$!
  wait_port $SINK
  /usr/sbin/smtp-source -m 1 -l "$SIZE" -f sender@bench.local -t rcpt@example.com \
    127.0.0.1:$PORT
  wait "$sink"
  if ! cat "$dump"/* | grep -q '^DKIM-Signature:'; then
    echo "dkim.sh: $what relayed a message without a DKIM-Signature" >&2
    exit 1
  fi
}

run_sluice() {
  local policy
  policy=$(sluice_policy "$@")
  start_sluice "$policy"
  [ -z "${1:-}" ] || assert_signs "sluice-mta $1"
  relay "$SIZE" "$SESSIONS"
  stop_sluice
}

run_postfix() {
  [ -z "${1:-}" ] || start_opendkim
  start_postfix "${1:-}"
  [ -z "${1:-}" ] || assert_signs "Postfix + OpenDKIM"
  relay "$SIZE" "$SESSIONS"
  stop_postfix
  [ -z "${1:-}" ] || stop_opendkim
  postconf -e "smtpd_milters =" >/dev/null
}

echo "dkim: $COUNT messages of $SIZE bytes, $SESSIONS sessions, smtp-source -> MTA -> smtp-sink"
printf "%-32s %10s %12s\n" "server" "msgs/s" "cpu ms/msg"
declare -A rate cpu
for case in sluice-none sluice-rsa sluice-ed postfix-none postfix-rsa; do
  case $case in
    sluice-none) run_sluice > "$WORK/out" ;;
    sluice-rsa) run_sluice rsa_sha256_signer "$WORK/rsa.pem" > "$WORK/out" ;;
    sluice-ed) run_sluice ed25519_signer "$WORK/ed.pem" > "$WORK/out" ;;
    postfix-none) run_postfix > "$WORK/out" ;;
    postfix-rsa) run_postfix milter > "$WORK/out" ;;
  esac
  read -r "rate[$case]" "cpu[$case]" < "$WORK/out"
  printf "%-32s %10s %12s\n" "$case" "${rate[$case]}" "${cpu[$case]}"
done
awk -v s="${rate[sluice-rsa]}" -v p="${rate[postfix-rsa]}" \
  'BEGIN { printf "RSA-2048 signing: sluice-mta %.2fx Postfix+OpenDKIM\n", s / p }'
result "relay signing RSA-2048, $((SIZE / 1024)) KB" "${rate[sluice-rsa]}" "${rate[postfix-rsa]}" \
  "msg/s" higher "Postfix+OpenDKIM"
result "CPU per message signing RSA-2048" "${cpu[sluice-rsa]}" "${cpu[postfix-rsa]}" \
  "ms" lower "Postfix+OpenDKIM"
result "relay signing Ed25519, $((SIZE / 1024)) KB" "${rate[sluice-ed]}" "${rate[postfix-rsa]}" \
  "msg/s" higher "Postfix+OpenDKIM (RSA)"
result "relay unsigned, $((SIZE / 1024)) KB (same run)" "${rate[sluice-none]}" "${rate[postfix-none]}" \
  "msg/s" higher Postfix
