/*
 * Lifecycle: threads that exit while holding or waiting, fork() in a
 * process that uses the library, short-lived threads. (dlopen/dlclose is
 * lifecycle_dl.c: it needs a process that does not link the library.)
 *
 * Each case runs in a child process of its own with a time limit, so a hang
 * or a crash fails that case only. Prints one line per case and
 * "N passed, N failed" last.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "km_test.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>

static int case_failed;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return;
	case_failed = 1;
	printf("    FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static struct km *new_table(const struct km_options *o)
{
	struct km *km = NULL;

	if (km_create(&km, o) != 0) {
		printf("    km_create failed\n");
		exit(1);
	}
	return km;
}

/* Churn keys so that entries are retired through call_rcu (the liburcu
 * worker thread starts) and the pool fills. */
static void churn(struct km *km, int n)
{
	for (int i = 0; i < n; i++) {
		char k[24];
		struct km_guard g;
		int len = snprintf(k, sizeof k, "churn-%d", i);

		if (km_lock(km, k, (size_t)len, &g) == 0)
			km_unlock(&g);
	}
}

/* ---- a thread exits while holding ---- */

struct holder_arg {
	struct km *km;
	struct km_guard g, gs;
	const void *owner;
	int rc, rcs;
};

static void *hold_and_exit(void *p)
{
	struct holder_arg *a = p;
	struct km_lock_options o = { .owner = a->owner };

	struct km_lock_options os = { .flags = KM_SHARED, .owner = a->owner };

	a->rc = km_acquire(a->km, "held-by-dead", 12, &o, &a->g);
	a->rcs = km_acquire(a->km, "shared-by-dead", 14, &os, &a->gs);
	pthread_exit(NULL);	/* with both keys held */
}

struct waiter_arg {
	struct km *km;
	const char *key;
	struct timespec deadline;
	bool use_deadline;
	int rc;
	atomic_int done;
	struct km_guard g;
};

static void *wait_for_key(void *p)
{
	struct waiter_arg *a = p;

	a->rc = a->use_deadline ? km_timedlock(a->km, a->key, strlen(a->key), &a->deadline, &a->g)
				: km_lock(a->km, a->key, strlen(a->key), &a->g);
	atomic_store(&a->done, 1);
	if (a->rc == 0)
		km_unlock(&a->g);
	return NULL;	/* and the thread exits */
}

static void case_exit_holding(unsigned flags)
{
	struct km_options opt = { .flags = flags };
	struct km *km = new_table(&opt);
	static char ctx;
	struct holder_arg a = { .km = km, .owner = (flags & KM_ERRORCHECK) ? &ctx : NULL };
	struct waiter_arg w = { .km = km, .key = "held-by-dead" };
	pthread_t t, tw;
	struct km_guard g;
	struct km_stats st;

	pthread_create(&t, NULL, hold_and_exit, &a);
	pthread_join(t, NULL);
	check(a.rc == 0 && a.rcs == 0, "the thread's acquires: %d %d", a.rc, a.rcs);
	/* the keys stay held after the thread is gone */
	check(km_trylock(km, "held-by-dead", 12, &g) == EBUSY, "key free after its holder exited");
	check(km_trylock(km, "shared-by-dead", 14, &g) == EBUSY,
	      "shared key free for a writer after its reader exited");
	st = kt_stats(km);
	check(st.holders == 2 && st.keys == 2, "stats after exit: keys %zu holders %zu", st.keys,
	      st.holders);
	/* a waiter queues behind the dead holder */
	pthread_create(&tw, NULL, wait_for_key, &w);
	check(kt_wait_waiters(km, 1, 5000), "the waiter did not queue");
	check(atomic_load(&w.done) == 0, "the waiter got a key held by a dead thread");
	/* another thread (this one) unlocks the dead thread's guards */
	if (flags & KM_ERRORCHECK) {
		check(km_unlock(&a.g) == EPERM, "ERRORCHECK: unlock by a non-owner must be EPERM");
		check(km_unlock_owner(&a.g, &ctx) == 0, "ERRORCHECK: unlock on behalf of the owner");
	} else {
		check(km_unlock(&a.g) == 0, "unlock of the dead thread's guard");
	}
	/* (an ERRORCHECK guard of a thread-owned hold could not be released
	 * after its thread exits: the explicit owner is the way) */
	check(km_unlock_owner(&a.gs, a.owner) == 0, "unlock of the dead thread's shared guard");
	pthread_join(tw, NULL);
	check(w.rc == 0, "the waiter after the unlock: %d", w.rc);
	st = kt_stats(km);
	check(st.keys == 0 && st.holders == 0 && st.waiters == 0,
	      "stats at the end: keys %zu holders %zu waiters %zu", st.keys, st.holders, st.waiters);
	check(km_destroy(km) == 0, "km_destroy");
}

static void case_exit_holding_default(void) { case_exit_holding(0); }
static void case_exit_holding_errorcheck(void) { case_exit_holding(KM_ERRORCHECK); }

/* ---- threads that wait with a deadline, then exit ---- */

static void case_exit_after_timed_wait(void)
{
	struct km *km = new_table(NULL);
	struct km_guard held;
	struct waiter_arg w[8];
	pthread_t t[8];

	km_lock(km, "busy", 4, &held);
	for (int i = 0; i < 8; i++) {
		w[i] = (struct waiter_arg){ .km = km, .key = "busy", .use_deadline = true,
					    .deadline = kt_deadline_ms(50 + 20 * i) };
		pthread_create(&t[i], NULL, wait_for_key, &w[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);	/* timed out and exited */
		check(w[i].rc == ETIMEDOUT, "timed waiter %d: %d", i, w[i].rc);
	}
	struct km_stats st = kt_stats(km);

	check(st.waiters == 0 && st.holders == 1, "after the waiters exited: holders %zu waiters %zu",
	      st.holders, st.waiters);
	km_unlock(&held);
	check(km_trylock(km, "busy", 4, &held) == 0, "key after all");
	km_unlock(&held);
	check(km_destroy(km) == 0, "km_destroy");
}

/* ---- a thread exits while its async requests (with deadlines) wait ---- */

struct async_arg {
	struct km *km;
	struct km_request req[2];
	struct km_port *port;
	int rc[2];
	atomic_int status[2];
	atomic_int calls[2];
};

static void async_ready(struct km_request *r, int status)
{
	struct async_arg *a = r->arg;
	int i = (int)(r - a->req);

	atomic_store(&a->status[i], status);
	atomic_fetch_add(&a->calls[i], 1);
}

static void *async_and_exit(void *p)
{
	struct async_arg *a = p;
	struct timespec d0 = kt_deadline_ms(100), d1 = kt_deadline_ms(150);
	struct km_lock_options o0 = { .deadline = &d0 }, o1 = { .deadline = &d1 };

	for (int i = 0; i < 2; i++) {
		memset(&a->req[i], 0, sizeof a->req[i]);
		a->req[i].ready = async_ready;
		a->req[i].arg = a;
	}
	a->req[1].port = a->port;
	a->rc[0] = km_acquire_async(a->km, "busy", 4, &o0, &a->req[0]);
	a->rc[1] = km_acquire_async(a->km, "busy", 4, &o1, &a->req[1]);
	return NULL;	/* exits with both requests waiting */
}

static void case_exit_with_async_waiting(void)
{
	struct km *km = new_table(NULL);
	struct km_guard held;
	struct async_arg a = { .km = km };
	pthread_t t;

	km_port_create(&a.port);
	km_lock(km, "busy", 4, &held);
	pthread_create(&t, NULL, async_and_exit, &a);
	pthread_join(t, NULL);
	check(a.rc[0] == EINPROGRESS && a.rc[1] == EINPROGRESS, "async requests: %d %d", a.rc[0],
	      a.rc[1]);
	/* the timer thread fires both deadlines after their thread is gone */
	uint64_t end = kt_now_ns() + 5000000000u;

	while (atomic_load(&a.calls[0]) == 0 && kt_now_ns() < end)
		kt_sleep_us(1000);
	check(atomic_load(&a.calls[0]) == 1 && atomic_load(&a.status[0]) == ETIMEDOUT,
	      "request without a port: ready() ran %d times, status %d", atomic_load(&a.calls[0]),
	      atomic_load(&a.status[0]));
	while (km_port_run(a.port) == 0 && kt_now_ns() < end)
		kt_sleep_us(1000);
	check(atomic_load(&a.calls[1]) == 1 && atomic_load(&a.status[1]) == ETIMEDOUT,
	      "request with a port (run here): ready() ran %d times, status %d",
	      atomic_load(&a.calls[1]), atomic_load(&a.status[1]));
	struct km_stats st = kt_stats(km);

	check(st.waiters == 0, "waiters left: %zu", st.waiters);
	km_unlock(&held);
	check(km_port_destroy(a.port) == 0, "km_port_destroy");
	check(km_destroy(km) == 0, "km_destroy");
}

/* ---- many short-lived threads while tables come and go ---- */

struct churn_arg {
	struct km *km;
	int i;
};

static void *short_lived(void *p)
{
	struct churn_arg *a = p;

	churn(a->km, 100 + a->i % 50);
	return NULL;
}

static void case_short_lived_threads(void)
{
	struct km *km = new_table(NULL);
	uint64_t t0 = kt_now_ns();

	for (int round = 0; round < 20; round++) {
		pthread_t t[16];
		struct churn_arg a[16];
		struct km *other = new_table(NULL);

		for (int i = 0; i < 16; i++) {
			a[i] = (struct churn_arg){ km, round * 16 + i };
			pthread_create(&t[i], NULL, short_lived, &a[i]);
		}
		churn(other, 300);
		check(km_destroy(other) == 0, "km_destroy while threads come and go");
		for (int i = 0; i < 16; i++)
			pthread_join(t[i], NULL);
	}
	struct km_stats st = kt_stats(km);

	check(st.keys == 0 && st.holders == 0, "after 320 threads: keys %zu holders %zu", st.keys,
	      st.holders);
	check(km_destroy(km) == 0, "km_destroy");
	printf("    320 threads in %.0f ms\n", (double)(kt_now_ns() - t0) / 1e6);
}

/* ---- fork ---- */

static atomic_int child_async_done;
static atomic_int child_async_status;

static void child_ready(struct km_request *r, int status)
{
	(void)r;
	atomic_store(&child_async_status, status);
	atomic_store(&child_async_done, 1);
}

/* In the child: a new table, used, an async deadline, destroyed; exit 0. */
static void ignore_ready(struct km_request *r, int status)
{
	(void)r;
	(void)status;
}

static int child_uses_library(void)
{
	struct km *c;
	struct km_guard g;
	struct km_request req, later;
	struct timespec dl, dl_later;
	struct km_lock_options o = { .deadline = &dl }, o_later = { .deadline = &dl_later };
	int bad = 0;

	atomic_store(&child_async_done, 0);
	atomic_store(&child_async_status, -1);
	if (km_create(&c, NULL) != 0)
		return 10;
	churn(c, 5000);
	if (km_lock(c, "x", 1, &g) != 0)
		return 11;
	/* A later deadline first, then an earlier one: the earlier one
	 * signals the timer thread's condition variable. */
	dl_later = kt_deadline_ms(300);
	memset(&later, 0, sizeof later);
	later.ready = ignore_ready;
	if (km_acquire_async(c, "x", 1, &o_later, &later) != EINPROGRESS)
		return 12;
	dl = kt_deadline_ms(50);
	memset(&req, 0, sizeof req);
	req.ready = child_ready;
	if (km_acquire_async(c, "x", 1, &o, &req) != EINPROGRESS)
		return 12;
	uint64_t end = kt_now_ns() + 2000000000u;

	while (!atomic_load(&child_async_done) && kt_now_ns() < end)
		kt_sleep_us(1000);
	if (!atomic_load(&child_async_done) || atomic_load(&child_async_status) != ETIMEDOUT) {
		printf("    child: the async deadline did not fire (the timer thread is missing)\n");
		fflush(stdout);
		km_request_cancel(&req);
		bad = 13;
	}
	km_request_cancel(&later);
	km_unlock(&g);
	churn(c, 20000);	/* more batches: the reclaimer's condvar is signalled */
	printf("    child: km_destroy ...\n");
	fflush(stdout);
	if (km_destroy(c) != 0)
		return 14;
	printf("    child: km_destroy returned\n");
	fflush(stdout);
	return bad;
}

static void run_fork_child(const char *what)
{
	fflush(stdout);
	pid_t pid = fork();

	if (pid == 0) {
		alarm(8);	/* a hang fails the child */
		_exit(child_uses_library());
	}
	int st = 0;

	waitpid(pid, &st, 0);
	if (WIFSIGNALED(st))
		check(false, "%s: the child was killed by signal %d%s", what, WTERMSIG(st),
		      WTERMSIG(st) == SIGALRM ? " (hung for 8 s)" : "");
	else
		check(WEXITSTATUS(st) == 0, "%s: the child exited %d", what, WEXITSTATUS(st));
}

static void case_fork_after_use(void)
{
	struct km *km = new_table(NULL);

	churn(km, 5000);	/* the parent has used call_rcu: its worker thread exists */
	run_fork_child("fork after use");
	churn(km, 100);		/* the parent still works */
	check(km_destroy(km) == 0, "parent km_destroy");
}

static void case_fork_timer_pending(void)
{
	struct km *km = new_table(NULL);
	struct km_guard held;
	struct km_request req;
	struct timespec dl = kt_deadline_ms(3000);
	struct km_lock_options o = { .deadline = &dl };

	km_lock(km, "p", 1, &held);
	memset(&req, 0, sizeof req);
	req.ready = child_ready;
	check(km_acquire_async(km, "p", 1, &o, &req) == EINPROGRESS, "parent async");
	run_fork_child("fork with a deadline pending in the parent");
	check(km_request_cancel(&req) == 0, "parent cancel");
	km_unlock(&held);
	check(km_destroy(km) == 0, "parent km_destroy");
}

/* fork while the library's threads sleep on their condition variables (the
 * reclaimer idles up to 100 ms after work, the timer thread waits for a far
 * deadline): the child's first signals of those condvars must not hang. */
static void case_fork_threads_waiting(void)
{
	struct km *km = new_table(NULL);
	struct km_guard held;
	struct km_request req;
	struct timespec dl = kt_deadline_ms(60000);
	struct km_lock_options o = { .deadline = &dl };

	km_lock(km, "p", 1, &held);
	memset(&req, 0, sizeof req);
	req.ready = child_ready;
	check(km_acquire_async(km, "p", 1, &o, &req) == EINPROGRESS, "parent async");
	for (int i = 0; i < 8 && !case_failed; i++) {
		churn(km, 20000);
		kt_sleep_us(20000 + 5000 * i);	/* the reclaimer is done, waiting */
		run_fork_child("fork while the library's threads wait");
	}
	check(km_request_cancel(&req) == 0, "parent cancel");
	km_unlock(&held);
	check(km_destroy(km) == 0, "parent km_destroy");
}

static atomic_int stop_hammer;


static void *hammer(void *p)
{
	struct km *km = p;
	uint64_t rng = kt_now_ns() | 1;

	while (!atomic_load(&stop_hammer)) {
		char k[16];
		struct km_guard g;
		struct km_request r;
		struct timespec dl = kt_deadline_ms(1);
		struct km_lock_options o = { .deadline = &dl };
		int len = snprintf(k, sizeof k, "h%u", (unsigned)(kt_rand(&rng) % 64));

		if (km_lock(km, k, (size_t)len, &g) == 0) {
			memset(&r, 0, sizeof r);
			r.ready = ignore_ready;
			if (km_acquire_async(km, k, (size_t)len, &o, &r) == EINPROGRESS)
				km_request_cancel(&r);
			km_unlock(&g);
		}
	}
	return NULL;
}

static void case_fork_while_busy(void)
{
	struct km *km = new_table(NULL);
	pthread_t t[2];

	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, hammer, km);
	for (int i = 0; i < 10; i++) {
		kt_sleep_us(20000);
		run_fork_child("fork while other threads use the library");
		if (case_failed)
			break;
	}
	atomic_store(&stop_hammer, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	check(km_destroy(km) == 0, "parent km_destroy");
}

/* ---- the runner ---- */

struct tcase {
	const char *name;
	void (*fn)(void);
	unsigned limit_s;
};

static const struct tcase cases[] = {
	{ "thread exits holding (default table)", case_exit_holding_default, 20 },
	{ "thread exits holding (ERRORCHECK, explicit owner)", case_exit_holding_errorcheck, 20 },
	{ "threads exit after timed waits", case_exit_after_timed_wait, 20 },
	{ "thread exits with async requests waiting", case_exit_with_async_waiting, 20 },
	{ "320 short-lived threads, tables created/destroyed", case_short_lived_threads, 60 },
	{ "fork after use: child makes, uses, destroys a table", case_fork_after_use, 30 },
	{ "fork with an async deadline pending in the parent", case_fork_timer_pending, 30 },
	{ "fork while other threads use the library", case_fork_while_busy, 60 },
	{ "fork while the library's threads wait (8 times)", case_fork_threads_waiting, 80 },
};

int main(int argc, char **argv)
{
	unsigned passed = 0, failed = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		if (argc > 1 && strstr(cases[i].name, argv[1]) == NULL)
			continue;
		printf("%s\n", cases[i].name);
		fflush(stdout);
		pid_t pid = fork();

		if (pid == 0) {
			alarm(cases[i].limit_s);
			cases[i].fn();
			fflush(stdout);
			_exit(case_failed);
		}
		int st = 0;

		waitpid(pid, &st, 0);
		bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;

		if (WIFSIGNALED(st))
			printf("    killed by signal %d%s\n", WTERMSIG(st),
			       WTERMSIG(st) == SIGALRM ? " (time limit)" : "");
		printf("  -> %s\n", ok ? "ok" : "FAILED");
		if (ok)
			passed++;
		else
			failed++;
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
