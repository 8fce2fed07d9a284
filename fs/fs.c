/*
 * Start-up and shut-down: parse options, build the client, cache and
 * registry, mount, serve, and tear down in reverse order.
 */
#include "fs.h"
#include "internal.h"

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

static int source_probe(void *ctx, const char *gid, uint64_t *archive_size,
                        unsigned char trailer[8])
{
  struct client_error err = {0};

  if (client_archive_tail(ctx, gid, archive_size, trailer, &err) !=
      CLIENT_OK) {
    log_error("reading the size of export %s failed: %s", gid, err.message);
    return -client_error_errno(&err);
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
    return -client_error_errno(&err);
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
    fprintf(stderr, "asanafs: %s\n", err.message);
    return 1;
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

  source.ctx = ctx->client;
  if (cache_new(&config, &source, &ctx->cache, err, sizeof(err)) < 0) {
    fprintf(stderr, "asanafs: %s\n", err);
    return 1;
  }
  if (registry_new(ctx->config->cache_dir, ctx->client, ctx->config->state_ttl,
                   &ctx->registry, err, sizeof(err)) < 0) {
    fprintf(stderr, "asanafs: %s\n", err);
    return 1;
  }
  return 0;
}

static void free_context(struct fs_context *ctx)
{
  if (ctx->client)
    client_shutdown(ctx->client);
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

/* Mounts and runs the FUSE loop until unmounted or signalled. */
static int serve(struct fuse_args *args, struct fuse_cmdline_opts *opts,
                 struct fs_context *ctx, int log_level)
{
  struct fuse_loop_config *loop_config = NULL;
  struct fuse *fuse;
  int rc = 1;

  if (install_interrupt_handler() != 0)
    return 1;
  fuse = fuse_new(args, &fs_operations, sizeof(fs_operations), ctx);
  if (!fuse)
    return 1;
  if (fuse_mount(fuse, opts->mountpoint) != 0)
    goto out_destroy;
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
out_destroy:
  fuse_destroy(fuse);
  return rc;
}

/* Rejects a mount point that is missing or not a folder, which libfuse
 * would otherwise mount over and serve only errors from. */
static int check_mount_point(const char *path)
{
  struct stat st;

  if (stat(path, &st) < 0) {
    fprintf(stderr, "asanafs: cannot use mount point %s: %s\n", path,
            strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    fprintf(stderr, "asanafs: mount point %s is not a folder; create one "
                    "with mkdir\n", path);
    return 1;
  }
  return 0;
}

int fs_main(int argc, char *argv[])
{
  struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
  struct fuse_cmdline_opts opts = {0};
  struct fs_config config = {0};
  struct fs_context ctx = { .config = &config };
  int rc = 1, level;

  if (options_parse(&args, &config) || fuse_parse_cmdline(&args, &opts) != 0)
    goto out;
  if (opts.show_version) {
    print_version();
    rc = 0;
    goto out;
  }
  if (opts.show_help) {
    options_print_usage(argv[0]);
    printf("FUSE options:\n");
    fuse_cmdline_help();
    fuse_lib_help(&args);
    rc = 0;
    goto out;
  }
  if (!opts.mountpoint) {
    fprintf(stderr, "asanafs: no mount point given\n"
                    "usage: %s MOUNTPOINT [options]; see %s --help\n",
            argv[0], argv[0]);
    goto out;
  }
  if (check_mount_point(opts.mountpoint))
    goto out;
  level = opts.debug ? LOG_DEBUG : LOG_INFO;
  log_init(false, level);
  if (options_finish(&config))
    goto out;
  log_add_secret(config.token);
  ctx.uid = getuid();
  ctx.gid = getgid();
  if (make_client(&ctx) || make_cache(&ctx))
    goto out;
  rc = serve(&args, &opts, &ctx, level);
out:
  free_context(&ctx);
  free(opts.mountpoint);
  fuse_opt_free_args(&args);
  options_free(&config);
  return rc;
}
