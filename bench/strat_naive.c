/*
 * naive: the seed's broken original, kept as the negative control.
 *
 *   sem = locks.GetOrAdd(key, new Semaphore(1));  sem.Wait();
 *   ... work ...
 *   locks.TryRemove(key);  sem.Release();          <- removed *before* release
 *
 * A thread that fetched the old lock is still waiting on it when the holder
 * removes it from the map; a third thread (or the holder itself, coming back)
 * then creates a fresh lock for the same key, and two threads are inside one
 * key. The harness's occupancy counters must see that.
 *
 * C has no garbage collector, so a removed lock object is kept alive by a
 * reference count of the threads that fetched it (memory safety only: the
 * count has no say in map membership, which is the bug being reproduced).
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

struct naive_entry {
	pthread_mutex_t m;
	unsigned refs;		/* threads that fetched it and have not finished (under map lock) */
	int in_map;
	struct bmap_node node;
	unsigned char key[];
};

struct naive {
	pthread_mutex_t map_lock;
	struct bmap map;
};

static void *naive_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct naive *s = calloc(1, sizeof(*s));

	(void)p;
	if (!s || bmap_init(&s->map, 64)) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->map_lock, NULL);
	return s;
}

static int naive_destroy(void *self)
{
	struct naive *s = self;
	size_t i;

	for (i = 0; i <= s->map.mask; i++) {
		struct bmap_node *n = s->map.b[i], *next;

		for (; n; n = next) {
			next = n->next;
			free(bench_container_of(n, struct naive_entry, node));
		}
	}
	bmap_fini(&s->map);
	pthread_mutex_destroy(&s->map_lock);
	free(s);
	return 0;
}

static int naive_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct naive *s = self;
	uint64_t hash = bench_hash(key, len);
	struct bmap_node *n;
	struct naive_entry *e;

	/* GetOrAdd */
	pthread_mutex_lock(&s->map_lock);
	n = bmap_find(&s->map, hash, key, len);
	if (n) {
		e = bench_container_of(n, struct naive_entry, node);
	} else {
		e = malloc(sizeof(*e) + len);
		if (!e) {
			pthread_mutex_unlock(&s->map_lock);
			return ENOMEM;
		}
		pthread_mutex_init(&e->m, NULL);
		e->refs = 0;
		e->in_map = 1;
		memcpy(e->key, key, len);
		e->node.hash = hash;
		e->node.len = len;
		e->node.key = e->key;
		bmap_insert(&s->map, &e->node);
	}
	e->refs++;
	pthread_mutex_unlock(&s->map_lock);

	pthread_mutex_lock(&e->m);	/* sem.Wait() */
	h->p[0] = e;
	return 0;
}

static void naive_unlock(void *self, struct bench_hold *h)
{
	struct naive *s = self;
	struct naive_entry *e = h->p[0];
	struct bmap_node *cur;
	int last;

	pthread_mutex_lock(&s->map_lock);
	/* TryRemove(key): whatever lock is under the key now goes. */
	cur = bmap_find(&s->map, e->node.hash, e->key, e->node.len);
	if (cur) {
		bmap_remove(&s->map, cur);
		bench_container_of(cur, struct naive_entry, node)->in_map = 0;
	}
	last = --e->refs == 0 && !e->in_map;
	pthread_mutex_unlock(&s->map_lock);

	pthread_mutex_unlock(&e->m);	/* sem.Release(), after the removal */
	if (last) {			/* unreachable now: nobody fetched it, not in the map */
		pthread_mutex_destroy(&e->m);
		free(e);
	}
}

static long long naive_keys(void *self)
{
	return (long long)((struct naive *)self)->map.count;
}

const struct strategy strat_naive = {
	.name = "naive",
	.what = "seed's broken original: GetOrAdd, TryRemove before release (negative control)",
	.flags = STRAT_NEGATIVE_CONTROL,
	.create = naive_create,
	.destroy = naive_destroy,
	.lock = naive_lock,
	.unlock = naive_unlock,
	.keys = naive_keys,
};
