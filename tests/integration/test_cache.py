"""Streaming and the on-disk cache: early first bytes, one shared download,
no second download after a remount, rsync, and the cache limit."""

import os
import subprocess
import threading

from harness import (ORG, ArchiveTestCase, main, make_archive, run,
                     sha256_file, wait_for)


class CacheTest(ArchiveTestCase):
    archive_size = 8 * 1024 * 1024
    archive_seed = 11

    def downloads(self, gid):
        return self.count("DOWNLOAD /exports/%s/export.json.gz" % gid)

    def test_remount_serves_from_cache(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.assertEqual(sha256_file(path), self.sha)
        mount.stop()
        self.standin.reset_counts()
        mount = self.mount(name="again")
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        self.assertEqual(sha256_file(path), self.sha)
        self.assertEqual(sha256_file(path + ".gz"), sha256_file(self.archive))
        self.assertEqual(self.standin.counts(), {"GET /users/me": 1},
                         "a complete entry is served with no request but "
                         "the token check at mount")

    def test_rsync_twice_copies_nothing(self):
        mount = self.mount()
        self.finished_export(mount)
        backup = os.path.join(self.workdir, "backup")
        run(["rsync", "-a", mount.path + "/", backup + "/"], timeout=300)
        gid = os.readlink(mount.p("orgs", ORG, "exports", "latest"))
        self.assertEqual(sha256_file(os.path.join(
            backup, "orgs", ORG, "exports", gid, "export.json")), self.sha)
        second = run(["rsync", "-ai", mount.path + "/", backup + "/"],
                     timeout=300)
        self.assertEqual(second.stdout, "")
        self.assertEqual(self.downloads(gid), 2, "one tail probe, one download")

    def test_rsync_after_remount_copies_nothing(self):
        mount = self.mount()
        self.finished_export(mount)
        backup = os.path.join(self.workdir, "backup")
        run(["rsync", "-a", mount.path + "/", backup + "/"], timeout=300)
        mount.stop()
        mount = self.mount(name="again")
        second = run(["rsync", "-ai", mount.path + "/", backup + "/"],
                     timeout=300)
        self.assertEqual(second.stdout, "")

    def test_concurrent_readers_share_one_download(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.standin.fault(throttle={"bytes_per_second": 4 * 1024 * 1024, 
                                     "count": -1})
        results = []

        def read_all():
            results.append(sha256_file(path))

        threads = [threading.Thread(target=read_all) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        self.assertEqual(results, [self.sha] * 6)
        self.assertEqual(self.downloads(gid), 2, "one tail probe, one download")

    def test_head_returns_before_download_ends(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        compressed = os.path.getsize(self.archive)
        # At this rate the whole archive takes about 20 s to arrive.
        self.standin.fault(throttle={"bytes_per_second": compressed // 20, 
                                     "count": -1})
        head = run(["head", "-c", "100", path], timeout=60)
        expected = run(["sh", "-c", "gzip -dc '%s' | head -c 100" % self.archive])
        self.assertEqual(head.stdout, expected.stdout)
        entry = os.path.join(mount.cache_dir, "data", gid)
        self.assertFalse(os.path.exists(os.path.join(entry, "export.json")),
                         "head finished before the download did")
        self.assertTrue(os.path.exists(os.path.join(entry, "export.json.part")))

    def test_far_reader_blocks_no_one(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        compressed = os.path.getsize(self.archive)
        self.standin.fault(throttle={"bytes_per_second": compressed // 10,
                                     "count": -1})
        tail = subprocess.Popen(["tail", "-c", "100", path],
                                stdout=subprocess.DEVNULL)
        entry = os.path.join(mount.cache_dir, "data", gid)
        wait_for(lambda: os.path.exists(os.path.join(entry, "export.json.part")),
                 10, what="the download to start")
        head = run(["head", "-c", "100", path], timeout=60)
        self.assertEqual(len(head.stdout), 100)
        gz_head = run(["sh", "-c", "head -c 100 '%s.gz' | wc -c" % path],
                      timeout=60)
        self.assertEqual(gz_head.stdout.strip(), "100")
        self.assertIsNone(tail.poll(), "the far reader still waits")
        self.assertFalse(os.path.exists(os.path.join(entry, "export.json")))

        tail.kill()
        tail.wait(timeout=30)
        self.assertIsNone(mount.proc.poll(), "an interrupted reader leaves "
                          "the mount up")
        self.standin.clear_faults()
        self.assertEqual(sha256_file(path), self.sha)

    def test_cache_size_evicts_least_recently_used(self):
        small = 3 * 1024 * 1024
        for seed in (1, 2, 3):
            make_archive(os.path.join(self.workdir, "a%d.gz" % seed), small,
                         seed=seed)
        # Room for about two entries: each is the inflated data plus its
        # archive.
        mount = self.mount(options=["cache_size=%d" % (small * 2 + small)])
        gids = []
        for seed in (1, 2, 3):
            self.standin.set_archive(os.path.join(self.workdir, "a%d.gz" % seed))
            gid, path = self.finished_export(mount)
            sha256_file(path)
            gids.append(gid)
        data = os.path.join(mount.cache_dir, "data")

        def cached(gid):
            return os.path.exists(os.path.join(data, gid, "export.json"))

        self.assertFalse(cached(gids[0]), "the least recently used is evicted")
        # The last reader may get its bytes before the download thread has
        # moved the finished files into place.
        wait_for(lambda: cached(gids[2]), 10, what="the newest entry cached")
        used = sum(os.path.getsize(os.path.join(root, name))
                   for root, _, names in os.walk(data) for name in names)
        self.assertLessEqual(used, small * 3 + 64 * 1024)


if __name__ == "__main__":
    main()
