#!/usr/bin/env bash
# Render time for 1,000 custom resources (issue: operator): the operator's
# renderer on 800 QueuePolicies, 100 EgressPools and 100 EgressPaths
# (operator/benches/render.rs, median of 7).
#
# The peer, in the same run: Postfix's way of compiling routing policy for
# its daemons, postmap(1) building a hash: transport table with one entry per
# QueuePolicy-equivalent (1,000 destinations with their next hops), median
# of 7.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

scripts/install-deps
out=$(cargo bench -q -p sluice-operator --bench render 2>/dev/null)
echo "$out"
s_ms=$(awk '$1 == 1000 { sub("ms", "", $2); print $2 }' <<<"$out")

WORK=$(mktemp -d /var/tmp/sluice-render.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
for i in $(seq 0 999); do
  echo "domain-$i.example.com smtp:[mx-$i.example.net]:25"
done > "$WORK/transport"
times=()
for _ in $(seq 1 7); do
  rm -f "$WORK/transport.db"
  t0=$(date +%s%N)
  postmap "hash:$WORK/transport"
  t1=$(date +%s%N)
  times+=("$(( (t1 - t0) / 1000 ))")
done
p_ms=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", a[4] / 1000 }')
echo "postmap of a 1,000-entry transport table: $p_ms ms (median of 7)"
result "render 1,000 objects (vs postmap of 1,000 transport entries)" "$s_ms" "$p_ms" ms lower "Postfix postmap"
