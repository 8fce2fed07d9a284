#!/usr/bin/python3
"""Check the Asana stand-in and the export generator as a client would use them.

Run: /usr/bin/python3 tests/standin/selftest.py
Starts two stand-in processes on loopback ports and writes only to a
temporary directory.
"""

import gzip
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
from standin import StandIn, StandInError, make_archive  # noqa: E402

TOKEN = "selftest-token"
AUTH = {"Authorization": "Bearer " + TOKEN}
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ARCHIVE_BYTES = 2_000_000


def fetch(url, method="GET", body=None, headers=None):
    """Send one request and return (status, headers, body) for any status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def fetch_json(url, method="GET", body=None, headers=None):
    status, response_headers, payload = fetch(url, method, body, headers)
    return status, response_headers, json.loads(payload)


def gunzip_all(data):
    """Decompress every gzip member of data."""
    output = []
    while data:
        decompressor = zlib.decompressobj(31)
        output.append(decompressor.decompress(data))
        output.append(decompressor.flush())
        data = decompressor.unused_data
    return b"".join(output)


class StandinTestCase(unittest.TestCase):
    standin_options = {}

    @classmethod
    def setUpClass(cls):
        cls.tmpdir = tempfile.mkdtemp(prefix="standin-selftest-")
        cls.archive = os.path.join(cls.tmpdir, "export.json.gz")
        cls.archive_size, cls.archive_sha256 = make_archive(cls.archive, ARCHIVE_BYTES, seed=7)
        with open(cls.archive, "rb") as handle:
            cls.archive_bytes = handle.read()
        cls.standin = StandIn()
        cls.standin.start(os.path.join(cls.tmpdir, "server"), token=TOKEN, archive=cls.archive,
                          **cls.standin_options)
        cls.api = cls.standin.api_url

    @classmethod
    def tearDownClass(cls):
        cls.standin.stop()
        shutil.rmtree(cls.tmpdir, ignore_errors=True)

    def setUp(self):
        self.standin.clear_faults()

    def finished_export_url(self, organization="1331"):
        record = self.standin.create_export(organization=organization, state="finished")
        status, _, body = fetch_json(self.api + "/organization_exports/" + record["gid"],
                                     headers=AUTH)
        self.assertEqual(status, 200)
        return body["data"]["download_url"]


class ApiTests(StandinTestCase):
    standin_options = {"workspaces": 250, "export_seconds": 1}

    def test_missing_token_is_401(self):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, _, body = fetch_json(self.api + "/users/me", headers=headers)
            self.assertEqual(status, 401, headers)
            self.assertEqual(body["errors"][0]["message"], "Not Authorized")
            self.assertIn("help", body["errors"][0])

    def test_users_me(self):
        status, _, body = fetch_json(self.api + "/users/me", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"]["resource_type"], "user")
        self.assertTrue(body["data"]["email"].endswith("@example.com"))
        self.assertEqual(body["data"]["workspaces"][0],
                         {"gid": "1331", "resource_type": "workspace", "name": "Example Org"})

    def test_workspace_paging_reaches_all(self):
        url = self.api + "/workspaces?limit=100&opt_fields=is_organization,email_domains"
        gids = []
        pages = 0
        while True:
            status, _, body = fetch_json(url, headers=AUTH)
            self.assertEqual(status, 200, body)
            pages += 1
            gids.extend(record["gid"] for record in body["data"])
            self.assertIn("is_organization", body["data"][0])
            self.assertIn("email_domains", body["data"][0])
            next_page = body["next_page"]
            if next_page is None:
                break
            self.assertTrue(next_page["path"].startswith("/workspaces?"))
            self.assertIn("offset=" + next_page["offset"], next_page["uri"])
            url = next_page["uri"]
        self.assertEqual(pages, 3)
        self.assertEqual(len(gids), 253)
        self.assertEqual(len(set(gids)), 253)

    def test_compact_workspace_fields(self):
        status, _, body = fetch_json(self.api + "/workspaces?limit=1", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"], [{"gid": "1331", "resource_type": "workspace",
                                         "name": "Example Org"}])

    def test_workspaces_without_limit_too_large(self):
        status, _, body = fetch_json(self.api + "/workspaces", headers=AUTH)
        self.assertEqual(status, 400)
        self.assertIn("result is too large", body["errors"][0]["message"])

    def test_invalid_paging_parameters_are_400(self):
        for query in ("limit=0", "limit=101", "limit=x", "limit=10&offset=bogus",
                      "limit=10&offset=MS4yLjM"):
            status, _, body = fetch_json(self.api + "/workspaces?" + query, headers=AUTH)
            self.assertEqual(status, 400, query)
            self.assertIn("message", body["errors"][0], query)

    def test_workspace_record(self):
        status, _, body = fetch_json(self.api + "/workspaces/1332", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"]["is_organization"], False)
        self.assertIn("email_domains", body["data"])
        status, _, body = fetch_json(self.api + "/workspaces/999", headers=AUTH)
        self.assertEqual(status, 404)
        self.assertIn("errors", body)

    def test_export_moves_to_finished(self):
        status, _, body = fetch_json(self.api + "/organization_exports", "POST",
                                     {"data": {"organization": "1331"}}, AUTH)
        self.assertEqual(status, 201)
        record = body["data"]
        self.assertEqual(record["state"], "pending")
        self.assertIsNone(record["download_url"])
        self.assertEqual(record["resource_type"], "organization_export")
        self.assertRegex(record["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertEqual(record["organization"]["gid"], "1331")

        seen = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, _, body = fetch_json(self.api + "/organization_exports/" + record["gid"],
                                         headers=AUTH)
            self.assertEqual(status, 200)
            state = body["data"]["state"]
            self.assertEqual(body["data"]["created_at"], record["created_at"])
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "finished":
                break
            self.assertIsNone(body["data"]["download_url"])
            time.sleep(0.05)
        self.assertEqual(seen, ["pending", "started", "finished"])
        self.assertTrue(body["data"]["download_url"].startswith(self.standin.download_base))

    def test_export_creation_errors(self):
        cases = [
            ({"data": {"organization": "1332"}}, 403),
            ({"data": {"organization": "999"}}, 404),
            ({"data": {}}, 400),
            ({"organization": "1331"}, 400),
        ]
        for body, expected in cases:
            status, _, answer = fetch_json(self.api + "/organization_exports", "POST",
                                           body, AUTH)
            self.assertEqual(status, expected, body)
            self.assertIn("message", answer["errors"][0], body)
        status, _, _ = fetch(self.api + "/organization_exports/1205999999999999", headers=AUTH)
        self.assertEqual(status, 404)

    def test_failed_export_ends_in_error(self):
        self.standin.fault(fail_exports=True, export_seconds=0)
        status, _, body = fetch_json(self.api + "/organization_exports", "POST",
                                     {"data": {"organization": "1333"}}, AUTH)
        self.assertEqual(status, 201)
        status, _, body = fetch_json(
            self.api + "/organization_exports/" + body["data"]["gid"], headers=AUTH)
        self.assertEqual(body["data"]["state"], "error")
        self.assertIsNone(body["data"]["download_url"])

    def test_unknown_path_is_404(self):
        status, _, body = fetch_json(self.api + "/nothing/here", headers=AUTH)
        self.assertEqual(status, 404)
        self.assertIn("message", body["errors"][0])

    def test_rate_limit_fault_sends_retry_after(self):
        self.standin.fault(api_status={"status": 429, "retry_after": 3,
                                       "prefix": "GET /workspaces", "count": 2})
        for _ in range(2):
            status, headers, body = fetch_json(self.api + "/workspaces?limit=5", headers=AUTH)
            self.assertEqual(status, 429)
            self.assertEqual(headers["Retry-After"], "3")
            self.assertIn("errors", body)
        status, _, _ = fetch(self.api + "/users/me", headers=AUTH)
        self.assertEqual(status, 200)
        status, _, _ = fetch(self.api + "/workspaces?limit=5", headers=AUTH)
        self.assertEqual(status, 200)

    def test_server_error_fault_has_phrase(self):
        self.standin.fault(api_status={"status": 500})
        status, _, body = fetch_json(self.api + "/users/me", headers=AUTH)
        self.assertEqual(status, 500)
        self.assertIn("phrase", body["errors"][0])

    def test_raw_body_fault_options(self):
        self.standin.fault(api_status={"status": 200, "body": "ab", "repeat": 3,
                                       "content_type": "text/plain"})
        status, headers, body = fetch(self.api + "/users/me", headers=AUTH)
        self.assertEqual((status, body), (200, b"ababab"))
        self.assertEqual(headers["Content-Type"], "text/plain")

        self.standin.fault(api_status={"status": 302, "location": "http://127.0.0.9/x"})
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(self.api).netloc,
                                                timeout=30)
        connection.request("GET", "/api/1.0/users/me", headers=AUTH)
        response = connection.getresponse()
        self.assertEqual(response.status, 302)
        self.assertEqual(response.getheader("Location"), "http://127.0.0.9/x")
        response.read()
        connection.close()

        self.standin.fault(api_status={"status": 200, "body": "{}",
                                       "content_length": 50})
        with self.assertRaises(http.client.IncompleteRead):
            fetch(self.api + "/users/me", headers=AUTH)

    def test_delay_fault(self):
        self.standin.fault(api_delay={"seconds": 0.5})
        began = time.monotonic()
        status, _, _ = fetch(self.api + "/users/me", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertGreaterEqual(time.monotonic() - began, 0.5)

    def test_counts_reflect_requests(self):
        self.standin.reset_counts()
        fetch(self.api + "/workspaces?limit=5", headers=AUTH)
        fetch(self.api + "/workspaces?limit=5", headers=AUTH)
        fetch(self.api + "/users/me")
        url = self.finished_export_url()
        gid = url.split("/")[4]
        fetch(url, headers={"Range": "bytes=0-9"})
        fetch(url, method="HEAD")
        counts = self.standin.counts()
        self.assertEqual(counts["GET /workspaces"], 2)
        self.assertEqual(counts["GET /users/me"], 1)
        self.assertEqual(counts["GET /organization_exports/" + gid], 1)
        self.assertEqual(counts["DOWNLOAD /exports/%s/export.json.gz" % gid], 1)
        self.assertEqual(counts["HEAD /exports/%s/export.json.gz" % gid], 1)
        self.assertFalse(any(key.startswith("GET /_standin") for key in counts))
        self.standin.reset_counts()
        self.assertEqual(self.standin.counts(), {})


class DownloadTests(StandinTestCase):
    standin_options = {"export_seconds": 1}

    def test_whole_download_matches_archive(self):
        status, headers, body = fetch(self.finished_export_url())
        self.assertEqual(status, 200)
        self.assertEqual(body, self.archive_bytes)
        self.assertEqual(headers["Content-Type"], "application/gzip")
        self.assertEqual(headers["Accept-Ranges"], "bytes")
        self.assertIn("ETag", headers)
        content = gzip.decompress(body)
        self.assertEqual(len(content), self.archive_size)
        self.assertEqual(hashlib.sha256(content).hexdigest(), self.archive_sha256)

    def test_range_requests(self):
        url = self.finished_export_url()
        total = len(self.archive_bytes)
        cases = [
            ("bytes=10-19", 10, 19),
            ("bytes=%d-" % (total - 100), total - 100, total - 1),
            ("bytes=-8", total - 8, total - 1),
            ("bytes=5-%d" % (total + 1000), 5, total - 1),
        ]
        for header, first, last in cases:
            status, headers, body = fetch(url, headers={"Range": header})
            self.assertEqual(status, 206, header)
            self.assertEqual(headers["Content-Range"], "bytes %d-%d/%d" % (first, last, total),
                             header)
            self.assertEqual(body, self.archive_bytes[first:last + 1], header)
            self.assertEqual(int(headers["Content-Length"]), last - first + 1, header)

    def test_unsatisfiable_range_is_416(self):
        url = self.finished_export_url()
        total = len(self.archive_bytes)
        status, headers, _ = fetch(url, headers={"Range": "bytes=%d-" % total})
        self.assertEqual(status, 416)
        self.assertEqual(headers["Content-Range"], "bytes */%d" % total)

    def test_head_sends_length_only(self):
        status, headers, body = fetch(self.finished_export_url(), method="HEAD")
        self.assertEqual(status, 200)
        self.assertEqual(int(headers["Content-Length"]), len(self.archive_bytes))
        self.assertEqual(body, b"")

    def test_authorization_header_is_400(self):
        self.standin.reset_counts()
        status, _, body = fetch(self.finished_export_url(), headers=AUTH)
        self.assertEqual(status, 400)
        self.assertIn(b"<Code>InvalidArgument</Code>", body)
        downloads = [entry for entry in self.standin.requests()
                     if entry["server"] == "download"]
        self.assertEqual(downloads[-1]["headers"]["Authorization"], "<present>")
        self.assertNotIn(TOKEN, json.dumps(self.standin.requests()))

    def test_bad_signature_is_403(self):
        url = self.finished_export_url()
        status, _, body = fetch(url[:-4] + "0000")
        self.assertEqual(status, 403)
        self.assertIn(b"SignatureDoesNotMatch", body)
        status, _, _ = fetch(url.split("?")[0])
        self.assertEqual(status, 403)

    def test_drop_fault_cuts_body(self):
        url = self.finished_export_url()
        self.standin.fault(drop={"after_bytes": 100_000})
        request = urllib.request.Request(url)
        with OPENER.open(request, timeout=30) as response:
            with self.assertRaises(http.client.IncompleteRead) as caught:
                response.read()
        self.assertEqual(len(caught.exception.partial), 100_000)
        status, _, body = fetch(url)
        self.assertEqual(status, 200)
        self.assertEqual(body, self.archive_bytes)

    def test_redirect_fault_keeps_query(self):
        url = self.finished_export_url()
        self.standin.fault(redirect={"location": "http://127.0.0.9:1"})
        split = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(split.netloc, timeout=30)
        connection.request("GET", split.path + "?" + split.query)
        response = connection.getresponse()
        self.assertEqual(response.status, 307)
        self.assertEqual(response.getheader("Location"),
                         "http://127.0.0.9:1" + split.path + "?" + split.query)
        response.read()
        connection.close()
        status, _, body = fetch(url)
        self.assertEqual((status, body), (200, self.archive_bytes))
        downloads = [r for r in self.standin.requests() if r["server"] == "download"]
        self.assertEqual(downloads[-2]["redirected_to"], "http://127.0.0.9:1")

    def test_drop_at_offsets(self):
        url = self.finished_export_url()
        self.standin.fault(drop={"at_offsets": [1000, 5000]})
        partial = []
        for offset in (0, 1000):
            request = urllib.request.Request(url, headers={"Range": "bytes=%d-" % offset})
            with OPENER.open(request, timeout=30) as response:
                with self.assertRaises(http.client.IncompleteRead) as caught:
                    response.read()
                partial.append(len(caught.exception.partial))
        self.assertEqual(partial, [1000, 4000])

    def test_expire_after_bytes_revokes_url(self):
        url = self.finished_export_url()
        self.standin.fault(expire_after_bytes={"bytes": 5000})
        with OPENER.open(urllib.request.Request(url), timeout=30) as response:
            with self.assertRaises(http.client.IncompleteRead) as caught:
                response.read()
        self.assertEqual(len(caught.exception.partial), 5000)
        status, _, body = fetch(url, headers={"Range": "bytes=5000-"})
        self.assertEqual(status, 403)
        self.assertIn(b"Request has expired", body)
        status, _, _ = fetch(self.finished_export_url(), headers={"Range": "bytes=5000-"})
        self.assertEqual(status, 206)

    def test_ignore_range_sends_whole_body(self):
        url = self.finished_export_url()
        self.standin.fault(ignore_range=True)
        status, _, body = fetch(url, headers={"Range": "bytes=100-199"})
        self.assertEqual(status, 200)
        self.assertEqual(body, self.archive_bytes)

    def test_corrupt_fault_breaks_archive(self):
        url = self.finished_export_url()
        self.standin.fault(corrupt=True)
        status, _, body = fetch(url)
        self.assertEqual(status, 200)
        self.assertEqual(len(body), len(self.archive_bytes))
        self.assertNotEqual(body, self.archive_bytes)
        with self.assertRaises((OSError, EOFError, zlib.error)):
            gzip.decompress(body)

    def test_truncate_fault_serves_short_object(self):
        url = self.finished_export_url()
        self.standin.fault(truncate={"bytes": 4096})
        status, headers, body = fetch(url)
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Length"], "4096")
        self.assertEqual(body, self.archive_bytes[:4096])
        with self.assertRaises(EOFError):
            gzip.decompress(body)

    def test_throttle_paces_download(self):
        url = self.finished_export_url()
        self.standin.fault(throttle={"bytes_per_second": 200_000})
        began = time.monotonic()
        status, _, body = fetch(url, headers={"Range": "bytes=0-99999"})
        self.assertEqual(status, 206)
        self.assertEqual(len(body), 100_000)
        self.assertGreaterEqual(time.monotonic() - began, 0.4)

    def test_admin_created_export_with_own_archive(self):
        other = os.path.join(self.tmpdir, "other.json.gz")
        make_archive(other, 8192, seed=3)
        record = self.standin.create_export(organization="1333", archive=other)
        self.assertEqual(record["state"], "finished")
        self.assertEqual(record["organization"]["gid"], "1333")
        status, _, body = fetch(record["download_url"])
        self.assertEqual(status, 200)
        with open(other, "rb") as handle:
            self.assertEqual(body, handle.read())
        listed = {export["gid"] for export in self.standin.exports()}
        self.assertIn(record["gid"], listed)


class ExpiryTests(StandinTestCase):
    standin_options = {"url_ttl": 1}

    def test_expired_url_is_403(self):
        url = self.finished_export_url()
        status, _, _ = fetch(url, headers={"Range": "bytes=0-0"})
        self.assertEqual(status, 206)
        time.sleep(2.2)
        status, headers, body = fetch(url)
        self.assertEqual(status, 403)
        self.assertIn(b"<Code>AccessDenied</Code>", body)
        self.assertIn(b"Request has expired", body)

    def test_expired_offset_is_400(self):
        self.standin.fault(offset_ttl=0.5)
        status, _, body = fetch_json(self.api + "/workspaces?limit=1", headers=AUTH)
        self.assertEqual(status, 200)
        time.sleep(1)
        status, _, body = fetch_json(self.api + body["next_page"]["path"], headers=AUTH)
        self.assertEqual(status, 400)
        self.assertIn("expired", body["errors"][0]["message"])


class WorkspaceAdminTests(StandinTestCase):
    """POST /_standin/workspaces replaces the list that the API serves."""

    def test_set_workspaces_replaces_list(self):
        workspaces = [{"gid": "1331", "name": "Acme"},
                      {"gid": "42", "name": "a/b", "is_organization": False}]
        self.standin.set_workspaces(workspaces)
        status, _, body = fetch_json(self.api + "/workspaces?limit=100&opt_fields="
                                     "name,is_organization", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertEqual([(w["gid"], w["name"], w["is_organization"]) for w in body["data"]],
                         [("1331", "Acme", True), ("42", "a/b", False)])
        status, _, body = fetch_json(self.api + "/workspaces/42", headers=AUTH)
        self.assertEqual(status, 200)
        self.assertEqual(body["data"]["name"], "a/b")
        status, _, _ = fetch_json(self.api + "/workspaces/1332", headers=AUTH)
        self.assertEqual(status, 404)

    def test_set_workspaces_rejects_bad_lists(self):
        for bad in ([{"gid": "x1", "name": "A"}], [{"gid": "1", "name": 5}],
                    [{"gid": "1", "name": "A"}, {"gid": "1", "name": "B"}], ["1"]):
            with self.assertRaises(StandInError, msg=repr(bad)):
                self.standin.set_workspaces(bad)


class GeneratorTests(unittest.TestCase):
    def setUp(self):
        self.tmpdir = tempfile.mkdtemp(prefix="gen-export-selftest-")

    def tearDown(self):
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmpdir, name)

    def test_same_seed_same_archive(self):
        first = make_archive(self.path("a.gz"), 300_000, seed=5)
        second = make_archive(self.path("b.gz"), 300_000, seed=5)
        other = make_archive(self.path("c.gz"), 300_000, seed=6)
        self.assertEqual(first, second)
        self.assertNotEqual(first[1], other[1])
        with open(self.path("a.gz"), "rb") as a, open(self.path("b.gz"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_gzip_output_matches_printed_digest(self):
        size, sha256 = make_archive(self.path("a.gz"), 1_234_567, seed=2)
        self.assertEqual(size, 1_234_567)
        content = subprocess.run(["gzip", "-dc", self.path("a.gz")], check=True,
                                 capture_output=True).stdout
        self.assertEqual(len(content), size)
        self.assertEqual(hashlib.sha256(content).hexdigest(), sha256)

    def test_lines_are_json_with_one_long_line(self):
        size, _ = make_archive(self.path("a.gz"), 500_000, seed=4)
        with gzip.open(self.path("a.gz"), "rb") as handle:
            lines = handle.read().split(b"\n")
        self.assertEqual(lines[-1], b"")
        types = set()
        for line in lines[:-1]:
            types.add(json.loads(line)["__type"])
        self.assertEqual(types, {"Workspace", "User", "Team", "Project", "Task", "Story"})
        self.assertGreaterEqual(max(len(line) for line in lines), size // 6)

    def test_members_keep_content(self):
        single = make_archive(self.path("one.gz"), 400_000, seed=9)
        multi = make_archive(self.path("three.gz"), 400_000, seed=9, members=3)
        self.assertEqual(single, multi)
        with open(self.path("three.gz"), "rb") as handle:
            data = handle.read()
        self.assertEqual(data.count(b"\x1f\x8b\x08"), 3)
        content = subprocess.run(["gzip", "-dc", self.path("three.gz")], check=True,
                                 capture_output=True).stdout
        self.assertEqual(hashlib.sha256(content).hexdigest(), multi[1])
        self.assertEqual(gunzip_all(data), content)

    def test_compression_ratio_is_realistic(self):
        size, _ = make_archive(self.path("a.gz"), 2_000_000, seed=1)
        ratio = size / os.path.getsize(self.path("a.gz"))
        self.assertGreater(ratio, 4)
        self.assertLess(ratio, 12)


if __name__ == "__main__":
    program = unittest.main(verbosity=2, exit=False)
    outcome = program.result
    failed = len(outcome.failures) + len(outcome.errors)
    print("%d passed, %d failed"
          % (outcome.testsRun - failed - len(outcome.skipped), failed))
    sys.exit(1 if failed or not outcome.testsRun else 0)
