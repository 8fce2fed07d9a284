/*
 * fs: the FUSE layer of asanafs. Paths, operations and mount options.
 *
 * The tree is a table (nodes.c): each row is a path pattern such as
 * "orgs/{gid}/exports/{gid}/state" with the callbacks that decide whether
 * such a node exists, what its attributes are, what it lists and what it
 * reads. Operations (ops.c) resolve a path to a row and call its callbacks,
 * so a new kind of Asana resource is a few new rows, not new operations.
 *
 * The Asana records that asanafs keeps live in the registry (registry.c): the
 * workspace list and the exports created or adopted through the mount.
 * Both are saved under the cache folder, so after a remount a complete
 * export is found and served without any network request. Records that can
 * change are fetched again at most once per state_ttl, however many readers
 * ask, and final export states are never fetched again.
 *
 * Rows also give a node's extended attributes (the Asana gid, type and
 * state, and what the cache holds), and a "{name}" component lets names/
 * map workspace names to gids (names.c).
 *
 * Start-up (fs.c) checks the command line, the mount point, the token, the
 * cache folder and, with GET /users/me, that Asana accepts the token, all
 * before mounting or daemonizing. A failure prints one line and returns one
 * of the exit statuses of enum fs_exit in internal.h.
 *
 * Errors: every FUSE operation returns 0 or a negative errno. Below this
 * layer, the client returns a result plus detail; client_error_errno() turns
 * it into an errno here, and the detail is logged and, for `new`, shown in
 * the file.
 */
#ifndef ASANAFS_FS_H
#define ASANAFS_FS_H

/* Parses the command line, checks, mounts, serves until unmounted and
 * returns the process exit status (0 to 6, see enum fs_exit). */
int fs_main(int argc, char *argv[]);

#endif
