"""Adds up the 'N passed, N failed' lines that each test program prints
and prints the total as the last line.

    summarize.py TESTLOG.json... [--reports DIR]... [--broken BUILD]...

Each TESTLOG.json is a log of `meson test`; a missing one counts as one
failure. A test program that ended without such a line counts as one
failure. Every file in a --reports folder is a sanitizer report: it is
printed and counts as one failure. Each --broken BUILD is a build that
failed and counts as one failure. Exits non-zero when anything failed."""

import argparse
import json
import os
import re
import sys

LINE = re.compile(r"^(\d+) passed, (\d+) failed", re.MULTILINE)
REPORT_LINES = 60


def count_log(path):
    """Returns (passed, failed) of one meson test log."""
    passed = failed = 0
    if not os.path.exists(path):
        print("%s: missing, so its tests did not run" % path)
        return 0, 1
    with open(path) as f:
        for row in f:
            test = json.loads(row)
            output = (test.get("stdout") or "") + (test.get("stderr") or "")
            found = LINE.findall(output)
            if found:
                passed += int(found[-1][0])
                failed += int(found[-1][1])
            if test.get("result") != "OK" and (not found or not int(found[-1][1])):
                print("%s: %s without a failed test case" % (test["name"],
                                                            test["result"]))
                failed += 1
    print("%s: %d passed, %d failed" % (path, passed, failed))
    return passed, failed


def count_reports(folder):
    """Prints each sanitizer report in FOLDER and returns their count."""
    if not os.path.isdir(folder):
        return 0
    names = sorted(os.listdir(folder))
    for name in names:
        path = os.path.join(folder, name)
        print("sanitizer report %s:" % path)
        with open(path, errors="replace") as f:
            lines = f.readlines()
        sys.stdout.write("".join("    " + line for line in lines[:REPORT_LINES]))
        if len(lines) > REPORT_LINES:
            print("    ... %d more lines" % (len(lines) - REPORT_LINES))
    return len(names)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--reports", action="append", default=[])
    parser.add_argument("--broken", action="append", default=[])
    args = parser.parse_args()

    passed = failed = 0
    for path in args.logs:
        log_passed, log_failed = count_log(path)
        passed += log_passed
        failed += log_failed
    for folder in args.reports:
        failed += count_reports(folder)
    for build in args.broken:
        print("%s: the build failed, so its tests did not run" % build)
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
