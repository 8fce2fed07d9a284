/*
 * client: the Asana REST API over libcurl.
 *
 * Every call is synchronous. One call is one logical request, which may
 * take several HTTP attempts; client_retry_decide() is the only place that
 * decides which failures are temporary:
 *   - 429 waits for the Retry-After header (seconds);
 *   - 500, 502, 503, 504, timeouts and dropped connections back off
 *     exponentially with jitter, capped at a maximum delay;
 *   - any other 4xx is final;
 *   - a POST is retried only after a 429 or when the request never reached
 *     the server (connect failure), so one call creates at most one export.
 * Attempts are bounded by count and by total time; then the call fails and
 * the caller (a FUSE operation) fails, and the process stays up.
 *
 * Every transfer has a connect timeout and a low-speed timeout. API replies
 * are read into a buffer capped at max_body bytes. Redirects are not
 * followed on API calls.
 *
 * Secrets: the token is sent only to the api_url's host, and plain http:// is
 * accepted only when that host is a loopback address (127.0.0.0/8, ::1,
 * localhost); TLS peers are verified. Download URLs point to a storage host.
 * They are fetched fresh from the export record for each download, get no
 * Authorization header, are never written anywhere by this module and are
 * logged only through log_redact_url().
 *
 * Errors: each call returns an enum client_result and fills the caller's
 * struct client_error with the HTTP status and a message (Asana's
 * errors[0].message when the reply has one). client_error_errno() turns that
 * into the errno a FUSE operation returns.
 *
 * Ownership: output structs are filled by the call and released with their
 * *_clear or *_free function; json_t pointers in them are new references.
 *
 * Thread safety: one struct client may be used by many threads at once.
 */
#ifndef ASANAFS_CLIENT_H
#define ASANAFS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#define CLIENT_GID_MAX 32     /* Asana gids are decimal strings of up to 20 digits */
#define CLIENT_MESSAGE_MAX 512

enum client_result {
  CLIENT_OK = 0,
  CLIENT_ERR_HTTP,         /* a final non-2xx status; see status and message */
  CLIENT_ERR_RATE_LIMITED, /* still 429 when the retry budget ran out */
  CLIENT_ERR_NETWORK,      /* connect failure, drop or timeout, after retries */
  CLIENT_ERR_REPLY,        /* a reply that breaks the API contract */
  CLIENT_ERR_CONFIG,       /* invalid URL or a refused scheme or host */
  CLIENT_ERR_NOMEM,
  CLIENT_ERR_CANCELLED,    /* client_shutdown() or a sink stopped it */
};

struct client_error {
  enum client_result result;
  long status;                      /* HTTP status of the last attempt, 0 if none */
  char message[CLIENT_MESSAGE_MAX]; /* one line, no token, no URL query */
};

struct client_config {
  const char *api_url;        /* such as https://app.asana.com/api/1.0 */
  const char *token;          /* personal access token; copied */
  long connect_timeout_s;     /* 0 means 10 */
  long low_speed_time_s;      /* abort below 1 byte/s for this long; 0 means 30 */
  int max_attempts;           /* attempts per call; 0 means 5 */
  double max_call_s;          /* time budget of one call, waits included; 0 means 60 */
  double max_backoff_s;       /* cap of one backoff delay; 0 means 8 */
  size_t max_body;            /* cap of an API reply body; 0 means 8 MiB */
};

struct client;

enum client_result client_new(const struct client_config *config,
                              struct client **out, struct client_error *err);

/* Makes transfers and waits in progress and all later calls fail with
 * CLIENT_ERR_CANCELLED, so that threads using the client finish promptly. */
void client_shutdown(struct client *client);

void client_free(struct client *client);

/* ---- Records ---- */

struct client_workspace {
  char gid[CLIENT_GID_MAX];
  char *name;                 /* owned; "" when missing */
  bool is_organization;       /* false when missing */
  json_t *record;             /* the record as received: new reference */
};

struct client_workspace_list {
  struct client_workspace *items; /* owned array */
  size_t count;
};

void client_workspace_list_clear(struct client_workspace_list *list);

enum client_export_state {
  CLIENT_EXPORT_UNKNOWN = 0,
  CLIENT_EXPORT_PENDING,
  CLIENT_EXPORT_STARTED,
  CLIENT_EXPORT_FINISHED,
  CLIENT_EXPORT_ERROR,
};

/* Returns "pending", "started", "finished", "error" or "unknown". */
const char *client_export_state_name(enum client_export_state state);

struct client_export {
  char gid[CLIENT_GID_MAX];
  char org_gid[CLIENT_GID_MAX];   /* "" when the record names no organization */
  enum client_export_state state;
  char created_at[48];            /* as sent, "" when missing */
  time_t created_time;            /* created_at parsed as UTC, 0 when invalid */
  json_t *record;                 /* the record without download_url: new reference */
  char *download_url;             /* owned secret; NULL unless requested and present */
};

/* Releases what an export record owns and zeroes it. */
void client_export_clear(struct client_export *export_record);

/* The user a token belongs to. */
struct client_user {
  char gid[CLIENT_GID_MAX];
  char name[128];             /* cut to fit; "" when missing */
};

/* ---- Calls ---- */

/* GET /users/me: checks that Asana accepts the token. A rejected token
 * fails with CLIENT_ERR_HTTP and status 401 (or 403). */
enum client_result client_get_me(struct client *client,
                                 struct client_user *out,
                                 struct client_error *err);

/* GET /workspaces?limit=100&opt_fields=name,is_organization, following
 * next_page to the end. */
enum client_result client_list_workspaces(struct client *client,
                                          struct client_workspace_list *out,
                                          struct client_error *err);

/* GET /organization_exports/GID. download_url is filled only when
 * WANT_URL is true. */
enum client_result client_get_export(struct client *client, const char *gid,
                                     bool want_url,
                                     struct client_export *out,
                                     struct client_error *err);

/* POST /organization_exports with {"data":{"organization":ORG_GID}}. */
enum client_result client_create_export(struct client *client,
                                        const char *org_gid,
                                        struct client_export *out,
                                        struct client_error *err);

/*
 * Learns an export archive's size and its last 8 bytes (the gzip trailer:
 * CRC-32 and ISIZE, little endian) with one Range request for the tail,
 * after fetching a fresh download URL. Memory stays bounded even when the
 * storage host ignores Range.
 */
enum client_result client_archive_tail(struct client *client,
                                       const char *export_gid,
                                       uint64_t *archive_size,
                                       unsigned char trailer[8],
                                       struct client_error *err);

/*
 * Does what client_archive_tail() does and then, when the archive has at
 * least HEAD_FROM bytes, fetches its first bytes (up to HEAD_CAP) into HEAD
 * with a second Range request to the same URL, so no second URL is fetched.
 * The head is a hint: when that request fails, *HEAD_LEN is 0 and the call
 * still succeeds.
 */
enum client_result client_archive_probe(struct client *client,
                                        const char *export_gid,
                                        uint64_t *archive_size,
                                        unsigned char trailer[8],
                                        uint64_t head_from, unsigned char *head,
                                        size_t head_cap, size_t *head_len,
                                        struct client_error *err);

/* Receives archive bytes in order; returns 0 to go on, non-zero to stop
 * the download (the call then fails with CLIENT_ERR_CANCELLED). A call with
 * LEN 0 (and BUF NULL) marks a pause between bursts of data: a sink that
 * collects bytes before working on them should do so now. */
typedef int (*client_sink_fn)(void *ctx, const void *buf, size_t len);

/*
 * Streams the export archive from byte OFFSET to its end into SINK, each byte
 * exactly once and in order. Fetches a fresh download URL first; after a
 * dropped connection it resumes with a Range request from the byte reached,
 * skipping what it already has when the host answers 200 instead of 206;
 * after a 403 from the storage host it fetches a fresh URL and resumes.
 * Retries are bounded like every other call, but the time budget restarts
 * whenever bytes arrive, so a long download is not cut off while it makes
 * progress.
 */
enum client_result client_download_archive(struct client *client,
                                           const char *export_gid,
                                           uint64_t offset,
                                           client_sink_fn sink, void *ctx,
                                           struct client_error *err);

/*
 * Maps an error to the errno a FUSE operation returns: EACCES for 401, 402
 * and 403, EINVAL for 400, ENOENT for 404, EAGAIN for CLIENT_ERR_RATE_LIMITED,
 * ETIMEDOUT for a network timeout, ECANCELED for CLIENT_ERR_CANCELLED, ENOMEM
 * for CLIENT_ERR_NOMEM, and EIO otherwise.
 */
int client_error_errno(const struct client_error *err);

/* ---- Internals exposed for the unit tests ---- */

enum client_retry {
  CLIENT_RETRY_NO = 0,
  CLIENT_RETRY_AFTER_HEADER, /* wait for Retry-After, then try again */
  CLIENT_RETRY_BACKOFF,      /* wait an exponential backoff, then try again */
};

/*
 * Decides whether an attempt is retried. STATUS is the HTTP status (0 when
 * no reply arrived), CURL_CODE the CURLcode of the transfer, and
 * REQUEST_SENT whether any byte of the request reached the server.
 */
enum client_retry client_retry_decide(bool is_post, long status,
                                      int curl_code, bool request_sent);

/* Returns the delay before attempt ATTEMPT (1-based retry count):
 * min(cap, 0.5 * 2^(attempt-1)) scaled by a factor in [0.5, 1.0] taken from
 * JITTER, a number in [0, 1). */
double client_backoff_delay(int attempt, double cap, double jitter);

/* Parses a Retry-After header value in seconds; returns -1 when invalid. */
double client_parse_retry_after(const char *value);

/* Appends one page of GET /workspaces to LIST. *NEXT_OFFSET is set to a
 * malloc'd offset token, or NULL on the last page. */
enum client_result client_decode_workspaces_page(const char *body, size_t len,
                                                 struct client_workspace_list *list,
                                                 char **next_offset,
                                                 struct client_error *err);

/* Decodes {"data": OrganizationExport}; keeps download_url when WANT_URL. */
enum client_result client_decode_export(const char *body, size_t len,
                                        bool want_url,
                                        struct client_export *out,
                                        struct client_error *err);

/* Decodes {"data": User}, the reply of GET /users/me. */
enum client_result client_decode_user(const char *body, size_t len,
                                      struct client_user *out,
                                      struct client_error *err);

/* Writes the message of an error reply, such as Asana's errors[0].message,
 * or a generic text naming STATUS when the body has none. */
void client_decode_error_message(const char *body, size_t len, long status,
                                 char *message, size_t message_len);

#endif
