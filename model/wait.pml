/*
 * keymutex: the waiting protocol of one key, as a Promela model for SPIN
 * (issue 11: WAIT, WAKING, HANDOFF, the futex word, the head's liveness;
 * defect 3).
 *
 * What is modelled (lib/wait.c km_wait_sync, km_park, km_waiter_signal,
 * km_dispatch, km_leave_queue; lib/acquire.c km_release; lib/take.h
 * km_take_now; lib/internal.h km_may_barge; lib/async.c km_acquire_async):
 *   - one key of a mutex table (exclusive holds, no KM_FIFO), its entry
 *     alive throughout (entry.pml covers its death); the state word HOLD
 *     (0/1), WAIT, WAKING, HANDOFF; every CAS loop is one atomic step (the
 *     iteration whose CAS succeeds, or the read that makes it give up);
 *   - the qlock (a spin lock) and the FIFO queue it protects; WAIT changes
 *     together with the queue under it;
 *   - sync waiters (S0, S1): km_take_now (barge if km_may_barge), else
 *     under the qlock barge or join; then park on the futex word
 *     WAIT(0)/WAKE(1)/PARKED(2): CAS WAIT->PARKED, futex_wait(PARKED)
 *     (sleeps only if the word is still PARKED; returns on a futex_wake),
 *     loop until the word shows WAKE; then under the qlock consume the word
 *     (back to WAIT), and: granted -> done; woken (barging mode) -> spin
 *     outside the qlock while the key is held, retry as the head: take the
 *     key if free, else ask for a direct hand-off (HANDOFF) once past the
 *     fairness bound; else park again;
 *   - the head's self-wake (commit 16ef3ab): a waiter that was the head,
 *     with no HANDOFF set, when it last looked (under the qlock: on joining
 *     and before each re-park) parks with a timeout at the fairness bound;
 *     the timeout fires (nondeterministically) only once the waiter is
 *     past the bound; a waiter that wakes not woken but the head, past the
 *     bound, no HANDOFF set (overdue), retries as a woken head would, and
 *     clears WAKING only if it was woken (WOKEN, read when it retries);
 *   - the fairness bound: a clock process that, for a queued sync waiter,
 *     eventually (weak fairness) sets "past the bound"; it resets when the
 *     waiter leaves the queue;
 *   - an async request (A): served only by a direct grant; it joins with
 *     HANDOFF set (keeps bargers out); its completion runs when granted;
 *   - bargers (B0, B1): trylock loops, which take the key whenever
 *     km_may_barge allows (HOLD == 0 and no waiters, or no HANDOFF);
 *   - release: one step drops the hold; if waiters remain and (no WAKING
 *     or HANDOFF), the releaser takes the qlock and dispatches: the head is
 *     woken (WAKING, the exchange of WAKE into its futex word, the futex
 *     syscall after the qlock is dropped if the old word was PARKED) or,
 *     for HANDOFF or an async head, granted directly (the hold taken on its
 *     behalf, dequeued, status GRANTED, woken the same way if sync);
 *   - with -DTIMEOUT, a sync waiter may also time out after a wake-up and
 *     leave the queue (km_leave_queue: let the next proceed);
 *   - with -DNO_ASYNC, no async request (the sync waiter, alone in the
 *     queue, is its head from the moment it joins).
 *
 * Properties:
 *   W1 mutual exclusion (assertion): at most one thread in the critical
 *      section, and whoever is there holds the key;
 *   W2 no lost wake-up (safety run: every process does ITER rounds and
 *      stops; pan reports an invalid end state if any waiter is left asleep
 *      or queued with nobody left to wake or grant it); also a woken head
 *      is the head, and WAKING is set only while a woken head is on its way;
 *   W3 liveness of the head (ltl, pan -a -f, weak fairness, processes loop
 *      forever): a queued async request is eventually granted
 *      (ltl async_head), a queued sync waiter eventually gets the key
 *      (ltl sync_head; holds for a waiter that is the head when it parks,
 *      -DNO_ASYNC; a waiter that becomes the head while parked without the
 *      timeout can still starve: model/check.sh runs it as a known gap).
 *
 * The rule of the fix (defect 3): HANDOFF is set whenever the queue's head
 * is a waiter only a direct grant serves (async or shared); it is
 * recomputed from the new head whenever the head changes (a direct grant
 * dequeues the head, a woken exclusive head takes the key, a head leaves by
 * timeout or cancel).
 *
 * Negative controls (model/check.sh expects a violation):
 *   -DOLD_HANDOFF  the code before the fix: a woken exclusive head that
 *                  takes the key clears HANDOFF unconditionally, a direct
 *                  grant clears it unless the new head is async/shared, a
 *                  leaving head leaves it as it was: W3 async_head fails
 *                  (an acceptance cycle: the bargers take turns in the gap
 *                  between each other's release and dispatch, forever);
 *   -DPARK_STORE   km_park announces the sleep with a plain store instead
 *                  of the CAS from WAIT: a wake that came first is
 *                  overwritten and the waiter sleeps for ever (W2);
 *   -DNO_SELF_WAKE the code before 16ef3ab: the head parks without the
 *                  bound's timeout and only a woken head retries: W3
 *                  sync_head fails (two bargers alternate through each
 *                  other's release-to-dispatch gap; nobody wakes the head);
 *   -DSTALE_WOKEN  16ef3ab as committed: an overdue head decides whether
 *                  to clear WAKING from the WOKEN flag it read before it
 *                  spun outside the qlock; a dispatch that woke it in that
 *                  window leaves WAKING set after it takes the key, and no
 *                  release wakes the next waiter (W2, invalid end state).
 *
 * SPDX-License-Identifier: MIT
 */

#ifndef NS
#define NS 2			/* sync waiters */
#endif
#ifndef NB
#define NB 1			/* bargers */
#endif
#ifndef ITER
#define ITER 2			/* rounds per process in the safety run */
#endif

#define AS NS			/* the async request's id */
#define NP (NS + 1 + NB)	/* threads: sync waiters, async, bargers */
#define NONE 255
#define QN (NS + 1)		/* queue capacity: every waiter at once */

#define FX_WAIT 0
#define FX_WAKE 1
#define FX_PARKED 2

#define ST_IDLE 0
#define ST_QUEUED 1
#define ST_GRANTED 2

/* The state word. */
byte hold;			/* HOLD */
byte nw;			/* WAIT */
bool waking;			/* WAKING */
bool handoff;			/* HANDOFF */

/* The qlock and the queue it protects. */
bool ql;
byte q[QN];			/* q[0] is the head */
byte qn;

/* Per waiter. */
byte fx[NP];			/* futex word */
bool sleeping[NP];		/* in futex_wait, until a futex_wake */
byte st[NP];			/* status */
bool woken[NP];			/* KM_WF_WOKEN */
bool inq[NP];			/* queued (ghost) */
bool passed[NP];		/* waited past the fairness bound */

/* Ghosts. */
byte holder = NONE;
byte incrit;

#define DIRECT(w) ((w) == AS)	/* served only by a direct grant */
#ifndef NO_SELF_WAKE
/* Not woken, but the head, past the fairness bound, no HANDOFF yet: an
 * overdue head retries as a woken head would (under the qlock). */
#define OVERDUE(p) (q[0] == (p) && !handoff && passed[p])
#else
#define OVERDUE(p) false
#endif
#define MAY_BARGE (hold == 0 && (nw == 0 || !handoff))

/* The fix: HANDOFF follows the (new) head. */
#define HEAD_HANDOFF (qn > 0 && DIRECT(q[0]))

#ifndef FAIR_QLOCK
/* a test-and-set lock, as in the code (km_qlock): no promise about who
 * gets it next */
inline qlock() { atomic { !ql -> ql = 1 } }
inline qunlock() { ql = 0 }
#else
/* -DFAIR_QLOCK: a ticket lock, so that a liveness counterexample cannot be
 * mere qlock starvation (a thread that never wins the test-and-set) */
#define TK (NP + 1)
byte tnext, tserve;
inline qlock() { atomic { tk = tnext; tnext = (tnext + 1) % TK }; atomic { tserve == tk -> ql = 1; tk = 0 } }
inline qunlock() { atomic { ql = 0; tserve = (tserve + 1) % TK } }
#endif

inline take(p) { hold = 1; holder = p }

/* Append p to the queue (under the qlock, with the WAIT increment). */
inline qappend(p)
{
	q[qn] = p;
	qn++;
	inq[p] = 1;
	st[p] = ST_QUEUED
}

/* Remove x from the queue (under the qlock). */
inline qremove(x)
{
	i = 0;
	do
	:: i < qn && q[i] != x -> i++
	:: else -> break
	od;
	assert(i < qn);
	do
	:: i + 1 < qn -> q[i] = q[i + 1]; i++
	:: else -> break
	od;
	qn--;
	q[qn] = NONE;
	inq[x] = 0;
	passed[x] = 0;
	i = 0
}

/* km_waiter_signal: exchange WAKE in; the syscall (pw) only if it was
 * PARKED, made after the qlock is dropped. */
inline signal(w)
{
	if
	:: fx[w] == FX_PARKED -> pw = w
	:: else -> skip
	fi;
	fx[w] = FX_WAKE
}

/* km_done_deliver: the futex syscall, after the locks are dropped. */
inline deliver()
{
	atomic {
		if
		:: pw != NONE -> sleeping[pw] = 0; pw = NONE
		:: else -> skip
		fi
	}
}

/* km_dispatch, under the qlock: wake or grant the head. */
inline dispatch()
{
	do
	:: atomic {
		if
		:: nw == 0 || hold != 0 -> dd = 1		/* nobody, or not grantable */
		:: else ->
			w = q[0];
			if
			:: !handoff && !DIRECT(w) ->
				/* barging mode: wake the head to retry */
				if
				:: !waking -> waking = 1; woken[w] = 1; signal(w)
				:: else -> skip			/* it is on its way */
				fi;
				dd = 1
			:: else ->
				/* direct grant */
				take(w);
				nw--;
				if
				:: woken[w] -> waking = 0; woken[w] = 0
				:: else -> skip
				fi;
				qremove(w);
#ifdef OLD_HANDOFF
				if
				:: qn == 0 || !DIRECT(q[0]) -> handoff = 0
				:: else -> skip
				fi;
#else
				handoff = HEAD_HANDOFF;
#endif
				st[w] = ST_GRANTED;
				if
				:: !DIRECT(w) -> signal(w)
				:: else -> skip			/* async: completed after */
				fi;
				w = NONE;
				dd = 0
			fi
		fi
	   };
	   if
	   :: dd -> dd = 0; w = NONE; break
	   :: else -> skip
	   fi
	od
}

/* km_release: drop the hold; dispatch if waiters may proceed. */
inline release(p)
{
	atomic {
		assert(hold == 1 && holder == p);
		hold = 0;
		holder = NONE;
		go = (nw != 0 && (!waking || handoff))
	};
	if
	:: go ->
		go = 0;
		qlock();
		dispatch();
		qunlock();
		deliver()
	:: else -> skip
	fi
}

inline critical(p)
{
	atomic { incrit++; assert(incrit == 1 && hold == 1 && holder == p) };	/* W1 */
	incrit--
}

/* km_park: until the futex word shows WAKE. */
inline park(p)
{
	do
	:: atomic {
#ifdef PARK_STORE
		if
		:: true -> fx[p] = FX_PARKED
		fi
#else
		if
		:: fx[p] == FX_WAIT -> fx[p] = FX_PARKED	/* announce the sleep */
		:: fx[p] == FX_WAKE -> break		/* the wake came first */
		:: fx[p] == FX_PARKED -> skip		/* spurious return */
		fi
#endif
	   };
	   /* futex_wait(&fx, PARKED): sleeps only if the word is PARKED */
	   atomic {
		if
		:: fx[p] == FX_PARKED -> sleeping[p] = 1
		:: else -> skip
		fi
	   };
	   if
	   :: !sleeping[p]
#ifdef TIMEOUT
	   :: atomic { sleeping[p] -> sleeping[p] = 0; break }	/* ETIMEDOUT */
#endif
#ifndef NO_SELF_WAKE
	   /* ETIMEDOUT at the fairness bound: only a head that parked with
	    * it (tmo), and only once past the bound */
	   :: atomic { sleeping[p] && tmo && passed[p] -> sleeping[p] = 0; break }
#endif
	   fi;
#ifdef PARK_STORE
	   if
	   :: fx[p] == FX_WAKE -> break
	   :: else -> skip
	   fi
#endif
	od
}

proctype sync_waiter(byte p)
{
	byte i, w = NONE, pw = NONE, n, tk;
	bool dd, go, got, took;
	bool hd;	/* at the queue's head when last looked (under the qlock) */
	bool tmo;	/* parked with a timeout at the fairness bound */
	bool wk;	/* woken (KM_WF_WOKEN) when the wake was consumed */

#ifdef LIVE
end:
#endif
	do
#ifndef LIVE
	:: n == ITER -> break
	:: n < ITER ->
#else
	:: true ->
#endif
		/* km_take_now (the spin abstracted: re-reads of the word) */
		atomic {
			if
			:: MAY_BARGE -> take(p); got = 1
			:: else -> got = 0
			fi
		};
		if
		:: got -> goto have
		:: else -> skip
		fi;
		/* km_wait_sync: join the queue or take the key if it came free */
		qlock();
		atomic {
			if
			:: MAY_BARGE -> take(p); got = 1
			:: else -> nw++; qappend(p); fx[p] = FX_WAIT; hd = (q[0] == p)
			fi
		};
		qunlock();
		if
		:: got -> goto have
		:: else -> skip
		fi;
		do
		:: /* the park's timeout: the fairness bound, for an exclusive
		    * head with no HANDOFF set yet (a relaxed read, no qlock) */
#ifndef NO_SELF_WAKE
			tmo = (hd && !handoff);
#endif
			park(p);
			qlock();
			atomic { fx[p] = FX_WAIT; tmo = 0 }	/* consume the wake */
			if
			:: st[p] == ST_GRANTED -> qunlock(); break
			:: else -> skip
			fi;
			atomic {
				wk = woken[p];
				if
				:: wk -> assert(q[0] == p && waking)	/* W2: the woken one is the head */
				:: else -> skip
				fi
			};
			if
			:: wk || OVERDUE(p) ->
				if
				:: hold != 0 ->
					/* spin outside the qlock for the holder to
					 * leave (KM_WOKEN_SPIN re-reads) */
					qunlock();
					qlock();
					if
					:: st[p] == ST_GRANTED -> qunlock(); break
					:: else -> skip
					fi
				:: else -> skip
				fi;
				atomic {
					/* retry as the head; WAKING is ours to clear
					 * only if we were woken: before we looked, or,
					 * an overdue head, by a dispatch while we spun
					 * outside the qlock */
					if
#ifndef STALE_WOKEN
					:: woken[p] -> waking = 0
#else
					:: wk -> waking = 0
#endif
					:: else -> skip
					fi;
					woken[p] = 0;
					wk = 0;
					if
					:: hold == 0 ->
						take(p);
						nw--;
						qremove(p);
#ifdef OLD_HANDOFF
						handoff = 0;
#else
						handoff = HEAD_HANDOFF;
#endif
						took = 1
					:: else ->
						if
						:: passed[p] -> handoff = 1
						:: else -> skip
						fi;
						took = 0
					fi
				};
				if
				:: took -> took = 0; qunlock(); break	/* dispatch: nothing for an exclusive hold */
				:: else -> skip
				fi
			:: else -> skip
			fi;
			wk = 0;
#ifdef TIMEOUT
			/* the deadline passed: leave the queue (km_leave_queue) */
			if
			:: true -> skip
			:: atomic {
				true ->
				nw--;
				if
				:: woken[p] -> waking = 0; woken[p] = 0
				:: else -> skip
				fi;
#ifndef OLD_HANDOFF
				took = (q[0] == p);
#endif
				qremove(p);
				hd = 0;
				st[p] = ST_IDLE;
				if
				:: nw == 0 -> handoff = 0; waking = 0
				:: else -> skip
				fi;
#ifndef OLD_HANDOFF
				if
				:: took -> handoff = HEAD_HANDOFF
				:: else -> skip
				fi;
				took = 0
#endif
			   };
			   dispatch();
			   qunlock();
			   deliver();
			   goto next
			fi;
#endif
			hd = (q[0] == p);
			qunlock()
		od;
		hd = 0;
		wk = 0;
		deliver();
have:
		st[p] = ST_IDLE;
		critical(p);
		release(p);
next:
#ifndef LIVE
		n++;
#endif
		skip
	od
}

/* An async exclusive request, again and again; its ready() releases. */
proctype async_request(byte p)
{
	byte i, w = NONE, pw = NONE, n, tk;
	bool dd, go, got;

#ifdef LIVE
end:
#endif
	do
#ifndef LIVE
	:: n == ITER -> break
	:: n < ITER ->
#else
	:: true ->
#endif
		atomic {
			if
			:: MAY_BARGE -> take(p); got = 1
			:: else -> got = 0
			fi
		};
		if
		:: !got ->
			qlock();
			atomic {
				if
				:: MAY_BARGE -> take(p); got = 1
				:: else ->
					/* served only by direct grants: keep bargers out */
					nw++; qappend(p); handoff = 1
				fi
			};
			qunlock();
			if
			:: !got -> st[p] == ST_GRANTED	/* the completion */
			:: else -> skip
			fi
		:: else -> skip
		fi;
		st[p] = ST_IDLE;
		critical(p);
		release(p);
#ifndef LIVE
		n++;
#endif
		skip
	od
}

/* A trylock loop: takes the key whenever a newcomer may. */
proctype barger(byte p)
{
	byte i, w = NONE, pw = NONE, n, tk;
	bool dd, go;

#ifdef LIVE
end:
#endif
	do
#ifndef LIVE
	:: n == ITER -> break
	:: n < ITER ->
#else
	:: true ->
#endif
		atomic { MAY_BARGE -> take(p) };
		critical(p);
		release(p);
#ifndef LIVE
		n++;
#endif
		skip
	od
}

/* Time: a queued sync waiter eventually waits past the fairness bound. */
proctype clock()
{
	byte p;

end:
	do
	:: atomic {
		if
		:: inq[0] && !passed[0] -> passed[0] = 1
		:: NS > 1 && inq[1] && !passed[1] -> passed[1] = 1
		fi
	   }
	od
}

#ifdef LIVE
/* W3: a queued waiter is eventually served */
ltl async_head { [] (inq[AS] -> <> !inq[AS]) }
ltl sync_head { [] (inq[0] -> <> !inq[0]) }
#endif

init {
	byte k;

	atomic {
		k = 0;
		do
		:: k < QN -> q[k] = NONE; k++
		:: k == QN -> break
		od;
		k = 0;
		do
		:: k < NS -> run sync_waiter(k); k++
		:: k == NS -> break
		od;
#ifndef NO_ASYNC
		run async_request(AS);
#endif
		k = 0;
		do
		:: k < NB -> run barger(AS + 1 + k); k++
		:: k == NB -> break
		od;
		run clock()
	}
}
