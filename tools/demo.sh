#!/bin/sh
# Sets up asanafs and runs its main job against the local stand-in of the
# Asana API: mount, create an export, wait for it, read it, rsync it,
# unmount. Everything stays on loopback and under one temporary folder.
#
#   sh tools/demo.sh                   # as root; a 50 MiB export
#   DEMO_SIZE=200M sh tools/demo.sh    # any size gen_export.py accepts
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
size=${DEMO_SIZE:-50M}

sh tools/setup.sh >/dev/null

work=$(mktemp -d /tmp/asanafs-demo.XXXXXX)
standin_pid=""
cleanup() {
  if mountpoint -q "$work/mnt" 2>/dev/null; then
    fusermount3 -u "$work/mnt" || true
  fi
  [ -n "$standin_pid" ] && kill "$standin_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

bytes=$(python3 -c "import sys; s=sys.argv[1]; u={'K':1<<10,'M':1<<20,'G':1<<30}; print(int(s[:-1])*u[s[-1]] if s[-1] in u else int(s))" "$size")
echo "== generating a $size export archive"
python3 tests/standin/gen_export.py --size "$bytes" --seed 1 "$work/org.json.gz"

echo "== starting the stand-in Asana API on 127.0.0.1 and 127.0.0.2"
python3 tests/standin/asana_standin.py --archive "$work/org.json.gz" \
  --export-seconds 4 --port-file "$work/standin.json" 2>"$work/standin.log" &
standin_pid=$!
for _ in $(seq 100); do [ -s "$work/standin.json" ] && break; sleep 0.1; done
api_url=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['api_url'])" "$work/standin.json")

echo "== mounting at $work/mnt"
mkdir "$work/mnt"
ASANA_ACCESS_TOKEN=standin-token "$top/build/asanafs" "$work/mnt" \
  -o api_url="$api_url" -o cache_dir="$work/cache" -o state_ttl=2
mnt="$work/mnt"

echo "\$ ls $mnt/orgs"
ls "$mnt/orgs"
echo "\$ echo > $mnt/orgs/1331/exports/new"
echo > "$mnt/orgs/1331/exports/new"
gid=$(cat "$mnt/orgs/1331/exports/new")
echo "export $gid started"
while :; do
  state=$(cat "$mnt/orgs/1331/exports/$gid/state")
  echo "state: $state"
  [ "$state" = finished ] && break
  [ "$state" = error ] && { echo "export failed"; exit 1; }
  sleep 1
done

echo "\$ ls -l $mnt/orgs/1331/exports/latest/"
ls -l "$mnt/orgs/1331/exports/latest/"
echo "== reading export.json through the mount"
mounted=$(sha256sum < "$mnt/orgs/1331/exports/$gid/export.json" | cut -d' ' -f1)
source=$(gzip -dc "$work/org.json.gz" | sha256sum | cut -d' ' -f1)
echo "through asanafs: $mounted"
echo "gzip -dc:        $source"
[ "$mounted" = "$source" ] || { echo "MISMATCH"; exit 1; }

echo "== rsync -a $mnt/ backup/, twice"
rsync -a "$mnt/" "$work/backup/"
again=$(rsync -ai "$mnt/" "$work/backup/")
[ -z "$again" ] || { echo "second rsync copied: $again"; exit 1; }
du -sh "$work/backup"

fusermount3 -u "$mnt"
echo "demo passed: export $gid read, verified and backed up"
