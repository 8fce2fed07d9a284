#!/usr/bin/python3
"""Measure asanafs against curl | gzip -dc, local disk, httpdirfs and rclone.

Run it through bench/run.sh, which installs the tools and builds asanafs
first. Everything talks to servers on loopback that this script starts: the
stand-in Asana API (download host 127.0.0.2) for curl and asanafs, and
bench/fileserver.py on 127.0.0.1 for the peers, which need a folder listing.
It writes every figure to a JSON file and renders the figures section of
docs/BENCHMARKS.md from it.

Contenders of one round run one after the other, and rounds repeat, so a
burst of load elsewhere on the machine hits all of them alike.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from standin import StandIn, make_archive  # noqa: E402

ORG = "1331"
TOKEN = "standin-token"
MIB = 1 << 20
GIB = 1 << 30
BEGIN = "<!-- figures:begin -->"
END = "<!-- figures:end -->"


def log(text):
    print("bench: " + text, file=sys.stderr, flush=True)


def run(cmd, check=True, **kwargs):
    return subprocess.run(cmd, check=check, stdin=subprocess.DEVNULL, **kwargs)


def shell_time(command):
    """Runs COMMAND under bash with pipefail; returns wall seconds."""
    start = time.perf_counter()
    run(["bash", "-o", "pipefail", "-c", command])
    return time.perf_counter() - start


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm_file(path):
    run(["cat", path], stdout=subprocess.DEVNULL)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def unmount(path, proc):
    if os.path.ismount(path):
        run(["umount", path], check=False, capture_output=True)
    if proc is not None:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if os.path.ismount(path):
        run(["umount", "-l", path], check=False, capture_output=True)


class Asanafs:
    """One asanafs process in the foreground."""

    def __init__(self, binary, workdir, api_url, name="asanafs", ttl=60):
        self.binary = binary
        self.api_url = api_url
        self.path = os.path.join(workdir, name + ".mnt")
        self.cache_dir = os.path.join(workdir, name + ".cache")
        self.log_path = os.path.join(workdir, name + ".log")
        self.ttl = ttl
        self.proc = None

    def start(self):
        os.makedirs(self.path, exist_ok=True)
        env = dict(os.environ, ASANA_ACCESS_TOKEN=TOKEN)
        with open(self.log_path, "a") as log_file:
            self.proc = subprocess.Popen(
                [self.binary, self.path, "-f", "-o", "api_url=" + self.api_url,
                 "-o", "cache_dir=" + self.cache_dir,
                 "-o", "state_ttl=%d" % self.ttl],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env)
        wait_for(lambda: os.path.ismount(self.path) or self.proc.poll() is not None,
                 20, "the asanafs mount")
        if self.proc.poll() is not None:
            raise RuntimeError("asanafs exited; see " + self.log_path)

    def stop(self):
        if self.proc is not None:
            unmount(self.path, self.proc)
            self.proc = None

    def restart_cold(self, gid):
        """Remounts with the export's cached data and meta gone."""
        self.stop()
        shutil.rmtree(os.path.join(self.cache_dir, "data", gid), ignore_errors=True)
        self.start()

    def export_dir(self, gid):
        return os.path.join(self.path, "orgs", ORG, "exports", gid)

    def peak_rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None


class Peer:
    """httpdirfs or rclone, mounting the archive from the file server."""

    def __init__(self, name, workdir, base_url, file_name):
        self.name = name
        self.path = os.path.join(workdir, name + ".mnt")
        self.cache_dir = os.path.join(workdir, name + ".cache")
        self.log_path = os.path.join(workdir, name + ".log")
        self.base_url = base_url
        self.file_name = file_name
        self.proc = None

    def command(self):
        if self.name == "httpdirfs":
            return ["httpdirfs", "-f", "--cache", "--cache-location", self.cache_dir,
                    "--single-file-mode", self.base_url + self.file_name, self.path]
        return ["rclone", "mount", ":http:", self.path, "--http-url", self.base_url,
                "--vfs-cache-mode", "full", "--cache-dir", self.cache_dir,
                "--read-only", "--dir-cache-time", "1h"]

    def start_cold(self):
        self.stop()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        os.makedirs(self.cache_dir)
        os.makedirs(self.path, exist_ok=True)
        env = dict(os.environ, XDG_CACHE_HOME=self.cache_dir,
                   RCLONE_CONFIG=os.path.join(self.cache_dir, "rclone.conf"))
        with open(self.log_path, "a") as log_file:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log_file, stderr=log_file, env=env)
        wait_for(lambda: os.path.ismount(self.path) or self.proc.poll() is not None,
                 30, "the %s mount" % self.name)
        if self.proc.poll() is not None:
            raise RuntimeError("%s exited; see %s" % (self.name, self.log_path))

    def file(self):
        return os.path.join(self.path, self.file_name)

    def stop(self):
        if self.proc is not None:
            unmount(self.path, self.proc)
            self.proc = None


def summary(times, nbytes):
    med = statistics.median(times)
    return {"runs": [round(t, 4) for t in times], "median_s": round(med, 4),
            "min_s": round(min(times), 4), "max_s": round(max(times), 4),
            "median_mb_s": round(nbytes / med / 1e6, 1)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = args.workdir
        self.results = {"config": {}, "throughput": {}, "ttfb": {}, "rss": {},
                        "requests": {}, "size_check": {}}
        self.standin = None
        self.fileserver = None
        self.asanafs = None
        self.peers = []

    # Setup -----------------------------------------------------------------

    def archive(self, size):
        """Generates (or reuses) an archive of SIZE bytes inflated."""
        path = os.path.join(self.workdir, "export-%d.json.gz" % size)
        info_path = path + ".info"
        if os.path.exists(info_path):
            with open(info_path) as f:
                return path, json.load(f)
        log("generating a %d MiB export (once; kept in %s)" % (size // MIB, self.workdir))
        inflated, sha = make_archive(path, size, seed=7)
        info = {"size": inflated, "sha256": sha, "gz_size": os.path.getsize(path)}
        with open(info_path, "w") as f:
            json.dump(info, f)
        return path, info

    def start_servers(self, archive):
        self.standin = StandIn()
        self.standin.start(os.path.join(self.workdir, "standin"), archive=archive,
                           url_ttl=86400, export_seconds=0)
        serve_dir = os.path.join(self.workdir, "serve")
        shutil.rmtree(serve_dir, ignore_errors=True)
        os.makedirs(serve_dir)
        os.link(archive, os.path.join(serve_dir, "export.json.gz"))
        port_file = os.path.join(self.workdir, "fileserver.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.fileserver = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fileserver.py"), serve_dir, port_file],
            stdin=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(port_file), 15, "the file server")
        with open(port_file) as f:
            self.file_base = "http://127.0.0.1:%s/" % f.read().strip()

    def new_export(self, archive):
        record = self.standin.create_export(ORG, state="finished", archive=archive)
        return record["gid"]

    def download_url(self, gid):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            self.standin.api_url + "/organization_exports/" + gid,
            headers={"Authorization": "Bearer " + TOKEN})
        with opener.open(request, timeout=30) as response:
            return json.load(response)["data"]["download_url"]

    def stop_all(self):
        for peer in self.peers:
            peer.stop()
        if self.asanafs is not None:
            self.asanafs.stop()
        if self.fileserver is not None:
            self.fileserver.terminate()
            self.fileserver.wait(timeout=10)
        if self.standin is not None:
            self.standin.stop()

    # Throughput --------------------------------------------------------------

    def contenders(self, archive, gid, url, local_json):
        fs = self.asanafs
        json_path = os.path.join(fs.export_dir(gid), "export.json")

        def server_warm():
            warm_file(archive)

        def cold_asanafs():
            server_warm()
            fs.restart_cold(gid)

        c = [
            ("zlib", "the bench/zinflate loop over inflate(), local archive",
             server_warm, "%s %s > /dev/null" % (self.args.zinflate, archive)),
            ("gzip_local", "gzip -dc of the local archive",
             server_warm, "gzip -dc %s > /dev/null" % archive),
            ("curl", "curl -s URL | gzip -dc (stand-in download host)",
             server_warm, "curl -s '%s' | gzip -dc > /dev/null" % url),
            ("asanafs_cold", "cat export.json, empty cache, fresh mount",
             cold_asanafs, "cat %s > /dev/null" % json_path),
            ("asanafs_warm", "cat export.json again, page cache as it is",
             lambda: warm_file(json_path), "cat %s > /dev/null" % json_path),
            ("local_warm", "cat of the inflated file on local disk, page cache as it is",
             lambda: warm_file(local_json), "cat %s > /dev/null" % local_json),
            ("asanafs_dropped", "cat export.json after drop_caches",
             drop_caches, "cat %s > /dev/null" % json_path),
            ("local_dropped", "cat of the local inflated file after drop_caches",
             drop_caches, "cat %s > /dev/null" % local_json),
        ]
        for peer in self.peers:
            def cold(p=peer):
                server_warm()
                p.start_cold()
            read = "gzip -dc %s > /dev/null" % peer.file()
            c.append((peer.name + "_cold", "gzip -dc of its mounted archive, empty cache",
                      cold, read))
            c.append((peer.name + "_warm", "the same again, page cache as it is",
                      None, read))
        return c

    def measure_throughput(self, archive, info, gid, url, local_json):
        contenders = self.contenders(archive, gid, url, local_json)
        times = {name: [] for name, *_ in contenders}
        warmup = self.args.warmup
        for round_no in range(warmup + self.args.runs):
            log("round %d of %d%s" % (round_no + 1, warmup + self.args.runs,
                                      " (warm-up)" if round_no < warmup else ""))
            for name, _, prepare, command in contenders:
                if prepare is not None:
                    prepare()
                os.sync()
                seconds = shell_time(command)
                log("  %-16s %.3f s" % (name, seconds))
                if round_no >= warmup:
                    times[name].append(seconds)
        out = {}
        for name, what, _, command in contenders:
            out[name] = summary(times[name], info["size"])
            out[name]["what"] = what
            out[name]["command"] = command.replace(self.workdir, "$WORK")
            if url in out[name]["command"]:
                out[name]["command"] = out[name]["command"].replace(url, "$URL")
        self.results["throughput"] = out

    # Time to first byte, memory, size ---------------------------------------

    def measure_ttfb(self, gid):
        fs = self.asanafs
        path = os.path.join(fs.export_dir(gid), "export.json")
        samples = []
        for _ in range(self.args.runs):
            fs.restart_cold(gid)
            # The folder exists before the export's data is known: stat the
            # export's folder (a listing does that too), not export.json.
            os.stat(fs.export_dir(gid))
            samples.append(shell_time("head -c 1 %s > /dev/null" % path))
        self.results["ttfb"] = summary(samples, 1)
        self.results["ttfb"]["command"] = "head -c 1 export.json, fresh mount, empty cache"

    def measure_rss(self, size, info, archive):
        gid = self.new_export(archive)
        fs = self.asanafs
        fs.restart_cold(gid)
        os.mkdir(fs.export_dir(gid))
        path = os.path.join(fs.export_dir(gid), "export.json")
        st = os.stat(path)
        digest = subprocess.run("sha256sum < %s" % path, shell=True, check=True,
                                capture_output=True, text=True).stdout.split()[0]
        rss = fs.peak_rss_kib()
        self.results["rss"][str(size)] = {"peak_rss_kib": rss}
        self.results["size_check"][str(size)] = {
            "stat_size": st.st_size, "expected": info["size"],
            "sha256_ok": digest == info["sha256"]}
        log("peak RSS %d KiB for %d MiB; size %d, expected %d, sha256 %s" % (
            rss, size // MIB, st.st_size, info["size"],
            "ok" if digest == info["sha256"] else "WRONG"))
        shutil.rmtree(os.path.join(fs.cache_dir, "data", gid), ignore_errors=True)

    # Requests -------------------------------------------------------------

    def measure_requests(self, archive):
        """Count the requests of a fresh mount that has adopted three exports."""
        small, _ = self.archive(self.args.request_size)
        fs = Asanafs(self.asanafs.binary, self.workdir, self.standin.api_url,
                     name="requests", ttl=60)
        shutil.rmtree(fs.cache_dir, ignore_errors=True)
        fs.start()
        try:
            gids = [self.new_export(small) for _ in range(2)]
            # One export still running, whose state is asked again once
            # per TTL.
            running = self.standin.create_export(ORG, state="started",
                                                 archive=small)["gid"]
            for gid in gids + [running]:
                os.mkdir(fs.export_dir(gid))
            backup = os.path.join(self.workdir, "rsync-backup")
            shutil.rmtree(backup, ignore_errors=True)
            steps = [
                ("ls_lR_first", "ls -lR %s > /dev/null" % fs.path),
                ("ls_lR_second", "ls -lR %s > /dev/null" % fs.path),
                ("rsync_first", "rsync -a %s/ %s/" % (fs.path, backup)),
                ("rsync_second", "rsync -a %s/ %s/" % (fs.path, backup)),
            ]
            out = {}
            for name, command in steps:
                self.standin.reset_counts()
                shell_time(command)
                out[name] = self.standin.counts()
            self.standin.reset_counts()
            state = os.path.join(fs.export_dir(running), "state")
            start = time.monotonic()
            for i in range(100):
                with open(state) as f:
                    f.read()
                time.sleep(max(0, start + (i + 1) * 0.01 - time.monotonic()))
            out["state_100_reads"] = self.standin.counts()
            out["organizations"] = 1
            out["exports"] = len(gids) + 1
            self.results["requests"] = out
            shutil.rmtree(backup, ignore_errors=True)
        finally:
            fs.stop()
            shutil.rmtree(fs.cache_dir, ignore_errors=True)

    # Whole run ------------------------------------------------------------

    def machine(self):
        def first(path, key):
            try:
                with open(path) as f:
                    for line in f:
                        if line.startswith(key):
                            return line.split(":", 1)[1].strip()
            except OSError:
                pass
            return "?"

        def version(cmd, word=""):
            """Return the first line of CMD's output that contains WORD."""
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return "?"
            for line in (out.stdout + out.stderr).splitlines():
                if word.lower() in line.lower():
                    return line.strip()
            return "?"

        return {
            "cpu": first("/proc/cpuinfo", "model name"),
            "cores": os.cpu_count(),
            "memory": first("/proc/meminfo", "MemTotal"),
            "kernel": platform.release(),
            "load_before": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "zlib": version([sys.executable, "-c", "import zlib; print(zlib.ZLIB_RUNTIME_VERSION)"]),
            "curl": version(["curl", "--version"]),
            "gzip": version(["gzip", "--version"]),
            "httpdirfs": version(["httpdirfs", "--version"], "httpdirfs"),
            "rclone": version(["rclone", "version"]),
        }

    def run(self):
        args = self.args
        os.makedirs(self.workdir, exist_ok=True)
        self.results["config"] = {"runs": args.runs, "size": args.size,
                                  "big_size": args.big_size,
                                  "machine": self.machine(),
                                  "note": args.note}
        archive, info = self.archive(args.size)
        self.results["config"]["archive"] = info
        local_json = os.path.join(self.workdir, "local-export.json")
        if not os.path.exists(local_json) or os.path.getsize(local_json) != info["size"]:
            run(["bash", "-c", "%s %s > %s" % (args.zinflate, archive, local_json)])
        start = time.monotonic()
        try:
            self.start_servers(archive)
            gid = self.new_export(archive)
            url = self.download_url(gid)
            self.asanafs = Asanafs(args.asanafs, self.workdir, self.standin.api_url)
            shutil.rmtree(self.asanafs.cache_dir, ignore_errors=True)
            self.asanafs.start()
            os.mkdir(self.asanafs.export_dir(gid))
            if not args.no_peers:
                self.peers = [Peer("httpdirfs", self.workdir, self.file_base, "export.json.gz"),
                              Peer("rclone", self.workdir, self.file_base, "export.json.gz")]
            self.measure_throughput(archive, info, gid, url, local_json)
            for peer in self.peers:
                peer.stop()
            self.measure_ttfb(gid)
            self.measure_rss(args.size, info, archive)
            if args.big_size:
                big, big_info = self.archive(args.big_size)
                self.measure_rss(args.big_size, big_info, big)
            self.measure_requests(archive)
        finally:
            self.stop_all()
        self.results["config"]["seconds"] = round(time.monotonic() - start)
        return self.results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asanafs", help="asanafs binary (a release build)")
    parser.add_argument("--zinflate", help="the bench/zinflate binary")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=GIB, help="inflated export size")
    parser.add_argument("--big-size", type=int, default=4 * GIB + 64 * MIB,
                        help="second export for peak RSS and the exact size "
                        "past 4 GiB; 0 skips it")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds first, so that memory the "
                        "machine never used yet does not slow the first runs")
    parser.add_argument("--request-size", type=int, default=4 * MIB,
                        help="inflated size of the exports of the request count")
    parser.add_argument("--workdir", default="/var/tmp/asanafs-bench")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--note", default="", help="what else the machine was doing")
    parser.add_argument("--json", default=os.path.join(ROOT, "bench", "results.json"))
    parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--render-only", action="store_true",
                        help="render the doc from --json without measuring")
    args = parser.parse_args()
    if args.render_only:
        with open(args.json) as f:
            results = json.load(f)
    else:
        if os.geteuid() != 0:
            sys.exit("bench: run as root (it mounts and drops the page cache)")
        if not args.asanafs or not args.zinflate:
            sys.exit("bench: --asanafs and --zinflate are required; "
                     "sh bench/run.sh passes them")
        results = Bench(args).run()
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
            f.write("\n")
    import render  # noqa: E402 (bench/render.py, next to this file)
    render.update_doc(args.doc, results)
    log("wrote %s and %s" % (args.json, args.doc))


if __name__ == "__main__":
    main()
