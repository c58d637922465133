/*
 * Keyed hashing: a multiply-mix hash (the construction of wyhash/rapidhash)
 * over secrets drawn at random for each table (hash.c draws them).
 *
 * Why not SipHash: it cost ~100 instructions for an 8-byte key, a quarter of
 * the whole lock+unlock budget. The multiply-mix folds each 16 bytes with
 * one 64x64->128 multiply of the input xored with a secret, so keys chosen
 * without knowing the secrets collide no more often than random keys (the
 * same defence Go's runtime map hash relies on). It is not a cryptographic
 * PRF: an attacker who can observe timing across very many probes is out of
 * scope, as for every seeded table hash.
 *
 * Inline: every acquire hashes its key once, and the call cost ~15
 * instructions of the recurring-key path.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_HASH_H
#define KM_HASH_H

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

static inline uint32_t km_hash(const struct km *km, const void *key, size_t len)
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

#endif /* KM_HASH_H */
