/*
 * km_create and km_destroy: options, sizing, teardown.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

#define KM_DEFAULT_POOL 16384		/* ~1.5 MiB of entries at most */
#define KM_DEFAULT_KEYS 16384
#define KM_MIN_BUCKETS 16		/* per shard */

#ifdef KM_TSAN
char km_rcu_tsan_sync;
#endif

static size_t km_pow2_at_least(size_t n)
{
	size_t p = 1;

	while (p < n && p < ((size_t)1 << (sizeof(size_t) * 8 - 2)))
		p <<= 1;
	return p;
}

static unsigned km_log2(size_t p)
{
	unsigned l = 0;

	while (p > 1) {
		p >>= 1;
		l++;
	}
	return l;
}

static void km_free_shards(struct km_shard *shards, unsigned n)
{
	if (shards == NULL)
		return;
	for (unsigned i = 0; i < n; i++)
		free(shards[i].buckets);
	free(shards);
}

int km_create(struct km **out, const struct km_options *opt)
{
	struct km_options o;
	struct km *km;
	size_t keys, per_shard;
	unsigned nshards;

	if (out == NULL)
		return EINVAL;
	km_global_init();	/* fork hooks before any thread of ours exists */
	if (opt != NULL)
		o = *opt;
	else
		memset(&o, 0, sizeof o);
	if (o.flags & ~(KM_FIFO | KM_RECURSIVE | KM_ERRORCHECK))
		return EINVAL;
	if ((o.flags & KM_RECURSIVE) && (o.flags & KM_ERRORCHECK))
		return EINVAL;
	if (o.max_holders == 0)
		o.max_holders = 1;
	if (o.max_holders > KM_MAX_HOLDERS || o.max_waiters > KM_MAX_WAITERS)
		return EINVAL;
	if ((o.flags & KM_OWNER_FLAGS) && o.max_holders > 1)
		return EINVAL;		/* owners are tracked for exclusive holds only */
	if (o.shards != 0 && ((o.shards & (o.shards - 1)) != 0 || o.shards > KM_MAX_SHARDS))
		return EINVAL;
	if (o.pool_size == 0)
		o.pool_size = KM_DEFAULT_POOL;
	if (o.pool_prefill > o.pool_size)
		return EINVAL;

	nshards = o.shards;
	if (nshards == 0) {
		long cpus = sysconf(_SC_NPROCESSORS_ONLN);

		if (cpus < 1)
			cpus = 1;
		nshards = (unsigned)km_pow2_at_least((size_t)cpus * 4);
		if (nshards > 256)
			nshards = 256;
	}
	keys = o.expected_keys != 0 ? o.expected_keys : KM_DEFAULT_KEYS;
	per_shard = km_pow2_at_least(keys / nshards + 1);
	if (per_shard < KM_MIN_BUCKETS)
		per_shard = KM_MIN_BUCKETS;
	if (per_shard > ((size_t)1 << 26))
		per_shard = (size_t)1 << 26;

	km = km_fault_hit() ? NULL : aligned_alloc(KM_CACHELINE, sizeof *km);
	if (km == NULL)
		return ENOMEM;
	memset(km, 0, sizeof *km);
	km_random_seed(km->seed);
	km->nshards = nshards;
	km->shard_shift = 32 - km_log2(nshards);
	km->max_holders = o.max_holders;
	km->max_waiters = o.max_waiters;
	km->flags = o.flags;
	km->pool_size = o.pool_size;
	/* pool_size bounds free + idle entries: half may be idle (any stripe's
	 * ring, counted table-wide), the rest free (on any stripe's pool stacks,
	 * counted table-wide). Prefilled free entries come first. */
	km->idle_limit = o.pool_size / 2;
	if (o.pool_size - km->idle_limit < o.pool_prefill)
		km->idle_limit = o.pool_size - o.pool_prefill;
	km->pool_free_cap = o.pool_size - km->idle_limit;
	{
		uint32_t ring = (uint32_t)(km->idle_limit < KM_IDLE_RING ? km->idle_limit
									 : KM_IDLE_RING);

		for (unsigned i = 0; i < KM_STRIPES; i++)
			km->stripes[i].idle_cap = ring;
	}

	km->shards = km_fault_hit() ? NULL
				    : aligned_alloc(KM_CACHELINE, sizeof(struct km_shard) * nshards);
	if (km->shards == NULL)
		goto nomem;
	memset(km->shards, 0, sizeof(struct km_shard) * nshards);
	for (unsigned i = 0; i < nshards; i++) {
		km->shards[i].mask = per_shard - 1;
		km->shards[i].buckets = km_fault_hit() ? NULL : calloc(per_shard, sizeof(uintptr_t));
		if (km->shards[i].buckets == NULL)
			goto nomem;
	}
	if (km_pool_prefill(km, o.pool_prefill) != 0)
		goto nomem;
	*out = km;
	return 0;

nomem:
	km_pool_drain(km);
	km_free_shards(km->shards, nshards);
	free(km);
	return ENOMEM;
}

static int km_any_live(struct km_entry *e, uint64_t s, void *arg)
{
	(void)e;
	(void)arg;
	return !km_s_unused(s);
}

int km_destroy(struct km *km)
{
	int busy;

	if (km == NULL)
		return EINVAL;
	km_rcu_read_lock();
	busy = km_table_walk(km, km_any_live, NULL);
	km_rcu_read_unlock();
	if (busy)
		return EBUSY;
	km_idle_flush(km);
	km_pool_drain(km);	/* waits for this table's pending reclamation */
	km_free_shards(km->shards, km->nshards);
	free(km);
	return 0;
}
