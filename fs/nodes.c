/*
 * The tree of asanafs as a table: each row is a path pattern and the
 * callbacks that make such a node. To add a kind of Asana resource, add
 * its rows (parents before children) and their callbacks; the operations in
 * ops.c need no change.
 */
#include "internal.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define PATH_DEPTH_MAX 8

/* ---- Attributes ---- */

static void fill_dir(const struct fs_context *ctx, struct stat *st,
                     time_t mtime)
{
  st->st_mode = S_IFDIR | 0755;
  st->st_nlink = 2;
  st->st_mtime = st->st_ctime = st->st_atime = mtime;
  st->st_uid = ctx->uid;
  st->st_gid = ctx->gid;
}

static void fill_file(const struct fs_context *ctx, struct stat *st,
                      mode_t mode, uint64_t size, time_t mtime)
{
  st->st_mode = S_IFREG | mode;
  st->st_nlink = 1;
  st->st_size = (off_t)size;
  st->st_blocks = (blkcnt_t)((size + 511) / 512);
  st->st_mtime = st->st_ctime = st->st_atime = mtime;
  st->st_uid = ctx->uid;
  st->st_gid = ctx->gid;
}

/* Fills ST for a node whose content is rendered text. */
static int getattr_rendered(struct fs_context *ctx, const struct node *node,
                            struct stat *st)
{
  char *text = NULL;
  size_t len = 0;
  time_t mtime = 0;
  int rc = node->type->render(ctx, node, &text, &len, &mtime);

  if (rc < 0)
    return rc;
  if (node->type->io == IO_LINK) {
    fill_file(ctx, st, 0777, len, mtime);
    st->st_mode = S_IFLNK | 0777;
  } else {
    fill_file(ctx, st, node->type->io == IO_CONTROL ? 0644 : 0444, len,
              mtime);
  }
  free(text);
  return 0;
}

/* ---- Workspaces ---- */

static int root_getattr(struct fs_context *ctx, const struct node *node,
                        struct stat *st)
{
  struct gid_list list = {0};

  /* The folders' mtime is that of the workspace list. Fetch the list first
   * if this mount has never seen it, or the time would change from 0 on the
   * first listing. The root stays usable when that fetch fails. */
  if (registry_orgs_mtime(ctx->registry) == 0)
    registry_list_workspaces(ctx->registry, &list);
  gid_list_clear(&list);
  fill_dir(ctx, st, registry_orgs_mtime(ctx->registry));
  return 0;
}

static int orgs_enumerate(struct fs_context *ctx, const struct node *parent,
                          struct gid_list *out)
{
  return registry_list_workspaces(ctx->registry, out);
}

static int org_getattr(struct fs_context *ctx, const struct node *node,
                       struct stat *st)
{
  struct workspace_view view = {0};
  int rc = registry_get_workspace(ctx->registry, node->param[PARAM_ORG],
                                  FRESH_KNOWN, &view);

  if (rc == 0)
    fill_dir(ctx, st, view.mtime);
  workspace_view_clear(&view);
  return rc;
}

static int workspace_render(struct fs_context *ctx, const struct node *node,
                            char **text, size_t *len, time_t *mtime)
{
  struct workspace_view view = {0};
  int rc = registry_get_workspace(ctx->registry, node->param[PARAM_ORG],
                                  FRESH_TTL, &view);

  if (rc < 0)
    return rc;
  *text = view.json;
  *len = view.json_len;
  *mtime = view.mtime;
  view.json = NULL;
  workspace_view_clear(&view);
  return 0;
}

/* ---- The exports folder ---- */

/* Checks that ORG is an organization; only those have exports. */
static int organization_mtime(struct fs_context *ctx, const char *org,
                              time_t *mtime)
{
  struct workspace_view view = {0};
  int rc = registry_get_workspace(ctx->registry, org, FRESH_KNOWN, &view);

  if (rc == 0 && !view.is_organization)
    rc = -ENOENT;
  *mtime = view.mtime;
  workspace_view_clear(&view);
  return rc;
}

/* Finds the newest export of ORG; -ENOENT when there is none. */
static int newest_export(struct fs_context *ctx, const char *org,
                         struct export_view *view)
{
  struct gid_list list = {0};
  int rc = registry_list_exports(ctx->registry, org, &list);

  if (rc == 0 && list.count == 0)
    rc = -ENOENT;
  if (rc == 0)
    rc = registry_get_export(ctx->registry, org, list.gids[0], FRESH_KNOWN,
                             view);
  gid_list_clear(&list);
  return rc;
}

static int exports_getattr(struct fs_context *ctx, const struct node *node,
                           struct stat *st)
{
  struct export_view newest = {0};
  time_t mtime;
  int rc = organization_mtime(ctx, node->param[PARAM_ORG], &mtime);

  if (rc < 0)
    return rc;
  if (newest_export(ctx, node->param[PARAM_ORG], &newest) == 0 &&
      newest.created_time > mtime)
    mtime = newest.created_time;
  export_view_clear(&newest);
  fill_dir(ctx, st, mtime);
  return 0;
}

static int control_render(struct fs_context *ctx, const struct node *node,
                          char **text, size_t *len, time_t *mtime)
{
  time_t org_mtime;
  int rc = organization_mtime(ctx, node->param[PARAM_ORG], &org_mtime);

  if (rc < 0)
    return rc;
  rc = registry_get_control(ctx->registry, node->param[PARAM_ORG], text, len,
                            mtime);
  if (rc == 0 && *mtime == 0)
    *mtime = org_mtime;
  return rc;
}

static int latest_render(struct fs_context *ctx, const struct node *node,
                         char **text, size_t *len, time_t *mtime)
{
  struct export_view newest = {0};
  int rc = newest_export(ctx, node->param[PARAM_ORG], &newest);

  if (rc == 0) {
    *text = strdup(newest.gid);
    *len = strlen(newest.gid);
    *mtime = newest.created_time;
    if (!*text)
      rc = -ENOMEM;
  }
  export_view_clear(&newest);
  return rc;
}

static int exports_enumerate(struct fs_context *ctx, const struct node *parent,
                             struct gid_list *out)
{
  time_t mtime;
  int rc = organization_mtime(ctx, parent->param[PARAM_ORG], &mtime);

  return rc < 0 ? rc : registry_list_exports(ctx->registry,
                                              parent->param[PARAM_ORG], out);
}

/* ---- One export ---- */

static int get_export(struct fs_context *ctx, const struct node *node,
                      enum freshness freshness, struct export_view *view)
{
  return registry_get_export(ctx->registry, node->param[PARAM_ORG],
                             node->param[PARAM_EXPORT], freshness, view);
}

static int export_getattr(struct fs_context *ctx, const struct node *node,
                          struct stat *st)
{
  struct export_view view = {0};
  int rc = get_export(ctx, node, FRESH_KNOWN, &view);

  if (rc == 0)
    fill_dir(ctx, st, view.created_time);
  export_view_clear(&view);
  return rc;
}

static int state_render(struct fs_context *ctx, const struct node *node,
                        char **text, size_t *len, time_t *mtime)
{
  struct export_view view = {0};
  int rc = get_export(ctx, node, FRESH_TTL, &view);

  if (rc == 0) {
    *mtime = view.created_time;
    if (asprintf(text, "%s\n", client_export_state_name(view.state)) < 0) {
      *text = NULL;
      rc = -ENOMEM;
    } else {
      *len = strlen(*text);
    }
  }
  export_view_clear(&view);
  return rc;
}

static int info_render(struct fs_context *ctx, const struct node *node,
                       char **text, size_t *len, time_t *mtime)
{
  struct export_view view = {0};
  int rc = get_export(ctx, node, FRESH_TTL, &view);

  if (rc == 0) {
    *text = view.info;
    *len = view.info_len;
    *mtime = view.created_time;
    view.info = NULL;
  }
  export_view_clear(&view);
  return rc;
}

/* export.json and export.json.gz exist once the export has finished. */
static int data_getattr(struct fs_context *ctx, const struct node *node,
                        struct stat *st)
{
  struct export_view view = {0};
  uint64_t json_size = 0, gz_size = 0;
  int rc = get_export(ctx, node, FRESH_TTL, &view);

  if (rc == 0 && view.state != CLIENT_EXPORT_FINISHED)
    rc = -ENOENT;
  if (rc == 0)
    rc = cache_stat(ctx->cache, view.gid, &json_size, &gz_size);
  if (rc == 0)
    fill_file(ctx, st, 0444,
              node->type->cache_kind == CACHE_JSON ? json_size : gz_size,
              view.created_time);
  export_view_clear(&view);
  return rc;
}

/* progress changes while a download runs, so, like the files in /proc, it
 * shows size 0 and is read with direct I/O. A real size would be stale by
 * the time a reader got to it, and `rsync -a` would copy a line cut to
 * the size it listed, and copy the file again on every run. */
static int progress_getattr(struct fs_context *ctx, const struct node *node,
                            struct stat *st)
{
  struct export_view view = {0};
  int rc = get_export(ctx, node, FRESH_KNOWN, &view);

  if (rc == 0)
    fill_file(ctx, st, 0444, 0, view.created_time);
  export_view_clear(&view);
  return rc;
}

/* Writes the progress line of a finished export's export.json. */
static int format_progress(const struct cache_status *status, char **text)
{
  uint64_t size = status->json_size, ready = status->json_ready;
  int percent = size == 0 || ready >= size ? 100 : (int)(ready * 100 / size);
  char rate[32];

  if (status->complete)
    return asprintf(text, "%" PRIu64 " of %" PRIu64 " bytes (100%%), "
                    "complete\n", size, size);
  /* The trailer's size can be short of the real one (several gzip members,
   * or over 4 GiB), so a running download never shows 100%. */
  if (percent > 99)
    percent = 99;
  if (status->downloading) {
    cache_format_rate(status->json_rate, rate, sizeof(rate));
    return asprintf(text, "%" PRIu64 " of %" PRIu64 " bytes (%d%%), %s\n",
                    ready, size, percent, rate);
  }
  return asprintf(text, "%" PRIu64 " of %" PRIu64 " bytes (%d%%), not "
                  "started\n", ready, size, percent);
}

static int progress_render(struct fs_context *ctx, const struct node *node,
                           char **text, size_t *len, time_t *mtime)
{
  struct export_view view = {0};
  struct cache_status status;
  uint64_t json_size, gz_size;
  int rc = get_export(ctx, node, FRESH_TTL, &view), written;

  if (rc < 0)
    goto out;
  *mtime = view.created_time;
  if (view.state == CLIENT_EXPORT_ERROR) {
    written = asprintf(text, "export is error, nothing to download\n");
  } else if (view.state != CLIENT_EXPORT_FINISHED) {
    written = asprintf(text, "export is %s, not yet downloadable\n",
                       client_export_state_name(view.state));
  } else {
    rc = cache_stat(ctx->cache, view.gid, &json_size, &gz_size);
    if (rc < 0)
      goto out;
    cache_get_status(ctx->cache, view.gid, &status);
    written = format_progress(&status, text);
  }
  if (written < 0) {
    *text = NULL;
    rc = -ENOMEM;
  } else {
    *len = (size_t)written;
  }
out:
  export_view_clear(&view);
  return rc;
}

/* ---- names/: one link per workspace ---- */

static int list_links(struct fs_context *ctx, struct named_workspaces *out)
{
  int rc = registry_list_named_workspaces(ctx->registry, out);

  if (rc == 0)
    rc = names_assign(out->items, out->count);
  if (rc < 0)
    named_workspaces_clear(out);
  return rc;
}

static int names_enumerate(struct fs_context *ctx, const struct node *parent,
                           struct name_list *out)
{
  struct named_workspaces links;
  int rc = list_links(ctx, &links);

  memset(out, 0, sizeof(*out));
  if (rc < 0)
    return rc;
  out->names = calloc(links.count + 1, sizeof(*out->names));
  for (size_t i = 0; out->names && i < links.count; i++) {
    out->names[i] = strdup(links.items[i].link);
    if (!out->names[i])
      break;
    out->count++;
  }
  if (out->count < links.count) {
    name_list_clear(out);
    rc = -ENOMEM;
  }
  named_workspaces_clear(&links);
  return rc;
}

static int name_link_render(struct fs_context *ctx, const struct node *node,
                            char **text, size_t *len, time_t *mtime)
{
  struct named_workspaces links;
  int rc = list_links(ctx, &links), written = -1;

  if (rc < 0)
    return rc;
  rc = -ENOENT;
  for (size_t i = 0; i < links.count; i++) {
    if (strcmp(links.items[i].link, node->name) != 0)
      continue;
    written = asprintf(text, "../orgs/%s", links.items[i].gid);
    rc = written < 0 ? -ENOMEM : 0;
    break;
  }
  named_workspaces_clear(&links);
  if (rc == 0) {
    *len = (size_t)written;
    *mtime = registry_orgs_mtime(ctx->registry);
  }
  return rc;
}

/* ---- Extended attributes ---- */

int node_xattrs_add(struct node_xattrs *xattrs, const char *name,
                    const char *fmt, ...)
{
  va_list ap;
  int rc;

  if (xattrs->count == NODE_XATTRS_MAX)
    return -ENOMEM;
  va_start(ap, fmt);
  rc = vasprintf(&xattrs->items[xattrs->count].value, fmt, ap);
  va_end(ap);
  if (rc < 0)
    return -ENOMEM;
  xattrs->items[xattrs->count++].name = name;
  return 0;
}

void node_xattrs_clear(struct node_xattrs *xattrs)
{
  for (size_t i = 0; i < xattrs->count; i++)
    free(xattrs->items[i].value);
  memset(xattrs, 0, sizeof(*xattrs));
}

void name_list_clear(struct name_list *list)
{
  for (size_t i = 0; list->names && i < list->count; i++)
    free(list->names[i]);
  free(list->names);
  memset(list, 0, sizeof(*list));
}

/* orgs/GID and its workspace.json. */
static int workspace_xattrs(struct fs_context *ctx, const struct node *node,
                            struct node_xattrs *out)
{
  struct workspace_view view = {0};
  int rc = registry_get_workspace(ctx->registry, node->param[PARAM_ORG],
                                  FRESH_KNOWN, &view);

  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.gid", "%s", view.gid);
  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.resource_type", "workspace");
  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.name", "%s", view.name);
  workspace_view_clear(&view);
  return rc;
}

/* An export folder and the files in it. */
static int export_xattrs(struct fs_context *ctx, const struct node *node,
                         struct node_xattrs *out)
{
  struct export_view view = {0};
  int rc = get_export(ctx, node, FRESH_TTL, &view);

  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.gid", "%s", view.gid);
  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.resource_type",
                         "organization_export");
  if (rc == 0)
    rc = node_xattrs_add(out, "user.asana.state", "%s",
                         client_export_state_name(view.state));
  export_view_clear(&view);
  return rc;
}

/* export.json and export.json.gz: the export's attributes and the cache's. */
static int data_xattrs(struct fs_context *ctx, const struct node *node,
                       struct node_xattrs *out)
{
  struct cache_status status;
  int rc = export_xattrs(ctx, node, out);

  if (rc < 0)
    return rc;
  cache_get_status(ctx->cache, node->param[PARAM_EXPORT], &status);
  rc = node_xattrs_add(out, "user.asanafs.cached_bytes", "%" PRIu64,
                       node->type->cache_kind == CACHE_JSON ? status.json_ready
                                                            : status.gz_ready);
  if (rc == 0)
    rc = node_xattrs_add(out, "user.asanafs.complete", "%d",
                         status.complete ? 1 : 0);
  return rc;
}

int node_get_xattrs(struct fs_context *ctx, const struct node *node,
                    struct node_xattrs *xattrs)
{
  int rc;

  memset(xattrs, 0, sizeof(*xattrs));
  if (!node->type->xattrs)
    return 0;
  rc = node->type->xattrs(ctx, node, xattrs);
  if (rc < 0)
    node_xattrs_clear(xattrs);
  return rc;
}

/* ---- The table ---- */

static const struct node_type node_types[] = {
  { .pattern = "", .io = IO_DIR, .getattr = root_getattr },
  { .pattern = "orgs", .io = IO_DIR, .getattr = root_getattr },
  { .pattern = "orgs/{gid}", .io = IO_DIR, .getattr = org_getattr,
    .enumerate = orgs_enumerate, .xattrs = workspace_xattrs },
  { .pattern = "orgs/{gid}/workspace.json", .io = IO_RENDERED,
    .getattr = getattr_rendered, .render = workspace_render,
    .xattrs = workspace_xattrs },
  { .pattern = "orgs/{gid}/exports", .io = IO_DIR,
    .getattr = exports_getattr },
  { .pattern = "orgs/{gid}/exports/new", .io = IO_CONTROL,
    .getattr = getattr_rendered, .render = control_render },
  { .pattern = "orgs/{gid}/exports/latest", .io = IO_LINK,
    .getattr = getattr_rendered, .render = latest_render },
  { .pattern = "orgs/{gid}/exports/{gid}", .io = IO_DIR,
    .getattr = export_getattr, .enumerate = exports_enumerate,
    .xattrs = export_xattrs },
  { .pattern = "orgs/{gid}/exports/{gid}/state", .io = IO_RENDERED,
    .getattr = getattr_rendered, .render = state_render,
    .xattrs = export_xattrs },
  { .pattern = "orgs/{gid}/exports/{gid}/info.json", .io = IO_RENDERED,
    .getattr = getattr_rendered, .render = info_render,
    .xattrs = export_xattrs },
  { .pattern = "orgs/{gid}/exports/{gid}/progress", .io = IO_RENDERED,
    .getattr = progress_getattr, .render = progress_render,
    .xattrs = export_xattrs },
  { .pattern = "orgs/{gid}/exports/{gid}/export.json", .io = IO_CACHE,
    .cache_kind = CACHE_JSON, .getattr = data_getattr,
    .xattrs = data_xattrs },
  { .pattern = "orgs/{gid}/exports/{gid}/export.json.gz", .io = IO_CACHE,
    .cache_kind = CACHE_GZ, .getattr = data_getattr, .xattrs = data_xattrs },
  { .pattern = "names", .io = IO_DIR, .getattr = root_getattr },
  { .pattern = "names/{name}", .io = IO_LINK, .getattr = getattr_rendered,
    .enumerate_names = names_enumerate, .render = name_link_render },
};

#define NODE_TYPE_COUNT (sizeof(node_types) / sizeof(node_types[0]))

/* Splits S at '/' into at most MAX components, skipping empty ones.
 * Returns the count, or -1 when there are more. */
static int split_path(char *s, char *parts[], int max)
{
  int count = 0;

  for (char *save = NULL, *part = strtok_r(s, "/", &save); part;
       part = strtok_r(NULL, "/", &save)) {
    if (count == max)
      return -1;
    parts[count++] = part;
  }
  return count;
}

static bool match_row(const struct node_type *type, char *parts[], int count,
                      struct node *out)
{
  char pattern[256];
  char *pattern_parts[PATH_DEPTH_MAX];
  int pattern_count, param = 0;

  snprintf(pattern, sizeof(pattern), "%s", type->pattern);
  pattern_count = split_path(pattern, pattern_parts, PATH_DEPTH_MAX);
  if (pattern_count != count)
    return false;
  for (int i = 0; i < count; i++) {
    if (strcmp(pattern_parts[i], "{gid}") == 0) {
      if (!gid_valid(parts[i]) || param == NODE_PARAMS)
        return false;
      snprintf(out->param[param++], CLIENT_GID_MAX, "%s", parts[i]);
    } else if (strcmp(pattern_parts[i], "{name}") == 0) {
      snprintf(out->name, sizeof(out->name), "%s", parts[i]);
    } else if (strcmp(pattern_parts[i], parts[i]) != 0) {
      return false;
    }
  }
  out->type = type;
  return true;
}

int node_resolve(const char *path, struct node *out)
{
  char copy[4096];
  char *parts[PATH_DEPTH_MAX];
  int count;

  if (strlen(path) >= sizeof(copy))
    return -ENAMETOOLONG;
  snprintf(copy, sizeof(copy), "%s", path);
  count = split_path(copy, parts, PATH_DEPTH_MAX);
  if (count < 0)
    return -ENOENT;
  for (int i = 0; i < count; i++) {
    if (strlen(parts[i]) > NAME_MAX)
      return -ENAMETOOLONG;
  }
  for (size_t i = 0; i < NODE_TYPE_COUNT; i++) {
    memset(out, 0, sizeof(*out));
    if (match_row(&node_types[i], parts, count, out))
      return 0;
  }
  return -ENOENT;
}

/* FNV-1a over the row's pattern, the gids and the name: the same object
 * gets the same inode number in every mount. */
static ino_t node_inode(const struct node *node)
{
  uint64_t hash = 1469598103934665603ULL;
  const char *fields[NODE_PARAMS + 2] = { node->type->pattern };
  int count = NODE_PARAMS + 1;

  for (int i = 0; i < NODE_PARAMS; i++)
    fields[i + 1] = node->param[i];
  /* Only rows with a "{name}" hash it, so that the inode numbers of the
   * other rows stay those of earlier versions. */
  if (node->name[0])
    fields[count++] = node->name;
  for (int i = 0; i < count; i++) {
    for (const char *c = fields[i]; ; c++) {
      hash ^= (unsigned char)*c;
      hash *= 1099511628211ULL;
      if (!*c)
        break;
    }
  }
  return hash > 1 ? (ino_t)hash : (ino_t)(hash + 2);
}

int node_getattr(struct fs_context *ctx, const struct node *node,
                 struct stat *st)
{
  int rc;

  memset(st, 0, sizeof(*st));
  rc = node->type->getattr(ctx, node, st);
  if (rc == 0)
    st->st_ino = node_inode(node);
  return rc;
}

/* Returns the number of gid placeholders in a pattern. */
static int count_params(const char *pattern)
{
  int count = 0;

  for (const char *p = strstr(pattern, "{gid}"); p; p = strstr(p + 1, "{gid}"))
    count++;
  return count;
}

/* Returns the last component of ROW's pattern if ROW is a child of DIR. */
static const char *child_name(const struct node_type *dir,
                              const struct node_type *row)
{
  size_t len = strlen(dir->pattern);
  const char *rest;

  if (strncmp(row->pattern, dir->pattern, len) != 0)
    return NULL;
  rest = row->pattern + len;
  if (len > 0) {
    if (*rest != '/')
      return NULL;
    rest++;
  }
  if (!*rest || strchr(rest, '/'))
    return NULL;
  return rest;
}

/* Lists the children of a row whose last component is "{name}". */
static int list_named_row(struct fs_context *ctx, struct node *child,
                          const struct node_type *row, node_child_fn fn,
                          void *fn_ctx)
{
  struct name_list names = {0};
  struct stat st;
  int rc = row->enumerate_names(ctx, child, &names);

  for (size_t i = 0; rc == 0 && i < names.count; i++) {
    snprintf(child->name, sizeof(child->name), "%s", names.names[i]);
    if (node_getattr(ctx, child, &st) == 0)
      rc = fn(fn_ctx, names.names[i], &st);
  }
  name_list_clear(&names);
  return rc;
}

/* Passes CHILD to FN unless it does not exist (ENOENT, such as export.json
 * before the export finished). Any other error fails the listing: a child
 * left out because the network failed would look deleted to rsync
 * --delete, while an error makes rsync skip deletion. */
static int list_child(struct fs_context *ctx, const struct node *child,
                      const char *name, node_child_fn fn, void *fn_ctx)
{
  struct stat st;
  int rc = node_getattr(ctx, child, &st);

  if (rc == -ENOENT)
    return 0;
  if (rc < 0)
    return rc;
  return fn(fn_ctx, name, &st);
}

static int list_row(struct fs_context *ctx, const struct node *dir,
                    const struct node_type *row, const char *name,
                    node_child_fn fn, void *fn_ctx)
{
  struct gid_list gids = {0};
  struct node child = *dir;
  int rc = 0, slot = count_params(dir->type->pattern);

  child.type = row;
  if (strcmp(name, "{name}") == 0)
    return list_named_row(ctx, &child, row, fn, fn_ctx);
  if (strcmp(name, "{gid}") != 0)
    return list_child(ctx, &child, name, fn, fn_ctx);
  rc = row->enumerate(ctx, dir, &gids);
  for (size_t i = 0; rc == 0 && i < gids.count; i++) {
    snprintf(child.param[slot], CLIENT_GID_MAX, "%s", gids.gids[i]);
    rc = list_child(ctx, &child, gids.gids[i], fn, fn_ctx);
  }
  gid_list_clear(&gids);
  return rc;
}

int node_list_children(struct fs_context *ctx, const struct node *dir,
                       node_child_fn fn, void *fn_ctx)
{
  int rc = 0;

  for (size_t i = 0; rc == 0 && i < NODE_TYPE_COUNT; i++) {
    const char *name = child_name(dir->type, &node_types[i]);

    if (name)
      rc = list_row(ctx, dir, &node_types[i], name, fn, fn_ctx);
  }
  return rc;
}
