/*
 * km-bench: the one interface every keyed-locking strategy implements.
 *
 * A strategy is a vtable and an opaque context. The workload code (harness.c)
 * only ever calls these functions, so two strategies differ only by what is
 * behind them. Keys are byte strings (ptr, len) compared by content, exactly
 * as keymutex takes them; every strategy copies the bytes it keeps, and none
 * may keep the caller's pointer past the call.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_BENCH_STRATEGY_H
#define KM_BENCH_STRATEGY_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <keymutex.h>

/* What lock() fills and unlock() reads: one held key. */
struct bench_hold {
	union {
		uintptr_t u[4];
		void *p[4];
		struct km_guard km;	/* the keymutex strategy's guard, in place */
	};
};

/* Creation parameters (a strategy ignores what it has no use for). */
struct strat_params {
	uint64_t expected_keys;	/* key-space size of the run (a sizing hint) */
	unsigned threads;	/* working threads of the run */
	unsigned stripes;	/* striped: stripe count (power of two) */
	unsigned pool;		/* pooled: free per-key locks kept for reuse */
	uint64_t km_expected_keys; /* keymutex: km_options.expected_keys (0: default) */
	uint64_t km_pool;	/* keymutex: km_options.pool_size (0: default) */
	int rw_prefer_writer;	/* rwglobal, rwstriped, rwlock: glibc's writer-preferring
				   kind instead of the default (readers preferred) */
};

/* strategy.flags */
#define STRAT_NEGATIVE_CONTROL 0x1u	/* expected to break exclusion (naive) */
#define STRAT_SINGLE_HOLD      0x2u	/* a thread cannot hold two keys at once (it may self-deadlock) */
#define STRAT_GROWS            0x4u	/* keeps every key it has seen (memory grows) */
#define STRAT_RW_ONLY          0x8u	/* a reader-writer baseline: in the default plan
					   only for scenarios with shared acquires */

struct strategy {
	const char *name;
	const char *what;	/* one line for --list */
	unsigned flags;
	/* A new context, or NULL (err filled in). */
	void *(*create)(const struct strat_params *p, char *err, size_t errlen);
	/* 0, or an errno value (e.g. EBUSY: keys still held); frees everything. */
	int (*destroy)(void *self);
	/* Acquire the key, waiting as long as needed: 0 or an errno value. */
	int (*lock)(void *self, const void *key, size_t len, struct bench_hold *h);
	/* Release what h holds (returned by a successful lock() or lock_shared()). */
	void (*unlock)(void *self, struct bench_hold *h);
	/* Optional: acquire the key in shared (read) mode: holders in this mode
	 * may overlap one another, never a lock() holder. NULL: the strategy has
	 * no shared mode, and the harness takes reads with lock(). */
	int (*lock_shared)(void *self, const void *key, size_t len, struct bench_hold *h);
	/* Entries in the strategy's table now (held, awaited, or kept);
	 * -1 when it has no table. Called only while no lock()/unlock() runs. */
	long long (*keys)(void *self);
	/* Optional: extra facts for the report's note column. */
	void (*describe)(void *self, char *buf, size_t len);
};

extern const struct strategy strat_naive;
extern const struct strategy strat_global;
extern const struct strategy strat_pooled;
extern const struct strategy strat_replace;
extern const struct strategy strat_striped;
extern const struct strategy strat_leaky;
extern const struct strategy strat_keymutex;
extern const struct strategy strat_mutex;
extern const struct strategy strat_rwglobal;
extern const struct strategy strat_rwstriped;
extern const struct strategy strat_rwlock;

/* Every strategy, in report order; NULL-terminated. */
extern const struct strategy *const bench_strategies[];

const struct strategy *bench_strategy_find(const char *name);

/* pthread_rwlock_init of the kind p asks for (strategies.c). */
void bench_rwlock_init(pthread_rwlock_t *rw, const struct strat_params *p);

/*
 * The one hash every home-made table and the striping use (keymutex uses its
 * own keyed hash): 64-bit multiply-xor over 8-byte words, murmur3's final mix.
 */
static inline uint64_t bench_hash(const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;

	while (len >= 8) {
		uint64_t w;

		__builtin_memcpy(&w, p, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
		p += 8;
		len -= 8;
	}
	if (len) {
		uint64_t w = 0;

		__builtin_memcpy(&w, p, len);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

#endif /* KM_BENCH_STRATEGY_H */
