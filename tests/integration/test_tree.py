"""The tree: workspaces, exact sizes in listings, and names that do not
exist or cannot be made."""

import errno
import json
import os
import subprocess

from harness import ASANAFS, ORG, MountTestCase, main, read_text, run


class TreeTest(MountTestCase):
    standin_options = {"workspaces": 150}

    def test_orgs_lists_every_workspace(self):
        mount = self.mount()
        names = os.listdir(mount.p("orgs"))
        self.assertEqual(len(names), 153)
        for gid in ("1331", "1332", "1333"):
            self.assertIn(gid, names)
        self.assertEqual(self.count("GET /workspaces"), 2,
                         "two pages of 100 and no more")
        for request in self.standin.requests():
            if request["server"] == "api" and request["path"] == "/workspaces":
                self.assertIn("limit=100", request["query"])
                self.assertIn("is_organization", request["query"])

    def test_workspace_json(self):
        mount = self.mount()
        path = mount.p("orgs", ORG, "workspace.json")
        text = read_text(path)
        self.assertTrue(text.endswith("\n"))
        record = json.loads(text)
        self.assertEqual(record["gid"], ORG)
        self.assertEqual(record["name"], "Example Org")
        self.assertTrue(record["is_organization"])
        self.assertEqual(os.stat(path).st_size, len(text.encode()))

    def test_exports_only_in_organizations(self):
        mount = self.mount()
        self.assertEqual(sorted(os.listdir(mount.p("orgs", ORG))),
                         ["exports", "workspace.json"])
        self.assertEqual(os.listdir(mount.p("orgs", "1332")), ["workspace.json"])
        self.assertFalse(os.path.exists(mount.p("orgs", "1332", "exports")))

    def test_ls_sizes_match_content(self):
        mount = self.mount()
        self.create_export(mount)
        out = run(["ls", "-lR", mount.path]).stdout
        checked = 0
        folder = None
        for line in out.splitlines():
            if line.endswith(":"):
                folder = line[:-1]
                continue
            fields = line.split()
            if len(fields) < 9 or not line.startswith("-"):
                continue
            path = os.path.join(folder, fields[-1])
            if fields[-1] == "progress":
                # Its content changes by itself, so it shows size 0.
                self.assertEqual(int(fields[4]), 0, path)
                self.assertGreater(len(read_text(path)), 0, path)
                continue
            with open(path, "rb") as f:
                self.assertEqual(int(fields[4]), len(f.read()), path)
            checked += 1
        self.assertGreaterEqual(checked, 5)

    def test_unknown_names(self):
        mount = self.mount()
        for parts in (("nothing",), ("orgs", "abc"), ("orgs", "999"),
                      ("orgs", ORG, "nothing"), ("orgs", ORG, "exports", "x"),
                      ("orgs", ORG, "exports", "12345"),
                      ("orgs", "1332", "exports"),
                      ("orgs", ORG, "exports", "new", "x")):
            path = mount.p(*parts)
            self.assertFalse(os.path.lexists(path), path)

    def test_bad_changes_rejected(self):
        mount = self.mount()
        exports = mount.p("orgs", ORG, "exports")
        cases = [
            (os.mkdir, (os.path.join(exports, "not-a-gid"),), errno.EINVAL),
            (os.mkdir, (os.path.join(exports, "with space"),), errno.EINVAL),
            (os.mkdir, (os.path.join(exports, "\u00e9t\u00e9"),), errno.EINVAL),
            (os.mkdir, (mount.p("orgs", "1234"),), errno.EACCES),
            (os.mkdir, (os.path.join(exports, "x" * 256),), errno.ENAMETOOLONG),
            (os.rmdir, (exports,), errno.EACCES),
            (os.rmdir, (os.path.join(exports, "new"),), errno.ENOTDIR),
            (os.unlink, (mount.p("orgs", ORG, "workspace.json"),), errno.EACCES),
            (os.unlink, (os.path.join(exports, "new"),), errno.EACCES),
            (os.rename, (mount.p("orgs", ORG, "workspace.json"),
                         mount.p("orgs", ORG, "w.json")), errno.EACCES),
            (os.chmod, (mount.p("orgs", ORG, "workspace.json"), 0o777),
             errno.EACCES),
            (os.truncate, (mount.p("orgs", ORG, "workspace.json"), 0),
             errno.EACCES),
        ]
        for function, args, expected in cases:
            with self.assertRaises(OSError, msg=repr(args)) as caught:
                function(*args)
            self.assertEqual(caught.exception.errno, expected,
                             "%s%r" % (function.__name__, args))
        with self.assertRaises(OSError) as caught:
            open(mount.p("orgs", ORG, "new-file"), "w")
        self.assertEqual(caught.exception.errno, errno.EACCES)
        with self.assertRaises(OSError) as caught:
            open(mount.p("orgs", ORG, "workspace.json"), "w")
        self.assertEqual(caught.exception.errno, errno.EACCES)
        self.assertEqual(self.count("POST /organization_exports"), 0)
        self.assertEqual(os.listdir(mount.cache_dir + "/registry/exports"), [])

    def test_bad_token_mounts_nothing(self):
        mount = self.mount(token="wrong-token", start=False)
        os.makedirs(mount.path)
        env = dict(os.environ, ASANA_ACCESS_TOKEN="wrong-token")
        stderr = self.mount_fails(mount, env)
        self.assertIn("401", stderr)
        self.assertIn("Not Authorized", stderr)
        self.assertNotIn("wrong-token", stderr)

    def mount_fails(self, mount, env=None):
        """Runs the mount command, expects it to fail and mount nothing,
        and returns its stderr."""
        result = subprocess.run(mount.command(), capture_output=True, text=True,
                                timeout=30, env=env)
        self.assertNotEqual(result.returncode, 0)
        self.assertFalse(os.path.ismount(mount.path))
        return result.stderr

    def test_missing_token_mounts_nothing(self):
        mount = self.mount(token=None, start=False)
        os.makedirs(mount.path)
        env = dict(os.environ)
        env.pop("ASANA_ACCESS_TOKEN", None)
        stderr = self.mount_fails(mount, env)
        self.assertIn("ASANA_ACCESS_TOKEN", stderr)
        self.assertIn("token_file", stderr)

    def test_token_file(self):
        token_file = os.path.join(self.workdir, "token")
        with open(token_file, "w") as f:
            f.write("standin-token\n")
        os.chmod(token_file, 0o644)
        mount = self.mount(options=["token_file=" + token_file], token=None,
                           start=False)
        os.makedirs(mount.path)
        self.assertIn("chmod 600", self.mount_fails(mount))
        with open(token_file, "w") as f:
            f.write("\n")
        os.chmod(token_file, 0o600)
        self.assertIn("is empty", self.mount_fails(mount))
        with open(token_file, "w") as f:
            f.write("standin-token\n")
        mount.start()
        self.assertIn(ORG, os.listdir(mount.p("orgs")))

    def test_mount_point_must_be_folder(self):
        mount = self.mount(start=False)
        with open(mount.path, "w") as f:
            f.write("not a folder")
        env = dict(os.environ, ASANA_ACCESS_TOKEN="standin-token")
        self.assertIn("not a folder", self.mount_fails(mount, env))

    def test_first_rsync_of_fresh_mount_is_stable(self):
        mount = self.mount()
        backup = os.path.join(self.workdir, "backup")
        run(["rsync", "-a", mount.path + "/", backup + "/"], timeout=300)
        second = run(["rsync", "-ai", mount.path + "/", backup + "/"],
                     timeout=300)
        self.assertEqual(second.stdout, "")

    def test_help_and_version(self):
        result = run([ASANAFS, "--help"])
        for option in ("api_url", "token_file", "cache_dir", "cache_size",
                       "state_ttl", "allow_other"):
            self.assertIn(option, result.stdout + result.stderr)
        result = run([ASANAFS, "--version"])
        self.assertIn("asanafs", result.stdout)


if __name__ == "__main__":
    main()
