/*
 * Unit tests (issue 4): km_acquire_async and every one of its outcomes,
 * km_request_cancel, completion ports, cancellation tokens, the one queue
 * shared by sync and async waiters, max_holders / shared mode for async
 * requests, and the per-thread trampoline that keeps ready() from recursing.
 *
 * Criterion assertions run on the test's main thread only (km_test.h): the
 * ready() callbacks and helper threads record what they saw in struct rec /
 * atomics, and the main thread checks after the fact.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <poll.h>

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
	cr_assert_eq(st.holders, 0, "holders left: %zu", st.holders);
	cr_assert_eq(st.waiters, 0, "waiters left: %zu", st.waiters);
	cr_assert_eq(km_destroy(km), 0);
	km = NULL;
}

TestSuite(async, .init = setup_default, .fini = teardown, .timeout = 60);

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

static void destroy_table(struct km *t)
{
	struct km_stats st = kt_stats(t);

	cr_assert_eq(st.keys, 0, "keys left: %zu", st.keys);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(km_destroy(t), 0);
}

/* ------------------------------------------------------------------ */
/* What a ready() saw                                                  */
/* ------------------------------------------------------------------ */

struct rec {
	atomic_int calls;		/* ready() calls; the fields below are written before it */
	int status;
	pthread_t thread;		/* where ready() ran */
	bool held;			/* req->guard held something in ready() */
	bool unlock;			/* in: unlock the guard inside ready() */
	int unlock_rc;
	uint64_t t_ns;			/* when ready() ran */
	int seq;			/* global arrival order of grants (order tests) */
	atomic_int *seqctr;		/* in: counter for seq, or NULL */
};

static void rec_ready(struct km_request *req, int status)
{
	struct rec *r = req->arg;

	r->status = status;
	r->thread = pthread_self();
	r->held = !kt_guard_zero(&req->guard);
	r->t_ns = kt_now_ns();
	if (r->seqctr != NULL && status == 0)
		r->seq = atomic_fetch_add(r->seqctr, 1);
	if (r->unlock && status == 0)
		r->unlock_rc = km_unlock(&req->guard);
	atomic_fetch_add(&r->calls, 1);
}

static void req_init(struct km_request *req, struct rec *r, struct km_port *port)
{
	memset(r, 0, sizeof *r);
	memset(req, 0xA5, sizeof *req);		/* the library must not read out-fields */
	req->ready = rec_ready;
	req->arg = r;
	req->port = port;
}

/* Wait until r has been called back (at most ms). */
static bool rec_wait(struct rec *r, long ms)
{
	return kt_wait_flag(&r->calls, ms);
}

static bool key_busy(struct km *t, const char *key)
{
	struct km_guard g;
	int rc = km_trylock(t, key, strlen(key), &g);

	if (rc == 0)
		km_unlock(&g);
	return rc == EBUSY;
}

static bool fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static uint64_t ts_ns(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
}

/* ------------------------------------------------------------------ */
/* Outcome 0: acquired at once                                         */
/* ------------------------------------------------------------------ */

Test(async, immediate_grant_holds_and_no_ready)
{
	struct km_request req;
	struct rec r;

	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), 0);
	cr_assert(!kt_guard_zero(&req.guard), "guard must hold the key");
	cr_assert(key_busy(km, "k"));
	kt_sleep_us(20000);
	cr_assert_eq(atomic_load(&r.calls), 0, "ready() must not run for an immediate grant");
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.acquired, 1);
	cr_assert_eq(km_unlock(&req.guard), 0);
	cr_assert(kt_guard_zero(&req.guard));
	cr_assert_eq(km_unlock(&req.guard), EPERM);
	cr_assert(!key_busy(km, "k"));
	cr_assert_eq(atomic_load(&r.calls), 0);
}

Test(async, immediate_grant_with_port_posts_nothing)
{
	struct km_port *p;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_port_create(&p), 0);
	req_init(&req, &r, p);
	cr_assert_eq(km_acquire_async(km, "", 0, NULL, &req), 0);	/* empty key too */
	cr_assert(!fd_readable(km_port_fd(p)));
	cr_assert_eq(km_port_run(p), 0);
	cr_assert_eq(km_port_destroy(p), 0, "nothing pending after an immediate grant");
	cr_assert_eq(atomic_load(&r.calls), 0);
	cr_assert_eq(km_unlock(&req.guard), 0);
}

Test(async, immediate_grant_key_copied)
{
	struct km_request req;
	struct rec r;
	char buf[8] = "abc";

	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, buf, 3, NULL, &req), 0);
	memcpy(buf, "zzz", 3);
	cr_assert(key_busy(km, "abc"));
	cr_assert(!key_busy(km, "zzz"));
	cr_assert_eq(km_unlock(&req.guard), 0);
}

/* ------------------------------------------------------------------ */
/* EINPROGRESS, then exactly one ready()                               */
/* ------------------------------------------------------------------ */

Test(async, inprogress_then_grant_on_unlocking_thread)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 0, "ready() ran before the key was released");
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.keys, 1);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 1, "an async request is a waiter, got %zu", st.waiters);
	cr_assert_eq(km_destroy(km), EBUSY, "a pending async request keeps the table busy");

	cr_assert_eq(km_unlock(&g), 0);
	/* no port: ready() runs on the thread that grants, before km_unlock returns */
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(r.status, 0);
	cr_assert(r.held, "guard must hold the key inside ready()");
	cr_assert(pthread_equal(r.thread, pthread_self()));
	cr_assert(key_busy(km, "k"));
	st = kt_stats(km);
	cr_assert_eq(st.holders, 1);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.contended, 1, "the async grant counts as contended");
	cr_assert_eq(st.acquired, 2);
	cr_assert_eq(km_unlock(&req.guard), 0);
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 1, "exactly one ready()");
}

struct unlocker {
	struct km_guard *g;
	long delay_us;
	pthread_t self;
	int rc;
};

static void *unlock_later(void *arg)
{
	struct unlocker *u = arg;

	u->self = pthread_self();
	kt_sleep_us(u->delay_us);
	u->rc = km_unlock(u->g);
	return NULL;
}

Test(async, grant_by_other_thread_runs_ready_there)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct unlocker u = { .g = &g, .delay_us = 20000 };
	pthread_t t;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	r.unlock = true;
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert_eq(pthread_create(&t, NULL, unlock_later, &u), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(u.rc, 0);
	cr_assert_eq(atomic_load(&r.calls), 1, "ready() must have run inside the other thread's km_unlock");
	cr_assert_eq(r.status, 0);
	cr_assert(pthread_equal(r.thread, u.self), "no port: ready() runs on the granting thread");
	cr_assert_eq(r.unlock_rc, 0, "ready() may unlock its guard");
}

Test(async, inprogress_then_timeout_on_timer_thread)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct timespec dl = kt_deadline_ms(30);
	struct km_lock_options o = { .deadline = &dl };

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), EINPROGRESS);
	cr_assert(rec_wait(&r, 5000), "the deadline never fired");
	cr_assert_eq(r.status, ETIMEDOUT);
	cr_assert(!r.held, "a timed-out request holds nothing");
	cr_assert(r.t_ns >= ts_ns(&dl), "ETIMEDOUT %lld ns before the deadline",
		  (long long)(ts_ns(&dl) - r.t_ns));
	cr_assert(!pthread_equal(r.thread, pthread_self()), "ETIMEDOUT runs on the timer thread");
	cr_assert(kt_guard_zero(&req.guard));
	cr_assert_eq(km_unlock(&req.guard), EPERM);
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.holders, 1, "the holder is untouched");
	cr_assert_eq(st.timeouts, 1);
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	cr_assert_eq(km_unlock(&g), 0);
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 1, "exactly one ready()");
	cr_assert(!key_busy(km, "k"), "a timed-out request must not be granted later");
}

Test(async, inprogress_then_token_cancel)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct km_token *t;
	struct km_lock_options o;

	cr_assert_eq(km_token_create(&t), 0);
	o = (struct km_lock_options){ .cancel = t };
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), EINPROGRESS);
	cr_assert_eq(km_token_destroy(t), EBUSY, "a pending async request uses the token");
	km_token_cancel(t);
	/* no port: ready() runs on the cancelling thread before it returns */
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(r.status, ECANCELED);
	cr_assert(!r.held);
	cr_assert(pthread_equal(r.thread, pthread_self()));
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.cancels, 1);
	km_token_cancel(t);			/* idempotent */
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(km_token_destroy(t), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert(!key_busy(km, "k"));
}

Test(async, request_cancel)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert_eq(km_request_cancel(&req), 0);
	cr_assert_eq(atomic_load(&r.calls), 1, "no port: ready() ran on this thread");
	cr_assert_eq(r.status, ECANCELED);
	cr_assert(!r.held);
	cr_assert(pthread_equal(r.thread, pthread_self()));
	cr_assert_eq(km_request_cancel(&req), EALREADY, "second cancel");
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(st.cancels, 1);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert(!key_busy(km, "k"));
	cr_assert_eq(km_request_cancel(NULL), EINVAL);
}

Test(async, request_cancel_after_grant_is_ealready)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	cr_assert(key_busy(km, "k"), "EALREADY must not take the key away");
	cr_assert_eq(km_unlock(&req.guard), 0);
	cr_assert_eq(atomic_load(&r.calls), 1);
}

Test(async, request_cancel_after_immediate_grant_is_ealready)
{
	struct km_request req;
	struct rec r;

	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), 0);
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	cr_assert(key_busy(km, "k"));
	cr_assert_eq(km_unlock(&req.guard), 0);
	cr_assert_eq(atomic_load(&r.calls), 0);
}

/* A request that failed at once never was in flight: cancelling it must not
 * touch the table (any of EALREADY / EINVAL is fine; a crash is not). */
Test(async, request_cancel_after_immediate_failure)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct km_lock_options try_ = { .flags = KM_TRY };
	struct timespec past = kt_deadline_ms(-10);
	struct km_lock_options late = { .deadline = &past };
	int rc;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &try_, &req), EBUSY);
	rc = km_request_cancel(&req);
	cr_assert(rc == EALREADY || rc == EINVAL, "cancel after EBUSY = %d", rc);

	req_init(&req, &r, NULL);
	rc = km_acquire_async(km, "k", 1, &late, &req);
	if (rc == ETIMEDOUT) {
		rc = km_request_cancel(&req);
		cr_assert(rc == EALREADY || rc == EINVAL, "cancel after ETIMEDOUT = %d", rc);
	} else {
		cr_assert_eq(rc, EINPROGRESS);
		cr_assert(rec_wait(&r, 5000));
	}
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r.calls), rc == EINPROGRESS ? 1 : 0);

	/* EINVAL before the request was looked at: a zeroed request, as a
	 * caller's generic clean-up path would cancel it */
	struct km_lock_options bad = { .flags = 0x80 };

	memset(&req, 0, sizeof req);
	req.ready = rec_ready;
	req.arg = &r;
	cr_assert_eq(km_acquire_async(km, "k", 1, &bad, &req), EINVAL);
	rc = km_request_cancel(&req);
	cr_assert(rc == EALREADY || rc == EINVAL, "cancel after EINVAL = %d", rc);
}

/* ------------------------------------------------------------------ */
/* Immediate failures: ready() is never called                         */
/* ------------------------------------------------------------------ */

Test(async, ebusy_with_try)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct km_lock_options o = { .flags = KM_TRY };

	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), 0, "KM_TRY on a free key");
	cr_assert_eq(km_unlock(&req.guard), 0);

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), EBUSY);
	cr_assert(kt_guard_zero(&req.guard));
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(km_unlock(&g), 0);
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 0);
	cr_assert(!key_busy(km, "k"));
}

Test(async, eagain_past_max_waiters)
{
	struct km *t = make_table(0, 2, 0);
	struct km_guard g, g2;
	struct km_request req[3];
	struct rec r[3];
	struct timespec dl = kt_deadline_ms(50);

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	for (int i = 0; i < 3; i++)
		req_init(&req[i], &r[i], NULL);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[0]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[1]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[2]), EAGAIN);
	cr_assert(kt_guard_zero(&req[2].guard));
	/* sync waiters share the queue and its bound */
	cr_assert_eq(km_timedlock(t, "k", 1, &dl, &g2), EAGAIN);
	struct km_stats st = kt_stats(t);
	cr_assert_eq(st.waiters, 2);
	cr_assert_eq(st.rejected, 2);
	cr_assert_eq(km_request_cancel(&req[1]), 0);
	/* a slot came free */
	req_init(&req[2], &r[2], NULL);
	r[0].unlock = r[2].unlock = true;
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[2]), EINPROGRESS);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r[0].calls), 1);
	cr_assert_eq(atomic_load(&r[2].calls), 1, "r0's unlock in ready() grants r2 (trampoline)");
	cr_assert_eq(r[0].status, 0);
	cr_assert_eq(r[1].status, ECANCELED);
	cr_assert_eq(r[2].status, 0);
	destroy_table(t);
}

/* max_waiters = 0 is bounded by KM_MAX_WAITERS, the WAIT field's size: one
 * more waiter would have carried into the state word's next bit. */
struct counts {
	atomic_int calls, granted;
};

static void count_ready(struct km_request *req, int status)
{
	struct counts *c = req->arg;

	if (status == 0)
		atomic_fetch_add(&c->granted, 1);
	atomic_fetch_add(&c->calls, 1);
}

Test(async, unlimited_waiters_stop_at_km_max_waiters, .timeout = 300)
{
	size_t n = KM_MAX_WAITERS;
	struct km_request *req = calloc(n + 1, sizeof *req);
	struct km_guard g, g2;
	struct timespec dl;
	struct counts c = { 0, 0 };

	cr_assert_not_null(req);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (size_t i = 0; i <= n; i++) {
		req[i].ready = count_ready;
		req[i].arg = &c;
	}
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[i]), EINPROGRESS, "request %zu", i);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[n]), EAGAIN);
	dl = kt_deadline_ms(1000);
	cr_assert_eq(km_timedlock(km, "k", 1, &dl, &g2), EAGAIN);
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.waiters, n);
	cr_assert_eq(st.holders, 1);
	/* The word is intact: the holder's unlock grants the head, and
	 * cancelling the rest leaves only the head's hold. */
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&c.granted), 1);
	cr_assert(!kt_guard_zero(&req[0].guard));
	for (size_t i = 1; i < n; i++)
		cr_assert_eq(km_request_cancel(&req[i]), 0, "request %zu", i);
	cr_assert_eq(atomic_load(&c.calls), (int)n);
	cr_assert_eq(atomic_load(&c.granted), 1);
	cr_assert(key_busy(km, "k"));
	cr_assert_eq(km_unlock(&req[0].guard), 0);
	cr_assert(!key_busy(km, "k"));
	free(req);
}

Test(async, einval)
{
	struct km_request req;
	struct rec r;
	struct km_lock_options badflags = { .flags = 0x80 };
	struct km_lock_options badflags2 = { .flags = KM_TRY | 0x100 };
	struct timespec baddl = kt_deadline_ms(10);
	struct km_lock_options badtime = { .deadline = &baddl };
	struct timespec negdl = { .tv_sec = 1, .tv_nsec = -1 };
	struct km_lock_options badtime2 = { .deadline = &negdl };
	struct km_lock_options shared = { .flags = KM_SHARED };
	struct km *sem = make_table(3, 0, 0);

	baddl.tv_nsec = 1000000000L;
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, NULL), EINVAL);
	cr_assert_eq(km_acquire_async(NULL, "k", 1, NULL, NULL), EINVAL);

#define EXPECT_EINVAL(t, key, len, opt, setup)                                 \
	do {                                                                    \
		req_init(&req, &r, NULL);                                       \
		setup;                                                          \
		int rc_ = km_acquire_async((t), (key), (len), (opt), &req);     \
		cr_assert_eq(rc_, EINVAL, "%s: %d, want EINVAL", #opt " " #setup, rc_); \
		cr_assert(kt_guard_zero(&req.guard), "guard written on failure"); \
	} while (0)

	EXPECT_EINVAL(NULL, "k", 1, NULL, (void)0);
	EXPECT_EINVAL(km, "k", 1, NULL, req.ready = NULL);
	EXPECT_EINVAL(km, NULL, 1, NULL, (void)0);
	EXPECT_EINVAL(km, "k", 1, &badflags, (void)0);
	EXPECT_EINVAL(km, "k", 1, &badflags2, (void)0);
	EXPECT_EINVAL(km, "k", 1, &badtime, (void)0);
	EXPECT_EINVAL(km, "k", 1, &badtime2, (void)0);
	EXPECT_EINVAL(sem, "k", 1, &shared, (void)0);
#undef EXPECT_EINVAL
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 0);
	/* NULL key with len 0 is a valid (empty) key */
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(km, NULL, 0, NULL, &req), 0);
	cr_assert(key_busy(km, ""));
	cr_assert_eq(km_unlock(&req.guard), 0);
	destroy_table(sem);
}

Test(async, already_cancelled_token)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct km_token *t;
	struct km_lock_options o;
	int rc;

	cr_assert_eq(km_token_create(&t), 0);
	o = (struct km_lock_options){ .cancel = t };
	km_token_cancel(t);

	/* busy key and free key alike: never granted */
	cr_assert_eq(km_lock(km, "busy", 4, &g), 0);
	const char *keys[] = { "busy", "free" };
	for (int i = 0; i < 2; i++) {
		req_init(&req, &r, NULL);
		rc = km_acquire_async(km, keys[i], 4, &o, &req);
		if (rc == EINPROGRESS) {
			cr_assert(rec_wait(&r, 2000), "%s: ECANCELED not delivered promptly", keys[i]);
			cr_assert_eq(r.status, ECANCELED);
		} else {
			cr_assert_eq(rc, ECANCELED, "%s: %d", keys[i], rc);
			cr_assert(kt_guard_zero(&req.guard));
			kt_sleep_us(5000);
			cr_assert_eq(atomic_load(&r.calls), 0);
		}
	}
	cr_assert(!key_busy(km, "free"));
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_token_destroy(t), 0);
}

Test(async, already_passed_deadline)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct timespec past = kt_deadline_ms(-5);
	struct timespec zero = { 0, 0 };
	struct timespec neg = { -5, 0 };
	const struct timespec *dls[] = { &past, &zero, &neg };
	int rc;

	/* free key: "try once" succeeds */
	for (int i = 0; i < 3; i++) {
		struct km_lock_options o = { .deadline = dls[i] };

		req_init(&req, &r, NULL);
		cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), 0, "deadline %d on a free key", i);
		cr_assert_eq(km_unlock(&req.guard), 0);
	}
	/* busy key: ETIMEDOUT, at once or promptly through ready() */
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < 3; i++) {
		struct km_lock_options o = { .deadline = dls[i] };

		req_init(&req, &r, NULL);
		rc = km_acquire_async(km, "k", 1, &o, &req);
		if (rc == EINPROGRESS) {
			cr_assert(rec_wait(&r, 2000), "deadline %d: not delivered promptly", i);
			cr_assert_eq(r.status, ETIMEDOUT);
		} else {
			cr_assert_eq(rc, ETIMEDOUT, "deadline %d: %d", i, rc);
			cr_assert(kt_guard_zero(&req.guard));
		}
	}
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.timeouts, 3);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(km_unlock(&g), 0);
}

/* A far-future deadline ("practically never") must not fire. The sync path
 * compares timespecs; the async path converts to ns for the timer heap. */
Test(async, far_future_deadline_does_not_fire)
{
	static const time_t secs[] = { (time_t)1 << 62, (time_t)1 << 40, INT64_MAX / 1000000000 + 1,
				       INT64_MAX };
	struct km_guard g;
	struct km_request req[4];
	struct rec r[4];

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < 4; i++) {
		struct timespec dl = { .tv_sec = secs[i], .tv_nsec = 0 };
		struct km_lock_options o = { .deadline = &dl };

		req_init(&req[i], &r[i], NULL);
		r[i].unlock = true;
		cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req[i]), EINPROGRESS);
	}
	kt_sleep_us(100000);
	for (int i = 0; i < 4; i++)
		cr_expect_eq(atomic_load(&r[i].calls), 0,
			     "deadline tv_sec=%lld fired after 100 ms (status %d)",
			     (long long)secs[i], r[i].status);
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < 4; i++) {
		if (atomic_load(&r[i].calls) == 0)
			continue;
		cr_assert_eq(atomic_load(&r[i].calls), 1);
	}
	for (int i = 0; i < 4; i++)
		cr_assert(rec_wait(&r[i], 2000));
}

/* ------------------------------------------------------------------ */
/* Ports                                                               */
/* ------------------------------------------------------------------ */

Test(async, port_basics)
{
	struct km_port *p;
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_port_create(NULL), EINVAL);
	cr_assert_eq(km_port_fd(NULL), -1);
	cr_assert_eq(km_port_run(NULL), -EINVAL);
	cr_assert_eq(km_port_destroy(NULL), EINVAL);
	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_geq(km_port_fd(p), 0);
	cr_assert(!fd_readable(km_port_fd(p)), "a new port is not readable");
	cr_assert_eq(km_port_run(p), 0);

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, p);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert(!fd_readable(km_port_fd(p)), "readable before any completion");
	cr_assert_eq(km_port_destroy(p), EBUSY, "a request waits for this port");
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r.calls), 0, "with a port, ready() must not run in km_unlock");
	cr_assert(key_busy(km, "k"), "the key was granted to the request");
	cr_assert(fd_readable(km_port_fd(p)), "not readable while a completion waits");
	cr_assert(fd_readable(km_port_fd(p)), "polling must not consume readiness");
	cr_assert_eq(km_port_destroy(p), EBUSY, "a completion waits to be run");
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&r.calls), 0, "ready() runs only inside km_port_run");
	cr_assert_eq(km_port_run(p), 1);
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(r.status, 0);
	cr_assert(r.held);
	cr_assert(pthread_equal(r.thread, pthread_self()));
	cr_assert(!fd_readable(km_port_fd(p)), "still readable once drained");
	cr_assert_eq(km_port_run(p), 0);
	cr_assert_eq(km_port_destroy(p), 0);
	cr_assert_eq(km_unlock(&req.guard), 0);
}

Test(async, port_batches_and_fd_tracks_queue)
{
	struct km_port *p;
	struct km_guard g[3];
	struct km_request req[3];
	struct rec r[3];
	const char *keys[] = { "a", "b", "c" };

	cr_assert_eq(km_port_create(&p), 0);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(km_lock(km, keys[i], 1, &g[i]), 0);
		req_init(&req[i], &r[i], p);
		r[i].unlock = true;
		cr_assert_eq(km_acquire_async(km, keys[i], 1, NULL, &req[i]), EINPROGRESS);
	}
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(km_unlock(&g[i]), 0);
		cr_assert(fd_readable(km_port_fd(p)));
	}
	cr_assert_eq(km_port_run(p), 3);
	cr_assert(!fd_readable(km_port_fd(p)));
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&r[i].calls), 1);
		cr_assert_eq(r[i].status, 0);
		cr_assert_eq(r[i].unlock_rc, 0);
	}
	cr_assert_eq(km_port_destroy(p), 0);
}

/* Completions queued while km_port_run runs are left for the next call, and
 * they make the fd readable again. */
static void chain_port_ready(struct km_request *req, int status)
{
	struct rec *r = req->arg;

	rec_ready(req, status);
	(void)r;
}

Test(async, port_completion_queued_during_run_waits_for_next_run)
{
	struct km_port *p;
	struct km_guard g;
	struct km_request req[2];
	struct rec r[2];

	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < 2; i++) {
		req_init(&req[i], &r[i], p);
		req[i].ready = chain_port_ready;
		r[i].unlock = true;
		cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[i]), EINPROGRESS);
	}
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert(fd_readable(km_port_fd(p)));
	cr_assert_eq(km_port_run(p), 1, "req0's unlock in ready() posts req1 for the next run");
	cr_assert_eq(atomic_load(&r[1].calls), 0);
	cr_assert(fd_readable(km_port_fd(p)), "req1's completion must make the fd readable again");
	cr_assert_eq(km_port_run(p), 1);
	cr_assert(!fd_readable(km_port_fd(p)));
	cr_assert_eq(r[0].status, 0);
	cr_assert_eq(r[1].status, 0);
	cr_assert_eq(km_port_destroy(p), 0);
}

struct port_runner {
	struct km_port *p;
	struct rec *r;
	pthread_t self;
	int ran;
	bool timed_out;
};

/* Wait for the port's fd, then run it: the port owner's event loop. */
static void *port_runner_main(void *arg)
{
	struct port_runner *pr = arg;
	struct pollfd pfd = { .fd = km_port_fd(pr->p), .events = POLLIN };
	uint64_t end = kt_now_ns() + 5000000000u;

	pr->self = pthread_self();
	while (atomic_load(&pr->r->calls) == 0) {
		if (kt_now_ns() > end) {
			pr->timed_out = true;
			break;
		}
		if (poll(&pfd, 1, 100) == 1)
			pr->ran += km_port_run(pr->p);
	}
	return NULL;
}

Test(async, port_ready_runs_on_port_owner_thread_only)
{
	struct km_port *p;
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct unlocker u = { .g = &g, .delay_us = 10000 };
	struct port_runner pr;
	pthread_t tu, tp;

	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, p);
	r.unlock = true;
	memset(&pr, 0, sizeof pr);
	pr.p = p;
	pr.r = &r;
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert_eq(pthread_create(&tp, NULL, port_runner_main, &pr), 0);
	cr_assert_eq(pthread_create(&tu, NULL, unlock_later, &u), 0);
	cr_assert_eq(pthread_join(tu, NULL), 0);
	cr_assert_eq(pthread_join(tp, NULL), 0);
	cr_assert(!pr.timed_out, "the port never became readable");
	cr_assert_eq(u.rc, 0);
	cr_assert_eq(pr.ran, 1);
	cr_assert_eq(atomic_load(&r.calls), 1);
	cr_assert_eq(r.status, 0);
	cr_assert(pthread_equal(r.thread, pr.self), "ready() must run on the km_port_run thread");
	cr_assert(!pthread_equal(r.thread, u.self), "ready() ran on the releasing thread (thread stealing)");
	cr_assert_eq(r.unlock_rc, 0);
	cr_assert_eq(km_port_destroy(p), 0);
}

Test(async, port_timeout_and_cancel_run_in_port_run)
{
	struct km_port *p;
	struct km_guard g;
	struct km_request req[3];
	struct rec r[3];
	struct km_token *t;
	struct timespec dl = kt_deadline_ms(20);
	struct km_lock_options ot, od;

	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_eq(km_token_create(&t), 0);
	ot = (struct km_lock_options){ .cancel = t };
	od = (struct km_lock_options){ .deadline = &dl };
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < 3; i++)
		req_init(&req[i], &r[i], p);
	cr_assert_eq(km_acquire_async(km, "k", 1, &ot, &req[0]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, &od, &req[1]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[2]), EINPROGRESS);

	km_token_cancel(t);
	cr_assert_eq(atomic_load(&r[0].calls), 0, "with a port, km_token_cancel must not run ready()");
	cr_assert_eq(km_request_cancel(&req[2]), 0);
	cr_assert_eq(atomic_load(&r[2].calls), 0, "with a port, km_request_cancel must not run ready()");
	cr_assert_eq(km_request_cancel(&req[2]), EALREADY);
	/* the timer posts to the port too */
	uint64_t end = kt_now_ns() + 5000000000u;
	int ran = 0;
	while (ran < 3 && kt_now_ns() < end) {
		struct pollfd pfd = { .fd = km_port_fd(p), .events = POLLIN };

		if (poll(&pfd, 1, 50) == 1)
			ran += km_port_run(p);
	}
	cr_assert_eq(ran, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(atomic_load(&r[i].calls), 1);
		cr_assert(pthread_equal(r[i].thread, pthread_self()), "req %d ran off the port thread", i);
		cr_assert(!r[i].held);
	}
	cr_assert_eq(r[0].status, ECANCELED);
	cr_assert_eq(r[1].status, ETIMEDOUT);
	cr_assert_eq(r[2].status, ECANCELED);
	cr_assert_eq(km_port_destroy(p), 0);
	cr_assert_eq(km_token_destroy(t), 0);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert(!key_busy(km, "k"));
}

/* Granted but not yet run by its port: the grant stands; a cancel comes
 * too late (EALREADY) and a token cancel does not revoke it. */
Test(async, port_granted_not_run_cannot_be_cancelled)
{
	struct km_port *p;
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct km_token *t;
	struct km_lock_options o;

	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_eq(km_token_create(&t), 0);
	o = (struct km_lock_options){ .cancel = t };
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, p);
	cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), EINPROGRESS);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	km_token_cancel(t);
	cr_assert_eq(km_token_destroy(t), 0, "the granted request no longer uses the token");
	cr_assert_eq(km_port_run(p), 1);
	cr_assert_eq(r.status, 0);
	cr_assert(r.held);
	cr_assert_eq(km_unlock(&req.guard), 0);
	cr_assert_eq(km_port_destroy(p), 0);
}

/* ------------------------------------------------------------------ */
/* Tokens                                                              */
/* ------------------------------------------------------------------ */

struct sync_waiter {
	struct km *km;
	const char *key;
	struct km_token *tok;
	const struct timespec *deadline;
	int rc;
	uint64_t t_ret;
	atomic_int done;
	atomic_int *seqctr;
	int seq;
	bool shared;
};

static void *sync_wait_main(void *arg)
{
	struct sync_waiter *s = arg;
	struct km_lock_options o = { .cancel = s->tok, .deadline = s->deadline,
				     .flags = s->shared ? KM_SHARED : 0 };
	struct km_guard g;

	s->rc = km_acquire(s->km, s->key, strlen(s->key), &o, &g);
	s->t_ret = kt_now_ns();
	if (s->rc == 0) {
		if (s->seqctr != NULL)
			s->seq = atomic_fetch_add(s->seqctr, 1);
		km_unlock(&g);
	}
	atomic_store(&s->done, 1);
	return NULL;
}

Test(async, token_cancel_wakes_sync_acquire)
{
	struct km_guard g;
	struct km_token *t;
	struct sync_waiter s;
	pthread_t th;
	uint64_t t0;

	cr_assert_eq(km_token_create(NULL), EINVAL);
	cr_assert_eq(km_token_destroy(NULL), EINVAL);
	km_token_cancel(NULL);			/* ignored */
	cr_assert_eq(km_token_create(&t), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	memset(&s, 0, sizeof s);
	s.km = km;
	s.key = "k";
	s.tok = t;
	cr_assert_eq(pthread_create(&th, NULL, sync_wait_main, &s), 0);
	cr_assert(kt_wait_waiters(km, 1, 5000));
	cr_assert_eq(km_token_destroy(t), EBUSY, "a sync wait uses the token");
	kt_sleep_us(5000);
	cr_assert_eq(atomic_load(&s.done), 0);
	t0 = kt_now_ns();
	km_token_cancel(t);
	cr_assert(kt_wait_flag(&s.done, 5000), "km_token_cancel did not wake the sync waiter");
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(s.rc, ECANCELED);
	cr_assert_lt(s.t_ret - t0, 500000000u, "sync waiter took %llu us to see the cancel",
		     (unsigned long long)((s.t_ret - t0) / 1000));
	cr_assert_eq(kt_stats(km).waiters, 0);
	cr_assert(key_busy(km, "k"), "the holder is unaffected");

	/* later acquires with the token fail, sync or async, free key or not */
	struct km_lock_options o = { .cancel = t };
	struct km_guard g2;
	struct km_request req;
	struct rec r;
	int rc;

	cr_assert_eq(km_acquire(km, "free", 4, &o, &g2), ECANCELED);
	cr_assert_eq(km_acquire(km, "k", 1, &o, &g2), ECANCELED);
	req_init(&req, &r, NULL);
	rc = km_acquire_async(km, "free", 4, &o, &req);
	if (rc == EINPROGRESS) {
		cr_assert(rec_wait(&r, 2000));
		cr_assert_eq(r.status, ECANCELED);
	} else {
		cr_assert_eq(rc, ECANCELED);
	}
	cr_assert_eq(km_token_destroy(t), 0);
	cr_assert_eq(km_unlock(&g), 0);
}

Test(async, token_cancel_all_waits_and_only_its_waits)
{
	struct km_guard g;
	struct km_token *t, *other;
	struct sync_waiter s[3];
	pthread_t th[3];
	struct km_request req[3];
	struct rec r[3];
	struct km_lock_options ot, oo;

	cr_assert_eq(km_token_create(&t), 0);
	cr_assert_eq(km_token_create(&other), 0);
	ot = (struct km_lock_options){ .cancel = t };
	oo = (struct km_lock_options){ .cancel = other };
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < 3; i++) {
		memset(&s[i], 0, sizeof s[i]);
		s[i].km = km;
		s[i].key = "k";
		s[i].tok = i < 2 ? t : other;
		cr_assert_eq(pthread_create(&th[i], NULL, sync_wait_main, &s[i]), 0);
		cr_assert(kt_wait_waiters(km, (size_t)i + 1, 5000));
	}
	for (int i = 0; i < 3; i++) {
		req_init(&req[i], &r[i], NULL);
		r[i].unlock = true;
	}
	cr_assert_eq(km_acquire_async(km, "k", 1, &ot, &req[0]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, &ot, &req[1]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, &oo, &req[2]), EINPROGRESS);
	km_token_cancel(t);
	cr_assert(kt_wait_flag(&s[0].done, 5000));
	cr_assert(kt_wait_flag(&s[1].done, 5000));
	cr_assert_eq(s[0].rc, ECANCELED);
	cr_assert_eq(s[1].rc, ECANCELED);
	cr_assert_eq(atomic_load(&r[0].calls), 1);
	cr_assert_eq(atomic_load(&r[1].calls), 1);
	cr_assert_eq(r[0].status, ECANCELED);
	cr_assert_eq(r[1].status, ECANCELED);
	kt_sleep_us(10000);
	cr_assert_eq(atomic_load(&s[2].done), 0, "a wait with another token was cancelled");
	cr_assert_eq(atomic_load(&r[2].calls), 0, "a request with another token was cancelled");
	cr_assert(kt_wait_waiters(km, 2, 5000));
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert(kt_wait_flag(&s[2].done, 5000));
	cr_assert(rec_wait(&r[2], 5000));
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_join(th[i], NULL), 0);
	cr_assert_eq(s[2].rc, 0);
	cr_assert_eq(r[2].status, 0);
	cr_assert_eq(km_token_destroy(t), 0);
	cr_assert_eq(km_token_destroy(other), 0);
}

/* A request no longer uses its token once its ready() runs: the callback
 * may destroy it (granted; or cancelled, from a ready() running on a port). */
struct tok_destroyer {
	struct km_token *t;
	int destroy_rc;
	int status;
	atomic_int calls;
};

static void destroy_token_ready(struct km_request *req, int status)
{
	struct tok_destroyer *d = req->arg;

	d->status = status;
	d->destroy_rc = km_token_destroy(d->t);
	if (status == 0)
		km_unlock(&req->guard);
	atomic_fetch_add(&d->calls, 1);
}

Test(async, ready_may_destroy_its_token)
{
	struct km_guard g;
	struct km_request req;
	struct tok_destroyer d;
	struct km_lock_options o;

	for (int how = 0; how < 2; how++) {
		memset(&d, 0, sizeof d);
		cr_assert_eq(km_token_create(&d.t), 0);
		o = (struct km_lock_options){ .cancel = d.t };
		cr_assert_eq(km_lock(km, "k", 1, &g), 0);
		memset(&req, 0, sizeof req);
		req.ready = destroy_token_ready;
		req.arg = &d;
		if (how == 1)
			cr_assert_eq(km_port_create(&req.port), 0);
		cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req), EINPROGRESS);
		if (how == 0) {
			cr_assert_eq(km_unlock(&g), 0);		/* granted */
		} else {
			struct km_port *p = req.port;

			km_token_cancel(d.t);			/* cancelled by the token */
			cr_assert_eq(km_port_run(p), 1);
			cr_assert_eq(km_port_destroy(p), 0);
		}
		cr_assert_eq(atomic_load(&d.calls), 1);
		cr_assert_eq(d.status, how == 0 ? 0 : ECANCELED);
		cr_assert_eq(d.destroy_rc, 0, "ready() could not destroy its request's token (%d)",
			     d.destroy_rc);
		if (how == 1)
			cr_assert_eq(km_unlock(&g), 0);
	}
}

Test(async, token_cancel_sync_timedwait_before_deadline)
{
	struct km_guard g;
	struct km_token *t;
	struct sync_waiter s;
	struct timespec dl = kt_deadline_ms(10000);
	pthread_t th;

	cr_assert_eq(km_token_create(&t), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	memset(&s, 0, sizeof s);
	s.km = km;
	s.key = "k";
	s.tok = t;
	s.deadline = &dl;
	cr_assert_eq(pthread_create(&th, NULL, sync_wait_main, &s), 0);
	cr_assert(kt_wait_waiters(km, 1, 5000));
	km_token_cancel(t);
	cr_assert(kt_wait_flag(&s.done, 2000));
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(s.rc, ECANCELED);
	cr_assert_eq(km_token_destroy(t), 0);
	cr_assert_eq(km_unlock(&g), 0);
}

/* ------------------------------------------------------------------ */
/* One queue for sync and async waiters                                */
/* ------------------------------------------------------------------ */

static void fifo_mix(unsigned flags)
{
	struct km *t = make_table(0, 0, flags);
	struct km_guard g;
	enum { N = 8 };
	struct sync_waiter s[N];
	struct km_request req[N];
	struct rec r[N];
	pthread_t th[N];
	atomic_int seq = 0;

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	for (int i = 0; i < N; i++) {
		if (i % 2 == 0) {	/* even: sync thread; odd: async request */
			memset(&s[i], 0, sizeof s[i]);
			s[i].km = t;
			s[i].key = "k";
			s[i].seqctr = &seq;
			cr_assert_eq(pthread_create(&th[i], NULL, sync_wait_main, &s[i]), 0);
		} else {
			req_init(&req[i], &r[i], NULL);
			r[i].unlock = true;
			r[i].seqctr = &seq;
			cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[i]), EINPROGRESS);
		}
		cr_assert(kt_wait_waiters(t, (size_t)i + 1, 5000), "waiter %d never queued", i);
	}
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < N; i++) {
		if (i % 2 == 0) {
			cr_assert(kt_wait_flag(&s[i].done, 5000), "sync waiter %d never got the key", i);
			cr_assert_eq(pthread_join(th[i], NULL), 0);
			cr_assert_eq(s[i].rc, 0);
		} else {
			cr_assert(rec_wait(&r[i], 5000), "async request %d never got the key", i);
			cr_assert_eq(r[i].status, 0);
			cr_assert_eq(r[i].unlock_rc, 0);
		}
	}
	for (int i = 0; i < N; i++) {
		int got = i % 2 == 0 ? s[i].seq : r[i].seq;

		cr_assert_eq(got, i, "waiter %d (%s) got the key %d-th", i, i % 2 ? "async" : "sync", got);
	}
	destroy_table(t);
}

Test(async, fifo_sync_and_async_granted_in_arrival_order)
{
	fifo_mix(KM_FIFO);
}

/* Async requests are never overtaken by async newcomers, FIFO or not. */
Test(async, async_queue_order_without_fifo)
{
	struct km_guard g;
	enum { N = 16 };
	struct km_request req[N];
	struct rec r[N];
	atomic_int seq = 0;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < N; i++) {
		req_init(&req[i], &r[i], NULL);
		r[i].unlock = true;
		r[i].seqctr = &seq;
		cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[i]), EINPROGRESS);
	}
	cr_assert_eq(km_unlock(&g), 0);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(atomic_load(&r[i].calls), 1);
		cr_assert_eq(r[i].seq, i);
	}
}

Test(async, max_holders_applies_to_async)
{
	struct km *t = make_table(2, 0, 0);
	struct km_guard g;
	struct km_request req[4];
	struct rec r[4];

	for (int i = 0; i < 4; i++)
		req_init(&req[i], &r[i], NULL);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[0]), 0);
	cr_assert_eq(km_lock(t, "k", 1, &g), 0, "a second holder fits");
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[1]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[2]), EINPROGRESS);
	struct km_stats st = kt_stats(t);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(st.waiters, 2);
	cr_assert_eq(km_unlock(&req[0].guard), 0);
	cr_assert_eq(atomic_load(&r[1].calls), 1);
	cr_assert_eq(atomic_load(&r[2].calls), 0, "one release frees one slot");
	cr_assert_eq(r[1].status, 0);
	st = kt_stats(t);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&r[2].calls), 1);
	cr_assert_eq(r[2].status, 0);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req[3]), EINPROGRESS);
	cr_assert_eq(km_unlock(&req[1].guard), 0);
	cr_assert_eq(atomic_load(&r[3].calls), 1);
	cr_assert_eq(km_unlock(&req[2].guard), 0);
	cr_assert_eq(km_unlock(&req[3].guard), 0);
	destroy_table(t);
}

Test(async, shared_async)
{
	struct km_request req[5];
	struct rec r[5];
	struct km_lock_options sh = { .flags = KM_SHARED };

	for (int i = 0; i < 5; i++)
		req_init(&req[i], &r[i], NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &req[0]), 0);
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &req[1]), 0);
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[2]), EINPROGRESS);
	/* no shared request overtakes a queued exclusive one */
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &req[3]), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &req[4]), EINPROGRESS);
	cr_assert_eq(km_unlock(&req[0].guard), 0);
	cr_assert_eq(atomic_load(&r[2].calls), 0);
	cr_assert_eq(km_unlock(&req[1].guard), 0);
	cr_assert_eq(atomic_load(&r[2].calls), 1);
	cr_assert_eq(r[2].status, 0);
	cr_assert_eq(atomic_load(&r[3].calls), 0);
	cr_assert_eq(km_unlock(&req[2].guard), 0);
	/* the run of shared heads is granted together */
	cr_assert_eq(atomic_load(&r[3].calls), 1);
	cr_assert_eq(atomic_load(&r[4].calls), 1);
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.holders, 2);
	cr_assert_eq(km_unlock(&req[3].guard), 0);
	cr_assert_eq(km_unlock(&req[4].guard), 0);
}

/* A waiter that leaves (cancel, token, timeout) unblocks those queued
 * behind it at once: shared requests behind a departing exclusive one join
 * the shared holders without waiting for a release. */
static void leave_unblocks(int how)
{
	struct km_guard rg;
	struct km_request x, s1, s2;
	struct rec rx, r1, r2;
	struct km_lock_options sh = { .flags = KM_SHARED };
	struct km_token *t = NULL;
	struct timespec dl = kt_deadline_ms(30);
	struct km_lock_options ox = { 0 };

	if (how == 1) {
		cr_assert_eq(km_token_create(&t), 0);
		ox.cancel = t;
	} else if (how == 2) {
		ox.deadline = &dl;
	}
	cr_assert_eq(km_lock_shared(km, "k", 1, &rg), 0);
	req_init(&x, &rx, NULL);
	req_init(&s1, &r1, NULL);
	req_init(&s2, &r2, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &ox, &x), EINPROGRESS);
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &s1), EINPROGRESS, "no barging past the exclusive waiter");
	cr_assert_eq(km_acquire_async(km, "k", 1, &sh, &s2), EINPROGRESS);
	if (how == 0)
		cr_assert_eq(km_request_cancel(&x), 0);
	else if (how == 1)
		km_token_cancel(t);
	cr_assert(rec_wait(&rx, 5000));
	cr_assert_eq(rx.status, how == 2 ? ETIMEDOUT : ECANCELED);
	/* the shared run behind it is granted by whoever removed it */
	cr_assert(rec_wait(&r1, 1000), "shared request left waiting behind a departed waiter (how %d)", how);
	cr_assert(rec_wait(&r2, 1000), "second shared request left waiting (how %d)", how);
	cr_assert_eq(r1.status, 0);
	cr_assert_eq(r2.status, 0);
	if (how != 2) {
		cr_assert(pthread_equal(r1.thread, pthread_self()), "granted by the cancelling thread");
	}
	struct km_stats st = kt_stats(km);
	cr_assert_eq(st.holders, 3);
	cr_assert_eq(st.waiters, 0);
	cr_assert_eq(km_unlock(&s1.guard), 0);
	cr_assert_eq(km_unlock(&s2.guard), 0);
	cr_assert_eq(km_unlock(&rg), 0);
	if (t != NULL)
		cr_assert_eq(km_token_destroy(t), 0);
}

Test(async, request_cancel_unblocks_waiters_behind)
{
	leave_unblocks(0);
}

Test(async, token_cancel_unblocks_waiters_behind)
{
	leave_unblocks(1);
}

Test(async, timeout_unblocks_waiters_behind)
{
	leave_unblocks(2);
}

/* The same with sync waiters: a timed-out sync exclusive waiter lets the
 * sync shared waiter behind it in while a shared holder stays. */
Test(async, sync_timeout_unblocks_shared_behind)
{
	struct km_guard rg;
	struct sync_waiter x, sw;
	struct timespec dl = kt_deadline_ms(300);
	pthread_t tx, ts;

	cr_assert_eq(km_lock_shared(km, "k", 1, &rg), 0);
	memset(&x, 0, sizeof x);
	x.km = km;
	x.key = "k";
	x.deadline = &dl;
	cr_assert_eq(pthread_create(&tx, NULL, sync_wait_main, &x), 0);
	cr_assert(kt_wait_waiters(km, 1, 5000));
	memset(&sw, 0, sizeof sw);
	sw.km = km;
	sw.key = "k";
	sw.shared = true;
	cr_assert_eq(pthread_create(&ts, NULL, sync_wait_main, &sw), 0);
	cr_assert(kt_wait_waiters(km, 2, 5000) || atomic_load(&x.done));
	cr_assert(kt_wait_flag(&x.done, 5000));
	cr_assert_eq(x.rc, ETIMEDOUT);
	cr_assert(kt_wait_flag(&sw.done, 1000), "the shared waiter stayed queued behind a departed waiter");
	cr_assert_eq(sw.rc, 0);
	cr_assert_eq(pthread_join(tx, NULL), 0);
	cr_assert_eq(pthread_join(ts, NULL), 0);
	cr_assert_eq(km_unlock(&rg), 0);
}

Test(async, owner_tables)
{
	struct km *rt = make_table(0, 0, KM_RECURSIVE);
	struct km *et = make_table(0, 0, KM_ERRORCHECK);
	int o1, o2;
	struct km_lock_options l1 = { .owner = &o1 }, l2 = { .owner = &o2 };
	struct km_guard g;
	struct km_request req[2];
	struct rec r[2];

	/* recursive: the owner re-acquires at once, another owner waits */
	cr_assert_eq(km_acquire(rt, "k", 1, &l1, &g), 0);
	req_init(&req[0], &r[0], NULL);
	req_init(&req[1], &r[1], NULL);
	cr_assert_eq(km_acquire_async(rt, "k", 1, &l1, &req[0]), 0);
	cr_assert_eq(km_acquire_async(rt, "k", 1, &l2, &req[1]), EINPROGRESS);
	cr_assert_eq(km_unlock_owner(&req[0].guard, &o1), 0);
	cr_assert_eq(atomic_load(&r[1].calls), 0, "a nested unlock must not release the key");
	cr_assert_eq(km_unlock_owner(&g, &o1), 0);
	cr_assert_eq(atomic_load(&r[1].calls), 1);
	cr_assert_eq(r[1].status, 0);
	cr_assert_eq(km_unlock_owner(&req[1].guard, &o2), 0);
	destroy_table(rt);

	/* errorcheck: self re-acquire is EDEADLK at once */
	cr_assert_eq(km_acquire(et, "k", 1, &l1, &g), 0);
	req_init(&req[0], &r[0], NULL);
	cr_assert_eq(km_acquire_async(et, "k", 1, &l1, &req[0]), EDEADLK);
	cr_assert(kt_guard_zero(&req[0].guard));
	cr_assert_eq(km_unlock_owner(&g, &o1), 0);
	destroy_table(et);
}

/* KM_ERRORCHECK: an async request's owner is opt->owner or the issuing
 * thread; a ready() running on another thread unlocks by naming the owner. */
struct ec_ready {
	int o;
	int unlock_plain, unlock_owner;
	atomic_int calls;
};

static void ec_ready_fn(struct km_request *req, int status)
{
	struct ec_ready *e = req->arg;

	(void)status;
	e->unlock_plain = km_unlock(&req->guard);		/* not the owner: EPERM */
	e->unlock_owner = km_unlock_owner(&req->guard, &e->o);
	atomic_fetch_add(&e->calls, 1);
}

Test(async, errorcheck_async_owner_unlocks_in_ready)
{
	struct km *et = make_table(0, 0, KM_ERRORCHECK);
	struct ec_ready e;
	struct km_lock_options lo;
	struct km_guard g;
	struct km_request req;
	struct unlocker u = { .g = &g, .delay_us = 1000 };
	pthread_t t;

	memset(&e, 0, sizeof e);
	lo = (struct km_lock_options){ .owner = &e.o };
	cr_assert_eq(km_lock(et, "k", 1, &g), 0);
	memset(&req, 0, sizeof req);
	req.ready = ec_ready_fn;
	req.arg = &e;
	cr_assert_eq(km_acquire_async(et, "k", 1, &lo, &req), EINPROGRESS);
	/* the holder is this thread; hand its guard to a helper to unlock */
	cr_assert_eq(pthread_create(&t, NULL, unlock_later, &u), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(u.rc, EPERM, "KM_ERRORCHECK: another thread's plain unlock must be EPERM");
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&e.calls), 1);
	cr_assert_eq(e.unlock_plain, EPERM);
	cr_assert_eq(e.unlock_owner, 0);
	destroy_table(et);
}

/* A recursive re-acquire that succeeded at once is "already granted". */
Test(async, request_cancel_after_recursive_immediate_grant)
{
	struct km *rt = make_table(0, 0, KM_RECURSIVE);
	int o1;
	struct km_lock_options l1 = { .owner = &o1 };
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_acquire(rt, "k", 1, &l1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(rt, "k", 1, &l1, &req), 0);
	cr_assert_eq(km_request_cancel(&req), EALREADY);
	cr_assert_eq(km_unlock_owner(&req.guard, &o1), 0);
	cr_assert_eq(km_unlock_owner(&g, &o1), 0);
	destroy_table(rt);
}

/* ------------------------------------------------------------------ */
/* What ready() may do                                                 */
/* ------------------------------------------------------------------ */

/* Two requests ping-pong one key for ROUNDS rounds each: every ready()
 * unlocks its guard and re-acquires the same key with the same request. */
enum { PP_ROUNDS = 2000 };
struct pingpong {
	struct km *km;
	int rounds;
	int inprogress, immediate, failures;
	int status_bad;
};

static void pingpong_ready(struct km_request *req, int status)
{
	struct pingpong *pp = req->arg;

	for (;;) {
		if (status != 0) {
			pp->status_bad++;
			return;
		}
		pp->rounds++;
		if (km_unlock(&req->guard) != 0)
			pp->failures++;
		if (pp->rounds >= 2 * PP_ROUNDS)
			return;
		int rc = km_acquire_async(pp->km, "pp", 2, NULL, req);

		if (rc == EINPROGRESS) {
			pp->inprogress++;
			return;
		}
		if (rc != 0) {
			pp->failures++;
			return;
		}
		pp->immediate++;	/* got it at once: go round again here */
	}
}

Test(async, ready_unlocks_and_reacquires_same_key)
{
	struct km_guard g;
	struct km_request req[2];
	struct pingpong pp = { .km = km };

	cr_assert_eq(km_lock(km, "pp", 2, &g), 0);
	for (int i = 0; i < 2; i++) {
		memset(&req[i], 0, sizeof req[i]);
		req[i].ready = pingpong_ready;
		req[i].arg = &pp;
		cr_assert_eq(km_acquire_async(km, "pp", 2, NULL, &req[i]), EINPROGRESS);
	}
	cr_assert_eq(km_unlock(&g), 0);
	/* everything ran inside that km_unlock, on this thread */
	cr_assert_eq(pp.failures, 0);
	cr_assert_eq(pp.status_bad, 0);
	cr_assert_geq(pp.rounds, 2 * PP_ROUNDS);
	cr_assert_gt(pp.inprogress, PP_ROUNDS, "the requests should have alternated through the queue");
	cr_assert(!key_busy(km, "pp"));
}

/* ready() may call any km_ function: no internal lock is held. */
struct anything {
	struct km *km;
	struct km_request *other;	/* a pending request to cancel */
	struct km_token *tok;		/* a token to cancel */
	int trylock_same, lock_other, stats, cancel_other, async_other, query;
	atomic_int calls;
};

static int count_visit(const void *key, size_t len, unsigned holders, unsigned waiters,
		       int shared, void *arg)
{
	(void)key; (void)len; (void)holders; (void)waiters; (void)shared;
	(*(int *)arg)++;
	return 0;
}

static void anything_ready(struct km_request *req, int status)
{
	struct anything *a = req->arg;
	struct km_guard g;
	struct km_stats st;
	struct km_request r2;
	struct rec rr;
	int n = 0;

	(void)status;
	a->trylock_same = km_trylock(a->km, "k", 1, &g);		/* we hold it: EBUSY */
	a->lock_other = km_lock(a->km, "other", 5, &g);
	if (a->lock_other == 0)
		km_unlock(&g);
	a->stats = km_stats(a->km, &st);
	a->query = km_query(a->km, count_visit, &n);
	a->cancel_other = km_request_cancel(a->other);
	km_token_cancel(a->tok);
	req_init(&r2, &rr, NULL);
	a->async_other = km_acquire_async(a->km, "third", 5, NULL, &r2);
	if (a->async_other == 0)
		km_unlock(&r2.guard);
	km_unlock(&req->guard);
	atomic_fetch_add(&a->calls, 1);
}

Test(async, ready_may_call_any_function)
{
	struct km_guard g;
	struct km_request req, other;
	struct rec ro;
	struct anything a;
	struct km_token *t;
	struct km_lock_options ot;

	cr_assert_eq(km_token_create(&t), 0);
	ot = (struct km_lock_options){ .cancel = t };
	memset(&a, 0, sizeof a);
	a.km = km;
	a.other = &other;
	a.tok = t;
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	memset(&req, 0, sizeof req);
	req.ready = anything_ready;
	req.arg = &a;
	cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req), EINPROGRESS);
	req_init(&other, &ro, NULL);
	cr_assert_eq(km_acquire_async(km, "k", 1, &ot, &other), EINPROGRESS);
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(atomic_load(&a.calls), 1);
	cr_assert_eq(a.trylock_same, EBUSY);
	cr_assert_eq(a.lock_other, 0);
	cr_assert_eq(a.stats, 0);
	cr_assert_eq(a.query, 0);
	cr_assert_eq(a.cancel_other, 0);
	cr_assert_eq(a.async_other, 0);
	cr_assert_eq(atomic_load(&ro.calls), 1, "the cancelled request's ready() ran (trampoline)");
	cr_assert_eq(ro.status, ECANCELED);
	cr_assert_eq(km_token_destroy(t), 0);
}

/* ready() may call any km_ function, km_port_run included: the port's
 * completions then run inside that call (they are what it returns), and the
 * port stays busy until they have. */
struct nested_run {
	struct km_port *p;
	struct rec *inner;		/* the port request's record */
	int ran, inner_calls_after_run, destroy_rc;
	atomic_int calls;
};

static void nested_run_ready(struct km_request *req, int status)
{
	struct nested_run *nr = req->arg;

	(void)status;
	km_unlock(&req->guard);
	nr->ran = km_port_run(nr->p);
	nr->inner_calls_after_run = atomic_load(&nr->inner->calls);
	nr->destroy_rc = km_port_destroy(nr->p);	/* must not free a busy port */
	atomic_fetch_add(&nr->calls, 1);
}

Test(async, port_run_inside_ready)
{
	struct km_port *p;
	struct km_guard g1, g2;
	struct km_request outer, inner;
	struct rec ri;
	struct nested_run nr;

	cr_assert_eq(km_port_create(&p), 0);
	memset(&nr, 0, sizeof nr);
	nr.p = p;
	nr.inner = &ri;
	/* a completion waits in the port */
	cr_assert_eq(km_lock(km, "in", 2, &g2), 0);
	req_init(&inner, &ri, p);
	ri.unlock = true;
	cr_assert_eq(km_acquire_async(km, "in", 2, NULL, &inner), EINPROGRESS);
	cr_assert_eq(km_unlock(&g2), 0);
	cr_assert(fd_readable(km_port_fd(p)));
	/* a port-less request whose ready() runs that port */
	cr_assert_eq(km_lock(km, "out", 3, &g1), 0);
	memset(&outer, 0, sizeof outer);
	outer.ready = nested_run_ready;
	outer.arg = &nr;
	cr_assert_eq(km_acquire_async(km, "out", 3, NULL, &outer), EINPROGRESS);
	cr_assert_eq(km_unlock(&g1), 0);		/* runs nested_run_ready here */
	cr_assert_eq(atomic_load(&nr.calls), 1);
	cr_assert_eq(atomic_load(&ri.calls), 1, "the port's completion never ran");
	cr_assert_eq(nr.ran, 1);
	cr_assert_eq(nr.inner_calls_after_run, 1,
		     "km_port_run returned %d from inside a ready(), but the completion had not run "
		     "yet (it was deferred to this thread's trampoline)", nr.ran);
	if (nr.destroy_rc != 0)
		cr_assert_eq(km_port_destroy(p), 0);
}

/* The trampoline: a chain of N async requests on one key, each unlocking
 * in its ready(), runs inside one km_unlock on a 256 KiB stack. */
enum { CHAIN_N = 100000 };
struct chain {
	struct km *km;
	struct km_request *reqs;
	int next_expected;
	int order_errors, unlock_errors, status_errors;
	uintptr_t sp_min, sp_max;
	int queued, calls_after_unlock, setup_rc, lock_rc;
	bool done;
};

static void chain_ready(struct km_request *req, int status)
{
	struct chain *c = req->arg;
	volatile char here;
	uintptr_t sp = (uintptr_t)&here;
	int idx = (int)(req - c->reqs);

	if (sp < c->sp_min)
		c->sp_min = sp;
	if (sp > c->sp_max)
		c->sp_max = sp;
	if (status != 0)
		c->status_errors++;
	if (idx != c->next_expected)
		c->order_errors++;
	c->next_expected = idx + 1;
	if (km_unlock(&req->guard) != 0)
		c->unlock_errors++;
}

static void *chain_main(void *arg)
{
	struct chain *c = arg;
	struct km_guard g;

	c->lock_rc = km_lock(c->km, "chain", 5, &g);
	for (int i = 0; i < CHAIN_N; i++) {
		struct km_request *req = &c->reqs[i];

		req->ready = chain_ready;
		req->arg = c;
		req->port = NULL;
		if (km_acquire_async(c->km, "chain", 5, NULL, req) != EINPROGRESS) {
			c->setup_rc = -1;
			break;
		}
		c->queued++;
	}
	c->sp_min = UINTPTR_MAX;
	c->sp_max = 0;
	km_unlock(&g);
	c->calls_after_unlock = c->next_expected;
	c->done = true;
	return NULL;
}

Test(async, chain_100k_does_not_grow_stack, .timeout = 120)
{
	struct chain c;
	pthread_attr_t a;
	pthread_t th;

	memset(&c, 0, sizeof c);
	c.km = km;
	c.reqs = calloc(CHAIN_N, sizeof *c.reqs);
	cr_assert_not_null(c.reqs);
	cr_assert_eq(pthread_attr_init(&a), 0);
	cr_assert_eq(pthread_attr_setstacksize(&a, 256 * 1024), 0);
	cr_assert_eq(pthread_create(&th, &a, chain_main, &c), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);	/* a stack overflow crashes the test */
	pthread_attr_destroy(&a);
	cr_assert_eq(c.lock_rc, 0);
	cr_assert_eq(c.setup_rc, 0);
	cr_assert_eq(c.queued, CHAIN_N);
	cr_assert_eq(c.calls_after_unlock, CHAIN_N, "the whole chain runs inside the one km_unlock");
	cr_assert_eq(c.status_errors, 0);
	cr_assert_eq(c.order_errors, 0, "granted out of arrival order");
	cr_assert_eq(c.unlock_errors, 0);
	cr_assert_lt(c.sp_max - c.sp_min, 16 * 1024, "ready() frames spread over %zu bytes of stack",
		     (size_t)(c.sp_max - c.sp_min));
	free(c.reqs);
}

/* Same chain through a port: one completion per km_port_run call. */
Test(async, chain_through_port)
{
	enum { N = 2000 };
	struct km_port *p;
	struct km_guard g;
	struct km_request *req = calloc(N, sizeof *req);
	struct rec *r = calloc(N, sizeof *r);
	int runs = 0, ran = 0;

	cr_assert_eq(km_port_create(&p), 0);
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < N; i++) {
		req_init(&req[i], &r[i], p);
		r[i].unlock = true;
		cr_assert_eq(km_acquire_async(km, "k", 1, NULL, &req[i]), EINPROGRESS);
	}
	cr_assert_eq(km_unlock(&g), 0);
	while (fd_readable(km_port_fd(p))) {
		int n = km_port_run(p);

		cr_assert_eq(n, 1);
		ran += n;
		runs++;
	}
	cr_assert_eq(ran, N);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(atomic_load(&r[i].calls), 1);
		cr_assert_eq(r[i].status, 0);
		cr_assert_eq(r[i].unlock_rc, 0);
	}
	cr_assert_eq(km_port_destroy(p), 0);
	free(req);
	free(r);
}

/* ------------------------------------------------------------------ */
/* The timer thread                                                    */
/* ------------------------------------------------------------------ */

/*
 * The timer thread is recognised by its thread id: the ids that appear
 * during a km_acquire_async call (which starts the thread synchronously when
 * none runs) and must all be gone once no deadline is pending. Counting
 * threads instead would be fooled by helper threads that other parts of the
 * process start lazily (liburcu's call_rcu worker, sanitizer runtimes) and
 * by an earlier test's timer thread on its way out under an in-process
 * runner.
 */
#define MAX_TIDS 256
struct tids {
	int n;
	long id[MAX_TIDS];
};

static void tids_read(struct tids *t)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;

	t->n = 0;
	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL && t->n < MAX_TIDS)
		if (de->d_name[0] != '.')
			t->id[t->n++] = strtol(de->d_name, NULL, 10);
	closedir(d);
}

static bool tids_has(const struct tids *t, long id)
{
	for (int i = 0; i < t->n; i++)
		if (t->id[i] == id)
			return true;
	return false;
}

/* The ids in after that are not in before. */
static void tids_new(const struct tids *before, const struct tids *after, struct tids *out)
{
	out->n = 0;
	for (int i = 0; i < after->n; i++)
		if (!tids_has(before, after->id[i]))
			out->id[out->n++] = after->id[i];
}

/* Wait until none of the threads in t is alive, at most ms. */
static bool tids_gone(const struct tids *t, long ms)
{
	uint64_t end = kt_now_ns() + (uint64_t)ms * 1000000u;

	for (;;) {
		struct tids now;
		bool any = false;

		tids_read(&now);
		for (int i = 0; i < t->n; i++)
			any |= tids_has(&now, t->id[i]);
		if (!any)
			return true;
		if (kt_now_ns() > end)
			return false;
		kt_sleep_us(1000);
	}
}

/* km_acquire_async, noting the threads it started. */
static int acquire_async_tids(const char *key, const struct km_lock_options *o,
			      struct km_request *req, struct tids *started)
{
	struct tids before, after;
	int rc;

	tids_read(&before);
	rc = km_acquire_async(km, key, strlen(key), o, req);
	tids_read(&after);
	tids_new(&before, &after, started);
	return rc;
}

Test(async, timer_thread_on_demand_and_gone_when_idle)
{
	struct km_guard g;
	struct km_request req;
	struct rec r;
	struct timespec dl;
	struct km_lock_options o;
	struct tids started, timer = { 0 };

	/* no deadline: no thread */
	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(acquire_async_tids("k", NULL, &req, &started), EINPROGRESS);
	cr_assert_eq(started.n, 0, "a request without a deadline started a thread");
	cr_assert_eq(km_request_cancel(&req), 0);

	/* a deadline that fires: the thread comes and goes */
	dl = kt_deadline_ms(20);
	o = (struct km_lock_options){ .deadline = &dl };
	req_init(&req, &r, NULL);
	cr_assert_eq(acquire_async_tids("k", &o, &req, &started), EINPROGRESS);
	cr_assert_leq(started.n, 1, "at most one timer thread");
	timer = started;
	cr_assert(rec_wait(&r, 5000));
	cr_assert_eq(r.status, ETIMEDOUT);
	cr_assert(tids_gone(&timer, 2000), "the timer thread stayed after its last deadline");

	/* a deadline removed by a grant: the thread goes once idle */
	dl = kt_deadline_ms(50);
	req_init(&req, &r, NULL);
	cr_assert_eq(acquire_async_tids("k", &o, &req, &started), EINPROGRESS);
	cr_assert_leq(started.n, 1, "at most one timer thread");
	cr_assert_eq(km_unlock(&g), 0);
	cr_assert_eq(r.status, 0);
	cr_assert_eq(km_unlock(&req.guard), 0);
	cr_assert(tids_gone(&started, 2000), "the timer thread stayed while idle");
}

/* "Gone again once no deadline is pending": a far deadline that was removed
 * (the request was granted or cancelled) must not keep the thread alive. */
Test(async, timer_thread_gone_after_far_deadline_removed)
{
	struct km_guard g;
	struct km_request req[2];
	struct rec r[2];
	struct timespec dl = kt_deadline_ms(60000);
	struct km_lock_options o = { .deadline = &dl };
	struct tids s0, s1, all;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	req_init(&req[0], &r[0], NULL);
	req_init(&req[1], &r[1], NULL);
	cr_assert_eq(acquire_async_tids("k", &o, &req[0], &s0), EINPROGRESS);
	cr_assert_eq(acquire_async_tids("k", &o, &req[1], &s1), EINPROGRESS);
	cr_assert_leq(s0.n + s1.n, 1, "at most one timer thread");
	all = s0.n ? s0 : s1;
	kt_sleep_us(50000);			/* let the timer thread go to sleep */
	cr_assert_eq(km_request_cancel(&req[1]), 0);
	r[0].unlock = true;
	cr_assert_eq(km_unlock(&g), 0);		/* grants req[0]: no deadline left */
	cr_assert_eq(r[0].status, 0);
	cr_assert(tids_gone(&all, 2000),
		  "no deadline pending, yet the timer thread is still there 2 s later "
		  "(it sleeps until the removed 60 s deadline)");
}

/* Many deadlines, fired in deadline order, none early. */
Test(async, many_deadlines_fire_in_order)
{
	enum { N = 64 };
	struct km_guard g;
	struct km_request req[N];
	struct rec r[N];
	struct timespec dl[N];
	atomic_int seq = 0;

	cr_assert_eq(km_lock(km, "k", 1, &g), 0);
	for (int i = 0; i < N; i++) {
		/* shuffled deadlines 10..73 ms out */
		int slot = (i * 37) % N;
		struct km_lock_options o = { .deadline = &dl[i] };

		dl[i] = kt_deadline_ms(10 + slot);
		req_init(&req[i], &r[i], NULL);
		r[i].seqctr = &seq;
		cr_assert_eq(km_acquire_async(km, "k", 1, &o, &req[i]), EINPROGRESS);
	}
	for (int i = 0; i < N; i++) {
		cr_assert(rec_wait(&r[i], 5000), "deadline %d never fired", i);
		cr_assert_eq(r[i].status, ETIMEDOUT);
		cr_assert(r[i].t_ns >= ts_ns(&dl[i]), "fired early");
	}
	/* ready() with ETIMEDOUT does not take a seq; order by time instead */
	for (int i = 0; i < N; i++)
		for (int j = 0; j < N; j++)
			if (ts_ns(&dl[i]) + 2000000 < ts_ns(&dl[j]))
				cr_expect(r[i].t_ns <= r[j].t_ns, "deadline %d fired after the later %d", i, j);
	cr_assert_eq(kt_stats(km).timeouts, N);
	cr_assert_eq(km_unlock(&g), 0);
}

Test(async, destroy_busy_while_async_pending)
{
	struct km *t = make_table(0, 0, 0);
	struct km_guard g;
	struct km_request req;
	struct rec r;

	cr_assert_eq(km_lock(t, "k", 1, &g), 0);
	req_init(&req, &r, NULL);
	cr_assert_eq(km_acquire_async(t, "k", 1, NULL, &req), EINPROGRESS);
	cr_assert_eq(km_destroy(t), EBUSY);
	cr_assert_eq(km_request_cancel(&req), 0);
	cr_assert_eq(km_destroy(t), EBUSY, "still held");
	cr_assert_eq(km_unlock(&g), 0);
	destroy_table(t);
}
