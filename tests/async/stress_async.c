/*
 * Stress tests (issue 4): asynchronous acquire under races, with more
 * threads than cores.
 *
 * One engine, several configurations (one Criterion test each). Worker
 * threads own request slots and a completion port; they issue async
 * requests (with or without a port, a deadline of 0-200 us, a token, KM_TRY,
 * shared mode), sync acquires (blocking, timed, cancellable), and hold some
 * granted keys for a while so that they are unlocked on another thread than
 * the one that ran ready(). Canceller threads call km_request_cancel on
 * other threads' requests; a recycler thread cancels tokens in use, checks
 * that km_token_destroy is EBUSY while an anchor request certainly uses the
 * token and 0 once every user is gone, and replaces them.
 *
 * Checked (Criterion assertions on the main thread, after the fact):
 *  - exactly one ready() per EINPROGRESS (global counters, and a per-request
 *    call counter that catches a second call);
 *  - no lost wake-up: every 50 ms a quiet point (no new work) must drain
 *    every request and free every key within a watchdog, and so must the
 *    end of the run; a stuck case dumps its pending requests and keys;
 *  - exclusion: an occupancy counter per key (mutex: <= 1 holder; keyed
 *    semaphore: <= max_holders; shared mode: no exclusive holder beside any
 *    other holder);
 *  - outcomes match what was asked (ETIMEDOUT only with a deadline and never
 *    before it, ECANCELED only with a token or a cancel, km_request_cancel
 *    == 0 implies ECANCELED, EBUSY only with KM_TRY, EAGAIN only with
 *    max_waiters), failed requests hold nothing;
 *  - ports: ready() runs only inside km_port_run of the request's port, and
 *    a readable port fd means km_port_run runs at least one completion;
 *  - at the end: km_stats keys == holders == waiters == 0 and every key can
 *    be taken (nothing left held by a cancelled or timed-out request).
 *
 * Duration per case: KM_STRESS_MS (default 300 ms).
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include <poll.h>

#include "km_test.h"

TestSuite(async_stress, .timeout = 120);

#define MAX_KEYS 16
#define MAX_TOKENS 4
#define SLOTS 8			/* request slots per worker */
#define EXCL_UNIT (1 << 16)	/* occupancy of an exclusive hold in shared mode */

/* ------------------------------------------------------------------ */
/* Configuration and shared state                                      */
/* ------------------------------------------------------------------ */

struct config {
	const char *name;
	unsigned table_flags;
	unsigned max_holders;
	unsigned max_waiters;
	int nkeys;
	int hot_pct;		/* % of operations on key 0 */
	int workers;
	int cancellers;
	bool recycler;		/* token recycling thread */
	int port_pct;		/* % of async requests through the worker's port */
	int deadline_pct;	/* % of async requests with a deadline */
	long deadline_max_ns;	/* deadlines now + [0, deadline_max_ns] */
	int token_pct;		/* % of requests (sync and async) with a token */
	int try_pct;		/* % of async requests with KM_TRY */
	int shared_pct;		/* % of requests in shared mode */
	int hold_pct;		/* % of grants held and unlocked later by the issuer */
	int sync_per_step;	/* a sync acquire every this many steps (0: none) */
	int self_cancel_pct;	/* % chance per step of cancelling one of our own requests */
};

enum { P_FREE, P_WAIT, P_HELD };
#define W_ISSUING 1u	/* km_acquire_async not returned yet: no one may cancel */
#define W_INFLIGHT 2u	/* EINPROGRESS returned, ready() not yet run */
#define W_DONE 4u	/* ready() has run */
#define W_PIN 256u	/* a canceller is using the request */

struct ctx;
struct worker;

struct slot {
	struct km_request req;
	struct ctx *c;
	struct worker *w;
	/* written by the issuer before km_acquire_async, read in ready() */
	int key;
	bool shared, hold, has_token, has_deadline;
	int token_idx;
	uint64_t deadline_ns;
	struct km_port *port;
	/* shared */
	atomic_uint word;
	atomic_int ready_calls;
	atomic_int cancel_requested;	/* a km_request_cancel is (or was) under way */
	atomic_int cancel_ok;		/* km_request_cancel returned 0 */
	/* written in ready() */
	int status;
	/* issuer only */
	int phase;
	uint64_t hold_until;
};

struct token_slot {
	pthread_mutex_t m;
	struct km_token *t;
	bool live;
	int pins;			/* users between pin and unpin */
	struct km_request anchor;	/* certainly registered while the token is live */
	atomic_int anchor_calls;
	int anchor_status;
	_Atomic uint64_t t_cancel;
};

struct worker {
	struct ctx *c;
	int id;
	pthread_t th;
	struct km_port *port;
	struct slot slots[SLOTS];
	uint64_t rng;
	atomic_uint idle_epoch;		/* last quiet epoch seen with nothing in flight */
};

struct ctx {
	const struct config *cfg;
	struct km *km;
	char keys[MAX_KEYS][16];
	size_t keylen[MAX_KEYS];
	atomic_int occ[MAX_KEYS];
	struct token_slot tokens[MAX_TOKENS];
	struct km_guard anchor_guard[MAX_TOKENS][8];	/* every holder slot of the anchor keys */
	unsigned anchor_holds;
	struct worker *workers;
	int nworkers;
	atomic_int stop;
	atomic_uint epoch;		/* odd: quiet (no new work), even: busy */
	atomic_int workers_left;
	atomic_int aux_stop;

	/* counters */
	atomic_long inprogress, readies, double_ready;
	atomic_long granted_async, timedout_async, cancelled_async;
	atomic_long immediate_ok, immediate_fail;
	atomic_long sync_ok, sync_fail;
	atomic_long excl_violations, early_timeouts, bad_status, bad_guard;
	atomic_long cancel_mismatch, cancel_calls, cancel_zero, cancel_bad_rc;
	atomic_long wrong_port_thread, port_readable_empty, port_runs;
	atomic_long unlock_errors;
	atomic_long token_recycles, token_destroy_busy, token_destroy_bad, anchor_bad;
	atomic_long sync_cancel_latency_max_ns;
	atomic_long quiet_points;
};

static __thread struct km_port *tl_running_port;	/* set around km_port_run */

/* ------------------------------------------------------------------ */
/* Occupancy: what "holding a key" must mean                           */
/* ------------------------------------------------------------------ */

static void occ_enter(struct ctx *c, int key, bool shared)
{
	const struct config *cfg = c->cfg;

	if (cfg->shared_pct > 0) {
		if (shared) {
			int v = atomic_fetch_add(&c->occ[key], 1);

			if (v >= EXCL_UNIT)
				atomic_fetch_add(&c->excl_violations, 1);
		} else {
			int v = atomic_fetch_add(&c->occ[key], EXCL_UNIT);

			if (v != 0)
				atomic_fetch_add(&c->excl_violations, 1);
		}
	} else {
		int max = cfg->max_holders > 1 ? (int)cfg->max_holders : 1;
		int v = atomic_fetch_add(&c->occ[key], 1) + 1;

		if (v > max)
			atomic_fetch_add(&c->excl_violations, 1);
	}
}

static void occ_exit(struct ctx *c, int key, bool shared)
{
	if (c->cfg->shared_pct > 0 && !shared)
		atomic_fetch_sub(&c->occ[key], EXCL_UNIT);
	else
		atomic_fetch_sub(&c->occ[key], 1);
}

static void tiny_work(uint64_t *rng)
{
	int n = (int)(kt_rand(rng) % 32);

	for (int i = 0; i < n; i++)
		kt_cpu_relax();
}

/* ------------------------------------------------------------------ */
/* Tokens: pinned by their users, recycled by one thread               */
/* ------------------------------------------------------------------ */

static struct km_token *token_pin(struct ctx *c, int idx)
{
	struct token_slot *ts = &c->tokens[idx];
	struct km_token *t = NULL;

	pthread_mutex_lock(&ts->m);
	if (ts->live) {
		t = ts->t;
		ts->pins++;
	}
	pthread_mutex_unlock(&ts->m);
	return t;
}

static void token_unpin(struct ctx *c, int idx)
{
	struct token_slot *ts = &c->tokens[idx];

	pthread_mutex_lock(&ts->m);
	ts->pins--;
	pthread_mutex_unlock(&ts->m);
}

static void anchor_ready(struct km_request *req, int status)
{
	struct token_slot *ts = req->arg;

	ts->anchor_status = status;
	atomic_fetch_add(&ts->anchor_calls, 1);
}

/* A fresh token and its anchor: a request on a key the main thread holds,
 * so the token certainly has a registered wait until it is cancelled. */
static int token_fresh(struct ctx *c, int idx, char *why, size_t whylen)
{
	struct token_slot *ts = &c->tokens[idx];
	struct km_lock_options o;
	char key[16];
	int rc;

	rc = km_token_create(&ts->t);
	if (rc != 0) {
		snprintf(why, whylen, "km_token_create = %d", rc);
		return -1;
	}
	memset(&ts->anchor, 0, sizeof ts->anchor);
	ts->anchor.ready = anchor_ready;
	ts->anchor.arg = ts;
	atomic_store(&ts->anchor_calls, 0);
	ts->anchor_status = -1;
	o = (struct km_lock_options){ .cancel = ts->t };
	snprintf(key, sizeof key, "anchor-%d", idx);
	rc = km_acquire_async(c->km, key, strlen(key), &o, &ts->anchor);
	if (rc != EINPROGRESS) {
		snprintf(why, whylen, "anchor km_acquire_async = %d", rc);
		return -1;
	}
	pthread_mutex_lock(&ts->m);
	ts->live = true;
	pthread_mutex_unlock(&ts->m);
	return 0;
}

/* Cancel a token in use, wait for its users, destroy it. Returns false when
 * it took too long (reported by the watchdog instead). */
static bool token_retire(struct ctx *c, int idx)
{
	struct token_slot *ts = &c->tokens[idx];
	struct km_token *t;
	uint64_t end;
	int rc;

	pthread_mutex_lock(&ts->m);
	ts->live = false;
	t = ts->t;
	pthread_mutex_unlock(&ts->m);

	/* the anchor certainly uses it: EBUSY, and never a crash */
	rc = km_token_destroy(t);
	if (rc == EBUSY)
		atomic_fetch_add(&c->token_destroy_busy, 1);
	else
		atomic_fetch_add(&c->token_destroy_bad, 1);
	atomic_store(&ts->t_cancel, kt_now_ns());
	km_token_cancel(t);
	/* no port: the anchor's ready() ran on this thread before the return */
	if (atomic_load(&ts->anchor_calls) != 1 || ts->anchor_status != ECANCELED)
		atomic_fetch_add(&c->anchor_bad, 1);

	end = kt_now_ns() + 10000000000u;
	for (;;) {
		int pins;

		pthread_mutex_lock(&ts->m);
		pins = ts->pins;
		pthread_mutex_unlock(&ts->m);
		if (pins == 0)
			break;
		if (kt_now_ns() > end)
			return false;
		kt_sleep_us(50);
	}
	/* every user is gone: the token must be free now */
	rc = km_token_destroy(t);
	if (rc != 0)
		atomic_fetch_add(&c->token_destroy_bad, 1);
	atomic_fetch_add(&c->token_recycles, 1);
	return true;
}

/* ------------------------------------------------------------------ */
/* ready()                                                             */
/* ------------------------------------------------------------------ */

static void s_ready(struct km_request *req, int status)
{
	struct slot *s = req->arg;
	struct ctx *c = s->c;
	uint64_t now = kt_now_ns();

	if (atomic_fetch_add(&s->ready_calls, 1) != 0) {
		atomic_fetch_add(&c->double_ready, 1);
		return;
	}
	atomic_fetch_add(&c->readies, 1);
	s->status = status;
	if (s->port != NULL && tl_running_port != s->port)
		atomic_fetch_add(&c->wrong_port_thread, 1);
	switch (status) {
	case 0:
		atomic_fetch_add(&c->granted_async, 1);
		if (kt_guard_zero(&req->guard))
			atomic_fetch_add(&c->bad_guard, 1);
		occ_enter(c, s->key, s->shared);
		if (!s->hold) {
			uint64_t rng = now | 1;

			tiny_work(&rng);
			occ_exit(c, s->key, s->shared);
			if (km_unlock(&req->guard) != 0)
				atomic_fetch_add(&c->unlock_errors, 1);
		}
		break;
	case ETIMEDOUT:
		atomic_fetch_add(&c->timedout_async, 1);
		if (!s->has_deadline)
			atomic_fetch_add(&c->bad_status, 1);
		else if (now < s->deadline_ns)
			atomic_fetch_add(&c->early_timeouts, 1);
		if (!kt_guard_zero(&req->guard))
			atomic_fetch_add(&c->bad_guard, 1);
		break;
	case ECANCELED:
		atomic_fetch_add(&c->cancelled_async, 1);
		if (!s->has_token && !atomic_load(&s->cancel_requested))
			atomic_fetch_add(&c->bad_status, 1);
		if (!kt_guard_zero(&req->guard))
			atomic_fetch_add(&c->bad_guard, 1);
		break;
	default:
		atomic_fetch_add(&c->bad_status, 1);
		break;
	}
	if (s->has_token)
		token_unpin(c, s->token_idx);
	atomic_fetch_or(&s->word, W_DONE);	/* last touch of s by the library's side */
}

/* ------------------------------------------------------------------ */
/* Cancelling a request another thread owns                            */
/* ------------------------------------------------------------------ */

static void try_cancel_slot(struct ctx *c, struct slot *s)
{
	unsigned w = atomic_load(&s->word);
	int rc;

	if (!(w & W_INFLIGHT) || (w & (W_DONE | W_ISSUING)))
		return;
	if (!atomic_compare_exchange_strong(&s->word, &w, w + W_PIN))
		return;
	/* pinned: the issuer will not reuse the request until we unpin */
	atomic_store(&s->cancel_requested, 1);
	rc = km_request_cancel(&s->req);
	atomic_fetch_add(&c->cancel_calls, 1);
	if (rc == 0) {
		atomic_store(&s->cancel_ok, 1);
		atomic_fetch_add(&c->cancel_zero, 1);
	} else if (rc != EALREADY) {
		atomic_fetch_add(&c->cancel_bad_rc, 1);
	}
	atomic_fetch_sub(&s->word, W_PIN);
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */
/* ------------------------------------------------------------------ */

static int pick_key(struct ctx *c, uint64_t *rng)
{
	if ((int)(kt_rand(rng) % 100) < c->cfg->hot_pct)
		return 0;
	return (int)(kt_rand(rng) % (uint64_t)c->cfg->nkeys);
}

static bool pct(uint64_t *rng, int p)
{
	return (int)(kt_rand(rng) % 100) < p;
}

static void issue_async(struct worker *w, struct slot *s)
{
	struct ctx *c = w->c;
	const struct config *cfg = c->cfg;
	struct km_lock_options o;
	struct timespec dl;
	struct km_token *tok = NULL;
	int rc;

	memset(&o, 0, sizeof o);
	s->key = pick_key(c, &w->rng);
	s->shared = pct(&w->rng, cfg->shared_pct);
	s->hold = pct(&w->rng, cfg->hold_pct);
	s->port = pct(&w->rng, cfg->port_pct) ? w->port : NULL;
	s->has_deadline = pct(&w->rng, cfg->deadline_pct);
	s->has_token = false;
	if (s->has_deadline) {
		int64_t ns = (int64_t)(kt_rand(&w->rng) % (uint64_t)(cfg->deadline_max_ns + 1));

		dl = kt_deadline_ns(ns);
		s->deadline_ns = (uint64_t)dl.tv_sec * 1000000000u + (uint64_t)dl.tv_nsec;
		o.deadline = &dl;
	}
	if (cfg->recycler && pct(&w->rng, cfg->token_pct)) {
		s->token_idx = (int)(kt_rand(&w->rng) % MAX_TOKENS);
		tok = token_pin(c, s->token_idx);
		s->has_token = tok != NULL;
		o.cancel = tok;
	}
	if (s->shared)
		o.flags |= KM_SHARED;
	if (pct(&w->rng, cfg->try_pct))
		o.flags |= KM_TRY;
	atomic_store(&s->ready_calls, 0);
	atomic_store(&s->cancel_requested, 0);
	atomic_store(&s->cancel_ok, 0);
	s->status = -1;
	memset(&s->req, 0x5A, sizeof s->req);	/* the library must not read out-fields */
	s->req.ready = s_ready;
	s->req.arg = s;
	s->req.port = s->port;
	atomic_store(&s->word, W_ISSUING);

	rc = km_acquire_async(c->km, c->keys[s->key], c->keylen[s->key], &o, &s->req);
	if (rc == EINPROGRESS) {
		atomic_fetch_add(&c->inprogress, 1);
		atomic_fetch_add(&s->word, W_INFLIGHT - W_ISSUING);	/* DONE may be set already */
		s->phase = P_WAIT;
		return;
	}
	/* answered at once: ready() must never run */
	if (s->has_token)
		token_unpin(c, s->token_idx);
	atomic_store(&s->word, 0);
	if (rc == 0) {
		atomic_fetch_add(&c->immediate_ok, 1);
		if (kt_guard_zero(&s->req.guard))
			atomic_fetch_add(&c->bad_guard, 1);
		occ_enter(c, s->key, s->shared);
		if (s->hold) {
			s->phase = P_HELD;
			s->hold_until = kt_now_ns() + kt_rand(&w->rng) % 50000;
		} else {
			tiny_work(&w->rng);
			occ_exit(c, s->key, s->shared);
			if (km_unlock(&s->req.guard) != 0)
				atomic_fetch_add(&c->unlock_errors, 1);
			s->phase = P_FREE;
		}
		return;
	}
	atomic_fetch_add(&c->immediate_fail, 1);
	if (!kt_guard_zero(&s->req.guard))
		atomic_fetch_add(&c->bad_guard, 1);
	if (!((rc == EBUSY && (o.flags & KM_TRY)) || (rc == ETIMEDOUT && s->has_deadline) ||
	      (rc == ECANCELED && s->has_token) || (rc == EAGAIN && cfg->max_waiters != 0)))
		atomic_fetch_add(&c->bad_status, 1);
	s->phase = P_FREE;
}

/* The request's ready() has run and no canceller uses it: check, recycle. */
static void finish_slot(struct worker *w, struct slot *s)
{
	struct ctx *c = w->c;

	if (atomic_load(&s->cancel_ok) && s->status != ECANCELED)
		atomic_fetch_add(&c->cancel_mismatch, 1);
	if (s->status == 0 && s->hold) {
		s->phase = P_HELD;
		s->hold_until = kt_now_ns() + kt_rand(&w->rng) % 50000;
	} else {
		s->phase = P_FREE;
	}
	atomic_store(&s->word, 0);
}

static void unlock_held(struct worker *w, struct slot *s)
{
	struct ctx *c = w->c;

	/* granted on some thread (ready() or at once), released here */
	occ_exit(c, s->key, s->shared);
	if (km_unlock(&s->req.guard) != 0)
		atomic_fetch_add(&c->unlock_errors, 1);
	s->phase = P_FREE;
}

/* May this worker block without a deadline? Only if it cannot be holding a
 * key someone else waits for: nothing held, and no request in flight that
 * could be granted and then wait for us (hold mode, or our port). */
static bool may_block(struct worker *w)
{
	for (int i = 0; i < SLOTS; i++) {
		struct slot *s = &w->slots[i];

		if (s->phase == P_HELD)
			return false;
		if (s->phase == P_WAIT && (s->hold || s->port != NULL))
			return false;
	}
	return true;
}

static void sync_op(struct worker *w)
{
	struct ctx *c = w->c;
	const struct config *cfg = c->cfg;
	struct km_lock_options o;
	struct km_guard g;
	struct timespec dl;
	int key = pick_key(c, &w->rng), tidx = -1, rc;
	bool shared = pct(&w->rng, cfg->shared_pct);

	memset(&o, 0, sizeof o);
	if (!may_block(w) || pct(&w->rng, 30)) {
		dl = kt_deadline_ns((int64_t)(kt_rand(&w->rng) % (uint64_t)(cfg->deadline_max_ns + 1)));
		o.deadline = &dl;
	}
	if (cfg->recycler && pct(&w->rng, cfg->token_pct)) {
		tidx = (int)(kt_rand(&w->rng) % MAX_TOKENS);
		o.cancel = token_pin(c, tidx);
		if (o.cancel == NULL)
			tidx = -1;
	}
	if (shared)
		o.flags |= KM_SHARED;
	kt_poison(&g);
	rc = km_acquire(c->km, c->keys[key], c->keylen[key], &o, &g);
	if (rc == 0) {
		atomic_fetch_add(&c->sync_ok, 1);
		occ_enter(c, key, shared);
		tiny_work(&w->rng);
		occ_exit(c, key, shared);
		if (km_unlock(&g) != 0)
			atomic_fetch_add(&c->unlock_errors, 1);
	} else {
		atomic_fetch_add(&c->sync_fail, 1);
		if (!kt_guard_zero(&g))
			atomic_fetch_add(&c->bad_guard, 1);
		if (!((rc == ETIMEDOUT && o.deadline != NULL) || (rc == ECANCELED && tidx >= 0) ||
		      (rc == EAGAIN && cfg->max_waiters != 0)))
			atomic_fetch_add(&c->bad_status, 1);
		if (rc == ECANCELED && tidx >= 0) {
			uint64_t tc = atomic_load(&c->tokens[tidx].t_cancel), now = kt_now_ns();
			long lat = tc != 0 && now > tc ? (long)(now - tc) : 0;
			long prev = atomic_load(&c->sync_cancel_latency_max_ns);

			while (lat > prev &&
			       !atomic_compare_exchange_weak(&c->sync_cancel_latency_max_ns, &prev, lat))
				;
		}
	}
	if (tidx >= 0)
		token_unpin(c, tidx);
}

static void run_port(struct worker *w)
{
	struct ctx *c = w->c;
	struct pollfd p = { .fd = km_port_fd(w->port), .events = POLLIN };
	bool readable = poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
	int n;

	tl_running_port = w->port;
	n = km_port_run(w->port);
	tl_running_port = NULL;
	/* only this thread drains the port: readable means work was waiting */
	if (n < 0 || (readable && n == 0))
		atomic_fetch_add(&c->port_readable_empty, 1);
	if (n > 0)
		atomic_fetch_add(&c->port_runs, 1);
}

/* One pass over the worker's slots; returns how many are not free. */
static int worker_step(struct worker *w, bool issue, long *steps)
{
	struct ctx *c = w->c;
	const struct config *cfg = c->cfg;
	uint64_t now = kt_now_ns();
	int busy = 0;

	run_port(w);
	for (int i = 0; i < SLOTS; i++) {
		struct slot *s = &w->slots[i];

		switch (s->phase) {
		case P_WAIT: {
			unsigned word = atomic_load(&s->word);

			if ((word & W_DONE) && word < W_PIN)
				finish_slot(w, s);
			else if (issue && cfg->self_cancel_pct && pct(&w->rng, cfg->self_cancel_pct))
				try_cancel_slot(c, s);
			break;
		}
		case P_HELD:
			if (now >= s->hold_until || !issue)
				unlock_held(w, s);
			break;
		default:
			if (issue && pct(&w->rng, 30))
				issue_async(w, s);
			break;
		}
		if (s->phase != P_FREE)
			busy++;
	}
	if (issue && cfg->sync_per_step && ++*steps % cfg->sync_per_step == 0)
		sync_op(w);
	return busy;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct ctx *c = w->c;
	long steps = 0;

	while (!atomic_load(&c->stop)) {
		unsigned e = atomic_load(&c->epoch);
		bool quiet = e & 1;
		int busy = worker_step(w, !quiet, &steps);

		if (quiet) {
			/* nothing issued in this quiet epoch; report once drained */
			if (busy == 0)
				atomic_store(&w->idle_epoch, e);
			else
				kt_sleep_us(20);
		} else if (kt_rand(&w->rng) % 8 == 0) {
			sched_yield();
		}
	}
	/* drain: no new work; keep running the port and releasing holds */
	while (worker_step(w, false, &steps) != 0)
		kt_sleep_us(20);
	/* a last look: nothing may arrive on the port any more */
	run_port(w);
	atomic_fetch_sub(&c->workers_left, 1);
	return NULL;
}

static void *canceller_main(void *arg)
{
	struct ctx *c = arg;
	uint64_t rng = kt_now_ns() | 1;
	int nslots = c->nworkers * SLOTS;

	while (!atomic_load(&c->aux_stop)) {
		int i = (int)(kt_rand(&rng) % (uint64_t)nslots);

		try_cancel_slot(c, &c->workers[i / SLOTS].slots[i % SLOTS]);
		if (kt_rand(&rng) % 4 == 0)
			sched_yield();
	}
	return NULL;
}

struct recycler_arg {
	struct ctx *c;
	bool failed;
	char why[128];
};

static void *recycler_main(void *arg)
{
	struct recycler_arg *ra = arg;
	struct ctx *c = ra->c;
	uint64_t rng = kt_now_ns() | 1;

	while (!atomic_load(&c->aux_stop)) {
		int idx = (int)(kt_rand(&rng) % MAX_TOKENS);

		kt_sleep_us((long)(kt_rand(&rng) % 2000));
		if (!token_retire(c, idx)) {
			ra->failed = true;
			snprintf(ra->why, sizeof ra->why, "token %d: users never let go", idx);
			return NULL;
		}
		if (token_fresh(c, idx, ra->why, sizeof ra->why) != 0) {
			ra->failed = true;
			return NULL;
		}
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Diagnostics for the watchdog                                        */
/* ------------------------------------------------------------------ */

static int dump_key(const void *key, size_t len, unsigned holders, unsigned waiters,
		    int shared, void *arg)
{
	(void)arg;
	fprintf(stderr, "  key %.*s: holders %u waiters %u shared %d\n", (int)len,
		(const char *)key, holders, waiters, shared);
	return 0;
}

static void dump_stuck(struct ctx *c)
{
	struct km_stats st = kt_stats(c->km);

	fprintf(stderr, "[%s] WATCHDOG: not finished; keys %zu holders %zu waiters %zu\n",
		c->cfg->name, st.keys, st.holders, st.waiters);
	km_query(c->km, dump_key, NULL);
	for (int i = 0; i < c->nworkers; i++) {
		for (int j = 0; j < SLOTS; j++) {
			struct slot *s = &c->workers[i].slots[j];

			if (s->phase == P_FREE)
				continue;
			fprintf(stderr,
				"  worker %d slot %d: phase %d key %d word %#x calls %d deadline %d "
				"token %d port %d hold %d shared %d cancel_req %d\n",
				i, j, s->phase, s->key, atomic_load(&s->word),
				atomic_load(&s->ready_calls), s->has_deadline, s->has_token,
				s->port != NULL, s->hold, s->shared, atomic_load(&s->cancel_requested));
		}
	}
}

struct busy_keys {
	int keys, holders, waiters;
};

static int count_worker_key(const void *key, size_t len, unsigned holders, unsigned waiters,
			    int shared, void *arg)
{
	struct busy_keys *b = arg;

	(void)shared;
	if (len >= 4 && memcmp(key, "key-", 4) == 0) {
		b->keys++;
		b->holders += (int)holders;
		b->waiters += (int)waiters;
	}
	return 0;
}

/*
 * A quiet point: no worker issues anything new; every request in flight
 * must complete and every key come free within the watchdog. A lost wake-up
 * that the traffic would otherwise paper over (the next barger or release
 * dispatching the forgotten waiter) shows here. Returns false on timeout.
 */
static bool quiet_point(struct ctx *c, long timeout_ms, char *why, size_t whylen)
{
	unsigned e = atomic_fetch_add(&c->epoch, 1) + 1;	/* odd: quiet */
	uint64_t end = kt_now_ns() + (uint64_t)timeout_ms * 1000000u;
	struct busy_keys b;

	for (;;) {
		int idle = 0;

		for (int i = 0; i < c->nworkers; i++)
			idle += atomic_load(&c->workers[i].idle_epoch) == e;
		if (idle == c->nworkers)
			break;
		if (kt_now_ns() > end) {
			snprintf(why, whylen, "%d of %d workers still have requests in flight",
				 c->nworkers - idle, c->nworkers);
			return false;
		}
		kt_sleep_us(200);
	}
	/* drained: the worker keys are free and unawaited (exact: no worker
	 * is inside a km_ call on them now) */
	memset(&b, 0, sizeof b);
	km_query(c->km, count_worker_key, &b);
	if (b.keys != 0 || b.holders != 0 || b.waiters != 0) {
		snprintf(why, whylen, "quiet, yet %d worker keys with %d holders and %d waiters",
			 b.keys, b.holders, b.waiters);
		return false;
	}
	atomic_fetch_add(&c->epoch, 1);				/* even: busy again */
	atomic_fetch_add(&c->quiet_points, 1);
	return true;
}

/* ------------------------------------------------------------------ */
/* One case                                                            */
/* ------------------------------------------------------------------ */

static void run_case(const struct config *cfg)
{
	struct ctx *c = calloc(1, sizeof *c);
	struct km_options opt;
	pthread_t cancellers[4], recycler;
	struct recycler_arg ra;
	long ms = kt_env_long("KM_STRESS_MS", 300);
	uint64_t end, t0 = kt_now_ns();
	char why[128];

	cr_assert_not_null(c);
	cr_assert_leq(cfg->nkeys, MAX_KEYS);
	cr_assert_leq(cfg->cancellers, 4);
	c->cfg = cfg;
	memset(&opt, 0, sizeof opt);
	opt.flags = cfg->table_flags;
	opt.max_holders = cfg->max_holders;
	opt.max_waiters = cfg->max_waiters;
	cr_assert_eq(km_create(&c->km, &opt), 0);
	c->anchor_holds = cfg->max_holders > 1 ? cfg->max_holders : 1;
	cr_assert_leq(c->anchor_holds, 8);
	for (int k = 0; k < cfg->nkeys; k++) {
		snprintf(c->keys[k], sizeof c->keys[k], "key-%d", k);
		c->keylen[k] = strlen(c->keys[k]);
	}
	for (int i = 0; i < MAX_TOKENS; i++) {
		pthread_mutex_init(&c->tokens[i].m, NULL);
		if (cfg->recycler) {
			char key[16];

			snprintf(key, sizeof key, "anchor-%d", i);
			for (unsigned h = 0; h < c->anchor_holds; h++)
				cr_assert_eq(km_lock(c->km, key, strlen(key), &c->anchor_guard[i][h]), 0);
			cr_assert_eq(token_fresh(c, i, why, sizeof why), 0, "%s", why);
		}
	}
	c->nworkers = cfg->workers;
	c->workers = calloc((size_t)cfg->workers, sizeof *c->workers);
	cr_assert_not_null(c->workers);
	atomic_store(&c->workers_left, cfg->workers);
	for (int i = 0; i < cfg->workers; i++) {
		struct worker *w = &c->workers[i];

		w->c = c;
		w->id = i;
		w->rng = (kt_now_ns() ^ ((uint64_t)i * 0x9E3779B97F4A7C15u)) | 1;
		cr_assert_eq(km_port_create(&w->port), 0);
		for (int j = 0; j < SLOTS; j++) {
			w->slots[j].c = c;
			w->slots[j].w = w;
		}
	}
	for (int i = 0; i < cfg->workers; i++)
		cr_assert_eq(pthread_create(&c->workers[i].th, NULL, worker_main, &c->workers[i]), 0);
	for (int i = 0; i < cfg->cancellers; i++)
		cr_assert_eq(pthread_create(&cancellers[i], NULL, canceller_main, c), 0);
	memset(&ra, 0, sizeof ra);
	ra.c = c;
	if (cfg->recycler)
		cr_assert_eq(pthread_create(&recycler, NULL, recycler_main, &ra), 0);

	/* run, with a quiet point every 50 ms */
	while (kt_now_ns() < t0 + (uint64_t)ms * 1000000u) {
		uint64_t left = t0 + (uint64_t)ms * 1000000u - kt_now_ns();

		kt_sleep_us((long)(left < 50000000u ? left / 1000 : 50000));
		if (!quiet_point(c, 10000, why, sizeof why)) {
			dump_stuck(c);
			cr_assert_fail("[%s] lost wake-up at a quiet point: %s", cfg->name, why);
		}
	}
	atomic_store(&c->stop, 1);
	/* watchdog: everything in flight must finish within a few seconds */
	end = kt_now_ns() + 10000000000u;
	while (atomic_load(&c->workers_left) > 0) {
		if (kt_now_ns() > end) {
			dump_stuck(c);
			cr_assert_fail("[%s] lost wake-up: %d workers still waiting 10 s after the run",
				       cfg->name, atomic_load(&c->workers_left));
		}
		kt_sleep_us(1000);
	}
	atomic_store(&c->aux_stop, 1);
	for (int i = 0; i < cfg->workers; i++)
		cr_assert_eq(pthread_join(c->workers[i].th, NULL), 0);
	for (int i = 0; i < cfg->cancellers; i++)
		cr_assert_eq(pthread_join(cancellers[i], NULL), 0);
	if (cfg->recycler) {
		cr_assert_eq(pthread_join(recycler, NULL), 0);
		cr_assert(!ra.failed, "[%s] recycler: %s", cfg->name, ra.why);
		for (int i = 0; i < MAX_TOKENS; i++) {
			cr_assert(token_retire(c, i), "[%s] token %d never released", cfg->name, i);
			for (unsigned h = 0; h < c->anchor_holds; h++)
				cr_assert_eq(km_unlock(&c->anchor_guard[i][h]), 0);
		}
	}

	fprintf(stderr,
		"[%s] %.0f ms: async %ld in progress (%ld granted, %ld timed out, %ld cancelled), "
		"%ld at once ok, %ld at once failed; sync %ld ok, %ld failed; cancels %ld (%ld took); "
		"port runs %ld; token recycles %ld (destroy EBUSY %ld); max sync cancel latency %ld us; "
		"%ld quiet points\n",
		cfg->name, (double)(kt_now_ns() - t0) / 1e6, atomic_load(&c->inprogress),
		atomic_load(&c->granted_async), atomic_load(&c->timedout_async),
		atomic_load(&c->cancelled_async), atomic_load(&c->immediate_ok),
		atomic_load(&c->immediate_fail), atomic_load(&c->sync_ok), atomic_load(&c->sync_fail),
		atomic_load(&c->cancel_calls), atomic_load(&c->cancel_zero), atomic_load(&c->port_runs),
		atomic_load(&c->token_recycles), atomic_load(&c->token_destroy_busy),
		atomic_load(&c->sync_cancel_latency_max_ns) / 1000, atomic_load(&c->quiet_points));

	/* exactly one ready() per EINPROGRESS */
	cr_assert_eq(atomic_load(&c->double_ready), 0, "[%s] ready() ran twice for %ld requests",
		     cfg->name, atomic_load(&c->double_ready));
	cr_assert_eq(atomic_load(&c->readies), atomic_load(&c->inprogress),
		     "[%s] %ld EINPROGRESS but %ld ready() calls", cfg->name,
		     atomic_load(&c->inprogress), atomic_load(&c->readies));
	cr_assert_eq(atomic_load(&c->excl_violations), 0, "[%s] exclusion broken %ld times",
		     cfg->name, atomic_load(&c->excl_violations));
	cr_assert_eq(atomic_load(&c->early_timeouts), 0, "[%s] %ld ETIMEDOUT before the deadline",
		     cfg->name, atomic_load(&c->early_timeouts));
	cr_assert_eq(atomic_load(&c->bad_status), 0, "[%s] %ld outcomes nobody asked for",
		     cfg->name, atomic_load(&c->bad_status));
	cr_assert_eq(atomic_load(&c->bad_guard), 0, "[%s] %ld guards wrong for their outcome",
		     cfg->name, atomic_load(&c->bad_guard));
	cr_assert_eq(atomic_load(&c->cancel_mismatch), 0,
		     "[%s] km_request_cancel returned 0 but ready() got another status %ld times",
		     cfg->name, atomic_load(&c->cancel_mismatch));
	cr_assert_eq(atomic_load(&c->cancel_bad_rc), 0, "[%s] km_request_cancel returned garbage",
		     cfg->name);
	cr_assert_eq(atomic_load(&c->wrong_port_thread), 0,
		     "[%s] %ld port completions ran outside their port's km_port_run", cfg->name,
		     atomic_load(&c->wrong_port_thread));
	cr_assert_eq(atomic_load(&c->port_readable_empty), 0,
		     "[%s] port fd readable but km_port_run ran nothing (%ld)", cfg->name,
		     atomic_load(&c->port_readable_empty));
	cr_assert_eq(atomic_load(&c->unlock_errors), 0, "[%s] km_unlock failed %ld times",
		     cfg->name, atomic_load(&c->unlock_errors));
	cr_assert_eq(atomic_load(&c->token_destroy_bad), 0,
		     "[%s] km_token_destroy wrong %ld times (0 while in use, or EBUSY once unused)",
		     cfg->name, atomic_load(&c->token_destroy_bad));
	cr_assert_eq(atomic_load(&c->anchor_bad), 0,
		     "[%s] km_token_cancel did not complete an anchor request before returning",
		     cfg->name);
	cr_assert_lt(atomic_load(&c->sync_cancel_latency_max_ns), 2000000000L,
		     "[%s] a cancelled sync waiter took %ld ms to return", cfg->name,
		     atomic_load(&c->sync_cancel_latency_max_ns) / 1000000);
	cr_assert_gt(atomic_load(&c->inprogress), 0, "[%s] nothing ever waited", cfg->name);

	/* nothing left: no key held by a cancelled or timed-out request */
	for (int k = 0; k < cfg->nkeys; k++)
		cr_assert_eq(atomic_load(&c->occ[k]), 0, "[%s] key %d occupancy %d at the end",
			     cfg->name, k, atomic_load(&c->occ[k]));
	struct km_stats st = kt_stats(c->km);
	cr_assert_eq(st.keys, 0, "[%s] keys left: %zu", cfg->name, st.keys);
	cr_assert_eq(st.holders, 0, "[%s] holders left: %zu", cfg->name, st.holders);
	cr_assert_eq(st.waiters, 0, "[%s] waiters left: %zu", cfg->name, st.waiters);
	for (int k = 0; k < cfg->nkeys; k++) {
		struct km_guard g;

		cr_assert_eq(km_trylock(c->km, c->keys[k], c->keylen[k], &g), 0,
			     "[%s] key %d still held", cfg->name, k);
		cr_assert_eq(km_unlock(&g), 0);
	}
	for (int i = 0; i < cfg->workers; i++)
		cr_assert_eq(km_port_destroy(c->workers[i].port), 0, "[%s] port %d still busy",
			     cfg->name, i);
	cr_assert_eq(km_destroy(c->km), 0);
	for (int i = 0; i < MAX_TOKENS; i++)
		pthread_mutex_destroy(&c->tokens[i].m);
	free(c->workers);
	free(c);
}

/* ------------------------------------------------------------------ */
/* The cases                                                           */
/* ------------------------------------------------------------------ */

/* Everything at once: ports, deadlines, tokens, cancels, sync waiters. */
Test(async_stress, mixed)
{
	static const struct config cfg = {
		.name = "mixed", .nkeys = 4, .hot_pct = 50, .workers = 6, .cancellers = 1,
		.recycler = true, .port_pct = 50, .deadline_pct = 30, .deadline_max_ns = 200000,
		.token_pct = 30, .try_pct = 5, .hold_pct = 30, .sync_per_step = 3,
		.self_cancel_pct = 2,
	};
	run_case(&cfg);
}

Test(async_stress, mixed_fifo)
{
	static const struct config cfg = {
		.name = "mixed_fifo", .table_flags = KM_FIFO, .nkeys = 4, .hot_pct = 50,
		.workers = 6, .cancellers = 1, .recycler = true, .port_pct = 50,
		.deadline_pct = 30, .deadline_max_ns = 200000, .token_pct = 30, .try_pct = 5,
		.hold_pct = 30, .sync_per_step = 3, .self_cancel_pct = 2,
	};
	run_case(&cfg);
}

/* Deadlines of 0-200 us racing grants on two hot keys. */
Test(async_stress, timeout_vs_grant)
{
	static const struct config cfg = {
		.name = "timeout_vs_grant", .nkeys = 2, .hot_pct = 70, .workers = 6,
		.port_pct = 30, .deadline_pct = 90, .deadline_max_ns = 200000, .hold_pct = 20,
		.sync_per_step = 4,
	};
	run_case(&cfg);
}

/* km_request_cancel from other threads racing grants and unlocks on one key. */
Test(async_stress, cancel_vs_grant_vs_unlock)
{
	static const struct config cfg = {
		.name = "cancel_vs_grant", .nkeys = 1, .hot_pct = 100, .workers = 5,
		.cancellers = 3, .port_pct = 30, .hold_pct = 40, .sync_per_step = 6,
		.self_cancel_pct = 10, .deadline_max_ns = 100000,
	};
	run_case(&cfg);
}

/* Token cancel and km_token_destroy racing waits that use the tokens. */
Test(async_stress, token_cancel_and_destroy)
{
	static const struct config cfg = {
		.name = "tokens", .nkeys = 2, .hot_pct = 60, .workers = 6, .recycler = true,
		.port_pct = 40, .token_pct = 80, .hold_pct = 30, .sync_per_step = 2,
		.deadline_max_ns = 200000,
	};
	run_case(&cfg);
}

/* One hot key: many async requests mixed with blocking sync waiters. */
Test(async_stress, hot_key_async_and_sync)
{
	static const struct config cfg = {
		.name = "hot_key", .nkeys = 1, .hot_pct = 100, .workers = 8, .port_pct = 30,
		.hold_pct = 10, .sync_per_step = 1, .deadline_max_ns = 200000,
	};
	run_case(&cfg);
}

Test(async_stress, hot_key_fifo)
{
	static const struct config cfg = {
		.name = "hot_key_fifo", .table_flags = KM_FIFO, .nkeys = 1, .hot_pct = 100,
		.workers = 8, .port_pct = 30, .hold_pct = 10, .sync_per_step = 1,
		.deadline_max_ns = 200000,
	};
	run_case(&cfg);
}

/* max_holders = 3 (keyed semaphore), with max_waiters = 6 (EAGAIN). */
Test(async_stress, semaphore_and_max_waiters)
{
	static const struct config cfg = {
		.name = "semaphore", .max_holders = 3, .max_waiters = 6, .nkeys = 2, .hot_pct = 80,
		.workers = 6, .cancellers = 1, .recycler = true, .port_pct = 40,
		.deadline_pct = 30, .deadline_max_ns = 200000, .token_pct = 20, .hold_pct = 40,
		.sync_per_step = 3, .self_cancel_pct = 2,
	};
	run_case(&cfg);
}

/* Shared and exclusive requests, sync and async. */
Test(async_stress, shared_and_exclusive)
{
	static const struct config cfg = {
		.name = "shared", .nkeys = 2, .hot_pct = 70, .workers = 6, .cancellers = 1,
		.recycler = true, .port_pct = 40, .deadline_pct = 30, .deadline_max_ns = 200000,
		.token_pct = 20, .shared_pct = 60, .hold_pct = 30, .sync_per_step = 3,
		.self_cancel_pct = 2,
	};
	run_case(&cfg);
}

/* Many keys that come and go: entries die and are born under async traffic. */
Test(async_stress, many_keys_churn)
{
	static const struct config cfg = {
		.name = "churn", .nkeys = 16, .hot_pct = 0, .workers = 6, .cancellers = 1,
		.port_pct = 40, .deadline_pct = 30, .deadline_max_ns = 200000, .hold_pct = 30,
		.sync_per_step = 2, .self_cancel_pct = 2,
	};
	run_case(&cfg);
}
