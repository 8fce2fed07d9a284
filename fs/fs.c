/* placeholder until the FUSE layer lands */
int fs_placeholder(void);
int fs_placeholder(void) { return 0; }
