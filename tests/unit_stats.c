/*
 * Unit tests: km_stats, every field, exact in quiescent states; the pool
 * (pool_size, pool_prefill) as seen through stats().pooled.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include "km_test.h"

TestSuite(stats, .timeout = 30);

static struct km *make(size_t pool_size, size_t prefill, unsigned max_holders,
		       unsigned max_waiters, unsigned flags)
{
	struct km_options o;
	struct km *km = NULL;

	memset(&o, 0, sizeof o);
	o.pool_size = pool_size;
	o.pool_prefill = prefill;
	o.max_holders = max_holders;
	o.max_waiters = max_waiters;
	o.flags = flags;
	cr_assert_eq(km_create(&km, &o), 0);
	return km;
}

/* Compare every field with what the test expects. */
struct want {
	size_t keys, holders, waiters;
	uint64_t acquired, contended, timeouts, cancels, rejected;
};

#define CHECK_STATS(km, ...)                                                          \
	do {                                                                          \
		struct want w_ = { __VA_ARGS__ };                                     \
		struct km_stats s_ = kt_stats(km);                                    \
		cr_assert_eq(s_.keys, w_.keys, "keys %zu, want %zu", s_.keys, w_.keys); \
		cr_assert_eq(s_.holders, w_.holders, "holders %zu, want %zu",         \
			     s_.holders, w_.holders);                                 \
		cr_assert_eq(s_.waiters, w_.waiters, "waiters %zu, want %zu",         \
			     s_.waiters, w_.waiters);                                 \
		cr_assert_eq(s_.acquired, w_.acquired, "acquired %llu, want %llu",    \
			     (unsigned long long)s_.acquired,                         \
			     (unsigned long long)w_.acquired);                        \
		cr_assert_eq(s_.contended, w_.contended, "contended %llu, want %llu", \
			     (unsigned long long)s_.contended,                        \
			     (unsigned long long)w_.contended);                       \
		cr_assert_eq(s_.timeouts, w_.timeouts, "timeouts %llu, want %llu",    \
			     (unsigned long long)s_.timeouts,                         \
			     (unsigned long long)w_.timeouts);                        \
		cr_assert_eq(s_.cancels, w_.cancels, "cancels %llu, want %llu",       \
			     (unsigned long long)s_.cancels,                          \
			     (unsigned long long)w_.cancels);                         \
		cr_assert_eq(s_.rejected, w_.rejected, "rejected %llu, want %llu",    \
			     (unsigned long long)s_.rejected,                         \
			     (unsigned long long)w_.rejected);                        \
	} while (0)

Test(stats, einval)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_stats st;

	cr_assert_eq(km_stats(NULL, &st), EINVAL);
	cr_assert_eq(km_stats(km, NULL), EINVAL);
	cr_assert_eq(km_stats(NULL, NULL), EINVAL);
	cr_assert_eq(km_stats(km, &st), 0);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, fresh_table_all_zero)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_stats st;

	memset(&st, 0xA5, sizeof st);
	cr_assert_eq(km_stats(km, &st), 0);
	CHECK_STATS(km, 0);
	cr_assert_eq(st.pooled, 0);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, uncontended_counts)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_guard g[3], x;

	for (int i = 0; i < 100; i++) {
		cr_assert_eq(km_lock(km, "a", 1, &g[0]), 0);
		cr_assert_eq(km_unlock(&g[0]), 0);
	}
	CHECK_STATS(km, .acquired = 100);
	cr_assert_eq(km_lock(km, "a", 1, &g[0]), 0);
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 101);
	cr_assert_eq(km_trylock(km, "b", 1, &g[1]), 0);
	cr_assert_eq(km_lock(km, NULL, 0, &g[2]), 0);
	CHECK_STATS(km, .keys = 3, .holders = 3, .acquired = 103);
	/* failures of KM_TRY and bad arguments count nowhere */
	cr_assert_eq(km_trylock(km, "a", 1, &x), EBUSY);
	cr_assert_eq(km_trylock(km, "b", 1, &x), EBUSY);
	cr_assert_eq(km_lock(km, NULL, 5, &x), EINVAL);
	cr_assert_eq(km_lock(NULL, "a", 1, &x), EINVAL);
	struct km_lock_options bad = { .flags = 0x100 };

	cr_assert_eq(km_acquire(km, "a", 1, &bad, &x), EINVAL);
	cr_assert_eq(km_unlock(&x), EPERM);
	CHECK_STATS(km, .keys = 3, .holders = 3, .acquired = 103);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(km_unlock(&g[i]), 0);
	CHECK_STATS(km, .acquired = 103);
	/* km_stats itself changes nothing */
	CHECK_STATS(km, .acquired = 103);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, keys_count_only_held_or_awaited)
{
	/* idle entries kept for reuse are not keys */
	struct km *km = make(4096, 0, 0, 0, 0);
	struct km_guard g;
	char key[16];

	for (int i = 0; i < 1000; i++) {
		int n = snprintf(key, sizeof key, "%d", i);

		cr_assert_eq(km_lock(km, key, (size_t)n, &g), 0);
		cr_assert_eq(kt_stats(km).keys, 1);
		cr_assert_eq(km_unlock(&g), 0);
		cr_assert_eq(kt_stats(km).keys, 0);
	}
	CHECK_STATS(km, .acquired = 1000);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, semaphore_holders)
{
	struct km *km = make(0, 0, 4, 0, 0);
	struct km_guard g[4];

	for (int i = 0; i < 4; i++)
		cr_assert_eq(km_lock(km, "s", 1, &g[i]), 0);
	CHECK_STATS(km, .keys = 1, .holders = 4, .acquired = 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(km_unlock(&g[i]), 0);
	CHECK_STATS(km, .acquired = 4);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, shared_holders)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_guard g[3];

	for (int i = 0; i < 3; i++)
		cr_assert_eq(km_lock_shared(km, "r", 1, &g[i]), 0);
	CHECK_STATS(km, .keys = 1, .holders = 3, .acquired = 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(km_unlock(&g[i]), 0);
	CHECK_STATS(km, .acquired = 3);
	cr_assert_eq(km_destroy(km), 0);
}

/* A thread that acquires with the given options, then holds until told. */
struct waiter {
	struct km *km;
	const char *key;
	struct km_lock_options lo;
	struct timespec dl;
	atomic_int got, release;
	int rc, rc_unlock;
	struct km_guard g;
};

static void *waiter_main(void *p)
{
	struct waiter *w = p;

	w->rc = km_acquire(w->km, w->key, strlen(w->key), &w->lo, &w->g);
	atomic_store(&w->got, 1);
	if (w->rc == 0) {
		while (!atomic_load(&w->release))
			kt_sleep_us(100);
		w->rc_unlock = km_unlock(&w->g);
	}
	return NULL;
}

Test(stats, waiters_and_contended)
{
	enum { W = 3 };
	struct km *km = make(0, 0, 0, 0, KM_FIFO);
	struct km_guard g;
	struct waiter w[W];
	pthread_t t[W];

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < W; i++) {
		memset(&w[i], 0, sizeof w[i]);
		w[i].km = km;
		w[i].key = "k";
		cr_assert_eq(pthread_create(&t[i], NULL, waiter_main, &w[i]), 0);
		cr_assert(kt_wait_waiters(km, (size_t)i + 1, 10000));
		CHECK_STATS(km, .keys = 1, .holders = 1, .waiters = (size_t)i + 1, .acquired = 1);
	}
	/* a waiter on another key adds a key */
	struct km_guard g2;

	cr_assert_eq(km_lock(km, "other", 5, &g2), 0);
	CHECK_STATS(km, .keys = 2, .holders = 2, .waiters = W, .acquired = 2);
	cr_assert_eq(km_unlock(&g2), 0);

	/* FIFO: each unlock grants exactly the next waiter */
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < W; i++) {
		cr_assert(kt_wait_flag(&w[i].got, 10000));
		cr_assert_eq(w[i].rc, 0);
		CHECK_STATS(km, .keys = 1, .holders = 1, .waiters = (size_t)(W - 1 - i),
			    .acquired = (uint64_t)(3 + i), .contended = (uint64_t)(i + 1));
		atomic_store(&w[i].release, 1);
		cr_assert_eq(pthread_join(t[i], NULL), 0);
		cr_assert_eq(w[i].rc_unlock, 0);
	}
	CHECK_STATS(km, .acquired = 2 + W, .contended = W);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, timeouts)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_guard g, x;
	struct timespec past = kt_deadline_ms(-10);

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(km_timedlock(km, "k", 1, &past, &x), ETIMEDOUT);
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 1, .timeouts = 1);

	struct waiter w;
	pthread_t t;

	memset(&w, 0, sizeof w);
	w.km = km;
	w.key = "k";
	w.dl = kt_deadline_ms(50);
	w.lo.deadline = &w.dl;
	cr_assert_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(w.rc, ETIMEDOUT);
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 1, .timeouts = 2);
	cr_assert_eq(km_unlock(&g), 0);
	/* a timed acquire that succeeds is no timeout */
	cr_assert_eq(km_timedlock(km, "k", 1, &past, &x), 0);
	cr_assert_eq(km_unlock(&x), 0);
	CHECK_STATS(km, .acquired = 2, .timeouts = 2);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, rejected)
{
	struct km *km = make(0, 0, 0, 1, 0);
	struct km_guard g, x;
	struct waiter w;
	pthread_t t;

	memset(&w, 0, sizeof w);
	w.km = km;
	w.key = "k";
	w.release = 1;
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	cr_assert_eq(km_lock(km, "k", 1, &x), EAGAIN);
	cr_assert_eq(km_lock(km, "k", 1, &x), EAGAIN);
	cr_assert_eq(km_trylock(km, "k", 1, &x), EBUSY);
	CHECK_STATS(km, .keys = 1, .holders = 1, .waiters = 1, .acquired = 1, .rejected = 2);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(w.rc, 0);
	CHECK_STATS(km, .acquired = 2, .contended = 1, .rejected = 2);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, cancels)
{
	struct km *km = make(0, 0, 0, 0, 0);
	struct km_token *tok;
	struct km_guard g, x;
	struct km_lock_options lo;

	cr_assert_eq(km_token_create(&tok), 0);
	memset(&lo, 0, sizeof lo);
	lo.cancel = tok;
	/* a live token does not stop a free key */
	cr_assert_eq(km_acquire(km, "k", 1, &lo, &g), 0);
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 1);

	/* a wait cancelled by its token */
	struct waiter w;
	pthread_t t;

	memset(&w, 0, sizeof w);
	w.km = km;
	w.key = "k";
	w.lo.cancel = tok;
	cr_assert_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	km_token_cancel(tok);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(w.rc, ECANCELED);
	cr_assert(kt_guard_zero(&w.g));
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 1, .cancels = 1);
	/* a later acquire with the cancelled token fails at once, free key or not */
	cr_assert_eq(km_acquire(km, "k", 1, &lo, &x), ECANCELED);
	cr_assert_eq(km_acquire(km, "free", 4, &lo, &x), ECANCELED);
	CHECK_STATS(km, .keys = 1, .holders = 1, .acquired = 1, .cancels = 3);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_token_destroy(tok), 0);
	CHECK_STATS(km, .acquired = 1, .cancels = 3);
	cr_assert_eq(km_destroy(km), 0);
}

Test(stats, counters_per_table)
{
	struct km *a = make(0, 0, 0, 0, 0), *b = make(0, 0, 0, 0, 0);
	struct km_guard g;

	cr_assert_eq(km_lock(a, "k", 1, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
	CHECK_STATS(a, .acquired = 1);
	CHECK_STATS(b, 0);
	cr_assert_eq(km_destroy(a), 0);
	cr_assert_eq(km_destroy(b), 0);
}

struct counter_arg {
	struct km *km;
	int iters;
	char key[8];
};

static void *counter_main(void *p)
{
	struct counter_arg *a = p;
	struct km_guard g;

	for (int i = 0; i < a->iters; i++) {
		if (km_lock(a->km, a->key, strlen(a->key), &g) != 0)
			return (void *)1;
		km_unlock(&g);
	}
	return NULL;
}

Test(stats, acquired_summed_over_threads)
{
	/* counters kept per thread (stripes) must add up, from many threads,
	 * also from threads that already exited */
	enum { T = 70, N = 500 };
	struct km *km = make(0, 0, 0, 0, 0);
	struct counter_arg a[T];
	pthread_t t[T];
	void *rc;

	for (int i = 0; i < T; i++) {
		a[i].km = km;
		a[i].iters = N;
		snprintf(a[i].key, sizeof a[i].key, "%d", i % 5);
		cr_assert_eq(pthread_create(&t[i], NULL, counter_main, &a[i]), 0);
	}
	for (int i = 0; i < T; i++) {
		cr_assert_eq(pthread_join(t[i], &rc), 0);
		cr_assert_null(rc);
	}
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.acquired, (uint64_t)T * N);
	cr_assert_leq(st.contended, st.acquired);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.timeouts + st.cancels + st.rejected, 0);
	cr_assert_eq(km_destroy(km), 0);
}

/* ------------------------------------------------------------------ */
/* The pool                                                            */
/* ------------------------------------------------------------------ */

Test(stats, prefill_visible_and_used)
{
	struct km *km = make(256, 256, 0, 0, 0);
	struct km_guard g[8];

	cr_assert_eq(kt_stats(km).pooled, 256);
	/* holding keys takes entries from the pool (short keys are pooled) */
	for (int i = 0; i < 8; i++) {
		char k[4] = { 'k', (char)('0' + i), 0, 0 };

		cr_assert_eq(km_lock(km, k, 2, &g[i]), 0);
	}
	size_t pooled = kt_stats(km).pooled;

	cr_assert_lt(pooled, 256, "8 keys held and nothing taken from a full pool");
	cr_assert_geq(pooled, 256 - 8);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(km_unlock(&g[i]), 0);
	cr_assert_leq(kt_stats(km).pooled, 256);
	cr_assert_eq(km_destroy(km), 0);
}

struct churn_arg {
	struct km *km;
	int n, base, errors;
};

static void *churn_main(void *p)
{
	struct churn_arg *a = p;
	struct km_guard g;
	char key[24];

	for (int i = 0; i < a->n; i++) {
		int len = snprintf(key, sizeof key, "c%d", a->base + i);

		if (km_lock(a->km, key, (size_t)len, &g) != 0 || km_unlock(&g) != 0)
			a->errors++;
	}
	return NULL;
}

/* n distinct keys locked and unlocked by 4 threads (the pool is per-thread
 * striped: every stripe gets to push and pop) */
static void churn(struct km *km, int n, int base)
{
	enum { T = 4 };
	struct churn_arg a[T];
	pthread_t t[T];

	for (int i = 0; i < T; i++) {
		a[i] = (struct churn_arg){ km, n / T, base + i * (n / T), 0 };
		cr_assert_eq(pthread_create(&t[i], NULL, churn_main, &a[i]), 0);
	}
	for (int i = 0; i < T; i++) {
		cr_assert_eq(pthread_join(t[i], NULL), 0);
		cr_assert_eq(a[i].errors, 0);
	}
}

Test(stats, pooled_bounded_by_pool_size)
{
	static const size_t sizes[] = { 1, 8, 64, 100, 1000 };

	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		struct km *km = make(sizes[s], sizes[s] / 2, 0, 0, 0);

		cr_assert_eq(kt_stats(km).pooled, sizes[s] / 2);
		/* churn, sampling while reclamation runs */
		for (int round = 0; round < 20; round++) {
			churn(km, 500, round * 500);
			struct km_stats st = kt_stats(km);

			cr_assert_leq(st.pooled, sizes[s], "pool_size %zu: pooled %zu",
				      sizes[s], st.pooled);
			cr_assert_eq(st.keys, 0);
		}
		for (int i = 0; i < 50; i++) {
			kt_sleep_us(2000);
			cr_assert_leq(kt_stats(km).pooled, sizes[s]);
		}
		cr_assert_eq(kt_stats(km).acquired, 20 * 500);
		cr_assert_eq(km_destroy(km), 0);
	}
}

Test(stats, pooling_on_by_default)
{
	/* with the default pool_size, churn refills the pool once the retired
	 * entries' grace periods end */
	struct km *km = make(0, 0, 0, 0, 0);
	uint64_t end = kt_now_ns() + 10000000000u;
	size_t pooled = 0;
	int base = 0;

	while (kt_now_ns() < end) {
		churn(km, 1000, base);
		base += 1000;
		pooled = kt_stats(km).pooled;
		if (pooled > 0)
			break;
		kt_sleep_us(5000);
	}
	cr_assert_gt(pooled, 0, "no entry ever came back to the default pool");
	cr_assert_eq(kt_stats(km).keys, 0);
	cr_assert_eq(km_destroy(km), 0);
}
