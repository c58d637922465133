/*
 * Unit tests: km_acquire, km_unlock and the shorthands (exclusive mode),
 * keyed semaphores (max_holders), KM_FIFO, max_waiters, deadlines, memory
 * ordering; smoke tests of shared mode and owner tables.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include <signal.h>

#include "km_test.h"

static struct km *km;

static void setup_default(void)
{
	cr_assert_eq(km_create(&km, NULL), 0);
}

static void teardown(void)
{
	struct km_stats st = kt_stats(km);

	/* every test leaves nothing held or awaited */
	cr_assert_eq(st.keys, 0, "keys left: %zu", st.keys);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(km_destroy(km), 0);
	km = NULL;
}

TestSuite(acquire, .init = setup_default, .fini = teardown, .timeout = 30);

static struct km *make_table(unsigned max_holders, unsigned max_waiters, unsigned flags)
{
	struct km_options o;
	struct km *t = NULL;

	memset(&o, 0, sizeof o);
	o.max_holders = max_holders;
	o.max_waiters = max_waiters;
	o.flags = flags;
	cr_assert_eq(km_create(&t, &o), 0);
	return t;
}

/* ------------------------------------------------------------------ */
/* EINVAL                                                              */
/* ------------------------------------------------------------------ */

#define EXPECT_FAIL(call, code, g)                                              \
	do {                                                                    \
		kt_poison(g);                                                   \
		int rc_ = (call);                                               \
		cr_assert_eq(rc_, (code), "%s = %d, want %d", #call, rc_, (code)); \
		cr_assert(kt_guard_zero(g), "%s: guard not zeroed on failure", #call); \
	} while (0)

Test(acquire, einval_null_table)
{
	struct km_guard g;

	EXPECT_FAIL(km_acquire(NULL, "k", 1, NULL, &g), EINVAL, &g);
	EXPECT_FAIL(km_lock(NULL, "k", 1, &g), EINVAL, &g);
	EXPECT_FAIL(km_trylock(NULL, "k", 1, &g), EINVAL, &g);
	EXPECT_FAIL(km_timedlock(NULL, "k", 1, NULL, &g), EINVAL, &g);
	EXPECT_FAIL(km_lock_shared(NULL, "k", 1, &g), EINVAL, &g);
	EXPECT_FAIL(km_trylock_shared(NULL, "k", 1, &g), EINVAL, &g);
}

Test(acquire, einval_null_guard)
{
	cr_assert_eq(km_acquire(km, "k", 1, NULL, NULL), EINVAL);
	cr_assert_eq(km_lock(km, "k", 1, NULL), EINVAL);
	cr_assert_eq(km_trylock(km, "k", 1, NULL), EINVAL);
	cr_assert_eq(km_timedlock(km, "k", 1, NULL, NULL), EINVAL);
	cr_assert_eq(km_lock_shared(km, "k", 1, NULL), EINVAL);
	cr_assert_eq(km_trylock_shared(km, "k", 1, NULL), EINVAL);
	cr_assert_eq(km_acquire(NULL, "k", 1, NULL, NULL), EINVAL);
	/* nothing was taken */
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.acquired, 0);
	struct km_guard g;

	cr_assert_eq(km_trylock(km, "k", 1, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
}

Test(acquire, einval_null_key_with_len)
{
	struct km_guard g;

	EXPECT_FAIL(km_acquire(km, NULL, 1, NULL, &g), EINVAL, &g);
	EXPECT_FAIL(km_lock(km, NULL, 8, &g), EINVAL, &g);
	EXPECT_FAIL(km_trylock(km, NULL, SIZE_MAX, &g), EINVAL, &g);
	EXPECT_FAIL(km_timedlock(km, NULL, 3, NULL, &g), EINVAL, &g);
	cr_assert_eq(kt_stats(km).keys, 0);
	cr_assert_eq(kt_stats(km).acquired, 0);
}

Test(acquire, einval_unknown_flags)
{
	static const unsigned bad[] = { 0x4u, 0x8u, 0x100u, 0x80000000u, ~0u,
					KM_TRY | 0x4u, KM_SHARED | 0x10u };
	struct km_lock_options lo;
	struct km_guard g;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(&lo, 0, sizeof lo);
		lo.flags = bad[i];
		EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &g), EINVAL, &g);
	}
	/* also on a held key: EINVAL, not EBUSY, and the holder keeps it */
	struct km_guard h;

	cr_assert_eq(km_lock(km, "k", 1, &h), 0);
	lo.flags = 0x4u | KM_TRY;
	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &g), EINVAL, &g);
	cr_assert_eq(kt_stats(km).holders, 1);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(kt_stats(km).acquired, 1);
}

Test(acquire, einval_bad_deadline)
{
	struct km_lock_options lo;
	struct km_guard g, h;
	struct timespec ts;

	memset(&lo, 0, sizeof lo);
	lo.deadline = &ts;
	ts = kt_deadline_ms(1000);
	ts.tv_nsec = -1;
	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &g), EINVAL, &g);
	EXPECT_FAIL(km_timedlock(km, "k", 1, &ts, &g), EINVAL, &g);
	ts.tv_nsec = 1000000000L;
	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &g), EINVAL, &g);
	EXPECT_FAIL(km_timedlock(km, "k", 1, &ts, &g), EINVAL, &g);
	ts.tv_nsec = 0x7fffffffL;
	EXPECT_FAIL(km_timedlock(km, "k", 1, &ts, &g), EINVAL, &g);
	cr_assert_eq(kt_stats(km).keys, 0);

	/* on a held key too (not ETIMEDOUT, not a wait) */
	cr_assert_eq(km_lock(km, "k", 1, &h), 0);
	ts.tv_nsec = -5;
	EXPECT_FAIL(km_timedlock(km, "k", 1, &ts, &g), EINVAL, &g);
	cr_assert_eq(kt_stats(km).timeouts, 0);
	cr_assert_eq(km_unlock(&h), 0);

	/* the edges of the valid range are accepted (past deadlines: try once) */
	ts.tv_sec = 0;
	ts.tv_nsec = 999999999L;
	cr_assert_eq(km_timedlock(km, "k", 1, &ts, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
	ts.tv_nsec = 0;
	cr_assert_eq(km_timedlock(km, "k", 1, &ts, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
}

Test(acquire, einval_shared_on_semaphore)
{
	struct km *s = make_table(4, 0, 0);
	struct km_guard g;
	struct km_lock_options lo = { .flags = KM_SHARED };

	EXPECT_FAIL(km_lock_shared(s, "k", 1, &g), EINVAL, &g);
	EXPECT_FAIL(km_trylock_shared(s, "k", 1, &g), EINVAL, &g);
	EXPECT_FAIL(km_acquire(s, "k", 1, &lo, &g), EINVAL, &g);
	cr_assert_eq(kt_stats(s).keys, 0);
	cr_assert_eq(km_destroy(s), 0);
}

/* ------------------------------------------------------------------ */
/* km_unlock                                                           */
/* ------------------------------------------------------------------ */

Test(acquire, unlock_null_and_empty)
{
	struct km_guard g = KM_GUARD_INIT;
	struct km_guard z;

	cr_assert_eq(km_unlock(NULL), EINVAL);
	cr_assert_eq(km_unlock(&g), EPERM);
	memset(&z, 0, sizeof z);
	cr_assert_eq(km_unlock(&z), EPERM);
	cr_assert(kt_guard_zero(&z));
}

Test(acquire, double_unlock)
{
	struct km_guard g, h;

	kt_poison(&g);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_not(kt_guard_zero(&g), "a holding guard is all zero");
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert(kt_guard_zero(&g), "km_unlock did not zero the guard");
	cr_assert_eq(km_unlock(&g), EPERM);
	/* the key is free and a double unlock did not corrupt anything */
	cr_assert_eq(km_lock(km, "k", 1, &h), 0);
	cr_assert_eq(km_unlock(&g), EPERM);
	cr_assert_eq(kt_stats(km).holders, 1);
	cr_assert_eq(km_trylock(km, "k", 1, &g), EBUSY);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(kt_stats(km).acquired, 2);
}

Test(acquire, unlock_of_failed_guard_releases_nothing)
{
	struct km_guard h, g;

	cr_assert_eq(km_lock(km, "k", 1, &h), 0);
	cr_assert_eq(km_trylock(km, "k", 1, &g), EBUSY);
	cr_assert_eq(km_unlock(&g), EPERM);
	/* still held by h */
	cr_assert_eq(km_trylock(km, "k", 1, &g), EBUSY);
	cr_assert_eq(kt_stats(km).holders, 1);
	cr_assert_eq(km_unlock(&h), 0);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

Test(acquire, empty_key)
{
	struct km_guard g, h;

	cr_assert_eq(km_lock(km, "ignored", 0, &g), 0, "len == 0 is a valid key");
	/* it is one key whatever the pointer */
	EXPECT_FAIL(km_trylock(km, NULL, 0, &h), EBUSY, &h);
	EXPECT_FAIL(km_trylock(km, "other", 0, &h), EBUSY, &h);
	EXPECT_FAIL(km_trylock(km, "", 0, &h), EBUSY, &h);
	/* and distinct from every non-empty key */
	cr_assert_eq(km_trylock(km, "", 1, &h), 0, "\"\\0\" (len 1) is not the empty key");
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 2);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_lock(km, NULL, 0, &g), 0, "NULL key with len 0 is valid");
	cr_assert_eq(km_unlock(&g), 0);
}

Test(acquire, keys_by_content)
{
	char *a = malloc(6), *b = malloc(6);
	struct km_guard g, h;

	cr_assert(a && b);
	memcpy(a, "hello", 6);
	memcpy(b, "hello", 6);
	cr_assert_eq(km_lock(km, a, 5, &g), 0);
	EXPECT_FAIL(km_trylock(km, b, 5, &h), EBUSY, &h);
	/* the caller's buffer changes or goes away: the held key does not */
	a[0] = 'j';
	EXPECT_FAIL(km_trylock(km, b, 5, &h), EBUSY, &h);
	cr_assert_eq(km_trylock(km, a, 5, &h), 0, "\"jello\" is another key");
	cr_assert_eq(km_unlock(&h), 0);
	free(a);
	EXPECT_FAIL(km_trylock(km, "hello", 5, &h), EBUSY, &h);
	/* prefixes and extensions are other keys */
	cr_assert_eq(km_trylock(km, "hell", 4, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(km_trylock(km, "hello", 6, &h), 0, "\"hello\\0\" is another key");
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_trylock(km, b, 5, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
	free(b);
}

Test(acquire, binary_and_long_keys)
{
	static const size_t lens[] = { 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 255, 4096, 100000 };
	unsigned char *k1 = malloc(100000), *k2 = malloc(100000);
	struct km_guard g, h;

	cr_assert(k1 && k2);
	for (size_t i = 0; i < 100000; i++)
		k1[i] = (unsigned char)(i * 7u);	/* includes NUL bytes */
	for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
		size_t n = lens[i];

		memcpy(k2, k1, n);
		cr_assert_eq(km_lock(km, k1, n, &g), 0, "len %zu", n);
		EXPECT_FAIL(km_trylock(km, k2, n, &h), EBUSY, &h);
		/* change only the last byte: another key */
		k2[n - 1] ^= 0x80;
		cr_assert_eq(km_trylock(km, k2, n, &h), 0, "len %zu last byte differs", n);
		cr_assert_eq(km_unlock(&h), 0);
		/* change only the first byte */
		k2[n - 1] ^= 0x80;
		k2[0] ^= 0x01;
		cr_assert_eq(km_trylock(km, k2, n, &h), 0, "len %zu first byte differs", n);
		cr_assert_eq(km_unlock(&h), 0);
		/* one byte shorter */
		cr_assert_eq(km_trylock(km, k1, n - 1, &h), 0, "len %zu vs %zu", n, n - 1);
		cr_assert_eq(km_unlock(&h), 0);
		/* the caller's copy may be scribbled over */
		memset(k2, 0, n);
		k2[0] = 1;
		cr_assert_eq(km_unlock(&g), 0);
		cr_assert_eq(kt_stats(km).keys, 0);
	}
	free(k1);
	free(k2);
}

Test(acquire, key_buffer_freed_while_held_and_waited)
{
	/* a waiter's key buffer is only needed during the call, too: the waiter
	 * passes a heap copy and we compare with other buffers */
	struct km_guard g, h;
	char *k = strdup("transient-key-longer-than-sixty-four-bytes-so-not-pooled-xxxxxxxxxxxxx");

	cr_assert_not_null(k);
	size_t n = strlen(k);
	char *copy = strdup(k);

	cr_assert_eq(km_lock(km, k, n, &g), 0);
	memset(k, 'z', n);
	free(k);
	EXPECT_FAIL(km_trylock(km, copy, n, &h), EBUSY, &h);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_trylock(km, copy, n, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
	free(copy);
}

/* ------------------------------------------------------------------ */
/* EBUSY                                                               */
/* ------------------------------------------------------------------ */

Test(acquire, trylock_busy)
{
	struct km_guard g, h;
	struct km_lock_options lo = { .flags = KM_TRY };

	cr_assert_eq(km_trylock(km, "k", 1, &g), 0, "a free key");
	EXPECT_FAIL(km_trylock(km, "k", 1, &h), EBUSY, &h);
	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &h), EBUSY, &h);
	/* KM_TRY with a future deadline still does not wait */
	struct timespec dl = kt_deadline_ms(5000);
	uint64_t t0 = kt_now_ns();

	lo.deadline = &dl;
	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &h), EBUSY, &h);
	cr_assert_lt(kt_now_ns() - t0, 2000000000u, "KM_TRY waited");
	/* other keys are unaffected */
	cr_assert_eq(km_trylock(km, "j", 1, &h), 0);
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 2);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(st.timeouts, 0);
	cr_assert_eq(st.rejected, 0);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_trylock(km, "k", 1, &h), 0, "free again after unlock");
	cr_assert_eq(km_unlock(&h), 0);
}

/* ------------------------------------------------------------------ */
/* Threads: blocking, hand-over, ETIMEDOUT                             */
/* ------------------------------------------------------------------ */

struct locker {
	struct km *km;
	const void *key;
	size_t len;
	const struct timespec *deadline;	/* NULL: km_lock */
	unsigned flags;				/* km_acquire flags when deadline == NULL && flags */
	int hold_us;				/* hold this long, then unlock (< 0: keep) */
	atomic_int started, done;
	int rc, rc_unlock;
	uint64_t t_call, t_ret;
	struct km_guard g;
	int *order;				/* appended to under the key */
	int *order_len;
	int id;
};

static void *locker_main(void *p)
{
	struct locker *l = p;
	struct km_lock_options lo = { .flags = l->flags, .deadline = l->deadline };

	atomic_store(&l->started, 1);
	l->t_call = kt_now_ns();
	l->rc = km_acquire(l->km, l->key, l->len, &lo, &l->g);
	l->t_ret = kt_now_ns();
	if (l->rc == 0 && l->order != NULL)
		l->order[(*l->order_len)++] = l->id;	/* plain writes under the key */
	if (l->rc == 0 && l->hold_us >= 0) {
		if (l->hold_us > 0)
			kt_sleep_us(l->hold_us);
		l->rc_unlock = km_unlock(&l->g);
	}
	atomic_store(&l->done, 1);
	return NULL;
}

static void locker_start(pthread_t *t, struct locker *l)
{
	cr_assert_eq(pthread_create(t, NULL, locker_main, l), 0);
}

Test(acquire, lock_blocks_until_unlock)
{
	struct km_guard g;
	struct locker l;
	pthread_t t;

	memset(&l, 0, sizeof l);
	l.km = km;
	l.key = "k";
	l.len = 1;
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	locker_start(&t, &l);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	kt_sleep_us(50000);
	cr_assert_eq(atomic_load(&l.done), 0, "km_lock returned while the key was held");
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 1);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(l.rc, 0);
	cr_assert_eq(l.rc_unlock, 0);
	st = kt_stats(km);
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(st.contended, 1);
}

Test(acquire, timedout_past_deadline_is_try_once)
{
	struct km_guard g, h;
	struct timespec past = kt_deadline_ms(-1000), epoch = { 0, 0 };
	uint64_t t0;

	/* a free key: acquired */
	cr_assert_eq(km_timedlock(km, "k", 1, &past, &g), 0);
	/* a held key: ETIMEDOUT at once */
	t0 = kt_now_ns();
	EXPECT_FAIL(km_timedlock(km, "k", 1, &past, &h), ETIMEDOUT, &h);
	EXPECT_FAIL(km_timedlock(km, "k", 1, &epoch, &h), ETIMEDOUT, &h);
	struct km_lock_options lo = { .deadline = &past };

	EXPECT_FAIL(km_acquire(km, "k", 1, &lo, &h), ETIMEDOUT, &h);
	cr_assert_lt(kt_now_ns() - t0, 2000000000u, "a passed deadline waited");
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.timeouts, 3);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.acquired, 1);
	cr_assert_eq(km_unlock(&g), 0);
}

struct holder {
	struct km *km;
	const char *key;
	atomic_int held, release;
	int rc, rc_unlock;
	struct km_guard g;
};

static void *holder_main(void *p)
{
	struct holder *h = p;

	h->rc = km_lock(h->km, h->key, strlen(h->key), &h->g);
	atomic_store(&h->held, 1);
	while (!atomic_load(&h->release))
		kt_sleep_us(100);
	if (h->rc == 0)
		h->rc_unlock = km_unlock(&h->g);
	return NULL;
}

Test(acquire, timedout_future_deadline)
{
	struct holder h;
	struct km_guard g;
	pthread_t t;

	memset(&h, 0, sizeof h);
	h.km = km;
	h.key = "k";
	cr_assert_eq(pthread_create(&t, NULL, holder_main, &h), 0);
	cr_assert(kt_wait_flag(&h.held, 10000));
	cr_assert_eq(h.rc, 0);

	struct timespec dl = kt_deadline_ms(100);
	uint64_t t0 = kt_now_ns();

	EXPECT_FAIL(km_timedlock(km, "k", 1, &dl, &g), ETIMEDOUT, &g);
	uint64_t el = kt_now_ns() - t0;
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	cr_assert(now.tv_sec > dl.tv_sec || (now.tv_sec == dl.tv_sec && now.tv_nsec >= dl.tv_nsec),
		  "ETIMEDOUT before the deadline (after %llu ns)", (unsigned long long)el);
	cr_assert_lt(el, 5000000000u, "timed out %llu ns after a 100 ms deadline",
		     (unsigned long long)el);
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.timeouts, 1);
	cr_assert_eq(st.waiters, 0, "the timed-out waiter is still counted");
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.keys, 1);
	atomic_store(&h.release, 1);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(h.rc_unlock, 0);
	/* the holder's release after a waiter left: the key is free and clean */
	cr_assert_eq(km_trylock(km, "k", 1, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(kt_stats(km).timeouts, 1);
}

Test(acquire, timedlock_granted_before_deadline)
{
	struct km_guard g;
	struct locker l;
	pthread_t t;
	struct timespec dl = kt_deadline_ms(20000);

	memset(&l, 0, sizeof l);
	l.km = km;
	l.key = "k";
	l.len = 1;
	l.deadline = &dl;
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	locker_start(&t, &l);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(l.rc, 0);
	cr_assert_eq(l.rc_unlock, 0);
	cr_assert_lt(l.t_ret - l.t_call, 15000000000u);
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.timeouts, 0);
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(st.contended, 1);
}

Test(acquire, timeout_of_one_waiter_keeps_others)
{
	/* Two waiters; the first times out, the second must still be granted
	 * when the holder releases (leaving the queue must not lose a wake). */
	struct km_guard g;
	struct locker a, b;
	pthread_t ta, tb;
	/* long enough for both to queue (KM_TIME_SCALE: valgrind) */
	struct timespec dl = kt_deadline_ms(150 * kt_time_scale());

	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	a.km = b.km = km;
	a.key = b.key = "k";
	a.len = b.len = 1;
	a.deadline = &dl;
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	locker_start(&ta, &a);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	locker_start(&tb, &b);
	cr_assert(kt_wait_waiters(km, 2, 10000));
	cr_assert_eq(pthread_join(ta, NULL), 0);
	cr_assert_eq(a.rc, ETIMEDOUT);
	cr_assert(kt_guard_zero(&a.g));
	cr_assert(kt_wait_waiters(km, 1, 10000));
	cr_assert_eq(atomic_load(&b.done), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(tb, NULL), 0);
	cr_assert_eq(b.rc, 0);
	cr_assert_eq(b.rc_unlock, 0);
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.timeouts, 1);
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(st.contended, 1);
}

Test(acquire, last_waiter_times_out_after_holder_left)
{
	/* The only waiter times out while the key is held, then the holder
	 * releases: the entry must die exactly once and the key be reusable.
	 * Repeated to catch a lost or doubly retired entry. */
	for (int i = 0; i < 20; i++) {
		struct km_guard g, h;
		struct timespec dl = kt_deadline_ms(2);
		struct locker a;
		pthread_t ta;

		memset(&a, 0, sizeof a);
		a.km = km;
		a.key = "k";
		a.len = 1;
		a.deadline = &dl;
		cr_assert_eq(km_lock(km, "k", 1, &g), 0);
		locker_start(&ta, &a);
		cr_assert_eq(pthread_join(ta, NULL), 0);
		cr_assert_eq(a.rc, ETIMEDOUT);
		cr_assert_eq(km_unlock(&g), 0);
		cr_assert_eq(kt_stats(km).keys, 0);
		cr_assert_eq(km_trylock(km, "k", 1, &h), 0);
		cr_assert_eq(km_unlock(&h), 0);
	}
	cr_assert_eq(kt_stats(km).timeouts, 20);
}

struct sleeper {
	struct km *km;
	const struct timespec *deadline;
	int rc;
	uint64_t cpu_ns, wall_ns;
};

static void *sleeper_main(void *p)
{
	struct sleeper *s = p;
	struct timespec c0, c1;
	struct km_guard g;
	uint64_t t0 = kt_now_ns();

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
	s->rc = km_timedlock(s->km, "sleep", 5, s->deadline, &g);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
	s->wall_ns = kt_now_ns() - t0;
	s->cpu_ns = (uint64_t)((c1.tv_sec - c0.tv_sec) * 1000000000L + (c1.tv_nsec - c0.tv_nsec));
	if (s->rc == 0)
		km_unlock(&g);
	return NULL;
}

/* A blocked waiter spins briefly, then sleeps: it must not burn a core for
 * the whole wait (none, far-future, or near deadline alike). */
static void waiter_sleeps(const struct timespec *deadline, int want_rc)
{
	struct sleeper s = { .km = km, .deadline = deadline };
	struct km_guard g;
	pthread_t t;

	cr_assert_eq(km_lock(km, "sleep", 5, &g), 0);
	cr_assert_eq(pthread_create(&t, NULL, sleeper_main, &s), 0);
	if (want_rc == 0) {
		cr_assert(kt_wait_waiters(km, 1, 10000));
		kt_sleep_us(300000);
		cr_assert_eq(km_unlock(&g), 0);
		cr_assert_eq(pthread_join(t, NULL), 0);
	} else {
		cr_assert_eq(pthread_join(t, NULL), 0);
		cr_assert_eq(km_unlock(&g), 0);
	}
	cr_assert_eq(s.rc, want_rc);
	cr_assert_lt(s.cpu_ns, s.wall_ns / 4 + 2000000,
		     "a waiter used %llu us of CPU in %llu us of waiting",
		     (unsigned long long)(s.cpu_ns / 1000), (unsigned long long)(s.wall_ns / 1000));
}

Test(acquire, waiter_sleeps_no_deadline)
{
	waiter_sleeps(NULL, 0);
}

Test(acquire, waiter_sleeps_far_deadline)
{
	/* far beyond any clock: must wait like no deadline, not spin or fail */
	struct timespec far = { (time_t)0x7fffffffffffffffLL, 0 };

	waiter_sleeps(&far, 0);
	far.tv_sec = (time_t)1 << 40;
	far.tv_nsec = 999999999L;
	waiter_sleeps(&far, 0);
}

Test(acquire, waiter_sleeps_until_deadline)
{
	struct timespec dl = kt_deadline_ms(300);

	waiter_sleeps(&dl, ETIMEDOUT);
}

static void on_usr1(int sig)
{
	(void)sig;
}

Test(acquire, signals_do_not_interrupt_wait)
{
	/* EINTR from the futex is not an outcome: a waiter hit by signals keeps
	 * waiting (km_lock) or waits until its deadline (km_timedlock). */
	struct sigaction sa;
	struct km_guard g;
	struct locker a, b;
	pthread_t ta, tb;
	struct timespec dl;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;	/* no SA_RESTART: syscalls see EINTR */
	sigemptyset(&sa.sa_mask);
	cr_assert_eq(sigaction(SIGUSR1, &sa, NULL), 0);
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	a.km = b.km = km;
	a.key = b.key = "sig";
	a.len = b.len = 3;
	cr_assert_eq(km_lock(km, "sig", 3, &g), 0);
	locker_start(&ta, &a);
	cr_assert(kt_wait_waiters(km, 1, 10000));
	dl = kt_deadline_ms(200 * kt_time_scale());	/* b must queue first */
	b.deadline = &dl;
	locker_start(&tb, &b);
	cr_assert(kt_wait_waiters(km, 2, 10000));
	for (long i = 0; i < 40 * kt_time_scale() && !atomic_load(&b.done); i++) {
		pthread_kill(ta, SIGUSR1);
		pthread_kill(tb, SIGUSR1);
		kt_sleep_us(5000);
	}
	cr_assert_eq(pthread_join(tb, NULL), 0);
	cr_assert_eq(b.rc, ETIMEDOUT);
	cr_assert(b.t_ret >= (uint64_t)dl.tv_sec * 1000000000u + (uint64_t)dl.tv_nsec,
		  "a signal ended the timed wait before its deadline");
	for (int i = 0; i < 10; i++) {
		pthread_kill(ta, SIGUSR1);
		kt_sleep_us(2000);
	}
	cr_assert_eq(atomic_load(&a.done), 0, "a signal ended km_lock's wait");
	cr_assert_eq(kt_stats(km).waiters, 1);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(ta, NULL), 0);
	cr_assert_eq(a.rc, 0);
	cr_assert_eq(a.rc_unlock, 0);
}

struct sem_waiter {
	struct km *km;
	int id;
	atomic_int *n;
	int *order;
	atomic_int release;
	int rc;
};

static void *sem_waiter_main(void *p)
{
	struct sem_waiter *w = p;
	struct km_guard g;

	w->rc = km_lock(w->km, "fs", 2, &g);
	if (w->rc != 0)
		return NULL;
	w->order[atomic_fetch_add(w->n, 1)] = w->id;
	while (!atomic_load(&w->release))
		kt_sleep_us(100);
	km_unlock(&g);
	return NULL;
}

Test(acquire, fifo_order_semaphore)
{
	/* KM_FIFO with max_holders 2: each freed slot goes to the next waiter
	 * in arrival order */
	enum { K = 6 };
	struct km *t = make_table(2, 0, KM_FIFO);
	struct km_guard g[2];
	struct sem_waiter w[K];
	pthread_t th[K];
	atomic_int n = 0;
	int order[K];

	cr_assert_eq(km_lock(t, "fs", 2, &g[0]), 0);
	cr_assert_eq(km_lock(t, "fs", 2, &g[1]), 0);
	for (int i = 0; i < K; i++) {
		memset(&w[i], 0, sizeof w[i]);
		w[i].km = t;
		w[i].id = i;
		w[i].n = &n;
		w[i].order = order;
		cr_assert_eq(pthread_create(&th[i], NULL, sem_waiter_main, &w[i]), 0);
		cr_assert(kt_wait_waiters(t, (size_t)i + 1, 10000));
	}
	/* free one slot at a time: main's two, then each waiter's in turn */
	for (int i = 0; i < K; i++) {
		if (i < 2)
			cr_assert_eq(km_unlock(&g[i]), 0);
		else
			atomic_store(&w[i - 2].release, 1);
		uint64_t end = kt_now_ns() + 10000000000u;

		while (atomic_load(&n) < i + 1 && kt_now_ns() < end)
			kt_sleep_us(100);
		cr_assert_eq(atomic_load(&n), i + 1, "slot %d was not handed on", i);
		cr_assert_eq(order[i], i, "slot %d went to waiter %d", i, order[i]);
		struct km_stats st = kt_stats(t);

		cr_assert_eq(st.holders, 2);
		cr_assert_eq(st.waiters, (size_t)(K - 1 - i));
	}
	for (int i = 0; i < K; i++) {
		atomic_store(&w[i].release, 1);
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		cr_assert_eq(w[i].rc, 0);
	}
	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.acquired, 2 + K);
	cr_assert_eq(st.contended, K);
	cr_assert_eq(km_destroy(t), 0);
}

/* ------------------------------------------------------------------ */
/* Not thread-affine                                                   */
/* ------------------------------------------------------------------ */

static void *unlock_main(void *p)
{
	struct km_guard *g = p;

	return (void *)(intptr_t)km_unlock(g);
}

Test(acquire, unlock_on_another_thread)
{
	struct km_guard g, h;
	pthread_t t;
	void *rc;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	cr_assert_eq(pthread_create(&t, NULL, unlock_main, &g), 0);
	cr_assert_eq(pthread_join(t, &rc), 0);
	cr_assert_eq((int)(intptr_t)rc, 0);
	cr_assert(kt_guard_zero(&g));
	cr_assert_eq(km_trylock(km, "k", 1, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
}

static void *lock_and_exit_main(void *p)
{
	struct km_guard *g = p;

	return (void *)(intptr_t)km_lock(km, "exit", 4, g);
}

Test(acquire, thread_exits_holding)
{
	struct km_guard g, h;
	pthread_t t;
	void *rc;

	cr_assert_eq(pthread_create(&t, NULL, lock_and_exit_main, &g), 0);
	cr_assert_eq(pthread_join(t, &rc), 0);
	cr_assert_eq((int)(intptr_t)rc, 0);
	cr_assert_eq(km_trylock(km, "exit", 4, &h), EBUSY, "held after its thread exited");
	cr_assert_eq(kt_stats(km).holders, 1);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_trylock(km, "exit", 4, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
}

/* ------------------------------------------------------------------ */
/* max_waiters: EAGAIN                                                 */
/* ------------------------------------------------------------------ */

Test(acquire, max_waiters_eagain)
{
	struct km *t = make_table(0, 2, 0);
	struct km_guard g, h;
	struct locker l[2];
	pthread_t th[2];

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	for (int i = 0; i < 2; i++) {
		memset(&l[i], 0, sizeof l[i]);
		l[i].km = t;
		l[i].key = "k";
		l[i].len = 1;
		locker_start(&th[i], &l[i]);
		cr_assert(kt_wait_waiters(t, (size_t)i + 1, 10000));
	}
	/* the third waiting acquire is rejected at once */
	uint64_t t0 = kt_now_ns();

	EXPECT_FAIL(km_lock(t, "k", 1, &h), EAGAIN, &h);
	struct timespec dl = kt_deadline_ms(10000);

	EXPECT_FAIL(km_timedlock(t, "k", 1, &dl, &h), EAGAIN, &h);
	cr_assert_lt(kt_now_ns() - t0, 5000000000u, "EAGAIN after a wait");
	/* KM_TRY never waits: EBUSY, not EAGAIN */
	EXPECT_FAIL(km_trylock(t, "k", 1, &h), EBUSY, &h);
	/* another key has its own waiter budget */
	cr_assert_eq(km_trylock(t, "j", 1, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);

	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.rejected, 2);
	cr_assert_eq(st.waiters, 2);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.timeouts, 0);
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		cr_assert_eq(l[i].rc, 0);
		cr_assert_eq(l[i].rc_unlock, 0);
	}
	st = kt_stats(t);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.acquired, 4);
	cr_assert_eq(st.contended, 2);
	cr_assert_eq(st.rejected, 2);
	/* below the limit again: waiting works */
	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_destroy(t), 0);
}

Test(acquire, max_waiters_freed_by_timeout)
{
	/* a waiter that timed out no longer counts against max_waiters */
	struct km *t = make_table(0, 1, 0);
	struct km_guard g, h;
	struct locker l;
	pthread_t th;
	struct timespec dl = kt_deadline_ms(50);

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "k";
	l.len = 1;
	l.deadline = &dl;
	locker_start(&th, &l);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(l.rc, ETIMEDOUT);
	cr_assert_eq(kt_stats(t).waiters, 0);
	/* room for one waiter again */
	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "k";
	l.len = 1;
	locker_start(&th, &l);
	cr_assert(kt_wait_waiters(t, 1, 10000));
	EXPECT_FAIL(km_lock(t, "k", 1, &h), EAGAIN, &h);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(l.rc, 0);
	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.timeouts, 1);
	cr_assert_eq(st.rejected, 1);
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(km_destroy(t), 0);
}

Test(acquire, max_waiters_one_on_semaphore)
{
	struct km *t = make_table(2, 1, 0);
	struct km_guard g[2], h;
	struct locker l;
	pthread_t th;

	cr_assert_eq(km_lock(t, "k", 1, &g[0]), 0);
	cr_assert_eq(km_lock(t, "k", 1, &g[1]), 0);
	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "k";
	l.len = 1;
	locker_start(&th, &l);
	cr_assert(kt_wait_waiters(t, 1, 10000));
	EXPECT_FAIL(km_lock(t, "k", 1, &h), EAGAIN, &h);
	cr_assert_eq(kt_stats(t).rejected, 1);
	cr_assert_eq(km_unlock(&g[0]), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(l.rc, 0);
	cr_assert_eq(km_unlock(&g[1]), 0);
	cr_assert_eq(kt_stats(t).keys, 0);
	cr_assert_eq(km_destroy(t), 0);
}

/* ------------------------------------------------------------------ */
/* max_holders: keyed semaphore                                        */
/* ------------------------------------------------------------------ */

Test(acquire, semaphore_exact_capacity)
{
	enum { N = 5 };
	struct km *t = make_table(N, 0, 0);
	struct km_guard g[N], h;

	for (int i = 0; i < N; i++) {
		cr_assert_eq(km_trylock(t, "k", 1, &g[i]), 0, "holder %d of %d", i + 1, N);
		struct km_stats st = kt_stats(t);

		cr_assert_eq(st.holders, (size_t)i + 1);
		cr_assert_eq(st.keys, 1);
	}
	EXPECT_FAIL(km_trylock(t, "k", 1, &h), EBUSY, &h);
	struct timespec past = kt_deadline_ms(-1);

	EXPECT_FAIL(km_timedlock(t, "k", 1, &past, &h), ETIMEDOUT, &h);
	/* other keys have their own N */
	cr_assert_eq(km_trylock(t, "j", 1, &h), 0);
	cr_assert_eq(km_unlock(&h), 0);
	cr_assert_eq(km_unlock(&g[2]), 0);
	cr_assert_eq(kt_stats(t).holders, N - 1);
	cr_assert_eq(km_trylock(t, "k", 1, &g[2]), 0);
	EXPECT_FAIL(km_trylock(t, "k", 1, &h), EBUSY, &h);
	for (int i = 0; i < N; i++)
		cr_assert_eq(km_unlock(&g[i]), 0);
	cr_assert_eq(kt_stats(t).keys, 0);
	cr_assert_eq(km_destroy(t), 0);
}

Test(acquire, semaphore_max_holders_one_is_mutex)
{
	struct km *t = make_table(1, 0, 0);
	struct km_guard g, h;

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	EXPECT_FAIL(km_trylock(t, "k", 1, &h), EBUSY, &h);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_destroy(t), 0);
}

struct sem_arg {
	struct km *km;
	atomic_int *occ, *max_occ, *stop;
	int iters;
	int n;
	int errors;
};

static void *sem_main(void *p)
{
	struct sem_arg *a = p;
	struct km_guard g;

	for (int i = 0; i < a->iters && !atomic_load(a->stop); i++) {
		if (km_lock(a->km, "sem", 3, &g) != 0) {
			a->errors++;
			continue;
		}
		int o = atomic_fetch_add(a->occ, 1) + 1;
		int m = atomic_load(a->max_occ);

		while (o > m && !atomic_compare_exchange_weak(a->max_occ, &m, o))
			;
		/* linger until N holders are in, so the capacity is reached */
		for (int s = 0; s < 50 && atomic_load(a->occ) < a->n; s++)
			sched_yield();
		atomic_fetch_sub(a->occ, 1);
		if (km_unlock(&g) != 0)
			a->errors++;
	}
	return NULL;
}

Test(acquire, semaphore_threads_reach_never_exceed)
{
	enum { N = 3, T = 8 };
	struct km *t = make_table(N, 0, 0);
	atomic_int occ = 0, max_occ = 0, stop = 0;
	struct sem_arg a[T];
	pthread_t th[T];

	for (int i = 0; i < T; i++) {
		a[i] = (struct sem_arg){ .km = t, .occ = &occ, .max_occ = &max_occ,
					 .stop = &stop, .iters = 300, .n = N };
		cr_assert_eq(pthread_create(&th[i], NULL, sem_main, &a[i]), 0);
	}
	for (int i = 0; i < T; i++) {
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		cr_assert_eq(a[i].errors, 0);
	}
	cr_assert_leq(atomic_load(&max_occ), N, "%d holders at once, max_holders %d",
		      atomic_load(&max_occ), N);
	cr_assert_eq(atomic_load(&max_occ), N, "the capacity %d was never reached (max %d)",
		     N, atomic_load(&max_occ));
	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.acquired, (uint64_t)T * 300);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(km_destroy(t), 0);
}

/* ------------------------------------------------------------------ */
/* KM_FIFO                                                             */
/* ------------------------------------------------------------------ */

static void fifo_order(unsigned flags, int timeout_victim)
{
	enum { K = 8 };
	struct km *t = make_table(0, 0, flags);
	struct locker l[K];
	pthread_t th[K];
	struct km_guard g;
	int order[K], order_len = 0;
	struct timespec dl;
	size_t queued = 0;

	cr_assert_eq(km_lock(t, "fifo", 4, &g), 0);
	for (int i = 0; i < K; i++) {
		memset(&l[i], 0, sizeof l[i]);
		l[i].km = t;
		l[i].key = "fifo";
		l[i].len = 4;
		l[i].order = order;
		l[i].order_len = &order_len;
		l[i].id = i;
		if (i == timeout_victim) {
			/* Long enough for all K to queue first, even under TSAN
			 * (and valgrind: KM_TIME_SCALE). */
			dl = kt_deadline_ms(2000 * kt_time_scale());
			l[i].deadline = &dl;
		}
		locker_start(&th[i], &l[i]);
		queued++;
		cr_assert(kt_wait_waiters(t, queued, 10000), "waiter %d never queued", i);
	}
	if (timeout_victim >= 0) {
		cr_assert_eq(pthread_join(th[timeout_victim], NULL), 0);
		cr_assert_eq(l[timeout_victim].rc, ETIMEDOUT);
		cr_assert(kt_wait_waiters(t, K - 1, 10000));
	}
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < K; i++) {
		if (i == timeout_victim)
			continue;
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		cr_assert_eq(l[i].rc, 0);
		cr_assert_eq(l[i].rc_unlock, 0);
	}
	int expect = 0;

	cr_assert_eq(order_len, K - (timeout_victim >= 0));
	for (int i = 0; i < order_len; i++, expect++) {
		if (expect == timeout_victim)
			expect++;
		cr_assert_eq(order[i], expect, "grant %d went to waiter %d, want %d",
			     i, order[i], expect);
	}
	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.acquired, (uint64_t)(1 + order_len));
	cr_assert_eq(st.contended, (uint64_t)order_len);
	cr_assert_eq(st.timeouts, (uint64_t)(timeout_victim >= 0));
	cr_assert_eq(km_destroy(t), 0);
}

Test(acquire, fifo_order)
{
	fifo_order(KM_FIFO, -1);
}

Test(acquire, fifo_order_with_timeout_in_middle)
{
	fifo_order(KM_FIFO, 3);
}

Test(acquire, fifo_order_with_timeout_at_head)
{
	fifo_order(KM_FIFO, 0);
}

Test(acquire, fifo_no_barging)
{
	/* While a waiter is queued on a KM_FIFO table a newcomer's KM_TRY fails
	 * even in the instant the holder releases: the key goes to the waiter. */
	struct km *t = make_table(0, 0, KM_FIFO);
	struct km_guard g, h;
	struct locker l;
	pthread_t th;

	for (int round = 0; round < 20; round++) {
		memset(&l, 0, sizeof l);
		l.km = t;
		l.key = "k";
		l.len = 1;
		l.hold_us = 20000;
		cr_assert_eq(km_lock(t, "k", 1, &g), 0);
		locker_start(&th, &l);
		cr_assert(kt_wait_waiters(t, 1, 10000));
		cr_assert_eq(km_unlock(&g), 0);
		int rc = km_trylock(t, "k", 1, &h);

		if (rc == 0) {
			/* legal only if the waiter already had and released it */
			int done = atomic_load(&l.done);

			km_unlock(&h);
			cr_assert(done, "round %d: a newcomer barged ahead of a FIFO waiter", round);
		}
		cr_assert_eq(pthread_join(th, NULL), 0);
		cr_assert_eq(l.rc, 0);
	}
	cr_assert_eq(km_destroy(t), 0);
}

struct barger {
	struct km *km;
	atomic_int *stop;
	long loops;
};

static void *barger_main(void *p)
{
	struct barger *b = p;
	struct km_guard g;

	while (!atomic_load(b->stop)) {
		if (km_lock(b->km, "hot", 3, &g) == 0) {
			b->loops++;
			km_unlock(&g);
		}
	}
	return NULL;
}

Test(acquire, no_starvation_without_fifo)
{
	/* Two threads relock the key in a tight loop (barging); a third must
	 * still get it within the fairness bound (~1 ms; we allow 2 s). */
	struct km *t = km;
	atomic_int stop = 0;
	struct barger b[2] = { { t, &stop, 0 }, { t, &stop, 0 } };
	pthread_t tb[2], tw;
	struct locker l;

	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "hot";
	l.len = 3;
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&tb[i], NULL, barger_main, &b[i]), 0);
	kt_sleep_us(10000);
	for (int round = 0; round < 5; round++) {
		memset(&l, 0, sizeof l);
		l.km = t;
		l.key = "hot";
		l.len = 3;
		locker_start(&tw, &l);
		bool ok = kt_wait_flag(&l.done, 2000 * kt_time_scale());

		if (!ok)
			atomic_store(&stop, 1);
		cr_assert_eq(pthread_join(tw, NULL), 0);
		cr_assert(ok, "a waiter starved for %ld s behind barging lockers",
			  2 * kt_time_scale());
		cr_assert_eq(l.rc, 0);
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_join(tb[i], NULL), 0);
}

/* ------------------------------------------------------------------ */
/* Memory ordering                                                     */
/* ------------------------------------------------------------------ */

#define MO_WORDS 64
struct mo_shared {
	struct km *km;
	long data[MO_WORDS];	/* plain, written only under the key */
	long turn;		/* plain: 0 = producer's turn, 1 = consumer's */
	long seq;
	long rounds;
	long bad;		/* inconsistencies the consumer saw */
	long consumed;
};

static void *mo_producer(void *p)
{
	struct mo_shared *s = p;
	struct km_guard g;

	for (long done = 0; done < s->rounds;) {
		if (km_lock(s->km, "mo", 2, &g) != 0)
			return (void *)1;
		if (s->turn == 0) {
			s->seq++;
			for (int i = 0; i < MO_WORDS; i++)
				s->data[i] = s->seq * 1000 + i;
			s->turn = 1;
			done++;
		}
		km_unlock(&g);
	}
	return NULL;
}

static void *mo_consumer(void *p)
{
	struct mo_shared *s = p;
	struct km_guard g;
	long expect = 1;

	while (expect <= s->rounds) {
		if (km_lock(s->km, "mo", 2, &g) != 0)
			return (void *)1;
		if (s->turn == 1) {
			if (s->seq != expect)
				s->bad++;
			for (int i = 0; i < MO_WORDS; i++)
				if (s->data[i] != expect * 1000 + i)
					s->bad++;
			s->turn = 0;
			s->consumed++;
			expect++;
		}
		km_unlock(&g);
	}
	return NULL;
}

Test(acquire, memory_ordering_handoff)
{
	struct mo_shared *s = calloc(1, sizeof *s);
	pthread_t tp, tc;
	void *rp, *rc;

	cr_assert_not_null(s);
	s->km = km;
	/* valgrind serialises the two threads: every hand-off is a thread
	 * switch, so far fewer rounds there (ordering is TSAN's job) */
	s->rounds = kt_env_long("KM_MO_ROUNDS", kt_on_valgrind() ? 200 : 20000);
	cr_assert_eq(pthread_create(&tp, NULL, mo_producer, s), 0);
	cr_assert_eq(pthread_create(&tc, NULL, mo_consumer, s), 0);
	cr_assert_eq(pthread_join(tp, &rp), 0);
	cr_assert_eq(pthread_join(tc, &rc), 0);
	cr_assert_null(rp);
	cr_assert_null(rc);
	cr_assert_eq(s->bad, 0, "the consumer saw %ld stale words", s->bad);
	cr_assert_eq(s->consumed, s->rounds);
	free(s);
}

/* ------------------------------------------------------------------ */
/* Smoke: shared mode and owner tables (their own issue tests them)     */
/* ------------------------------------------------------------------ */

Test(acquire, smoke_shared)
{
	struct km_guard r1, r2, w, x;

	cr_assert_eq(km_lock_shared(km, "s", 1, &r1), 0);
	cr_assert_eq(km_trylock_shared(km, "s", 1, &r2), 0);
	EXPECT_FAIL(km_trylock(km, "s", 1, &x), EBUSY, &x);
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(km_unlock(&r1), 0);
	EXPECT_FAIL(km_trylock(km, "s", 1, &x), EBUSY, &x);
	cr_assert_eq(km_unlock(&r2), 0);
	cr_assert_eq(km_trylock(km, "s", 1, &w), 0);
	EXPECT_FAIL(km_trylock_shared(km, "s", 1, &x), EBUSY, &x);
	cr_assert_eq(km_unlock(&w), 0);
	cr_assert_eq(km_unlock(&r1), EPERM);
}

Test(acquire, smoke_recursive)
{
	struct km *t = make_table(0, 0, KM_RECURSIVE);
	struct km_guard g1, g2, x;
	pthread_t th;

	cr_assert_eq(km_lock(t, "r", 1, &g1), 0);
	cr_assert_eq(km_lock(t, "r", 1, &g2), 0, "re-acquire by the owner");
	/* another thread cannot have it */
	struct locker l;

	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "r";
	l.len = 1;
	l.flags = KM_TRY;
	locker_start(&th, &l);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(l.rc, EBUSY);
	cr_assert_eq(km_unlock(&g2), 0);
	/* still held once */
	memset(&l, 0, sizeof l);
	l.km = t;
	l.key = "r";
	l.len = 1;
	l.flags = KM_TRY;
	locker_start(&th, &l);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(l.rc, EBUSY, "one unlock of two nested holds released the key");
	cr_assert_eq(km_unlock(&g1), 0);
	cr_assert_eq(kt_stats(t).keys, 0);
	cr_assert_eq(km_trylock(t, "r", 1, &x), 0);
	cr_assert_eq(km_unlock(&x), 0);
	cr_assert_eq(km_destroy(t), 0);
}

Test(acquire, smoke_errorcheck)
{
	struct km *t = make_table(0, 0, KM_ERRORCHECK);
	struct km_guard g, x;
	pthread_t th;
	void *rc;

	cr_assert_eq(km_lock(t, "e", 1, &g), 0);
	EXPECT_FAIL(km_lock(t, "e", 1, &x), EDEADLK, &x);
	EXPECT_FAIL(km_trylock(t, "e", 1, &x), EDEADLK, &x);
	/* unlock by another owner (thread): EPERM, the key stays held */
	cr_assert_eq(pthread_create(&th, NULL, unlock_main, &g), 0);
	cr_assert_eq(pthread_join(th, &rc), 0);
	cr_assert_eq((int)(intptr_t)rc, EPERM);
	cr_assert_not(kt_guard_zero(&g), "a refused unlock changed the guard");
	cr_assert_eq(kt_stats(t).holders, 1);
	/* a named owner can do the same across threads */
	static int ctx;
	struct km_lock_options lo = { .owner = &ctx };
	struct km_guard o;

	cr_assert_eq(km_acquire(t, "o", 1, &lo, &o), 0);
	EXPECT_FAIL(km_acquire(t, "o", 1, &lo, &x), EDEADLK, &x);
	cr_assert_eq(km_unlock_owner(&o, &ctx), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(kt_stats(t).keys, 0);
	cr_assert_eq(km_destroy(t), 0);
}
