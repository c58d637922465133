/*
 * rwstriped: `striped` with reader-writer locks: a fixed array of
 * pthread_rwlock_t (4096 by default, --stripes), the key hashed to one.
 * Readers overlap on a stripe; a writer excludes every key of its stripe
 * (false conflicts), and one thread must never hold two keys at once.
 * Stripes are padded to a cache line. glibc's default kind (readers
 * preferred) unless --rw-prefer-writer, as in rwglobal.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct rwstripe {
	_Alignas(64) pthread_rwlock_t rw;
};

struct rwstriped {
	struct rwstripe *stripes;
	uint64_t mask;
	unsigned n;
	int prefer_writer;
};

static void *rwstriped_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct rwstriped *s;
	unsigned n = p->stripes ? p->stripes : 4096, i;

	if (n & (n - 1)) {
		snprintf(err, errlen, "stripes must be a power of two");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (s)
		s->stripes = aligned_alloc(64, (size_t)n * sizeof(struct rwstripe));
	if (!s || !s->stripes) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (i = 0; i < n; i++)
		bench_rwlock_init(&s->stripes[i].rw, p);
	s->mask = n - 1;
	s->n = n;
	s->prefer_writer = p->rw_prefer_writer;
	return s;
}

static int rwstriped_destroy(void *self)
{
	struct rwstriped *s = self;
	unsigned i;

	for (i = 0; i < s->n; i++)
		pthread_rwlock_destroy(&s->stripes[i].rw);
	free(s->stripes);
	free(s);
	return 0;
}

static struct rwstripe *rwstripe_of(struct rwstriped *s, const void *key, size_t len)
{
	return &s->stripes[bench_hash(key, len) & s->mask];
}

static int rwstriped_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct rwstripe *st = rwstripe_of(self, key, len);

	pthread_rwlock_wrlock(&st->rw);
	h->p[0] = st;
	return 0;
}

static int rwstriped_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct rwstripe *st = rwstripe_of(self, key, len);

	pthread_rwlock_rdlock(&st->rw);
	h->p[0] = st;
	return 0;
}

static void rwstriped_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	pthread_rwlock_unlock(&((struct rwstripe *)h->p[0])->rw);
}

static long long rwstriped_keys(void *self)
{
	(void)self;
	return -1;
}

static void rwstriped_describe(void *self, char *buf, size_t len)
{
	struct rwstriped *s = self;

	snprintf(buf, len, "stripes=%u%s", s->n, s->prefer_writer ? " writer-preferring" : "");
}

const struct strategy strat_rwstriped = {
	.name = "rwstriped",
	.what = "a fixed array of pthread rwlocks (4096 by default), key hashed to a stripe",
	.flags = STRAT_SINGLE_HOLD | STRAT_RW_ONLY,
	.create = rwstriped_create,
	.destroy = rwstriped_destroy,
	.lock = rwstriped_lock,
	.lock_shared = rwstriped_lock_shared,
	.unlock = rwstriped_unlock,
	.keys = rwstriped_keys,
	.describe = rwstriped_describe,
};
