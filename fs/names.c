/*
 * Link names of names/: each workspace's name made safe as a file name,
 * and made unique by appending " (GID)" to every name that two workspaces
 * share. The result depends only on the list, so every lookup and listing
 * of one list gives the same names.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room left for " (GID)" after the name. */
#define BASE_MAX (NAME_MAX - (CLIENT_GID_MAX - 1) - 3)

/* Cuts S to at most MAX bytes without splitting a UTF-8 sequence. */
static void cut_utf8(char *s, size_t max)
{
  size_t len = strlen(s);

  if (len <= max)
    return;
  len = max;
  while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
    len--;
  s[len] = '\0';
}

/* Writes NAME as a file name: '/' and control characters become '_'. */
static void sanitize(const char *name, char out[NAME_MAX + 1])
{
  size_t i;

  snprintf(out, NAME_MAX + 1, "%s", name ? name : "");
  cut_utf8(out, BASE_MAX);
  for (i = 0; out[i]; i++) {
    unsigned char c = (unsigned char)out[i];

    if (c == '/' || c < 0x20 || c == 0x7f)
      out[i] = '_';
  }
  if (!out[0] || strcmp(out, ".") == 0 || strcmp(out, "..") == 0)
    snprintf(out, NAME_MAX + 1, "workspace");
}

static int compare_links(const void *a, const void *b)
{
  const struct named_workspace *const *x = a, *const *y = b;

  return strcmp((*x)->link, (*y)->link);
}

/* Appends " (GID)" to each link that another one equals, unless it has it
 * already. Returns how many links changed. */
static size_t suffix_duplicates(const struct named_workspace *items,
                                struct named_workspace **sorted, size_t count,
                                bool *suffixed, bool *duplicate)
{
  size_t changed = 0;

  qsort(sorted, count, sizeof(*sorted), compare_links);
  /* Mark every duplicate before changing any link, because a changed link
   * would hide the duplicate that follows it. */
  for (size_t i = 0; i < count; i++) {
    size_t index = (size_t)(sorted[i] - items);

    duplicate[index] =
      (i > 0 && strcmp(sorted[i]->link, sorted[i - 1]->link) == 0) ||
      (i + 1 < count && strcmp(sorted[i]->link, sorted[i + 1]->link) == 0);
  }
  for (size_t i = 0; i < count; i++) {
    size_t index = (size_t)(sorted[i] - items);
    size_t len = strlen(sorted[i]->link);

    if (!duplicate[index] || suffixed[index])
      continue;
    suffixed[index] = true;
    snprintf(sorted[i]->link + len, NAME_MAX + 1 - len, " (%s)",
             sorted[i]->gid);
    changed++;
  }
  return changed;
}

int names_assign(struct named_workspace *items, size_t count)
{
  struct named_workspace **sorted;
  bool *suffixed, *duplicate;
  int rc = 0;

  if (count == 0)
    return 0;
  sorted = calloc(count, sizeof(*sorted));
  suffixed = calloc(count, sizeof(*suffixed));
  duplicate = calloc(count, sizeof(*duplicate));
  if (!sorted || !suffixed || !duplicate) {
    rc = -ENOMEM;
    goto out;
  }
  for (size_t i = 0; i < count; i++) {
    sanitize(items[i].name, items[i].link);
    sorted[i] = &items[i];
  }
  /* A suffixed link can equal another workspace's plain name, such as
   * "Acme (1331)", which then gets a suffix too. Links that both end in
   * their own gid never match, so this ends within COUNT passes. */
  while (suffix_duplicates(items, sorted, count, suffixed, duplicate) > 0)
    ;
out:
  free(sorted);
  free(suffixed);
  free(duplicate);
  return rc;
}
