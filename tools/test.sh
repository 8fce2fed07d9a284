#!/bin/sh
# Sets up, builds and runs every test: C unit tests and the integration
# tests that mount asanafs against the stand-in API on loopback. Ends with
# a line "N passed, N failed" that counts test cases across all suites.
set -u
cd "$(dirname "$0")/.."

sh tools/setup.sh || exit 1
rm -f build/reliability.jsonl
meson test -C build --print-errorlogs --num-processes 1 "$@"
status=$?
python3 tools/reliability-report.py build/reliability.jsonl > build/RELIABILITY.md
python3 tests/summarize.py build/meson-logs/testlog.json
summary=$?
[ "$status" -eq 0 ] && [ "$summary" -eq 0 ]
