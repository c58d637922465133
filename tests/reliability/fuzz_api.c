/*
 * libFuzzer target: the input bytes are a program of API calls, run on one
 * thread and checked, call by call, against a sequential model of the
 * contract (who holds what, who waits in which order, which return codes
 * are allowed, which ready() callbacks run with which status, what
 * km_stats and km_query report).
 *
 * Build (clang): -fsanitize=fuzzer,address,undefined; the meson build does
 * it when the compiler is clang (target fuzz_api). Without libFuzzer the
 * same file builds with -DKM_FUZZ_STANDALONE into a replay program that
 * runs every file named on its command line (or in a directory): the
 * corpus in tests/reliability/corpus/ is a regression test in every build.
 *
 * Input: byte 0 and 1 choose the table (max_holders 1/2/3, max_waiters,
 * KM_FIFO, KM_RECURSIVE or KM_ERRORCHECK); then each operation is an
 * opcode byte followed by its argument bytes (missing bytes read as 0).
 * Nothing ever blocks: sync acquires are KM_TRY, or carry an already
 * passed deadline, or a cancelled token, or are plain km_lock only when the
 * model says the key can be taken at once. Async requests never carry a
 * future deadline (the timer thread would race with the model).
 *
 * Where the contract leaves a choice the model accepts every allowed
 * outcome (km_acquire_all's error code when several keys would fail, and
 * the counters that depend on the order it takes keys in).
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keymutex.h"

#define NKEYS 8
#define NG 16		/* guard slots */
#define NR 8		/* async request slots */
#define NT 4		/* tokens */
#define NOWN 3		/* owners: the thread, &own_a, &own_b */

/* ------------------------------------------------------------------ */
/* Failure                                                            */
/* ------------------------------------------------------------------ */

static unsigned opno;
static int trace = -1;		/* KM_FUZZ_TRACE=1: print each call */

#define TRACE(...) do { if (trace > 0) fprintf(stderr, __VA_ARGS__); } while (0)

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "fuzz_api: contract violation at operation %u: ", opno);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

#define EXPECT(cond, ...) do { if (!(cond)) die(__VA_ARGS__); } while (0)

/* ------------------------------------------------------------------ */
/* Keys, owners                                                       */
/* ------------------------------------------------------------------ */

static unsigned char keybuf[NKEYS][200];
static const size_t keylen[NKEYS] = { 0, 1, 2, 16, 17, 64, 65, 200 };
static char own_a, own_b;
static const void *const owners[NOWN] = { NULL, &own_a, &own_b };

static void init_keys(void)
{
	for (int k = 0; k < NKEYS; k++) {
		memset(keybuf[k], 'a' + k, sizeof keybuf[k]);
		keybuf[k][0] = (unsigned char)k;
	}
}

static const void *kptr(int k)
{
	return keylen[k] ? keybuf[k] : NULL;
}

/* ------------------------------------------------------------------ */
/* The model                                                          */
/* ------------------------------------------------------------------ */

enum rstate { R_IDLE, R_WAIT, R_PORTQ, R_HOLD };

struct mkey {
	unsigned holders;
	bool excl;		/* an exclusive hold (max_holders == 1) */
	int owner;		/* owner index of the exclusive holder, -1 none (owner tables) */
	unsigned recursion;
	int q[NR];		/* waiting request slots, in order */
	unsigned nq;
};

#define OWN_NONE (-2)	/* a hold without an owner: any thread may release it */

struct mguard {
	bool used;
	int key;
	bool shared;
	int owner;
};

struct req {
	struct km_request r;	/* first */
	enum rstate st;
	int key;
	bool shared;
	bool port;
	bool auto_unlock;	/* ready() unlocks at once */
	int tok;		/* -1 none */
	int owner;		/* the owner it names (index into owners) */
	int hold_owner;		/* its hold's owner: owner, or OWN_NONE (owner table,
				   no explicit owner: the hold is the request's) */
	int status;		/* pending port completion: its status */
	unsigned ready_calls;
};

struct mtoken {
	struct km_token *t;	/* NULL: slot empty */
	bool cancelled;
	int reg[NR];		/* registered waits, newest first */
	unsigned nreg;
};

static struct {
	struct km *km;
	struct km_options o;
	bool owner_tab;
	struct mkey k[NKEYS];
	struct mguard g[NG];
	struct km_guard kg[NG];
	struct req r[NR];
	struct mtoken t[NT];
	struct km **cached;	/* where this configuration's table is kept */
	struct km_port *port;
	unsigned port_pending;	/* waiting or completed-not-run port requests */
	/* expected counters, as ranges */
	uint64_t acq_lo, acq_hi, to_lo, to_hi, can, rej;
	/* ready() calls expected during the current call: (slot, status) */
	int exp_slot[64], exp_status[64];
	unsigned nexp;
	int got_slot[64], got_status[64];
	unsigned ngot;
} M;

static bool compatible(const struct mkey *k, bool shared)
{
	if (M.o.max_holders > 1)
		return k->holders < M.o.max_holders;
	if (shared)
		return !k->excl;
	return k->holders == 0;
}

/* A newcomer may take the key now (km_may_barge; no sync waiter ever
 * exists here, so HANDOFF is never set). */
static bool may_barge(const struct mkey *k, bool shared)
{
	if (!compatible(k, shared))
		return false;
	if (k->nq == 0)
		return true;
	if (shared || (M.o.flags & KM_FIFO))
		return false;
	return true;
}

static void take(struct mkey *k, bool shared, int owner)
{
	k->holders++;
	if (M.o.max_holders == 1 && !shared) {
		k->excl = true;
		if (M.owner_tab) {
			k->owner = owner;
			k->recursion = 0;
		}
	}
}

static void expect_ready(int slot, int status)
{
	if (M.nexp < 64) {
		M.exp_slot[M.nexp] = slot;
		M.exp_status[M.nexp] = status;
		M.nexp++;
	}
}

static void m_release(int key);
static void m_unlock_hold(int key, bool shared);

static void tok_unregister(int slot)
{
	struct req *q = &M.r[slot];

	if (q->tok < 0)
		return;
	struct mtoken *t = &M.t[q->tok];

	for (unsigned i = 0; i < t->nreg; i++)
		if (t->reg[i] == slot) {
			memmove(&t->reg[i], &t->reg[i + 1], (t->nreg - i - 1) * sizeof t->reg[0]);
			t->nreg--;
			break;
		}
}

/* A waiting request completes (it already left the queue). */
static void m_complete(int slot, int status)
{
	struct req *q = &M.r[slot];

	tok_unregister(slot);
	if (status == 0) {
		M.acq_lo++;
		M.acq_hi++;
	} else if (status == ECANCELED) {
		M.can++;
	}
	if (q->port) {
		q->st = R_PORTQ;
		q->status = status;
		return;		/* ready() runs in km_port_run */
	}
	expect_ready(slot, status);
	if (status == 0 && q->auto_unlock) {
		q->st = R_IDLE;
		m_unlock_hold(q->key, q->shared);
	} else {
		q->st = status == 0 ? R_HOLD : R_IDLE;
	}
}

static void m_dispatch(int key)
{
	struct mkey *k = &M.k[key];

	while (k->nq > 0) {
		int slot = k->q[0];
		struct req *q = &M.r[slot];

		if (!compatible(k, q->shared))
			return;
		take(k, q->shared, q->hold_owner);
		memmove(&k->q[0], &k->q[1], (k->nq - 1) * sizeof k->q[0]);
		k->nq--;
		m_complete(slot, 0);
	}
}

static void m_release(int key)
{
	struct mkey *k = &M.k[key];

	if (k->holders == 0)
		die("model: release of a free key");
	k->holders--;
	if (k->holders == 0) {
		k->excl = false;
		k->owner = -1;
	}
	m_dispatch(key);
}

/* Unlock of an exclusive/shared hold by an owner-aware path. */
static void m_unlock_hold(int key, bool shared)
{
	struct mkey *k = &M.k[key];

	if (M.owner_tab && !shared && k->recursion > 0) {
		k->recursion--;
		return;
	}
	if (M.owner_tab && !shared)
		k->owner = -1;
	m_release(key);
}

static void m_leave(int slot)	/* a waiting request leaves its queue */
{
	struct req *q = &M.r[slot];
	struct mkey *k = &M.k[q->key];

	for (unsigned i = 0; i < k->nq; i++)
		if (k->q[i] == slot) {
			memmove(&k->q[i], &k->q[i + 1], (k->nq - i - 1) * sizeof k->q[0]);
			k->nq--;
			break;
		}
	m_dispatch(q->key);
}

/* ------------------------------------------------------------------ */
/* ready()                                                            */
/* ------------------------------------------------------------------ */

static void ready(struct km_request *r, int status)
{
	struct req *q = (struct req *)(void *)r;
	int slot = (int)(q - M.r);

	q->ready_calls++;
	if (M.ngot < 64) {
		M.got_slot[M.ngot] = slot;
		M.got_status[M.ngot] = status;
		M.ngot++;
	}
	if (status == 0 && q->auto_unlock) {
		int rc = km_unlock_owner(&r->guard, owners[q->owner]);

		EXPECT(rc == 0, "km_unlock in ready() of request %d: %d", slot, rc);
	}
}

static void begin_call(void)
{
	M.nexp = 0;
	M.ngot = 0;
}

/* The ready() calls seen during the call equal the expected ones (as
 * multisets: the order among independent completions is not specified). */
static void end_call(const char *what)
{
	EXPECT(M.ngot == M.nexp, "%s: %u ready() calls, expected %u", what, M.ngot, M.nexp);
	for (unsigned i = 0; i < M.nexp; i++) {
		bool found = false;

		for (unsigned j = 0; j < M.ngot; j++)
			if (M.got_slot[j] == M.exp_slot[i] && M.got_status[j] == M.exp_status[i]) {
				M.got_slot[j] = -1;
				found = true;
				break;
			}
		EXPECT(found, "%s: ready(request %d, %d) did not run", what, M.exp_slot[i],
		       M.exp_status[i]);
	}
}

/* ------------------------------------------------------------------ */
/* Checks of the whole state                                          */
/* ------------------------------------------------------------------ */

struct qctx {
	unsigned seen[NKEYS];
	unsigned holders[NKEYS], waiters[NKEYS];
	int shared[NKEYS];
};

static int qvisit(const void *key, size_t len, unsigned holders, unsigned waiters, int shared,
		  void *arg)
{
	struct qctx *c = arg;

	for (int k = 0; k < NKEYS; k++)
		if (keylen[k] == len && (len == 0 || memcmp(keybuf[k], key, len) == 0)) {
			c->seen[k]++;
			c->holders[k] = holders;
			c->waiters[k] = waiters;
			c->shared[k] = shared;
			return 0;
		}
	die("km_query visited an unknown key of length %zu", len);
}

static void check_state(void)
{
	struct km_stats st;
	struct qctx c;
	size_t keys = 0, holders = 0, waiters = 0;

	memset(&st, 0xA5, sizeof st);
	EXPECT(km_stats(M.km, &st) == 0, "km_stats failed");
	if (trace > 0) {
		fprintf(stderr, "   model:");
		for (int k = 0; k < NKEYS; k++)
			if (M.k[k].holders || M.k[k].nq)
				fprintf(stderr, " k%d h%u%s q%u", k, M.k[k].holders,
					M.k[k].excl ? "x" : "", M.k[k].nq);
		fprintf(stderr, " | lib keys %zu holders %zu waiters %zu\n", st.keys, st.holders,
			st.waiters);
	}
	for (int k = 0; k < NKEYS; k++) {
		if (M.k[k].holders || M.k[k].nq)
			keys++;
		holders += M.k[k].holders;
		waiters += M.k[k].nq;
	}
	EXPECT(st.keys == keys && st.holders == holders && st.waiters == waiters,
	       "km_stats keys/holders/waiters %zu/%zu/%zu, model %zu/%zu/%zu", st.keys, st.holders,
	       st.waiters, keys, holders, waiters);
	EXPECT(st.acquired >= M.acq_lo && st.acquired <= M.acq_hi,
	       "km_stats acquired %llu, model [%llu, %llu]", (unsigned long long)st.acquired,
	       (unsigned long long)M.acq_lo, (unsigned long long)M.acq_hi);
	EXPECT(st.timeouts >= M.to_lo && st.timeouts <= M.to_hi,
	       "km_stats timeouts %llu, model [%llu, %llu]", (unsigned long long)st.timeouts,
	       (unsigned long long)M.to_lo, (unsigned long long)M.to_hi);
	EXPECT(st.cancels == M.can && st.rejected == M.rej,
	       "km_stats cancels/rejected %llu/%llu, model %llu/%llu",
	       (unsigned long long)st.cancels, (unsigned long long)st.rejected,
	       (unsigned long long)M.can, (unsigned long long)M.rej);
	memset(&c, 0, sizeof c);
	EXPECT(km_query(M.km, qvisit, &c) == 0, "km_query failed");
	for (int k = 0; k < NKEYS; k++) {
		bool active = M.k[k].holders || M.k[k].nq;

		EXPECT(c.seen[k] == (active ? 1u : 0u), "km_query visited key %d %u times", k,
		       c.seen[k]);
		if (!active)
			continue;
		EXPECT(c.holders[k] == M.k[k].holders && c.waiters[k] == M.k[k].nq,
		       "km_query key %d: holders %u waiters %u, model %u %u", k, c.holders[k],
		       c.waiters[k], M.k[k].holders, M.k[k].nq);
		bool sh = M.o.max_holders == 1 && M.k[k].holders > 0 && !M.k[k].excl;

		EXPECT(c.shared[k] == sh, "km_query key %d: shared %d, model %d", k, c.shared[k], sh);
	}
}

/* ------------------------------------------------------------------ */
/* The byte program                                                   */
/* ------------------------------------------------------------------ */

struct in {
	const uint8_t *p;
	size_t n, i;
};

static unsigned byte(struct in *in)
{
	return in->i < in->n ? in->p[in->i++] : 0;
}

static struct timespec passed_deadline(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec -= 1;
	return ts;
}

static int free_guard(void)
{
	for (int i = 0; i < NG; i++)
		if (!M.g[i].used)
			return i;
	return -1;
}

static bool zero_guard(const struct km_guard *g)
{
	static const struct km_guard z;

	return memcmp(g, &z, sizeof z) == 0;
}

/* Acquire kinds. */
enum { K_TRY, K_PASSED, K_LOCK, K_TOKEN };

/* What a single-key sync acquire must return, per the model; *inc: it
 * is a recursive re-acquire. */
static int predict(int key, bool shared, int kind, int owner, int tok, bool *recur)
{
	struct mkey *k = &M.k[key];

	*recur = false;
	if (shared && M.o.max_holders > 1)
		return EINVAL;
	if (kind == K_TOKEN && tok >= 0 && M.t[tok].cancelled)
		return ECANCELED;
	if (M.owner_tab && (k->holders || k->nq) && k->owner == owner && k->excl) {
		if (M.o.flags & KM_ERRORCHECK)
			return EDEADLK;
		if (shared)
			return EINVAL;
		*recur = true;
		return 0;
	}
	if (may_barge(k, shared))
		return 0;
	if (kind == K_TRY || kind == K_TOKEN)	/* token acquires carry KM_TRY too */
		return EBUSY;
	if (kind == K_PASSED)
		return ETIMEDOUT;
	return -1;	/* would block */
}

static void op_acquire(struct in *in)
{
	int key = (int)(byte(in) % NKEYS);
	unsigned b = byte(in);
	bool shared = b & 1;
	int kind = (int)((b >> 1) & 3);
	int owner = (int)((b >> 3) % NOWN);
	int tok = (int)((b >> 5) & 3);
	int gi = free_guard();
	bool recur;
	struct km_lock_options o = { 0 };
	struct timespec dl = passed_deadline();
	int rc, want;

	if (gi < 0)
		return;
	if (kind == K_TOKEN && M.t[tok].t == NULL)
		kind = K_TRY;
	want = predict(key, shared, kind, owner, tok, &recur);
	if (want < 0)
		return;		/* km_lock would block: not in a single thread */
	o.flags = (shared ? KM_SHARED : 0) | (kind == K_TRY ? KM_TRY : 0);
	if (kind == K_PASSED)
		o.deadline = &dl;
	if (kind == K_TOKEN) {
		o.cancel = M.t[tok].t;
		o.flags |= KM_TRY;
	}
	o.owner = owners[owner];
	memset(&M.kg[gi], 0xA5, sizeof M.kg[gi]);
	begin_call();
	if (kind == K_LOCK && !shared && owner == 0 && (b & 0x80))
		rc = km_lock(M.km, kptr(key), keylen[key], &M.kg[gi]);
	else if (kind == K_TRY && !shared && owner == 0 && (b & 0x80))
		rc = km_trylock(M.km, kptr(key), keylen[key], &M.kg[gi]);
	else
		rc = km_acquire(M.km, kptr(key), keylen[key], &o, &M.kg[gi]);
	EXPECT(rc == want, "km_acquire(key %d, %s, kind %d, owner %d) = %d, model %d", key,
	       shared ? "shared" : "excl", kind, owner, rc, want);
	TRACE("%u: acquire key %d %s kind %d owner %d tok %d -> guard %d: %d\n", opno, key,
	      shared ? "shared" : "excl", kind, owner, tok, gi, rc);
	end_call("km_acquire");
	if (rc != 0) {
		EXPECT(zero_guard(&M.kg[gi]), "failed km_acquire left the guard set");
		if (rc == ETIMEDOUT) {
			M.to_lo++;
			M.to_hi++;
		} else if (rc == ECANCELED) {
			M.can++;
		}
		return;
	}
	M.acq_lo++;
	M.acq_hi++;
	if (recur)
		M.k[key].recursion++;
	else
		take(&M.k[key], shared, owner);
	M.g[gi] = (struct mguard){ true, key, shared, owner };
}

static void op_unlock(struct in *in)
{
	unsigned b = byte(in);
	int gi = (int)(b % NG);
	int as = (int)((b >> 4) % NOWN);	/* the owner we claim to be */
	/* Owner tables: an exclusive hold is released only by its owner
	 * (KM_ERRORCHECK: a shared one too). */
	bool wrong = M.g[gi].used && M.owner_tab &&
		     ((M.o.flags & KM_ERRORCHECK) || !M.g[gi].shared) && as != M.g[gi].owner;
	int rc;

	begin_call();
	if (!M.g[gi].used) {
		rc = (b & 0x40) ? km_unlock(&M.kg[gi]) : km_unlock_owner(&M.kg[gi], owners[as]);
		EXPECT(rc == EPERM, "unlock of an empty guard returned %d", rc);
		end_call("km_unlock (empty)");
		return;
	}
	if (as == 0 && !wrong)
		rc = km_unlock(&M.kg[gi]);
	else
		rc = km_unlock_owner(&M.kg[gi], owners[as]);
	TRACE("%u: unlock guard %d (key %d %s owner %d) as %d: %d\n", opno, gi, M.g[gi].key,
	      M.g[gi].shared ? "shared" : "excl", M.g[gi].owner, as, rc);
	if (wrong) {
		EXPECT(rc == EPERM, "unlock by another owner returned %d", rc);
		EXPECT(!zero_guard(&M.kg[gi]), "refused unlock changed the guard");
		end_call("km_unlock (wrong owner)");
		return;
	}
	EXPECT(rc == 0, "km_unlock returned %d", rc);
	EXPECT(zero_guard(&M.kg[gi]), "km_unlock did not zero the guard");
	M.g[gi].used = false;
	m_unlock_hold(M.g[gi].key, M.g[gi].shared);
	end_call("km_unlock");
}

static void op_acquire_all(struct in *in)
{
	unsigned n = 1 + byte(in) % 6;
	unsigned b = byte(in);
	bool shared = b & 1;
	int kind = (b >> 1) & 1 ? K_PASSED : K_TRY;
	int owner = (int)((b >> 2) % NOWN);
	bool dup_ok = (b >> 4) & 1;
	struct km_key keys[6];
	int kid[6], gis[6];
	struct km_guard tmp[6];
	struct km_lock_options o = { 0 };
	struct timespec dl = passed_deadline();
	bool dup = false;
	int rc;

	for (unsigned i = 0; i < n; i++) {
		kid[i] = (int)(byte(in) % NKEYS);
		for (unsigned j = 0; j < i; j++)
			if (kid[j] == kid[i])
				dup = true;
		keys[i].ptr = kptr(kid[i]);
		keys[i].len = keylen[kid[i]];
	}
	if (dup && !dup_ok)
		return;
	/* guards */
	unsigned found = 0;

	for (int i = 0; i < NG && found < n; i++)
		if (!M.g[i].used)
			gis[found++] = i;
	if (found < n)
		return;
	o.flags = (shared ? KM_SHARED : 0) | (kind == K_TRY ? KM_TRY : 0);
	if (kind == K_PASSED)
		o.deadline = &dl;
	o.owner = owners[owner];

	/* The possible outcomes: success iff every key can be taken. */
	bool all_ok = true, any_recur = false, upfront = false;
	int codes = 0;		/* bit per possible error */
	unsigned nok_before_max = 0;

	if ((shared && M.o.max_holders > 1) || dup) {
		all_ok = false;
		upfront = true;	/* EINVAL before any key is taken */
		codes = 1 << 0;
	} else {
		for (unsigned i = 0; i < n; i++) {
			bool recur;
			int w = predict(kid[i], shared, kind, owner, -1, &recur);

			if (w == 0) {
				nok_before_max++;
				any_recur |= recur;
				continue;
			}
			all_ok = false;
			codes |= w == EINVAL ? 1 << 0 : w == EDEADLK ? 1 << 1 : w == EBUSY ? 1 << 2
				 : w == ETIMEDOUT ? 1 << 3 : 1 << 4;
		}
	}
	(void)any_recur;
	begin_call();
	rc = km_acquire_all(M.km, keys, n, &o, tmp);
	TRACE("%u: acquire_all %u keys %s %s owner %d: %d (model ok %d codes %#x)\n", opno, n,
	      shared ? "shared" : "excl", kind == K_TRY ? "try" : "passed", owner, rc, all_ok, codes);
	end_call("km_acquire_all");
	if (all_ok) {
		EXPECT(rc == 0, "km_acquire_all of %u keys = %d, model 0", n, rc);
	} else {
		int bit = rc == EINVAL ? 1 << 0 : rc == EDEADLK ? 1 << 1 : rc == EBUSY ? 1 << 2
			  : rc == ETIMEDOUT ? 1 << 3 : 1 << 5;

		EXPECT(rc != 0 && (codes & bit), "km_acquire_all of %u keys = %d, model codes %#x",
		       n, rc, codes);
		for (unsigned i = 0; i < n; i++)
			EXPECT(zero_guard(&tmp[i]), "failed km_acquire_all left guard %u set", i);
		if (!upfront) {
			/* keys taken before the failing one (in the library's
			 * order) were counted, then undone */
			M.acq_hi += nok_before_max;
			if (rc == ETIMEDOUT) {	/* it stops at the first failure */
				M.to_lo++;
				M.to_hi++;
			}
		}
		return;
	}
	for (unsigned i = 0; i < n; i++) {
		bool recur;

		(void)predict(kid[i], shared, kind, owner, -1, &recur);
		if (recur)
			M.k[kid[i]].recursion++;
		else
			take(&M.k[kid[i]], shared, owner);
		M.kg[gis[i]] = tmp[i];
		M.g[gis[i]] = (struct mguard){ true, kid[i], shared, owner };
	}
	M.acq_lo += n;
	M.acq_hi += n;
}

static void op_async(struct in *in)
{
	int slot = (int)(byte(in) % NR);
	int key = (int)(byte(in) % NKEYS);
	unsigned b = byte(in);
	bool shared = b & 1;
	bool use_port = (b >> 1) & 1;
	int tokc = (int)((b >> 2) & 7);	/* 0..3: token, else none */
	int owner = (int)((b >> 5) % NOWN);
	bool try_ = (b >> 7) & 1;
	bool passed = !try_ && (byte(in) & 1);
	struct req *q = &M.r[slot];
	struct km_lock_options o = { 0 };
	struct timespec dl = passed_deadline();
	int tok = tokc < NT && M.t[tokc].t != NULL ? tokc : -1;
	int rc, want;
	bool recur = false;

	if (q->st != R_IDLE)
		return;
	if (use_port && M.port == NULL)
		use_port = false;
	memset(&q->r, 0, sizeof q->r);
	q->r.ready = ready;
	q->r.port = use_port ? M.port : NULL;
	q->key = key;
	q->shared = shared;
	q->port = use_port;
	q->auto_unlock = false;	/* set below for queued requests only */
	q->tok = tok;
	q->owner = owner;
	q->hold_owner = M.owner_tab && owner == 0 ? OWN_NONE : owner;
	q->ready_calls = 0;
	o.flags = (shared ? KM_SHARED : 0) | (try_ ? KM_TRY : 0);
	o.cancel = tok >= 0 ? M.t[tok].t : NULL;
	o.deadline = passed ? &dl : NULL;
	o.owner = owners[owner];

	struct mkey *k = &M.k[key];

	if (shared && M.o.max_holders > 1)
		want = EINVAL;
	else if (tok >= 0 && M.t[tok].cancelled)
		want = ECANCELED;
	else if (M.owner_tab && q->hold_owner >= 0 && (k->holders || k->nq) && k->excl &&
		 k->owner == q->hold_owner)
		want = (M.o.flags & KM_ERRORCHECK) ? EDEADLK : shared ? EINVAL : (recur = true, 0);
	else if (may_barge(k, shared))
		want = 0;
	else if (try_)
		want = EBUSY;
	else if (passed)
		want = ETIMEDOUT;
	else if (M.o.max_waiters && k->nq >= M.o.max_waiters)
		want = EAGAIN;
	else
		want = EINPROGRESS;
	if (want == EINPROGRESS)
		q->auto_unlock = (b >> 6) & 1;
	begin_call();
	rc = km_acquire_async(M.km, kptr(key), keylen[key], &o, &q->r);
	TRACE("%u: async slot %d key %d %s port %d tok %d owner %d try %d passed %d auto %d: %d\n",
	      opno, slot, key, shared ? "shared" : "excl", use_port, tok, owner, try_, passed,
	      q->auto_unlock, rc);
	end_call("km_acquire_async");
	EXPECT(rc == want, "km_acquire_async(key %d, %s, port %d, tok %d, owner %d, try %d, "
	       "passed %d) = %d, model %d", key, shared ? "shared" : "excl", use_port, tok, owner,
	       try_, passed, rc, want);
	EXPECT(q->ready_calls == 0, "ready() ran during km_acquire_async");
	switch (rc) {
	case 0:
		M.acq_lo++;
		M.acq_hi++;
		if (recur)
			k->recursion++;
		else
			take(k, shared, q->hold_owner);
		q->st = R_HOLD;
		break;
	case EINPROGRESS:
		k->q[k->nq++] = slot;
		q->st = R_WAIT;
		if (tok >= 0) {
			struct mtoken *t = &M.t[tok];

			memmove(&t->reg[1], &t->reg[0], t->nreg * sizeof t->reg[0]);
			t->reg[0] = slot;
			t->nreg++;
		}
		if (use_port)
			M.port_pending++;
		break;
	default:
		EXPECT(zero_guard(&q->r.guard), "failed km_acquire_async left the guard set");
		if (rc == ETIMEDOUT) {
			M.to_lo++;
			M.to_hi++;
		} else if (rc == ECANCELED) {
			M.can++;
		} else if (rc == EAGAIN) {
			M.rej++;
		}
		break;
	}
}

static void op_req_unlock(struct in *in)
{
	int slot = (int)(byte(in) % NR);
	struct req *q = &M.r[slot];
	int rc;

	if (q->st != R_HOLD)
		return;
	begin_call();
	rc = km_unlock_owner(&q->r.guard, owners[q->owner]);
	EXPECT(rc == 0, "unlock of request %d's guard: %d", slot, rc);
	TRACE("%u: unlock request %d (key %d): %d\n", opno, slot, q->key, rc);
	q->st = R_IDLE;
	m_unlock_hold(q->key, q->shared);
	end_call("km_unlock(request)");
}

static void op_req_cancel(struct in *in)
{
	int slot = (int)(byte(in) % NR);
	struct req *q = &M.r[slot];
	int rc, want;

	begin_call();
	if (q->st == R_WAIT) {
		want = 0;
		m_leave(slot);
		m_complete(slot, ECANCELED);	/* a port request stays pending until run */
	} else {
		want = EALREADY;
	}
	rc = km_request_cancel(&q->r);
	TRACE("%u: request_cancel %d: %d\n", opno, slot, rc);
	EXPECT(rc == want, "km_request_cancel(%d) = %d, model %d", slot, rc, want);
	end_call("km_request_cancel");
}

static void op_token(struct in *in)
{
	unsigned b = byte(in);
	int ti = (int)(b & 3);
	struct mtoken *t = &M.t[ti];
	int rc;

	switch ((b >> 2) & 3) {
	case 0:		/* create */
		if (t->t != NULL)
			return;
		rc = km_token_create(&t->t);
		EXPECT(rc == 0 && t->t != NULL, "km_token_create: %d", rc);
		t->cancelled = false;
		t->nreg = 0;
		break;
	case 1:		/* cancel */
		if (t->t == NULL)
			return;
		begin_call();
		{
			int snap[NR];
			unsigned n = t->nreg;

			memcpy(snap, t->reg, n * sizeof snap[0]);
			t->cancelled = true;
			for (unsigned i = 0; i < n; i++)
				if (M.r[snap[i]].st == R_WAIT) {
					m_leave(snap[i]);
					m_complete(snap[i], ECANCELED);
				}
		}
		km_token_cancel(t->t);
		TRACE("%u: token_cancel %d\n", opno, ti);
		end_call("km_token_cancel");
		break;
	default:	/* destroy */
		if (t->t == NULL)
			return;
		rc = km_token_destroy(t->t);
		if (t->nreg > 0) {
			EXPECT(rc == EBUSY, "km_token_destroy with %u waits: %d", t->nreg, rc);
		} else {
			EXPECT(rc == 0, "km_token_destroy: %d", rc);
			t->t = NULL;
		}
		break;
	}
}

static void op_port(struct in *in)
{
	unsigned b = byte(in);
	int rc;

	if ((b & 3) != 0) {		/* run */
		if (M.port == NULL)
			return;
		unsigned want = 0;

		begin_call();
		/* every completion queued before the call runs now */
		int order[NR];

		for (int s = 0; s < NR; s++)
			if (M.r[s].st == R_PORTQ)
				order[want++] = s;
		for (unsigned i = 0; i < want; i++) {
			struct req *q = &M.r[order[i]];

			M.port_pending--;
			expect_ready(order[i], q->status);
			if (q->status == 0 && q->auto_unlock) {
				q->st = R_IDLE;
				m_unlock_hold(q->key, q->shared);
			} else {
				q->st = q->status == 0 ? R_HOLD : R_IDLE;
			}
		}
		rc = km_port_run(M.port);
		TRACE("%u: port_run: %d\n", opno, rc);
		EXPECT(rc == (int)want, "km_port_run ran %d, model %u", rc, want);
		end_call("km_port_run");
		/* requests for the port granted during the run wait for the next run */
		return;
	}
	if (M.port == NULL) {
		rc = km_port_create(&M.port);
		EXPECT(rc == 0, "km_port_create: %d", rc);
		M.port_pending = 0;
		return;
	}
	rc = km_port_destroy(M.port);
	if (M.port_pending) {
		EXPECT(rc == EBUSY, "km_port_destroy with %u pending: %d", M.port_pending, rc);
	} else {
		EXPECT(rc == 0, "km_port_destroy: %d", rc);
		M.port = NULL;
	}
}

static void op_invalid(struct in *in)
{
	unsigned b = byte(in);
	struct km_guard g;
	struct km_lock_options o = { 0 };
	struct timespec bad = { 0, 1000000000L };
	int rc;

	memset(&g, 0xA5, sizeof g);
	switch (b % 5) {
	case 0:
		rc = km_lock(M.km, NULL, 3, &g);
		break;
	case 1:
		o.flags = 0x100;
		rc = km_acquire(M.km, "x", 1, &o, &g);
		break;
	case 2:
		o.deadline = &bad;
		rc = km_acquire(M.km, "x", 1, &o, &g);
		break;
	case 3:
		if (M.o.max_holders <= 1)
			return;
		rc = km_lock_shared(M.km, "x", 1, &g);
		break;
	default:
		rc = km_unlock(NULL);
		EXPECT(rc == EINVAL, "km_unlock(NULL) = %d", rc);
		return;
	}
	EXPECT(rc == EINVAL, "invalid call %u returned %d", b % 5, rc);
	EXPECT(zero_guard(&g), "invalid call left the guard set");
}

static void op_destroy(void)
{
	bool busy = false;

	for (int k = 0; k < NKEYS; k++)
		busy |= M.k[k].holders || M.k[k].nq;
	int rc = km_destroy(M.km);

	if (busy) {
		EXPECT(rc == EBUSY, "km_destroy with keys held or awaited: %d", rc);
		return;
	}
	EXPECT(rc == 0, "km_destroy of an idle table: %d", rc);
	rc = km_create(&M.km, &M.o);
	EXPECT(rc == 0, "km_create: %d", rc);
	*M.cached = M.km;
	M.acq_lo = M.acq_hi = M.to_lo = M.to_hi = M.can = M.rej = 0;
}

/* Release everything, cancel everything, destroy: the table must end empty. */
static void teardown(void)
{
	for (int s = 0; s < NR; s++)
		if (M.r[s].st == R_WAIT) {
			begin_call();
			m_leave(s);
			m_complete(s, ECANCELED);
			EXPECT(km_request_cancel(&M.r[s].r) == 0, "teardown cancel");
			end_call("teardown cancel");
		}
	for (int round = 0; round < 4; round++) {
		if (M.port != NULL) {
			uint8_t run = 1;
			struct in in = { &run, 1, 0 };

			op_port(&in);
		}
		for (int s = 0; s < NR; s++)
			if (M.r[s].st == R_HOLD) {
				uint8_t b = (uint8_t)s;
				struct in in = { &b, 1, 0 };

				op_req_unlock(&in);
			}
		for (int gi = 0; gi < NG; gi++)
			if (M.g[gi].used) {
				uint8_t b = (uint8_t)(gi | (M.g[gi].owner << 4));
				struct in in = { &b, 1, 0 };

				op_unlock(&in);
			}
	}
	check_state();
	for (int k = 0; k < NKEYS; k++)
		EXPECT(!M.k[k].holders && !M.k[k].nq, "model: key %d still busy at teardown", k);
	for (int ti = 0; ti < NT; ti++)
		if (M.t[ti].t != NULL)
			EXPECT(km_token_destroy(M.t[ti].t) == 0, "token destroy at teardown");
	if (M.port != NULL)
		EXPECT(km_port_destroy(M.port) == 0, "port destroy at teardown");
	/* The table is kept for the next input with this configuration (a
	 * km_destroy per input would cost an rcu_barrier each: ~100x slower);
	 * op_destroy exercises km_destroy. KM_FUZZ_DESTROY=1 destroys here. */
	if (getenv("KM_FUZZ_DESTROY") != NULL) {
		EXPECT(km_destroy(M.km) == 0, "km_destroy at teardown");
		*M.cached = NULL;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size, 0 };
	unsigned c0 = byte(&in), c1 = byte(&in);

	if (trace < 0)
		trace = getenv("KM_FUZZ_TRACE") != NULL;

	memset(&M, 0, sizeof M);
	init_keys();
	M.o.max_holders = (c0 & 3) == 3 ? 3 : (c0 & 3) == 2 ? 2 : 1;
	M.o.max_waiters = (c0 >> 2) & 1 ? 2 : 0;
	M.o.flags = (c0 >> 3) & 1 ? KM_FIFO : 0;
	if (M.o.max_holders == 1)
		M.o.flags |= (c0 >> 4) % 3 == 1 ? KM_RECURSIVE : (c0 >> 4) % 3 == 2 ? KM_ERRORCHECK : 0;
	M.o.pool_size = (c1 & 1) ? 4 : 0;
	M.o.shards = (c1 & 2) ? 1 : 0;
	M.o.expected_keys = 16;	/* small: km_stats and km_query walk every bucket */
	M.owner_tab = (M.o.flags & (KM_RECURSIVE | KM_ERRORCHECK)) != 0;
	for (int k = 0; k < NKEYS; k++)
		M.k[k].owner = -1;
	for (int s = 0; s < NR; s++)
		M.r[s].tok = -1;
	{
		/* one table per configuration, created on first use */
		static struct km *tables[4][2][2][3][2][2];
		unsigned mh = M.o.max_holders - 1, own = (M.o.flags & KM_RECURSIVE) ? 1
							 : (M.o.flags & KM_ERRORCHECK) ? 2 : 0;
		struct km_stats st;

		M.cached = &tables[mh][M.o.max_waiters ? 1 : 0][(M.o.flags & KM_FIFO) ? 1 : 0][own]
				  [M.o.pool_size ? 1 : 0][M.o.shards ? 1 : 0];
		if (*M.cached == NULL && km_create(M.cached, &M.o) != 0)
			die("km_create failed");
		M.km = *M.cached;
		EXPECT(km_stats(M.km, &st) == 0, "km_stats");
		M.acq_lo = M.acq_hi = st.acquired;
		M.to_lo = M.to_hi = st.timeouts;
		M.can = st.cancels;
		M.rej = st.rejected;
	}
	for (opno = 0; in.i < in.n && opno < 2000; opno++) {
		switch (byte(&in) % 12) {
		case 0: case 1: case 2: op_acquire(&in); break;
		case 3: case 4: op_unlock(&in); break;
		case 5: op_acquire_all(&in); break;
		case 6: op_async(&in); break;
		case 7: op_req_unlock(&in); break;
		case 8: op_req_cancel(&in); break;
		case 9: op_token(&in); break;
		case 10: op_port(&in); break;
		default: {
			unsigned b = byte(&in);

			if (b & 1)
				op_invalid(&in);
			else if ((b & 0x0e) == 0)
				op_destroy();	/* rare: it waits for a grace period */
			break;
		}
		}
		check_state();
	}
	teardown();
	return 0;
}

#ifdef KM_FUZZ_STANDALONE
/* Replay: run each file (or each file of each directory) given. */
static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (f == NULL) {
		perror(path);
		return 1;
	}
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n > 0 ? (size_t)n : 1);
	if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fclose(f);
		free(buf);
		return 1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	unsigned files = 0;
	int bad = 0;

	for (int i = 1; i < argc; i++) {
		struct stat st;

		if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
			DIR *d = opendir(argv[i]);
			struct dirent *de;

			while (d != NULL && (de = readdir(d)) != NULL) {
				char p[4096];

				if (de->d_name[0] == '.')
					continue;
				snprintf(p, sizeof p, "%s/%s", argv[i], de->d_name);
				bad |= run_file(p);
				files++;
			}
			if (d != NULL)
				closedir(d);
		} else {
			bad |= run_file(argv[i]);
			files++;
		}
	}
	printf("%u inputs replayed, %s\n", files, bad ? "some unreadable" : "no contract violation");
	printf("%u passed, %u failed\n", bad ? 0 : 1, bad ? 1 : 0);
	return bad;
}
#endif
