/*
 * leaky: per-key mutexes that are never removed (seed 000's "never dispose").
 * Fast (a found key is one lock-free lookup, no reference counting, nothing
 * freed) and wrong in the long run: memory grows with every key ever seen.
 *
 * The map is insert-only, so it can be read without any lock or RCU: a
 * fixed array of bucket heads (sized from the run's key space, 2^10..2^22)
 * and chains that only ever gain a new head, installed with a CAS. A lookup
 * that misses allocates a node and CASes it in; if the head moved, it
 * rescans the new nodes for the same key first. The array never resizes:
 * on an unbounded key stream (churn) the chains just grow, which is part of
 * the leak.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct leaky_node {
	struct leaky_node *next;	/* immutable once published */
	uint64_t hash;
	pthread_mutex_t m;
	size_t len;
	unsigned char key[];
};

struct leaky {
	_Atomic(struct leaky_node *) *b;
	uint64_t mask;
	_Alignas(64) atomic_llong count;
};

static void *leaky_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct leaky *s = calloc(1, sizeof(*s));
	uint64_t n = 1024;

	while (n < p->expected_keys && n < (1u << 22))
		n <<= 1;
	if (s)
		s->b = calloc(n, sizeof(*s->b));
	if (!s || !s->b) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->mask = n - 1;
	return s;
}

static int leaky_destroy(void *self)
{
	struct leaky *s = self;
	uint64_t i;

	for (i = 0; i <= s->mask; i++) {
		struct leaky_node *n = atomic_load_explicit(&s->b[i], memory_order_relaxed), *next;

		for (; n; n = next) {
			next = n->next;
			pthread_mutex_destroy(&n->m);
			free(n);
		}
	}
	free(s->b);
	free(s);
	return 0;
}

static struct leaky_node *leaky_scan(struct leaky_node *n, const struct leaky_node *stop,
				     uint64_t hash, const void *key, size_t len)
{
	for (; n != stop; n = n->next)
		if (n->hash == hash && n->len == len && memcmp(n->key, key, len) == 0)
			return n;
	return NULL;
}

static int leaky_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct leaky *s = self;
	uint64_t hash = bench_hash(key, len);
	_Atomic(struct leaky_node *) *head = &s->b[hash & s->mask];
	struct leaky_node *first = atomic_load_explicit(head, memory_order_acquire);
	struct leaky_node *n = leaky_scan(first, NULL, hash, key, len);

	if (!n) {
		struct leaky_node *mine = malloc(sizeof(*mine) + len);

		if (!mine)
			return ENOMEM;
		mine->hash = hash;
		mine->len = len;
		memcpy(mine->key, key, len);
		pthread_mutex_init(&mine->m, NULL);
		for (;;) {
			struct leaky_node *seen = first;

			mine->next = first;
			if (atomic_compare_exchange_weak_explicit(head, &first, mine,
								  memory_order_release,
								  memory_order_acquire)) {
				n = mine;
				atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
				break;
			}
			/* The head moved: was our key among the new nodes? */
			n = leaky_scan(first, seen, hash, key, len);
			if (n) {
				pthread_mutex_destroy(&mine->m);
				free(mine);
				break;
			}
		}
	}
	pthread_mutex_lock(&n->m);
	h->p[0] = n;
	return 0;
}

static void leaky_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	pthread_mutex_unlock(&((struct leaky_node *)h->p[0])->m);
}

static long long leaky_keys(void *self)
{
	return atomic_load(&((struct leaky *)self)->count);
}

const struct strategy strat_leaky = {
	.name = "leaky",
	.what = "per-key mutexes never removed (insert-only lock-free map): memory grows",
	.flags = STRAT_GROWS,
	.create = leaky_create,
	.destroy = leaky_destroy,
	.lock = leaky_lock,
	.unlock = leaky_unlock,
	.keys = leaky_keys,
};
