/* LTTng-UST's tracepoint() with a 64-byte payload, beside a copy of the
 * same bytes into a local ring (the floor), one thread pinned to its CPU:
 * prints ns per event for each round. Built and run by run.sh. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tp.h"

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 2000000;
	int rounds = argc > 2 ? atoi(argv[2]) : 5;
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(sched_getcpu(), &s);
	sched_setaffinity(0, sizeof s, &s);
	char buf[64];
	memset(buf, 0x5a, sizeof buf);
	static char ring[4 << 20];
	for (int r = 0; r < rounds; r++) {
		double t0 = now();
		size_t at = 0;
		for (long i = 0; i < n; i++) {
			if (at + 64 > sizeof ring)
				at = 0;
			memcpy(ring + at, buf, 64);
			__asm__ volatile("" ::: "memory");
			at += 64;
		}
		double t1 = now();
		for (long i = 0; i < n; i++) {
			tracepoint(relayfs_cmp, rec, buf);
			__asm__ volatile("" ::: "memory");
		}
		double t2 = now();
		printf("round %d: floor %.2f ns  tracepoint %.2f ns\n", r,
		       (t1 - t0) / n, (t2 - t1) / n);
	}
	return 0;
}
