/*
 * Keyed hashing: SipHash-1-3 with a per-table random 128-bit key.
 *
 * SipHash is a PRF: without the key an attacker cannot predict which keys
 * collide, so crafted keys cannot force long bucket chains (hash flooding).
 * The 1-3 variant (one compression, three finalization rounds) is what
 * hash-table implementations use for speed; a table's key never leaves it.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND(v0, v1, v2, v3)				\
	do {							\
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;		\
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;		\
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while (0)

static inline uint64_t load_le64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

uint64_t km_hash(const struct km *km, const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t k0 = km->seed[0], k1 = km->seed[1];
	uint64_t v0 = k0 ^ UINT64_C(0x736f6d6570736575);
	uint64_t v1 = k1 ^ UINT64_C(0x646f72616e646f6d);
	uint64_t v2 = k0 ^ UINT64_C(0x6c7967656e657261);
	uint64_t v3 = k1 ^ UINT64_C(0x7465646279746573);
	uint64_t b = (uint64_t)len << 56;
	size_t tail = len & 7;
	const unsigned char *end = p + (len - tail);

	for (; p != end; p += 8) {
		uint64_t m = load_le64(p);

		v3 ^= m;
		SIPROUND(v0, v1, v2, v3);
		v0 ^= m;
	}
	switch (tail) {
	case 7: b |= (uint64_t)p[6] << 48; /* fall through */
	case 6: b |= (uint64_t)p[5] << 40; /* fall through */
	case 5: b |= (uint64_t)p[4] << 32; /* fall through */
	case 4: b |= (uint64_t)p[3] << 24; /* fall through */
	case 3: b |= (uint64_t)p[2] << 16; /* fall through */
	case 2: b |= (uint64_t)p[1] << 8;  /* fall through */
	case 1: b |= (uint64_t)p[0];       /* fall through */
	default: break;
	}
	v3 ^= b;
	SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

/* 128 random bits from the kernel; never blocks once the pool is seeded. */
int km_random_seed(uint64_t seed[2])
{
	unsigned char buf[16];
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
	return 0;
}
