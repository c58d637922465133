/*
 * TEST ONLY: named points on the library's paths where a test can stop a
 * thread, act in its place, or make a step fail, so that an interleaving
 * found by reading the code is replayed deterministically instead of hoped
 * for in a stress run. Built only with -Dtest_hooks=true (scripts/test.sh
 * turns it on for every test build); otherwise km_hook() is an empty inline
 * function and no km__ symbol exists.
 *
 * A test installs one function with km__hook_set(fn); the library calls
 * fn(point, arg) at each point below (arg: what the point names) and, at a
 * decision point, acts on a non-zero return. The hook runs on the thread that
 * reached the point, holding no internal lock unless the point says so.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_TESTHOOK_H
#define KM_TESTHOOK_H

enum km_hook_point {
	/* km_acquire_async registered its request (PREP) with the token and
	 * the timer and is about to take the entry's qlock; arg: the request.
	 * Inside a read-side section, no lock held. */
	KM_HOOK_ASYNC_PREPARED = 1,
	/* km_acquire_async failed before queueing (ECANCELED, ETIMEDOUT,
	 * EAGAIN) and left its read-side section; arg: the request. */
	KM_HOOK_ASYNC_LEFT = 2,
	/* A parked sync waiter returned from its sleep, before it looks at
	 * its status; arg: NULL. Outside any section and lock. */
	KM_HOOK_WAITER_AWAKE = 3,
	/* km_release dropped its hold and is about to dispatch the queue's
	 * head; arg: NULL. Inside a read-side section, no lock held. */
	KM_HOOK_RELEASE_DISPATCH = 4,
	/* An owner found itself as the key's owner and is about to take a
	 * nested hold; arg: NULL. Inside a read-side section. */
	KM_HOOK_NESTED = 5,
	/* Decision: the reclaimer thread is about to be created; a non-zero
	 * return makes the creation fail (as pthread_create would). Under the
	 * reclaimer's mutex: the hook must not call km_ functions. */
	KM_HOOK_RECLAIMER_CREATE = 6,
	/* A reclamation round (on the reclaimer thread or the fallback in
	 * km_reclaim_wait) took its batches and dropped the reclaimer's mutex,
	 * before the grace period; arg: NULL. */
	KM_HOOK_RECLAIM_ROUND = 7,
	/* km_stats is between two stripes of its count of pooled entries;
	 * arg: NULL. Inside a read-side section. */
	KM_HOOK_POOL_COUNT = 8,
	/* The timer thread fires a deadline; arg: the waiter (an async
	 * request's priv). Under the timer's mutex: the hook must not call
	 * km_ functions. */
	KM_HOOK_TIMER_FIRE = 9,
};

typedef int km__hook_fn(int point, void *arg);

#endif /* KM_TESTHOOK_H */
