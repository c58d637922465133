/*
 * keymutex internals: the shapes every lib/ file shares. Never installed.
 *
 * One concern per file:
 *   state.h    the entry's state word and the grant rules
 *   atomic.h   the few atomic operations used, spelled as GCC __atomic builtins
 *   rcu.h      read-side sections and reclamation annotations
 *   hash.h     the keyed multiply-mix hash (hash.c: its secrets)
 *   table.h    the table's inline lookup (bucket, key compare, chain walk)
 *   table.c    the sharded lock-free table: find-or-insert, unlink, walks
 *   pool.c     entry allocation, the bounded pool, idle rings, retirement in batches
 *   reclaim.c  the reclaimer thread: grace periods, then pool or free
 *   wait.c     the per-key wait queue: enqueue, dispatch (grant/wake), park
 *   take.h     the front of every acquire: find or insert, take at once
 *   acquire.c  km_acquire / km_unlock and the shorthands
 *   multi.c    km_acquire_all / km_unlock_all
 *   token.c    cancellation tokens
 *   async.c    km_acquire_async, completions, ports
 *   timer.c    the timer thread that fires async deadlines
 *   stats.c    km_stats, km_query
 *   km.c       km_create, km_destroy, options
 *   testhook.c TEST ONLY: named interleaving points (testhook.h)
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_INTERNAL_H
#define KM_INTERNAL_H

#define KM_BUILDING_LIBRARY 1
#include "keymutex.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "atomic.h"
#include "rcu.h"
#include "state.h"
#include "testhook.h"

#define KM_HIDDEN __attribute__((visibility("hidden")))
#define KM_CACHELINE 64
#define KM_ALIGNED __attribute__((aligned(KM_CACHELINE)))
#define km_likely(x) __builtin_expect(!!(x), 1)
#define km_unlikely(x) __builtin_expect(!!(x), 0)
#define km_container_of(p, type, member) \
	((type *)(void *)((char *)(p) - offsetof(type, member)))

struct km_waiter;
struct km_done;

/*
 * One key's entry. Reachable from its bucket while linked; readers that found
 * it inside an RCU read-side section may keep reading it until they leave that
 * section, even after it died and was unlinked, so fields read without a
 * reference (next, state, hash, len, key, owner, qlock) keep their meaning
 * until the grace period ends. Fields only touched after death (link,
 * depth, batch_next, and qtail once WAIT is 0) are never read by such readers;
 * qshared, batch_next's twin, is set at birth, then touched only under the qlock.
 */
struct km_entry {
	uintptr_t next;			/* bucket chain; bit 0: logically deleted (Harris) */
	uint64_t state;			/* the state word (state.h) */
	uint32_t hash;			/* the keyed hash: picks shard and bucket, cheap compare */
	uint32_t len;			/* key length */
	uint32_t qlock;			/* queue lock: 0 free, 1 held */
	union {
		uint32_t recursion;	/* nested holds of the owner (owner tables) */
		uint32_t depth;		/* on a retire stack: its depth; batch head: stripe */
	};
	union {
		struct km_waiter *qtail; /* wait queue, circular: qtail->next is the head;
					   read only under qlock with WAIT > 0, when
					   the entry cannot die */
		struct km *retire_km;	/* batch head only: the table it returns to */
	};
	const void *owner;		/* exclusive owner (owner tables), else NULL */
	struct km_entry *link;		/* pool / retire stack link */
	union {
		struct km_entry *batch_next; /* batch head only (dead): the next queued batch */
		uint32_t qshared;	/* live: shared requests in the queue; under the
					   qlock, 0 whenever WAIT is 0, set at birth */
	};
	unsigned char key[];		/* len bytes */
};

/* Size classes: entries with short keys are pooled by key capacity. */
#define KM_CLASSES 4
#define KM_CLASS_STEP 16		/* capacities 16, 32, 48, 64 */
#define KM_POOLED_KEYLEN (KM_CLASSES * KM_CLASS_STEP)

static inline unsigned km_class_of(size_t len)
{
	return len == 0 ? 0 : (unsigned)((len - 1) / KM_CLASS_STEP);
}

/* A waiter: one queued request, sync or async. Fits km_request.priv. */
/* Waiter status. 0 = never queued (a zeroed or failed request). */
enum { KM_W_QUEUED = 1, KM_W_GRANTED = 2, KM_W_TIMEDOUT = 3, KM_W_CANCELLED = 4, KM_W_DONE = 5,
       KM_W_PREP = 6 };
#define KM_WF_SHARED 0x1u		/* wants shared mode */
#define KM_WF_ASYNC  0x2u		/* an async request (granted directly, completed by callback) */
#define KM_WF_WOKEN  0x4u		/* barging wake delivered, not yet acted on */
#define KM_WF_TIMED  0x8u		/* async: registered with the timer */

struct km_waiter {
	struct km_waiter *next, *prev;	/* circular queue links, under the entry's qlock */
	struct km_entry *entry;		/* the entry it waits on (holds a waiter count) */
	uint32_t status;		/* KM_W_*; changed under qlock, read atomically */
	uint16_t flags;			/* KM_WF_*; WOKEN changes under the qlock, atomically,
				   since a token cancel reads ASYNC without it */
	uint16_t cancel;		/* set by a token cancel (sync) */
	struct km_token *token;		/* registered with, or NULL */
	struct km_waiter *tnext, *tprev; /* token registration links, under the token lock */
	uint32_t futex;			/* sync: KM_FX_* (wait.c); async: the result */
	uint32_t heap_idx;		/* async: index in the timer heap + 1, 0 = none */
};
_Static_assert(sizeof(struct km_waiter) <= 8 * sizeof(uintptr_t),
	       "an async waiter lives in km_request.priv");

#define KM_IDLE_RING 1024		/* idle ring slots per stripe (at most) */

/* A thread's stripe of per-table state: mostly touched by one thread. */
struct km_stripe {
	struct km_entry *pool[KM_CLASSES]; /* free entries, Treiber stacks */
	struct km_entry *retire;	/* dead entries waiting for a batch */
	uint32_t pool_pops;		/* pops from this stripe's pools (atomic; km->pool_free
					   is lowered once per KM_POOL_SYNC of them) */
	uint32_t idle_cap;		/* slots of this stripe's idle ring */
	uint32_t idle_pos;		/* next ring slot to fill (atomic counter) */
	struct km_entry **idle;		/* the idle ring, allocated on first use */
	uint64_t acquired, contended, timeouts, cancels, rejected;
} KM_ALIGNED;

#define KM_STRIPES 64			/* power of two */
#define KM_RETIRE_BATCH 64		/* dead entries per reclaimer batch */
#define KM_INFLIGHT_MAX 1024		/* batches in flight before releasers wait (~6 MiB):
					   a grace period can take 10 ms (liburcu sleeps
					   when a reader is preempted in its section) */

struct km_shard {
	uintptr_t *buckets;		/* bucket heads (entry pointers) */
	size_t mask;			/* buckets - 1 */
} KM_ALIGNED;

struct km {
	uint64_t seed[4];		/* hash secrets, random per table */
	unsigned shard_shift;		/* 64 - log2(shards) */
	unsigned nshards;
	unsigned max_holders;		/* >= 1 */
	unsigned max_waiters;		/* 0 = unlimited */
	unsigned flags;			/* KM_FIFO | KM_RECURSIVE | KM_ERRORCHECK */
	size_t pool_size;
	size_t pool_free;		/* entries on the pool stacks, all stripes (atomic); may
					   count up to KM_POOL_SYNC - 1 popped ones per stripe */
	size_t pool_free_cap;		/* its bound: pool_size less the idle share */
	unsigned long inflight;		/* retire batches awaiting their grace period */
	size_t idle_count;		/* ring slots filled, all stripes (atomic) */
	size_t idle_limit;		/* their bound: pool_size less the free share */
	struct km_shard *shards;
	struct km_stripe stripes[KM_STRIPES];
};

#define KM_OWNER_FLAGS (KM_RECURSIVE | KM_ERRORCHECK)

/* hash.c */
#include "hash.h"		/* km_hash, inline */
KM_HIDDEN void km_random_seed(uint64_t seed[4]);

/* table.c */
/* Insert-if-absent after a walk from head found no live entry of the key
 * (table.h): returns the fresh entry (*inserted) or the live one another
 * thread inserted meanwhile; NULL without memory. */
KM_HIDDEN struct km_entry *km_table_insert(struct km *km, uint32_t h,
					   const void *key, size_t len, uint64_t born,
					   uintptr_t head, bool *inserted);
KM_HIDDEN void km_table_unlink(struct km *km, struct km_entry *e);
typedef int km_walk_fn(struct km_entry *e, uint64_t state, void *arg);
KM_HIDDEN int km_table_walk(struct km *km, km_walk_fn *fn, void *arg);
KM_HIDDEN size_t km_table_buckets(const struct km *km);
KM_HIDDEN int km_table_walk_buckets(struct km *km, size_t *cursor, size_t nbuckets,
				    km_walk_fn *fn, void *arg);

/* pool.c */
KM_HIDDEN struct km_entry *km_entry_alloc(struct km *km, size_t len);
KM_HIDDEN void km_entry_retire(struct km *km, struct km_entry *e);
KM_HIDDEN int km_pool_prefill(struct km *km, size_t n);
KM_HIDDEN void km_pool_drain(struct km *km);
KM_HIDDEN void km_retire_flush_all(struct km *km);
KM_HIDDEN size_t km_pool_count(struct km *km);
KM_HIDDEN bool km_idle_push(struct km *km, struct km_entry *e);
KM_HIDDEN void km_idle_flush(struct km *km);
KM_HIDDEN void km_idle_evict(struct km *km, struct km_entry *e);
KM_HIDDEN void km_reclaim_backpressure(struct km *km);

/* reclaim.c */
KM_HIDDEN void km_reclaim_batch(struct km_entry *batch);
KM_HIDDEN void km_reclaim_enqueue(struct km_entry *batch);
KM_HIDDEN void km_reclaim_wait(void);
KM_HIDDEN void km_global_init(void);
/* The calling thread's stripe: a slot number drawn once per thread (pool.c),
 * inline because every acquire counts itself there. */
extern KM_HIDDEN __thread unsigned km_tls_slot
	__attribute__((tls_model("initial-exec")));	/* slot + 1; 0 = none yet */
KM_HIDDEN unsigned km_slot_draw(void);

static inline unsigned km_slot(void)
{
	unsigned s = km_tls_slot;

	if (km_unlikely(s == 0))
		s = km_slot_draw();
	return (s - 1) & (KM_STRIPES - 1);
}

static inline struct km_stripe *km_my_stripe(struct km *km)
{
	return &km->stripes[km_slot()];
}
KM_HIDDEN void *km_malloc(size_t size);

/* wait.c */
KM_HIDDEN void km_qlock(struct km_entry *e);
KM_HIDDEN void km_qunlock(struct km_entry *e);
KM_HIDDEN void km_dispatch(struct km *km, struct km_entry *e, struct km_done *done);
KM_HIDDEN void km_queue_remove(struct km_entry *e, struct km_waiter *w);
KM_HIDDEN void km_queue_append(struct km_entry *e, struct km_waiter *w);
KM_HIDDEN bool km_leave_queue(struct km *km, struct km_entry *e, struct km_waiter *w,
			     struct km_done *done);
KM_HIDDEN void km_kill(struct km *km, struct km_entry *e);
#define KM_RETRY (-1)			/* the entry died under us: look the key up again */
KM_HIDDEN int km_wait_sync(struct km *km, struct km_entry *e, unsigned wflags,
			   const struct timespec *deadline, struct km_token *tok,
			   bool *contended);
KM_HIDDEN int km_futex_wait(uint32_t *addr, uint32_t val, const struct timespec *deadline);
KM_HIDDEN uint64_t km_deadline_ns(const struct timespec *deadline);
KM_HIDDEN void km_futex_wake(uint32_t *addr);
KM_HIDDEN bool km_waiter_signal(struct km_waiter *w);
KM_HIDDEN uint64_t km_now_ns(void);
KM_HIDDEN bool km_deadline_passed(const struct timespec *deadline);

/*
 * Grants and wakes decided under a qlock, delivered after it: futex wakes of
 * sync waiters (by address: a sync waiter may return as soon as it sees its
 * futex word set, so its node is not touched after the qlock is dropped) and
 * completions of async requests (whose nodes live until ready() ran).
 */
#define KM_DONE_WAKES 64		/* a phase's readers: wakes after the qlock */
struct km_done {
	struct km_waiter *async_first;	/* singly linked through ->next */
	struct km_waiter **async_tail;
	unsigned nwake;
	uint32_t *wake[KM_DONE_WAKES];
};
static inline void km_done_init(struct km_done *d)
{
	d->async_first = NULL;
	d->async_tail = &d->async_first;
	d->nwake = 0;
}
KM_HIDDEN void km_done_deliver(struct km_done *d);
KM_HIDDEN void km_done_async(struct km_done *d, struct km_waiter *w);

_Static_assert(KM_MAX_WAITERS <= (KM_S_WAIT_MASK >> KM_S_WAIT_SHIFT),
	       "the state word's WAIT field must hold KM_MAX_WAITERS");

/* Waiters a key may have: max_waiters, or with 0 ("unlimited") what the
 * state word's WAIT field holds. One more would carry into WAKING. */
static inline unsigned km_waiter_limit(const struct km *km)
{
	return km->max_waiters != 0 ? km->max_waiters : KM_MAX_WAITERS;
}

/*
 * Phase-fair shared mode (mutex tables without KM_FIFO): when an exclusive
 * hold ends, every queued shared request is granted together (RPEND), then
 * the next exclusive request; shared newcomers queue while any request
 * waits. KM_FIFO mutex tables keep strict queue order (Web Locks); keyed
 * semaphores have no shared mode.
 */
static inline bool km_phase_fair(const struct km *km)
{
	return km->max_holders == 1 && !(km->flags & KM_FIFO);
}

/*
 * May a newcomer take the key now, given the waiters queued ahead of it?
 * Shared: only with nobody queued. On a phase-fair table a queue under a
 * shared hold holds an exclusive request (queued readers are granted as soon
 * as no exclusive request is ahead of them and no exclusive hold exists, and
 * at the end of every exclusive hold), so "nobody queued" is "no writer
 * waits", up to the instant between a grantable state and its dispatch: the
 * reader fast path is this test and one CAS, no qlock. Exclusive, without
 * KM_FIFO: barge unless the head must be served directly (HANDOFF, which a
 * queued shared request keeps set on phase-fair tables) or a writer phase's
 * readers are owed the key (RPEND).
 */
static inline bool km_may_barge(const struct km *km, uint64_t s, bool shared)
{
	if (!km_s_compatible(s, shared, km->max_holders))
		return false;
	if (km_s_waiters(s) == 0)
		return true;
	if (shared || (km->flags & KM_FIFO))
		return false;		/* shared: never ahead of a queued request */
	return !(s & (KM_S_HANDOFF | KM_S_RPEND));
}

/* acquire.c */
KM_HIDDEN void km_guard_fill(struct km_guard *g, struct km *km, struct km_entry *e,
			     unsigned wflags, const void *owner);
KM_HIDDEN void km_guard_held(struct km_guard *g, struct km *km, struct km_entry *e,
			     unsigned wflags, const void *owner);
KM_HIDDEN const void *km_owner_of(const struct km_lock_options *opt);
KM_HIDDEN int km_check_lock_options(const struct km *km, const struct km_lock_options *opt);
KM_HIDDEN int km_key_ok(const void *key, size_t len);
KM_HIDDEN void km_count(struct km *km, int outcome);

/* token.c */
KM_HIDDEN int km_token_register(struct km_token *t, struct km_waiter *w);
KM_HIDDEN void km_token_unregister(struct km_token *t, struct km_waiter *w);
KM_HIDDEN bool km_token_cancelled(const struct km_token *t);

/* async.c */
KM_HIDDEN void km_async_complete(struct km_waiter *w);
KM_HIDDEN int km_async_try_cancel(struct km_waiter *w, uint32_t why, bool registry,
				  struct km_done *done);

/* timer.c */
KM_HIDDEN int km_timer_add(struct km_waiter *w, const struct timespec *deadline);
KM_HIDDEN void km_timer_remove(struct km_waiter *w);

/* test hooks (tests only; compiled to nothing otherwise): testhook.h */
#ifdef KM_TEST_HOOKS
KM_HIDDEN int km_hook(enum km_hook_point p, void *arg);
#else
static inline int km_hook(enum km_hook_point p, void *arg)
{
	(void)p;
	(void)arg;
	return 0;
}
#endif

/* fault injection (tests only; compiled to nothing otherwise) */
#ifdef KM_FAULT_INJECTION
KM_HIDDEN bool km_fault_hit(void);
#else
static inline bool km_fault_hit(void) { return false; }
#endif

#endif /* KM_INTERNAL_H */
