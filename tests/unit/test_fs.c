/*
 * Unit tests of the pure parts of the fs module: option values, the
 * command line's positional words and ignored options, the link names of
 * names/, and the check of gids.
 */
#include "internal.h"
#include "log.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool test_failed;

#define CHECK(expr)                                                         \
  do {                                                                      \
    if (!(expr)) {                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,      \
              #expr);                                                       \
      test_failed = true;                                                   \
    }                                                                       \
  } while (0)

/* ---- Option values ---- */

static void test_parse_size(void)
{
  static const struct {
    const char *text;
    uint64_t value;
  } valid[] = {
    { "0", 0 }, { "123", 123 }, { "1K", 1024 }, { "1KB", 1024 },
    { "1KiB", 1024 }, { "20G", 20ULL << 30 }, { "3T", 3ULL << 40 },
    { "5MB", 5ULL << 20 }, { "18446744073709551615", UINT64_MAX },
  };
  static const char *const invalid[] = {
    "", "abc", "-1", "+1", " 1", "1X", "1.5G", "1 G", "1Gx", "K",
    "18446744073709551616", "16777216T",
  };
  uint64_t value;

  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++) {
    value = 1;
    CHECK(options_parse_size(valid[i].text, &value) == 0);
    CHECK(value == valid[i].value);
  }
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
    if (options_parse_size(invalid[i], &value) != -1) {
      fprintf(stderr, "accepted size \"%s\"\n", invalid[i]);
      test_failed = true;
    }
  }
  CHECK(options_parse_size(NULL, &value) == -1);
}

static void test_parse_seconds(void)
{
  unsigned value = 7;

  CHECK(options_parse_seconds("0", 0, 86400, &value) == 0);
  CHECK(value == 0);
  CHECK(options_parse_seconds("86400", 0, 86400, &value) == 0);
  CHECK(value == 86400);
  CHECK(options_parse_seconds("86401", 0, 86400, &value) == -1);
  CHECK(options_parse_seconds("0", 1, 3600, &value) == -1);
  CHECK(options_parse_seconds("-1", 0, 10, &value) == -1);
  CHECK(options_parse_seconds("+1", 0, 10, &value) == -1);
  CHECK(options_parse_seconds("1.5", 0, 10, &value) == -1);
  CHECK(options_parse_seconds("", 0, 10, &value) == -1);
  CHECK(options_parse_seconds("99999999999999999999", 0, 10, &value) == -1);
  CHECK(options_parse_seconds(NULL, 0, 10, &value) == -1);
}

/* Runs options_parse() on ARGV and returns its result; ARGS keeps what
 * is left for libfuse. */
static int parse(const char **argv, int argc, struct fuse_args *args,
                 struct fs_config *config)
{
  struct fuse_args init = FUSE_ARGS_INIT(0, NULL);

  *args = init;
  memset(config, 0, sizeof(*config));
  for (int i = 0; i < argc; i++)
    fuse_opt_add_arg(args, argv[i]);
  return options_parse(args, config);
}

static bool args_contain(const struct fuse_args *args, const char *text)
{
  for (int i = 0; i < args->argc; i++) {
    if (strstr(args->argv[i], text))
      return true;
  }
  return false;
}

static void test_command_line_words(void)
{
  const char *with_source[] = {
    "asanafs", "asanafs", "/mnt/asana", "-o",
    "_netdev,noauto,nofail,user,users,auto,defaults,ro,timeout=5,nonempty",
  };
  const char *plain[] = { "asanafs", "/mnt/a", "-f" };
  const char *too_many[] = { "asanafs", "a", "b", "c" };
  const char *bad_value[] = { "asanafs", "/m", "-o", "state_ttl=-1" };
  struct fuse_args args;
  struct fs_config config;

  CHECK(parse(with_source, 5, &args, &config) == 0);
  CHECK(config.mountpoint != NULL);
  CHECK(strcmp(config.mountpoint ? config.mountpoint : "", "/mnt/asana") == 0);
  CHECK(config.source != NULL);
  CHECK(strcmp(config.source ? config.source : "", "asanafs") == 0);
  CHECK(config.timeout == 5);
  CHECK(config.state_ttl == 60);
  CHECK(config.nonempty == 1);
  CHECK(args_contain(&args, "ro"));
  for (size_t i = 0; i < 7; i++) {
    static const char *const ignored[] = { "_netdev", "noauto", "nofail",
                                           "users", "auto", "defaults",
                                           "nonempty" };
    CHECK(!args_contain(&args, ignored[i]));
  }
  CHECK(!args_contain(&args, "/mnt/asana"));
  fuse_opt_free_args(&args);
  options_free(&config);

  CHECK(parse(plain, 3, &args, &config) == 0);
  CHECK(strcmp(config.mountpoint ? config.mountpoint : "", "/mnt/a") == 0);
  CHECK(config.source == NULL);
  CHECK(config.nonempty == 0);
  CHECK(args_contain(&args, "-f"));
  fuse_opt_free_args(&args);
  options_free(&config);

  CHECK(parse(too_many, 4, &args, &config) == FS_EXIT_USAGE);
  fuse_opt_free_args(&args);
  options_free(&config);

  CHECK(parse(bad_value, 4, &args, &config) == FS_EXIT_USAGE);
  fuse_opt_free_args(&args);
  options_free(&config);
}

static void test_empty_paths_rejected(void)
{
  const char *empty_cache[] = { "asanafs", "/m", "-o", "cache_dir=" };
  const char *empty_token[] = { "asanafs", "/m", "-o", "token_file=" };
  struct fuse_args args;
  struct fs_config config;

  CHECK(parse(empty_cache, 4, &args, &config) == FS_EXIT_USAGE);
  fuse_opt_free_args(&args);
  options_free(&config);

  CHECK(parse(empty_token, 4, &args, &config) == FS_EXIT_USAGE);
  fuse_opt_free_args(&args);
  options_free(&config);
}

/* ---- Link names ---- */

/* Assigns link names to COUNT workspaces given as gid and name pairs and
 * checks each against EXPECTED. */
static void check_links(const char *const (*pairs)[2], size_t count,
                        const char *const *expected)
{
  struct named_workspace items[16];

  memset(items, 0, sizeof(items));
  for (size_t i = 0; i < count; i++) {
    snprintf(items[i].gid, sizeof(items[i].gid), "%s", pairs[i][0]);
    items[i].name = (char *)pairs[i][1];
  }
  CHECK(names_assign(items, count) == 0);
  for (size_t i = 0; i < count; i++) {
    if (strcmp(items[i].link, expected[i]) != 0) {
      fprintf(stderr, "link of %s is \"%s\", expected \"%s\"\n",
              items[i].gid, items[i].link, expected[i]);
      test_failed = true;
    }
  }
}

static void test_names_sanitized(void)
{
  static const char *const pairs[][2] = {
    { "1", "Acme" }, { "2", "a/b" }, { "3", "tab\there" }, { "4", "" },
    { "5", "." }, { "6", ".." }, { "7", "del\x7f" }, { "8", "Caf\xc3\xa9" },
    { "9", "..." },
  };
  static const char *const expected[] = {
    "Acme", "a_b", "tab_here", "workspace (4)", "workspace (5)",
    "workspace (6)", "del_", "Caf\xc3\xa9", "...",
  };

  check_links(pairs, 9, expected);
}

static void test_names_collisions(void)
{
  static const char *const pairs[][2] = {
    { "1331", "Acme" }, { "1332", "Acme" }, { "1333", "Acme (1331)" },
    { "1334", "acme" }, { "1335", "x/y" }, { "1336", "x_y" },
  };
  static const char *const expected[] = {
    "Acme (1331)", "Acme (1332)", "Acme (1331) (1333)", "acme",
    "x_y (1335)", "x_y (1336)",
  };

  check_links(pairs, 6, expected);
}

static void test_names_long(void)
{
  char name[2 * 200 + 1], prefix[400];
  struct named_workspace items[2];

  /* 200 two-byte characters: cut to fit NAME_MAX with a suffix, never in
   * the middle of a character. NAME has room for them and the NUL. */
  name[0] = '\0';
  for (int i = 0; i < 200; i++)
    strcat(name, "\xc3\xa9");
  memset(items, 0, sizeof(items));
  snprintf(items[0].gid, sizeof(items[0].gid), "1");
  snprintf(items[1].gid, sizeof(items[1].gid), "12345678901234567890");
  items[0].name = name;
  items[1].name = name;
  CHECK(names_assign(items, 2) == 0);
  for (int i = 0; i < 2; i++) {
    const char *link = items[i].link;
    size_t len = strlen(link);
    const char *suffix = strrchr(link, '(');

    CHECK(len <= NAME_MAX);
    CHECK(suffix != NULL);
    if (!suffix)
      continue;
    CHECK(strcmp(suffix + 1, i ? "12345678901234567890)" : "1)") == 0);
    snprintf(prefix, sizeof(prefix), "%.*s", (int)(suffix - link - 1), link);
    CHECK(strlen(prefix) % 2 == 0);
    CHECK(strncmp(prefix, name, strlen(prefix)) == 0);
  }
}

/* ---- Gids ---- */

static void test_gid_valid(void)
{
  CHECK(gid_valid("1331"));
  CHECK(gid_valid("1205000000000001"));
  CHECK(!gid_valid(""));
  CHECK(!gid_valid("0"));
  CHECK(!gid_valid("01331"));
  CHECK(!gid_valid("13a1"));
  CHECK(!gid_valid("-1331"));
  CHECK(!gid_valid("1331 "));
  CHECK(!gid_valid("1234567890123456789012345678901234567890123456789012345678901234"));
}

struct test_case {
  const char *name;
  void (*run)(void);
};

static const struct test_case tests[] = {
  { "parse size", test_parse_size },
  { "parse seconds", test_parse_seconds },
  { "command line words", test_command_line_words },
  { "empty paths rejected", test_empty_paths_rejected },
  { "names sanitized", test_names_sanitized },
  { "names collisions", test_names_collisions },
  { "names long", test_names_long },
  { "gid valid", test_gid_valid },
};

int main(void)
{
  int passed = 0, failed = 0;

  log_init(false, LOG_WARNING);
  for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
    test_failed = false;
    tests[i].run();
    printf("%s %s\n", test_failed ? "FAIL" : "ok  ", tests[i].name);
    if (test_failed)
      failed++;
    else
      passed++;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
