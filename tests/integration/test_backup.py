"""tools/asanafs-backup run against a real asanafs mount of the stand-in:
a backup that succeeds, and each way it can fail with its exit status."""

import datetime
import filecmp
import os
import re

from harness import ORG, ROOT, ArchiveTestCase, main, run

BACKUP = os.path.join(ROOT, "tools", "asanafs-backup")


def utc_date():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


class BackupTest(ArchiveTestCase):

    def backup(self, *args, timeout=300):
        env = dict(os.environ)
        env.pop("ASANAFS_MOUNT", None)
        return run([BACKUP] + list(args), timeout=timeout, check=False, env=env)

    def assert_one_line_failure(self, result, status, *fragments):
        self.assertEqual(result.returncode, status,
                         "stdout: %s\nstderr: %s" % (result.stdout, result.stderr))
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("asanafs-backup: "), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    def test_backup_copies_archive(self):
        mount = self.mount()
        dest = os.path.join(self.workdir, "backups")
        day_before = utc_date()
        result = self.backup("-m", mount.path, ORG, dest)
        day_after = utc_date()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")

        lines = result.stdout.splitlines()
        self.assertRegex(lines[0], r"^started export \d+ of organization %s$" % ORG)
        gid = lines[0].split()[2]
        self.assertRegex(lines[-2], r"^export %s: finished after \d+ s$" % gid)
        path = lines[-1]
        self.assertIn(os.path.basename(path),
                      {"asana-%s-%s-%s.json.gz" % (ORG, day, gid)
                       for day in (day_before, day_after)})
        self.assertEqual(os.path.dirname(path), dest)
        self.assertTrue(os.path.isfile(path))
        self.assertEqual(os.listdir(dest), [os.path.basename(path)])
        self.assertEqual(run(["gzip", "-t", path], check=False).returncode, 0)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertTrue(filecmp.cmp(path, self.archive, shallow=False),
                        "the backup differs from the stand-in's archive")

    def test_backup_uses_asanafs_mount_variable(self):
        mount = self.mount()
        dest = os.path.join(self.workdir, "backups")
        env = dict(os.environ, ASANAFS_MOUNT=mount.path)
        result = run([BACKUP, ORG, dest], timeout=300, check=False, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(os.path.isfile(result.stdout.splitlines()[-1]))

    def test_failed_export_exits_3(self):
        mount = self.mount()
        self.standin.fault(fail_exports=True)
        dest = os.path.join(self.workdir, "backups")
        result = self.backup("-m", mount.path, ORG, dest)
        self.assert_one_line_failure(result, 3, "ended in error")
        self.assertFalse(os.path.exists(dest) and os.listdir(dest))

    def test_rejected_export_exits_3(self):
        mount = self.mount()
        self.standin.fault(api_status={"status": 403,
                                       "prefix": "POST /organization_exports",
                                       "count": 1})
        result = self.backup("-m", mount.path, ORG,
                             os.path.join(self.workdir, "backups"))
        self.assert_one_line_failure(result, 3, "rejected", "403")

    def test_slow_export_times_out_with_4(self):
        mount = self.mount()
        self.standin.fault(export_seconds=600)
        result = self.backup("-m", mount.path, "-t", "3", ORG,
                             os.path.join(self.workdir, "backups"))
        self.assert_one_line_failure(result, 4, "timed out after 3 s")
        self.assertRegex(result.stdout, r"export \d+: (pending|started), waited")

    def test_unreadable_archive_exits_5(self):
        mount = self.mount()
        self.standin.fault(corrupt={"offset": 5000, "length": 100, "count": -1})
        dest = os.path.join(self.workdir, "backups")
        result = self.backup("-m", mount.path, ORG, dest)
        self.assert_one_line_failure(result, 5, "copying", "failed")
        self.assertEqual(os.listdir(dest), [])

    def test_unusable_dest_exits_5(self):
        mount = self.mount()
        dest = os.path.join(self.workdir, "a-file")
        open(dest, "w").close()
        result = self.backup("-m", mount.path, ORG, dest)
        self.assert_one_line_failure(result, 5, "cannot create or write", dest)
        self.assertEqual(self.count("POST /organization_exports"), 0)

    def test_wrong_org_exits_2(self):
        mount = self.mount()
        dest = os.path.join(self.workdir, "backups")
        cases = (("9999", "organization 9999 not found"),
                 ("1332", "not an organization"))
        for org, message in cases:
            with self.subTest(org=org):
                result = self.backup("-m", mount.path, org, dest)
                self.assert_one_line_failure(result, 2, message)
        self.assertEqual(self.count("POST /organization_exports"), 0)

    def test_missing_mount_exits_2(self):
        empty = os.path.join(self.workdir, "empty")
        os.mkdir(empty)
        for path in (empty, os.path.join(self.workdir, "missing")):
            with self.subTest(path=path):
                result = self.backup("-m", path, ORG, self.workdir)
                self.assert_one_line_failure(result, 2, "no asanafs mount at " + path)

    def test_bad_command_line_exits_1(self):
        cases = ((), (ORG,), ("-t", "0", ORG, "dest"), ("-t", "soon", ORG, "dest"),
                 ("-x", ORG, "dest"), ("org", "dest"))
        for args in cases:
            with self.subTest(args=args):
                self.assert_one_line_failure(self.backup(*args), 1)

    def test_help_lists_options_and_codes(self):
        for flag in ("--help", "-h"):
            result = self.backup(flag)
            self.assertEqual(result.returncode, 0)
            self.assertTrue(result.stdout.startswith("usage: asanafs-backup"))
            for option in ("-m MOUNTPOINT", "-t TIMEOUT_SECONDS", "21600",
                           "/mnt/asana", "$ASANAFS_MOUNT"):
                self.assertIn(option, result.stdout)
            for status in range(6):
                self.assertTrue(re.search(r"^  %d  " % status, result.stdout, re.M),
                                "exit status %d undocumented" % status)


if __name__ == "__main__":
    main()
