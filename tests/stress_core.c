/*
 * Stress tests: mutual exclusion, counts, keyed semaphores, FIFO order and
 * memory under many threads and keys.
 *
 * Every critical section does a non-atomic read-modify-write of a per-key
 * counter (a plain long, with a delay between the read and the write so that
 * two holders would lose an update) and an occupancy check (an atomic
 * counter per key: ++ on entry must give 1, or at most max_holders). At the
 * end the per-key counters must add up to the successful acquires exactly,
 * and km_stats must show an empty table with exact event counters.
 *
 * Environment:
 *   KM_STRESS_MS     duration of each timed case in ms (default 300)
 *   KM_STRESS_ITERS  iteration cap per thread (default 4,000,000): bounds
 *                    sanitizer runs
 *   KM_RSS_KEYS      distinct keys churned by the RSS test (default 10,000,000)
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include "km_test.h"

TestSuite(stress, .timeout = 180);

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
	__has_feature(memory_sanitizer)
#define KT_SANITIZED 1
#endif
#endif
#ifndef KT_SANITIZED
#define KT_SANITIZED 0
#endif

static long stress_ms(void)
{
	return kt_env_long("KM_STRESS_MS", 300);
}

static long stress_iters(void)
{
	return kt_env_long("KM_STRESS_ITERS", 4000000);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

/*
 * Key idx as bytes: lengths 8, 20 and 72 in turn (three pool size classes,
 * 72 is past the pooled length and is allocated exactly), always the same
 * bytes for the same idx, different bytes for different idx.
 */
#define KEY_MAX 72
static size_t make_key(uint64_t idx, unsigned char *buf)
{
	static const size_t lens[3] = { 8, 20, 72 };
	size_t len = lens[idx % 3];
	uint64_t x = idx * UINT64_C(0x9E3779B97F4A7C15) + 0x1234;

	memcpy(buf, &idx, 8);
	for (size_t i = 8; i < len; i++) {
		x ^= x >> 29;
		x *= UINT64_C(0xBF58476D1CE4E5B9);
		buf[i] = (unsigned char)(x >> 56);
	}
	return len;
}

/* ------------------------------------------------------------------ */
/* The exclusion / count engine                                        */
/* ------------------------------------------------------------------ */

enum { OP_LOCK_ONLY = 0, OP_MIXED = 1 };

struct cfg {
	unsigned threads;
	size_t nkeys;
	unsigned max_holders;	/* 0/1: mutex */
	unsigned flags;		/* table flags */
	int ops;		/* OP_* */
	unsigned shards;
	size_t expected_keys;
};

struct run {
	struct cfg c;
	struct km *km;
	long *counter;		/* plain, non-atomic: the race detector */
	atomic_int *occ;	/* holders of key i now, by our own count */
	atomic_int *max_occ;	/* max occupancy seen per key (small nkeys) */
	atomic_long counter_sem;	/* semaphore mode: successes, atomically */
	atomic_long violations;
	uint64_t end_ns;
	long iter_cap;
};

struct tres {
	struct run *r;
	unsigned id;
	long ok, busy, timedout, errors, last_error;
};

static void critical_section(struct run *r, uint64_t idx, uint64_t *rng)
{
	unsigned cap = r->c.max_holders > 1 ? r->c.max_holders : 1;
	int o = atomic_fetch_add(&r->occ[idx], 1) + 1;

	if (o > (int)cap)
		atomic_fetch_add(&r->violations, 1);
	if (r->max_occ != NULL) {
		int m = atomic_load_explicit(&r->max_occ[idx], memory_order_relaxed);

		while (o > m && !atomic_compare_exchange_weak(&r->max_occ[idx], &m, o))
			;
	}
	if (cap == 1) {
		/* read, delay, write: a second holder in here loses an update */
		long v = r->counter[idx];
		uint64_t d = kt_rand(rng);

		__asm__ __volatile__("" ::: "memory");
		for (unsigned s = (unsigned)(d & 15); s > 0; s--)
			kt_cpu_relax();
		if ((d >> 8 & 255) == 0)
			sched_yield();	/* preempted while holding: waiters park */
		__asm__ __volatile__("" ::: "memory");
		r->counter[idx] = v + 1;
	} else {
		uint64_t d = kt_rand(rng);

		atomic_fetch_add(&r->counter_sem, 1);
		/* linger a little so that the capacity fills up */
		for (unsigned s = (unsigned)(d & 63); s > 0; s--)
			kt_cpu_relax();
		if ((d >> 8 & 15) == 0)
			sched_yield();
	}
	atomic_fetch_sub(&r->occ[idx], 1);
}

static void *stress_thread(void *p)
{
	struct tres *t = p;
	struct run *r = t->r;
	uint64_t rng = 0x9E3779B97F4A7C15u * (t->id + 1) ^ kt_now_ns();
	unsigned char key[KEY_MAX];

	if (rng == 0)
		rng = 1;
	for (long i = 0; i < r->iter_cap; i++) {
		if ((i & 31) == 0 && kt_now_ns() > r->end_ns)
			break;
		uint64_t x = kt_rand(&rng);
		uint64_t idx = r->c.nkeys == 1 ? 0 : x % r->c.nkeys;
		size_t len = make_key(idx, key);
		unsigned op = (unsigned)(x >> 40) % 100;
		int kind = r->c.ops == OP_LOCK_ONLY ? 0 : op < 60 ? 0 : op < 80 ? 1 : 2;
		struct km_guard g;
		int rc;

		if (kind == 0) {
			rc = km_lock(r->km, key, len, &g);
		} else if (kind == 1) {
			rc = km_trylock(r->km, key, len, &g);
		} else {
			/* deadlines from already passed to 200 us ahead */
			int64_t ns = (int64_t)((x >> 20) % 220000) - 20000;
			struct timespec dl = kt_deadline_ns(ns);

			rc = km_timedlock(r->km, key, len, &dl, &g);
		}
		if (rc == 0) {
			t->ok++;
			critical_section(r, idx, &rng);
			rc = km_unlock(&g);
			if (rc != 0) {
				t->errors++;
				t->last_error = rc;
			}
		} else if (rc == EBUSY && kind == 1) {
			t->busy++;
		} else if (rc == ETIMEDOUT && kind == 2) {
			t->timedout++;
		} else {
			t->errors++;
			t->last_error = rc;
		}
		if (!kt_guard_zero(&g)) {
			t->errors++;
			t->last_error = -1;
		}
	}
	return NULL;
}

struct stats_reader {
	struct km *km;
	atomic_int *stop;
	long calls, errors;
};

static void *stats_reader_main(void *p)
{
	struct stats_reader *s = p;
	struct km_stats st;
	uint64_t last_acquired = 0;

	while (!atomic_load(s->stop)) {
		if (km_stats(s->km, &st) != 0)
			s->errors++;
		/* a recent value of a counter that only grows never goes back */
		if (st.acquired < last_acquired)
			s->errors++;
		last_acquired = st.acquired;
		s->calls++;
		kt_sleep_us(1000);
	}
	return NULL;
}

static void check_quiescent(struct km *km, const char *what)
{
	struct km_stats st = kt_stats(km);

	cr_assert_eq(st.keys, 0, "%s: %zu keys left", what, st.keys);
	cr_assert_eq(st.holders, 0, "%s: %zu holders left", what, st.holders);
	cr_assert_eq(st.waiters, 0, "%s: %zu waiters left", what, st.waiters);
}

static void run_stress(struct cfg c)
{
	struct run *r = calloc(1, sizeof *r);
	struct km_options o;
	char what[128];

	cr_assert_not_null(r);
	snprintf(what, sizeof what, "%u threads, %zu keys, max_holders %u, flags %#x, %s",
		 c.threads, c.nkeys, c.max_holders, c.flags,
		 c.ops == OP_MIXED ? "lock/trylock/timedlock" : "lock");
	r->c = c;
	r->counter = calloc(c.nkeys, sizeof *r->counter);
	r->occ = calloc(c.nkeys, sizeof *r->occ);
	cr_assert(r->counter && r->occ);
	if (c.nkeys <= 4096) {
		r->max_occ = calloc(c.nkeys, sizeof *r->max_occ);
		cr_assert_not_null(r->max_occ);
	}
	memset(&o, 0, sizeof o);
	o.max_holders = c.max_holders;
	o.flags = c.flags;
	o.shards = c.shards;
	o.expected_keys = c.expected_keys;
	cr_assert_eq(km_create(&r->km, &o), 0);
	r->iter_cap = stress_iters();
	r->end_ns = kt_now_ns() + (uint64_t)stress_ms() * 1000000u;

	/* km_stats walks the table while it changes: must be safe, and end exact */
	pthread_t stats_th;
	atomic_int stats_stop = 0;
	struct stats_reader sr = { r->km, &stats_stop, 0, 0 };

	cr_assert_eq(pthread_create(&stats_th, NULL, stats_reader_main, &sr), 0);

	struct tres *t = calloc(c.threads, sizeof *t);
	pthread_t *th = calloc(c.threads, sizeof *th);

	cr_assert(t && th);
	for (unsigned i = 0; i < c.threads; i++) {
		t[i].r = r;
		t[i].id = i;
		cr_assert_eq(pthread_create(&th[i], NULL, stress_thread, &t[i]), 0);
	}
	long ok = 0, busy = 0, timedout = 0, errors = 0, last_error = 0;

	for (unsigned i = 0; i < c.threads; i++) {
		cr_assert_eq(pthread_join(th[i], NULL), 0);
		ok += t[i].ok;
		busy += t[i].busy;
		timedout += t[i].timedout;
		errors += t[i].errors;
		if (t[i].errors)
			last_error = t[i].last_error;
	}
	atomic_store(&stats_stop, 1);
	cr_assert_eq(pthread_join(stats_th, NULL), 0);
	cr_log_info("%s: %ld acquires, %ld EBUSY, %ld ETIMEDOUT, %ld concurrent km_stats",
		    what, ok, busy, timedout, sr.calls);
	cr_assert_eq(sr.errors, 0, "%s: km_stats failed under load", what);

	cr_assert_eq(errors, 0, "%s: %ld unexpected results (last %ld)", what, errors, last_error);
	cr_assert_eq(atomic_load(&r->violations), 0, "%s: %ld exclusion violations", what,
		     atomic_load(&r->violations));
	long sum = 0;

	for (size_t i = 0; i < c.nkeys; i++) {
		sum += r->counter[i];
		cr_assert_eq(atomic_load(&r->occ[i]), 0);
	}
	if (c.max_holders > 1)
		sum = atomic_load(&r->counter_sem);
	cr_assert_eq(sum, ok, "%s: counters add up to %ld, %ld acquires (lost updates)",
		     what, sum, ok);
	cr_assert_gt(ok, 0, "%s: nothing was acquired", what);
	if (r->max_occ != NULL) {
		int maxo = 0;
		unsigned cap = c.max_holders > 1 ? c.max_holders : 1;

		for (size_t i = 0; i < c.nkeys; i++)
			if (atomic_load(&r->max_occ[i]) > maxo)
				maxo = atomic_load(&r->max_occ[i]);
		cr_assert_leq(maxo, (int)cap, "%s: %d holders at once", what, maxo);
		if (c.threads >= cap * c.nkeys)
			cr_assert_eq(maxo, (int)cap, "%s: capacity %u never reached (max %d)",
				     what, cap, maxo);
	}

	struct km_stats st = kt_stats(r->km);

	check_quiescent(r->km, what);
	cr_assert_eq(st.acquired, (uint64_t)ok, "%s: stats.acquired %llu, counted %ld", what,
		     (unsigned long long)st.acquired, ok);
	cr_assert_eq(st.timeouts, (uint64_t)timedout, "%s: stats.timeouts %llu, counted %ld",
		     what, (unsigned long long)st.timeouts, timedout);
	cr_assert_leq(st.contended, st.acquired);
	cr_assert_eq(st.cancels, 0);
	cr_assert_eq(st.rejected, 0);
	cr_assert_eq(km_destroy(r->km), 0, "%s", what);
	free(t);
	free(th);
	free(r->counter);
	free(r->occ);
	free(r->max_occ);
	free(r);
}

#define MUTEX(T, K, OPS) ((struct cfg){ .threads = (T), .nkeys = (K), .ops = (OPS) })

Test(stress, t8_k1)        { run_stress(MUTEX(8, 1, OP_MIXED)); }
Test(stress, t8_k4)        { run_stress(MUTEX(8, 4, OP_MIXED)); }
Test(stress, t8_k64)       { run_stress(MUTEX(8, 64, OP_MIXED)); }
Test(stress, t8_k1m)       { run_stress(MUTEX(8, 1000000, OP_MIXED)); }
Test(stress, t64_k1)       { run_stress(MUTEX(64, 1, OP_MIXED)); }
Test(stress, t64_k4)       { run_stress(MUTEX(64, 4, OP_MIXED)); }
Test(stress, t64_k64)      { run_stress(MUTEX(64, 64, OP_MIXED)); }
Test(stress, t64_k1m)      { run_stress(MUTEX(64, 1000000, OP_MIXED)); }
/* plain km_lock only: the most waiters parked and handed over */
Test(stress, t8_k1_lock)   { run_stress(MUTEX(8, 1, OP_LOCK_ONLY)); }
Test(stress, t64_k4_lock)  { run_stress(MUTEX(64, 4, OP_LOCK_ONLY)); }

/* KM_FIFO: direct hand-off on every release */
Test(stress, fifo_t8_k1)
{
	struct cfg c = MUTEX(8, 1, OP_MIXED);

	c.flags = KM_FIFO;
	run_stress(c);
}

Test(stress, fifo_t64_k64)
{
	struct cfg c = MUTEX(64, 64, OP_MIXED);

	c.flags = KM_FIFO;
	run_stress(c);
}

/* One shard with the fewest buckets: long chains, inserts and unlinks of
 * neighbouring entries racing in one bucket. */
Test(stress, one_shard_t8_k64)
{
	struct cfg c = MUTEX(8, 64, OP_MIXED);

	c.shards = 1;
	c.expected_keys = 1;
	run_stress(c);
}

Test(stress, one_shard_t64_k1000)
{
	struct cfg c = MUTEX(64, 1000, OP_MIXED);

	c.shards = 1;
	c.expected_keys = 1;
	run_stress(c);
}

/* Keyed semaphores: never more than max_holders, and max_holders reached. */
#define SEM(T, K, N) ((struct cfg){ .threads = (T), .nkeys = (K), .max_holders = (N), .ops = OP_MIXED })

Test(stress, sem3_t8_k1)   { run_stress(SEM(8, 1, 3)); }
Test(stress, sem3_t64_k4)  { run_stress(SEM(64, 4, 3)); }
Test(stress, sem3_t8_k4)   { run_stress(SEM(8, 4, 3)); }
Test(stress, sem7_t64_k1)  { run_stress(SEM(64, 1, 7)); }

/* ------------------------------------------------------------------ */
/* KM_FIFO order under load                                            */
/* ------------------------------------------------------------------ */

/*
 * Rounds: the main thread holds the key, starts K persistent waiters one at
 * a time (each after the previous one is seen queued), optionally lets one
 * of them time out in the queue, and releases. The grants must come in
 * queue order. Meanwhile noise threads churn other keys of the same table
 * (uncontended locks, so they never wait and stats().waiters counts only the
 * FIFO key) and a barger hammers the FIFO key with km_trylock: it must never
 * get it while a queued waiter is still owed its turn.
 */
struct fifo_run {
	struct km *km;
	int k;
	/* under the key: */
	int order[64];
	int norder;
	int owed;		/* queued waiters not yet granted this round */
	/* signalling */
	atomic_int go[64];	/* round number to run, set by main */
	atomic_int done[64];	/* round number finished */
	atomic_int victim;	/* waiter index that uses a deadline, -1 none */
	atomic_int stop;
	int rc[64];
	long barges, barger_ok, noise_ops, errors;
	struct timespec victim_dl;
};

struct fifo_waiter {
	struct fifo_run *f;
	int id;
};

static void *fifo_waiter_main(void *p)
{
	struct fifo_waiter *w = p;
	struct fifo_run *f = w->f;
	int round = 0;

	for (;;) {
		int g;

		while ((g = atomic_load(&f->go[w->id])) == round && !atomic_load(&f->stop))
			kt_sleep_us(20);
		if (atomic_load(&f->stop))
			return NULL;
		round = g;
		struct km_guard kg;
		int rc;

		if (atomic_load(&f->victim) == w->id)
			rc = km_timedlock(f->km, "fifo", 4, &f->victim_dl, &kg);
		else
			rc = km_lock(f->km, "fifo", 4, &kg);
		f->rc[w->id] = rc;
		if (rc == 0) {
			f->order[f->norder++] = w->id;	/* plain, under the key */
			f->owed--;
			km_unlock(&kg);
		}
		atomic_store(&f->done[w->id], round);
	}
}

static void *fifo_barger_main(void *p)
{
	struct fifo_run *f = p;
	struct km_guard g;

	while (!atomic_load(&f->stop)) {
		if (km_trylock(f->km, "fifo", 4, &g) == 0) {
			if (f->owed > 0)
				f->barges++;	/* plain, under the key */
			f->barger_ok++;
			km_unlock(&g);
		}
		sched_yield();
	}
	return NULL;
}

struct noise_arg {
	struct fifo_run *f;
	int id;
	long ops, errors;
};

static void *fifo_noise_main(void *p)
{
	struct noise_arg *n = p;
	struct km_guard g;
	char key[32];
	long i = 0;

	while (!atomic_load(&n->f->stop)) {
		/* keys private to this thread: never contended, never waited on */
		int len = snprintf(key, sizeof key, "noise-%d-%ld", n->id, i++ % 5000);

		if (km_lock(n->f->km, key, (size_t)len, &g) != 0 || km_unlock(&g) != 0)
			n->errors++;
		n->ops++;
	}
	return NULL;
}

/*
 * Wait until waiter i is queued: stats().waiters == i + 1, less one once the
 * victim (if started) has timed out and left (it sets done[] after leaving,
 * so the count is never one short while we expect it in the queue).
 */
static bool wait_queued(struct fifo_run *f, int i, int victim, int round)
{
	uint64_t end = kt_now_ns() + 10000000000u;

	for (;;) {
		size_t want = (size_t)i + 1;

		if (victim >= 0 && victim <= i && atomic_load(&f->done[victim]) == round)
			want--;
		if (kt_stats(f->km).waiters == want)
			return true;
		if (kt_now_ns() > end)
			return false;
		sched_yield();
	}
}

static void fifo_stress(int k)
{
	struct fifo_run *f = calloc(1, sizeof *f);
	struct km_options o;
	pthread_t tw[64], tb, tn[2];
	struct fifo_waiter w[64];
	struct noise_arg na[2];
	uint64_t rng = kt_now_ns() | 1;
	int rounds = 0, victims = 0;

	cr_assert_not_null(f);
	cr_assert_leq(k, 64);
	memset(&o, 0, sizeof o);
	o.flags = KM_FIFO;
	cr_assert_eq(km_create(&f->km, &o), 0);
	f->k = k;
	atomic_store(&f->victim, -1);
	for (int i = 0; i < k; i++) {
		w[i] = (struct fifo_waiter){ f, i };
		cr_assert_eq(pthread_create(&tw[i], NULL, fifo_waiter_main, &w[i]), 0);
	}
	cr_assert_eq(pthread_create(&tb, NULL, fifo_barger_main, f), 0);
	for (int i = 0; i < 2; i++) {
		na[i] = (struct noise_arg){ f, i, 0, 0 };
		cr_assert_eq(pthread_create(&tn[i], NULL, fifo_noise_main, &na[i]), 0);
	}

	uint64_t end = kt_now_ns() + (uint64_t)stress_ms() * 1000000u;
	bool ok = true;
	char fail[256] = "";

	while (ok && (rounds < 3 || kt_now_ns() < end) && rounds < 10000) {
		struct km_guard g;
		int round = rounds + 1;
		int victim = (kt_rand(&rng) % 4 == 0) ? (int)(kt_rand(&rng) % (uint64_t)k) : -1;

		if (km_lock(f->km, "fifo", 4, &g) != 0) {
			ok = false;
			snprintf(fail, sizeof fail, "main's km_lock failed");
			break;
		}
		f->norder = 0;
		f->owed = k - (victim >= 0);
		atomic_store(&f->victim, victim);
		for (int i = 0; i < k && ok; i++) {
			if (i == victim)
				f->victim_dl = kt_deadline_ms(5);	/* published by go[] */
			atomic_store(&f->go[i], round);
			if (!wait_queued(f, i, victim, round)) {
				ok = false;
				snprintf(fail, sizeof fail, "round %d: waiter %d never queued",
					 round, i);
			}
		}
		if (victim >= 0 && ok) {
			uint64_t vend = kt_now_ns() + 10000000000u;

			while (atomic_load(&f->done[victim]) != round && kt_now_ns() < vend)
				sched_yield();
			if (f->rc[victim] != ETIMEDOUT) {
				ok = false;
				snprintf(fail, sizeof fail, "round %d: victim got %d, not ETIMEDOUT",
					 round, f->rc[victim]);
			}
			victims++;
		}
		km_unlock(&g);
		for (int i = 0; i < k; i++) {
			uint64_t dend = kt_now_ns() + 10000000000u;

			while (atomic_load(&f->done[i]) != round && kt_now_ns() < dend)
				sched_yield();
			if (atomic_load(&f->done[i]) != round) {
				ok = false;
				snprintf(fail, sizeof fail, "round %d: waiter %d never granted", round, i);
			}
		}
		if (!ok)
			break;
		/* all done: read the order (no one else writes it now) */
		int expect = 0;

		if (f->norder != k - (victim >= 0)) {
			ok = false;
			snprintf(fail, sizeof fail, "round %d: %d grants, want %d", round,
				 f->norder, k - (victim >= 0));
		}
		for (int i = 0; ok && i < f->norder; i++, expect++) {
			if (expect == victim)
				expect++;
			if (f->order[i] != expect) {
				ok = false;
				snprintf(fail, sizeof fail,
					 "round %d: grant %d went to waiter %d, want %d (victim %d)",
					 round, i, f->order[i], expect, victim);
			}
		}
		rounds++;
	}
	atomic_store(&f->stop, 1);
	for (int i = 0; i < k; i++)
		pthread_join(tw[i], NULL);
	pthread_join(tb, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(tn[i], NULL);
	cr_log_info("fifo K=%d: %d rounds, %d with a timed-out waiter, barger got the key %ld times",
		    k, rounds, victims, f->barger_ok);
	cr_assert(ok, "%s", fail);
	cr_assert_eq(f->barges, 0, "a km_trylock barged ahead of queued FIFO waiters %ld times",
		     f->barges);
	cr_assert_eq(na[0].errors + na[1].errors, 0);
	check_quiescent(f->km, "fifo");
	cr_assert_eq(kt_stats(f->km).timeouts, (uint64_t)victims);
	cr_assert_eq(km_destroy(f->km), 0);
	free(f);
}

Test(stress, fifo_order_k8)
{
	fifo_stress(8);
}

Test(stress, fifo_order_k32)
{
	fifo_stress(32);
}

/* ------------------------------------------------------------------ */
/* Hot-key hand-over with timeouts: the wait queue under churn          */
/* ------------------------------------------------------------------ */

struct tq_arg {
	struct km *km;
	long *counter;
	atomic_int *occ;
	atomic_long *viol;
	uint64_t end;
	long cap;
	unsigned id;
	long ok, timedout, errors;
};

static void *tq_main(void *p)
{
	struct tq_arg *a = p;
	uint64_t rng = (a->id + 1) * 0x9E3779B97F4A7C15u;

	for (long i = 0; i < a->cap; i++) {
		if ((i & 15) == 0 && kt_now_ns() > a->end)
			break;
		uint64_t x = kt_rand(&rng);
		struct timespec dl = kt_deadline_ns((int64_t)(x % 50000));	/* 0-50 us */
		struct km_guard g;
		int rc = (x >> 32) % 4 == 0 ? km_lock(a->km, "q", 1, &g)
					    : km_timedlock(a->km, "q", 1, &dl, &g);

		if (rc == 0) {
			if (atomic_fetch_add(a->occ, 1) != 0)
				atomic_fetch_add(a->viol, 1);
			long v = *a->counter;

			__asm__ __volatile__("" ::: "memory");
			for (unsigned s = (unsigned)(x >> 50) & 63; s > 0; s--)
				kt_cpu_relax();
			*a->counter = v + 1;
			atomic_fetch_sub(a->occ, 1);
			a->ok++;
			if (km_unlock(&g) != 0)
				a->errors++;
		} else if (rc == ETIMEDOUT) {
			a->timedout++;
		} else {
			a->errors++;
		}
	}
	return NULL;
}

static void timeouts_racing(unsigned threads)
{
	struct km *km;
	long counter = 0;
	atomic_int occ = 0;
	atomic_long viol = 0;
	struct tq_arg *a = calloc(threads, sizeof *a);
	pthread_t *t = calloc(threads, sizeof *t);
	uint64_t end = kt_now_ns() + (uint64_t)stress_ms() * 1000000u;
	long ok = 0, timedout = 0, errors = 0;

	cr_assert(a && t);
	cr_assert_eq(km_create(&km, NULL), 0);
	for (unsigned i = 0; i < threads; i++) {
		a[i] = (struct tq_arg){ .km = km, .counter = &counter, .occ = &occ, .viol = &viol,
					.end = end, .cap = stress_iters(), .id = i };
		cr_assert_eq(pthread_create(&t[i], NULL, tq_main, &a[i]), 0);
	}
	for (unsigned i = 0; i < threads; i++) {
		cr_assert_eq(pthread_join(t[i], NULL), 0);
		ok += a[i].ok;
		timedout += a[i].timedout;
		errors += a[i].errors;
	}
	cr_log_info("timeouts racing, %u threads: %ld acquires, %ld ETIMEDOUT", threads, ok,
		    timedout);
	cr_assert_eq(errors, 0);
	cr_assert_eq(atomic_load(&viol), 0);
	cr_assert_eq(counter, ok);
	struct km_stats st = kt_stats(km);

	check_quiescent(km, "timeouts racing");
	cr_assert_eq(st.acquired, (uint64_t)ok);
	cr_assert_eq(st.timeouts, (uint64_t)timedout);
	cr_assert_eq(km_destroy(km), 0);
	free(a);
	free(t);
}

Test(stress, timeouts_racing_t8)
{
	timeouts_racing(8);
}

Test(stress, timeouts_racing_t64)
{
	timeouts_racing(64);
}

/* ------------------------------------------------------------------ */
/* Memory stays flat while distinct keys churn                         */
/* ------------------------------------------------------------------ */

struct rss_arg {
	struct km *km;
	uint64_t first, count;
	long errors;
};

static void *rss_main(void *p)
{
	struct rss_arg *a = p;
	unsigned char key[KEY_MAX];
	struct km_guard g[16];

	/* 16 keys held at a time, every key new */
	for (uint64_t i = 0; i < a->count; i += 16) {
		uint64_t n = a->count - i < 16 ? a->count - i : 16;

		for (uint64_t j = 0; j < n; j++) {
			size_t len = make_key(a->first + i + j, key);

			if (km_lock(a->km, key, len, &g[j]) != 0)
				a->errors++;
		}
		for (uint64_t j = 0; j < n; j++)
			if (km_unlock(&g[j]) != 0)
				a->errors++;
	}
	return NULL;
}

static void rss_churn(struct km *km, uint64_t first, uint64_t count)
{
	struct rss_arg a[2] = { { km, first, count / 2, 0 },
				{ km, first + count / 2, count - count / 2, 0 } };
	pthread_t t[2];

	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&t[i], NULL, rss_main, &a[i]), 0);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(pthread_join(t[i], NULL), 0);
		cr_assert_eq(a[i].errors, 0);
	}
}

Test(stress, rss_flat_distinct_keys)
{
	uint64_t total = (uint64_t)kt_env_long("KM_RSS_KEYS", 10000000);
	uint64_t warm = total / 20 > 200000 ? 200000 : total / 20;
	uint64_t step = (total - warm) / 10;
	struct km *km;
	long base, peak = 0;

	struct km_options o;

	memset(&o, 0, sizeof o);
	o.pool_size = 4096;
	cr_assert_eq(km_create(&km, &o), 0);
	/* warm up: the pool, the table, malloc's arenas, the RCU worker */
	rss_churn(km, 0, warm);
	kt_sleep_us(20000);
	base = kt_rss_kib();
	cr_assert_gt(base, 0, "cannot read VmRSS");
	for (int s = 0; s < 10; s++) {
		uint64_t first = warm + (uint64_t)s * step;
		uint64_t n = s == 9 ? total - first : step;

		rss_churn(km, first, n);
		long rss = kt_rss_kib();

		if (rss > peak)
			peak = rss;
		check_quiescent(km, "rss churn");
	}
	struct km_stats st = kt_stats(km);

	cr_log_info("rss: %llu distinct keys, VmRSS %ld KiB after warm-up, peak %ld KiB (+%ld)",
		    (unsigned long long)total, base, peak, peak - base);
	cr_assert_eq(st.acquired, total);
	cr_assert_leq(st.pooled, 4096, "pooled %zu beyond pool_size", st.pooled);
	if (KT_SANITIZED)
		cr_log_info("sanitizer build: RSS bound not checked (quarantine keeps freed memory)");
	else
		cr_assert_leq(peak - base, 32 * 1024, "RSS grew by %ld KiB over %llu distinct keys",
			      peak - base, (unsigned long long)total);
	cr_assert_eq(km_destroy(km), 0);
}
