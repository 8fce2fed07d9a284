#!/usr/bin/env python3
"""Render the reliability table that the integration tests recorded.

Reads the JSON lines that harness.record_trials() appends (one row per case:
area, case, trials, failures, result, test) and writes docs/RELIABILITY.md
as Markdown to stdout: one table per area, totals per area and overall, the
date, the commit, and the commands that rerun the suite.

    sh tools/test.sh
    python3 tools/reliability-report.py build/reliability.jsonl > docs/RELIABILITY.md

Exits with status 1 when the file is missing, empty or holds a malformed
row, so that a broken run never produces an empty report.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

# Areas appear in this order; others follow in alphabetical order.
AREA_ORDER = ("fault", "bad input", "security")
AREA_TITLES = {
    "fault": "Faults to survive",
    "bad input": "Bad input",
    "security": "Security",
}
FIELDS = ("area", "case", "trials", "failures", "result")

INTRO = """\
# Reliability

asanafs is meant to run unattended under cron jobs and backups, so a
network fault, a crash or a strange reply must not cost data, hang a shell
or kill the mount. Each row below is one automated test in
`tests/integration/` that mounts the real filesystem against the local
stand-in of the Asana API and tries one fault or input many times. A trial
fails when a user would have seen something wrong: a byte that differs from
the source, a read that never returns or returns too late, a lost mount, an
extra export, or a leaked token. Random offsets and choices come from a
seed that each test prints (see `build/meson-logs/testlog.txt`), and
`ASANAFS_TEST_SEED=N` replays them.
"""


def load_rows(path):
    """Returns the rows of PATH; raises ValueError on a malformed line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError("%s:%d: invalid JSON: %s" % (path, number, error))
            missing = [name for name in FIELDS if name not in row]
            if missing:
                raise ValueError("%s:%d: missing %s" % (path, number, ", ".join(missing)))
            for name in ("trials", "failures"):
                if not isinstance(row[name], int) or row[name] < 0:
                    raise ValueError("%s:%d: %s must be a count, got %r"
                                     % (path, number, name, row[name]))
            rows.append(row)
    return rows


def area_key(area):
    if area in AREA_ORDER:
        return (AREA_ORDER.index(area), area)
    return (len(AREA_ORDER), area)


def cell(text):
    """Escapes TEXT for one cell of a Markdown table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def git_commit(root):
    """Returns the short commit of ROOT, marked when the tree has changes."""
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                 "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if status.strip() else "")


def render(rows, commit, date):
    areas = {}
    for row in rows:
        areas.setdefault(row["area"], []).append(row)

    out = [INTRO]
    out.append("Produced by `tools/reliability-report.py` from the run of %s at "
               "commit `%s`.\n" % (date, commit))

    totals = []
    for area in sorted(areas, key=area_key):
        area_rows = areas[area]
        trials = sum(r["trials"] for r in area_rows)
        failures = sum(r["failures"] for r in area_rows)
        totals.append((area, len(area_rows), trials, failures))
        out.append("## %s\n" % AREA_TITLES.get(area, area.capitalize()))
        out.append("| case | trials | failures | result | test |")
        out.append("| --- | ---: | ---: | --- | --- |")
        for r in area_rows:
            out.append("| %s | %d | %d | %s | `%s` |" % (
                cell(r["case"]), r["trials"], r["failures"], cell(r["result"]),
                cell(r.get("test", ""))))
        out.append("| **total** | **%d** | **%d** | | |\n" % (trials, failures))

    out.append("## Totals\n")
    out.append("| area | cases | trials | failures |")
    out.append("| --- | ---: | ---: | ---: |")
    for area, cases, trials, failures in totals:
        out.append("| %s | %d | %d | %d |" % (cell(area), cases, trials, failures))
    out.append("| **all** | **%d** | **%d** | **%d** |\n" % (
        sum(t[1] for t in totals), sum(t[2] for t in totals),
        sum(t[3] for t in totals)))

    out.append("""## Rerun it

As root, with `/dev/fuse` (the tests mount FUSE filesystems and a tmpfs):

```sh
sh tools/test.sh        # writes build/reliability.jsonl and build/RELIABILITY.md
python3 tools/reliability-report.py build/reliability.jsonl > docs/RELIABILITY.md
```

One test file alone, replaying a seed:

```sh
ASANAFS_TEST_SEED=N ASANAFS_RELIABILITY_LOG=/tmp/rows.jsonl \\
    python3 tests/integration/test_reliability.py
```
""")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Render the reliability table recorded by the integration "
                    "tests as Markdown on stdout.")
    parser.add_argument("jsonl", help="rows written by harness.record_trials(), "
                                      "such as build/reliability.jsonl")
    parser.add_argument("--commit", help="commit to name (default: git rev-parse "
                                         "of this repository)")
    parser.add_argument("--date", help="date of the run (default: the file's "
                                       "modification time, in UTC)")
    args = parser.parse_args(argv)

    try:
        rows = load_rows(args.jsonl)
        modified = os.path.getmtime(args.jsonl)
    except (OSError, ValueError) as error:
        print("reliability-report: %s" % error, file=sys.stderr)
        return 1
    if not rows:
        print("reliability-report: %s holds no rows; run sh tools/test.sh first"
              % args.jsonl, file=sys.stderr)
        return 1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = args.commit or git_commit(root)
    date = args.date or datetime.datetime.fromtimestamp(
        modified, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sys.stdout.write(render(rows, commit, date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
