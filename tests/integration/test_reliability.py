"""Faults of the download path, each tried many times: dropped connections,
expiring URLs, kill -9 during a download, a full cache disk, a small
cache_size and many readers at once. Each test records its trials in the
reliability table, and every random choice comes from a printed seed."""

import errno
import os
import signal
import subprocess
import threading

from harness import (ORG, ArchiveTestCase, main, make_archive, run,
                     sha256_file, wait_for)
from trials import (Trials, adopt_export, forget_export, inflate, rng_for)


class DownloadFaultTest(ArchiveTestCase):
    archive_size = 4 * 1024 * 1024
    archive_seed = 21

    def setUp(self):
        super().setUp()
        self.rng = rng_for(self)
        self.compressed = os.path.getsize(self.archive)

    def downloads(self, gid):
        return self.count("DOWNLOAD /exports/%s/export.json.gz" % gid)

    def part_size(self, mount, gid):
        try:
            return os.path.getsize(os.path.join(
                mount.cache_dir, "data", gid, "export.json.part"))
        except OSError:
            return 0

    def test_drop_at_random_offsets(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        offsets = sorted(self.rng.sample(range(1, self.compressed), 20))
        trials = Trials(self, "download connection dropped at a random byte")
        for offset in offsets:
            def trial():
                forget_export(mount, gid)
                self.standin.reset_counts()
                self.standin.fault(drop={"at_offsets": [offset]})
                self.assertEqual(sha256_file(path), self.sha)
                self.assertNotIn("drop", self.standin.faults(),
                                 "the drop happened")
                self.assertEqual(self.downloads(gid), 2,
                                 "one cut download and one resume")
            trials.run("offset %d of %d" % (offset, self.compressed), trial)
        trials.finish("resumed; every read identical to the source")

    def test_url_expires_in_slow_download(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        trials = Trials(self, "download URL expired in a slow download")
        for _ in range(5):
            cut = self.rng.randrange(self.compressed // 5,
                                     self.compressed * 4 // 5)

            def trial():
                forget_export(mount, gid)
                self.standin.reset_counts()
                # About 4 s per download, and a URL that is handed out
                # stays valid for 1 s only, so a resume needs a fresh one.
                self.standin.fault(
                    throttle={"bytes_per_second": self.compressed // 4,
                              "count": -1},
                    expire_after_bytes={"bytes": cut}, url_ttl=1)
                self.assertEqual(sha256_file(path), self.sha)
                self.assertGreaterEqual(
                    self.count("GET /organization_exports/" + gid), 2,
                    "a fresh URL was fetched")
                self.standin.clear_faults()
            trials.run("expired after byte %d" % cut, trial)
        trials.finish("fresh URL fetched; every read identical")

    def test_kill9_during_download(self):
        first = self.mount(name="first")
        gid, _ = self.finished_export(first)
        first.stop()
        trials = Trials(self, "kill -9 of asanafs during a download, then remount")
        for index in range(10):
            target = self.rng.randrange(self.size // 20, self.size * 19 // 20)

            def trial():
                mount = self.mount(name="kill%d" % index)
                path = mount.p("orgs", ORG, "exports", gid, "export.json")
                forget_export(mount, gid)
                self.standin.fault(throttle={
                    "bytes_per_second": self.compressed // 6, "count": -1})
                reader = subprocess.Popen(["cat", path],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                wait_for(lambda: self.part_size(mount, gid) >= target, 60,
                         interval=0.02, what="%d bytes cached" % target)
                mount.proc.send_signal(signal.SIGKILL)
                mount.proc.wait(timeout=30)
                reader.wait(timeout=60)
                run(["fusermount3", "-u", mount.path], timeout=30)
                mount.proc = None
                self.standin.clear_faults()
                self.standin.reset_counts()

                again = self.mount(name="again%d" % index)
                path = again.p("orgs", ORG, "exports", gid, "export.json")
                self.assertEqual(os.stat(path).st_size, self.size)
                self.assertEqual(sha256_file(path), self.sha)
                self.assertEqual(self.downloads(gid), 1,
                                 "the partial entry was downloaded again")
                again.stop()
            trials.run("killed at %d of %d bytes" % (target, self.size), trial)
        trials.finish("downloaded again after remount; never short or zero-filled")

    def test_readers_at_random_offsets(self):
        other_archive = os.path.join(self.workdir, "other.json.gz")
        make_archive(other_archive, 3 * 1024 * 1024, seed=22)
        mount = self.mount()
        gid_a, path_a = self.finished_export(mount)
        gid_b, path_b = adopt_export(self, mount, other_archive)
        os.stat(path_b)
        sources = {path_a: inflate(self.archive,
                                   os.path.join(self.workdir, "a.json")),
                   path_b: inflate(other_archive,
                                   os.path.join(self.workdir, "b.json"))}
        trials = Trials(self, "16 readers of one uncached export and 4 of another")
        for round_index in range(3):
            def trial():
                forget_export(mount, gid_a)
                forget_export(mount, gid_b)
                self.standin.reset_counts()
                self.standin.fault(throttle={
                    "bytes_per_second": self.compressed // 3, "count": -1})
                errors = []
                readers = [threading.Thread(
                    target=self.read_randomly,
                    args=(path, sources[path], self.rng.random(), errors))
                    for path in [path_a] * 16 + [path_b] * 4]
                for reader in readers:
                    reader.start()
                for reader in readers:
                    reader.join(timeout=300)
                self.assertFalse(any(r.is_alive() for r in readers),
                                 "a reader still waits after 300 s")
                self.assertEqual(errors, [])
                self.assertEqual(self.downloads(gid_a), 1, "downloads of A")
                self.assertEqual(self.downloads(gid_b), 1, "downloads of B")
                self.standin.clear_faults()
            trials.run("round %d" % round_index, trial)
        trials.finish("one download per export; every byte right")

    @staticmethod
    def read_randomly(path, source, seed, errors):
        """Reads 8 random ranges of PATH and compares them with SOURCE."""
        import random
        rng = random.Random(seed)
        size = os.path.getsize(source)
        try:
            with open(path, "rb") as f, open(source, "rb") as s:
                for _ in range(8):
                    offset = rng.randrange(size)
                    length = rng.randrange(1, 256 * 1024)
                    got = os.pread(f.fileno(), length, offset)
                    expected = os.pread(s.fileno(), length, offset)
                    if got != expected:
                        errors.append("%s: %d bytes at %d differ (got %d)"
                                      % (path, length, offset, len(got)))
        except OSError as error:
            errors.append("%s: %s" % (path, error))

    def test_cache_on_full_filesystem(self):
        small_archive = os.path.join(self.workdir, "small.json.gz")
        small_size, small_sha = make_archive(small_archive, 200 * 1024, seed=23)
        tmpfs = os.path.join(self.workdir, "smallfs")
        os.mkdir(tmpfs)
        # Smaller than the inflated export, with room for the registry
        # and the small export.
        run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", tmpfs])
        self.addCleanup(run, ["umount", tmpfs], check=False)
        mount = self.mount(start=False)
        mount.cache_dir = os.path.join(tmpfs, "cache")
        mount.start()
        gid, path = self.finished_export(mount)
        small_gid, small_path = adopt_export(self, mount, small_archive)
        state = mount.p("orgs", ORG, "exports", gid, "state")
        trials = Trials(self, "cache folder on a filesystem smaller than the export")
        for round_index in range(5):
            def trial():
                result = run(["sh", "-c", "cat '%s' | wc -c" % path],
                             check=False, timeout=300)
                self.assertIn("No space left on device", result.stderr)
                self.assertLess(int(result.stdout), self.size)
                self.assertIn("No space left", mount.log())
                self.assertIsNone(mount.proc.poll(), "asanafs still runs")
                with open(state) as f:
                    self.assertEqual(f.read(), "finished\n")
                self.assertIn(ORG, os.listdir(mount.p("orgs")))
                if round_index == 0:
                    self.assertEqual(sha256_file(small_path), small_sha)
                else:
                    forget_export(mount, small_gid)
                    self.assertEqual(sha256_file(small_path), small_sha)
                self.assertFalse(os.path.exists(os.path.join(
                    mount.cache_dir, "data", gid, "export.json")))
            trials.run("round %d" % round_index, trial)

        def grown():
            run(["mount", "-o", "remount,size=64m", tmpfs])
            self.assertEqual(sha256_file(path), self.sha,
                             "nothing partial is served once there is room")
        trials.run("after the filesystem grew", grown)
        trials.finish("ENOSPC to the reader and in the log; the rest served; "
                      "nothing partial served later")

    def test_cache_size_keeps_limit(self):
        entry = 3 * 1024 * 1024
        archives, shas = [], []
        for seed in range(4):
            archive = os.path.join(self.workdir, "e%d.json.gz" % seed)
            shas.append(make_archive(archive, entry, seed=30 + seed)[1])
            archives.append(archive)
        sizes = [entry + os.path.getsize(a) for a in archives]
        # Room for two entries but not three.
        limit = max(sizes) * 2 + max(sizes) // 2
        mount = self.mount(options=["cache_size=%d" % limit])
        exports = [adopt_export(self, mount, a) for a in archives]
        for _, path in exports:
            os.stat(path)
        data = os.path.join(mount.cache_dir, "data")
        recent = []       # gids, least recently used first

        def cached(gid):
            return os.path.exists(os.path.join(data, gid, "export.json"))

        def used():
            return sum(os.path.getsize(os.path.join(root, name))
                       for root, _, names in os.walk(data) for name in names)

        def read_one(index, held=()):
            gid, path = exports[index]
            self.assertEqual(sha256_file(path), shas[index])
            wait_for(lambda: cached(gid), 30, what="entry %s cached" % gid)
            if gid in recent:
                recent.remove(gid)
            else:
                # The model of the cache: least recently used entries that
                # nobody holds open make room for the new one.
                total = sum(sizes[i] for i, (g, _) in enumerate(exports)
                            if g in recent)
                for old in list(recent):
                    if total + sizes[index] <= limit:
                        break
                    if old in held:
                        continue
                    recent.remove(old)
                    total -= sizes[[g for g, _ in exports].index(old)]
            recent.append(gid)
            expected = set(recent)
            self.assertEqual({g for g, _ in exports if cached(g)}, expected)
            slack = sum(sizes[[g for g, _ in exports].index(g)] for g in held)
            self.assertLessEqual(used(), limit + slack + 64 * 1024)

        trials = Trials(self, "cache_size smaller than three exports read in turn")
        for turn in range(12):
            index = self.rng.randrange(len(exports))
            trials.run("read %d of export %d" % (turn, index),
                       lambda: read_one(index))

        def open_entry_kept():
            held_gid, held_path = exports[0]
            with open(held_path, "rb") as held:
                held.read(4096)
                read_one(0, held=(held_gid,))
                for index in (1, 2, 3):
                    read_one(index, held=(held_gid,))
                    self.assertTrue(cached(held_gid), "the open entry stays")
                held.seek(0)
                self.assertEqual(len(held.read()), entry)
        trials.run("one export held open while three others are read",
                   open_entry_kept)
        trials.finish("limit kept up to the entries being read; least recently "
                      "used evicted; open entries kept")


if __name__ == "__main__":
    main()
