/*
 * reader.c - the user-space side of the kernel relay documentation's
 * example: drain every per-CPU relay file cpu0 ... cpuN of a channel into
 * cpu0.out ... cpuN.out, sleeping in poll(2) until there is data.
 *
 * Usage: reader DIR OUTDIR [--sendfile]
 *
 * It waits (up to 30 s) for DIR/cpu0, which a producer publishes last,
 * so that every buffer the header counts is there; opens them all; then
 * loops: drain what is readable (relay_file_read + write, or
 * relay_file_sendfile straight to the output), arm the wakeup descriptors
 * (relay_file_prepare_wait) and poll(2) them. A buffer is done when
 * relay_file_eof says so (the producer closed the channel, or died, and
 * everything is read). Prints what it moved as one JSON object. Exit
 * status 0, 1 on an error, 3 if the producer died without closing.
 *
 * Build: cc -o reader reader.c $(pkg-config --cflags --libs relayfs)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <relayfs.h>

#define MAX_BUFFERS 65536

struct buffer {
	struct relay_file *f;
	int out;
	unsigned long long bytes;
};

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Moves everything readable now from b to its output. */
static int drain(struct buffer *b, int use_sendfile, char *chunk,
		 size_t size)
{
	for (;;) {
		ssize_t n;
		if (use_sendfile) {
			n = relay_file_sendfile(b->f, b->out, size);
		} else {
			n = relay_file_read(b->f, chunk, size);
			if (n > 0) {
				int rc = write_all(b->out, chunk, (size_t)n);
				if (rc < 0)
					return rc;
			}
		}
		if (n < 0)
			return (int)n;
		if (n == 0)
			return 0;
		b->bytes += (unsigned long long)n;
	}
}

static struct relay_file *open_when_there(const char *path)
{
	for (int i = 0; i < 3000; i++) {
		struct relay_file *f = relay_file_open(path);
		if (f || errno != ENOENT)
			return f;
		struct timespec t = { 0, 10 * 1000 * 1000 };
		nanosleep(&t, NULL);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4 ||
	    (argc == 4 && strcmp(argv[3], "--sendfile") != 0)) {
		fprintf(stderr, "usage: %s DIR OUTDIR [--sendfile]\n", argv[0]);
		return 2;
	}
	const char *dir = argv[1], *outdir = argv[2];
	int use_sendfile = argc == 4;
	char path[4096];

	snprintf(path, sizeof(path), "%s/cpu0", dir);
	struct relay_file *first = open_when_there(path);
	if (!first) {
		fprintf(stderr, "%s: %s: %s\n", argv[0], path,
			relay_last_error() ? relay_last_error()
					   : strerror(errno));
		return 1;
	}
	long n = relay_file_n_buffers(first);
	if (n < 1 || n > MAX_BUFFERS) {
		fprintf(stderr, "%s: bad buffer count %ld\n", argv[0], n);
		return 1;
	}
	struct buffer *bufs = calloc((size_t)n, sizeof(*bufs));
	struct pollfd *fds = calloc((size_t)n, sizeof(*fds));
	size_t size = 1 << 18;
	char *chunk = malloc(size);
	if (!bufs || !fds || !chunk)
		return 1;
	for (long i = 0; i < n; i++) {
		if (i == 0) {
			bufs[i].f = first;
		} else {
			snprintf(path, sizeof(path), "%s/cpu%ld", dir, i);
			bufs[i].f = relay_file_open(path);
			if (!bufs[i].f) {
				fprintf(stderr, "%s: %s: %s\n", argv[0], path,
					relay_last_error());
				return 1;
			}
		}
		snprintf(path, sizeof(path), "%s/cpu%ld.out", outdir, i);
		bufs[i].out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
				   0644);
		if (bufs[i].out < 0) {
			fprintf(stderr, "%s: %s: %s\n", argv[0], path,
				strerror(errno));
			return 1;
		}
	}

	int status = 0;
	long open_left = n;
	while (open_left > 0) {
		int ready = 0;
		nfds_t nfds = 0;

		for (long i = 0; i < n; i++) {
			struct buffer *b = &bufs[i];
			if (!b->f)
				continue;
			int rc = drain(b, use_sendfile, chunk, size);
			if (rc < 0) {
				fprintf(stderr, "%s: cpu%ld: %s\n", argv[0], i,
					strerror(-rc));
				return 1;
			}
			int eof = relay_file_eof(b->f);
			if (eof == 1) {
				/* Nothing more will come. A producer that died
				 * may leave a committed tail, readable once
				 * relay_file_poll has seen it gone. */
				int p;
				while ((p = relay_file_poll(b->f, 0)) ==
				       RELAY_POLL_READABLE)
					if (drain(b, use_sendfile, chunk, size) < 0)
						return 1;
				if (p == RELAY_POLL_PRODUCER_GONE)
					status = 3;
				relay_file_close(b->f);
				b->f = NULL;
				close(b->out);
				open_left--;
				continue;
			}
			/* Ask for a wakeup at the next complete sub-buffer;
			 * 1: something is readable already. */
			if (relay_file_prepare_wait(b->f) == 1) {
				ready = 1;
				continue;
			}
			int fd = relay_file_poll_fd(b->f);
			if (fd >= 0) {
				fds[nfds].fd = fd;
				fds[nfds].events = POLLIN;
				nfds++;
			}
		}
		if (open_left == 0 || ready)
			continue;
		/* The timeout is a safety net only (a producer that died
		 * holding its FIFO open is noticed by relay_file_eof). */
		if (poll(fds, nfds, 200) < 0 && errno != EINTR) {
			perror("poll");
			return 1;
		}
	}

	unsigned long long total = 0;
	for (long i = 0; i < n; i++)
		total += bufs[i].bytes;
	printf("{\"buffers\": %ld, \"bytes\": %llu}\n", n, total);
	free(chunk);
	free(fds);
	free(bufs);
	return status;
}
