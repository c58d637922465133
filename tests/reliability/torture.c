/*
 * Torture test: many threads, every kind of acquire, a few hot keys and a
 * huge key space, checked for exclusion, holder bounds, lost wake-ups and
 * entries left behind.
 *
 *   torture [--per-core N | --threads N] [--seconds S] [--seed X]
 *
 * Environment: KM_TORTURE_SECONDS (run length, default 3),
 * KM_TORTURE_WATCHDOG (seconds without progress that count as a lost
 * wake-up, default 10), KM_TORTURE_SEED (PRNG seed, default: the clock).
 *
 * Three tables run at once:
 *   T0  default options (barging, pooling, shards from the CPU count)
 *   T1  KM_FIFO, one shard of 16 buckets (long chains: concurrent unlinks
 *       help each other), pool of 64
 *   T2  keyed semaphore max_holders = 3, max_waiters = 8 (EAGAIN), a pool
 *       of 8 prefilled entries
 * Each worker loops: pick a table, a key (half the time one of 4 hot keys,
 * otherwise one of 2^18 keys of 5..100 bytes) and an operation: km_lock,
 * km_trylock, km_timedlock (deadlines from 0.5 ms in the past to 3 ms
 * ahead), shared (lock / try / timed), km_acquire_async without a port
 * (completion waited for by the requester, or the callback itself runs the
 * critical section and unlocks), km_acquire_async with a port (run by the
 * worker), sync and async acquires with a token that a chaos thread or the
 * worker cancels at random, km_request_cancel at random, km_acquire_all of
 * 1..24 keys (above 16 the library allocates). About one hold in 3000 is a
 * long one (1..20 ms). Every ~400 ms the main thread stutters: it pauses
 * every thread (each one holding and awaiting nothing), checks that the
 * tables are empty, and resumes them.
 *
 * Checks, each one counted as passed or failed in the summary line:
 *   exclusion   an occupancy word per (table, key): an exclusive holder
 *               adds 0x10000 and must find 0; a shared holder adds 1 and
 *               must find no writer; in T2 a holder adds 1 and must find
 *               fewer than 3
 *   payload     a plain (non-atomic) counter per hot key, incremented by
 *               exclusive holders with a read-pause-write: equals the count
 *               of exclusive holds at the end (exclusion and memory
 *               ordering)
 *   codes       every return code is one the contract allows for the call
 *               (guards zeroed on failure, EPERM on double unlock, ready()
 *               exactly once, on the port owner's thread for port requests)
 *   watchdog    no thread stays inside one operation, and the whole run
 *               never stands still, for KM_TORTURE_WATCHDOG seconds
 *   quiescent   at every stutter and at the end km_stats shows keys,
 *               holders, waiters == 0 and km_query visits nothing
 *   counters    at the end: timeouts, cancels, rejected equal the outcomes
 *               the workers saw; acquired >= the holds they saw
 *   teardown    km_token_destroy, km_port_destroy, km_destroy return 0
 *
 * The last line is "N passed, N failed"; the exit status is 0 only if
 * nothing failed. A failing watchdog prints the stuck threads and the keys
 * still held or awaited, then exits at once.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "km_test.h"

#include <poll.h>
#include <stdarg.h>

#define NHOT 4
#define NSPACE (1u << 18)
#define NKEYS (NHOT + NSPACE)
#define NTABLES 3
#define MAXALL 24
#define KEYMAX 104
#define OCC_W 0x10000u

/* ------------------------------------------------------------------ */
/* Checks                                                             */
/* ------------------------------------------------------------------ */

enum check { C_EXCL, C_PAYLOAD, C_CODES, C_WATCHDOG, C_QUIESCENT, C_COUNTERS, C_TEARDOWN, C_N };
static const char *check_name[C_N] = {
	"exclusion", "payload", "codes", "watchdog", "quiescent", "counters", "teardown",
};
static atomic_long check_fail[C_N];
static atomic_long check_reports;

static void fail(enum check c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void fail(enum check c, const char *fmt, ...)
{
	va_list ap;

	atomic_fetch_add(&check_fail[c], 1);
	if (atomic_fetch_add(&check_reports, 1) >= 40)
		return;		/* enough detail */
	flockfile(stdout);
	printf("FAIL [%s] ", check_name[c]);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	funlockfile(stdout);
}

/* ------------------------------------------------------------------ */
/* Tables and keys                                                    */
/* ------------------------------------------------------------------ */

struct table {
	struct km *km;
	const char *name;
	unsigned max_holders;
	bool shared_ok;		/* max_holders == 1 */
	bool eagain_ok;		/* max_waiters set */
	_Atomic uint32_t *occ;	/* NKEYS occupancy words */
	long payload[NHOT];	/* plain counters, exclusive holds of hot keys */
	/* What the workers saw, for the counters check. */
	atomic_ulong seen_acquired, seen_timeouts, seen_cancels, seen_rejected;
	atomic_ulong seen_excl_hot[NHOT];
};
static struct table tables[NTABLES];

/* The bytes of key id; distinct ids give distinct byte strings (each form
 * starts with its own tag byte, the empty key has none). */
static size_t key_bytes(unsigned id, unsigned char *buf)
{
	uint32_t v = id;

	switch (id) {
	case 0:
		return 0;			/* the empty key */
	case 1:
		memcpy(buf, "hot-1", 5);
		return 5;
	case 2:				/* 100 bytes: not pooled */
		buf[0] = 'L';
		memset(buf + 1, 'l', 99);
		return 100;
	case 3:
		buf[0] = 'H';
		memcpy(buf + 1, "\0\1\2\3\4\5\6", 7);
		return 8;
	default:
		break;
	}
	switch (id & 3) {
	case 0:				/* 5 bytes, binary */
		buf[0] = 'a';
		memcpy(buf + 1, &v, 4);
		return 5;
	case 1:				/* decimal */
		return (size_t)sprintf((char *)buf, "b%u", id);
	case 2:				/* 64 or 65 bytes: the largest pooled class, or not pooled */
		buf[0] = 'c';
		memset(buf + 1, 'x', 59);
		memcpy(buf + 60, &v, 4);
		buf[64] = 'z';
		return (id & 4) ? 65 : 64;
	default:			/* 6..45 bytes, every pooled class */
		buf[0] = 'd';
		memset(buf + 1, 'y', 40);
		{
			size_t fill = (id >> 2) % 41;

			memcpy(buf + 1 + fill, &v, 4);
			return 5 + fill;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Workers                                                            */
/* ------------------------------------------------------------------ */

enum op {
	OP_LOCK, OP_TRY, OP_TIMED, OP_SHARED, OP_SHARED_TRY, OP_SHARED_TIMED,
	OP_ASYNC, OP_ASYNC_CB, OP_ASYNC_PORT, OP_TOKEN_SYNC, OP_TOKEN_ASYNC, OP_ALL,
	OP_N
};
static const char *op_name[OP_N] = {
	"lock", "trylock", "timedlock", "lock_shared", "trylock_shared", "timed_shared",
	"async", "async_cb", "async_port", "token_sync", "token_async", "acquire_all",
};
static const unsigned op_weight[OP_N] = { 14, 10, 12, 6, 4, 4, 8, 6, 8, 8, 6, 8 };

struct worker {
	pthread_t thread;
	unsigned idx;
	uint64_t rng;
	struct km_port *port;
	/* the token a chaos thread may cancel, under tok_lock */
	pthread_mutex_t tok_lock;
	struct km_token *tok;
	/* watchdog */
	_Atomic uint64_t op_start;	/* 0: between operations */
	atomic_int op_kind, op_table;
	atomic_uint op_key;
	/* results */
	unsigned long acquired;
	unsigned long ops[OP_N];
	unsigned long rc_count[OP_N][4];	/* 0, busy/timeout, cancel, other */
};

static struct worker *workers;
static unsigned nworkers;
static atomic_int stop_flag;
static atomic_ulong progress;		/* completed operations, all threads */

/* Stutter: the main thread asks everybody to stop between operations. */
static pthread_mutex_t pause_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pause_cond = PTHREAD_COND_INITIALIZER;
static atomic_int pause_req;
static atomic_int paused;		/* threads stopped now */
static atomic_ulong paused_ns;		/* total stutter time, for the watchdog */

static void pause_point(void)
{
	if (!atomic_load(&pause_req))
		return;
	pthread_mutex_lock(&pause_lock);
	atomic_fetch_add(&paused, 1);
	while (atomic_load(&pause_req))
		pthread_cond_wait(&pause_cond, &pause_lock);
	atomic_fetch_sub(&paused, 1);
	pthread_mutex_unlock(&pause_lock);
}

static inline unsigned rnd(struct worker *w, unsigned n)
{
	return (unsigned)((kt_rand(&w->rng) >> 16) % n);
}

/* ---- occupancy ---- */

static void occ_enter(struct table *t, unsigned id, bool shared, const char *how)
{
	uint32_t old;

	if (t->max_holders > 1) {
		old = atomic_fetch_add(&t->occ[id], 1);
		if (old >= t->max_holders)
			fail(C_EXCL, "%s key %u: %u holders already inside a max_holders=%u key (%s)",
			     t->name, id, old, t->max_holders, how);
	} else if (shared) {
		old = atomic_fetch_add(&t->occ[id], 1);
		if (old >= OCC_W)
			fail(C_EXCL, "%s key %u: shared holder entered while a writer holds it (%s)",
			     t->name, id, how);
	} else {
		old = atomic_fetch_add(&t->occ[id], OCC_W);
		if (old != 0)
			fail(C_EXCL, "%s key %u: exclusive holder entered with occupancy %#x (%s)",
			     t->name, id, old, how);
	}
}

static void occ_leave(struct table *t, unsigned id, bool shared)
{
	if (t->max_holders > 1 || shared)
		atomic_fetch_sub(&t->occ[id], 1);
	else
		atomic_fetch_sub(&t->occ[id], OCC_W);
}

/* The critical section of one hold. */
static void hold(struct worker *w, struct table *t, unsigned id, bool shared,
		 const char *how, bool allow_long)
{
	occ_enter(t, id, shared, how);
	if (t->max_holders == 1 && !shared && id < NHOT) {
		/* read, pause, write: a second writer would lose an update */
		long v = t->payload[id];

		for (int i = 0; i < 8; i++)
			kt_cpu_relax();
		t->payload[id] = v + 1;
		atomic_fetch_add_explicit(&t->seen_excl_hot[id], 1, memory_order_relaxed);
	}
	unsigned r = w != NULL ? rnd(w, 3000) : 1;

	/* keyed semaphore holders linger, so that T2's keys fill up */
	if (t->max_holders > 1 && r < 1000)
		r = 1;
	if (allow_long && r == 0)
		kt_sleep_us(1000 + (long)rnd(w, 19000));	/* a long hold */
	else if (r < 60)
		sched_yield();
	else
		for (int i = 0; i < 32; i++)
			kt_cpu_relax();
	occ_leave(t, id, shared);
}

static void count_outcome(struct worker *w, struct table *t, enum op op, int rc)
{
	unsigned slot;

	switch (rc) {
	case 0: slot = 0; break;
	case EBUSY: case ETIMEDOUT: case EAGAIN: slot = 1; break;
	case ECANCELED: slot = 2; break;
	default: slot = 3; break;
	}
	w->rc_count[op][slot]++;
	if (rc == ETIMEDOUT)
		atomic_fetch_add_explicit(&t->seen_timeouts, 1, memory_order_relaxed);
	else if (rc == ECANCELED)
		atomic_fetch_add_explicit(&t->seen_cancels, 1, memory_order_relaxed);
	else if (rc == EAGAIN)
		atomic_fetch_add_explicit(&t->seen_rejected, 1, memory_order_relaxed);
}

static void check_rc(struct table *t, enum op op, unsigned id, int rc, bool busy_ok,
		     bool timeout_ok, bool cancel_ok, bool wait_possible)
{
	if (rc == 0)
		return;
	if ((rc == EBUSY && busy_ok) || (rc == ETIMEDOUT && timeout_ok) ||
	    (rc == ECANCELED && cancel_ok) ||
	    (rc == EAGAIN && t->eagain_ok && wait_possible))
		return;
	fail(C_CODES, "%s %s key %u: unexpected return %d (%s)", t->name, op_name[op], id, rc,
	     strerror(rc));
}

static void unlock_checked(struct worker *w, struct table *t, struct km_guard *g,
			   const char *what)
{
	int rc = km_unlock(g);

	if (rc != 0)
		fail(C_CODES, "%s %s: km_unlock returned %d", t->name, what, rc);
	else if (!kt_guard_zero(g))
		fail(C_CODES, "%s %s: km_unlock left the guard non-zero", t->name, what);
	if (w != NULL && rnd(w, 64) == 0 && km_unlock(g) != EPERM)
		fail(C_CODES, "%s %s: double unlock did not return EPERM", t->name, what);
}

static struct timespec rand_deadline(struct worker *w)
{
	/* from 0.5 ms in the past ("try once") to 3 ms ahead */
	return kt_deadline_ns((int64_t)rnd(w, 3500000) - 500000);
}

/* ---- tokens the chaos thread may cancel ---- */

static struct km_token *token_get(struct worker *w)
{
	struct km_token *tok = NULL;
	int rc = km_token_create(&tok);

	if (rc != 0 || tok == NULL) {
		fail(C_CODES, "km_token_create returned %d", rc);
		return NULL;
	}
	pthread_mutex_lock(&w->tok_lock);
	w->tok = tok;
	pthread_mutex_unlock(&w->tok_lock);
	return tok;
}

static void token_put(struct worker *w, struct table *t, struct km_token *tok, bool was_cancelled)
{
	int rc;

	pthread_mutex_lock(&w->tok_lock);
	w->tok = NULL;
	pthread_mutex_unlock(&w->tok_lock);
	if (was_cancelled) {
		/* a cancelled token fails every later acquire at once */
		struct km_lock_options o = { .cancel = tok };
		struct km_guard g;
		unsigned char k[1] = { 'Q' };

		kt_poison(&g);
		rc = km_acquire(t->km, k, 1, &o, &g);
		if (rc != ECANCELED || !kt_guard_zero(&g))
			fail(C_CODES, "%s: acquire with a cancelled token returned %d", t->name, rc);
		if (rc == 0)
			(void)km_unlock(&g);
		count_outcome(w, t, OP_TOKEN_SYNC, rc);
	}
	rc = km_token_destroy(tok);
	if (rc != 0)
		fail(C_TEARDOWN, "km_token_destroy returned %d after its waits ended", rc);
}

/* ---- async requests ---- */

struct areq {
	struct km_request req;		/* first: the callback casts back */
	atomic_int done;
	atomic_int calls;
	int status;
	bool run_in_cb;			/* the callback holds and unlocks */
	bool port;
	pthread_t owner;
	struct table *t;
	unsigned id;
	bool shared;
	atomic_int wrong_thread;
};

static void ready_cb(struct km_request *req, int status)
{
	struct areq *a = (struct areq *)(void *)req;

	atomic_fetch_add(&a->calls, 1);
	if (a->port && !pthread_equal(pthread_self(), a->owner))
		atomic_store(&a->wrong_thread, 1);
	a->status = status;
	if (status == 0 && a->run_in_cb) {
		hold(NULL, a->t, a->id, a->shared, "async ready()", false);
		unlock_checked(NULL, a->t, &req->guard, "unlock in ready()");
	}
	atomic_store_explicit(&a->done, 1, memory_order_release);	/* a may be reused now */
}

static void op_async(struct worker *w, struct table *t, unsigned id, enum op op)
{
	unsigned char key[KEYMAX];
	size_t len = key_bytes(id, key);
	struct areq a;
	struct timespec dl;
	struct km_lock_options o = { 0 };
	struct km_token *tok = NULL;
	bool shared = t->shared_ok && rnd(w, 4) == 0;
	bool use_dl = rnd(w, 2) == 0;
	bool self_cancel = rnd(w, 4) == 0;
	uint64_t cancel_at = 0;
	bool req_cancelled = false;	/* km_request_cancel, not the token */
	int rc;

	memset(&a, 0, sizeof a);
	a.req.ready = ready_cb;
	a.run_in_cb = op == OP_ASYNC_CB;
	a.port = op == OP_ASYNC_PORT || (op == OP_TOKEN_ASYNC && rnd(w, 2) == 0);
	a.req.port = a.port ? w->port : NULL;
	a.owner = pthread_self();
	a.t = t;
	a.id = id;
	a.shared = shared;
	if (shared)
		o.flags |= KM_SHARED;
	if (use_dl) {
		dl = rand_deadline(w);
		o.deadline = &dl;
	}
	if (op == OP_TOKEN_ASYNC) {
		tok = token_get(w);
		o.cancel = tok;
	}
	kt_poison(&a.req.guard);
	rc = km_acquire_async(t->km, len ? key : NULL, len, &o, &a.req);
	if (rc == 0) {
		count_outcome(w, t, op, 0);
		w->acquired++;
		atomic_fetch_add_explicit(&t->seen_acquired, 1, memory_order_relaxed);
		hold(w, t, id, shared, op_name[op], true);
		unlock_checked(w, t, &a.req.guard, op_name[op]);
		goto out;
	}
	if (rc != EINPROGRESS) {
		check_rc(t, op, id, rc, false, use_dl, tok != NULL, true);
		if (!kt_guard_zero(&a.req.guard))
			fail(C_CODES, "%s %s: failed km_acquire_async left the guard set", t->name,
			     op_name[op]);
		count_outcome(w, t, op, rc);
		goto out;
	}
	if (self_cancel)
		cancel_at = kt_now_ns() + rnd(w, 2000000);
	/* Wait for ready(): run the port, cancel when due. */
	while (!atomic_load_explicit(&a.done, memory_order_acquire)) {
		if (cancel_at != 0 && kt_now_ns() >= cancel_at) {
			cancel_at = 0;
			if (tok != NULL && rnd(w, 2) == 0) {
				km_token_cancel(tok);
			} else {
				rc = km_request_cancel(&a.req);
				if (rc != 0 && rc != EALREADY)
					fail(C_CODES, "km_request_cancel returned %d", rc);
				req_cancelled = rc == 0;
			}
			continue;
		}
		if (a.port) {
			struct pollfd p = { .fd = km_port_fd(w->port), .events = POLLIN };

			(void)poll(&p, 1, 2);
			if (km_port_run(w->port) < 0)
				fail(C_CODES, "km_port_run failed");
		} else {
			kt_sleep_us(20);
		}
	}
	rc = a.status;
	if (atomic_load(&a.calls) != 1)
		fail(C_CODES, "%s %s: ready() ran %d times", t->name, op_name[op],
		     atomic_load(&a.calls));
	if (atomic_load(&a.wrong_thread))
		fail(C_CODES, "%s %s: ready() of a port request ran on another thread", t->name,
		     op_name[op]);
	if (rc != 0 && rc != ETIMEDOUT && rc != ECANCELED)
		fail(C_CODES, "%s %s: ready() status %d", t->name, op_name[op], rc);
	if (rc == ETIMEDOUT && !use_dl)
		fail(C_CODES, "%s %s: ETIMEDOUT without a deadline", t->name, op_name[op]);
	if (rc == ECANCELED && !self_cancel && tok == NULL)
		fail(C_CODES, "%s %s: ECANCELED without a cancel", t->name, op_name[op]);
	count_outcome(w, t, op, rc);
	if (rc == 0) {
		w->acquired++;
		atomic_fetch_add_explicit(&t->seen_acquired, 1, memory_order_relaxed);
		if (!a.run_in_cb) {
			hold(w, t, id, shared, op_name[op], true);
			unlock_checked(w, t, &a.req.guard, op_name[op]);
		}
	} else if (!kt_guard_zero(&a.req.guard)) {
		fail(C_CODES, "%s %s: guard set after status %d", t->name, op_name[op], rc);
	}
	/* ready() must not run again */
	if (atomic_load(&a.calls) != 1)
		fail(C_CODES, "%s %s: ready() ran again", t->name, op_name[op]);
out:
	if (tok != NULL)
		token_put(w, t, tok, rc == ECANCELED && !req_cancelled);
}

/* ---- sync single-key operations ---- */

static void op_sync(struct worker *w, struct table *t, unsigned id, enum op op)
{
	unsigned char key[KEYMAX];
	size_t len = key_bytes(id, key);
	struct km_guard g;
	struct timespec dl;
	struct km_lock_options o = { 0 };
	struct km_token *tok = NULL;
	bool shared = false, busy_ok = false, to_ok = false, wait = true;
	int rc;

	switch (op) {
	case OP_LOCK:
		break;
	case OP_TRY:
		o.flags = KM_TRY;
		busy_ok = true;
		wait = false;
		break;
	case OP_TIMED:
		dl = rand_deadline(w);
		o.deadline = &dl;
		to_ok = true;
		break;
	case OP_SHARED:
	case OP_SHARED_TRY:
	case OP_SHARED_TIMED:
		if (!t->shared_ok) {
			/* shared mode on a keyed semaphore: EINVAL, nothing held */
			kt_poison(&g);
			rc = km_lock_shared(t->km, len ? key : NULL, len, &g);
			if (rc != EINVAL || !kt_guard_zero(&g))
				fail(C_CODES, "%s: km_lock_shared on max_holders>1 returned %d",
				     t->name, rc);
			return;
		}
		shared = true;
		o.flags = KM_SHARED;
		if (op == OP_SHARED_TRY) {
			o.flags |= KM_TRY;
			busy_ok = true;
			wait = false;
		} else if (op == OP_SHARED_TIMED) {
			dl = rand_deadline(w);
			o.deadline = &dl;
			to_ok = true;
		}
		break;
	case OP_TOKEN_SYNC:
		tok = token_get(w);
		o.cancel = tok;
		if (rnd(w, 3) == 0) {
			dl = rand_deadline(w);
			o.deadline = &dl;
			to_ok = true;
		}
		if (t->shared_ok && rnd(w, 4) == 0) {
			shared = true;
			o.flags = KM_SHARED;
		}
		break;
	default:
		return;
	}
	kt_poison(&g);
	/* the shorthands when they match, km_acquire otherwise */
	if (op == OP_LOCK)
		rc = km_lock(t->km, len ? key : NULL, len, &g);
	else if (op == OP_TRY)
		rc = km_trylock(t->km, len ? key : NULL, len, &g);
	else if (op == OP_TIMED && rnd(w, 2))
		rc = km_timedlock(t->km, len ? key : NULL, len, &dl, &g);
	else if (op == OP_SHARED)
		rc = km_lock_shared(t->km, len ? key : NULL, len, &g);
	else if (op == OP_SHARED_TRY)
		rc = km_trylock_shared(t->km, len ? key : NULL, len, &g);
	else
		rc = km_acquire(t->km, len ? key : NULL, len, &o, &g);
	check_rc(t, op, id, rc, busy_ok, to_ok, tok != NULL, wait);
	count_outcome(w, t, op, rc);
	if (rc == 0) {
		w->acquired++;
		atomic_fetch_add_explicit(&t->seen_acquired, 1, memory_order_relaxed);
		hold(w, t, id, shared, op_name[op], true);
		unlock_checked(w, t, &g, op_name[op]);
	} else if (!kt_guard_zero(&g)) {
		fail(C_CODES, "%s %s: guard not zeroed after %d", t->name, op_name[op], rc);
	}
	if (tok != NULL)
		token_put(w, t, tok, rc == ECANCELED);
}

/* ---- km_acquire_all ---- */

static void op_all(struct worker *w, struct table *t)
{
	unsigned n = 1 + rnd(w, MAXALL);
	unsigned ids[MAXALL];
	unsigned char keys[MAXALL][KEYMAX];
	struct km_key k[MAXALL];
	struct km_guard g[MAXALL];
	struct km_lock_options o = { 0 };
	struct timespec dl;
	struct km_token *tok = NULL;
	bool shared = t->shared_ok && rnd(w, 4) == 0;
	bool busy_ok = false, to_ok = false;
	int rc;

	for (unsigned i = 0; i < n; i++) {
		unsigned id;
		bool dup;

		do {
			id = rnd(w, 3) == 0 ? rnd(w, NHOT) : NHOT + rnd(w, NSPACE);
			dup = false;
			for (unsigned j = 0; j < i; j++)
				dup |= ids[j] == id;
		} while (dup);
		ids[i] = id;
		k[i].len = key_bytes(id, keys[i]);
		k[i].ptr = k[i].len ? keys[i] : NULL;
	}
	switch (rnd(w, 4)) {
	case 0:
		o.flags |= KM_TRY;
		busy_ok = true;
		break;
	case 1:
		dl = rand_deadline(w);
		o.deadline = &dl;
		to_ok = true;
		break;
	case 2:
		tok = token_get(w);
		o.cancel = tok;
		break;
	default:
		break;
	}
	if (shared)
		o.flags |= KM_SHARED;
	for (unsigned i = 0; i < n; i++)
		kt_poison(&g[i]);
	rc = km_acquire_all(t->km, k, n, &o, g);
	check_rc(t, OP_ALL, ids[0], rc, busy_ok, to_ok, tok != NULL, !busy_ok);
	count_outcome(w, t, OP_ALL, rc);
	if (rc == 0) {
		for (unsigned i = 0; i < n; i++)
			occ_enter(t, ids[i], shared, "acquire_all");
		w->acquired += n;
		atomic_fetch_add_explicit(&t->seen_acquired, n, memory_order_relaxed);
		if (rnd(w, 2000) == 0)
			kt_sleep_us(1000 + (long)rnd(w, 9000));
		for (unsigned i = 0; i < n; i++) {
			occ_leave(t, ids[i], shared);
			if (!shared && t->max_holders == 1 && ids[i] < NHOT) {
				t->payload[ids[i]]++;	/* still held: nobody else writes it */
				atomic_fetch_add_explicit(&t->seen_excl_hot[ids[i]], 1,
							  memory_order_relaxed);
			}
		}
		rc = km_unlock_all(g, n);
		if (rc != 0)
			fail(C_CODES, "%s km_unlock_all returned %d", t->name, rc);
		for (unsigned i = 0; i < n; i++)
			if (!kt_guard_zero(&g[i]))
				fail(C_CODES, "%s km_unlock_all left guard %u set", t->name, i);
	} else {
		for (unsigned i = 0; i < n; i++)
			if (!kt_guard_zero(&g[i]))
				fail(C_CODES, "%s acquire_all failed (%d) but guard %u is set",
				     t->name, rc, i);
	}
	if (tok != NULL)
		token_put(w, t, tok, rc == ECANCELED);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	unsigned wsum = 0;

	for (unsigned i = 0; i < OP_N; i++)
		wsum += op_weight[i];
	while (!atomic_load(&stop_flag)) {
		pause_point();
		if (atomic_load(&stop_flag))
			break;
		unsigned r = rnd(w, wsum);
		enum op op = 0;

		while (r >= op_weight[op])
			r -= op_weight[op++];
		struct table *t = &tables[rnd(w, NTABLES)];
		unsigned id = rnd(w, 2) ? rnd(w, t->max_holders > 1 ? 2 : NHOT)
				       : NHOT + rnd(w, NSPACE);

		atomic_store(&w->op_kind, (int)op);
		atomic_store(&w->op_table, (int)(t - tables));
		atomic_store(&w->op_key, id);
		atomic_store(&w->op_start, kt_now_ns());
		switch (op) {
		case OP_ASYNC:
		case OP_ASYNC_CB:
		case OP_ASYNC_PORT:
		case OP_TOKEN_ASYNC:
			op_async(w, t, id, op);
			break;
		case OP_ALL:
			op_all(w, t);
			break;
		default:
			op_sync(w, t, id, op);
			break;
		}
		atomic_store(&w->op_start, 0);
		w->ops[op]++;
		atomic_fetch_add_explicit(&progress, 1, memory_order_relaxed);
	}
	return NULL;
}

/* ---- chaos: cancel the tokens workers wait with ---- */

static void *chaos_main(void *arg)
{
	uint64_t rng = (uint64_t)(uintptr_t)arg | 1;

	while (!atomic_load(&stop_flag)) {
		pause_point();
		struct worker *w = &workers[kt_rand(&rng) % nworkers];

		pthread_mutex_lock(&w->tok_lock);
		if (w->tok != NULL && kt_rand(&rng) % 3 == 0)
			km_token_cancel(w->tok);
		pthread_mutex_unlock(&w->tok_lock);
		kt_sleep_us(100 + (long)(kt_rand(&rng) % 900));
	}
	return NULL;
}

/* ---- watchdog ---- */

static long watchdog_s = 10;

static int dump_key(const void *key, size_t len, unsigned holders, unsigned waiters,
		    int shared, void *arg)
{
	(void)arg;
	printf("    key len %zu [", len);
	for (size_t i = 0; i < len && i < 12; i++)
		printf("%02x", ((const unsigned char *)key)[i]);
	printf("%s] holders %u waiters %u%s\n", len > 12 ? "..." : "", holders, waiters,
	       shared ? " shared" : "");
	return 0;
}

static void print_summary(void);

static void *watchdog_main(void *arg)
{
	unsigned long last = atomic_load(&progress);
	uint64_t last_change = kt_now_ns(), last_paused = atomic_load(&paused_ns);

	(void)arg;
	while (!atomic_load(&stop_flag)) {
		kt_sleep_us(200000);
		uint64_t now = kt_now_ns();
		unsigned long p = atomic_load(&progress);
		uint64_t pz = atomic_load(&paused_ns);
		uint64_t limit = (uint64_t)watchdog_s * 1000000000u;
		bool stuck = false;

		if (atomic_load(&pause_req)) {
			last_change = now;	/* stutters are not stalls */
		} else if (p != last || pz != last_paused) {
			last = p;
			last_paused = pz;
			last_change = now;
		} else if (now - last_change > limit) {
			fail(C_WATCHDOG, "no operation completed for %ld s", watchdog_s);
			stuck = true;
		}
		for (unsigned i = 0; i < nworkers; i++) {
			uint64_t s = atomic_load(&workers[i].op_start);

			/* workers stop only between operations: an operation
			 * never contains a stutter */
			if (s != 0 && now > s && now - s > limit) {
				int tix = atomic_load(&workers[i].op_table);

				fail(C_WATCHDOG, "thread %u stuck %.1f s in %s on %s key %u", i,
				     (double)(now - s) / 1e9, op_name[atomic_load(&workers[i].op_kind)],
				     tables[tix].name, atomic_load(&workers[i].op_key));
				stuck = true;
			}
		}
		if (stuck) {
			for (unsigned t = 0; t < NTABLES; t++) {
				struct km_stats st = kt_stats(tables[t].km);

				printf("  %s: keys %zu holders %zu waiters %zu\n", tables[t].name,
				       st.keys, st.holders, st.waiters);
				km_query(tables[t].km, dump_key, NULL);
			}
			print_summary();
			fflush(stdout);
			_exit(1);	/* threads are stuck: no clean join */
		}
	}
	return NULL;
}

/* ---- quiescence ---- */

static int count_key(const void *key, size_t len, unsigned holders, unsigned waiters,
		     int shared, void *arg)
{
	(void)key; (void)len; (void)holders; (void)waiters; (void)shared;
	++*(size_t *)arg;
	return 0;
}

static void check_empty(const char *when)
{
	for (unsigned t = 0; t < NTABLES; t++) {
		struct km_stats st = kt_stats(tables[t].km);
		size_t visited = 0;

		km_query(tables[t].km, count_key, &visited);
		if (st.keys != 0 || st.holders != 0 || st.waiters != 0 || visited != 0) {
			fail(C_QUIESCENT,
			     "%s, %s: keys %zu holders %zu waiters %zu, km_query visits %zu",
			     when, tables[t].name, st.keys, st.holders, st.waiters, visited);
			km_query(tables[t].km, dump_key, NULL);
		}
		for (unsigned id = 0; id < NKEYS; id++)
			if (atomic_load(&tables[t].occ[id]) != 0) {
				fail(C_QUIESCENT, "%s, %s: occupancy of key %u is %#x", when,
				     tables[t].name, id, atomic_load(&tables[t].occ[id]));
				break;
			}
	}
}

static void stutter(void)
{
	uint64_t t0 = kt_now_ns();
	unsigned want = nworkers + 1;	/* workers and the chaos thread */

	atomic_store(&pause_req, 1);
	while ((unsigned)atomic_load(&paused) < want) {
		if (kt_now_ns() - t0 > (uint64_t)(watchdog_s + 5) * 1000000000u) {
			fail(C_WATCHDOG, "stutter: only %d of %u threads stopped",
			     atomic_load(&paused), want);
			break;
		}
		kt_sleep_us(500);
	}
	/* Nobody is inside the library now (the timer thread has nothing to
	 * fire): the counts must be exact. */
	check_empty("at a stutter");
	kt_sleep_us(2000);
	pthread_mutex_lock(&pause_lock);
	atomic_store(&pause_req, 0);
	pthread_cond_broadcast(&pause_cond);
	pthread_mutex_unlock(&pause_lock);
	atomic_fetch_add(&paused_ns, kt_now_ns() - t0);
}

/* ---- summary ---- */

static void print_summary(void)
{
	unsigned passed = 0, failed = 0;

	for (unsigned c = 0; c < C_N; c++) {
		long f = atomic_load(&check_fail[c]);

		printf("check %-10s %s", check_name[c], f ? "FAILED" : "ok");
		if (f)
			printf(" (%ld)", f);
		putchar('\n');
		if (f)
			failed++;
		else
			passed++;
	}
	printf("%u passed, %u failed\n", passed, failed);
}

static int setup_tables(void)
{
	struct km_options o[NTABLES];

	memset(o, 0, sizeof o);
	o[1].flags = KM_FIFO;
	o[1].shards = 1;
	o[1].expected_keys = 16;
	o[1].pool_size = 64;
	o[2].max_holders = 3;
	o[2].max_waiters = 8;
	o[2].shards = 2;
	o[2].pool_size = 8;
	o[2].pool_prefill = 8;
	static const char *names[NTABLES] = { "T0(default)", "T1(fifo,1 shard)", "T2(sem3)" };

	for (unsigned i = 0; i < NTABLES; i++) {
		int rc = km_create(&tables[i].km, &o[i]);

		if (rc != 0) {
			printf("km_create(%s) failed: %d\n", names[i], rc);
			return -1;
		}
		tables[i].name = names[i];
		tables[i].max_holders = o[i].max_holders > 1 ? o[i].max_holders : 1;
		tables[i].shared_ok = tables[i].max_holders == 1;
		tables[i].eagain_ok = o[i].max_waiters != 0;
		tables[i].occ = calloc(NKEYS, sizeof *tables[i].occ);
		if (tables[i].occ == NULL)
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	long per_core = 2, threads = 0;
	long seconds = kt_env_long("KM_TORTURE_SECONDS", 3);
	uint64_t seed = (uint64_t)kt_env_long("KM_TORTURE_SEED", 0);
	pthread_t chaos, dog;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--per-core") == 0 && i + 1 < argc)
			per_core = strtol(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
			threads = strtol(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			seconds = strtol(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 0);
		else {
			fprintf(stderr, "usage: %s [--per-core N | --threads N] [--seconds S] [--seed X]\n",
				argv[0]);
			return 2;
		}
	}
	if (cpus < 1)
		cpus = 1;
	if (threads <= 0)
		threads = cpus * (per_core > 0 ? per_core : 2);
	if (seconds <= 0)
		seconds = 3;
	if (seed == 0)
		seed = kt_now_ns() ^ ((uint64_t)getpid() << 32);
	watchdog_s = kt_env_long("KM_TORTURE_WATCHDOG", 10);
	nworkers = (unsigned)threads;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("torture: %u threads (%ld cpus), %ld s, seed %#llx, watchdog %ld s\n", nworkers,
	       cpus, seconds, (unsigned long long)seed, watchdog_s);

	if (setup_tables() != 0)
		return 1;
	workers = calloc(nworkers, sizeof *workers);
	for (unsigned i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];

		w->idx = i;
		w->rng = (seed + 0x9E3779B97F4A7C15ull * (i + 1)) | 1;
		pthread_mutex_init(&w->tok_lock, NULL);
		if (km_port_create(&w->port) != 0) {
			printf("km_port_create failed\n");
			return 1;
		}
	}
	for (unsigned i = 0; i < nworkers; i++)
		if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) {
			printf("pthread_create failed\n");
			return 1;
		}
	pthread_create(&chaos, NULL, chaos_main, (void *)(uintptr_t)(seed * 3));
	pthread_create(&dog, NULL, watchdog_main, NULL);

	uint64_t end = kt_now_ns() + (uint64_t)seconds * 1000000000u;
	unsigned stutters = 0;

	while (kt_now_ns() < end) {
		kt_sleep_us(400000);
		if (kt_now_ns() < end) {
			stutter();
			stutters++;
		}
	}
	atomic_store(&stop_flag, 1);
	pthread_mutex_lock(&pause_lock);
	pthread_cond_broadcast(&pause_cond);
	pthread_mutex_unlock(&pause_lock);
	for (unsigned i = 0; i < nworkers; i++)
		pthread_join(workers[i].thread, NULL);
	pthread_join(chaos, NULL);
	pthread_join(dog, NULL);

	/* ---- results ---- */
	unsigned long mn = (unsigned long)-1, mx = 0, total = 0, ops[OP_N] = { 0 };
	unsigned long rcs[OP_N][4] = { { 0 } };

	for (unsigned i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];

		mn = w->acquired < mn ? w->acquired : mn;
		mx = w->acquired > mx ? w->acquired : mx;
		total += w->acquired;
		for (unsigned o = 0; o < OP_N; o++) {
			ops[o] += w->ops[o];
			for (unsigned s = 0; s < 4; s++)
				rcs[o][s] += w->rc_count[o][s];
		}
	}
	printf("acquisitions: total %lu, per thread min %lu max %lu; %u stutters\n", total, mn,
	       mx, stutters);
	printf("%-15s %9s %9s %9s %9s %9s\n", "operation", "calls", "ok", "busy/to", "cancel",
	       "other");
	for (unsigned o = 0; o < OP_N; o++)
		printf("%-15s %9lu %9lu %9lu %9lu %9lu\n", op_name[o], ops[o], rcs[o][0], rcs[o][1],
		       rcs[o][2], rcs[o][3]);
	if (mn == 0)
		fail(C_WATCHDOG, "a thread acquired nothing in %ld s (starved)", seconds);

	check_empty("at the end");
	for (unsigned t = 0; t < NTABLES; t++) {
		struct table *tb = &tables[t];
		struct km_stats st = kt_stats(tb->km);

		printf("%s: acquired %llu (seen %lu) contended %llu timeouts %llu cancels %llu "
		       "rejected %llu pooled %zu\n",
		       tb->name, (unsigned long long)st.acquired, atomic_load(&tb->seen_acquired),
		       (unsigned long long)st.contended, (unsigned long long)st.timeouts,
		       (unsigned long long)st.cancels, (unsigned long long)st.rejected, st.pooled);
		/* acquire_all counts the keys it took before a failure undid them */
		if (st.acquired < atomic_load(&tb->seen_acquired))
			fail(C_COUNTERS, "%s: acquired %llu < %lu holds seen", tb->name,
			     (unsigned long long)st.acquired, atomic_load(&tb->seen_acquired));
		if (st.timeouts != atomic_load(&tb->seen_timeouts) ||
		    st.cancels != atomic_load(&tb->seen_cancels) ||
		    st.rejected != atomic_load(&tb->seen_rejected))
			fail(C_COUNTERS,
			     "%s: timeouts/cancels/rejected %llu/%llu/%llu, workers saw %lu/%lu/%lu",
			     tb->name, (unsigned long long)st.timeouts,
			     (unsigned long long)st.cancels, (unsigned long long)st.rejected,
			     atomic_load(&tb->seen_timeouts), atomic_load(&tb->seen_cancels),
			     atomic_load(&tb->seen_rejected));
		if (tb->max_holders == 1)
			for (unsigned k = 0; k < NHOT; k++)
				if ((unsigned long)tb->payload[k] != atomic_load(&tb->seen_excl_hot[k]))
					fail(C_PAYLOAD, "%s hot key %u: payload %ld after %lu exclusive holds",
					     tb->name, k, tb->payload[k],
					     atomic_load(&tb->seen_excl_hot[k]));
	}
	for (unsigned i = 0; i < nworkers; i++) {
		int rc = km_port_destroy(workers[i].port);

		if (rc != 0)
			fail(C_TEARDOWN, "km_port_destroy returned %d", rc);
		pthread_mutex_destroy(&workers[i].tok_lock);
	}
	for (unsigned t = 0; t < NTABLES; t++) {
		int rc = km_destroy(tables[t].km);

		if (rc != 0)
			fail(C_TEARDOWN, "km_destroy(%s) returned %d", tables[t].name, rc);
		free(tables[t].occ);
	}
	free(workers);
	print_summary();
	for (unsigned c = 0; c < C_N; c++)
		if (atomic_load(&check_fail[c]))
			return 1;
	return 0;
}
