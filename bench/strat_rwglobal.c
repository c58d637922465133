/*
 * rwglobal: the `global` strategy with a pthread_rwlock_t per key instead of
 * a mutex: one mutex around a hash map of reference-counted per-key
 * reader-writer locks. Readers of one key overlap; every acquire and release
 * still takes the map mutex once, so different keys serialize on it.
 *
 * The per-key locks are glibc's default kind, PTHREAD_RWLOCK_PREFER_READER_NP
 * (what a user gets from pthread_rwlock_init(&l, NULL)): under a steady
 * stream of readers a writer on the same key may wait a long time.
 * --rw-prefer-writer makes them PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP,
 * fair to writers as keymutex's shared mode is.
 *
 * SPDX-License-Identifier: MIT
 */
#include "map.h"
#include "strategy.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rwglobal_entry {
	pthread_rwlock_t rw;
	unsigned refs;		/* holders + waiters, under the map lock */
	struct bmap_node node;
	unsigned char key[];
};

struct rwglobal {
	pthread_mutex_t map_lock;
	struct bmap map;
	struct strat_params params;	/* the kind of rwlock to make */
};

static void *rwglobal_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct rwglobal *s = calloc(1, sizeof(*s));

	if (!s || bmap_init(&s->map, 64)) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->map_lock, NULL);
	s->params = *p;
	return s;
}

static int rwglobal_destroy(void *self)
{
	struct rwglobal *s = self;

	if (s->map.count)
		return EBUSY;
	bmap_fini(&s->map);
	pthread_mutex_destroy(&s->map_lock);
	free(s);
	return 0;
}

/* Find or insert the key's entry and count us in, under the map lock. */
static struct rwglobal_entry *rwglobal_ref(struct rwglobal *s, const void *key, size_t len)
{
	uint64_t hash = bench_hash(key, len);
	struct bmap_node *n;
	struct rwglobal_entry *e;

	pthread_mutex_lock(&s->map_lock);
	n = bmap_find(&s->map, hash, key, len);
	if (n) {
		e = bench_container_of(n, struct rwglobal_entry, node);
	} else {
		e = malloc(sizeof(*e) + len);
		if (!e) {
			pthread_mutex_unlock(&s->map_lock);
			return NULL;
		}
		bench_rwlock_init(&e->rw, &s->params);
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

static int rwglobal_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct rwglobal_entry *e = rwglobal_ref(self, key, len);

	if (!e)
		return ENOMEM;
	pthread_rwlock_wrlock(&e->rw);
	h->p[0] = e;
	return 0;
}

static int rwglobal_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct rwglobal_entry *e = rwglobal_ref(self, key, len);

	if (!e)
		return ENOMEM;
	pthread_rwlock_rdlock(&e->rw);
	h->p[0] = e;
	return 0;
}

static void rwglobal_unlock(void *self, struct bench_hold *h)
{
	struct rwglobal *s = self;
	struct rwglobal_entry *e = h->p[0];

	pthread_rwlock_unlock(&e->rw);
	pthread_mutex_lock(&s->map_lock);
	if (--e->refs == 0)
		bmap_remove(&s->map, &e->node);
	else
		e = NULL;
	pthread_mutex_unlock(&s->map_lock);
	if (e) {
		pthread_rwlock_destroy(&e->rw);
		free(e);
	}
}

static void rwglobal_describe(void *self, char *buf, size_t len)
{
	snprintf(buf, len, "%s",
		 ((struct rwglobal *)self)->params.rw_prefer_writer ? "writer-preferring" : "");
}

static long long rwglobal_keys(void *self)
{
	return (long long)((struct rwglobal *)self)->map.count;
}

const struct strategy strat_rwglobal = {
	.name = "rwglobal",
	.what = "one mutex around a hash map of refcounted per-key pthread rwlocks",
	.flags = STRAT_RW_ONLY,
	.create = rwglobal_create,
	.destroy = rwglobal_destroy,
	.lock = rwglobal_lock,
	.lock_shared = rwglobal_lock_shared,
	.unlock = rwglobal_unlock,
	.keys = rwglobal_keys,
	.describe = rwglobal_describe,
};
