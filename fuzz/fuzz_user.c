/*
 * libFuzzer harness for the decoding of the user record ({"data": User},
 * the reply of GET /users/me that the token check reads): arbitrary bytes
 * go to client_decode_user().
 *
 * Besides the sanitizers' checks, it aborts when the result breaks the
 * contract in client.h. A decoded user has a gid of digits and a name that
 * ends inside its array. A failed call leaves the struct zeroed.
 */
#include "client.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_zeroed(const struct client_user *user)
{
  static const struct client_user zero;

  return memcmp(user, &zero, sizeof(zero)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct client_error err = {0};
  struct client_user user;
  enum client_result rc;
  size_t len;

  rc = client_decode_user((const char *)data, size, &user, &err);
  if (rc != CLIENT_OK) {
    if (!is_zeroed(&user) || err.result != rc)
      abort();
    return 0;
  }
  len = strnlen(user.gid, CLIENT_GID_MAX);
  if (len == 0 || len == CLIENT_GID_MAX ||
      strspn(user.gid, "0123456789") != len)
    abort();
  if (strnlen(user.name, sizeof(user.name)) == sizeof(user.name))
    abort();
  return 0;
}
