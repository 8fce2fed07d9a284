"""A second loopback HTTP host for redirect tests.

It records the method, path and headers of every request it receives. It
replies to each with a 307 redirect to the same path and query on a given
origin, or with 404 when it has none. Only the standard library is used."""

import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer()

    def do_HEAD(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        recorder = self.server.recorder
        with recorder.lock:
            recorder.requests.append({"method": self.command, "path": self.path,
                                      "headers": dict(self.headers.items())})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if recorder.redirect_origin:
            self.send_response(307)
            self.send_header("Location", recorder.redirect_origin + self.path)
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        pass


class Recorder:
    """Listens on HOST (127.0.0.3 by default) at a free port until stop()."""

    def __init__(self, host="127.0.0.3", redirect_origin=None):
        self.lock = threading.Lock()
        self.requests = []
        self.redirect_origin = redirect_origin
        self.server = http.server.ThreadingHTTPServer((host, 0), _Handler)
        self.server.daemon_threads = True
        self.server.recorder = self
        self.origin = "http://%s:%d" % (host, self.server.server_port)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def received(self):
        with self.lock:
            return [dict(request) for request in self.requests]
