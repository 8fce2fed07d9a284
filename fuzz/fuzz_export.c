/*
 * libFuzzer harness for the decoding of an organization export record
 * ({"data": OrganizationExport}, the reply of GET and POST
 * /organization_exports): arbitrary bytes go to client_decode_export(),
 * once without and once with the download URL.
 *
 * Besides the sanitizers' checks, it aborts when the result breaks the
 * contract in client.h. A decoded record has a gid of digits, strings that
 * end inside their arrays, a record copy without download_url, and a
 * download URL only when one was requested. A failed call leaves the
 * struct zeroed.
 */
#include "client.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_zeroed(const struct client_export *record)
{
  static const struct client_export zero;

  return memcmp(record, &zero, sizeof(zero)) == 0;
}

static bool is_gid(const char *gid, bool may_be_empty)
{
  size_t len = strnlen(gid, CLIENT_GID_MAX);

  if (len == CLIENT_GID_MAX || (len == 0 && !may_be_empty))
    return false;
  return strspn(gid, "0123456789") == len;
}

static void check_export(const struct client_export *record, bool want_url)
{
  if (!is_gid(record->gid, false) || !is_gid(record->org_gid, true))
    abort();
  if (strnlen(record->created_at, sizeof(record->created_at)) ==
      sizeof(record->created_at))
    abort();
  if (record->state > CLIENT_EXPORT_ERROR)
    abort();
  if (strcmp(client_export_state_name(record->state), "") == 0)
    abort();
  if (!record->record || !json_is_object(record->record) ||
      json_object_get(record->record, "download_url"))
    abort();
  if (record->download_url && (!want_url || !*record->download_url))
    abort();
}

static void decode_and_check(const uint8_t *data, size_t size, bool want_url)
{
  struct client_error err = {0};
  struct client_export record;
  enum client_result rc;

  rc = client_decode_export((const char *)data, size, want_url, &record,
                            &err);
  if (rc != CLIENT_OK) {
    if (!is_zeroed(&record) || err.result != rc)
      abort();
    return;
  }
  check_export(&record, want_url);
  client_export_clear(&record);
  if (!is_zeroed(&record))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  decode_and_check(data, size, false);
  decode_and_check(data, size, true);
  return 0;
}
