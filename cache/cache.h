/*
 * cache: export archives on local disk, inflated while they arrive.
 *
 * Layout under the cache folder (folders 0700, files 0600):
 *   data/GID/meta            sizes and completeness, replaced atomically
 *   data/GID/export.json.gz  the archive as the storage host served it
 *   data/GID/export.json     the archive inflated, as `gzip -dc` makes it
 * Partial data lives in *.part files next to them. An entry is complete
 * only when its meta says so, and meta says so only after both data files
 * were fsynced and renamed into place. So after a crash a partial entry is
 * never served as complete: partial files found at start are removed and the
 * entry is downloaded again.
 *
 * Sizes: the size of export.json.gz is the archive size, and the size of
 * export.json comes from the gzip trailer's ISIZE field, the inflated size
 * modulo 2^32. Both come from one small Range request for the archive's
 * tail (source->probe), before any download, and are kept in meta, which
 * eviction keeps, so a size never changes. An archive large enough to
 * inflate to 4 GiB or more (deflate inflates at most 1032 times) is
 * ambiguous: the probe then also fetches its first MiB, and the size is
 * ISIZE + k * 2^32 for the k whose inflate ratio is nearest that MiB's.
 * When two candidates are within a factor of two of it, the first 16 MiB,
 * streamed through source->fetch, decide instead, because the start of an
 * export often compresses better than the rest. The download's end
 * confirms the size.
 * NOTE: the estimate picks the wrong k when the ratio of the sample
 * differs from the whole archive's by more than 2 GiB over the size (40%
 * at 5 GiB, 10% at 20 GiB). An archive of several gzip members has no
 * single ISIZE at all. In both cases the size is corrected once the download ends,
 * and a warning is logged; until then a read at or past the size waits for
 * the download to end.
 *
 * Streaming: the first read of an entry that is not complete starts one
 * download thread for it; every reader of that entry shares it. The thread
 * calls source->fetch, appends the raw bytes to export.json.gz.part, inflates
 * them (concatenated gzip members too) into export.json.part through fixed
 * buffers, and publishes how many bytes of each file are on disk. A reader
 * waits on the entry's condition variable only until its range is on disk,
 * the download failed, or the reader was interrupted. The thread logs at
 * info level when a download starts, about every DOWNLOAD_LOG_INTERVAL_S
 * seconds while bytes arrive, and when it ends, and measures a rate that
 * cache_get_status() reports. Memory stays bounded:
 * the download buffers are fixed and data is never kept in memory.
 *
 * Limit: with max_bytes set, before a download starts the cache removes the
 * data of the least recently used complete entries that nobody has open,
 * until the new entry fits. Entries being read are never removed, so the
 * cache exceeds its limit only by the entries being read.
 * Inflating past the trailer's size stops with EFBIG beyond 256 times the
 * archive's size, or beyond max_bytes when that is set, so a gzip bomb of
 * several members cannot fill the disk.
 *
 * Errors: functions return 0 or a byte count on success and a negative errno
 * on failure (ENOSPC when the disk is full, EIO for a corrupt or truncated
 * archive, or what the source returned), after logging the detail once.
 *
 * Thread safety: all functions may be called from any thread. No lock is
 * held while a transfer or a disk write is in progress.
 */
#ifndef ASANAFS_CACHE_H
#define ASANAFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Receives archive bytes in order; returns 0 to go on, non-zero to stop.
 * LEN 0 (BUF NULL) marks a pause in the data: bytes held back must be
 * handed on now. */
typedef int (*cache_sink_fn)(void *sink_ctx, const void *buf, size_t len);

/* The facts a probe learns of an archive. The cache sets HEAD_FROM, HEAD and
 * HEAD_CAP; the source fills HEAD with the archive's first bytes (up to
 * HEAD_CAP) only when the archive has at least HEAD_FROM bytes, and leaves
 * HEAD_LEN 0 when it did not or could not. */
struct cache_probe {
  uint64_t archive_size;
  unsigned char trailer[8];   /* the last 8 bytes: CRC-32 and ISIZE */
  uint64_t head_from;
  unsigned char *head;
  size_t head_cap;
  size_t head_len;
};

/* Source of the archives. In asanafs its callbacks call the client module. */
struct cache_source {
  void *ctx;
  /* Fills PROBE's size, trailer and, when asked, head. Returns 0 or -errno. */
  int (*probe)(void *ctx, const char *gid, struct cache_probe *probe);
  /* Feeds archive bytes from OFFSET to the end into SINK. Returns 0 once
   * the end was reached, -ECANCELED when SINK stopped it, or -errno. */
  int (*fetch)(void *ctx, const char *gid, uint64_t offset,
               cache_sink_fn sink, void *sink_ctx);
};

struct cache_config {
  const char *dir;            /* created 0700 if missing */
  uint64_t max_bytes;         /* limit of data in the cache; 0 means none */
  /* Returns non-zero when the caller's request was interrupted; may be
   * NULL. Readers waiting for data poll it. */
  int (*interrupted)(void);
};

enum cache_kind {
  CACHE_JSON = 0,             /* export.json, inflated */
  CACHE_GZ = 1,               /* export.json.gz, as served */
};

struct cache;
struct cache_file;

/* Opens the cache folder, removes partial entries, and loads the entries'
 * sizes and use order. On failure writes a one-line reason to ERR and
 * returns a negative errno, which is -EBUSY when another mount has locked
 * the folder. */
int cache_new(const struct cache_config *config,
              const struct cache_source *source, struct cache **out,
              char *err, size_t err_len);

/* Stops downloads in progress, waits for their threads and frees the cache. */
void cache_free(struct cache *cache);

/* Sets the sizes of an export's two files. Reads meta when it exists, or
 * probes the source once (concurrent callers share one probe) and saves the
 * result in meta. Does not download the archive. */
int cache_stat(struct cache *cache, const char *gid, uint64_t *json_size,
               uint64_t *gz_size);

/* Opens an export's data for reading and marks it in use, which protects it
 * from eviction until cache_close(). Calls cache_stat() if needed. */
int cache_open(struct cache *cache, const char *gid, struct cache_file **out);

/* Reads up to SIZE bytes at OFF of one of the entry's files. Starts the
 * download on first need and waits until the range is on disk. Returns the
 * byte count, 0 at or past the end, or -errno. */
ssize_t cache_read(struct cache_file *file, enum cache_kind kind, char *buf,
                   size_t size, uint64_t off);

void cache_close(struct cache_file *file);

/* Opens a new read-only descriptor of one of the entry's files once the
 * entry is complete, and sets *SIZE to that file's size. The caller closes
 * it. Returns the descriptor, -EAGAIN while the entry is not complete, or
 * another -errno. The descriptor keeps reading the same data after a drop,
 * like an open handle. */
int cache_open_complete(struct cache_file *file, enum cache_kind kind,
                        uint64_t *size);

/* Removes an export's data and meta. Open handles keep reading the data they
 * had; the entry is gone for everyone else. */
int cache_drop(struct cache *cache, const char *gid);

struct cache_status {
  bool known;                 /* meta exists, so the sizes are set */
  bool complete;
  bool downloading;
  uint64_t json_size, gz_size;
  uint64_t json_ready, gz_ready;  /* bytes on disk */
  /* Bytes per second over the last seconds of a running download; 0 when
   * none runs or no byte arrived for a few seconds. */
  double json_rate, gz_rate;
};

/* Reports an entry's state without any network request. */
void cache_get_status(struct cache *cache, const char *gid,
                      struct cache_status *status);

/* Writes RATE in bytes per second the way the logs and the progress file
 * show it, such as "31.5 MiB/s". */
void cache_format_rate(double rate, char *out, size_t out_len);

/* Reports the bytes of data in the cache (complete and partial). */
uint64_t cache_used_bytes(struct cache *cache);

#endif
