/*
 * zinflate: inflates a gzip file (concatenated members too) to stdout with
 * zlib and large buffers. The benchmark uses it as the ceiling of what any
 * reader of an export can reach on this machine: it is zlib's own speed,
 * with no network, no disk writes and no FUSE.
 * Usage: zinflate FILE.gz > /dev/null
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

#define IN_SIZE (1u << 20)
#define OUT_SIZE (1u << 20)

int main(int argc, char **argv)
{
  static unsigned char in[IN_SIZE], out[OUT_SIZE];
  z_stream z = {0};
  FILE *f = argc == 2 ? fopen(argv[1], "rb") : NULL;
  size_t n;
  int ret = Z_OK;

  if (!f || inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
    return perror(argc == 2 ? argv[1] : "usage: zinflate FILE.gz"), 1;
  while ((n = fread(in, 1, IN_SIZE, f)) > 0) {
    z.next_in = in;
    z.avail_in = (uInt)n;
    while (z.avail_in > 0) {
      if (ret == Z_STREAM_END && inflateReset(&z) != Z_OK)
        return 1;
      z.next_out = out;
      z.avail_out = OUT_SIZE;
      ret = inflate(&z, Z_NO_FLUSH);
      if (ret != Z_OK && ret != Z_STREAM_END)
        return fprintf(stderr, "zinflate: %s\n", zError(ret)), 1;
      if (write(1, out, OUT_SIZE - z.avail_out) < 0)
        return perror("write"), 1;
    }
  }
  return ret == Z_STREAM_END ? 0 : (fprintf(stderr, "zinflate: truncated\n"), 1);
}
