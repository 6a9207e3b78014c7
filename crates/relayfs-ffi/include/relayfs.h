/*
 * relayfs.h - the Linux relay interface in user space, for C and C++.
 *
 * A producer opens a channel (relay_open): one buffer per possible CPU, each
 * a ring of sub-buffers in a shared-memory file, by default
 * /dev/shm/relayfs/<channel>/cpuN ($RELAYFS_DIR overrides the root). Any
 * number of threads write records into it (relay_write, relay_reserve +
 * relay_commit); readers in other processes open the files
 * (relay_file_open) and read, sendfile and poll them. The API follows the
 * kernel's relay client API (Documentation/filesystems/relay.rst); where
 * user space differs, the comments say so.
 *
 * Link with -lrelayfs (pkg-config --cflags --libs relayfs).
 *
 * Errors: a function that returns int, long or ssize_t returns a negative
 * errno value on error (-EINVAL, -ENOBUFS, ...); one that returns a pointer
 * returns NULL and sets errno. relay_last_error() gives a message for the
 * last error in the calling thread (not for the silent fast-path refusals
 * of relay_write, which are counted in relay_stats instead).
 *
 * Handles: struct rchan and struct relay_file are opaque. Every function is
 * safe to call from any thread, concurrently, except relay_reset and
 * relay_close, which must not race other calls on the same channel. NULL,
 * or a pointer to something that is not a handle (at least 16 readable
 * bytes), gets -EINVAL (or NULL with errno EINVAL): each handle carries a
 * magic word checked before use. A closed handle gets -EINVAL too, for
 * good: closing frees the channel or file but leaves the handle's small
 * shell (16 bytes for a channel, a few more for a reader) allocated, so it never
 * points at freed memory. What can't be checked: a pointer into memory
 * that is not readable, or one to a copy of a handle's bytes.
 *
 * No Rust panic crosses the boundary: an internal failure (a bug) is
 * caught and returned as -EIO (or NULL with errno EIO).
 */
#ifndef RELAYFS_H
#define RELAYFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The major version of the C ABI (the soname is librelayfs.so.0). */
#define RELAYFS_ABI_VERSION 0

/* A channel (the kernel's struct rchan). Opaque. */
struct rchan;

/* An open relay file: the reader of one buffer. Opaque. */
struct relay_file;

/*
 * A buffer, as the callbacks see it (the kernel's struct rchan_buf). The
 * pointer a callback gets is valid during that call only.
 */
struct rchan_buf {
	uint64_t magic;       /* private: identifies a buffer description */
	void *private_data;   /* relay_open's private_data */
	const char *filename; /* path of the buffer's relay file */
	size_t cpu;           /* its CPU (0 for a global buffer) */
	int is_global;        /* it is the channel's one global buffer */
	int full;             /* as relay_buf_full(); set in subbuf_start and
	                         subbuf_header only */
};

/* The sub-buffer switch subbuf_start and subbuf_header are about. */
struct relay_switch_info {
	uint64_t ordinal;      /* sub-buffers opened before this one */
	uint64_t slot;         /* its index in the buffer */
	uint64_t consumed;     /* sub-buffers the reader consumed so far */
	uint64_t n_subbufs;    /* sub-buffers in the buffer */
	uint64_t prev_padding; /* padding that ended the previous sub-buffer */
	int full;              /* opening it overwrites unconsumed data */
	int overwrite;         /* the channel is in overwrite mode */
};

/*
 * The client's callbacks and channel options (the kernel's struct
 * rchan_callbacks). relay_open copies the struct. Every member may be NULL
 * (or 0): the default then applies, as in the kernel. Callbacks run in the
 * producer's threads: subbuf_start and subbuf_header in a writing thread at
 * a sub-buffer switch (any thread that writes), the others in relay_open,
 * at switches and flushes, and in relay_close. They must not call back into
 * the channel, and must not throw (a C++ exception leaving a callback
 * aborts the process).
 */
struct rchan_callbacks {
	/*
	 * May a new sub-buffer be opened? Return non-zero to open it, 0 to
	 * refuse: the record that asked is dropped and counted (dropped_full).
	 * Default: refuse when the buffer is full (relay_buf_full), unless in
	 * overwrite mode.
	 *
	 * Differs from the kernel: writers race for a switch here, so it
	 * decides before the switch is won, may be called more than once for
	 * one switch and must have no side effects; there is no subbuf or
	 * prev_subbuf pointer. Fill in a sub-buffer header in subbuf_header.
	 * In no-overwrite mode a full buffer is refused whatever it returns.
	 */
	int (*subbuf_start)(struct rchan_buf *buf,
			    const struct relay_switch_info *info);

	/*
	 * Fills in the subbuf_start_reserve bytes at the start of a sub-buffer
	 * just opened (where the kernel's subbuf_start writes its header, e.g.
	 * info->prev_padding). Called exactly once per sub-buffer opened.
	 */
	void (*subbuf_header)(struct rchan_buf *buf,
			      const struct relay_switch_info *info,
			      void *header, size_t len);

	/*
	 * A reader mapped or unmapped the buffer; mapped is the number of
	 * live mappings. Noticed at the producer's next switch or flush.
	 */
	void (*buf_mapped)(struct rchan_buf *buf, uint64_t mapped);
	void (*buf_unmapped)(struct rchan_buf *buf, uint64_t mapped);

	/*
	 * A buffer file `filename` is about to be created in the directory
	 * `parent` (the library creates it, unnamed until its header is
	 * written, so that a reader never sees half a buffer). The callback
	 * may change *mode (0600 by default; world-writable and execute bits
	 * are cleared) and set *is_global to ask for one buffer shared by all
	 * CPUs (asked for the first buffer only). Return 0 to go on, or a
	 * negative errno value to make relay_open fail with it.
	 */
	int (*create_buf_file)(const char *filename, const char *parent,
			       unsigned int *mode, int *is_global,
			       void *private_data);

	/*
	 * The buffer file `filename` in `parent` is about to be removed at
	 * relay_close (the library has checked it still is its buffer).
	 * Return 0 to have it removed, a positive value to keep it, or a
	 * negative errno value to report an error from relay_close (the
	 * file is kept).
	 */
	int (*remove_buf_file)(const char *filename, const char *parent,
			       void *private_data);

	/*
	 * Options that the kernel sets elsewhere: bytes reserved at the start
	 * of every sub-buffer for subbuf_header (the kernel's
	 * subbuf_start_reserve(), fixed here at relay_open), and overwrite
	 * ("flight recorder") mode, which the kernel gets from a subbuf_start
	 * that always returns 1.
	 */
	size_t subbuf_start_reserve;
	int overwrite;
};

/* relay_stats, relay_close_stats, relay_file_stats: a buffer's counters.
 * Every record offered ends up consumed by a reader (records_consumed) or
 * counted in lost, once attached readers have drained. */
struct relay_stats {
	uint64_t records_written;   /* accepted: completed + pending */
	uint64_t records_completed; /* in completed sub-buffers */
	uint64_t records_pending;   /* committed to the open sub-buffer */
	uint64_t bytes_written;     /* record bytes in completed sub-buffers */
	uint64_t subbufs_produced;
	uint64_t subbufs_completed;
	uint64_t subbufs_consumed;
	uint64_t records_consumed;
	uint64_t bytes_consumed;
	uint64_t dropped_full;      /* buffer full, or subbuf_start refused */
	uint64_t dropped_toobig;    /* larger than a sub-buffer */
	uint64_t dropped_corrupt;   /* buffer state corrupt */
	uint64_t dropped_closed;    /* written after relay_close began */
	uint64_t overwritten_records;
	uint64_t overwritten_subbufs;
	uint64_t discarded_records; /* torn copies the reader discarded */
	uint64_t discarded_subbufs;
	uint64_t padding_bytes;
	uint64_t unread_at_close;   /* no reader could read them any more */
	uint64_t lost;              /* every record lost in the ways above */
	uint64_t corrupt;           /* non-zero: a buffer was found corrupt */
};

/* ------------------------------------------------------------------ */
/* Producer side                                                        */

/*
 * Creates a channel: buffer files <base_filename>0, <base_filename>1, ...
 * (one per possible CPU, or one if create_buf_file sets *is_global) in the
 * directory `parent`, which must exist (the kernel's parent dentry; it
 * must not be a symbolic link, must belong to the caller or root, and if
 * others may write to it, be sticky; it is never removed). With parent
 * NULL, the channel directory is <relay root>/<base_filename>, created if
 * missing and removed at close if empty: base_filename "cpu" gives
 * /dev/shm/relayfs/cpu/cpu0, ...
 *
 * subbuf_size: a power of two from 64 bytes to 1 GiB; n_subbufs: 1 to 2^20.
 * cb: NULL for the defaults. private_data is handed to the callbacks.
 *
 * Returns the channel, or NULL with errno: EINVAL (bad argument: sizes,
 * base_filename NULL, with '/' or not UTF-8), ENAMETOOLONG, EBUSY (a live
 * producer has the channel), EEXIST (a file that is not ours under a
 * buffer's name), ELOOP (a directory is a symbolic link), EPERM (a
 * directory of another user, or writable by others and not sticky),
 * ENOSPC (the buffers don't fit: space is allocated here, never later),
 * ENOENT, EACCES..., or what create_buf_file returned. relay_last_error()
 * says which file and why.
 */
struct rchan *relay_open(const char *base_filename, const char *parent,
			 size_t subbuf_size, size_t n_subbufs,
			 const struct rchan_callbacks *cb, void *private_data);

/*
 * Writes one record of `length` bytes into the buffer of the CPU the
 * thread runs on. Never blocks or waits for anything: two atomic
 * operations and the copy, no lock, no system call (a sub-buffer switch
 * runs subbuf_start, and wakes a sleeping reader with a write to its
 * FIFO). A record never spans two sub-buffers.
 *
 * Returns 0, or (the record is dropped and counted in relay_stats):
 * -ENOBUFS  buffer full (no-overwrite mode) or subbuf_start refused
 * -EMSGSIZE larger than a sub-buffer less its subbuf_start_reserve
 * -EIO      the buffer's shared state was found corrupt
 * -EINVAL   chan is not a channel, data is NULL with length > 0, or
 *           length > SSIZE_MAX (not counted)
 * length 0 writes nothing and returns 0. The kernel's relay_write returns
 * void; callers that ignore the result port unchanged.
 */
int relay_write(struct rchan *chan, const void *data, size_t length);

/* The same as relay_write: the kernel's variant that leaves interrupts
 * alone has no user-space counterpart. */
int __relay_write(struct rchan *chan, const void *data, size_t length);

/* As relay_write, into the buffer of `cpu` (-EINVAL if there is no such
 * buffer), e.g. for a writer pinned to a CPU. */
int relay_write_cpu(struct rchan *chan, size_t cpu, const void *data,
		    size_t length);

/*
 * Reserves `length` bytes for one record in the current CPU's buffer and
 * returns where to write it, to be filled in place and then committed with
 * relay_commit by the same thread. Readers see the record only once
 * committed (and its sub-buffer complete). The bytes start out as whatever
 * the buffer held: write all of them.
 *
 * Why a commit: in the kernel, relay_reserve runs with preemption (or
 * interrupts) disabled, so nothing else touches that CPU's buffer until the
 * caller is done, and the sub-buffer switch can finish the record's
 * accounting. In user space the writing thread can be preempted or migrated
 * between reserving and filling, other threads write the same buffer
 * meanwhile, and a reader in another process may be about to read that
 * sub-buffer: the commit is what tells them the record is whole.
 *
 * Every reservation must be committed, by the thread that made it, before
 * relay_close: one left uncommitted keeps its sub-buffer from completing
 * (relay_close gives up waiting for it after 2 s; readers see it as
 * abandoned). A reservation still pending when its thread exits is never
 * committed.
 *
 * A thread may hold up to RELAY_MAX_PENDING reservations at once (of any
 * channels). relay_reserve and relay_commit are not async-signal-safe.
 *
 * Returns NULL with errno: ENOBUFS, EMSGSIZE, EIO as relay_write
 * (counted as dropped), EINVAL (not a channel, or length 0), EBUSY (this
 * thread holds RELAY_MAX_PENDING reservations already, or is inside
 * relay_commit: a signal handler); the last two reserve nothing, so
 * nothing is counted.
 */
#define RELAY_MAX_PENDING 8
void *relay_reserve(struct rchan *chan, size_t length);

/*
 * Commits a record reserved by relay_reserve in this thread. Returns 0,
 * -EINVAL if `reserved` is not a pending reservation of `chan` made by this
 * thread (also if it was committed already), or -EBUSY if called while
 * this thread is inside relay_commit (from a signal handler).
 */
int relay_commit(struct rchan *chan, void *reserved);

/*
 * Closes the current sub-buffer of every buffer, so that readers can read
 * what was written so far. Returns 0 or -EINVAL.
 */
int relay_flush(struct rchan *chan);

/*
 * Resets every buffer to its initial state (the data is erased, mappings
 * stay valid, readers start over). As the kernel says: the channel must not
 * be in use meanwhile. No other call on `chan` (from any thread) may run
 * during relay_reset, and no thread may hold a reservation of it; that is
 * checked for the calling thread's reservations only, and breaking it is
 * undefined. In a process forked from the one that opened the channel it
 * resets nothing (the buffers are the opener's) and returns 0.
 * Returns 0, -EINVAL, or -EBUSY if this thread has a reservation of the
 * channel not yet committed.
 */
int relay_reset(struct rchan *chan);

/*
 * Tells the channel that the reader of `cpu`'s buffer consumed
 * `subbufs_consumed` sub-buffers, for readers that read through a mapping
 * and report back through the producer. Returns how many were complete and
 * so counted consumed, -EINVAL (no such buffer) or -EBADMSG (the buffer's
 * shared state is corrupt). The kernel's returns void.
 */
long relay_subbufs_consumed(struct rchan *chan, unsigned int cpu,
			    size_t subbufs_consumed);

/*
 * In subbuf_start or subbuf_header: whether the buffer is full (the
 * sub-buffer to open still holds data the reader has not consumed).
 * Returns 1 or 0, or -EINVAL if `buf` is not a callback's buffer.
 */
int relay_buf_full(const struct rchan_buf *buf);

/* Counters of `cpu`'s buffer, or of all buffers summed with cpu -1.
 * Returns 0 or -EINVAL (no such buffer, out NULL). */
int relay_stats(struct rchan *chan, long cpu, struct relay_stats *out);

/* Number of buffers (possible CPUs, or 1 for a global buffer), or -EINVAL. */
long relay_n_buffers(struct rchan *chan);

/* Path of `cpu`'s relay file, valid until relay_close; NULL with errno
 * EINVAL if there is no such buffer. */
const char *relay_buffer_path(struct rchan *chan, size_t cpu);

/*
 * Waits until every buffer has a reader attached, at most timeout_ms
 * milliseconds (looking every few ms). Returns 1 if they all have, 0 if
 * the time ran out, -EINVAL. In no-overwrite mode a producer that must not
 * lose its first records waits for its recorder this way.
 */
int relay_wait_for_readers(struct rchan *chan, long timeout_ms);

/*
 * Closes the channel and frees the handle: refuses writes from now on,
 * waits (up to 2 s) for writes in flight, flushes, marks the buffers
 * closed and wakes readers, and removes the files (through
 * remove_buf_file) and a channel directory relay_open made, once empty.
 * Readers attached at that moment drain what is left and then see the end;
 * what nobody can read any more is counted in unread_at_close.
 *
 * No other call on `chan` may be in progress when relay_close is called
 * (stop and join the writing threads first, as a kernel client stops its
 * writers before relay_close), and every reservation must be committed.
 * Calls made after it returns get -EINVAL.
 *
 * Returns 0, -EINVAL (not a channel, or closed already), or the first error
 * removing a file (negative errno; the channel is closed anyway).
 */
int relay_close(struct rchan *chan);

/* As relay_close, and stores the final counters of all buffers in *out
 * (unless NULL): records_consumed + lost then covers every record offered,
 * once the attached readers have drained. */
int relay_close_stats(struct rchan *chan, struct relay_stats *out);

/* ------------------------------------------------------------------ */
/* Reader side (the kernel's relay file operations)                      */

/*
 * Opens a buffer file for reading (one reader per buffer; the reader's
 * position lives in the file, so a new reader resumes where the last one
 * stopped). The file is opened without following symbolic links and its
 * header validated. Returns NULL with errno: ELOOP (a symbolic link),
 * EINVAL (not a regular file, path NULL), EBUSY (another reader has it),
 * EBADMSG (not a valid relay buffer), ENOENT, EACCES...
 */
struct relay_file *relay_file_open(const char *path);

/*
 * Copies up to `count` readable bytes of committed data (padding removed)
 * into buf and consumes them: never a byte twice, never a byte of a record
 * not yet committed. In no-overwrite mode that includes the sub-buffer
 * being written, up to where every reservation is committed (as the
 * kernel's read); in overwrite mode, complete sub-buffers only, each
 * validated whole. A record may be split across two calls if `count` is
 * smaller than what is readable. Returns the number of bytes, 0 if nothing
 * is readable now (see relay_file_poll and relay_file_eof), or -EINVAL,
 * -EBADMSG (corrupt buffer), -EIO.
 */
ssize_t relay_file_read(struct relay_file *f, void *buf, size_t count);

/*
 * Writes up to `count` readable bytes to the descriptor out_fd (from the
 * shared memory, no copy into the caller) and consumes what was written.
 * Returns the number of bytes, 0 if nothing is readable, or a negative
 * errno (-EBADF, the write's error, ...).
 */
ssize_t relay_file_sendfile(struct relay_file *f, int out_fd, size_t count);

#define RELAY_POLL_TIMEOUT 0       /* nothing readable within the timeout */
#define RELAY_POLL_READABLE 1      /* data can be read */
#define RELAY_POLL_CLOSED 2        /* relay_close was called; all read */
#define RELAY_POLL_PRODUCER_GONE 3 /* the producer died; all complete
                                      sub-buffers read */

/*
 * Waits until data is readable, the channel is closed and drained, or the
 * producer is gone, at most timeout_ms milliseconds (-1: no limit). Sleeps
 * on the buffer's wakeup FIFO, no busy loop. Returns one of the
 * RELAY_POLL_* values, or a negative errno.
 */
int relay_file_poll(struct relay_file *f, int timeout_ms);

/*
 * For your own event loop (poll, epoll): the wakeup descriptor. It becomes
 * readable when a sub-buffer completes after relay_file_prepare_wait, and
 * reports POLLHUP when the producer is gone. Call relay_file_prepare_wait
 * before each sleep; if it returns 1, data is readable already: don't
 * sleep. The descriptor belongs to the reader (don't close it); it stays
 * valid until relay_file_close, or until relay_file_poll finds the producer
 * gone. Returns the descriptor, -ENOENT if the producer is gone, -EINVAL.
 */
int relay_file_poll_fd(struct relay_file *f);
int relay_file_prepare_wait(struct relay_file *f);

/* 1 if everything is read and nothing more will come (closed or producer
 * gone), 0 otherwise, or a negative errno. */
int relay_file_eof(struct relay_file *f);

/* Number of buffers in the file's channel (its header says), so a reader
 * that found cpu0 knows which others to open; or -EINVAL. */
long relay_file_n_buffers(struct relay_file *f);

/* The buffer's counters as a reader sees them (dropped_closed is the
 * producer's own: 0 here). Returns 0 or -EINVAL. */
int relay_file_stats(struct relay_file *f, struct relay_stats *out);

/* Closes the reader. A call racing it in another thread either finishes
 * first or gets -EINVAL, as every later call does. Returns 0 or -EINVAL
 * (not a reader, or closed already). */
int relay_file_close(struct relay_file *f);

/* ------------------------------------------------------------------ */

/* The message of the last error in the calling thread, or NULL; valid
 * until the next failing call in that thread. */
const char *relay_last_error(void);

/* The library version, "MAJOR.MINOR.PATCH". */
const char *relay_version(void);

#ifdef __cplusplus
}
#endif

#endif /* RELAYFS_H */
