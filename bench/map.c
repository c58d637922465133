/*
 * km-bench: the single-threaded chained map of map.h.
 *
 * SPDX-License-Identifier: MIT
 */
#include "map.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int bmap_init(struct bmap *m, size_t buckets)
{
	size_t n = 16;

	while (n < buckets)
		n <<= 1;
	m->b = calloc(n, sizeof(*m->b));
	if (!m->b)
		return ENOMEM;
	m->mask = n - 1;
	m->count = 0;
	return 0;
}

void bmap_fini(struct bmap *m)
{
	free(m->b);
	m->b = NULL;
	m->mask = 0;
	m->count = 0;
}

struct bmap_node *bmap_find(const struct bmap *m, uint64_t hash, const void *key, size_t len)
{
	struct bmap_node *n;

	for (n = m->b[hash & m->mask]; n; n = n->next)
		if (n->hash == hash && n->len == len && memcmp(n->key, key, len) == 0)
			return n;
	return NULL;
}

/* Double the bucket array; on ENOMEM keep the old one (chains just get longer). */
static void bmap_grow(struct bmap *m)
{
	size_t n = (m->mask + 1) * 2, i;
	struct bmap_node **b = calloc(n, sizeof(*b));

	if (!b)
		return;
	for (i = 0; i <= m->mask; i++) {
		struct bmap_node *e = m->b[i], *next;

		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(m->b);
	m->b = b;
	m->mask = n - 1;
}

void bmap_insert(struct bmap *m, struct bmap_node *n)
{
	struct bmap_node **head;

	if (m->count >= m->mask + 1)
		bmap_grow(m);
	head = &m->b[n->hash & m->mask];
	n->next = *head;
	*head = n;
	m->count++;
}

void bmap_remove(struct bmap *m, struct bmap_node *n)
{
	struct bmap_node **pp = &m->b[n->hash & m->mask];

	while (*pp && *pp != n)
		pp = &(*pp)->next;
	if (*pp) {
		*pp = n->next;
		m->count--;
	}
	n->next = NULL;
}
