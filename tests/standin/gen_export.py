#!/usr/bin/python3
"""Write a deterministic, made-up Asana organization export as a gzip archive.

The decompressed content is JSON lines, one object per line, in the layout of
Asana's export files: a Workspace line, then users, teams, projects, and tasks
each followed by their stories. Every name, e-mail address (at example.com) and
text is invented from word lists with a PRNG seeded by --seed, so the same
seed, size, level and member count give a byte-identical archive on the same
Python and zlib versions.

The decompressed size is exactly --size bytes, because the last line is padded
to fit. One line is much longer than the rest: several MiB once the size is at
least 20 MB, a fifth of the size below that. It tests readers that assume short
lines.

Usage: gen_export.py --size BYTES [--seed N] [--level 6] [--members N] OUT.gz
Prints "size=N sha256=HEX" of the decompressed content.
"""

import argparse
import hashlib
import os
import random
import sys
import time
import unicodedata
import zlib

MIN_SIZE = 4096

# Output buffered before it goes through zlib and to disk, in bytes. Large
# chunks keep the per-call overhead low and the memory use bounded.
CHUNK_BYTES = 1 << 20

# Bytes kept free before the final line, so that the line padded to the exact
# size can always hold its fixed JSON fields.
TAIL_RESERVE = 512

BIG_LINE_THRESHOLD = 20_000_000
BIG_LINE_BYTES = 6 << 20

# Lowest gid of generated objects. Recent Asana gids are 16-digit numbers.
GID_START = 1_204_000_000_000_000

# 2022-01-03T00:00:00Z: the creation time of the first object.
EPOCH_START = 1_641_168_000

COMMON_WORDS = """
the of and to in a is that for it as with was on be by this are or from at
an not have has but they which you one all were we there can been more if
will when who so some what their would about into them out up other then
its time only could new these two may first any like now my such make over
our even most after also made many before must well back through years much
where your way down should because long each just state people those too how
little good very make world still own see men work last here thought might
great old year off come since against go came right used take three plan
review budget launch roadmap design draft meeting customer feedback release
sprint milestone deadline owner status update report schedule estimate scope
risk blocker priority backlog ticket feature bug fix test deploy staging
production metric goal quarter revenue campaign asset copy brief vendor
contract invoice legal approval sign-off handoff onboarding training hiring
candidate interview offer policy process workflow template checklist agenda
notes summary decision action follow-up sync retro kickoff demo prototype
research survey interview persona journey wireframe mockup spec requirement
dependency integration api endpoint migration database backup monitoring
alert incident postmortem outage latency throughput capacity forecast
inventory shipment warehouse supplier order refund support escalation
partner webinar newsletter social press announcement event venue catering
travel expense reimbursement audit compliance security access permission
laptop office desk move renovation facilities lease team all-hands offsite
please check confirm share send attach upload review approve assign schedule
ready blocked done pending waiting urgent later tomorrow today friday monday
café naïve résumé Zoë façade Ångström coöperate crème brûlée jalapeño
""".split()

FIRST_NAMES = """
Ada Alden Amara Anouk Arlo Asha Aurelio Bastian Beatrix Bodhi Calla Cassius
Dario Delphine Desmond Elodie Emrys Esme Faris Fenna Florin Galen Greta Hamid
Idris Ilse Imogen Ines Ivo Jana Jovan Kaia Kenji Leander Lior Lucan Maelle
Mika Mirela Nadia Nico Noor Odile Oren Paz Petra Quill Rafe Renata Rhea Rowan
Sabine Selim Soren Talia Tamsin Teodor Una Valo Vesna Wren Xanthe Yara Yusuf
Zadie Zeno Zoë Renée José Søren Ławrence
""".split()

LAST_NAMES = """
Abernethy Achterberg Aldana Arkwright Bellweather Blackwood Brightwater
Castellane Corrigan Dalgleish Drummond Eastwick Elsworth Falconer Fairweather
Gallowglass Greythorne Hallorann Hawksley Ironside Jessamine Kettleburn
Kowalczyk Lachance Lindqvist Marchetti Merriweather Northcott Oakenshield
Okonkwo Pemberton Quenneville Ravensworth Rosenquist Saltmarsh Silverton
Thistlewood Underhill Vanterpool Wainwright Whitlock Yellowhammer Zabriskie
O'Rourke D'Amato Ibáñez Müller Øberg Nakamura-Hill
""".split()

SYLLABLES = """
ka lo mi ra ten vor sil ben dra qui zen pol mar tis lun ger fa no ve tri
sto bel cor dan fin ho jax ple rum sha tor ul wex yan zo bra cle dro gro
""".split()

# Letters that NFKD does not split into an ASCII letter and an accent.
NON_DECOMPOSING_LETTERS = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o"})

PROJECT_SUFFIXES = [
    "Launch", "Roadmap", "Sprint", "Migration", "Campaign", "Onboarding",
    "Planning", "Research", "Redesign", "Rollout", "Audit", "Backlog",
]
TEAM_SUFFIXES = ["Team", "Squad", "Guild", "Group", "Crew", "Department"]
COLORS = [
    "dark-pink", "dark-green", "dark-blue", "dark-red", "dark-teal",
    "dark-brown", "dark-orange", "dark-purple", "dark-warm-gray",
    "light-pink", "light-green", "light-blue", "light-red", "light-teal",
    "light-brown", "light-orange", "light-purple", "light-warm-gray", "none",
]
ASSIGNEE_STATUSES = ["inbox", "later", "today", "upcoming"]
SYSTEM_STORY_TEXTS = [
    "added to %s", "changed the due date to %s", "marked this task complete",
    "assigned to %s", "moved this task from Backlog to %s",
    "removed the due date", "marked incomplete", "changed the name to %s",
]


def build_word_list():
    """Return common words plus invented ones, the same for every seed."""
    rng = random.Random(0x5EED)
    invented = set()
    while len(invented) < 1500:
        count = rng.randint(2, 4)
        invented.add("".join(rng.choice(SYLLABLES) for _ in range(count)))
    return COMMON_WORDS + sorted(invented)


def ascii_local_part(text):
    """Return text as a lower-case ASCII e-mail local part, dropping accents."""
    text = unicodedata.normalize("NFKD", text.translate(NON_DECOMPOSING_LETTERS))
    return "".join(c for c in text.lower() if c.isascii() and (c.isalnum() or c == "."))


def zipf_cumulative_weights(count):
    """Return cumulative weights proportional to 1/rank, like word frequencies."""
    total = 0.0
    weights = []
    for rank in range(1, count + 1):
        total += 1.0 / rank
        weights.append(total)
    return weights


class ExportGenerator:
    """Generate export lines as UTF-8 bytes from one seeded PRNG."""

    def __init__(self, size, seed):
        self.size = size
        self.rng = random.Random(seed)
        self.words = build_word_list()
        self.word_weights = zipf_cumulative_weights(len(self.words))
        self.ascii_words = [w for w in self.words if w.isascii() and "'" not in w]
        self.next_gid = GID_START + self.rng.randrange(10**12)
        self.clock = float(EPOCH_START)
        self.sentences = self._build_sentences(8192)
        self.sentence_weights = zipf_cumulative_weights(len(self.sentences))
        self.org_gid = self._new_gid()
        self.user_gids = []
        self.user_names = []
        self.team_gids = []
        self.project_gids = []
        self.project_names = []
        self.task_gids = []

    def _new_gid(self):
        self.next_gid += self.rng.randint(1, 4096)
        return self.next_gid

    def _timestamp(self):
        """Advance the clock by a random step and return it in ISO 8601."""
        self.clock += self.rng.random() * 90.0
        seconds = int(self.clock)
        millis = int((self.clock - seconds) * 1000)
        t = time.gmtime(seconds)
        return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
            t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, millis)

    def _later_timestamp(self, days):
        seconds = int(self.clock + self.rng.random() * days * 86400)
        t = time.gmtime(seconds)
        return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
            t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
            self.rng.randrange(1000))

    def _date(self, days_ahead):
        t = time.gmtime(int(self.clock) + self.rng.randrange(days_ahead) * 86400)
        return "%04d-%02d-%02d" % (t.tm_year, t.tm_mon, t.tm_mday)

    def _build_sentences(self, count):
        """Return a pool of sentences that notes and comments are made from.

        Whole sentences repeat across the file, as pasted text does in real
        exports. The pool is far larger than deflate's 32 KiB window, so gzip
        finds few long matches: archives from 1 MB to 1 GiB compressed about
        6x at level 6 when measured.
        """
        rng = self.rng
        sentences = []
        for _ in range(count):
            words = rng.choices(self.words, cum_weights=self.word_weights,
                                k=rng.randint(4, 18))
            words[0] = words[0].capitalize()
            if rng.random() < 0.05:
                words[-1] = '\\"%s\\"' % words[-1]
            end = "?" if rng.random() < 0.1 else "."
            sentences.append(" ".join(words) + end)
        return sentences

    def _text(self, sentence_count):
        """Return JSON-escaped prose with paragraph breaks."""
        chosen = self.rng.choices(self.sentences, cum_weights=self.sentence_weights,
                                  k=sentence_count)
        parts = []
        for i, sentence in enumerate(chosen):
            if i and i % 5 == 0:
                parts.append("\\n\\n")
            elif i:
                parts.append(" ")
            parts.append(sentence)
        return "".join(parts)

    def _title(self, count):
        words = self.rng.choices(self.words, cum_weights=self.word_weights, k=count)
        return " ".join(words).capitalize()

    def _sample_users(self, count):
        count = min(count, len(self.user_gids))
        return ",".join(str(g) for g in self.rng.sample(self.user_gids, count))

    def workspace_line(self):
        return ('{"__type":"Workspace","__object_id":%d,"__creation_time":"%s",'
                '"name":"Example Org","is_organization":true,'
                '"email_domains":["example.com"]}\n' % (self.org_gid, self._timestamp()))

    def user_line(self):
        rng = self.rng
        gid = self._new_gid()
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        name = "%s %s" % (first, last)
        local = "%s.%s%d" % (first, last, rng.randrange(1000))
        email = ascii_local_part(local)
        self.user_gids.append(gid)
        self.user_names.append(name)
        return ('{"__type":"User","__object_id":%d,"__creation_time":"%s","name":"%s",'
                '"email":"%s@example.com","photo":null,"workspaces":[%d],'
                '"deactivated":%s,"time_zone":"Etc/UTC"}\n' % (
                    gid, self._timestamp(), name, email, self.org_gid,
                    "true" if rng.random() < 0.05 else "false"))

    def team_line(self):
        rng = self.rng
        gid = self._new_gid()
        self.team_gids.append(gid)
        name = "%s %s" % (self._title(rng.randint(1, 2)), rng.choice(TEAM_SUFFIXES))
        return ('{"__type":"Team","__object_id":%d,"__creation_time":"%s","name":"%s",'
                '"description":"%s","organization":%d,"members":[%s]}\n' % (
                    gid, self._timestamp(), name, self._text(rng.randint(1, 3)),
                    self.org_gid, self._sample_users(rng.randint(2, 40))))

    def project_line(self):
        rng = self.rng
        gid = self._new_gid()
        name = "%s %s" % (self._title(rng.randint(1, 3)), rng.choice(PROJECT_SUFFIXES))
        self.project_gids.append(gid)
        self.project_names.append(name)
        notes = self._text(rng.randint(1, 12))
        return ('{"__type":"Project","__object_id":%d,"__creation_time":"%s","name":"%s",'
                '"notes":"%s","html_notes":"<body>%s</body>","owner":%d,"team":%d,'
                '"workspace":%d,"archived":%s,"public":%s,"color":"%s","due_date":%s,'
                '"members":[%s],"followers":[%s]}\n' % (
                    gid, self._timestamp(), name, notes, notes,
                    rng.choice(self.user_gids), rng.choice(self.team_gids), self.org_gid,
                    "true" if rng.random() < 0.2 else "false",
                    "true" if rng.random() < 0.7 else "false",
                    rng.choice(COLORS),
                    '"%s"' % self._date(365) if rng.random() < 0.5 else "null",
                    self._sample_users(rng.randint(1, 25)),
                    self._sample_users(rng.randint(0, 8))))

    def task_line(self, notes=None, follower_count=None):
        rng = self.rng
        gid = self._new_gid()
        created = self._timestamp()
        if notes is None:
            sentence_count = rng.choice((0, 0, 1, 2, 3, 5, 8, 13))
            notes = self._text(sentence_count) if sentence_count else ""
        if follower_count is None:
            follower_count = rng.randint(1, 6)
        completed = rng.random() < 0.6

        # Subtasks pick their parent among recent tasks only, so the list of
        # task gids is trimmed to keep memory bounded.
        parent = "null"
        if self.task_gids and rng.random() < 0.15:
            parent = str(rng.choice(self.task_gids[-200:]))
        self.task_gids.append(gid)
        if len(self.task_gids) > 4096:
            del self.task_gids[:2048]

        return ('{"__type":"Task","__object_id":%d,"__creation_time":"%s",'
                '"__modification_time":"%s","name":"%s","notes":"%s",'
                '"html_notes":"<body>%s</body>","assignee":%s,"assignee_status":"%s",'
                '"completed":%s,"completed_at":%s,"due_on":%s,"projects":[%d],'
                '"followers":[%s],"hearts":[%s],"parent":%s,"tags":[],"workspace":%d}\n' % (
                    gid, created, self._later_timestamp(30), self._title(rng.randint(2, 8)),
                    notes, notes,
                    rng.choice(self.user_gids) if rng.random() < 0.8 else "null",
                    rng.choice(ASSIGNEE_STATUSES),
                    "true" if completed else "false",
                    '"%s"' % self._later_timestamp(60) if completed else "null",
                    '"%s"' % self._date(120) if rng.random() < 0.4 else "null",
                    rng.choice(self.project_gids),
                    self._sample_users(follower_count),
                    self._sample_users(rng.choice((0, 0, 0, 1, 2))),
                    parent, self.org_gid))

    def story_line(self, target_gid):
        rng = self.rng
        gid = self._new_gid()
        if rng.random() < 0.5:
            text = self._text(rng.randint(1, 6))
            return ('{"__type":"Story","__object_id":%d,"__creation_time":"%s",'
                    '"created_by":%d,"target":%d,"type":"comment","text":"%s",'
                    '"html_text":"<body>%s</body>","source":"web"}\n' % (
                        gid, self._timestamp(), rng.choice(self.user_gids), target_gid,
                        text, text))
        template = rng.choice(SYSTEM_STORY_TEXTS)
        if "%s" in template:
            argument = rng.choice((rng.choice(self.user_names),
                                   rng.choice(self.project_names), self._date(90)))
            text = template % argument
        else:
            text = template
        return ('{"__type":"Story","__object_id":%d,"__creation_time":"%s",'
                '"created_by":%d,"target":%d,"type":"system","text":"%s",'
                '"source":"api"}\n' % (
                    gid, self._timestamp(), rng.choice(self.user_gids), target_gid, text))

    def big_line(self, target_bytes):
        """Return a task line of about target_bytes with huge notes and followers."""
        # The notes appear twice, as notes and html_notes.
        notes_bytes = target_bytes // 2
        parts = []
        length = 0
        while length < notes_bytes:
            parts.append(self._text(200))
            length += len(parts[-1]) + 4
        notes = "\\n\\n".join(parts)
        return self.task_line(notes=notes, follower_count=len(self.user_gids))

    def final_line(self, length):
        """Return a comment story of exactly length bytes, ASCII only."""
        head = ('{"__type":"Story","__object_id":%d,"__creation_time":"%s",'
                '"created_by":%d,"target":%d,"type":"comment","text":"' % (
                    self._new_gid(), self._timestamp(), self.rng.choice(self.user_gids),
                    self.task_gids[-1] if self.task_gids else self.org_gid))
        tail = '","source":"web"}\n'
        text_length = length - len(head) - len(tail)
        if text_length < 0:
            raise ValueError("final line of %d bytes cannot hold its fields" % length)
        pieces = []
        filled = 0
        while filled < text_length:
            word = self.rng.choice(self.ascii_words)
            pieces.append(word)
            filled += len(word) + 1
        text = " ".join(pieces)[:text_length].rstrip()
        text += "." * (text_length - len(text))
        return head + text + tail

    def lines(self):
        """Yield UTF-8 encoded lines whose lengths add up to exactly self.size."""
        size = self.size
        rng = self.rng
        written = 0
        limit = size - TAIL_RESERVE
        big_target = BIG_LINE_BYTES if size >= BIG_LINE_THRESHOLD else size // 5
        big_done = False

        def emit(text):
            nonlocal written
            data = text.encode("utf-8")
            written += len(data)
            return data

        yield emit(self.workspace_line())
        for _ in range(max(3, min(size // 20_000, 50_000))):
            yield emit(self.user_line())
        for _ in range(max(1, len(self.user_gids) // 20)):
            yield emit(self.team_line())
        for _ in range(max(1, min(size // 100_000, 20_000))):
            yield emit(self.project_line())

        while True:
            if not big_done and written >= size * 2 // 5:
                data = self.big_line(big_target).encode("utf-8")
                big_done = True
                if written + len(data) <= limit:
                    written += len(data)
                    yield data
            data = self.task_line().encode("utf-8")
            if written + len(data) > limit:
                break
            written += len(data)
            yield data
            task_gid = self.task_gids[-1]
            for _ in range(rng.choice((0, 1, 1, 2, 3, 5))):
                data = self.story_line(task_gid).encode("utf-8")
                if written + len(data) > limit:
                    break
                written += len(data)
                yield data
            if written + len(data) > limit:
                break

        yield emit(self.final_line(size - written))
        if written != size:
            raise AssertionError("generated %d bytes instead of %d" % (written, size))


class MemberWriter:
    """Compress a byte stream into one or more concatenated gzip members.

    Member boundaries fall at fixed offsets of the decompressed stream, which
    may be in the middle of a line, as in archives made by bgzip or by
    concatenating gzip files.
    """

    def __init__(self, out, size, members, level):
        self.out = out
        self.level = level
        self.boundaries = [size * k // members for k in range(1, members)]
        self.offset = 0
        self.digest = hashlib.sha256()
        self.compressor = self._new_compressor()

    def _new_compressor(self):
        # wbits=31 makes zlib write a gzip header and trailer. zlib sets
        # the header's mtime to 0, so the output does not depend on the clock.
        return zlib.compressobj(self.level, zlib.DEFLATED, 31)

    def write(self, data):
        self.digest.update(data)
        view = memoryview(data)
        while self.boundaries and self.offset + len(view) > self.boundaries[0]:
            cut = self.boundaries.pop(0) - self.offset
            self.out.write(self.compressor.compress(view[:cut]))
            self.out.write(self.compressor.flush())
            self.compressor = self._new_compressor()
            self.offset += cut
            view = view[cut:]
        self.out.write(self.compressor.compress(view))
        self.offset += len(view)

    def close(self):
        self.out.write(self.compressor.flush())


def generate(out_path, size, seed=1, level=6, members=1):
    """Write the archive to out_path and return (decompressed size, sha256 hex).

    The archive is written to a temporary file next to out_path and renamed
    into place, so readers never see a partial archive.
    """
    if size < MIN_SIZE:
        raise ValueError("size %d is below the minimum of %d bytes" % (size, MIN_SIZE))
    if not 1 <= members <= size:
        raise ValueError("members must be between 1 and the size, got %d" % members)
    if not 0 <= level <= 9:
        raise ValueError("level must be between 0 and 9, got %d" % level)

    generator = ExportGenerator(size, seed)
    temp_path = "%s.tmp%d" % (out_path, os.getpid())
    try:
        with open(temp_path, "wb") as out:
            writer = MemberWriter(out, size, members, level)
            pending = []
            pending_bytes = 0
            for line in generator.lines():
                pending.append(line)
                pending_bytes += len(line)
                if pending_bytes >= CHUNK_BYTES:
                    writer.write(b"".join(pending))
                    pending = []
                    pending_bytes = 0
            if pending:
                writer.write(b"".join(pending))
            writer.close()
        os.replace(temp_path, out_path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    return writer.offset, writer.digest.hexdigest()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Write a deterministic, made-up Asana organization export "
                    "(gzip-compressed JSON lines).")
    parser.add_argument("--size", type=int, required=True,
                        help="decompressed size in bytes (exact), at least %d" % MIN_SIZE)
    parser.add_argument("--seed", type=int, default=1,
                        help="PRNG seed; the same seed and size give the same archive "
                             "(default 1)")
    parser.add_argument("--level", type=int, default=6,
                        help="gzip compression level 0-9 (default 6)")
    parser.add_argument("--members", type=int, default=1,
                        help="number of concatenated gzip members (default 1)")
    parser.add_argument("out", metavar="OUT.gz", help="archive to write")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        size, sha256 = generate(args.out, args.size, args.seed, args.level, args.members)
    except ValueError as error:
        print("gen_export.py: %s" % error, file=sys.stderr)
        return 2
    print("size=%d sha256=%s" % (size, sha256))
    return 0


if __name__ == "__main__":
    sys.exit(main())
