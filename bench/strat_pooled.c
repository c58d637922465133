/*
 * pooled: `global` plus a bounded pool of reusable per-key locks (the
 * KeyedLock answer of seed 000, AsyncKeyedLock's pooling). An entry whose
 * count drops to zero leaves the map and goes back to the free pool (up to
 * params->pool entries; beyond that it is freed), so a steady workload stops
 * calling malloc/free. Keys up to POOLED_INLINE bytes live in the entry; a
 * longer key gets a heap copy.
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

#define POOLED_INLINE 32

struct pooled_entry {
	pthread_mutex_t m;
	unsigned refs;		/* holders + waiters, under the map lock */
	struct pooled_entry *free_next;
	unsigned char *heap_key;	/* key longer than POOLED_INLINE, else NULL */
	struct bmap_node node;
	unsigned char key[POOLED_INLINE];
};

struct pooled {
	pthread_mutex_t map_lock;
	struct bmap map;
	struct pooled_entry *free;	/* the pool, under the map lock */
	size_t nfree, cap;
};

static void *pooled_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct pooled *s = calloc(1, sizeof(*s));

	if (!s || bmap_init(&s->map, 64)) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->map_lock, NULL);
	s->cap = p->pool ? p->pool : 1024;
	return s;
}

static void pooled_free_entry(struct pooled_entry *e)
{
	pthread_mutex_destroy(&e->m);
	free(e->heap_key);
	free(e);
}

static int pooled_destroy(void *self)
{
	struct pooled *s = self;
	struct pooled_entry *e, *next;

	if (s->map.count)
		return EBUSY;
	for (e = s->free; e; e = next) {
		next = e->free_next;
		pooled_free_entry(e);
	}
	bmap_fini(&s->map);
	pthread_mutex_destroy(&s->map_lock);
	free(s);
	return 0;
}

static int pooled_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct pooled *s = self;
	uint64_t hash = bench_hash(key, len);
	struct bmap_node *n;
	struct pooled_entry *e;

	pthread_mutex_lock(&s->map_lock);
	n = bmap_find(&s->map, hash, key, len);
	if (n) {
		e = bench_container_of(n, struct pooled_entry, node);
	} else {
		e = s->free;
		if (e) {
			s->free = e->free_next;
			s->nfree--;
		} else {
			e = malloc(sizeof(*e));
			if (!e) {
				pthread_mutex_unlock(&s->map_lock);
				return ENOMEM;
			}
			pthread_mutex_init(&e->m, NULL);
			e->heap_key = NULL;
		}
		e->refs = 0;
		if (len <= POOLED_INLINE) {
			memcpy(e->key, key, len);
			e->node.key = e->key;
		} else {
			unsigned char *k = malloc(len);

			if (!k) {
				e->free_next = s->free;
				s->free = e;
				s->nfree++;
				pthread_mutex_unlock(&s->map_lock);
				return ENOMEM;
			}
			memcpy(k, key, len);
			e->heap_key = k;
			e->node.key = k;
		}
		e->node.hash = hash;
		e->node.len = len;
		bmap_insert(&s->map, &e->node);
	}
	e->refs++;
	pthread_mutex_unlock(&s->map_lock);

	pthread_mutex_lock(&e->m);
	h->p[0] = e;
	return 0;
}

static void pooled_unlock(void *self, struct bench_hold *h)
{
	struct pooled *s = self;
	struct pooled_entry *e = h->p[0];

	pthread_mutex_unlock(&e->m);
	pthread_mutex_lock(&s->map_lock);
	if (--e->refs == 0) {
		bmap_remove(&s->map, &e->node);
		free(e->heap_key);
		e->heap_key = NULL;
		if (s->nfree < s->cap) {
			e->free_next = s->free;
			s->free = e;
			s->nfree++;
			e = NULL;
		}
	} else {
		e = NULL;
	}
	pthread_mutex_unlock(&s->map_lock);
	if (e) {
		pthread_mutex_destroy(&e->m);
		free(e);
	}
}

static long long pooled_keys(void *self)
{
	return (long long)((struct pooled *)self)->map.count;
}

static void pooled_describe(void *self, char *buf, size_t len)
{
	struct pooled *s = self;

	snprintf(buf, len, "pool=%zu/%zu", s->nfree, s->cap);
}

const struct strategy strat_pooled = {
	.name = "pooled",
	.what = "global plus a bounded pool of reusable per-key locks",
	.create = pooled_create,
	.destroy = pooled_destroy,
	.lock = pooled_lock,
	.unlock = pooled_unlock,
	.keys = pooled_keys,
	.describe = pooled_describe,
};
