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

const struct strategy *bench_strategy_find(const char *name)
{
	const struct strategy *const *s;

	for (s = bench_strategies; *s; s++)
		if (strcmp((*s)->name, name) == 0)
			return *s;
	return NULL;
}
