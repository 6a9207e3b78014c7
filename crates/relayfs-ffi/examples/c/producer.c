/*
 * producer.c - the example client of the kernel's relay documentation
 * (Documentation/filesystems/relay.rst), ported to user space.
 *
 * The kernel module opens a channel with relay_open("cpu", dir, ...) and
 * writes with relay_write() from wherever it runs; here several threads do,
 * half of them with relay_write() and half with relay_reserve() +
 * relay_commit(). Each record is a self-checking "demo" record (the format
 * `relayfs verify` checks):
 *
 *   u32 magic 0x31594C52 ("RLY1"), u32 length, u32 writer, u32 cpu,
 *   u64 seq, then payload byte i = (seq*31 + writer*17 + i) mod 256
 *   (little-endian; i counts from the start of the record)
 *
 * Usage: producer DIR THREADS COUNT [RECORD_LEN [SUBBUF_SIZE [N_SUBBUFS]]]
 *
 * DIR must exist: the buffer files DIR/cpu0, DIR/cpu1, ... are made there
 * (the kernel's parent dentry). The producer waits up to 30 s for a reader
 * on every buffer (reader.c), writes, closes, and prints its counters as
 * one JSON object (what `relayfs verify --counters` reads).
 *
 * Build: cc -o producer producer.c $(pkg-config --cflags --libs relayfs)
 *        -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <relayfs.h>

#define DEMO_MAGIC 0x31594C52u
#define DEMO_HEADER 24

static size_t subbuf_size = 262144;
static size_t n_subbufs = 4;

/*
 * subbuf_start() relay callback: as the kernel example's, refuse a new
 * sub-buffer while the buffer is full (no-overwrite). The kernel's version
 * also stores prev_padding in the sub-buffer header and counts the refusals;
 * here the header goes in subbuf_header() and the library counts the
 * records dropped (relay_stats: dropped_full).
 */
static int subbuf_start_handler(struct rchan_buf *buf,
				const struct relay_switch_info *info)
{
	(void)info;
	if (relay_buf_full(buf))
		return 0;
	return 1;
}

/*
 * create_buf_file() relay callback: the kernel example creates the file in
 * debugfs here. The library creates it (unnamed until it is whole); the
 * callback may choose its mode.
 */
static int create_buf_file_handler(const char *filename, const char *parent,
				   unsigned int *mode, int *is_global,
				   void *private_data)
{
	(void)filename;
	(void)parent;
	(void)is_global;
	(void)private_data;
	*mode = 0600;
	return 0;
}

/* remove_buf_file() relay callback: let the library remove it. */
static int remove_buf_file_handler(const char *filename, const char *parent,
				   void *private_data)
{
	(void)filename;
	(void)parent;
	(void)private_data;
	return 0;
}

/* relay interface callbacks */
static struct rchan_callbacks relay_callbacks = {
	.subbuf_start = subbuf_start_handler,
	.create_buf_file = create_buf_file_handler,
	.remove_buf_file = remove_buf_file_handler,
};

struct writer {
	pthread_t thread;
	struct rchan *chan;
	uint32_t index;
	uint64_t count;
	size_t len;
	uint64_t refused; /* writes the channel refused (it counts them too) */
	int error;        /* an unexpected error, as a negative errno */
};

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void encode(unsigned char *rec, size_t len, uint32_t writer,
		   uint64_t seq)
{
	int cpu = sched_getcpu();
	unsigned char base = (unsigned char)(seq * 31 + (uint64_t)writer * 17);

	put32(rec, DEMO_MAGIC);
	put32(rec + 4, (uint32_t)len);
	put32(rec + 8, writer);
	put32(rec + 12, cpu < 0 ? 0 : (uint32_t)cpu);
	put64(rec + 16, seq);
	for (size_t i = DEMO_HEADER; i < len; i++)
		rec[i] = (unsigned char)(base + i);
}

static void *write_records(void *arg)
{
	struct writer *w = arg;
	unsigned char rec[65536];
	int use_reserve = w->index % 2 == 1;

	for (uint64_t seq = 0; seq < w->count; seq++) {
		int rc;

		if (use_reserve) {
			void *slot = relay_reserve(w->chan, w->len);
			if (!slot) {
				rc = -errno;
			} else {
				encode(slot, w->len, w->index, seq);
				rc = relay_commit(w->chan, slot);
			}
		} else {
			encode(rec, w->len, w->index, seq);
			rc = relay_write(w->chan, rec, w->len);
		}
		if (rc == -ENOBUFS) {
			w->refused++; /* buffer full: dropped and counted */
		} else if (rc < 0) {
			w->error = rc;
			break;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 4 || argc > 7) {
		fprintf(stderr, "usage: %s DIR THREADS COUNT [RECORD_LEN "
				"[SUBBUF_SIZE [N_SUBBUFS]]]\n", argv[0]);
		return 2;
	}
	const char *dir = argv[1];
	unsigned threads = (unsigned)strtoul(argv[2], NULL, 10);
	uint64_t count = strtoull(argv[3], NULL, 10);
	size_t len = argc > 4 ? strtoul(argv[4], NULL, 10) : 64;
	if (argc > 5)
		subbuf_size = strtoul(argv[5], NULL, 10);
	if (argc > 6)
		n_subbufs = strtoul(argv[6], NULL, 10);
	if (threads == 0 || threads > 1024 || len < DEMO_HEADER ||
	    len > 65536) {
		fprintf(stderr, "%s: 1-1024 threads, records of 24-65536 "
				"bytes\n", argv[0]);
		return 2;
	}

	struct rchan *chan = relay_open("cpu", dir, subbuf_size, n_subbufs,
					&relay_callbacks, NULL);
	if (!chan) {
		fprintf(stderr, "%s: relay_open: %s (%s)\n", argv[0],
			strerror(errno), relay_last_error());
		return 1;
	}
	if (relay_wait_for_readers(chan, 30000) != 1)
		fprintf(stderr, "%s: not every buffer has a reader: writing "
				"anyway (what is not read is counted)\n",
			argv[0]);

	struct writer *w = calloc(threads, sizeof(*w));
	if (!w) {
		relay_close(chan);
		return 1;
	}
	for (unsigned i = 0; i < threads; i++) {
		w[i].chan = chan;
		w[i].index = i;
		w[i].count = count;
		w[i].len = len;
		if (pthread_create(&w[i].thread, NULL, write_records, &w[i])) {
			fprintf(stderr, "%s: pthread_create failed\n", argv[0]);
			return 1;
		}
	}
	int status = 0;
	uint64_t refused = 0;
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(w[i].thread, NULL);
		refused += w[i].refused;
		if (w[i].error) {
			fprintf(stderr, "%s: writer %u: %s\n", argv[0], i,
				strerror(-w[i].error));
			status = 1;
		}
	}

	struct relay_stats st;
	int rc = relay_close_stats(chan, &st);
	if (rc < 0) {
		fprintf(stderr, "%s: relay_close: %s\n", argv[0],
			relay_last_error());
		status = 1;
	}
	if (refused != st.dropped_full) {
		fprintf(stderr, "%s: %llu writes refused, but the channel "
				"counted %llu\n", argv[0],
			(unsigned long long)refused,
			(unsigned long long)st.dropped_full);
		status = 1;
	}
	printf("{\"threads\": %u, \"count\": %llu, \"written\": %llu, "
	       "\"dropped\": %llu, \"dropped_full\": %llu, "
	       "\"dropped_toobig\": %llu, \"dropped_corrupt\": %llu, "
	       "\"overwritten\": %llu, \"unread_at_close\": %llu, "
	       "\"consumed\": %llu}\n",
	       threads, (unsigned long long)count,
	       (unsigned long long)st.records_written,
	       (unsigned long long)st.lost,
	       (unsigned long long)st.dropped_full,
	       (unsigned long long)st.dropped_toobig,
	       (unsigned long long)st.dropped_corrupt,
	       (unsigned long long)st.overwritten_records,
	       (unsigned long long)st.unread_at_close,
	       (unsigned long long)st.records_consumed);
	free(w);
	return status;
}
