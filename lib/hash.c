/*
 * The per-table hash secrets. The hash itself, and why it is this one, is
 * inline in hash.h.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* 256 random bits from the kernel; never blocks once the pool is seeded. */
void km_random_seed(uint64_t seed[4])
{
	unsigned char buf[32];
	size_t got = 0;

	while (got < sizeof buf) {
		ssize_t r = getrandom(buf + got, sizeof buf - got, 0);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			/* No getrandom (ancient kernel, seccomp): fall back to a
			 * clock-and-address mix; still a per-table secret. */
			struct timespec ts;
			uint64_t x;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^
			    (uint64_t)(uintptr_t)buf ^ ((uint64_t)getpid() << 16);
			for (size_t i = 0; i < sizeof buf; i++) {
				x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
				buf[i] = (unsigned char)((x * UINT64_C(0x2545F4914F6CDD1D)) >> 56);
			}
			break;
		}
		got += (size_t)r;
	}
	memcpy(seed, buf, sizeof buf);
	for (int i = 0; i < 4; i++)
		seed[i] |= 1;	/* odd multipliers never zero a product */
}
