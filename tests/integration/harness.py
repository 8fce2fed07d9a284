"""Shared set-up for the integration tests: a stand-in Asana API on
loopback, a real asanafs mount in front of it, and a test runner that ends
with an 'N passed, N failed' line.

Every command runs with a timeout, so a hang fails a test instead of
stalling the suite.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from standin import StandIn, make_archive  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
ASANAFS = os.environ.get("ASANAFS_BIN") or os.path.join(ROOT, "build", "asanafs")
TOKEN = "standin-token"
ORG = "1331"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def read_text(path):
    with open(path) as f:
        return f.read()


def run(args, timeout=120, check=True, **kwargs):
    """Runs a command and returns the CompletedProcess, text mode."""
    return subprocess.run(args, capture_output=True, text=True,
                          timeout=timeout, check=check, **kwargs)


def wait_for(predicate, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def is_listed_mount(path):
    """Tells whether PATH is a mount point in /proc/self/mountinfo, which
    also lists mounts whose FUSE process has died."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})",
                           lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == path:
                return True
    return False


class Mount:
    """One asanafs process in the foreground, mounted at DIR/mnt."""

    def __init__(self, workdir, standin, options=(), token=TOKEN, name="mnt",
                 args=(), source=None):
        self.workdir = workdir
        self.args = list(args)
        self.source = source
        self.standin = standin
        self.options = list(options)
        self.token = token
        self.path = os.path.join(workdir, name)
        self.cache_dir = os.path.join(workdir, "cache")
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None

    def command(self):
        cmd = [ASANAFS] + ([self.source] if self.source else [])
        cmd += [self.path, "-f",
               "-o", "api_url=" + self.standin.api_url,
               "-o", "cache_dir=" + self.cache_dir]
        options = list(self.options)
        # Exports in the stand-in finish within seconds; a short ttl lets
        # the tests see that without waiting out the 60 s default.
        if not any(o.startswith("state_ttl=") for o in options):
            options.append("state_ttl=1")
        for option in options:
            cmd += ["-o", option]
        return cmd + self.args

    def start(self):
        os.makedirs(self.path, exist_ok=True)
        env = dict(os.environ)
        env.pop("ASANA_ACCESS_TOKEN", None)
        if self.token is not None:
            env["ASANA_ACCESS_TOKEN"] = self.token
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, env=env)
        log.close()

        def mounted():
            if self.proc.poll() is not None:
                raise AssertionError("asanafs exited with %d:\n%s"
                                     % (self.proc.returncode, self.log()))
            return os.path.ismount(self.path)

        wait_for(mounted, 15, what="the mount at " + self.path)
        return self

    def stop(self):
        if self.proc is None:
            return
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", self.path],
                           capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        # A process that died leaves a mount that os.path.ismount() cannot
        # stat, so look it up in the mount table instead.
        if is_listed_mount(self.path):
            subprocess.run(["fusermount3", "-uz", self.path],
                           capture_output=True, timeout=30)
        self.proc = None

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def p(self, *parts):
        return os.path.join(self.path, *parts)


class MountTestCase(unittest.TestCase):
    """Starts a stand-in per test; tests start their mounts with mount()."""

    standin_options = {}

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="asanafs-test-")
        self.standin = StandIn()
        self.standin.start(self.workdir, **self.standin_options)
        self.mounts = []

    def tearDown(self):
        for mount in self.mounts:
            mount.stop()
        self.standin.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def mount(self, options=(), token=TOKEN, name="mnt", start=True, args=(),
              source=None):
        mount = Mount(self.workdir, self.standin, options, token, name, args,
                      source)
        self.mounts.append(mount)
        return mount.start() if start else mount

    def wait_state(self, mount, org, gid, state, timeout=30):
        path = mount.p("orgs", org, "exports", gid, "state")

        def reached():
            with open(path) as f:
                return f.read() == state + "\n"

        wait_for(reached, timeout, interval=0.3,
                 what="export %s to reach %s" % (gid, state))

    def create_export(self, mount, org=ORG):
        """Starts an export through `new` and returns its gid."""
        new = mount.p("orgs", org, "exports", "new")
        with open(new, "w") as f:
            f.write("\n")
        text = read_text(new)
        self.assertRegex(text, r"^\d+\n$", "new reads: %r" % text)
        return text.strip()

    def count(self, key):
        return self.standin.counts().get(key, 0)


class ArchiveTestCase(MountTestCase):
    """Serves one generated archive of archive_size bytes inflated for
    every export the test creates."""

    standin_options = {"export_seconds": 1}
    archive_size = 4 * 1024 * 1024
    archive_seed = 1

    def setUp(self):
        super().setUp()
        self.archive = os.path.join(self.workdir, "org.json.gz")
        self.size, self.sha = make_archive(self.archive, self.archive_size,
                                           seed=self.archive_seed)
        self.standin.set_archive(self.archive)

    def finished_export(self, mount):
        """Creates an export, waits for it to finish and learns its size,
        so that faults set afterwards apply to its download, not to the
        size probe. Returns its gid and the path of its export.json."""
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        os.stat(path)
        return gid, path


def record_trials(area, case, trials, failures, result):
    """Appends one row to the reliability table behind docs/RELIABILITY.md.

    AREA is a group such as "fault", "bad input" or "security"; CASE was
    tried TRIALS times and FAILURES of those went wrong; RESULT describes
    in a few words what a user saw. Rows go to $ASANAFS_RELIABILITY_LOG as
    JSON lines, and nothing is written without that variable."""
    path = os.environ.get("ASANAFS_RELIABILITY_LOG")
    if not path:
        return
    row = {"area": area, "case": case, "trials": int(trials),
           "failures": int(failures), "result": result,
           "test": os.path.basename(sys.argv[0])}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def main():
    """Runs the tests of the calling module and prints the summary line."""
    program = unittest.main(exit=False, verbosity=2)
    result = program.result
    # A test with several failed subTests is one failed test case.
    failed = len({getattr(test, "test_case", test).id()
                  for test, _ in result.failures + result.errors})
    passed = result.testsRun - failed - len(result.skipped)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed or result.testsRun == 0 else 0)
