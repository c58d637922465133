/*
 * Stress tests for issue 5: shared and exclusive holds, owners, many keys at
 * once and km_query, under many threads at once.
 *
 * Each case runs for KM_STRESS_MS milliseconds (default 300). Helper threads
 * record what they saw in atomics; the main thread asserts after joining
 * them (Criterion assertions are not thread-safe). Violations are counted,
 * never asserted on the spot, so one run reports every kind of failure.
 *
 * How these tests can fail (each was checked against a deliberately broken
 * copy of the library, see docs/modes.md "Testing"):
 *  - overlap_and_exclusion: any hold granted beside an incompatible one
 *    (a writer beside a reader or another writer), a lost update of the
 *    plain counter only writers touch, or readers that never overlapped;
 *  - writer_not_starved_by_readers: a shared request granted ahead of a
 *    waiting exclusive one lets overlapping readers keep the key for ever;
 *    the writer's bounded wait then times out;
 *  - readers_not_starved_by_writers: the reverse;
 *  - owners_*: a nested re-acquire refused, an owner's key taken by another
 *    owner, a wrong EDEADLK / EPERM;
 *  - philosophers: km_acquire_all taking keys in caller order deadlocks
 *    within milliseconds; the watchdog fails the test after 5 s without a
 *    meal;
 *  - query_under_churn: impossible figures, a key visited twice in one walk.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "km_test.h"

#define BOUND_MS 1000		/* starvation bound asserted (the library aims at ~1 ms) */
#define WATCHDOG_MS 5000	/* no progress for this long = deadlock */

static long stress_ms(void)
{
	return kt_env_long("KM_STRESS_MS", 300);
}

static struct km *mk(unsigned flags)
{
	struct km_options o = { .flags = flags };
	struct km *km = NULL;

	cr_assert_eq(km_create(&km, &o), 0);
	return km;
}

static void amax(atomic_long *m, long v)
{
	long cur = atomic_load_explicit(m, memory_order_relaxed);

	while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
		;
}

/* Per-key bookkeeping shared by the cases: who is inside right now. */
struct slot {
	atomic_int readers;
	atomic_int writers;
	atomic_uintptr_t owner;		/* owner cases: who holds it exclusively */
	long data;			/* plain: touched only by exclusive holders */
	long writes;			/* exclusive holds counted (by the holder) */
	char pad[64];
};

static void names_init(char (*names)[8], int n, const char *prefix)
{
	for (int i = 0; i < n; i++)
		snprintf(names[i], 8, "%s%d", prefix, i);
}

/* ------------------------------------------------------------------ */
/* 1. Overlap and exclusion, both modes                                 */
/* ------------------------------------------------------------------ */

#define OX_THREADS 8
#define OX_KEYS 3

struct ox {
	struct km *km;
	atomic_int stop;
	struct slot slot[OX_KEYS];
	char names[OX_KEYS][8];
	atomic_long violations, bad_rc, max_readers, shared_ops, excl_ops, busy;
	atomic_long first_violation;	/* a code for the report */
};

struct ox_arg {
	struct ox *x;
	uint64_t seed;
};

static int ox_acquire(struct ox *x, int k, bool shared, uint64_t r, struct km_guard *g)
{
	struct km_lock_options o = { .flags = shared ? KM_SHARED : 0 };
	struct timespec dl;

	switch (r % 4) {
	case 0:
		break;				/* wait for ever */
	case 1:
		o.flags |= KM_TRY;
		break;
	case 2:
		dl = kt_deadline_ms(2);
		o.deadline = &dl;
		break;
	default:
		return shared ? km_lock_shared(x->km, x->names[k], strlen(x->names[k]), g)
			      : km_lock(x->km, x->names[k], strlen(x->names[k]), g);
	}
	return km_acquire(x->km, x->names[k], strlen(x->names[k]), &o, g);
}

static void ox_violation(struct ox *x, long code)
{
	long zero = 0;

	atomic_fetch_add(&x->violations, 1);
	atomic_compare_exchange_strong(&x->first_violation, &zero, code);
}

static void *ox_thread(void *p)
{
	struct ox_arg *a = p;
	struct ox *x = a->x;
	uint64_t s = a->seed;

	while (!atomic_load_explicit(&x->stop, memory_order_relaxed)) {
		uint64_t r = kt_rand(&s);
		int k = (int)(r % OX_KEYS);
		bool shared = (r >> 8) % 10 < 7;
		struct km_guard g;
		int rc = ox_acquire(x, k, shared, r >> 16, &g);
		struct slot *sl = &x->slot[k];

		if (rc == EBUSY || rc == ETIMEDOUT) {
			atomic_fetch_add_explicit(&x->busy, 1, memory_order_relaxed);
			continue;
		}
		if (rc != 0) {
			atomic_fetch_add(&x->bad_rc, 1);
			continue;
		}
		if (shared) {
			int n = atomic_fetch_add(&sl->readers, 1) + 1;

			if (atomic_load(&sl->writers) != 0)
				ox_violation(x, 1);	/* reader beside a writer */
			amax(&x->max_readers, n);
			long d1 = sl->data;		/* plain reads: a writer here is a race */
			sched_yield();			/* let other readers in beside us */
			if (sl->data != d1)
				ox_violation(x, 2);	/* data changed under a shared hold */
			if (atomic_load(&sl->writers) != 0)
				ox_violation(x, 1);
			atomic_fetch_sub(&sl->readers, 1);
			atomic_fetch_add_explicit(&x->shared_ops, 1, memory_order_relaxed);
		} else {
			if (atomic_fetch_add(&sl->writers, 1) != 0)
				ox_violation(x, 3);	/* two writers */
			if (atomic_load(&sl->readers) != 0)
				ox_violation(x, 4);	/* writer beside a reader */
			long d = sl->data;

			if ((r >> 40) % 4 == 0)
				sched_yield();
			sl->data = d + 1;
			sl->writes++;
			if (atomic_load(&sl->readers) != 0)
				ox_violation(x, 4);
			atomic_fetch_sub(&sl->writers, 1);
			atomic_fetch_add_explicit(&x->excl_ops, 1, memory_order_relaxed);
		}
		if (km_unlock(&g) != 0)
			atomic_fetch_add(&x->bad_rc, 1);
	}
	return NULL;
}

static void overlap_and_exclusion(unsigned flags)
{
	static struct ox x;
	struct ox_arg args[OX_THREADS];
	pthread_t th[OX_THREADS];

	memset(&x, 0, sizeof x);
	x.km = mk(flags);
	names_init(x.names, OX_KEYS, "ox");
	for (int i = 0; i < OX_THREADS; i++) {
		args[i] = (struct ox_arg){ &x, 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) };
		cr_assert_eq(pthread_create(&th[i], NULL, ox_thread, &args[i]), 0);
	}
	kt_sleep_us(stress_ms() * 1000);
	atomic_store(&x.stop, 1);
	for (int i = 0; i < OX_THREADS; i++)
		pthread_join(th[i], NULL);

	cr_log_info("flags %#x: %ld shared, %ld exclusive, %ld busy/timed out, max %ld readers at once",
		    flags, atomic_load(&x.shared_ops), atomic_load(&x.excl_ops),
		    atomic_load(&x.busy), atomic_load(&x.max_readers));
	cr_assert_eq(atomic_load(&x.violations), 0,
		     "%ld exclusion violations (first: code %ld; 1 reader beside writer, "
		     "2 data changed under a shared hold, 3 two writers, 4 writer beside reader)",
		     atomic_load(&x.violations), atomic_load(&x.first_violation));
	cr_assert_eq(atomic_load(&x.bad_rc), 0, "unexpected return codes");
	for (int k = 0; k < OX_KEYS; k++)
		cr_assert_eq(x.slot[k].data, x.slot[k].writes, "key %d: lost updates (%ld of %ld)",
			     k, x.slot[k].data, x.slot[k].writes);
	cr_assert_gt(atomic_load(&x.shared_ops), 0);
	cr_assert_gt(atomic_load(&x.excl_ops), 0);
	cr_assert_geq(atomic_load(&x.max_readers), 2, "readers never overlapped");
	struct km_stats st = kt_stats(x.km);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(st.holders, 0);
	cr_assert_eq(km_destroy(x.km), 0);
}

Test(modes_stress, overlap_and_exclusion, .timeout = 120)
{
	overlap_and_exclusion(0);
}

Test(modes_stress, overlap_and_exclusion_fifo, .timeout = 120)
{
	overlap_and_exclusion(KM_FIFO);
}

/* ------------------------------------------------------------------ */
/* 2. Starvation bounds                                                 */
/* ------------------------------------------------------------------ */

/*
 * A stream of holders of one mode keeps the key busy all the time (several
 * threads, each re-acquiring as soon as it released, holds overlapping when
 * shared). A prober of the other mode asks every few milliseconds; it must
 * get in within BOUND_MS each time.
 */
#define ST_STREAM 4

struct starve {
	struct km *km;
	bool stream_shared;
	long hold_us;			/* stream hold time; 0: a few hundred ns, no sleep */
	atomic_int stop;
	atomic_int stream_stop;
	atomic_long stream_ops, stream_bad, in_stream, max_in_stream;
	/* prober results */
	long probes, contended, timeouts, bad;
	uint64_t max_wait_ns;
};

static void *starve_stream(void *p)
{
	struct starve *s = p;

	while (!atomic_load(&s->stream_stop)) {
		struct km_guard g;
		int rc = s->stream_shared ? km_lock_shared(s->km, "hot", 3, &g)
					  : km_lock(s->km, "hot", 3, &g);

		if (rc != 0) {
			atomic_fetch_add(&s->stream_bad, 1);
			continue;
		}
		amax(&s->max_in_stream, atomic_fetch_add(&s->in_stream, 1) + 1);
		if (s->hold_us > 0) {
			kt_sleep_us(s->hold_us);
		} else {
			for (int i = 0; i < 64; i++)
				kt_cpu_relax();
		}
		atomic_fetch_sub(&s->in_stream, 1);
		if (km_unlock(&g) != 0)
			atomic_fetch_add(&s->stream_bad, 1);
		atomic_fetch_add_explicit(&s->stream_ops, 1, memory_order_relaxed);
	}
	return NULL;
}

static void *starve_prober(void *p)
{
	struct starve *s = p;
	bool shared = !s->stream_shared;

	while (!atomic_load(&s->stop)) {
		struct km_guard g;
		struct km_lock_options o = { .flags = (shared ? KM_SHARED : 0) | KM_TRY };
		int rc;

		kt_sleep_us(3000);
		s->probes++;
		rc = km_acquire(s->km, "hot", 3, &o, &g);
		if (rc == 0) {
			(void)km_unlock(&g);	/* the stream paused by chance */
			continue;
		}
		if (rc != EBUSY) {
			s->bad++;
			continue;
		}
		s->contended++;
		struct timespec dl = kt_deadline_ms(BOUND_MS);
		uint64_t t0 = kt_now_ns();

		o.flags &= ~KM_TRY;
		o.deadline = &dl;
		rc = km_acquire(s->km, "hot", 3, &o, &g);
		uint64_t w = kt_now_ns() - t0;
		if (w > s->max_wait_ns)
			s->max_wait_ns = w;
		if (rc == ETIMEDOUT) {
			s->timeouts++;
			continue;
		}
		if (rc != 0) {
			s->bad++;
			continue;
		}
		kt_sleep_us(50);
		(void)km_unlock(&g);
	}
	return NULL;
}

static void starvation(bool stream_shared, long hold_us)
{
	static struct starve s;
	pthread_t th[ST_STREAM], pr;

	memset(&s, 0, sizeof s);
	s.km = mk(0);
	s.stream_shared = stream_shared;
	s.hold_us = hold_us;
	for (int i = 0; i < ST_STREAM; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, starve_stream, &s), 0);
	kt_sleep_us(5000);	/* let the stream get going */
	cr_assert_eq(pthread_create(&pr, NULL, starve_prober, &s), 0);
	kt_sleep_us(stress_ms() * 1000);
	atomic_store(&s.stop, 1);
	pthread_join(pr, NULL);
	atomic_store(&s.stream_stop, 1);
	for (int i = 0; i < ST_STREAM; i++)
		pthread_join(th[i], NULL);

	cr_log_info("%s stream (hold %ld us): %ld ops (max %ld in at once); %s prober: %ld probes, "
		    "%ld contended, max wait %.3f ms, %ld timeouts (bound %d ms)",
		    stream_shared ? "shared" : "exclusive", hold_us, atomic_load(&s.stream_ops),
		    atomic_load(&s.max_in_stream), stream_shared ? "exclusive" : "shared",
		    s.probes, s.contended, (double)s.max_wait_ns / 1e6, s.timeouts, BOUND_MS);
	cr_assert_eq(atomic_load(&s.stream_bad), 0);
	cr_assert_eq(s.bad, 0);
	cr_assert_gt(s.contended, 0, "the prober never found the key busy: the test proved nothing");
	cr_assert_eq(s.timeouts, 0,
		     "the %s request waited more than %d ms behind a stream of %s holders "
		     "(%ld of %ld contended probes timed out)",
		     stream_shared ? "exclusive" : "shared", BOUND_MS,
		     stream_shared ? "shared" : "exclusive", s.timeouts, s.contended);
	if (stream_shared)
		cr_assert_geq(atomic_load(&s.max_in_stream), 2, "the readers never overlapped");
	else
		cr_assert_eq(atomic_load(&s.max_in_stream), 1, "two writers at once");
	cr_assert_eq(km_destroy(s.km), 0);
}

Test(modes_stress, writer_not_starved_by_readers, .timeout = 120)
{
	starvation(true, 100);
}

Test(modes_stress, readers_not_starved_by_writers, .timeout = 120)
{
	starvation(false, 100);
}

/* Hot keys: holds of a few hundred nanoseconds, shorter than a newcomer's
 * spin, so the stream's newcomers barge instead of queueing. */
Test(modes_stress, writer_not_starved_by_hot_readers, .timeout = 120)
{
	starvation(true, 0);
}

Test(modes_stress, readers_not_starved_by_hot_writers, .timeout = 120)
{
	starvation(false, 0);
}

/* ------------------------------------------------------------------ */
/* 3. Owners under stress                                               */
/* ------------------------------------------------------------------ */

#define OW_THREADS 6
#define OW_KEYS 3

/* (a) Thread owners: on a KM_RECURSIVE table nested re-acquires always
 * succeed and no other thread gets in meanwhile; on a KM_ERRORCHECK table a
 * re-acquire is EDEADLK and an unlock naming another owner is EPERM. */
struct ow {
	struct km *rec, *ec;
	atomic_int stop;
	struct slot slot[2][OW_KEYS];
	char names[OW_KEYS][8];
	atomic_long violations, nested, rounds;
	atomic_long first_violation;
};

static void ow_violation(struct ow *o, long code)
{
	long zero = 0;

	atomic_fetch_add(&o->violations, 1);
	atomic_compare_exchange_strong(&o->first_violation, &zero, code);
}

static void *ow_thread(void *p)
{
	struct ow *o = p;
	uint64_t s = (uint64_t)(uintptr_t)p ^ kt_now_ns();
	char me;			/* its address names this thread in the slots */

	while (!atomic_load_explicit(&o->stop, memory_order_relaxed)) {
		uint64_t r = kt_rand(&s);
		int k = (int)(r % OW_KEYS);
		bool rec = (r >> 8) & 1;
		struct km *km = rec ? o->rec : o->ec;
		struct slot *sl = &o->slot[rec ? 0 : 1][k];
		const char *key = o->names[k];
		struct timespec dl = kt_deadline_ms(5);
		struct km_guard outer, nest[3];
		int rc = km_timedlock(km, key, strlen(key), &dl, &outer);

		if (rc == ETIMEDOUT)
			continue;
		if (rc != 0) {
			ow_violation(o, 1);
			continue;
		}
		uintptr_t none = 0;
		if (!atomic_compare_exchange_strong(&sl->owner, &none, (uintptr_t)&me))
			ow_violation(o, 2);		/* someone else is inside */
		if (rec) {
			int depth = 1 + (int)((r >> 16) % 3);

			memset(nest, 0, sizeof nest);
			for (int d = 0; d < depth; d++) {
				/* A nested re-acquire never waits; the deadline only
				 * keeps a broken library from hanging the test. */
				struct timespec ndl = kt_deadline_ms(BOUND_MS);

				rc = (d & 1) ? km_trylock(km, key, strlen(key), &nest[d])
					     : km_timedlock(km, key, strlen(key), &ndl, &nest[d]);
				if (rc != 0)
					ow_violation(o, 3);	/* nested re-acquire refused */
				else
					atomic_fetch_add_explicit(&o->nested, 1, memory_order_relaxed);
				if (atomic_load(&sl->owner) != (uintptr_t)&me)
					ow_violation(o, 2);
				if ((r >> (20 + d)) & 1)
					sched_yield();
			}
			for (int d = depth - 1; d >= 0; d--) {
				if (kt_guard_zero(&nest[d]))
					continue;
				if (km_unlock(&nest[d]) != 0)
					ow_violation(o, 4);
				if (atomic_load(&sl->owner) != (uintptr_t)&me)
					ow_violation(o, 2);	/* got in before our last unlock */
			}
		} else {
			int bogus;
			struct km_guard g;

			if (km_trylock(km, key, strlen(key), &g) != EDEADLK)
				ow_violation(o, 5);
			struct timespec ndl = kt_deadline_ms(BOUND_MS);
			struct km_lock_options so = { .flags = KM_SHARED, .deadline = &ndl };

			if (km_acquire(km, key, strlen(key), &so, &g) != EDEADLK)
				ow_violation(o, 5);
			if (km_unlock_owner(&outer, &bogus) != EPERM)
				ow_violation(o, 6);
			if ((r >> 20) & 1)
				sched_yield();
		}
		if (atomic_load(&sl->owner) != (uintptr_t)&me)
			ow_violation(o, 2);
		atomic_store(&sl->owner, 0);
		if (km_unlock(&outer) != 0)
			ow_violation(o, 4);
		atomic_fetch_add_explicit(&o->rounds, 1, memory_order_relaxed);
	}
	return NULL;
}

Test(modes_stress, owners_threads, .timeout = 120)
{
	static struct ow o;
	pthread_t th[OW_THREADS];

	memset(&o, 0, sizeof o);
	o.rec = mk(KM_RECURSIVE);
	o.ec = mk(KM_ERRORCHECK);
	names_init(o.names, OW_KEYS, "ow");
	for (int i = 0; i < OW_THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, ow_thread, &o), 0);
	kt_sleep_us(stress_ms() * 1000);
	atomic_store(&o.stop, 1);
	for (int i = 0; i < OW_THREADS; i++)
		pthread_join(th[i], NULL);
	cr_log_info("%ld rounds, %ld nested holds", atomic_load(&o.rounds), atomic_load(&o.nested));
	cr_assert_eq(atomic_load(&o.violations), 0,
		     "%ld owner violations (first: code %ld; 1 bad acquire rc, 2 another owner "
		     "inside, 3 nested re-acquire refused, 4 unlock failed, 5 no EDEADLK, "
		     "6 wrong owner's unlock accepted)",
		     atomic_load(&o.violations), atomic_load(&o.first_violation));
	cr_assert_gt(atomic_load(&o.nested), 0);
	cr_assert_eq(kt_stats(o.rec).keys, 0);
	cr_assert_eq(kt_stats(o.ec).keys, 0);
	cr_assert_eq(km_destroy(o.rec), 0);
	cr_assert_eq(km_destroy(o.ec), 0);
}

/* (b) Execution contexts as owners, moving between threads: a task takes
 * its key on one worker, re-acquires it (nested, RECURSIVE; EDEADLK,
 * ERRORCHECK) on whichever worker picks it up next, and releases it on yet
 * another. Thread owners contend for the same keys meanwhile. */
#define CX_WORKERS 4
#define CX_TASKS 10
#define CX_KEYS 3

struct cx_task {
	int key;
	int stage;
	pthread_t last;			/* worker that ran the previous stage */
	struct km_guard outer, nested;
	long rounds;
};

struct cx {
	struct km *km;
	bool rec;
	atomic_int stop;
	pthread_mutex_t qlock;
	struct cx_task *q[CX_TASKS];
	int qhead, qlen;
	struct cx_task tasks[CX_TASKS];
	struct slot slot[CX_KEYS];
	char names[CX_KEYS][8];
	atomic_long violations, moves, rounds, thread_rounds;
	atomic_long first_violation;
};

static void cx_violation(struct cx *c, long code)
{
	long zero = 0;

	atomic_fetch_add(&c->violations, 1);
	atomic_compare_exchange_strong(&c->first_violation, &zero, code);
}

static struct cx_task *cx_pop(struct cx *c)
{
	struct cx_task *t = NULL;

	pthread_mutex_lock(&c->qlock);
	if (c->qlen > 0) {
		t = c->q[c->qhead];
		c->qhead = (c->qhead + 1) % CX_TASKS;
		c->qlen--;
	}
	pthread_mutex_unlock(&c->qlock);
	return t;
}

static void cx_push(struct cx *c, struct cx_task *t)
{
	pthread_mutex_lock(&c->qlock);
	c->q[(c->qhead + c->qlen) % CX_TASKS] = t;
	c->qlen++;
	pthread_mutex_unlock(&c->qlock);
}

static void cx_step(struct cx *c, struct cx_task *t)
{
	const char *key = c->names[t->key];
	size_t len = strlen(key);
	struct slot *sl = &c->slot[t->key];
	struct km_lock_options o = { .owner = t };
	struct timespec dl;
	int rc;

	if (t->stage != 0 && !pthread_equal(t->last, pthread_self()))
		atomic_fetch_add_explicit(&c->moves, 1, memory_order_relaxed);
	t->last = pthread_self();
	switch (t->stage) {
	case 0:				/* take the key */
		dl = kt_deadline_ms(1);
		o.deadline = &dl;
		rc = km_acquire(c->km, key, len, &o, &t->outer);
		if (rc == ETIMEDOUT)
			return;
		if (rc != 0) {
			cx_violation(c, 1);
			return;
		}
		uintptr_t none = 0;
		if (!atomic_compare_exchange_strong(&sl->owner, &none, (uintptr_t)t))
			cx_violation(c, 2);
		t->stage = 1;
		return;
	case 1:				/* re-acquire, probably on another thread */
		o.flags = KM_TRY;
		rc = km_acquire(c->km, key, len, &o, &t->nested);
		if (rc != (c->rec ? 0 : EDEADLK))
			cx_violation(c, 3);
		if (atomic_load(&sl->owner) != (uintptr_t)t)
			cx_violation(c, 2);
		t->stage = 2;
		return;
	case 2:				/* drop the nested hold; still ours */
		if (c->rec && km_unlock_owner(&t->nested, t) != 0)
			cx_violation(c, 4);
		if (km_unlock(&t->outer) != EPERM)
			cx_violation(c, 5);	/* this thread is not the owner */
		if (atomic_load(&sl->owner) != (uintptr_t)t)
			cx_violation(c, 2);
		t->stage = 3;
		return;
	default:			/* release */
		if (atomic_load(&sl->owner) != (uintptr_t)t)
			cx_violation(c, 2);
		atomic_store(&sl->owner, 0);
		if (km_unlock_owner(&t->outer, t) != 0)
			cx_violation(c, 4);
		t->stage = 0;
		t->rounds++;
		atomic_fetch_add_explicit(&c->rounds, 1, memory_order_relaxed);
		return;
	}
}

static void *cx_worker(void *p)
{
	struct cx *c = p;

	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		struct cx_task *t = cx_pop(c);

		if (t == NULL) {
			sched_yield();
			continue;
		}
		cx_step(c, t);
		cx_push(c, t);
		sched_yield();		/* let another worker pick the next stage */
	}
	return NULL;
}

/* A thread owner contending for the tasks' keys. */
static void *cx_thread_owner(void *p)
{
	struct cx *c = p;
	uint64_t s = kt_now_ns() | 1;
	char me;

	while (!atomic_load_explicit(&c->stop, memory_order_relaxed)) {
		int k = (int)(kt_rand(&s) % CX_KEYS);
		struct timespec dl = kt_deadline_ms(1);
		struct km_guard g;
		int rc = km_timedlock(c->km, c->names[k], strlen(c->names[k]), &dl, &g);

		if (rc == ETIMEDOUT)
			continue;
		if (rc != 0) {
			cx_violation(c, 1);
			continue;
		}
		uintptr_t none = 0;
		if (!atomic_compare_exchange_strong(&c->slot[k].owner, &none, (uintptr_t)&me))
			cx_violation(c, 2);
		sched_yield();
		atomic_store(&c->slot[k].owner, 0);
		if (km_unlock(&g) != 0)
			cx_violation(c, 4);
		atomic_fetch_add_explicit(&c->thread_rounds, 1, memory_order_relaxed);
	}
	return NULL;
}

static void contexts(bool rec, long ms)
{
	static struct cx c;
	pthread_t w[CX_WORKERS], to;

	memset(&c, 0, sizeof c);
	c.km = mk(rec ? KM_RECURSIVE : KM_ERRORCHECK);
	c.rec = rec;
	pthread_mutex_init(&c.qlock, NULL);
	names_init(c.names, CX_KEYS, "cx");
	for (int i = 0; i < CX_TASKS; i++) {
		c.tasks[i].key = i % CX_KEYS;
		cx_push(&c, &c.tasks[i]);
	}
	for (int i = 0; i < CX_WORKERS; i++)
		cr_assert_eq(pthread_create(&w[i], NULL, cx_worker, &c), 0);
	cr_assert_eq(pthread_create(&to, NULL, cx_thread_owner, &c), 0);
	kt_sleep_us(ms * 1000);
	atomic_store(&c.stop, 1);
	for (int i = 0; i < CX_WORKERS; i++)
		pthread_join(w[i], NULL);
	pthread_join(to, NULL);
	/* Finish every task's round on the main thread (yet another thread). */
	for (int i = 0; i < CX_TASKS; i++)
		while (c.tasks[i].stage != 0)
			cx_step(&c, &c.tasks[i]);

	cr_log_info("%s: %ld task rounds, %ld stage moves between threads, %ld thread-owner rounds",
		    rec ? "KM_RECURSIVE" : "KM_ERRORCHECK", atomic_load(&c.rounds),
		    atomic_load(&c.moves), atomic_load(&c.thread_rounds));
	cr_assert_eq(atomic_load(&c.violations), 0,
		     "%s: %ld violations (first: code %ld; 1 bad acquire rc, 2 another owner "
		     "inside, 3 re-acquire by the context: wrong result, 4 unlock failed, "
		     "5 unlock by a non-owner thread accepted)",
		     rec ? "KM_RECURSIVE" : "KM_ERRORCHECK", atomic_load(&c.violations),
		     atomic_load(&c.first_violation));
	cr_assert_gt(atomic_load(&c.rounds), 0);
	cr_assert_gt(atomic_load(&c.moves), 0, "contexts never moved between threads");
	cr_assert_eq(kt_stats(c.km).keys, 0);
	cr_assert_eq(km_destroy(c.km), 0);
	pthread_mutex_destroy(&c.qlock);
}

Test(modes_stress, owners_contexts, .timeout = 120)
{
	contexts(true, stress_ms() / 2 + 1);
	contexts(false, stress_ms() / 2 + 1);
}

/* ------------------------------------------------------------------ */
/* 4. Dining philosophers: km_acquire_all on overlapping sets           */
/* ------------------------------------------------------------------ */

#define PH_THREADS 16
#define PH_FORKS 12

struct ph {
	struct km *km;
	atomic_int stop;
	atomic_long meals, done, violations, bad_rc, timeouts;
	atomic_long first_violation;
	struct slot slot[PH_FORKS];
	char names[PH_FORKS][8];
	long eaten[PH_THREADS];
};

struct ph_arg {
	struct ph *p;
	int id;
};

static void ph_violation(struct ph *p, long code)
{
	long zero = 0;

	atomic_fetch_add(&p->violations, 1);
	atomic_compare_exchange_strong(&p->first_violation, &zero, code);
}

static void *ph_thread(void *arg)
{
	struct ph_arg *a = arg;
	struct ph *p = a->p;
	uint64_t s = 0xD1B54A32D192ED03ull * (uint64_t)(a->id + 1);

	while (!atomic_load_explicit(&p->stop, memory_order_relaxed)) {
		uint64_t r = kt_rand(&s);
		int n = 2 + (int)(r % 3), idx[4];
		struct km_key keys[4];
		struct km_guard g[4];
		struct km_lock_options o = { 0 };
		struct timespec dl;
		unsigned mode = (unsigned)((r >> 8) % 20);
		bool shared = mode < 2;

		/* n distinct random forks, in random order (the library sorts). */
		for (int i = 0; i < n; i++) {
			int f;
			bool dup;

			do {
				f = (int)(kt_rand(&s) % PH_FORKS);
				dup = false;
				for (int j = 0; j < i; j++)
					dup = dup || idx[j] == f;
			} while (dup);
			idx[i] = f;
			keys[i] = (struct km_key){ p->names[f], strlen(p->names[f]) };
		}
		if (shared)
			o.flags |= KM_SHARED;
		if (mode == 2) {
			dl = kt_deadline_ms(2);
			o.deadline = &dl;
		} else if (mode == 3) {
			o.flags |= KM_TRY;
		}
		int rc = km_acquire_all(p->km, keys, (size_t)n, &o, g);

		if (rc == ETIMEDOUT || rc == EBUSY) {
			bool zero = true;

			for (int i = 0; i < n; i++)
				zero = zero && kt_guard_zero(&g[i]);
			if (!zero)
				ph_violation(p, 5);	/* a failed set left a guard set */
			atomic_fetch_add(&p->timeouts, 1);
			continue;
		}
		if (rc != 0) {
			atomic_fetch_add(&p->bad_rc, 1);
			continue;
		}
		for (int i = 0; i < n; i++) {
			struct slot *sl = &p->slot[idx[i]];

			if (shared) {
				atomic_fetch_add(&sl->readers, 1);
				if (atomic_load(&sl->writers) != 0)
					ph_violation(p, 1);
			} else {
				if (atomic_fetch_add(&sl->writers, 1) != 0)
					ph_violation(p, 2);
				if (atomic_load(&sl->readers) != 0)
					ph_violation(p, 3);
				sl->data++;
			}
		}
		if ((r >> 32) % 4 == 0)
			sched_yield();
		for (int i = 0; i < n; i++) {
			struct slot *sl = &p->slot[idx[i]];

			if (shared)
				atomic_fetch_sub(&sl->readers, 1);
			else
				atomic_fetch_sub(&sl->writers, 1);
		}
		if (km_unlock_all(g, (size_t)n) != 0)
			atomic_fetch_add(&p->bad_rc, 1);
		p->eaten[a->id]++;
		atomic_fetch_add_explicit(&p->meals, 1, memory_order_relaxed);
	}
	atomic_fetch_add(&p->done, 1);
	return NULL;
}

static int ph_dump_visit(const void *key, size_t len, unsigned h, unsigned w, int sh, void *arg)
{
	(void)arg;
	fprintf(stderr, "  %.*s: holders %u waiters %u%s\n", (int)len, (const char *)key, h, w,
		sh ? " shared" : "");
	return 0;
}

Test(modes_stress, philosophers, .timeout = 120)
{
	static struct ph p;
	struct ph_arg args[PH_THREADS];
	pthread_t th[PH_THREADS];
	uint64_t start, last_change;
	long last = -1;
	bool deadlock = false;

	memset(&p, 0, sizeof p);
	p.km = mk(0);
	names_init(p.names, PH_FORKS, "fork");
	for (int i = 0; i < PH_THREADS; i++) {
		args[i] = (struct ph_arg){ &p, i };
		cr_assert_eq(pthread_create(&th[i], NULL, ph_thread, &args[i]), 0);
	}
	/* The watchdog: progress is a meal, or a philosopher leaving the table
	 * once told to stop. */
	start = last_change = kt_now_ns();
	for (;;) {
		long now_meals = atomic_load(&p.meals) + atomic_load(&p.done);
		uint64_t now = kt_now_ns();

		if (now_meals != last) {
			last = now_meals;
			last_change = now;
		}
		if (now - start >= (uint64_t)stress_ms() * 1000000u)
			atomic_store(&p.stop, 1);
		if (atomic_load(&p.done) == PH_THREADS)
			break;
		if (now - last_change > (uint64_t)WATCHDOG_MS * 1000000u) {
			deadlock = true;
			break;
		}
		kt_sleep_us(2000);
	}
	if (deadlock) {
		fprintf(stderr, "philosophers: no progress for %d ms (%ld meals, %ld of %d "
			"threads left); held and awaited keys:\n", WATCHDOG_MS,
			atomic_load(&p.meals), atomic_load(&p.done), PH_THREADS);
		km_query(p.km, ph_dump_visit, NULL);
		cr_assert_fail("deadlock: no progress for %d ms", WATCHDOG_MS);
	}
	for (int i = 0; i < PH_THREADS; i++)
		pthread_join(th[i], NULL);

	long hungry = 0;
	for (int i = 0; i < PH_THREADS; i++)
		hungry += p.eaten[i] == 0;
	cr_log_info("%ld meals, %ld timed out / busy, %ld philosophers never ate",
		    atomic_load(&p.meals), atomic_load(&p.timeouts), hungry);
	cr_assert_eq(atomic_load(&p.violations), 0,
		     "%ld violations (first: code %ld; 1 reader beside writer, 2 two writers, "
		     "3 writer beside reader, 5 guards left set on failure)",
		     atomic_load(&p.violations), atomic_load(&p.first_violation));
	cr_assert_eq(atomic_load(&p.bad_rc), 0);
	cr_assert_geq(atomic_load(&p.meals), PH_THREADS);
	struct km_stats st = kt_stats(p.km);
	cr_assert_eq(st.keys, 0);
	cr_assert_eq(km_destroy(p.km), 0);
}

/* ------------------------------------------------------------------ */
/* 5. km_query under churn                                              */
/* ------------------------------------------------------------------ */

#define QC_THREADS 6
#define QC_KEYS 8

struct qc {
	struct km *km;
	atomic_int stop;
	char names[QC_KEYS][8];
	atomic_long ops;
};

static void *qc_thread(void *p)
{
	struct qc *q = p;
	uint64_t s = kt_now_ns() ^ (uint64_t)(uintptr_t)&s;

	while (!atomic_load_explicit(&q->stop, memory_order_relaxed)) {
		uint64_t r = kt_rand(&s);
		int k = (int)(r % QC_KEYS);
		struct km_guard g;
		struct timespec dl = kt_deadline_ms(1);
		int rc;

		switch ((r >> 8) % 4) {
		case 0:
			rc = km_lock_shared(q->km, q->names[k], strlen(q->names[k]), &g);
			break;
		case 1:
			rc = km_timedlock(q->km, q->names[k], strlen(q->names[k]), &dl, &g);
			break;
		case 2:
			rc = km_trylock_shared(q->km, q->names[k], strlen(q->names[k]), &g);
			break;
		default:
			rc = km_lock(q->km, q->names[k], strlen(q->names[k]), &g);
			break;
		}
		if (rc != 0)
			continue;
		if ((r >> 16) % 4 == 0)
			sched_yield();
		(void)km_unlock(&g);
		atomic_fetch_add_explicit(&q->ops, 1, memory_order_relaxed);
	}
	return NULL;
}

struct qc_walk {
	struct qc *q;
	int seen[QC_KEYS];
	int visits;
	int stop_at;
	long bad_figures, bad_key, twice, reentrant_bad;
	uint64_t r;
};

static int qc_visit(const void *key, size_t len, unsigned holders, unsigned waiters,
		    int shared, void *arg)
{
	struct qc_walk *w = arg;
	int k = -1;

	w->visits++;
	for (int i = 0; i < QC_KEYS; i++)
		if (len == strlen(w->q->names[i]) && memcmp(key, w->q->names[i], len) == 0)
			k = i;
	if (k < 0) {
		w->bad_key++;
	} else if (w->seen[k]++) {
		w->twice++;		/* "once for each key" */
	}
	if (holders > QC_THREADS || waiters > QC_THREADS || holders + waiters == 0 ||
	    (shared && holders == 0) || (!shared && holders > 1))
		w->bad_figures++;
	/* Reentrancy under churn: the visitor may call the library. */
	if ((kt_rand(&w->r) & 15) == 0) {
		struct km_guard g;
		int rc = km_trylock(w->q->km, "other", 5, &g);

		if (rc != 0 || km_unlock(&g) != 0)
			w->reentrant_bad++;
	}
	if (w->stop_at != 0 && w->visits == w->stop_at)
		return 42;
	return 0;
}

Test(modes_stress, query_under_churn, .timeout = 120)
{
	static struct qc q;
	pthread_t th[QC_THREADS];
	long walks = 0, visits = 0, bad_figures = 0, bad_key = 0, twice = 0, bad_ret = 0;
	long reentrant_bad = 0, bad_stats = 0;
	size_t max_holders = 0;
	uint64_t end;

	memset(&q, 0, sizeof q);
	q.km = mk(0);
	names_init(q.names, QC_KEYS, "qc");
	for (int i = 0; i < QC_THREADS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, qc_thread, &q), 0);
	end = kt_now_ns() + (uint64_t)stress_ms() * 1000000u;
	while (kt_now_ns() < end) {
		struct qc_walk w;

		memset(&w, 0, sizeof w);
		w.q = &q;
		w.r = (uint64_t)walks * 2654435761u + 1;
		w.stop_at = (walks % 5 == 4) ? 1 : 0;
		int rc = km_query(q.km, qc_visit, &w);

		if (rc != (w.stop_at != 0 && w.visits >= 1 ? 42 : 0))
			bad_ret++;
		if (w.stop_at != 0 && w.visits > 1)
			bad_ret++;		/* walked on after a non-zero return */
		walks++;
		visits += w.visits;
		bad_figures += w.bad_figures;
		bad_key += w.bad_key;
		twice += w.twice;
		reentrant_bad += w.reentrant_bad;

		/* km_stats sums the keys' words along a walk that is not one
		 * instant: a thread may be counted on one key, move on and be
		 * counted again on a later one. Each key is still counted once,
		 * with at most QC_THREADS holders or waiters. */
		struct km_stats st = kt_stats(q.km);
		if (st.keys > QC_KEYS || st.holders > (size_t)QC_THREADS * QC_KEYS ||
		    st.waiters > (size_t)QC_THREADS * QC_KEYS) {
			if (bad_stats++ == 0)
				cr_log_error("stats: keys %zu holders %zu waiters %zu", st.keys,
					     st.holders, st.waiters);
		}
		if (st.holders > max_holders)
			max_holders = st.holders;
	}
	atomic_store(&q.stop, 1);
	for (int i = 0; i < QC_THREADS; i++)
		pthread_join(th[i], NULL);

	cr_log_info("%ld walks, %ld visits, %ld churn ops, km_stats holders up to %zu",
		    walks, visits, atomic_load(&q.ops), max_holders);
	cr_assert_eq(bad_figures, 0, "%ld impossible figures", bad_figures);
	cr_assert_eq(bad_key, 0, "%ld visits of keys nobody used", bad_key);
	cr_assert_eq(twice, 0, "%ld keys visited twice in one walk", twice);
	cr_assert_eq(bad_ret, 0, "%ld walks returned the wrong value", bad_ret);
	cr_assert_eq(reentrant_bad, 0);
	cr_assert_eq(bad_stats, 0);
	cr_assert_gt(walks, 0);
	cr_assert_gt(visits, 0, "no walk ever saw a key under churn");
	int n = 0;
	struct qc_walk w;
	memset(&w, 0, sizeof w);
	w.q = &q;
	cr_assert_eq(km_query(q.km, qc_visit, &w), 0);
	n = w.visits;
	cr_assert_eq(n, 0, "%d keys visited after the churn stopped", n);
	cr_assert_eq(km_destroy(q.km), 0);
}
