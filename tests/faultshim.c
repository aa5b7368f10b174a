/* LD_PRELOAD fault injector: SIGKILL the process at its N-th durable-state system call.
 *
 * Counted calls (one global counter, in call order): write, pwrite, pwrite64, writev,
 * pwritev, ftruncate, fsync, fdatasync on file descriptors that refer to a path under
 * $GALLERY_FAULT_DIR, and rename, renameat, renameat2, link, linkat, unlink, unlinkat,
 * mkdir, mkdirat, rmdir on paths under it. HDF5 (through libc's pwrite), Python's os and
 * io modules all reach these through libc's exported symbols, so the count covers the
 * store's own writes and nothing else (stdout, logs, temp files elsewhere are ignored).
 *
 *   GALLERY_FAULT_DIR=/abs/dir   only calls touching this directory are counted
 *   GALLERY_FAULT_AT=N           kill (SIGKILL, before the call runs) at the N-th counted call
 *   GALLERY_FAULT_LOG=/path      append "N call target" per counted call (counting runs)
 *
 * Build: cc -shared -fPIC -O2 -o faultshim.so faultshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char fault_dir[PATH_MAX];
static size_t fault_dir_len;
static long fault_at = -1;
static int log_fd = -1;
static atomic_long counter;

static ssize_t (*log_write)(int, const void *, size_t);

__attribute__((constructor)) static void shim_init(void) {
    log_write = dlsym(RTLD_NEXT, "write");
    const char *dir = getenv("GALLERY_FAULT_DIR");
    if (dir && realpath(dir, fault_dir)) fault_dir_len = strlen(fault_dir);
    const char *at = getenv("GALLERY_FAULT_AT");
    if (at) fault_at = atol(at);
    const char *log = getenv("GALLERY_FAULT_LOG");
    if (log) log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static int under_dir(const char *path) {
    if (!fault_dir_len || !path) return 0;
    return strncmp(path, fault_dir, fault_dir_len) == 0 &&
           (path[fault_dir_len] == '/' || path[fault_dir_len] == '\0' || path[fault_dir_len] == '.');
}

static int fd_under_dir(int fd) {
    char link[64], target[PATH_MAX];
    if (!fault_dir_len || fd < 0) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = '\0';
    return under_dir(target);
}

static int path_under_dir(int dirfd, const char *path) {
    char full[2 * PATH_MAX + 2], base[PATH_MAX];
    if (!fault_dir_len || !path) return 0;
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
        snprintf(full, sizeof full, "%s/%s", base, path);
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n <= 0) return 0;
        base[n] = '\0';
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    /* Resolve the parent folder (symlinks, /proc/self/fd/N handles on the store directory). */
    char *slash = strrchr(full, '/');
    if (slash && slash != full) {
        char parent[PATH_MAX], resolved[2 * PATH_MAX + 2];
        size_t len = (size_t)(slash - full);
        if (len < sizeof parent) {
            memcpy(parent, full, len);
            parent[len] = '\0';
            if (realpath(parent, base)) {
                snprintf(resolved, sizeof resolved, "%s%s", base, slash);
                return under_dir(resolved);
            }
        }
    }
    return under_dir(full);
}

static void tick(const char *call, const char *target) {
    long k = atomic_fetch_add(&counter, 1) + 1;
    if (log_fd >= 0 && log_write) {
        char line[PATH_MAX + 64];
        int len = snprintf(line, sizeof line, "%ld %s %s\n", k, call, target ? target : "");
        if (len > 0) log_write(log_fd, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
    }
    if (k == fault_at) kill(getpid(), SIGKILL);
}

static const char *fd_name(int fd, char *buf, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, buf, size - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

#define FD_CALL(name, fd) do { if (fd_under_dir(fd)) { char b_[PATH_MAX]; tick(#name, fd_name(fd, b_, sizeof b_)); } } while (0)
#define PATH_CALL(name, dirfd, path) do { if (path_under_dir(dirfd, path)) tick(#name, path); } while (0)

ssize_t write(int fd, const void *buf, size_t n) { REAL(write); FD_CALL(write, fd); return real_write(fd, buf, n); }
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { REAL(pwrite); FD_CALL(pwrite, fd); return real_pwrite(fd, buf, n, off); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { REAL(pwrite64); FD_CALL(pwrite64, fd); return real_pwrite64(fd, buf, n, off); }
ssize_t writev(int fd, const struct iovec *iov, int cnt) { REAL(writev); FD_CALL(writev, fd); return real_writev(fd, iov, cnt); }
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) { REAL(pwritev); FD_CALL(pwritev, fd); return real_pwritev(fd, iov, cnt, off); }
int ftruncate(int fd, off_t len) { REAL(ftruncate); FD_CALL(ftruncate, fd); return real_ftruncate(fd, len); }
int ftruncate64(int fd, off64_t len) { REAL(ftruncate64); FD_CALL(ftruncate64, fd); return real_ftruncate64(fd, len); }
int fsync(int fd) { REAL(fsync); FD_CALL(fsync, fd); return real_fsync(fd); }
int fdatasync(int fd) { REAL(fdatasync); FD_CALL(fdatasync, fd); return real_fdatasync(fd); }
int rename(const char *a, const char *b) { REAL(rename); PATH_CALL(rename, AT_FDCWD, b); return real_rename(a, b); }
int renameat(int fa, const char *a, int fb, const char *b) { REAL(renameat); PATH_CALL(renameat, fb, b); return real_renameat(fa, a, fb, b); }
int renameat2(int fa, const char *a, int fb, const char *b, unsigned int flags) { REAL(renameat2); PATH_CALL(renameat2, fb, b); return real_renameat2(fa, a, fb, b, flags); }
int link(const char *a, const char *b) { REAL(link); PATH_CALL(link, AT_FDCWD, b); return real_link(a, b); }
int linkat(int fa, const char *a, int fb, const char *b, int flags) { REAL(linkat); PATH_CALL(linkat, fb, b); return real_linkat(fa, a, fb, b, flags); }
int unlink(const char *p) { REAL(unlink); PATH_CALL(unlink, AT_FDCWD, p); return real_unlink(p); }
int unlinkat(int fd, const char *p, int flags) { REAL(unlinkat); PATH_CALL(unlinkat, fd, p); return real_unlinkat(fd, p, flags); }
int mkdir(const char *p, mode_t mode) { REAL(mkdir); PATH_CALL(mkdir, AT_FDCWD, p); return real_mkdir(p, mode); }
int mkdirat(int fd, const char *p, mode_t mode) { REAL(mkdirat); PATH_CALL(mkdirat, fd, p); return real_mkdirat(fd, p, mode); }
int rmdir(const char *p) { REAL(rmdir); PATH_CALL(rmdir, AT_FDCWD, p); return real_rmdir(p); }
