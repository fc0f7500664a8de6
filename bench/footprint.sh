#!/usr/bin/env bash
# Memory per queued message (issue: end to end).
#
# sluice-mta: the queue engine holding MESSAGES (1,000,000) waiting messages
# over 100,000 scheduled queues, bodies and envelopes on the spool
# (mta/benches/queue_scale.rs): growth of resident memory per message.
#
# Postfix, in the same run, configured as ../shared/docs/postfix-peer.md
# says: the messages Postfix holds in memory are those of its active queue
# (qmgr_message_active_limit, 20,000). PF_MESSAGES are injected while the
# relay host accepts connections but never answers, so they stay active;
# growth of qmgr's resident memory per active message. (Postfix's deferred
# queue costs no memory at all, and no more than qmgr_message_active_limit
# messages are ever scheduled in memory.)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

MESSAGES=${MESSAGES:-1000000}
PF_MESSAGES=${PF_MESSAGES:-15000}
PORT=2525
RELAY=2600

scripts/install-deps
out=$(MESSAGES=$MESSAGES cargo bench -q -p sluice-mta --bench queue_scale 2>/dev/null)
echo "$out"
s_bytes=$(sed -n 's/.* \([0-9]*\) bytes per queued message.*/\1/p' <<<"$out")

WORK=$(mktemp -d /var/tmp/sluice-footprint.XXXXXX)
trap 'pkill -f "$WORK/blackhole.py" 2>/dev/null || true; stop_postfix; rm -rf "$WORK"' EXIT
cat > "$WORK/blackhole.py" <<PY
# accepts SMTP connections and never answers
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", $RELAY))
s.listen(4096)
held = []
while True:
    held.append(s.accept()[0])
PY
python3 "$WORK/blackhole.py" &
wait_port $RELAY
stop_postfix
configure_postfix
postfix start >/dev/null 2>&1
wait_port $PORT
qmgr_rss_kib() { ps -o rss= -C qmgr | awk '{ s += $1 } END { print s }'; }
before=$(qmgr_rss_kib)
/usr/sbin/smtp-source -d -s 50 -m "$PF_MESSAGES" -l 512 \
  -f sender@bench.local -t rcpt@example.com 127.0.0.1:$PORT
# wait until qmgr has moved every message into the active queue
for _ in $(seq 1 600); do
  active=$(find /var/spool/postfix/active -type f | wc -l)
  [ "$active" -ge "$PF_MESSAGES" ] && break
  sleep 0.1
done
sleep 2
after=$(qmgr_rss_kib)
p_bytes=$(( (after - before) * 1024 / active ))
echo "postfix: $active messages in the active queue; qmgr RSS $((before / 1024)) MiB -> $((after / 1024)) MiB, $p_bytes bytes per active message"
result "memory per queued message (1,000,000 queued)" "$s_bytes" "$p_bytes" bytes lower "Postfix qmgr, per active message"
