/*
 * The registry: the workspace list and the exports known to this mount,
 * kept in memory and saved under CACHE_DIR/registry so that they survive
 * remounts. Asana has no call that lists exports, so the files under
 * registry/exports/ORG/ are the only record of the exports created or
 * adopted here.
 *
 * Refreshes are single-flight: while one thread fetches a record, others
 * that want it wait for that fetch and share its result, so a record is
 * fetched at most once per ttl however many readers there are. No lock is
 * held during the fetch itself.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

struct known_workspace {
  char gid[CLIENT_GID_MAX];
  bool is_organization;
  time_t mtime;
  char *json;                     /* workspace.json content */
  size_t json_len;
  char *name;                     /* "" when the record has none */
};

struct known_export {
  char gid[CLIENT_GID_MAX];
  char org_gid[CLIENT_GID_MAX];
  enum client_export_state state;
  time_t created_time;
  char *info;                     /* info.json content */
  size_t info_len;
  double fetched_at;              /* monotonic seconds, 0 if never */
  bool refreshing;
  unsigned refresh_generation;    /* bumped when a refresh ends */
  int refresh_result;             /* of the last refresh */
  double failed_at;               /* monotonic seconds, 0 if never */
  bool forgotten;                 /* removed while a refresh ran */
  struct known_export *next;
};

struct control {
  char org[CLIENT_GID_MAX];
  char *text;
  size_t len;
  time_t mtime;
  struct control *next;
};

struct registry {
  char *dir;                      /* CACHE_DIR/registry; immutable */
  struct client *client;
  unsigned ttl;
  pthread_mutex_t lock;
  pthread_cond_t refreshed;       /* signalled when any refresh ends */
  /* The fields below are guarded by lock. */
  struct known_workspace *workspaces;
  size_t workspace_count;
  bool workspaces_known;          /* loaded from disk or fetched */
  double workspaces_fetched_at;   /* monotonic seconds, 0 if never */
  bool workspaces_refreshing;
  unsigned workspaces_generation;
  int workspaces_result;
  double workspaces_failed_at;    /* monotonic seconds, 0 if never */
  time_t orgs_mtime;
  struct known_export *exports;
  struct control *controls;
};

static double monotonic_now(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* In a getattr, a refresh that failed after at least SLOW_FAILURE_S
 * seconds (a timeout, or retries of an API that is down) returns its error
 * again for FAILURE_REUSE_S seconds without a new request. When the lookup
 * of a cached name fails, the kernel drops the name and at once looks it up
 * a second time, so without this a reader would wait out the timeout twice
 * before it saw the error. Opens, reads and listings always ask again, so
 * an API that is back is used at once, and a quick failure such as a bad
 * reply is never reused. */
#define SLOW_FAILURE_S 1.0
#define FAILURE_REUSE_S 1.0

/* Set while this thread serves a getattr; see registry_set_in_getattr(). */
static __thread bool in_getattr;

void registry_set_in_getattr(bool on)
{
  in_getattr = on;
}

/* Returns the monotonic time at which a refresh that began at STARTED
 * failed with RC, when it failed slowly enough to be reused, or else 0. */
static double reusable_failure_at(int rc, double started)
{
  double now = monotonic_now();

  return rc < 0 && now - started >= SLOW_FAILURE_S ? now : 0;
}

static bool failed_recently(double failed_at)
{
  return in_getattr && failed_at > 0 &&
         monotonic_now() - failed_at < FAILURE_REUSE_S;
}

bool gid_valid(const char *s)
{
  size_t n = 0;

  /* A leading zero would name an export a second time, as another folder
   * of the same number. */
  if (!s || s[0] == '0')
    return false;
  for (; s[n]; n++) {
    if (s[n] < '0' || s[n] > '9' || n >= CLIENT_GID_MAX - 1)
      return false;
  }
  return n > 0;
}

void workspace_view_clear(struct workspace_view *view)
{
  free(view->json);
  free(view->name);
  memset(view, 0, sizeof(*view));
}

void export_view_clear(struct export_view *view)
{
  free(view->info);
  memset(view, 0, sizeof(*view));
}

void gid_list_clear(struct gid_list *list)
{
  free(list->gids);
  list->gids = NULL;
  list->count = 0;
}

/* Sets *COPY to a malloc'd copy of LEN bytes of TEXT. */
static int copy_text(const char *text, size_t len, char **copy,
                     size_t *copy_len)
{
  *copy = malloc(len ? len : 1);
  if (!*copy)
    return -ENOMEM;
  memcpy(*copy, text, len);
  *copy_len = len;
  return 0;
}

/* ---- Files ---- */

/* Writes DATA to PATH through a temporary file and rename, so that a
 * crash leaves either the old or the new content. */
static int write_file_atomic(const char *path, const char *data, size_t len)
{
  char tmp[4096];
  int fd = -1, rc = 0;

  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    rc = -errno;
    goto out;
  }
  for (size_t done = 0; done < len;) {
    ssize_t n = write(fd, data + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      goto out;
    }
    done += (size_t)n;
  }
  if (fsync(fd) < 0 || rename(tmp, path) < 0)
    rc = -errno;
out:
  if (fd >= 0)
    close(fd);
  if (rc < 0) {
    unlink(tmp);
    log_error("could not save %s: %s", path, strerror(-rc));
  }
  return rc;
}

static int make_dir(const char *path)
{
  if (mkdir(path, 0700) < 0 && errno != EEXIST)
    return -errno;
  return 0;
}

/* Renders a JSON record as the text of a file: indented, one newline. */
static char *render_json(json_t *record, size_t *len)
{
  char *body = json_dumps(record, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  char *text;

  if (!body)
    return NULL;
  *len = strlen(body) + 1;
  text = malloc(*len + 1);
  if (text)
    snprintf(text, *len + 1, "%s\n", body);
  free(body);
  return text;
}

/* ---- Workspaces ---- */

static void free_workspaces(struct known_workspace *items, size_t count)
{
  for (size_t i = 0; i < count; i++) {
    free(items[i].json);
    free(items[i].name);
  }
  free(items);
}

static struct known_workspace *find_workspace(struct registry *r,
                                              const char *gid)
{
  for (size_t i = 0; i < r->workspace_count; i++) {
    if (strcmp(r->workspaces[i].gid, gid) == 0)
      return &r->workspaces[i];
  }
  return NULL;
}

/* Serializes the workspace list; caller holds lock. */
static char *dump_workspaces(struct registry *r)
{
  json_t *root = json_pack("{s:I, s:[]}", "mtime", (json_int_t)r->orgs_mtime,
                           "workspaces");
  json_t *items = json_object_get(root, "workspaces");
  char *text;

  for (size_t i = 0; i < r->workspace_count; i++) {
    json_t *record = json_loadb(r->workspaces[i].json,
                                r->workspaces[i].json_len, 0, NULL);
    json_array_append_new(items, json_pack("{s:o, s:I}", "record", record,
                                           "mtime",
                                           (json_int_t)r->workspaces[i].mtime));
  }
  text = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  return text;
}

static void save_workspaces(struct registry *r)
{
  char path[4096];
  char *text;

  pthread_mutex_lock(&r->lock);
  text = dump_workspaces(r);
  pthread_mutex_unlock(&r->lock);
  if (!text)
    return;
  snprintf(path, sizeof(path), "%s/workspaces.json", r->dir);
  write_file_atomic(path, text, strlen(text));
  free(text);
}

/* Fills ITEM from a workspace record; takes no reference. */
static int workspace_from_record(json_t *record, time_t mtime,
                                 struct known_workspace *item)
{
  const char *gid = json_string_value(json_object_get(record, "gid"));
  const char *name = json_string_value(json_object_get(record, "name"));

  if (!gid_valid(gid))
    return -EINVAL;
  item->name = strdup(name ? name : "");
  if (!item->name)
    return -ENOMEM;
  snprintf(item->gid, sizeof(item->gid), "%s", gid);
  item->is_organization =
      json_is_true(json_object_get(record, "is_organization"));
  item->mtime = mtime;
  item->json = render_json(record, &item->json_len);
  if (!item->json) {
    free(item->name);
    item->name = NULL;
    return -ENOMEM;
  }
  return 0;
}

static void load_workspaces(struct registry *r)
{
  char path[4096];
  json_t *root, *items, *entry;
  size_t index;

  snprintf(path, sizeof(path), "%s/workspaces.json", r->dir);
  root = json_load_file(path, 0, NULL);
  items = json_object_get(root, "workspaces");
  if (!json_is_array(items))
    goto out;
  r->workspaces = calloc(json_array_size(items) + 1, sizeof(*r->workspaces));
  if (!r->workspaces)
    goto out;
  json_array_foreach(items, index, entry) {
    time_t mtime = (time_t)json_integer_value(json_object_get(entry, "mtime"));
    struct known_workspace *item = &r->workspaces[r->workspace_count];

    if (workspace_from_record(json_object_get(entry, "record"), mtime,
                              item) == 0)
      r->workspace_count++;
  }
  r->orgs_mtime = (time_t)json_integer_value(json_object_get(root, "mtime"));
  r->workspaces_known = true;
out:
  json_decref(root);
}

/* Returns whether one of the first COUNT items of LIST has GID. */
static bool listed_before(const struct known_workspace *list, size_t count,
                          const char *gid)
{
  for (size_t i = 0; i < count; i++) {
    if (strcmp(list[i].gid, gid) == 0)
      return true;
  }
  return false;
}

/* Builds the new list from a fetch, keeping the mtime of unchanged
 * entries. A gid seen twice, as when the list changes between two pages,
 * is kept once, so that no folder name appears twice. Returns whether
 * anything changed. Caller holds lock. */
static bool apply_workspaces(struct registry *r,
                             struct client_workspace_list *list,
                             struct known_workspace *fresh, size_t *count)
{
  time_t now = time(NULL);
  bool changed = false;
  size_t duplicates = 0;

  *count = 0;
  for (size_t i = 0; i < list->count; i++) {
    struct known_workspace *item = &fresh[*count];
    struct known_workspace *old;

    if (workspace_from_record(list->items[i].record, now, item) < 0)
      continue;
    if (listed_before(fresh, *count, item->gid)) {
      free(item->json);
      free(item->name);
      memset(item, 0, sizeof(*item));
      duplicates++;
      continue;
    }
    old = find_workspace(r, item->gid);
    if (old && old->json_len == item->json_len &&
        memcmp(old->json, item->json, item->json_len) == 0)
      item->mtime = old->mtime;
    else
      changed = true;
    (*count)++;
  }
  if (duplicates > 0)
    log_warn("the workspace list contained %zu duplicate entries; each gid "
             "is listed once", duplicates);
  return changed || *count != r->workspace_count;
}

static int fetch_workspaces(struct registry *r)
{
  struct client_workspace_list list = {0};
  struct client_error err = {0};
  struct known_workspace *fresh = NULL;
  size_t count = 0;
  bool changed = false;
  int rc = 0;

  if (client_list_workspaces(r->client, &list, &err) != CLIENT_OK) {
    log_error("listing workspaces failed: %s", err.message);
    rc = -client_error_errno(&err);
    goto out;
  }
  fresh = calloc(list.count + 1, sizeof(*fresh));
  if (!fresh) {
    rc = -ENOMEM;
    goto out;
  }
  pthread_mutex_lock(&r->lock);
  changed = apply_workspaces(r, &list, fresh, &count);
  free_workspaces(r->workspaces, r->workspace_count);
  r->workspaces = fresh;
  r->workspace_count = count;
  fresh = NULL;
  if (changed || !r->orgs_mtime)
    r->orgs_mtime = time(NULL);
  r->workspaces_known = true;
  r->workspaces_fetched_at = monotonic_now();
  pthread_mutex_unlock(&r->lock);
  if (changed)
    save_workspaces(r);
out:
  free(fresh);
  client_workspace_list_clear(&list);
  return rc;
}

/* Makes sure the workspace list is as fresh as asked. */
static int sync_workspaces(struct registry *r, enum freshness freshness)
{
  double started;
  int rc;

  pthread_mutex_lock(&r->lock);
  if (r->workspaces_refreshing) {
    unsigned generation = r->workspaces_generation;

    while (r->workspaces_generation == generation)
      pthread_cond_wait(&r->refreshed, &r->lock);
    rc = r->workspaces_result;
    pthread_mutex_unlock(&r->lock);
    return rc;
  }
  if (r->workspaces_known &&
      (freshness == FRESH_KNOWN ||
       (r->workspaces_fetched_at > 0 &&
        monotonic_now() - r->workspaces_fetched_at < r->ttl))) {
    pthread_mutex_unlock(&r->lock);
    return 0;
  }
  if (r->workspaces_result < 0 && failed_recently(r->workspaces_failed_at)) {
    rc = r->workspaces_result;
    pthread_mutex_unlock(&r->lock);
    return rc;
  }
  r->workspaces_refreshing = true;
  pthread_mutex_unlock(&r->lock);

  started = monotonic_now();
  rc = fetch_workspaces(r);

  pthread_mutex_lock(&r->lock);
  r->workspaces_refreshing = false;
  r->workspaces_result = rc;
  r->workspaces_failed_at = reusable_failure_at(rc, started);
  r->workspaces_generation++;
  pthread_cond_broadcast(&r->refreshed);
  pthread_mutex_unlock(&r->lock);
  return rc;
}

time_t registry_orgs_mtime(struct registry *registry)
{
  time_t mtime;

  pthread_mutex_lock(&registry->lock);
  mtime = registry->orgs_mtime;
  pthread_mutex_unlock(&registry->lock);
  return mtime;
}

int registry_list_workspaces(struct registry *registry, struct gid_list *out)
{
  int rc = sync_workspaces(registry, FRESH_TTL);

  if (rc < 0)
    return rc;
  pthread_mutex_lock(&registry->lock);
  out->count = 0;
  out->gids = calloc(registry->workspace_count + 1, sizeof(*out->gids));
  if (!out->gids) {
    rc = -ENOMEM;
  } else {
    for (size_t i = 0; i < registry->workspace_count; i++)
      memcpy(out->gids[out->count++], registry->workspaces[i].gid,
             CLIENT_GID_MAX);
  }
  pthread_mutex_unlock(&registry->lock);
  return rc;
}

int registry_list_named_workspaces(struct registry *registry,
                                   struct named_workspaces *out)
{
  int rc = sync_workspaces(registry, FRESH_TTL);

  memset(out, 0, sizeof(*out));
  if (rc < 0)
    return rc;
  pthread_mutex_lock(&registry->lock);
  out->items = calloc(registry->workspace_count + 1, sizeof(*out->items));
  for (size_t i = 0; out->items && i < registry->workspace_count; i++) {
    struct named_workspace *item = &out->items[out->count];

    memcpy(item->gid, registry->workspaces[i].gid, CLIENT_GID_MAX);
    item->name = strdup(registry->workspaces[i].name);
    if (!item->name)
      break;
    out->count++;
  }
  if (!out->items || out->count < registry->workspace_count)
    rc = -ENOMEM;
  pthread_mutex_unlock(&registry->lock);
  if (rc < 0)
    named_workspaces_clear(out);
  return rc;
}

void named_workspaces_clear(struct named_workspaces *list)
{
  for (size_t i = 0; i < list->count; i++)
    free(list->items[i].name);
  free(list->items);
  memset(list, 0, sizeof(*list));
}

int registry_get_workspace(struct registry *registry, const char *gid,
                           enum freshness freshness,
                           struct workspace_view *out)
{
  struct known_workspace *item;
  int rc;

  if (!gid_valid(gid))
    return -ENOENT;
  rc = sync_workspaces(registry, freshness);
  if (rc < 0)
    return rc;
  pthread_mutex_lock(&registry->lock);
  item = find_workspace(registry, gid);
  if (!item && freshness == FRESH_KNOWN) {
    /* A workspace added since the list was saved: look once more in a
     * list no older than the ttl. */
    pthread_mutex_unlock(&registry->lock);
    rc = sync_workspaces(registry, FRESH_TTL);
    if (rc < 0)
      return rc;
    pthread_mutex_lock(&registry->lock);
    item = find_workspace(registry, gid);
  }
  if (!item) {
    rc = -ENOENT;
  } else if (out) {
    memset(out, 0, sizeof(*out));
    memcpy(out->gid, item->gid, sizeof(out->gid));
    out->is_organization = item->is_organization;
    out->mtime = item->mtime;
    out->name = strdup(item->name);
    rc = out->name ? copy_text(item->json, item->json_len, &out->json,
                               &out->json_len) : -ENOMEM;
  }
  pthread_mutex_unlock(&registry->lock);
  return rc;
}

/* ---- Exports ---- */

static struct known_export *find_export(struct registry *r, const char *org,
                                        const char *gid)
{
  for (struct known_export *e = r->exports; e; e = e->next) {
    if (strcmp(e->gid, gid) == 0 && strcmp(e->org_gid, org) == 0)
      return e;
  }
  return NULL;
}

static void free_export(struct known_export *e)
{
  free(e->info);
  free(e);
}

static bool state_is_final(enum client_export_state state)
{
  return state == CLIENT_EXPORT_FINISHED || state == CLIENT_EXPORT_ERROR;
}

/* Copies a fetched record into E. Returns whether info.json changed. */
static bool apply_export(struct known_export *e, const struct client_export *x)
{
  size_t len = 0;
  char *info = render_json(x->record, &len);
  bool changed;

  if (!info)
    return false;
  changed = !e->info || len != e->info_len || memcmp(info, e->info, len) != 0;
  free(e->info);
  e->info = info;
  e->info_len = len;
  e->state = x->state;
  e->created_time = x->created_time;
  return changed;
}

static void export_path(struct registry *r, const char *org, const char *gid,
                        char *path, size_t path_len)
{
  snprintf(path, path_len, "%s/exports/%s/%s.json", r->dir, org, gid);
}

/* Saves an export's record so that it is known after a remount. */
static void save_export(struct registry *r, const char *org, const char *gid,
                        const char *info, size_t info_len)
{
  char path[4096];

  snprintf(path, sizeof(path), "%s/exports/%s", r->dir, org);
  if (make_dir(path) < 0) {
    log_error("could not create %s: %s", path, strerror(errno));
    return;
  }
  export_path(r, org, gid, path, sizeof(path));
  write_file_atomic(path, info, info_len);
}

static struct known_export *new_export(const char *org,
                                       const struct client_export *x)
{
  struct known_export *e = calloc(1, sizeof(*e));

  if (!e)
    return NULL;
  snprintf(e->gid, sizeof(e->gid), "%s", x->gid);
  snprintf(e->org_gid, sizeof(e->org_gid), "%s", org);
  apply_export(e, x);
  if (!e->info) {
    free(e);
    return NULL;
  }
  return e;
}

/* Loads one saved record; the file contains info.json's text. */
static void load_export_file(struct registry *r, const char *org,
                             const char *path)
{
  struct client_export x = {0};
  struct client_error err = {0};
  struct known_export *e = NULL;
  json_t *record = json_load_file(path, 0, NULL);
  json_t *wrapper = json_pack("{s:O}", "data", record);
  char *text = wrapper ? json_dumps(wrapper, JSON_COMPACT) : NULL;

  if (!text || client_decode_export(text, strlen(text), false, &x, &err)) {
    log_warn("ignoring unreadable export record %s: %s", path,
             text ? err.message : "not JSON");
    goto out;
  }
  e = new_export(org, &x);
  if (e) {
    e->next = r->exports;
    r->exports = e;
  }
out:
  client_export_clear(&x);
  free(text);
  json_decref(wrapper);
  json_decref(record);
}

static void load_org_exports(struct registry *r, const char *org)
{
  char path[4096];
  struct dirent *entry;
  DIR *dir;

  snprintf(path, sizeof(path), "%s/exports/%s", r->dir, org);
  dir = opendir(path);
  if (!dir)
    return;
  while ((entry = readdir(dir)) != NULL) {
    char gid[CLIENT_GID_MAX], file[4096 + 256 + 2];
    const char *dot = strrchr(entry->d_name, '.');

    if (!dot || strcmp(dot, ".json") != 0 ||
        (size_t)(dot - entry->d_name) >= sizeof(gid))
      continue;
    snprintf(gid, sizeof(gid), "%.*s", (int)(dot - entry->d_name),
             entry->d_name);
    if (!gid_valid(gid))
      continue;
    snprintf(file, sizeof(file), "%s/%s", path, entry->d_name);
    load_export_file(r, org, file);
  }
  closedir(dir);
}

static void load_exports(struct registry *r)
{
  char path[4096];
  struct dirent *entry;
  DIR *dir;

  snprintf(path, sizeof(path), "%s/exports", r->dir);
  dir = opendir(path);
  if (!dir)
    return;
  while ((entry = readdir(dir)) != NULL) {
    if (gid_valid(entry->d_name))
      load_org_exports(r, entry->d_name);
  }
  closedir(dir);
}

/* Waits for a refresh in flight on E; returns its result. Caller holds
 * lock; E may be freed by the time this returns. */
static int wait_for_export_refresh(struct registry *r, struct known_export *e,
                                   const char *org, const char *gid)
{
  unsigned generation = e->refresh_generation;

  for (;;) {
    pthread_cond_wait(&r->refreshed, &r->lock);
    e = find_export(r, org, gid);
    if (!e)
      return -ENOENT;
    if (e->refresh_generation != generation)
      return e->refresh_result;
  }
}

static int fetch_export(struct registry *r, const char *org, const char *gid)
{
  struct client_export x = {0};
  struct client_error err = {0};
  char *info = NULL;
  size_t info_len = 0;
  bool changed = false;
  int rc = 0;

  if (client_get_export(r->client, gid, false, &x, &err) != CLIENT_OK) {
    log_error("reading export %s failed: %s", gid, err.message);
    rc = -client_error_errno(&err);
    goto out;
  }
  pthread_mutex_lock(&r->lock);
  struct known_export *e = find_export(r, org, gid);
  if (e && !e->forgotten) {
    changed = apply_export(e, &x);
    e->fetched_at = monotonic_now();
    if (changed)
      copy_text(e->info, e->info_len, &info, &info_len);
  }
  pthread_mutex_unlock(&r->lock);
  if (info)
    save_export(r, org, gid, info, info_len);
out:
  free(info);
  client_export_clear(&x);
  return rc;
}

/* Makes sure an export's record is as fresh as asked. */
static int sync_export(struct registry *r, const char *org, const char *gid,
                       enum freshness freshness)
{
  struct known_export *e;
  double started;
  int rc;

  pthread_mutex_lock(&r->lock);
  e = find_export(r, org, gid);
  if (!e) {
    pthread_mutex_unlock(&r->lock);
    return -ENOENT;
  }
  if (e->refreshing) {
    rc = wait_for_export_refresh(r, e, org, gid);
    pthread_mutex_unlock(&r->lock);
    return rc;
  }
  if (freshness == FRESH_KNOWN || state_is_final(e->state) ||
      (e->fetched_at > 0 && monotonic_now() - e->fetched_at < r->ttl)) {
    pthread_mutex_unlock(&r->lock);
    return 0;
  }
  if (e->refresh_result < 0 && failed_recently(e->failed_at)) {
    rc = e->refresh_result;
    pthread_mutex_unlock(&r->lock);
    return rc;
  }
  e->refreshing = true;
  pthread_mutex_unlock(&r->lock);

  started = monotonic_now();
  rc = fetch_export(r, org, gid);

  pthread_mutex_lock(&r->lock);
  e->refreshing = false;
  e->refresh_result = rc;
  e->failed_at = reusable_failure_at(rc, started);
  e->refresh_generation++;
  if (e->forgotten)
    free_export(e);
  pthread_cond_broadcast(&r->refreshed);
  pthread_mutex_unlock(&r->lock);
  return rc;
}

int registry_get_export(struct registry *registry, const char *org,
                        const char *gid, enum freshness freshness,
                        struct export_view *out)
{
  struct known_export *e;
  int rc;

  if (!gid_valid(org) || !gid_valid(gid))
    return -ENOENT;
  rc = sync_export(registry, org, gid, freshness);
  if (rc < 0)
    return rc;
  pthread_mutex_lock(&registry->lock);
  e = find_export(registry, org, gid);
  if (!e) {
    rc = -ENOENT;
  } else if (out) {
    memset(out, 0, sizeof(*out));
    memcpy(out->gid, e->gid, sizeof(out->gid));
    memcpy(out->org_gid, e->org_gid, sizeof(out->org_gid));
    out->state = e->state;
    out->created_time = e->created_time;
    rc = copy_text(e->info, e->info_len, &out->info, &out->info_len);
  }
  pthread_mutex_unlock(&registry->lock);
  return rc;
}

/* Orders exports newest first; gids break ties, longer being larger. */
static int compare_newest_first(const struct known_export *a,
                                const struct known_export *b)
{
  size_t la = strlen(a->gid), lb = strlen(b->gid);

  if (a->created_time != b->created_time)
    return a->created_time > b->created_time ? -1 : 1;
  if (la != lb)
    return la > lb ? -1 : 1;
  return -strcmp(a->gid, b->gid);
}

int registry_list_exports(struct registry *registry, const char *org,
                          struct gid_list *out)
{
  const struct known_export **sorted = NULL;
  size_t count = 0;
  int rc = 0;

  pthread_mutex_lock(&registry->lock);
  for (struct known_export *e = registry->exports; e; e = e->next)
    count++;
  sorted = calloc(count + 1, sizeof(*sorted));
  out->gids = calloc(count + 1, sizeof(*out->gids));
  out->count = 0;
  if (!sorted || !out->gids) {
    rc = -ENOMEM;
    goto out;
  }
  count = 0;
  for (struct known_export *e = registry->exports; e; e = e->next) {
    size_t i = count++;

    if (strcmp(e->org_gid, org) != 0) {
      count--;
      continue;
    }
    while (i > 0 && compare_newest_first(e, sorted[i - 1]) < 0) {
      sorted[i] = sorted[i - 1];
      i--;
    }
    sorted[i] = e;
  }
  for (size_t i = 0; i < count; i++)
    memcpy(out->gids[out->count++], sorted[i]->gid, CLIENT_GID_MAX);
out:
  pthread_mutex_unlock(&registry->lock);
  free(sorted);
  return rc;
}

/* Adds a fetched record to the registry and saves it. */
static int add_export(struct registry *r, const char *org,
                      const struct client_export *x)
{
  struct known_export *e = new_export(org, x);
  char *info = NULL;
  size_t info_len = 0;

  if (!e)
    return -ENOMEM;
  e->fetched_at = monotonic_now();
  if (copy_text(e->info, e->info_len, &info, &info_len) < 0) {
    free_export(e);
    return -ENOMEM;
  }
  pthread_mutex_lock(&r->lock);
  if (find_export(r, org, x->gid)) {
    pthread_mutex_unlock(&r->lock);
    free_export(e);
    free(info);
    return -EEXIST;
  }
  e->next = r->exports;
  r->exports = e;
  pthread_mutex_unlock(&r->lock);
  save_export(r, org, x->gid, info, info_len);
  free(info);
  return 0;
}

int registry_create_export(struct registry *registry, const char *org,
                           char gid_out[CLIENT_GID_MAX],
                           struct client_error *err)
{
  struct client_export x = {0};
  int rc;

  if (client_create_export(registry->client, org, &x, err) != CLIENT_OK) {
    log_error("starting an export of organization %s failed: %s", org,
              err->message);
    rc = -client_error_errno(err);
    goto out;
  }
  log_info("started export %s of organization %s", x.gid, org);
  rc = add_export(registry, org, &x);
  if (rc == 0)
    snprintf(gid_out, CLIENT_GID_MAX, "%s", x.gid);
out:
  client_export_clear(&x);
  return rc;
}

int registry_adopt_export(struct registry *registry, const char *org,
                          const char *gid)
{
  struct client_export x = {0};
  struct client_error err = {0};
  int rc;

  if (!gid_valid(org) || !gid_valid(gid))
    return -EINVAL;
  pthread_mutex_lock(&registry->lock);
  rc = find_export(registry, org, gid) ? -EEXIST : 0;
  pthread_mutex_unlock(&registry->lock);
  if (rc < 0)
    return rc;
  if (client_get_export(registry->client, gid, false, &x, &err) != CLIENT_OK) {
    log_error("adopting export %s failed: %s", gid, err.message);
    rc = -client_error_errno(&err);
    goto out;
  }
  if (strcmp(x.org_gid, org) != 0) {
    log_error("not adopting export %s: it belongs to organization %s, not %s",
              gid, x.org_gid[0] ? x.org_gid : "(none)", org);
    rc = -ENOENT;
    goto out;
  }
  rc = add_export(registry, org, &x);
  if (rc == 0)
    log_info("adopted export %s of organization %s", gid, org);
out:
  client_export_clear(&x);
  return rc;
}

int registry_forget_export(struct registry *registry, const char *org,
                           const char *gid)
{
  struct known_export **link, *e = NULL;
  char path[4096];

  if (!gid_valid(org) || !gid_valid(gid))
    return -ENOENT;
  pthread_mutex_lock(&registry->lock);
  for (link = &registry->exports; *link; link = &(*link)->next) {
    if (strcmp((*link)->gid, gid) == 0 && strcmp((*link)->org_gid, org) == 0) {
      e = *link;
      *link = e->next;
      break;
    }
  }
  if (e && e->refreshing)
    e->forgotten = true;
  else if (e)
    free_export(e);
  pthread_mutex_unlock(&registry->lock);
  if (!e)
    return -ENOENT;
  export_path(registry, org, gid, path, sizeof(path));
  if (unlink(path) < 0 && errno != ENOENT)
    log_error("could not remove %s: %s", path, strerror(errno));
  log_info("forgot export %s of organization %s", gid, org);
  return 0;
}

/* ---- The `new` files ---- */

static struct control *find_control(struct registry *r, const char *org)
{
  for (struct control *c = r->controls; c; c = c->next) {
    if (strcmp(c->org, org) == 0)
      return c;
  }
  return NULL;
}

/* Sets an organization's `new` text in memory; caller holds lock. Takes
 * ownership of TEXT. */
static void store_control(struct registry *r, const char *org, char *text,
                          time_t mtime)
{
  struct control *c = find_control(r, org);

  if (!c && (c = calloc(1, sizeof(*c))) != NULL) {
    snprintf(c->org, sizeof(c->org), "%s", org);
    c->next = r->controls;
    r->controls = c;
  }
  if (!c) {
    free(text);
    return;
  }
  free(c->text);
  c->text = text;
  c->len = strlen(text);
  c->mtime = mtime;
}

/* Keeps the text of `new` across remounts, so that its size and mtime stay
 * the same and a later rsync does not copy it again. */
static void save_control(struct registry *r, const char *org,
                         const char *text, time_t mtime)
{
  struct timespec times[2] = { { mtime, 0 }, { mtime, 0 } };
  char path[4096];

  snprintf(path, sizeof(path), "%s/new/%s", r->dir, org);
  if (write_file_atomic(path, text, strlen(text)) == 0)
    utimensat(AT_FDCWD, path, times, 0);
}

static void load_controls(struct registry *r)
{
  char path[4096];
  struct dirent *entry;
  DIR *dir;

  snprintf(path, sizeof(path), "%s/new", r->dir);
  dir = opendir(path);
  if (!dir)
    return;
  while ((entry = readdir(dir)) != NULL) {
    char file[4096 + 256 + 2], text[CLIENT_MESSAGE_MAX + 64];
    struct stat st;
    ssize_t len;
    int fd;

    if (!gid_valid(entry->d_name))
      continue;
    snprintf(file, sizeof(file), "%s/%s", path, entry->d_name);
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      continue;
    len = read(fd, text, sizeof(text) - 1);
    if (len >= 0 && fstat(fd, &st) == 0) {
      text[len] = '\0';
      store_control(r, entry->d_name, strdup(text), st.st_mtime);
    }
    close(fd);
  }
  closedir(dir);
}

void registry_set_control(struct registry *registry, const char *org,
                          const char *text)
{
  char *copy = strdup(text);
  time_t now = time(NULL);

  if (!copy)
    return;
  pthread_mutex_lock(&registry->lock);
  store_control(registry, org, copy, now);
  pthread_mutex_unlock(&registry->lock);
  save_control(registry, org, text, now);
}

int registry_get_control(struct registry *registry, const char *org,
                         char **text, size_t *len, time_t *mtime)
{
  struct control *c;
  int rc = 0;

  pthread_mutex_lock(&registry->lock);
  c = find_control(registry, org);
  *len = c ? c->len : 0;
  *mtime = c ? c->mtime : 0;
  *text = malloc(*len + 1);
  if (!*text)
    rc = -ENOMEM;
  else if (c)
    memcpy(*text, c->text, *len + 1);
  else
    (*text)[0] = '\0';
  pthread_mutex_unlock(&registry->lock);
  return rc;
}

/* ---- Life cycle ---- */

int registry_new(const char *cache_dir, struct client *client, unsigned ttl,
                 struct registry **out, char *err, size_t err_len)
{
  struct registry *r = calloc(1, sizeof(*r));
  char path[4096];
  int rc = 0;

  if (!r)
    return -ENOMEM;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->refreshed, NULL);
  r->client = client;
  r->ttl = ttl;
  if (asprintf(&r->dir, "%s/registry", cache_dir) < 0) {
    r->dir = NULL;
    rc = -ENOMEM;
    goto out;
  }
  snprintf(path, sizeof(path), "%s/exports", r->dir);
  if ((rc = make_dir(r->dir)) < 0 || (rc = make_dir(path)) < 0) {
    snprintf(err, err_len, "cannot create %s: %s", path, strerror(-rc));
    goto out;
  }
  snprintf(path, sizeof(path), "%s/new", r->dir);
  if ((rc = make_dir(path)) < 0) {
    snprintf(err, err_len, "cannot create %s: %s", path, strerror(-rc));
    goto out;
  }
  load_workspaces(r);
  load_exports(r);
  load_controls(r);
out:
  if (rc < 0) {
    registry_free(r);
    r = NULL;
  }
  *out = r;
  return rc;
}

void registry_free(struct registry *registry)
{
  if (!registry)
    return;
  free_workspaces(registry->workspaces, registry->workspace_count);
  while (registry->exports) {
    struct known_export *next = registry->exports->next;

    free_export(registry->exports);
    registry->exports = next;
  }
  while (registry->controls) {
    struct control *next = registry->controls->next;

    free(registry->controls->text);
    free(registry->controls);
    registry->controls = next;
  }
  pthread_mutex_destroy(&registry->lock);
  pthread_cond_destroy(&registry->refreshed);
  free(registry->dir);
  free(registry);
}
