/*
 * libFuzzer harness for the decoding of a GET /workspaces page: arbitrary
 * bytes go to client_decode_workspaces_page() twice, so the second call
 * appends to a list that is already filled, as paging does.
 *
 * Besides the sanitizers' checks, it aborts when a decoded page breaks the
 * contract in client.h. Every workspace has a gid of digits and a name, a
 * failed call leaves the list as it was, and a next_page offset is
 * returned only on success.
 */
#include "client.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_workspace(const struct client_workspace *ws)
{
  size_t len = strnlen(ws->gid, CLIENT_GID_MAX);

  if (len == 0 || len == CLIENT_GID_MAX)
    abort();
  if (strspn(ws->gid, "0123456789") != len)
    abort();
  if (!ws->name || !ws->record || !json_is_object(ws->record))
    abort();
}

/* Decodes DATA into LIST and checks the contract of the result. */
static void decode_and_check(const uint8_t *data, size_t size,
                             struct client_workspace_list *list)
{
  struct client_error err = {0};
  size_t before = list->count;
  char *next = NULL;
  enum client_result rc;

  rc = client_decode_workspaces_page((const char *)data, size, list, &next,
                                     &err);
  if (rc != CLIENT_OK) {
    if (list->count != before || next || err.result != rc)
      abort();
    if (strnlen(err.message, sizeof(err.message)) == sizeof(err.message))
      abort();
    return;
  }
  if (next && !*next)
    abort();
  for (size_t i = before; i < list->count; i++)
    check_workspace(&list->items[i]);
  free(next);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct client_workspace_list list = {0};

  decode_and_check(data, size, &list);
  decode_and_check(data, size, &list);
  client_workspace_list_clear(&list);
  if (list.items || list.count)
    abort();
  return 0;
}
