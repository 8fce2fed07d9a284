"""Adds up the 'N passed, N failed' lines that each test program prints
and prints the total as the last line. A test program that ended without
such a line counts as one failure. Exits non-zero when anything failed."""

import json
import re
import sys

LINE = re.compile(r"^(\d+) passed, (\d+) failed", re.MULTILINE)


def main(path):
    passed = failed = 0
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
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
