/*
 * FUSE operations. Each resolves its path through the node table and
 * returns 0 or a negative errno. Small files (state, info.json, ...) are
 * rendered once at open and served with direct_io, so every reader sees
 * the content as of its open and never a stale page or size. Export data is
 * served through the cache and kept in the kernel page cache once complete.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* A file or folder handle: what one open reads or writes. Its node comes
 * first, so that locate() reads the node of either kind. */
struct open_file {
  struct node node;
  struct open_file *prev, *next;  /* guarded by handles_lock */
  enum node_io io;
  enum cache_kind kind;
  struct cache_file *data;        /* IO_CACHE */
  char *text;                     /* IO_RENDERED and IO_CONTROL: snapshot */
  size_t len;
  char org[CLIENT_GID_MAX];       /* IO_CONTROL */
  bool wrote;                     /* IO_CONTROL: the request was made */
  int write_result;               /* IO_CONTROL: its errno, or 0 */
  int read_error;                 /* IO_CACHE: first failed read, or 0 */
  int fd;                         /* IO_CACHE: the complete file, or -1 */
  uint64_t fd_size;               /* its size */
};

/* Every open file and folder handle. libfuse calls no release for the
 * handles still open when the file system stops (SIGTERM, or a forced
 * unmount), so ops_release_handles() frees those from this list. */
static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct open_file *handles;   /* guarded by handles_lock */

static void track_handle(struct open_file *file)
{
  pthread_mutex_lock(&handles_lock);
  file->prev = NULL;
  file->next = handles;
  if (handles)
    handles->prev = file;
  handles = file;
  pthread_mutex_unlock(&handles_lock);
}

static void untrack_handle(struct open_file *file)
{
  pthread_mutex_lock(&handles_lock);
  if (file->prev)
    file->prev->next = file->next;
  else
    handles = file->next;
  if (file->next)
    file->next->prev = file->prev;
  pthread_mutex_unlock(&handles_lock);
}

static struct fs_context *context(void)
{
  return fuse_get_context()->private_data;
}

static struct open_file *handle(const struct fuse_file_info *fi)
{
  return (struct open_file *)(uintptr_t)fi->fh;
}

/* Resolves the node an operation is about: from PATH, or from the open
 * handle when libfuse passes no path (see nullpath_ok in fs_init). */
static int locate(const char *path, const struct fuse_file_info *fi,
                  struct node *node)
{
  if (path)
    return node_resolve(path, node);
  if (fi && fi->fh) {
    *node = *(const struct node *)(uintptr_t)fi->fh;
    return 0;
  }
  return -EBADF;
}

/* Resolves a node that exists and fills ST. */
static int find_node(const char *path, const struct fuse_file_info *fi,
                     struct node *node, struct stat *st)
{
  int rc = locate(path, fi, node);

  return rc < 0 ? rc : node_getattr(context(), node, st);
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
  /* Stable inode numbers let rsync and find see the same object again.
   * Attributes are cached for one second only, so a new state shows up
   * promptly. Missing names are not cached, so export.json appears as soon
   * as the export finishes. */
  cfg->use_ino = 1;
  cfg->entry_timeout = 1.0;
  cfg->attr_timeout = 1.0;
  cfg->negative_timeout = 0.0;
  /* Without a path, reads of open files take no lock on the path in
   * libfuse, so a reader waiting for a download does not hold up an rmdir
   * of its export, which then stops that download. */
  cfg->nullpath_ok = 1;
  /* Lets a reader waiting for a download give up on a signal; see
   * install_interrupt_handler() in fs.c. */
  cfg->intr = 1;
  /* Lets libfuse splice replies of fs_read_buf() from the cache file to
   * the kernel instead of copying them through a buffer, where the kernel
   * offers it. */
  if (conn->capable & FUSE_CAP_SPLICE_WRITE)
    conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE)
    conn->want |= FUSE_CAP_SPLICE_MOVE;
  return context();
}

static void fs_destroy(void *private_data)
{
  struct fs_context *ctx = private_data;

  client_shutdown(ctx->client);
}

static int fs_getattr(const char *path, struct stat *st,
                      struct fuse_file_info *fi)
{
  struct node node;
  int rc;

  registry_set_in_getattr(true);
  rc = find_node(path, fi, &node, st);
  registry_set_in_getattr(false);
  return rc;
}

struct fill_state {
  void *buf;
  fuse_fill_dir_t filler;
};

static int fill_child(void *ctx, const char *name, const struct stat *st)
{
  struct fill_state *state = ctx;

  return state->filler(state->buf, name, st, 0, FUSE_FILL_DIR_PLUS) ? 1 : 0;
}

/* Resolves a folder that exists and fills ST; -ENOTDIR for anything else. */
static int find_folder(const char *path, const struct fuse_file_info *fi,
                       struct node *node, struct stat *st)
{
  int rc = find_node(path, fi, node, st);

  if (rc == 0 && node->type->io != IO_DIR)
    rc = -ENOTDIR;
  return rc;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t filler,
                      off_t offset, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags)
{
  struct fill_state state = { buf, filler };
  struct stat st;
  struct node node;
  int rc = find_folder(path, fi, &node, &st);

  if (rc < 0)
    return rc;
  filler(buf, ".", &st, 0, 0);
  filler(buf, "..", NULL, 0, 0);
  rc = node_list_children(context(), &node, fill_child, &state);
  /* glibc's readdir() takes ENOENT from getdents as the end of the folder,
   * so a listing that failed with it, such as a 404 from Asana, would look
   * like an empty folder to ls and rsync. */
  if (rc == -ENOENT)
    rc = -EIO;
  return rc < 0 ? rc : 0;
}

static int fs_opendir(const char *path, struct fuse_file_info *fi)
{
  struct open_file *folder;
  struct stat st;
  struct node node;
  int rc = find_folder(path, NULL, &node, &st);

  if (rc < 0)
    return rc;
  folder = calloc(1, sizeof(*folder));
  if (!folder)
    return -ENOMEM;
  folder->node = node;
  folder->io = IO_DIR;
  track_handle(folder);
  fi->fh = (uint64_t)(uintptr_t)folder;
  return 0;
}

static int fs_releasedir(const char *path, struct fuse_file_info *fi)
{
  struct open_file *folder = handle(fi);

  untrack_handle(folder);
  free(folder);
  return 0;
}

static int fs_readlink(const char *path, char *buf, size_t size)
{
  struct node node;
  char *text = NULL;
  size_t len = 0;
  time_t mtime;
  int rc = node_resolve(path, &node);

  if (rc < 0)
    return rc;
  if (node.type->io != IO_LINK)
    return -EINVAL;
  rc = node.type->render(context(), &node, &text, &len, &mtime);
  if (rc < 0)
    return rc;
  snprintf(buf, size, "%s", text);
  free(text);
  return 0;
}

static int open_cached(struct fs_context *ctx, const struct node *node,
                       struct open_file *file, struct fuse_file_info *fi)
{
  struct cache_status status;
  int rc = cache_open(ctx->cache, node->param[PARAM_EXPORT], &file->data);

  if (rc < 0)
    return rc;
  file->kind = node->type->cache_kind;
  cache_get_status(ctx->cache, node->param[PARAM_EXPORT], &status);
  /* Complete data never changes, so the kernel may keep its pages from
   * one open to the next. Data still arriving is read with direct I/O:
   *  - the size of export.json from the gzip trailer may be short (several
   *    members, or over 4 GiB), and the kernel would cut reads there;
   *  - no page of a download that later fails its check stays cached;
   *  - an open never waits on a page that another reader has locked while
   *    it waits for a distant range. */
  fi->keep_cache = status.complete;
  fi->direct_io = !status.complete;
  /* Reads of a complete file are spliced from this descriptor to the
   * kernel, which saves copying each page through asanafs's memory. When
   * it cannot be opened, reads go through cache_read() as before. */
  if (status.complete) {
    rc = cache_open_complete(file->data, file->kind, &file->fd_size);
    file->fd = rc < 0 ? -1 : rc;
  }
  return 0;
}

static int open_rendered(struct fs_context *ctx, const struct node *node,
                         struct open_file *file, struct fuse_file_info *fi)
{
  time_t mtime;

  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    if (node->type->io != IO_CONTROL)
      return -EACCES;
    snprintf(file->org, sizeof(file->org), "%s", node->param[PARAM_ORG]);
  }
  fi->direct_io = 1;
  return node->type->render(ctx, node, &file->text, &file->len, &mtime);
}

static void free_open_file(struct open_file *file)
{
  if (file->fd >= 0)
    close(file->fd);
  if (file->data)
    cache_close(file->data);
  free(file->text);
  free(file);
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
  struct fs_context *ctx = context();
  struct open_file *file = NULL;
  struct stat st;
  struct node node;
  int rc = find_node(path, NULL, &node, &st);

  if (rc < 0)
    return rc;
  if (node.type->io == IO_DIR)
    return -EISDIR;
  if (node.type->io == IO_CACHE && (fi->flags & O_ACCMODE) != O_RDONLY)
    return -EACCES;
  file = calloc(1, sizeof(*file));
  if (!file)
    return -ENOMEM;
  file->node = node;
  file->io = node.type->io;
  file->fd = -1;
  if (file->io == IO_CACHE)
    rc = open_cached(ctx, &node, file, fi);
  else
    rc = open_rendered(ctx, &node, file, fi);
  if (rc < 0) {
    free_open_file(file);
    return rc;
  }
  track_handle(file);
  fi->fh = (uint64_t)(uintptr_t)file;
  return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi)
{
  struct open_file *file = handle(fi);

  if (offset < 0)
    return -EINVAL;
  if (file->io == IO_CACHE) {
    ssize_t n;

    /* After a failed download the kernel may still cache pages that this
     * open got from it. Failing every later read of the open keeps those
     * pages from being mixed with the next download. A new open starts
     * clean. */
    if (file->read_error)
      return file->read_error;
    n = cache_read(file->data, file->kind, buf, size, (uint64_t)offset);
    if (n < 0 && n != -EINTR)
      file->read_error = (int)n;
    return (int)n;
  }
  if ((size_t)offset >= file->len)
    return 0;
  if (size > file->len - (size_t)offset)
    size = file->len - (size_t)offset;
  memcpy(buf, file->text + offset, size);
  return (int)size;
}

/* Starts reading the next half of READ_AHEAD_SIZE of a complete file from
 * disk whenever a read crosses into a new half. The kernel's readahead
 * sends FUSE reads of 256 KiB (seen on Linux 6.18), and the cache file's
 * own readahead alone left the disk idle while each crossed FUSE. */
#define READ_AHEAD_SIZE (8 * 1024 * 1024)

static void read_ahead(int fd, uint64_t off, size_t len)
{
  const uint64_t step = READ_AHEAD_SIZE / 2;

  if (off / step != (off + len) / step)
    posix_fadvise(fd, (off_t)((off + len) / step * step + step), (off_t)step,
                  POSIX_FADV_WILLNEED);
}

/* Hands libfuse a reply to splice from the complete file when there is
 * one, else a buffer that fs_read() fills. libfuse frees the vector and
 * its memory buffer after replying. The descriptor stays open until
 * release, which the kernel sends only after the open's last read. */
static int fs_read_buf(const char *path, struct fuse_bufvec **bufp,
                       size_t size, off_t offset, struct fuse_file_info *fi)
{
  struct open_file *file = handle(fi);
  struct fuse_bufvec *vec;
  void *mem = NULL;
  int n;

  if (offset < 0)
    return -EINVAL;
  vec = malloc(sizeof(*vec));
  if (!vec)
    return -ENOMEM;
  if (file->fd >= 0) {
    if ((uint64_t)offset >= file->fd_size)
      size = 0;
    else if (size > file->fd_size - (uint64_t)offset)
      size = (size_t)(file->fd_size - (uint64_t)offset);
    read_ahead(file->fd, (uint64_t)offset, size);
    *vec = FUSE_BUFVEC_INIT(size);
    vec->buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY;
    vec->buf[0].fd = file->fd;
    vec->buf[0].pos = offset;
    *bufp = vec;
    return 0;
  }

  n = -ENOMEM;
  mem = malloc(size ? size : 1);
  if (mem)
    n = fs_read(path, mem, size, offset, fi);
  if (n < 0)
    goto fail;
  *vec = FUSE_BUFVEC_INIT((size_t)n);
  vec->buf[0].mem = mem;
  *bufp = vec;
  return 0;
fail:
  free(mem);
  free(vec);
  return n;
}

/* Starts one export for the first non-empty write of an open of `new`,
 * and stores the new gid or Asana's error message as the file's content. */
static int start_export(struct fs_context *ctx, struct open_file *file)
{
  struct client_error err = {0};
  char gid[CLIENT_GID_MAX] = "";
  char text[CLIENT_MESSAGE_MAX + 16];
  int rc = registry_create_export(ctx->registry, file->org, gid, &err);

  if (rc == 0)
    snprintf(text, sizeof(text), "%s\n", gid);
  else if (err.message[0])
    snprintf(text, sizeof(text), "error: %s\n", err.message);
  else
    snprintf(text, sizeof(text), "error: %s\n", strerror(-rc));
  registry_set_control(ctx->registry, file->org, text);
  return rc;
}

static int fs_write(const char *path, const char *buf, size_t size,
                    off_t offset, struct fuse_file_info *fi)
{
  struct open_file *file = handle(fi);

  if (file->io != IO_CONTROL)
    return -EBADF;
  if (size == 0)
    return 0;
  if (!file->wrote) {
    file->wrote = true;
    file->write_result = start_export(context(), file);
  }
  return file->write_result < 0 ? file->write_result : (int)size;
}

static int fs_flush(const char *path, struct fuse_file_info *fi)
{
  struct open_file *file = handle(fi);

  return file->io == IO_CONTROL ? file->write_result : 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi)
{
  struct open_file *file = handle(fi);

  untrack_handle(file);
  free_open_file(file);
  return 0;
}

void ops_release_handles(void)
{
  struct open_file *file;

  pthread_mutex_lock(&handles_lock);
  while ((file = handles) != NULL) {
    handles = file->next;
    free_open_file(file);
  }
  pthread_mutex_unlock(&handles_lock);
}

/* Returns the errno for changing a node: ENOENT when it does not exist,
 * else EACCES, since everything but `new` is read-only. FI may be NULL. */
static int reject_change(const char *path, const struct fuse_file_info *fi)
{
  struct stat st;
  struct node node;
  int rc = find_node(path, fi, &node, &st);

  return rc < 0 ? rc : -EACCES;
}

/* Accepts a harmless change of `new` and rejects changes of anything else. */
static int allow_control_only(const char *path, struct fuse_file_info *fi)
{
  struct stat st;
  struct node node;
  int rc = find_node(path, fi, &node, &st);

  if (rc < 0)
    return rc;
  return node.type->io == IO_CONTROL ? 0 : -EACCES;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
  /* `echo > new` opens with O_TRUNC; there is nothing to truncate. */
  return allow_control_only(path, fi);
}

/* Splits PATH into its parent and last name. Returns -ENOENT for the root. */
static int split_parent(const char *path, char *parent, size_t parent_len,
                        const char **name)
{
  const char *slash = strrchr(path, '/');

  if (!slash || !slash[1])
    return -ENOENT;
  snprintf(parent, parent_len, "%.*s", (int)(slash - path), path);
  *name = slash + 1;
  return 0;
}

/* Resolves the parent of PATH and reports whether it is an exports folder. */
static bool parent_is_exports(const char *path, struct node *parent)
{
  char parent_path[4096];
  const char *name;
  struct stat st;

  if (split_parent(path, parent_path, sizeof(parent_path), &name) < 0 ||
      find_node(parent_path, NULL, parent, &st) < 0)
    return false;
  return strcmp(parent->type->pattern, "orgs/{gid}/exports") == 0;
}

static int fs_mkdir(const char *path, mode_t mode)
{
  struct fs_context *ctx = context();
  struct node parent, node;
  const char *name = strrchr(path, '/') + 1;

  if (strlen(name) > NAME_MAX)
    return -ENAMETOOLONG;
  if (!parent_is_exports(path, &parent))
    return reject_change(path, NULL) == -ENOENT ? -EACCES : -EEXIST;
  if (!gid_valid(name)) {
    log_warn("mkdir %s: an export folder is named by its gid, a number",
             path);
    return -EINVAL;
  }
  if (node_resolve(path, &node) < 0)
    return -EINVAL;
  return registry_adopt_export(ctx->registry, node.param[PARAM_ORG],
                               node.param[PARAM_EXPORT]);
}

static int fs_rmdir(const char *path)
{
  struct fs_context *ctx = context();
  struct stat st;
  struct node node;
  int rc = find_folder(path, NULL, &node, &st);

  if (rc < 0)
    return rc;
  if (strcmp(node.type->pattern, "orgs/{gid}/exports/{gid}") != 0)
    return -EACCES;
  rc = registry_forget_export(ctx->registry, node.param[PARAM_ORG],
                              node.param[PARAM_EXPORT]);
  if (rc == 0)
    cache_drop(ctx->cache, node.param[PARAM_EXPORT]);
  return rc;
}

static int fs_unlink(const char *path)
{
  return reject_change(path, NULL);
}

static int fs_rename(const char *from, const char *to, unsigned int flags)
{
  return reject_change(from, NULL);
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
  int rc = reject_change(path, NULL);

  return rc == -ENOENT ? -EACCES : -EEXIST;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
  return reject_change(path, fi);
}

static int fs_chown(const char *path, uid_t uid, gid_t gid,
                    struct fuse_file_info *fi)
{
  return reject_change(path, fi);
}

static int fs_utimens(const char *path, const struct timespec tv[2],
                      struct fuse_file_info *fi)
{
  /* `touch new` is harmless; all other times are Asana's. */
  return allow_control_only(path, fi);
}

static int fs_symlink(const char *target, const char *path)
{
  int rc = reject_change(path, NULL);

  return rc == -ENOENT ? -EACCES : -EEXIST;
}

static int fs_link(const char *from, const char *to)
{
  return -EACCES;
}

/* Copies LEN bytes of DATA to BUF as getxattr and listxattr do: with SIZE
 * 0 only the length is returned, and a short BUF gives -ERANGE. */
static int reply_xattr(char *buf, size_t size, const char *data, size_t len)
{
  if (len > INT_MAX)
    return -E2BIG;
  if (size == 0)
    return (int)len;
  if (size < len)
    return -ERANGE;
  memcpy(buf, data, len);
  return (int)len;
}

/* Finds the node at PATH and fills XATTRS with its attributes. */
static int load_xattrs(const char *path, struct node_xattrs *xattrs)
{
  struct stat st;
  struct node node;
  int rc = find_node(path, NULL, &node, &st);

  if (rc < 0)
    return rc;
  return node_get_xattrs(context(), &node, xattrs);
}

static int fs_getxattr(const char *path, const char *name, char *value,
                       size_t size)
{
  struct node_xattrs xattrs;
  int rc = load_xattrs(path, &xattrs);

  if (rc < 0)
    return rc;
  rc = -ENODATA;
  for (size_t i = 0; i < xattrs.count; i++) {
    if (strcmp(xattrs.items[i].name, name) == 0) {
      rc = reply_xattr(value, size, xattrs.items[i].value,
                       strlen(xattrs.items[i].value));
      break;
    }
  }
  node_xattrs_clear(&xattrs);
  return rc;
}

static int fs_listxattr(const char *path, char *list, size_t size)
{
  struct node_xattrs xattrs;
  char names[NODE_XATTRS_MAX * 64];
  size_t len = 0;
  int rc = load_xattrs(path, &xattrs);

  if (rc < 0)
    return rc;
  for (size_t i = 0; i < xattrs.count; i++) {
    size_t name_len = strlen(xattrs.items[i].name) + 1;

    if (len + name_len > sizeof(names))
      break;
    memcpy(names + len, xattrs.items[i].name, name_len);
    len += name_len;
  }
  node_xattrs_clear(&xattrs);
  return reply_xattr(list, size, names, len);
}

/* Extended attributes describe Asana's records and the cache, so none can
 * be set or removed. */
static int fs_setxattr(const char *path, const char *name, const char *value,
                       size_t size, int flags)
{
  int rc = reject_change(path, NULL);

  return rc == -EACCES ? -EPERM : rc;
}

static int fs_removexattr(const char *path, const char *name)
{
  int rc = reject_change(path, NULL);

  return rc == -EACCES ? -EPERM : rc;
}

static int fs_statfs(const char *path, struct statvfs *st)
{
  memset(st, 0, sizeof(*st));
  st->f_bsize = 4096;
  st->f_frsize = 4096;
  st->f_namemax = 255;
  return 0;
}

const struct fuse_operations fs_operations = {
  .init = fs_init,
  .destroy = fs_destroy,
  .getattr = fs_getattr,
  .opendir = fs_opendir,
  .readdir = fs_readdir,
  .releasedir = fs_releasedir,
  .readlink = fs_readlink,
  .open = fs_open,
  .read = fs_read,
  .read_buf = fs_read_buf,
  .write = fs_write,
  .flush = fs_flush,
  .release = fs_release,
  .truncate = fs_truncate,
  .mkdir = fs_mkdir,
  .rmdir = fs_rmdir,
  .unlink = fs_unlink,
  .rename = fs_rename,
  .create = fs_create,
  .chmod = fs_chmod,
  .chown = fs_chown,
  .utimens = fs_utimens,
  .symlink = fs_symlink,
  .link = fs_link,
  .statfs = fs_statfs,
  .getxattr = fs_getxattr,
  .listxattr = fs_listxattr,
  .setxattr = fs_setxattr,
  .removexattr = fs_removexattr,
};
