#!/bin/sh
# Runs one libFuzzer harness for a bounded time as a test case.
#
#   run_fuzzer.sh FUZZER CORPUS WORKDIR
#
# The fuzzer starts from the committed seeds in CORPUS and writes the
# inputs it finds to WORKDIR/corpus, so the committed corpus never changes.
# It runs for $FUZZ_SECONDS seconds (60 when unset). A crash, a sanitizer
# report, a leak or an input slower than 30 s fails the test, and the
# input that caused it is saved under WORKDIR/artifacts for replay:
#   FUZZER WORKDIR/artifacts/crash-...
# The last line reads "1 passed, 0 failed" or "0 passed, 1 failed".
set -u
fuzzer=$1 corpus=$2 work=$3
seconds=${FUZZ_SECONDS:-60}
name=$(basename "$fuzzer")

mkdir -p "$work/corpus" "$work/artifacts"
log="$work/fuzz.log"
"$fuzzer" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
  "$work/corpus" "$corpus" >"$log" 2>&1
status=$?

# The whole log has a line per new input, so only the start, the end and
# the counts are shown, or everything after the first report on failure.
executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
if [ "$status" -eq 0 ]; then
  grep -m 3 -E '^INFO: (Seed|seed corpus)|INITED' "$log"
  grep -E '^(#[0-9]+ +DONE|stat::)' "$log"
  echo "$name: ${executed:-0} inputs in $seconds s, corpus of" \
    "$(ls "$work/corpus" | wc -l) found and $(ls "$corpus" | wc -l) seed inputs"
  echo "1 passed, 0 failed"
else
  sed -n '/^==[0-9]*==\|^INFO: a leak\|ERROR:\|runtime error\|^SUMMARY/,$p' \
    "$log" | head -n 200
  echo "$name: failed with status $status after ${executed:-?} inputs;" \
    "artifacts in $work/artifacts, full log in $log"
  echo "0 passed, 1 failed"
fi
exit "$status"
