"""Bad input through a real mount: bad names in every folder and through
every changing operation, writes to read-only files, reads far past the
end, zero-length writes, and broken replies from the API and the storage
host. Each must fail with the errno a user expects, create nothing on
disk, log the failure and leave the mount working.

The errno expected for a name that does not exist, by operation:

| operation                          | errno                                |
| ---------------------------------- | ------------------------------------ |
| stat, rmdir, unlink, rename from   | ENOENT: nothing has that name        |
| open for writing, truncate, chmod  | ENOENT                               |
| utime                              | ENOENT                               |
| open(O_CREAT), rename to           | EACCES: the tree is read-only        |
| mkdir outside exports/             | EACCES                               |
| mkdir exports/NAME, NAME no gid    | EINVAL: export folders are gids      |
| mkdir exports/GID, GID unknown     | ENOENT: Asana replies 404            |
| any, name over 255 bytes           | ENAMETOOLONG                         |
| any, parent is a file              | ENOTDIR                              |

`..` is resolved by the kernel to the parent folder, so it gets the
kernel's answers for an existing folder: EEXIST for mkdir, ENOTEMPTY for
rmdir, EISDIR for unlink and for opening or truncating it for writing,
EBUSY for rename, and EACCES from asanafs for chmod and utime of the
parent."""

import errno
import gzip
import json
import os
import re
import struct
import subprocess
import time
import zlib

from harness import (ORG, ArchiveTestCase, main, read_text, record_trials,
                     sha256_file, wait_for)
from recorder import Recorder

WORKSPACE = "1332"
UNKNOWN_GID = "1205999999999999"

NAMES = {
    "letters": "abc",
    "255 bytes": "x" * 255,
    "256 bytes": "x" * 256,
    "1100 bytes": "y" * 1100,
    "dot-dot": "..",
    "spaces": "a b c",
    "quotes": "q'\"`",
    "non-ASCII": "\u00fcn\u00efc\u00f8d\u00e9-\u65e5\u672c",
    "32 digits": "9" * 32,
    "unknown gid": UNKNOWN_GID,
    "negative": "-1",
}

OPERATIONS = ("stat", "mkdir", "rmdir", "create", "unlink", "rename from",
              "rename to", "write", "truncate", "chmod", "utime")

# What ".." gets from the kernel, per operation (see the module docstring).
DOT_DOT = {"stat": 0, "mkdir": errno.EEXIST, "rmdir": errno.ENOTEMPTY,
           "create": errno.EISDIR, "unlink": errno.EISDIR,
           "rename from": errno.EBUSY, "rename to": errno.EBUSY,
           "write": errno.EISDIR, "truncate": errno.EISDIR,
           "chmod": errno.EACCES, "utime": errno.EACCES}


def expected_errno(folder_kind, name_key, name, operation):
    """Returns the errno the table in the module docstring gives, or 0."""
    if folder_kind == "file":
        return errno.ENOTDIR
    if name_key == "dot-dot":
        return DOT_DOT[operation]
    if len(name.encode()) > 255:
        return errno.ENAMETOOLONG
    if operation in ("create", "rename to"):
        return errno.EACCES
    if operation == "mkdir":
        if folder_kind != "exports":
            return errno.EACCES
        return errno.ENOENT if name_key == "unknown gid" else errno.EINVAL
    return errno.ENOENT


def attempt(operation, path, existing_file):
    """Runs one operation on PATH and returns 0 or the errno it failed with."""
    try:
        if operation == "stat":
            os.stat(path)
        elif operation == "mkdir":
            os.mkdir(path)
        elif operation == "rmdir":
            os.rmdir(path)
        elif operation == "create":
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
        elif operation == "unlink":
            os.unlink(path)
        elif operation == "rename from":
            os.rename(path, existing_file + ".renamed")
        elif operation == "rename to":
            os.rename(existing_file, path)
        elif operation == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
        elif operation == "truncate":
            os.truncate(path, 0)
        elif operation == "chmod":
            os.chmod(path, 0o600)
        elif operation == "utime":
            os.utime(path, (1, 1))
        return 0
    except OSError as error:
        return error.errno


def disk_snapshot(workdir, skip):
    """Lists every path under WORKDIR except the folders in SKIP."""
    found = set()
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), workdir))
    return found


def tree_snapshot(mount, folders):
    return {folder: sorted(os.listdir(mount.p(folder))) for folder in folders}


class BadNamesTest(ArchiveTestCase):
    archive_size = 256 * 1024

    def test_bad_names_in_every_folder(self):
        mount = self.mount()
        gid, _ = self.finished_export(mount)
        folders = {
            "root": "",
            "orgs": "orgs",
            "org": "orgs/" + ORG,
            "workspace": "orgs/" + WORKSPACE,
            "exports": "orgs/%s/exports" % ORG,
            "export": "orgs/%s/exports/%s" % (ORG, gid),
            "names": "names",
            "file": "orgs/%s/workspace.json" % ORG,
        }
        listed = [f for k, f in folders.items() if k != "file"]
        existing_file = mount.p("orgs", ORG, "workspace.json")
        skip = {mount.path, mount.cache_dir}
        disk_before = disk_snapshot(self.workdir, skip)
        cache_before = disk_snapshot(mount.cache_dir, set())
        tree_before = tree_snapshot(mount, listed)
        workspace_json = read_text(existing_file)

        mismatches = []
        trials = {operation: 0 for operation in OPERATIONS}
        failures = {operation: 0 for operation in OPERATIONS}
        for folder_kind, folder in folders.items():
            for name_key, name in NAMES.items():
                # The root's ".." is the folder above the mount point.
                if folder_kind == "root" and name_key == "dot-dot":
                    continue
                path = mount.p(folder, name)
                for operation in OPERATIONS:
                    want = expected_errno(folder_kind, name_key, name, operation)
                    got = attempt(operation, path, existing_file)
                    trials[operation] += 1
                    if got != want:
                        failures[operation] += 1
                        mismatches.append("%s %s/<%s>: %s, expected %s" % (
                            operation, folder_kind, name_key,
                            errno.errorcode.get(got, got),
                            errno.errorcode.get(want, want)))

        for operation in OPERATIONS:
            record_trials("bad input", "bad names: " + operation,
                          trials[operation], failures[operation],
                          "expected errno, nothing created")
        self.assertEqual(mismatches, [])
        self.assertIsNone(mount.proc.poll(), "asanafs exited")
        self.assertEqual(disk_snapshot(self.workdir, skip), disk_before)
        self.assertEqual(tree_snapshot(mount, listed), tree_before)
        self.assertEqual(read_text(existing_file), workspace_json)
        self.assertEqual(disk_snapshot(mount.cache_dir, set()), cache_before)
        for root, dirs, files in os.walk(mount.cache_dir):
            for entry in dirs + files:
                for name_key, name in NAMES.items():
                    if name_key != "dot-dot":
                        self.assertNotIn(name, entry, os.path.join(root, entry))

    def test_read_only_files_and_odd_sizes(self):
        mount = self.mount()
        gid, path = self.finished_export(mount)
        export = mount.p("orgs", ORG, "exports", gid)
        read_only = [mount.p("orgs", ORG, "workspace.json"),
                     os.path.join(export, "state"),
                     os.path.join(export, "info.json"),
                     os.path.join(export, "progress"),
                     os.path.join(export, "export.json"),
                     os.path.join(export, "export.json.gz")]
        trials = 0
        for file in read_only:
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND,
                          os.O_WRONLY | os.O_TRUNC):
                trials += 1
                with self.assertRaises(OSError) as caught:
                    os.close(os.open(file, flags))
                self.assertEqual(caught.exception.errno, errno.EACCES,
                                 "%s with flags %o" % (file, flags))
        record_trials("bad input", "writes to read-only files", trials, 0,
                      "EACCES")

        # Reads at and far past the end return no bytes.
        trials = 0
        for file in read_only:
            with open(file, "rb") as f:
                # progress has size 0, as files in /proc do, so its end is
                # where its content ends.
                size = max(os.fstat(f.fileno()).st_size, len(f.read()))
                for offset in (size, size + 1, 1 << 31, 1 << 40, (1 << 62)):
                    trials += 1
                    self.assertEqual(os.pread(f.fileno(), 4096, offset), b"",
                                     "%s at %d" % (file, offset))
        record_trials("bad input", "reads far past the end", trials, 0,
                      "no bytes, no error")
        self.assertEqual(sha256_file(path), self.sha)

        # A zero-length write to `new` starts no export.
        new = mount.p("orgs", ORG, "exports", "new")
        before = read_text(new)
        posts = self.count("POST /organization_exports")
        for _ in range(3):
            fd = os.open(new, os.O_WRONLY)
            try:
                self.assertEqual(os.write(fd, b""), 0)
            finally:
                os.close(fd)
        self.assertEqual(self.count("POST /organization_exports"), posts)
        self.assertEqual(read_text(new), before)
        self.assertEqual(sorted(os.listdir(mount.p("orgs", ORG, "exports"))),
                         sorted([gid, "latest", "new"]))
        record_trials("bad input", "zero-length writes to new", 3, 0,
                      "no export started")
        self.assertIsNone(mount.proc.poll(), "asanafs exited")


# Bad replies to GET /organization_exports/GID: case, the fault switch,
# the errno of the mkdir that fetched it, and text of its log line.
JSON_TYPE = "application/json; charset=UTF-8"
HTML_PAGE = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title>"
             "</head><body><h1>Bad Gateway</h1></body></html>")
BAD_API_REPLIES = [
    ("malformed JSON",
     {"status": 200, "body": '{"data": {"gid": "1", "state": ',
      "content_type": JSON_TYPE},
     errno.EIO, "not valid JSON"),
    ("wrong types",
     {"status": 200, "body": '{"data": {"gid": 12, "state": ["x"], '
      '"created_at": 5, "organization": "1331"}}',
      "content_type": JSON_TYPE},
     errno.EIO, "invalid gid"),
    ("missing data",
     {"status": 200, "body": '{"gid": "1", "state": "finished"}',
      "content_type": JSON_TYPE},
     errno.EIO, "no data object"),
    ("data of null",
     {"status": 200, "body": '{"data": null}', "content_type": JSON_TYPE},
     errno.EIO, "no data object"),
    ("body over the cap",
     {"status": 200, "body": "[" * 1024, "repeat": 9 * 1024,
      "content_type": JSON_TYPE},
     errno.EIO, "larger than the limit"),
    ("HTML page with 200",
     {"status": 200, "body": HTML_PAGE, "content_type": "text/html"},
     errno.EIO, "not valid JSON"),
    ("HTML error page",
     {"status": 404, "body": HTML_PAGE, "content_type": "text/html"},
     errno.ENOENT, "404"),
    ("Content-Length too short",
     {"status": 200, "body": '{"data": {"gid": "1"}}', "content_length": 5,
      "content_type": JSON_TYPE},
     errno.EIO, "not valid JSON"),
    ("Content-Length too long",
     {"status": 200, "body": '{"data": {"gid": "1"}}',
      "content_length": 5000, "content_type": JSON_TYPE},
     errno.EIO, "bytes remaining to read"),
]




def corrupt_trailer(source, target, field):
    """Copies the gzip archive SOURCE to TARGET with a wrong CRC-32 or ISIZE
    in its trailer."""
    with open(source, "rb") as f:
        data = bytearray(f.read())
    offset = -8 if field == "crc" else -4
    value = struct.unpack("<I", data[offset:offset + 4 or None])[0]
    data[offset:offset + 4 or None] = struct.pack("<I", value ^ 0x5A5A)
    with open(target, "wb") as f:
        f.write(bytes(data))


def open_handles(debug_log):
    """Counts the handles that the requests in libfuse's -d output opened
    and did not release yet."""
    opcodes = {}
    count = 0
    for line in debug_log.splitlines():
        request = re.match(r"unique: (\d+), opcode: (\w+)", line)
        if request:
            opcodes[request.group(1)] = request.group(2)
            if request.group(2) in ("RELEASE", "RELEASEDIR"):
                count -= 1
            continue
        reply = re.match(r"\s+unique: (\d+), success", line)
        if reply and opcodes.get(reply.group(1)) in ("OPEN", "OPENDIR",
                                                     "CREATE"):
            count += 1
    return count


class BadRepliesTest(ArchiveTestCase):
    """Each bad reply makes one mkdir or one read fail with a log line, and
    then the mount still works. A mkdir fetches the export record, and a
    read downloads the archive."""

    archive_size = 512 * 1024
    standin_options = {"export_seconds": 0}

    def adopt(self, mount, gid):
        """Runs mkdir exports/GID and returns 0 or its errno."""
        try:
            os.mkdir(mount.p("orgs", ORG, "exports", gid))
            return 0
        except OSError as error:
            return error.errno

    def check_bad_reply(self, mount, case, fault, expected, log_text):
        gid = self.standin.create_export(state="finished")["gid"]
        log_start = len(mount.log())
        self.standin.fault(api_status=dict(fault, prefix="GET /organization_exports/",
                                           count=-1))
        got = self.adopt(mount, gid)
        self.standin.clear_faults()
        self.assertEqual(got, expected, "%s: %s" % (case, errno.errorcode.get(got)))
        self.assertIsNone(mount.proc.poll(), "asanafs exited after " + case)
        self.assertIn(log_text, mount.log()[log_start:], case)
        self.assertIn("adopting export %s failed" % gid, mount.log()[log_start:])
        # The mount still works: the same mkdir succeeds once the replies are
        # good again, and the export reads in full.
        self.assertEqual(self.adopt(mount, gid), 0, case)
        path = mount.p("orgs", ORG, "exports", gid, "export.json")
        self.assertEqual(sha256_file(path), self.sha, case)

    def test_bad_api_replies(self):
        mount = self.mount(options=["timeout=10"])
        for case, fault, expected, log_text in BAD_API_REPLIES:
            passed = False
            with self.subTest(case=case):
                self.check_bad_reply(mount, case, fault, expected, log_text)
                passed = True
            record_trials("bad input", "reply to GET /organization_exports/GID: "
                          + case, 1, 0 if passed else 1,
                          "%s, logged, mount up" % errno.errorcode[expected])

    def test_bad_listing_replies(self):
        # Every case fails the listing with EIO, a 404 too: glibc would
        # take ENOENT from a folder listing for its end.
        wording = {"wrong types": "no data array",
                   "missing data": "no data array",
                   "data of null": "no data array"}
        mount = self.mount(options=["timeout=10"])
        orgs = mount.p("orgs")
        listing = sorted(os.listdir(orgs))
        passed = 0
        for case, fault, _, log_text in BAD_API_REPLIES:
            with self.subTest(case=case):
                # The list is fetched again once state_ttl (1 s) has passed.
                time.sleep(1.2)
                log_start = len(mount.log())
                self.standin.fault(api_status=dict(fault, prefix="GET /workspaces",
                                                   count=-1))
                result = subprocess.run(["ls", orgs], capture_output=True,
                                        text=True, timeout=120)
                self.standin.clear_faults()
                self.assertNotEqual(result.returncode, 0, case)
                self.assertIn("Input/output error", result.stderr, case)
                log = mount.log()[log_start:]
                self.assertIn("listing workspaces failed", log, case)
                self.assertIn(wording.get(case, log_text), log, case)
                self.assertIsNone(mount.proc.poll(), "asanafs exited")
                self.assertEqual(sorted(os.listdir(orgs)), listing, case)
                passed += 1
        record_trials("bad input", "reply to GET /workspaces: all %d bad kinds"
                      % len(BAD_API_REPLIES),
                      len(BAD_API_REPLIES), len(BAD_API_REPLIES) - passed,
                      "EIO, logged, mount up")

    def test_bad_workspace_items(self):
        mount = self.mount(options=["timeout=10"])
        orgs = mount.p("orgs")
        listing = sorted(os.listdir(orgs))
        skip = {mount.path, mount.cache_dir}
        disk_before = disk_snapshot(self.workdir, skip)
        cases = [
            ("gid with a path", {"gid": "../../evil", "name": "x"},
             "invalid gid"),
            ("gid with a slash", {"gid": "1/2", "name": "x"}, "invalid gid"),
            ("gid as a number", {"gid": 1331, "name": "x"}, "invalid gid"),
            ("gid of 40 digits", {"gid": "9" * 40, "name": "x"}, "invalid gid"),
            ("empty gid", {"gid": "", "name": "x"}, "invalid gid"),
            ("item not an object", 5, "not an object"),
        ]
        passed = 0
        for case, item, log_text in cases:
            with self.subTest(case=case):
                time.sleep(1.2)
                log_start = len(mount.log())
                body = json.dumps({"data": [item]})
                self.standin.fault(api_status={
                    "status": 200, "body": body, "content_type": JSON_TYPE,
                    "prefix": "GET /workspaces", "count": -1})
                with self.assertRaises(OSError) as caught:
                    os.listdir(orgs)
                self.standin.clear_faults()
                self.assertEqual(caught.exception.errno, errno.EIO, case)
                self.assertIn(log_text, mount.log()[log_start:], case)
                self.assertEqual(sorted(os.listdir(orgs)), listing, case)
                passed += 1
        record_trials("bad input", "invalid workspace list items (paths, "
                      "numbers, empty gids, non-objects)", len(cases),
                      len(cases) - passed, "EIO, logged, nothing created")

        # A gid listed twice, as when the list changes between pages, shows
        # as one folder.
        time.sleep(1.2)
        body = json.dumps({"data": [{"gid": ORG, "name": "a",
                                     "is_organization": True},
                                    {"gid": ORG, "name": "a",
                                     "is_organization": True}]})
        self.standin.fault(api_status={
            "status": 200, "body": body, "content_type": JSON_TYPE,
            "prefix": "GET /workspaces", "count": -1})
        self.assertEqual(os.listdir(orgs), [ORG])
        self.standin.clear_faults()
        self.assertIn("duplicate entries", mount.log())
        record_trials("bad input", "workspace list item: duplicate gid", 1, 0,
                      "listed once, logged")

        # Workspace names become link names in names/, so odd names must
        # give valid, distinct file names that point into orgs/.
        hostile = ["../../etc", ".", "..", "", "a/b", "x\n\ty\x7f",
                   "\u00e9" * 200, "Same", "Same", "Same (1400000000000003)"]
        items = [{"gid": str(1400000000000001 + i), "name": name,
                  "is_organization": True} for i, name in enumerate(hostile)]
        time.sleep(1.2)
        self.standin.fault(api_status={
            "status": 200, "body": json.dumps({"data": items}),
            "content_type": JSON_TYPE, "prefix": "GET /workspaces", "count": -1})
        links = os.listdir(mount.p("names"))
        targets = sorted(os.readlink(mount.p("names", link)) for link in links)
        self.standin.clear_faults()
        self.assertEqual(len(links), len(hostile))
        self.assertEqual(len(set(links)), len(links))
        for link in links:
            self.assertNotIn(link, ("", ".", ".."))
            self.assertNotIn("/", link)
            self.assertLessEqual(len(link.encode()), 255, link)
            self.assertFalse(any(ord(c) < 0x20 or ord(c) == 0x7f for c in link),
                             repr(link))
        self.assertEqual(targets, sorted("../orgs/" + item["gid"]
                                         for item in items))
        record_trials("bad input", "hostile workspace names in names/",
                      len(hostile), 0, "valid, distinct links into orgs/")
        self.assertEqual(disk_snapshot(self.workdir, skip), disk_before)
        for path in disk_snapshot(mount.cache_dir, set()):
            self.assertNotIn("evil", path)
        self.assertIsNone(mount.proc.poll())

    def test_bad_create_replies(self):
        mount = self.mount(options=["timeout=10"])
        new = mount.p("orgs", ORG, "exports", "new")
        passed = 0
        for case, fault, expected, log_text in BAD_API_REPLIES:
            with self.subTest(case=case):
                log_start = len(mount.log())
                self.standin.fault(api_status=dict(
                    fault, prefix="POST /organization_exports", count=-1))
                with self.assertRaises(OSError) as caught:
                    with open(new, "w") as f:
                        f.write("\n")
                self.standin.clear_faults()
                self.assertEqual(caught.exception.errno, expected, case)
                text = read_text(new)
                self.assertTrue(text.startswith("error: "), text)
                self.assertIn(log_text, text, case)
                self.assertIn("starting an export of organization %s failed"
                              % ORG, mount.log()[log_start:], case)
                self.assertIsNone(mount.proc.poll(), "asanafs exited")
                self.create_export(mount)
                passed += 1
        record_trials("bad input", "reply to POST /organization_exports: all "
                      "%d bad kinds" % len(BAD_API_REPLIES),
                      len(BAD_API_REPLIES), len(BAD_API_REPLIES) - passed,
                      "EIO (ENOENT for 404), message in new, logged")

    def test_bad_replies_under_valgrind(self):
        # valgrind does not run a binary built with a sanitizer. In such a
        # build the sanitizer checks this run for leaks and memory errors
        # instead, and tools/test.sh fails on any report it writes.
        sanitized = os.environ.get("ASANAFS_SANITIZE", "none") != "none"
        mount = self.mount(options=["timeout=20"], args=["-d"], start=False)
        vg_log = os.path.join(self.workdir, "valgrind.log")
        command = mount.command
        if not sanitized:
            mount.command = lambda: [
                "valgrind", "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                "--log-file=" + vg_log] + command()
        mount.start()
        for case, fault, expected, log_text in BAD_API_REPLIES:
            self.check_bad_reply(mount, case, fault, expected, log_text)
        bad = os.path.join(self.workdir, "bad-crc.json.gz")
        corrupt_trailer(self.archive, bad, "crc")
        gid = self.standin.create_export(state="finished", archive=bad)["gid"]
        self.assertEqual(self.adopt(mount, gid), 0)
        with self.assertRaises(OSError):
            sha256_file(mount.p("orgs", ORG, "exports", gid, "export.json"))
        # The kernel sends RELEASE after close() returns, so an unmount
        # right away could end asanafs with a handle open, which is not a
        # leak.
        wait_for(lambda: open_handles(mount.log()) == 0, 30,
                 what="the kernel to release every handle")
        process = mount.proc
        mount.stop()
        if sanitized:
            # A sanitizer report makes the process abort (abort_on_error
            # in tools/test.sh), so a clean exit means no report.
            self.assertEqual(process.returncode, 0, mount.log()[-3000:])
            return
        report = read_text(vg_log)
        self.assertIn("ERROR SUMMARY: 0 errors", report)
        self.assertRegex(report, r"definitely lost: 0 bytes|no leaks are possible")
        record_trials("bad input", "bad replies under valgrind",
                      len(BAD_API_REPLIES) + 1, 0,
                      "no leak, no memory error")

    def test_api_redirect_to_another_host(self):
        recorder = Recorder().start()
        try:
            mount = self.mount(options=["timeout=10"])
            gid = self.standin.create_export(state="finished")["gid"]
            for status in (301, 302, 307, 308):
                self.standin.fault(api_status={
                    "status": status, "location": recorder.origin + "/api/1.0",
                    "prefix": "GET /organization_exports/", "count": -1})
                self.assertEqual(self.adopt(mount, gid), errno.EIO)
                self.standin.clear_faults()
                self.assertIn("does not follow API redirects", mount.log())
            self.assertEqual(recorder.received(), [])
            self.assertEqual(self.adopt(mount, gid), 0)
            self.assertIsNone(mount.proc.poll())
            record_trials("bad input", "API redirect to another host", 4, 0,
                          "EIO, not followed, logged")
        finally:
            recorder.stop()

    def test_bad_storage_replies(self):
        mount = self.mount(options=["timeout=10"])
        xml = ('<?xml version="1.0"?><Error><Code>InternalError</Code>'
               '<Message>We encountered an internal error.</Message></Error>')
        cases = [
            ("HTML page with 200", {"status": 200, "body": HTML_PAGE}),
            ("HTML error page", {"status": 502, "body": HTML_PAGE}),
            ("XML error", {"status": 500, "body": xml,
                           "content_type": "application/xml"}),
            # A listed file must not vanish: ENOENT would make rsync
            # --delete remove the backup's copy.
            ("404 Not Found", {"status": 404, "body": xml,
                               "content_type": "application/xml"}),
            ("Content-Length too short", {"status": 200, "body": HTML_PAGE,
                                          "content_length": 5}),
            ("Content-Length too long", {"status": 200, "body": HTML_PAGE,
                                         "content_length": 1 << 20}),
        ]
        passed = 0
        for case, fault in cases:
            with self.subTest(case=case):
                # The size probe runs before the fault, so only the download
                # gets the bad reply.
                gid, path = self.finished_export(mount)
                log_start = len(mount.log())
                self.standin.fault(storage_reply=dict(fault, count=-1))
                result = subprocess.run(["cat", path], capture_output=True,
                                        timeout=120)
                self.standin.clear_faults()
                self.assertNotEqual(result.returncode, 0, case)
                self.assertIn(b"Input/output error", result.stderr, case)
                self.assertIn("download of export %s failed" % gid,
                              mount.log()[log_start:], case)
                self.assertIsNone(mount.proc.poll(), "asanafs exited")
                data = os.path.join(mount.cache_dir, "data", gid)
                # Not even meta is kept, so the next read probes again.
                self.assertEqual(os.listdir(data), [], case)
                self.assertEqual(sha256_file(path), self.sha, case)
                passed += 1
        record_trials("bad input", "storage host replies (HTML, XML error, "
                      "404, wrong Content-Length)", len(cases), len(cases) - passed,
                      "EIO, logged, not cached, next read works")

    def test_bad_archives(self):
        mount = self.mount()
        bad = {}
        for field in ("crc", "isize"):
            bad[field] = os.path.join(self.workdir, "bad-%s.json.gz" % field)
            corrupt_trailer(self.archive, bad[field], field)
        # A trailer whose ISIZE is wrong shows as the wrong size at stat, so
        # the download is the first place the data can disagree with it.
        cases = [("gzip CRC mismatch", bad["crc"], "incorrect data check"),
                 ("gzip length mismatch", bad["isize"], "incorrect length check")]
        for case, archive, log_text in cases:
            gid = self.standin.create_export(state="finished",
                                             archive=archive)["gid"]
            self.assertEqual(self.adopt(mount, gid), 0)
            path = mount.p("orgs", ORG, "exports", gid, "export.json")
            for attempt_number in range(2):
                with self.assertRaises(OSError) as caught:
                    with open(path, "rb") as f:
                        while f.read(1 << 20):
                            pass
                self.assertEqual(caught.exception.errno, errno.EIO, case)
            self.assertIn("download of export %s failed" % gid, mount.log())
            self.assertIn(log_text, mount.log())
            data = os.path.join(mount.cache_dir, "data", gid)
            self.assertFalse(os.path.exists(os.path.join(data, "export.json")))
            self.assertIsNone(mount.proc.poll())
            record_trials("bad input", "archive: " + case, 2, 0,
                          "EIO, logged, not cached")
        _, good = self.finished_export(mount)
        self.assertEqual(sha256_file(good), self.sha)


def write_bomb(path, zeros):
    """Writes a gzip bomb: a member of ZEROS zero bytes, then a member of a
    short text, so that the trailer states only the text's size."""
    with open(path, "wb") as f:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(compressor.compress(block))
        f.write(compressor.flush())
        f.write(gzip.compress(b'{"data": []}\n'))


class BombTest(ArchiveTestCase):
    archive_size = 256 * 1024
    standin_options = {"export_seconds": 0}

    def test_gzip_bomb_stopped(self):
        bomb = os.path.join(self.workdir, "bomb.json.gz")
        write_bomb(bomb, 256 << 20)
        compressed = os.path.getsize(bomb)
        trials = 0
        for options, limit in (([], compressed * 256),
                               (["cache_size=8M"], 8 << 20)):
            mount = self.mount(options=options, name="mnt%d" % trials)
            gid = self.standin.create_export(state="finished",
                                             archive=bomb)["gid"]
            os.mkdir(mount.p("orgs", ORG, "exports", gid))
            path = mount.p("orgs", ORG, "exports", gid, "export.json")
            self.assertEqual(os.path.getsize(path), 13)
            with self.assertRaises(OSError) as caught:
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
            self.assertEqual(caught.exception.errno, errno.EFBIG, options)
            self.assertIn("gzip bomb", mount.log())
            data = os.path.join(mount.cache_dir, "data", gid)
            self.assertEqual(sorted(os.listdir(data)), ["meta"])
            self.assertLess(limit, 256 << 20)
            self.assertIsNone(mount.proc.poll())
            _, good = self.finished_export(mount)
            self.assertEqual(sha256_file(good), self.sha)
            mount.stop()
            trials += 1
        record_trials("bad input", "gzip bomb of several members", trials, 0,
                      "EFBIG, logged, nothing kept")


if __name__ == "__main__":
    main()
