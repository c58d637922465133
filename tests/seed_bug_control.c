/*
 * The negative control: a contended exclusion check that must FAIL on a
 * library built with -Dseed_bug=true (the seed's remove-then-release bug)
 * and pass on the real one.
 *
 * How the seed bug shows: the last holder unlinks the key's entry before it
 * releases it. Threads that already found the entry (queued on it, or
 * spinning on its state word) keep using the old entry and are granted it,
 * while a newcomer finds no live entry for the key and inserts a fresh one
 * that it holds at once: two holders of one key. So the check needs, all the
 * time, (a) waiters already attached to the entry when its holder releases
 * and (b) newcomers arriving meanwhile: 8 threads on 2 keys, a critical
 * section long enough (and sometimes preempted) that others queue behind it.
 *
 * Detection, per key (not per entry, which is what the bug duplicates):
 *  - occupancy: an atomic counter, ++ on entry must give 1;
 *  - a plain (non-atomic) counter read, delayed, written back +1: the sum
 *    over keys must equal the successful acquires.
 *
 * Exit status: 0 when both checks held for the whole run; 1 on a violation
 * (it stops at the first one); 2 on an unexpected error code; 3 if the run
 * hangs (a watchdog: also a failure of the library).
 *
 * Environment: KM_CONTROL_MS, how long to run without a violation before
 * declaring the library correct (default 1500).
 *
 * SPDX-License-Identifier: MIT
 */
#include <signal.h>

#include "km_test.h"

#define THREADS 8
#define KEYS 2

static struct km *km;
static atomic_int occ[KEYS];
static long counter[KEYS];		/* plain on purpose */
static atomic_long violations, errors, acquired;
static atomic_int stop;
static uint64_t end_ns;

static void watchdog(int sig)
{
	static const char msg[] = "seed_bug_control: hung (watchdog)\n";

	(void)sig;
	if (write(2, msg, sizeof msg - 1) < 0) {
		/* nothing more to do */
	}
	_exit(3);
}

static void *worker(void *p)
{
	uint64_t rng = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15u + 1;
	long mine = 0;

	for (long i = 0; !atomic_load_explicit(&stop, memory_order_relaxed); i++) {
		if ((i & 15) == 0 && kt_now_ns() > end_ns)
			break;
		uint64_t x = kt_rand(&rng);
		unsigned k = (unsigned)(x % KEYS);
		char key[8] = { 'c', 't', 'l', (char)('0' + k), 0, 0, 0, 0 };
		struct km_guard g;
		int rc = km_lock(km, key, 4, &g);

		if (rc != 0) {
			atomic_fetch_add(&errors, 1);
			atomic_store(&stop, 1);
			break;
		}
		if (atomic_fetch_add(&occ[k], 1) != 0) {
			atomic_fetch_add(&violations, 1);
			atomic_store(&stop, 1);
		}
		long v = counter[k];

		__asm__ __volatile__("" ::: "memory");
		for (unsigned s = (unsigned)(x >> 32) % 200; s > 0; s--)
			kt_cpu_relax();
		if ((x >> 48) % 16 == 0)
			sched_yield();
		__asm__ __volatile__("" ::: "memory");
		counter[k] = v + 1;
		atomic_fetch_sub(&occ[k], 1);
		mine++;
		if (km_unlock(&g) != 0) {
			atomic_fetch_add(&errors, 1);
			atomic_store(&stop, 1);
		}
	}
	atomic_fetch_add(&acquired, mine);
	return NULL;
}

int main(void)
{
	long ms = kt_env_long("KM_CONTROL_MS", 1500);
	pthread_t t[THREADS];
	struct km_stats st;
	long sum = 0;

	signal(SIGALRM, watchdog);
	alarm((unsigned)(ms / 1000 + 30));
	if (km_create(&km, NULL) != 0) {
		fprintf(stderr, "seed_bug_control: km_create failed\n");
		return 2;
	}
	end_ns = kt_now_ns() + (uint64_t)ms * 1000000u;
	for (uintptr_t i = 0; i < THREADS; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
			return 2;
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	for (int k = 0; k < KEYS; k++)
		sum += counter[k];
	km_stats(km, &st);
	printf("seed_bug_control: %ld acquires, %ld exclusion violations, counters sum %ld "
	       "(lost %ld), %ld errors, stats: keys %zu holders %zu waiters %zu acquired %llu\n",
	       atomic_load(&acquired), atomic_load(&violations), sum,
	       atomic_load(&acquired) - sum, atomic_load(&errors), st.keys, st.holders,
	       st.waiters, (unsigned long long)st.acquired);
	if (atomic_load(&errors) != 0)
		return 2;
	if (atomic_load(&violations) != 0 || sum != atomic_load(&acquired)) {
		printf("seed_bug_control: FAIL: two holders of one key\n");
		return 1;
	}
	if (st.keys != 0 || st.holders != 0 || st.waiters != 0 ||
	    st.acquired != (uint64_t)sum) {
		printf("seed_bug_control: FAIL: table not empty or counts wrong\n");
		return 1;
	}
	if (km_destroy(km) != 0) {
		printf("seed_bug_control: FAIL: km_destroy\n");
		return 1;
	}
	printf("seed_bug_control: PASS\n");
	return 0;
}
