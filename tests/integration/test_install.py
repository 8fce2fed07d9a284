"""What `meson install` delivers besides the binary: the man page, which must
render without warnings and document the same options and defaults as
`asanafs --help`, the backup tool, and the systemd units in contrib/."""

import os
import re
import shutil
import stat
import tempfile
import unittest

from harness import ASANAFS, ROOT, main, run

MAN_PAGE = os.path.join(ROOT, "docs", "asanafs.1")
BACKUP = os.path.join(ROOT, "tools", "asanafs-backup")
CONTRIB = os.path.join(ROOT, "contrib")
BUILD_DIR = os.path.dirname(ASANAFS)


def render_man_page(width):
    env = dict(os.environ, MANWIDTH=str(width), LC_ALL="C.UTF-8")
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    return run(["man", "--warnings", "-l", MAN_PAGE], check=False, env=env)


def squeeze(text):
    return " ".join(text.split())


def section(lines, start, end):
    """Returns the lines after the first line matching START, up to the
    first line after it matching END."""
    inside = False
    picked = []
    for line in lines:
        if not inside:
            inside = re.match(start, line) is not None
        elif re.match(end, line):
            break
        else:
            picked.append(line)
    if not inside:
        raise AssertionError("no line matches %r" % start)
    return picked


def options_from_lines(lines, tag_indent, body_indent):
    """Maps each -o option name to its description, from a list where the
    tag `-o NAME[=VALUE]` starts at TAG_INDENT and the description goes on at
    BODY_INDENT or deeper."""
    options = {}
    name = None
    tag = re.compile(r"^ {%d}-o ([\w,]+)(=\S*)?(.*)$" % tag_indent)
    for line in lines:
        match = tag.match(line)
        if match:
            name = match.group(1)
            options[name] = match.group(3)
        elif name and line.startswith(" " * body_indent) and line.strip():
            options[name] += " " + line
        else:
            name = None
    return {key: squeeze(value) for key, value in options.items()}


def stated_default(description):
    """The text of the last '(default ...)' in DESCRIPTION, or None."""
    found = re.findall(r"\(default:? ((?:[^()]|\([^()]*\))*)\)", description)
    return squeeze(found[-1]) if found else None


def stated_range(description):
    return re.findall(r"(\d+) to (\d+)", description)


class ManPageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        rendered = render_man_page(1000)
        if rendered.returncode != 0:
            raise AssertionError("man failed: " + rendered.stderr)
        man_lines = rendered.stdout.splitlines()
        cls.man_options = options_from_lines(
            section(man_lines, r"^   asanafs options$", r"^   \S"), 7, 14)
        help_result = run([ASANAFS, "--help"], check=False)
        cls.help_status = help_result.returncode
        cls.help_text = help_result.stdout
        help_lines = help_result.stdout.splitlines()
        help_options = options_from_lines(
            section(help_lines, r"^asanafs options:$", r"^\S"), 4, 5)
        # One entry such as "-o _netdev,noauto,...": accepted and ignored.
        cls.help_ignored = set()
        cls.help_options = {}
        for key, description in help_options.items():
            if "," in key:
                cls.help_ignored.update(key.split(","))
            else:
                cls.help_options[key] = description
        ignored = re.search(r"The options (.*?) of fstab\(5\) are accepted and ignored",
                            squeeze(rendered.stdout))
        cls.man_ignored = set(re.findall(r"\w+", ignored.group(1))) - {"and"} \
            if ignored else set()

    def test_renders_without_warnings(self):
        result = render_man_page(80)
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.stderr, "")
        self.assertIn("asanafs - mount Asana organization data", result.stdout)
        for heading in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "THE TREE",
                        "EXTENDED ATTRIBUTES", "ENVIRONMENT", "FILES",
                        "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
            self.assertRegex(result.stdout, r"(?m)^%s$" % heading)

    def test_lists_asanafs_options(self):
        self.assertEqual(set(self.man_options),
                         {"api_url", "token_file", "cache_dir", "cache_size",
                          "state_ttl", "timeout", "nonempty"})

    def test_help_has_man_page_options(self):
        self.assertEqual(self.help_status, 0)
        self.assertEqual(sorted(self.help_options), sorted(self.man_options),
                         "options in asanafs --help and in the man page differ")

    def test_ignored_fstab_options_match_help(self):
        self.assertEqual(self.man_ignored,
                         {"_netdev", "noauto", "nofail", "auto", "user", "users",
                          "defaults"})
        self.assertEqual(self.help_ignored, self.man_ignored)

    def test_defaults_match_help(self):
        for name, description in self.man_options.items():
            with self.subTest(option=name):
                man_default = stated_default(description)
                self.assertIsNotNone(man_default, "man page: no default for " + name)
                self.assertIn(name, self.help_options)
                self.assertEqual(stated_default(self.help_options[name]), man_default)

    def test_ranges_match_help(self):
        for name in ("state_ttl", "timeout"):
            with self.subTest(option=name):
                man_range = stated_range(self.man_options[name])
                self.assertEqual(len(man_range), 1, self.man_options[name])
                self.assertIn(name, self.help_options)
                self.assertEqual(stated_range(self.help_options[name]), man_range)

    def test_fuse_flags_in_help(self):
        for flag in ("-f", "-d", "-s", "-h", "--help", "-V", "--version"):
            self.assertRegex(self.help_text, r"(?m)^\s+(\S+\s+)?%s\b" % re.escape(flag))

    def test_version_matches_binary(self):
        with open(MAN_PAGE) as f:
            header = next(line for line in f if line.startswith(".TH "))
        version = run([ASANAFS, "--version"]).stdout.splitlines()[0]
        self.assertRegex(version, r"^asanafs \S+$")
        self.assertIn('"%s"' % version, header)


class MesonInstallTest(unittest.TestCase):

    def setUp(self):
        self.destdir = tempfile.mkdtemp(prefix="asanafs-install-")

    def tearDown(self):
        shutil.rmtree(self.destdir, ignore_errors=True)

    def install_path(self, option):
        result = run(["meson", "configure", BUILD_DIR])
        values = dict(re.findall(r"^\s*(prefix|bindir|mandir)\s+(\S+)", result.stdout, re.M))
        return os.path.join(values["prefix"], values[option])

    def test_installs_man_page_and_tools(self):
        result = run(["meson", "install", "-C", BUILD_DIR, "--no-rebuild",
                      "--destdir", self.destdir], timeout=300, check=False)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        bindir = self.destdir + self.install_path("bindir")
        mandir = self.destdir + self.install_path("mandir")

        man_page = os.path.join(mandir, "man1", "asanafs.1")
        with open(man_page, "rb") as installed, open(MAN_PAGE, "rb") as source:
            self.assertEqual(installed.read(), source.read())
        for tool in ("asanafs", "asanafs-backup"):
            with self.subTest(tool=tool):
                mode = os.stat(os.path.join(bindir, tool)).st_mode
                self.assertTrue(stat.S_ISREG(mode))
                self.assertEqual(mode & 0o755, 0o755)
        with open(os.path.join(bindir, "asanafs-backup"), "rb") as installed, \
                open(BACKUP, "rb") as source:
            self.assertEqual(installed.read(), source.read())


class SystemdUnitTest(unittest.TestCase):
    """systemd-analyze verify of the units in contrib/, as they are.

    verify checks that each command exists, so the build's asanafs and
    asanafs-backup are bound over /usr/local/bin, where the units expect
    them, inside a private mount namespace (unshare -m) that exists only for
    this test. --user verify needs XDG_RUNTIME_DIR; no running systemd is
    needed."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="asanafs-units-")

    def tearDown(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def verify(self, *unit_paths):
        bin_dir = os.path.join(self.workdir, "bin")
        man_dir = os.path.join(self.workdir, "man", "man1")
        runtime_dir = os.path.join(self.workdir, "runtime")
        home = os.path.join(self.workdir, "home")
        for folder in (bin_dir, man_dir, runtime_dir, home):
            os.makedirs(folder, mode=0o700)
        shutil.copy(ASANAFS, os.path.join(bin_dir, "asanafs"))
        shutil.copy(BACKUP, os.path.join(bin_dir, "asanafs-backup"))
        # Documentation=man:asanafs(1) is checked with man(1).
        shutil.copy(MAN_PAGE, man_dir)
        env = dict(os.environ, XDG_RUNTIME_DIR=runtime_dir, HOME=home,
                   MANPATH=os.path.dirname(man_dir), SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
        script = ('mount --bind "$0" /usr/local/bin && '
                  'exec systemd-analyze --user verify "$@"')
        return run(["unshare", "-m", "sh", "-c", script, bin_dir] + list(unit_paths),
                   check=False, env=env, timeout=120)

    def test_units_pass_verify(self):
        paths = [os.path.join(CONTRIB, "asanafs.service"),
                 os.path.join(CONTRIB, "asanafs-backup@1331.service"),
                 os.path.join(CONTRIB, "asanafs-backup@1331.timer")]
        result = self.verify(*paths)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")

    def test_verify_catches_bad_unit(self):
        bad = os.path.join(self.workdir, "asanafs.service")
        with open(os.path.join(CONTRIB, "asanafs.service")) as f:
            text = f.read()
        with open(bad, "w") as f:
            f.write(text.replace("/usr/local/bin/asanafs ", "/usr/local/bin/asanafs-missing "))
        result = self.verify(bad)
        self.assertIn("asanafs-missing", result.stderr)

    def test_mount_unit_runs_asanafs_in_foreground(self):
        with open(os.path.join(CONTRIB, "asanafs.service")) as f:
            keys = dict(re.findall(r"^(\w+)=(.*)$", f.read(), re.M))
        self.assertEqual(keys["Type"], "simple")
        self.assertRegex(keys["ExecStart"], r"^/usr/local/bin/asanafs %h/\S+ -f ")
        self.assertIn("token_file=%h/", keys["ExecStart"])
        self.assertRegex(keys["ExecStop"], r"^/usr/bin/fusermount3 -u %h/")
        self.assertEqual(keys["WantedBy"], "default.target")


def has_tool(name):
    return shutil.which(name) is not None


for name in ("man", "meson", "systemd-analyze", "unshare"):
    if not has_tool(name):
        raise SystemExit("test_install needs %s; run tools/setup.sh" % name)


if __name__ == "__main__":
    main()
