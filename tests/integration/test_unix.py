"""asanafs as a Unix tool: exit codes and one-line messages of failing
starts, option ranges, the SOURCE word of mount(8), extended attributes,
progress files, download log lines and the names/ folder."""

import errno
import os
import re
import socket
import subprocess

from harness import (ASANAFS, ORG, TOKEN, ArchiveTestCase, main, read_text,
                     record_trials, run, wait_for)

ODD_WORKSPACES = [
    {"gid": "1331", "name": "Acme"},
    {"gid": "1332", "name": "Acme", "is_organization": False},
    {"gid": "1333", "name": "Sales/Marketing\nTeam"},
    {"gid": "1334", "name": ".."},
    {"gid": "1335", "name": ""},
    {"gid": "1336", "name": "Acme (1331)"},
    {"gid": "1337", "name": "Caf\u00e9 \u6771\u4eac"},
    {"gid": "1338", "name": "\u00e9" * 200},
    {"gid": "1339", "name": "."},
]

EXPECTED_LINKS = {
    "Acme (1331)": "1331",
    "Acme (1332)": "1332",
    "Sales_Marketing_Team": "1333",
    "workspace (1334)": "1334",
    "workspace (1335)": "1335",
    "workspace (1339)": "1339",
    "Acme (1331) (1336)": "1336",
    "Caf\u00e9 \u6771\u4eac": "1337",
}


def mounted_paths():
    """Returns the mount points listed in /proc/self/mountinfo."""
    paths = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            field = line.split()[4]
            paths.add(re.sub(r"\\([0-7]{3})",
                             lambda m: chr(int(m.group(1), 8)), field))
    return paths


def unused_loopback_port():
    """Returns a loopback port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def getfattr(path):
    """Returns the user.* attributes of PATH as `getfattr -d` shows them."""
    out = run(["getfattr", "-d", "--absolute-names", path]).stdout
    return dict(re.findall(r'^(user\.[^=]+)="(.*)"$', out, re.MULTILINE))


class StartupTest(ArchiveTestCase):
    """Each failing start: its exit code, its one line, and no mount."""

    archive_size = 1024 * 1024

    def start_fails(self, mount, code, pattern, env_token=TOKEN, wrap=()):
        """Runs MOUNT's command, expects exit status CODE with one line on
        stderr matching PATTERN, and nothing mounted. Returns the line."""
        env = dict(os.environ)
        env.pop("ASANA_ACCESS_TOKEN", None)
        if env_token is not None:
            env["ASANA_ACCESS_TOKEN"] = env_token
        result = subprocess.run(list(wrap) + mount.command(),
                                capture_output=True, text=True, timeout=120,
                                env=env, stdin=subprocess.DEVNULL)
        lines = result.stderr.splitlines()
        self.assertEqual(result.returncode, code, result.stderr)
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("asanafs: "), lines[0])
        self.assertRegex(lines[0], pattern)
        self.assertNotIn(TOKEN, result.stderr + result.stdout)
        self.assertNotIn(mount.path, mounted_paths())
        self.assertEqual(result.stdout, "")
        return lines[0]

    def prepared(self, name="mnt", **kwargs):
        mount = self.mount(start=False, name=name, **kwargs)
        os.makedirs(mount.path, exist_ok=True)
        return mount

    def test_mount_point_errors_exit_2(self):
        missing = self.mount(start=False, name="missing")
        self.start_fails(missing, 2, r"does not exist; create it with mkdir")
        file_point = self.mount(start=False, name="file")
        with open(file_point.path, "w") as f:
            f.write("x")
        self.start_fails(file_point, 2, r"is not a folder")
        full = self.prepared(name="full")
        with open(full.p("kept"), "w") as f:
            f.write("x")
        self.start_fails(full, 2, r"is not empty; .*-o nonempty")
        full = self.mount(name="full", options=["nonempty"])
        self.assertIn("orgs", os.listdir(full.path))
        full.stop()
        self.assertEqual(os.listdir(full.path), ["kept"])

    def test_live_mount_point_exits_2(self):
        live = self.mount(name="live")
        second = self.mount(start=False, name="live")
        env = dict(os.environ, ASANA_ACCESS_TOKEN=TOKEN)
        result = subprocess.run(second.command(), capture_output=True,
                                text=True, timeout=120, env=env,
                                stdin=subprocess.DEVNULL)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertIn("is already a mount point; unmount it first with "
                      "fusermount3 -u", result.stderr)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        self.assertEqual(points.count(live.path), 1)
        self.assertIn("orgs", os.listdir(live.path))

    def test_token_errors_exit_3(self):
        mount = self.prepared(token=None)
        self.start_fails(mount, 3, r"no Asana access token.*ASANA_ACCESS_TOKEN"
                         r".*token_file", env_token=None)
        self.start_fails(mount, 3, r"^asanafs: Asana rejected the token: .*"
                         r"401.*ASANA_ACCESS_TOKEN", env_token="wrong-token")
        token_file = os.path.join(self.workdir, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(token_file, 0o644)
        with_file = self.prepared(token=None, name="file",
                                  options=["token_file=" + token_file])
        self.start_fails(with_file, 3, r"readable by group or others.*"
                         r"chmod 600", env_token=None)
        missing = self.prepared(token=None, name="nofile", options=[
            "token_file=" + os.path.join(self.workdir, "nothing")])
        self.start_fails(missing, 3, r"cannot open token file .*No such file",
                         env_token=None)
        self.standin.fault(api_status={"status": 403,
                                       "prefix": "GET /users/me",
                                       "count": 1})
        self.start_fails(mount, 3, r"rejected the token: .*403")
        self.assertEqual(self.count("GET /workspaces"), 0)

    def test_api_errors_exit_4(self):
        port = unused_loopback_port()
        # The last api_url on the command line wins.
        nobody = self.prepared(name="nobody", options=[
            "timeout=2", "api_url=http://127.0.0.1:%d/api/1.0" % port])
        self.start_fails(nobody, 4, r"checking the token at http://127\.0\.0"
                         r"\.1:%d/api/1\.0 failed: could not connect.*"
                         r"raise -o timeout \(now 2 s\)" % port)
        failing = self.prepared(name="failing", options=["timeout=3"])
        self.standin.fault(api_status={"status": 503,
                                       "prefix": "GET /users/me",
                                       "count": -1})
        self.start_fails(failing, 4, r"failed: Asana answered 503")
        self.standin.clear_faults()
        self.standin.stop()
        self.start_fails(failing, 4, r"could not connect")

    def test_cache_errors_exit_5(self):
        blocker = os.path.join(self.workdir, "blocker")
        with open(blocker, "w") as f:
            f.write("x")
        mount = self.prepared(options=["cache_dir=" + blocker + "/cache"])
        self.start_fails(mount, 5, r"cache folder .*Not a directory.*"
                         r"-o cache_dir=DIR")
        other = os.path.join(self.workdir, "other")
        os.mkdir(other, 0o700)
        os.chown(other, 65534, 65534)
        mount = self.prepared(name="other", options=["cache_dir=" + other])
        self.start_fails(mount, 5, r"cache folder .* belongs to uid 65534")
        first = self.mount(name="first")
        second = self.prepared(name="second")
        self.start_fails(second, 5, r"in use by another asanafs mount")
        self.assertTrue(os.path.ismount(first.path))

    def test_fuse_failure_exits_6(self):
        mount = self.prepared()
        # A private mount namespace with an empty /dev: no /dev/fuse.
        wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs none /dev && exec "$@"', "sh"]
        self.start_fails(mount, 6, r"mounting .* failed: device not found.*"
                         r"/dev/fuse", wrap=wrap)

    def test_option_values_exit_1(self):
        cases = [
            ("cache_size=abc", "asanafs: invalid cache_size=abc: expected a "
             "number of bytes with an optional K, M, G or T suffix, such as "
             "20G, or 0 for no limit"),
            ("cache_size=-1", "asanafs: invalid cache_size=-1: expected"),
            ("cache_size=20X", "asanafs: invalid cache_size=20X: expected"),
            ("cache_size=99999999999T", "asanafs: invalid "
             "cache_size=99999999999T: expected"),
            ("state_ttl=-1", "asanafs: invalid state_ttl=-1: expected whole "
             "seconds from 0 to 86400"),
            ("state_ttl=86401", "asanafs: invalid state_ttl=86401: expected "
             "whole seconds from 0 to 86400"),
            ("state_ttl=", "asanafs: invalid state_ttl=: expected"),
            ("state_ttl=1.5", "asanafs: invalid state_ttl=1.5: expected"),
            ("timeout=0", "asanafs: invalid timeout=0: expected whole seconds "
             "from 1 to 3600"),
            ("timeout=3601", "asanafs: invalid timeout=3601: expected"),
            ("timeout=abc", "asanafs: invalid timeout=abc: expected"),
            ("no_such_option=1", "asanafs: unknown option(s): `-o "
             "no_such_option=1'; see asanafs --help"),
        ]
        mount = self.prepared()
        for option, message in cases:
            mount.options = [option]
            self.start_fails(mount, 1, "^" + re.escape(message))
        self.assertEqual(self.count("GET /users/me"), 0)
        record_trials("bad input", "option value out of range or unparsable",
                      len(cases), 0, "exit 1, one line naming the range, "
                      "nothing mounted")
        result = run([ASANAFS, "one", "two", "three"], check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("too many arguments", result.stderr)
        result = run([ASANAFS], check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no mount point given", result.stderr)

    def test_help_lists_every_option(self):
        result = run([ASANAFS, "--help"])
        self.assertTrue(result.stdout.startswith("usage: "))
        for text in ("[SOURCE] MOUNTPOINT", "api_url=URL",
                     "token_file=FILE", "cache_dir=DIR", "cache_size=SIZE",
                     "(default 0)", "0 to 86400 (default 60)",
                     "1 to 3600 (default 30)", "nonempty", "_netdev",
                     "Exit status", "allow_other"):
            self.assertIn(text, result.stdout)
        version = run([ASANAFS, "--version"]).stdout.splitlines()
        self.assertRegex(version[0], r"^asanafs \d+\.\d+\.\d+$")
        self.assertIn("libfuse", version[1])

    def test_source_word_and_fstab_options(self):
        options = ["_netdev", "noauto", "nofail", "user", "users", "auto",
                   "defaults"]
        mount = self.mount(source="asanafs", options=options)
        self.assertIn(mount.path, mounted_paths())
        self.assertIn(ORG, os.listdir(mount.p("orgs")))


class ExportFilesTest(ArchiveTestCase):
    """progress, extended attributes and the download's log lines."""

    archive_size = 8 * 1024 * 1024
    archive_seed = 13

    def test_progress_xattrs_and_log_of_slow_download(self):
        mount = self.mount()
        gid = self.create_export(mount)
        folder = mount.p("orgs", ORG, "exports", gid)
        progress = os.path.join(folder, "progress")
        self.assertRegex(read_text(progress),
                         r"^export is (pending|started), not yet "
                         r"downloadable\n$")
        self.wait_state(mount, ORG, gid, "finished")
        self.assertEqual(os.stat(progress).st_size, 0,
                         "a file that changes by itself shows size 0")
        size = self.size
        self.assertEqual(read_text(progress),
                         "0 of %d bytes (0%%), not started\n" % size)
        data = os.path.join(folder, "export.json")
        self.assertEqual(getfattr(data)["user.asanafs.complete"], "0")

        compressed = os.path.getsize(self.archive)
        # About 14 s, so that at least one progress line is logged.
        self.standin.fault(throttle={"bytes_per_second": compressed // 14,
                                     "count": -1})
        reader = subprocess.Popen(["cat", data], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        pattern = re.compile(r"^(\d+) of %d bytes \((\d+)%%\), "
                             r"([\d.]+) (B|KiB|MiB|GiB)/s\n$" % size)

        def moving():
            match = pattern.match(read_text(progress))
            return match if match and int(match.group(1)) > 0 and \
                float(match.group(3)) > 0 else None

        match = wait_for(moving, 60, interval=0.5, what="a progress line")
        self.assertLess(int(match.group(1)), size)
        self.assertLess(int(match.group(2)), 100)
        during = getfattr(data)
        self.assertEqual(during["user.asanafs.complete"], "0")
        self.assertGreater(int(during["user.asanafs.cached_bytes"]), 0)
        self.assertLess(int(during["user.asanafs.cached_bytes"]), size)

        _, err = reader.communicate(timeout=180)
        self.assertEqual(reader.returncode, 0, err)
        self.assertEqual(read_text(progress),
                         "%d of %d bytes (100%%), complete\n" % (size, size))
        after = getfattr(data)
        self.assertEqual(after["user.asanafs.cached_bytes"], str(size))
        self.assertEqual(after["user.asanafs.complete"], "1")
        gz = getfattr(data + ".gz")
        self.assertEqual(gz["user.asanafs.cached_bytes"], str(compressed))

        log = mount.log()
        self.assertIn("info: cache: downloading export %s: archive of %d "
                      "bytes, %d bytes inflated" % (gid, compressed, size), log)
        self.assertRegex(log, r"info: cache: downloading export %s: \d+ of %d "
                         r"bytes \(\d+%%\), [\d.]+ (B|KiB|MiB)/s"
                         % (gid, compressed))
        self.assertRegex(log, r"info: cache: downloaded export %s: %d bytes, "
                         r"%d bytes inflated, in [\d.]+ s \([\d.]+ "
                         r"(B|KiB|MiB|GiB)/s on average\)"
                         % (gid, compressed, size))
        for secret in ("127.0.0.2", "X-Signature", "http://"):
            self.assertNotIn(secret, log)

    def test_xattrs_of_every_node(self):
        mount = self.mount()
        gid = self.create_export(mount)
        self.wait_state(mount, ORG, gid, "finished")
        folder = mount.p("orgs", ORG, "exports", gid)
        os.stat(os.path.join(folder, "export.json"))

        workspace = {"user.asana.gid": ORG, "user.asana.name": "Example Org",
                     "user.asana.resource_type": "workspace"}
        export = {"user.asana.gid": gid, "user.asana.state": "finished",
                  "user.asana.resource_type": "organization_export"}
        data = dict(export, **{"user.asanafs.cached_bytes": "0",
                               "user.asanafs.complete": "0"})
        cases = [
            ((), {}),
            (("orgs",), {}),
            (("orgs", ORG), workspace),
            (("orgs", ORG, "workspace.json"), workspace),
            (("orgs", ORG, "exports"), {}),
            (("orgs", ORG, "exports", "new"), {}),
            (("orgs", ORG, "exports", gid), export),
            (("orgs", ORG, "exports", gid, "state"), export),
            (("orgs", ORG, "exports", gid, "info.json"), export),
            (("orgs", ORG, "exports", gid, "progress"), export),
            (("orgs", ORG, "exports", gid, "export.json"), data),
            (("orgs", ORG, "exports", gid, "export.json.gz"), data),
            (("orgs", "1332"), {"user.asana.gid": "1332",
                                "user.asana.name": "Personal Projects",
                                "user.asana.resource_type": "workspace"}),
            (("names", "Example Org"), workspace),
        ]
        for parts, expected in cases:
            self.assertEqual(getfattr(mount.p(*parts)), expected, parts)

        path = mount.p("orgs", ORG, "workspace.json")
        self.assertEqual(os.getxattr(path, "user.asana.gid"), ORG.encode())
        with self.assertRaises(OSError) as caught:
            os.getxattr(path, "user.nothing")
        self.assertEqual(caught.exception.errno, errno.ENODATA)

        for change in (lambda: os.setxattr(path, "user.asana.gid", b"1"),
                       lambda: os.setxattr(path, "user.new", b"1"),
                       lambda: os.removexattr(path, "user.asana.gid")):
            with self.assertRaises(OSError) as caught:
                change()
            self.assertIn(caught.exception.errno,
                          (errno.EPERM, errno.ENOTSUP))
        self.assertEqual(getfattr(path), workspace)
        result = run(["setfattr", "-n", "user.asana.gid", "-v", "1", path],
                     check=False)
        self.assertNotEqual(result.returncode, 0)


class NamesTest(ArchiveTestCase):
    """names/ with colliding and odd workspace names."""

    def test_names_links(self):
        self.standin.set_workspaces(ODD_WORKSPACES)
        mount = self.mount()
        names = mount.p("names")
        listing = os.listdir(names)
        long_links = [n for n in listing if n.startswith("\u00e9")]
        self.assertEqual(len(long_links), 1)
        self.assertLessEqual(len(long_links[0].encode()), 255)
        long_links[0].encode().decode("utf-8")
        self.assertEqual(os.readlink(os.path.join(names, long_links[0])),
                         "../orgs/1338")
        listing.remove(long_links[0])
        self.assertEqual(sorted(listing), sorted(EXPECTED_LINKS))
        for link, gid in EXPECTED_LINKS.items():
            path = os.path.join(names, link)
            self.assertTrue(os.path.islink(path), link)
            self.assertEqual(os.readlink(path), "../orgs/" + gid)
            self.assertEqual(os.path.realpath(path), mount.p("orgs", gid))
        self.assertIn("workspace.json",
                      os.listdir(os.path.join(names, "Acme (1331)")))
        self.assertIn("exports", os.listdir(os.path.join(names, "Acme (1331)")))
        out = run(["ls", "-l", names]).stdout
        self.assertIn("Acme (1331) -> ../orgs/1331", out)
        self.assertIn("Acme (1331) (1336) -> ../orgs/1336", out)
        self.assertRegex(out, r"(?m)^l")
        self.assertFalse(os.path.lexists(os.path.join(names, "Acme")))
        self.assertFalse(os.path.lexists(os.path.join(names, "nothing")))
        with self.assertRaises(OSError) as caught:
            os.symlink("../orgs/1331", os.path.join(names, "mine"))
        self.assertEqual(caught.exception.errno, errno.EACCES)


if __name__ == "__main__":
    main()
