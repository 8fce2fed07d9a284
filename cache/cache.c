/*
 * cache: the implementation of cache.h.
 *
 * Locking: one mutex, cache->lock, guards the entry list and the state of
 * every entry. Each entry has a condition variable that is broadcast when its
 * state changes, and readers, probe waiters and lookups wait on it. Slow work
 * (the source's probe and fetch, disk writes, fsync, unlink) runs with no
 * lock held. Instead, an entry's `busy` flag lets one thread at a time change
 * the files in the entry's folder: a prober, a download, an eviction or the
 * removal after cache_drop().
 *
 * Lifetime: an entry stays in cache->entries until cache_drop() has removed
 * its folder and no handle or caller uses it. Then reap_entries() frees it.
 * Paths are built only from gids that gid_is_valid() accepted, relative to
 * the open data folder.
 */
#include "cache.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define GID_MAX_LEN 31
#define ENTRY_PATH_LEN 64           /* fits "GID/NAME" for every valid gid */
#define GZIP_MIN_SIZE 18            /* 10-byte header and 8-byte trailer */
/* Inflated output goes to disk in pieces of this size: large enough that
 * write calls cost little next to inflating, small enough to stay in the
 * processor's cache between inflate() and the copy into the page cache. */
#define INFLATE_BUF_SIZE (256 * 1024)
/*
 * How many times its own size an archive may inflate to past what its gzip
 * trailer states. Only an archive of several members or over 4 GiB goes
 * past the trailer at all. Deflate cannot exceed 1032 to 1 (zlib's
 * technical notes), and exported JSON compresses far less.
 * NOTE: 256 is an estimate with room for repetitive exports, not a ratio
 * measured on real Asana archives.
 */
#define INFLATE_RATIO_MAX 256
/* Archive bytes are collected up to this size (the client's receive
 * buffer) before they are written, inflated and shown to readers, so that
 * libcurl's 16 KiB pieces do not each cost two writes and a wake-up of
 * every waiting reader. A pause in the data hands on what was collected. */
#define STAGE_BUF_SIZE (512 * 1024)
/* The part files are handed to writeback in steps of this size while they
 * are written, so the fsync that completes an entry finds little left to
 * write. Before, it wrote the whole export to disk at the end, while the
 * reader waited for the last byte. */
#define WRITEBACK_STEP (8 * 1024 * 1024)
#define WAIT_SLICE_NS 100000000L    /* how often waiters poll interrupted() */
#define META_MAX_SIZE 256
/* Deflate's largest inflate ratio: an archive of fewer than 2^32 / 1032
 * bytes cannot inflate to 4 GiB, so its trailer's ISIZE is its size. */
#define DEFLATE_MAX_RATIO 1032
#define ISIZE_WRAP ((uint64_t)1 << 32)
/* The sample of an ambiguous archive: its first MiB, of which at most
 * SAMPLE_OUT_MAX inflated bytes are counted, so a probe stays quick. */
#define SAMPLE_SIZE (1024 * 1024)
#define SAMPLE_OUT_MAX (64 * 1024 * 1024)
/* The longer sample when the first MiB cannot decide. */
#define SAMPLE_MORE_SIZE (16 * 1024 * 1024)
#define META_HEADER "asanafs-cache-meta 1\n"
#define RATE_WINDOW_NS 2000000000LL     /* rates are measured over 2 s */
#define RATE_STALE_NS 5000000000LL      /* no byte for 5 s: rate 0 */
#define DOWNLOAD_LOG_INTERVAL_S 10      /* progress lines while downloading */

static const char *const final_names[] = {
  [CACHE_JSON] = "export.json",
  [CACHE_GZ] = "export.json.gz",
};

static const char *const part_names[] = {
  [CACHE_JSON] = "export.json.part",
  [CACHE_GZ] = "export.json.gz.part",
};

/* The open data files of an entry, shared by its readers and its download. */
struct data_files {
  int fd[2];                  /* by cache_kind, set before being shared */
  int refs;                   /* guarded by cache->lock */
};

struct entry {
  char gid[GID_MAX_LEN + 1];  /* fixed at creation */
  pthread_cond_t cond;        /* broadcast when a field below changes */
  struct entry *next;         /* guarded by cache->lock */
  struct entry *evict_next;   /* used only by the thread that set busy */

  /* All fields below are guarded by cache->lock. */
  bool known;                 /* the sizes are set */
  bool complete;              /* final data files and meta are in place */
  bool downloading;           /* a download thread runs */
  bool busy;                  /* one thread is changing the folder's files */
  bool dropped;               /* cache_drop() hid it from lookups */
  bool cleaned;               /* its folder was removed after the drop */
  bool thread_joinable;       /* THREAD was started and not yet joined */
  pthread_t thread;
  uint64_t json_size, gz_size;
  uint64_t json_ready, gz_ready;  /* bytes written to the part files */
  double json_rate, gz_rate;  /* of the running download, bytes/s */
  int64_t progress_ns;        /* CLOCK_MONOTONIC of its last bytes */
  int64_t last_used_ns;       /* LRU stamp, CLOCK_REALTIME */
  unsigned probes_ended;
  int probe_error;            /* of the last probe that ended */
  unsigned downloads_started, downloads_ended;
  unsigned complete_download; /* the download that made the data complete,
                                 0 when the data was found on disk */
  int download_error;         /* of the last download that ended */
  int refs;                   /* handles and callers that may wait on COND */
  int open_count;             /* open handles */
  struct data_files *files;   /* what readers pread, or NULL */
};

struct cache {
  char *dir;                  /* fixed after cache_new() */
  uint64_t max_bytes;         /* fixed */
  int (*interrupted)(void);   /* fixed */
  struct cache_source source; /* fixed */
  int lock_fd;                /* holds the flock that keeps other mounts out */
  int data_fd;                /* DIR/data, base of every *at() call */
  pthread_mutex_t lock;
  struct entry *entries;      /* guarded by lock */
  bool stopping;              /* guarded by lock, set by cache_free() */
};

struct cache_file {
  struct cache *cache;
  struct entry *entry;        /* counted in its refs and open_count */
  unsigned served_download;   /* the download whose unverified bytes this
                                 handle was given, or 0; guarded by
                                 cache->lock */
};

struct meta {
  uint64_t gz_size, json_size;
  bool complete;
};

enum member_state {
  MEMBER_IN_PROGRESS,         /* inside a gzip member, or before the first */
  MEMBER_ENDED,               /* a member ended, and another may follow */
  MEMBER_ZEROS,               /* zero padding, after which nothing may follow */
};

/* The state of one download, owned by its thread. */
struct download {
  struct cache *cache;
  struct entry *entry;
  char gid[GID_MAX_LEN + 1];
  uint64_t gz_size;           /* archive size from the probe */
  uint64_t json_size;         /* ISIZE from the gzip trailer */
  uint64_t json_limit;        /* inflated bytes allowed; see inflate_limit() */
  uint64_t gz_written, json_written;
  struct data_files *files;   /* one reference */
  z_stream z;
  bool z_ready;
  enum member_state state;
  unsigned char *out;         /* INFLATE_BUF_SIZE bytes of inflated output */
  uint64_t writeback[2];      /* bytes of each part file handed to writeback */
  unsigned char *stage;       /* STAGE_BUF_SIZE bytes of archive input */
  size_t staged;              /* bytes in STAGE not yet stored */
  int error;                  /* first failure as a negative errno, or 0 */
  bool stopped;               /* the failure is cache_free() or a drop */
  char reason[192];           /* that failure in words, for the log */
  int64_t started_ns;         /* CLOCK_MONOTONIC when the fetch started */
  int64_t window_ns;          /* start of the current rate window */
  uint64_t window_json, window_gz;  /* bytes written when it started */
  double json_rate, gz_rate;  /* of the last full window, bytes/s */
  int64_t logged_ns;          /* last progress line, or the start */
};

static void *download_main(void *arg);

/* ---- Small helpers ---------------------------------------------------- */

/* Accepts Asana gids: 1 to GID_MAX_LEN decimal digits, so never a path. */
static bool gid_is_valid(const char *gid)
{
  size_t len;

  if (!gid)
    return false;
  for (len = 0; gid[len]; len++) {
    if (len == GID_MAX_LEN || gid[len] < '0' || gid[len] > '9')
      return false;
  }
  return len > 0;
}

static void entry_path(char *buf, const char *gid, const char *name)
{
  snprintf(buf, ENTRY_PATH_LEN, "%.31s/%.20s", gid, name);
}

static int64_t monotonic_ns(void)
{
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

void cache_format_rate(double rate, char *out, size_t out_len)
{
  static const char *const units[] = { "KiB/s", "MiB/s", "GiB/s" };
  int unit = -1;

  while (rate >= 1024 && unit < 2) {
    rate /= 1024;
    unit++;
  }
  if (unit < 0)
    snprintf(out, out_len, "%.0f B/s", rate);
  else
    snprintf(out, out_len, "%.1f %s", rate, units[unit]);
}

static int64_t now_ns(void)
{
  struct timespec now;

  clock_gettime(CLOCK_REALTIME, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static __attribute__((format(printf, 3, 4)))
void set_error(char *err, size_t err_len, const char *fmt, ...)
{
  va_list ap;

  if (!err || !err_len)
    return;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

/* Writes all of BUF at OFF, retrying after EINTR and short writes. */
static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
  const char *pos = buf;

  while (len > 0) {
    ssize_t n = pwrite(fd, pos, len, (off_t)off);

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -EIO;
    pos += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

/* Reads up to LEN bytes at OFF. Returns fewer only at the end of the file. */
static ssize_t read_full(int fd, void *buf, size_t len, uint64_t off)
{
  size_t done = 0;

  while (done < len) {
    ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));

    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

/* Creates or truncates PATH with mode 0600, whatever the umask. */
static int create_file(int dir_fd, const char *path)
{
  int fd = openat(dir_fd, path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  int ret;

  if (fd < 0)
    return -errno;
  if (fchmod(fd, 0600) < 0) {
    ret = -errno;
    close(fd);
    return ret;
  }
  return fd;
}

/* Creates folder PATH with mode 0700, whatever the umask. Returns 1 if it
 * was created, 0 if a folder was there already, or -errno. */
static int make_dir(int dir_fd, const char *path)
{
  struct stat st;

  if (mkdirat(dir_fd, path, 0700) == 0)
    return fchmodat(dir_fd, path, 0700, 0) < 0 ? -errno : 1;
  if (errno != EEXIST)
    return -errno;
  if (fstatat(dir_fd, path, &st, 0) < 0)
    return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* Creates PATH and its missing parents, like mkdir -p, each with mode 0700. */
static int make_dirs(const char *path)
{
  char *copy = strdup(path);
  char *slash;
  int ret = 0;

  if (!copy)
    return -ENOMEM;
  for (slash = strchr(copy + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
    *slash = '\0';
    ret = make_dir(AT_FDCWD, copy);
    *slash = '/';
    if (ret < 0)
      goto out;
  }
  ret = make_dir(AT_FDCWD, copy);
out:
  free(copy);
  return ret < 0 ? ret : 0;
}

static int fsync_dir(int dir_fd, const char *path)
{
  int fd = openat(dir_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int ret = 0;

  if (fd < 0)
    return -errno;
  if (fsync(fd) < 0)
    ret = -errno;
  close(fd);
  return ret;
}

/* ---- Entry folders ----------------------------------------------------- */

/* Removes GID/NAME and returns true if it existed. Failures other than
 * "not found" leave the file behind and are logged. */
static bool remove_file(struct cache *cache, const char *gid, const char *name)
{
  char path[ENTRY_PATH_LEN];

  entry_path(path, gid, name);
  if (unlinkat(cache->data_fd, path, 0) == 0)
    return true;
  if (errno != ENOENT)
    log_warn("cache: failed to remove %s/data/%s: %s", cache->dir, path,
             strerror(errno));
  return false;
}

static bool remove_part_files(struct cache *cache, const char *gid)
{
  bool removed = remove_file(cache, gid, part_names[CACHE_JSON]);

  removed |= remove_file(cache, gid, part_names[CACHE_GZ]);
  return removed;
}

static void remove_final_files(struct cache *cache, const char *gid)
{
  remove_file(cache, gid, final_names[CACHE_JSON]);
  remove_file(cache, gid, final_names[CACHE_GZ]);
}

/* Removes an entry's folder. Meta goes first, so that a crash in between
 * leaves a folder without meta, which the next cache_new() removes. */
static void remove_entry_folder(struct cache *cache, const char *gid)
{
  remove_file(cache, gid, "meta");
  remove_file(cache, gid, "meta.tmp");
  remove_final_files(cache, gid);
  remove_part_files(cache, gid);
  if (unlinkat(cache->data_fd, gid, AT_REMOVEDIR) < 0 && errno != ENOENT)
    log_warn("cache: failed to remove folder %s/data/%s: %s", cache->dir, gid,
             strerror(errno));
}

/* Creates the entry's folder if missing, and makes its name durable. */
static int make_entry_folder(struct cache *cache, const char *gid)
{
  int ret = make_dir(cache->data_fd, gid);

  if (ret == 1)
    ret = fsync_dir(cache->data_fd, ".");
  return ret < 0 ? ret : 0;
}

/* ---- Meta files ---------------------------------------------------------
 * Text, one field a line:
 *   asanafs-cache-meta 1
 *   gz_size 123
 *   json_size 456
 *   complete 0
 * The file's mtime is the entry's LRU stamp. */

/* Replaces GID/meta atomically: meta.tmp is written, fsynced and renamed,
 * and the folder is fsynced. */
static int meta_write(struct cache *cache, const char *gid,
                      const struct meta *meta)
{
  char tmp[ENTRY_PATH_LEN], path[ENTRY_PATH_LEN], text[META_MAX_SIZE];
  int fd = -1;
  int len, ret;

  entry_path(tmp, gid, "meta.tmp");
  entry_path(path, gid, "meta");
  len = snprintf(text, sizeof(text),
                 META_HEADER "gz_size %" PRIu64 "\njson_size %" PRIu64
                 "\ncomplete %d\n", meta->gz_size, meta->json_size,
                 meta->complete ? 1 : 0);
  fd = create_file(cache->data_fd, tmp);
  if (fd < 0) {
    ret = fd;
    goto out;
  }
  ret = write_full(fd, text, (size_t)len, 0);
  if (ret < 0)
    goto out;
  if (fsync(fd) < 0) {
    ret = -errno;
    goto out;
  }
  if (renameat(cache->data_fd, tmp, cache->data_fd, path) < 0) {
    ret = -errno;
    goto out;
  }
  ret = fsync_dir(cache->data_fd, gid);
out:
  if (fd >= 0)
    close(fd);
  if (ret < 0)
    unlinkat(cache->data_fd, tmp, 0);
  return ret;
}

/* Parses the line "KEY DIGITS\n" at *TEXT and moves *TEXT past it. */
static int parse_field(const char **text, const char *key, uint64_t *value)
{
  size_t key_len = strlen(key);
  const char *digits;
  char *end = NULL;
  unsigned long long parsed;

  if (strncmp(*text, key, key_len) != 0 || (*text)[key_len] != ' ')
    return -EINVAL;
  digits = *text + key_len + 1;
  if (*digits < '0' || *digits > '9')
    return -EINVAL;
  errno = 0;
  parsed = strtoull(digits, &end, 10);
  if (errno != 0 || *end != '\n')
    return -EINVAL;
  *value = parsed;
  *text = end + 1;
  return 0;
}

static int meta_parse(const char *text, struct meta *meta)
{
  uint64_t complete = 0;

  if (strncmp(text, META_HEADER, strlen(META_HEADER)) != 0)
    return -EINVAL;
  text += strlen(META_HEADER);
  if (parse_field(&text, "gz_size", &meta->gz_size) < 0 ||
      parse_field(&text, "json_size", &meta->json_size) < 0 ||
      parse_field(&text, "complete", &complete) < 0)
    return -EINVAL;
  if (*text != '\0' || complete > 1 || meta->gz_size < GZIP_MIN_SIZE)
    return -EINVAL;
  meta->complete = complete == 1;
  return 0;
}

/* Reads GID/meta. Returns -ENOENT if it is missing, -EINVAL if damaged. */
static int meta_read(struct cache *cache, const char *gid, struct meta *meta,
                     int64_t *mtime_ns)
{
  char path[ENTRY_PATH_LEN], text[META_MAX_SIZE];
  struct stat st;
  ssize_t len;
  int fd = -1;
  int ret;

  entry_path(path, gid, "meta");
  fd = openat(cache->data_fd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ret = -errno;
    goto out;
  }
  if (fstat(fd, &st) < 0) {
    ret = -errno;
    goto out;
  }
  *mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
  len = read_full(fd, text, sizeof(text) - 1, 0);
  if (len < 0) {
    ret = (int)len;
    goto out;
  }
  if ((size_t)len == sizeof(text) - 1) {
    ret = -EINVAL;
    goto out;
  }
  text[len] = '\0';
  ret = meta_parse(text, meta);
out:
  if (fd >= 0)
    close(fd);
  return ret;
}

/* Checks that both final data files exist with the sizes in META. */
static bool final_files_match(struct cache *cache, const char *gid,
                              const struct meta *meta)
{
  const uint64_t sizes[] = {
    [CACHE_JSON] = meta->json_size,
    [CACHE_GZ] = meta->gz_size,
  };
  char path[ENTRY_PATH_LEN];
  struct stat st;

  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    entry_path(path, gid, final_names[kind]);
    if (fstatat(cache->data_fd, path, &st, AT_SYMLINK_NOFOLLOW) < 0)
      return false;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != sizes[kind])
      return false;
  }
  return true;
}

/* Sets the meta's mtime, the LRU stamp, to now. A failure only loses order. */
static void touch_meta(struct cache *cache, const char *gid)
{
  char path[ENTRY_PATH_LEN];

  entry_path(path, gid, "meta");
  if (utimensat(cache->data_fd, path, NULL, 0) < 0 && errno != ENOENT)
    log_debug("cache: failed to update the use time of export %s: %s", gid,
              strerror(errno));
}

/* ---- Data files and entries -------------------------------------------- */

static struct data_files *files_new(void)
{
  struct data_files *files = calloc(1, sizeof(*files));

  if (!files)
    return NULL;
  files->fd[CACHE_JSON] = -1;
  files->fd[CACHE_GZ] = -1;
  files->refs = 1;
  return files;
}

/* Drops one reference. Returns FILES if that was the last one, for
 * files_close() once the lock is released. Caller holds cache->lock. */
static struct data_files *files_put(struct data_files *files)
{
  if (!files || --files->refs > 0)
    return NULL;
  return files;
}

static void files_close(struct data_files *files)
{
  if (!files)
    return;
  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    if (files->fd[kind] >= 0)
      close(files->fd[kind]);
  }
  free(files);
}

/* Opens both final data files read-only; the result has one reference. */
static int open_final_files(struct cache *cache, const char *gid,
                            struct data_files **out)
{
  struct data_files *files = files_new();
  char path[ENTRY_PATH_LEN];
  int ret = 0;

  if (!files)
    return -ENOMEM;
  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    entry_path(path, gid, final_names[kind]);
    files->fd[kind] = openat(cache->data_fd, path, O_RDONLY | O_CLOEXEC);
    if (files->fd[kind] < 0) {
      ret = -errno;
      goto out;
    }
  }
  *out = files;
  files = NULL;
out:
  files_close(files);
  return ret;
}

static struct entry *entry_new(const char *gid)
{
  struct entry *e = calloc(1, sizeof(*e));
  pthread_condattr_t attr;

  if (!e)
    return NULL;
  snprintf(e->gid, sizeof(e->gid), "%s", gid);
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  if (pthread_cond_init(&e->cond, &attr) != 0) {
    free(e);
    e = NULL;
  }
  pthread_condattr_destroy(&attr);
  return e;
}

static void entry_free(struct entry *e)
{
  files_close(e->files);
  pthread_cond_destroy(&e->cond);
  free(e);
}

/* Finds the entry of GID that lookups see. Caller holds cache->lock. */
static struct entry *find_entry(struct cache *cache, const char *gid)
{
  for (struct entry *e = cache->entries; e; e = e->next) {
    if (!e->dropped && strcmp(e->gid, gid) == 0)
      return e;
  }
  return NULL;
}

/* Finds a dropped entry of GID whose folder is not yet removed. */
static struct entry *find_dropped_entry(struct cache *cache, const char *gid)
{
  for (struct entry *e = cache->entries; e; e = e->next) {
    if (e->dropped && !e->cleaned && strcmp(e->gid, gid) == 0)
      return e;
  }
  return NULL;
}

/* Waits on E's condition variable for at most one slice. Returns -EINTR if
 * the caller's request was interrupted. Caller holds cache->lock, which is
 * released while waiting, so callers check E's state again afterwards. */
static int entry_wait(struct cache *cache, struct entry *e)
{
  struct timespec deadline;
  int interrupted;

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_nsec += WAIT_SLICE_NS;
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&e->cond, &cache->lock, &deadline);
  if (!cache->interrupted)
    return 0;
  pthread_mutex_unlock(&cache->lock);
  interrupted = cache->interrupted();
  pthread_mutex_lock(&cache->lock);
  return interrupted ? -EINTR : 0;
}

/* Finds the entry of GID or adds an unknown one. A dropped entry of the same
 * gid is waited for until its folder is gone, because the new entry will use
 * the same folder. Caller holds cache->lock. */
static int get_entry(struct cache *cache, const char *gid, struct entry **out)
{
  struct entry *e, *old;
  int ret;

  for (;;) {
    e = find_entry(cache, gid);
    if (e)
      break;
    old = find_dropped_entry(cache, gid);
    if (!old)
      break;
    old->refs++;
    ret = entry_wait(cache, old);
    old->refs--;
    if (ret < 0)
      return ret;
  }
  if (!e) {
    e = entry_new(gid);
    if (!e)
      return -ENOMEM;
    e->next = cache->entries;
    cache->entries = e;
  }
  *out = e;
  return 0;
}

/* Clears E's busy flag. If E was dropped meanwhile, first removes its folder,
 * which the busy thread owned until now. Caller holds cache->lock, which is
 * released during the removal. */
static void entry_unbusy(struct cache *cache, struct entry *e)
{
  if (e->dropped && !e->cleaned) {
    pthread_mutex_unlock(&cache->lock);
    remove_entry_folder(cache, e->gid);
    pthread_mutex_lock(&cache->lock);
    e->cleaned = true;
  }
  e->busy = false;
  pthread_cond_broadcast(&e->cond);
}

static bool entry_is_unused(const struct entry *e)
{
  return e->dropped && e->cleaned && e->refs == 0 && !e->busy &&
         !e->downloading;
}

/* Frees dropped entries that no handle or caller uses any more. */
static void reap_entries(struct cache *cache)
{
  struct entry **link, *e, *unused = NULL;

  pthread_mutex_lock(&cache->lock);
  link = &cache->entries;
  while ((e = *link) != NULL) {
    if (entry_is_unused(e)) {
      *link = e->next;
      e->next = unused;
      unused = e;
    } else {
      link = &e->next;
    }
  }
  pthread_mutex_unlock(&cache->lock);

  while (unused) {
    e = unused;
    unused = e->next;
    if (e->thread_joinable)
      pthread_join(e->thread, NULL);
    entry_free(e);
  }
}

/* Opens the final data files of complete entry E for its readers. If they
 * cannot be opened, marks E incomplete so that a read downloads it again.
 * Caller holds cache->lock, which is released while the files are opened. */
static void entry_load_files(struct cache *cache, struct entry *e)
{
  struct data_files *files = NULL;
  int ret;

  pthread_mutex_unlock(&cache->lock);
  ret = open_final_files(cache, e->gid, &files);
  pthread_mutex_lock(&cache->lock);

  if (ret == 0 && e->complete && !e->files && e->open_count > 0) {
    e->files = files;
    files = NULL;
  } else if (ret < 0 && e->complete && !e->files && !e->busy) {
    log_warn("cache: data of export %s cannot be opened (%s), so the next "
             "read downloads it again", e->gid, strerror(-ret));
    e->complete = false;
  }
  if (files) {
    pthread_mutex_unlock(&cache->lock);
    files_close(files);
    pthread_mutex_lock(&cache->lock);
  }
}

/* ---- Loading at start -------------------------------------------------- */

/* Loads the entry in folder GID: partial files are removed, and an entry
 * whose meta is missing or damaged is removed entirely. */
static int load_entry(struct cache *cache, const char *gid)
{
  struct meta meta = { 0 };
  struct entry *e;
  int64_t mtime_ns = 0;
  int ret;

  if (remove_part_files(cache, gid))
    log_info("cache: removed the partial download of export %s", gid);
  remove_file(cache, gid, "meta.tmp");
  ret = meta_read(cache, gid, &meta, &mtime_ns);
  if (ret < 0) {
    log_warn("cache: removing export %s from the cache because its meta is "
             "missing or damaged (%s)", gid, strerror(-ret));
    remove_entry_folder(cache, gid);
    return 0;
  }
  if (meta.complete && !final_files_match(cache, gid, &meta)) {
    log_warn("cache: data files of export %s are missing or have the wrong "
             "size, so the next read downloads them again", gid);
    meta.complete = false;
    ret = meta_write(cache, gid, &meta);
    if (ret < 0)
      log_warn("cache: failed to save the meta of export %s: %s", gid,
               strerror(-ret));
  }
  if (!meta.complete)
    remove_final_files(cache, gid);

  e = entry_new(gid);
  if (!e)
    return -ENOMEM;
  e->known = true;
  e->complete = meta.complete;
  e->gz_size = meta.gz_size;
  e->json_size = meta.json_size;
  e->last_used_ns = mtime_ns;
  e->next = cache->entries;
  cache->entries = e;
  return 0;
}

static void evict_for_download(struct cache *cache, struct entry *target);

static int load_entries(struct cache *cache, char *err, size_t err_len)
{
  DIR *dir = NULL;
  struct dirent *dirent;
  int fd, ret = 0;

  fd = openat(cache->data_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0)
    dir = fdopendir(fd);
  if (!dir) {
    ret = -errno;
    if (fd >= 0)
      close(fd);
    set_error(err, err_len, "failed to read cache folder %s/data: %s",
              cache->dir, strerror(-ret));
    goto out;
  }
  while ((dirent = readdir(dir)) != NULL) {
    if (!gid_is_valid(dirent->d_name))
      continue;
    ret = load_entry(cache, dirent->d_name);
    if (ret < 0) {
      set_error(err, err_len, "failed to load cache entry %s/data/%s: %s",
                cache->dir, dirent->d_name, strerror(-ret));
      goto out;
    }
  }
out:
  if (dir)
    closedir(dir);
  return ret;
}

/* Takes the flock on DIR/lock, so that two mounts never share the folder. */
static int lock_folder(struct cache *cache, int dir_fd, char *err,
                       size_t err_len)
{
  cache->lock_fd = openat(dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (cache->lock_fd >= 0 && fchmod(cache->lock_fd, 0600) < 0) {
    close(cache->lock_fd);
    cache->lock_fd = -1;
  }
  if (cache->lock_fd < 0) {
    set_error(err, err_len, "cache folder %s is not writable: %s", cache->dir,
              strerror(errno));
    return -errno;
  }
  if (flock(cache->lock_fd, LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK)
      set_error(err, err_len, "cache folder %s is in use by another asanafs "
                "mount", cache->dir);
    else
      set_error(err, err_len, "failed to lock cache folder %s: %s",
                cache->dir, strerror(errno));
    return errno == EWOULDBLOCK ? -EBUSY : -errno;
  }
  return 0;
}

/* Creates a file in DIR/data and removes it again, which proves that new
 * files can be created there (access() would miss a read-only mount). */
static int check_writable(struct cache *cache, char *err, size_t err_len)
{
  int fd = create_file(cache->data_fd, ".write-test");

  if (fd < 0) {
    set_error(err, err_len, "cache folder %s is not writable: %s", cache->dir,
              strerror(-fd));
    return fd;
  }
  close(fd);
  unlinkat(cache->data_fd, ".write-test", 0);
  return 0;
}

/* Rejects a cache folder that belongs to another user: its exports would
 * be readable by that user, and files created here would not be theirs. */
static int check_owner(struct cache *cache, int dir_fd, char *err,
                       size_t err_len)
{
  struct stat st;

  if (fstat(dir_fd, &st) < 0) {
    set_error(err, err_len, "failed to open cache folder %s: %s", cache->dir,
              strerror(errno));
    return -errno;
  }
  if (st.st_uid != geteuid()) {
    set_error(err, err_len, "cache folder %s belongs to uid %u, not to uid "
              "%u that runs asanafs", cache->dir, (unsigned)st.st_uid,
              (unsigned)geteuid());
    return -EPERM;
  }
  return 0;
}

/* Creates DIR and DIR/data if missing, locks DIR and opens DIR/data. */
static int open_folders(struct cache *cache, char *err, size_t err_len)
{
  int dir_fd = -1;
  int ret;

  ret = make_dirs(cache->dir);
  if (ret < 0) {
    set_error(err, err_len, "failed to create cache folder %s: %s",
              cache->dir, strerror(-ret));
    goto out;
  }
  dir_fd = open(cache->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) {
    ret = -errno;
    set_error(err, err_len, "failed to open cache folder %s: %s", cache->dir,
              strerror(-ret));
    goto out;
  }
  ret = check_owner(cache, dir_fd, err, err_len);
  if (ret < 0)
    goto out;
  ret = lock_folder(cache, dir_fd, err, err_len);
  if (ret < 0)
    goto out;

  /* data/ contains the exports, so its mode is set even if it existed. */
  ret = make_dir(dir_fd, "data");
  if (ret >= 0 && fchmodat(dir_fd, "data", 0700, 0) < 0)
    ret = -errno;
  if (ret >= 0) {
    cache->data_fd = openat(dir_fd, "data", O_RDONLY | O_DIRECTORY |
                            O_CLOEXEC);
    ret = cache->data_fd < 0 ? -errno : 0;
  }
  if (ret < 0) {
    set_error(err, err_len, "cache folder %s is not writable: %s", cache->dir,
              strerror(-ret));
    goto out;
  }
  ret = check_writable(cache, err, err_len);
out:
  if (dir_fd >= 0)
    close(dir_fd);
  return ret;
}

static void cache_destroy(struct cache *cache)
{
  struct entry *e;

  if (!cache)
    return;
  while ((e = cache->entries) != NULL) {
    cache->entries = e->next;
    entry_free(e);
  }
  if (cache->data_fd >= 0)
    close(cache->data_fd);
  if (cache->lock_fd >= 0)
    close(cache->lock_fd);
  pthread_mutex_destroy(&cache->lock);
  free(cache->dir);
  free(cache);
}

int cache_new(const struct cache_config *config,
              const struct cache_source *source, struct cache **out,
              char *err, size_t err_len)
{
  struct cache *cache = NULL;
  int ret;

  *out = NULL;
  if (!config || !config->dir || !*config->dir || !source ||
      !source->probe || !source->fetch) {
    set_error(err, err_len, "invalid cache configuration: a folder and a "
              "source with probe and fetch are required");
    return -EINVAL;
  }
  cache = calloc(1, sizeof(*cache));
  if (!cache) {
    set_error(err, err_len, "out of memory");
    return -ENOMEM;
  }
  cache->lock_fd = -1;
  cache->data_fd = -1;
  pthread_mutex_init(&cache->lock, NULL);
  cache->max_bytes = config->max_bytes;
  cache->interrupted = config->interrupted;
  cache->source = *source;
  cache->dir = strdup(config->dir);
  if (!cache->dir) {
    set_error(err, err_len, "out of memory");
    ret = -ENOMEM;
    goto out;
  }

  ret = open_folders(cache, err, err_len);
  if (ret < 0)
    goto out;
  ret = load_entries(cache, err, err_len);
  if (ret == 0)
    evict_for_download(cache, NULL);    /* the limit may have shrunk */
out:
  if (ret < 0)
    cache_destroy(cache);
  else
    *out = cache;
  return ret;
}

void cache_free(struct cache *cache)
{
  struct entry *e;
  pthread_t thread;
  bool joinable;

  if (!cache)
    return;
  pthread_mutex_lock(&cache->lock);
  cache->stopping = true;
  for (e = cache->entries; e; e = e->next)
    pthread_cond_broadcast(&e->cond);
  pthread_mutex_unlock(&cache->lock);

  /* Download threads never change the list, so it can be walked unlocked.
   * NOTE: a download notices the stop only when the source next calls the
   * sink or returns, so a stalled fetch delays cache_free() until then. */
  for (e = cache->entries; e; e = e->next) {
    pthread_mutex_lock(&cache->lock);
    joinable = e->thread_joinable;
    thread = e->thread;
    e->thread_joinable = false;
    pthread_mutex_unlock(&cache->lock);
    if (joinable)
      pthread_join(thread, NULL);
  }
  cache_destroy(cache);
}

/* ---- Sizes: meta or probe ---------------------------------------------- */

/* Inflate state of a size sample: the first bytes of an archive, from
 * the probe's head or streamed through source->fetch, whose inflate ratio
 * estimates the ratio of the whole archive. */
struct sample {
  z_stream z;
  bool ready;
  unsigned char *out;         /* INFLATE_BUF_SIZE bytes, discarded */
  uint64_t consumed, produced;
  uint64_t limit;             /* archive bytes to sample */
  bool ended;                 /* a member ended or the data is corrupt */
};

static int sample_start(struct sample *s, uint64_t limit)
{
  memset(s, 0, sizeof(*s));
  s->limit = limit;
  s->out = malloc(INFLATE_BUF_SIZE);
  if (!s->out || inflateInit2(&s->z, 16 + MAX_WBITS) != Z_OK) {
    free(s->out);
    return -ENOMEM;
  }
  s->ready = true;
  return 0;
}

static void sample_end(struct sample *s)
{
  if (s->ready)
    inflateEnd(&s->z);
  free(s->out);
  s->ready = false;
}

/* A cache_sink_fn: inflates and counts until the limit, then stops. At
 * most SAMPLE_OUT_MAX bytes are inflated, so a highly compressible archive
 * does not make a probe slow. */
static int sample_sink(void *ctx, const void *buf, size_t len)
{
  struct sample *s = ctx;
  int zret = Z_OK;

  if (len > s->limit - s->consumed)
    len = (size_t)(s->limit - s->consumed);
  s->z.next_in = (Bytef *)buf;
  s->z.avail_in = (uInt)len;
  while (zret == Z_OK && s->z.avail_in > 0 && s->produced < SAMPLE_OUT_MAX) {
    s->z.next_out = s->out;
    s->z.avail_out = INFLATE_BUF_SIZE;
    zret = inflate(&s->z, Z_NO_FLUSH);
    s->produced += INFLATE_BUF_SIZE - s->z.avail_out;
  }
  s->consumed += len - s->z.avail_in;
  if (zret != Z_OK)
    s->ended = true;
  return s->ended || s->consumed >= s->limit ||
         s->produced >= SAMPLE_OUT_MAX ? 1 : 0;
}

/* Returns the sample's inflate ratio, or 0 when too little inflated to
 * tell: below 64 KiB of input, the start, where deflate has no history
 * yet, dominates. */
static double sample_ratio(const struct sample *s)
{
  if (s->consumed < 64 * 1024 || s->produced == 0)
    return 0;
  return (double)s->produced / (double)s->consumed;
}

/* The candidates ISIZE + k * 2^32 for an archive of GZ_SIZE bytes, at most
 * K_MAX, ranked by how far the ratio each implies is from RATIO, on a log
 * scale. Sets *BEST and returns how much nearer it is than the next best
 * (INFINITY when it is the only one). */
static double rank_candidates(uint64_t isize, uint64_t gz_size,
                              uint64_t k_max, double ratio, uint64_t *best)
{
  double guess = ((double)gz_size * ratio - (double)isize) / (double)ISIZE_WRAP;
  double best_d = INFINITY, second_d = INFINITY, d, size;
  uint64_t first = guess > 1 ? (uint64_t)guess - 1 : 0;

  *best = 0;
  for (uint64_t k = first; k <= k_max && k <= first + 3; k++) {
    size = (double)isize + (double)k * (double)ISIZE_WRAP;
    if (size <= 0)
      continue;
    d = fabs(log(size / (double)gz_size) - log(ratio));
    if (d < best_d) {
      second_d = best_d;
      best_d = d;
      *best = k;
    } else if (d < second_d) {
      second_d = d;
    }
  }
  return second_d - best_d;
}

/* Streams the first SAMPLE_MORE_SIZE bytes of the archive through a new
 * fetch and returns their inflate ratio, or 0 when that failed. */
static double sample_more(struct cache *cache, const char *gid)
{
  struct sample s;
  double ratio;
  int ret;

  if (sample_start(&s, SAMPLE_MORE_SIZE) < 0)
    return 0;
  ret = cache->source.fetch(cache->source.ctx, gid, 0, sample_sink, &s);
  ratio = ret == 0 || ret == -ECANCELED ? sample_ratio(&s) : 0;
  sample_end(&s);
  return ratio;
}

/* Picks the inflated size of an archive of GZ_SIZE bytes whose trailer
 * stores ISIZE (the size modulo 2^32): ISIZE + k * 2^32 for the k whose
 * ratio is nearest the ratio of the archive's first bytes. The start of an
 * export (its users and teams) often compresses better than the rest, so
 * when the first MiB cannot tell two candidates apart by a factor of two,
 * a longer sample decides. */
static uint64_t resolve_isize(struct cache *cache, const char *gid,
                              uint64_t isize, uint64_t gz_size,
                              const unsigned char *head, size_t head_len)
{
  uint64_t k_max, k = 0;
  struct sample s;
  double ratio = 0, margin;

  if (gz_size < ISIZE_WRAP / DEFLATE_MAX_RATIO)
    return isize;
  k_max = (gz_size * DEFLATE_MAX_RATIO - isize) / ISIZE_WRAP;
  if (head_len && sample_start(&s, head_len) == 0) {
    sample_sink(&s, head, head_len);
    ratio = sample_ratio(&s);
    sample_end(&s);
  }
  margin = ratio > 0 ? rank_candidates(isize, gz_size, k_max, ratio, &k) : 0;
  if (margin < log(2)) {
    ratio = sample_more(cache, gid);
    if (ratio > 0)
      rank_candidates(isize, gz_size, k_max, ratio, &k);
  }
  if (ratio <= 0) {
    log_warn("cache: export %s may inflate to 4 GiB or more, and its first "
             "bytes could not tell; its size is the trailer's until its "
             "download ends", gid);
    return isize;
  }
  if (k > 0)
    log_info("cache: export %s inflates about %.1f times, so its size is %"
             PRIu64 " bytes, not its trailer's %" PRIu64, gid, ratio,
             isize + k * ISIZE_WRAP, isize);
  return isize + k * ISIZE_WRAP;
}

/* Asks the source for the archive's size and gzip trailer, and saves the
 * sizes in meta. A failure to save is logged, and the sizes are still used. */
static int probe_source(struct cache *cache, const char *gid,
                        struct meta *meta)
{
  struct cache_probe probe = {
    .head_from = ISIZE_WRAP / DEFLATE_MAX_RATIO,
    .head_cap = SAMPLE_SIZE,
  };
  unsigned char *trailer = probe.trailer;
  uint64_t size, isize;
  int ret;

  probe.head = malloc(SAMPLE_SIZE);
  if (!probe.head)
    return -ENOMEM;
  ret = cache->source.probe(cache->source.ctx, gid, &probe);
  size = probe.archive_size;
  if (ret != 0) {
    free(probe.head);
    ret = ret < 0 ? ret : -EIO;
    log_error("cache: probe of export %s failed: %s", gid, strerror(-ret));
    return ret;
  }
  if (size < GZIP_MIN_SIZE) {
    log_error("cache: export %s is %" PRIu64 " bytes, too small for a gzip "
              "archive", gid, size);
    free(probe.head);
    return -EIO;
  }
  meta->gz_size = size;
  /* NOTE: an archive with zero padding after its last member ends in zeros,
   * so its json size probes as 0 until a download of the archive ends. */
  isize = (uint64_t)trailer[4] | (uint64_t)trailer[5] << 8 |
          (uint64_t)trailer[6] << 16 | (uint64_t)trailer[7] << 24;
  meta->json_size = resolve_isize(cache, gid, isize, size, probe.head,
                                  probe.head_len);
  free(probe.head);
  meta->complete = false;

  ret = make_entry_folder(cache, gid);
  if (ret == 0)
    ret = meta_write(cache, gid, meta);
  if (ret < 0)
    log_warn("cache: failed to save the meta of export %s: %s. Its sizes are "
             "kept in memory only", gid, strerror(-ret));
  return 0;
}

/* Probes the source for E's sizes. Caller holds cache->lock, which is
 * released during the probe, and E is not busy. */
static int entry_probe(struct cache *cache, struct entry *e)
{
  struct meta meta = { 0 };
  int ret;

  e->busy = true;
  pthread_mutex_unlock(&cache->lock);
  ret = probe_source(cache, e->gid, &meta);
  pthread_mutex_lock(&cache->lock);

  if (ret == 0) {
    e->known = true;
    e->gz_size = meta.gz_size;
    e->json_size = meta.json_size;
    e->last_used_ns = now_ns();
  }
  e->probe_error = ret;
  e->probes_ended++;
  entry_unbusy(cache, e);
  return ret;
}

/* Makes E's sizes known, either by waiting for the probe in progress, whose
 * result concurrent callers share, or by running one. Caller holds
 * cache->lock. */
static int entry_make_known(struct cache *cache, struct entry *e)
{
  unsigned probes_seen = e->probes_ended;
  int ret;

  for (;;) {
    if (e->known)
      return 0;
    if (e->dropped)
      return -ENOENT;
    if (e->probes_ended != probes_seen)
      return e->probe_error;
    if (!e->busy)
      return entry_probe(cache, e);
    ret = entry_wait(cache, e);
    if (ret < 0)
      return ret;
  }
}

int cache_stat(struct cache *cache, const char *gid, uint64_t *json_size,
               uint64_t *gz_size)
{
  struct entry *e = NULL;
  int ret;

  if (!gid_is_valid(gid))
    return -ENOENT;
  pthread_mutex_lock(&cache->lock);
  ret = get_entry(cache, gid, &e);
  if (ret < 0)
    goto out;
  e->refs++;
  ret = entry_make_known(cache, e);
  e->refs--;
  if (ret == 0) {
    *json_size = e->json_size;
    *gz_size = e->gz_size;
  }
out:
  pthread_mutex_unlock(&cache->lock);
  reap_entries(cache);
  return ret;
}

/* ---- Eviction ---------------------------------------------------------- */

/* Sums the sizes of complete entries and of downloads in progress, which
 * will take their full size. Caller holds cache->lock. */
static uint64_t charged_bytes(struct cache *cache)
{
  uint64_t total = 0;

  for (struct entry *e = cache->entries; e; e = e->next) {
    if (!e->dropped && (e->complete || e->downloading))
      total += e->json_size + e->gz_size;
  }
  return total;
}

/* Returns the least recently used complete entry without open handles. */
static struct entry *find_victim(struct cache *cache)
{
  struct entry *victim = NULL;

  for (struct entry *e = cache->entries; e; e = e->next) {
    if (e->dropped || !e->complete || e->busy || e->downloading ||
        e->open_count > 0)
      continue;
    if (!victim || e->last_used_ns < victim->last_used_ns)
      victim = e;
  }
  return victim;
}

/* Removes victim E's data files and keeps its meta, marked incomplete first
 * so that a crash in between never leaves complete meta without data. E is
 * busy, so its sizes do not change meanwhile. */
static void evict_entry(struct cache *cache, struct entry *e)
{
  struct meta meta = { e->gz_size, e->json_size, false };
  int ret;

  ret = meta_write(cache, e->gid, &meta);
  if (ret < 0)
    log_warn("cache: failed to save the meta of export %s: %s", e->gid,
             strerror(-ret));
  remove_final_files(cache, e->gid);
  log_info("cache: evicted export %s (%" PRIu64 " bytes) to stay under the "
           "cache limit", e->gid, meta.gz_size + meta.json_size);
}

/* Logs why the cache stays over its limit once nothing more may go. */
static void warn_over_limit(struct cache *cache, struct entry *target,
                            uint64_t charged)
{
  uint64_t target_size = target ? target->json_size + target->gz_size : 0;

  if (target && target_size > cache->max_bytes)
    log_warn("cache: export %s alone takes %" PRIu64 " bytes, more than the "
             "cache limit of %" PRIu64 " bytes; raise cache_size to keep it",
             target->gid, target_size, cache->max_bytes);
  else
    log_warn("cache: %" PRIu64 " bytes stay cached, over the limit of %" PRIu64
             " bytes, because the entries left are open or downloading",
             charged, cache->max_bytes);
}

/* Evicts least recently used entries until TARGET, whose download starts,
 * fits under max_bytes, or until no entry is left that may go. TARGET may
 * be NULL to trim the cache to its limit. */
static void evict_for_download(struct cache *cache, struct entry *target)
{
  struct entry *victims = NULL, *victim;
  uint64_t charged;

  if (cache->max_bytes == 0)
    return;
  pthread_mutex_lock(&cache->lock);
  charged = charged_bytes(cache);
  while (charged > cache->max_bytes) {
    victim = find_victim(cache);
    if (!victim) {
      warn_over_limit(cache, target, charged);
      break;
    }
    victim->complete = false;
    victim->busy = true;
    victim->evict_next = victims;
    victims = victim;
    charged -= victim->json_size + victim->gz_size;
  }
  pthread_mutex_unlock(&cache->lock);

  for (victim = victims; victim; victim = victim->evict_next)
    evict_entry(cache, victim);

  pthread_mutex_lock(&cache->lock);
  for (victim = victims; victim; victim = victim->evict_next)
    entry_unbusy(cache, victim);
  pthread_mutex_unlock(&cache->lock);
}

/* ---- Download thread --------------------------------------------------- */

static __attribute__((format(printf, 3, 4)))
int download_fail(struct download *d, int error, const char *fmt, ...)
{
  va_list ap;

  if (d->error == 0) {
    d->error = error;
    va_start(ap, fmt);
    vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
    va_end(ap);
  }
  return d->error;
}

/* Creates both part files and shares them with E's readers. */
static int open_part_files(struct download *d)
{
  struct cache *cache = d->cache;
  struct data_files *old;
  char path[ENTRY_PATH_LEN];
  int ret;

  ret = make_entry_folder(cache, d->gid);
  if (ret < 0)
    return download_fail(d, ret, "creating its folder failed: %s",
                         strerror(-ret));
  d->files = files_new();
  if (!d->files)
    return download_fail(d, -ENOMEM, "out of memory");
  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    entry_path(path, d->gid, part_names[kind]);
    ret = create_file(cache->data_fd, path);
    if (ret < 0)
      return download_fail(d, ret, "creating %s failed: %s", part_names[kind],
                           strerror(-ret));
    d->files->fd[kind] = ret;
  }
  if (inflateInit2(&d->z, 16 + MAX_WBITS) != Z_OK)
    return download_fail(d, -ENOMEM, "zlib failed to start");
  d->z_ready = true;

  pthread_mutex_lock(&cache->lock);
  old = files_put(d->entry->files);
  d->entry->files = d->files;
  d->files->refs++;
  pthread_mutex_unlock(&cache->lock);
  files_close(old);
  return 0;
}

/*
 * Returns how many bytes an archive of GZ_SIZE bytes whose trailer states
 * JSON_SIZE may inflate to: always JSON_SIZE, and past it at most
 * INFLATE_RATIO_MAX times GZ_SIZE and, with a cache limit, no more than
 * fits in it. So a gzip bomb cannot fill the disk beyond what the cache
 * planned for.
 */
static uint64_t inflate_limit(uint64_t max_bytes, uint64_t gz_size,
                              uint64_t json_size)
{
  uint64_t limit = gz_size > UINT64_MAX / INFLATE_RATIO_MAX
                     ? UINT64_MAX : gz_size * INFLATE_RATIO_MAX;
  uint64_t room;

  if (max_bytes > 0) {
    room = max_bytes > gz_size ? max_bytes - gz_size : 0;
    if (limit > room)
      limit = room;
  }
  return limit > json_size ? limit : json_size;
}

/* Starts writeback of what was written to a part file since the last
 * step. A failure shows up in the fsync of commit_files(). */
static void start_writeback(struct download *d, int kind, uint64_t written)
{
  uint64_t from = d->writeback[kind];

  if (written - from < WRITEBACK_STEP)
    return;
  sync_file_range(d->files->fd[kind], (off_t)from, (off_t)(written - from),
                  SYNC_FILE_RANGE_WRITE);
  d->writeback[kind] = written;
}

static int write_output(struct download *d, size_t len)
{
  int ret;

  if (len == 0)
    return 0;
  if (len > d->json_limit - d->json_written)
    return download_fail(d, -EFBIG, "gzip bomb: the archive inflates to "
                         "more than %" PRIu64 " bytes, though its gzip "
                         "trailer states %" PRIu64 " (the limit is %d times "
                         "the archive's size, or what fits in cache_size)",
                         d->json_limit, d->json_size, INFLATE_RATIO_MAX);
  ret = write_full(d->files->fd[CACHE_JSON], d->out, len, d->json_written);
  if (ret < 0)
    return download_fail(d, ret, "writing %s failed: %s",
                         part_names[CACHE_JSON], strerror(-ret));
  d->json_written += len;
  start_writeback(d, CACHE_JSON, d->json_written);
  return 0;
}

static int fail_inflate(struct download *d, int zret)
{
  if (zret == Z_MEM_ERROR)
    return download_fail(d, -ENOMEM, "zlib ran out of memory");
  return download_fail(d, -EIO, "corrupt archive near byte %" PRIu64 ": %s",
                       d->gz_written, d->z.msg ? d->z.msg : zError(zret));
}

/* Inflates input of the current gzip member through the fixed output buffer
 * into the json part file, until the input is used up or the member ends.
 * Moves *IN and *LEN past the input consumed.
 * TODO: this thread limits a cold read. Besides inflating, it computes the
 * CRC-32 (about 10% of its time in perf) and copies the output into the
 * page cache (about 9%). With a spare core, a second thread could take
 * both, with inflateValidate(z, 0) and the trailers checked there. */
static int inflate_member(struct download *d, const unsigned char **in,
                          size_t *len)
{
  z_stream *z = &d->z;
  uInt avail = *len > UINT_MAX ? UINT_MAX : (uInt)*len;
  int zret, ret = 0;

  z->next_in = (Bytef *)*in;
  z->avail_in = avail;
  do {
    z->next_out = d->out;
    z->avail_out = INFLATE_BUF_SIZE;
    zret = inflate(z, Z_NO_FLUSH);
    if (zret != Z_OK && zret != Z_STREAM_END && zret != Z_BUF_ERROR) {
      ret = fail_inflate(d, zret);
      break;
    }
    ret = write_output(d, INFLATE_BUF_SIZE - z->avail_out);
    if (ret < 0)
      break;
    if (zret == Z_STREAM_END) {
      d->state = MEMBER_ENDED;
      break;
    }
    /* Z_BUF_ERROR means no progress was possible, which happens only when
     * the input is used up; anything else would loop forever. */
    if (zret == Z_BUF_ERROR) {
      if (z->avail_in > 0)
        ret = fail_inflate(d, Z_DATA_ERROR);
      break;
    }
  } while (z->avail_in > 0 || z->avail_out == 0);

  *in += avail - z->avail_in;
  *len -= avail - z->avail_in;
  return ret;
}

/* Handles the bytes after a gzip member: zero padding is skipped, the magic
 * byte 0x1f starts another member (inflate checks the rest of the header),
 * and anything else is corruption. */
static int start_next_member(struct download *d, const unsigned char **in,
                             size_t *len)
{
  while (*len > 0 && **in == 0) {
    (*in)++;
    (*len)--;
    d->state = MEMBER_ZEROS;
  }
  if (*len == 0)
    return 0;
  if (d->state == MEMBER_ZEROS || **in != 0x1f)
    return download_fail(d, -EIO, "corrupt archive: unexpected data after a "
                         "gzip member at byte %" PRIu64, d->gz_written - *len);
  if (inflateReset(&d->z) != Z_OK)
    return download_fail(d, -EIO, "zlib failed to reset");
  d->state = MEMBER_IN_PROGRESS;
  return 0;
}

static int inflate_input(struct download *d, const unsigned char *in,
                         size_t len)
{
  int ret = 0;

  while (len > 0 && ret == 0) {
    if (d->state == MEMBER_IN_PROGRESS)
      ret = inflate_member(d, &in, &len);
    else
      ret = start_next_member(d, &in, &len);
  }
  return ret;
}

static uint64_t hold_back_last_byte(uint64_t written, uint64_t size)
{
  uint64_t limit = size > 0 ? size - 1 : 0;

  return written < limit ? written : limit;
}

/* Measures the rates over windows of RATE_WINDOW_NS. Until the first
 * window is full, they are the average since the start. */
static void measure_rates(struct download *d, int64_t now)
{
  int64_t window = now - d->window_ns;

  if (window >= RATE_WINDOW_NS || d->window_ns == d->started_ns) {
    if (window <= 0)
      return;
    d->json_rate = (double)(d->json_written - d->window_json) * 1e9 /
                   (double)window;
    d->gz_rate = (double)(d->gz_written - d->window_gz) * 1e9 /
                 (double)window;
  }
  if (window >= RATE_WINDOW_NS) {
    d->window_ns = now;
    d->window_json = d->json_written;
    d->window_gz = d->gz_written;
  }
}

static int percent(uint64_t part, uint64_t whole)
{
  if (whole == 0 || part >= whole)
    return 100;
  return (int)(part * 100 / whole);
}

/* Logs a progress line every DOWNLOAD_LOG_INTERVAL_S seconds. */
static void log_progress(struct download *d, int64_t now)
{
  char rate[32];

  if (now - d->logged_ns < DOWNLOAD_LOG_INTERVAL_S * 1000000000LL)
    return;
  d->logged_ns = now;
  cache_format_rate(d->gz_rate, rate, sizeof(rate));
  log_info("cache: downloading export %s: %" PRIu64 " of %" PRIu64 " bytes "
           "(%d%%), %s", d->gid, d->gz_written, d->gz_size,
           percent(d->gz_written, d->gz_size), rate);
}

/* Shows readers the bytes now on disk. Returns -ECANCELED when cache_free()
 * is stopping and -ENOENT when the entry was dropped, so the fetch stops. */
static int publish_progress(struct download *d)
{
  struct cache *cache = d->cache;
  struct entry *e = d->entry;
  int64_t now = monotonic_ns();
  int stop = 0;

  measure_rates(d, now);
  log_progress(d, now);
  pthread_mutex_lock(&cache->lock);
  e->json_rate = d->json_rate;
  e->gz_rate = d->gz_rate;
  e->progress_ns = now;
  /* The last byte of each file is shown only once the whole archive was
   * verified (gzip CRC and length, archive size). So a reader that reads to
   * the end of a corrupt or truncated archive gets EIO, never a clean end. */
  e->gz_ready = hold_back_last_byte(d->gz_written, e->gz_size);
  e->json_ready = hold_back_last_byte(d->json_written, e->json_size);
  if (cache->stopping)
    stop = -ECANCELED;
  else if (e->dropped)
    stop = -ENOENT;
  pthread_cond_broadcast(&e->cond);
  pthread_mutex_unlock(&cache->lock);

  if (stop < 0)
    d->stopped = true;
  if (stop == -ECANCELED)
    return download_fail(d, stop, "the cache is closing");
  if (stop < 0)
    return download_fail(d, stop, "the export was dropped from the cache");
  return 0;
}

/* Stores, inflates and publishes the staged archive bytes. */
static int flush_stage(struct download *d)
{
  size_t len = d->staged;
  int ret;

  if (d->error < 0)
    return d->error;
  if (len == 0)
    return 0;
  d->staged = 0;
  if (len > d->gz_size - d->gz_written)
    return download_fail(d, -EIO, "the archive is longer than the %" PRIu64
                         " bytes its probe reported", d->gz_size);
  ret = write_full(d->files->fd[CACHE_GZ], d->stage, len, d->gz_written);
  if (ret < 0)
    return download_fail(d, ret, "writing %s failed: %s",
                         part_names[CACHE_GZ], strerror(-ret));
  d->gz_written += len;
  start_writeback(d, CACHE_GZ, d->gz_written);
  ret = inflate_input(d, d->stage, len);
  if (ret < 0)
    return ret;
  return publish_progress(d);
}

/* The cache_sink_fn of downloads: collects a chunk, and works on what was
 * collected once the stage is full or the data pauses. */
static int download_sink(void *sink_ctx, const void *buf, size_t len)
{
  struct download *d = sink_ctx;
  const unsigned char *in = buf;
  size_t n;

  if (d->error < 0)
    return 1;
  if (len == 0)
    return flush_stage(d) < 0 ? 1 : 0;
  while (len > 0) {
    n = STAGE_BUF_SIZE - d->staged;
    n = n < len ? n : len;
    memcpy(d->stage + d->staged, in, n);
    d->staged += n;
    in += n;
    len -= n;
    if (d->staged == STAGE_BUF_SIZE && flush_stage(d) < 0)
      return 1;
  }
  return 0;
}

/* Checks that the whole archive arrived and ended where gzip ends. */
static int check_archive_end(struct download *d)
{
  if (d->state == MEMBER_IN_PROGRESS)
    return download_fail(d, -EIO, "truncated archive: the gzip stream is cut "
                         "off after %" PRIu64 " of %" PRIu64 " bytes",
                         d->gz_written, d->gz_size);
  if (d->gz_written != d->gz_size)
    return download_fail(d, -EIO, "truncated archive: received %" PRIu64
                         " of %" PRIu64 " bytes", d->gz_written, d->gz_size);
  if (d->json_written != d->json_size)
    log_warn("cache: export %s inflates to %" PRIu64 " bytes, not the %"
             PRIu64 " bytes its gzip trailer states (several gzip members or "
             "over 4 GiB); its size is now the real one", d->gid,
             d->json_written, d->json_size);
  return 0;
}

/* Makes the download durable: fsyncs both part files, renames them to their
 * final names and only then writes meta with complete=1. */
static int commit_files(struct download *d)
{
  struct cache *cache = d->cache;
  struct meta meta = { d->gz_size, d->json_written, true };
  char part[ENTRY_PATH_LEN], final[ENTRY_PATH_LEN];
  int ret;

  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    if (fsync(d->files->fd[kind]) < 0)
      return download_fail(d, -errno, "fsync of %s failed: %s",
                           part_names[kind], strerror(errno));
  }
  for (int kind = CACHE_JSON; kind <= CACHE_GZ; kind++) {
    entry_path(part, d->gid, part_names[kind]);
    entry_path(final, d->gid, final_names[kind]);
    if (renameat(cache->data_fd, part, cache->data_fd, final) < 0)
      return download_fail(d, -errno, "renaming %s failed: %s",
                           part_names[kind], strerror(errno));
  }
  ret = fsync_dir(cache->data_fd, d->gid);
  if (ret < 0)
    return download_fail(d, ret, "fsync of its folder failed: %s",
                         strerror(-ret));
  ret = meta_write(cache, d->gid, &meta);
  if (ret < 0)
    return download_fail(d, ret, "saving its meta failed: %s",
                         strerror(-ret));
  return 0;
}

static int download_run(struct download *d)
{
  struct cache *cache = d->cache;
  int ret;

  evict_for_download(cache, d->entry);
  ret = open_part_files(d);
  if (ret < 0)
    return ret;
  log_info("cache: downloading export %s: archive of %" PRIu64 " bytes, %"
           PRIu64 " bytes inflated", d->gid, d->gz_size, d->json_size);
  d->started_ns = d->window_ns = d->logged_ns = monotonic_ns();
  ret = cache->source.fetch(cache->source.ctx, d->gid, 0, download_sink, d);
  if (ret == 0)
    flush_stage(d);
  if (d->error < 0)
    return d->error;
  if (ret != 0) {
    ret = ret < 0 ? ret : -EIO;
    return download_fail(d, ret, "the source failed: %s", strerror(-ret));
  }
  ret = check_archive_end(d);
  if (ret < 0)
    return ret;
  return commit_files(d);
}

static void log_download_end(struct download *d, int ret)
{
  const char *reason = d->reason[0] ? d->reason : strerror(-ret);
  double seconds = (double)(monotonic_ns() - d->started_ns) / 1e9;
  char rate[32];

  cache_format_rate(seconds > 0 ? (double)d->gz_written / seconds : 0, rate,
                    sizeof(rate));
  if (ret == 0)
    log_info("cache: downloaded export %s: %" PRIu64 " bytes, %" PRIu64
             " bytes inflated, in %.1f s (%s on average)", d->gid,
             d->gz_written, d->json_written, seconds, rate);
  else if (d->stopped)
    log_info("cache: download of export %s stopped: %s", d->gid, reason);
  else if (ret == -ECANCELED)
    log_info("cache: download of export %s stopped: the source was shut "
             "down", d->gid);
  else
    log_error("cache: download of export %s failed: %s", d->gid, reason);
}

/* Publishes the result: a complete entry, or an idle one with the error
 * that its waiting readers return, whose next read downloads again. */
static void download_end(struct download *d, int ret)
{
  struct cache *cache = d->cache;
  struct entry *e = d->entry;
  struct data_files *entry_files = NULL, *own_files;
  bool forget_sizes;

  /* The probe may have seen an archive that was cut off or replaced, and
   * its sizes would fail every later download. After a failure that the
   * data or the source could cause, the next read probes again. */
  forget_sizes = !d->stopped && ret == -EIO;
  if (ret < 0) {
    remove_part_files(cache, d->gid);
    remove_final_files(cache, d->gid);
  }
  if (forget_sizes)
    remove_file(cache, d->gid, "meta");
  log_download_end(d, ret);

  pthread_mutex_lock(&cache->lock);
  e->complete = ret == 0;
  if (forget_sizes)
    e->known = false;
  if (ret == 0) {
    e->json_size = d->json_written;
    e->complete_download = e->downloads_started;
  }
  /* Ready counts matter only while incomplete. Complete uses the sizes. */
  e->gz_ready = 0;
  e->json_ready = 0;
  e->gz_rate = 0;
  e->json_rate = 0;
  if (ret < 0 || e->open_count == 0) {
    entry_files = files_put(e->files);
    e->files = NULL;
  }
  own_files = files_put(d->files);
  d->files = NULL;
  e->last_used_ns = now_ns();
  e->download_error = ret;
  e->downloads_ended++;
  e->downloading = false;
  entry_unbusy(cache, e);
  pthread_mutex_unlock(&cache->lock);

  files_close(entry_files);
  files_close(own_files);
}

static void download_free(struct download *d)
{
  if (!d)
    return;
  if (d->z_ready)
    inflateEnd(&d->z);
  free(d->out);
  free(d->stage);
  free(d);
}

static void *download_main(void *arg)
{
  struct download *d = arg;

  download_end(d, download_run(d));
  download_free(d);
  return NULL;
}

static struct download *download_new(struct cache *cache, struct entry *e)
{
  struct download *d = calloc(1, sizeof(*d));

  if (!d)
    return NULL;
  d->out = malloc(INFLATE_BUF_SIZE);
  d->stage = malloc(STAGE_BUF_SIZE);
  if (!d->out || !d->stage) {
    free(d->out);
    free(d->stage);
    free(d);
    return NULL;
  }
  d->cache = cache;
  d->entry = e;
  snprintf(d->gid, sizeof(d->gid), "%s", e->gid);
  d->gz_size = e->gz_size;
  d->json_size = e->json_size;
  d->json_limit = inflate_limit(cache->max_bytes, d->gz_size, d->json_size);
  d->state = MEMBER_IN_PROGRESS;
  return d;
}

/* Starts E's download thread and sets *NUMBER to the download's number.
 * Caller holds cache->lock, and E is neither busy nor downloading. */
static int start_download(struct cache *cache, struct entry *e,
                          unsigned *number)
{
  struct download *d = download_new(cache, e);
  pthread_t old_thread;
  bool join_old = false;
  int ret;

  if (!d) {
    log_error("cache: out of memory starting the download of export %s",
              e->gid);
    return -ENOMEM;
  }
  if (e->thread_joinable) {
    old_thread = e->thread;
    join_old = true;
    e->thread_joinable = false;
  }
  e->downloading = true;
  e->busy = true;
  e->gz_ready = 0;
  e->json_ready = 0;
  ret = pthread_create(&e->thread, NULL, download_main, d);
  if (ret != 0) {
    log_error("cache: failed to start the download thread of export %s: %s",
              e->gid, strerror(ret));
    e->downloading = false;
    entry_unbusy(cache, e);
    download_free(d);
    ret = -ret;
    goto out;
  }
  e->thread_joinable = true;
  *number = ++e->downloads_started;
out:
  /* The old thread already published its end, so it only has to exit. */
  if (join_old) {
    pthread_mutex_unlock(&cache->lock);
    pthread_join(old_thread, NULL);
    pthread_mutex_lock(&cache->lock);
  }
  return ret;
}

/* ---- Handles and reads ------------------------------------------------- */

int cache_open(struct cache *cache, const char *gid, struct cache_file **out)
{
  struct cache_file *file = NULL;
  struct entry *e;
  uint64_t json_size, gz_size;
  int ret;

  *out = NULL;
  ret = cache_stat(cache, gid, &json_size, &gz_size);
  if (ret < 0)
    return ret;
  file = calloc(1, sizeof(*file));
  if (!file)
    return -ENOMEM;

  pthread_mutex_lock(&cache->lock);
  e = find_entry(cache, gid);
  if (!e || !e->known) {
    ret = -ENOENT;              /* dropped since cache_stat() */
    goto out;
  }
  e->refs++;
  e->open_count++;
  e->last_used_ns = now_ns();
  if (e->complete && !e->files && !e->busy)
    entry_load_files(cache, e);
  file->cache = cache;
  file->entry = e;
  *out = file;
  file = NULL;
out:
  pthread_mutex_unlock(&cache->lock);
  if (ret == 0)
    touch_meta(cache, gid);
  free(file);
  return ret;
}

/* Keeps one handle from being served bytes of two downloads. A download
 * that fails its check may have served bytes already, and mixing them with
 * a new download would yield a clean but wrong file. Such a handle gets
 * EIO, and a new open starts afresh. Caller holds cache->lock. */
static int check_same_download(struct cache_file *file)
{
  struct entry *e = file->entry;
  unsigned source = e->complete ? e->complete_download : e->downloads_started;

  if (e->complete && file->served_download == 0)
    return 0;
  if (file->served_download != 0 && file->served_download != source) {
    log_error("cache: export %s was downloaded again after a failed "
              "download; reopen the file to read it", e->gid);
    return -EIO;
  }
  file->served_download = source;
  return 0;
}

/* Waits until bytes [OFF, OFF + SIZE) of FILE's data KIND, clipped to the
 * file's size, are on disk, and starts a download if none runs. Sets *LEN to
 * the byte count to read, 0 at or past the end, and when it is not 0, *FILES
 * to a new reference to the data files. Caller holds cache->lock.
 * NOTE: bytes are served as they are inflated, before the gzip member's CRC
 * is checked. A reader that stops early may get wrong bytes of a corrupt
 * archive, but one that reads to the end gets EIO. */
static int wait_for_range(struct cache *cache, struct cache_file *file,
                          enum cache_kind kind, uint64_t off, size_t size,
                          struct data_files **files, size_t *len)
{
  struct entry *e = file->entry;
  unsigned download = 0;        /* the download waited for, or 0 */
  uint64_t file_size, end, ready;
  int ret;

  for (;;) {
    file_size = kind == CACHE_GZ ? e->gz_size : e->json_size;
    /* Until a download ends, the inflated size from the gzip trailer is
     * only a lower bound (several members, or over 4 GiB), so a read at or
     * past it waits for the end instead of returning end of file. */
    if (off >= file_size && (e->complete || kind == CACHE_GZ))
      return 0;
    end = off < file_size && size < file_size - off ? off + size : file_size;
    ready = kind == CACHE_GZ ? e->gz_ready : e->json_ready;
    if (e->complete)
      ready = file_size;
    if (off < file_size && ready >= end && e->files) {
      ret = check_same_download(file);
      if (ret < 0)
        return ret;
      e->files->refs++;
      *files = e->files;
      *len = (size_t)(end - off);
      return 0;
    }

    if (e->dropped)
      return -ENOENT;
    if (cache->stopping)
      return -ECANCELED;
    /* The download that served this handle failed, and check_same_download
     * would reject the bytes of a new one, so the handle keeps the failure
     * (ENOSPC, say) instead of starting a download only to get EIO. */
    if (file->served_download != 0 && !e->complete &&
        e->downloads_ended >= file->served_download)
      return e->download_error < 0 ? e->download_error : -EIO;
    if (e->complete && !e->busy) {
      entry_load_files(cache, e);
      continue;
    }
    if (download != 0 && e->downloads_ended >= download) {
      if (e->download_error < 0)
        return e->download_error;
      download = 0;             /* completed, then evicted: download again */
    }
    if (!e->known && !e->downloading) {
      ret = entry_make_known(cache, e);
      if (ret < 0)
        return ret;
      continue;
    }
    if (!e->downloading && !e->busy) {
      ret = start_download(cache, e, &download);
      if (ret < 0)
        return ret;
    } else if (e->downloading && download == 0) {
      download = e->downloads_started;
    }
    ret = entry_wait(cache, e);
    if (ret < 0)
      return ret;
  }
}

ssize_t cache_read(struct cache_file *file, enum cache_kind kind, char *buf,
                   size_t size, uint64_t off)
{
  struct cache *cache = file->cache;
  struct data_files *files = NULL, *last;
  size_t len = 0;
  ssize_t ret;

  if (kind != CACHE_JSON && kind != CACHE_GZ)
    return -EINVAL;
  if (size > SSIZE_MAX)
    size = SSIZE_MAX;
  pthread_mutex_lock(&cache->lock);
  ret = wait_for_range(cache, file, kind, off, size, &files, &len);
  pthread_mutex_unlock(&cache->lock);
  if (ret < 0 || len == 0)
    goto out;

  ret = read_full(files->fd[kind], buf, len, off);
  if (ret < 0)
    log_error("cache: reading %s of export %s failed: %s", final_names[kind],
              file->entry->gid, strerror((int)-ret));
out:
  if (files) {
    pthread_mutex_lock(&cache->lock);
    last = files_put(files);
    pthread_mutex_unlock(&cache->lock);
    files_close(last);
  }
  return ret;
}

int cache_open_complete(struct cache_file *file, enum cache_kind kind,
                        uint64_t *size)
{
  struct cache *cache = file->cache;
  struct entry *e = file->entry;
  char path[ENTRY_PATH_LEN];
  bool complete;
  int fd;

  if (kind != CACHE_JSON && kind != CACHE_GZ)
    return -EINVAL;
  pthread_mutex_lock(&cache->lock);
  complete = e->complete && !e->dropped;
  *size = kind == CACHE_GZ ? e->gz_size : e->json_size;
  pthread_mutex_unlock(&cache->lock);
  if (!complete)
    return -EAGAIN;
  entry_path(path, e->gid, final_names[kind]);
  fd = openat(cache->data_fd, path, O_RDONLY | O_CLOEXEC);
  return fd < 0 ? -errno : fd;
}

void cache_close(struct cache_file *file)
{
  struct cache *cache;
  struct entry *e;
  struct data_files *last = NULL;

  if (!file)
    return;
  cache = file->cache;
  e = file->entry;
  pthread_mutex_lock(&cache->lock);
  e->open_count--;
  e->refs--;
  if (e->open_count == 0 && !e->downloading) {
    last = files_put(e->files);
    e->files = NULL;
  }
  pthread_mutex_unlock(&cache->lock);
  files_close(last);
  reap_entries(cache);
  free(file);
}

/* ---- Drop and status --------------------------------------------------- */

int cache_drop(struct cache *cache, const char *gid)
{
  struct entry *e;
  int ret = 0;

  if (!gid_is_valid(gid))
    return -ENOENT;
  pthread_mutex_lock(&cache->lock);
  e = find_entry(cache, gid);
  if (!e) {
    ret = -ENOENT;
    goto out;
  }
  e->dropped = true;
  pthread_cond_broadcast(&e->cond);
  /* A busy thread removes the folder when it is done with it. */
  if (!e->busy) {
    e->busy = true;
    entry_unbusy(cache, e);
  }
out:
  pthread_mutex_unlock(&cache->lock);
  if (ret == 0)
    log_info("cache: dropped export %s", gid);
  reap_entries(cache);
  return ret;
}

void cache_get_status(struct cache *cache, const char *gid,
                      struct cache_status *status)
{
  struct entry *e;

  memset(status, 0, sizeof(*status));
  if (!gid_is_valid(gid))
    return;
  pthread_mutex_lock(&cache->lock);
  e = find_entry(cache, gid);
  if (e) {
    status->known = e->known;
    status->complete = e->complete;
    status->downloading = e->downloading;
    status->json_size = e->json_size;
    status->gz_size = e->gz_size;
    status->json_ready = e->complete ? e->json_size : e->json_ready;
    status->gz_ready = e->complete ? e->gz_size : e->gz_ready;
    if (e->downloading && monotonic_ns() - e->progress_ns < RATE_STALE_NS) {
      status->json_rate = e->json_rate;
      status->gz_rate = e->gz_rate;
    }
  }
  pthread_mutex_unlock(&cache->lock);
}

uint64_t cache_used_bytes(struct cache *cache)
{
  uint64_t total = 0;

  pthread_mutex_lock(&cache->lock);
  for (struct entry *e = cache->entries; e; e = e->next) {
    if (e->cleaned)
      continue;
    if (e->complete)
      total += e->json_size + e->gz_size;
    else
      total += e->json_ready + e->gz_ready;
  }
  pthread_mutex_unlock(&cache->lock);
  return total;
}
