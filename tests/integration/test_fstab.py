"""asanafs mounted by mount(8) from an fstab line of type fuse.asanafs,
through mount.fuse3, and by mount -t fuse.asanafs.

mount(8) never touches /etc/fstab here: each test writes its own fstab and
passes it with mount -T. mount(8) (util-linux 2.38) runs its helpers
without PATH, so the shell that mount.fuse3 (3.14) starts finds asanafs
only in its default search path, such as /usr/local/sbin. Each test
therefore runs in a private mount namespace (unshare -m) where a folder
holding a wrapper named asanafs is bound over /usr/local/sbin. The wrapper
records its arguments and then runs the build's asanafs with exec, so the
process that mounts is the build's asanafs itself."""

import json
import os
import signal
import stat

from harness import ASANAFS, ORG, TOKEN, MountTestCase, main, run, wait_for

WRAPPER = """#!/bin/sh
echo $$ > '{pid_file}'
printf '%s\\n' "$@" > '{argv_file}'
exec '{asanafs}' "$@"
"""

# Runs in the private mount namespace: $1 is the wrapper's folder, $2 the
# mount point and the rest the mount command. Prints one "step status" line
# per step.
SESSION = """
mount --bind "$1" /usr/local/sbin || exit 90
shift
mount_point=$1
shift
"$@"
echo "mount $?"
findmnt -n -o SOURCE,FSTYPE "$mount_point"
cat "$mount_point/orgs/{org}/workspace.json" > "$mount_point.workspace.json"
echo "cat $?"
umount "$mount_point"
echo "umount $?"
"""


class FstabTest(MountTestCase):

    def setUp(self):
        super().setUp()
        self.mount_point = os.path.join(self.workdir, "asana")
        os.mkdir(self.mount_point)
        self.cache_dir = os.path.join(self.workdir, "cache")
        self.token_file = os.path.join(self.workdir, "token")
        self.write_token(TOKEN)
        self.pid_file = os.path.join(self.workdir, "asanafs.pid")
        self.argv_file = os.path.join(self.workdir, "asanafs.argv")
        self.bin_dir = os.path.join(self.workdir, "sbin")
        os.mkdir(self.bin_dir)
        wrapper = os.path.join(self.bin_dir, "asanafs")
        with open(wrapper, "w") as f:
            f.write(WRAPPER.format(pid_file=self.pid_file, argv_file=self.argv_file,
                                   asanafs=ASANAFS))
        os.chmod(wrapper, 0o755)

    def tearDown(self):
        # A mount left behind by a failed test lives in the namespace only as
        # long as its asanafs process, so stopping the process removes both.
        pid = self.asanafs_pid()
        if pid and self.running(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(lambda: not self.running(pid), 15, what="asanafs to stop")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        super().tearDown()

    def write_token(self, token):
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(self.token_file, stat.S_IRUSR | stat.S_IWUSR)

    def asanafs_pid(self):
        try:
            with open(self.pid_file) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None

    @staticmethod
    def running(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(") ")[-1][0] != "Z"
        except OSError:
            return False

    def mount_options(self):
        return ",".join(["token_file=" + self.token_file,
                         "api_url=" + self.standin.api_url,
                         "cache_dir=" + self.cache_dir])

    def session(self, *mount_command):
        """Runs MOUNT_COMMAND, reads workspace.json through the mount and
        unmounts, in a private mount namespace. Returns the completed
        process and the status of each step by name."""
        env = dict(os.environ)
        env.pop("ASANA_ACCESS_TOKEN", None)
        script = SESSION.format(org=ORG)
        # libmount makes the source word an absolute path when a file of that
        # name is in the working folder, as the build folder has asanafs.
        result = run(["unshare", "-m", "sh", "-c", script, "session", self.bin_dir,
                      self.mount_point] + list(mount_command),
                     check=False, env=env, timeout=120, cwd=self.workdir)
        steps = {}
        for line in result.stdout.splitlines():
            name, _, status = line.partition(" ")
            if name in ("mount", "cat", "umount") and status.isdigit():
                steps[name] = int(status)
        return result, steps

    def received_arguments(self):
        with open(self.argv_file) as f:
            return f.read().splitlines()

    def assert_mounted_read_and_unmounted(self, result, steps):
        output = "stdout:\n%s\nstderr:\n%s" % (result.stdout, result.stderr)
        self.assertNotEqual(result.returncode, 90, "bind over /usr/local/sbin failed")
        self.assertEqual(steps.get("mount"), 0, output)
        self.assertIn("asanafs fuse.asanafs", result.stdout)
        self.assertEqual(steps.get("cat"), 0, output)
        with open(self.mount_point + ".workspace.json") as f:
            record = json.load(f)
        self.assertEqual(record["gid"], ORG)
        self.assertEqual(steps.get("umount"), 0, output)
        pid = self.asanafs_pid()
        self.assertIsNotNone(pid, "the asanafs wrapper never ran")
        wait_for(lambda: not self.running(pid), 30, what="asanafs to exit after umount")

    def test_mount_by_mount_point(self):
        fstab = os.path.join(self.workdir, "fstab")
        with open(fstab, "w") as f:
            f.write("# written by test_fstab\n")
            f.write("asanafs %s fuse.asanafs noauto,_netdev,%s 0 0\n"
                    % (self.mount_point, self.mount_options()))
        result, steps = self.session("mount", "-T", fstab, self.mount_point)
        self.assert_mounted_read_and_unmounted(result, steps)

        arguments = self.received_arguments()
        self.assertEqual(arguments[:3], ["asanafs", self.mount_point, "-o"])
        self.assertEqual(len(arguments), 4, arguments)
        passed = arguments[3].split(",")
        for option in self.mount_options().split(","):
            self.assertIn(option, passed)

    def test_mount_with_type(self):
        options = "_netdev,nofail,defaults," + self.mount_options()
        result, steps = self.session("mount", "-t", "fuse.asanafs", "asanafs",
                                     self.mount_point, "-o", options)
        self.assert_mounted_read_and_unmounted(result, steps)

    def test_rejected_token_fails_mount(self):
        self.write_token("not-the-token")
        fstab = os.path.join(self.workdir, "fstab")
        with open(fstab, "w") as f:
            f.write("asanafs %s fuse.asanafs noauto,_netdev,%s 0 0\n"
                    % (self.mount_point, self.mount_options()))
        result, steps = self.session("mount", "-T", fstab, self.mount_point)
        self.assertNotEqual(steps.get("mount"), 0, result.stdout)
        lines = [line for line in result.stderr.splitlines()
                 if line.startswith("asanafs: ")]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("token", lines[0])
        self.assertNotIn("asanafs fuse.asanafs", result.stdout)
        self.assertNotEqual(steps.get("cat"), 0)


if __name__ == "__main__":
    main()
