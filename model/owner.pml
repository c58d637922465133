/*
 * keymutex: the owner / recursion rule of KM_RECURSIVE tables (issue 11,
 * defect 4), as a Promela model for SPIN.
 *
 * What is modelled (lib/take.h km_take_now, lib/acquire.c km_acquire,
 * km_guard_held, km_unlock_owner, km_release):
 *   - one key of a KM_RECURSIVE table, one entry, exclusive holds only;
 *     HOLD is 0/1 and changes by one atomic step (the CAS that succeeds);
 *   - the entry's owner and recursion fields, plain words written only by
 *     (what the code believes is) the holder: the acquire CAS, then
 *     recursion = 0, then owner = me (km_guard_held: separate steps);
 *     a recursive acquire reads owner == me, then increments recursion
 *     (separate steps, no CAS); an unlock of the outer hold with
 *     recursion == 0 clears the owner, then releases the hold (CAS);
 *   - guards are values: thread A takes k, hands its guard to thread B and
 *     calls km_lock(k) again; B unlocks the guard it was given (km_unlock:
 *     the caller, B, is the owner it names); thread C loops lock/unlock on
 *     k to take the key the moment it is free.
 *
 * Properties (assertions; spin -a + pan proves them exhaustively):
 *   O1 whenever A holds a guard it got from km_lock (outer or nested), the
 *      key is held, and by the hold A took (ghost: who took the hold);
 *   O2 at most one thread in the critical section of k;
 *   O3 every thread terminates or loops (no invalid end state): the key is
 *      not lost (a hold nobody will ever release).
 *
 * The rule of the fix: on KM_RECURSIVE (and KM_ERRORCHECK) tables an
 * exclusive hold is unlocked only by naming its owner: km_unlock from
 * another thread returns EPERM and changes nothing (B then hands the guard
 * back, and A unlocks it). KM_ERRORCHECK already checked this; it refuses
 * the nested acquire itself (EDEADLK), so it has no recursion to race with.
 *
 * Negative control (model/check.sh expects a violation):
 *   -DOLD_OWNER   km_unlock by a thread that is not the owner proceeds (the
 *                 code before the fix on KM_RECURSIVE tables): B's unlock
 *                 sees recursion == 0 between A's owner check and its
 *                 increment, clears the owner and releases the key; A's
 *                 km_lock then returns a nested guard for a key it does not
 *                 hold (O1).
 *
 * SPDX-License-Identifier: MIT
 */

#define A 1
#define B 2
#define C 3
#define NOBODY 0

#ifndef CLOOPS
#define CLOOPS 2		/* C's lock/unlock rounds */
#endif

/* The entry. */
byte hold;			/* HOLD: 0 or 1 (exclusive) */
byte owner = NOBODY;		/* e->owner */
byte recursion;			/* e->recursion */

/* Ghosts. */
byte taker = NOBODY;		/* who took the current hold (its CAS) */
byte incrit;			/* threads in the critical section */
bool guard_to_b;		/* A handed its outer guard to B */
bool guard_back;		/* B handed it back (its unlock failed) */
bool b_done;			/* B is finished with the guard */

/* km_release's CAS: one hold leaves (no waiters in this model). */
#define RELEASE(p) atomic { assert(hold == 1); hold = 0; taker = NOBODY }

proctype thread_a()
{
	bool nested;

	/* km_lock(k): nobody else names A as owner, so the owner check fails;
	 * take the hold when it is free (the spin/queue are abstracted: the
	 * waiting is entry.pml's and wait.pml's business) */
	atomic { owner != A; hold == 0 -> hold = 1; taker = A };
	recursion = 0;			/* km_guard_held */
	owner = A;
	atomic { incrit++; assert(incrit == 1) };	/* O2 */
	assert(hold == 1 && taker == A);		/* O1 */
	incrit--;

	/* hand the guard to B */
	guard_to_b = 1;

	/* km_lock(k) again */
	if
	:: owner == A ->		/* the owner check (km_take_now) */
		recursion++;		/* a separate step: a nested hold */
		nested = 1
	:: else ->
		/* not the owner (any more): an ordinary acquire */
		atomic { hold == 0 -> hold = 1; taker = A };
		recursion = 0;
		owner = A;
		nested = 0
	fi;
	/* A holds a guard from km_lock: the key must be held by A's hold */
	atomic { incrit++; assert(incrit == 1) };	/* O2 */
	assert(hold == 1 && taker == A);		/* O1 */
	incrit--;

	/* km_unlock(nested guard): A is the owner it names */
	if
	:: nested ->
		if
		:: recursion > 0 -> recursion--
		:: else -> owner = NOBODY; RELEASE(A)
		fi
	:: else ->
		owner = NOBODY; RELEASE(A)
	fi;

	/* the outer guard: unlock it if B handed it back */
	b_done;
	if
	:: guard_back ->
		if
		:: recursion > 0 -> recursion--
		:: else -> owner = NOBODY; RELEASE(A)
		fi
	:: else -> skip
	fi
}

proctype thread_b()
{
	guard_to_b;
	/* km_unlock(A's outer guard): the caller, B, is named as owner */
#ifndef OLD_OWNER
	/* fixed: the guard's owner is A, the caller B: EPERM, nothing changes */
	guard_back = 1;
#else
	/* before the fix: a KM_RECURSIVE table unlocked for anybody */
	if
	:: recursion > 0 -> recursion--
	:: else -> owner = NOBODY; RELEASE(B)
	fi;
#endif
	b_done = 1
}

proctype thread_c()
{
	byte n;

	do
	:: n == CLOOPS -> break
	:: n < CLOOPS ->
		/* km_lock(k): the owner check fails (C never holds it here) */
		assert(owner != C);
		atomic { hold == 0 -> hold = 1; taker = C };
		recursion = 0;
		owner = C;
		atomic { incrit++; assert(incrit == 1) };	/* O2 */
		assert(hold == 1 && taker == C);
		incrit--;
		/* km_unlock: C is the owner */
		if
		:: recursion > 0 -> recursion--
		:: else -> owner = NOBODY; RELEASE(C)
		fi;
		n++
	od
}

init {
	atomic {
		run thread_a();
		run thread_b();
		run thread_c()
	}
}
