#!/usr/bin/python3
"""Local stand-in of the Asana API calls that asanafs uses, for tests.

Two HTTP/1.1 servers run in one process:

* the API server (default 127.0.0.1) serves /api/1.0/users/me,
  /api/1.0/workspaces, /api/1.0/workspaces/{gid} and
  /api/1.0/organization_exports[/{gid}] with the status codes and JSON shapes
  of Asana's OpenAPI description, plus an unauthenticated admin API under
  /_standin/ that tests use to read request counts and switch faults on;
* the download server (default 127.0.0.2, a second loopback address) acts
  like presigned object storage. It authenticates by a signed, expiring query
  string, rejects requests that carry an Authorization header, and serves the
  export archive with Range support.

Export records move from pending to started to finished as time passes, so
clients exercise their polling. Faults such as error statuses, delays, cut
connections, expiring URLs and corrupt archives apply to the next matching
requests and then switch themselves off.

Only Python's standard library is used. Run with --help for the options.
"""

import argparse
import base64
import collections
import email.utils
import hashlib
import hmac
import http.server
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_export  # noqa: E402  (lives next to this file)

LOG = logging.getLogger("asana_standin")

API_PREFIX = "/api/1.0"
ADMIN_PREFIX = "/_standin"
FIRST_EXPORT_GID = 1_205_000_000_000_001
FIRST_GENERATED_WORKSPACE_GID = 1_400_000_000_000_001
DEFAULT_ARCHIVE_BYTES = 1_000_000
DOWNLOAD_CHUNK_BYTES = 256 * 1024
MAX_REQUEST_BODY_BYTES = 1 << 20
REQUEST_LOG_LENGTH = 1000
QUERY_STRING = re.compile(r"\?[^\s'\"]*")

ERROR_HELP = ("For more information on API status codes and how to handle them, "
              "read the docs on errors: https://developers.asana.com/docs/errors")
TOO_LARGE_MESSAGE = ("The result is too large. You should use pagination "
                     "(may require specifying a workspace)!")
RATE_LIMIT_MESSAGE = "You have made too many requests recently. Please, be chill."
STATUS_MESSAGES = {
    400: "Bad Request",
    401: "Not Authorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: RATE_LIMIT_MESSAGE,
    451: "Unavailable For Legal Reasons",
    500: "Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
PHRASE_WORDS = (
    ["sad", "happy", "sleepy", "brave", "quiet", "fuzzy", "shiny", "grumpy"],
    ["squid", "otters", "llamas", "pandas", "herons", "badgers", "moles"],
    ["snuggle", "wander", "giggle", "tumble", "whistle", "ponder", "juggle"],
    ["softly", "loudly", "slowly", "bravely", "wisely", "gently", "oddly"],
)

DEFAULT_WORKSPACES = [
    {"gid": "1331", "name": "Example Org", "is_organization": True,
     "email_domains": ["example.com"]},
    {"gid": "1332", "name": "Personal Projects", "is_organization": False,
     "email_domains": []},
    {"gid": "1333", "name": "Example Subsidiary", "is_organization": True,
     "email_domains": ["sub.example.com"]},
]
ME = {"gid": "1201000000000001", "resource_type": "user",
      "name": "Standin User", "email": "standin.user@example.com"}


class RequestError(Exception):
    """An error response that a request handler sends instead of its result."""

    def __init__(self, status, message, headers=None, phrase=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.phrase = phrase


class AdminError(Exception):
    """A rejected admin API call, sent as 400 or 404 with {"error": message}."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status
        self.message = message


def iso_time(timestamp):
    """Format a Unix time as ISO 8601 with milliseconds and Z, as Asana does."""
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


def url_host(host):
    return "[%s]" % host if ":" in host else host


def error_phrase():
    rng = random.SystemRandom()
    return "%d %s" % (rng.randint(2, 99), " ".join(rng.choice(words) for words in PHRASE_WORDS))


def asana_error_body(status, message, phrase=None):
    error = {"message": message, "help": ERROR_HELP}
    if status >= 500:
        error["phrase"] = phrase or error_phrase()
    return {"errors": [error]}


def s3_error_body(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code>'
            '<Message>%s</Message><RequestId>%s</RequestId></Error>' % (
                code, message, secrets.token_hex(8).upper())).encode()


# ---------------------------------------------------------------------------
# Faults

# Fault names, each with the parameter that a bare number sets, if any.
FAULT_KINDS = {
    "api_status": "status",
    "api_delay": "seconds",
    "drop": "after_bytes",
    "ignore_range": None,
    "expire_after_bytes": "bytes",
    "corrupt": None,
    "truncate": "bytes",
    "throttle": "bytes_per_second",
    "fail_exports": None,
    "redirect": "location",
    "storage_reply": "status",
}
# Settings that stay until changed or until DELETE /_standin/faults.
SETTING_KINDS = ("export_seconds", "url_ttl", "offset_ttl")


class FaultRule:
    """One fault with its parameters and how many more requests it applies to.

    remaining is -1 for a rule that stays on until the faults are cleared.
    """

    def __init__(self, kind, params):
        self.kind = kind
        self.params = params
        self.offsets = None
        if kind == "drop" and "at_offsets" in params:
            self.offsets = [int(offset) for offset in params["at_offsets"]]
            self.remaining = len(self.offsets)
        else:
            self.remaining = int(params.get("count", 1))
        self.prefix = str(params.get("prefix", ""))

    def describe(self):
        described = dict(self.params)
        described["remaining"] = self.remaining
        if self.offsets is not None:
            described["at_offsets"] = list(self.offsets)
        return described


def parse_fault_rules(kind, value):
    """Return the FaultRule list for one entry of a POST /_standin/faults body."""
    shorthand = FAULT_KINDS[kind]
    if value is True:
        entries = [{}]
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and shorthand:
        entries = [{shorthand: value}]
    elif isinstance(value, dict):
        entries = [value]
    elif isinstance(value, list) and all(isinstance(entry, dict) for entry in value):
        entries = value
    else:
        raise AdminError("fault %s: expected an object, a list of objects or true, got %r"
                         % (kind, value))

    rules = []
    for entry in entries:
        validate_fault_entry(kind, entry)
        rules.append(FaultRule(kind, entry))
    return rules


def validate_fault_entry(kind, entry):
    def require_number(name, minimum=0):
        number = entry.get(name)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < minimum:
            raise AdminError("fault %s: %s must be a number >= %s, got %r"
                             % (kind, name, minimum, number))

    count = entry.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or (count < 1 and count != -1):
        raise AdminError("fault %s: count must be a positive integer or -1 (until cleared), "
                         "got %r" % (kind, count))
    if kind in ("api_status", "storage_reply"):
        status = entry.get("status")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise AdminError("fault %s: status must be an HTTP status 100-599, got %r"
                             % (kind, status))
        if "retry_after" in entry:
            require_number("retry_after")
        if "repeat" in entry:
            require_number("repeat", 1)
        if "content_length" in entry:
            require_number("content_length")
        if "location" in entry and not isinstance(entry["location"], str):
            raise AdminError("fault api_status: location must be a URL string, got %r"
                             % (entry["location"],))
    elif kind == "api_delay":
        require_number("seconds")
    elif kind == "drop":
        if "at_offsets" in entry:
            offsets = entry["at_offsets"]
            if (not isinstance(offsets, list) or not offsets
                    or not all(isinstance(o, int) and o >= 0 for o in offsets)):
                raise AdminError("fault drop: at_offsets must be a non-empty list of "
                                 "byte offsets, got %r" % (offsets,))
        else:
            require_number("after_bytes")
    elif kind == "expire_after_bytes":
        require_number("bytes")
    elif kind == "redirect":
        location = entry.get("location")
        if not isinstance(location, str) or not re.match(r"^https?://[^/?#]+$", location):
            raise AdminError("fault redirect: location must be an origin such as "
                             "http://127.0.0.3:8080, got %r" % (location,))
    elif kind == "throttle":
        require_number("bytes_per_second", 1)
    elif kind == "truncate" and "bytes" in entry:
        require_number("bytes")
    elif kind == "corrupt":
        for name in ("offset", "length"):
            if name in entry:
                require_number(name)


# ---------------------------------------------------------------------------
# Shared state

class Export:
    """One organization export job and the archive that it serves."""

    def __init__(self, gid, workspace, created, duration, fails, archive, fixed_state=None):
        self.gid = gid
        self.workspace = workspace
        self.created = created
        self.duration = duration
        self.fails = fails
        self.archive = archive
        self.fixed_state = fixed_state

    def state(self, now):
        if self.fixed_state:
            return self.fixed_state
        elapsed = now - self.created
        if elapsed < self.duration / 2:
            return "pending"
        if elapsed < self.duration:
            return "started"
        return "error" if self.fails else "finished"


class StandinState:
    """Workspaces, exports, faults, counters and keys shared by both servers."""

    def __init__(self, options, workspaces, default_archive):
        self.lock = threading.Lock()
        self.options = options
        self.token = options.token
        self.max_unpaged = options.max_unpaged
        self.workspaces = workspaces
        self.workspaces_by_gid = {w["gid"]: w for w in workspaces}
        self.default_archive = default_archive
        self.exports = collections.OrderedDict()
        self.next_export_gid = FIRST_EXPORT_GID
        self.url_key = secrets.token_bytes(32)
        self.offset_key = secrets.token_bytes(32)
        self.url_counter = 0
        self.revoked_signatures = set()
        self.counts = collections.Counter()
        self.requests = collections.deque(maxlen=REQUEST_LOG_LENGTH)
        self.api_url = None
        self.download_base = None
        self.rules = {}
        self.reset_settings()

    def reset_settings(self):
        self.export_seconds = self.options.export_seconds
        self.url_ttl = self.options.url_ttl
        self.offset_ttl = self.options.offset_ttl

    # Request accounting --------------------------------------------------

    def record_request(self, server, method, key, path, headers):
        """Count a request and return its request log entry for later updates."""
        logged_headers = {}
        for name, value in headers.items():
            if name.lower() == "authorization":
                value = "<present>"
            if name in logged_headers:
                logged_headers[name] += ", " + value
            else:
                logged_headers[name] = value
        entry = {"server": server, "method": method, "path": path,
                 "headers": logged_headers, "status": None,
                 "range": headers.get("Range"), "time": round(time.time(), 3)}
        with self.lock:
            self.counts[key] += 1
            self.requests.append(entry)
        return entry

    def reset_counts(self):
        with self.lock:
            self.counts.clear()
            self.requests.clear()

    # Faults ----------------------------------------------------------------

    def set_faults(self, body):
        if not isinstance(body, dict):
            raise AdminError("faults: expected a JSON object of fault names")
        new_rules = {}
        new_settings = {}
        for kind, value in body.items():
            if kind in SETTING_KINDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise AdminError("%s: expected a number of seconds >= 0, got %r"
                                     % (kind, value))
                new_settings[kind] = value
            elif kind in FAULT_KINDS:
                new_rules[kind] = parse_fault_rules(kind, value)
            else:
                raise AdminError("unknown fault %r; known: %s" % (
                    kind, ", ".join(sorted(list(FAULT_KINDS) + list(SETTING_KINDS)))))
        with self.lock:
            self.rules.update(new_rules)
            for kind, value in new_settings.items():
                setattr(self, kind, value)

    def clear_faults(self):
        with self.lock:
            self.rules.clear()
            self.reset_settings()

    def describe_faults(self):
        with self.lock:
            described = {kind: [rule.describe() for rule in rules]
                         for kind, rules in self.rules.items() if rules}
            for kind in SETTING_KINDS:
                described[kind] = getattr(self, kind)
        return described

    def take_fault(self, kind, key=None):
        """Return the parameters of the first active rule of kind matching key.

        Taking a rule uses up one of its requests. A drop rule with
        at_offsets returns {"after_offset": N} with its next offset.
        """
        with self.lock:
            rules = self.rules.get(kind, [])
            for rule in rules:
                if key is not None and not key.startswith(rule.prefix):
                    continue
                params = dict(rule.params)
                if rule.offsets is not None:
                    params["after_offset"] = rule.offsets.pop(0)
                if rule.remaining > 0:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        rules.remove(rule)
                return params
        return None

    # Exports -------------------------------------------------------------

    def create_export(self, workspace, archive=None, gid=None, fixed_state=None,
                      duration=None):
        with self.lock:
            if gid is None:
                while str(self.next_export_gid) in self.exports:
                    self.next_export_gid += 1
                gid = str(self.next_export_gid)
                self.next_export_gid += 1
            export = Export(gid, workspace, time.time(),
                            self.export_seconds if duration is None else duration,
                            False, archive or self.default_archive, fixed_state)
            self.exports[gid] = export
        if fixed_state is None and self.take_fault("fail_exports") is not None:
            export.fails = True
        return export

    def sign_download_url(self, gid):
        """Return a fresh download URL that expires url_ttl seconds from now."""
        with self.lock:
            self.url_counter += 1
            url_id = self.url_counter
            expires = math.ceil(time.time() + self.url_ttl)
        path = "/exports/%s/export.json.gz" % gid
        signature = self.signature(path, str(url_id), str(expires))
        query = urllib.parse.urlencode(
            [("X-Id", url_id), ("X-Expires", expires), ("X-Signature", signature)])
        return "%s%s?%s" % (self.download_base, path, query)

    def signature(self, path, url_id, expires):
        message = "\n".join((path, url_id, expires)).encode()
        return hmac.new(self.url_key, message, hashlib.sha256).hexdigest()

    def export_record(self, export, hand_out_url=True):
        now = time.time()
        state = export.state(now)
        download_url = None
        if state == "finished" and hand_out_url:
            download_url = self.sign_download_url(export.gid)
        return {
            "gid": export.gid,
            "resource_type": "organization_export",
            "created_at": iso_time(export.created),
            "download_url": download_url,
            "state": state,
            "organization": {"gid": export.workspace["gid"], "resource_type": "workspace",
                             "name": export.workspace["name"]},
        }

    # Paging --------------------------------------------------------------

    def make_offset(self, index):
        payload = "%d.%d" % (index, int(time.time() * 1000))
        mac = hmac.new(self.offset_key, payload.encode(), hashlib.sha256).hexdigest()[:16]
        token = base64.urlsafe_b64encode(("%s.%s" % (payload, mac)).encode())
        return token.decode().rstrip("=")

    def parse_offset(self, token):
        """Return the list index that an offset token points at.

        Raises RequestError 400 for a token this server did not make or one
        older than offset_ttl seconds.
        """
        invalid = RequestError(400, "offset: Invalid offset token %r. Use only the offset "
                                    "from the next_page of a previous response." % token)
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            index_text, issued_text, mac = text.split(".")
            payload = "%s.%s" % (index_text, issued_text)
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
        expected = hmac.new(self.offset_key, payload.encode(), hashlib.sha256).hexdigest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise invalid
        if time.time() - int(issued_text) / 1000 > self.offset_ttl:
            raise RequestError(400, "offset: Your pagination token has expired. Restart the "
                                    "listing from the first page.")
        return int(index_text)


# ---------------------------------------------------------------------------
# HTTP plumbing shared by both servers

class StandinHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, state, name):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.name = name
        super().__init__(address, handler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the host name with getfqdn, which can
        # block on reverse DNS. Loopback addresses do not need a name.
        http.server.socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]


class BaseHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "asana-standin"
    # Idle keep-alive connections close after this many seconds.
    timeout = 120

    entry = None
    bytes_sent = 0

    @property
    def state(self):
        return self.server.state

    def version_string(self):
        return self.server_version

    def parse_request(self):
        # One handler serves every request of a keep-alive connection, so the
        # per-request fields start over here.
        self.entry = None
        self.bytes_sent = 0
        return super().parse_request()

    def send_response(self, code, message=None):
        if self.entry is not None:
            self.entry["status"] = code
        super().send_response(code, message)

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        # Messages about malformed requests quote the request line, whose
        # query string may contain a download signature.
        text = QUERY_STRING.sub("?<query>", format % args)
        LOG.debug("%s %s: %s", self.server.name, self.address_string(), text)

    def log_done(self, path):
        LOG.debug("%s %s %s %s bytes=%d", self.server.name, self.command, path,
                  self.entry["status"] if self.entry else "-", self.bytes_sent)

    def read_body(self):
        """Read the request body so that the connection can be reused."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise RequestError(400, "Chunked request bodies are not supported; "
                                    "send Content-Length.")
        length_text = self.headers.get("Content-Length", "0")
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "Invalid Content-Length %r" % length_text) from None
        if length > MAX_REQUEST_BODY_BYTES:
            self.close_connection = True
            raise RequestError(413, "Request body of %d bytes is too large" % length)
        return self.rfile.read(length) if length > 0 else b""

    def send_bytes(self, status, body, content_type, headers=None, content_length=None):
        """Send BODY; CONTENT_LENGTH, when set, replaces its true length in the
        header (a fault), and the connection closes after the body."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if content_length is None:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Content-Length", str(content_length))
            self.close_connection = True
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.bytes_sent += len(body)

    def send_json(self, status, value, headers=None):
        body = json.dumps(value).encode()
        self.send_bytes(status, body, "application/json; charset=UTF-8", headers)


# ---------------------------------------------------------------------------
# API server

WORKSPACE_PATH = re.compile(r"^/workspaces/([^/]+)$")
EXPORT_PATH = re.compile(r"^/organization_exports/([^/]+)$")


class ApiHandler(BaseHandler):
    def do_GET(self):
        self.handle_api()

    def do_POST(self):
        self.handle_api()

    def do_PUT(self):
        self.handle_api()

    def do_DELETE(self):
        self.handle_api()

    def do_PATCH(self):
        self.handle_api()

    def handle_api(self):
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        self.query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        self.raw_query = split.query
        if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            self.handle_admin(path[len(ADMIN_PREFIX):])
            return

        if path.startswith(API_PREFIX + "/"):
            api_path = path[len(API_PREFIX):]
        else:
            api_path = path
        key = "%s %s" % (self.command, api_path)
        self.entry = self.state.record_request("api", self.command, key, api_path, self.headers)
        # API queries hold no secret, and tests check the paging parameters.
        self.entry["query"] = self.raw_query
        try:
            body = self.read_body()
            self.apply_api_faults(key)
            if not path.startswith(API_PREFIX + "/"):
                raise RequestError(404, "No matching route for request")
            self.check_token()
            status, value = self.route(api_path, body)
            self.send_json(status, value)
        except RequestError as error:
            self.send_error_response(error)
        except (BrokenPipeError, ConnectionResetError) as error:
            LOG.debug("api %s: client closed the connection: %s", key, error)
            self.close_connection = True
        self.log_done(api_path)

    def send_error_response(self, error):
        headers = dict(error.headers)
        raw_body = headers.pop("_body", None)
        content_type = headers.pop("_content_type", "application/json; charset=UTF-8")
        content_length = headers.pop("_content_length", None)
        if raw_body is not None:
            self.send_bytes(error.status, raw_body, content_type, headers, content_length)
        else:
            self.send_json(error.status,
                           asana_error_body(error.status, error.message, error.phrase),
                           headers)

    def apply_api_faults(self, key):
        delay = self.state.take_fault("api_delay", key)
        if delay is not None:
            time.sleep(delay["seconds"])
        fault = self.state.take_fault("api_status", key)
        if fault is None:
            return
        status = fault["status"]
        headers = {}
        retry_after = fault.get("retry_after", 1 if status == 429 else None)
        if retry_after is not None:
            headers["Retry-After"] = "%g" % retry_after
        if "location" in fault:
            headers["Location"] = fault["location"]
        if "body" in fault:
            # repeat makes bodies larger than an admin request may be.
            headers["_body"] = str(fault["body"]).encode() * int(fault.get("repeat", 1))
            headers["_content_type"] = fault.get("content_type", "text/html")
            if "content_length" in fault:
                headers["_content_length"] = int(fault["content_length"])
        message = fault.get("message", STATUS_MESSAGES.get(status, "Error %d" % status))
        raise RequestError(status, message, headers)

    def check_token(self):
        header = self.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                credentials.strip().encode(), self.state.token.encode()):
            raise RequestError(401, "Not Authorized")

    def route(self, api_path, body):
        method = self.command
        if method == "GET" and api_path == "/users/me":
            me = dict(ME)
            me["workspaces"] = [compact_workspace(w, ()) for w in self.state.workspaces]
            return 200, {"data": me}
        if method == "GET" and api_path == "/workspaces":
            return 200, self.list_workspaces()
        match = WORKSPACE_PATH.match(api_path)
        if method == "GET" and match:
            return 200, {"data": full_workspace(self.find_workspace(match.group(1), "workspace",
                                                                    404))}
        if method == "POST" and api_path == "/organization_exports":
            return 201, {"data": self.create_export(body)}
        match = EXPORT_PATH.match(api_path)
        if method == "GET" and match:
            gid = match.group(1)
            check_gid(gid, "organization_export")
            export = self.state.exports.get(gid)
            if export is None:
                raise RequestError(404, "organization_export: Unknown object: %s" % gid)
            return 200, {"data": self.state.export_record(export)}
        raise RequestError(404, "No matching route for request")

    def find_workspace(self, gid, field, unknown_status):
        check_gid(gid, field)
        workspace = self.state.workspaces_by_gid.get(gid)
        if workspace is None:
            raise RequestError(unknown_status, "%s: Unknown object: %s" % (field, gid))
        return workspace

    def list_workspaces(self):
        fields = set()
        for value in self.query.get("opt_fields", []):
            fields.update(name.strip() for name in value.split(",") if name.strip())
        workspaces = self.state.workspaces
        limit_values = self.query.get("limit")
        offset_values = self.query.get("offset")

        if not limit_values:
            if offset_values:
                raise RequestError(400, "offset: Only valid together with limit")
            if len(workspaces) > self.state.max_unpaged:
                raise RequestError(400, TOO_LARGE_MESSAGE)
            return {"data": [compact_workspace(w, fields) for w in workspaces]}

        try:
            limit = int(limit_values[-1])
        except ValueError:
            raise RequestError(400, "limit: Not a number: %s" % limit_values[-1]) from None
        if not 1 <= limit <= 100:
            raise RequestError(400, "limit: Must be between 1 and 100, got %d" % limit)
        start = self.state.parse_offset(offset_values[-1]) if offset_values else 0
        page = workspaces[start:start + limit]
        next_page = None
        if start + limit < len(workspaces):
            token = self.state.make_offset(start + limit)
            params = [(name, value)
                      for name, value in urllib.parse.parse_qsl(self.raw_query,
                                                                keep_blank_values=True)
                      if name != "offset"]
            params.append(("offset", token))
            relative = "/workspaces?" + urllib.parse.urlencode(params)
            next_page = {"offset": token, "path": relative,
                         "uri": self.state.api_url + relative}
        return {"data": [compact_workspace(w, fields) for w in page], "next_page": next_page}

    def create_export(self, body):
        if not body.strip():
            raise RequestError(400, "Request data must be a JSON object, not null")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(400, "Could not parse request data, invalid JSON") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            raise RequestError(400, "data: Missing input; send {\"data\": {\"organization\": "
                                    "\"<workspace gid>\"}}")
        organization = data.get("organization")
        if organization is None:
            raise RequestError(400, "organization: Missing input")
        if isinstance(organization, bool) or not isinstance(organization, (str, int)):
            raise RequestError(400, "organization: Not a valid GID: %r" % (organization,))
        workspace = self.find_workspace(str(organization), "organization", 404)
        if not workspace["is_organization"]:
            raise RequestError(403, "organization: %s is a workspace, not an organization. "
                                    "Only organizations can be exported." % workspace["gid"])
        export = self.state.create_export(workspace)
        LOG.info("created export %s of organization %s", export.gid, workspace["gid"])
        return self.state.export_record(export)

    # Admin API -----------------------------------------------------------

    def handle_admin(self, admin_path):
        try:
            body = self.read_body()
            status, value = self.route_admin(admin_path, body)
            self.send_json(status, value)
        except (AdminError, RequestError) as error:
            LOG.info("admin %s %s rejected with %d: %s", self.command, admin_path,
                     error.status, error.message)
            self.send_json(error.status, {"error": error.message})
        except (BrokenPipeError, ConnectionResetError) as error:
            LOG.debug("admin %s: client closed the connection: %s", admin_path, error)
            self.close_connection = True

    def route_admin(self, admin_path, body):
        state = self.state
        method = self.command
        if admin_path == "/counts" and method == "GET":
            with state.lock:
                return 200, dict(state.counts)
        if admin_path == "/counts/reset" and method == "POST":
            state.reset_counts()
            return 200, {}
        if admin_path == "/requests" and method == "GET":
            with state.lock:
                return 200, [dict(entry) for entry in state.requests]

        if admin_path == "/faults" and method == "GET":
            return 200, state.describe_faults()
        if admin_path == "/faults" and method == "POST":
            state.set_faults(parse_admin_json(body))
            return 200, state.describe_faults()
        if admin_path == "/faults" and method == "DELETE":
            state.clear_faults()
            return 200, state.describe_faults()

        if admin_path == "/exports" and method == "GET":
            with state.lock:
                exports = list(state.exports.values())
            return 200, [admin_export_view(state, export) for export in exports]
        if admin_path == "/exports" and method == "POST":
            return 200, self.admin_create_export(parse_admin_json(body))

        if admin_path == "/workspaces" and method == "GET":
            return 200, list(state.workspaces)
        if admin_path == "/workspaces" and method == "POST":
            workspaces = parse_admin_workspaces(parse_admin_json(body))
            with state.lock:
                state.workspaces_by_gid = {w["gid"]: w for w in workspaces}
                state.workspaces = workspaces
            LOG.info("workspace list replaced with %d workspaces", len(workspaces))
            return 200, workspaces

        if admin_path == "/archive" and method == "POST":
            request = parse_admin_json(body)
            path = require_archive(request.get("path") if isinstance(request, dict) else None)
            with state.lock:
                state.default_archive = path
            LOG.info("default archive for new exports is now %s", path)
            return 200, {"path": path}
        raise AdminError("no admin call %s %s%s" % (method, ADMIN_PREFIX, admin_path), 404)

    def admin_create_export(self, request):
        """Create an export, or update it when gid names an existing one."""
        state = self.state
        if not isinstance(request, dict):
            raise AdminError("exports: expected a JSON object")
        fixed_state = request.get("state")
        if fixed_state is not None and fixed_state not in ("pending", "started", "finished",
                                                           "error"):
            raise AdminError("exports: state must be pending, started, finished or error, "
                             "got %r" % (fixed_state,))
        archive = request.get("archive")
        if archive is not None:
            archive = require_archive(archive)
        duration = request.get("export_seconds")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, (int, float))):
            raise AdminError("exports: export_seconds must be a number, got %r" % (duration,))
        gid = request.get("gid")
        if gid is not None:
            gid = str(gid)
            if not gid.isdigit():
                raise AdminError("exports: gid must be digits, got %r" % gid)

        organization = request.get("organization")
        workspace = None
        if organization is not None:
            workspace = state.workspaces_by_gid.get(str(organization))
            if workspace is None:
                raise AdminError("exports: unknown organization %r" % (organization,), 404)

        existing = state.exports.get(gid) if gid is not None else None
        if existing is not None:
            with state.lock:
                if workspace is not None:
                    existing.workspace = workspace
                if archive is not None:
                    existing.archive = archive
                if fixed_state is not None:
                    existing.fixed_state = fixed_state
                if duration is not None:
                    existing.duration = duration
            export = existing
        else:
            if workspace is None:
                workspace = state.workspaces_by_gid["1331"]
            export = state.create_export(workspace, archive, gid, fixed_state, duration)
        record = state.export_record(export)
        record["archive"] = export.archive
        return record


def check_gid(gid, field):
    if not gid.isdigit():
        raise RequestError(400, "%s: Not a Long: %s" % (field, gid))


def compact_workspace(workspace, fields):
    record = {"gid": workspace["gid"], "resource_type": "workspace", "name": workspace["name"]}
    if "is_organization" in fields:
        record["is_organization"] = workspace["is_organization"]
    if "email_domains" in fields:
        record["email_domains"] = list(workspace["email_domains"])
    return record


def full_workspace(workspace):
    return compact_workspace(workspace, ("is_organization", "email_domains"))


def admin_export_view(state, export):
    return {"gid": export.gid, "organization": export.workspace["gid"],
            "state": export.state(time.time()), "created_at": iso_time(export.created),
            "export_seconds": export.duration, "fails": export.fails,
            "fixed_state": export.fixed_state, "archive": export.archive}


def parse_admin_workspaces(request):
    """Check the body of POST /_standin/workspaces and return its list."""
    items = request.get("workspaces") if isinstance(request, dict) else None
    if not isinstance(items, list):
        raise AdminError('workspaces: expected {"workspaces": [{"gid", "name", '
                         '"is_organization"}, ...]}')
    workspaces = []
    for item in items:
        if not isinstance(item, dict):
            raise AdminError("workspaces: each workspace must be an object, got %r" % item)
        gid = str(item.get("gid", ""))
        if not gid.isdigit() or not isinstance(item.get("name"), str):
            raise AdminError("workspaces: each workspace needs a digit gid and a "
                             "string name, got %r" % item)
        workspaces.append({"gid": gid, "name": item["name"],
                           "is_organization": bool(item.get("is_organization", True)),
                           "email_domains": list(item.get("email_domains", []))})
    if len({w["gid"] for w in workspaces}) != len(workspaces):
        raise AdminError("workspaces: gids must be unique")
    return workspaces


def parse_admin_json(body):
    try:
        return json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise AdminError("invalid JSON body: %s" % error) from None


def require_archive(path):
    if not isinstance(path, str) or not path:
        raise AdminError("archive: expected a file path string, got %r" % (path,))
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise AdminError("archive: %s is not a file" % path)
    return path


# ---------------------------------------------------------------------------
# Download server

DOWNLOAD_PATH = re.compile(r"^/exports/(\d+)/export\.json\.gz$")
RANGE_HEADER = re.compile(r"^bytes=(\d*)-(\d*)$")


class DownloadError(Exception):
    """An S3-style XML error response."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def parse_range(header, size):
    """Return (start, end) inclusive, None to send the whole object, or "unsatisfiable".

    Only one range is supported, like S3. A header with several ranges or an
    invalid one is ignored, as RFC 9110 allows.
    """
    if header is None:
        return None
    match = RANGE_HEADER.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - suffix), size - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


class DownloadHandler(BaseHandler):
    def do_GET(self):
        self.handle_download()

    def do_HEAD(self):
        self.handle_download()

    def do_POST(self):
        self.handle_other()

    def do_PUT(self):
        self.handle_other()

    def do_DELETE(self):
        self.handle_other()

    def handle_other(self):
        path = urllib.parse.urlsplit(self.path).path
        self.entry = self.state.record_request("download", self.command,
                                               "%s %s" % (self.command, path), path, self.headers)
        try:
            self.read_body()
            self.send_s3_error(DownloadError(405, "MethodNotAllowed",
                                             "The specified method is not allowed "
                                             "against this resource."))
        except RequestError:
            self.send_s3_error(DownloadError(400, "InvalidRequest", "Invalid request body"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self.log_done(path)

    def send_s3_error(self, error):
        self.send_bytes(error.status, s3_error_body(error.code, error.message),
                        "application/xml", error.headers)

    def handle_download(self):
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        key = "%s %s" % ("DOWNLOAD" if self.command == "GET" else "HEAD", path)
        self.entry = self.state.record_request("download", self.command, key, path, self.headers)
        self.entry["bytes"] = 0
        try:
            self.read_body()
            export = self.authorize(path, split.query)
            if self.command == "GET" and self.redirect_elsewhere():
                pass
            elif self.command == "GET" and self.send_storage_fault():
                pass
            else:
                self.serve_archive(export, path, split.query)
        except DownloadError as error:
            self.send_s3_error(error)
        except RequestError as error:
            self.send_s3_error(DownloadError(error.status, "InvalidRequest", error.message))
        except (BrokenPipeError, ConnectionResetError) as error:
            LOG.debug("download %s: client closed the connection: %s", path, error)
            self.close_connection = True
        self.entry["bytes"] = self.bytes_sent
        self.log_done(path)

    def authorize(self, path, query):
        """Check the presigned query string and return the export it names."""
        if "Authorization" in self.headers:
            raise DownloadError(400, "InvalidArgument",
                                "Only one auth mechanism allowed; only the X-Signature query "
                                "parameter or the Authorization header should be specified")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        url_id = params.get("X-Id")
        expires = params.get("X-Expires")
        signature = params.get("X-Signature")
        if not (url_id and expires and signature):
            raise DownloadError(403, "AccessDenied",
                                "Query-string authentication requires the X-Id, X-Expires "
                                "and X-Signature parameters")
        expected = self.state.signature(path, url_id, expires)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise DownloadError(403, "SignatureDoesNotMatch",
                                "The request signature we calculated does not match the "
                                "signature you provided.")
        with self.state.lock:
            revoked = signature in self.state.revoked_signatures
        if revoked or time.time() > int(expires):
            raise DownloadError(403, "AccessDenied", "Request has expired")
        match = DOWNLOAD_PATH.match(path)
        export = self.state.exports.get(match.group(1)) if match else None
        if export is None:
            raise DownloadError(404, "NoSuchKey", "The specified key does not exist.")
        self.url_signature = signature
        # Tests search logs and files for the signatures handed out.
        self.entry["signature"] = signature
        return export

    def redirect_elsewhere(self):
        """Send 307 to the same path and query on the origin of a redirect
        fault, as storage that moved an object does. Returns whether it did."""
        fault = self.state.take_fault("redirect")
        if fault is None:
            return False
        self.entry["redirected_to"] = fault["location"]
        self.send_bytes(307, b"", "application/xml",
                        {"Location": fault["location"] + self.path})
        return True

    def send_storage_fault(self):
        """Send the raw reply of a storage_reply fault in place of the archive,
        such as an HTML page from a proxy. Returns whether it did."""
        fault = self.state.take_fault("storage_reply")
        if fault is None:
            return False
        body = str(fault.get("body", "")).encode() * int(fault.get("repeat", 1))
        self.send_bytes(fault["status"], body, fault.get("content_type", "text/html"),
                        None, fault.get("content_length"))
        return True

    def serve_archive(self, export, path, query):
        state = self.state
        is_get = self.command == "GET"
        # Faults apply to GET only, so that a HEAD before the download does
        # not use them up. ignore_range applies only to requests with Range.
        faults = {}
        if is_get:
            for kind in ("corrupt", "truncate", "drop", "expire_after_bytes", "throttle"):
                faults[kind] = state.take_fault(kind)
            if "Range" in self.headers:
                faults["ignore_range"] = state.take_fault("ignore_range")

        try:
            archive = open(export.archive, "rb")
        except FileNotFoundError:
            LOG.info("archive %s of export %s is missing", export.archive, export.gid)
            raise DownloadError(404, "NoSuchKey", "The specified key does not exist.") from None
        with archive:
            status = os.fstat(archive.fileno())
            size = status.st_size
            tag_source = "%s:%d:%d:%d" % (export.archive, status.st_ino, size,
                                          status.st_mtime_ns)
            if faults.get("truncate") is not None:
                size = min(size, int(faults["truncate"].get("bytes", size // 2)))
                tag_source += ":truncated:%d" % size
            etag = '"%s"' % hashlib.md5(tag_source.encode()).hexdigest()

            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if faults.get("ignore_range") is not None:
                range_header = None
            elif if_range is not None and if_range.strip() != etag:
                range_header = None
            byte_range = parse_range(range_header, size)
            if byte_range == "unsatisfiable":
                raise DownloadError(416, "InvalidRange",
                                    "The requested range is not satisfiable",
                                    {"Content-Range": "bytes */%d" % size,
                                     "Accept-Ranges": "bytes"})

            if byte_range is None:
                start, end = 0, size - 1
                self.send_response(200)
            else:
                start, end = byte_range
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            length = end - start + 1
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified",
                             email.utils.formatdate(status.st_mtime, usegmt=True))
            self.end_headers()
            if not is_get or length <= 0:
                return

            stop = end + 1
            cut = None
            drop = faults.get("drop")
            if drop is not None:
                if "after_offset" in drop:
                    cut = max(start, min(stop, drop["after_offset"]))
                else:
                    cut = min(stop, start + int(drop["after_bytes"]))
            expire = faults.get("expire_after_bytes")
            if expire is not None:
                expire_at = min(stop, start + int(expire["bytes"]))
                cut = expire_at if cut is None else min(cut, expire_at)
                with state.lock:
                    state.revoked_signatures.add(self.url_signature)
            if cut is not None:
                stop = cut
            throttle = faults.get("throttle")
            rate = throttle["bytes_per_second"] if throttle is not None else None
            self.stream(archive, start, stop, faults.get("corrupt"), size, rate)
            if cut is not None and cut <= end:
                self.cut_connection()

    def stream(self, archive, start, stop, corrupt, size, rate):
        """Send archive bytes [start, stop), flipping a corrupt region and pacing to rate."""
        corrupt_start = corrupt_stop = -1
        if corrupt is not None:
            corrupt_start = int(corrupt.get("offset", size // 2))
            corrupt_stop = corrupt_start + int(corrupt.get("length", 16))
        chunk_size = DOWNLOAD_CHUNK_BYTES
        if rate is not None:
            chunk_size = max(1, min(chunk_size, int(rate) // 10))
        began = time.monotonic()
        sent = 0
        archive.seek(start)
        position = start
        while position < stop:
            data = archive.read(min(chunk_size, stop - position))
            if not data:
                # The file shrank while being served; stop instead of padding.
                LOG.info("archive ended at offset %d before %d", position, stop)
                self.close_connection = True
                break
            if corrupt_start < position + len(data) and corrupt_stop > position:
                data = bytearray(data)
                for index in range(max(corrupt_start, position) - position,
                                   min(corrupt_stop, position + len(data)) - position):
                    data[index] ^= 0xFF
            self.wfile.write(data)
            position += len(data)
            sent += len(data)
            self.bytes_sent += len(data)
            if rate is not None:
                delay = sent / rate - (time.monotonic() - began)
                if delay > 0:
                    time.sleep(delay)

    def cut_connection(self):
        """Close the connection in the middle of the body, as a network fault would."""
        self.close_connection = True
        self.entry["cut"] = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError as error:
            LOG.debug("download: shutdown after cut failed: %s", error)


# ---------------------------------------------------------------------------
# Startup

def build_workspaces(extra):
    workspaces = [dict(w) for w in DEFAULT_WORKSPACES]
    for index in range(extra):
        workspaces.append({"gid": str(FIRST_GENERATED_WORKSPACE_GID + index),
                           "name": "Generated Org %04d" % (index + 1),
                           "is_organization": True,
                           "email_domains": ["org%04d.example.com" % (index + 1)]})
    return workspaces


def write_port_file(path, info):
    temp_path = "%s.tmp%d" % (path, os.getpid())
    with open(temp_path, "w") as handle:
        json.dump(info, handle)
        handle.write("\n")
    os.replace(temp_path, path)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Local stand-in of the Asana API and of the presigned export "
                    "download host, for tests. Serves loopback addresses only by default.")
    parser.add_argument("--api-host", default="127.0.0.1",
                        help="address of the API server (default 127.0.0.1)")
    parser.add_argument("--api-port", type=int, default=0,
                        help="port of the API server; 0 picks a free port (default 0)")
    parser.add_argument("--download-host", default="127.0.0.2",
                        help="address of the download server (default 127.0.0.2)")
    parser.add_argument("--download-port", type=int, default=0,
                        help="port of the download server; 0 picks a free port (default 0)")
    parser.add_argument("--token", default="standin-token",
                        help="bearer token that the API accepts (default standin-token)")
    parser.add_argument("--archive",
                        help="gzip archive served for every export (default: a generated "
                             "1 MB archive in --data-dir)")
    parser.add_argument("--data-dir",
                        help="directory for the generated archive (default: a temporary "
                             "directory, removed on exit)")
    parser.add_argument("--workspaces", type=int, default=0,
                        help="number of generated organizations added to the three "
                             "default workspaces (default 0)")
    parser.add_argument("--max-unpaged", type=int, default=50,
                        help="largest workspace list served without limit; more gives 400 "
                             "(default 50)")
    parser.add_argument("--export-seconds", type=float, default=2.0,
                        help="seconds from creating an export to finished: pending for the "
                             "first half, started for the second (default 2)")
    parser.add_argument("--url-ttl", type=float, default=300.0,
                        help="seconds a download URL stays valid after a GET of the export "
                             "record hands it out (default 300)")
    parser.add_argument("--offset-ttl", type=float, default=600.0,
                        help="seconds a paging offset token stays valid (default 600)")
    parser.add_argument("--port-file",
                        help="write the server URLs and pid as JSON to this file once both "
                             "servers listen")
    parser.add_argument("--verbose", action="store_true",
                        help="log one line per request to stderr (never the token or URL "
                             "query strings)")

    args = parser.parse_args(argv)
    if args.workspaces < 0:
        parser.error("--workspaces must be >= 0, got %d" % args.workspaces)
    if args.max_unpaged < 0:
        parser.error("--max-unpaged must be >= 0, got %d" % args.max_unpaged)
    if not args.token:
        parser.error("--token must not be empty")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
                        format="asana_standin: %(message)s")

    temp_dir = None
    if args.archive:
        if not os.path.isfile(args.archive):
            LOG.error("archive %s is not a file; pass an existing .gz with --archive",
                      args.archive)
            return 2
        archive = os.path.abspath(args.archive)
    else:
        data_dir = args.data_dir
        if data_dir is None:
            temp_dir = data_dir = tempfile.mkdtemp(prefix="asana-standin-")
        os.makedirs(data_dir, exist_ok=True)
        archive = os.path.join(os.path.abspath(data_dir), "default-export.json.gz")
        size, sha256 = gen_export.generate(archive, DEFAULT_ARCHIVE_BYTES, seed=1)
        LOG.info("generated default archive %s (size=%d sha256=%s)", archive, size, sha256)

    state = StandinState(args, build_workspaces(args.workspaces), archive)
    try:
        api_server = StandinHTTPServer((args.api_host, args.api_port), ApiHandler, state, "api")
        download_server = StandinHTTPServer((args.download_host, args.download_port),
                                            DownloadHandler, state, "download")
    except OSError as error:
        LOG.error("cannot listen: %s", error)
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        return 1

    api_origin = "http://%s:%d" % (url_host(args.api_host), api_server.server_port)
    state.api_url = api_origin + API_PREFIX
    state.download_base = "http://%s:%d" % (url_host(args.download_host),
                                            download_server.server_port)

    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    threads = [threading.Thread(target=server.serve_forever, name=server.name, daemon=True)
               for server in (api_server, download_server)]
    for thread in threads:
        thread.start()
    info = {"api_url": state.api_url, "download_base": state.download_base,
            "admin_url": api_origin + ADMIN_PREFIX, "pid": os.getpid()}
    if args.port_file:
        write_port_file(args.port_file, info)
    LOG.info("listening: api %s, downloads %s, pid %d", state.api_url, state.download_base,
             os.getpid())

    while not stop.wait(0.5):
        pass

    LOG.info("stopping")
    for server in (api_server, download_server):
        server.shutdown()
        server.server_close()
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
