/*
 * km-bench: the strategy registry, in report order.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <string.h>

const struct strategy *const bench_strategies[] = {
	&strat_keymutex,
	&strat_global,
	&strat_pooled,
	&strat_replace,
	&strat_striped,
	&strat_leaky,
	&strat_mutex,
	&strat_naive,
	&strat_rwglobal,
	&strat_rwstriped,
	&strat_rwlock,
	NULL,
};

void bench_rwlock_init(pthread_rwlock_t *rw, const struct strat_params *p)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
	pthread_rwlockattr_setkind_np(&a, p->rw_prefer_writer ?
				      PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP :
				      PTHREAD_RWLOCK_PREFER_READER_NP);
	pthread_rwlock_init(rw, &a);
	pthread_rwlockattr_destroy(&a);
}

const struct strategy *bench_strategy_find(const char *name)
{
	const struct strategy *const *s;

	for (s = bench_strategies; *s; s++)
		if (strcmp((*s)->name, name) == 0)
			return *s;
	return NULL;
}
