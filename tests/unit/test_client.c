/*
 * Unit tests of client/: the pure functions, then real HTTP against small
 * servers that this program runs on loopback (127.0.0.1 for the API,
 * 127.0.0.2 for the storage host). Each server replies to one request per
 * connection from a script or a handler and records what it received.
 *
 * Failed checks print file:line and the expression; the exit status is
 * non-zero when any check failed. The client's log goes to a temporary file,
 * which the last test scans for secrets.
 */
#include "client.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

static int check_failures;

#define CHECK(expr)                                                   \
  do {                                                                \
    if (!(expr)) {                                                    \
      check_failures++;                                               \
      printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr); \
    }                                                                 \
  } while (0)

/* Checks a call's result and prints the client's message when it differs. */
#define CHECK_RESULT(rc, expected, err)                                     \
  do {                                                                      \
    if ((rc) != (expected)) {                                               \
      check_failures++;                                                     \
      printf("%s:%d: CHECK failed: %s == %s (got %d, status %ld: %s)\n",    \
             __FILE__, __LINE__, #rc, #expected, (int)(rc), (err).status,   \
             (err).message);                                                \
    }                                                                       \
  } while (0)

#define TOKEN "0/test-token-5f1d"

static double now_s(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

  nanosleep(&ts, NULL);
}

/* ---- Loopback HTTP server ---- */

#define MAX_REQUESTS 32

struct request {
  char line[512];       /* "GET /path?query HTTP/1.1" */
  char headers[4096];   /* header lines as received */
  char body[1024];
};

struct server;
typedef void (*handler_fn)(struct server *s, int index,
                           const struct request *req, int fd);

/* A canned reply; HEADERS are extra lines, each ending in "\r\n". */
struct canned {
  int status;
  const char *headers;
  const char *body;
};

struct server {
  int listen_fd;
  int port;
  char base[64];        /* "http://HOST:PORT" */
  pthread_t thread;
  atomic_bool stop;
  pthread_mutex_t lock;
  struct request requests[MAX_REQUESTS]; /* guarded by lock */
  int count;                             /* guarded by lock */
  atomic_int accepted;  /* connections accepted */
  handler_fn handler;   /* used when set, else script */
  const struct canned *script;  /* request i gets entry min(i, len - 1) */
  int script_len;
  void *ctx;
};

static bool write_all(int fd, const void *data, size_t len)
{
  const char *p = data;

  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

static const char *reason_of(int status)
{
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 206: return "Partial Content";
  case 302: return "Found";
  case 400: return "Bad Request";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 416: return "Range Not Satisfiable";
  case 429: return "Too Many Requests";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  default: return "Status";
  }
}

static void send_head(int fd, int status, size_t length, const char *headers)
{
  char head[1024];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n%s\r\n",
                   status, reason_of(status), length, headers ? headers : "");

  write_all(fd, head, (size_t)n);
}

static void send_reply(int fd, int status, const char *headers, const char *body)
{
  size_t len = body ? strlen(body) : 0;

  send_head(fd, status, len, headers);
  write_all(fd, body, len);
}

/* Waits up to MS milliseconds for FD to be readable; false on timeout. */
static bool wait_readable(int fd, int ms)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };

  return poll(&p, 1, ms) > 0;
}

static size_t content_length_of(const char *headers)
{
  const char *p = strcasestr(headers, "\r\nContent-Length:");

  return p ? strtoul(p + 17, NULL, 10) : 0;
}

static bool read_request(int fd, struct request *req)
{
  char buf[8192];
  size_t len = 0, want;
  char *end = NULL, *eol;

  memset(req, 0, sizeof(*req));
  while (!end && len < sizeof(buf) - 1 && wait_readable(fd, 5000)) {
    ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);

    if (n <= 0)
      return false;
    len += (size_t)n;
    buf[len] = '\0';
    end = strstr(buf, "\r\n\r\n");
  }
  if (!end)
    return false;
  eol = strstr(buf, "\r\n");
  snprintf(req->line, sizeof(req->line), "%.*s", (int)(eol - buf), buf);
  snprintf(req->headers, sizeof(req->headers), "%.*s", (int)(end + 2 - eol), eol);
  want = content_length_of(req->headers);
  len -= (size_t)(end + 4 - buf);
  memmove(buf, end + 4, len);
  while (len < want && len < sizeof(req->body) - 1 && wait_readable(fd, 5000)) {
    ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);

    if (n <= 0)
      break;
    len += (size_t)n;
  }
  snprintf(req->body, sizeof(req->body), "%.*s", (int)len, buf);
  return true;
}

/* Closes FD after the client has read everything, so no reset cuts data. */
static void finish_connection(int fd)
{
  char sink[4096];

  shutdown(fd, SHUT_WR);
  while (wait_readable(fd, 2000) && recv(fd, sink, sizeof(sink), 0) > 0)
    ;
  close(fd);
}

/* Records REQ and returns its index among the requests of S. */
static int server_record(struct server *s, const struct request *req)
{
  int index;

  pthread_mutex_lock(&s->lock);
  index = s->count;
  if (s->count < MAX_REQUESTS)
    s->requests[s->count++] = *req;
  pthread_mutex_unlock(&s->lock);
  return index;
}

static void serve_one(struct server *s, int fd)
{
  struct request req;
  int index;

  if (!read_request(fd, &req))
    return;
  index = server_record(s, &req);
  if (s->handler) {
    s->handler(s, index, &req, fd);
  } else if (s->script_len > 0) {
    const struct canned *c = &s->script[index < s->script_len ? index
                                                              : s->script_len - 1];

    send_reply(fd, c->status, c->headers, c->body);
  }
}

static void *server_main(void *arg)
{
  struct server *s = arg;

  for (;;) {
    int fd = accept(s->listen_fd, NULL, NULL);

    if (fd < 0) {
      if (errno == EINTR && !atomic_load(&s->stop))
        continue;
      break;
    }
    atomic_fetch_add(&s->accepted, 1);
    serve_one(s, fd);
    finish_connection(fd);
  }
  return NULL;
}

static bool server_start(struct server *s, const char *host)
{
  struct sockaddr_in addr = { .sin_family = AF_INET };
  socklen_t addr_len = sizeof(addr);
  int one = 1;

  pthread_mutex_init(&s->lock, NULL);
  s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  inet_pton(AF_INET, host, &addr.sin_addr);
  setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
      listen(s->listen_fd, 16) != 0 ||
      getsockname(s->listen_fd, (struct sockaddr *)&addr, &addr_len) != 0) {
    perror("test server");
    return false;
  }
  s->port = ntohs(addr.sin_port);
  snprintf(s->base, sizeof(s->base), "http://%s:%d", host, s->port);
  return pthread_create(&s->thread, NULL, server_main, s) == 0;
}

static void server_stop(struct server *s)
{
  atomic_store(&s->stop, true);
  shutdown(s->listen_fd, SHUT_RDWR);
  pthread_join(s->thread, NULL);
  close(s->listen_fd);
  pthread_mutex_destroy(&s->lock);
}

static int server_count(struct server *s)
{
  int count;

  pthread_mutex_lock(&s->lock);
  count = s->count;
  pthread_mutex_unlock(&s->lock);
  return count;
}

/* Returns request INDEX as recorded (the call that made it has returned). */
static const struct request *server_request(struct server *s, int index)
{
  static const struct request none;

  return index < server_count(s) ? &s->requests[index] : &none;
}

/* Copies the value of header NAME of REQ into OUT; "" when absent. */
static const char *header_of(const struct request *req, const char *name,
                             char *out, size_t out_len)
{
  char key[64];
  const char *p, *end;

  snprintf(key, sizeof(key), "\r\n%s:", name);
  out[0] = '\0';
  p = strcasestr(req->headers, key);
  if (!p)
    return out;
  p += strlen(key);
  p += strspn(p, " ");
  end = strstr(p, "\r\n");
  snprintf(out, out_len, "%.*s", (int)(end ? end - p : (long)strlen(p)), p);
  return out;
}

static bool has_header(const struct request *req, const char *name)
{
  char key[64];

  snprintf(key, sizeof(key), "\r\n%s:", name);
  return strcasestr(req->headers, key) != NULL;
}

/* ---- Client helpers ---- */

static struct client_config test_config(const struct server *api, char *url,
                                        size_t url_len)
{
  snprintf(url, url_len, "%s/api/1.0", api->base);
  return (struct client_config){
    .api_url = url,
    .token = TOKEN,
    .connect_timeout_s = 2,
    .low_speed_time_s = 2,
    .max_attempts = 3,
    .max_call_s = 10,
    .max_backoff_s = 0.05,
  };
}

static struct client *new_client(const struct client_config *config)
{
  struct client_error err = {0};
  struct client *c = NULL;
  enum client_result rc = client_new(config, &c, &err);

  CHECK_RESULT(rc, CLIENT_OK, err);
  return c;
}

/* Collects what a download delivers; returns non-zero after STOP_AFTER calls. */
struct sink_buffer {
  unsigned char *data;
  size_t len;
  size_t cap;
  int calls;
  int stop_after;       /* 0 for never */
};

static int sink_append(void *ctx, const void *buf, size_t len)
{
  struct sink_buffer *sink = ctx;

  /* A pause in the data (BUF NULL) adds nothing, and memcpy() may not
   * be passed NULL even for 0 bytes. */
  if (len == 0)
    return 0;
  if (sink->len + len > sink->cap) {
    sink->cap = (sink->len + len) * 2;
    sink->data = realloc(sink->data, sink->cap);
  }
  memcpy(sink->data + sink->len, buf, len);
  sink->len += len;
  sink->calls++;
  return sink->stop_after && sink->calls >= sink->stop_after;
}

/* ---- Pure functions ---- */

static void test_retry_decide(void)
{
  static const struct {
    bool post;
    long status;
    int code;
    bool sent;
    enum client_retry expected;
  } cases[] = {
    { false, 429, CURLE_OK, true, CLIENT_RETRY_AFTER_HEADER },
    { true, 429, CURLE_OK, true, CLIENT_RETRY_AFTER_HEADER },
    { false, 500, CURLE_OK, true, CLIENT_RETRY_BACKOFF },
    { false, 502, CURLE_OK, true, CLIENT_RETRY_BACKOFF },
    { false, 503, CURLE_OK, true, CLIENT_RETRY_BACKOFF },
    { false, 504, CURLE_OK, true, CLIENT_RETRY_BACKOFF },
    { true, 500, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 502, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 503, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 504, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 503, CURLE_OK, false, CLIENT_RETRY_BACKOFF },
    { false, 400, CURLE_OK, true, CLIENT_RETRY_NO },
    { false, 401, CURLE_OK, true, CLIENT_RETRY_NO },
    { false, 403, CURLE_OK, true, CLIENT_RETRY_NO },
    { false, 404, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 400, CURLE_OK, true, CLIENT_RETRY_NO },
    { true, 403, CURLE_OK, true, CLIENT_RETRY_NO },
    { false, 0, CURLE_OPERATION_TIMEDOUT, true, CLIENT_RETRY_BACKOFF },
    { false, 0, CURLE_OPERATION_TIMEDOUT, false, CLIENT_RETRY_BACKOFF },
    { true, 0, CURLE_OPERATION_TIMEDOUT, true, CLIENT_RETRY_NO },
    { true, 0, CURLE_OPERATION_TIMEDOUT, false, CLIENT_RETRY_BACKOFF },
    { false, 0, CURLE_COULDNT_CONNECT, false, CLIENT_RETRY_BACKOFF },
    { true, 0, CURLE_COULDNT_CONNECT, false, CLIENT_RETRY_BACKOFF },
    { true, 0, CURLE_COULDNT_RESOLVE_HOST, false, CLIENT_RETRY_BACKOFF },
    { false, 0, CURLE_GOT_NOTHING, true, CLIENT_RETRY_BACKOFF },
    { true, 0, CURLE_GOT_NOTHING, true, CLIENT_RETRY_NO },
    { false, 0, CURLE_RECV_ERROR, true, CLIENT_RETRY_BACKOFF },
    { false, 0, CURLE_SEND_ERROR, true, CLIENT_RETRY_BACKOFF },
    { false, 200, CURLE_PARTIAL_FILE, true, CLIENT_RETRY_BACKOFF },
    { false, 200, CURLE_OK, true, CLIENT_RETRY_NO },
    { false, 0, CURLE_SSL_CONNECT_ERROR, true, CLIENT_RETRY_NO },
    { false, 0, CURLE_ABORTED_BY_CALLBACK, true, CLIENT_RETRY_NO },
  };

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    enum client_retry got = client_retry_decide(cases[i].post, cases[i].status,
                                                cases[i].code, cases[i].sent);

    if (got != cases[i].expected)
      printf("  case %zu: %s status %ld code %d sent %d gave %d\n", i,
             cases[i].post ? "POST" : "GET", cases[i].status, cases[i].code,
             cases[i].sent, got);
    CHECK(got == cases[i].expected);
  }
}

static void test_backoff_delay(void)
{
  CHECK(client_backoff_delay(1, 8, 0) == 0.25);
  CHECK(client_backoff_delay(1, 8, 0.999) > 0.49);
  CHECK(client_backoff_delay(1, 8, 0.999) <= 0.5);
  CHECK(client_backoff_delay(2, 8, 0) == 0.5);
  CHECK(client_backoff_delay(4, 8, 0) == 2.0);
  CHECK(client_backoff_delay(5, 8, 0) == 4.0);
  CHECK(client_backoff_delay(6, 8, 0) == 4.0);
  CHECK(client_backoff_delay(100000, 8, 0.5) == 6.0);
  CHECK(client_backoff_delay(0, 8, 0) == 0.25);
  CHECK(client_backoff_delay(3, 0, 0.5) == 0);
  CHECK(client_backoff_delay(3, 0.1, 0) == 0.05);
  for (int attempt = 1; attempt <= 64; attempt++) {
    for (double jitter = 0; jitter < 1; jitter += 0.125) {
      double d = client_backoff_delay(attempt, 8, jitter);

      CHECK(d > 0);
      CHECK(d <= 8);
    }
  }
}

static void test_parse_retry_after(void)
{
  CHECK(client_parse_retry_after("3") == 3);
  CHECK(client_parse_retry_after("0") == 0);
  CHECK(client_parse_retry_after(" 7 ") == 7);
  CHECK(client_parse_retry_after("abc") == -1);
  CHECK(client_parse_retry_after("") == -1);
  CHECK(client_parse_retry_after("-1") == -1);
  CHECK(client_parse_retry_after("1.5") == 1.5);
  CHECK(client_parse_retry_after("1.") == -1);
  CHECK(client_parse_retry_after(".5") == -1);
  CHECK(client_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == -1);
  CHECK(client_parse_retry_after("3s") == -1);
  CHECK(client_parse_retry_after(NULL) == -1);
  CHECK(client_parse_retry_after("99999999999999999999999999999999") >= 1e6);
}

static enum client_result decode_page(const char *json,
                                      struct client_workspace_list *list,
                                      char **next, struct client_error *err)
{
  return client_decode_workspaces_page(json, strlen(json), list, next, err);
}

static void test_decode_workspaces_pages(void)
{
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  char *next = NULL;
  enum client_result rc;

  rc = decode_page("{\"data\":[{\"gid\":\"1\",\"name\":\"One\",\"is_organization\":true},"
                   "{\"gid\":\"22\",\"name\":\"Two\",\"is_organization\":false}],"
                   "\"next_page\":{\"offset\":\"abc\",\"path\":\"/workspaces?offset=abc\"}}",
                   &list, &next, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 2);
  CHECK(next != NULL);
  CHECK(next && strcmp(next, "abc") == 0);
  CHECK(strcmp(list.items[0].gid, "1") == 0);
  CHECK(strcmp(list.items[0].name, "One") == 0);
  CHECK(list.items[0].is_organization);
  CHECK(!list.items[1].is_organization);
  CHECK(strcmp(json_string_value(json_object_get(list.items[1].record, "name")),
               "Two") == 0);
  free(next);

  rc = decode_page("{\"data\":[{\"gid\":\"333\",\"name\":\"Three\"}],\"next_page\":null}",
                   &list, &next, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 3);
  CHECK(next == NULL);
  CHECK(strcmp(list.items[2].gid, "333") == 0);

  rc = decode_page("{\"data\":[]}", &list, &next, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 3);
  CHECK(next == NULL);
  client_workspace_list_clear(&list);
  CHECK(list.count == 0);
  CHECK(list.items == NULL);
}

static void test_decode_workspaces_errors(void)
{
  static const char *const invalid[] = {
    "{}",
    "{\"data\":{\"gid\":\"1\"}}",
    "{\"data\":null}",
    "[1,2]",
    "not json",
    "",
    "{\"data\":[{\"name\":\"no gid\"}]}",
    "{\"data\":[{\"gid\":null}]}",
    "{\"data\":[{\"gid\":12345}]}",
    "{\"data\":[{\"gid\":\"\"}]}",
    "{\"data\":[{\"gid\":\"12a\"}]}",
    "{\"data\":[{\"gid\":\"1234567890123456789012345678901234567890\"}]}",
    "{\"data\":[\"1\"]}",
    "{\"data\":[],\"next_page\":\"abc\"}",
    "{\"data\":[],\"next_page\":{}}",
    "{\"data\":[],\"next_page\":{\"offset\":7}}",
  };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  char *next = NULL;

  CHECK(decode_page("{\"data\":[{\"gid\":\"9\"}]}", &list, &next, &err) == CLIENT_OK);
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    enum client_result rc = decode_page(invalid[i], &list, &next, &err);

    if (rc != CLIENT_ERR_REPLY)
      printf("  accepted: %s\n", invalid[i]);
    CHECK(rc == CLIENT_ERR_REPLY);
    CHECK(err.result == CLIENT_ERR_REPLY);
    CHECK(err.message[0] != '\0');
    CHECK(next == NULL);
    CHECK(list.count == 1);
  }
  client_workspace_list_clear(&list);
}

static void test_decode_workspaces_lenient(void)
{
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  char *next = NULL;
  enum client_result rc;

  rc = decode_page("{\"data\":[{\"gid\":\"5\"},{\"gid\":\"6\",\"name\":null,"
                   "\"is_organization\":\"yes\"},{\"gid\":\"7\",\"name\":42,"
                   "\"is_organization\":1}]}", &list, &next, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 3);
  for (size_t i = 0; i < list.count; i++) {
    CHECK(strcmp(list.items[i].name, "") == 0);
    CHECK(!list.items[i].is_organization);
  }
  client_workspace_list_clear(&list);
}

static enum client_result decode_export(const char *json, bool want_url,
                                        struct client_export *out,
                                        struct client_error *err)
{
  return client_decode_export(json, strlen(json), want_url, out, err);
}

#define EXPORT_FULL                                                          \
  "{\"data\":{\"gid\":\"1200\",\"resource_type\":\"organization_export\","   \
  "\"created_at\":\"2012-02-22T02:06:58.147Z\",\"state\":\"finished\","      \
  "\"download_url\":\"https://storage.example/x.json.gz?X-Amz-Signature=s\"," \
  "\"organization\":{\"gid\":\"14916\",\"name\":\"My Org\"}}}"

static void test_decode_export_full(void)
{
  struct client_export ex;
  struct client_error err = {0};
  enum client_result rc = decode_export(EXPORT_FULL, true, &ex, &err);

  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(strcmp(ex.gid, "1200") == 0);
  CHECK(strcmp(ex.org_gid, "14916") == 0);
  CHECK(ex.state == CLIENT_EXPORT_FINISHED);
  CHECK(strcmp(ex.created_at, "2012-02-22T02:06:58.147Z") == 0);
  CHECK(ex.created_time == 1329876418);
  CHECK(ex.download_url != NULL);
  CHECK(ex.download_url && strstr(ex.download_url, "X-Amz-Signature=s"));
  CHECK(json_object_get(ex.record, "download_url") == NULL);
  CHECK(strcmp(json_string_value(json_object_get(ex.record, "state")),
               "finished") == 0);
  client_export_clear(&ex);
  CHECK(ex.record == NULL);
  CHECK(ex.download_url == NULL);
  CHECK(ex.gid[0] == '\0');

  rc = decode_export(EXPORT_FULL, false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(ex.download_url == NULL);
  CHECK(json_object_get(ex.record, "download_url") == NULL);
  client_export_clear(&ex);
}

static void test_decode_export_fields(void)
{
  struct client_export ex;
  struct client_error err = {0};
  enum client_result rc;

  rc = decode_export("{\"data\":{\"gid\":\"7\",\"state\":\"pending\","
                     "\"download_url\":null}}", true, &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(ex.download_url == NULL);
  CHECK(ex.state == CLIENT_EXPORT_PENDING);
  CHECK(ex.org_gid[0] == '\0');
  CHECK(ex.created_at[0] == '\0');
  CHECK(ex.created_time == 0);
  client_export_clear(&ex);

  rc = decode_export("{\"data\":{\"gid\":\"7\",\"state\":\"exploded\","
                     "\"created_at\":\"2012-02-22T02:06:58Z\",\"organization\":null}}",
                     true, &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(ex.state == CLIENT_EXPORT_UNKNOWN);
  CHECK(ex.created_time == 1329876418);
  CHECK(ex.org_gid[0] == '\0');
  client_export_clear(&ex);

  rc = decode_export("{\"data\":{\"gid\":\"7\",\"state\":3,\"created_at\":5,"
                     "\"download_url\":17,\"organization\":\"14916\"}}",
                     true, &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(ex.state == CLIENT_EXPORT_UNKNOWN);
  CHECK(ex.created_at[0] == '\0');
  CHECK(ex.created_time == 0);
  CHECK(ex.download_url == NULL);
  CHECK(ex.org_gid[0] == '\0');
  client_export_clear(&ex);
}

static void test_decode_export_timestamps(void)
{
  static const struct {
    const char *text;
    time_t expected;
  } cases[] = {
    { "2012-02-22T02:06:58Z", 1329876418 },
    { "2012-02-22T02:06:58.147Z", 1329876418 },
    { "2012-02-22T02:06:58.147123456Z", 1329876418 },
    { "2012-02-22T03:06:58+01:00", 1329876418 },
    { "2012-02-21T21:06:58.5-0500", 1329876418 },
    { "2024-02-29T00:00:00Z", 1709164800 },
    { "2023-02-29T00:00:00Z", 0 },
    { "2012-13-01T00:00:00Z", 0 },
    { "2012-02-22T24:00:00Z", 0 },
    { "2012-02-22T02:06:58", 0 },
    { "2012-02-22 02:06:58Z", 0 },
    { "2012-02-22T02:06:58.Z", 0 },
    { "yesterday", 0 },
  };

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char json[256];
    struct client_export ex;
    struct client_error err = {0};
    enum client_result rc;

    snprintf(json, sizeof(json), "{\"data\":{\"gid\":\"1\",\"created_at\":\"%s\"}}",
             cases[i].text);
    rc = decode_export(json, false, &ex, &err);
    CHECK_RESULT(rc, CLIENT_OK, err);
    if (ex.created_time != cases[i].expected)
      printf("  %s gave %lld\n", cases[i].text, (long long)ex.created_time);
    CHECK(ex.created_time == cases[i].expected);
    CHECK(strcmp(ex.created_at, cases[i].text) == 0);
    client_export_clear(&ex);
  }
}

static void test_decode_export_errors(void)
{
  static const char *const invalid[] = {
    "{}",
    "{\"data\":null}",
    "{\"data\":[]}",
    "{\"data\":{}}",
    "{\"data\":{\"gid\":1200}}",
    "{\"data\":{\"gid\":null}}",
    "{\"data\":{\"gid\":\"x1\"}}",
    "{\"data\":{\"gid\":\"1\",\"organization\":{\"gid\":14916}}}",
    "{\"data\":{\"gid\":\"1\"",
  };

  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    struct client_export ex;
    struct client_error err = {0};
    enum client_result rc = decode_export(invalid[i], true, &ex, &err);

    if (rc != CLIENT_ERR_REPLY)
      printf("  accepted: %s\n", invalid[i]);
    CHECK(rc == CLIENT_ERR_REPLY);
    CHECK(err.message[0] != '\0');
    CHECK(ex.record == NULL);
    CHECK(ex.download_url == NULL);
  }
}

static void test_decode_error_message(void)
{
  const char *asana = "{\"errors\":[{\"message\":\"Not a recognized ID: 12\","
                      "\"help\":\"For more information...\"}]}";
  const char *html = "<html><body>Bad gateway</body></html>";
  const char *two_lines = "{\"errors\":[{\"message\":\"two\\nlines\"}]}";
  char message[CLIENT_MESSAGE_MAX], tiny[8];

  client_decode_error_message(asana, strlen(asana), 404, message, sizeof(message));
  CHECK(strcmp(message, "Not a recognized ID: 12") == 0);

  client_decode_error_message(two_lines, strlen(two_lines), 400, message,
                              sizeof(message));
  CHECK(strcmp(message, "two lines") == 0);

  client_decode_error_message(html, strlen(html), 502, message, sizeof(message));
  CHECK(strstr(message, "502") != NULL);
  CHECK(strstr(message, "Bad Gateway") != NULL);

  client_decode_error_message("", 0, 500, message, sizeof(message));
  CHECK(strstr(message, "500") != NULL);
  client_decode_error_message(NULL, 0, 503, message, sizeof(message));
  CHECK(strstr(message, "503") != NULL);

  client_decode_error_message(asana, strlen(asana), 404, tiny, sizeof(tiny));
  CHECK(strlen(tiny) == sizeof(tiny) - 1);
}

static void test_error_errno(void)
{
  static const struct {
    enum client_result result;
    long status;
    int expected;
  } cases[] = {
    { CLIENT_OK, 200, 0 },
    { CLIENT_ERR_HTTP, 400, EINVAL },
    { CLIENT_ERR_HTTP, 401, EACCES },
    { CLIENT_ERR_HTTP, 402, EACCES },
    { CLIENT_ERR_HTTP, 403, EACCES },
    { CLIENT_ERR_HTTP, 404, ENOENT },
    { CLIENT_ERR_HTTP, 500, EIO },
    { CLIENT_ERR_HTTP, 451, EIO },
    { CLIENT_ERR_RATE_LIMITED, 429, EAGAIN },
    { CLIENT_ERR_NETWORK, 0, EIO },
    { CLIENT_ERR_REPLY, 200, EIO },
    { CLIENT_ERR_CONFIG, 0, EIO },
    { CLIENT_ERR_NOMEM, 0, ENOMEM },
    { CLIENT_ERR_CANCELLED, 0, ECANCELED },
  };

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct client_error err = { .result = cases[i].result, .status = cases[i].status };

    snprintf(err.message, sizeof(err.message), "could not connect");
    CHECK(client_error_errno(&err) == cases[i].expected);
  }
  CHECK(client_error_errno(NULL) == EIO);
}

static void test_state_names(void)
{
  CHECK(strcmp(client_export_state_name(CLIENT_EXPORT_PENDING), "pending") == 0);
  CHECK(strcmp(client_export_state_name(CLIENT_EXPORT_STARTED), "started") == 0);
  CHECK(strcmp(client_export_state_name(CLIENT_EXPORT_FINISHED), "finished") == 0);
  CHECK(strcmp(client_export_state_name(CLIENT_EXPORT_ERROR), "error") == 0);
  CHECK(strcmp(client_export_state_name(CLIENT_EXPORT_UNKNOWN), "unknown") == 0);
}

/* ---- client_new ---- */

static enum client_result try_new(const char *url, const char *token,
                                  struct client_error *err)
{
  struct client_config config = { .api_url = url, .token = token };
  struct client *c = NULL;
  enum client_result rc = client_new(&config, &c, err);

  CHECK((rc == CLIENT_OK) == (c != NULL));
  client_free(c);
  return rc;
}

static void test_client_new_urls(void)
{
  static const char *const accepted[] = {
    "http://127.0.0.1:1/api/1.0", "http://127.1.2.3/api", "http://localhost:8080",
    "http://[::1]:8080/api/1.0/", "https://app.asana.com/api/1.0",
    "HTTPS://app.asana.com/api/1.0",
  };
  static const char *const rejected[] = {
    "http://example.com/api/1.0", "http://128.0.0.1/", "http://10.0.0.1/",
    "http://[::2]/", "http://localhost.example.com/", "ftp://127.0.0.1/",
    "file:///etc/passwd", "not a url", "", "https://app.asana.com/api?x=1",
    "https://user:pw@app.asana.com/api",
  };
  struct client_error err = {0};

  for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
    enum client_result rc = try_new(accepted[i], TOKEN, &err);

    CHECK_RESULT(rc, CLIENT_OK, err);
  }
  for (size_t i = 0; i < sizeof(rejected) / sizeof(rejected[0]); i++) {
    enum client_result rc = try_new(rejected[i], TOKEN, &err);

    if (rc != CLIENT_ERR_CONFIG)
      printf("  accepted: %s\n", rejected[i]);
    CHECK(rc == CLIENT_ERR_CONFIG);
    CHECK(err.message[0] != '\0');
  }
  try_new("http://example.com/api/1.0", TOKEN, &err);
  CHECK(strstr(err.message, "plain http") != NULL);
  CHECK(strstr(err.message, "example.com") != NULL);
}

static void test_client_new_config(void)
{
  struct client_config config = { .api_url = "https://app.asana.com/api/1.0",
                                   .token = TOKEN, .connect_timeout_s = -1 };
  struct client_error err = {0};
  struct client *c = NULL;

  CHECK(try_new("https://app.asana.com/api/1.0", NULL, &err) == CLIENT_ERR_CONFIG);
  CHECK(try_new("https://app.asana.com/api/1.0", "", &err) == CLIENT_ERR_CONFIG);
  CHECK(try_new("https://app.asana.com/api/1.0", "abc\r\nX-Evil: 1", &err) ==
        CLIENT_ERR_CONFIG);
  CHECK(strstr(err.message, "abc") == NULL);
  CHECK(client_new(&config, &c, &err) == CLIENT_ERR_CONFIG);
  CHECK(c == NULL);
  CHECK(client_new(NULL, &c, &err) == CLIENT_ERR_CONFIG);
}

/* ---- API calls over loopback ---- */

struct pages_ctx {
  bool expire_once;     /* return 400 to the first request for page 2 */
  bool expired;
};

/* Serves 3 pages of 100, 100 and 50 workspaces; offsets need URL encoding. */
static void pages_handler(struct server *s, int index, const struct request *req,
                          int fd)
{
  static const char *const tokens[] = { NULL, "tok/1+=", "tok2" };
  static const char *const encoded[] = { NULL, "offset=tok%2F1%2B%3D", "offset=tok2" };
  struct pages_ctx *ctx = s->ctx;
  int page = 0, items;
  char *body = malloc(65536);
  size_t len = 0;

  if (!body)
    return;
  for (int p = 1; p < 3; p++)
    if (strstr(req->line, encoded[p]))
      page = p;
  if (page == 2 && ctx && ctx->expire_once && !ctx->expired) {
    ctx->expired = true;
    send_reply(fd, 400, NULL, "{\"errors\":[{\"message\":\"offset: Your pagination "
               "token has expired.\"}]}");
    free(body);
    return;
  }
  items = page == 2 ? 50 : 100;
  len += (size_t)sprintf(body + len, "{\"data\":[");
  for (int i = 0; i < items; i++)
    len += (size_t)sprintf(body + len, "%s{\"gid\":\"%d\",\"resource_type\":"
                           "\"workspace\",\"name\":\"W%d\",\"is_organization\":%s}",
                           i ? "," : "", page * 100 + i + 1, page * 100 + i + 1,
                           i % 2 ? "true" : "false");
  if (page < 2)
    sprintf(body + len, "],\"next_page\":{\"offset\":\"%s\",\"path\":\"/x\"}}",
            tokens[page + 1]);
  else
    sprintf(body + len, "],\"next_page\":null}");
  send_reply(fd, 200, "Asana-Change: name=new_feature;info=https://asana.com\r\n",
             body);
  free(body);
}

static void test_paging_three_pages(void)
{
  struct server api = { .handler = pages_handler };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96], value[256];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_list_workspaces(c, &list, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 250);
  for (size_t i = 0; i < list.count; i++) {
    char gid[24];

    snprintf(gid, sizeof(gid), "%zu", i + 1);
    CHECK(strcmp(list.items[i].gid, gid) == 0);
  }
  CHECK(list.count < 2 || list.items[1].is_organization);
  CHECK(list.count < 1 || !list.items[0].is_organization);
  CHECK(server_count(&api) == 3);
  for (int i = 0; i < 3; i++) {
    const struct request *req = server_request(&api, i);

    CHECK(strncmp(req->line, "GET /api/1.0/workspaces?", 24) == 0);
    CHECK(strstr(req->line, "limit=100") != NULL);
    CHECK(strstr(req->line, "opt_fields=name,is_organization") != NULL);
    CHECK(strcmp(header_of(req, "Authorization", value, sizeof(value)),
                 "Bearer " TOKEN) == 0);
    CHECK(strcmp(header_of(req, "Accept", value, sizeof(value)),
                 "application/json") == 0);
  }
  CHECK(strstr(server_request(&api, 0)->line, "offset=") == NULL);
  CHECK(strstr(server_request(&api, 1)->line, "&offset=tok%2F1%2B%3D ") != NULL);
  CHECK(strstr(server_request(&api, 2)->line, "&offset=tok2 ") != NULL);
  client_workspace_list_clear(&list);
  client_free(c);
  server_stop(&api);
}

static void test_paging_expired_offset(void)
{
  struct pages_ctx ctx = { .expire_once = true };
  struct server api = { .handler = pages_handler, .ctx = &ctx };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_list_workspaces(c, &list, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(list.count == 250);
  CHECK(server_count(&api) == 6);
  CHECK(strstr(server_request(&api, 3)->line, "offset=") == NULL);
  client_workspace_list_clear(&list);
  client_free(c);
  server_stop(&api);
}

/* Replies to every page with one workspace and the same next_page offset. */
static void same_offset_handler(struct server *s, int index,
                                const struct request *req, int fd)
{
  send_reply(fd, 200, NULL, "{\"data\":[{\"gid\":\"1\",\"name\":\"One\"}],"
             "\"next_page\":{\"offset\":\"same\",\"path\":\"/x\"}}");
}

static void test_paging_repeated_offset(void)
{
  struct server api = { .handler = same_offset_handler };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  double start;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  start = now_s();
  rc = client_list_workspaces(c, &list, &err);
  CHECK_RESULT(rc, CLIENT_ERR_REPLY, err);
  CHECK(now_s() - start < 1);
  CHECK(server_count(&api) == 2);
  CHECK(strstr(err.message, "the same next_page offset twice") != NULL);
  CHECK(list.count == 0);
  CHECK(list.items == NULL);
  client_free(c);
  server_stop(&api);
}

struct endless_ctx {
  long delay_ms;        /* before each reply */
  atomic_int pages;     /* pages served; the test reads it while the
                         * server thread may still serve a page */
};

/* Serves 100 new workspaces and a new offset on every page, without end.
 * It counts pages itself, because the server records 32 requests at most. */
static void endless_pages_handler(struct server *s, int index,
                                  const struct request *req, int fd)
{
  struct endless_ctx *ctx = s->ctx;
  int page = atomic_fetch_add(&ctx->pages, 1);
  char *body = malloc(16384);
  size_t len = 0;

  if (!body)
    return;
  sleep_ms(ctx->delay_ms);
  len += (size_t)sprintf(body + len, "{\"data\":[");
  for (int i = 0; i < 100; i++)
    len += (size_t)sprintf(body + len, "%s{\"gid\":\"%d\",\"name\":\"W\"}",
                           i ? "," : "", page * 100 + i + 1);
  sprintf(body + len, "],\"next_page\":{\"offset\":\"page%d\",\"path\":\"/x\"}}",
          page + 1);
  send_reply(fd, 200, NULL, body);
  free(body);
}

static void test_paging_item_cap(void)
{
  struct endless_ctx ctx = {0};
  struct server api = { .handler = endless_pages_handler, .ctx = &ctx };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  config.max_call_s = 30;
  c = new_client(&config);
  rc = client_list_workspaces(c, &list, &err);
  CHECK_RESULT(rc, CLIENT_ERR_REPLY, err);
  CHECK(strstr(err.message, "more than 100000 workspaces") != NULL);
  CHECK(atomic_load(&ctx.pages) == 1001);
  CHECK(list.count == 0);
  client_free(c);
  server_stop(&api);
}

static void test_paging_deadline(void)
{
  struct endless_ctx ctx = { .delay_ms = 100 };
  struct server api = { .handler = endless_pages_handler, .ctx = &ctx };
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  double start, elapsed;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  config.max_call_s = 0.5;
  c = new_client(&config);
  start = now_s();
  rc = client_list_workspaces(c, &list, &err);
  elapsed = now_s() - start;
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(client_error_errno(&err) == ETIMEDOUT);
  CHECK(strstr(err.message, "GET /workspaces") != NULL);
  CHECK(strstr(err.message, "the listing took longer than its limit of 2 s") !=
        NULL);
  CHECK(strstr(err.message, "max_call_s") != NULL);
  CHECK(atomic_load(&ctx.pages) >= 5);
  CHECK(elapsed >= 1.9);
  CHECK(elapsed < 3);
  CHECK(list.count == 0);
  client_free(c);
  server_stop(&api);
}

/* Runs one API call against SCRIPT and returns the server's request count. */
struct script_run {
  enum client_result rc;
  struct client_error err;
  struct client_export ex;
  double elapsed;
  int requests;
  struct request first;
};

static void run_script(const struct canned *script, int script_len, bool post,
                       const struct client_config *overrides, struct script_run *run)
{
  struct server api = { .script = script, .script_len = script_len };
  struct client_config config;
  struct client *c;
  char url[96];
  double start;

  memset(run, 0, sizeof(*run));
  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  if (overrides) {
    config.max_attempts = overrides->max_attempts;
    config.max_call_s = overrides->max_call_s;
    config.max_body = overrides->max_body;
  }
  c = new_client(&config);
  start = now_s();
  if (post)
    run->rc = client_create_export(c, "14916", &run->ex, &run->err);
  else
    run->rc = client_get_export(c, "1200", false, &run->ex, &run->err);
  run->elapsed = now_s() - start;
  run->requests = server_count(&api);
  run->first = *server_request(&api, 0);
  client_export_clear(&run->ex);
  client_free(c);
  server_stop(&api);
}

#define EXPORT_BODY                                                          \
  "{\"data\":{\"gid\":\"1200\",\"resource_type\":\"organization_export\","   \
  "\"state\":\"started\",\"download_url\":null,"                             \
  "\"organization\":{\"gid\":\"14916\",\"name\":\"Org\"}}}"
#define FORBIDDEN_BODY \
  "{\"errors\":[{\"message\":\"You do not have access to this export.\"}]}"

static void test_retry_after_header(void)
{
  static const struct canned script[] = {
    { 429, "Retry-After: 1\r\n", "{\"errors\":[{\"message\":\"slow down\"}]}" },
    { 200, NULL, EXPORT_BODY },
  };
  struct script_run run;

  run_script(script, 2, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_OK, run.err);
  CHECK(run.requests == 2);
  CHECK(run.elapsed >= 0.95);
  CHECK(run.elapsed < 3);
}

static void test_503_then_success(void)
{
  static const struct canned script[] = {
    { 503, NULL, "<html>busy</html>" },
    { 503, NULL, NULL },
    { 200, NULL, EXPORT_BODY },
  };
  struct script_run run;

  run_script(script, 3, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_OK, run.err);
  CHECK(run.requests == 3);
  CHECK(run.err.status == 200);
}

static void test_403_not_retried(void)
{
  static const struct canned script[] = { { 403, NULL, FORBIDDEN_BODY } };
  struct script_run run;

  run_script(script, 1, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_HTTP, run.err);
  CHECK(run.requests == 1);
  CHECK(run.err.status == 403);
  CHECK(client_error_errno(&run.err) == EACCES);
  CHECK(strcmp(run.err.message, "Asana answered 403 Forbidden for GET "
               "/organization_exports/1200: You do not have access to this "
               "export.") == 0);
}

static void test_404_maps_to_enoent(void)
{
  static const struct canned script[] = { { 404, NULL, "not json" } };
  struct script_run run;

  run_script(script, 1, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_HTTP, run.err);
  CHECK(run.requests == 1);
  CHECK(client_error_errno(&run.err) == ENOENT);
  CHECK(strcmp(run.err.message, "Asana answered 404 Not Found for GET "
               "/organization_exports/1200") == 0);
}

static void test_post_500_not_retried(void)
{
  static const struct canned script[] = {
    { 500, NULL, "{\"errors\":[{\"message\":\"Server Error\",\"phrase\":\"6 sad squid\"}]}" },
    { 201, NULL, EXPORT_BODY },
  };
  struct script_run run;

  run_script(script, 2, true, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_HTTP, run.err);
  CHECK(run.requests == 1);
  CHECK(run.err.status == 500);
  CHECK(strstr(run.err.message, "POST /organization_exports") != NULL);
}

static void test_post_429_retried(void)
{
  char value[64];
  static const struct canned script[] = {
    { 429, "Retry-After: 0\r\n", NULL },
    { 201, NULL, EXPORT_BODY },
  };
  struct script_run run;

  run_script(script, 2, true, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_OK, run.err);
  CHECK(run.requests == 2);
  CHECK(run.err.status == 201);
  CHECK(strncmp(run.first.line, "POST /api/1.0/organization_exports ", 35) == 0);
  CHECK(strcmp(run.first.body, "{\"data\":{\"organization\":\"14916\"}}") == 0);
  CHECK(strcmp(header_of(&run.first, "Content-Type", value, sizeof(value)),
               "application/json") == 0);
}

static void test_rate_limit_exhausted(void)
{
  static const struct canned script[] = {
    { 429, "Retry-After: 0\r\n", "{\"errors\":[{\"message\":\"Rate limited\"}]}" },
  };
  struct script_run run;

  run_script(script, 1, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_RATE_LIMITED, run.err);
  CHECK(run.requests == 3);
  CHECK(run.err.status == 429);
  CHECK(client_error_errno(&run.err) == EAGAIN);
  CHECK(strstr(run.err.message, "after 3 attempts") != NULL);
  CHECK(strstr(run.err.message, "Rate limited") != NULL);
}

static void test_retry_after_past_budget(void)
{
  static const struct canned script[] = { { 429, "Retry-After: 100\r\n", NULL } };
  struct client_config overrides = { .max_attempts = 5, .max_call_s = 5 };
  struct script_run run;

  run_script(script, 1, false, &overrides, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_RATE_LIMITED, run.err);
  CHECK(run.requests == 1);
  CHECK(run.elapsed < 1);
  CHECK(strstr(run.err.message, "Retry-After") != NULL);
}

static void test_backoff_past_budget(void)
{
  static const struct canned script[] = { { 503, NULL, NULL } };
  struct client_config overrides = { .max_attempts = 100, .max_call_s = 0.3 };
  struct script_run run;

  run_script(script, 1, false, &overrides, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_HTTP, run.err);
  CHECK(run.requests >= 2);
  CHECK(run.elapsed < 1);
  CHECK(strstr(run.err.message, "503 Service Unavailable") != NULL);
  CHECK(strstr(run.err.message, "budget") != NULL);
}

static void test_body_over_max(void)
{
  static char big[4200];
  static const struct canned script[] = { { 200, NULL, big } };
  struct client_config overrides = { .max_attempts = 3, .max_call_s = 10,
                                     .max_body = 1024 };
  struct script_run run;

  memset(big, ' ', sizeof(big) - 1);
  memcpy(big, EXPORT_BODY, strlen(EXPORT_BODY));
  run_script(script, 1, false, &overrides, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_REPLY, run.err);
  CHECK(run.requests == 1);
  CHECK(strstr(run.err.message, "max_body") != NULL);
}

static void test_api_redirect_not_followed(void)
{
  static const struct canned script[] = {
    { 302, "Location: http://127.0.0.1:1/elsewhere\r\n", NULL },
  };
  struct script_run run;

  run_script(script, 1, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_HTTP, run.err);
  CHECK(run.requests == 1);
  CHECK(run.err.status == 302);
  CHECK(strstr(run.err.message, "redirected") != NULL);
}

static void test_invalid_reply_rejected(void)
{
  static const struct canned script[] = {
    { 200, NULL, "{\"data\":{\"gid\":\"999\",\"state\":\"finished\"}}" },
  };
  struct script_run run;

  run_script(script, 1, false, NULL, &run);
  CHECK_RESULT(run.rc, CLIENT_ERR_REPLY, run.err);
  CHECK(strstr(run.err.message, "999") != NULL);
}

/* Returns a loopback port on which nothing listens. */
static int closed_port(void)
{
  struct sockaddr_in addr = { .sin_family = AF_INET };
  socklen_t len = sizeof(addr);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  bind(fd, (struct sockaddr *)&addr, sizeof(addr));
  getsockname(fd, (struct sockaddr *)&addr, &len);
  close(fd);
  return ntohs(addr.sin_port);
}

static void test_connection_refused(void)
{
  struct client_config config = { .token = TOKEN, .max_attempts = 3,
                                  .max_backoff_s = 0.05 };
  struct client_export ex;
  struct client_error err = {0};
  struct client *c;
  char url[96], expected[96];
  enum client_result rc;
  int port = closed_port();

  snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/1.0", port);
  snprintf(expected, sizeof(expected), "could not connect to 127.0.0.1:%d: "
           "Connection refused (after 3 attempts)", port);
  config.api_url = url;
  c = new_client(&config);
  rc = client_get_export(c, "1200", false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(strcmp(err.message, expected) == 0);
  CHECK(err.status == 0);
  CHECK(client_error_errno(&err) == EIO);

  /* A POST that never reached the server is retried too. */
  rc = client_create_export(c, "14916", &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(strcmp(err.message, expected) == 0);
  client_free(c);
}

/* Reads the request and closes the connection without a reply. */
static void hang_up_handler(struct server *s, int index, const struct request *req,
                            int fd)
{
}

static void test_post_dropped_not_retried(void)
{
  struct server api = { .handler = hang_up_handler };
  struct client_export ex;
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_create_export(c, "14916", &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(server_count(&api) == 1);

  rc = client_get_export(c, "1200", false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(server_count(&api) == 4);
  CHECK(strstr(err.message, "after 3 attempts") != NULL);
  client_free(c);
  server_stop(&api);
}

#define KEEP_ALIVE_HEAD \
  "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n"

/* Keeps the first connection open after its reply. A request that arrives
 * on it is recorded and the connection closes without a reply, as when a
 * keep-alive connection dies under a new request. Other connections get 201. */
static void keep_alive_handler(struct server *s, int index,
                               const struct request *req, int fd)
{
  struct request next;
  char head[256];
  int n;

  if (index != 0) {
    send_reply(fd, 201, NULL, EXPORT_BODY);
    return;
  }
  n = snprintf(head, sizeof(head), KEEP_ALIVE_HEAD, strlen(EXPORT_BODY));
  write_all(fd, head, (size_t)n);
  write_all(fd, EXPORT_BODY, strlen(EXPORT_BODY));
  if (wait_readable(fd, 500) && read_request(fd, &next))
    server_record(s, &next);
  shutdown(fd, SHUT_RDWR);
}

static void test_post_fresh_connection(void)
{
  struct server api = { .handler = keep_alive_handler };
  struct client_export ex;
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  int posts = 0;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_get_export(c, "1200", false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  client_export_clear(&ex);
  rc = client_create_export(c, "14916", &ex, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  client_export_clear(&ex);
  for (int i = 0; i < server_count(&api); i++)
    posts += strncmp(server_request(&api, i)->line, "POST ", 5) == 0;
  CHECK(posts == 1);
  CHECK(atomic_load(&api.accepted) == 2);
  client_free(c);
  server_stop(&api);
}

/* Holds the connection open without replying until the client gives up. */
static void silent_handler(struct server *s, int index, const struct request *req,
                           int fd)
{
  char buf[256];

  while (wait_readable(fd, 10000) && recv(fd, buf, sizeof(buf), 0) > 0)
    ;
}

static void test_timeout(void)
{
  struct server api = { .handler = silent_handler };
  struct client_export ex;
  struct client_error err = {0};
  struct client_config config;
  struct client *c;
  char url[96];
  double start;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  config.max_call_s = 1;
  config.low_speed_time_s = 30;
  c = new_client(&config);
  start = now_s();
  rc = client_get_export(c, "1200", false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(client_error_errno(&err) == ETIMEDOUT);
  CHECK(strstr(err.message, "GET /organization_exports/1200") != NULL);
  CHECK(now_s() - start < 2.5);
  client_free(c);
  server_stop(&api);
}

struct shutdown_ctx {
  struct client *client;
  long delay_ms;
};

static void *shutdown_later(void *arg)
{
  struct shutdown_ctx *ctx = arg;

  sleep_ms(ctx->delay_ms);
  client_shutdown(ctx->client);
  return NULL;
}

static void test_shutdown_wakes_wait(void)
{
  static const struct canned script[] = { { 429, "Retry-After: 30\r\n", NULL } };
  struct server api = { .script = script, .script_len = 1 };
  struct client_export ex;
  struct client_error err = {0};
  struct client_config config;
  struct shutdown_ctx ctx = { .delay_ms = 300 };
  pthread_t thread;
  char url[96];
  double start, elapsed;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  config.max_call_s = 60;
  ctx.client = new_client(&config);
  pthread_create(&thread, NULL, shutdown_later, &ctx);
  start = now_s();
  rc = client_get_export(ctx.client, "1200", false, &ex, &err);
  elapsed = now_s() - start;
  pthread_join(thread, NULL);
  CHECK_RESULT(rc, CLIENT_ERR_CANCELLED, err);
  CHECK(elapsed >= 0.25);
  CHECK(elapsed < 1.5);
  CHECK(client_error_errno(&err) == ECANCELED);

  rc = client_get_export(ctx.client, "1200", false, &ex, &err);
  CHECK_RESULT(rc, CLIENT_ERR_CANCELLED, err);
  CHECK(server_count(&api) == 1);
  client_free(ctx.client);
  server_stop(&api);
}

static void test_shutdown_aborts_transfer(void)
{
  struct server api = { .handler = silent_handler };
  struct client_export ex;
  struct client_error err = {0};
  struct client_config config;
  struct shutdown_ctx ctx = { .delay_ms = 200 };
  pthread_t thread;
  char url[96];
  double start;
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  config.low_speed_time_s = 30;
  ctx.client = new_client(&config);
  pthread_create(&thread, NULL, shutdown_later, &ctx);
  start = now_s();
  rc = client_get_export(ctx.client, "1200", false, &ex, &err);
  pthread_join(thread, NULL);
  CHECK_RESULT(rc, CLIENT_ERR_CANCELLED, err);
  CHECK(now_s() - start < 2.5);
  client_free(ctx.client);
  server_stop(&api);
}

struct concurrent_ctx {
  struct client *client;
  atomic_int succeeded;
};

static void *get_exports(void *arg)
{
  struct concurrent_ctx *ctx = arg;

  for (int i = 0; i < 5; i++) {
    struct client_export ex;
    struct client_error err = {0};

    if (client_get_export(ctx->client, "1200", true, &ex, &err) == CLIENT_OK)
      atomic_fetch_add(&ctx->succeeded, 1);
    client_export_clear(&ex);
  }
  return NULL;
}

static void test_concurrent_calls(void)
{
  static const struct canned script[] = { { 200, NULL, EXPORT_BODY } };
  struct server api = { .script = script, .script_len = 1 };
  struct concurrent_ctx ctx = {0};
  struct client_config config;
  pthread_t threads[4];
  char url[96];

  if (!server_start(&api, "127.0.0.1")) {
    CHECK(false);
    return;
  }
  config = test_config(&api, url, sizeof(url));
  ctx.client = new_client(&config);
  for (int i = 0; i < 4; i++)
    pthread_create(&threads[i], NULL, get_exports, &ctx);
  for (int i = 0; i < 4; i++)
    pthread_join(threads[i], NULL);
  CHECK(atomic_load(&ctx.succeeded) == 20);
  CHECK(server_count(&api) == 20);
  client_free(ctx.client);
  server_stop(&api);
}

/* ---- Storage: archive tail and download ---- */

/* What the storage server does for one request. */
struct storage_step {
  int status;           /* 0 serves the archive; else this status, no body */
  size_t cut_at;        /* > 0: close the connection at this archive offset */
  bool ignore_range;    /* reply 200 with the whole archive */
  size_t start_early;   /* a 206 starts this many bytes before the request */
  size_t fake_total;    /* > 0: the size named in Content-Range */
  const char *location; /* with status 302 */
};

struct storage_plan {
  const unsigned char *data;
  size_t size;
  struct storage_step steps[8];  /* request i follows steps[i]; later ones serve */
};

/* Parses "bytes=N-" or "bytes=-K" into [*first, size). */
static bool requested_range(const struct request *req, size_t size, size_t *first)
{
  char value[64];

  header_of(req, "Range", value, sizeof(value));
  if (strncmp(value, "bytes=-", 7) == 0) {
    size_t suffix = strtoul(value + 7, NULL, 10);

    *first = suffix < size ? size - suffix : 0;
    return true;
  }
  if (strncmp(value, "bytes=", 6) == 0) {
    *first = strtoul(value + 6, NULL, 10);
    return true;
  }
  return false;
}

static void serve_archive(int fd, const struct storage_plan *plan,
                          const struct storage_step *step, const struct request *req)
{
  size_t first = 0, end = plan->size, total;
  char headers[256];
  bool ranged = requested_range(req, plan->size, &first) && !step->ignore_range;

  total = step->fake_total ? step->fake_total : plan->size;
  if (!ranged) {
    first = 0;
    send_head(fd, 200, plan->size, "ETag: \"v1\"\r\n");
  } else if (first >= plan->size) {
    snprintf(headers, sizeof(headers), "Content-Range: bytes */%zu\r\n", total);
    send_head(fd, 416, 0, headers);
    return;
  } else {
    first = first > step->start_early ? first - step->start_early : 0;
    snprintf(headers, sizeof(headers), "ETag: \"v1\"\r\nContent-Range: bytes "
             "%zu-%zu/%zu\r\n", first, plan->size - 1, total);
    send_head(fd, 206, plan->size - first, headers);
  }
  if (step->cut_at > first)
    end = step->cut_at;
  write_all(fd, plan->data + first, end - first);
}

static void storage_handler(struct server *s, int index, const struct request *req,
                            int fd)
{
  static const struct storage_step normal;
  const struct storage_plan *plan = s->ctx;
  const struct storage_step *step = index < 8 ? &plan->steps[index] : &normal;
  char headers[256];

  if (step->status == 302) {
    snprintf(headers, sizeof(headers), "Location: %s\r\n", step->location);
    send_reply(fd, 302, headers, "moved");
  } else if (step->status) {
    send_reply(fd, step->status, NULL, "<Error><Code>AccessDenied</Code></Error>");
  } else {
    serve_archive(fd, plan, step, req);
  }
}

struct export_api {
  const char *state;
  struct server *storage;
};

/* Serves export 1200; download URL N (from 1) carries sig=N. */
static void export_handler(struct server *s, int index, const struct request *req,
                           int fd)
{
  const struct export_api *api = s->ctx;
  char body[1024], url[256];

  if (strcmp(api->state, "finished") == 0)
    snprintf(url, sizeof(url), "\"%s/archive.json.gz?sig=SECRET%d\"",
             api->storage->base, index + 1);
  else
    snprintf(url, sizeof(url), "null");
  snprintf(body, sizeof(body), "{\"data\":{\"gid\":\"1200\",\"resource_type\":"
           "\"organization_export\",\"created_at\":\"2024-01-02T03:04:05.678Z\","
           "\"state\":\"%s\",\"download_url\":%s,\"organization\":"
           "{\"gid\":\"14916\",\"name\":\"Org\"}}}", api->state, url);
  send_reply(fd, 200, NULL, body);
}

/* An API server, a storage server and a client wired together. */
struct storage_rig {
  struct storage_plan plan;
  struct export_api export_api;
  struct server api;
  struct server storage;
  struct client *client;
  unsigned char *data;
};

static bool rig_start(struct storage_rig *rig, size_t size, const char *state)
{
  struct client_config config;
  static char url[96];

  rig->data = malloc(size);
  for (size_t i = 0; i < size; i++)
    rig->data[i] = (unsigned char)(rand() >> 7);
  rig->plan.data = rig->data;
  rig->plan.size = size;
  rig->storage.handler = storage_handler;
  rig->storage.ctx = &rig->plan;
  rig->export_api.state = state;
  rig->export_api.storage = &rig->storage;
  rig->api.handler = export_handler;
  rig->api.ctx = &rig->export_api;
  if (!server_start(&rig->storage, "127.0.0.2") || !server_start(&rig->api, "127.0.0.1"))
    return false;
  config = test_config(&rig->api, url, sizeof(url));
  rig->client = new_client(&config);
  return rig->client != NULL;
}

static void rig_stop(struct storage_rig *rig)
{
  client_free(rig->client);
  server_stop(&rig->api);
  server_stop(&rig->storage);
  free(rig->data);
}

static void check_no_authorization(struct server *s)
{
  for (int i = 0; i < server_count(s); i++)
    CHECK(!has_header(server_request(s, i), "Authorization"));
}

static void test_tail_with_range(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  char value[64];
  enum client_result rc;

  if (!rig_start(&rig, 1000, "finished"))
    { CHECK(false); return; }
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(size == 1000);
  CHECK(memcmp(trailer, rig.data + 992, 8) == 0);
  CHECK(server_count(&rig.storage) == 1);
  CHECK(strcmp(header_of(server_request(&rig.storage, 0), "Range", value,
                         sizeof(value)), "bytes=-8") == 0);
  CHECK(strstr(server_request(&rig.storage, 0)->line, "sig=SECRET1") != NULL);
  check_no_authorization(&rig.storage);
  CHECK(has_header(server_request(&rig.api, 0), "Authorization"));
  rig_stop(&rig);
}

static void test_tail_range_ignored(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  enum client_result rc;

  if (!rig_start(&rig, 2000003, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].ignore_range = true;
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(size == 2000003);
  CHECK(memcmp(trailer, rig.data + 2000003 - 8, 8) == 0);
  rig_stop(&rig);
}

static void test_tail_redirect_no_token(void)
{
  struct storage_rig rig = {0};
  struct storage_plan other_plan = {0};
  struct server other = { .handler = storage_handler, .ctx = &other_plan };
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  char location[128];
  enum client_result rc;

  if (!rig_start(&rig, 5000, "finished") || !server_start(&other, "127.0.0.1"))
    { CHECK(false); return; }
  other_plan = rig.plan;
  snprintf(location, sizeof(location), "%s/redirected.gz?sig=OTHER", other.base);
  rig.plan.steps[0] = (struct storage_step){ .status = 302, .location = location };
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(size == 5000);
  CHECK(memcmp(trailer, rig.data + 4992, 8) == 0);
  CHECK(server_count(&other) == 1);
  CHECK(strstr(server_request(&other, 0)->line, "/redirected.gz") != NULL);
  check_no_authorization(&other);
  check_no_authorization(&rig.storage);
  server_stop(&other);
  rig_stop(&rig);
}

static void test_tail_refreshes_url(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  enum client_result rc;

  if (!rig_start(&rig, 100, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].status = 403;
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(size == 100);
  CHECK(server_count(&rig.api) == 2);
  CHECK(strstr(server_request(&rig.storage, 1)->line, "sig=SECRET2") != NULL);

  /* A second 403 after the fresh URL is final. */
  rig.plan.steps[2].status = 403;
  rig.plan.steps[3].status = 403;
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_ERR_HTTP, err);
  CHECK(err.status == 403);
  CHECK(server_count(&rig.storage) == 4);
  CHECK(strstr(err.message, "the storage host 127.0.0.2:") != NULL);
  CHECK(strstr(err.message, "returned 403 Forbidden") != NULL);
  CHECK(strstr(err.message, "SECRET") == NULL);
  rig_stop(&rig);
}

static void test_tail_export_not_finished(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  enum client_result rc;

  if (!rig_start(&rig, 100, "started"))
    { CHECK(false); return; }
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK(rc != CLIENT_OK);
  CHECK(strstr(err.message, "export 1200 is not finished (state started)") != NULL);
  CHECK(server_count(&rig.storage) == 0);
  rig_stop(&rig);
}

/* Replaces the rig's client by one with a time budget of MAX_CALL_S. */
static void rig_set_budget(struct storage_rig *rig, double max_call_s)
{
  struct client_config config;
  char url[96];

  config = test_config(&rig->api, url, sizeof(url));
  config.max_call_s = max_call_s;
  config.low_speed_time_s = 30;
  client_free(rig->client);
  rig->client = new_client(&config);
}

/* Replies 200 to any Range and sends the body one byte per 100 ms, for at
 * most 10 s or until the client hangs up. */
static void trickle_handler(struct server *s, int index,
                            const struct request *req, int fd)
{
  send_head(fd, 200, 1000000, NULL);
  for (int i = 0; i < 100 && !atomic_load(&s->stop); i++) {
    if (!write_all(fd, "x", 1))
      return;
    sleep_ms(100);
  }
}

static void test_tail_trickle_times_out(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  unsigned char trailer[8];
  uint64_t size = 0;
  double start, elapsed;
  enum client_result rc;

  if (!rig_start(&rig, 100, "finished"))
    { CHECK(false); return; }
  rig.storage.handler = trickle_handler;
  rig_set_budget(&rig, 2);
  start = now_s();
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  elapsed = now_s() - start;
  CHECK_RESULT(rc, CLIENT_ERR_NETWORK, err);
  CHECK(client_error_errno(&err) == ETIMEDOUT);
  CHECK(strstr(err.message, "timed out") != NULL);
  CHECK(strstr(err.message, "archive tail of export 1200") != NULL);
  CHECK(elapsed >= 1.5);
  CHECK(elapsed < 3);
  rig_stop(&rig);
}

/* The proxy variables that libcurl reads, which the proxy test saves,
 * clears and restores. */
static const char *const proxy_variables[] = {
  "http_proxy", "https_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY",
};
#define PROXY_VARIABLE_COUNT (sizeof(proxy_variables) / sizeof(proxy_variables[0]))

static void save_proxy_variables(char *saved[PROXY_VARIABLE_COUNT])
{
  for (size_t i = 0; i < PROXY_VARIABLE_COUNT; i++) {
    const char *value = getenv(proxy_variables[i]);

    saved[i] = value ? strdup(value) : NULL;
    unsetenv(proxy_variables[i]);
  }
}

static void restore_proxy_variables(char *saved[PROXY_VARIABLE_COUNT])
{
  for (size_t i = 0; i < PROXY_VARIABLE_COUNT; i++) {
    if (saved[i])
      setenv(proxy_variables[i], saved[i], 1);
    else
      unsetenv(proxy_variables[i]);
    free(saved[i]);
  }
}

static void test_plain_http_skips_proxy(void)
{
  static const struct canned refuse[] = { { 502, NULL, "proxy" } };
  struct server proxy = { .script = refuse, .script_len = 1 };
  struct storage_rig rig = {0};
  struct client_error err = {0};
  struct sink_buffer sink = {0};
  char *saved[PROXY_VARIABLE_COUNT];
  unsigned char trailer[8];
  uint64_t size = 0;
  enum client_result rc;

  if (!server_start(&proxy, "127.0.0.3"))
    { CHECK(false); return; }
  save_proxy_variables(saved);
  setenv("http_proxy", proxy.base, 1);
  setenv("all_proxy", proxy.base, 1);
  if (!rig_start(&rig, 1000, "finished"))
    { CHECK(false); restore_proxy_variables(saved); return; }
  rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(size == 1000);
  rc = client_download_archive(rig.client, "1200", 0, sink_append, &sink, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(sink.len == 1000);
  CHECK(atomic_load(&proxy.accepted) == 0);
  CHECK(server_count(&rig.api) == 2);
  CHECK(server_count(&rig.storage) == 2);
  free(sink.data);
  rig_stop(&rig);
  restore_proxy_variables(saved);
  server_stop(&proxy);
}

#define EXPORT_REMOTE_HTTP                                                   \
  "{\"data\":{\"gid\":\"1200\",\"state\":\"finished\","                      \
  "\"download_url\":\"http://example.com/x?sig=SECRET7\"}}"

static void test_plain_http_download_rejected(void)
{
  static const struct canned script[] = { { 200, NULL, EXPORT_REMOTE_HTTP } };
  struct server api = { .script = script, .script_len = 1 };
  struct client_error err = {0};
  struct client_config config;
  struct sink_buffer sink = {0};
  struct client *c;
  unsigned char trailer[8];
  uint64_t size = 0;
  char url[96];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_archive_tail(c, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_ERR_CONFIG, err);
  CHECK(strstr(err.message, "http://example.com/x") != NULL);
  CHECK(strstr(err.message, "plain http") != NULL);
  CHECK(strstr(err.message, "SECRET") == NULL);

  rc = client_download_archive(c, "1200", 0, sink_append, &sink, &err);
  CHECK_RESULT(rc, CLIENT_ERR_CONFIG, err);
  CHECK(strstr(err.message, "http://example.com/x") != NULL);
  CHECK(strstr(err.message, "SECRET") == NULL);
  CHECK(sink.calls == 0);
  CHECK(server_count(&api) == 2);
  client_free(c);
  server_stop(&api);
}

#define EXPORT_USER_INFO                                                     \
  "{\"data\":{\"gid\":\"1200\",\"state\":\"finished\","                      \
  "\"download_url\":\"http://user:PASSWORD9@127.0.0.1:1/x?sig=SECRET8\"}}"

static void test_download_url_user_info_rejected(void)
{
  static const struct canned script[] = { { 200, NULL, EXPORT_USER_INFO } };
  struct server api = { .script = script, .script_len = 1 };
  struct client_error err = {0};
  struct client_config config;
  struct sink_buffer sink = {0};
  struct client *c;
  unsigned char trailer[8];
  uint64_t size = 0;
  char url[96];
  enum client_result rc;

  if (!server_start(&api, "127.0.0.1"))
    { CHECK(false); return; }
  config = test_config(&api, url, sizeof(url));
  c = new_client(&config);
  rc = client_archive_tail(c, "1200", &size, trailer, &err);
  CHECK_RESULT(rc, CLIENT_ERR_REPLY, err);
  CHECK(strstr(err.message, "user info") != NULL);
  CHECK(strstr(err.message, "PASSWORD9") == NULL);
  CHECK(strstr(err.message, "SECRET8") == NULL);

  rc = client_download_archive(c, "1200", 0, sink_append, &sink, &err);
  CHECK_RESULT(rc, CLIENT_ERR_REPLY, err);
  CHECK(strstr(err.message, "user info") != NULL);
  CHECK(sink.calls == 0);
  client_free(c);
  server_stop(&api);
}

/* A storage host's reply that reports an archive size above INT64_MAX / 2. */
struct huge_case {
  bool download;        /* client_download_archive, else client_archive_tail */
  struct canned reply;
};

/* Serves the raw reply of the context: status line, headers and an 8-byte
 * body, with no Content-Length added. */
static void raw_reply_handler(struct server *s, int index,
                              const struct request *req, int fd)
{
  const struct canned *reply = s->ctx;
  char head[512];
  int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nConnection: close\r\n"
                   "%s\r\n", reply->status, reason_of(reply->status),
                   reply->headers);

  write_all(fd, head, (size_t)n);
  write_all(fd, reply->body, strlen(reply->body));
}

static void test_archive_size_too_large(void)
{
  static const struct huge_case cases[] = {
    { false, { 206, "Content-Range: bytes 0-7/18446744073709551000\r\n"
               "Content-Length: 8\r\n", "ABCDEFGH" } },
    { false, { 206, "Content-Range: bytes 18446744073709550992-"
               "18446744073709550999/18446744073709551000\r\n"
               "Content-Length: 8\r\n", "ABCDEFGH" } },
    { false, { 206, "Content-Range: bytes 4611686018427387904-"
               "4611686018427387911/4611686018427387912\r\n"
               "Content-Length: 8\r\n", "ABCDEFGH" } },
    { true, { 206, "Content-Range: bytes 0-7/18446744073709551000\r\n"
              "Content-Length: 8\r\n", "ABCDEFGH" } },
    { true, { 200, "Content-Length: 5000000000000000000\r\n", "ABCDEFGH" } },
  };

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct storage_rig rig = {0};
    struct client_error err = {0};
    struct sink_buffer sink = {0};
    unsigned char trailer[8];
    uint64_t size = 0;
    enum client_result rc;

    if (!rig_start(&rig, 100, "finished"))
      { CHECK(false); return; }
    rig.storage.handler = raw_reply_handler;
    rig.storage.ctx = (void *)&cases[i].reply;
    if (cases[i].download)
      rc = client_download_archive(rig.client, "1200", 0, sink_append, &sink,
                                   &err);
    else
      rc = client_archive_tail(rig.client, "1200", &size, trailer, &err);
    if (rc != CLIENT_ERR_REPLY)
      printf("  case %zu gave %d, size %" PRIu64 ": %s\n", i, rc, size,
             err.message);
    CHECK(rc == CLIENT_ERR_REPLY);
    CHECK(strstr(err.message, "more than the limit") != NULL);
    CHECK(sink.len == 0);
    CHECK(server_count(&rig.storage) == 1);
    free(sink.data);
    rig_stop(&rig);
  }
}

/* Downloads export 1200 from OFFSET and checks the bytes against the source. */
static enum client_result download_and_compare(struct storage_rig *rig,
                                               uint64_t offset,
                                               struct client_error *err)
{
  struct sink_buffer sink = {0};
  enum client_result rc = client_download_archive(rig->client, "1200", offset,
                                                  sink_append, &sink, err);

  if (rc == CLIENT_OK) {
    CHECK(sink.len == rig->plan.size - offset);
    CHECK(sink.len == 0 || memcmp(sink.data, rig->data + offset, sink.len) == 0);
  }
  free(sink.data);
  return rc;
}

static void test_download_whole(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 3000000, "finished"))
    { CHECK(false); return; }
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(server_count(&rig.storage) == 1);
  CHECK(!has_header(server_request(&rig.storage, 0), "Range"));
  check_no_authorization(&rig.storage);
  rig_stop(&rig);
}

static void test_download_resumes_after_drop(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  char value[64];
  enum client_result rc;

  if (!rig_start(&rig, 300000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].cut_at = 100000;
  rig.plan.steps[1].cut_at = 200000;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(server_count(&rig.storage) == 3);
  CHECK(strcmp(header_of(server_request(&rig.storage, 1), "Range", value,
                         sizeof(value)), "bytes=100000-") == 0);
  CHECK(strcmp(header_of(server_request(&rig.storage, 2), "Range", value,
                         sizeof(value)), "bytes=200000-") == 0);
  CHECK(server_count(&rig.api) == 1);
  check_no_authorization(&rig.storage);
  rig_stop(&rig);
}

static void test_download_200_on_resume(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 300000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].cut_at = 123457;
  rig.plan.steps[1].ignore_range = true;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(server_count(&rig.storage) == 2);
  rig_stop(&rig);
}

static void test_download_206_starts_early(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 300000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].cut_at = 100000;
  rig.plan.steps[1].start_early = 4321;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(server_count(&rig.storage) == 2);
  rig_stop(&rig);
}

static void test_download_403_refreshes_url(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  char value[64];
  enum client_result rc;

  if (!rig_start(&rig, 300000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].cut_at = 50000;
  rig.plan.steps[1].status = 403;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(server_count(&rig.api) == 2);
  CHECK(server_count(&rig.storage) == 3);
  CHECK(strstr(server_request(&rig.storage, 1)->line, "sig=SECRET1") != NULL);
  CHECK(strstr(server_request(&rig.storage, 2)->line, "sig=SECRET2") != NULL);
  CHECK(strcmp(header_of(server_request(&rig.storage, 2), "Range", value,
                         sizeof(value)), "bytes=50000-") == 0);
  rig_stop(&rig);
}

static void test_download_from_offset(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  char value[64];
  enum client_result rc;

  if (!rig_start(&rig, 100000, "finished"))
    { CHECK(false); return; }
  rc = download_and_compare(&rig, 12345, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);
  CHECK(strcmp(header_of(server_request(&rig.storage, 0), "Range", value,
                         sizeof(value)), "bytes=12345-") == 0);

  /* The storage host ignores Range for an offset: the client skips. */
  rig.plan.steps[1].ignore_range = true;
  rc = download_and_compare(&rig, 54321, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);

  /* At the end there is nothing left to send. */
  rc = download_and_compare(&rig, 100000, &err);
  CHECK_RESULT(rc, CLIENT_OK, err);

  rc = download_and_compare(&rig, 100001, &err);
  CHECK_RESULT(rc, CLIENT_ERR_HTTP, err);
  CHECK(strstr(err.message, "past the end") != NULL);
  rig_stop(&rig);
}

static void test_download_archive_changed(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 300000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].cut_at = 100000;
  rig.plan.steps[1].fake_total = 300001;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_ERR_REPLY, err);
  CHECK(strstr(err.message, "changed") != NULL);
  rig_stop(&rig);
}

static void test_download_sink_stops(void)
{
  struct storage_rig rig = {0};
  struct sink_buffer sink = { .stop_after = 1 };
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 3000000, "finished"))
    { CHECK(false); return; }
  rc = client_download_archive(rig.client, "1200", 0, sink_append, &sink, &err);
  CHECK_RESULT(rc, CLIENT_ERR_CANCELLED, err);
  CHECK(sink.calls == 1);
  CHECK(server_count(&rig.storage) == 1);
  free(sink.data);
  rig_stop(&rig);
}

static void test_download_404_not_retried(void)
{
  struct storage_rig rig = {0};
  struct client_error err = {0};
  enum client_result rc;

  if (!rig_start(&rig, 1000, "finished"))
    { CHECK(false); return; }
  rig.plan.steps[0].status = 404;
  rc = download_and_compare(&rig, 0, &err);
  CHECK_RESULT(rc, CLIENT_ERR_HTTP, err);
  CHECK(server_count(&rig.storage) == 1);
  CHECK(client_error_errno(&err) == ENOENT);
  rig_stop(&rig);
}

/* ---- The log ---- */

static char log_path[] = "/tmp/test_client_log_XXXXXX";

static void test_log_has_no_secrets(void)
{
  FILE *log = fopen(log_path, "r");
  char line[4096];
  int lines = 0;

  fflush(stderr);
  CHECK(log != NULL);
  while (log && fgets(line, sizeof(line), log)) {
    lines++;
    CHECK(strstr(line, "SECRET") == NULL);
    CHECK(strstr(line, "test-token") == NULL);
  }
  CHECK(lines > 0);
  if (log)
    fclose(log);
}

/* ---- Runner ---- */

struct test_case {
  const char *name;
  void (*run)(void);
};

static const struct test_case tests[] = {
  { "retry_decide table", test_retry_decide },
  { "backoff_delay bounds", test_backoff_delay },
  { "parse_retry_after values", test_parse_retry_after },
  { "decode workspaces pages", test_decode_workspaces_pages },
  { "decode workspaces invalid", test_decode_workspaces_errors },
  { "decode workspaces lenient fields", test_decode_workspaces_lenient },
  { "decode export full record", test_decode_export_full },
  { "decode export odd fields", test_decode_export_fields },
  { "decode export timestamps", test_decode_export_timestamps },
  { "decode export invalid", test_decode_export_errors },
  { "decode error message", test_decode_error_message },
  { "error_errno mapping", test_error_errno },
  { "export state names", test_state_names },
  { "client_new api_url checks", test_client_new_urls },
  { "client_new config checks", test_client_new_config },
  { "paging over three pages", test_paging_three_pages },
  { "paging restarts on expired offset", test_paging_expired_offset },
  { "paging stops on repeated offset", test_paging_repeated_offset },
  { "paging stops at item cap", test_paging_item_cap },
  { "paging stops at listing deadline", test_paging_deadline },
  { "429 waits for Retry-After", test_retry_after_header },
  { "503 twice then success", test_503_then_success },
  { "403 not retried", test_403_not_retried },
  { "404 maps to ENOENT", test_404_maps_to_enoent },
  { "POST 500 not retried", test_post_500_not_retried },
  { "POST 429 retried", test_post_429_retried },
  { "429 exhausts attempts", test_rate_limit_exhausted },
  { "Retry-After past budget", test_retry_after_past_budget },
  { "backoff past budget", test_backoff_past_budget },
  { "body over max_body", test_body_over_max },
  { "API redirect not followed", test_api_redirect_not_followed },
  { "export reply for another gid", test_invalid_reply_rejected },
  { "connection refused", test_connection_refused },
  { "dropped POST not retried", test_post_dropped_not_retried },
  { "POST uses a fresh connection", test_post_fresh_connection },
  { "timeout maps to ETIMEDOUT", test_timeout },
  { "shutdown wakes Retry-After wait", test_shutdown_wakes_wait },
  { "shutdown aborts transfer", test_shutdown_aborts_transfer },
  { "concurrent calls share a client", test_concurrent_calls },
  { "tail with Range", test_tail_with_range },
  { "tail with Range ignored", test_tail_range_ignored },
  { "tail redirect gets no token", test_tail_redirect_no_token },
  { "tail refreshes URL after 403", test_tail_refreshes_url },
  { "tail of unfinished export", test_tail_export_not_finished },
  { "tail of trickled 200 times out", test_tail_trickle_times_out },
  { "plain http skips env proxy", test_plain_http_skips_proxy },
  { "plain http download URL rejected", test_plain_http_download_rejected },
  { "download URL user info rejected", test_download_url_user_info_rejected },
  { "archive size too large", test_archive_size_too_large },
  { "download whole archive", test_download_whole },
  { "download resumes after drop", test_download_resumes_after_drop },
  { "download 200 on resume", test_download_200_on_resume },
  { "download 206 starts early", test_download_206_starts_early },
  { "download 403 refreshes URL", test_download_403_refreshes_url },
  { "download from offset", test_download_from_offset },
  { "download archive changed", test_download_archive_changed },
  { "download sink stops", test_download_sink_stops },
  { "download 404 not retried", test_download_404_not_retried },
  { "log has no secrets", test_log_has_no_secrets },
};

int main(void)
{
  int passed = 0, failed = 0, log_fd;
  double start = now_s();

  setvbuf(stdout, NULL, _IOLBF, 0);
  srand(1);
  log_fd = mkstemp(log_path);
  if (log_fd < 0 || dup2(log_fd, STDERR_FILENO) < 0) {
    perror("test log");
    return 1;
  }
  close(log_fd);
  log_init(false, LOG_DEBUG);

  for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    int before = check_failures;
    double test_start = now_s();

    tests[i].run();
    if (check_failures == before)
      passed++;
    else
      failed++;
    printf("%s %s (%.2f s)\n", check_failures == before ? "ok  " : "FAIL",
           tests[i].name, now_s() - test_start);
  }
  printf("%d passed, %d failed in %.1f s (client log: %s)\n", passed, failed,
         now_s() - start, log_path);
  if (failed == 0)
    unlink(log_path);
  return failed ? 1 : 0;
}
