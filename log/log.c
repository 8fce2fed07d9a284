#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOG_LINE_MAX 2048
#define LOG_SECRETS_MAX 4

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static bool log_to_syslog;                     /* guarded by log_lock */
static int log_max_level = LOG_INFO;           /* guarded by log_lock */
static char *log_secrets[LOG_SECRETS_MAX];     /* guarded by log_lock */

void log_init(bool use_syslog, int max_level)
{
  pthread_mutex_lock(&log_lock);
  log_to_syslog = use_syslog;
  log_max_level = max_level;
  if (use_syslog)
    openlog("asanafs", LOG_PID, LOG_DAEMON);
  pthread_mutex_unlock(&log_lock);
}

void log_add_secret(const char *secret)
{
  if (!secret || !*secret)
    return;
  pthread_mutex_lock(&log_lock);
  for (int i = 0; i < LOG_SECRETS_MAX; i++) {
    if (!log_secrets[i]) {
      log_secrets[i] = strdup(secret);
      break;
    }
  }
  pthread_mutex_unlock(&log_lock);
}

/* Replaces each registered secret in LINE in place; caller holds log_lock. */
static void redact_secrets(char *line)
{
  static const char mark[] = "[redacted]";

  for (int i = 0; i < LOG_SECRETS_MAX && log_secrets[i]; i++) {
    size_t secret_len = strlen(log_secrets[i]);
    char *hit;

    while ((hit = strstr(line, log_secrets[i])) != NULL) {
      size_t tail = strlen(hit + secret_len);
      size_t mark_len = sizeof(mark) - 1;

      if (mark_len > secret_len)
        mark_len = secret_len;
      memcpy(hit, mark, mark_len);
      memmove(hit + mark_len, hit + secret_len, tail + 1);
    }
  }
}

static const char *level_name(int level)
{
  switch (level) {
  case LOG_ERR: return "error";
  case LOG_WARNING: return "warning";
  case LOG_INFO: return "info";
  default: return "debug";
  }
}

void log_msg(int level, const char *fmt, ...)
{
  char line[LOG_LINE_MAX];
  va_list ap;

  pthread_mutex_lock(&log_lock);
  if (level > log_max_level) {
    pthread_mutex_unlock(&log_lock);
    return;
  }
  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  redact_secrets(line);
  if (log_to_syslog) {
    syslog(level, "%s", line);
  } else {
    struct timespec now;
    struct tm tm;
    char stamp[32];

    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
    fprintf(stderr, "asanafs %s.%03ld %s: %s\n", stamp,
            now.tv_nsec / 1000000, level_name(level), line);
  }
  pthread_mutex_unlock(&log_lock);
}

void log_redact_url(const char *url, char *out, size_t out_len)
{
  const char *scheme_end, *host, *at, *cut;
  size_t len;

  if (!out_len)
    return;
  if (!url) {
    snprintf(out, out_len, "(none)");
    return;
  }
  scheme_end = strstr(url, "://");
  host = scheme_end ? scheme_end + 3 : url;
  cut = host + strcspn(host, "?#");
  at = memchr(host, '@', (size_t)(cut - host));
  if (at && at < host + strcspn(host, "/"))
    host = at + 1;
  len = scheme_end ? (size_t)(scheme_end + 3 - url) : 0;
  snprintf(out, out_len, "%.*s%.*s", (int)len, url, (int)(cut - host), host);
}
