/*
 * model/phase.pml: the phase-fair shared-mode grant rule (issue 13) on one
 * key of a mutex table without KM_FIFO, at the level of the state word
 * (HOLD, X, WAIT, WAKING, HANDOFF, RPEND), the entry's wait queue with its
 * qshared count, and the qlock. Checked by model/check-phase.sh.
 *
 * What is modelled, step by step as in lib/ (each atomic block is one CAS
 * or one qlock-protected queue update; a qlock holder's steps interleave
 * with lock-free takes and releases, as in the code):
 *  - the fast path (take.h km_take_now / internal.h km_may_barge): a shared
 *    newcomer takes the key only with nobody queued; an exclusive newcomer
 *    barges unless HANDOFF or RPEND;
 *  - queueing (wait.c km_wait_sync): under the qlock, re-check, else append;
 *    a shared request sets HANDOFF and counts in qshared;
 *  - release (acquire.c km_release): one CAS; the end of an exclusive hold
 *    with requests waiting and HANDOFF set sets RPEND; then, if waiters may
 *    proceed, dispatch under the qlock;
 *  - dispatch (wait.c km_dispatch, km_grant_shared): RPEND first (every
 *    queued shared request, one CAS), else a shared run at the head, else an
 *    exclusive head: a direct grant under HANDOFF, else a wake (WAKING);
 *  - a woken exclusive head's retry: takes the key if compatible and no
 *    RPEND, else re-parks; the fairness bound (KM_STARVE_NS, 1 ms) is
 *    abstracted as "after two failed retries the head sets HANDOFF".
 * Not modelled: timeouts and cancels, async requests (served like shared
 * heads: direct grants only), entry death and reclamation (entry.pml).
 *
 * Clients: readers 0 and 1 and writer 2, each looping for ever (request,
 * hold, release, through the fast path and the queue), and client 3, a
 * barging exclusive newcomer that only ever tries the fast path (it may
 * starve by design: barging is opportunistic; its attempts are what the
 * others must survive).
 *
 * Properties:
 *  - safety (assertions): an exclusive holder is alone; a reader is
 *    granted after at most one exclusive hold ended while it was queued
 *    (the reader's bound: one writer phase);
 *  - liveness (LTL, under weak fairness): every client that asks is
 *    eventually granted: neither readers nor writers starve.
 *
 * Negative controls (-D at spin -a):
 *  - MUT_JOIN: a shared newcomer joins a reader phase while a writer waits
 *    (km_may_barge without the "nobody queued" test): the writers starve,
 *    the liveness claim for a writer fails;
 *  - OLD_RULE: the strict-order rule this replaced (no RPEND; a shared run
 *    only at the head; queued readers do not keep HANDOFF): still live, but
 *    a reader queued behind two writers waits two writer phases, so the
 *    reader-bound assertion fails.
 *
 * SPDX-License-Identifier: MIT
 */

#define N 4
#define IS_SHARED(c) ((c) < 2)

byte hold;		/* HOLD */
bool X;			/* X: the hold is exclusive */
bool WAKING;
bool HANDOFF;
bool RPEND;
byte qnext, qserve;	/* the qlock: tickets (see lock_q) */

byte q[N];		/* the queue, head at q[0]; WAIT == qlen */
byte qlen;
byte qshared;		/* shared requests queued (entry->qshared) */

bool granted[N];	/* a direct grant (status GRANTED) */
bool woken[N];		/* KM_WF_WOKEN: a barging wake delivered */
bool want[N];		/* asked, not yet holding */
bool got[N];		/* holding */
byte xends[N];		/* exclusive holds ended while this reader queued */
byte fails[N];		/* failed retries of a woken head */

/* The HANDOFF bit the queue's current head calls for (wait.c km_handoff_for). */
inline handoff_for(res)
{
	if
	:: qlen == 0 -> res = 0
	:: qlen > 0 && IS_SHARED(q[0]) -> res = 1
#ifdef OLD_RULE
	:: qlen > 0 && !IS_SHARED(q[0]) -> res = 0
#else
	:: qlen > 0 && !IS_SHARED(q[0]) -> res = (qshared > 0)
#endif
	fi
}

/* Remove q[i], shifting the rest up. */
inline qremove(i)
{
	j = i;
	do
	:: j + 1 < qlen -> q[j] = q[j + 1]; j++
	:: else -> break
	od;
	q[qlen - 1] = 0;
	qlen--
}

/* Grant one shared waiter at q[i] (its hold counted by the caller). */
inline grant_shared_at(i)
{
	assert(!X);
	c = q[i];
	assert(xends[c] <= 1);	/* the reader's bound: one writer phase */
	granted[c] = 1;
	qremove(i);
	qshared--
}

/*
 * km_dispatch, under the qlock. Each round reads the word and makes one
 * CAS: one atomic step (the head is stable under the qlock; a CAS on a word
 * that changed since the read fails and the round starts again).
 */
inline dispatch()
{
	do
	:: atomic {
		if
		:: qlen == 0 -> break
#ifndef OLD_RULE
		:: qlen > 0 && RPEND ->
			/* km_grant_shared(all): every queued shared request */
			assert(!X);
			h = q[0];
			i = 0;
			do
			:: i < qlen && IS_SHARED(q[i]) -> hold++; grant_shared_at(i)
			:: i < qlen && !IS_SHARED(q[i]) -> i++
			:: i >= qlen -> break
			od;
			RPEND = 0;
			if
			:: qlen == 0 -> HANDOFF = 0; WAKING = 0
			:: qlen > 0 && q[0] != h -> handoff_for(HANDOFF)
			:: else -> skip	/* same head keeps its bit */
			fi
#endif
		:: qlen > 0 && !RPEND && IS_SHARED(q[0]) ->
			/* km_grant_shared(run): the shared run at the head */
			if
			:: X -> break
			:: else -> skip
			fi;
			do
			:: qlen > 0 && IS_SHARED(q[0]) -> hold++; grant_shared_at(0)
			:: else -> break
			od;
			if
			:: qlen == 0 -> HANDOFF = 0; WAKING = 0
			:: else -> handoff_for(HANDOFF)
			fi
		:: qlen > 0 && !RPEND && !IS_SHARED(q[0]) ->
			c = q[0];
			if
			:: hold > 0 -> break	/* not grantable */
			:: hold == 0 && !HANDOFF && WAKING -> break	/* the woken head is on its way */
			:: hold == 0 && !HANDOFF && !WAKING ->
				WAKING = 1; woken[c] = 1; break
			:: hold == 0 && HANDOFF ->
				/* direct grant to the exclusive head */
				hold = 1; X = 1;
				qremove(0);
				handoff_for(HANDOFF);
				if
				:: woken[c] -> WAKING = 0; woken[c] = 0
				:: else -> skip
				fi;
				granted[c] = 1
			fi
		fi;
		i = 0; j = 0; c = 0; h = 0	/* scratch: keep states canonical */
	}
	od;
	i = 0; j = 0; c = 0; h = 0
}

/*
 * The qlock as a ticket lock: the real one is a test-and-test-and-set lock
 * that yields, unfair in principle, held for a few pointer updates. Its own
 * starvation is not what this model is about, and under weak fairness an
 * unfair lock would show starvation cycles of the lock, not of the grant
 * rule; so the model's qlock serves in arrival order.
 */
inline lock_q()
{
	atomic { tk = qnext; qnext = (qnext + 1) % 4 };
	atomic { qserve == tk -> tk = 0 }
}

inline unlock_q()
{
	qserve = (qserve + 1) % 4
}

/* km_may_barge, as a guard on the taking CAS. */
#ifdef MUT_JOIN
#define MAY_BARGE_SH	(!X && (qlen == 0 || hold > 0))
#else
#define MAY_BARGE_SH	(!X && qlen == 0)
#endif
#define MAY_BARGE_EX	(hold == 0 && (qlen == 0 || (!HANDOFF && !RPEND)))

inline take(id)
{
	hold++;
	if
	:: !IS_SHARED(id) -> X = 1
	:: else -> skip
	fi
}

proctype client(byte id)
{
	byte i, j, c, h, tk;
	bool took;
	bool dsp;

	do
	:: true ->
		want[id] = 1;
		took = 0;
fastpath:	/* the fast path: one CAS, no qlock */
		atomic {
			if
			:: IS_SHARED(id) && MAY_BARGE_SH -> take(id); took = 1
			:: !IS_SHARED(id) && MAY_BARGE_EX -> take(id); took = 1
			:: else -> skip
			fi
		}
		if
		:: took -> goto held
		:: !took && id == 3 -> goto fastpath	/* the barger never queues */
		:: else -> skip
		fi;
		/* queue, or take it if it came free (under the qlock) */
		lock_q();
		atomic {
			if
			:: IS_SHARED(id) && MAY_BARGE_SH -> take(id); took = 1
			:: !IS_SHARED(id) && MAY_BARGE_EX -> take(id); took = 1
			:: else ->
				q[qlen] = id; qlen++;
				xends[id] = 0; fails[id] = 0;
				if
				:: IS_SHARED(id) -> HANDOFF = 1; qshared++
				:: else -> skip
				fi
			fi
		}
		unlock_q();
		if
		:: took -> goto held
		:: else -> skip
		fi;
wait:		/* park until granted or woken */
		if
		:: granted[id] -> granted[id] = 0; goto held
		:: woken[id] -> skip
		fi;
		lock_q();
		atomic {
			if
			:: granted[id] -> granted[id] = 0; took = 1
			:: !granted[id] ->
				/* the woken head's retry (exclusive only) */
				assert(!IS_SHARED(id) && q[0] == id);
				woken[id] = 0;
				WAKING = 0;
				if
				:: hold == 0 && !RPEND ->
					hold = 1; X = 1;
					qremove(0);
					handoff_for(HANDOFF);
					j = 0;
					took = 1
				:: else ->
					if
					:: fails[id] >= 1 -> HANDOFF = 1	/* past the bound */
					:: else -> fails[id] = 1
					fi
				fi
			fi
		}
		unlock_q();
		if
		:: took -> goto held
		:: else -> goto wait
		fi;
held:
		atomic {
			took = 0;
			want[id] = 0;
			got[id] = 1;
			assert(!X || hold == 1);
			assert(IS_SHARED(id) == !X)
		}
		/* release: one CAS, then dispatch if waiters may proceed */
		atomic {
			got[id] = 0;
			dsp = X;	/* an exclusive hold ends */
			hold--;
			if
			:: hold == 0 -> X = 0
			:: else -> skip
			fi;
			if
			:: dsp ->
				i = 0;
				do
				:: i < qlen && IS_SHARED(q[i]) && xends[q[i]] < 2 ->
					xends[q[i]]++; i++	/* saturates: 2 fails the bound */
				:: i < qlen && !(IS_SHARED(q[i]) && xends[q[i]] < 2) -> i++
				:: else -> break
				od
			:: else -> skip
			fi;
#ifndef OLD_RULE
			if
			:: dsp && qlen > 0 && HANDOFF -> RPEND = 1
			:: else -> skip
			fi;
#endif
			dsp = qlen > 0 && (!WAKING || HANDOFF);
			i = 0
		}
		if
		:: dsp -> lock_q(); dispatch(); unlock_q()
		:: else -> skip
		fi;
		dsp = 0
	od
}

init {
	atomic {
		run client(0);
		run client(1);
		run client(2);
		run client(3)
	}
}

/* No starvation: whoever asks is eventually granted (weak fairness). */
ltl r0_live { [] (want[0] -> <> got[0]) }
ltl r1_live { [] (want[1] -> <> got[1]) }
ltl w2_live { [] (want[2] -> <> got[2]) }
/* Both at once, one search (what check-phase.sh runs). */
ltl both_live { [] (want[0] -> <> got[0]) && [] (want[2] -> <> got[2]) }
