/*
 * keymutex: the life of a key's entry, as a Promela model for SPIN.
 *
 * What is modelled (lib/table.c, lib/acquire.c, lib/wait.c, lib/pool.c):
 *   - one bucket chain, singly linked, entries pushed at the head with one
 *     CAS on the bucket (insert-if-absent: the walk found no live entry of
 *     the key in the chain as it was at the head we CAS against);
 *   - lookup: walk from the head, skipping entries whose next is marked or
 *     whose state is DEAD (two separate reads, as in the code);
 *   - the state word per entry: HOLD (0/1: a mutex), WAIT (0..N), IDLEQ,
 *     DEAD; every change is one atomic step (the CAS that succeeds);
 *     revive = increment-if-not-dead (take a hold or join as a waiter only
 *     on a word without DEAD; on DEAD, look the key up again);
 *   - release / a waiter leaving (timeout, cancel): the CAS that leaves
 *     HOLD = WAIT = 0 sets DEAD in the same step (unless the entry is kept
 *     idle: IDLEQ, then the idle ring evicts it later with a CAS from an
 *     unused word to DEAD);
 *   - unlink (Harris/Michael): mark the victim's next, then walk from the
 *     bucket swinging any predecessor past marked nodes; helpers finish
 *     other threads' unlinks; restart when the predecessor got marked;
 *   - retirement, one RCU grace period, reuse from the pool (the reclaimer
 *     process is the call_rcu worker); entries that lost an insert race are
 *     retired the same way;
 *   - waiters: queued (WAIT counted) and asleep outside any read-side
 *     section; granted when HOLD is 0 (newcomers may barge).
 *
 * One key (the properties are about one key; other keys only lengthen
 * chains), E entry slots (pool + table), N client processes looping
 * acquire / critical section / release forever, nondeterministically
 * waiting or leaving the queue, plus the reclaimer. Allocation failure
 * (pool empty) leaves the read-side section and starts over, as ENOMEM.
 *
 * Properties (assertions; spin -a + pan -E proves them exhaustively):
 *   P1 no key ever has two live entries (published and not DEAD);
 *   P2 at most one client in the critical section (the end-to-end
 *      property the seed bug broke);
 *   P3 no entry is reused (returned to the pool) while any client may still
 *      hold a pointer to it: a cursor of a walk, a predecessor of an unlink,
 *      the entry it holds, waits on or is killing;
 *   P4 no waiter is stranded on a removed entry: joining, waiting and being
 *      granted only happen on an entry that is published, not marked, not
 *      DEAD, not retired; an entry dies only with HOLD = WAIT = 0.
 *   P5 a DEAD entry is never revived and a marked entry is always DEAD.
 *
 * Negative controls (model/check.sh builds each and expects a violation):
 *   -DSEED_BUG     release unlinks the entry before dropping the hold
 *   -DNO_GP        reclaim without waiting for a grace period
 *   -DREVIVE_DEAD  the acquire CAS ignores DEAD (increments a dead entry)
 *   -DSTALE_HEAD   insert CASes against the current head, not the one the
 *                  walk started from
 *   -DRELEASE_NO_SECTION  release never enters a read-side section (the
 *                  kill's unlink and the ring push then race reclamation)
 *
 * SPDX-License-Identifier: MIT
 */

#ifndef N
#define N 2			/* client processes */
#endif
#define E 3			/* entry slots */
#define NIL 255
#define HEAD 254		/* "prev" naming the bucket itself */
#define NP (N + 1)		/* clients and the reclaimer */
#ifndef IDLE
#define IDLE 0			/* -DIDLE=1: model the idle ring (capacity 1) too */
#endif

/* The chain. */
byte head = NIL;
byte nxt[E];
bool mk[E];			/* next is marked: logically deleted */

/* The state word. */
byte hold[E];
byte wait[E];
bool dead[E];
bool idleq[E];

/* Where each slot is (ghost bookkeeping). */
bool pooled[E];			/* free, in the pool */
bool pub[E];			/* its insert CAS succeeded (until reused) */
bool retired[E];		/* waiting for a grace period */
byte ring = NIL;		/* the idle ring, one slot */

/* RCU. */
bool incs[NP];			/* inside a read-side section */
bool gpneed[NP];		/* the grace period waits for this reader */

/* Ghost references: pointers a client holds. */
byte rcur[NP];			/* walk cursor */
byte rprev[NP];			/* unlink predecessor */
byte rent[NP];			/* entry it holds, waits on, or is killing */
byte rvic[NP];			/* idle-ring victim being evicted */
byte rh[NP];			/* the head a walk started from (the insert CAS's expected value) */

byte incrit;			/* clients in the critical section */

#define LIVE(i) (pub[i] && !dead[i])
#define NLIVE (LIVE(0) + LIVE(1) + LIVE(2))

#define VAL(pr) (pr == HEAD -> head : nxt[pr])
#define MARKED(pr) (pr == HEAD -> 0 : mk[pr])

/* Leaving a read-side section: the grace period stops waiting for us and
 * the pointers we found in it are no longer ours. */
#define rcu_unlock_body(p) incs[p] = 0; gpneed[p] = 0; rcur[p] = NIL; rprev[p] = NIL; rh[p] = NIL; h = NIL

/* Harris unlink of x, by client p; x is DEAD and p is in a read-side section. */
inline unlink(x)
{
	mk[x] = 1;
	done = 0;
	do
	:: done -> break
	:: else ->
		prev = HEAD;
		rprev[p] = NIL;
		do
		:: atomic { cur = VAL(prev); pm = MARKED(prev) };
			if
			:: pm -> break				/* restart */
			:: !pm && cur == NIL -> done = 1; break	/* unreachable now */
			:: !pm && cur != NIL ->
				rcur[p] = cur;
				atomic { cn = nxt[cur]; cm = mk[cur] };
				if
				:: cm ->
					/* swing prev past cur: fails if prev changed or got marked */
					atomic {
						if
						:: VAL(prev) == cur && !MARKED(prev) ->
							if
							:: prev == HEAD -> head = cn
							:: else -> nxt[prev] = cn
							fi;
							ok = 1
						:: else -> ok = 0
						fi
					};
					if
					:: !ok -> break			/* restart */
					:: ok && cur == x -> done = 1; break
					:: ok && cur != x -> skip	/* prev now points past cur */
					fi
				:: !cm -> prev = cur; rprev[p] = cur
				fi
			fi
		od
	od;
	atomic { rcur[p] = NIL; rprev[p] = NIL; prev = NIL; cur = NIL; cn = NIL; cm = 0; pm = 0; ok = 0; done = 0 }
}

/* The idle ring evicts v (client p, in a read-side section). */
inline evict(v)
{
	rvic[p] = v;
	atomic {
		if
		:: dead[v] -> killed = 0
		:: !dead[v] && hold[v] == 0 && wait[v] == 0 -> dead[v] = 1; idleq[v] = 0; killed = 1
		:: !dead[v] && (hold[v] != 0 || wait[v] != 0) -> idleq[v] = 0; killed = 0
		fi
	};
	if
	:: killed -> unlink(v); retired[v] = 1
	:: else -> skip
	fi;
	rvic[p] = NIL
}

/* The check of P3 for slot x: nobody holds a pointer to it. */
#define NOREF(x, q) (rcur[q] != x && rprev[q] != x && rent[q] != x && rvic[q] != x && rh[q] != x)

proctype client(byte p)
{
	byte h, cur, cn, e, fresh = NIL, prev, v;
	bool cm, pm, done, ok, killed;

top:
	/* ---------------- acquire ---------------- */
	/* enter the read-side section and read the bucket head */
	atomic { incs[p] = 1; h = head; rh[p] = h };
walk:
	cur = h;
	do
	:: cur == NIL -> break
	:: cur != NIL ->
		/* one entry of the walk: its next word, then (if unmarked) its
		 * state word. The two loads are one step here: any outcome of
		 * the two separate loads is the outcome of this step at one of
		 * the two instants, and whatever is found is re-validated by
		 * the CAS below. */
		atomic {
			rcur[p] = cur;
			if
			:: !mk[cur] && !dead[cur] -> e = cur; cur = NIL; rcur[p] = NIL; rent[p] = e
			:: else -> cur = nxt[cur]
			fi
		};
		if
		:: rent[p] != NIL -> goto found
		:: else -> skip
		fi
	od;
	/* No live entry in the chain from h: insert a fresh one at h. */
	atomic {
		rcur[p] = NIL;
		if
		:: fresh == NIL ->
			if
			:: pooled[0] -> fresh = 0
			:: pooled[1] -> fresh = 1
			:: pooled[2] -> fresh = 2
			:: else -> skip
			fi;
			if
			:: fresh != NIL ->
				assert(NOREF(fresh, 0) && NOREF(fresh, 1) && (N < 3 || NOREF(fresh, 2)));
				pooled[fresh] = 0;
				/* born held by us */
				hold[fresh] = 1; wait[fresh] = 0; dead[fresh] = 0; idleq[fresh] = 0;
				mk[fresh] = 0
			:: else ->					/* ENOMEM: try again later */
				incs[p] = 0; gpneed[p] = 0; rh[p] = NIL; h = NIL
			fi
		:: else -> skip
		fi
	};
	if
	:: fresh == NIL -> goto top
	:: else -> skip
	fi;
	/* the insert CAS on the bucket head */
	atomic {
#ifdef STALE_HEAD
		if
		:: true ->
#else
		if
		:: head == h ->
#endif
			nxt[fresh] = head;
			head = fresh;
			pub[fresh] = 1;
			assert(NLIVE <= 1);			/* P1 */
			e = fresh;
			fresh = NIL;
			rent[p] = e;
			/* the hold is ours: leave the read-side section */
			incs[p] = 0; gpneed[p] = 0; rh[p] = NIL; h = NIL
		:: else -> h = head; rh[p] = h			/* lost the race: walk again */
		fi
	};
	if
	:: rent[p] != NIL -> goto have
	:: else -> goto walk
	fi;

found:
	if
	:: fresh != NIL ->					/* never published */
		atomic { retired[fresh] = 1; fresh = NIL }
	:: else -> skip
	fi;
	/* increment-if-not-dead: one CAS on e's word */
	atomic {
		if
#ifdef REVIVE_DEAD
		:: hold[e] == 0 -> dead[e] = 0; hold[e] = 1; assert(NLIVE <= 1); ok = 1
#else
		:: dead[e] -> ok = 0; rent[p] = NIL; e = NIL		/* look again */
		:: !dead[e] && hold[e] == 0 ->
			assert(!mk[e] && pub[e] && !retired[e]);	/* P5 */
			hold[e] = 1; ok = 1
#endif
		:: !dead[e] && hold[e] != 0 ->
			assert(!mk[e] && pub[e] && !retired[e]);	/* P4: joins a live entry */
			wait[e]++; ok = 0
		fi;
		if
		:: e != NIL ->
			/* holding or queued: the count pins e; leave the section */
			incs[p] = 0; gpneed[p] = 0; rh[p] = NIL; h = NIL
		:: else -> h = head; rh[p] = h
		fi
	};
	if
	:: ok -> goto have
	:: !ok && e == NIL -> goto walk
	:: else -> skip
	fi;
	/* Queued, asleep outside any read-side section. */
	if
	:: atomic {
		hold[e] == 0 ->					/* granted (or woken, takes it) */
			assert(!dead[e] && !mk[e] && pub[e] && !retired[e]);	/* P4 */
			hold[e] = 1;
			wait[e]--
	   };
	   goto have
	:: atomic {						/* timeout / cancel: leave */
		incs[p] = 1;
		assert(!dead[e] && !mk[e] && !retired[e]);	/* P4 */
		wait[e]--;
		if
		:: hold[e] == 0 && wait[e] == 0 && !idleq[e] -> dead[e] = 1; killed = 1
		:: else -> killed = 0
		fi
	   };
		if
		:: killed -> unlink(e); retired[e] = 1
		:: else -> skip
		fi;
		atomic { rent[p] = NIL; e = NIL; killed = 0; rcu_unlock_body(p) };
		goto top
	fi;

have:
	/* ---------------- critical section ---------------- */
	atomic { incrit++; assert(incrit == 1) };		/* P2 */
	incrit--;

	/* ---------------- release ---------------- */
#ifdef SEED_BUG
	/* the seed's bug: the last holder takes the entry out of the table,
	 * then releases it (waiters still find it, newcomers do not) */
	incs[p] = 1;
	unlink(e);
#endif
	atomic {
		assert(hold[e] == 1 && !dead[e] && !retired[e]);
		hold[e] = 0;
		v = NIL;
		if
		:: wait[e] == 0 && !idleq[e] ->
			if
			:: IDLE -> idleq[e] = 1; v = e;		/* keep it idle: into the ring */
				killed = 0
			:: true -> dead[e] = 1; killed = 1	/* the same CAS that drops the last count */
			fi
		:: else -> killed = 0
		fi;
		/* The read-side section begins before this CAS (while the hold
		 * pins e) iff something follows it that touches e or the
		 * table: the kill's unlink, the ring push, a dispatch to
		 * waiters. Otherwise the releaser lets go of e in the same
		 * step (lib/acquire.c, km_release_follows). */
#ifdef RELEASE_NO_SECTION
		skip	/* control: never enters a section to release */
#else
		if
		:: killed || v != NIL || wait[e] > 0 -> incs[p] = 1
		:: else -> rent[p] = NIL; e = NIL
		fi
#endif
	};
	if
	:: killed -> unlink(e); retired[e] = 1
	:: else -> skip
	fi;
	atomic { rent[p] = NIL; e = NIL; killed = 0 };
	if
	:: v != NIL ->
		atomic { cn = ring; ring = v; v = cn; cn = NIL };	/* xchg: the oldest is evicted */
		if
		:: v != NIL -> evict(v)
		:: else -> skip
		fi
	:: else -> skip
	fi;
	atomic { v = NIL; rcu_unlock_body(p) };
	goto top
}

/* The call_rcu worker: one grace period, then the entry goes to the pool. */
proctype reclaimer()
{
	byte x, q;

end:
	do
	:: atomic {
		if
		:: retired[0] -> x = 0
		:: retired[1] -> x = 1
		:: retired[2] -> x = 2
		fi;
		/* grace period starts: wait for every reader inside a section now */
		q = 0;
		do
		:: q < N -> gpneed[q] = incs[q]; q++
		:: q == N -> break
		od
	   };
#ifndef NO_GP
	(gpneed[0] == 0 && gpneed[1] == 0 && (N < 3 || gpneed[2] == 0));
#endif
	atomic {
		assert(NOREF(x, 0) && NOREF(x, 1) && (N < 3 || NOREF(x, 2)));	/* P3 */
		/* published entries die with no holder and no waiter; a fresh
		 * entry that lost its insert race was never seen by anyone */
		assert(!pub[x] || (dead[x] && mk[x] && hold[x] == 0 && wait[x] == 0));
		retired[x] = 0;
		pub[x] = 0;
		nxt[x] = NIL;
		pooled[x] = 1;
		x = NIL
	   }
	od
}

init {
	byte i;

	atomic {
		i = 0;
		do
		:: i < E -> pooled[i] = 1; nxt[i] = NIL; i++
		:: i == E -> break
		od;
		i = 0;
		do
		:: i < NP -> rcur[i] = NIL; rprev[i] = NIL; rent[i] = NIL; rvic[i] = NIL; rh[i] = NIL; i++
		:: i == NP -> break
		od;
		i = 0;
		do
		:: i < N -> run client(i); i++
		:: i == N -> break
		od;
		run reclaimer()
	}
}
