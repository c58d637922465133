/*
 * The table's lookup, inline: the front of every acquire walks one bucket
 * chain for a live entry of its key and, when it finds one (a key that is
 * held, awaited or idle), never calls into table.c. Inserting (table.c)
 * walks the same way, from the head it then CASes against.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_TABLE_H
#define KM_TABLE_H

#include "internal.h"

#define KM_MARK ((uintptr_t)1)

/* The shard from the hash's top bits, the bucket from its low bits. */
static inline uintptr_t *km_bucket(struct km *km, uint32_t h)
{
	struct km_shard *sh = &km->shards[km->nshards > 1 ? (h >> km->shard_shift) : 0];

	return &sh->buckets[h & sh->mask];
}

static inline uint64_t km_word(const unsigned char *p, size_t n)
{
	uint64_t v = 0;

	memcpy(&v, p, n);	/* n is 4 or 8 here: one load */
	return v;
}

/*
 * Do len bytes at a and b match? Keys up to 16 bytes (the common case: ids,
 * hashes) compare inline with two possibly overlapping loads per side, as
 * the hash reads them, instead of a call to memcmp (~18 instructions of the
 * recurring-key path under callgrind).
 */
static inline bool km_key_eq(const unsigned char *a, const unsigned char *b, size_t len)
{
	if (len >= 8 && len <= 16)
		return ((km_word(a, 8) ^ km_word(b, 8)) |
			(km_word(a + len - 8, 8) ^ km_word(b + len - 8, 8))) == 0;
	if (len >= 4 && len < 8)
		return ((km_word(a, 4) ^ km_word(b, 4)) |
			(km_word(a + len - 4, 4) ^ km_word(b + len - 4, 4))) == 0;
	return len == 0 || memcmp(a, b, len) == 0;
}

static inline bool km_entry_is(const struct km_entry *e, uint32_t tag,
			       const void *key, size_t len)
{
	return e->hash == tag && e->len == len && km_key_eq(e->key, key, len);
}

/*
 * The first live entry of the key in the chain from head, or NULL. Inside a
 * read-side section. Skips entries whose next is marked (being unlinked) or
 * whose state is DEAD. Acquire on the state: seeing DEAD must order us after
 * the last holder's release, since we may then insert a fresh entry and hold
 * the key without touching this one.
 */
static inline struct km_entry *km_chain_find(uintptr_t head, uint32_t h,
					     const void *key, size_t len)
{
	for (uintptr_t p = head; p != 0;) {
		struct km_entry *e = (struct km_entry *)p;
		uintptr_t next = km_load_acquire(&e->next);

		if (!(next & KM_MARK) && km_entry_is(e, h, key, len) &&
		    !km_s_dead(km_load_acquire(&e->state)))
			return e;
		p = next & ~KM_MARK;
	}
	return NULL;
}

/* The live entry of the key, or NULL: then *head is the bucket value whose
 * chain had none, for km_table_insert to CAS against. */
static inline struct km_entry *km_table_find(struct km *km, uint32_t h,
					     const void *key, size_t len, uintptr_t *head)
{
	*head = km_load_acquire(km_bucket(km, h));
	return km_chain_find(*head, h, key, len);
}

#endif /* KM_TABLE_H */
