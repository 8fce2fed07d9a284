"""An export of more than 4 GiB inflated: the gzip trailer stores the size
modulo 2^32, and the mount must still show the exact size from the first
stat and serve identical bytes.

The archive repeats a block of export lines, so 5 GiB inflated fits in
about 50 MB of gzip and the download stays small. The cache holds the
inflated 5 GiB on disk; the test is skipped, saying why, when the disk has
too little room for that.
"""

import hashlib
import os
import shutil
import subprocess
import zlib

from harness import ORG, MountTestCase, main, make_archive, run, wait_for

GIB = 1 << 30
# Not a multiple of 2^32, so the trailer's ISIZE is neither 0 nor the size.
SIZE = 5 * GIB + 12345
# Room for the inflated file in the cache, the archive and some margin.
NEEDED_BYTES = SIZE + GIB


def write_large_archive(workdir, path, size):
    """Writes a gzip archive of SIZE bytes inflated; returns (sha256, tail)."""
    sample = os.path.join(workdir, "sample.json.gz")
    make_archive(sample, 1 << 20, seed=11)
    with open(sample, "rb") as f:
        lines = zlib.decompress(f.read(), 31)
    # Whole lines, fewer than deflate's 32 KiB window, so repeats compress.
    block = lines[:lines.rfind(b"\n", 0, 24 * 1024) + 1]
    digest = hashlib.sha256()
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    chunk = block * (4 * 1024 * 1024 // len(block))
    written = 0
    with open(path, "wb") as out:
        while written < size:
            piece = chunk[:size - written]
            digest.update(piece)
            out.write(gz.compress(piece))
            written += len(piece)
        out.write(gz.flush())
    return digest.hexdigest(), piece[-64:]


class LargeExportTest(MountTestCase):
    standin_options = {"export_seconds": 1}

    def test_over_4_gib_exact_size_and_bytes(self):
        free = shutil.disk_usage(self.workdir).free
        if free < NEEDED_BYTES:
            self.skipTest("needs %.1f GiB free under %s for a 5 GiB export, "
                          "has %.1f GiB" % (NEEDED_BYTES / GIB, self.workdir,
                                            free / GIB))
        archive = os.path.join(self.workdir, "large.json.gz")
        sha, tail = write_large_archive(self.workdir, archive, SIZE)
        with open(archive, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        self.assertEqual(isize, SIZE % (1 << 32))
        self.standin.set_archive(archive)
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        path = mount.p("orgs", ORG, "exports", gid, "export.json")

        # The first stat, before any download, already has the exact size.
        self.assertEqual(os.stat(path).st_size, SIZE)
        downloads = "DOWNLOAD /exports/%s/export.json.gz" % gid
        self.assertLessEqual(self.count(downloads), 3,
                             "the tail, the first MiB and at most one longer "
                             "sample, never the whole archive")
        self.assertEqual(run(["sh", "-c", "cat '%s' | sha256sum" % path],
                             timeout=600).stdout.split()[0], sha)
        wait_for(lambda: not os.path.exists(os.path.join(
            mount.cache_dir, "data", gid, "export.json.part")), 120,
            what="the cache entry to be complete")
        # A tool that trusts the size, such as tail -c, reads the right part.
        self.assertEqual(subprocess.run(["tail", "-c", "64", path], check=True,
                                        capture_output=True, timeout=120).stdout,
                         tail)
        self.assertEqual(os.stat(path).st_size, SIZE)
        self.assertNotIn("its gzip trailer states", mount.log(),
                         "the size was never corrected")


if __name__ == "__main__":
    main()
