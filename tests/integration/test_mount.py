"""Mount options and the process: read-only mounts, debug logs without
secrets, single-threaded mode, stable inodes, and a kill -9 in the middle
of a download."""

import errno
import os
import signal
import subprocess

from harness import (ORG, TOKEN, ArchiveTestCase, main, sha256_file,
                     wait_for)


class MountTest(ArchiveTestCase):
    archive_size = 6 * 1024 * 1024
    archive_seed = 3

    def test_read_only_mount(self):
        mount = self.mount()
        gid, _ = self.finished_export(mount)
        mount.stop()
        mount = self.mount(options=["ro"], name="ro")
        with self.assertRaises(OSError) as caught:
            with open(mount.p("orgs", ORG, "exports", "new"), "w") as f:
                f.write("\n")
        self.assertEqual(caught.exception.errno, errno.EROFS)
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        self.assertEqual(sha256_file(path), self.sha)

    def test_debug_log_holds_no_secret(self):
        mount = self.mount(args=["-d"])
        gid, path = self.finished_export(mount)
        self.standin.fault(expire_after_bytes={"bytes": 200000, "count": 1},
                           drop={"after_bytes": 100000, "count": 1})
        self.assertEqual(sha256_file(path), self.sha)
        with self.assertRaises(OSError):
            os.listdir(mount.p("orgs", "1332", "exports"))
        text = mount.log()
        self.assertIn("debug:", text)
        self.assertNotIn(TOKEN, text)
        for secret in ("X-Signature", "X-Expires", "X-Id"):
            self.assertNotIn(secret, text)
        with open("/proc/%d/cmdline" % mount.proc.pid, "rb") as f:
            self.assertNotIn(TOKEN.encode(), f.read())
        with open("/proc/%d/environ" % mount.proc.pid, "rb") as f:
            self.assertNotIn(TOKEN.encode(), f.read())
        for root, _, names in os.walk(mount.cache_dir):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                self.assertNotIn(TOKEN.encode(), data, name)
                self.assertNotIn(b"X-Signature", data, name)

    def test_background_mount(self):
        mount = self.mount(start=False)
        os.makedirs(mount.path)
        command = [arg for arg in mount.command() if arg != "-f"]
        env = dict(os.environ, ASANA_ACCESS_TOKEN=TOKEN)
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=30, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        try:
            self.assertTrue(os.path.ismount(mount.path))
            self.assertIn(ORG, os.listdir(mount.p("orgs")))
            gid, path = self.finished_export(mount)
            self.assertEqual(sha256_file(path), self.sha)
        finally:
            subprocess.run(["fusermount3", "-u", mount.path], timeout=30)
        self.assertFalse(os.path.ismount(mount.path))

    def test_single_threaded(self):
        mount = self.mount(args=["-s"])
        gid, path = self.finished_export(mount)
        self.assertEqual(sha256_file(path), self.sha)

    def test_inodes_and_times_stable_across_remounts(self):
        mount = self.mount()
        gid, _ = self.finished_export(mount)
        names = ["orgs", "orgs/" + ORG, "orgs/%s/workspace.json" % ORG,
                 "orgs/%s/exports/%s" % (ORG, gid),
                 "orgs/%s/exports/%s/state" % (ORG, gid),
                 "orgs/%s/exports/%s/export.json" % (ORG, gid)]

        def snapshot(m):
            return [(os.lstat(m.p(n)).st_ino, os.lstat(m.p(n)).st_mtime,
                     os.lstat(m.p(n)).st_size) for n in names]

        first = snapshot(mount)
        self.assertEqual(len(set(ino for ino, _, _ in first)), len(names))
        mount.stop()
        mount = self.mount(name="again")
        self.assertEqual(snapshot(mount), first)

    def slow_far_reader(self, mount):
        """Starts `tail -c 100` of an export whose download is throttled
        to take minutes, and returns the reader and the export's gid."""
        gid, path = self.finished_export(mount)
        compressed = os.path.getsize(self.archive)
        self.standin.fault(throttle={"bytes_per_second": compressed // 300,
                                     "count": -1})
        tail = subprocess.Popen(["tail", "-c", "100", path],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        entry = os.path.join(mount.cache_dir, "data", gid)
        wait_for(lambda: os.path.exists(os.path.join(entry,
                                                     "export.json.part")),
                 10, what="the download to start")
        return tail, gid

    def test_rmdir_stops_waiting_reader(self):
        mount = self.mount()
        tail, gid = self.slow_far_reader(mount)
        folder = mount.p("orgs", ORG, "exports", gid)
        subprocess.run(["rmdir", folder], check=True, timeout=60)
        self.assertFalse(os.path.exists(folder))
        _, err = tail.communicate(timeout=60)
        self.assertNotEqual(tail.returncode, 0)
        self.assertIn("No such file or directory", err)
        # The download notices the drop when its next bytes arrive.
        wait_for(lambda: "download of export %s stopped" % gid in mount.log(),
                 30, what="the download to stop")
        self.assertNotIn("downloaded export " + gid, mount.log())
        self.assertIsNone(mount.proc.poll())

    def test_sigterm_stops_waiting_reader(self):
        mount = self.mount()
        tail, gid = self.slow_far_reader(mount)
        mount.proc.send_signal(signal.SIGTERM)
        self.assertEqual(mount.proc.wait(timeout=60), 0)
        tail.communicate(timeout=60)
        self.assertNotEqual(tail.returncode, 0)
        self.assertRegex(mount.log(), "download of export %s stopped" % gid)
        self.assertNotIn("downloaded export " + gid, mount.log())
        subprocess.run(["fusermount3", "-uz", mount.path], timeout=30)
        mount.proc = None

    def test_kill_during_download_never_serves_partial(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.assertEqual(os.path.getsize(path), self.size)
        compressed = os.path.getsize(self.archive)
        self.standin.fault(throttle={"bytes_per_second": compressed // 8, 
                                     "count": -1})
        reader = subprocess.Popen(["cat", path], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        entry = os.path.join(mount.cache_dir, "data", gid)
        wait_for(lambda: os.path.exists(os.path.join(entry,
                                                     "export.json.part"))
                 and os.path.getsize(os.path.join(entry, "export.json.part")),
                 20, what="a partial download")
        mount.proc.send_signal(signal.SIGKILL)
        mount.proc.wait(timeout=10)
        subprocess.run(["fusermount3", "-uz", mount.path], timeout=30)
        reader.wait(timeout=30)
        mount.proc = None
        self.standin.clear_faults()
        self.standin.reset_counts()
        mount = self.mount(name="again")
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        self.assertEqual(os.path.getsize(path), self.size)
        self.assertEqual(sha256_file(path), self.sha)
        self.assertEqual(self.count("DOWNLOAD /exports/%s/export.json.gz" % gid),
                         1, "downloaded again from the start")


if __name__ == "__main__":
    main()
