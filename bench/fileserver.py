#!/usr/bin/python3
"""Serve one folder over HTTP on loopback, with Range support, for the peers
of the benchmark (httpdirfs and rclone need a folder listing, and both read
with Range requests, which http.server alone does not answer).

Usage: fileserver.py FOLDER PORT_FILE
Listens on 127.0.0.1 on a free port and writes that port to PORT_FILE.
"""

import http.server
import os
import re
import socketserver
import sys

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.serve(True)

    def do_HEAD(self):
        self.serve(False)

    def serve(self, body):
        path = self.translate_path(self.path)
        if os.path.isdir(path):
            self.close_connection = True
            return super().do_GET() if body else super().do_HEAD()
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end = 0, size - 1
            match = RANGE.match(self.headers.get("Range", ""))
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    if match.group(2):
                        end = min(end, int(match.group(2)))
                else:
                    start = max(0, size - int(match.group(2)))
                if start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", "bytes */%d" % size)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", self.date_time_string(os.fstat(f.fileno()).st_mtime))
            self.end_headers()
            if not body:
                return
            self.wfile.flush()
            offset, left = start, end - start + 1
            try:
                while left > 0:
                    sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(left, 1 << 24))
                    if sent == 0:
                        break
                    offset += sent
                    left -= sent
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def main():
    folder, port_file = sys.argv[1], sys.argv[2]
    handler = lambda *a, **k: Handler(*a, directory=folder, **k)  # noqa: E731
    server = Server(("127.0.0.1", 0), handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
