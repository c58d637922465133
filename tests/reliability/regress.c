/*
 * Regression tests for library bugs the reliability work found, each as
 * small and deterministic as the bug allows. Prints one line per case and
 * "N passed, N failed" last.
 *
 *  sem-wake     keyed semaphore: two holders release back to back while two
 *               threads wait; both waiters must get a slot (the second one
 *               used to sleep with a slot free: the second release saw the
 *               first one's WAKING and woke nobody). Timing-dependent, so
 *               20 trials; each one fails only after 200 ms with a free slot
 *               and a sleeping waiter.
 *  prep-window  an async request's deadline expires, or its token is
 *               cancelled, while km_acquire_async is between its last check
 *               and publishing the request: the request must still complete
 *               with ETIMEDOUT / ECANCELED (it used to stay queued until the
 *               key was released, then be granted). Made deterministic by
 *               interposing clock_gettime: the requester sleeps 100 ms
 *               right after its in-queue deadline check reads the clock.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "km_test.h"

#include <sys/syscall.h>

/* ---- clock_gettime interposition (this process only) ---- */

static __thread int clock_arm;	/* > 0: sleep after the clock_arm-th read */

int clock_gettime(clockid_t c, struct timespec *ts)
{
	int r = (int)syscall(SYS_clock_gettime, c, ts);

	if (clock_arm > 0 && --clock_arm == 0) {
		struct timespec d = { 0, 100000000 };

		syscall(SYS_nanosleep, &d, NULL);	/* "preempted" after reading */
	}
	return r;
}

static unsigned passed, failed;

static void result(const char *name, bool ok, const char *detail)
{
	printf("%-12s %s%s%s\n", name, ok ? "ok" : "FAILED", detail[0] ? ": " : "", detail);
	if (ok)
		passed++;
	else
		failed++;
}

/* ---- sem-wake ---- */

static struct km *sem;
static atomic_int sem_got, sem_release;

static void *sem_waiter(void *arg)
{
	struct km_guard g;

	(void)arg;
	if (km_lock(sem, "k", 1, &g) != 0)
		return NULL;
	atomic_fetch_add(&sem_got, 1);
	while (!atomic_load(&sem_release))
		kt_sleep_us(1000);
	km_unlock(&g);
	return NULL;
}

static void case_sem_wake(void)
{
	struct km_options o = { .max_holders = 2 };
	char detail[160] = "";
	bool ok = true;

	for (int trial = 0; trial < 20 && ok; trial++) {
		struct km_guard a, b;
		pthread_t t[2];

		km_create(&sem, &o);
		atomic_store(&sem_got, 0);
		atomic_store(&sem_release, 0);
		km_lock(sem, "k", 1, &a);
		km_lock(sem, "k", 1, &b);
		for (int i = 0; i < 2; i++)
			pthread_create(&t[i], NULL, sem_waiter, NULL);
		kt_wait_waiters(sem, 2, 5000);
		km_unlock(&a);
		km_unlock(&b);		/* both slots free, two waiters */
		uint64_t end = kt_now_ns() + 200000000u;

		while (atomic_load(&sem_got) < 2 && kt_now_ns() < end)
			kt_sleep_us(500);
		if (atomic_load(&sem_got) < 2) {
			struct km_stats st = kt_stats(sem);

			snprintf(detail, sizeof detail,
				 "trial %d: 200 ms after both holders left, holders %zu waiters %zu "
				 "(a waiter sleeps while a slot is free)", trial, st.holders, st.waiters);
			ok = false;
		}
		atomic_store(&sem_release, 1);
		for (int i = 0; i < 2; i++)
			pthread_join(t[i], NULL);
		km_destroy(sem);
	}
	result("sem-wake", ok, detail);
}

/* ---- prep-window ---- */

static atomic_int prep_done, prep_status;

static void prep_ready(struct km_request *r, int status)
{
	(void)r;
	atomic_store(&prep_status, status);
	atomic_store(&prep_done, 1);
}

static struct km_token *prep_tok;

static void *prep_canceller(void *arg)
{
	(void)arg;
	kt_sleep_us(50000);	/* lands inside the requester's 100 ms sleep */
	km_token_cancel(prep_tok);
	return NULL;
}

static void case_prep_window(bool token)
{
	struct km *km;
	struct km_guard g;
	struct km_request req;
	struct timespec dl = kt_deadline_ms(token ? 10000 : 20);
	struct km_lock_options o = { .deadline = &dl };
	pthread_t t;
	char detail[160] = "";
	int rc;

	km_create(&km, NULL);
	km_lock(km, "k", 1, &g);
	atomic_store(&prep_done, 0);
	atomic_store(&prep_status, -1);
	memset(&req, 0, sizeof req);
	req.ready = prep_ready;
	if (token) {
		km_token_create(&prep_tok);
		o.cancel = prep_tok;
		pthread_create(&t, NULL, prep_canceller, NULL);
	}
	/* 1st clock read: the deadline check before queueing; 2nd: the one
	 * under the queue lock, right before the request is published. */
	clock_arm = 2;
	rc = km_acquire_async(km, "k", 1, &o, &req);
	clock_arm = 0;
	if (token)
		pthread_join(t, NULL);
	int want = token ? ECANCELED : ETIMEDOUT;
	bool ok;

	if (rc == want) {
		ok = true;	/* noticed at once: allowed */
	} else if (rc == EINPROGRESS) {
		uint64_t end = kt_now_ns() + 500000000u;

		while (!atomic_load(&prep_done) && kt_now_ns() < end)
			kt_sleep_us(1000);
		ok = atomic_load(&prep_done) && atomic_load(&prep_status) == want;
		if (!ok)
			snprintf(detail, sizeof detail,
				 "request still waiting 500 ms after its %s (ready() %s)",
				 token ? "token was cancelled" : "deadline passed",
				 atomic_load(&prep_done) ? "ran with another status" : "has not run");
	} else {
		ok = false;
		snprintf(detail, sizeof detail, "km_acquire_async returned %d", rc);
	}
	km_unlock(&g);
	kt_sleep_us(20000);
	if (rc == EINPROGRESS && atomic_load(&prep_status) == 0)
		km_unlock(&req.guard);
	if (token)
		km_token_destroy(prep_tok);
	km_destroy(km);
	result(token ? "prep-token" : "prep-timer", ok, detail);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	case_sem_wake();
	case_prep_window(false);
	case_prep_window(true);
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
