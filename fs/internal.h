/*
 * Private to the fs module: the shared context, the registry of Asana
 * records that asanafs has fetched or saved, and the node table.
 */
#ifndef ASANAFS_FS_INTERNAL_H
#define ASANAFS_FS_INTERNAL_H

#define FUSE_USE_VERSION 312

#include <fuse.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

#include "cache.h"
#include "client.h"

/* ---- Options ---- */

/* Exit statuses of asanafs. Every failing start prints one line to stderr
 * that names the problem and the fix, and leaves nothing mounted. */
enum fs_exit {
  FS_EXIT_OK = 0,           /* unmounted cleanly, or --help, --version */
  FS_EXIT_USAGE = 1,        /* invalid command line or option value */
  FS_EXIT_MOUNT_POINT = 2,  /* missing, not a folder, or not empty */
  FS_EXIT_TOKEN = 3,        /* no token, unusable token file, or rejected */
  FS_EXIT_API = 4,          /* the API was unreachable or failing */
  FS_EXIT_CACHE = 5,        /* the cache folder is unusable */
  FS_EXIT_FUSE = 6,         /* the FUSE mount itself failed */
};

#define OPTION_STATE_TTL_MAX 86400
#define OPTION_TIMEOUT_MIN 1
#define OPTION_TIMEOUT_MAX 3600

struct fs_config {
  char *api_url;
  char *token;            /* secret: never logged, never written */
  char *token_file;
  char *cache_dir;        /* absolute */
  char *cache_size_text;  /* as given, parsed into cache_size */
  uint64_t cache_size;    /* bytes; 0 means no limit */
  char *state_ttl_text;
  unsigned state_ttl;     /* seconds */
  char *timeout_text;
  unsigned timeout;       /* seconds one API call may take, retries included */
  int nonempty;           /* -o nonempty: allow a mount point with files */
  char *source;           /* the optional first word, as mount(8) passes it */
  char *mountpoint;       /* as given; NULL when missing */
  int extra_words;        /* positional words after the mount point */
};

/* Fills CONFIG from the command line, removing asanafs's own options and
 * the positional words from ARGS. Returns 0, or FS_EXIT_USAGE after
 * printing an error. */
int options_parse(struct fuse_args *args, struct fs_config *config);

/* Parses a size in bytes with an optional K, M, G or T suffix (powers of
 * 1024). Returns 0, or -1 when TEXT is not such a size. */
int options_parse_size(const char *text, uint64_t *out);

/* Parses a whole number of seconds from MIN to MAX. Returns 0 or -1. */
int options_parse_seconds(const char *text, unsigned min, unsigned max,
                          unsigned *out);

/* Prints asanafs's own part of --help. */
void options_print_usage(const char *program);

/* Reads the token from ASANA_ACCESS_TOKEN or token_file. Returns 0, or
 * FS_EXIT_TOKEN after printing what to do. */
int options_read_token(struct fs_config *config);

/* Resolves the cache folder to an absolute path. Returns 0, or
 * FS_EXIT_CACHE after printing what to do. */
int options_resolve_cache_dir(struct fs_config *config);

void options_free(struct fs_config *config);

/* ---- Registry ---- */

/* Freshness a caller requires of a record. */
enum freshness {
  FRESH_KNOWN,            /* what is known will do; fetch only if unknown */
  FRESH_TTL,              /* fetch again when older than state_ttl */
};

struct workspace_view {
  char gid[CLIENT_GID_MAX];
  bool is_organization;
  time_t mtime;           /* when this content was first seen */
  char *name;             /* "" when the record has none; caller frees */
  char *json;             /* workspace.json content, caller frees */
  size_t json_len;
};

struct export_view {
  char gid[CLIENT_GID_MAX];
  char org_gid[CLIENT_GID_MAX];
  enum client_export_state state;
  time_t created_time;
  char *info;             /* info.json content, caller frees */
  size_t info_len;
};

struct gid_list {
  char (*gids)[CLIENT_GID_MAX];
  size_t count;
};

struct registry;

int registry_new(const char *cache_dir, struct client *client, unsigned ttl,
                 struct registry **out, char *err, size_t err_len);
void registry_free(struct registry *registry);

/* Modification time of the workspace list (the root and orgs/). */
time_t registry_orgs_mtime(struct registry *registry);

/* Marks the calling thread as serving a getattr (or lookup) while ON is
 * true. There, a refresh that failed slowly in the last second returns its
 * error again without a new request, because the kernel repeats a failed
 * lookup at once. Other operations always ask again. */
void registry_set_in_getattr(bool on);

int registry_list_workspaces(struct registry *registry, struct gid_list *out);

/* Fills OUT (when not NULL) with a copy of a workspace. -ENOENT if the
 * gid is not a workspace that the token can access. */
int registry_get_workspace(struct registry *registry, const char *gid,
                           enum freshness freshness,
                           struct workspace_view *out);

/* A workspace and the name of its link in names/. */
struct named_workspace {
  char gid[CLIENT_GID_MAX];
  char *name;                         /* the workspace's name, owned */
  char link[NAME_MAX + 1];            /* set by names_assign() */
};

struct named_workspaces {
  struct named_workspace *items;
  size_t count;
};

/* Lists every workspace with its name, from a list no older than the ttl. */
int registry_list_named_workspaces(struct registry *registry,
                                   struct named_workspaces *out);
void named_workspaces_clear(struct named_workspaces *list);

/* Sets the link name of each workspace: its name with '/' and control
 * characters turned into '_', "workspace" for an empty name, "." or "..",
 * and " (GID)" appended to every name that two workspaces share. */
int names_assign(struct named_workspace *items, size_t count);

/* Lists the exports known in an organization, newest first. */
int registry_list_exports(struct registry *registry, const char *org,
                          struct gid_list *out);

int registry_get_export(struct registry *registry, const char *org,
                        const char *gid, enum freshness freshness,
                        struct export_view *out);

/* Starts an export with one POST and records it. On failure ERR contains
 * Asana's error message. */
int registry_create_export(struct registry *registry, const char *org,
                           char gid_out[CLIENT_GID_MAX],
                           struct client_error *err);

/* Records an export created elsewhere after checking it belongs to ORG. */
int registry_adopt_export(struct registry *registry, const char *org,
                          const char *gid);

int registry_forget_export(struct registry *registry, const char *org,
                           const char *gid);

/* The result of the last request made through an organization's `new`. */
void registry_set_control(struct registry *registry, const char *org,
                          const char *text);
int registry_get_control(struct registry *registry, const char *org,
                         char **text, size_t *len, time_t *mtime);

void workspace_view_clear(struct workspace_view *view);
void export_view_clear(struct export_view *view);
void gid_list_clear(struct gid_list *list);

/* Returns whether S is a syntactically valid Asana gid. */
bool gid_valid(const char *s);

/* ---- Nodes ---- */

struct fs_context {
  struct fs_config *config;
  struct client *client;
  struct cache *cache;
  struct registry *registry;
  uid_t uid;
  gid_t gid;
};

enum node_io {
  IO_DIR,
  IO_RENDERED,            /* small text made from a record */
  IO_CONTROL,             /* `new`: written to start an export */
  IO_LINK,
  IO_CACHE,               /* export data through the cache */
};

#define NODE_PARAMS 2

struct node_type;

struct node {
  const struct node_type *type;
  char param[NODE_PARAMS][CLIENT_GID_MAX];  /* the gids in the path */
  char name[NAME_MAX + 1];    /* the component that matched "{name}" */
};

/* Extended attributes of a node, all read-only: names with their values. */
#define NODE_XATTRS_MAX 8

struct node_xattrs {
  struct {
    const char *name;         /* such as "user.asana.gid"; static */
    char *value;              /* owned, no terminating NUL counted */
  } items[NODE_XATTRS_MAX];
  size_t count;
};

/* Adds attribute NAME with a formatted value. Returns 0 or -ENOMEM. */
int node_xattrs_add(struct node_xattrs *xattrs, const char *name,
                    const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void node_xattrs_clear(struct node_xattrs *xattrs);

struct name_list {
  char **names;
  size_t count;
};

void name_list_clear(struct name_list *list);

/* Parameter slots of the export tree. */
enum { PARAM_ORG = 0, PARAM_EXPORT = 1 };

struct node_type {
  /* Components; "{gid}" matches a gid and "{name}" any name that the
   * row's callbacks accept. */
  const char *pattern;
  enum node_io io;
  enum cache_kind cache_kind;   /* for IO_CACHE */
  /* Checks that the node exists and fills ST. */
  int (*getattr)(struct fs_context *ctx, const struct node *node,
                 struct stat *st);
  /* Lists the gids that fill this row's last component under PARENT;
   * only for rows whose last component is "{gid}". */
  int (*enumerate)(struct fs_context *ctx, const struct node *parent,
                   struct gid_list *out);
  /* Lists the names that fill this row's last component under PARENT;
   * only for rows whose last component is "{name}". */
  int (*enumerate_names)(struct fs_context *ctx, const struct node *parent,
                         struct name_list *out);
  /* Makes the content of an IO_RENDERED, IO_CONTROL or IO_LINK node. */
  int (*render)(struct fs_context *ctx, const struct node *node,
                char **text, size_t *len, time_t *mtime);
  /* Adds the node's extended attributes; NULL when it has none. */
  int (*xattrs)(struct fs_context *ctx, const struct node *node,
                struct node_xattrs *out);
};

/* Resolves PATH to a node. -ENOENT when no row matches. */
int node_resolve(const char *path, struct node *out);

/* Calls FN for each child name of a directory node; the stat is filled. */
typedef int (*node_child_fn)(void *ctx, const char *name,
                             const struct stat *st);
int node_list_children(struct fs_context *ctx, const struct node *dir,
                       node_child_fn fn, void *fn_ctx);

/* Fills ST for NODE, including a stable inode number. */
int node_getattr(struct fs_context *ctx, const struct node *node,
                 struct stat *st);

/* Fills XATTRS for an existing NODE; empty for rows without attributes. */
int node_get_xattrs(struct fs_context *ctx, const struct node *node,
                    struct node_xattrs *xattrs);

/* ---- Operations ---- */

extern const struct fuse_operations fs_operations;

/* Frees the file and folder handles that are still open, which closes
 * their cache files. Call it only once the FUSE loop has ended and before
 * the cache is freed. */
void ops_release_handles(void);

#endif
