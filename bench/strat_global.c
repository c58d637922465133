/*
 * global: one mutex around a hash map of reference-counted per-key locks
 * (seed 000, first answer). The count covers holders and waiters; the entry
 * leaves the map when it drops to zero, under the same map lock, so the
 * removal race cannot happen. Every acquire and release takes the map lock
 * twice in total: different keys serialize on it.
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

struct global_entry {
	pthread_mutex_t m;
	unsigned refs;		/* holders + waiters, under the map lock */
	struct bmap_node node;
	unsigned char key[];
};

struct global {
	pthread_mutex_t map_lock;
	struct bmap map;
};

static void *global_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct global *s = calloc(1, sizeof(*s));

	(void)p;
	if (!s || bmap_init(&s->map, 64)) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->map_lock, NULL);
	return s;
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

static int global_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct global *s = self;
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
			return ENOMEM;
		}
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

	pthread_mutex_lock(&e->m);
	h->p[0] = e;
	return 0;
}

static void global_unlock(void *self, struct bench_hold *h)
{
	struct global *s = self;
	struct global_entry *e = h->p[0];

	pthread_mutex_unlock(&e->m);
	pthread_mutex_lock(&s->map_lock);
	if (--e->refs == 0)
		bmap_remove(&s->map, &e->node);
	else
		e = NULL;
	pthread_mutex_unlock(&s->map_lock);
	if (e) {
		pthread_mutex_destroy(&e->m);
		free(e);
	}
}

static long long global_keys(void *self)
{
	return (long long)((struct global *)self)->map.count;
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
