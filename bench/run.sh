#!/bin/sh
# Benchmarks asanafs against curl | gzip -dc, local disk, httpdirfs and
# rclone, and rewrites the figures of docs/BENCHMARKS.md. Not a test and not
# run by CI: it takes about 15 minutes the first time (most of it making the
# archives, which are kept in the work folder for later runs).
#
# usage, as root: sh bench/run.sh [bench.py options]
#   --runs N         runs of each contender (default 5)
#   --size BYTES     inflated export size (default 1 GiB)
#   --big-size BYTES second export for peak RSS and the size check (default
#                    4 GiB + 64 MiB; 0 skips it)
#   --no-peers       leave out httpdirfs and rclone
#   --note TEXT      what else the machine was doing, for the doc
#   --workdir DIR    archives, caches and mounts (default /var/tmp/asanafs-bench)
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root: it mounts, installs packages and drops the page cache" >&2
  exit 1
fi

# The peers come from Debian's packages, like everything else.
packages="gcc meson ninja-build pkg-config libfuse3-dev fuse3 libcurl4-openssl-dev
  libjansson-dev zlib1g-dev python3 curl gzip rsync procps time httpdirfs rclone"
missing=""
for package in $packages; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $package"
done
if [ -n "$missing" ]; then
  echo "bench: installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# A release build of its own, so a debug build in ./build stays as it is.
if [ ! -f build-bench/build.ninja ]; then
  meson setup build-bench --buildtype=release -Doptimization=2 >/dev/null
fi
ninja -C build-bench asanafs >/dev/null
# The ceiling of any reader: zlib alone inflating the local archive.
cc -O2 -Wall -o build-bench/zinflate bench/zinflate.c -lz

exec python3 bench/bench.py --asanafs build-bench/asanafs \
  --zinflate build-bench/zinflate "$@"
