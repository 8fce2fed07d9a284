/*
 * libFuzzer harness for the decoding of an error reply's message (Asana's
 * {"errors":[{"message": ...}]}, or any other body a server sends with a
 * non-2xx status). The first two input bytes set the HTTP status and the
 * size of the caller's buffer, and the rest is the body. The buffer is
 * allocated to that exact size, so AddressSanitizer catches a write past
 * its end.
 *
 * Besides the sanitizers' checks, it aborts when the message is not one
 * non-empty line without control characters that ends inside the buffer.
 */
#include "client.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const long statuses[] = { 400, 401, 402, 403, 404, 429, 500, 503, 0,
                                 -1, 99, 999, 1000, 200, 302, 451 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  size_t message_len;
  long status;
  char *message;

  if (size < 2)
    return 0;
  status = statuses[data[0] % (sizeof(statuses) / sizeof(statuses[0]))];
  message_len = 1 + data[1] % CLIENT_MESSAGE_MAX;
  message = malloc(message_len);
  if (!message)
    return 0;
  memset(message, 'x', message_len);
  client_decode_error_message((const char *)data + 2, size - 2, status,
                              message, message_len);
  if (strnlen(message, message_len) == message_len)
    abort();
  for (const unsigned char *p = (unsigned char *)message; *p; p++) {
    if (*p < 0x20 || *p == 0x7f)
      abort();
  }
  if (message_len > 1 && message[0] == '\0')
    abort();
  free(message);
  return 0;
}
