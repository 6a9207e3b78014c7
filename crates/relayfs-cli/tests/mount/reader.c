/* A relay reader that knows nothing of relayfs: it records every buffer
 * file of a mounted channel directory (`relayfs mount`) into
 * OUTDIR/<buffer>.out with open, poll, sendfile (read + write where the
 * kernel refuses sendfile from the file) and close, as a reader of the
 * kernel's relay files in debugfs would.
 *
 * usage: reader CHANNEL_DIR OUTDIR
 * prints {"sendfile_bytes":N,"read_bytes":M,"buffers":B,"mmap_errno":E},
 * E being what a shared mapping of the first buffer file failed with (0:
 * it did not fail). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <unistd.h>

#define MAX_BUFFERS 1024
#define CHUNK (1 << 20)

static char buf[CHUNK];

static int is_buffer(const char *name) {
    return strncmp(name, "cpu", 3) == 0 && name[3] != '\0' &&
           strspn(name + 3, "0123456789") == strlen(name + 3);
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CHANNEL_DIR OUTDIR\n", argv[0]);
        return 2;
    }
    static struct pollfd pf[MAX_BUFFERS];
    static int out[MAX_BUFFERS];
    char path[4096];
    int n = 0;
    DIR *d = opendir(argv[1]);
    if (!d) {
        perror(argv[1]);
        return 1;
    }
    struct dirent *e;
    while ((e = readdir(d)) && n < MAX_BUFFERS) {
        if (!is_buffer(e->d_name))
            continue;
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        /* O_DIRECT, as for any file opened with FUSE's direct I/O:
         * without it the kernel's sendfile and splice look in the page
         * cache and refuse (EINVAL) or find nothing. */
        pf[n].fd = open(path, O_RDONLY | O_DIRECT);
        if (pf[n].fd < 0) {
            perror(path);
            return 1;
        }
        pf[n].events = POLLIN;
        snprintf(path, sizeof path, "%s/%s.out", argv[2], e->d_name);
        out[n] = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out[n] < 0) {
            perror(path);
            return 1;
        }
        n++;
    }
    closedir(d);
    int mmap_errno = 0;
    if (n > 0) {
        void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, pf[0].fd, 0);
        if (m == MAP_FAILED)
            mmap_errno = errno;
        else
            munmap(m, 4096);
    }
    int live = n, use_sendfile = 1;
    long long sent = 0, copied = 0;
    while (live > 0) {
        if (poll(pf, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("poll");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            short ev = pf[i].revents;
            if (pf[i].fd < 0 || ev == 0)
                continue;
            if (ev & POLLNVAL) {
                fprintf(stderr, "poll: POLLNVAL\n");
                return 1;
            }
            for (;;) {
                ssize_t k = -1;
                if (use_sendfile) {
                    k = sendfile(out[i], pf[i].fd, NULL, CHUNK);
                    if (k < 0 && (errno == EINVAL || errno == ENOSYS)) {
                        use_sendfile = 0; /* read + write from now on */
                        continue;
                    }
                    if (k > 0)
                        sent += k;
                } else {
                    k = read(pf[i].fd, buf, CHUNK);
                    if (k > 0) {
                        if (write_all(out[i], buf, (size_t)k) < 0) {
                            perror("write");
                            return 1;
                        }
                        copied += k;
                    }
                }
                if (k < 0 && errno == EINTR)
                    continue;
                if (k < 0) {
                    perror("read");
                    return 1;
                }
                if (k == 0)
                    break;
            }
            if (ev & (POLLHUP | POLLERR)) {
                /* The channel ended and everything after that is read. */
                close(pf[i].fd);
                close(out[i]);
                pf[i].fd = -1;
                live--;
            }
        }
    }
    printf("{\"sendfile_bytes\":%lld,\"read_bytes\":%lld,\"buffers\":%d,\"mmap_errno\":%d}\n",
           sent, copied, n, mmap_errno);
    return 0;
}
