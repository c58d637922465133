/*
 * mutex: one plain pthread_mutex_t for every key. Wrong for independent
 * keys (everything serializes) but the floor for the single-hot-key
 * workload: no keyed scheme can beat a bare mutex there.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct mutex_strat {
	pthread_mutex_t m;
};

static void *mutex_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct mutex_strat *s = aligned_alloc(64, 64);

	(void)p;
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->m, NULL);
	return s;
}

static int mutex_destroy(void *self)
{
	pthread_mutex_destroy(&((struct mutex_strat *)self)->m);
	free(self);
	return 0;
}

static int mutex_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	(void)h;
	pthread_mutex_lock(&((struct mutex_strat *)self)->m);
	return 0;
}

static void mutex_unlock(void *self, struct bench_hold *h)
{
	(void)h;
	pthread_mutex_unlock(&((struct mutex_strat *)self)->m);
}

static long long mutex_keys(void *self)
{
	(void)self;
	return -1;
}

const struct strategy strat_mutex = {
	.name = "mutex",
	.what = "one plain pthread_mutex_t for every key (the hot-key floor)",
	.flags = STRAT_SINGLE_HOLD,
	.create = mutex_create,
	.destroy = mutex_destroy,
	.lock = mutex_lock,
	.unlock = mutex_unlock,
	.keys = mutex_keys,
};
