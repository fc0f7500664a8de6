#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for N minutes each with
# cargo-fuzz on the nightly toolchain, two at a time, growing the corpora
# in fuzz/corpus/ by merging (they gain only inputs that add coverage).
# Not part of CI: the ordinary tests replay the corpora
# (tests/tests/fuzz_corpus.rs).
#
#   bench/fuzz.sh              # every target, 10 minutes each
#   MINUTES=1 bench/fuzz.sh smtp_command spool_scan
#   NO_BUILD=1 JOBS=1 bench/fuzz.sh   # the binaries as built, one core
#
# Prints, per target: executions, coverage (libFuzzer's cov/ft) and
# crashes; a crash's input is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
minutes=${MINUTES:-10}
seconds=${SECONDS_EACH:-$((minutes * 60))}
jobs=${JOBS:-2}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is needed: cargo install cargo-fuzz" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/sluice-fuzz-target}"
logs=$(mktemp -d /var/tmp/sluice-fuzz.XXXXXX)
# crashes are counted from this run only (artifacts/ keeps earlier ones)
touch "$logs/start"
if [ -z "${NO_BUILD:-}" ]; then
  for t in "${targets[@]}"; do
    cargo +nightly fuzz build -O "$t" >&2
  done
fi

bin_dir="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"

# the binaries run directly (not through cargo fuzz run), so that editing
# the tree meanwhile neither rebuilds them nor changes what is fuzzed
run() {
  local t=$1 new="$logs/$1.new"
  mkdir -p "corpus/$t" "$new" "artifacts/$t"
  "$bin_dir/$t" "$new" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time=$seconds -rss_limit_mb=4096 -timeout=30 \
    -print_final_stats=1 >"$logs/$t.log" 2>&1 || true
  # the corpus gains only the new inputs that add coverage; its seeds stay
  # (a crash met while merging goes to artifacts/ too, not the working directory)
  "$bin_dir/$t" -merge=1 -artifact_prefix="artifacts/$t/" "corpus/$t" "$new" \
    >"$logs/$t.merge.log" 2>&1 || true
}

running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

printf '%-15s %12s %8s %8s %8s %s\n' target executions exec/s cov ft crashes
for t in "${targets[@]}"; do
  log="$logs/$t.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  crashes=$(find "artifacts/$t" -type f -newer "$logs/start" 2>/dev/null | wc -l)
  printf '%-15s %12s %8s %8s %8s %s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:-0}" "${ft:-0}" "$crashes"
done
echo "logs: $logs" >&2
