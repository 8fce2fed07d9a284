"""Repeated trials for the reliability tests: a replayable seed, a counter
of trials and failures that records one row of the reliability table, and
helpers that look at processes and mounts the way a user would.

Every random choice comes from SEED, which the tests print. Set
ASANAFS_TEST_SEED to that number to replay a failed run.
"""

import os
import random
import signal
import subprocess
import time

from harness import ORG, record_trials

SEED = int(os.environ.get("ASANAFS_TEST_SEED") or time.time_ns() % 1000000007)


def rng_for(test):
    """Returns a random generator for one test, derived from SEED and the
    test's name so that tests do not shift each other's choices."""
    print("seed=%d for %s (rerun with ASANAFS_TEST_SEED=%d)"
          % (SEED, test.id(), SEED), flush=True)
    return random.Random("%d:%s" % (SEED, test.id()))


class Trials:
    """Counts the trials of one case and records them once at the end.

    Each trial is a function that raises AssertionError (or OSError, or a
    subprocess error) when it goes wrong. A failed trial does not stop the
    others, so the row counts every failure; finish() then fails the test
    with the first few messages."""

    def __init__(self, test, case, area="fault"):
        self.test = test
        self.case = case
        self.area = area
        self.count = 0
        self.failures = []

    def run(self, label, trial):
        self.count += 1
        try:
            trial()
        except (AssertionError, OSError, subprocess.SubprocessError) as error:
            message = "trial %d (%s): %s" % (self.count, label, error)
            print(message, flush=True)
            self.failures.append(message)

    def finish(self, result):
        if self.failures:
            result = "%d of %d failed: %s" % (len(self.failures), self.count,
                                              self.failures[0][:200])
        record_trials(self.area, self.case, self.count, len(self.failures),
                      result)
        self.test.assertEqual(self.failures, [],
                              "%s (seed %d)" % (self.case, SEED))


def process_state(pid):
    """Returns the one-letter state of PID from /proc/PID/stat ('R', 'S',
    'D', ...), or None once the process is gone or reaped."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    # The command name in brackets may hold spaces; the state follows it.
    return text[text.rindex(")") + 2]


def kernel_stack(pid):
    """Returns the kernel stack of PID as one line of function names, or ''
    where /proc/PID/stack cannot be read (it needs root)."""
    try:
        with open("/proc/%d/stack" % pid) as f:
            lines = f.read().split("\n")
    except OSError:
        return ""
    return " < ".join(line.split()[-1].split("+")[0] for line in lines if line)


class Watch:
    """What watch() saw of one process: the seconds it took (None when it
    was still running at the limit), every state it was seen in, and the
    kernel stacks of the samples in uninterruptible sleep ('D')."""

    def __init__(self):
        self.seconds = None
        self.states = set()
        self.d_stacks = []
        self.longest_d = 0.0


def watch(proc, limit):
    """Waits up to LIMIT seconds for PROC to exit, sampling its state every
    50 ms. A process still running after LIMIT is killed. Returns a Watch."""
    seen = Watch()
    began = time.monotonic()
    d_since = None
    while proc.poll() is None:
        now = time.monotonic()
        state = process_state(proc.pid)
        if state is not None:
            seen.states.add(state)
        if state == "D":
            seen.d_stacks.append(kernel_stack(proc.pid))
            d_since = now if d_since is None else d_since
            seen.longest_d = max(seen.longest_d, now - d_since)
        else:
            d_since = None
        if now - began > limit:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return seen
        time.sleep(0.05)
    seen.seconds = time.monotonic() - began
    return seen


def in_mountinfo(path):
    """Returns True while PATH is a mount point in /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4] == path:
                return True
    return False


def adopt_export(test, mount, archive, state="finished"):
    """Makes an export in the stand-in and adopts it with mkdir; returns
    its gid and the path of its export.json."""
    gid = test.standin.create_export(state=state, archive=archive)["gid"]
    os.mkdir(mount.p("orgs", ORG, "exports", gid))
    return gid, mount.p("orgs", ORG, "exports", gid, "export.json")


def forget_export(mount, gid):
    """Drops an export's cached data with rmdir and adopts it again, so
    that the next read downloads it anew. Stats export.json afterwards, so
    that its size is known before a test switches a download fault on."""
    folder = mount.p("orgs", ORG, "exports", gid)
    os.rmdir(folder)
    os.mkdir(folder)
    os.stat(os.path.join(folder, "export.json"))


def inflate(archive, out_path):
    """Writes the inflated ARCHIVE to OUT_PATH, as gzip -dc does."""
    with open(out_path, "wb") as out:
        subprocess.run(["gzip", "-dc", archive], stdout=out, check=True,
                       timeout=120)
    return out_path
