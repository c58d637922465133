/*
 * Deterministic race tests (issue 4): what happens when the thread calling
 * km_acquire_async is preempted at the worst moment.
 *
 * The stress suite can only hope to hit a narrow window; here the window is
 * held open on purpose. This executable interposes clock_gettime(): on an
 * "armed" thread, the N-th call reads the clock, then runs a hook (sleep, or
 * a hand-shake with the main thread that cancels a token meanwhile), then
 * returns the time it read. That is exactly what a preemption right after the
 * clock read looks like to the caller. libkeymutex reads the clock (through
 * the PLT, so the interposition reaches it) only to check deadlines, so the
 * hook lands inside km_acquire_async's checks. Whatever the implementation,
 * the contract must hold for every N:
 *
 *  - a deadline that passes while the request is being queued must still
 *    produce ETIMEDOUT (at once, or through ready() promptly), not a wait
 *    until the key is released;
 *  - km_token_cancel while a request using the token is being queued must
 *    still produce ECANCELED (at once, or through ready() promptly).
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include <sys/syscall.h>

#include "km_test.h"

/* ------------------------------------------------------------------ */
/* The clock hook                                                      */
/* ------------------------------------------------------------------ */

static __thread int tl_delay_call;	/* 0: off; N: hook the N-th call */
static __thread int tl_calls;
static __thread void (*tl_hook)(void);

int clock_gettime(clockid_t id, struct timespec *ts)
{
	long r = syscall(SYS_clock_gettime, id, ts);

	if (tl_delay_call > 0 && ++tl_calls == tl_delay_call && tl_hook != NULL)
		tl_hook();	/* "preempted" after reading the clock */
	return r == 0 ? 0 : -1;
}

static atomic_int hook_entered, hook_release;

static void hook_sleep_60ms(void)
{
	atomic_store(&hook_entered, 1);
	kt_sleep_us(60000);
}

/* Wait (at most 2 s) for the main thread to do its part. */
static void hook_handshake(void)
{
	uint64_t end = kt_now_ns() + 2000000000u;

	atomic_store(&hook_entered, 1);
	while (!atomic_load(&hook_release) && kt_now_ns() < end)
		kt_sleep_us(200);
}

/* ------------------------------------------------------------------ */
/* A request issued on an armed thread                                 */
/* ------------------------------------------------------------------ */

struct armed {
	struct km *km;
	struct km_lock_options opt;
	struct timespec deadline;
	int delay_call;
	void (*hook)(void);
	struct km_request req;
	int rc;
	atomic_int returned;
	atomic_int calls;
	int status;
};

static void armed_ready(struct km_request *req, int status)
{
	struct armed *a = req->arg;

	a->status = status;
	if (status == 0)
		km_unlock(&req->guard);
	atomic_fetch_add(&a->calls, 1);
}

static void *armed_main(void *arg)
{
	struct armed *a = arg;

	a->req.ready = armed_ready;
	a->req.arg = a;
	tl_calls = 0;
	tl_hook = a->hook;
	tl_delay_call = a->delay_call;
	a->rc = km_acquire_async(a->km, "k", 1, &a->opt, &a->req);
	tl_delay_call = 0;
	atomic_store(&a->returned, 1);
	return NULL;
}

TestSuite(async_race, .timeout = 60);

/* The timer thread fires the deadline while the request is between its last
 * deadline check and joining the queue. */
Test(async_race, deadline_passes_while_joining_queue)
{
	for (int n = 1; n <= 3; n++) {
		struct km *km;
		struct km_guard g;
		struct armed *a = calloc(1, sizeof *a);
		pthread_t th;

		cr_assert_eq(km_create(&km, NULL), 0);
		cr_assert_eq(km_lock(km, "k", 1, &g), 0);
		a->km = km;
		a->deadline = kt_deadline_ms(20);
		a->opt.deadline = &a->deadline;
		a->delay_call = n;
		a->hook = hook_sleep_60ms;
		atomic_store(&hook_entered, 0);
		cr_assert_eq(pthread_create(&th, NULL, armed_main, a), 0);
		cr_assert_eq(pthread_join(th, NULL), 0);
		if (a->rc == EINPROGRESS) {
			/* the key is still held: only the deadline can end it */
			bool fired = kt_wait_flag(&a->calls, 1000);

			if (!fired) {
				cr_assert_eq(km_unlock(&g), 0);
				cr_assert(kt_wait_flag(&a->calls, 1000));
				cr_assert_fail("clock read #%d delayed: the 20 ms deadline never fired "
					       "(request still waiting 1 s later; ready() got %d only once "
					       "the key was released): lost timeout",
					       n, a->status);
			}
			cr_assert_eq(a->status, ETIMEDOUT, "clock read #%d delayed: status %d", n, a->status);
		} else {
			cr_assert_eq(a->rc, ETIMEDOUT, "clock read #%d delayed: rc %d", n, a->rc);
		}
		cr_assert_eq(km_unlock(&g), 0);
		kt_sleep_us(5000);
		cr_assert_leq(atomic_load(&a->calls), 1);
		struct km_stats st = kt_stats(km);
		cr_assert_eq(st.keys, 0);
		cr_assert_eq(km_destroy(km), 0);
		free(a);
	}
}

/* km_token_cancel runs while the request is between its token check and
 * joining the queue. */
Test(async_race, token_cancelled_while_joining_queue)
{
	for (int n = 1; n <= 3; n++) {
		struct km *km;
		struct km_guard g;
		struct km_token *t;
		struct armed *a = calloc(1, sizeof *a);
		pthread_t th;
		bool hooked;

		cr_assert_eq(km_create(&km, NULL), 0);
		cr_assert_eq(km_token_create(&t), 0);
		cr_assert_eq(km_lock(km, "k", 1, &g), 0);
		a->km = km;
		a->deadline = kt_deadline_ms(10000);	/* far: makes the library read the clock */
		a->opt.deadline = &a->deadline;
		a->opt.cancel = t;
		a->delay_call = n;
		a->hook = hook_handshake;
		atomic_store(&hook_entered, 0);
		atomic_store(&hook_release, 0);
		cr_assert_eq(pthread_create(&th, NULL, armed_main, a), 0);
		/* wait until the armed thread is "preempted" inside the call */
		uint64_t end = kt_now_ns() + 2000000000u;
		while (!atomic_load(&hook_entered) && !atomic_load(&a->returned) && kt_now_ns() < end)
			kt_sleep_us(200);
		hooked = atomic_load(&hook_entered);
		km_token_cancel(t);
		atomic_store(&hook_release, 1);
		cr_assert_eq(pthread_join(th, NULL), 0);
		if (a->rc == EINPROGRESS) {
			bool done = kt_wait_flag(&a->calls, 1000);

			if (!done) {
				cr_assert_eq(km_unlock(&g), 0);
				cr_assert(kt_wait_flag(&a->calls, 1000));
				cr_assert_fail("clock read #%d delayed%s: km_token_cancel did not cancel the "
					       "request (still waiting 1 s later; ready() got %d only once the "
					       "key was released)",
					       n, hooked ? "" : " (hook not reached)", a->status);
			}
			cr_assert_eq(a->status, ECANCELED, "clock read #%d delayed: status %d", n, a->status);
		} else {
			cr_assert_eq(a->rc, ECANCELED, "clock read #%d delayed: rc %d", n, a->rc);
		}
		cr_assert_eq(km_unlock(&g), 0);
		kt_sleep_us(5000);
		cr_assert_leq(atomic_load(&a->calls), 1);
		cr_assert_eq(km_token_destroy(t), 0);
		cr_assert_eq(kt_stats(km).keys, 0);
		cr_assert_eq(km_destroy(km), 0);
		free(a);
	}
}
