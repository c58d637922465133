/*
 * RCU for keymutex: liburcu's bulletproof flavor, so no caller ever
 * registers a thread (urcu-bp registers on first use and cleans up at thread
 * exit by itself).
 *
 * Read-side sections bracket every touch of an entry the caller holds no
 * count on: lookups, and the moments after a release or a waiter leaving,
 * when the entry may die under us. Retired entries are reclaimed (pooled or
 * freed) only by the reclaimer (reclaim.c), after a grace period.
 *
 * ThreadSanitizer: Debian's liburcu 0.13 carries no TSAN annotations, so a
 * grace period is invisible to it. We annotate our own reclamation: every
 * read-side exit releases km_rcu_tsan_sync and every reclamation acquires it
 * first, which tells TSAN exactly what the grace period guarantees (all
 * sections that could see the entry ended before it is reused).
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_RCU_H
#define KM_RCU_H

#define _LGPL_SOURCE 1		/* inline read-side fast paths (small functions, LGPL-permitted) */
#include <urcu/urcu-bp.h>

#ifdef KM_TSAN
#include <sanitizer/tsan_interface.h>
extern char km_rcu_tsan_sync;
#endif

static inline void km_rcu_read_lock(void)
{
	urcu_bp_read_lock();
}

static inline void km_rcu_read_unlock(void)
{
#ifdef KM_TSAN
	__tsan_release(&km_rcu_tsan_sync);
#endif
	urcu_bp_read_unlock();
}

/* Called by the reclaimer after each grace period, before it touches a batch. */
static inline void km_rcu_reclaim_begin(void)
{
#ifdef KM_TSAN
	__tsan_acquire(&km_rcu_tsan_sync);
#endif
}


#endif /* KM_RCU_H */
