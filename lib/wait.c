/*
 * The per-key wait queue: one queue per entry for sync and async, shared and
 * exclusive requests alike, so hand-off order, KM_FIFO, the fairness bound,
 * timeouts, cancellation and max_waiters live in one place.
 *
 * The queue and the WAIT count of the state word change together under the
 * entry's qlock, a tiny test-and-test-and-set lock held for a few pointer
 * updates. Holders never take it to acquire; a release takes it only when
 * the state word shows waiters that may proceed.
 *
 * Two ways a queued request gets the key:
 *  - barging mode (default, exclusive sync heads): the releaser drops its
 *    hold and wakes the head (WAKING), which retries like a newcomer. Fast
 *    under churn, as pthread mutexes are. A head that has waited longer than
 *    KM_STARVE_NS sets HANDOFF, after which newcomers queue and the next
 *    release grants to the head directly: nobody starves.
 *  - direct grant (KM_FIFO, HANDOFF, async requests, shared requests): the
 *    releaser (or whoever made the key grantable) takes the hold on the head's
 *    behalf in the state word and dequeues it; a run of shared heads is
 *    granted at once, in one CAS. One waiter (or one shared set) per
 *    release: no herd.
 *
 * Shared requests on a mutex table without KM_FIFO are phase-fair: when an
 * exclusive hold ends (RPEND, set by its release), every shared request
 * queued at that moment is granted together, in one CAS and one pass over
 * the queue, also those queued behind exclusive requests; then the next
 * exclusive request goes, when those readers have left. Shared newcomers
 * queue behind any waiting request, and while a shared request is queued
 * (HANDOFF) exclusive newcomers do not barge. So a reader waits for at most
 * one writer phase and a writer for at most one reader phase plus the
 * writers ahead of it. KM_FIFO tables keep strict queue order: a shared run
 * at the head, up to the next exclusive request (the Web Locks rule).
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

/* ck_backoff's default ceiling, 2^20 empty iterations (about 0.3 ms) per
 * failed try, turned a qlock held for a few pointer updates into
 * millisecond stalls under contention (the read-mostly bench scenario spent
 * 85% of its CPU there). A qlock hold is short: back off at most ~2k
 * iterations per try, then yield. Must precede the include. */
#define CK_BACKOFF_CEILING ((1 << 11) - 1)
#include <ck_backoff.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KM_STARVE_NS 1000000u		/* fairness bound: 1 ms */
#define KM_WOKEN_SPIN 100u		/* state-word re-reads of a woken head before it retries */

uint64_t km_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool km_deadline_passed(const struct timespec *deadline)
{
	struct timespec now;

	if (deadline == NULL)
		return false;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec > deadline->tv_sec ||
	       (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* A deadline in ns, saturating: absurdly far deadlines mean "never". */
uint64_t km_deadline_ns(const struct timespec *deadline)
{
	if (deadline->tv_sec < 0)
		return 0;
	if ((uint64_t)deadline->tv_sec >= UINT64_MAX / 1000000000u - 1)
		return UINT64_MAX;
	return (uint64_t)deadline->tv_sec * 1000000000u + (uint64_t)deadline->tv_nsec;
}

int km_futex_wait(uint32_t *addr, uint32_t val, const struct timespec *deadline)
{
	/* Beyond ~292 years the kernel may refuse the time: wait untimed. */
	if (deadline != NULL && deadline->tv_sec > ((time_t)1 << 40))
		deadline = NULL;
	/* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
	long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val,
			 deadline, NULL, FUTEX_BITSET_MATCH_ANY);

	if (r == -1 && errno == ETIMEDOUT)
		return ETIMEDOUT;
	return 0;		/* woken, value changed (EAGAIN) or EINTR: look again */
}

/*
 * Wake one sleeper on addr. The word may be gone by now: a sync waiter's
 * futex word lives on its stack, and the wake is delivered after the qlock
 * is dropped (km_done_deliver), so a waiter whose sleep ended on its own (a
 * timeout, a signal) may already have seen KM_FX_WAKE, returned, and reused
 * that stack memory. That is harmless, and relied upon:
 *  - a private futex wake keys on (process, address) and never touches the
 *    page: the call cannot fault or write anything, whatever lives there;
 *  - if some other futex sleeper now waits on that address (a later
 *    km_park, a glibc lock or condvar in a new stack frame), it gets one
 *    spurious wake-up, which every futex user must tolerate (futex(2):
 *    callers re-check their condition; glibc's locks loop, km_park loops
 *    until its word says KM_FX_WAKE).
 * The alternative, waking under the qlock, would make every grant hold the
 * queue lock across a syscall.
 */
void km_futex_wake(uint32_t *addr)
{
	syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 1, NULL, NULL, 0);
}

void km_qlock(struct km_entry *e)
{
	ck_backoff_t backoff = CK_BACKOFF_INITIALIZER;
	unsigned spins = 0;

	for (;;) {
		uint32_t free_ = 0;

		/* Test, then test-and-set: spin on a shared read, CAS only when
		 * the lock looks free; fails when another thread got it first. */
		if (km_load_relaxed(&e->qlock) == 0 &&
		    km_cas_acquire(&e->qlock, &free_, 1))
			return;
		if (++spins < 32) {
			ck_backoff_eb(&backoff);
		} else {
			/* The holder may be preempted (more threads than cores). */
			sched_yield();
		}
	}
}

void km_qunlock(struct km_entry *e)
{
	km_store_release(&e->qlock, 0);
}

void km_queue_append(struct km_entry *e, struct km_waiter *w)
{
	struct km_waiter *tail = e->qtail;

	if (tail == NULL) {
		w->next = w->prev = w;
	} else {
		struct km_waiter *head = tail->next;

		w->next = head;
		w->prev = tail;
		tail->next = w;
		head->prev = w;
	}
	e->qtail = w;
}

void km_queue_remove(struct km_entry *e, struct km_waiter *w)
{
	if (w->next == w) {
		e->qtail = NULL;
	} else {
		w->prev->next = w->next;
		w->next->prev = w->prev;
		if (e->qtail == w)
			e->qtail = w->prev;
	}
	w->next = w->prev = NULL;
}

/*
 * A sync waiter's futex word: KM_FX_WAIT from when it queues, KM_FX_PARKED
 * once it sleeps (or is about to) in the kernel, KM_FX_WAKE when something
 * happened to it. Wakers exchange in KM_FX_WAKE and make the syscall only
 * for a parked waiter: one not yet asleep sees the word change instead.
 */
#define KM_FX_WAIT   0u
#define KM_FX_WAKE   1u
#define KM_FX_PARKED 2u

/*
 * Wait until something happened to w (grant, wake, cancel) or the deadline
 * passed, asleep on the futex word. Returns with the word at KM_FX_WAKE, or
 * still waiting after a timeout; the caller consumes it. (Spinning here
 * first was tried: on a machine with more threads than cores the spinners
 * took the CPU the holders needed, and the read-mostly bench got slower.)
 */
static void km_park(struct km_waiter *w, const struct timespec *deadline)
{
	for (;;) {
		uint32_t v = KM_FX_WAIT;

		/* Announce the sleep; fails when the wake came first (or, after
		 * a spurious return, when we are already parked). */
		if (!km_cas_acquire(&w->futex, &v, KM_FX_PARKED) && v == KM_FX_WAKE)
			return;
		if (km_futex_wait(&w->futex, KM_FX_PARKED, deadline) == ETIMEDOUT)
			return;
	}
}

/* Tell a sync waiter to look again: true if it sleeps in the kernel and
 * needs the futex syscall. acq_rel: releases what we changed for it (its
 * status, the state word) and pairs with its announcement of the sleep. */
bool km_waiter_signal(struct km_waiter *w)
{
	return km_xchg_acq_rel(&w->futex, KM_FX_WAKE) == KM_FX_PARKED;
}

/* Record a sync waiter's wake: the futex word is set now, under the qlock;
 * the syscall, if it sleeps, comes after the qlock is dropped. */
static void km_done_wake(struct km_done *d, struct km_waiter *w)
{
	if (!km_waiter_signal(w))
		return;		/* not asleep yet: it sees the word */
	if (d->nwake < KM_DONE_WAKES)
		d->wake[d->nwake++] = &w->futex;
	else
		km_futex_wake(&w->futex);	/* rare: a long shared run */
}

/* An async request that left the queue (granted, timed out, cancelled):
 * complete it after the locks are dropped. */
void km_done_async(struct km_done *d, struct km_waiter *w)
{
	w->next = NULL;
	*d->async_tail = w;
	d->async_tail = &w->next;
}

static void km_done_grant(struct km_done *d, struct km_waiter *w)
{
	km_store_release(&w->status, (uint32_t)KM_W_GRANTED);
	if (w->flags & KM_WF_ASYNC)
		km_done_async(d, w);
	else
		km_done_wake(d, w);
}

void km_done_deliver(struct km_done *d)
{
	if (d->nwake == 0 && d->async_first == NULL)
		return;
	for (unsigned i = 0; i < d->nwake; i++)
		km_futex_wake(d->wake[i]);
	d->nwake = 0;
	for (struct km_waiter *w = d->async_first; w != NULL;) {
		struct km_waiter *next = w->next;

		km_async_complete(w);
		w = next;
	}
	d->async_first = NULL;
	d->async_tail = &d->async_first;
}

/*
 * The HANDOFF bit a queue headed by head (NULL: empty) calls for, with
 * qshared shared requests queued. A head that only a direct grant serves
 * (async: no thread to retry; shared: never barges) keeps newcomers out for
 * as long as it heads the queue, or a barger could take every gap between a
 * release and its dispatch and starve it. On a phase-fair table any queued
 * shared request does too: a barging writer would add a writer phase to its
 * wait (and, at a reader phase's end, pass the writer queued ahead of those
 * readers). Every change of head recomputes the bit from the new head; an
 * exclusive sync head sets it itself once past the fairness bound. A shared
 * request leaving from behind the head leaves the bit as it is (a starving
 * head's bit must survive): at worst newcomers keep out until the next
 * change of head.
 */
static uint64_t km_handoff_for(const struct km *km, const struct km_waiter *head,
			       uint32_t qshared)
{
	if (head == NULL)
		return 0;
	if (km_load_relaxed(&head->flags) & (KM_WF_ASYNC | KM_WF_SHARED))
		return KM_S_HANDOFF;
	return qshared != 0 && km_phase_fair(km) ? KM_S_HANDOFF : 0;
}

/* The queue's head once w (queued) has left it; under the qlock. */
static struct km_waiter *km_head_without(const struct km_entry *e, const struct km_waiter *w)
{
	struct km_waiter *head = e->qtail->next;

	if (head != w)
		return head;
	return w->next != w ? w->next : NULL;
}

/*
 * Grant queued shared requests, all in one CAS, then take them out of the
 * queue in one pass; under the qlock, with WAIT > 0. all: every shared
 * request in the queue, wherever it queues (a writer phase ended: RPEND,
 * cleared in the same CAS); else the run of shared requests at the head (a
 * shared head on a KM_FIFO table, or behind an exclusive request that left).
 * s: the word as last read. Returns false if nothing changed (the key is
 * held exclusively, or the run is empty).
 *
 * Holders can only fall while we hold the qlock with waiters queued (shared
 * newcomers do not barge past a queue, nobody else grants), so the room in
 * HOLD read once bounds the count; a set larger than HOLD can count (1M - 1
 * holders) is granted in queue order up to it, and RPEND stays set for the
 * rest, served by the dispatch of a later release.
 */
static bool km_grant_shared(struct km *km, struct km_entry *e, uint64_t s, bool all,
			    struct km_done *done)
{
	struct km_waiter *head = e->qtail->next, *w = head, *rest = NULL;
	uint32_t room, k = 0;
	uint64_t n;

	if (s & KM_S_X)
		return false;
	room = KM_S_HOLD_MASK - km_s_holders(s);
	/* The grantees: all, the first qshared shared requests in queue order
	 * (every one, but for the HOLD bound); else the run at the head. The
	 * first waiter left after them becomes the head: found by a walk that
	 * stops there (all: the count is qshared, not walked). */
	uint32_t want = all && e->qshared < room ? e->qshared : room;

	do {
		if (!(w->flags & KM_WF_SHARED) || k == want) {
			rest = w;
			break;
		}
		k++;
		w = w->next;
	} while (w != head);
	if (all)
		k = want;
	/* all with no grantee still clears RPEND (none left to serve). */
	if (k == 0 && !(all && (s & KM_S_RPEND) && e->qshared == 0))
		return false;
	/* Retries when a holder left or a barger's failed take left the word
	 * changed; nobody else can grant or queue (we hold the qlock) and
	 * nobody takes the key past RPEND or a queue (km_may_barge). */
	do {
		if (s & KM_S_X)		/* cannot happen; never grant beside one */
			return false;
		n = s + (uint64_t)k * KM_S_HOLD1 - (uint64_t)k * KM_S_WAIT1;
		if (all && k == e->qshared)	/* else the next dispatch goes on */
			n &= ~KM_S_RPEND;
		/* A new head decides whether newcomers keep out; an unchanged
		 * (exclusive) head keeps its bit, which may be its own,
		 * earned past the fairness bound. */
		if (rest != head)
			n = (n & ~KM_S_HANDOFF) | km_handoff_for(km, rest, e->qshared - k);
		if (km_s_waiters(n) == 0)
			n &= ~(KM_S_HANDOFF | KM_S_WAKING);
	} while (!km_cas_acq_rel(&e->state, &s, n));
	/* One pass: each grantee leaves the queue, its grant goes into done
	 * (the futex word set now, the syscall only for a sleeper, after the
	 * qlock; an async completion after every lock). */
	w = head;
	for (uint32_t left = k; left > 0;) {
		struct km_waiter *next = w->next;

		if (w->flags & KM_WF_SHARED) {
			km_queue_remove(e, w);
			km_done_grant(done, w);
			left--;
		}
		w = next;
	}
	e->qshared -= k;
	return true;
}

void km_dispatch(struct km *km, struct km_entry *e, struct km_done *done)
{
	bool pf = km_phase_fair(km);

	for (;;) {
		uint64_t s = km_load_acquire(&e->state);

		/* WAIT > 0 under our qlock: the entry cannot die, qtail is ours. */
		if (km_s_dead(s) || km_s_waiters(s) == 0)
			return;
		struct km_waiter *w = e->qtail->next;
		bool granted = false;

		/* Phase-fair: a writer phase ended; its readers go first, all of
		 * them, also those queued behind the next writer. */
		if (pf && (s & KM_S_RPEND)) {
			if (!km_grant_shared(km, e, s, true, done))
				return;
			continue;
		}
		if (w->flags & KM_WF_SHARED) {
			if (!km_s_compatible(s, true, km->max_holders) ||
			    !km_grant_shared(km, e, s, false, done))
				return;
			continue;
		}

		/* An exclusive head. Retries when a holder, a barger or a
		 * sharer changed the word. */
		for (;;) {
			if (!km_s_compatible(s, false, km->max_holders))
				return;
			if (pf && (s & KM_S_RPEND))
				break;	/* a writer phase ended meanwhile: readers first */
			bool direct = (km->flags & KM_FIFO) || (s & KM_S_HANDOFF) ||
				      (w->flags & KM_WF_ASYNC);

			if (!direct) {
				if (s & KM_S_WAKING)
					return;	/* the woken head is on its way */
				if (km_cas_acq_rel(&e->state, &s, s | KM_S_WAKING)) {
					__atomic_fetch_or(&w->flags, (uint16_t)KM_WF_WOKEN, __ATOMIC_RELAXED);
					km_done_wake(done, w);
					return;
				}
				continue;
			}
			uint64_t n = km_s_take(s, false, km->max_holders) - KM_S_WAIT1;

			/* The next head decides whether newcomers keep out. */
			n = (n & ~KM_S_HANDOFF) |
			    km_handoff_for(km, km_head_without(e, w), e->qshared);
			/* A head woken to retry and granted before it did: its
			 * wake is spent, so the word must stop saying one is on
			 * its way (else releasers would never wake the next). */
			if (w->flags & KM_WF_WOKEN)
				n &= ~KM_S_WAKING;
			if (km_cas_acq_rel(&e->state, &s, n)) {
				granted = true;
				break;
			}
		}
		if (!granted)
			continue;	/* RPEND: back to the top */
		__atomic_fetch_and(&w->flags, (uint16_t)~KM_WF_WOKEN, __ATOMIC_RELAXED);
		km_queue_remove(e, w);
		km_done_grant(done, w);
	}
}

/*
 * Take a queued waiter out of the queue and drop its count, under the qlock.
 * Returns true if that was the entry's last count: the entry is DEAD and the
 * caller must km_kill() it after dropping the qlock. Otherwise whoever can
 * proceed now that w is gone is dispatched into done.
 */
bool km_leave_queue(struct km *km, struct km_entry *e, struct km_waiter *w,
		    struct km_done *done)
{
	uint64_t s = km_load_relaxed(&e->state), n;
	bool was_head = e->qtail->next == w;

	if (w->flags & KM_WF_SHARED)
		e->qshared--;
	uint64_t handoff = km_handoff_for(km, km_head_without(e, w), e->qshared);

	km_queue_remove(e, w);
	/* Retries when holders or bargers changed the word. */
	do {
		n = s - KM_S_WAIT1;
		if (w->flags & KM_WF_WOKEN)
			n &= ~KM_S_WAKING;	/* we were the woken head */
		if (was_head)		/* a new head decides whether newcomers keep out */
			n = (n & ~KM_S_HANDOFF) | handoff;
		if (km_s_waiters(n) == 0)
			n &= ~(KM_S_HANDOFF | KM_S_WAKING | KM_S_RPEND);
		if (km_s_unused(n) && !(n & KM_S_IDLEQ))
			n = KM_S_DEAD;	/* an idle-ring entry waits for its eviction */
	} while (!km_cas_acq_rel(&e->state, &s, n));
	__atomic_fetch_and(&w->flags, (uint16_t)~KM_WF_WOKEN, __ATOMIC_RELAXED);
	if (km_s_dead(n))
		return true;
	km_dispatch(km, e, done);
	return false;
}

void km_kill(struct km *km, struct km_entry *e)
{
	km_table_unlink(km, e);
	km_entry_retire(km, e);
}

/*
 * Queue a sync request on e and sleep until granted, timed out or cancelled.
 * Called inside a read-side section, which it leaves (except on KM_RETRY:
 * the entry died before we joined; the caller looks the key up again).
 */
int km_wait_sync(struct km *km, struct km_entry *e, unsigned wflags,
		 const struct timespec *deadline, struct km_token *tok, bool *contended)
{
	struct km_waiter w;
	struct km_done done;
	bool shared = (wflags & KM_WF_SHARED) != 0;
	bool head;			/* at the queue's head when last looked (qlock) */
	uint64_t s, since;
	int rc;

	memset(&w, 0, sizeof w);
	w.flags = (uint16_t)wflags;
	w.entry = e;
	*contended = false;
	if (tok != NULL && km_token_register(tok, &w) != 0) {
		km_rcu_read_unlock();
		return ECANCELED;
	}
	km_qlock(e);
	s = km_load_acquire(&e->state);
	/* Join the queue, or take the key if it came free. Retries when a
	 * release, a barger or another waiter changed the word. */
	for (;;) {
		if (km_s_dead(s)) {
			km_qunlock(e);
			if (tok != NULL)
				km_token_unregister(tok, &w);
			return KM_RETRY;
		}
		if (km_may_barge(km, s, shared)) {
			if (km_cas_acquire(&e->state, &s, km_s_take(s, shared, km->max_holders))) {
				rc = 0;
				goto out_unlock;
			}
			continue;
		}
		if (km_s_waiters(s) >= km_waiter_limit(km)) {
			rc = EAGAIN;
			goto out_unlock;
		}
		/* A shared request is served only by direct grants: keep
		 * barging newcomers out until it is (see km_dispatch). */
		if (km_cas_acquire(&e->state, &s, (s + KM_S_WAIT1) | (shared ? KM_S_HANDOFF : 0)))
			break;
	}
	km_queue_append(e, &w);
	if (shared)
		e->qshared++;
	head = e->qtail->next == &w;
	km_qunlock(e);
	km_rcu_read_unlock();
	*contended = true;
	since = km_now_ns();

	for (;;) {
		/* An exclusive head that nobody wakes (bargers take the key
		 * between every release and its dispatch, which then finds it
		 * held and wakes nobody) wakes itself at the fairness bound to
		 * ask for a direct hand-off (below). Shared heads have HANDOFF
		 * already (km_handoff_for). */
		const struct timespec *park_deadline = deadline;
		struct timespec bound;

		if (head && !shared && !(km_load_relaxed(&e->state) & KM_S_HANDOFF)) {
			uint64_t due = since + KM_STARVE_NS + 1;

			if (deadline == NULL || km_deadline_ns(deadline) > due) {
				bound.tv_sec = (time_t)(due / 1000000000u);
				bound.tv_nsec = (long)(due % 1000000000u);
				park_deadline = &bound;
			}
		}
		km_park(&w, park_deadline);
		km_hook(KM_HOOK_WAITER_AWAKE, NULL);
		km_rcu_read_lock();
		km_qlock(e);
		/* Consume the wake-up (back to KM_FX_WAIT); acq_rel pairs with
		 * the waker's exchange, so its cancel flag is visible below. */
		(void)km_xchg_acq_rel(&w.futex, KM_FX_WAIT);
		if (km_load_relaxed(&w.status) == KM_W_GRANTED) {
			rc = 0;
			goto out_unlock;
		}
		bool woken = (w.flags & KM_WF_WOKEN) != 0;
		/* Not woken, but the head past the fairness bound with no
		 * hand-off asked for yet: retry as a woken head would. */
		bool overdue = !woken && !shared && e->qtail->next == &w &&
			       !(km_load_relaxed(&e->state) & KM_S_HANDOFF) &&
			       km_now_ns() - since > KM_STARVE_NS;

		if (woken || overdue) {
			bool take;
			uint64_t n;

			/* Still on our way (WAKING: releases wake nobody, so they
			 * stay cheap). If a barger holds the key, spin outside the
			 * qlock for it to leave, as a newcomer would, before
			 * retrying: going back to sleep costs the next releaser a
			 * futex wake and us a round trip. Our WAIT count keeps e
			 * alive; a direct grant meanwhile shows in our status. */
			if (!km_s_compatible(km_load_relaxed(&e->state), shared, km->max_holders)) {
				km_qunlock(e);
				for (unsigned i = 0; i < KM_WOKEN_SPIN; i++) {
					km_cpu_relax();
					if (km_s_compatible(km_load_relaxed(&e->state), shared,
							    km->max_holders))
						break;
				}
				km_qlock(e);
				if (km_load_relaxed(&w.status) == KM_W_GRANTED) {
					rc = 0;
					goto out_unlock;
				}
			}
			/* An overdue head may have been woken while it spun
			 * outside the qlock: then WAKING is its to clear too. */
			woken = (km_load_relaxed(&w.flags) & KM_WF_WOKEN) != 0;
			__atomic_fetch_and(&w.flags, (uint16_t)~KM_WF_WOKEN, __ATOMIC_RELAXED);
			s = km_load_relaxed(&e->state);
			/* Retry as the head: take the key if free, else ask for a
			 * direct hand-off once past the fairness bound. Retries
			 * when a barger or a release changed the word. */
			uint64_t handoff = km_handoff_for(km, km_head_without(e, &w), e->qshared);

			do {
				/* WAKING is ours to clear only if we were woken. */
				n = woken ? s & ~KM_S_WAKING : s;
				/* Not past RPEND: a writer phase's readers go
				 * first (their dispatch is pending). */
				take = km_s_compatible(s, shared, km->max_holders) &&
				       !(s & KM_S_RPEND);
				if (take)	/* the next head decides on HANDOFF */
					n = ((km_s_take(n, shared, km->max_holders) - KM_S_WAIT1) &
					     ~KM_S_HANDOFF) | handoff;
				else if (km_now_ns() - since > KM_STARVE_NS)
					n |= KM_S_HANDOFF;
			} while (!km_cas_acq_rel(&e->state, &s, n));
			if (take) {
				km_queue_remove(e, &w);
				/* Several slots may have come free while we were on our
				 * way (a keyed semaphore): pass the wake on. */
				km_done_init(&done);
				km_dispatch(km, e, &done);
				km_qunlock(e);
				km_rcu_read_unlock();
				km_done_deliver(&done);
				if (tok != NULL)
					km_token_unregister(tok, &w);
				return 0;
			}
		}
		if (km_load_acquire(&w.cancel)) {
			rc = ECANCELED;
			break;
		}
		if (km_deadline_passed(deadline)) {
			rc = ETIMEDOUT;
			break;
		}
		head = e->qtail->next == &w;
		km_qunlock(e);
		km_rcu_read_unlock();
	}
	/* Leave the queue (timeout or cancel), letting the next proceed. */
	km_done_init(&done);
	bool dead = km_leave_queue(km, e, &w, &done);

	km_qunlock(e);
	if (dead)
		km_kill(km, e);
	km_rcu_read_unlock();
	km_done_deliver(&done);
	if (tok != NULL)
		km_token_unregister(tok, &w);
	return rc;

out_unlock:
	km_qunlock(e);
	km_rcu_read_unlock();
	if (tok != NULL)
		km_token_unregister(tok, &w);
	return rc;
}
