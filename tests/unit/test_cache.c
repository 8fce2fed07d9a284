/*
 * Unit tests of the cache module against an in-process fake source.
 *
 * The fake source serves gzip archives that the tests build with zlib from
 * deterministic pseudo-random JSON-like text. Switches make its fetch slow,
 * hold it after the first chunk, fail it with EIO or end it early, and it
 * counts its probe and fetch calls. Each test runs in a fresh folder under
 * /tmp that is removed afterwards.
 */
#include "cache.h"
#include "log.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static bool test_failed;

#define CHECK(expr)                                                         \
  do {                                                                      \
    if (!(expr)) {                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,      \
              #expr);                                                       \
      test_failed = true;                                                   \
    }                                                                       \
  } while (0)

#define JSON_SIZE (5 * 1024 * 1024)
#define CHUNK_SIZE (64 * 1024)
#define MAX_ARCHIVES 8

/* ---- Test data ---------------------------------------------------------- */

struct archive {
  char gid[32];
  unsigned char *gz;
  size_t gz_len;
  unsigned char *json;          /* what gzip -dc makes of GZ */
  size_t json_len;
};

static uint32_t next_random(uint32_t *state)
{
  uint32_t x = *state;

  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  *state = x;
  return x;
}

/* Fills LEN bytes with lines like {"gid":"1234","name":"alpha beta"}. */
static unsigned char *make_text(size_t len, uint32_t seed)
{
  static const char *const words[] = {
    "alpha", "beta", "gamma", "delta", "task", "project", "review", "ship",
    "design", "budget", "q3", "launch", "fix", "notes", "owner", "due",
  };
  unsigned char *text = malloc(len);
  uint32_t state = seed ? seed : 1;
  size_t pos = 0;
  char line[160];

  while (pos < len) {
    int n = snprintf(line, sizeof(line),
                     "{\"gid\":\"%u\",\"name\":\"%s %s %s\",\"done\":%s},\n",
                     next_random(&state) % 100000000u,
                     words[next_random(&state) % 16],
                     words[next_random(&state) % 16],
                     words[next_random(&state) % 16],
                     next_random(&state) % 2 ? "true" : "false");
    size_t take = (size_t)n < len - pos ? (size_t)n : len - pos;

    memcpy(text + pos, line, take);
    pos += take;
  }
  return text;
}

/* Compresses IN into one gzip member appended to *OUT. */
static void gzip_append(const unsigned char *in, size_t len,
                        unsigned char **out, size_t *out_len)
{
  z_stream z;
  size_t bound;

  memset(&z, 0, sizeof(z));
  deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  bound = deflateBound(&z, len) + 64;
  *out = realloc(*out, *out_len + bound);
  z.next_in = (Bytef *)in;
  z.avail_in = (uInt)len;
  z.next_out = *out + *out_len;
  z.avail_out = (uInt)bound;
  deflate(&z, Z_FINISH);
  *out_len += bound - z.avail_out;
  deflateEnd(&z);
}

static struct archive *archive_new(const char *gid, size_t json_len,
                                   uint32_t seed, int members)
{
  struct archive *a = calloc(1, sizeof(*a));
  size_t part = json_len / (size_t)members;

  snprintf(a->gid, sizeof(a->gid), "%s", gid);
  a->json = make_text(json_len, seed);
  a->json_len = json_len;
  for (int i = 0; i < members; i++) {
    size_t start = part * (size_t)i;
    size_t end = i == members - 1 ? json_len : start + part;

    gzip_append(a->json + start, end - start, &a->gz, &a->gz_len);
  }
  return a;
}

static struct archive *archive_copy(const struct archive *from,
                                    const char *gid)
{
  struct archive *a = calloc(1, sizeof(*a));

  *a = *from;
  snprintf(a->gid, sizeof(a->gid), "%s", gid);
  a->gz = malloc(from->gz_len);
  memcpy(a->gz, from->gz, from->gz_len);
  a->json = malloc(from->json_len);
  memcpy(a->json, from->json, from->json_len);
  return a;
}

static void archive_free(struct archive *a)
{
  if (!a)
    return;
  free(a->gz);
  free(a->json);
  free(a);
}

/* ---- Fake source -------------------------------------------------------- */

struct fake {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct archive *archives[MAX_ARCHIVES];
  int archive_count;
  unsigned chunk_delay_us;      /* sleep after each chunk */
  unsigned probe_delay_us;
  bool hold_after_first;        /* block after the first chunk until release */
  bool released;
  bool first_chunk_sent;
  bool fetch_returned;          /* a fetch returned since the last reset */
  long fail_after;              /* return fail_error after this many bytes,
                                   or -1 */
  int fail_error;               /* a negative errno, -EIO after a reset */
  long end_after;               /* return 0 after this many bytes, or -1 */
  atomic_int probes;
  atomic_int fetches;
};

static struct fake fake = {
  .lock = PTHREAD_MUTEX_INITIALIZER,
  .cond = PTHREAD_COND_INITIALIZER,
};

static atomic_int interrupt_requested;

static void fake_reset(void)
{
  for (int i = 0; i < fake.archive_count; i++)
    archive_free(fake.archives[i]);
  fake.archive_count = 0;
  fake.chunk_delay_us = 0;
  fake.probe_delay_us = 0;
  fake.hold_after_first = false;
  fake.released = false;
  fake.first_chunk_sent = false;
  fake.fetch_returned = false;
  fake.fail_after = -1;
  fake.fail_error = -EIO;
  fake.end_after = -1;
  atomic_store(&fake.probes, 0);
  atomic_store(&fake.fetches, 0);
  atomic_store(&interrupt_requested, 0);
}

static void fake_add(struct archive *a)
{
  fake.archives[fake.archive_count++] = a;
}

static struct archive *fake_find(const char *gid)
{
  for (int i = 0; i < fake.archive_count; i++) {
    if (strcmp(fake.archives[i]->gid, gid) == 0)
      return fake.archives[i];
  }
  return NULL;
}

static int fake_probe(void *ctx, const char *gid, struct cache_probe *probe)
{
  struct archive *a = fake_find(gid);

  atomic_fetch_add(&fake.probes, 1);
  if (fake.probe_delay_us)
    usleep(fake.probe_delay_us);
  if (!a)
    return -ENOENT;
  probe->archive_size = a->gz_len;
  if (a->gz_len >= 8)
    memcpy(probe->trailer, a->gz + a->gz_len - 8, 8);
  return 0;
}

static void fake_wait_for_release(void)
{
  pthread_mutex_lock(&fake.lock);
  fake.first_chunk_sent = true;
  pthread_cond_broadcast(&fake.cond);
  while (!fake.released)
    pthread_cond_wait(&fake.cond, &fake.lock);
  pthread_mutex_unlock(&fake.lock);
}

static int fake_fetch_chunks(struct archive *a, uint64_t offset,
                             cache_sink_fn sink, void *sink_ctx)
{
  size_t pos = (size_t)offset;

  while (pos < a->gz_len) {
    size_t len = a->gz_len - pos < CHUNK_SIZE ? a->gz_len - pos : CHUNK_SIZE;

    if (fake.fail_after >= 0 && pos >= (size_t)fake.fail_after)
      return fake.fail_error;
    if (fake.end_after >= 0 && pos >= (size_t)fake.end_after)
      return 0;
    if (sink(sink_ctx, a->gz + pos, len) != 0)
      return -ECANCELED;
    pos += len;
    /* Like libcurl, tell the sink of a pause before one, so that it hands
     * on the bytes it collected. */
    if ((fake.hold_after_first && !fake.first_chunk_sent) ||
        fake.chunk_delay_us) {
      if (sink(sink_ctx, NULL, 0) != 0)
        return -ECANCELED;
    }
    if (fake.hold_after_first && !fake.first_chunk_sent)
      fake_wait_for_release();
    if (fake.chunk_delay_us)
      usleep(fake.chunk_delay_us);
  }
  return 0;
}

static int fake_fetch(void *ctx, const char *gid, uint64_t offset,
                      cache_sink_fn sink, void *sink_ctx)
{
  struct archive *a = fake_find(gid);
  int ret;

  atomic_fetch_add(&fake.fetches, 1);
  ret = a ? fake_fetch_chunks(a, offset, sink, sink_ctx) : -ENOENT;
  pthread_mutex_lock(&fake.lock);
  fake.fetch_returned = true;
  pthread_cond_broadcast(&fake.cond);
  pthread_mutex_unlock(&fake.lock);
  return ret;
}

static void fake_release(void)
{
  pthread_mutex_lock(&fake.lock);
  fake.released = true;
  pthread_cond_broadcast(&fake.cond);
  pthread_mutex_unlock(&fake.lock);
}

static void fake_wait_first_chunk(void)
{
  pthread_mutex_lock(&fake.lock);
  while (!fake.first_chunk_sent)
    pthread_cond_wait(&fake.cond, &fake.lock);
  pthread_mutex_unlock(&fake.lock);
}

static bool fake_fetch_has_returned(void)
{
  bool returned;

  pthread_mutex_lock(&fake.lock);
  returned = fake.fetch_returned;
  pthread_mutex_unlock(&fake.lock);
  return returned;
}

static int test_interrupted(void)
{
  return atomic_load(&interrupt_requested);
}

static const struct cache_source fake_source = {
  .ctx = &fake,
  .probe = fake_probe,
  .fetch = fake_fetch,
};

/* ---- Helpers ------------------------------------------------------------ */

static char test_dir[64];

static struct cache *open_cache(uint64_t max_bytes)
{
  struct cache_config config = {
    .dir = test_dir,
    .max_bytes = max_bytes,
    .interrupted = test_interrupted,
  };
  struct cache *cache = NULL;
  char err[256] = "";
  int ret = cache_new(&config, &fake_source, &cache, err, sizeof(err));

  if (ret < 0)
    fprintf(stderr, "cache_new failed: %s\n", err);
  return cache;
}

/* Reads the whole file KIND of GID in 1 MiB reads and compares it with
 * EXPECTED. Checks after every read that cache_used_bytes() is at most
 * LIMIT, when LIMIT is not 0. Returns 0, -errno or 1 on a mismatch. */
static int read_and_compare(struct cache_file *file, struct cache *cache,
                            enum cache_kind kind, const unsigned char *expected,
                            size_t len, uint64_t limit)
{
  size_t chunk = 1024 * 1024;
  char *buf = malloc(chunk);
  size_t pos = 0;
  int ret = 0;

  while (pos < len) {
    ssize_t n = cache_read(file, kind, buf, chunk, pos);

    if (n <= 0) {
      ret = n < 0 ? (int)n : 1;
      break;
    }
    if (memcmp(buf, expected + pos, (size_t)n) != 0) {
      ret = 1;
      break;
    }
    if (limit && cache_used_bytes(cache) > limit) {
      ret = 2;
      break;
    }
    pos += (size_t)n;
  }
  if (ret == 0 && cache_read(file, kind, buf, chunk, pos) != 0)
    ret = 1;
  free(buf);
  return ret;
}

/* Waits up to 10 s until no download of GID runs. A reader can get the last
 * bytes before the download thread has renamed the files and written meta. */
static void wait_idle(struct cache *cache, const char *gid)
{
  struct cache_status status;

  for (int i = 0; i < 10000; i++) {
    cache_get_status(cache, gid, &status);
    if (!status.downloading)
      return;
    usleep(1000);
  }
  CHECK(!"download still running after 10 s");
}

/* Opens GID, reads both files whole and compares them with archive A, then
 * waits until its download has ended. The gz file is read first because it
 * downloads the whole archive, and with it the json file's real size. */
static int read_archive(struct cache *cache, const struct archive *a,
                        uint64_t limit)
{
  struct cache_file *file = NULL;
  int ret = cache_open(cache, a->gid, &file);

  if (ret < 0)
    return ret;
  ret = read_and_compare(file, cache, CACHE_GZ, a->gz, a->gz_len, limit);
  wait_idle(cache, a->gid);
  if (ret == 0)
    ret = read_and_compare(file, cache, CACHE_JSON, a->json, a->json_len,
                           limit);
  cache_close(file);
  return ret;
}

static bool path_exists(const char *gid, const char *name)
{
  char path[256];
  struct stat st;

  snprintf(path, sizeof(path), "%s/data/%s%s%s", test_dir, gid,
           name ? "/" : "", name ? name : "");
  return stat(path, &st) == 0;
}

static mode_t path_mode(const char *relative)
{
  char path[256];
  struct stat st;

  snprintf(path, sizeof(path), "%s/%s", test_dir, relative);
  if (stat(path, &st) < 0)
    return (mode_t)-1;
  return st.st_mode & 07777;
}

static void write_text(const char *relative, const char *text)
{
  char path[256];
  FILE *f;

  snprintf(path, sizeof(path), "%s/%s", test_dir, relative);
  f = fopen(path, "w");
  if (!f)
    return;
  fputs(text, f);
  fclose(f);
}

/* Checks that the folder of GID contains meta and no data or partial files. */
static void check_only_meta_left(const char *gid)
{
  CHECK(path_exists(gid, "meta"));
  CHECK(!path_exists(gid, "export.json"));
  CHECK(!path_exists(gid, "export.json.gz"));
  CHECK(!path_exists(gid, "export.json.part"));
  CHECK(!path_exists(gid, "export.json.gz.part"));
  CHECK(!path_exists(gid, "meta.tmp"));
}

/* Checks that a download failed by its data left no files, not even meta,
 * so that the next read probes the sizes again. */
static void check_nothing_left(const char *gid)
{
  CHECK(!path_exists(gid, "meta"));
  CHECK(!path_exists(gid, "export.json"));
  CHECK(!path_exists(gid, "export.json.gz"));
  CHECK(!path_exists(gid, "export.json.part"));
  CHECK(!path_exists(gid, "export.json.gz.part"));
  CHECK(!path_exists(gid, "meta.tmp"));
}

static int remove_path(const char *path, const struct stat *st, int flag,
                       struct FTW *ftw)
{
  return remove(path);
}

/* ---- Tests -------------------------------------------------------------- */

static void test_stat_probes_once(void)
{
  struct archive *a = archive_new("1001", JSON_SIZE, 1, 1);
  struct cache *cache;
  uint64_t json_size = 0, gz_size = 0;

  fake_add(a);
  cache = open_cache(0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == a->json_len);
  CHECK(gz_size == a->gz_len);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(atomic_load(&fake.probes) == 1);
  CHECK(atomic_load(&fake.fetches) == 0);
  cache_free(cache);

  cache = open_cache(0);
  json_size = gz_size = 0;
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == a->json_len);
  CHECK(gz_size == a->gz_len);
  CHECK(atomic_load(&fake.probes) == 1);
  cache_free(cache);
}

struct stat_thread {
  struct cache *cache;
  const char *gid;
  uint64_t json_size;
  int ret;
};

static void *stat_thread_main(void *arg)
{
  struct stat_thread *t = arg;
  uint64_t gz_size;

  t->ret = cache_stat(t->cache, t->gid, &t->json_size, &gz_size);
  return NULL;
}

static void test_stat_concurrent_single_probe(void)
{
  struct archive *a = archive_new("1002", 100000, 2, 1);
  struct stat_thread threads[8];
  pthread_t ids[8];
  struct cache *cache;

  fake_add(a);
  fake.probe_delay_us = 50000;
  cache = open_cache(0);
  for (int i = 0; i < 8; i++) {
    threads[i] = (struct stat_thread){ cache, a->gid, 0, -1 };
    pthread_create(&ids[i], NULL, stat_thread_main, &threads[i]);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(ids[i], NULL);
    CHECK(threads[i].ret == 0);
    CHECK(threads[i].json_size == a->json_len);
  }
  CHECK(atomic_load(&fake.probes) == 1);
  cache_free(cache);
}

static void test_stat_unknown_and_tiny(void)
{
  struct archive *tiny = calloc(1, sizeof(*tiny));
  struct cache *cache;
  uint64_t json_size, gz_size;

  snprintf(tiny->gid, sizeof(tiny->gid), "1003");
  tiny->gz = calloc(1, 10);
  tiny->gz_len = 10;
  fake_add(tiny);
  cache = open_cache(0);
  CHECK(cache_stat(cache, "999", &json_size, &gz_size) == -ENOENT);
  CHECK(cache_stat(cache, tiny->gid, &json_size, &gz_size) == -EIO);
  CHECK(!path_exists(tiny->gid, "meta"));
  cache_free(cache);
}

static void test_read_full_identical(void)
{
  struct archive *a = archive_new("1004", JSON_SIZE, 4, 1);
  struct cache_status status;
  struct cache *cache;

  fake_add(a);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == 0);
  cache_get_status(cache, a->gid, &status);
  CHECK(status.known);
  CHECK(status.complete);
  CHECK(!status.downloading);
  CHECK(status.json_ready == a->json_len);
  CHECK(status.gz_ready == a->gz_len);
  CHECK(cache_used_bytes(cache) == a->json_len + a->gz_len);
  CHECK(atomic_load(&fake.fetches) == 1);
  CHECK(path_exists(a->gid, "export.json"));
  CHECK(path_exists(a->gid, "export.json.gz"));
  CHECK(!path_exists(a->gid, "export.json.part"));
  cache_free(cache);
}

static void test_read_edges(void)
{
  struct archive *a = archive_new("1005", 300000, 5, 1);
  struct cache_file *file = NULL;
  struct cache *cache;
  char buf[100];

  fake_add(a);
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  /* The trailer's size is a lower bound until a download ends, so a read
   * at the end downloads the archive once to learn the real size. */
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len + 5) == 0);
  CHECK(atomic_load(&fake.fetches) == 1);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len - 10) ==
        10);
  CHECK(memcmp(buf, a->json + a->json_len - 10, 10) == 0);
  CHECK(cache_read(file, CACHE_GZ, buf, sizeof(buf), a->gz_len - 8) == 8);
  CHECK(memcmp(buf, a->gz + a->gz_len - 8, 8) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, 0, 0) == 0);
  cache_close(file);
  cache_free(cache);
}

static void test_read_while_fetching(void)
{
  struct archive *a = archive_new("1006", JSON_SIZE, 6, 1);
  struct cache_file *file = NULL;
  struct cache *cache;
  char buf[4096];

  fake_add(a);
  fake.hold_after_first = true;
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), 0) == sizeof(buf));
  CHECK(memcmp(buf, a->json, sizeof(buf)) == 0);
  CHECK(cache_read(file, CACHE_GZ, buf, sizeof(buf), 0) == sizeof(buf));
  CHECK(memcmp(buf, a->gz, sizeof(buf)) == 0);
  CHECK(!fake_fetch_has_returned());
  fake_release();
  CHECK(read_and_compare(file, cache, CACHE_JSON, a->json, a->json_len, 0) ==
        0);
  wait_idle(cache, a->gid);
  CHECK(fake_fetch_has_returned());
  CHECK(atomic_load(&fake.fetches) == 1);
  cache_close(file);
  cache_free(cache);
}

static void *interrupted_reader_main(void *arg)
{
  struct cache_file *file = arg;
  char buf[100];

  return (void *)(intptr_t)cache_read(file, CACHE_JSON, buf, sizeof(buf),
                                      JSON_SIZE - 100);
}

static void test_read_interrupted(void)
{
  struct archive *a = archive_new("1007", JSON_SIZE, 7, 1);
  struct cache_file *file = NULL;
  struct cache *cache;
  pthread_t reader;
  void *result = NULL;

  fake_add(a);
  fake.hold_after_first = true;
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  pthread_create(&reader, NULL, interrupted_reader_main, file);
  fake_wait_first_chunk();
  atomic_store(&interrupt_requested, 1);
  pthread_join(reader, &result);
  CHECK((intptr_t)result == -EINTR);
  atomic_store(&interrupt_requested, 0);
  fake_release();
  CHECK(read_and_compare(file, cache, CACHE_JSON, a->json, a->json_len, 0) ==
        0);
  CHECK(atomic_load(&fake.fetches) == 1);
  cache_close(file);
  cache_free(cache);
}

struct reader_thread {
  struct cache *cache;
  const struct archive *archive;
  uint32_t seed;
  int errors;
};

static void *random_reader_main(void *arg)
{
  struct reader_thread *t = arg;
  const struct archive *a = t->archive;
  struct cache_file *file = NULL;
  uint32_t state = t->seed;
  char *buf = malloc(128 * 1024);

  if (cache_open(t->cache, a->gid, &file) < 0) {
    t->errors++;
    goto out;
  }
  for (int i = 0; i < 200; i++) {
    bool gz = next_random(&state) % 4 == 0;
    const unsigned char *expected = gz ? a->gz : a->json;
    size_t len = gz ? a->gz_len : a->json_len;
    size_t off = next_random(&state) % len;
    size_t size = 1 + next_random(&state) % (128 * 1024);
    size_t want = size < len - off ? size : len - off;
    ssize_t n = cache_read(file, gz ? CACHE_GZ : CACHE_JSON, buf, size, off);

    if (n != (ssize_t)want || memcmp(buf, expected + off, want) != 0)
      t->errors++;
  }
  cache_close(file);
out:
  free(buf);
  return NULL;
}

static void test_concurrent_readers(void)
{
  struct archive *a = archive_new("1008", JSON_SIZE, 8, 1);
  struct reader_thread threads[8];
  pthread_t ids[8];
  struct cache *cache;

  fake_add(a);
  fake.chunk_delay_us = 2000;
  cache = open_cache(0);
  for (int i = 0; i < 8; i++) {
    threads[i] = (struct reader_thread){ cache, a, 100u + (uint32_t)i, 0 };
    pthread_create(&ids[i], NULL, random_reader_main, &threads[i]);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(ids[i], NULL);
    CHECK(threads[i].errors == 0);
  }
  CHECK(atomic_load(&fake.fetches) == 1);
  CHECK(atomic_load(&fake.probes) == 1);
  cache_free(cache);
}

static void test_remount_serves_complete(void)
{
  struct archive *a = archive_new("1009", JSON_SIZE, 9, 1);
  struct cache *cache;

  fake_add(a);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == 0);
  cache_free(cache);
  atomic_store(&fake.probes, 0);
  atomic_store(&fake.fetches, 0);

  cache = open_cache(0);
  CHECK(cache_used_bytes(cache) == a->json_len + a->gz_len);
  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(atomic_load(&fake.probes) == 0);
  CHECK(atomic_load(&fake.fetches) == 0);
  cache_free(cache);
}

static void test_second_mount_rejected(void)
{
  struct cache_config config = { .dir = test_dir };
  struct cache *first = open_cache(0);
  struct cache *second = NULL;
  char err[256] = "";

  CHECK(first != NULL);
  CHECK(cache_new(&config, &fake_source, &second, err, sizeof(err)) ==
        -EBUSY);
  CHECK(second == NULL);
  CHECK(strstr(err, test_dir) != NULL);
  cache_free(first);
}

static void test_corrupt_archive_retried(void)
{
  struct archive *good = archive_new("1010", JSON_SIZE, 10, 1);
  struct archive *bad = archive_copy(good, good->gid);
  struct cache_file *file = NULL;
  struct cache_status status;
  struct cache *cache;
  char buf[100];

  for (size_t i = bad->gz_len / 2; i < bad->gz_len / 2 + 64; i++)
    bad->gz[i] ^= 0x55;
  fake_add(bad);
  cache = open_cache(0);
  CHECK(cache_open(cache, bad->gid, &file) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), good->json_len - 100) ==
        -EIO);
  cache_get_status(cache, bad->gid, &status);
  CHECK(!status.complete);
  CHECK(!status.downloading);
  CHECK(cache_used_bytes(cache) == 0);
  check_nothing_left(bad->gid);
  CHECK(atomic_load(&fake.fetches) == 1);

  fake.archives[0] = good;
  archive_free(bad);
  CHECK(read_and_compare(file, cache, CACHE_JSON, good->json, good->json_len,
                         0) == 0);
  wait_idle(cache, good->gid);
  CHECK(atomic_load(&fake.fetches) == 2);
  cache_get_status(cache, good->gid, &status);
  CHECK(status.complete);
  cache_close(file);
  cache_free(cache);
}

/* A handle that was served bytes of a download that then failed gets EIO
 * on every later read, and such a read starts no new probe or download. */
static void test_failed_handle_starts_nothing(void)
{
  struct archive *good = archive_new("1026", JSON_SIZE, 26, 1);
  struct archive *bad = archive_copy(good, good->gid);
  struct cache_file *file = NULL, *fresh = NULL;
  struct cache_status status;
  struct cache *cache;
  char buf[100];
  int probes;

  for (size_t i = bad->gz_len / 2; i < bad->gz_len / 2 + 64; i++)
    bad->gz[i] ^= 0x55;
  fake_add(bad);
  cache = open_cache(0);
  CHECK(cache_open(cache, bad->gid, &file) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), 0) == sizeof(buf));
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), good->json_len - 100) ==
        -EIO);
  wait_idle(cache, bad->gid);
  CHECK(atomic_load(&fake.fetches) == 1);

  fake.archives[0] = good;
  archive_free(bad);
  probes = atomic_load(&fake.probes);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), 0) == -EIO);
  cache_get_status(cache, good->gid, &status);
  CHECK(!status.downloading);
  CHECK(atomic_load(&fake.fetches) == 1);
  CHECK(atomic_load(&fake.probes) == probes);

  CHECK(cache_open(cache, good->gid, &fresh) == 0);
  CHECK(read_and_compare(fresh, cache, CACHE_JSON, good->json, good->json_len,
                         0) == 0);
  wait_idle(cache, good->gid);
  CHECK(atomic_load(&fake.fetches) == 2);
  cache_close(fresh);
  cache_close(file);
  cache_free(cache);
}

static void test_garbage_after_member(void)
{
  struct archive *a = archive_new("1011", 200000, 11, 1);
  struct cache *cache;
  struct cache_status status;

  a->gz = realloc(a->gz, a->gz_len + 4);
  memcpy(a->gz + a->gz_len, "junk", 4);
  a->gz_len += 4;
  fake_add(a);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == -EIO);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  check_nothing_left(a->gid);
  cache_free(cache);
}

static void test_truncated_archive(void)
{
  struct archive *a = archive_new("1012", JSON_SIZE, 12, 1);
  struct cache *cache;
  struct cache_status status;

  fake_add(a);
  fake.end_after = (long)(a->gz_len / 2);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == -EIO);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  check_nothing_left(a->gid);
  cache_free(cache);
}

static void test_source_failure_retried(void)
{
  struct archive *a = archive_new("1013", JSON_SIZE, 13, 1);
  struct cache *cache;
  struct cache_status status;

  fake_add(a);
  fake.fail_after = (long)(a->gz_len / 3);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == -EIO);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  check_nothing_left(a->gid);
  CHECK(atomic_load(&fake.fetches) == 1);

  fake.fail_after = -1;
  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(atomic_load(&fake.fetches) == 2);
  cache_free(cache);
}

/* A handle that was served bytes of a download that then failed gets that
 * download's error on later reads, not EIO from a second download that it
 * may not mix with the first. A new handle downloads again. */
static void test_failed_download_error_kept(void)
{
  struct archive *a = archive_new("1026", JSON_SIZE, 26, 1);
  struct cache_file *file = NULL;
  struct cache *cache;
  char buf[100];

  fake_add(a);
  /* Near the end, so that the cache has published bytes of the download
   * (it works on the archive in bursts of up to 512 KiB) before it fails. */
  fake.fail_after = (long)(a->gz_len - CHUNK_SIZE);
  fake.fail_error = -ENOSPC;
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), 0) == sizeof(buf));
  CHECK(memcmp(buf, a->json, sizeof(buf)) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len - 100) ==
        -ENOSPC);
  wait_idle(cache, a->gid);

  fake.fail_after = -1;
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len - 100) ==
        -ENOSPC);
  CHECK(atomic_load(&fake.fetches) == 1);
  cache_close(file);

  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(atomic_load(&fake.fetches) == 2);
  cache_free(cache);
}

static void test_multi_member_archive(void)
{
  struct archive *a = archive_new("1014", JSON_SIZE, 14, 3);
  struct cache *cache;
  uint64_t json_size = 0, gz_size = 0;

  fake_add(a);
  cache = open_cache(0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  /* Before the download, the size is the last member's ISIZE. */
  CHECK(json_size < a->json_len);
  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == a->json_len);
  cache_free(cache);

  cache = open_cache(0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == a->json_len);
  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(atomic_load(&fake.fetches) == 1);
  cache_free(cache);
}

static void test_zero_padding_ignored(void)
{
  struct archive *a = archive_new("1025", 300000, 25, 2);
  struct cache_file *file = NULL;
  struct cache *cache;
  uint64_t json_size = 0, gz_size = 0;

  /* gzip -d ignores zero bytes after the last member. The probe then reads
   * zeros as ISIZE, so the gz file is read first to download the archive. */
  a->gz = realloc(a->gz, a->gz_len + 16);
  memset(a->gz + a->gz_len, 0, 16);
  a->gz_len += 16;
  fake_add(a);
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  CHECK(read_and_compare(file, cache, CACHE_GZ, a->gz, a->gz_len, 0) == 0);
  wait_idle(cache, a->gid);
  CHECK(read_and_compare(file, cache, CACHE_JSON, a->json, a->json_len, 0) ==
        0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == a->json_len);
  cache_close(file);
  cache_free(cache);
}

/* Builds a gzip bomb: a member of ZEROS zero bytes, then a member of a
 * short text, so that the trailer states only the text's size. */
static struct archive *bomb_new(const char *gid, size_t zeros)
{
  struct archive *a = archive_new(gid, 1000, 31, 1);
  unsigned char *plain = calloc(1, zeros);
  unsigned char *gz = NULL;
  size_t gz_len = 0;

  gzip_append(plain, zeros, &gz, &gz_len);
  gz = realloc(gz, gz_len + a->gz_len);
  memcpy(gz + gz_len, a->gz, a->gz_len);
  free(a->gz);
  a->gz = gz;
  a->gz_len = gz_len + a->gz_len;
  free(plain);
  return a;
}

/* Returns the bytes of regular files under the test folder. */
static uint64_t disk_bytes(void)
{
  char command[128];
  unsigned long long total = 0;
  FILE *p;

  snprintf(command, sizeof(command), "du -sb --apparent-size %s", test_dir);
  p = popen(command, "r");
  if (p) {
    if (fscanf(p, "%llu", &total) != 1)
      total = 0;
    pclose(p);
  }
  return total;
}

static void test_bomb_stopped(void)
{
  struct archive *a = bomb_new("1031", 64 * 1024 * 1024);
  struct cache *cache;
  struct cache_status status;
  uint64_t json_size = 0, gz_size = 0;

  fake_add(a);
  cache = open_cache(0);
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(json_size == 1000);
  CHECK(gz_size * 256 < 64 * 1024 * 1024);
  CHECK(read_archive(cache, a, 0) == -EFBIG);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  CHECK(cache_used_bytes(cache) == 0);
  check_only_meta_left(a->gid);
  CHECK(disk_bytes() < 1024 * 1024);
  cache_free(cache);
}

static void test_inflate_capped_by_cache_size(void)
{
  struct archive *many = archive_new("1032", JSON_SIZE, 32, 8);
  struct archive *one = archive_new("1033", JSON_SIZE, 33, 1);
  struct cache *cache;

  /* Eight members: the trailer states an eighth of the size, and the
   * whole does not fit in a limit of twice the archive. */
  fake_add(many);
  fake_add(one);
  cache = open_cache(2 * many->gz_len);
  CHECK(many->json_len > 2 * many->gz_len);
  CHECK(read_archive(cache, many, 0) == -EFBIG);
  check_only_meta_left(many->gid);

  /* An archive whose trailer states its size honestly is kept even when it
   * alone is over the limit. */
  CHECK(read_archive(cache, one, 0) == 0);
  cache_free(cache);

  /* Without a limit, the same archive of several members reads in full. */
  cache = open_cache(0);
  CHECK(read_archive(cache, many, 0) == 0);
  cache_free(cache);
}

static void test_crash_leftovers_removed(void)
{
  struct archive *a = archive_new("1015", JSON_SIZE, 15, 1);
  struct archive *b = archive_new("1016", 100000, 16, 1);
  struct cache_status status;
  struct cache *cache;
  char meta[200];

  fake_add(a);
  fake_add(b);
  cache = open_cache(0);
  cache_free(cache);

  /* Entry A: a download cut off by a crash. */
  mkdir("data/1015", 0700);
  snprintf(meta, sizeof(meta),
           "asanafs-cache-meta 1\ngz_size %zu\njson_size %zu\ncomplete 0\n",
           a->gz_len, a->json_len);
  write_text("data/1015/meta", meta);
  write_text("data/1015/export.json.part", "partial");
  write_text("data/1015/export.json.gz.part", "partial");
  write_text("data/1015/export.json", "renamed but never marked complete");
  write_text("data/1015/meta.tmp", "half");
  /* Entry B: complete meta whose data file was lost. */
  mkdir("data/1016", 0700);
  snprintf(meta, sizeof(meta),
           "asanafs-cache-meta 1\ngz_size %zu\njson_size %zu\ncomplete 1\n",
           b->gz_len, b->json_len);
  write_text("data/1016/meta", meta);
  write_text("data/1016/export.json.gz", "short");
  /* Entry C: damaged meta. */
  mkdir("data/1017", 0700);
  write_text("data/1017/meta", "gz_size -5\n");
  write_text("data/1017/export.json", "stale");

  cache = open_cache(0);
  check_only_meta_left("1015");
  check_only_meta_left("1016");
  CHECK(!path_exists("1017", NULL));
  cache_get_status(cache, "1015", &status);
  CHECK(status.known);
  CHECK(!status.complete);
  cache_get_status(cache, "1017", &status);
  CHECK(!status.known);
  CHECK(cache_used_bytes(cache) == 0);

  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(read_archive(cache, b, 0) == 0);
  CHECK(atomic_load(&fake.probes) == 0);
  CHECK(atomic_load(&fake.fetches) == 2);
  cache_free(cache);
}

static void test_eviction_lru_skips_open(void)
{
  struct archive *a = archive_new("1018", JSON_SIZE, 18, 1);
  struct archive *b = archive_copy(a, "1019");
  struct archive *c = archive_copy(a, "1020");
  uint64_t entry_bytes = a->json_len + a->gz_len;
  uint64_t limit = 2 * entry_bytes + 1000;
  struct cache_file *b_file = NULL;
  struct cache_status status;
  struct cache *cache;

  fake_add(a);
  fake_add(b);
  fake_add(c);
  cache = open_cache(limit);
  CHECK(read_archive(cache, a, limit + entry_bytes) == 0);
  CHECK(cache_open(cache, b->gid, &b_file) == 0);
  CHECK(read_and_compare(b_file, cache, CACHE_JSON, b->json, b->json_len,
                         limit + entry_bytes) == 0);
  wait_idle(cache, b->gid);
  CHECK(read_archive(cache, c, limit + entry_bytes) == 0);

  /* A is the least recently used entry, so downloading C evicted it. */
  cache_get_status(cache, a->gid, &status);
  CHECK(status.known);
  CHECK(!status.complete);
  check_only_meta_left(a->gid);
  CHECK(cache_used_bytes(cache) <= limit);

  /* B is older than C but open, so downloading A evicts C. */
  CHECK(read_archive(cache, a, limit + entry_bytes) == 0);
  cache_get_status(cache, b->gid, &status);
  CHECK(status.complete);
  cache_get_status(cache, c->gid, &status);
  CHECK(!status.complete);
  check_only_meta_left(c->gid);
  CHECK(cache_used_bytes(cache) <= limit);
  CHECK(read_and_compare(b_file, cache, CACHE_GZ, b->gz, b->gz_len, 0) == 0);
  cache_close(b_file);
  CHECK(atomic_load(&fake.fetches) == 4);

  /* Opening B makes A the least recently used, also after a remount. */
  CHECK(cache_open(cache, b->gid, &b_file) == 0);
  cache_close(b_file);
  cache_free(cache);
  cache = open_cache(limit);
  CHECK(read_archive(cache, c, limit + entry_bytes) == 0);
  cache_get_status(cache, b->gid, &status);
  CHECK(status.complete);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  cache_free(cache);
}

static void test_drop_removes_files(void)
{
  struct archive *a = archive_new("1021", JSON_SIZE, 21, 1);
  struct cache_file *file = NULL;
  struct cache_status status;
  struct cache *cache;
  uint64_t json_size, gz_size;

  fake_add(a);
  cache = open_cache(0);
  CHECK(read_archive(cache, a, 0) == 0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  CHECK(cache_drop(cache, a->gid) == 0);
  CHECK(!path_exists(a->gid, NULL));
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.known);
  CHECK(cache_used_bytes(cache) == 0);
  /* The open handle keeps reading the data it had. */
  CHECK(read_and_compare(file, cache, CACHE_JSON, a->json, a->json_len, 0) ==
        0);
  cache_close(file);
  CHECK(cache_drop(cache, a->gid) == -ENOENT);

  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(atomic_load(&fake.probes) == 2);
  CHECK(path_exists(a->gid, "meta"));
  cache_free(cache);
}

static void test_drop_during_download(void)
{
  struct archive *a = archive_new("1022", JSON_SIZE, 22, 1);
  struct cache_file *file = NULL;
  struct cache *cache;
  uint64_t json_size, gz_size;
  char buf[100];

  fake_add(a);
  fake.hold_after_first = true;
  cache = open_cache(0);
  CHECK(cache_open(cache, a->gid, &file) == 0);
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), 0) == sizeof(buf));
  CHECK(cache_drop(cache, a->gid) == 0);
  fake_release();
  CHECK(cache_read(file, CACHE_JSON, buf, sizeof(buf), a->json_len - 100) ==
        -ENOENT);
  /* A new stat waits until the dropped entry's folder is gone. */
  CHECK(cache_stat(cache, a->gid, &json_size, &gz_size) == 0);
  CHECK(path_exists(a->gid, "meta"));
  CHECK(!path_exists(a->gid, "export.json.part"));
  cache_close(file);
  cache_free(cache);
}

static void test_permissions(void)
{
  struct archive *a = archive_new("1023", 100000, 23, 1);
  char nested[128];
  struct cache_config config = { .dir = nested };
  struct cache *cache = NULL;
  char err[256];
  mode_t old_umask;

  fake_add(a);
  snprintf(nested, sizeof(nested), "%s/a/b/cache", test_dir);
  /* A umask that removes owner bits shows that modes are set explicitly. */
  old_umask = umask(0277);
  CHECK(cache_new(&config, &fake_source, &cache, err, sizeof(err)) == 0);
  CHECK(read_archive(cache, a, 0) == 0);
  umask(old_umask);
  CHECK(path_mode("a") == 0700);
  CHECK(path_mode("a/b") == 0700);
  CHECK(path_mode("a/b/cache") == 0700);
  CHECK(path_mode("a/b/cache/data") == 0700);
  CHECK(path_mode("a/b/cache/data/1023") == 0700);
  CHECK(path_mode("a/b/cache/data/1023/meta") == 0600);
  CHECK(path_mode("a/b/cache/data/1023/export.json") == 0600);
  CHECK(path_mode("a/b/cache/data/1023/export.json.gz") == 0600);
  CHECK(path_mode("a/b/cache/lock") == 0600);
  cache_free(cache);
}

static void test_unusable_folder(void)
{
  char path[128];
  struct cache_config config = { .dir = path };
  struct cache *cache = NULL;
  char err[256] = "";

  write_text("plain-file", "x");
  snprintf(path, sizeof(path), "%s/plain-file/cache", test_dir);
  CHECK(cache_new(&config, &fake_source, &cache, err, sizeof(err)) ==
        -ENOTDIR);
  CHECK(cache == NULL);
  CHECK(strstr(err, path) != NULL);
  CHECK(strchr(err, '\n') == NULL);

  /* A folder of another user; only root can make one to test with. */
  if (geteuid() != 0)
    return;
  snprintf(path, sizeof(path), "%s/other-user", test_dir);
  CHECK(mkdir(path, 0700) == 0);
  CHECK(chown(path, 65534, 65534) == 0);
  CHECK(cache_new(&config, &fake_source, &cache, err, sizeof(err)) ==
        -EPERM);
  CHECK(cache == NULL);
  CHECK(strstr(err, "belongs to uid 65534") != NULL);
}

static void test_write_error_keeps_errno(void)
{
  struct archive *a = archive_new("1024", JSON_SIZE, 24, 1);
  struct rlimit old_limit, limit;
  struct cache_status status;
  struct cache *cache;

  fake_add(a);
  cache = open_cache(0);
  getrlimit(RLIMIT_FSIZE, &old_limit);
  limit = old_limit;
  limit.rlim_cur = 1024 * 1024;
  signal(SIGXFSZ, SIG_IGN);
  setrlimit(RLIMIT_FSIZE, &limit);
  CHECK(read_archive(cache, a, 0) == -EFBIG);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  cache_get_status(cache, a->gid, &status);
  CHECK(!status.complete);
  check_only_meta_left(a->gid);
  CHECK(read_archive(cache, a, 0) == 0);
  cache_free(cache);
}

static void test_invalid_gids(void)
{
  static const char *const gids[] = {
    "../x", "", "12a", "1/2", "-1", "12345678901234567890123456789012",
  };
  struct cache_file *file = NULL;
  struct cache_status status;
  struct cache *cache = open_cache(0);
  uint64_t json_size, gz_size;

  for (size_t i = 0; i < sizeof(gids) / sizeof(gids[0]); i++) {
    CHECK(cache_stat(cache, gids[i], &json_size, &gz_size) == -ENOENT);
    CHECK(cache_open(cache, gids[i], &file) == -ENOENT);
    CHECK(file == NULL);
    CHECK(cache_drop(cache, gids[i]) == -ENOENT);
    cache_get_status(cache, gids[i], &status);
    CHECK(!status.known);
  }
  CHECK(atomic_load(&fake.probes) == 0);
  cache_free(cache);
}

/* ---- Runner ------------------------------------------------------------- */

struct test_case {
  const char *name;
  void (*run)(void);
};

static const struct test_case tests[] = {
  { "stat probes once", test_stat_probes_once },
  { "stat concurrent single probe", test_stat_concurrent_single_probe },
  { "stat unknown and tiny", test_stat_unknown_and_tiny },
  { "read full identical", test_read_full_identical },
  { "read edges", test_read_edges },
  { "read while fetching", test_read_while_fetching },
  { "read interrupted", test_read_interrupted },
  { "concurrent readers", test_concurrent_readers },
  { "remount serves complete", test_remount_serves_complete },
  { "second mount rejected", test_second_mount_rejected },
  { "corrupt archive retried", test_corrupt_archive_retried },
  { "failed handle starts nothing", test_failed_handle_starts_nothing },
  { "garbage after member", test_garbage_after_member },
  { "truncated archive", test_truncated_archive },
  { "source failure retried", test_source_failure_retried },
  { "failed download error kept", test_failed_download_error_kept },
  { "multi-member archive", test_multi_member_archive },
  { "zero padding ignored", test_zero_padding_ignored },
  { "bomb stopped", test_bomb_stopped },
  { "inflate capped by cache size", test_inflate_capped_by_cache_size },
  { "crash leftovers removed", test_crash_leftovers_removed },
  { "eviction lru skips open", test_eviction_lru_skips_open },
  { "drop removes files", test_drop_removes_files },
  { "drop during download", test_drop_during_download },
  { "permissions", test_permissions },
  { "unusable folder", test_unusable_folder },
  { "write error keeps errno", test_write_error_keeps_errno },
  { "invalid gids", test_invalid_gids },
};

/* Runs TEST with the working folder set to a fresh folder under /tmp. */
static bool run_test(const struct test_case *test)
{
  char old_cwd[4096];

  snprintf(test_dir, sizeof(test_dir), "/tmp/test_cache.XXXXXX");
  if (!mkdtemp(test_dir) || !getcwd(old_cwd, sizeof(old_cwd)) ||
      chdir(test_dir) < 0) {
    perror("test_cache: failed to create a test folder");
    return false;
  }
  test_failed = false;
  fake_reset();
  test->run();
  fake_reset();
  if (chdir(old_cwd) < 0)
    perror("test_cache: chdir");
  nftw(test_dir, remove_path, 16, FTW_DEPTH | FTW_PHYS);
  printf("%s %s\n", test_failed ? "FAIL" : "ok  ", test->name);
  fflush(stdout);
  return !test_failed;
}

int main(void)
{
  int passed = 0, failed = 0;

  log_init(false, LOG_WARNING);
  for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    if (run_test(&tests[i]))
      passed++;
    else
      failed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
