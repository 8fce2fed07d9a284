/*
 * The tree of asanafs as a table: each row is a path pattern and the
 * callbacks that make such a node. To add a kind of Asana resource, add
 * its rows (parents before children) and their callbacks; the operations in
 * ops.c need no change.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
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

/* ---- The table ---- */

static const struct node_type node_types[] = {
  { "", IO_DIR, 0, root_getattr, NULL, NULL },
  { "orgs", IO_DIR, 0, root_getattr, NULL, NULL },
  { "orgs/{gid}", IO_DIR, 0, org_getattr, orgs_enumerate, NULL },
  { "orgs/{gid}/workspace.json", IO_RENDERED, 0, getattr_rendered, NULL,
    workspace_render },
  { "orgs/{gid}/exports", IO_DIR, 0, exports_getattr, NULL, NULL },
  { "orgs/{gid}/exports/new", IO_CONTROL, 0, getattr_rendered, NULL,
    control_render },
  { "orgs/{gid}/exports/latest", IO_LINK, 0, getattr_rendered, NULL,
    latest_render },
  { "orgs/{gid}/exports/{gid}", IO_DIR, 0, export_getattr,
    exports_enumerate, NULL },
  { "orgs/{gid}/exports/{gid}/state", IO_RENDERED, 0, getattr_rendered,
    NULL, state_render },
  { "orgs/{gid}/exports/{gid}/info.json", IO_RENDERED, 0, getattr_rendered,
    NULL, info_render },
  { "orgs/{gid}/exports/{gid}/export.json", IO_CACHE, CACHE_JSON,
    data_getattr, NULL, NULL },
  { "orgs/{gid}/exports/{gid}/export.json.gz", IO_CACHE, CACHE_GZ,
    data_getattr, NULL, NULL },
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

/* FNV-1a over the row's pattern and the gids: the same object gets the
 * same inode number in every mount. */
static ino_t node_inode(const struct node *node)
{
  uint64_t hash = 1469598103934665603ULL;
  const char *fields[NODE_PARAMS + 1] = { node->type->pattern };

  for (int i = 0; i < NODE_PARAMS; i++)
    fields[i + 1] = node->param[i];
  for (int i = 0; i < NODE_PARAMS + 1; i++) {
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

static int list_row(struct fs_context *ctx, const struct node *dir,
                    const struct node_type *row, const char *name,
                    node_child_fn fn, void *fn_ctx)
{
  struct gid_list gids = {0};
  struct node child = *dir;
  struct stat st;
  int rc = 0, slot = count_params(dir->type->pattern);

  child.type = row;
  if (strcmp(name, "{gid}") != 0) {
    if (node_getattr(ctx, &child, &st) == 0)
      rc = fn(fn_ctx, name, &st);
    return rc;
  }
  rc = row->enumerate(ctx, dir, &gids);
  for (size_t i = 0; rc == 0 && i < gids.count; i++) {
    snprintf(child.param[slot], CLIENT_GID_MAX, "%s", gids.gids[i]);
    if (node_getattr(ctx, &child, &st) == 0)
      rc = fn(fn_ctx, gids.gids[i], &st);
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
