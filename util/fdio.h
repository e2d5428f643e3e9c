/*
 * fdio.h - whole writes to a descriptor
 */
#ifndef PMTA_FDIO_H
#define PMTA_FDIO_H

#include <stddef.h>

/*
 * fd_write_all - write all N bytes at P to FD, retrying short writes and
 * EINTR; 0, or -errno (-EIO if the kernel took nothing). For blocking
 * descriptors: files, the log, stderr.
 */
int fd_write_all(int fd, const void *p, size_t n);

#endif
