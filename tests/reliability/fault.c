/*
 * Fault injection: walk every allocation site of each entry point, failing
 * one site at a time (a library built with -Dfault_injection=true).
 *
 * For a scenario, n = 0, 1, 2, ...: km__fault_fail_after(n) lets n sites
 * succeed and fails the next one, the scenario's call runs, and
 * km__fault_sites() tells how many sites it passed. While the call passes
 * more than n sites the failure was injected and the call must have
 * returned ENOMEM (or the documented error), holding nothing and changing
 * nothing: km_stats shows no holder or waiter it left, the key is free
 * (km_trylock succeeds afterwards), *out / guards are untouched or zeroed
 * as documented, ready() is not called. The first n at which the call
 * passes no more than n sites is a clean run: every site was walked.
 * After each step the table must keep working (lock/unlock of old and new
 * keys), and km_destroy must succeed at the end.
 *
 * Leaks: the meson test runs this program under valgrind --leak-check=full
 * (definite and indirect leaks are errors) when valgrind is installed; an
 * ASan build (-Db_sanitize=address) checks the same with LeakSanitizer.
 *
 * Scenarios: km_create (pool_prefill, several shards), km_acquire of a new
 * key (pooled and unpooled sizes), km_acquire_async of a new key,
 * km_acquire_async with a deadline on a held key (the timer heap's first
 * allocation and the timer thread's creation; then the heap's growth past
 * 64 pending deadlines), km_acquire_all of 20 keys (the order array, then
 * each new entry), km_port_create, km_token_create.
 *
 * Prints one line per scenario and "N passed, N failed" last.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "km_test.h"

#include <stdarg.h>

/* Exported only by a fault-injection build of the library (lib/fault.c). */
void km__fault_fail_after(long n);
long km__fault_sites(void);

#define MAX_STEPS 10000

/* The sites the walked call passed, read right after it returns (before
 * anything else allocates or km__fault_fail_after resets the count). */
static long walked_sites;

static void fault_end(void)
{
	walked_sites = km__fault_sites();
	km__fault_fail_after(-1);
}

static unsigned passed, failed;
static unsigned scenario_fail;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return;
	scenario_fail++;
	if (scenario_fail > 20)
		return;
	printf("  FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void scenario_end(const char *name, long sites, long steps)
{
	printf("%-44s %3ld sites failed in turn (%ld runs): %s\n", name, sites, steps,
	       scenario_fail ? "FAILED" : "ok");
	if (scenario_fail)
		failed++;
	else
		passed++;
	scenario_fail = 0;
}

/* The table is idle as far as this caller knows: nothing held or awaited
 * beyond what the caller itself holds. */
static void check_stats(struct km *km, size_t holders, size_t waiters, const char *when)
{
	struct km_stats st = kt_stats(km);

	check(st.holders == holders && st.waiters == waiters && st.keys == (holders ? st.keys : 0),
	      "%s: stats keys %zu holders %zu waiters %zu (expected holders %zu waiters %zu)",
	      when, st.keys, st.holders, st.waiters, holders, waiters);
}

/* The key is free: trylock takes it, unlock gives it back. */
static void check_free(struct km *km, const void *key, size_t len, const char *when)
{
	struct km_guard g;
	int rc = km_trylock(km, key, len, &g);

	check(rc == 0, "%s: km_trylock of the key afterwards returned %d", when, rc);
	if (rc == 0)
		check(km_unlock(&g) == 0, "%s: unlock failed", when);
}

/* The table still works: a few keys, old and new, lock and unlock. */
static void check_works(struct km *km, const char *when)
{
	static unsigned serial;
	char k[32];

	for (int i = 0; i < 4; i++) {
		struct km_guard g;
		int n = snprintf(k, sizeof k, "works-%u-%d", serial++, i);
		int rc = km_lock(km, k, (size_t)n, &g);

		check(rc == 0, "%s: table no longer works (km_lock %d)", when, rc);
		if (rc == 0)
			km_unlock(&g);
	}
	check_free(km, "works-0-0", 9, when);
}

/* Walk: call step(n, ctx) for n = 0.. until it passes <= n sites. */
typedef int step_fn(long n, void *ctx);	/* returns the call's result */

static long walk(step_fn *step, void *ctx, long *steps_out, int expect_fail,
		 int expect_ok, const char *name)
{
	long n;

	for (n = 0; n < MAX_STEPS; n++) {
		walked_sites = -1;
		km__fault_fail_after(n);
		int rc = step(n, ctx);

		km__fault_fail_after(-1);
		check(walked_sites >= 0, "%s: the step did not record its sites", name);
		if (walked_sites <= n) {
			/* nothing failed: a clean run */
			check(rc == expect_ok, "%s: clean run returned %d, expected %d", name, rc,
			      expect_ok);
			break;
		}
		check(rc == expect_fail, "%s: failing site %ld returned %d, expected %d", name, n,
		      rc, expect_fail);
	}
	check(n < MAX_STEPS, "%s: more than %d sites", name, MAX_STEPS);
	*steps_out = n + 1;
	return n;	/* sites failed one by one */
}

/* ---- km_create ---- */

struct create_ctx {
	struct km_options o;
};

static int step_create(long n, void *arg)
{
	struct create_ctx *c = arg;
	struct km *km = (struct km *)(uintptr_t)0x5A5A;	/* must stay untouched on failure */
	int rc = km_create(&km, &c->o);

	(void)n;
	fault_end();
	if (rc != 0) {
		check(km == (struct km *)(uintptr_t)0x5A5A, "km_create failed but wrote *out");
		return rc;
	}
	/* Before any use: a used key's entry may be retired (not pooled yet). */
	struct km_stats st = kt_stats(km);

	check(st.pooled >= c->o.pool_prefill, "km_create: pooled %zu < prefill %zu", st.pooled,
	      c->o.pool_prefill);
	check_works(km, "km_create");
	check(km_destroy(km) == 0, "km_destroy after km_create");
	return 0;
}

/* ---- km_acquire of a new key ---- */

struct acq_ctx {
	struct km *km;
	size_t len;
	unsigned serial;
	int async;
};

static size_t make_key(char *buf, unsigned serial, size_t len)
{
	memset(buf, 'k', len);
	if (len >= 8)
		snprintf(buf, 9, "%08x", serial);
	else if (len > 0)
		buf[0] = (char)('A' + serial % 26);
	return len;
}

static void ready_never(struct km_request *req, int status)
{
	(void)status;
	*(int *)req->arg += 1;
}

static int step_acquire(long n, void *arg)
{
	struct acq_ctx *c = arg;
	char key[200];
	size_t len = make_key(key, c->serial++, c->len);
	struct km_guard g;
	struct km_request req;
	int calls = 0, rc;

	(void)n;
	if (c->async) {
		memset(&req, 0, sizeof req);
		req.ready = ready_never;
		req.arg = &calls;
		kt_poison(&req.guard);
		rc = km_acquire_async(c->km, key, len, NULL, &req);
		fault_end();
		check(calls == 0, "km_acquire_async: ready() ran for an immediate result");
		if (rc == 0) {
			check(km_unlock(&req.guard) == 0, "unlock after km_acquire_async");
		} else {
			check(kt_guard_zero(&req.guard), "km_acquire_async %d: guard not zeroed", rc);
		}
	} else {
		kt_poison(&g);
		rc = km_lock(c->km, key, len, &g);
		fault_end();
		if (rc == 0)
			check(km_unlock(&g) == 0, "unlock after km_lock");
		else
			check(kt_guard_zero(&g), "km_lock %d: guard not zeroed", rc);
	}
	check_stats(c->km, 0, 0, "after a new-key acquire");
	check_free(c->km, key, len, "after a new-key acquire");
	check_works(c->km, "after a new-key acquire");
	return rc;
}

/* ---- km_acquire_async with a deadline on a held key ---- */

struct async_ctx {
	struct km *km;
	int extra;		/* pending requests held before the walked one */
};

static atomic_int async_calls;
static int async_status;

static void ready_count(struct km_request *req, int status)
{
	(void)req;
	async_status = status;
	atomic_fetch_add(&async_calls, 1);
}

/* The async step: set-up (hold the key, queue c->extra requests with a far
 * deadline) runs without faults; only the walked call is failed. */
static int step_async(long n, void *arg)
{
	struct async_ctx *c = arg;
	struct km_guard held;
	struct km_request req, *extra = NULL;
	struct timespec far = kt_deadline_ms(60000), soon;
	struct km_lock_options o = { .deadline = &far };
	int rc, calls;

	km__fault_fail_after(-1);
	if (km_lock(c->km, "held", 4, &held) != 0) {
		check(false, "km_lock(held) failed");
		return -1;
	}
	if (c->extra > 0) {
		extra = calloc((size_t)c->extra, sizeof *extra);
		for (int i = 0; i < c->extra; i++) {
			extra[i].ready = ready_count;
			rc = km_acquire_async(c->km, "held", 4, &o, &extra[i]);
			check(rc == EINPROGRESS, "extra request %d: %d", i, rc);
		}
	}
	atomic_store(&async_calls, 0);
	async_status = -1;
	soon = kt_deadline_ms(200);	/* slack for valgrind */
	o.deadline = &soon;
	memset(&req, 0, sizeof req);
	req.ready = ready_count;
	kt_poison(&req.guard);
	km__fault_fail_after(n);
	rc = km_acquire_async(c->km, "held", 4, &o, &req);
	fault_end();
	if (rc == EINPROGRESS) {
		uint64_t end = kt_now_ns() + 5000000000u;

		while (atomic_load(&async_calls) == 0 && kt_now_ns() < end)
			kt_sleep_us(1000);
		calls = atomic_load(&async_calls);
		check(calls == 1 && async_status == ETIMEDOUT,
		      "async deadline: ready() ran %d times, status %d (expected ETIMEDOUT)", calls,
		      async_status);
	} else {
		kt_sleep_us(250000);	/* past the deadline: ready() must not run */
		check(atomic_load(&async_calls) == 0, "failed km_acquire_async %d called ready()",
		      rc);
		check(kt_guard_zero(&req.guard), "failed km_acquire_async: guard not zeroed");
	}
	check_stats(c->km, 1, (size_t)c->extra, "async-with-deadline step");
	for (int i = 0; i < c->extra; i++) {
		int r = km_request_cancel(&extra[i]);

		check(r == 0, "cancel extra request %d: %d", i, r);
	}
	check(atomic_load(&async_calls) == (rc == EINPROGRESS) + c->extra,
	      "ready() ran %d times after cancelling %d extra requests",
	      atomic_load(&async_calls), c->extra);
	km_unlock(&held);
	free(extra);
	check_stats(c->km, 0, 0, "async-with-deadline step, after");
	check_free(c->km, "held", 4, "async-with-deadline step");
	check_works(c->km, "async-with-deadline step");
	return rc;
}

/* ---- km_acquire_all ---- */

struct all_ctx {
	struct km *km;
	unsigned serial;
	unsigned nkeys;
	bool some_held;		/* half the keys already have entries (held by us, shared) */
};

static int step_all(long n, void *arg)
{
	struct all_ctx *c = arg;
	char keys[32][24];
	struct km_key k[32];
	struct km_guard g[32], pre[32];
	int rc;

	(void)n;
	km__fault_fail_after(-1);
	/* A fresh table per step: dead entries of earlier steps may be back
	 * in a used table's pool, and then new keys would allocate nothing. */
	struct km *table = c->km;

	if (km_create(&c->km, NULL) != 0) {
		c->km = table;
		check(false, "km_create for a km_acquire_all step");
		return -1;
	}
	for (unsigned i = 0; i < c->nkeys; i++) {
		int len = snprintf(keys[i], sizeof keys[i], "all-%u-%u", c->serial, i);

		k[i].ptr = keys[i];
		k[i].len = (size_t)len;
	}
	c->serial++;
	/* Existing entries for half the keys: held shared by us, so the
	 * walked call (shared too) finds them and allocates only the rest. */
	unsigned npre = 0;

	if (c->some_held)
		for (unsigned i = 0; i < c->nkeys; i += 2) {
			if (km_lock_shared(c->km, k[i].ptr, k[i].len, &pre[npre]) == 0)
				npre++;
		}
	struct km_lock_options o = { .flags = c->some_held ? KM_SHARED : 0 };

	for (unsigned i = 0; i < c->nkeys; i++)
		kt_poison(&g[i]);
	km__fault_fail_after(n);
	rc = km_acquire_all(c->km, k, c->nkeys, &o, g);
	fault_end();
	if (rc == 0) {
		check(km_unlock_all(g, c->nkeys) == 0, "km_unlock_all");
	} else {
		for (unsigned i = 0; i < c->nkeys; i++)
			check(kt_guard_zero(&g[i]), "km_acquire_all %d: guard %u set", rc, i);
	}
	check_stats(c->km, npre, 0, "after km_acquire_all");
	check(km_unlock_all(pre, npre) == 0, "unlock the pre-held keys");
	check_stats(c->km, 0, 0, "after km_acquire_all");
	for (unsigned i = 0; i < c->nkeys; i++)
		check_free(c->km, k[i].ptr, k[i].len, "after km_acquire_all");
	check_works(c->km, "after km_acquire_all");
	check(km_destroy(c->km) == 0, "km_destroy of a km_acquire_all step's table");
	c->km = table;
	return rc;
}

/* ---- ports and tokens ---- */

static int step_port(long n, void *arg)
{
	struct km_port *p = (struct km_port *)(uintptr_t)0x5A5A;
	int rc = km_port_create(&p);

	(void)n;
	(void)arg;
	fault_end();
	if (rc != 0) {
		check(p == (struct km_port *)(uintptr_t)0x5A5A, "km_port_create failed but wrote *out");
		return rc;
	}
	check(km_port_fd(p) >= 0, "km_port_fd");
	check(km_port_run(p) == 0, "km_port_run on an empty port");
	check(km_port_destroy(p) == 0, "km_port_destroy");
	return 0;
}

static int step_token(long n, void *arg)
{
	struct km_token *t = (struct km_token *)(uintptr_t)0x5A5A;
	int rc = km_token_create(&t);

	(void)n;
	(void)arg;
	fault_end();
	if (rc != 0) {
		check(t == (struct km_token *)(uintptr_t)0x5A5A, "km_token_create failed but wrote *out");
		return rc;
	}
	km_token_cancel(t);
	check(km_token_destroy(t) == 0, "km_token_destroy");
	return 0;
}

int main(void)
{
	long steps, sites;
	struct km *km = NULL;

	setvbuf(stdout, NULL, _IOLBF, 0);
	km__fault_fail_after(-1);

	/* 1. the timer heap's first allocation happens once per process: walk
	 *    the async deadline scenario first. */
	{
		struct km_options o = { .shards = 2 };
		struct async_ctx c = { 0 };

		if (km_create(&km, &o) != 0)
			return 1;
		c.km = km;
		sites = walk(step_async, &c, &steps, ENOMEM, EINPROGRESS,
			     "km_acquire_async deadline (first)");
		check(sites >= 2, "expected the heap and the timer thread as sites, got %ld", sites);
		scenario_end("km_acquire_async deadline (heap, thread)", sites, steps);
		/* the heap has room for 64: with 64 pending the walked one grows it */
		c.extra = 64;
		sites = walk(step_async, &c, &steps, ENOMEM, EINPROGRESS,
			     "km_acquire_async deadline (65th)");
		scenario_end("km_acquire_async deadline (heap growth)", sites, steps);
		check(km_destroy(km) == 0, "km_destroy");
		scenario_end("km_destroy after the async walks", 0, 0);
	}

	/* 2. km_create */
	{
		struct create_ctx c = { .o = { .pool_size = 256, .pool_prefill = 100, .shards = 4 } };

		sites = walk(step_create, &c, &steps, ENOMEM, 0, "km_create");
		check(sites >= 2 + 4 + 100, "km_create: only %ld sites", sites);
		scenario_end("km_create (4 shards, pool_prefill 100)", sites, steps);
		memset(&c, 0, sizeof c);
		sites = walk(step_create, &c, &steps, ENOMEM, 0, "km_create defaults");
		scenario_end("km_create (defaults)", sites, steps);
	}

	/* 3. km_acquire / km_acquire_async of a new key, pooled and unpooled.
	 *    A fresh table each: a key used before may be idle (a second
	 *    sighting keeps it) and a dead entry may be back in the pool, and
	 *    then the first step would allocate nothing. */
	{
		struct km_options o = { .pool_size = 64 };
		static const size_t lens[] = { 0, 5, 40, 64, 65, 150 };

		for (int async = 0; async <= 1; async++)
			for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
				struct acq_ctx c = { .len = lens[i], .serial = 1000u * (unsigned)i,
						     .async = async };
				char name[64];

				if (km_create(&km, &o) != 0)
					return 1;
				c.km = km;
				snprintf(name, sizeof name, "%s of a new %zu-byte key",
					 async ? "km_acquire_async" : "km_acquire", lens[i]);
				sites = walk(step_acquire, &c, &steps, ENOMEM, 0, name);
				check(sites >= 1, "%s: the new entry was not allocated", name);
				scenario_end(name, sites, steps);
				check(km_destroy(km) == 0, "km_destroy");
			}
		scenario_end("km_destroy after the acquire walks", 0, 0);
	}

	/* 4. km_acquire_all of 20 keys (> 16: the order array is allocated) */
	{
		struct all_ctx c = { 0 };

		if (km_create(&km, NULL) != 0)
			return 1;
		c.km = km;
		c.nkeys = 20;
		sites = walk(step_all, &c, &steps, ENOMEM, 0, "km_acquire_all");
		check(sites >= 21, "km_acquire_all of 20 new keys: only %ld sites", sites);
		scenario_end("km_acquire_all (20 new keys)", sites, steps);
		c.some_held = true;
		sites = walk(step_all, &c, &steps, ENOMEM, 0, "km_acquire_all half held");
		scenario_end("km_acquire_all (20 keys, 10 with entries)", sites, steps);
		c.some_held = false;
		c.nkeys = 8;
		sites = walk(step_all, &c, &steps, ENOMEM, 0, "km_acquire_all 8");
		scenario_end("km_acquire_all (8 new keys)", sites, steps);
		check(km_destroy(km) == 0, "km_destroy");
		scenario_end("km_destroy after the acquire_all walks", 0, 0);
	}

	/* 5. ports and tokens */
	sites = walk(step_port, NULL, &steps, ENOMEM, 0, "km_port_create");
	scenario_end("km_port_create", sites, steps);
	sites = walk(step_token, NULL, &steps, ENOMEM, 0, "km_token_create");
	scenario_end("km_token_create", sites, steps);

	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
