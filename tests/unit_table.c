/*
 * Unit tests: the table (km_create, km_destroy) and its options.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include "km_test.h"

TestSuite(table, .timeout = 30);

#define SENTINEL ((struct km *)(uintptr_t)0x5EED)

/* km_create must fail with EINVAL and leave *out untouched. */
static void expect_create_einval(const struct km_options *o, const char *what)
{
	struct km *km = SENTINEL;

	cr_assert_eq(km_create(&km, o), EINVAL, "km_create(%s) must be EINVAL", what);
	cr_assert_eq(km, SENTINEL, "km_create(%s) touched *out on failure", what);
}

static void expect_create_ok(const struct km_options *o, const char *what)
{
	struct km *km = NULL;
	struct km_guard g = KM_GUARD_INIT;

	cr_assert_eq(km_create(&km, o), 0, "km_create(%s) must succeed", what);
	cr_assert_not_null(km);
	/* and the table works */
	cr_assert_eq(km_lock(km, "k", 1, &g), 0, "%s", what);
	cr_assert_eq(km_unlock(&g), 0, "%s", what);
	cr_assert_eq(km_destroy(km), 0, "%s", what);
}

Test(table, create_defaults)
{
	struct km *km = NULL;
	struct km_options zero;
	struct km_stats st;

	cr_assert_eq(km_create(&km, NULL), 0);
	cr_assert_not_null(km);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.pooled, 0, "no prefill by default, got %zu", st.pooled);
	cr_assert_eq(st.acquired, 0);
	cr_assert_eq(st.contended, 0);
	cr_assert_eq(st.timeouts, 0);
	cr_assert_eq(st.cancels, 0);
	cr_assert_eq(st.rejected, 0);
	cr_assert_eq(km_destroy(km), 0);

	memset(&zero, 0, sizeof zero);
	expect_create_ok(&zero, "all-zero options");
}

Test(table, create_null_out)
{
	struct km_options o;

	cr_assert_eq(km_create(NULL, NULL), EINVAL);
	memset(&o, 0, sizeof o);
	cr_assert_eq(km_create(NULL, &o), EINVAL);
}

Test(table, create_unknown_flags)
{
	static const unsigned bad[] = { 0x8u, 0x10u, 0x100u, 0x80000000u, ~0u,
					KM_FIFO | 0x8u };
	struct km_options o;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&o, 0, sizeof o);
		o.flags = bad[i];
		expect_create_einval(&o, "unknown flag bits");
	}
	/* every known flag alone is accepted */
	memset(&o, 0, sizeof o);
	o.flags = KM_FIFO;
	expect_create_ok(&o, "KM_FIFO");
	o.flags = KM_RECURSIVE;
	expect_create_ok(&o, "KM_RECURSIVE");
	o.flags = KM_ERRORCHECK;
	expect_create_ok(&o, "KM_ERRORCHECK");
	o.flags = KM_FIFO | KM_ERRORCHECK;
	expect_create_ok(&o, "KM_FIFO|KM_ERRORCHECK");
}

Test(table, create_contradictory_flags)
{
	struct km_options o;

	memset(&o, 0, sizeof o);
	o.flags = KM_RECURSIVE | KM_ERRORCHECK;
	expect_create_einval(&o, "KM_RECURSIVE|KM_ERRORCHECK");
	o.flags = KM_FIFO | KM_RECURSIVE | KM_ERRORCHECK;
	expect_create_einval(&o, "KM_FIFO|KM_RECURSIVE|KM_ERRORCHECK");
}

Test(table, create_owner_tracking_needs_mutex)
{
	struct km_options o;

	memset(&o, 0, sizeof o);
	o.max_holders = 2;
	o.flags = KM_RECURSIVE;
	expect_create_einval(&o, "KM_RECURSIVE with max_holders 2");
	o.flags = KM_ERRORCHECK;
	expect_create_einval(&o, "KM_ERRORCHECK with max_holders 2");
	o.max_holders = 1;
	expect_create_ok(&o, "KM_ERRORCHECK with max_holders 1");
	o.flags = KM_RECURSIVE;
	expect_create_ok(&o, "KM_RECURSIVE with max_holders 1");
}

Test(table, create_shards)
{
	static const unsigned bad[] = { 3, 5, 6, 7, 12, 100, 4095, 4097, 8192, 0x80000000u, ~0u };
	static const unsigned good[] = { 1, 2, 4, 8, 64, 1024, KM_MAX_SHARDS };
	struct km_options o;
	char what[64];

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&o, 0, sizeof o);
		o.shards = bad[i];
		snprintf(what, sizeof what, "shards=%u", bad[i]);
		expect_create_einval(&o, what);
	}
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		memset(&o, 0, sizeof o);
		o.shards = good[i];
		snprintf(what, sizeof what, "shards=%u", good[i]);
		expect_create_ok(&o, what);
	}
}

Test(table, create_limits)
{
	struct km_options o;

	memset(&o, 0, sizeof o);
	o.max_holders = KM_MAX_HOLDERS + 1;
	expect_create_einval(&o, "max_holders above KM_MAX_HOLDERS");
	o.max_holders = ~0u;
	expect_create_einval(&o, "max_holders ~0");
	o.max_holders = KM_MAX_HOLDERS;
	expect_create_ok(&o, "max_holders KM_MAX_HOLDERS");

	memset(&o, 0, sizeof o);
	o.max_waiters = KM_MAX_WAITERS + 1;
	expect_create_einval(&o, "max_waiters above KM_MAX_WAITERS");
	o.max_waiters = ~0u;
	expect_create_einval(&o, "max_waiters ~0");
	o.max_waiters = KM_MAX_WAITERS;
	expect_create_ok(&o, "max_waiters KM_MAX_WAITERS");
}

Test(table, create_pool_prefill)
{
	struct km_options o;
	struct km *km = NULL;

	memset(&o, 0, sizeof o);
	o.pool_size = 10;
	o.pool_prefill = 11;
	expect_create_einval(&o, "pool_prefill 11 > pool_size 10");
	o.pool_size = 1;
	o.pool_prefill = SIZE_MAX;
	expect_create_einval(&o, "pool_prefill SIZE_MAX > pool_size 1");

	/* prefill is visible in km_stats right after km_create */
	static const size_t sizes[][2] = { { 10, 10 }, { 10, 3 }, { 100, 100 }, { 100, 65 },
					   { 1000, 999 }, { 64, 64 }, { 5, 0 } };

	for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		memset(&o, 0, sizeof o);
		o.pool_size = sizes[i][0];
		o.pool_prefill = sizes[i][1];
		cr_assert_eq(km_create(&km, &o), 0, "pool_size %zu prefill %zu",
			     sizes[i][0], sizes[i][1]);
		struct km_stats st = kt_stats(km);

		cr_assert_eq(st.pooled, sizes[i][1], "pool_size %zu prefill %zu: pooled %zu",
			     sizes[i][0], sizes[i][1], st.pooled);
		cr_assert_eq(st.keys, 0);
		cr_assert_eq(km_destroy(km), 0);
	}

	/* pool_size 0 means the default pool (pooling on): a small prefill is
	 * within it. */
	memset(&o, 0, sizeof o);
	o.pool_prefill = 5;
	cr_assert_eq(km_create(&km, &o), 0, "prefill 5 with the default pool_size");
	cr_assert_eq(kt_stats(km).pooled, 5);
	cr_assert_eq(km_destroy(km), 0);
}

Test(table, create_sizing_hints)
{
	struct km_options o;

	memset(&o, 0, sizeof o);
	o.expected_keys = 1;
	expect_create_ok(&o, "expected_keys 1");
	o.expected_keys = 1000000;
	expect_create_ok(&o, "expected_keys 1e6");
	o.expected_keys = 1;
	o.shards = 1;
	expect_create_ok(&o, "expected_keys 1 shards 1");
}

Test(table, destroy_null)
{
	cr_assert_eq(km_destroy(NULL), EINVAL);
}

/* The table after an EBUSY from km_destroy: the same as before, and usable. */
static void check_busy_table_usable(struct km *km, const char *held, size_t pooled)
{
	struct km_guard g;
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.pooled, pooled, "EBUSY destroy changed pooled: %zu -> %zu",
		     pooled, st.pooled);
	/* the held key is still held */
	kt_poison(&g);
	cr_assert_eq(km_trylock(km, held, strlen(held), &g), EBUSY);
	cr_assert(kt_guard_zero(&g));
	/* other keys work */
	cr_assert_eq(km_lock(km, "other", 5, &g), 0);
	cr_assert_eq(kt_stats(km).keys, st.keys + 1);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(kt_stats(km).keys, st.keys);
}

Test(table, destroy_busy_held)
{
	struct km_options o;
	struct km *km;
	struct km_guard g;
	struct km_stats st;

	memset(&o, 0, sizeof o);
	o.pool_size = 64;
	o.pool_prefill = 64;
	cr_assert_eq(km_create(&km, &o), 0);
	cr_assert_eq(km_lock(km, "held", 4, &g), 0);
	cr_assert_eq(km_destroy(km), EBUSY);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.acquired, 1);
	/* EBUSY again, and again: nothing is torn down piecewise */
	cr_assert_eq(km_destroy(km), EBUSY);
	check_busy_table_usable(km, "held", st.pooled);
	cr_assert_eq(km_destroy(km), EBUSY);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_destroy(km), 0);
}

Test(table, destroy_busy_empty_key)
{
	struct km *km;
	struct km_guard g;

	cr_assert_eq(km_create(&km, NULL), 0);
	cr_assert_eq(km_lock(km, NULL, 0, &g), 0);
	cr_assert_eq(km_destroy(km), EBUSY);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_destroy(km), 0);
}

Test(table, destroy_busy_semaphore)
{
	struct km_options o;
	struct km *km;
	struct km_guard g[3];

	memset(&o, 0, sizeof o);
	o.max_holders = 3;
	cr_assert_eq(km_create(&km, &o), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(km_lock(km, "s", 1, &g[i]), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(km_destroy(km), EBUSY, "with %d holders left", 3 - i);
		cr_assert_eq(km_unlock(&g[i]), 0);
	}
	cr_assert_eq(km_destroy(km), 0);
}

struct waiter_arg {
	struct km *km;
	const char *key;
	atomic_int started, got, release;
	int rc, rc_unlock;
	struct km_guard g;
};

static void *waiter_main(void *p)
{
	struct waiter_arg *a = p;

	atomic_store(&a->started, 1);
	a->rc = km_lock(a->km, a->key, strlen(a->key), &a->g);
	atomic_store(&a->got, 1);
	while (!atomic_load(&a->release))
		kt_sleep_us(100);
	a->rc_unlock = a->rc == 0 ? km_unlock(&a->g) : 0;
	return NULL;
}

Test(table, destroy_busy_awaited)
{
	struct km_options o;
	struct km *km;
	struct km_guard g;
	struct waiter_arg a;
	pthread_t t;
	struct km_stats st;

	memset(&o, 0, sizeof o);
	o.pool_size = 32;
	o.pool_prefill = 32;
	memset(&a, 0, sizeof a);
	cr_assert_eq(km_create(&km, &o), 0);
	a.km = km;
	a.key = "awaited";
	cr_assert_eq(km_lock(km, "awaited", 7, &g), 0);
	cr_assert_eq(pthread_create(&t, NULL, waiter_main, &a), 0);
	cr_assert(kt_wait_waiters(km, 1, 10000), "the waiter never queued");

	cr_assert_eq(km_destroy(km), EBUSY);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 1, "EBUSY destroy lost the waiter");
	cr_assert_eq(atomic_load(&a.got), 0, "the waiter was woken by km_destroy");
	check_busy_table_usable(km, "awaited", st.pooled);

	/* hand the key to the waiter: it holds it now, destroy still EBUSY */
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert(kt_wait_flag(&a.got, 10000));
	cr_assert_eq(a.rc, 0);
	cr_assert_eq(km_destroy(km), EBUSY);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 0);
	atomic_store(&a.release, 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(a.rc_unlock, 0);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.acquired, 3);	/* main, the other key, the waiter */
	cr_assert_eq(st.contended, 1);
	cr_assert_eq(km_destroy(km), 0);
}

Test(table, destroy_after_churn)
{
	/* Entries retired and pooled (pending RCU callbacks) are reclaimed by
	 * km_destroy: run under ASan/valgrind this also checks for leaks. */
	struct km_options o;
	struct km *km;
	struct km_guard g;
	char key[32];

	memset(&o, 0, sizeof o);
	o.pool_size = 16;
	cr_assert_eq(km_create(&km, &o), 0);
	for (int i = 0; i < 20000; i++) {
		int n = snprintf(key, sizeof key, "churn-%d", i);

		cr_assert_eq(km_lock(km, key, (size_t)n, &g), 0);
		cr_assert_eq(km_unlock(&g), 0);
	}
	/* long keys are allocated outside the pool */
	char big[300];

	memset(big, 'x', sizeof big);
	for (int i = 0; i < 500; i++) {
		memcpy(big, &i, sizeof i);
		cr_assert_eq(km_lock(km, big, sizeof big, &g), 0);
		cr_assert_eq(km_unlock(&g), 0);
	}
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 0);
	cr_assert_leq(st.pooled, 16);
	cr_assert_eq(st.acquired, 20500);
	cr_assert_eq(km_destroy(km), 0);
}

/* The entry a guard holds (the guard's layout is the library's; a test may
 * peek to tell "the same entry, found idle" from "a fresh one"). */
static uintptr_t held_entry(const struct km_guard *g)
{
	return g->priv[1] & ~(uintptr_t)15;
}

Test(table, idle_only_on_second_sighting)
{
	/* Issue 12 / review note 7: a release keeps an entry idle only for a
	 * key its thread killed recently. The first release of a key kills
	 * it (nothing idle: the dead entry waits on this stripe's retire
	 * stack, which is far from a batch); the second keeps it idle (found
	 * by km_stats as pooled), and the next acquire takes that same entry. */
	struct km *km;
	struct km_guard g;
	uintptr_t fresh;
	char key[32];

	cr_assert_eq(km_create(&km, NULL), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(kt_stats(km).pooled, 0, "a key's first release kept it idle");
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	fresh = held_entry(&g);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(kt_stats(km).pooled, 1, "a key's second release did not keep it idle");
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(held_entry(&g), fresh, "the idle entry was not reused");
	cr_assert_eq(km_unlock(&g), 0);
	/* A stream of new keys, more than an idle ring holds, is not admitted
	 * and so evicts nothing: "k" is still idle, the same entry. */
	for (int i = 0; i < 3000; i++) {
		int n = snprintf(key, sizeof key, "new-%d", i);

		cr_assert_eq(km_lock(km, key, (size_t)n, &g), 0);
		cr_assert_eq(km_unlock(&g), 0);
	}
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(held_entry(&g), fresh, "new keys evicted a recurring key's idle entry");
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_destroy(km), 0);
}

Test(table, tables_are_independent)
{
	struct km *a, *b;
	struct km_guard ga, gb;

	cr_assert_eq(km_create(&a, NULL), 0);
	cr_assert_eq(km_create(&b, NULL), 0);
	cr_assert_neq(a, b);
	cr_assert_eq(km_lock(a, "same", 4, &ga), 0);
	cr_assert_eq(km_trylock(b, "same", 4, &gb), 0, "a key of one table blocks another");
	cr_assert_eq(kt_stats(a).keys, 1);
	cr_assert_eq(kt_stats(b).keys, 1);
	cr_assert_eq(km_destroy(a), EBUSY);
	cr_assert_eq(km_unlock(&ga), 0);
	cr_assert_eq(km_destroy(a), 0);
	/* b is unaffected by a's destruction */
	cr_assert_eq(km_trylock(b, "same", 4, &ga), EBUSY);
	cr_assert_eq(km_unlock(&gb), 0);
	cr_assert_eq(km_destroy(b), 0);
}

/* Many keys held at once in tiny tables: long chains, all compared right. */
static void many_keys_held(unsigned shards, size_t expected)
{
	enum { N = 2000 };
	struct km_options o;
	struct km *km;
	struct km_guard *g = calloc(N, sizeof *g);
	struct km_guard t;
	char key[32];

	cr_assert_not_null(g);
	memset(&o, 0, sizeof o);
	o.shards = shards;
	o.expected_keys = expected;
	cr_assert_eq(km_create(&km, &o), 0);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof key, "k%d", i);

		cr_assert_eq(km_trylock(km, key, (size_t)n, &g[i]), 0, "key %d", i);
	}
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, N);
	cr_assert_eq(st.holders, N);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof key, "k%d", i);

		cr_assert_eq(km_trylock(km, key, (size_t)n, &t), EBUSY, "key %d", i);
	}
	/* release every other key: those are free again, the rest still held */
	for (int i = 0; i < N; i += 2)
		cr_assert_eq(km_unlock(&g[i]), 0);
	cr_assert_eq(kt_stats(km).keys, N / 2);
	for (int i = 0; i < N; i++) {
		int n = snprintf(key, sizeof key, "k%d", i);
		int rc = km_trylock(km, key, (size_t)n, &t);

		if (i % 2 == 0) {
			cr_assert_eq(rc, 0, "key %d", i);
			cr_assert_eq(km_unlock(&t), 0);
		} else {
			cr_assert_eq(rc, EBUSY, "key %d", i);
		}
	}
	for (int i = 1; i < N; i += 2)
		cr_assert_eq(km_unlock(&g[i]), 0);
	st = kt_stats(km);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(km_destroy(km), 0);
	free(g);
}

Test(table, many_keys_one_shard_tiny)
{
	many_keys_held(1, 1);
}

Test(table, many_keys_max_shards)
{
	many_keys_held(KM_MAX_SHARDS, 0);
}

Test(table, many_keys_defaults)
{
	many_keys_held(0, 0);
}
