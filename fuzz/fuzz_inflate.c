/*
 * libFuzzer harness for the cache's streaming inflate. A fake source serves
 * arbitrary bytes as an export archive. The cache downloads, inflates and
 * stores them through its real code (download thread, part files, meta,
 * readers waiting for ranges), as asanafs does with an archive from the
 * storage host.
 *
 * The fake source reports the input's size and last 8 bytes as the probe
 * would, and feeds the input in chunks whose lengths vary with the input,
 * so gzip headers, members and trailers get split at many places.
 *
 * Besides the sanitizers' checks, it aborts when the cache disagrees with
 * a reference inflate written here with zlib. A read of export.json to
 * its end must succeed exactly when the input is one or more complete gzip
 * members, optionally followed by zero bytes, that inflate to no more than
 * the cache's gzip bomb limit. It must then return what the reference
 * inflated. After such a read export.json.gz must equal the
 * input.
 *
 * The cache folder is created under $TMPDIR, or /dev/shm when it exists,
 * so that the cache's fsync calls stay cheap, and removed at exit.
 */
#include "cache.h"
#include "log.h"

#include <errno.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define READ_SIZE (64 * 1024)
#define MAX_CHUNK 8192
#define OUTPUT_MAX (64 * 1024 * 1024) /* the reference gives up beyond this */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The archive of the current input. */
struct archive {
  const uint8_t *data;
  size_t size;
};

static struct archive current;
static struct cache *cache;
static char cache_dir[256];
static unsigned long next_gid = 1000;

/* ---- Fake source -------------------------------------------------------- */

static int fake_probe(void *ctx, const char *gid, struct cache_probe *probe)
{
  const struct archive *a = ctx;

  /* The client fails the same way when fewer than 8 bytes arrive. */
  if (a->size < 8)
    return -EIO;
  probe->archive_size = a->size;
  memcpy(probe->trailer, a->data + a->size - 8, 8);
  if (probe->head && a->size >= probe->head_from) {
    probe->head_len = a->size < probe->head_cap ? a->size : probe->head_cap;
    memcpy(probe->head, a->data, probe->head_len);
  }
  return 0;
}

static uint32_t next_random(uint32_t *state)
{
  uint32_t x = *state;

  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  *state = x;
  return x;
}

/* Seeds the chunk lengths from the input, so each input replays alike. */
static uint32_t chunk_seed(const struct archive *a)
{
  uint32_t hash = 2166136261u;

  for (size_t i = 0; i < a->size && i < 64; i++)
    hash = (hash ^ a->data[i]) * 16777619u;
  return hash ? hash : 1;
}

static int fake_fetch(void *ctx, const char *gid, uint64_t offset,
                      cache_sink_fn sink, void *sink_ctx)
{
  const struct archive *a = ctx;
  uint32_t state = chunk_seed(a);
  size_t pos = offset < a->size ? (size_t)offset : a->size;

  while (pos < a->size) {
    size_t len = 1 + next_random(&state) % MAX_CHUNK;

    if (len > a->size - pos)
      len = a->size - pos;
    if (sink(sink_ctx, a->data + pos, len) != 0)
      return -ECANCELED;
    pos += len;
    /* A pause in the data, as when the network stalls. */
    if (next_random(&state) % 4 == 0 && sink(sink_ctx, NULL, 0) != 0)
      return -ECANCELED;
  }
  return 0;
}

/* ---- Reference inflate -------------------------------------------------- */

struct output {
  unsigned char *data;
  size_t len;
  bool too_long;              /* more than OUTPUT_MAX bytes were offered */
};

static bool output_append(struct output *out, const unsigned char *buf,
                          size_t len)
{
  unsigned char *grown;

  if (out->len + len > OUTPUT_MAX) {
    out->too_long = true;
    return false;
  }
  grown = realloc(out->data, out->len + len + 1);
  if (!grown)
    return false;
  memcpy(grown + out->len, buf, len);
  out->data = grown;
  out->len += len;
  return true;
}

/* Inflates one gzip member starting at *POS. Returns true when it ended
 * with a valid trailer, and moves *POS past it. */
static bool reference_member(z_stream *z, const struct archive *a,
                             size_t *pos, struct output *out)
{
  unsigned char buf[16384];
  int zret;

  z->next_in = (Bytef *)(a->data + *pos);
  z->avail_in = (uInt)(a->size - *pos);
  do {
    z->next_out = buf;
    z->avail_out = sizeof(buf);
    zret = inflate(z, Z_NO_FLUSH);
    if (zret != Z_OK && zret != Z_STREAM_END)
      return false;
    if (!output_append(out, buf, sizeof(buf) - z->avail_out))
      return false;
  } while (zret != Z_STREAM_END);
  *pos = a->size - z->avail_in;
  return true;
}

/* Inflates the archive as gzip -dc does for concatenated members followed
 * by optional zero padding. Returns false for anything else. */
static bool reference_inflate(const struct archive *a, struct output *out)
{
  z_stream z;
  size_t pos = 0, member_end;
  bool ok = false;

  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
    return false;
  for (;;) {
    if (!reference_member(&z, a, &pos, out))
      break;
    member_end = pos;
    while (pos < a->size && a->data[pos] == 0)
      pos++;
    if (pos == a->size) {
      ok = true;
      break;
    }
    /* Zero padding may only end the archive. */
    if (pos != member_end || a->data[pos] != 0x1f)
      break;
    if (inflateReset(&z) != Z_OK)
      break;
  }
  inflateEnd(&z);
  return ok;
}

/* Returns how many bytes the cache lets an archive inflate to: the size
 * its trailer states, and past it up to INFLATE_RATIO_MAX (256 in
 * cache.c) times the archive's size, as this harness sets no cache limit. */
static uint64_t inflate_limit(const struct archive *a)
{
  const uint8_t *isize = a->data + a->size - 4;
  uint64_t stated = (uint64_t)isize[0] | (uint64_t)isize[1] << 8 |
                    (uint64_t)isize[2] << 16 | (uint64_t)isize[3] << 24;
  uint64_t ratio_limit = (uint64_t)a->size * 256;

  return stated > ratio_limit ? stated : ratio_limit;
}

/* ---- The cache ---------------------------------------------------------- */

static int remove_path(const char *path, const struct stat *st, int flag,
                       struct FTW *ftw)
{
  remove(path);
  return 0;
}

static void cleanup(void)
{
  cache_free(cache);
  cache = NULL;
  if (cache_dir[0])
    nftw(cache_dir, remove_path, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
  static const struct cache_source source = {
    .ctx = &current, .probe = fake_probe, .fetch = fake_fetch,
  };
  const char *tmp = getenv("TMPDIR");
  struct cache_config config = { 0 };
  char err[256];

  if (!tmp || !*tmp)
    tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(cache_dir, sizeof(cache_dir), "%s/fuzz_inflate.XXXXXX", tmp);
  if (!mkdtemp(cache_dir)) {
    perror("fuzz_inflate: mkdtemp");
    abort();
  }
  config.dir = cache_dir;
  if (cache_new(&config, &source, &cache, err, sizeof(err)) < 0) {
    fprintf(stderr, "fuzz_inflate: %s\n", err);
    abort();
  }
  atexit(cleanup);
}

/* Reads one of the entry's files to its end into OUT. Returns 0 or the
 * negative errno of the first failed read. */
static int read_all(struct cache_file *file, enum cache_kind kind,
                    struct output *out)
{
  static char buf[READ_SIZE];
  uint64_t off = 0;
  ssize_t n;

  while ((n = cache_read(file, kind, buf, sizeof(buf), off)) > 0) {
    if (!output_append(out, (unsigned char *)buf, (size_t)n))
      abort();
    off += (uint64_t)n;
  }
  return (int)n;
}

static void check_gz(struct cache_file *file)
{
  struct output gz = { 0 };

  if (read_all(file, CACHE_GZ, &gz) < 0)
    abort();
  if (gz.len != current.size || memcmp(gz.data, current.data, gz.len) != 0)
    abort();
  free(gz.data);
}

/* Reads export.json through the cache and compares it with EXPECTED. */
static void check_against(const char *gid, bool valid,
                          const struct output *expected)
{
  struct output json = { 0 };
  struct cache_file *file = NULL;
  int ret;

  ret = cache_open(cache, gid, &file);
  if (ret < 0) {
    /* Only a probe failure may stop the open: the input is too short. */
    if (valid || current.size >= 18)
      abort();
    return;
  }
  ret = read_all(file, CACHE_JSON, &json);
  if ((ret == 0) != valid)
    abort();
  if (valid) {
    if (json.len != expected->len ||
        (json.len && memcmp(json.data, expected->data, json.len) != 0))
      abort();
    check_gz(file);
  }
  free(json.data);
  cache_close(file);
}

/* Waits until no download of GID runs. A read that failed makes the next
 * read download again, so a download may outlive the reads, and it reads
 * the input, which libFuzzer frees once this input's run returns. */
static void wait_for_downloads(const char *gid)
{
  struct cache_status status;

  for (;;) {
    cache_get_status(cache, gid, &status);
    if (!status.downloading)
      return;
    usleep(100);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct output expected = { 0 };
  bool valid;
  char gid[32];

  if (!cache)
    setup();
  current.data = data;
  current.size = size;
  valid = reference_inflate(&current, &expected) &&
          expected.len <= inflate_limit(&current);
  if (expected.too_long) {
    free(expected.data);
    return 0;
  }
  snprintf(gid, sizeof(gid), "%lu", next_gid++);
  check_against(gid, valid, &expected);
  wait_for_downloads(gid);
  cache_drop(cache, gid);
  free(expected.data);
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  log_init(false, LOG_CRIT);
  return 0;
}
