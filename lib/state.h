/*
 * The entry's state word: everything that decides who may hold a key, in
 * one 64-bit word changed only by compare-and-swap.
 *
 *   bits  0..19  HOLD     holders now (1 for an exclusive hold, N for shared
 *                         holds or a keyed semaphore's holds)
 *   bit   20     X        the hold is exclusive (mutex tables only)
 *   bits 21..40  WAIT     waiters queued (sync and async), changed together
 *                         with the queue under the entry's qlock
 *   bit   41     WAKING   a queued waiter was woken to retry (barging mode);
 *                         releasers need not wake another
 *   bit   42     HANDOFF  newcomers must not barge: the head waiter is one
 *                         that only a direct grant serves (async, shared),
 *                         or has waited past the fairness bound; releasers
 *                         grant to it directly. Recomputed from the new
 *                         head whenever the head changes (wait.c); an
 *                         async or shared request sets it on joining even
 *                         behind a sync head (conservative: that head is
 *                         then granted directly too, until the next change
 *                         of head)
 *   bit   43     IDLEQ    the entry sits in an idle ring: when HOLD and WAIT
 *                         drop to zero it stays in the table, idle, for
 *                         the next acquire of its key (one CAS), until the
 *                         ring evicts it (pool.c). Set by a release that
 *                         leaves the word unused only on the key's second
 *                         sighting: its releasing thread killed an entry
 *                         of the key recently (acquire.c, km_release); a
 *                         first release kills, as without idle entries
 *   bit   44     RPEND    phase-fair tables only (mutex, no KM_FIFO): an
 *                         exclusive hold ended while shared requests may
 *                         wait (set with HANDOFF, which any queued shared
 *                         request keeps set there); the next dispatch
 *                         grants every queued shared request, wherever it
 *                         queues, before anything else, and clears it.
 *                         Until then nobody else may take the key: newcomers
 *                         do not barge, a woken head does not retry (wait.c)
 *   bit   63     DEAD     set in the CAS that leaves HOLD == WAIT == 0; a
 *                         dead entry is never revived (lookups skip it and
 *                         insert a fresh entry), it is unlinked and reclaimed
 *                         after an RCU grace period
 *
 * The count that keeps an entry alive is HOLD + WAIT, plus IDLEQ. Without
 * IDLEQ an entry dies exactly when the last holder or waiter leaves, in the
 * same CAS; with IDLEQ it dies when the idle ring evicts it and a CAS from
 * an unused word to DEAD succeeds. Either way the decision is one CAS on the
 * word every acquirer also CASes, so the seed's removal race cannot happen:
 * there is no moment where the count is zero but the entry is live and
 * unlinked, and no way to increment a dead one.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_STATE_H
#define KM_STATE_H

#include <stdbool.h>
#include <stdint.h>

#define KM_S_HOLD1	UINT64_C(1)
#define KM_S_HOLD_MASK	UINT64_C(0xFFFFF)
#define KM_S_X		(UINT64_C(1) << 20)
#define KM_S_WAIT1	(UINT64_C(1) << 21)
#define KM_S_WAIT_SHIFT	21
#define KM_S_WAIT_MASK	(UINT64_C(0xFFFFF) << 21)
#define KM_S_WAKING	(UINT64_C(1) << 41)
#define KM_S_HANDOFF	(UINT64_C(1) << 42)
#define KM_S_IDLEQ	(UINT64_C(1) << 43)
#define KM_S_RPEND	(UINT64_C(1) << 44)
#define KM_S_DEAD	(UINT64_C(1) << 63)

static inline unsigned km_s_holders(uint64_t s)
{
	return (unsigned)(s & KM_S_HOLD_MASK);
}

static inline unsigned km_s_waiters(uint64_t s)
{
	return (unsigned)((s & KM_S_WAIT_MASK) >> KM_S_WAIT_SHIFT);
}

static inline bool km_s_dead(uint64_t s)
{
	return (s & KM_S_DEAD) != 0;
}

/*
 * Could a request of this mode hold the key alongside the current holders?
 * max_holders == 1: exclusive needs no holder; shared needs no exclusive
 * holder. max_holders > 1 (keyed semaphore, no shared mode): fewer than
 * max_holders holders.
 */
static inline bool km_s_compatible(uint64_t s, bool shared, unsigned max_holders)
{
	unsigned h = km_s_holders(s);

	if (shared)
		return !(s & KM_S_X) && h < KM_S_HOLD_MASK;
	if (max_holders > 1)
		return h < max_holders;
	return h == 0;
}

/* The word after one more hold of this mode. */
static inline uint64_t km_s_take(uint64_t s, bool shared, unsigned max_holders)
{
	if (shared || max_holders > 1)
		return s + KM_S_HOLD1;
	return s + KM_S_HOLD1 + KM_S_X;
}

/* The word after one hold of this mode leaves (before the death check). */
static inline uint64_t km_s_put(uint64_t s)
{
	s -= KM_S_HOLD1;
	if (km_s_holders(s) == 0)
		s &= ~KM_S_X;
	return s;
}

/* Nothing holds or awaits the key: this word must be DEAD instead. */
static inline bool km_s_unused(uint64_t s)
{
	return (s & (KM_S_HOLD_MASK | KM_S_WAIT_MASK)) == 0;
}

#endif /* KM_STATE_H */
