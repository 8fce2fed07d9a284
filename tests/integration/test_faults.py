"""What the stand-in can break: rate limits, server errors, dropped and
expired downloads, corrupt archives, and refused requests."""

import errno
import os
import shutil

from harness import (ORG, ArchiveTestCase, main, read_text, run,
                     sha256_file, wait_for)


class FaultTest(ArchiveTestCase):
    archive_size = 4 * 1024 * 1024
    archive_seed = 5

    def test_429_waits_and_retries(self):
        self.standin.fault(api_status={"status": 429, "retry_after": 1,
                                       "prefix": "GET /workspaces",
                                       "count": 2})
        mount = self.mount()
        self.assertIn(ORG, os.listdir(mount.p("orgs")))
        self.assertEqual(self.count("GET /workspaces"), 3)
        self.assertIn("429", mount.log())

    def test_5xx_retried(self):
        mount = self.mount()
        for status in (500, 502, 503, 504):
            self.standin.reset_counts()
            self.standin.fault(api_status={"status": status,
                                           "prefix": "POST /organization_exports",
                                           "count": 1})
            new = mount.p("orgs", ORG, "exports", "new")
            result = run(["sh", "-c", "echo > '%s'" % new], check=False)
            # A POST is not retried after the server saw it, so one
            # export at most is created per write.
            self.assertNotEqual(result.returncode, 0, status)
            self.assertEqual(self.count("POST /organization_exports"), 1)
            self.assertIn(str(status), read_text(new))
        self.standin.reset_counts()
        self.standin.fault(api_status={"status": 503, "prefix": "GET /workspaces",
                                       "count": 2})
        mount.stop()
        mount = self.mount(name="again", options=["state_ttl=0"])
        self.assertIn(ORG, os.listdir(mount.p("orgs")))
        self.assertEqual(self.count("GET /workspaces"), 3)

    def test_post_429_retried_once_created(self):
        self.standin.fault(api_status={"status": 429, "retry_after": 1,
                                       "prefix": "POST /organization_exports",
                                       "count": 1})
        mount = self.mount()
        gid = self.create_export(mount)
        self.assertEqual(self.count("POST /organization_exports"), 2)
        self.assertEqual(len([e for e in self.standin.exports()
                              if e["gid"] == gid]), 1)

    def test_refused_export_shows_message(self):
        mount = self.mount()
        new = mount.p("orgs", ORG, "exports", "new")
        cases = ((403, errno.EACCES), (402, errno.EACCES), (401, errno.EACCES),
                 (400, errno.EINVAL), (404, errno.ENOENT))
        for status, expected in cases:
            self.standin.fault(api_status={"status": status,
                                           "prefix": "POST /organization_exports",
                                           "count": 1})
            with self.assertRaises(OSError) as caught:
                with open(new, "w") as f:
                    f.write("go\n")
            self.assertEqual(caught.exception.errno, expected, status)
            text = read_text(new)
            self.assertTrue(text.startswith("error: "), text)
            self.assertIn(str(status), text)
        self.standin.fault(api_status={"status": 403,
                                       "prefix": "POST /organization_exports",
                                       "count": 1})
        result = run(["bash", "-c", "echo > '%s'" % new], check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Permission denied", result.stderr)

    def test_rate_limited_post_gives_eagain(self):
        mount = self.mount(options=["timeout=3"])
        self.standin.fault(api_status={"status": 429, "retry_after": 1,
                                       "prefix": "POST /organization_exports",
                                       "count": 20})
        with self.assertRaises(OSError) as caught:
            with open(mount.p("orgs", ORG, "exports", "new"), "w") as f:
                f.write("\n")
        self.assertEqual(caught.exception.errno, errno.EAGAIN)

    def test_dropped_download_resumes(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(drop={"after_bytes": 300000, "count": 3})
        self.assertEqual(sha256_file(path), self.sha)
        ranges = [r.get("range") for r in self.standin.requests()
                  if r["server"] == "download" and r.get("range")]
        self.assertTrue(any(r.startswith("bytes=") and not r.startswith("bytes=-")
                            and not r.startswith("bytes=0-") for r in ranges),
                        ranges)

    def test_range_ignored_on_resume(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(drop={"after_bytes": 200000, "count": 1},
                           ignore_range={"count": 5})
        self.assertEqual(sha256_file(path), self.sha)

    def test_expired_url_recovers(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.reset_counts()
        self.standin.fault(expire_after_bytes={"bytes": 250000, "count": 1})
        self.assertEqual(sha256_file(path), self.sha)
        self.assertGreaterEqual(self.count("GET /organization_exports/" + gid), 2,
                                "a fresh URL was fetched")
        for request in self.standin.requests():
            if request["server"] == "download":
                self.assertNotIn("Authorization", request["headers"])

    def test_corrupt_archive_gives_eio_and_is_not_cached(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(corrupt={"count": -1})
        for _ in range(2):
            result = run(["sh", "-c", "cat '%s' > /dev/null" % path],
                         check=False)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("Input/output error", result.stderr)
        self.assertIn("corrupt", mount.log())
        entry = os.path.join(mount.cache_dir, "data", gid)
        self.assertFalse(os.path.exists(os.path.join(entry, "export.json")))
        self.standin.clear_faults()
        self.assertEqual(sha256_file(path), self.sha,
                         "a later read downloads again")

    def test_corrupt_once_never_mixes_downloads(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(corrupt={"count": 1})
        result = run(["sh", "-c", "sha256sum < '%s'" % path], check=False)
        if result.returncode == 0:
            self.assertEqual(result.stdout.split()[0], self.sha)
        else:
            self.assertIn("Input/output error", result.stderr)
        self.assertEqual(sha256_file(path), self.sha)

    def test_truncated_archive_gives_eio(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(truncate={"count": -1})
        for name in ("export.json", "export.json.gz"):
            result = run(["sh", "-c", "cat '%s' > /dev/null"
                          % os.path.join(os.path.dirname(path), name)],
                         check=False)
            self.assertNotEqual(result.returncode, 0, name)
            self.assertIn("Input/output error", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(
            mount.cache_dir, "data", gid, "export.json")))

    def test_cut_archive_at_probe_recovers(self):
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        folder = mount.p("orgs", ORG, "exports", gid)
        path = os.path.join(folder, "export.json")
        # The size probe and the download both see an archive cut short.
        self.standin.fault(truncate={"bytes": 100000, "count": -1})
        self.assertEqual(os.stat(os.path.join(folder, "export.json.gz")).st_size,
                         100000)
        result = run(["cat", path], check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("Input/output error", result.stderr)
        self.standin.clear_faults()
        # The next read probes again instead of trusting the cut sizes.
        self.assertEqual(sha256_file(path), self.sha)
        # The kernel keeps attributes for up to a second.
        gz_size = os.path.getsize(self.archive)
        wait_for(lambda: os.stat(path).st_size == self.size, 5,
                 what="the size of export.json")
        wait_for(lambda: os.stat(os.path.join(folder, "export.json.gz")).st_size
                 == gz_size, 5, what="the size of export.json.gz")

    def test_failed_probe_keeps_backup_copy(self):
        mount = self.mount(options=["timeout=5"])
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        backup = os.path.join(self.workdir, "backup")
        run(["rsync", "-a", mount.path + "/", backup + "/"], timeout=300)
        copy = os.path.join(backup, "orgs", ORG, "exports", gid, "export.json")
        self.assertEqual(sha256_file(copy), self.sha)
        # Without its cached data the next mount must probe the size again,
        # and the storage host fails.
        mount.stop()
        shutil.rmtree(os.path.join(mount.cache_dir, "data", gid))
        mount = self.mount(options=["timeout=5"], name="again")
        self.standin.fault(storage_reply={"status": 503, "body": "busy",
                                          "count": -1})
        folder = mount.p("orgs", ORG, "exports", gid)
        with self.assertRaises(OSError) as caught:
            os.listdir(folder)
        self.assertEqual(caught.exception.errno, errno.EIO)
        result = run(["rsync", "-a", "--delete", mount.path + "/",
                      backup + "/"], timeout=300, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(sha256_file(copy), self.sha,
                         "rsync --delete removed the backup's copy")
        self.standin.clear_faults()
        self.assertIn("export.json", os.listdir(folder))

    def test_api_down_keeps_mount(self):
        mount = self.mount(options=["timeout=3", "state_ttl=0"])
        gid, path = self.finished_export(mount)
        self.assertEqual(sha256_file(path), self.sha)
        self.standin.stop()
        with self.assertRaises(OSError):
            os.listdir(mount.p("orgs"))
        self.assertEqual(sha256_file(path), self.sha, "cached data still reads")
        self.assertTrue(os.path.ismount(mount.path))
        self.assertIsNone(mount.proc.poll())


if __name__ == "__main__":
    main()
