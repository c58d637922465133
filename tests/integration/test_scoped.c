/*
 * KM_SCOPED_LOCK and friends (include/keymutex_scoped.h): a scoped guard is
 * released however its block is left (end of block, return, break,
 * continue, goto), and a failed scoped acquire releases nothing. Each check
 * is observed from outside the block: km_trylock on the key succeeds once
 * the block is left and fails with EBUSY while it is inside.
 *
 * TAP output (meson test protocol 'tap').
 * SPDX-License-Identifier: MIT
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keymutex.h"
#include "keymutex_scoped.h"

static int n_test;
static int n_fail;

static void check(int ok, const char *what)
{
	n_test++;
	if (!ok)
		n_fail++;
	printf("%s %d - %s\n", ok ? "ok" : "not ok", n_test, what);
	fflush(stdout);
}

static struct km *km;

/* 1 if the key is free now (a trylock succeeds; released again at once). */
static int key_free(const char *key)
{
	struct km_guard g = KM_GUARD_INIT;
	int rc = km_trylock(km, key, strlen(key), &g);
	if (rc == 0)
		km_unlock(&g);
	return rc == 0;
}

static int busy_inside;

static int leave_by_return(const char *key)
{
	KM_SCOPED_LOCK(rc, km, key, strlen(key));
	if (rc != 0)
		return -rc;
	busy_inside = !key_free(key);
	return 42;		/* the key is released by this return */
}

static int leave_by_early_return(const char *key, int early)
{
	KM_SCOPED_LOCK(rc, km, key, strlen(key));
	if (rc != 0)
		return -rc;
	if (early)
		return 1;
	busy_inside = !key_free(key);
	return 2;
}

int main(void)
{
	if (km_create(&km, NULL) != 0) {
		printf("Bail out! km_create failed\n");
		return 1;
	}

	/* return */
	busy_inside = 0;
	check(leave_by_return("ret") == 42, "KM_SCOPED_LOCK: lock succeeds, function returns");
	check(busy_inside, "return: the key is held inside the block");
	check(key_free("ret"), "return: leaving by return releases the key");
	check(leave_by_early_return("early", 1) == 1 && key_free("early"),
	      "early return releases the key");
	check(leave_by_early_return("early", 0) == 2 && key_free("early"),
	      "late return releases the key");

	/* break */
	int inside = 0, iters = 0;
	for (;;) {
		KM_SCOPED_LOCK(rc, km, "brk", 3);
		iters++;
		if (rc != 0)
			break;
		inside = !key_free("brk");
		break;		/* released here */
	}
	check(iters == 1 && inside, "break: the key is held inside the loop body");
	check(key_free("brk"), "break: leaving a loop by break releases the key");

	/* continue: every iteration gets and releases the key again */
	int held = 0;
	for (int i = 0; i < 5; i++) {
		KM_SCOPED_LOCK(rc, km, "cont", 4);
		if (rc != 0)
			break;
		held += !key_free("cont");
		if (i % 2)
			continue;	/* released here */
	}
	check(held == 5, "continue: each iteration holds the key");
	check(key_free("cont"), "continue: the key is free after the loop");

	/* goto out of a block */
	inside = 0;
	{
		KM_SCOPED_LOCK(rc, km, "goto", 4);
		if (rc != 0)
			goto out;
		inside = !key_free("goto");
		goto out;	/* released here */
	}
out:
	check(inside, "goto: the key is held inside the block");
	check(key_free("goto"), "goto: leaving a block by goto releases the key");

	/* end of block, two scoped locks on one line, nested */
	{
		KM_SCOPED_LOCK(ra, km, "a", 1); KM_SCOPED_LOCK(rb, km, "b", 1);
		check(ra == 0 && rb == 0 && !key_free("a") && !key_free("b"),
		      "two scoped locks in one block (one line) both hold");
		{
			KM_SCOPED_LOCK(rc, km, "c", 1);
			check(rc == 0 && !key_free("c"), "nested block holds its key");
		}
		check(key_free("c") && !key_free("a"),
		      "end of the inner block releases only its key");
	}
	check(key_free("a") && key_free("b"), "end of block releases both keys");

	/* a failed scoped trylock holds nothing and releases nothing */
	struct km_guard other = KM_GUARD_INIT;
	check(km_lock(km, "t", 1, &other) == 0, "another guard holds key t");
	{
		KM_SCOPED_TRYLOCK(rc, km, "t", 1);
		check(rc == EBUSY, "KM_SCOPED_TRYLOCK on a held key gives EBUSY");
	}
	check(!key_free("t"), "the failed scoped trylock did not release the other guard's key");
	km_unlock(&other);
	{
		KM_SCOPED_TRYLOCK(rc, km, "t", 1);
		check(rc == 0 && !key_free("t"), "KM_SCOPED_TRYLOCK on a free key holds it");
	}
	check(key_free("t"), "... and releases it at the end of the block");

	/* shared */
	{
		KM_SCOPED_LOCK_SHARED(r1, km, "s", 1);
		KM_SCOPED_LOCK_SHARED(r2, km, "s", 1);
		struct km_guard g = KM_GUARD_INIT;
		check(r1 == 0 && r2 == 0 && km_trylock_shared(km, "s", 1, &g) == 0,
		      "KM_SCOPED_LOCK_SHARED: shared holders coexist");
		km_unlock(&g);
		check(!key_free("s"), "shared holds exclude an exclusive trylock");
	}
	check(key_free("s"), "both shared holds released at the end of the block");

	/* KM_SCOPED_GUARD with any acquire, and an explicit early unlock */
	{
		KM_SCOPED_GUARD(g);
		struct timespec dl;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += 5;
		check(km_timedlock(km, "g", 1, &dl, &g) == 0 && !key_free("g"),
		      "KM_SCOPED_GUARD filled by km_timedlock holds the key");
		check(km_unlock(&g) == 0 && key_free("g"), "an explicit unlock releases it early");
	}
	check(key_free("g"), "the cleanup handler does nothing for an emptied guard");
	struct km_stats st;
	check(km_stats(km, &st) == 0 && st.holders == 0 && st.keys == 0,
	      "nothing is held at the end (km_stats)");

	check(km_destroy(km) == 0, "km_destroy: no key left held");
	printf("1..%d\n", n_test);
	return n_fail != 0;
}
