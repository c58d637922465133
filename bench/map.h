/*
 * km-bench: a plain chained hash map for the strategies that guard their map
 * with one mutex (naive, global, pooled). Not thread-safe: the caller holds
 * the strategy's mutex around every call. Grows (doubles) at load factor 1,
 * never shrinks, like the dictionaries the seeds used.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_BENCH_MAP_H
#define KM_BENCH_MAP_H

#include <stddef.h>
#include <stdint.h>

struct bmap_node {
	struct bmap_node *next;
	uint64_t hash;
	size_t len;
	const unsigned char *key;	/* the entry's own copy */
};

struct bmap {
	struct bmap_node **b;
	size_t mask;
	size_t count;
};

int bmap_init(struct bmap *m, size_t buckets);	/* 0 or ENOMEM */
void bmap_fini(struct bmap *m);
struct bmap_node *bmap_find(const struct bmap *m, uint64_t hash, const void *key, size_t len);
void bmap_insert(struct bmap *m, struct bmap_node *n);	/* n->hash/len/key set; key absent */
void bmap_remove(struct bmap *m, struct bmap_node *n);	/* n must be in m */

#define bench_container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

#endif /* KM_BENCH_MAP_H */
