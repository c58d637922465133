/*
 * Helpers shared by the keymutex test suites (header-only, static inline).
 *
 * Rule followed by every suite: Criterion assertions run only on the test's
 * main thread. Helper threads record what they saw in plain structs (or
 * atomics) and the main thread asserts on it after joining them.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_TEST_H
#define KM_TEST_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keymutex.h"

#define KT_UNUSED __attribute__((unused))

static KT_UNUSED uint64_t kt_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* An absolute CLOCK_MONOTONIC deadline ns nanoseconds from now (ns may be
 * negative: a deadline in the past). */
static KT_UNUSED struct timespec kt_deadline_ns(int64_t ns)
{
	struct timespec ts;
	int64_t t;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	t = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + ns;
	if (t < 0)
		t = 0;
	ts.tv_sec = (time_t)(t / 1000000000);
	ts.tv_nsec = (long)(t % 1000000000);
	return ts;
}

static KT_UNUSED struct timespec kt_deadline_ms(int64_t ms)
{
	return kt_deadline_ns(ms * 1000000);
}

static KT_UNUSED void kt_sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static KT_UNUSED long kt_env_long(const char *name, long def)
{
	const char *v = getenv(name);
	char *end;
	long r;

	if (v == NULL || *v == '\0')
		return def;
	r = strtol(v, &end, 10);
	if (*end != '\0' || r <= 0)
		return def;
	return r;
}

/* True when the test runs under valgrind (needs valgrind's header at build
 * time: the valgrind package; without it always false). */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define KT_HAVE_VALGRIND_H 1
#endif
#endif

static KT_UNUSED bool kt_on_valgrind(void)
{
#ifdef KT_HAVE_VALGRIND_H
	return RUNNING_ON_VALGRIND != 0;
#else
	return false;
#endif
}

/*
 * Slack for slow runs: KM_TIME_SCALE=N (default 1) multiplies the deadlines
 * that exist only so that helper threads get the time to start and queue
 * before they pass, and the generous tolerances around timing bounds; never
 * what a test asserts about results or order. Under valgrind, which runs one
 * thread at a time and starts threads slowly, the default is 5 (what
 * scripts/test.sh sets), so a hand run under valgrind behaves like CI.
 */
static KT_UNUSED long kt_time_scale(void)
{
	return kt_env_long("KM_TIME_SCALE", kt_on_valgrind() ? 5 : 1);
}

static KT_UNUSED struct km_stats kt_stats(struct km *km)
{
	struct km_stats st;

	memset(&st, 0xA5, sizeof st);
	if (km_stats(km, &st) != 0)
		memset(&st, 0xFF, sizeof st);	/* makes every later comparison fail */
	return st;
}

/* Fill a guard with garbage: the library must write it, never read it. */
static KT_UNUSED void kt_poison(struct km_guard *g)
{
	memset(g, 0xA5, sizeof *g);
}

static KT_UNUSED bool kt_guard_zero(const struct km_guard *g)
{
	static const struct km_guard zero;

	return memcmp(g, &zero, sizeof zero) == 0;
}

/* Poll km_stats until waiters == n (and, if holders >= 0, holders == holders),
 * for at most timeout_ms. True if reached. */
static KT_UNUSED bool kt_wait_waiters(struct km *km, size_t n, long timeout_ms)
{
	uint64_t end = kt_now_ns() + (uint64_t)timeout_ms * 1000000u;

	for (;;) {
		struct km_stats st = kt_stats(km);

		if (st.waiters == n)
			return true;
		if (kt_now_ns() > end)
			return false;
		kt_sleep_us(200);
	}
}

/* Poll until *flag != 0, at most timeout_ms. */
static KT_UNUSED bool kt_wait_flag(atomic_int *flag, long timeout_ms)
{
	uint64_t end = kt_now_ns() + (uint64_t)timeout_ms * 1000000u;

	while (atomic_load(flag) == 0) {
		if (kt_now_ns() > end)
			return false;
		kt_sleep_us(100);
	}
	return true;
}

/* A small fast PRNG (xorshift64*) for the stress threads. */
static KT_UNUSED uint64_t kt_rand(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * UINT64_C(2685821657736338717);
}

static KT_UNUSED long kt_rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;

	if (f == NULL)
		return -1;
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kib;
}

static KT_UNUSED void kt_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* KM_TEST_H */
