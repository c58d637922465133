/*
 * mutex: one plain pthread_mutex_t for every key. Wrong for independent
 * keys (everything serializes) but the floor for the single-hot-key
 * workload: no keyed scheme can beat a bare mutex there.
 *
 * rwlock: one pthread_rwlock_t for every key, its reader-writer analogue:
 * readers of any keys overlap, a writer of any key excludes all. The floor a
 * keyed lock must beat once writes are not rare. glibc's default kind
 * (readers preferred) unless --rw-prefer-writer.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct mutex_strat {
	_Alignas(64) union {
		pthread_mutex_t m;	/* mutex */
		pthread_rwlock_t rw;	/* rwlock */
	};
	int prefer_writer;		/* rwlock only */
};

static struct mutex_strat *mutex_alloc(char *err, size_t errlen)
{
	struct mutex_strat *s = aligned_alloc(64, sizeof(struct mutex_strat));

	if (!s)
		snprintf(err, errlen, "out of memory");
	return s;
}

static void *mutex_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct mutex_strat *s = mutex_alloc(err, errlen);

	(void)p;
	if (s)
		pthread_mutex_init(&s->m, NULL);
	return s;
}

static void *rwlock_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct mutex_strat *s = mutex_alloc(err, errlen);

	if (s) {
		bench_rwlock_init(&s->rw, p);
		s->prefer_writer = p->rw_prefer_writer;
	}
	return s;
}

static int mutex_destroy(void *self)
{
	pthread_mutex_destroy(&((struct mutex_strat *)self)->m);
	free(self);
	return 0;
}

static int rwlock_destroy(void *self)
{
	pthread_rwlock_destroy(&((struct mutex_strat *)self)->rw);
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

static int rwlock_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	(void)h;
	pthread_rwlock_wrlock(&((struct mutex_strat *)self)->rw);
	return 0;
}

static int rwlock_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	(void)h;
	pthread_rwlock_rdlock(&((struct mutex_strat *)self)->rw);
	return 0;
}

static void rwlock_unlock(void *self, struct bench_hold *h)
{
	(void)h;
	pthread_rwlock_unlock(&((struct mutex_strat *)self)->rw);
}

static long long mutex_keys(void *self)
{
	(void)self;
	return -1;
}

static void rwlock_describe(void *self, char *buf, size_t len)
{
	snprintf(buf, len, "%s",
		 ((struct mutex_strat *)self)->prefer_writer ? "writer-preferring" : "");
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

const struct strategy strat_rwlock = {
	.name = "rwlock",
	.what = "one pthread_rwlock_t for every key (the read-mostly floor)",
	.flags = STRAT_SINGLE_HOLD | STRAT_RW_ONLY,
	.create = rwlock_create,
	.destroy = rwlock_destroy,
	.lock = rwlock_lock,
	.lock_shared = rwlock_lock_shared,
	.unlock = rwlock_unlock,
	.keys = mutex_keys,
	.describe = rwlock_describe,
};
