/*
 * rwlock: one pthread_rwlock_t for every key, the reader-writer analogue of
 * `mutex`: readers of any keys overlap, a writer of any key excludes all.
 * The floor a keyed lock must beat once writes are not rare. glibc's default
 * kind (readers preferred) unless --rw-prefer-writer.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct rwlock_strat {
	_Alignas(64) pthread_rwlock_t rw;
	int prefer_writer;
};

static void *rwlock_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct rwlock_strat *s = aligned_alloc(64, sizeof(struct rwlock_strat));

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	bench_rwlock_init(&s->rw, p);
	s->prefer_writer = p->rw_prefer_writer;
	return s;
}

static int rwlock_destroy(void *self)
{
	pthread_rwlock_destroy(&((struct rwlock_strat *)self)->rw);
	free(self);
	return 0;
}

static int rwlock_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	(void)h;
	pthread_rwlock_wrlock(&((struct rwlock_strat *)self)->rw);
	return 0;
}

static int rwlock_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	(void)h;
	pthread_rwlock_rdlock(&((struct rwlock_strat *)self)->rw);
	return 0;
}

static void rwlock_unlock(void *self, struct bench_hold *h)
{
	(void)h;
	pthread_rwlock_unlock(&((struct rwlock_strat *)self)->rw);
}

static void rwlock_describe(void *self, char *buf, size_t len)
{
	snprintf(buf, len, "%s",
		 ((struct rwlock_strat *)self)->prefer_writer ? "writer-preferring" : "");
}

static long long rwlock_keys(void *self)
{
	(void)self;
	return -1;
}

const struct strategy strat_rwlock = {
	.name = "rwlock",
	.what = "one pthread_rwlock_t for every key (the read-mostly floor)",
	.flags = STRAT_SINGLE_HOLD | STRAT_RW_ONLY,
	.create = rwlock_create,
	.destroy = rwlock_destroy,
	.lock = rwlock_lock,
	.lock_shared = rwlock_lock_shared,
	.unlock = rwlock_unlock,
	.keys = rwlock_keys,
	.describe = rwlock_describe,
};
