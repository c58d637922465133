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

struct km_query_ctx {
	const struct km *km;
	km_visit_fn *visit;
	void *arg;
};

static int km_query_visit(struct km_entry *e, uint64_t s, void *arg)
{
	struct km_query_ctx *q = arg;

	if (km_s_unused(s))
		return 0;	/* idle: neither held nor awaited */
	int shared = km_s_holders(s) > 0 && !(s & KM_S_X) && q->km->max_holders == 1;

	return q->visit(e->key, e->len, km_s_holders(s), km_s_waiters(s), shared, q->arg);
}

int km_query(struct km *km, km_visit_fn *visit, void *arg)
{
	struct km_query_ctx q = { km, visit, arg };
	int r;

	if (km == NULL || visit == NULL)
		return EINVAL;
	km_rcu_read_lock();
	r = km_table_walk(km, km_query_visit, &q);
	km_rcu_read_unlock();
	return r;
}
