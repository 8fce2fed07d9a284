/*
 * client: the Asana REST API over libcurl. The design note is in client.h.
 *
 * The file starts with small helpers and the pure functions that the unit
 * tests call directly (retry rule, backoff, decoders). Then come one HTTP
 * attempt (transfer_*), the retry loop around it (budget, plan_retry), the
 * API calls, and the storage transfers (archive tail and download).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU strerror_r, timegm, explicit_bzero */
#endif

#include "client.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#ifndef ASANAFS_VERSION
#define ASANAFS_VERSION "unknown"
#endif

#define DEFAULT_CONNECT_TIMEOUT_S 10L
#define DEFAULT_LOW_SPEED_TIME_S 30L
#define DEFAULT_MAX_ATTEMPTS 5
#define DEFAULT_MAX_CALL_S 60.0
#define DEFAULT_MAX_BACKOFF_S 8.0
#define DEFAULT_MAX_BODY ((size_t)8 << 20)

#define PAGE_LIMIT "100"               /* the API's maximum page size */
#define MAX_PAGES 10000                /* pages of one listing, short pages included */
#define MAX_WORKSPACES 100000          /* workspaces of one listing */
#define LISTING_BUDGET_FACTOR 4        /* a listing may take 4 times max_call_s */

/* Allowance, in seconds, for a transfer that times out just before its
 * deadline: budget_ms_left() rounds down to whole milliseconds, and libcurl
 * measures CURLOPT_TIMEOUT_MS on its own clock. */
#define DEADLINE_SLACK_S 0.01
#define ERROR_BODY_MAX ((size_t)64 << 10) /* kept of a storage host's error reply */
#define HEADER_VALUE_MAX 256           /* longer header values count as missing */
#define TOKEN_MAX 4096
#define MAX_REDIRECTS 5L
#define RETRY_AFTER_MAX 1e9            /* seconds, the clamp of larger values */
#define ASANA_CHANGE_MAX 32            /* distinct Asana-Change headers logged */
#define SIZE_UNKNOWN UINT64_MAX

/*
 * The largest archive size accepted from a storage host. Half of INT64_MAX
 * keeps st_size (a signed off_t) positive and leaves room to add sizes
 * without overflow.
 */
#define ARCHIVE_SIZE_MAX ((uint64_t)INT64_MAX / 2)

/*
 * Every network timeout message starts with this text.
 * NOTE: client_error_errno() detects a timeout by this prefix, because struct
 * client_error has no field for the transfer's error code.
 */
#define TIMEOUT_PREFIX "timed out"

/*
 * Storage transfers read into a 512 KiB buffer instead of libcurl's 16 KiB
 * default, so an archive of gigabytes needs far fewer recv() system calls.
 * libcurl still hands the body on in pieces of at most 16 KiB
 * (CURL_MAX_WRITE_SIZE), so the sink gets a pause call (LEN 0) after each
 * burst and may collect the pieces of one burst before working on them.
 */
#define DOWNLOAD_BUFFER_SIZE (512L * 1024)

struct client {
  char *api_url;            /* normalized, without a trailing slash */
  char *auth_header;        /* "Authorization: Bearer TOKEN"; a secret */
  long connect_timeout_s;
  long low_speed_time_s;
  int max_attempts;
  double max_call_s;
  double max_backoff_s;
  size_t max_body;
  atomic_bool stopping;     /* set once by client_shutdown() */
  bool sync_ready;          /* lock and wake are initialized */
  pthread_mutex_t lock;
  pthread_cond_t wake;      /* broadcast by client_shutdown(), waited on with lock */
  uint32_t seen_changes[ASANA_CHANGE_MAX]; /* guarded by lock */
  size_t seen_change_count;                /* guarded by lock */
};

/* A byte buffer that refuses to grow past max. */
struct buffer {
  char *data;
  size_t len;
  size_t cap;
  size_t max;
  bool overflow;            /* an append was refused */
};

struct response_headers {
  long status;              /* from the latest status line */
  char retry_after[HEADER_VALUE_MAX];
  char content_range[HEADER_VALUE_MAX];
  char content_length[32];
  char etag[HEADER_VALUE_MAX];
};

struct transfer;

/* Receives the body of a 2xx reply and returns false to abort the transfer. */
typedef bool (*body_fn)(struct transfer *t, const char *data, size_t len);

/* One HTTP request and the outcome of its latest attempt. */
struct transfer {
  struct client *client;
  const char *method;       /* "GET" or "POST" */
  const char *url;          /* a download URL is a secret */
  const char *post_body;    /* JSON body of a POST, else NULL */
  const char *label;        /* names the request in messages, without a query */
  bool api;                 /* an API request rather than a storage one */
  bool capped;              /* each attempt ends when the budget's time does */
  char range[48];           /* CURLOPT_RANGE value, "" for none */
  long timeout_ms;          /* cap of the whole attempt, 0 for none */
  body_fn on_body;          /* takes 2xx bodies; NULL keeps them in body */
  bool (*on_pause)(struct transfer *t); /* between bursts of a 2xx body, or
                                           NULL; false aborts the transfer */
  void *ctx;

  struct response_headers headers;
  struct buffer body;       /* API reply, or the error reply of any host */
  CURLcode code;
  long status;
  bool request_sent;        /* some byte of the request reached the server */
  long os_errno;
  char host[160];           /* host:port of the last URL tried */
  char errbuf[CURL_ERROR_SIZE];
};

/* The attempts and time a call may still spend. */
struct budget {
  int attempts;             /* attempts made since the budget started */
  int max_attempts;
  double max_s;
  double deadline;          /* CLOCK_MONOTONIC seconds */
  char stop_note[160];      /* why retrying stopped early, or "" */
};

/* The deadline of a call that makes several requests. */
struct call_limit {
  double deadline;          /* CLOCK_MONOTONIC seconds */
  double max_s;             /* the call's whole time budget, for messages */
};

enum step {
  STEP_RETRY,
  STEP_STOP,
  STEP_CANCELLED,
};

/* ---- Small helpers ---- */

static double now_s(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Returns a number in [0, 1) from a per-thread generator. */
static double random_unit(void)
{
  static __thread unsigned int seed;

  if (!seed) {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (unsigned int)ts.tv_nsec ^ (unsigned int)(uintptr_t)&seed;
    seed |= 1;
  }
  return rand_r(&seed) / ((double)RAND_MAX + 1.0);
}

static bool is_2xx(long status)
{
  return status >= 200 && status < 300;
}

/* Replaces control characters so that TEXT stays on one line. */
static void flatten_line(char *text)
{
  for (unsigned char *p = (unsigned char *)text; *p; p++) {
    if (*p < 0x20 || *p == 0x7f)
      *p = ' ';
  }
}

static void copy_line(char *out, size_t out_len, const char *text)
{
  snprintf(out, out_len, "%s", text);
  flatten_line(out);
}

__attribute__((format(printf, 4, 5)))
static enum client_result err_set(struct client_error *err,
                                  enum client_result result, long status,
                                  const char *fmt, ...)
{
  va_list ap;

  err->result = result;
  err->status = status;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  flatten_line(err->message);
  return result;
}

static void err_ok(struct client_error *err, long status)
{
  err->result = CLIENT_OK;
  err->status = status;
  err->message[0] = '\0';
}

static const char *status_reason(long status)
{
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 410: return "Gone";
  case 416: return "Range Not Satisfiable";
  case 429: return "Too Many Requests";
  case 451: return "Unavailable For Legal Reasons";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "";
  }
}

/* Writes "403 Forbidden", or only the number for an uncommon status. */
static void describe_status(long status, char *out, size_t out_len)
{
  const char *reason = status_reason(status);

  snprintf(out, out_len, "%ld%s%s", status, *reason ? " " : "", reason);
}

static bool gid_valid(const char *gid)
{
  size_t len;

  if (!gid)
    return false;
  len = strlen(gid);
  if (len == 0 || len >= CLIENT_GID_MAX)
    return false;
  return strspn(gid, "0123456789") == len;
}

/* Copies a JSON string into OUT when it is a valid gid, else returns false. */
static bool copy_gid(const json_t *value, char out[CLIENT_GID_MAX])
{
  const char *text = json_string_value(value);

  if (!gid_valid(text))
    return false;
  memcpy(out, text, strlen(text) + 1);
  return true;
}

static bool buffer_append(struct buffer *b, const char *data, size_t len)
{
  size_t cap;
  char *grown;

  if (len > b->max - b->len) {
    b->overflow = true;
    return false;
  }
  if (b->len + len > b->cap) {
    cap = b->cap ? b->cap : (b->max < 16384 ? b->max : 16384);
    while (cap < b->len + len)
      cap = cap > b->max / 2 ? b->max : cap * 2;
    grown = realloc(b->data, cap);
    if (!grown) {
      b->overflow = true;
      return false;
    }
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  return true;
}

static void buffer_free(struct buffer *b)
{
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

/* Percent-encodes everything but RFC 3986 unreserved characters. */
static char *url_encode(const char *text)
{
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc(strlen(text) * 3 + 1);
  char *p = out;

  if (!out)
    return NULL;
  for (const unsigned char *s = (const unsigned char *)text; *s; s++) {
    if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
        (*s >= '0' && *s <= '9') || strchr("-._~", *s)) {
      *p++ = (char)*s;
    } else {
      *p++ = '%';
      *p++ = hex[*s >> 4];
      *p++ = hex[*s & 15];
    }
  }
  *p = '\0';
  return out;
}

/* Parses a decimal number without sign or spaces and advances *P past it. */
static bool parse_u64(const char **p, uint64_t *out)
{
  uint64_t value = 0;
  const char *s = *p;

  if (!isdigit((unsigned char)*s))
    return false;
  for (; isdigit((unsigned char)*s); s++) {
    unsigned digit = (unsigned)(*s - '0');

    if (value > (UINT64_MAX - digit) / 10)
      return false;
    value = value * 10 + digit;
  }
  *p = s;
  *out = value;
  return true;
}

/* Parses "bytes FIRST-LAST/TOTAL", where TOTAL may be "*" (SIZE_UNKNOWN).
 * A numeric TOTAL of UINT64_MAX is invalid, because it reads as "*". */
static bool parse_content_range(const char *value, uint64_t *first,
                                uint64_t *last, uint64_t *total)
{
  const char *p = value;

  if (strncasecmp(p, "bytes ", 6) != 0)
    return false;
  p += 6;
  if (!parse_u64(&p, first) || *p++ != '-' || !parse_u64(&p, last) ||
      *p++ != '/')
    return false;
  if (strcmp(p, "*") == 0)
    *total = SIZE_UNKNOWN;
  else if (!parse_u64(&p, total) || *p != '\0' || *last >= *total ||
           *total == SIZE_UNKNOWN)
    return false;
  return *first <= *last;
}

/* Parses the "bytes * / TOTAL" form (without spaces) of a 416 reply and
 * leaves *TOTAL unchanged when VALUE is invalid. */
static bool parse_unsatisfied_range(const char *value, uint64_t *total)
{
  const char *p = value;
  uint64_t parsed;

  if (strncasecmp(p, "bytes */", 8) != 0)
    return false;
  p += 8;
  if (!parse_u64(&p, &parsed) || *p != '\0' || parsed == SIZE_UNKNOWN)
    return false;
  *total = parsed;
  return true;
}

/* True when SIZE is a known archive size above ARCHIVE_SIZE_MAX. */
static bool archive_size_too_large(uint64_t size)
{
  return size != SIZE_UNKNOWN && size > ARCHIVE_SIZE_MAX;
}

/* ---- Pure functions of the header ---- */

const char *client_export_state_name(enum client_export_state state)
{
  switch (state) {
  case CLIENT_EXPORT_PENDING: return "pending";
  case CLIENT_EXPORT_STARTED: return "started";
  case CLIENT_EXPORT_FINISHED: return "finished";
  case CLIENT_EXPORT_ERROR: return "error";
  default: return "unknown";
  }
}

static bool is_temporary_network_error(int curl_code)
{
  switch (curl_code) {
  case CURLE_OPERATION_TIMEDOUT:
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST: /* DNS failures are often brief */
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
    return true;
  default:
    return false;
  }
}

static bool is_temporary_status(long status)
{
  return status == 500 || status == 502 || status == 503 || status == 504;
}

enum client_retry client_retry_decide(bool is_post, long status,
                                      int curl_code, bool request_sent)
{
  bool temporary;

  if (status == 429)
    return CLIENT_RETRY_AFTER_HEADER;
  temporary = is_temporary_network_error(curl_code) ||
              is_temporary_status(status);
  if (!temporary)
    return CLIENT_RETRY_NO;

  /* A POST that reached the server may have created an export already. */
  if (is_post && request_sent)
    return CLIENT_RETRY_NO;
  return CLIENT_RETRY_BACKOFF;
}

double client_backoff_delay(int attempt, double cap, double jitter)
{
  double delay = 0.5;

  if (!(cap > 0))
    return 0;
  if (attempt < 1)
    attempt = 1;
  for (int i = 1; i < attempt && delay < cap; i++)
    delay *= 2;
  if (delay > cap)
    delay = cap;
  if (!(jitter >= 0) || jitter >= 1)
    jitter = 0;
  return delay * (0.5 + 0.5 * jitter);
}

/*
 * Accepts delay-seconds (RFC 9110) and, leniently, a decimal fraction such as
 * "0.5". The HTTP-date form gives -1, so the caller falls back to backoff.
 */
double client_parse_retry_after(const char *value)
{
  double seconds = 0, scale = 0.1;
  const char *p = value;

  if (!p)
    return -1;
  p += strspn(p, " \t");
  if (!isdigit((unsigned char)*p))
    return -1;
  for (; isdigit((unsigned char)*p); p++) {
    if (seconds < RETRY_AFTER_MAX)
      seconds = seconds * 10 + (*p - '0');
  }
  if (*p == '.' && isdigit((unsigned char)p[1])) {
    for (p++; isdigit((unsigned char)*p); p++, scale /= 10)
      seconds += (*p - '0') * scale;
  }
  p += strspn(p, " \t");
  if (*p != '\0')
    return -1;
  return seconds < RETRY_AFTER_MAX ? seconds : RETRY_AFTER_MAX;
}

int client_error_errno(const struct client_error *err)
{
  if (!err)
    return EIO;
  switch (err->result) {
  case CLIENT_OK:
    return 0;
  case CLIENT_ERR_RATE_LIMITED:
    return EAGAIN;
  case CLIENT_ERR_CANCELLED:
    return ECANCELED;
  case CLIENT_ERR_NOMEM:
    return ENOMEM;
  case CLIENT_ERR_NETWORK:
    if (strncmp(err->message, TIMEOUT_PREFIX, strlen(TIMEOUT_PREFIX)) == 0)
      return ETIMEDOUT;
    return EIO;
  case CLIENT_ERR_HTTP:
    break;
  default:
    return EIO;
  }
  switch (err->status) {
  case 400: return EINVAL;
  case 401:
  case 402:
  case 403: return EACCES;
  case 404: return ENOENT;
  default: return EIO;
  }
}

/* ---- Decoding replies ---- */

/* Parses BODY. jansson caps nesting at JSON_PARSER_MAX_DEPTH (2048 in 2.14),
 * so deeply nested input cannot exhaust the stack. */
static json_t *load_reply(const char *body, size_t len, const char *what,
                          struct client_error *err)
{
  json_error_t jerr;
  json_t *root = json_loadb(body ? body : "", body ? len : 0, 0, &jerr);

  if (!root)
    err_set(err, CLIENT_ERR_REPLY, err->status,
            "the %s reply is not valid JSON: %s (line %d)", what, jerr.text,
            jerr.line);
  return root;
}

static void workspace_clear(struct client_workspace *ws)
{
  free(ws->name);
  json_decref(ws->record);
  memset(ws, 0, sizeof(*ws));
}

void client_workspace_list_clear(struct client_workspace_list *list)
{
  if (!list)
    return;
  for (size_t i = 0; i < list->count; i++)
    workspace_clear(&list->items[i]);
  free(list->items);
  list->items = NULL;
  list->count = 0;
}

static enum client_result decode_workspace(json_t *item, size_t index,
                                           struct client_workspace *ws,
                                           struct client_error *err)
{
  const char *name;

  if (!json_is_object(item))
    return err_set(err, CLIENT_ERR_REPLY, err->status,
                   "workspace %zu in the workspaces reply is not an object",
                   index);
  if (!copy_gid(json_object_get(item, "gid"), ws->gid))
    return err_set(err, CLIENT_ERR_REPLY, err->status,
                   "workspace %zu in the workspaces reply has a missing or "
                   "invalid gid", index);
  name = json_string_value(json_object_get(item, "name"));
  ws->name = strdup(name ? name : "");
  if (!ws->name)
    return err_set(err, CLIENT_ERR_NOMEM, err->status,
                   "out of memory while decoding workspaces");
  ws->is_organization = json_is_true(json_object_get(item, "is_organization"));
  ws->record = json_incref(item);
  return CLIENT_OK;
}

/* Sets *OFFSET to a copy of next_page.offset, or NULL on the last page. */
static enum client_result decode_next_offset(json_t *root, char **offset,
                                             struct client_error *err)
{
  json_t *next = json_object_get(root, "next_page");
  const char *token;

  *offset = NULL;
  if (!next || json_is_null(next))
    return CLIENT_OK;
  token = json_string_value(json_object_get(next, "offset"));
  if (!json_is_object(next) || !token || !*token)
    return err_set(err, CLIENT_ERR_REPLY, err->status,
                   "next_page in the workspaces reply has no offset");
  *offset = strdup(token);
  if (!*offset)
    return err_set(err, CLIENT_ERR_NOMEM, err->status,
                   "out of memory while decoding workspaces");
  return CLIENT_OK;
}

/* Appends the items of DATA to LIST, or leaves LIST as it was. */
static enum client_result append_workspaces(json_t *data,
                                            struct client_workspace_list *list,
                                            struct client_error *err)
{
  size_t n = json_array_size(data), done = 0;
  struct client_workspace *items;
  enum client_result rc = CLIENT_OK;

  if (n == 0)
    return CLIENT_OK;
  items = realloc(list->items, (list->count + n) * sizeof(*items));
  if (!items)
    return err_set(err, CLIENT_ERR_NOMEM, err->status,
                   "out of memory while decoding workspaces");
  list->items = items;
  memset(items + list->count, 0, n * sizeof(*items));
  for (; done < n && rc == CLIENT_OK; done++)
    rc = decode_workspace(json_array_get(data, done), list->count + done,
                          &items[list->count + done], err);
  if (rc != CLIENT_OK) {
    for (size_t i = 0; i < done; i++)
      workspace_clear(&items[list->count + i]);
    return rc;
  }
  list->count += n;
  return CLIENT_OK;
}

enum client_result client_decode_workspaces_page(const char *body, size_t len,
                                                 struct client_workspace_list *list,
                                                 char **next_offset,
                                                 struct client_error *err)
{
  struct client_error scratch = {0};
  json_t *root = NULL, *data;
  char *offset = NULL;
  enum client_result rc;

  if (!err)
    err = &scratch;
  *next_offset = NULL;
  root = load_reply(body, len, "workspaces", err);
  if (!root) {
    rc = CLIENT_ERR_REPLY;
    goto out;
  }
  data = json_object_get(root, "data");
  if (!json_is_array(data)) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status,
                 "the workspaces reply has no data array");
    goto out;
  }
  rc = decode_next_offset(root, &offset, err);
  if (rc == CLIENT_OK)
    rc = append_workspaces(data, list, err);
  if (rc == CLIENT_OK) {
    *next_offset = offset;
    offset = NULL;
  }
out:
  free(offset);
  json_decref(root);
  return rc;
}

static bool read_digits(const char **p, int count, int *out)
{
  int value = 0;

  for (int i = 0; i < count; i++) {
    if (!isdigit((unsigned char)(*p)[i]))
      return false;
    value = value * 10 + ((*p)[i] - '0');
  }
  *p += count;
  *out = value;
  return true;
}

static int days_in_month(int year, int month)
{
  static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

  return month == 2 && leap ? 29 : days[month - 1];
}

/* Parses "Z", "+HH:MM" or "+HHMM" into seconds east of UTC. */
static bool parse_zone(const char *p, long *offset)
{
  int sign, hours, minutes;

  if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
    *offset = 0;
    return true;
  }
  if (*p != '+' && *p != '-')
    return false;
  sign = *p++ == '-' ? -1 : 1;
  if (!read_digits(&p, 2, &hours))
    return false;
  if (*p == ':')
    p++;
  if (!read_digits(&p, 2, &minutes) || *p != '\0' || hours > 23 ||
      minutes > 59)
    return false;
  *offset = sign * (hours * 3600L + minutes * 60L);
  return true;
}

/* Parses ISO 8601 "YYYY-MM-DDTHH:MM:SS[.frac](Z|offset)" into UTC seconds,
 * or returns 0 when the text is invalid. */
static time_t parse_timestamp(const char *text)
{
  struct tm tm = {0};
  const char *p = text;
  int year, month, day, hour, minute, second;
  long offset;

  if (!read_digits(&p, 4, &year) || *p++ != '-' ||
      !read_digits(&p, 2, &month) || *p++ != '-' ||
      !read_digits(&p, 2, &day) || (*p != 'T' && *p != 't'))
    return 0;
  p++;
  if (!read_digits(&p, 2, &hour) || *p++ != ':' ||
      !read_digits(&p, 2, &minute) || *p++ != ':' ||
      !read_digits(&p, 2, &second))
    return 0;
  if (*p == '.' && isdigit((unsigned char)p[1]))
    for (p++; isdigit((unsigned char)*p); p++)
      ;
  if (!parse_zone(p, &offset) || month < 1 || month > 12 || day < 1 ||
      day > days_in_month(year, month) || hour > 23 || minute > 59 ||
      second > 60)
    return 0;
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  return timegm(&tm) - offset;
}

static enum client_export_state parse_state(const char *text)
{
  static const enum client_export_state states[] = {
    CLIENT_EXPORT_PENDING, CLIENT_EXPORT_STARTED, CLIENT_EXPORT_FINISHED,
    CLIENT_EXPORT_ERROR,
  };

  for (size_t i = 0; text && i < sizeof(states) / sizeof(states[0]); i++) {
    if (strcmp(text, client_export_state_name(states[i])) == 0)
      return states[i];
  }
  return CLIENT_EXPORT_UNKNOWN;
}

/* Fills org_gid, which stays "" when organization is missing or no object. */
static enum client_result decode_organization(json_t *data,
                                              struct client_export *out,
                                              struct client_error *err)
{
  json_t *org = json_object_get(data, "organization");
  json_t *gid = json_object_get(org, "gid");

  if (!json_is_object(org) || !gid || json_is_null(gid))
    return CLIENT_OK;
  if (!copy_gid(gid, out->org_gid))
    return err_set(err, CLIENT_ERR_REPLY, err->status,
                   "export %s names an organization with an invalid gid",
                   out->gid);
  return CLIENT_OK;
}

/* Fills the fields of OUT that come straight from DATA. */
static enum client_result decode_export_fields(json_t *data, bool want_url,
                                               struct client_export *out,
                                               struct client_error *err)
{
  const char *created = json_string_value(json_object_get(data, "created_at"));
  const char *url = json_string_value(json_object_get(data, "download_url"));

  if (!copy_gid(json_object_get(data, "gid"), out->gid))
    return err_set(err, CLIENT_ERR_REPLY, err->status,
                   "the export reply has a missing or invalid gid");
  out->state = parse_state(json_string_value(json_object_get(data, "state")));
  if (created && strlen(created) < sizeof(out->created_at)) {
    memcpy(out->created_at, created, strlen(created) + 1);
    out->created_time = parse_timestamp(created);
  }
  if (want_url && url && *url) {
    out->download_url = strdup(url);
    if (!out->download_url)
      return err_set(err, CLIENT_ERR_NOMEM, err->status,
                     "out of memory while decoding export %s", out->gid);
  }
  return decode_organization(data, out, err);
}

enum client_result client_decode_export(const char *body, size_t len,
                                        bool want_url,
                                        struct client_export *out,
                                        struct client_error *err)
{
  struct client_error scratch = {0};
  json_t *root = NULL, *data;
  enum client_result rc = CLIENT_ERR_REPLY;

  if (!err)
    err = &scratch;
  memset(out, 0, sizeof(*out));
  root = load_reply(body, len, "export", err);
  if (!root)
    goto out;
  data = json_object_get(root, "data");
  if (!json_is_object(data)) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status,
                 "the export reply has no data object");
    goto out;
  }
  rc = decode_export_fields(data, want_url, out, err);
  if (rc != CLIENT_OK)
    goto out;
  out->record = json_deep_copy(data);
  if (!out->record) {
    rc = err_set(err, CLIENT_ERR_NOMEM, err->status,
                 "out of memory while decoding export %s", out->gid);
    goto out;
  }
  json_object_del(out->record, "download_url");
out:
  if (rc != CLIENT_OK)
    client_export_clear(out);
  json_decref(root);
  return rc;
}

void client_export_clear(struct client_export *export_record)
{
  if (!export_record)
    return;
  json_decref(export_record->record);
  if (export_record->download_url) {
    explicit_bzero(export_record->download_url,
                   strlen(export_record->download_url));
    free(export_record->download_url);
  }
  memset(export_record, 0, sizeof(*export_record));
}

/* Copies errors[0].message of an Asana error body into OUT, or returns false
 * when the body has none. */
static bool find_error_message(const char *body, size_t len, char *out,
                               size_t out_len)
{
  json_t *root, *first;
  const char *text;
  bool found = false;

  if (!body || len == 0)
    return false;
  root = json_loadb(body, len, 0, NULL);
  first = json_array_get(json_object_get(root, "errors"), 0);
  text = json_string_value(json_object_get(first, "message"));
  if (text && *text) {
    copy_line(out, out_len, text);
    found = true;
  }
  json_decref(root);
  return found;
}

void client_decode_error_message(const char *body, size_t len, long status,
                                 char *message, size_t message_len)
{
  char status_text[64];

  if (!message || message_len == 0)
    return;
  if (find_error_message(body, len, message, message_len))
    return;
  describe_status(status, status_text, sizeof(status_text));
  snprintf(message, message_len, "HTTP status %s, with no error message",
           status_text);
}

/* ---- URLs ---- */

static bool is_loopback_host(const char *host)
{
  char inner[INET6_ADDRSTRLEN + 8];
  unsigned char addr[16];
  size_t len = strlen(host);

  if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
    return true;
  if (inet_pton(AF_INET, host, addr) == 1)
    return addr[0] == 127;
  if (host[0] != '[' || len < 3 || len - 2 >= sizeof(inner))
    return false;
  memcpy(inner, host + 1, len - 2);
  inner[len - 2] = '\0';
  inner[strcspn(inner, "%")] = '\0'; /* zone id, as in [::1%25lo] */
  return inet_pton(AF_INET6, inner, addr) == 1 &&
         IN6_IS_ADDR_LOOPBACK((struct in6_addr *)addr);
}

static bool url_part_present(CURLU *url, CURLUPart part)
{
  char *value = NULL;
  bool present = curl_url_get(url, part, &value, 0) == CURLUE_OK;

  curl_free(value);
  return present;
}

/* Returns whether URL has a user name or password; false when invalid. */
static bool url_has_user_info(const char *url)
{
  CURLU *parsed = curl_url();
  bool found = false;

  if (parsed && curl_url_set(parsed, CURLUPART_URL, url, 0) == CURLUE_OK)
    found = url_part_present(parsed, CURLUPART_USER) ||
            url_part_present(parsed, CURLUPART_PASSWORD);
  curl_url_cleanup(parsed);
  return found;
}

/*
 * Checks that URL is http or https, with plain http only for a loopback
 * host. WHAT names the URL in messages, which show the URL only as
 * log_redact_url() writes it, because a download URL's query is a secret.
 * An unparsable URL fails with FAILURE and a rejected scheme or host with
 * CLIENT_ERR_CONFIG. On success *NORMALIZED (if given) receives libcurl's
 * normalized form.
 */
static enum client_result check_url(const char *url, const char *what,
                                    enum client_result failure,
                                    char **normalized, struct client_error *err)
{
  CURLU *parsed = curl_url();
  char *scheme = NULL, *host = NULL, shown[160];
  enum client_result rc = failure;

  if (!parsed) {
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
    goto out;
  }
  if (curl_url_set(parsed, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(parsed, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(parsed, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
    err_set(err, failure, 0, "%s is not a valid URL", what);
    goto out;
  }
  log_redact_url(url, shown, sizeof(shown));
  if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0) {
    rc = err_set(err, CLIENT_ERR_CONFIG, 0, "%s (%s) uses the scheme %s; use "
                 "https", what, shown, scheme);
    goto out;
  }
  if (strcmp(scheme, "http") == 0 && !is_loopback_host(host)) {
    rc = err_set(err, CLIENT_ERR_CONFIG, 0, "%s (%s) uses plain http to %s, "
                 "which is allowed only for loopback hosts (127.0.0.0/8, ::1, "
                 "localhost); use https", what, shown, host);
    goto out;
  }
  rc = CLIENT_OK;
  if (normalized && curl_url_get(parsed, CURLUPART_URL, normalized, 0) != CURLUE_OK)
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
out:
  curl_free(scheme);
  curl_free(host);
  curl_url_cleanup(parsed);
  return rc;
}

/* Validates api_url and stores it without query or trailing slash. */
static enum client_result set_api_url(struct client *c, const char *api_url,
                                      struct client_error *err)
{
  CURLU *parsed = NULL;
  char *normalized = NULL;
  enum client_result rc;
  size_t len;

  if (!api_url || !*api_url)
    return err_set(err, CLIENT_ERR_CONFIG, 0, "api_url is missing");
  rc = check_url(api_url, "api_url", CLIENT_ERR_CONFIG, &normalized, err);
  if (rc != CLIENT_OK)
    goto out;
  parsed = curl_url();
  if (!parsed || curl_url_set(parsed, CURLUPART_URL, normalized, 0) != CURLUE_OK) {
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
    goto out;
  }
  if (url_part_present(parsed, CURLUPART_QUERY) ||
      url_part_present(parsed, CURLUPART_FRAGMENT) ||
      url_part_present(parsed, CURLUPART_USER)) {
    rc = err_set(err, CLIENT_ERR_CONFIG, 0, "api_url must not contain user "
                 "info, a query or a fragment");
    goto out;
  }
  len = strlen(normalized);
  while (len > 0 && normalized[len - 1] == '/')
    normalized[--len] = '\0';
  c->api_url = strdup(normalized);
  if (!c->api_url)
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
out:
  curl_free(normalized);
  curl_url_cleanup(parsed);
  return rc;
}

/* True when URL is api_url itself or a path or query below it. */
static bool url_is_under_api(const struct client *c, const char *url)
{
  size_t len = strlen(c->api_url);

  return strncmp(url, c->api_url, len) == 0 &&
         (url[len] == '\0' || url[len] == '/' || url[len] == '?');
}

/* Writes "host:port" of URL, without user info, path or query. */
static void describe_host(const char *url, char *out, size_t out_len)
{
  CURLU *parsed = curl_url();
  char *host = NULL, *port = NULL;

  snprintf(out, out_len, "(unknown host)");
  if (parsed && url && curl_url_set(parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
    snprintf(out, out_len, "%s:%s", host, port);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(parsed);
}

/* ---- libcurl setup shared by all clients ---- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_FAILED_INIT;
static pthread_key_t handle_key;  /* each thread's cached easy handle */

static void free_thread_handle(void *handle)
{
  curl_easy_cleanup(handle);
}

static void global_init_once(void)
{
  global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (global_result == CURLE_OK &&
      pthread_key_create(&handle_key, free_thread_handle) != 0)
    global_result = CURLE_FAILED_INIT;
}

/*
 * Returns this thread's easy handle, reset to defaults. Keeping one handle
 * per thread keeps its connection cache, so API calls reuse connections and
 * TLS sessions.
 */
static CURL *thread_handle(void)
{
  CURL *handle = pthread_getspecific(handle_key);

  if (handle) {
    curl_easy_reset(handle);
    return handle;
  }
  handle = curl_easy_init();
  if (handle && pthread_setspecific(handle_key, handle) != 0) {
    curl_easy_cleanup(handle);
    handle = NULL;
  }
  return handle;
}

/* ---- One HTTP attempt ---- */

/* Copies the value of header NAME from LINE into OUT and returns true when
 * LINE is that header. A value too long for OUT is stored as "". */
static bool header_value(const char *line, size_t len, const char *name,
                         char *out, size_t out_len)
{
  size_t name_len = strlen(name);
  const char *value, *end = line + len;

  if (len <= name_len || line[name_len] != ':' ||
      strncasecmp(line, name, name_len) != 0)
    return false;
  value = line + name_len + 1;
  while (value < end && (*value == ' ' || *value == '\t'))
    value++;
  while (end > value && isspace((unsigned char)end[-1]))
    end--;
  out[0] = '\0';
  if ((size_t)(end - value) < out_len) {
    memcpy(out, value, (size_t)(end - value));
    out[end - value] = '\0';
  }
  return true;
}

static uint32_t hash_text(const char *text)
{
  uint32_t hash = 2166136261u; /* FNV-1a */

  for (; *text; text++)
    hash = (hash ^ (unsigned char)*text) * 16777619u;
  return hash;
}

/* Logs each distinct Asana-Change header once per client. */
static void note_asana_change(struct client *c, const char *value)
{
  uint32_t hash = hash_text(value);
  bool fresh = true;

  pthread_mutex_lock(&c->lock);
  for (size_t i = 0; i < c->seen_change_count; i++)
    fresh = fresh && c->seen_changes[i] != hash;
  if (fresh && c->seen_change_count < ASANA_CHANGE_MAX)
    c->seen_changes[c->seen_change_count++] = hash;
  else
    fresh = false;
  pthread_mutex_unlock(&c->lock);
  if (fresh)
    log_info("Asana announced an API change: %s", value);
}

/* Starts a new response (a redirect, a 100 Continue or the final one). */
static void start_response(struct transfer *t, const char *line, size_t len)
{
  const char *space = memchr(line, ' ', len);
  long status = 0;

  if (space && (size_t)(space - line) + 4 <= len) {
    for (int i = 1; i <= 3 && isdigit((unsigned char)space[i]); i++)
      status = status * 10 + (space[i] - '0');
  }
  memset(&t->headers, 0, sizeof(t->headers));
  t->headers.status = status;
  t->body.len = 0;
  t->body.overflow = false;
}

static void read_header(struct transfer *t, const char *line, size_t len)
{
  struct response_headers *h = &t->headers;
  char change[HEADER_VALUE_MAX];

  if (header_value(line, len, "Retry-After", h->retry_after,
                   sizeof(h->retry_after)) ||
      header_value(line, len, "Content-Range", h->content_range,
                   sizeof(h->content_range)) ||
      header_value(line, len, "Content-Length", h->content_length,
                   sizeof(h->content_length)) ||
      header_value(line, len, "ETag", h->etag, sizeof(h->etag)))
    return;
  if (t->api && header_value(line, len, "Asana-Change", change, sizeof(change)) &&
      change[0])
    note_asana_change(t->client, change);
}

static size_t on_header(char *line, size_t size, size_t count, void *userdata)
{
  struct transfer *t = userdata;
  size_t len = size * count;

  if (len > 5 && memcmp(line, "HTTP/", 5) == 0)
    start_response(t, line, len);
  else
    read_header(t, line, len);
  return len;
}

static size_t on_write(char *data, size_t size, size_t count, void *userdata)
{
  struct transfer *t = userdata;
  size_t len = size * count;

  if (t->on_body && is_2xx(t->headers.status))
    return t->on_body(t, data, len) ? len : 0;
  return buffer_append(&t->body, data, len) ? len : 0;
}

/* Aborts the transfer once client_shutdown() was called. libcurl calls
 * this after each burst of received data and about once a second while
 * none arrives, which is when a download's sink learns of a pause. */
static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
  struct transfer *t = userdata;

  if (atomic_load(&t->client->stopping))
    return 1;
  if (t->on_pause && is_2xx(t->headers.status))
    return t->on_pause(t) ? 0 : 1;
  return 0;
}

#define SETOPT(handle, option, value)                          \
  do {                                                         \
    rc = curl_easy_setopt((handle), (option), (value));        \
    if (rc != CURLE_OK)                                        \
      goto out;                                                \
  } while (0)

static CURLcode setup_protocols(CURL *h, const char *redirect_protocols)
{
  CURLcode rc;

#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(h, CURLOPT_REDIR_PROTOCOLS_STR, redirect_protocols);
#else
  long redirect = strcmp(redirect_protocols, "https") == 0
                    ? CURLPROTO_HTTPS : CURLPROTO_HTTP | CURLPROTO_HTTPS;

  SETOPT(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  SETOPT(h, CURLOPT_REDIR_PROTOCOLS, redirect);
#endif
out:
  return rc;
}

static CURLcode setup_common(struct transfer *t, CURL *h)
{
  struct client *c = t->client;
  CURLcode rc;

  SETOPT(h, CURLOPT_URL, t->url);
  SETOPT(h, CURLOPT_NOSIGNAL, 1L);
  SETOPT(h, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s);
  SETOPT(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
  SETOPT(h, CURLOPT_LOW_SPEED_TIME, c->low_speed_time_s);
  SETOPT(h, CURLOPT_NOPROGRESS, 0L);
  SETOPT(h, CURLOPT_XFERINFOFUNCTION, on_progress);
  SETOPT(h, CURLOPT_XFERINFODATA, t);
  SETOPT(h, CURLOPT_ERRORBUFFER, t->errbuf);
  SETOPT(h, CURLOPT_HEADERFUNCTION, on_header);
  SETOPT(h, CURLOPT_HEADERDATA, t);
  SETOPT(h, CURLOPT_WRITEFUNCTION, on_write);
  SETOPT(h, CURLOPT_WRITEDATA, t);
  SETOPT(h, CURLOPT_USERAGENT, "asanafs/" ASANAFS_VERSION);
  if (t->timeout_ms > 0)
    SETOPT(h, CURLOPT_TIMEOUT_MS, t->timeout_ms);
  if (t->range[0])
    SETOPT(h, CURLOPT_RANGE, t->range);

  /*
   * A proxy from http_proxy or all_proxy would receive a plain-http request
   * in clear text, with the bearer token of an API request. Plain http is
   * allowed only to loopback hosts, so it never needs a proxy. Through a
   * proxy, https is tunnelled with CONNECT and stays encrypted, so https
   * keeps the proxies of the environment.
   */
  if (strncasecmp(t->url, "http:", 5) == 0)
    SETOPT(h, CURLOPT_NOPROXY, "*");
out:
  return rc;
}

static CURLcode append_header(struct curl_slist **headers, const char *line)
{
  struct curl_slist *grown = curl_slist_append(*headers, line);

  if (!grown)
    return CURLE_OUT_OF_MEMORY;
  *headers = grown;
  return CURLE_OK;
}

/* API requests: bearer token, JSON, no redirects, capped by the budget. */
static CURLcode setup_api(struct transfer *t, CURL *h,
                          struct curl_slist **headers)
{
  CURLcode rc = setup_protocols(h, "https");

  if (rc != CURLE_OK)
    goto out;
  SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(h, CURLOPT_ACCEPT_ENCODING, "");
  rc = append_header(headers, "Accept: application/json");
  if (rc == CURLE_OK && url_is_under_api(t->client, t->url))
    rc = append_header(headers, t->client->auth_header);
  if (rc == CURLE_OK && t->post_body)
    rc = append_header(headers, "Content-Type: application/json");
  if (rc != CURLE_OK)
    goto out;
  SETOPT(h, CURLOPT_HTTPHEADER, *headers);
  if (t->post_body) {
    SETOPT(h, CURLOPT_POSTFIELDSIZE, (long)strlen(t->post_body));
    SETOPT(h, CURLOPT_POSTFIELDS, t->post_body);

    /*
     * When a reused keep-alive connection closes before any reply byte,
     * libcurl sends the request again on a new connection by itself (in
     * Curl_retry_request, seen with 7.88.1), and a second POST could create
     * a second export. libcurl resends that way only on a reused connection.
     * FORBID_REUSE closes the POST's connection afterwards.
     */
    SETOPT(h, CURLOPT_FRESH_CONNECT, 1L);
    SETOPT(h, CURLOPT_FORBID_REUSE, 1L);
  }
out:
  return rc;
}

/*
 * Storage requests: no Authorization header (this function never adds one),
 * redirects followed, and the body passed on as sent: without
 * CURLOPT_ACCEPT_ENCODING libcurl does not decode a Content-Encoding, so a
 * .gz archive stays compressed.
 */
static CURLcode setup_storage(struct transfer *t, CURL *h)
{
  /*
   * An https URL is redirected only to https. check_url() accepts a plain
   * http download URL only for a loopback host, such as a test server.
   * NOTE: a plain-http loopback URL may still redirect to plain http on any
   * host.
   */
  bool plain = strncasecmp(t->url, "http:", 5) == 0;
  CURLcode rc = setup_protocols(h, plain ? "http,https" : "https");

  if (rc != CURLE_OK)
    goto out;
  SETOPT(h, CURLOPT_FOLLOWLOCATION, 1L);
  SETOPT(h, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
  SETOPT(h, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  SETOPT(h, CURLOPT_BUFFERSIZE, DOWNLOAD_BUFFER_SIZE);
out:
  return rc;
}

static void transfer_init(struct transfer *t, struct client *c,
                          const char *method, const char *url,
                          const char *label, bool api)
{
  memset(t, 0, sizeof(*t));
  t->client = c;
  t->method = method;
  t->url = url;
  t->label = label;
  t->api = api;
  t->capped = api;
  t->body.max = api ? c->max_body : ERROR_BODY_MAX;
}

static void transfer_release(struct transfer *t)
{
  buffer_free(&t->body);
}

static void log_request(const struct transfer *t)
{
  char shown[512];

  log_redact_url(t->url, shown, sizeof(shown));
  log_debug("%s %s%s%s", t->method, shown, t->range[0] ? " range " : "",
            t->range);
}

static void transfer_collect(struct transfer *t, CURL *h)
{
  long request_size = 0;
  char *last_url = NULL;

  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &t->status);
  curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &request_size);
  curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &t->os_errno);
  curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &last_url);
  describe_host(last_url ? last_url : t->url, t->host, sizeof(t->host));
  t->request_sent = t->status > 0 || request_size > 0;

  /* An error reply longer than the buffer was cut short on purpose. */
  if (t->code == CURLE_WRITE_ERROR && t->body.overflow && !is_2xx(t->status))
    t->code = CURLE_OK;
}

/* Runs one attempt and returns a setup error, or CURLE_OK with the outcome
 * of the transfer in t->code and t->status. */
static CURLcode transfer_perform(struct transfer *t)
{
  struct curl_slist *headers = NULL;
  CURL *h = thread_handle();
  CURLcode rc;

  if (!h)
    return CURLE_OUT_OF_MEMORY;
  memset(&t->headers, 0, sizeof(t->headers));
  t->body.len = 0;
  t->body.overflow = false;
  t->errbuf[0] = '\0';
  t->status = 0;
  rc = setup_common(t, h);
  if (rc == CURLE_OK)
    rc = t->api ? setup_api(t, h, &headers) : setup_storage(t, h);
  if (rc == CURLE_OK) {
    log_request(t);
    t->code = curl_easy_perform(h);
    transfer_collect(t, h);
  }
  /* Drop the handle's pointers to T and HEADERS before they go away. */
  curl_easy_reset(h);
  curl_slist_free_all(headers);
  return rc;
}

static bool transfer_succeeded(const struct transfer *t)
{
  return t->code == CURLE_OK && is_2xx(t->status) && !t->body.overflow;
}

/* ---- Budgets, waits and final errors ---- */

/* Starts B with max_call_s. LIMIT, when not NULL, is the deadline of a call
 * that makes several requests, and B ends no later than it. */
static void budget_start(struct budget *b, const struct client *c,
                         const struct call_limit *limit)
{
  b->attempts = 0;
  b->max_attempts = c->max_attempts;
  b->max_s = c->max_call_s;
  b->deadline = now_s() + c->max_call_s;
  b->stop_note[0] = '\0';
  if (limit && limit->deadline < b->deadline) {
    b->deadline = limit->deadline;
    b->max_s = limit->max_s;
  }
}

/* Returns a limit of SECONDS from now. */
static struct call_limit call_limit_start(double seconds)
{
  return (struct call_limit){ .deadline = now_s() + seconds, .max_s = seconds };
}

static long budget_ms_left(const struct budget *b)
{
  double left_ms = (b->deadline - now_s()) * 1000;

  if (left_ms < 1)
    return 1;
  return left_ms > (double)(LONG_MAX / 2) ? LONG_MAX / 2 : (long)left_ms;
}

/* Sleeps for SECONDS and returns false when client_shutdown() cut it short. */
static bool client_sleep(struct client *c, double seconds)
{
  struct timespec deadline;
  double whole;
  bool awake;

  clock_gettime(CLOCK_MONOTONIC, &deadline);
  whole = (double)(long)seconds;
  deadline.tv_sec += (time_t)whole;
  deadline.tv_nsec += (long)((seconds - whole) * 1e9);
  if (deadline.tv_nsec >= 1000000000L) {
    deadline.tv_sec++;
    deadline.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&c->lock);
  while (!atomic_load(&c->stopping) &&
         pthread_cond_timedwait(&c->wake, &c->lock, &deadline) != ETIMEDOUT)
    ;
  awake = !atomic_load(&c->stopping);
  pthread_mutex_unlock(&c->lock);
  return awake;
}

static enum client_result cancelled(const struct transfer *t,
                                    struct client_error *err)
{
  return err_set(err, CLIENT_ERR_CANCELLED, t->status,
                 "%s was cancelled because asanafs is shutting down", t->label);
}

/* Writes " (after N attempts; NOTE)", or "" after a single plain attempt. */
static void describe_attempts(const struct budget *b, char *out, size_t out_len)
{
  out[0] = '\0';
  if (b->attempts > 1 && b->stop_note[0])
    snprintf(out, out_len, " (after %d attempts; %s)", b->attempts, b->stop_note);
  else if (b->attempts > 1)
    snprintf(out, out_len, " (after %d attempts)", b->attempts);
  else if (b->stop_note[0])
    snprintf(out, out_len, " (%s)", b->stop_note);
}

static enum client_result fail_network(const struct transfer *t,
                                       const char *attempts,
                                       struct client_error *err)
{
  const char *detail = t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->code);
  char os_text[128];

  switch (t->code) {
  case CURLE_COULDNT_CONNECT:
    if (t->os_errno)
      detail = strerror_r((int)t->os_errno, os_text, sizeof(os_text));
    return err_set(err, CLIENT_ERR_NETWORK, t->status,
                   "could not connect to %s: %s%s", t->host, detail, attempts);
  case CURLE_COULDNT_RESOLVE_HOST:
    return err_set(err, CLIENT_ERR_NETWORK, t->status,
                   "could not resolve the host of %s: %s%s", t->host, detail,
                   attempts);
  case CURLE_OPERATION_TIMEDOUT:
    return err_set(err, CLIENT_ERR_NETWORK, t->status,
                   TIMEOUT_PREFIX " on %s at %s: %s%s", t->label, t->host,
                   detail, attempts);
  default:
    return err_set(err, CLIENT_ERR_NETWORK, t->status, "%s at %s failed: %s%s",
                   t->label, t->host, detail, attempts);
  }
}

static enum client_result fail_status(const struct transfer *t,
                                      const char *attempts,
                                      struct client_error *err)
{
  enum client_result result =
    t->status == 429 ? CLIENT_ERR_RATE_LIMITED : CLIENT_ERR_HTTP;
  char status_text[64], asana[CLIENT_MESSAGE_MAX];

  describe_status(t->status, status_text, sizeof(status_text));
  if (!t->api)
    return err_set(err, result, t->status,
                   "the storage host %s returned %s for %s%s", t->host,
                   status_text, t->label, attempts);
  if (t->status >= 300 && t->status < 400)
    return err_set(err, result, t->status,
                   "the API redirected %s with %s, and asanafs does not follow "
                   "API redirects; check api_url%s", t->label, status_text,
                   attempts);
  if (find_error_message(t->body.data, t->body.len, asana, sizeof(asana)))
    return err_set(err, result, t->status, "Asana answered %s for %s%s: %s",
                   status_text, t->label, attempts, asana);
  return err_set(err, result, t->status, "Asana answered %s for %s%s",
                 status_text, t->label, attempts);
}

/* Fills ERR from the failed last attempt of T. */
static enum client_result fail_transfer(const struct transfer *t,
                                        const struct budget *b,
                                        struct client_error *err)
{
  char attempts[256];

  describe_attempts(b, attempts, sizeof(attempts));
  if (t->code == CURLE_ABORTED_BY_CALLBACK)
    return cancelled(t, err);
  if (t->body.overflow && is_2xx(t->status))
    return err_set(err, CLIENT_ERR_REPLY, t->status,
                   "the reply to %s is larger than the limit of %zu bytes "
                   "(max_body)", t->label, t->body.max);
  if (t->code != CURLE_OK)
    return fail_network(t, attempts, err);
  return fail_status(t, attempts, err);
}

/* Writes what went wrong in one attempt, for the retry log line. */
static void describe_failure(const struct transfer *t, char *out, size_t out_len)
{
  if (t->code != CURLE_OK)
    snprintf(out, out_len, "%s", t->errbuf[0] ? t->errbuf
                                              : curl_easy_strerror(t->code));
  else
    describe_status(t->status, out, out_len);
}

/* Waits before the next attempt, or returns STEP_STOP when the call stops. */
static enum step plan_retry(struct client *c, struct budget *b,
                            const struct transfer *t, bool is_post)
{
  enum client_retry how = client_retry_decide(is_post, t->status, (int)t->code,
                                              t->request_sent);
  double header_delay = -1, delay, left;
  char failure[CURL_ERROR_SIZE];

  if (how == CLIENT_RETRY_NO || b->attempts >= b->max_attempts)
    return STEP_STOP;
  if (how == CLIENT_RETRY_AFTER_HEADER)
    header_delay = client_parse_retry_after(t->headers.retry_after);
  delay = header_delay >= 0 ? header_delay
                            : client_backoff_delay(b->attempts, c->max_backoff_s,
                                                   random_unit());
  left = b->deadline - now_s();
  if (delay > left) {
    snprintf(b->stop_note, sizeof(b->stop_note),
             "%s of %.0f s is longer than the %.1f s left of the %.0f s budget",
             header_delay >= 0 ? "Retry-After" : "the next backoff", delay,
             left > 0 ? left : 0, b->max_s);
    return STEP_STOP;
  }
  describe_failure(t, failure, sizeof(failure));
  log_warn("%s: %s; retrying in %.2f s (attempt %d of %d)", t->label, failure,
           delay, b->attempts + 1, b->max_attempts);
  return client_sleep(c, delay) ? STEP_RETRY : STEP_CANCELLED;
}

/* Waits for the next attempt (CLIENT_OK) or fills ERR with the final error. */
static enum client_result retry_or_fail(struct client *c, struct budget *b,
                                        const struct transfer *t, bool is_post,
                                        struct client_error *err)
{
  switch (plan_retry(c, b, t, is_post)) {
  case STEP_RETRY:
    return CLIENT_OK;
  case STEP_CANCELLED:
    return cancelled(t, err);
  default:
    return fail_transfer(t, b, err);
  }
}

/* Counts and runs one attempt of T, whose outcome lands in T. Returns an
 * error only when the attempt could not run or was cancelled. */
static enum client_result run_attempt(struct client *c, struct transfer *t,
                                      struct budget *b, struct client_error *err)
{
  CURLcode rc;

  if (atomic_load(&c->stopping))
    return cancelled(t, err);
  if (t->capped)
    t->timeout_ms = budget_ms_left(b);
  b->attempts++;
  rc = transfer_perform(t);
  if (rc == CURLE_OUT_OF_MEMORY)
    return err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory while preparing %s",
                   t->label);
  if (rc != CURLE_OK)
    return err_set(err, CLIENT_ERR_CONFIG, 0, "libcurl rejected an option for "
                   "%s: %s", t->label, curl_easy_strerror(rc));
  if (t->code == CURLE_ABORTED_BY_CALLBACK)
    return cancelled(t, err);
  return CLIENT_OK;
}

/* ---- API calls ---- */

/*
 * Sends METHOD api_url+PATH?QUERY with the retry rule and, on a 2xx reply,
 * moves its body into REPLY. LIMIT is passed to budget_start().
 */
static enum client_result api_request(struct client *c, const char *method,
                                      const char *path, const char *query,
                                      const char *post_body,
                                      const struct call_limit *limit,
                                      struct buffer *reply,
                                      struct client_error *err)
{
  bool is_post = strcmp(method, "POST") == 0;
  char *url = NULL, label[128];
  struct transfer t;
  struct budget b;
  enum client_result rc;

  snprintf(label, sizeof(label), "%s %s", method, path);
  transfer_init(&t, c, method, NULL, label, true);
  t.post_body = post_body;
  if (asprintf(&url, "%s%s%s%s", c->api_url, path, query ? "?" : "",
               query ? query : "") < 0) {
    url = NULL;
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
    goto out;
  }
  t.url = url;
  budget_start(&b, c, limit);
  do {
    rc = run_attempt(c, &t, &b, err);
    if (rc != CLIENT_OK || transfer_succeeded(&t))
      break;
    rc = retry_or_fail(c, &b, &t, is_post, err);
  } while (rc == CLIENT_OK);
  if (rc != CLIENT_OK)
    goto out;
  *reply = t.body;
  memset(&t.body, 0, sizeof(t.body));
  err_ok(err, t.status);
out:
  transfer_release(&t);
  free(url);
  return rc;
}

static enum client_result fetch_workspaces_page(struct client *c,
                                                const struct call_limit *limit,
                                                const char *offset,
                                                struct buffer *reply,
                                                struct client_error *err)
{
  static const char base[] = "limit=" PAGE_LIMIT "&opt_fields=name,is_organization";
  char *encoded = NULL, *query = NULL;
  enum client_result rc;

  if (offset) {
    encoded = url_encode(offset);
    if (!encoded || asprintf(&query, "%s&offset=%s", base, encoded) < 0) {
      query = NULL;
      rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
      goto out;
    }
  }
  rc = api_request(c, "GET", "/workspaces", query ? query : base, NULL, limit,
                   reply, err);
out:
  free(encoded);
  free(query);
  return rc;
}

/* The next_page offsets that one listing has followed. */
struct offset_history {
  char **items;             /* owned strings */
  size_t count;
  size_t cap;
};

static bool offset_seen(const struct offset_history *h, const char *offset)
{
  /* A listing follows at most MAX_PAGES offsets, so a linear scan will do. */
  for (size_t i = 0; i < h->count; i++) {
    if (strcmp(h->items[i], offset) == 0)
      return true;
  }
  return false;
}

/* Moves OFFSET into H. Frees it and returns false when out of memory. */
static bool offset_remember(struct offset_history *h, char *offset)
{
  if (h->count == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 16;
    char **grown = realloc(h->items, cap * sizeof(*grown));

    if (!grown) {
      free(offset);
      return false;
    }
    h->items = grown;
    h->cap = cap;
  }
  h->items[h->count++] = offset;
  return true;
}

static void offset_history_free(struct offset_history *h)
{
  for (size_t i = 0; i < h->count; i++)
    free(h->items[i]);
  free(h->items);
  memset(h, 0, sizeof(*h));
}

/* Fails a listing that ran past its deadline. CAUSE, when not "", is the
 * error of the page request that the deadline cut short. */
static enum client_result listing_timed_out(const struct call_limit *limit,
                                            int pages, const char *cause,
                                            struct client_error *err)
{
  return err_set(err, CLIENT_ERR_NETWORK, err->status, TIMEOUT_PREFIX " on "
                 "GET /workspaces after %d pages: the listing took longer "
                 "than its limit of %g s (%d times max_call_s)%s%s", pages,
                 limit->max_s, LISTING_BUDGET_FACTOR, *cause ? "; " : "",
                 cause);
}

/* Fails a listing that ran past its page count or its deadline. */
static enum client_result check_listing_time(const struct call_limit *limit,
                                             int pages,
                                             struct client_error *err)
{
  if (pages >= MAX_PAGES)
    return err_set(err, CLIENT_ERR_REPLY, err->status, "GET /workspaces "
                   "returned more than %d pages; the listing does not end",
                   MAX_PAGES);
  if (now_s() >= limit->deadline)
    return listing_timed_out(limit, pages, "", err);
  return CLIENT_OK;
}

/*
 * Appends every page of GET /workspaces to LIST. *OFFSET_EXPIRED is set when
 * a later page failed with 400, the status the API returns for an expired
 * offset token. An offset that comes back a second time would repeat pages
 * without end, so it fails the listing.
 */
static enum client_result list_pages(struct client *c,
                                     const struct call_limit *limit,
                                     struct client_workspace_list *list,
                                     bool *offset_expired,
                                     struct client_error *err)
{
  struct offset_history history = {0};
  struct buffer reply = {0};
  char *offset = NULL;
  enum client_result rc = CLIENT_OK;

  *offset_expired = false;
  for (int pages = 0;; pages++) {
    rc = check_listing_time(limit, pages, err);
    if (rc != CLIENT_OK)
      break;
    rc = fetch_workspaces_page(c, limit, offset, &reply, err);
    if (rc == CLIENT_ERR_NETWORK &&
        now_s() >= limit->deadline - DEADLINE_SLACK_S) {
      char cause[CLIENT_MESSAGE_MAX];

      copy_line(cause, sizeof(cause), err->message);
      rc = listing_timed_out(limit, pages, cause, err);
    }
    if (rc != CLIENT_OK) {
      *offset_expired = offset && rc == CLIENT_ERR_HTTP && err->status == 400;
      break;
    }
    if (offset && !offset_remember(&history, offset)) {
      offset = NULL;
      rc = err_set(err, CLIENT_ERR_NOMEM, err->status,
                   "out of memory while listing workspaces");
      break;
    }
    rc = client_decode_workspaces_page(reply.data, reply.len, list, &offset,
                                       err);
    buffer_free(&reply);
    if (rc == CLIENT_OK && list->count > MAX_WORKSPACES)
      rc = err_set(err, CLIENT_ERR_REPLY, err->status, "GET /workspaces "
                   "returned more than %d workspaces, the limit of asanafs",
                   MAX_WORKSPACES);
    if (rc == CLIENT_OK && offset && offset_seen(&history, offset))
      rc = err_set(err, CLIENT_ERR_REPLY, err->status, "Asana returned the "
                   "same next_page offset twice while listing workspaces "
                   "(after %d pages), so the listing would not end",
                   pages + 1);
    if (rc != CLIENT_OK || !offset)
      break;
  }
  free(offset);
  buffer_free(&reply);
  offset_history_free(&history);
  return rc;
}

enum client_result client_list_workspaces(struct client *client,
                                          struct client_workspace_list *out,
                                          struct client_error *err)
{
  struct client_error scratch = {0};
  struct client_workspace_list list = {0};
  struct call_limit limit;
  bool offset_expired;
  enum client_result rc;

  if (!err)
    err = &scratch;
  memset(out, 0, sizeof(*out));

  /*
   * One deadline, LISTING_BUDGET_FACTOR times max_call_s, covers all pages
   * of the listing and the restart after an expired offset. Each page's
   * request also keeps its own max_call_s budget.
   */
  limit = call_limit_start(client->max_call_s * LISTING_BUDGET_FACTOR);
  rc = list_pages(client, &limit, &list, &offset_expired, err);
  if (rc != CLIENT_OK && offset_expired) {
    log_warn("GET /workspaces: a later page failed with 400 (%s). The offset "
             "token probably expired, so the listing restarts from the first "
             "page", err->message);
    client_workspace_list_clear(&list);
    rc = list_pages(client, &limit, &list, &offset_expired, err);
  }
  if (rc != CLIENT_OK) {
    client_workspace_list_clear(&list);
    return rc;
  }
  *out = list;
  return CLIENT_OK;
}

static enum client_result check_gid_argument(const char *gid, const char *what,
                                             struct client_error *err)
{
  if (gid_valid(gid))
    return CLIENT_OK;
  return err_set(err, CLIENT_ERR_CONFIG, 0, "invalid %s gid \"%.40s\": "
                 "expected 1 to %d decimal digits", what, gid ? gid : "",
                 CLIENT_GID_MAX - 1);
}

/* Does client_get_export() within LIMIT (see budget_start()). */
static enum client_result get_export(struct client *client, const char *gid,
                                     bool want_url,
                                     const struct call_limit *limit,
                                     struct client_export *out,
                                     struct client_error *err)
{
  struct buffer reply = {0};
  char path[64];
  enum client_result rc;

  memset(out, 0, sizeof(*out));
  rc = check_gid_argument(gid, "export", err);
  if (rc != CLIENT_OK)
    goto out;
  snprintf(path, sizeof(path), "/organization_exports/%s", gid);
  rc = api_request(client, "GET", path, NULL, NULL, limit, &reply, err);
  if (rc == CLIENT_OK)
    rc = client_decode_export(reply.data, reply.len, want_url, out, err);
  if (rc == CLIENT_OK && strcmp(out->gid, gid) != 0) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status, "GET %s returned export "
                 "%s instead", path, out->gid);
    client_export_clear(out);
  }
out:
  buffer_free(&reply);
  return rc;
}

enum client_result client_get_export(struct client *client, const char *gid,
                                     bool want_url,
                                     struct client_export *out,
                                     struct client_error *err)
{
  struct client_error scratch = {0};

  return get_export(client, gid, want_url, NULL, out, err ? err : &scratch);
}

enum client_result client_create_export(struct client *client,
                                        const char *org_gid,
                                        struct client_export *out,
                                        struct client_error *err)
{
  struct client_error scratch = {0};
  struct buffer reply = {0};
  char body[96];
  enum client_result rc;

  if (!err)
    err = &scratch;
  memset(out, 0, sizeof(*out));
  rc = check_gid_argument(org_gid, "organization", err);
  if (rc != CLIENT_OK)
    goto out;
  /* A valid gid is only digits, so it needs no JSON escaping. */
  snprintf(body, sizeof(body), "{\"data\":{\"organization\":\"%s\"}}", org_gid);
  rc = api_request(client, "POST", "/organization_exports", NULL, body, NULL,
                   &reply, err);
  if (rc == CLIENT_OK)
    rc = client_decode_export(reply.data, reply.len, false, out, err);
out:
  buffer_free(&reply);
  return rc;
}

enum client_result client_get_me(struct client *client,
                                 struct client_user *out,
                                 struct client_error *err)
{
  struct client_error scratch = {0};
  struct buffer reply = {0};
  enum client_result rc;

  if (!err)
    err = &scratch;
  memset(out, 0, sizeof(*out));
  rc = api_request(client, "GET", "/users/me", "opt_fields=name", NULL, NULL,
                   &reply, err);
  if (rc != CLIENT_OK)
    goto out;
  rc = client_decode_user(reply.data, reply.len, out, err);
out:
  buffer_free(&reply);
  return rc;
}

enum client_result client_decode_user(const char *body, size_t len,
                                      struct client_user *out,
                                      struct client_error *err)
{
  json_t *root, *data;
  const char *name;
  enum client_result rc = CLIENT_OK;

  memset(out, 0, sizeof(*out));
  root = load_reply(body, len, "GET /users/me", err);
  if (!root)
    return CLIENT_ERR_REPLY;
  data = json_object_get(root, "data");
  if (!copy_gid(json_object_get(data, "gid"), out->gid)) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status, "the GET /users/me "
                 "reply has no user gid");
    memset(out, 0, sizeof(*out));
    goto out;
  }
  name = json_string_value(json_object_get(data, "name"));
  snprintf(out->name, sizeof(out->name), "%s", name ? name : "");
out:
  json_decref(root);
  return rc;
}

/* ---- Storage transfers ---- */

/* Fetches the export record within LIMIT (see budget_start()) and returns
 * its fresh download URL in *URL. */
static enum client_result fetch_download_url(struct client *c,
                                             const char *export_gid,
                                             const struct call_limit *limit,
                                             char **url,
                                             struct client_error *err)
{
  struct client_export record = {0};
  char what[64];
  enum client_result rc;

  *url = NULL;
  rc = get_export(c, export_gid, true, limit, &record, err);
  if (rc != CLIENT_OK)
    goto out;
  if (record.state != CLIENT_EXPORT_FINISHED) {
    rc = err_set(err, CLIENT_ERR_HTTP, err->status,
                 "export %s is not finished (state %s)", export_gid,
                 client_export_state_name(record.state));
    goto out;
  }
  if (!record.download_url) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status,
                 "export %s is finished but its record has no download_url",
                 export_gid);
    goto out;
  }
  snprintf(what, sizeof(what), "the download URL of export %s", export_gid);
  rc = check_url(record.download_url, what, CLIENT_ERR_REPLY, NULL, err);
  if (rc != CLIENT_OK)
    goto out;
  /* libcurl would send user info in a URL as an Authorization header, and
   * storage hosts get none. Presigned URLs carry their signature in the
   * query instead. */
  if (url_has_user_info(record.download_url)) {
    rc = err_set(err, CLIENT_ERR_REPLY, err->status, "%s contains user info, "
                 "which asanafs does not send to a storage host", what);
    goto out;
  }
  *url = record.download_url;
  record.download_url = NULL;
out:
  client_export_clear(&record);
  return rc;
}

static void free_secret(char **secret)
{
  if (*secret) {
    explicit_bzero(*secret, strlen(*secret));
    free(*secret);
    *secret = NULL;
  }
}

/* Replaces *URL by a fresh one after a 403 or 410 from the storage host. */
static enum client_result refresh_url(struct client *c, const char *export_gid,
                                      const struct call_limit *limit,
                                      struct transfer *t, const struct budget *b,
                                      char **url, struct client_error *err)
{
  log_warn("%s: the storage host %s returned %ld, so a fresh download URL is "
           "fetched (attempt %d of %d)", t->label, t->host, t->status,
           b->attempts + 1, b->max_attempts);
  free_secret(url);
  t->url = NULL;
  if (fetch_download_url(c, export_gid, limit, url, err) != CLIENT_OK)
    return err->result;
  t->url = *url;
  return CLIENT_OK;
}

static bool storage_rejected_url(const struct transfer *t)
{
  return t->code == CURLE_OK && (t->status == 403 || t->status == 410);
}

/* Progress of a reply to "Range: bytes=-8" for the archive tail. */
struct tail_state {
  bool started;
  bool ranged;              /* a 206 with a valid Content-Range */
  uint64_t first, last, total;
  uint64_t count;           /* body bytes received */
  unsigned char bytes[8];   /* the last min(count, 8) body bytes */
  char problem[256];        /* set when the reply breaks the Range contract */
};

static bool tail_begin(struct tail_state *s, const struct transfer *t)
{
  bool valid;

  s->started = true;
  if (t->headers.status != 206)
    return true;
  valid = parse_content_range(t->headers.content_range, &s->first, &s->last,
                              &s->total);
  if (valid && archive_size_too_large(s->total)) {
    snprintf(s->problem, sizeof(s->problem), "the storage host reported an "
             "archive size of %" PRIu64 " bytes for %s, more than the limit "
             "of %" PRIu64 " bytes", s->total, t->label, ARCHIVE_SIZE_MAX);
    return false;
  }
  if (!valid || s->total == SIZE_UNKNOWN || s->last + 1 != s->total) {
    snprintf(s->problem, sizeof(s->problem), "the storage host sent an invalid "
             "Content-Range \"%.60s\" for %s", t->headers.content_range,
             t->label);
    return false;
  }
  s->ranged = true;
  return true;
}

static bool tail_on_body(struct transfer *t, const char *data, size_t len)
{
  struct tail_state *s = t->ctx;
  size_t keep;

  if (!s->started && !tail_begin(s, t))
    return false;
  if (s->ranged && len > s->last - s->first + 1 - s->count) {
    snprintf(s->problem, sizeof(s->problem), "the storage host sent more "
             "bytes than its Content-Range announced for %s", t->label);
    return false;
  }
  s->count += len;
  keep = len < 8 ? len : 8;
  memmove(s->bytes, s->bytes + keep, 8 - keep);
  memcpy(s->bytes + 8 - keep, data + len - keep, keep);
  return true;
}

/*
 * When the storage host ignores Range and replies 200, the whole archive
 * streams through tail_on_body(), which keeps only the last 8 bytes.
 * NOTE: such a host can size only an archive that streams within
 * max_call_s, because tail attempts end when the call's budget does.
 */
static enum client_result tail_finish(const struct tail_state *s,
                                      const struct transfer *t,
                                      uint64_t *archive_size,
                                      unsigned char trailer[8],
                                      struct client_error *err)
{
  uint64_t size = s->ranged ? s->total : s->count;

  if (t->headers.status == 206 && !s->ranged)
    return err_set(err, CLIENT_ERR_REPLY, t->status, "the storage host sent "
                   "206 without a Content-Range for %s", t->label);
  if (s->ranged && s->first + s->count != s->total)
    return err_set(err, CLIENT_ERR_REPLY, t->status, "the storage host sent "
                   "fewer bytes than its Content-Range announced for %s",
                   t->label);
  if (size < 8 || s->count < 8)
    return err_set(err, CLIENT_ERR_REPLY, t->status, "%s found only %" PRIu64
                   " bytes, too few for a gzip trailer", t->label,
                   s->ranged ? s->count : size);
  if (archive_size_too_large(size))
    return err_set(err, CLIENT_ERR_REPLY, t->status, "the storage host sent "
                   "an archive of %" PRIu64 " bytes for %s, more than the "
                   "limit of %" PRIu64 " bytes", size, t->label,
                   ARCHIVE_SIZE_MAX);
  *archive_size = size;
  memcpy(trailer, s->bytes, 8);
  err_ok(err, t->status);
  return CLIENT_OK;
}

/* Decides what follows a failed tail attempt: a retry (CLIENT_OK) or the
 * final error. */
static enum client_result tail_judge(struct client *c, const char *export_gid,
                                     const struct call_limit *limit,
                                     struct transfer *t, struct budget *b,
                                     char **url, bool *refreshed,
                                     struct client_error *err)
{
  const struct tail_state *s = t->ctx;

  if (s->problem[0])
    return err_set(err, CLIENT_ERR_REPLY, t->status, "%s", s->problem);
  if (storage_rejected_url(t) && !*refreshed && b->attempts < b->max_attempts) {
    *refreshed = true;
    return refresh_url(c, export_gid, limit, t, b, url, err);
  }
  return retry_or_fail(c, b, t, false, err);
}

/* The first bytes of an archive, collected up to a cap. */
struct head_state {
  unsigned char *buf;
  size_t cap, len;
};

/* Keeps body bytes up to the cap, then stops the transfer: a host that
 * ignores Range sends the whole archive, of which only the head is needed. */
static bool head_on_body(struct transfer *t, const char *data, size_t len)
{
  struct head_state *h = t->ctx;
  size_t n = h->cap - h->len < len ? h->cap - h->len : len;

  memcpy(h->buf + h->len, data, n);
  h->len += n;
  return h->len < h->cap;
}

/* One attempt at the archive's first HEAD->cap bytes with the URL the tail
 * used. It is a hint for the size, so a failure only leaves HEAD empty. */
static void fetch_head(struct client *c, const char *url, const char *gid,
                       struct budget *b, struct head_state *head)
{
  struct client_error err = {0};
  struct transfer t;
  char label[96];

  snprintf(label, sizeof(label), "the archive head of export %.40s", gid);
  transfer_init(&t, c, "GET", NULL, label, false);
  t.url = url;
  t.capped = true;
  t.on_body = head_on_body;
  t.ctx = head;
  snprintf(t.range, sizeof(t.range), "0-%zu", head->cap - 1);
  if (run_attempt(c, &t, b, &err) != CLIENT_OK || !is_2xx(t.status) ||
      (head->len < head->cap && t.code != CURLE_OK)) {
    log_warn("%s failed (%s); its inflated size is taken from the gzip "
             "trailer alone", label, err.message[0] ? err.message : "no data");
    head->len = 0;
  }
  transfer_release(&t);
}

enum client_result client_archive_tail(struct client *client,
                                       const char *export_gid,
                                       uint64_t *archive_size,
                                       unsigned char trailer[8],
                                       struct client_error *err)
{
  return client_archive_probe(client, export_gid, archive_size, trailer, 0,
                              NULL, 0, NULL, err);
}

enum client_result client_archive_probe(struct client *client,
                                        const char *export_gid,
                                        uint64_t *archive_size,
                                        unsigned char trailer[8],
                                        uint64_t head_from, unsigned char *head,
                                        size_t head_cap, size_t *head_len,
                                        struct client_error *err)
{
  struct client_error scratch = {0};
  struct tail_state state;
  struct call_limit limit;
  struct transfer t;
  struct budget b;
  char *url = NULL, label[96];
  bool refreshed = false;
  enum client_result rc;

  if (!err)
    err = &scratch;
  snprintf(label, sizeof(label), "the archive tail of export %.40s",
           export_gid ? export_gid : "");
  transfer_init(&t, client, "GET", NULL, label, false);

  /* One max_call_s budget covers the URL fetches and the tail attempts,
   * and each attempt ends when the budget does, so a FUSE getattr that
   * needs the size cannot hang on a slow storage host. */
  limit = call_limit_start(client->max_call_s);
  t.capped = true;
  rc = check_gid_argument(export_gid, "export", err);
  if (rc == CLIENT_OK)
    rc = fetch_download_url(client, export_gid, &limit, &url, err);
  if (rc != CLIENT_OK)
    goto out;
  t.url = url;
  t.on_body = tail_on_body;
  t.ctx = &state;
  snprintf(t.range, sizeof(t.range), "-8");
  budget_start(&b, client, &limit);
  do {
    memset(&state, 0, sizeof(state));
    rc = run_attempt(client, &t, &b, err);
    if (rc == CLIENT_OK && transfer_succeeded(&t) && !state.problem[0]) {
      rc = tail_finish(&state, &t, archive_size, trailer, err);
      break;
    }
    if (rc == CLIENT_OK)
      rc = tail_judge(client, export_gid, &limit, &t, &b, &url, &refreshed,
                      err);
  } while (rc == CLIENT_OK);
  if (head_len)
    *head_len = 0;
  if (rc == CLIENT_OK && head && head_cap > 0 && head_len &&
      *archive_size >= head_from) {
    struct head_state h = { head, head_cap, 0 };

    fetch_head(client, url, export_gid, &b, &h);
    *head_len = h.len;
  }
out:
  transfer_release(&t);
  free_secret(&url);
  return rc;
}

/* A download in progress. NEXT, TOTAL and ETAG persist across attempts. */
struct download_state {
  const char *export_gid;
  client_sink_fn sink;
  void *ctx;
  uint64_t next;            /* archive offset of the next byte the sink needs */
  uint64_t total;           /* archive size, SIZE_UNKNOWN until a reply gives it */
  char etag[HEADER_VALUE_MAX]; /* of the first reply that sent one */

  /* Reset for each attempt: */
  bool started;             /* the 2xx body began */
  bool sink_stopped;
  uint64_t pos;             /* archive offset of the next byte of the body */
  char problem[256];        /* set when the reply breaks the contract */
};

__attribute__((format(printf, 2, 3)))
static bool download_problem(struct download_state *d, const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(d->problem, sizeof(d->problem), fmt, ap);
  va_end(ap);
  return false;
}

/* Checks that this reply serves the same archive as the earlier ones. */
static bool download_check_archive(struct download_state *d,
                                   const struct transfer *t, uint64_t size)
{
  const char *etag = t->headers.etag;

  if (archive_size_too_large(size))
    return download_problem(d, "the storage host reported an archive size of "
                            "%" PRIu64 " bytes for export %s, more than the "
                            "limit of %" PRIu64 " bytes", size, d->export_gid,
                            ARCHIVE_SIZE_MAX);
  if (size != SIZE_UNKNOWN && d->total != SIZE_UNKNOWN && size != d->total)
    return download_problem(d, "the archive of export %s changed during the "
                            "download: its size was %" PRIu64 " bytes and is "
                            "now %" PRIu64, d->export_gid, d->total, size);
  if (etag[0] && d->etag[0] && strcmp(etag, d->etag) != 0)
    return download_problem(d, "the archive of export %s changed during the "
                            "download: its ETag changed", d->export_gid);
  if (size != SIZE_UNKNOWN)
    d->total = size;
  if (etag[0] && !d->etag[0])
    memcpy(d->etag, etag, strlen(etag) + 1);
  if (d->total != SIZE_UNKNOWN && d->next > d->total)
    return download_problem(d, "offset %" PRIu64 " is past the end of the "
                            "archive of export %s (%" PRIu64 " bytes)", d->next,
                            d->export_gid, d->total);
  return true;
}

/* Learns where the 2xx body of this attempt starts in the archive. */
static bool download_begin(struct download_state *d, const struct transfer *t)
{
  uint64_t first = 0, last, size = SIZE_UNKNOWN;
  const char *length = t->headers.content_length;

  d->started = true;
  if (t->headers.status == 206) {
    if (!parse_content_range(t->headers.content_range, &first, &last, &size))
      return download_problem(d, "the storage host sent an invalid "
                              "Content-Range \"%.60s\" for export %s",
                              t->headers.content_range, d->export_gid);
    if (first > d->next)
      return download_problem(d, "the storage host answered a request for "
                              "export %s from byte %" PRIu64 " with bytes from "
                              "%" PRIu64, d->export_gid, d->next, first);
  } else {
    if (!parse_u64(&length, &size) || *length != '\0')
      size = SIZE_UNKNOWN;
    if (d->next > 0)
      log_debug("%s: the storage host ignored Range; skipping %" PRIu64
                " bytes", t->label, d->next);
  }
  d->pos = first;
  return download_check_archive(d, t, size);
}

static bool download_on_body(struct transfer *t, const char *data, size_t len)
{
  struct download_state *d = t->ctx;
  size_t skip = 0;

  if (!d->started && !download_begin(d, t))
    return false;
  if (d->total != SIZE_UNKNOWN && len > d->total - d->pos)
    return download_problem(d, "the storage host sent more bytes than the "
                            "%" PRIu64 "-byte archive of export %s", d->total,
                            d->export_gid);
  if (d->pos < d->next)
    skip = d->next - d->pos < len ? (size_t)(d->next - d->pos) : len;
  if (len > skip && d->sink(d->ctx, data + skip, len - skip) != 0) {
    d->sink_stopped = true;
    return false;
  }
  d->next += len - skip;
  d->pos += len;
  return true;
}

/* Tells the sink of a pause in the body, so that it passes on what it
 * holds. */
static bool download_on_pause(struct transfer *t)
{
  struct download_state *d = t->ctx;

  if (!d->started || d->sink_stopped)
    return true;
  if (d->sink(d->ctx, NULL, 0) != 0) {
    d->sink_stopped = true;
    return false;
  }
  return true;
}

/* Handles a 416 reply, which ends the download when the archive ends
 * exactly at d->next. */
static enum client_result download_unsatisfiable(struct download_state *d,
                                                 const struct transfer *t,
                                                 const struct budget *b,
                                                 bool *done,
                                                 struct client_error *err)
{
  uint64_t size = SIZE_UNKNOWN;

  parse_unsatisfied_range(t->headers.content_range, &size);
  if (archive_size_too_large(size))
    return err_set(err, CLIENT_ERR_REPLY, t->status, "the storage host "
                   "reported an archive size of %" PRIu64 " bytes for export "
                   "%s, more than the limit of %" PRIu64 " bytes", size,
                   d->export_gid, ARCHIVE_SIZE_MAX);
  if (size == SIZE_UNKNOWN)
    size = d->total;
  if (size != SIZE_UNKNOWN && size == d->next &&
      (d->total == SIZE_UNKNOWN || d->total == size)) {
    *done = true;
    err_ok(err, t->status);
    return CLIENT_OK;
  }
  if (size != SIZE_UNKNOWN && size < d->next)
    return err_set(err, CLIENT_ERR_HTTP, t->status, "offset %" PRIu64 " is "
                   "past the end of the archive of export %s (%" PRIu64
                   " bytes)", d->next, d->export_gid, size);
  return fail_transfer(t, b, err);
}

/* Handles a clean 2xx reply. The download is done at the archive's end,
 * else the next attempt requests the rest. */
static enum client_result download_reply_ended(struct download_state *d,
                                               const struct transfer *t,
                                               const struct budget *b,
                                               bool progressed, bool *done,
                                               struct client_error *err)
{
  if (!d->started && !download_begin(d, t))
    return err_set(err, CLIENT_ERR_REPLY, t->status, "%s", d->problem);
  if (d->total == SIZE_UNKNOWN || d->next >= d->total) {
    *done = true;
    err_ok(err, t->status);
    return CLIENT_OK;
  }
  if (progressed || b->attempts < b->max_attempts)
    return CLIENT_OK;
  return err_set(err, CLIENT_ERR_REPLY, t->status, "the storage host keeps "
                 "ending its replies before byte %" PRIu64 " of the %" PRIu64
                 "-byte archive of export %s", d->next, d->total,
                 d->export_gid);
}

/* Decides what follows one download attempt. */
static enum client_result download_judge(struct client *c,
                                         struct download_state *d,
                                         struct transfer *t, struct budget *b,
                                         char **url, bool progressed,
                                         bool *done, struct client_error *err)
{
  if (d->problem[0])
    return err_set(err, CLIENT_ERR_REPLY, t->status, "%s", d->problem);
  if (d->sink_stopped)
    return err_set(err, CLIENT_ERR_CANCELLED, t->status, "the reader stopped "
                   "the download of export %s", d->export_gid);
  if (transfer_succeeded(t))
    return download_reply_ended(d, t, b, progressed, done, err);
  if (t->code == CURLE_OK && t->status == 416)
    return download_unsatisfiable(d, t, b, done, err);
  if (storage_rejected_url(t)) {
    if (b->attempts >= b->max_attempts)
      return fail_transfer(t, b, err);
    return refresh_url(c, d->export_gid, NULL, t, b, url, err);
  }
  return retry_or_fail(c, b, t, false, err);
}

/* Runs one download attempt from d->next and judges it. */
static enum client_result download_step(struct client *c,
                                        struct download_state *d,
                                        struct transfer *t, struct budget *b,
                                        char **url, bool *done,
                                        struct client_error *err)
{
  uint64_t before = d->next;
  enum client_result rc;

  d->started = false;
  d->sink_stopped = false;
  d->problem[0] = '\0';
  t->range[0] = '\0';
  if (d->next > 0)
    snprintf(t->range, sizeof(t->range), "%" PRIu64 "-", d->next);
  rc = run_attempt(c, t, b, err);
  if (rc != CLIENT_OK)
    return rc;

  /* Progress restarts the budget; this attempt counts as its first. */
  if (d->next > before) {
    budget_start(b, c, NULL);
    b->attempts = 1;
  }
  return download_judge(c, d, t, b, url, d->next > before, done, err);
}

enum client_result client_download_archive(struct client *client,
                                           const char *export_gid,
                                           uint64_t offset,
                                           client_sink_fn sink, void *ctx,
                                           struct client_error *err)
{
  struct client_error scratch = {0};
  struct download_state state = {
    .export_gid = export_gid, .sink = sink, .ctx = ctx, .next = offset,
    .total = SIZE_UNKNOWN,
  };
  struct transfer t;
  struct budget b;
  char *url = NULL, label[96];
  bool done = false;
  enum client_result rc;

  if (!err)
    err = &scratch;
  snprintf(label, sizeof(label), "the download of export %.40s",
           export_gid ? export_gid : "");
  transfer_init(&t, client, "GET", NULL, label, false);
  rc = check_gid_argument(export_gid, "export", err);
  if (rc == CLIENT_OK)
    rc = fetch_download_url(client, export_gid, NULL, &url, err);
  if (rc != CLIENT_OK)
    goto out;
  t.url = url;
  t.on_body = download_on_body;
  t.on_pause = download_on_pause;
  t.ctx = &state;
  budget_start(&b, client, NULL);
  while (rc == CLIENT_OK && !done)
    rc = download_step(client, &state, &t, &b, &url, &done, err);
out:
  transfer_release(&t);
  free_secret(&url);
  return rc;
}

/* ---- Creating and freeing a client ---- */

static enum client_result check_config(const struct client_config *config,
                                       struct client_error *err)
{
  const char *token = config->token;
  size_t len = token ? strlen(token) : 0;

  if (len == 0)
    return err_set(err, CLIENT_ERR_CONFIG, 0, "the Asana token is missing");
  if (len > TOKEN_MAX)
    return err_set(err, CLIENT_ERR_CONFIG, 0, "the Asana token is longer "
                   "than %d characters", TOKEN_MAX);
  for (size_t i = 0; i < len; i++) {
    if (token[i] <= ' ' || token[i] == 0x7f)
      return err_set(err, CLIENT_ERR_CONFIG, 0, "the Asana token contains a "
                     "space or control character");
  }
  if (config->connect_timeout_s < 0 || config->low_speed_time_s < 0 ||
      config->max_attempts < 0 || !(config->max_call_s >= 0) ||
      !(config->max_backoff_s >= 0))
    return err_set(err, CLIENT_ERR_CONFIG, 0, "client timeouts, attempts and "
                   "delays must not be negative");
  return CLIENT_OK;
}

static void apply_config(struct client *c, const struct client_config *config)
{
  c->connect_timeout_s = config->connect_timeout_s ? config->connect_timeout_s
                                                   : DEFAULT_CONNECT_TIMEOUT_S;
  c->low_speed_time_s = config->low_speed_time_s ? config->low_speed_time_s
                                                 : DEFAULT_LOW_SPEED_TIME_S;
  c->max_attempts = config->max_attempts ? config->max_attempts
                                         : DEFAULT_MAX_ATTEMPTS;
  c->max_call_s = config->max_call_s > 0 ? config->max_call_s
                                         : DEFAULT_MAX_CALL_S;
  c->max_backoff_s = config->max_backoff_s > 0 ? config->max_backoff_s
                                               : DEFAULT_MAX_BACKOFF_S;
  c->max_body = config->max_body ? config->max_body : DEFAULT_MAX_BODY;
}

static bool init_sync(struct client *c)
{
  pthread_condattr_t attr;
  bool ok;

  if (pthread_condattr_init(&attr) != 0)
    return false;
  ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
       pthread_cond_init(&c->wake, &attr) == 0;
  pthread_condattr_destroy(&attr);
  if (ok && pthread_mutex_init(&c->lock, NULL) != 0) {
    pthread_cond_destroy(&c->wake);
    ok = false;
  }
  return ok;
}

enum client_result client_new(const struct client_config *config,
                              struct client **out, struct client_error *err)
{
  struct client_error scratch = {0};
  struct client *c = NULL;
  enum client_result rc;

  if (!err)
    err = &scratch;
  *out = NULL;
  pthread_once(&global_once, global_init_once);
  if (global_result != CURLE_OK)
    return err_set(err, CLIENT_ERR_NOMEM, 0, "libcurl failed to initialize: %s",
                   curl_easy_strerror(global_result));
  if (!config)
    return err_set(err, CLIENT_ERR_CONFIG, 0, "the client configuration is "
                   "missing");
  rc = check_config(config, err);
  if (rc != CLIENT_OK)
    goto out;
  c = calloc(1, sizeof(*c));
  if (!c || !(c->sync_ready = init_sync(c))) {
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
    goto out;
  }
  apply_config(c, config);
  rc = set_api_url(c, config->api_url, err);
  if (rc != CLIENT_OK)
    goto out;
  if (asprintf(&c->auth_header, "Authorization: Bearer %s", config->token) < 0) {
    c->auth_header = NULL;
    rc = err_set(err, CLIENT_ERR_NOMEM, 0, "out of memory");
    goto out;
  }
  log_add_secret(config->token);
  err_ok(err, 0);
  *out = c;
  c = NULL;
out:
  client_free(c);
  return rc;
}

void client_shutdown(struct client *client)
{
  if (!client)
    return;
  pthread_mutex_lock(&client->lock);
  atomic_store(&client->stopping, true);
  pthread_cond_broadcast(&client->wake);
  pthread_mutex_unlock(&client->lock);
}

void client_free(struct client *client)
{
  if (!client)
    return;
  free_secret(&client->auth_header);
  free(client->api_url);
  if (client->sync_ready) {
    pthread_cond_destroy(&client->wake);
    pthread_mutex_destroy(&client->lock);
  }
  free(client);
}
