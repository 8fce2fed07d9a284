"""Faults of the API and of the process, each tried many times: an API
that is down or hangs, 429 storms and 5xx bursts, and unmounting or
SIGTERM while reads are in flight. Each test records its trials in the
reliability table, and every random choice comes from a printed seed."""

import errno
import os
import signal
import subprocess
import time

from harness import (ORG, ArchiveTestCase, main, read_text, run,
                     sha256_file, wait_for)
from trials import (Trials, adopt_export, forget_export, in_mountinfo,
                    rng_for, watch)

# The timeout option of the mounts below, in seconds.
TIMEOUT = 12
# A read that the API cannot serve must fail within this many seconds: the
# timeout plus a margin for a busy machine, but less than two timeouts, so
# that a read which waits out the timeout twice fails the test.
FAIL_WITHIN = TIMEOUT + 8
# The timeout of the mount that meets 429 storms and 5xx bursts.
RATE_TIMEOUT = 10
# Ways to stop a mount while reads are in flight.
STOP_METHODS = ("SIGTERM", "fusermount3 -u", "fusermount3 -uz")


class ApiFaultTest(ArchiveTestCase):
    archive_size = 2 * 1024 * 1024
    archive_seed = 41

    def setUp(self):
        super().setUp()
        self.rng = rng_for(self)

    def reads(self, mount, started_gid, finished_gid):
        exports = mount.p("orgs", ORG, "exports")
        return {
            "state": ["cat", os.path.join(exports, started_gid, "state")],
            "workspace.json": ["cat", mount.p("orgs", ORG, "workspace.json")],
            "listing": ["ls", mount.p("orgs")],
            "uncached export.json": ["cat", os.path.join(
                exports, finished_gid, "export.json")],
        }

    def check_fails_in_time(self, mount, name, command):
        """Runs COMMAND while the API is unreachable and checks that it
        fails in time, never in uninterruptible sleep, and that the mount
        stays up."""
        reader = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        seen = watch(reader, FAIL_WITHIN)
        stderr = reader.stderr.read().decode(errors="replace")
        reader.stderr.close()
        seconds = seen.seconds
        if seen.d_stacks:
            print("%s: D state %.1f s: %s" % (name, seen.longest_d, seen.d_stacks))
        self.assertIsNotNone(seconds, "%s still waits after %d s"
                             % (name, FAIL_WITHIN))
        self.assertNotEqual(reader.returncode, 0, "%s failed" % name)
        self.assertNoFuseSleep(seen, name)
        self.assertTrue(stderr, "%s printed an error" % name)
        self.assertIsNone(mount.proc.poll(), "asanafs still runs")
        self.assertTrue(os.path.ismount(mount.path), "the mount stays")
        return seconds

    def assertNoFuseSleep(self, seen, name):
        """Checks that a reader was never in uninterruptible sleep on the
        mount. A new process may be in 'D' for a moment while the kernel
        reads its program from disk, so a sample counts only when its
        kernel stack is in FUSE code or the sleep lasted a second."""
        in_fuse = [stack for stack in seen.d_stacks if "fuse" in stack]
        self.assertEqual(in_fuse, [], "%s in uninterruptible sleep" % name)
        self.assertLess(seen.longest_d, 1.0,
                        "%s in uninterruptible sleep for %.1f s"
                        % (name, seen.longest_d))

    def check_reads_succeed(self, mount, started_gid, finished_gid):
        exports = mount.p("orgs", ORG, "exports")
        self.assertEqual(read_text(os.path.join(exports, started_gid,
                                                "state")), "started\n")
        self.assertIn('"gid"', read_text(mount.p("orgs", ORG,
                                                 "workspace.json")))
        self.assertIn(ORG, os.listdir(mount.p("orgs")))
        self.assertEqual(sha256_file(os.path.join(
            exports, finished_gid, "export.json")), self.sha)

    def test_api_down_fails_in_time(self):
        mount = self.mount(options=["timeout=%d" % TIMEOUT, "state_ttl=0"])
        started_gid, _ = adopt_export(self, mount, self.archive,
                                      state="started")
        finished_gid, _ = adopt_export(self, mount, self.archive)
        reads = self.reads(mount, started_gid, finished_gid)
        trials = Trials(self, "API stand-in stopped or hanging, then back")
        slowest = 0.0
        for round_index in range(2):
            for mode in ("stopped", "hanging"):
                forget_export(mount, finished_gid)
                if mode == "stopped":
                    self.standin.stop()
                else:
                    self.standin.pause()
                for name, command in reads.items():
                    # A failed refresh returns its error again for 1 s
                    # without a new request, so a pause lets each read wait
                    # on its own.
                    time.sleep(1.5)

                    def trial():
                        nonlocal slowest
                        seconds = self.check_fails_in_time(mount, name, command)
                        print("%s: %s failed after %.1f s" % (mode, name, seconds))
                        slowest = max(slowest, seconds)
                    trials.run("%s: %s fails" % (mode, name), trial)

                def back():
                    if mode == "stopped":
                        self.standin.restart()
                        self.standin.set_archive(self.archive)
                        self.standin.create_export(gid=started_gid,
                                                   state="started")
                        self.standin.create_export(gid=finished_gid,
                                                   state="finished")
                    else:
                        self.standin.resume()
                    self.check_reads_succeed(mount, started_gid, finished_gid)
                trials.run("%s: every read succeeds once back" % mode, back)
        print("slowest failed read: %.1f s with timeout=%d" % (slowest, TIMEOUT))
        trials.finish("each read failed within %d s (slowest %.0f s, timeout=%d); "
                      "never in uninterruptible sleep on the mount; mount up; "
                      "reads succeed once back"
                      % (FAIL_WITHIN, slowest, TIMEOUT))

    def test_429_and_5xx(self):
        mount = self.mount(options=["timeout=%d" % RATE_TIMEOUT,
                                    "state_ttl=0"])
        new = mount.p("orgs", ORG, "exports", "new")
        trials = Trials(self, "429 storms and 5xx bursts")

        def exports_made():
            return len(self.standin.exports())

        def storm_within_bound(length, retry_after):
            self.standin.reset_counts()
            before = exports_made()
            self.standin.fault(api_status={
                "status": 429, "retry_after": retry_after,
                "prefix": "POST /organization_exports", "count": length})
            self.create_export(mount)
            self.assertEqual(exports_made(), before + 1, "one export per write")
            posts = [r["time"] for r in self.standin.requests()
                     if r["method"] == "POST"]
            self.assertEqual(len(posts), length + 1)
            for earlier, later in zip(posts, posts[1:]):
                self.assertGreaterEqual(later - earlier, retry_after - 0.1,
                                        "Retry-After honoured")

        def storm_past_bound(retry_after):
            before = exports_made()
            self.standin.fault(api_status={
                "status": 429, "retry_after": retry_after,
                "prefix": "POST /organization_exports", "count": -1})
            began = time.monotonic()
            with self.assertRaises(OSError) as caught:
                with open(new, "w") as f:
                    f.write("\n")
            seconds = time.monotonic() - began
            self.standin.clear_faults()
            self.assertEqual(caught.exception.errno, errno.EAGAIN)
            self.assertLessEqual(seconds, RATE_TIMEOUT + 20,
                                 "the configured bound holds")
            self.assertEqual(exports_made(), before, "no export made")

        def burst_on_get(status, length):
            self.standin.reset_counts()
            self.standin.fault(api_status={
                "status": status, "prefix": "GET /workspaces",
                "count": length})
            # workspace.json comes from the workspace list.
            self.assertIn('"gid"', read_text(mount.p("orgs", ORG,
                                                     "workspace.json")))
            self.assertNotIn("api_status", self.standin.faults(),
                             "every error of the burst was sent")
            self.assertGreaterEqual(self.count("GET /workspaces"), length + 1)

        def burst_on_post(status):
            self.standin.reset_counts()
            before = exports_made()
            self.standin.fault(api_status={
                "status": status, "prefix": "POST /organization_exports",
                "count": 3})
            result = run(["sh", "-c", "echo > '%s'" % new], check=False)
            self.standin.clear_faults()
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(self.count("POST /organization_exports"), 1,
                             "a POST the server saw is not repeated")
            self.assertEqual(exports_made(), before)
            self.assertIn(str(status), read_text(new))

        def endless_5xx():
            self.standin.fault(api_status={
                "status": 503, "prefix": "GET /workspaces", "count": -1})
            reader = subprocess.Popen(["cat", mount.p("orgs", ORG,
                                                      "workspace.json")],
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            seen = watch(reader, RATE_TIMEOUT + 20)
            self.standin.clear_faults()
            self.assertIsNotNone(seen.seconds, "the read failed in time")
            self.assertNotEqual(reader.returncode, 0)
            self.assertNoFuseSleep(seen, "workspace.json")

        for _ in range(4):
            length, retry_after = self.rng.randint(1, 3), self.rng.choice((1, 2))
            trials.run("429 x%d, Retry-After %d on POST" % (length, retry_after),
                       lambda: storm_within_bound(length, retry_after))
        for retry_after in (1, 30):
            trials.run("endless 429, Retry-After %d on POST" % retry_after,
                       lambda: storm_past_bound(retry_after))
        for _ in range(4):
            status = self.rng.choice((500, 502, 503, 504))
            length = self.rng.randint(1, 3)
            trials.run("%d x%d on GET" % (status, length),
                       lambda: burst_on_get(status, length))
        for status in (500, 503):
            trials.run("%d on POST" % status, lambda: burst_on_post(status))
        trials.run("endless 503 on GET", endless_5xx)
        self.assertIsNone(mount.proc.poll())
        trials.finish("Retry-After honoured; bound of timeout=%d kept; one "
                      "export per successful write, none per failed one"
                      % RATE_TIMEOUT)

    def test_unmount_during_reads(self):
        first = self.mount(name="first")
        gid, _ = self.finished_export(first)
        first.stop()
        compressed = os.path.getsize(self.archive)
        trials = Trials(self, "fusermount3 -u, -uz or SIGTERM during reads")
        self.slowest_exit = 0.0
        for index in range(9):
            stop_method = STOP_METHODS[index % len(STOP_METHODS)]

            def trial():
                self.unmount_during_reads(index, gid, compressed, stop_method)
            trials.run(stop_method, trial)
        trials.finish("asanafs exited within %.1f s (bound %d s); no stale "
                      "mount; no reader got short data"
                      % (self.slowest_exit, FAIL_WITHIN))

    def unmount_during_reads(self, index, gid, compressed, stop_method):
        mount = self.mount(name="m%d" % index)
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        forget_export(mount, gid)
        # About 20 s per download: long enough to act in the middle.
        self.standin.fault(throttle={"bytes_per_second": compressed // 20,
                                     "count": -1})
        outputs = [os.path.join(self.workdir, "out%d.%d" % (index, n))
                   for n in range(3)]
        readers = []
        for output in outputs:
            with open(output, "wb") as out:
                readers.append(subprocess.Popen(["cat", path], stdout=out,
                                                stderr=subprocess.DEVNULL))
        wait_for(lambda: os.path.exists(os.path.join(
            mount.cache_dir, "data", gid, "export.json.part")), 30,
            what="the download to start")
        time.sleep(self.rng.uniform(0.2, 2.0))

        proc = mount.proc
        # The exit is timed from the signal, from a successful unmount, or
        # for a lazy unmount from the last reader's exit, which releases
        # the mount.
        proc_seen = None
        if stop_method == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
            proc_seen = watch(proc, FAIL_WITHIN)
        else:
            command = ["fusermount3", stop_method.split()[1], mount.path]
            result = run(command, check=False, timeout=60)
            print("%s: exit status %d %s" % (stop_method, result.returncode,
                                             result.stderr.strip()))
            if stop_method == "fusermount3 -u" and result.returncode != 0:
                # Busy: the mount must keep serving the readers, and a
                # second unmount after them must work.
                self.assertIn("busy", result.stderr)
                self.standin.clear_faults()

        for reader in readers:
            seen = watch(reader, FAIL_WITHIN + 60)
            self.assertIsNotNone(seen.seconds,
                                 "a reader hangs after %s" % stop_method)
        for reader, output in zip(readers, outputs):
            if reader.returncode == 0:
                self.assertEqual(sha256_file(output), self.sha,
                                 "a reader that succeeded got every byte")
        if stop_method == "fusermount3 -u" and in_mountinfo(mount.path):
            self.assertTrue(all(r.returncode == 0 for r in readers),
                            "a busy mount kept serving its readers")
            run(["fusermount3", "-u", mount.path], timeout=60)

        if proc_seen is None:
            proc_seen = watch(proc, FAIL_WITHIN)
        self.assertIsNotNone(proc_seen.seconds, "asanafs exits within %d s "
                             "after %s" % (FAIL_WITHIN, stop_method))
        exit_seconds = proc_seen.seconds
        self.slowest_exit = max(self.slowest_exit, exit_seconds)
        print("%s: readers exited %s; asanafs exited after %.1f s"
              % (stop_method, [r.returncode for r in readers], exit_seconds))
        mount.proc = None
        self.assertFalse(in_mountinfo(mount.path), "no stale mount")
        self.standin.clear_faults()


if __name__ == "__main__":
    main()
