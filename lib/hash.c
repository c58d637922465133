/*
 * Keyed hashing: a multiply-mix hash (the construction of wyhash/rapidhash)
 * over secrets drawn at random for each table.
 *
 * Why not SipHash: it cost ~100 instructions for an 8-byte key, a quarter of
 * the whole lock+unlock budget. The multiply-mix folds each 16 bytes with
 * one 64x64->128 multiply of the input xored with a secret, so keys chosen
 * without knowing the secrets collide no more often than random keys (the
 * same defence Go's runtime map hash relies on). It is not a cryptographic
 * PRF: an attacker who can observe timing across very many probes is out of
 * scope, as for every seeded table hash.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t km_mum(uint64_t a, uint64_t b)
{
	__uint128_t r = (__uint128_t)a * b;

	return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t km_load64(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof v);
	return v;
}

static inline uint64_t km_load32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof v);
	return v;
}

uint32_t km_hash(const struct km *km, const void *key, size_t len)
{
	const unsigned char *p = key;
	const uint64_t *s = km->seed;
	uint64_t seed = s[0] ^ km_mum(len ^ s[1], s[2]);
	uint64_t a, b;

	if (len <= 16) {
		if (len >= 4) {
			/* Two overlapping reads cover 4..16 bytes. */
			a = (km_load32(p) << 32) | km_load32(p + ((len >> 3) << 2));
			b = (km_load32(p + len - 4) << 32) |
			    km_load32(p + len - 4 - ((len >> 3) << 2));
		} else if (len > 0) {
			a = ((uint64_t)p[0] << 16) | ((uint64_t)p[len >> 1] << 8) | p[len - 1];
			b = 0;
		} else {
			a = b = 0;
		}
	} else {
		size_t i = len;

		while (i > 16) {
			seed = km_mum(km_load64(p) ^ s[1], km_load64(p + 8) ^ seed);
			p += 16;
			i -= 16;
		}
		a = km_load64(p + i - 16);
		b = km_load64(p + i - 8);
	}
	uint64_t h = km_mum(a ^ s[1], b ^ seed);

	h = km_mum(h ^ s[3], (uint64_t)len ^ s[1]);
	return (uint32_t)(h ^ (h >> 32));
}

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
