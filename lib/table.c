/*
 * The sharded lock-free table.
 *
 * Each shard is an array of buckets; each bucket a singly linked chain of
 * entries. All operations are lock-free and run inside an RCU read-side
 * section:
 *
 *  - find-or-insert walks the chain for a live entry of the key; if there is
 *    none it pushes a fresh entry at the chain's head with one CAS on the
 *    bucket. Entries are only ever inserted at the head, so if the head has
 *    not changed since the walk began, no live entry of the key was added
 *    meanwhile: two fresh entries for one key can never both be live.
 *  - unlink (Harris/Michael): the entry's own next pointer is marked first
 *    (logical deletion, after which nothing is linked behind it), then the
 *    predecessor's pointer is swung past it. Any walker that meets a marked
 *    node may finish the unlink; only the thread that killed the entry
 *    retires it, once it is unreachable.
 *
 * Entries are never freed while a reader may hold a pointer to them: retired
 * entries wait for an RCU grace period (pool.c).
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"
#include "table.h"

struct km_entry *km_table_insert(struct km *km, uint32_t h, const void *key,
				 size_t len, uint64_t born, uintptr_t head, bool *inserted)
{
	uintptr_t *bucket = km_bucket(km, h);
	struct km_entry *fresh = NULL;

	/* head: a value of the bucket whose chain the caller (or the previous
	 * round) walked and found no live entry of the key in. */
	for (;;) {
		if (fresh == NULL) {
			fresh = km_entry_alloc(km, len);
			if (fresh == NULL)
				return NULL;
			fresh->hash = h;
			fresh->len = (uint32_t)len;
			if (len != 0)
				memcpy(fresh->key, key, len);
			fresh->owner = NULL;
			km_store_relaxed(&fresh->recursion, 0);	/* atomic everywhere (acquire.c) */
			fresh->qlock = 0;
			fresh->qtail = NULL;
			fresh->qshared = 0;	/* batch_next's union: stale after reuse */
			fresh->state = born;
		}
		fresh->next = head;
		/* Publish: release orders the key bytes and the born state before
		 * the pointer. Acquire on success too: the head we expect may be
		 * a value written by an unlink after our walk (another thread
		 * inserted, held and removed an entry of this key meanwhile: ABA
		 * on the head), and holding the key must order us after that
		 * holder's release. On failure a new head was pushed or the first
		 * node was unlinked, and the walk must see the chain again. */
		if (__atomic_compare_exchange_n(bucket, &head, (uintptr_t)fresh, false,
						__ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			*inserted = true;
			return fresh;
		}
		struct km_entry *e = km_chain_find(head, h, key, len);

		if (e != NULL) {
			km_entry_retire(km, fresh);	/* never published */
			*inserted = false;
			return e;
		}
	}
}

void km_table_unlink(struct km *km, struct km_entry *e)
{
	uintptr_t *bucket = km_bucket(km, e->hash);
	uintptr_t next = km_load_relaxed(&e->next);

	/* Logical deletion: mark our next pointer. Retries only when a helper
	 * unlinked our successor and changed it; already marked (the seed-bug
	 * test build unlinks early) is fine. */
	while (!(next & KM_MARK) &&
	       !km_cas_acq_rel(&e->next, &next, next | KM_MARK))
		;

restart:
	for (uintptr_t *prev = bucket;;) {
		uintptr_t cur = km_load_acquire(prev);

		if (cur & KM_MARK)
			goto restart;	/* our predecessor is being deleted */
		if (cur == 0)
			return;		/* e is no longer reachable: someone unlinked it */
		struct km_entry *c = (struct km_entry *)cur;
		uintptr_t cnext = km_load_acquire(&c->next);

		if (cnext & KM_MARK) {
			/* c is deleted: swing prev past it. Fails when prev changed
			 * (a head insert, another unlink) or prev got marked. */
			if (!km_cas_acq_rel(prev, &cur, cnext & ~KM_MARK))
				goto restart;
			if (c == e)
				return;
			continue;	/* prev now points past c */
		}
		prev = &c->next;
	}
}

/*
 * Walks, inside a read-side section: fn sees every entry that is linked, not
 * marked and not DEAD when the walk passes it, with that state word; a
 * non-zero return ends the walk with that value. km_table_walk_buckets
 * walks at most nbuckets whole buckets from *cursor (an index over all
 * shards' buckets, below km_table_buckets()) and leaves *cursor past the
 * last bucket it entered, so a caller can leave the section between two
 * calls and resume.
 */
size_t km_table_buckets(const struct km *km)
{
	return (size_t)km->nshards * (km->shards[0].mask + 1);	/* every shard alike */
}

int km_table_walk_buckets(struct km *km, size_t *cursor, size_t nbuckets,
			  km_walk_fn *fn, void *arg)
{
	size_t per_shard = km->shards[0].mask + 1, end = km_table_buckets(km);

	if (nbuckets < end - *cursor)
		end = *cursor + nbuckets;
	while (*cursor < end) {
		size_t i = (*cursor)++;
		struct km_shard *sh = &km->shards[i / per_shard];

		for (uintptr_t p = km_load_acquire(&sh->buckets[i % per_shard]); p != 0;) {
			struct km_entry *e = (struct km_entry *)(p & ~KM_MARK);
			uintptr_t next = km_load_acquire(&e->next);
			uint64_t st = km_load_acquire(&e->state);

			if (!(next & KM_MARK) && !km_s_dead(st)) {
				int r = fn(e, st, arg);

				if (r != 0)
					return r;
			}
			p = next & ~KM_MARK;
		}
	}
	return 0;
}

int km_table_walk(struct km *km, km_walk_fn *fn, void *arg)
{
	size_t cursor = 0;

	return km_table_walk_buckets(km, &cursor, SIZE_MAX, fn, arg);
}
