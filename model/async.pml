/*
 * keymutex: an async request's PREP / QUEUED / cancel states against the
 * entry's reclamation (issue 11, defect 1), as a Promela model for SPIN.
 *
 * What is modelled (lib/async.c km_acquire_async, km_async_try_cancel,
 * km_async_complete; lib/token.c km_token_cancel; lib/timer.c
 * km_timer_main; lib/wait.c km_leave_queue, km_dispatch; lib/acquire.c
 * km_release):
 *   - one entry of one key, held by H when the model starts; its state
 *     word (HOLD 0/1, WAIT 0/1, DEAD) changes by single atomic steps, and
 *     the step that leaves HOLD = WAIT = 0 sets DEAD; the killer then
 *     retires it (the unlink is entry.pml's business);
 *   - the entry's qlock (a spin lock), and the request's status word
 *     (NONE, PREP, QUEUED, GRANTED, CANCELLED, DONE);
 *   - the requester R: inside a read-side section it finds the entry held
 *     (km_take_now: EBUSY), registers with the timer and with its token
 *     (status PREP, w->entry = e), takes the qlock and then takes the key
 *     if it came free, fails (token cancelled, deadline passed, EAGAIN:
 *     nondeterministic), joins the queue (QUEUED, one WAIT count) or finds
 *     the entry DEAD (retry elsewhere: it leaves the model); a failed,
 *     taken or dead-entry request unregisters from timer and token
 *     (km_async_unprepare) before it is DONE; a queued one is granted or
 *     cancelled, then completes (unregisters) and, if granted, releases;
 *   - two registries, the token and the timer, each with its lock and a
 *     canceller process: km_token_cancel / km_timer_main hold the registry
 *     lock while they read the request's status and, on QUEUED or PREP,
 *     take the entry's qlock (km_async_try_cancel: a QUEUED request leaves
 *     the queue, which may kill the entry);
 *   - H releases its hold (inside a read-side section): kills the entry if
 *     nobody waits, else grants the queued request directly;
 *   - RCU: read-side sections of R, H and both cancellers, and a reclaimer
 *     that frees a retired entry after one grace period (it waits for every
 *     section open when the grace period starts).
 *
 * Property (assertion; spin -a + pan proves it exhaustively):
 *   A1 nobody touches a freed entry: every qlock attempt, every state-word
 *      access of R, H and the cancellers happens on an entry not yet freed.
 *   (and no invalid end state: nobody is stuck.)
 *
 * The fixed protocol: a request that will not wait after all unregisters
 * from timer and token (each takes the registry lock, which a canceller
 * holds throughout its try-cancel) after dropping the qlock but BEFORE it
 * leaves its read-side section; a canceller that saw PREP therefore finds
 * the request's section still open and the entry unreclaimed.
 *
 * Negative control (model/check.sh expects a violation):
 *   -DOLD_ASYNC   the failed request leaves its read-side section first and
 *                 unregisters afterwards (lib/async.c before the fix): H
 *                 releases, the entry dies, the grace period passes, and
 *                 the token (or the timer) still sees PREP, reads w->entry
 *                 and takes the qlock of freed memory.
 *
 * SPDX-License-Identifier: MIT
 */

#define R 0
#define H 1
#define TOK 2			/* the token's canceller (km_token_cancel) */
#define TIM 3			/* the timer thread (km_timer_main) */
#define NR 4			/* readers: R, H, TOK, TIM */

#define NONE 0
#define PREP 1
#define QUEUED 2
#define GRANTED 3
#define CANCELLED 4
#define DONE 5

/* The entry. */
byte hold = 1;			/* H holds the key */
byte nw;			/* WAIT */
bool dead;
bool retired;
bool freed;			/* reclaimed: its memory may be anything now */
bool ql;			/* the qlock */

/* The request. */
byte status = NONE;
bool reg[2];			/* registered with the token [0], the timer [1] */
bool rlock[2];			/* the token's lock, the timer lock */
bool fired[2];			/* the token is cancelled, the deadline passed */

/* RCU. */
bool incs[NR];
bool gpneed[NR];

/* A1. (Not "only readers the grace period waits for": a canceller whose
 * section began after the retirement is safe while the requester's section,
 * which it keeps open by holding the registry lock, still is.) */
#define TOUCH(p) assert(!freed)

inline rcu_lock(p) { incs[p] = 1 }
inline rcu_unlock(p) { atomic { incs[p] = 0; gpneed[p] = 0 } }

inline qlock(p) { atomic { TOUCH(p); !ql -> ql = 1 } }
inline qunlock(p) { TOUCH(p); ql = 0 }

/* km_async_unprepare: km_timer_remove, then km_token_unregister */
inline unprepare()
{
	atomic { !rlock[1] -> rlock[1] = 1 };
	reg[1] = 0;
	rlock[1] = 0;
	atomic { !rlock[0] -> rlock[0] = 1 };
	reg[0] = 0;
	rlock[0] = 0
}

/* Drop a hold; the step that leaves HOLD = WAIT = 0 sets DEAD; the killer
 * retires the entry. Called inside a read-side section. */
inline release(p)
{
	atomic {
		TOUCH(p);
		hold = 0;
		if
		:: nw == 0 -> dead = 1; killed = 1
		:: else -> killed = 0
		fi
	};
	if
	:: killed -> retired = 1
	:: else ->
		/* waiters: grant the head (an async head: a direct grant) */
		qlock(p);
		if
		:: atomic { nw > 0 && hold == 0 -> hold = 1; nw--; status = GRANTED }
		:: else -> skip
		fi;
		qunlock(p)
	fi
}

proctype requester()
{
	byte rc;
	bool killed;

#define TAKEN 1
#define FAIL 2
#define JOINED 3
#define RETRY 4
	/* km_acquire_async: km_take_now inside a read-side section finds the
	 * entry alive and held (otherwise it barges or inserts a fresh entry:
	 * not this model's business) */
	atomic {
		rcu_lock(R);
		if
		:: !dead && hold == 1 -> skip
		:: else -> rcu_unlock(R); goto out
		fi
	};
	/* register with the token (it refuses when cancelled), then the timer;
	 * status PREP, w->entry = e */
	atomic { !rlock[0] -> rlock[0] = 1 };
	if
	:: fired[0] -> rlock[0] = 0; rcu_unlock(R); goto out	/* ECANCELED */
	:: else -> reg[0] = 1; status = PREP; rlock[0] = 0
	fi;
	atomic { !rlock[1] -> rlock[1] = 1 };
	reg[1] = 1;
	rlock[1] = 0;

	qlock(R);
	atomic {
		TOUCH(R);
		if
		:: dead -> rc = RETRY
		:: !dead && hold == 0 -> hold = 1; rc = TAKEN	/* may barge */
		:: !dead && hold != 0 -> rc = FAIL		/* cancelled, timed out, EAGAIN */
		:: !dead && hold != 0 && !fired[0] && !fired[1] ->
			nw++; status = QUEUED; rc = JOINED
		fi
	};
	qunlock(R);
	if
	:: rc == RETRY ->
		/* km_s_dead: unprepare inside the section, look up again */
		unprepare();
		status = NONE;
		rcu_unlock(R);
		goto out
	:: rc == JOINED -> rcu_unlock(R)
	:: rc == TAKEN || rc == FAIL ->
#ifdef OLD_ASYNC
		rcu_unlock(R);
		unprepare();
#else
		unprepare();
		rcu_unlock(R);
#endif
		status = DONE
	fi;
	if
	:: rc == TAKEN ->
		/* the caller releases the key it got */
		rcu_lock(R);
		release(R);
		rcu_unlock(R)
	:: rc == JOINED ->
		/* granted (H's release) or cancelled (token, timer): then
		 * km_async_complete, outside any section, unregisters */
		(status == GRANTED || status == CANCELLED);
		unprepare();
		if
		:: status == GRANTED ->
			status = DONE;
			rcu_lock(R);
			release(R);
			rcu_unlock(R)
		:: else -> status = DONE
		fi
	:: else -> skip
	fi;
out:
	skip
}

/* H, the key's holder, releases it once. */
proctype holder()
{
	bool killed;

	rcu_lock(H);
	release(H);
	rcu_unlock(H)
}

/* km_token_cancel (k = 0) or the timer firing (k = 1): under the registry
 * lock, km_async_try_cancel on the request if it is registered. */
proctype canceller(byte k; byte me)
{
	byte st;
	bool killed;

	atomic { !rlock[k] -> rlock[k] = 1 };
	fired[k] = 1;
	if
	:: reg[k] ->
		if
		:: k == 1 -> reg[k] = 0		/* out of the heap first */
		:: else -> skip
		fi;
		rcu_lock(me);
		st = status;
		if
		:: st == QUEUED || st == PREP ->
			qlock(me);			/* km_qlock(w->entry) */
			atomic {
				TOUCH(me);
				if
				:: status == QUEUED ->
					status = CANCELLED;	/* km_leave_queue */
					nw--;
					if
					:: hold == 0 && nw == 0 -> dead = 1; killed = 1
					:: else -> killed = 0
					fi
				:: else -> killed = 0		/* EALREADY */
				fi
			};
			qunlock(me);
			if
			:: killed -> retired = 1
			:: else -> skip
			fi
		:: else -> skip				/* EALREADY */
		fi;
		rcu_unlock(me)
	:: else -> skip
	fi;
	rlock[k] = 0
}

/* The call_rcu worker: one grace period, then the entry is freed. */
proctype reclaimer()
{
	byte q;

end:	retired;
	atomic {
		q = 0;
		do
		:: q < NR -> gpneed[q] = incs[q]; q++
		:: q == NR -> break
		od
	};
	(!gpneed[0] && !gpneed[1] && !gpneed[2] && !gpneed[3]);
	freed = 1
}

init {
	atomic {
		run requester();
		run holder();
		run canceller(0, TOK);
		run canceller(1, TIM);
		run reclaimer()
	}
}
