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

/* fstab and mount(8) pass these; they mean nothing to a FUSE mount, and
 * mount.fuse3 does not always strip them. */
#define IGNORED(name) FUSE_OPT_KEY(name, FUSE_OPT_KEY_DISCARD)

static const struct fuse_opt option_spec[] = {
  OPTION("api_url=%s", api_url),
  OPTION("token_file=%s", token_file),
  OPTION("cache_dir=%s", cache_dir),
  OPTION("cache_size=%s", cache_size_text),
  OPTION("state_ttl=%s", state_ttl_text),
  OPTION("timeout=%s", timeout_text),
  OPTION("nonempty", nonempty),
  IGNORED("_netdev"),
  IGNORED("noauto"),
  IGNORED("nofail"),
  IGNORED("user"),
  IGNORED("users"),
  IGNORED("auto"),
  IGNORED("defaults"),
  FUSE_OPT_END
};

void options_print_usage(const char *program)
{
  printf("usage: %s [SOURCE] MOUNTPOINT [options]\n"
         "\n"
         "Mounts the Asana organizations a token can see, with their data\n"
         "exports, at MOUNTPOINT. SOURCE, such as \"asanafs\", is ignored; it\n"
         "is there for mount -t fuse.asanafs and /etc/fstab.\n"
         "\n"
         "The token comes from the environment variable ASANA_ACCESS_TOKEN\n"
         "or from -o token_file. Before mounting, asanafs checks the mount\n"
         "point, the token (with GET /users/me) and the cache folder.\n"
         "\n"
         "asanafs options:\n"
         "    -o api_url=URL         Asana API base URL; http:// only for a\n"
         "                           loopback host (default %s)\n"
         "    -o token_file=FILE     read the token from FILE, which must not be\n"
         "                           readable by group or others (default: the\n"
         "                           ASANA_ACCESS_TOKEN environment variable)\n"
         "    -o cache_dir=DIR       cache folder (default $XDG_CACHE_HOME/asanafs,\n"
         "                           else ~/.cache/asanafs)\n"
         "    -o cache_size=SIZE     cache limit in bytes, with an optional K, M,\n"
         "                           G or T suffix (powers of 1024); 0 means no\n"
         "                           limit (default 0)\n"
         "    -o state_ttl=SECONDS   how long a fetched export state or workspace\n"
         "                           list is reused, 0 to %d (default %d)\n"
         "    -o timeout=SECONDS     how long one API request may take, retries\n"
         "                           included, %d to %d (default %d)\n"
         "    -o nonempty            allow a mount point that is not empty\n"
         "                           (default: refuse it)\n"
         "    -o _netdev,noauto,nofail,user,users,auto,defaults\n"
         "                           accepted from /etc/fstab and ignored\n"
         "\n"
         "Exit status: 0 unmounted cleanly, 1 invalid command line or option,\n"
         "2 unusable mount point, 3 missing or rejected token, 4 Asana API\n"
         "unreachable or failing, 5 unusable cache folder, 6 FUSE mount failed.\n"
         "\n",
         program, DEFAULT_API_URL, OPTION_STATE_TTL_MAX, DEFAULT_STATE_TTL,
         OPTION_TIMEOUT_MIN, OPTION_TIMEOUT_MAX, DEFAULT_TIMEOUT);
}

/* Accepts SIZE with an optional K, M, G or T suffix (and optional "B" or
 * "iB"). */
int options_parse_size(const char *text, uint64_t *out)
{
  static const char units[] = "KMGT";
  unsigned long long value;
  const char *unit;
  char *end;
  int shift = 0;

  if (!text || *text < '0' || *text > '9')
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

int options_parse_seconds(const char *text, unsigned min, unsigned max,
                          unsigned *out)
{
  unsigned long value;
  char *end;

  if (!text || *text < '0' || *text > '9')
    return -1;
  errno = 0;
  value = strtoul(text, &end, 10);
  if (errno || *end || value < min || value > max)
    return -1;
  *out = (unsigned)value;
  return 0;
}

/* Sets *OUT from TEXT, or to FALLBACK when the option was not given. */
static int parse_seconds_option(const char *name, const char *text,
                                unsigned min, unsigned max, unsigned fallback,
                                unsigned *out)
{
  if (!text) {
    *out = fallback;
    return 0;
  }
  if (options_parse_seconds(text, min, max, out) == 0)
    return 0;
  fprintf(stderr, "asanafs: invalid %s=%s: expected whole seconds from %u "
                  "to %u\n", name, text, min, max);
  return FS_EXIT_USAGE;
}

/* Takes the positional words out of the argument list: [SOURCE] MOUNTPOINT.
 * Everything else stays for libfuse. */
static int keep_option(void *data, const char *arg, int key,
                       struct fuse_args *args)
{
  struct fs_config *config = data;
  char *copy;

  if (key != FUSE_OPT_KEY_NONOPT)
    return 1;
  if (config->source) {
    config->extra_words++;
    return 0;
  }
  copy = strdup(arg);
  if (!copy)
    return -1;
  if (config->mountpoint)
    config->source = config->mountpoint;
  config->mountpoint = copy;
  return 0;
}

/* Rejects NAME= with no value, which would otherwise mean the working
 * folder or a file named "". */
static int check_path_option(const char *name, const char *value,
                             const char *expected)
{
  if (value && !*value) {
    fprintf(stderr, "asanafs: invalid %s=: expected %s\n", name, expected);
    return FS_EXIT_USAGE;
  }
  return 0;
}

static int check_values(struct fs_config *config)
{
  if (check_path_option("cache_dir", config->cache_dir, "the path of a "
                        "folder, or no cache_dir option for the default") ||
      check_path_option("token_file", config->token_file, "the path of a "
                        "file that holds the token"))
    return FS_EXIT_USAGE;
  if (config->cache_size_text &&
      options_parse_size(config->cache_size_text, &config->cache_size) < 0) {
    fprintf(stderr, "asanafs: invalid cache_size=%s: expected a number of "
                    "bytes with an optional K, M, G or T suffix, such as 20G, "
                    "or 0 for no limit\n", config->cache_size_text);
    return FS_EXIT_USAGE;
  }
  if (parse_seconds_option("state_ttl", config->state_ttl_text, 0,
                           OPTION_STATE_TTL_MAX, DEFAULT_STATE_TTL,
                           &config->state_ttl) ||
      parse_seconds_option("timeout", config->timeout_text,
                           OPTION_TIMEOUT_MIN, OPTION_TIMEOUT_MAX,
                           DEFAULT_TIMEOUT, &config->timeout))
    return FS_EXIT_USAGE;
  return 0;
}

int options_parse(struct fuse_args *args, struct fs_config *config)
{
  int rc;

  if (fuse_opt_parse(args, config, option_spec, keep_option) < 0)
    return FS_EXIT_USAGE;
  if (config->extra_words > 0) {
    fprintf(stderr, "asanafs: too many arguments: expected [SOURCE] "
                    "MOUNTPOINT; see asanafs --help\n");
    return FS_EXIT_USAGE;
  }
  rc = check_values(config);
  if (rc)
    return rc;
  if (!config->api_url)
    config->api_url = strdup(DEFAULT_API_URL);
  return config->api_url ? 0 : FS_EXIT_USAGE;
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
    fprintf(stderr, "asanafs: cannot open token file %s: %s; check the "
                    "path given with -o token_file\n", path, strerror(errno));
    return 1;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "asanafs: token file %s is not a regular file; pass "
                    "a file that holds the token with -o token_file\n", path);
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
    fprintf(stderr, "asanafs: cannot read token file %s: %s; put only the "
                    "token in it\n", path,
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

int options_read_token(struct fs_config *config)
{
  if (config->token_file) {
    if (read_token_file(config))
      return FS_EXIT_TOKEN;
  } else {
    take_token_from_env(config);
  }
  if (!config->token || !*config->token) {
    fprintf(stderr,
            "asanafs: no Asana access token; set ASANA_ACCESS_TOKEN in the "
            "environment, or put the token in a file only you can read "
            "(chmod 600) and pass -o token_file=FILE\n");
    return FS_EXIT_TOKEN;
  }
  return 0;
}

int options_resolve_cache_dir(struct fs_config *config)
{
  if (resolve_cache_dir(config)) {
    fprintf(stderr, "asanafs: cannot work out the cache folder; pass "
                    "-o cache_dir=DIR\n");
    return FS_EXIT_CACHE;
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
  free(config->source);
  free(config->mountpoint);
  memset(config, 0, sizeof(*config));
}
