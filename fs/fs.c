/*
 * Start-up and shut-down: parse options, build the client, cache and
 * registry, mount, serve, and tear down in reverse order.
 */
#include "fs.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <fuse_lowlevel.h>
#include <zlib.h>

#include "log.h"

/* ---- The cache's source: archives through the client ---- */

/* Returns the errno for a failed probe or download. ENOENT becomes EIO,
 * because export.json is listed: a file that vanished would make rsync
 * --delete remove the copy in a backup, while EIO makes it skip deletion. */
static int source_errno(const struct client_error *err)
{
  int rc = client_error_errno(err);

  return rc == ENOENT ? -EIO : -rc;
}

static int source_probe(void *ctx, const char *gid, struct cache_probe *probe)
{
  struct client_error err = {0};

  if (client_archive_probe(ctx, gid, &probe->archive_size, probe->trailer,
                           probe->head_from, probe->head, probe->head_cap,
                           &probe->head_len, &err) != CLIENT_OK) {
    log_error("reading the size of export %s failed: %s", gid, err.message);
    return source_errno(&err);
  }
  return 0;
}

static int source_fetch(void *ctx, const char *gid, uint64_t offset,
                        cache_sink_fn sink, void *sink_ctx)
{
  struct client_error err = {0};

  if (client_download_archive(ctx, gid, offset, sink, sink_ctx, &err) !=
      CLIENT_OK) {
    if (err.result != CLIENT_ERR_CANCELLED)
      log_error("downloading export %s failed: %s", gid, err.message);
    return source_errno(&err);
  }
  return 0;
}

/* ---- Set-up ---- */

static int make_client(struct fs_context *ctx)
{
  struct client_error err = {0};
  struct client_config config = {
    .api_url = ctx->config->api_url,
    .token = ctx->config->token,
    .max_call_s = ctx->config->timeout,
  };

  if (client_new(&config, &ctx->client, &err) != CLIENT_OK) {
    fprintf(stderr, "asanafs: invalid api_url=%s: %s\n", config.api_url,
            err.message);
    return err.result == CLIENT_ERR_NOMEM ? FS_EXIT_API : FS_EXIT_USAGE;
  }
  return 0;
}

/* Tells a reader waiting for a download to give up: its request was
 * interrupted, or the file system is shutting down (SIGTERM, unmount),
 * which waits for every request in flight. */
static int request_cancelled(void)
{
  struct fuse *fuse = fuse_get_context()->fuse;

  return fuse_interrupted() ||
         (fuse && fuse_session_exited(fuse_get_session(fuse)));
}

static int make_cache(struct fs_context *ctx)
{
  static struct cache_source source = {
    .probe = source_probe,
    .fetch = source_fetch,
  };
  struct cache_config config = {
    .dir = ctx->config->cache_dir,
    .max_bytes = ctx->config->cache_size,
    .interrupted = request_cancelled,
  };
  char err[512] = "";
  int rc;

  source.ctx = ctx->client;
  rc = cache_new(&config, &source, &ctx->cache, err, sizeof(err));
  if (rc == -EBUSY) {
    fprintf(stderr, "asanafs: %s; unmount that mount first (see "
                    "/proc/mounts), or pass another -o cache_dir=DIR\n", err);
    return FS_EXIT_CACHE;
  }
  if (rc < 0 ||
      registry_new(ctx->config->cache_dir, ctx->client, ctx->config->state_ttl,
                   &ctx->registry, err, sizeof(err)) < 0) {
    fprintf(stderr, "asanafs: %s; make it a folder that you own and can "
                    "write, or pass another with -o cache_dir=DIR\n", err);
    return FS_EXIT_CACHE;
  }
  return 0;
}

static void free_context(struct fs_context *ctx)
{
  if (ctx->client)
    client_shutdown(ctx->client);
  ops_release_handles();
  cache_free(ctx->cache);
  registry_free(ctx->registry);
  client_free(ctx->client);
  memset(ctx, 0, sizeof(*ctx));
}

static void print_version(void)
{
  printf("asanafs %s\n", ASANAFS_VERSION);
  printf("libfuse %s, %s, jansson %s, zlib %s\n", fuse_pkgversion(),
         curl_version(), JANSSON_VERSION, zlibVersion());
}

static void on_interrupt_signal(int signal_number)
{
  (void)signal_number;
}

/*
 * The init callback turns on libfuse's interrupt support (cfg->intr), so
 * that a reader waiting for a download can give up on a signal. libfuse
 * then sends SIGUSR1 to the worker thread of an interrupted request, but
 * it installs a handler only when "-o intr" is parsed, which libfuse 3.14
 * rejects as an unknown option. Without a handler SIGUSR1 would kill the
 * process, so install one that does nothing; the waits poll
 * fuse_interrupted().
 */
static int install_interrupt_handler(void)
{
  struct sigaction action = { .sa_handler = on_interrupt_signal };

  sigemptyset(&action.sa_mask);
  return sigaction(SIGUSR1, &action, NULL);
}

/* ---- Messages of libfuse ----
 * libfuse and fusermount3 print their own errors to stderr, sometimes on
 * several lines. While asanafs creates and mounts the file system, stderr
 * goes to a temporary file, so that a failure is reported as one line. */

struct captured_stderr {
  FILE *file;                 /* NULL when capturing failed */
  int saved_fd;
};

static void capture_stderr(struct captured_stderr *capture)
{
  fflush(stderr);
  capture->saved_fd = -1;
  capture->file = tmpfile();
  if (!capture->file)
    return;
  capture->saved_fd = dup(STDERR_FILENO);
  if (capture->saved_fd < 0 ||
      dup2(fileno(capture->file), STDERR_FILENO) < 0) {
    if (capture->saved_fd >= 0)
      close(capture->saved_fd);
    fclose(capture->file);
    capture->file = NULL;
  }
}

/* Restores stderr and writes what was printed meanwhile into OUT as one
 * line: lines are joined with "; " and libfuse's "fuse: " prefix is cut. */
static void release_stderr(struct captured_stderr *capture, char *out,
                           size_t out_len)
{
  char line[512];
  size_t used = 0;

  out[0] = '\0';
  if (!capture->file)
    return;
  fflush(stderr);
  dup2(capture->saved_fd, STDERR_FILENO);
  close(capture->saved_fd);
  rewind(capture->file);
  while (fgets(line, sizeof(line), capture->file) && used + 1 < out_len) {
    char *text = line;

    text[strcspn(text, "\r\n")] = '\0';
    if (strncmp(text, "fuse: ", 6) == 0)
      text += 6;
    if (!*text)
      continue;
    used += (size_t)snprintf(out + used, out_len - used, "%s%s",
                             used ? "; " : "", text);
  }
  fclose(capture->file);
}

/* Creates the FUSE file system, which also checks libfuse's options.
 * Returns NULL after printing the reason. */
static struct fuse *create_fuse(struct fuse_args *args, struct fs_context *ctx)
{
  struct captured_stderr capture;
  struct fuse *fuse;
  char reason[1024];

  capture_stderr(&capture);
  fuse = fuse_new(args, &fs_operations, sizeof(fs_operations), ctx);
  release_stderr(&capture, reason, sizeof(reason));
  if (!fuse)
    fprintf(stderr, "asanafs: %s; see asanafs --help\n",
            reason[0] ? reason : "libfuse rejected the options");
  return fuse;
}

static int mount_fuse(struct fuse *fuse, const char *mountpoint)
{
  struct captured_stderr capture;
  char reason[1024];
  int rc;

  capture_stderr(&capture);
  rc = fuse_mount(fuse, mountpoint);
  release_stderr(&capture, reason, sizeof(reason));
  if (rc != 0) {
    fprintf(stderr, "asanafs: mounting %s failed: %s; check that /dev/fuse "
                    "exists (modprobe fuse) and that fusermount3 is "
                    "installed\n", mountpoint,
            reason[0] ? reason : "libfuse gave no reason");
    return FS_EXIT_FUSE;
  }
  return 0;
}

/* Mounts and runs the FUSE loop until unmounted or signalled. */
static int serve(struct fuse *fuse, struct fuse_cmdline_opts *opts,
                 struct fs_context *ctx, int log_level)
{
  struct fuse_loop_config *loop_config = NULL;
  int rc;

  rc = mount_fuse(fuse, opts->mountpoint);
  if (rc)
    return rc;
  rc = FS_EXIT_FUSE;
  if (fuse_daemonize(opts->foreground) != 0)
    goto out_unmount;
  if (!opts->foreground)
    log_init(true, log_level);
  if (fuse_set_signal_handlers(fuse_get_session(fuse)) != 0)
    goto out_unmount;
  log_info("mounted %s (cache %s)", opts->mountpoint, ctx->config->cache_dir);
  if (opts->singlethread) {
    rc = fuse_loop(fuse);
  } else {
    loop_config = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(loop_config, (unsigned)opts->clone_fd);
    if (opts->max_idle_threads != UINT_MAX)
      fuse_loop_cfg_set_idle_threads(loop_config, opts->max_idle_threads);
    /* libfuse leaves these at UINT_MAX unless -o max_threads or
     * -o max_idle_threads was given; passing that on earns a warning. */
    if (opts->max_threads != 0 && opts->max_threads != UINT_MAX)
      fuse_loop_cfg_set_max_threads(loop_config, opts->max_threads);
    rc = fuse_loop_mt(fuse, loop_config);
    fuse_loop_cfg_destroy(loop_config);
  }
  /* libfuse returns the number of the signal that ended the loop; a
   * SIGTERM, SIGINT or SIGHUP is a requested stop, not a failure. */
  rc = (rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP) ? 0 : 1;
  fuse_remove_signal_handlers(fuse_get_session(fuse));
  log_info("unmounting %s", opts->mountpoint);
out_unmount:
  fuse_unmount(fuse);
  return rc;
}

/* ---- Checks before mounting ---- */

/* Fails unless PATH is a folder with no entries but "." and "..". */
static int check_empty_folder(const char *path)
{
  DIR *dir = opendir(path);
  struct dirent *entry;
  bool empty = true;

  if (!dir) {
    fprintf(stderr, "asanafs: cannot read mount point %s: %s; check its "
                    "permissions\n", path, strerror(errno));
    return FS_EXIT_MOUNT_POINT;
  }
  while (empty && (entry = readdir(dir)) != NULL)
    empty = strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0;
  closedir(dir);
  if (!empty) {
    fprintf(stderr, "asanafs: mount point %s is not empty; use an empty "
                    "folder, or pass -o nonempty to hide its files while "
                    "mounted\n", path);
    return FS_EXIT_MOUNT_POINT;
  }
  return 0;
}

/* Tells whether the folder PATH, whose stat is ST, is the root of a mount:
 * its parent is on another device. */
static bool is_mounted(const char *path, const struct stat *st)
{
  char parent[PATH_MAX + 4];
  struct stat up;

  snprintf(parent, sizeof(parent), "%s/..", path);
  return stat(parent, &up) == 0 && up.st_dev != st->st_dev;
}

/* Checks the mount point and sets OPTS->mountpoint to its absolute path.
 * libfuse would mount over a file or a folder with files, and a missing one
 * would fail only after the checks that need the network. */
static int check_mount_point(const struct fs_config *config,
                             struct fuse_cmdline_opts *opts)
{
  const char *path = config->mountpoint;
  char resolved[PATH_MAX];
  struct stat st;

  if (stat(path, &st) < 0) {
    if (errno == ENOENT)
      fprintf(stderr, "asanafs: mount point %s does not exist; create it "
                      "with mkdir -p %s\n", path, path);
    else if (errno == ENOTCONN)
      fprintf(stderr, "asanafs: mount point %s is a FUSE mount whose "
                      "process ended; run fusermount3 -u %s first\n", path,
              path);
    else
      fprintf(stderr, "asanafs: cannot use mount point %s: %s; check its "
                      "permissions\n", path, strerror(errno));
    return FS_EXIT_MOUNT_POINT;
  }
  if (!realpath(path, resolved)) {
    fprintf(stderr, "asanafs: cannot use mount point %s: %s; check its "
                    "permissions\n", path, strerror(errno));
    return FS_EXIT_MOUNT_POINT;
  }
  if (!S_ISDIR(st.st_mode)) {
    fprintf(stderr, "asanafs: mount point %s is not a folder; create a "
                    "folder with mkdir and mount there\n", path);
    return FS_EXIT_MOUNT_POINT;
  }
  if (!config->nonempty && is_mounted(resolved, &st)) {
    fprintf(stderr, "asanafs: %s is already a mount point; unmount it first "
                    "with fusermount3 -u %s, or mount somewhere else\n",
            path, path);
    return FS_EXIT_MOUNT_POINT;
  }
  if (!config->nonempty && check_empty_folder(resolved))
    return FS_EXIT_MOUNT_POINT;
  opts->mountpoint = strdup(resolved);
  return opts->mountpoint ? 0 : FS_EXIT_MOUNT_POINT;
}

/* Asks Asana who the token belongs to, so that a rejected token or an
 * unreachable API fails the start instead of every later operation. Retry
 * warnings stay quiet unless -d, because a failing start prints one line. */
static int check_token(struct fs_context *ctx, int log_level)
{
  struct client_error err = {0};
  struct client_user user;
  char api[512];
  enum client_result result;

  log_init(false, log_level == LOG_DEBUG ? LOG_DEBUG : LOG_ERR);
  result = client_get_me(ctx->client, &user, &err);
  log_init(false, log_level);
  if (result == CLIENT_OK) {
    log_debug("Asana accepted the token of user %s", user.gid);
    return 0;
  }
  if (result == CLIENT_ERR_HTTP && (err.status == 401 || err.status == 403)) {
    if (ctx->config->token_file)
      fprintf(stderr, "asanafs: Asana rejected the token: %s; create a new "
                      "token in Asana's developer console and put it in %s\n",
              err.message, ctx->config->token_file);
    else
      fprintf(stderr, "asanafs: Asana rejected the token: %s; create a new "
                      "token in Asana's developer console and pass it in "
                      "ASANA_ACCESS_TOKEN or -o token_file\n", err.message);
    return FS_EXIT_TOKEN;
  }
  log_redact_url(ctx->config->api_url, api, sizeof(api));
  if (result == CLIENT_ERR_HTTP && err.status == 404) {
    fprintf(stderr, "asanafs: checking the token at %s failed: %s; check "
                    "that api_url ends in /api/1.0\n", api, err.message);
    return FS_EXIT_API;
  }
  fprintf(stderr, "asanafs: checking the token at %s failed: %s; check the "
                  "network and api_url, or raise -o timeout (now %u s)\n",
          api, err.message, ctx->config->timeout);
  return FS_EXIT_API;
}

static void print_missing_mount_point(const char *program)
{
  fprintf(stderr, "asanafs: no mount point given; usage: %s [SOURCE] "
                  "MOUNTPOINT [options], see %s --help\n", program, program);
}

static void print_help(const char *program, struct fuse_args *args)
{
  options_print_usage(program);
  printf("FUSE options:\n");
  fuse_cmdline_help();
  fuse_lib_help(args);
}

/* Runs every check that needs no mount, in the order of the exit codes
 * that users meet first: the mount point, the token, the cache folder, and
 * then the API. */
static int prepare(struct fs_context *ctx, struct fuse_cmdline_opts *opts,
                   int log_level)
{
  int rc = check_mount_point(ctx->config, opts);

  if (rc)
    return rc;
  log_init(false, log_level);
  rc = options_read_token(ctx->config);
  if (rc)
    return rc;
  log_add_secret(ctx->config->token);
  rc = options_resolve_cache_dir(ctx->config);
  if (rc)
    return rc;
  ctx->uid = getuid();
  ctx->gid = getgid();
  rc = make_client(ctx);
  if (rc)
    return rc;
  rc = make_cache(ctx);
  if (rc)
    return rc;
  return check_token(ctx, log_level);
}

int fs_main(int argc, char *argv[])
{
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts opts = {0};
  struct fs_config config = {0};
  struct fs_context ctx = { .config = &config };
  struct fuse *fuse = NULL;
  int rc, level;

  rc = options_parse(&args, &config);
  if (rc)
    goto out;
  rc = FS_EXIT_USAGE;
  if (fuse_parse_cmdline(&args, &opts) != 0)
    goto out;
  rc = FS_EXIT_OK;
  if (opts.show_version) {
    print_version();
    goto out;
  }
  if (opts.show_help) {
    print_help(argv[0], &args);
    goto out;
  }
  rc = FS_EXIT_USAGE;
  if (!config.mountpoint) {
    print_missing_mount_point(argv[0]);
    goto out;
  }
  if (install_interrupt_handler() != 0)
    goto out;
  fuse = create_fuse(&args, &ctx);
  if (!fuse)
    goto out;
  level = opts.debug ? LOG_DEBUG : LOG_INFO;
  rc = prepare(&ctx, &opts, level);
  if (rc == 0)
    rc = serve(fuse, &opts, &ctx, level);
out:
  if (fuse)
    fuse_destroy(fuse);
  free_context(&ctx);
  free(opts.mountpoint);
  fuse_opt_free_args(&args);
  options_free(&config);
  return rc;
}
