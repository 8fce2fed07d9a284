"""Start and drive the local Asana stand-in (tests/standin/asana_standin.py) from tests.

Typical use:

    standin = StandIn()
    standin.start(tmpdir, workspaces=250, export_seconds=1)
    try:
        ... point the client at standin.api_url with token standin.token ...
        standin.fault(api_status={"status": 429, "retry_after": 1, "count": 2})
        assert standin.counts()["GET /workspaces"] == 3
    finally:
        standin.stop()

Only the standard library is used. Requests go straight to the loopback
servers and never through a proxy from the environment.
"""

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN_DIR = os.path.join(os.path.dirname(HERE), "standin")
SERVER_SCRIPT = os.path.join(STANDIN_DIR, "asana_standin.py")
GENERATOR_SCRIPT = os.path.join(STANDIN_DIR, "gen_export.py")
PYTHON = "/usr/bin/python3"

START_TIMEOUT_SECONDS = 15
STOP_TIMEOUT_SECONDS = 5
ADMIN_TIMEOUT_SECONDS = 30

# Loopback servers must be reached directly, even when http_proxy is set.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StandInError(RuntimeError):
    """The stand-in failed to start or rejected an admin call."""


def make_archive(path, size, seed=1, members=1, level=6):
    """Write a generated export archive to path and return (size, sha256 hex).

    size and sha256 describe the decompressed content.
    """
    command = [PYTHON, GENERATOR_SCRIPT, "--size", str(size), "--seed", str(seed),
               "--members", str(members), "--level", str(level), str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise StandInError("gen_export.py failed with exit status %d: %s"
                           % (result.returncode, result.stderr.strip()))
    match = re.fullmatch(r"size=(\d+) sha256=([0-9a-f]{64})\s*", result.stdout)
    if match is None:
        raise StandInError("unexpected gen_export.py output: %r" % result.stdout)
    return int(match.group(1)), match.group(2)


class StandIn:
    """One running stand-in process and its admin API."""

    def __init__(self):
        self.process = None
        self.info = None
        self.token = None
        self.stderr_path = None
        self._stderr = None
        self._tmpdir = None
        self._options = {}

    @property
    def api_url(self):
        return self.info["api_url"]

    @property
    def download_base(self):
        return self.info["download_base"]

    @property
    def admin_url(self):
        return self.info["admin_url"]

    @property
    def pid(self):
        return self.process.pid

    def start(self, tmpdir, **options):
        """Start the server and wait until both of its ports listen.

        Keyword options become command-line flags: export_seconds=1 turns
        into --export-seconds 1, verbose=True into --verbose, and options
        that are None or False are left out. The server's stderr goes to
        standin.stderr.log in tmpdir.
        """
        if self.process is not None:
            raise StandInError("stand-in already started with pid %d" % self.process.pid)
        os.makedirs(tmpdir, exist_ok=True)
        self._tmpdir = tmpdir
        self._options = dict(options)
        port_file = os.path.join(tmpdir, "standin.port.json")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.token = options.get("token", "standin-token")
        command = [PYTHON, SERVER_SCRIPT, "--port-file", port_file]
        for name, value in options.items():
            if value is None or value is False:
                continue
            flag = "--" + name.replace("_", "-")
            command.append(flag)
            if value is not True:
                command.append(str(value))

        self.stderr_path = os.path.join(tmpdir, "standin.stderr.log")
        self._stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if os.path.exists(port_file):
                with open(port_file) as handle:
                    self.info = json.load(handle)
                return self
            status = self.process.poll()
            if status is not None:
                self._close_stderr()
                self.process = None
                raise StandInError("stand-in exited with status %d before listening: %s"
                                   % (status, self.stderr_text()))
            if time.monotonic() > deadline:
                self.stop()
                raise StandInError("stand-in did not write %s within %d s: %s"
                                   % (port_file, START_TIMEOUT_SECONDS, self.stderr_text()))
            time.sleep(0.05)

    def stop(self):
        """Stop the server with SIGTERM, or SIGKILL if it is still running after 5 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            # A paused server would handle SIGTERM only after SIGCONT.
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._close_stderr()

    def restart(self):
        """Start the server again on the ports it had, after stop().

        The new process starts empty: exports, faults and counts of the old
        one are gone, so tests recreate what they need with create_export().
        """
        if self.info is None:
            raise StandInError("restart() needs a stand-in that was started before")
        api_port = urllib.parse.urlsplit(self.info["api_url"]).port
        download_port = urllib.parse.urlsplit(self.info["download_base"]).port
        options = dict(self._options, api_port=api_port, download_port=download_port)
        self.stop()
        return self.start(self._tmpdir, **options)

    def pause(self):
        """Stop the server process with SIGSTOP: its ports still accept
        connections, but no request gets a reply until resume()."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stderr_text(self):
        if self.stderr_path is None or not os.path.exists(self.stderr_path):
            return ""
        with open(self.stderr_path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip()

    def _close_stderr(self):
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # Admin API ---------------------------------------------------------------

    def admin(self, method, path, body=None):
        """Call the admin API and return its decoded JSON response."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=ADMIN_TIMEOUT_SECONDS) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")
            raise StandInError("admin %s %s failed with %d: %s"
                               % (method, path, error.code, detail)) from None

    def counts(self):
        """Return {"METHOD /path": requests received} since the last reset."""
        return self.admin("GET", "/counts")

    def reset_counts(self):
        """Zero the request counts and clear the request log."""
        self.admin("POST", "/counts/reset", {})

    def requests(self):
        """Return the request log, oldest first (at most the last 1000 requests)."""
        return self.admin("GET", "/requests")

    def fault(self, **faults):
        """Switch faults on, e.g. fault(drop={"after_bytes": 1000, "count": 2})."""
        return self.admin("POST", "/faults", faults)

    def faults(self):
        return self.admin("GET", "/faults")

    def clear_faults(self):
        return self.admin("DELETE", "/faults")

    def create_export(self, organization="1331", state="finished", archive=None, gid=None,
                      export_seconds=None):
        """Create an export directly (or update the one named by gid) and return its record.

        state=None lets the export move from pending to finished like one
        created through the API.
        """
        body = {"organization": str(organization)}
        for name, value in (("state", state), ("archive", archive), ("gid", gid),
                            ("export_seconds", export_seconds)):
            if value is not None:
                body[name] = str(value) if name in ("archive", "gid") else value
        return self.admin("POST", "/exports", body)

    def exports(self):
        return self.admin("GET", "/exports")

    def set_workspaces(self, workspaces):
        """Replace the workspace list with dicts of gid, name and optionally
        is_organization (default True); the API serves it from now on."""
        return self.admin("POST", "/workspaces", {"workspaces": workspaces})

    def set_archive(self, path):
        """Serve path for exports created from now on."""
        return self.admin("POST", "/archive", {"path": str(path)})
