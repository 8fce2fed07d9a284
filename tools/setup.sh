#!/bin/sh
# Installs what asanafs and its tests need on Debian 12 (clang and its
# libFuzzer runtime for the fuzz build) and builds asanafs into ./build.
set -eu
cd "$(dirname "$0")/.."

# attr brings getfattr for the extended attribute tests, man-db and
# groff-base render the man page, systemd brings systemd-analyze for the
# unit files in contrib/, and util-linux brings mount -T and unshare for
# the fstab test. valgrind checks the bad server replies for leaks, and
# libclang-rt-14-dev contains clang's libFuzzer runtime.
packages="gcc clang libclang-rt-14-dev meson ninja-build pkg-config
  libfuse3-dev fuse3 libcurl4-openssl-dev libjansson-dev zlib1g-dev python3
  rsync gzip
  attr
  man-db groff-base systemd util-linux
  valgrind"
missing=""
for package in $packages; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
    missing="$missing $package"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  if [ "$(id -u)" -ne 0 ]; then
    echo "asanafs setup: run as root, or install these first:$missing" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

if [ ! -f build/build.ninja ]; then
  meson setup build
fi
ninja -C build
