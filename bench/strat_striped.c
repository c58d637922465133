/*
 * striped: a fixed array of mutexes, the key hashed to one (Guava's
 * Striped.lock, Kubernetes' keymutex, AsyncKeyedLock's striped locker).
 * Nothing is ever allocated per key; two keys on one stripe wait for each
 * other (false conflicts), and a thread that holds two keys of one stripe
 * deadlocks itself, so the harness never makes it hold two at once.
 * Stripes are padded to a cache line, as Guava pads them.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct stripe {
	_Alignas(64) pthread_mutex_t m;
};

struct striped {
	struct stripe *stripes;
	uint64_t mask;
	unsigned n;
};

static void *striped_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct striped *s = calloc(1, sizeof(*s));
	unsigned n = p->stripes ? p->stripes : 4096, i;

	if (n & (n - 1)) {
		free(s);
		snprintf(err, errlen, "stripes must be a power of two");
		return NULL;
	}
	if (s)
		s->stripes = aligned_alloc(64, (size_t)n * sizeof(struct stripe));
	if (!s || !s->stripes) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (i = 0; i < n; i++)
		pthread_mutex_init(&s->stripes[i].m, NULL);
	s->mask = n - 1;
	s->n = n;
	return s;
}

static int striped_destroy(void *self)
{
	struct striped *s = self;
	unsigned i;

	for (i = 0; i < s->n; i++)
		pthread_mutex_destroy(&s->stripes[i].m);
	free(s->stripes);
	free(s);
	return 0;
}

static int striped_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct striped *s = self;
	struct stripe *st = &s->stripes[bench_hash(key, len) & s->mask];

	pthread_mutex_lock(&st->m);
	h->p[0] = st;
	return 0;
}

static void striped_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	pthread_mutex_unlock(&((struct stripe *)h->p[0])->m);
}

static long long striped_keys(void *self)
{
	(void)self;
	return -1;
}

static void striped_describe(void *self, char *buf, size_t len)
{
	snprintf(buf, len, "stripes=%u", ((struct striped *)self)->n);
}

const struct strategy strat_striped = {
	.name = "striped",
	.what = "a fixed array of mutexes (4096 by default), key hashed to a stripe",
	.flags = STRAT_SINGLE_HOLD,
	.create = striped_create,
	.destroy = striped_destroy,
	.lock = striped_lock,
	.unlock = striped_unlock,
	.keys = striped_keys,
	.describe = striped_describe,
};
