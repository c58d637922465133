/*
 * km_stats and km_query: read-only walks of the table.
 *
 * keys, holders and waiters are summed from the live entries' state words
 * (so the acquire/release paths pay nothing for them); the event counters
 * are summed from the per-thread stripes. Each state word is read atomically;
 * the walk as a whole is not one instant, which api.md allows while calls run.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <stdlib.h>

static int km_stats_visit(struct km_entry *e, uint64_t s, void *arg)
{
	struct km_stats *st = arg;

	(void)e;
	if (km_s_unused(s)) {
		st->pooled++;	/* an idle entry kept for its key */
		return 0;
	}
	st->keys++;
	st->holders += km_s_holders(s);
	st->waiters += km_s_waiters(s);
	return 0;
}

int km_stats(struct km *km, struct km_stats *out)
{
	struct km_stats st;

	if (km == NULL || out == NULL)
		return EINVAL;
	memset(&st, 0, sizeof st);
	km_rcu_read_lock();
	km_table_walk(km, km_stats_visit, &st);
	st.pooled += km_pool_count(km);
	km_rcu_read_unlock();
	for (unsigned i = 0; i < KM_STRIPES; i++) {
		const struct km_stripe *sp = &km->stripes[i];

		st.acquired += km_load_relaxed(&sp->acquired);
		st.contended += km_load_relaxed(&sp->contended);
		st.timeouts += km_load_relaxed(&sp->timeouts);
		st.cancels += km_load_relaxed(&sp->cancels);
		st.rejected += km_load_relaxed(&sp->rejected);
	}
	*out = st;
	return 0;
}

/*
 * km_query calls the visitor outside any read-side section: a visitor may
 * block (wait in km_lock, run a ready() through a grant), and one blocked in
 * a section would stop grace periods, and with them every releaser once the
 * reclamation backlog is full. So the walk copies what it sees of a few
 * buckets at a time (key bytes, counts) into a buffer, leaves the section,
 * and only then visits the copies.
 */
#define KM_QUERY_BUCKETS 64	/* buckets per batch between two visits */

struct km_snap {
	size_t key_off;		/* into the batch's key bytes */
	size_t len;
	unsigned holders, waiters;
	int shared;
};

struct km_query_batch {
	const struct km *km;
	struct km_snap *snap;
	size_t n, cap;
	unsigned char *keys;
	size_t used, kcap;
	bool nomem;
};

static bool km_grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t cap2 = *cap != 0 ? *cap : 64;
	void *q;

	if (need <= *cap)
		return true;
	while (cap2 < need) {
		if (cap2 > SIZE_MAX / 2 / elem)
			return false;
		cap2 *= 2;
	}
	q = km_fault_hit() ? NULL : realloc(*p, cap2 * elem);
	if (q == NULL)
		return false;
	*p = q;
	*cap = cap2;
	return true;
}

static int km_query_copy(struct km_entry *e, uint64_t s, void *arg)
{
	struct km_query_batch *b = arg;
	size_t len = km_load_relaxed(&e->len);

	if (km_s_unused(s))
		return 0;	/* idle: neither held nor awaited */
	if (!km_grow((void **)&b->snap, &b->cap, b->n + 1, sizeof *b->snap) ||
	    len > SIZE_MAX - b->used ||
	    !km_grow((void **)&b->keys, &b->kcap, b->used + len, 1)) {
		b->nomem = true;
		return 1;
	}
	/* The entry may die meanwhile, but its memory is not reused before
	 * our section ends: the bytes are its key's. */
	if (len != 0)
		memcpy(b->keys + b->used, e->key, len);
	b->snap[b->n++] = (struct km_snap){
		.key_off = b->used,
		.len = len,
		.holders = km_s_holders(s),
		.waiters = km_s_waiters(s),
		.shared = km_s_holders(s) > 0 && !(s & KM_S_X) && b->km->max_holders == 1,
	};
	b->used += len;
	return 0;
}

int km_query(struct km *km, km_visit_fn *visit, void *arg)
{
	struct km_query_batch b;
	size_t cursor = 0, end;
	int r = 0;

	if (km == NULL || visit == NULL)
		return EINVAL;
	memset(&b, 0, sizeof b);
	b.km = km;
	end = km_table_buckets(km);
	while (r == 0 && cursor < end) {
		b.n = 0;
		b.used = 0;
		km_rcu_read_lock();
		(void)km_table_walk_buckets(km, &cursor, KM_QUERY_BUCKETS, km_query_copy, &b);
		km_rcu_read_unlock();
		if (b.nomem) {
			r = ENOMEM;
			break;
		}
		for (size_t i = 0; i < b.n && r == 0; i++) {
			const struct km_snap *sn = &b.snap[i];
			/* No key bytes were copied (only empty keys): no buffer. */
			const void *key = sn->len != 0 ? (const void *)(b.keys + sn->key_off) : "";

			r = visit(key, sn->len, sn->holders, sn->waiters, sn->shared, arg);
		}
	}
	free(b.snap);
	free(b.keys);
	return r;
}
