"""The main job on a real mount: create an export through `new`, watch its
state, read export.json and export.json.gz, adopt and forget exports."""

import calendar
import json
import os
import time

from harness import (ORG, ArchiveTestCase, main, make_archive, read_text,
                     run, sha256_file, wait_for)


class ExportTest(ArchiveTestCase):
    standin_options = {"export_seconds": 2}
    archive_size = 3 * 1024 * 1024
    archive_seed = 7

    def test_create_read_and_compare(self):
        mount = self.mount()
        gid = self.create_export(mount)
        self.assertEqual(self.count("POST /organization_exports"), 1)
        folder = mount.p("orgs", ORG, "exports", gid)
        with open(os.path.join(folder, "state")) as f:
            self.assertIn(f.read(), ("pending\n", "started\n"))
        self.assertNotIn("export.json", os.listdir(folder))
        self.wait_state(mount, ORG, gid, "finished")

        names = sorted(os.listdir(folder))
        self.assertEqual(names, ["export.json", "export.json.gz", "info.json",
                                 "progress", "state"])
        json_path = os.path.join(folder, "export.json")
        self.assertEqual(os.stat(json_path).st_size, self.size)
        self.assertEqual(self.count("DOWNLOAD /exports/%s/export.json.gz" % gid),
                         1, "only the tail request before any read")

        copy = os.path.join(self.workdir, "copy.json")
        run(["cp", json_path, copy])
        self.assertEqual(sha256_file(copy), self.sha)
        self.assertEqual(os.path.getsize(copy), self.size)
        gz_copy = os.path.join(self.workdir, "copy.json.gz")
        run(["cp", json_path + ".gz", gz_copy])
        self.assertEqual(sha256_file(gz_copy), sha256_file(self.archive))
        self.assertEqual(run(["cat", json_path]).stdout.count("\n"),
                         run(["gzip", "-dc", self.archive]).stdout.count("\n"))

    def test_new_twice_makes_two_exports(self):
        mount = self.mount()
        new = mount.p("orgs", ORG, "exports", "new")
        run(["sh", "-c", "echo > '%s'" % new])
        first = read_text(new).strip()
        run(["sh", "-c", "echo > '%s'" % new])
        second = read_text(new).strip()
        self.assertEqual(self.count("POST /organization_exports"), 2)
        self.assertNotEqual(first, second)
        listing = os.listdir(mount.p("orgs", ORG, "exports"))
        for name in ("new", "latest", first, second):
            self.assertIn(name, listing)
        self.assertEqual(os.readlink(mount.p("orgs", ORG, "exports", "latest")),
                         second)

    def test_empty_write_starts_nothing(self):
        mount = self.mount()
        new = mount.p("orgs", ORG, "exports", "new")
        run(["sh", "-c", ": > '%s'" % new])
        self.assertEqual(self.count("POST /organization_exports"), 0)

    def test_info_json_and_mtime(self):
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        folder = mount.p("orgs", ORG, "exports", gid)
        text = read_text(os.path.join(folder, "info.json"))
        self.assertTrue(text.endswith("}\n"))
        info = json.loads(text)
        self.assertEqual(info["gid"], gid)
        self.assertEqual(info["state"], "finished")
        self.assertNotIn("download_url", info)
        self.assertNotIn("X-Signature", text)
        created = calendar.timegm(time.strptime(info["created_at"][:19],
                                                "%Y-%m-%dT%H:%M:%S"))
        for name in ("", "state", "info.json", "export.json", "export.json.gz"):
            self.assertEqual(int(os.stat(os.path.join(folder, name)).st_mtime),
                             created, name)
        self.assertEqual(os.stat(os.path.join(folder, "info.json")).st_size,
                         len(text.encode()))

    def test_state_polled_once_per_ttl(self):
        mount = self.mount(options=["state_ttl=30"])
        gid = self.create_export(mount)
        path = mount.p("orgs", ORG, "exports", gid, "state")
        self.standin.reset_counts()
        for _ in range(50):
            with open(path) as f:
                f.read()
        self.assertLessEqual(self.count("GET /organization_exports/" + gid), 1)

    def test_state_change_visible(self):
        mount = self.mount(options=["state_ttl=1"])
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished", timeout=20)
        self.standin.reset_counts()
        for _ in range(5):
            with open(mount.p("orgs", ORG, "exports", gid, "state")) as f:
                self.assertEqual(f.read(), "finished\n")
            time.sleep(0.3)
        self.assertEqual(self.count("GET /organization_exports/" + gid), 0,
                         "a finished export is never polled again")

    def test_error_state(self):
        self.standin.fault(fail_exports={"count": 1})
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "error")
        self.assertNotIn("export.json",
                         os.listdir(mount.p("orgs", ORG, "exports", gid)))

    def test_adopt_and_forget(self):
        record = self.standin.create_export(organization=ORG, state="finished",
                                            archive=self.archive)
        other = self.standin.create_export(organization="1333",
                                           state="finished",
                                           archive=self.archive)
        mount = self.mount()
        exports = mount.p("orgs", ORG, "exports")
        gid = record["gid"]
        self.assertNotIn(gid, os.listdir(exports))
        os.mkdir(os.path.join(exports, gid))
        self.assertIn(gid, os.listdir(exports))
        data = os.path.join(exports, gid, "export.json")
        self.assertEqual(sha256_file(data), self.sha)

        with self.assertRaises(FileNotFoundError):
            os.mkdir(os.path.join(exports, other["gid"]))
        with self.assertRaises(FileNotFoundError):
            os.mkdir(os.path.join(exports, "99999999999"))
        with self.assertRaises(FileExistsError):
            os.mkdir(os.path.join(exports, gid))

        os.rmdir(os.path.join(exports, gid))
        self.assertNotIn(gid, os.listdir(exports))
        self.assertFalse(os.path.exists(os.path.join(
            mount.cache_dir, "data", gid, "export.json")))
        with self.assertRaises(FileNotFoundError):
            os.rmdir(os.path.join(exports, gid))

    def test_multi_member_archive_reads_whole(self):
        archive = os.path.join(self.workdir, "members.json.gz")
        size, sha = make_archive(archive, 2 * 1024 * 1024, seed=9, members=3)
        self.standin.set_archive(archive)
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        # The gzip trailer gives the last member's size only, so the
        # first size is short; the whole content must still arrive.
        self.assertLess(os.path.getsize(path), size)
        self.assertEqual(run(["sh", "-c", "cat '%s' | sha256sum" % path])
                         .stdout.split()[0], sha)
        self.assertIn("warning", mount.log())
        wait_for(lambda: os.path.getsize(path) == size, 5,
                 what="the corrected size")
        self.assertEqual(sha256_file(path), sha)

    def test_exports_survive_remount(self):
        mount = self.mount()
        gid = self.create_export(mount)
        mount.stop()
        mount = self.mount(name="again")
        self.assertIn(gid, os.listdir(mount.p("orgs", ORG, "exports")))


if __name__ == "__main__":
    main()
