/*
 * global: one mutex around a hash map of reference-counted per-key locks
 * (seed 000, first answer). The count covers holders and waiters; the entry
 * leaves the map when it drops to zero, under the same map lock, so the
 * removal race cannot happen. Every acquire and release takes the map lock
 * twice in total: different keys serialize on it.
 *
 * rwglobal: the same map with a pthread_rwlock_t per key, so readers of one
 * key overlap. Its rwlocks are glibc's default kind (readers preferred: under
 * a steady stream of readers a writer may wait a long time) unless
 * --rw-prefer-writer makes them writer-preferring, fair to writers as
 * keymutex's shared mode is.
 *
 * SPDX-License-Identifier: MIT
 */
#include "map.h"
#include "strategy.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct global_entry {
	union {
		pthread_mutex_t m;	/* global */
		pthread_rwlock_t rw;	/* rwglobal */
	};
	unsigned refs;		/* holders + waiters, under the map lock */
	struct bmap_node node;
	unsigned char key[];
};

struct global {
	pthread_mutex_t map_lock;
	struct bmap map;
	bool rw;			/* rwglobal: per-key rwlocks */
	struct strat_params params;	/* rwglobal: the kind of rwlock to make */
};

static void *global_create_kind(const struct strat_params *p, bool rw, char *err, size_t errlen)
{
	struct global *s = calloc(1, sizeof(*s));

	if (!s || bmap_init(&s->map, 64)) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->map_lock, NULL);
	s->rw = rw;
	s->params = *p;
	return s;
}

static void *global_create(const struct strat_params *p, char *err, size_t errlen)
{
	return global_create_kind(p, false, err, errlen);
}

static void *rwglobal_create(const struct strat_params *p, char *err, size_t errlen)
{
	return global_create_kind(p, true, err, errlen);
}

static int global_destroy(void *self)
{
	struct global *s = self;

	if (s->map.count)
		return EBUSY;
	bmap_fini(&s->map);
	pthread_mutex_destroy(&s->map_lock);
	free(s);
	return 0;
}

/* Find or insert the key's entry and count us in, under the map lock. */
static struct global_entry *global_ref(struct global *s, const void *key, size_t len)
{
	uint64_t hash = bench_hash(key, len);
	struct bmap_node *n;
	struct global_entry *e;

	pthread_mutex_lock(&s->map_lock);
	n = bmap_find(&s->map, hash, key, len);
	if (n) {
		e = bench_container_of(n, struct global_entry, node);
	} else {
		e = malloc(sizeof(*e) + len);
		if (!e) {
			pthread_mutex_unlock(&s->map_lock);
			return NULL;
		}
		if (s->rw)
			bench_rwlock_init(&e->rw, &s->params);
		else
			pthread_mutex_init(&e->m, NULL);
		e->refs = 0;
		memcpy(e->key, key, len);
		e->node.hash = hash;
		e->node.len = len;
		e->node.key = e->key;
		bmap_insert(&s->map, &e->node);
	}
	e->refs++;
	pthread_mutex_unlock(&s->map_lock);
	return e;
}

static int global_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct global *s = self;
	struct global_entry *e = global_ref(s, key, len);

	if (!e)
		return ENOMEM;
	if (s->rw)
		pthread_rwlock_wrlock(&e->rw);
	else
		pthread_mutex_lock(&e->m);
	h->p[0] = e;
	return 0;
}

static int rwglobal_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct global_entry *e = global_ref(self, key, len);

	if (!e)
		return ENOMEM;
	pthread_rwlock_rdlock(&e->rw);
	h->p[0] = e;
	return 0;
}

static void global_unlock(void *self, struct bench_hold *h)
{
	struct global *s = self;
	struct global_entry *e = h->p[0];

	if (s->rw)
		pthread_rwlock_unlock(&e->rw);
	else
		pthread_mutex_unlock(&e->m);
	pthread_mutex_lock(&s->map_lock);
	if (--e->refs == 0)
		bmap_remove(&s->map, &e->node);
	else
		e = NULL;
	pthread_mutex_unlock(&s->map_lock);
	if (e) {
		if (s->rw)
			pthread_rwlock_destroy(&e->rw);
		else
			pthread_mutex_destroy(&e->m);
		free(e);
	}
}

static long long global_keys(void *self)
{
	return (long long)((struct global *)self)->map.count;
}

static void rwglobal_describe(void *self, char *buf, size_t len)
{
	snprintf(buf, len, "%s",
		 ((struct global *)self)->params.rw_prefer_writer ? "writer-preferring" : "");
}

const struct strategy strat_global = {
	.name = "global",
	.what = "one mutex around a hash map of refcounted per-key locks",
	.create = global_create,
	.destroy = global_destroy,
	.lock = global_lock,
	.unlock = global_unlock,
	.keys = global_keys,
};

const struct strategy strat_rwglobal = {
	.name = "rwglobal",
	.what = "one mutex around a hash map of refcounted per-key pthread rwlocks",
	.flags = STRAT_RW_ONLY,
	.create = rwglobal_create,
	.destroy = global_destroy,
	.lock = global_lock,
	.lock_shared = rwglobal_lock_shared,
	.unlock = global_unlock,
	.keys = global_keys,
	.describe = rwglobal_describe,
};
