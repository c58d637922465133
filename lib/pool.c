/*
 * Entry memory: allocation, the bounded pool of free entries, and
 * retirement of dead entries through RCU in batches of 64 (reclaim.c).
 *
 * Each table has KM_STRIPES stripes; a thread uses the stripe of its slot
 * (a number it draws once), so the pool and retire stacks it touches are
 * almost always its own cache lines. Entries with keys up to
 * KM_POOLED_KEYLEN bytes come in KM_CLASSES size classes and are pooled;
 * longer keys get an exact allocation that is freed after its grace period.
 *
 * A reclaimed entry goes back to the pool of the stripe that retired it,
 * which is usually the stripe that will allocate the next one: a thread
 * churning through new keys gets its own entries back without malloc, and
 * the reclaimer thread frees nothing it allocated. The pools' bound is
 * table-wide (km->pool_free against km->pool_free_cap), so one busy stripe
 * may use all of it: the reclaimer reserves room for a whole batch with one
 * atomic update, and pops lower the count once per KM_POOL_SYNC.
 *
 * ABA on the pool stacks: a pop reads head A and A->link, then CASes the head
 * from A to A->link. A can only come back onto a pool stack through a grace
 * period (every push of a used entry happens in the reclaimer), and every
 * pop runs inside a read-side section, so A cannot leave and return while a
 * pop that saw it is in progress. Entries that were never published (a lost
 * insert race) are retired the same way, not pushed back directly.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <stdlib.h>

static unsigned km_next_slot;			/* slot numbers handed out so far */
__thread unsigned km_tls_slot __attribute__((tls_model("initial-exec")));

/* The calling thread's first slot: drawn once, never 0 (internal.h). */
unsigned km_slot_draw(void)
{
	unsigned s = __atomic_add_fetch(&km_next_slot, 1, __ATOMIC_RELAXED);

	if (s == 0)		/* wrapped after 2^32 threads */
		s = __atomic_add_fetch(&km_next_slot, 1, __ATOMIC_RELAXED);
	km_tls_slot = s;
	return s;
}

void *km_malloc(size_t size)
{
	if (km_fault_hit())
		return NULL;
	return malloc(size);
}

static size_t km_entry_size(unsigned cls)
{
	return sizeof(struct km_entry) + (size_t)(cls + 1) * KM_CLASS_STEP;
}

/* Pop from a pool stack; the caller is inside a read-side section. */
static struct km_entry *km_pool_pop(struct km_entry **top)
{
	struct km_entry *e = km_load_acquire(top);

	/* Retries when another pop or a push moved the head meanwhile. */
	while (e != NULL &&
	       !km_cas_acquire(top, &e, km_load_relaxed(&e->link)))
		;
	return e;
}

/* Push onto a pool stack (room for it was reserved in km->pool_free). */
static void km_pool_push(struct km_entry **top, struct km_entry *e)
{
	struct km_entry *old = km_load_relaxed(top);

	/* Retries when a pop or another push moved the head meanwhile. */
	do {
		km_store_relaxed(&e->link, old);
	} while (!km_cas_release(top, &old, e));
}

#define KM_POOL_SYNC 32u	/* pops per stripe between updates of km->pool_free */

/* One entry left the pools: lower the table-wide count in bulk, so that a
 * pop touches the shared line once per KM_POOL_SYNC. Until then the count
 * is high, which only makes the reclaimer free a little early. */
static void km_pool_popped(struct km *km, struct km_stripe *st)
{
	if (__atomic_add_fetch(&st->pool_pops, 1, __ATOMIC_RELAXED) % KM_POOL_SYNC == 0)
		__atomic_fetch_sub(&km->pool_free, KM_POOL_SYNC, __ATOMIC_RELAXED);
}

/* Reserve room for up to want entries in the pools; returns how many. */
static size_t km_pool_reserve(struct km *km, size_t want)
{
	size_t cur = km_load_relaxed(&km->pool_free), take;

	/* Retries when a pop's bulk update or another reservation moved the
	 * count meanwhile. Relaxed: the count orders nothing, the stacks'
	 * CASes publish the entries. */
	do {
		size_t room = cur < km->pool_free_cap ? km->pool_free_cap - cur : 0;

		take = want < room ? want : room;
		if (take == 0)
			return 0;
	} while (!__atomic_compare_exchange_n(&km->pool_free, &cur, cur + take, false,
					      __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	return take;
}

struct km_entry *km_entry_alloc(struct km *km, size_t len)
{
	struct km_entry *e;

	if (len <= KM_POOLED_KEYLEN) {
		unsigned cls = km_class_of(len);
		struct km_stripe *st = km_my_stripe(km);

		e = km_pool_pop(&st->pool[cls]);
		if (e != NULL) {
			km_pool_popped(km, st);
			return e;
		}
		return km_malloc(km_entry_size(cls));
	}
	if (len > UINT32_MAX || len > SIZE_MAX - sizeof(struct km_entry))
		return NULL;
	return km_malloc(sizeof(struct km_entry) + len);
}

/* A grace period has passed since the batch was retired (reclaim.c):
 * back to the retiring stripe's pools as far as there is room, else free. */
void km_reclaim_batch(struct km_entry *e)
{
	struct km *km = e->retire_km;
	struct km_stripe *st = &km->stripes[km_load_relaxed(&e->depth)];
	size_t room = km_pool_reserve(km, KM_RETIRE_BATCH);

	__atomic_fetch_sub(&km->inflight, 1, __ATOMIC_RELAXED);
	while (e != NULL) {
		struct km_entry *next = e->link;

		if (room != 0 && e->len <= KM_POOLED_KEYLEN) {
			km_pool_push(&st->pool[km_class_of(e->len)], e);
			room--;
		} else {
			free(e);
		}
		e = next;
	}
	if (room != 0)
		__atomic_fetch_sub(&km->pool_free, room, __ATOMIC_RELAXED);
}

/* Hand a whole retire stack to the reclaimer. */
static void km_retire_flush(struct km *km, unsigned stripe)
{
	struct km_entry *batch = km_xchg_acq_rel(&km->stripes[stripe].retire, NULL);

	if (batch == NULL)
		return;
	batch->retire_km = km;			/* dead: qtail is free (internal.h) */
	km_store_relaxed(&batch->depth, stripe); /* the batch head's depth names its stripe */
	__atomic_fetch_add(&km->inflight, 1, __ATOMIC_RELAXED);
	km_reclaim_enqueue(batch);
}

/*
 * Bounded reclamation backlog. If the reclaimer falls behind (it shares the
 * CPUs with the threads that retire entries), retired memory would grow
 * without bound under churn. A releaser that finds too many batches in
 * flight waits for them. Never inside a read-side section (a km_unlock from
 * a km_query visit): the grace period would wait for us.
 */
void km_reclaim_backpressure(struct km *km)
{
	if (km_unlikely(km_load_relaxed(&km->inflight) > KM_INFLIGHT_MAX) &&
	    !urcu_bp_read_ongoing())
		km_reclaim_wait();
}

void km_entry_retire(struct km *km, struct km_entry *e)
{
	unsigned slot = km_slot();
	struct km_stripe *st = &km->stripes[slot];
	struct km_entry *old = km_load_relaxed(&st->retire);
	uint32_t depth;

	/* Retries when another thread of this slot pushed or flushed. */
	do {
		depth = old ? km_load_relaxed(&old->depth) + 1 : 1;
		km_store_relaxed(&e->link, old);
		km_store_relaxed(&e->depth, depth);
	} while (!km_cas_release(&st->retire, &old, e));
	if (depth >= KM_RETIRE_BATCH)
		km_retire_flush(km, slot);
}

int km_pool_prefill(struct km *km, size_t n)
{
	/* Spread the entries over the stripes and classes, smallest class first
	 * (the common short key). Nothing else sees the table yet. */
	if (n > km->pool_free_cap)
		n = km->pool_free_cap;
	for (size_t i = 0; i < n; i++) {
		struct km_stripe *st = &km->stripes[i % KM_STRIPES];
		struct km_entry *e = km_malloc(km_entry_size(0));

		if (e == NULL)
			return ENOMEM;
		e->len = 0;
		km_pool_push(&st->pool[0], e);
		km->pool_free++;
	}
	return 0;
}

/* Hand every stripe's retired entries to the reclaimer. */
void km_retire_flush_all(struct km *km)
{
	for (unsigned s = 0; s < KM_STRIPES; s++)
		km_retire_flush(km, s);
}

void km_pool_drain(struct km *km)
{
	km_retire_flush_all(km);
	km_reclaim_wait();	/* every batch of this table is reclaimed */
	for (unsigned s = 0; s < KM_STRIPES; s++) {
		for (unsigned c = 0; c < KM_CLASSES; c++) {
			struct km_entry *e = km->stripes[s].pool[c];

			while (e != NULL) {
				struct km_entry *next = e->link;

				free(e);
				e = next;
			}
			km->stripes[s].pool[c] = NULL;
		}
		km->stripes[s].pool_pops = 0;
	}
	km->pool_free = 0;
}

/*
 * Free entries on the pool stacks, from the counters alone: km->pool_free
 * less each stripe's pops not yet subtracted from it (km_pool_popped). Never
 * from the entries: a stack's top may be popped and live again by the time
 * we read it (its depth field is then another use of the same memory).
 * Exact when nothing runs; under load a recent value, clamped at 0.
 */
size_t km_pool_count(struct km *km)
{
	size_t unsynced = 0, n = km_load_relaxed(&km->pool_free);

	for (unsigned s = 0; s < KM_STRIPES; s++) {
		km_hook(KM_HOOK_POOL_COUNT, NULL);
		unsynced += km_load_relaxed(&km->stripes[s].pool_pops) % KM_POOL_SYNC;
	}
	return n > unsynced ? n - unsynced : 0;
}

/*
 * Idle entries. A release that leaves an entry unused keeps it in the table
 * (IDLEQ set in the same CAS) and puts it into its stripe's idle ring, a
 * fixed array filled round-robin: the entry it displaces, the oldest, is
 * evicted. A key that recurs within the ring's reach is found idle and taken
 * with one CAS, with no allocation, unlink or grace period.
 *
 * Only recurring keys are admitted (issue 12, review note 7): a release
 * keeps the entry idle only if its thread killed an entry of the same key
 * recently (a small per-thread filter of killed keys' hashes, acquire.c);
 * otherwise it kills it and notes the hash. So a stream of new keys never
 * fills the ring or evicts a cold victim, and a key that recurs is idle
 * from its second release on.
 */
void km_idle_evict(struct km *km, struct km_entry *e)
{
	uint64_t s = km_load_acquire(&e->state), n;

	/* Dead if still unused; otherwise it was revived and its next release
	 * that leaves it unused queues it again. Retries when an acquirer,
	 * holder or waiter changed the word meanwhile. */
	do {
		if (km_s_dead(s))
			return;
		n = km_s_unused(s) ? KM_S_DEAD : (s & ~KM_S_IDLEQ);
	} while (!km_cas_acq_rel(&e->state, &s, n));
	if (km_s_dead(n))
		km_kill(km, e);
}

/*
 * e has IDLEQ set by our release; the caller is in a read-side section.
 * Returns false if e cannot be kept (no ring memory): the caller evicts it.
 * The table-wide count changes only when a slot goes from empty to full or
 * back, so a warm ring costs one exchange per release.
 */
bool km_idle_push(struct km *km, struct km_entry *e)
{
	struct km_stripe *st = km_my_stripe(km);
	struct km_entry **ring = km_load_acquire(&st->idle);

	if (km_unlikely(ring == NULL)) {
		struct km_entry **fresh = km_malloc(st->idle_cap * sizeof *fresh);

		if (fresh == NULL)
			return false;
		memset(fresh, 0, st->idle_cap * sizeof *fresh);
		/* Another thread of this slot may have installed one first. */
		if (!km_cas_acq_rel(&st->idle, &ring, fresh))
			free(fresh);
		else
			ring = fresh;
	}
	uint32_t i = __atomic_fetch_add(&st->idle_pos, 1, __ATOMIC_RELAXED) % st->idle_cap;
	struct km_entry *victim = km_xchg_acq_rel(&ring[i], e);

	if (victim != NULL) {
		km_idle_evict(km, victim);
	} else if (__atomic_fetch_add(&km->idle_count, 1, __ATOMIC_RELAXED) >= km->idle_limit) {
		/* Over the table's bound: empty the slot again. */
		__atomic_fetch_sub(&km->idle_count, 1, __ATOMIC_RELAXED);
		victim = km_xchg_acq_rel(&ring[i], NULL);
		if (victim != NULL)
			km_idle_evict(km, victim);
	}
	return true;
}

/* Evict every idle entry and free the rings (km_destroy; nothing else runs). */
void km_idle_flush(struct km *km)
{
	km_rcu_read_lock();
	for (unsigned s = 0; s < KM_STRIPES; s++) {
		struct km_entry **ring = km->stripes[s].idle;

		if (ring == NULL)
			continue;
		for (unsigned i = 0; i < km->stripes[s].idle_cap; i++) {
			struct km_entry *e = km_xchg_acq_rel(&ring[i], NULL);

			if (e != NULL)
				km_idle_evict(km, e);
		}
	}
	km_rcu_read_unlock();
	for (unsigned s = 0; s < KM_STRIPES; s++) {
		free(km->stripes[s].idle);
		km->stripes[s].idle = NULL;
	}
	km->idle_count = 0;
}
