#!/bin/sh
# Sets up, builds and runs every test in four builds, in this order:
#
#   normal  build/       the whole suite: C unit tests, the stand-in's
#                        self-test and the integration tests that mount
#                        asanafs against the stand-in on loopback
#   asan    build-asan/  the whole suite again with AddressSanitizer,
#                        LeakSanitizer and UndefinedBehaviorSanitizer
#   tsan    build-tsan/  the unit and integration tests with
#                        ThreadSanitizer
#   fuzz    build-fuzz/  each libFuzzer harness in fuzz/ for $FUZZ_SECONDS
#                        seconds (60 when unset), built with clang, ASan and
#                        UBSan
#
# Each phase prints its wall time. A sanitizer report of any process of a
# run, including an asanafs that ran in the background of an integration
# test, is written under BUILD/sanitizer/ and fails the run: each report
# counts as one failed test case. The last line reads "N passed, N failed"
# and counts test cases over all phases; a fuzzer run counts as one.
#
# TEST_PHASES picks phases, such as TEST_PHASES="normal asan". Arguments,
# such as a test name, go to the `meson test` calls of normal and asan.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
phases=${TEST_PHASES:-normal asan tsan fuzz}
logs=""
report_dirs=""
broken=""
times=""
status=0

sh tools/setup.sh || exit 1

# Configures DIR with $CC and the meson arguments that follow, and builds
# it. A folder configured otherwise is set up again from scratch. A failed
# build counts as one failed test case.
build() {
  dir=$1
  shift
  stamp="CC=${CC:-} $*"
  if [ ! -f "$dir/build.ninja" ] ||
    [ "$(cat "$dir/test-setup" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$dir"
    meson setup "$dir" "$@" && echo "$stamp" >"$dir/test-setup"
  fi
  if [ -f "$dir/test-setup" ] && ninja -C "$dir"; then
    return 0
  fi
  broken="$broken --broken $dir"
  return 1
}

# Runs `meson test` in DIR with the given arguments, its log named LOGBASE.
# A log that is missing afterwards counts as a failure in the summary.
run_tests() {
  dir=$1 logbase=$2
  shift 2
  logs="$logs $dir/meson-logs/$logbase.json"
  rm -f "$dir/meson-logs/$logbase.json" "$dir/reliability.jsonl"
  meson test -C "$dir" --print-errorlogs --num-processes 1 \
    --logbase "$logbase" "$@" || status=1
}

# Empties DIR/sanitizer and points every sanitizer's reports there.
sanitizer_reports() {
  reports="$top/$1/sanitizer"
  rm -rf "$reports"
  mkdir -p "$reports"
  report_dirs="$report_dirs --reports $reports"
  export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:log_path=$reports/report"
  export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$reports/report"
  export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1:log_path=$reports/report:suppressions=$top/tools/tsan.supp"
}

phase_normal() {
  run_tests build testlog "$@"
  python3 tools/reliability-report.py build/reliability.jsonl \
    >build/RELIABILITY.md
}

# clang, because with gcc 12 UBSan ignores log_path next to ASan and
# prints to stderr, where the output of a background asanafs is lost.
phase_asan() {
  CC=clang build build-asan -Db_sanitize=address,undefined \
    -Db_lundef=false -Dc_args=-fno-sanitize-recover=all || return 1
  sanitizer_reports build-asan
  run_tests build-asan testlog "$@"
}

# The unit and integration suites, whose threads share the client, the
# cache and the registry. libfuse is not built with ThreadSanitizer, so a
# race inside libfuse goes unseen, but its locks and threads go through
# the intercepted pthread calls.
phase_tsan() {
  build build-tsan -Db_sanitize=thread || return 1
  sanitizer_reports build-tsan
  run_tests build-tsan testlog --suite unit --suite integration
}

phase_fuzz() {
  CC=clang build build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dc_args=-fno-sanitize-recover=all || return 1
  # libFuzzer prints its findings into each test's output.
  unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS
  export FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
  run_tests build-fuzz testlog --suite fuzz
  grep -h "inputs in" build-fuzz/meson-logs/testlog.txt
}

for phase in $phases; do
  start=$(date +%s)
  echo "=== $phase"
  "phase_$phase" "$@" || status=1
  elapsed=$(($(date +%s) - start))
  echo "=== $phase took $elapsed s"
  times="$times $phase=${elapsed}s"
done
unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS

echo "phase times:$times"
# shellcheck disable=SC2086
python3 tests/summarize.py $logs $report_dirs $broken || status=1
exit "$status"
