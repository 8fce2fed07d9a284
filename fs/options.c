/*
 * Command line: asanafs's own -o options, the token and the cache folder.
 * FUSE's options (-f, -d, -s, -o ro, -o allow_other, ...) are left in the
 * argument list for libfuse.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_API_URL "https://app.asana.com/api/1.0"
#define DEFAULT_STATE_TTL 60
#define DEFAULT_TIMEOUT 30
#define TOKEN_MAX 4096

#define OPTION(template, field) \
  { template, offsetof(struct fs_config, field), 1 }

static const struct fuse_opt option_spec[] = {
  OPTION("api_url=%s", api_url),
  OPTION("token_file=%s", token_file),
  OPTION("cache_dir=%s", cache_dir),
  OPTION("cache_size=%s", cache_size_text),
  OPTION("state_ttl=%s", state_ttl_text),
  OPTION("timeout=%s", timeout_text),
  FUSE_OPT_END
};

void options_print_usage(const char *program)
{
  printf("usage: %s MOUNTPOINT [options]\n"
         "\n"
         "Mounts the Asana organizations a token can see, with their data\n"
         "exports, at MOUNTPOINT.\n"
         "\n"
         "The token comes from the environment variable ASANA_ACCESS_TOKEN\n"
         "or from -o token_file.\n"
         "\n"
         "asanafs options:\n"
         "    -o api_url=URL         Asana API base URL (default %s)\n"
         "    -o token_file=FILE     read the token from FILE, which must not be\n"
         "                           readable by group or others\n"
         "    -o cache_dir=DIR       cache folder (default $XDG_CACHE_HOME/asanafs,\n"
         "                           else ~/.cache/asanafs)\n"
         "    -o cache_size=SIZE     cache limit in bytes, with an optional K, M,\n"
         "                           G or T suffix (powers of 1024); 0 means no\n"
         "                           limit (default 0)\n"
         "    -o state_ttl=SECONDS   how long a fetched export state or workspace\n"
         "                           list is reused, 0 to 86400 (default %d)\n"
         "    -o timeout=SECONDS     how long one API request may take, retries\n"
         "                           included, 1 to 3600 (default %d)\n"
         "\n",
         program, DEFAULT_API_URL, DEFAULT_STATE_TTL, DEFAULT_TIMEOUT);
}

/* Parses SIZE with an optional K, M, G or T suffix (and optional "B" or
 * "iB"). Returns -1 when invalid. */
static int parse_size(const char *text, uint64_t *out)
{
  static const char units[] = "KMGT";
  unsigned long long value;
  const char *unit;
  char *end;
  int shift = 0;

  if (!text || !*text || *text == '-' || *text == '+')
    return -1;
  errno = 0;
  value = strtoull(text, &end, 10);
  if (errno || end == text)
    return -1;
  if (*end && (unit = strchr(units, *end)) != NULL) {
    shift = 10 * (int)(unit - units + 1);
    end++;
    if (*end == 'i')
      end++;
  }
  if (*end == 'B')
    end++;
  if (*end || (shift && value > (UINT64_MAX >> shift)))
    return -1;
  *out = (uint64_t)value << shift;
  return 0;
}

/* Parses a whole number of seconds in [MIN, MAX]. */
static int parse_seconds(const char *name, const char *text, unsigned min,
                         unsigned max, unsigned fallback, unsigned *out)
{
  unsigned long value;
  char *end;

  if (!text) {
    *out = fallback;
    return 0;
  }
  errno = 0;
  value = strtoul(text, &end, 10);
  if (errno || end == text || *end || *text == '-' || *text == '+' ||
      value < min || value > max) {
    fprintf(stderr,
            "asanafs: invalid %s '%s': use a whole number of seconds from "
            "%u to %u\n", name, text, min, max);
    return 1;
  }
  *out = (unsigned)value;
  return 0;
}

int options_parse(struct fuse_args *args, struct fs_config *config)
{
  if (fuse_opt_parse(args, config, option_spec, NULL) < 0)
    return 1;
  if (config->cache_size_text &&
      parse_size(config->cache_size_text, &config->cache_size) < 0) {
    fprintf(stderr,
            "asanafs: invalid cache_size '%s': use a number of bytes with an "
            "optional K, M, G or T suffix, such as 20G, or 0 for no limit\n",
            config->cache_size_text);
    return 1;
  }
  if (parse_seconds("state_ttl", config->state_ttl_text, 0, 86400,
                    DEFAULT_STATE_TTL, &config->state_ttl) ||
      parse_seconds("timeout", config->timeout_text, 1, 3600, DEFAULT_TIMEOUT,
                    &config->timeout))
    return 1;
  if (!config->api_url)
    config->api_url = strdup(DEFAULT_API_URL);
  return config->api_url ? 0 : 1;
}

/* Cuts trailing newlines and spaces, as left by `echo TOKEN > file`. */
static void trim_end(char *s)
{
  size_t len = strlen(s);

  while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' ||
                     s[len - 1] == ' ' || s[len - 1] == '\t'))
    s[--len] = '\0';
}

static int read_token_file(struct fs_config *config)
{
  const char *path = config->token_file;
  char buf[TOKEN_MAX + 1];
  struct stat st;
  ssize_t len;
  int fd, rc = 1;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "asanafs: cannot open token file %s: %s\n", path,
            strerror(errno));
    return 1;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "asanafs: token file %s is not a regular file\n", path);
    goto out;
  }
  if (st.st_mode & 077) {
    fprintf(stderr,
            "asanafs: token file %s is readable by group or others (mode "
            "%04o); run: chmod 600 %s\n",
            path, (unsigned)(st.st_mode & 07777), path);
    goto out;
  }
  len = read(fd, buf, TOKEN_MAX + 1);
  if (len < 0 || len > TOKEN_MAX) {
    fprintf(stderr, "asanafs: cannot read token file %s: %s\n", path,
            len < 0 ? strerror(errno) : "longer than 4096 bytes");
    goto out;
  }
  buf[len] = '\0';
  trim_end(buf);
  if (!buf[0]) {
    fprintf(stderr, "asanafs: token file %s is empty; put the Asana access "
                    "token in it\n", path);
    goto out;
  }
  config->token = strdup(buf);
  rc = 0;
out:
  memset(buf, 0, sizeof(buf));
  close(fd);
  return rc;
}

/* Takes the token from the environment and wipes it there, so that it
 * does not stay readable in /proc/PID/environ. */
static void take_token_from_env(struct fs_config *config)
{
  char *value = getenv("ASANA_ACCESS_TOKEN");

  if (!value)
    return;
  config->token = strdup(value);
  trim_end(config->token);
  memset(value, 0, strlen(value));
  unsetenv("ASANA_ACCESS_TOKEN");
}

/* Sets the default cache folder and makes a relative one absolute, since
 * the daemon changes its working folder to /. */
static int resolve_cache_dir(struct fs_config *config)
{
  const char *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  char cwd[PATH_MAX], *path = NULL;

  if (!home || !*home) {
    struct passwd *pw = getpwuid(getuid());
    home = pw ? pw->pw_dir : "/";
  }
  if (config->cache_dir && config->cache_dir[0] == '/')
    return 0;
  if (config->cache_dir) {
    if (!getcwd(cwd, sizeof(cwd)) ||
        asprintf(&path, "%s/%s", cwd, config->cache_dir) < 0)
      return 1;
  } else if (xdg && xdg[0] == '/') {
    if (asprintf(&path, "%s/asanafs", xdg) < 0)
      return 1;
  } else if (asprintf(&path, "%s/.cache/asanafs", home) < 0) {
    return 1;
  }
  free(config->cache_dir);
  config->cache_dir = path;
  return 0;
}

int options_finish(struct fs_config *config)
{
  if (config->token_file) {
    if (read_token_file(config))
      return 1;
  } else {
    take_token_from_env(config);
  }
  if (!config->token || !*config->token) {
    fprintf(stderr,
            "asanafs: no Asana access token. Set ASANA_ACCESS_TOKEN in the "
            "environment, or put the token in a file only you can read "
            "(chmod 600) and pass -o token_file=FILE.\n");
    return 1;
  }
  if (resolve_cache_dir(config)) {
    fprintf(stderr, "asanafs: cannot work out the cache folder; pass "
                    "-o cache_dir=DIR\n");
    return 1;
  }
  return 0;
}

void options_free(struct fs_config *config)
{
  if (config->token) {
    memset(config->token, 0, strlen(config->token));
    free(config->token);
  }
  free(config->api_url);
  free(config->token_file);
  free(config->cache_dir);
  free(config->cache_size_text);
  free(config->state_ttl_text);
  free(config->timeout_text);
  memset(config, 0, sizeof(*config));
}
