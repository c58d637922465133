/*
 * striped: a fixed array of mutexes, the key hashed to one (Guava's
 * Striped.lock, Kubernetes' keymutex, AsyncKeyedLock's striped locker).
 * Nothing is ever allocated per key; two keys on one stripe wait for each
 * other (false conflicts), and a thread that holds two keys of one stripe
 * deadlocks itself, so the harness never makes it hold two at once.
 * Stripes are padded to a cache line, as Guava pads them.
 *
 * rwstriped: the same with pthread_rwlock_t stripes (Guava's
 * Striped.readWriteLock): readers overlap on a stripe, a writer excludes
 * every key of its stripe. glibc's default kind (readers preferred) unless
 * --rw-prefer-writer.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

struct stripe {
	_Alignas(64) union {
		pthread_mutex_t m;	/* striped */
		pthread_rwlock_t rw;	/* rwstriped */
	};
};

struct striped {
	struct stripe *stripes;
	uint64_t mask;
	unsigned n;
	bool rw;
	bool prefer_writer;
};

static void *striped_create_kind(const struct strat_params *p, bool rw, char *err,
				 size_t errlen)
{
	struct striped *s;
	unsigned n = p->stripes ? p->stripes : 4096, i;

	if (n & (n - 1)) {
		snprintf(err, errlen, "stripes must be a power of two");
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (s)
		s->stripes = aligned_alloc(64, (size_t)n * sizeof(struct stripe));
	if (!s || !s->stripes) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (i = 0; i < n; i++) {
		if (rw)
			bench_rwlock_init(&s->stripes[i].rw, p);
		else
			pthread_mutex_init(&s->stripes[i].m, NULL);
	}
	s->mask = n - 1;
	s->n = n;
	s->rw = rw;
	s->prefer_writer = rw && p->rw_prefer_writer;
	return s;
}

static void *striped_create(const struct strat_params *p, char *err, size_t errlen)
{
	return striped_create_kind(p, false, err, errlen);
}

static void *rwstriped_create(const struct strat_params *p, char *err, size_t errlen)
{
	return striped_create_kind(p, true, err, errlen);
}

static int striped_destroy(void *self)
{
	struct striped *s = self;
	unsigned i;

	for (i = 0; i < s->n; i++) {
		if (s->rw)
			pthread_rwlock_destroy(&s->stripes[i].rw);
		else
			pthread_mutex_destroy(&s->stripes[i].m);
	}
	free(s->stripes);
	free(s);
	return 0;
}

static struct stripe *stripe_of(struct striped *s, const void *key, size_t len)
{
	return &s->stripes[bench_hash(key, len) & s->mask];
}

static int striped_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct stripe *st = stripe_of(self, key, len);

	pthread_mutex_lock(&st->m);
	h->p[0] = st;
	return 0;
}

static void striped_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	pthread_mutex_unlock(&((struct stripe *)h->p[0])->m);
}

static int rwstriped_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct stripe *st = stripe_of(self, key, len);

	pthread_rwlock_wrlock(&st->rw);
	h->p[0] = st;
	return 0;
}

static int rwstriped_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct stripe *st = stripe_of(self, key, len);

	pthread_rwlock_rdlock(&st->rw);
	h->p[0] = st;
	return 0;
}

static void rwstriped_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	pthread_rwlock_unlock(&((struct stripe *)h->p[0])->rw);
}

static long long striped_keys(void *self)
{
	(void)self;
	return -1;
}

static void striped_describe(void *self, char *buf, size_t len)
{
	struct striped *s = self;

	snprintf(buf, len, "stripes=%u%s", s->n, s->prefer_writer ? " writer-preferring" : "");
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

const struct strategy strat_rwstriped = {
	.name = "rwstriped",
	.what = "a fixed array of pthread rwlocks (4096 by default), key hashed to a stripe",
	.flags = STRAT_SINGLE_HOLD | STRAT_RW_ONLY,
	.create = rwstriped_create,
	.destroy = striped_destroy,
	.lock = rwstriped_lock,
	.lock_shared = rwstriped_lock_shared,
	.unlock = rwstriped_unlock,
	.keys = striped_keys,
	.describe = striped_describe,
};
