"""Secrets and access.

The token and download URLs stay out of logs, the cache, the command line
and error messages. No Authorization header goes to a storage host, even
after a redirect. The cache is private, and another user cannot read a
mount without allow_other. Plain http to a host that is not loopback is
rejected before any connection."""

import errno
import json
import os
import stat
import subprocess

from harness import (ASANAFS, ORG, ArchiveTestCase, main, read_text,
                     record_trials, sha256_file, wait_for)
from recorder import Recorder

SECRET = "asanafs-secret-7f3c9e1d2b6a"
WRONG_SECRET = "asanafs-wrong-0d8e4c2a9f17"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Text that any download URL of the stand-in contains in its query.
URL_MARKERS = ("X-Signature", "X-Expires", "X-Id=", "export.json.gz?")


def files_under(folder):
    for root, dirs, files in os.walk(folder):
        for name in files:
            yield os.path.join(root, name)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class SecretsTest(ArchiveTestCase):
    archive_size = 1024 * 1024
    standin_options = {"export_seconds": 1, "token": SECRET}

    def use_mount(self, mount):
        """Reads an export through a drop, an expired URL and a refused
        export, so that retries, URL refreshes and errors are logged.
        Returns the error texts that users saw."""
        gid, path = self.finished_export(mount)
        self.standin.fault(expire_after_bytes={"bytes": 200000, "count": 1},
                           drop={"after_bytes": 100000, "count": 1})
        self.assertEqual(sha256_file(path), self.sha)
        self.assertNotIn(b"X-Signature", read_bytes(
            mount.p("orgs", ORG, "exports", gid, "info.json")))

        seen = []
        self.standin.fault(api_status={"status": 403, "count": 1,
                                       "prefix": "POST /organization_exports"})
        new = mount.p("orgs", ORG, "exports", "new")
        result = subprocess.run(["sh", "-c", "echo > '%s'" % new],
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        seen.append(result.stderr)
        text = read_text(new)
        self.assertTrue(text.startswith("error: "), text)
        seen.append(text)
        for folder in ("1332", "999"):
            result = subprocess.run(["ls", mount.p("orgs", folder, "exports")],
                                    capture_output=True, text=True, timeout=60)
            self.assertNotEqual(result.returncode, 0)
            seen.append(result.stderr)
        return seen

    def mount_texts(self, mount):
        """Returns the content of every small file and every extended
        attribute in the mount."""
        texts = []
        attributes = 0
        for root, dirs, files in os.walk(mount.path):
            for name in dirs + files:
                path = os.path.join(root, name)
                for attribute in os.listxattr(path, follow_symlinks=False):
                    value = os.getxattr(path, attribute, follow_symlinks=False)
                    texts.append(value.decode(errors="replace"))
                    attributes += 1
                if name in files and not name.startswith("export.json"):
                    texts.append(read_bytes(path).decode(errors="replace"))
        self.assertGreater(attributes, 0, "no extended attribute was read")
        return texts

    def assert_no_secret(self, mount, seen, token):
        seen = seen + self.mount_texts(mount)
        text = mount.log()
        signatures = tuple(sorted({r["signature"] for r in self.standin.requests()
                                   if r.get("signature")}))
        secrets = (token,) + URL_MARKERS + signatures
        for secret in secrets:
            self.assertNotIn(secret, text, "in the log")
            for message in seen:
                self.assertNotIn(secret, message, "in an error message")
        for path in files_under(mount.cache_dir):
            data = read_bytes(path)
            for secret in secrets:
                self.assertNotIn(secret.encode(), data, path)
        for name in ("cmdline", "environ"):
            data = read_bytes("/proc/%d/%s" % (mount.proc.pid, name))
            self.assertNotIn(token.encode(), data, "/proc/PID/" + name)

    def test_token_from_environment(self):
        mount = self.mount(args=["-d"], token=SECRET)
        seen = self.use_mount(mount)
        self.assertIn("debug:", mount.log())
        self.assertTrue(any(r.get("signature") for r in self.standin.requests()))
        self.assert_no_secret(mount, seen, SECRET)
        record_trials("security", "token and URLs absent, token from "
                      "environment, -d", 1, 0,
                      "not in log, cache, /proc, messages")

    def test_token_from_file(self):
        token_file = os.path.join(self.workdir, "token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (SECRET + "\n").encode())
        os.close(fd)
        mount = self.mount(args=["-d"], token=None,
                           options=["token_file=" + token_file])
        seen = self.use_mount(mount)
        self.assert_no_secret(mount, seen, SECRET)
        record_trials("security", "token and URLs absent, token from "
                      "token_file, -d", 1, 0,
                      "not in log, cache, /proc, messages")

    def test_wrong_token(self):
        # asanafs checks the token before mounting, and exits with 3 when
        # Asana rejects it.
        mount = self.mount(args=["-d"], token=WRONG_SECRET, start=False)
        os.makedirs(mount.path)
        env = dict(os.environ, ASANA_ACCESS_TOKEN=WRONG_SECRET)
        result = subprocess.run(mount.command(), capture_output=True,
                                text=True, timeout=60, env=env)
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("401", result.stderr)
        self.assertFalse(os.path.ismount(mount.path))
        self.assertNotIn(WRONG_SECRET, result.stdout + result.stderr)
        for path in files_under(mount.cache_dir):
            self.assertNotIn(WRONG_SECRET.encode(), read_bytes(path), path)
        record_trials("security", "rejected token absent, -d", 1, 0,
                      "exit 3, not in output or cache")


class HeadersTest(ArchiveTestCase):
    archive_size = 1024 * 1024

    def download_requests(self):
        return [r for r in self.standin.requests() if r["server"] == "download"]

    def test_no_authorization_to_storage(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        compressed = os.path.getsize(self.archive)
        self.standin.fault(drop={"after_bytes": compressed // 2, "count": 1})
        self.assertEqual(sha256_file(path), self.sha)
        requests = self.download_requests()
        self.assertGreaterEqual(len(requests), 3, "tail, download, resume")
        for request in requests:
            names = [name.lower() for name in request["headers"]]
            self.assertNotIn("authorization", names, request["path"])
        api = [r for r in self.standin.requests() if r["server"] == "api"]
        self.assertTrue(all(r["headers"].get("Authorization") == "<present>"
                            for r in api))
        record_trials("security", "no Authorization to the storage host",
                      len(requests), 0, "none sent")

    def test_no_authorization_after_redirect(self):
        recorder = Recorder(redirect_origin=self.standin.download_base).start()
        try:
            mount = self.mount()
            # The second redirect names credentials, which libcurl must not
            # turn into an Authorization header either.
            locations = [recorder.origin,
                         recorder.origin.replace("http://", "http://u:pw7@")]
            for location in locations:
                gid, path = self.finished_export(mount)
                self.standin.reset_counts()
                self.standin.fault(redirect={"location": location, "count": 2})
                self.assertEqual(sha256_file(path), self.sha)
                redirected = [r for r in self.download_requests()
                              if r.get("redirected_to")]
                self.assertGreaterEqual(len(redirected), 1, location)
                for request in self.download_requests():
                    names = [name.lower() for name in request["headers"]]
                    self.assertNotIn("authorization", names)
            elsewhere = recorder.received()
            self.assertGreaterEqual(len(elsewhere), len(locations))
            for request in elsewhere:
                names = [name.lower() for name in request["headers"]]
                self.assertNotIn("authorization", names)
                self.assertNotIn("cookie", names)
            for secret in URL_MARKERS + ("pw7",):
                self.assertNotIn(secret, mount.log())
            record_trials("security", "no Authorization after a storage "
                          "redirect", len(elsewhere), 0, "none sent")
        finally:
            recorder.stop()

    def test_bad_download_urls_rejected(self):
        recorder = Recorder().start()
        try:
            mount = self.mount()
            host = recorder.origin[len("http://"):]
            cases = [("user info", "http://user:pw9@%s/x.gz?X-Signature=s" % host,
                      "user info"),
                     ("file scheme", "file:///etc/passwd", "not a valid URL"),
                     ("ftp scheme", "ftp://%s/x.gz" % host, "scheme ftp")]
            for case, url, log_text in cases:
                gid = self.standin.create_export(state="finished")["gid"]
                record = {"gid": gid, "resource_type": "organization_export",
                          "created_at": "2024-01-01T00:00:00.000Z",
                          "download_url": url, "state": "finished",
                          "organization": {"gid": ORG,
                                           "resource_type": "workspace"}}
                self.standin.fault(api_status={
                    "status": 200, "body": json.dumps({"data": record}),
                    "content_type": "application/json", "count": -1,
                    "prefix": "GET /organization_exports/"})
                os.mkdir(mount.p("orgs", ORG, "exports", gid))
                result = subprocess.run(
                    ["cat", mount.p("orgs", ORG, "exports", gid, "export.json")],
                    capture_output=True, timeout=60)
                self.standin.clear_faults()
                self.assertNotEqual(result.returncode, 0, case)
                self.assertIn(b"Input/output error", result.stderr, case)
                self.assertIn(log_text, mount.log(), case)
                self.assertNotIn("pw9", mount.log())
            self.assertEqual(recorder.received(), [])
            self.assertIsNone(mount.proc.poll())
            record_trials("security", "download URL with user info or "
                          "another scheme", len(cases), 0,
                          "EIO, no request sent")
        finally:
            recorder.stop()


class AccessTest(ArchiveTestCase):
    archive_size = 256 * 1024

    def test_cache_modes(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        self.assertEqual(sha256_file(path), self.sha)
        self.create_export(mount)
        checked = 0
        for root, dirs, files in os.walk(mount.cache_dir):
            self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700, root)
            checked += 1
            for name in files:
                file = os.path.join(root, name)
                self.assertEqual(stat.S_IMODE(os.lstat(file).st_mode), 0o600,
                                 file)
                checked += 1
        self.assertGreaterEqual(checked, 6)
        record_trials("security", "cache folders 0700, files 0600", checked, 0,
                      "all private")

    def as_nobody(self, *command):
        return subprocess.run(NOBODY + list(command), capture_output=True,
                              text=True, timeout=60)

    def test_other_user_denied(self):
        # Let the other user reach the mount point, so that only FUSE's own
        # check can stop it.
        os.chmod(self.workdir, 0o755)
        mount = self.mount()
        gid, path = self.finished_export(mount)
        trials = 0
        for command in (["ls", mount.path], ["stat", mount.p("orgs")],
                        ["cat", mount.p("orgs", ORG, "workspace.json")],
                        ["cat", path], ["ls", mount.cache_dir]):
            result = self.as_nobody(*command)
            trials += 1
            self.assertNotEqual(result.returncode, 0, command)
            self.assertIn("Permission denied", result.stderr, command)
        mount.stop()

        # With allow_other the same user gets in, which shows the commands
        # above failed for the mount's reason and not for another.
        shared = self.mount(options=["allow_other"], name="shared")
        result = self.as_nobody("cat", shared.p("orgs", ORG, "workspace.json"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(ORG, result.stdout)
        record_trials("security", "another uid without allow_other", trials,
                      0, "EACCES")

    def test_plain_http_to_remote_host_rejected(self):
        hosts = ["192.0.2.10", "example.com", "[2001:db8::1]",
                 "127.0.0.1.example.com", "localhost.example.com",
                 "0.0.0.0", "[::ffff:127.0.0.1]"]
        mount_point = os.path.join(self.workdir, "refused")
        os.makedirs(mount_point)
        env = dict(os.environ, ASANA_ACCESS_TOKEN=SECRET)
        for host in hosts:
            command = ["unshare", "--net", ASANAFS, mount_point, "-f",
                       "-o", "api_url=http://%s/api/1.0" % host,
                       "-o", "cache_dir=" + os.path.join(self.workdir, "c")]
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=60, env=env)
            self.assertEqual(result.returncode, 1, host)
            self.assertIn("plain http", result.stderr, host)
            self.assertIn("loopback", result.stderr, host)
            self.assertNotIn("connect", result.stderr, host)
            self.assertNotIn(SECRET, result.stderr + result.stdout)
            self.assertFalse(os.path.ismount(mount_point), host)
        record_trials("security", "plain http to a non-loopback host",
                      len(hosts), 0, "rejected at start, no connection")


if __name__ == "__main__":
    main()
