/*
 * log: the one logging interface of asanafs.
 *
 * Levels are syslog's (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG). Messages
 * go to stderr while asanafs runs in the foreground and to syslog once it
 * has daemonized. Logging never exits the process and never fails loudly:
 * a message that cannot be written is dropped.
 *
 * Secrets: callers never format the token or a download URL's query string.
 * As a second line of defense, every secret registered with
 * log_add_secret() is replaced by "[redacted]" in each message before it is
 * written, and log_redact_url() cuts a URL down to scheme, host and path.
 *
 * Thread safety: all functions may be called from any thread.
 */
#ifndef ASANAFS_LOG_H
#define ASANAFS_LOG_H

#include <stddef.h>
#include <stdbool.h>
#include <syslog.h>

/* Sets where messages go and the most verbose level that is written. */
void log_init(bool use_syslog, int max_level);

/* Adds a string that must never appear in a log line; copies it. */
void log_add_secret(const char *secret);

void log_msg(int level, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/*
 * Writes URL without its query string, fragment and user info into OUT, so
 * that a presigned URL can be named in a log line. Always NUL-terminates.
 */
void log_redact_url(const char *url, char *out, size_t out_len);

#endif
