/*
 * Issue 11: the defects an independent read found and no suite caught, each
 * replayed as a deterministic interleaving through the test-only hooks
 * (lib/testhook.h, -Dtest_hooks=true). Every test here failed on the code
 * before its fix (docs/testing.md, "Issue 11", says how).
 *
 * The hook runs on the library thread that reached a point; what it does is
 * chosen per test through the globals below, and per thread through the
 * thread-local arming flags, so a point reached by an unrelated thread (the
 * reclaimer, a helper) passes through untouched. Assertions run on the test's
 * main thread only (tests/km_test.h).
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>
#include <semaphore.h>

#include "km_test.h"
#include "testhook.h"

/* The test-only entry points (exported by test-hook builds only). */
void km__hook_set(km__hook_fn *fn);
int km__quiesce(struct km *km);
int km__in_read_section(void);

#define LONGKEY_LEN 100		/* > 64 bytes: an exact allocation, freed (not
				   pooled) when reclaimed, so ASan sees a
				   use after free */

static struct km *table(unsigned flags, size_t pool_size)
{
	struct km_options o;
	struct km *t = NULL;

	memset(&o, 0, sizeof o);
	o.flags = flags;
	o.pool_size = pool_size;	/* 1: no idle entries, a key dies on release */
	cr_assert_eq(km_create(&t, &o), 0);
	return t;
}

static void run_thread(void *(*fn)(void *), void *arg)
{
	pthread_t t;

	cr_assert_eq(pthread_create(&t, NULL, fn, arg), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
}

/* What the hook does, per test. */
static struct {
	struct km *km;
	struct km_request *req;
	struct km_token *tok;
	struct km_guard *held;		/* the key's holder, released by the hook */
	const char *key;
	size_t len;
	int token_destroy_rc;
	atomic_int barged;		/* a trylock got the key in the release window */
	atomic_int fired;
	sem_t paused, resume;		/* a thread stopped at a point / may go on */
	int fail_create;		/* RECLAIMER_CREATE: make it fail */
	atomic_int create_calls;
	int nested_depth;		/* POOL_COUNT: nested holds to take */
	struct km_guard *nested;
	int other_unlock_rc;
	struct timespec deadline;	/* the timer case's request deadline */
	atomic_int timer_fired;		/* the timer fired H.req's deadline */
} H;

static __thread int tl_pause_awake;	/* WAITER_AWAKE: stop here once */
static __thread int tl_try_on_dispatch;	/* RELEASE_DISPATCH: trylock the key once */
static __thread int tl_pause_round;	/* RECLAIM_ROUND: stop here once */
static __thread int tl_other_unlocks;	/* NESTED: another thread unlocks H.held */
static __thread int tl_pool_count;	/* POOL_COUNT: move the pool's top once */

static void *unlock_held(void *arg)
{
	(void)arg;
	H.other_unlock_rc = km_unlock(H.held);
	return NULL;
}

/* If this thread is armed (*armed), disarm it, say so, and stop here until
 * the test lets it go on. */
static void pause_once(int *armed)
{
	if (!*armed)
		return;
	*armed = 0;
	sem_post(&H.paused);
	while (sem_wait(&H.resume) != 0)
		;
}

static int hook(int point, void *arg)
{
	switch (point) {
	case KM_HOOK_ASYNC_PREPARED:
		if (arg == H.req && H.tok != NULL)
			km_token_cancel(H.tok);	/* sees PREP: the request checks it itself */
		break;
	case KM_HOOK_ASYNC_LEFT:
		if (arg == H.req && H.tok != NULL) {
			/* The key dies (the request never queued) and its memory
			 * goes back to the allocator; then the token is cancelled
			 * again, which walks the waits still registered. */
			cr_assert_eq(km_unlock(H.held), 0);
			cr_assert_eq(km__quiesce(H.km), 0);
			km_token_cancel(H.tok);
			H.token_destroy_rc = km_token_destroy(H.tok);
			if (H.token_destroy_rc == 0)
				H.tok = NULL;
			atomic_fetch_add(&H.fired, 1);
		}
		break;
	case KM_HOOK_WAITER_AWAKE:
		pause_once(&tl_pause_awake);
		break;
	case KM_HOOK_RELEASE_DISPATCH:
		if (tl_try_on_dispatch) {
			struct km_guard g;

			tl_try_on_dispatch = 0;
			if (km_trylock(H.km, H.key, H.len, &g) == 0) {
				atomic_fetch_add(&H.barged, 1);
				(void)km_unlock(&g);
			}
			atomic_fetch_add(&H.fired, 1);
		}
		break;
	case KM_HOOK_NESTED:
		if (tl_other_unlocks) {
			pthread_t t;

			tl_other_unlocks = 0;
			if (pthread_create(&t, NULL, unlock_held, NULL) == 0)
				pthread_join(t, NULL);
			atomic_fetch_add(&H.fired, 1);
		}
		break;
	case KM_HOOK_RECLAIMER_CREATE:
		atomic_fetch_add(&H.create_calls, 1);
		return H.fail_create;
	case KM_HOOK_RECLAIM_ROUND:
		pause_once(&tl_pause_round);
		break;
	case KM_HOOK_POOL_COUNT:
		if (tl_pool_count) {
			tl_pool_count = 0;
			/* Take the pool's top entry for a new key and nest
			 * holds on it (a KM_RECURSIVE table). */
			for (int i = 0; i < H.nested_depth; i++)
				cr_assert_eq(km_lock(H.km, "nest", 4, &H.nested[i]), 0);
			atomic_fetch_add(&H.fired, 1);
		}
		break;
	default:
		break;
	}
	return 0;
}

static void hook_init(void)
{
	memset(&H, 0, sizeof H);
	cr_assert_eq(sem_init(&H.paused, 0, 0), 0);
	cr_assert_eq(sem_init(&H.resume, 0, 0), 0);
	km__hook_set(hook);
}

static void hook_fini(void)
{
	km__hook_set(NULL);
	sem_destroy(&H.paused);
	sem_destroy(&H.resume);
}

TestSuite(races, .init = hook_init, .fini = hook_fini, .timeout = 120);

static void never_ready(struct km_request *req, int status)
{
	(void)req;
	(void)status;
	cr_assert_fail("ready() ran for a request that failed at once");
}

/* ------------------------------------------------------------------ */
/* Defect 1: an async request that fails before queueing must be out of */
/* its token's and the timer's reach before it leaves its section.      */
/* ------------------------------------------------------------------ */

Test(races, async_failed_request_unregisters_inside_its_section)
{
	char key[LONGKEY_LEN];
	struct km_guard g;
	struct km_request req;
	struct km_lock_options lo;

	memset(key, 'k', sizeof key);
	H.km = table(0, 1);
	cr_assert_eq(km_token_create(&H.tok), 0);
	cr_assert_eq(km_lock(H.km, key, sizeof key, &g), 0);
	H.held = &g;
	memset(&req, 0, sizeof req);
	req.ready = never_ready;
	H.req = &req;
	lo = (struct km_lock_options){ .cancel = H.tok };

	/* PREPARED cancels the token; the request sees it under the qlock and
	 * fails; LEFT (its section is over) frees the key's entry and cancels
	 * again: a canceller that still found the request registered would
	 * take the qlock of freed memory (ASan: heap-use-after-free). */
	cr_assert_eq(km_acquire_async(H.km, key, sizeof key, &lo, &req), ECANCELED);
	cr_assert_eq(atomic_load(&H.fired), 1);
	cr_assert_eq(H.token_destroy_rc, 0,
		     "the failed request was still registered with its token after "
		     "leaving its read-side section (km_token_destroy: %d)",
		     H.token_destroy_rc);
	if (H.tok != NULL)
		cr_assert_eq(km_token_destroy(H.tok), 0);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* The timer's side of defect 1: a request with a deadline that fails
 * (EAGAIN) before queueing; its deadline passes after its entry is freed.
 * A timer that still held it would fire on freed memory (ASan). */
struct queued_async {
	struct km_request req;
	atomic_int calls;
	int status;
};

static void count_ready(struct km_request *req, int status)
{
	struct queued_async *q = req->arg;

	q->status = status;
	atomic_fetch_add(&q->calls, 1);
}

static int timer_hook(int point, void *arg)
{
	if (point == KM_HOOK_TIMER_FIRE && H.req != NULL && arg == (void *)H.req->priv)
		atomic_fetch_add(&H.timer_fired, 1);
	if (point == KM_HOOK_ASYNC_LEFT && arg == H.req) {
		struct queued_async *first = (struct queued_async *)H.nested;

		/* Make the key die: the queued request leaves, the holder
		 * releases; then reclaim it and let the deadline pass. */
		(void)km_request_cancel(&first->req);
		cr_assert_eq(km_unlock(H.held), 0);
		cr_assert_eq(km__quiesce(H.km), 0);
		/* Past the deadline, and time for the timer thread to fire. */
		while (kt_now_ns() < (uint64_t)H.deadline.tv_sec * 1000000000u +
				     (uint64_t)H.deadline.tv_nsec)
			kt_sleep_us(5000);
		kt_sleep_us(50000 * kt_time_scale());
		atomic_fetch_add(&H.fired, 1);
	}
	return 0;
}

Test(races, async_failed_request_leaves_the_timer_inside_its_section)
{
	char key[LONGKEY_LEN];
	struct km_options o;
	struct km_guard g;
	struct queued_async first;
	struct km_request req;
	struct timespec dl;
	struct km_lock_options lo = { 0 };

	memset(key, 'k', sizeof key);
	memset(&o, 0, sizeof o);
	o.max_waiters = 1;
	o.pool_size = 1;
	cr_assert_eq(km_create(&H.km, &o), 0);
	cr_assert_eq(km_lock(H.km, key, sizeof key, &g), 0);
	H.held = &g;
	memset(&first, 0, sizeof first);
	first.req.ready = count_ready;
	first.req.arg = &first;
	cr_assert_eq(km_acquire_async(H.km, key, sizeof key, NULL, &first.req), EINPROGRESS);
	H.nested = (struct km_guard *)(void *)&first;
	memset(&req, 0, sizeof req);
	req.ready = never_ready;
	H.req = &req;
	/* Far enough that it has not passed when the request checks it, even
	 * under valgrind; the hook waits it out. */
	dl = kt_deadline_ms(100 * kt_time_scale());
	H.deadline = dl;
	lo.deadline = &dl;
	km__hook_set(timer_hook);
	cr_assert_eq(km_acquire_async(H.km, key, sizeof key, &lo, &req), EAGAIN);
	cr_assert_eq(atomic_load(&H.fired), 1);
	cr_assert_eq(atomic_load(&H.timer_fired), 0,
		     "the timer fired the deadline of a request that had failed and left "
		     "its read-side section (its entry was freed by then)");
	cr_assert_eq(atomic_load(&first.calls), 1);
	cr_assert_eq(first.status, ECANCELED);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* ------------------------------------------------------------------ */
/* Defect 2: a km_query visitor may block in km_lock.                   */
/* ------------------------------------------------------------------ */

#define CHURN_KEYS 80000	/* > KM_INFLIGHT_MAX batches of 64 retired entries */

struct blocker {
	struct km *km;
	atomic_int holding, go, done;
};

/* Holds "hot", waits for the visitor to queue on it, then releases many
 * other keys (each one retired: pool_size 1) before it releases "hot". */
static void *hold_then_churn(void *arg)
{
	struct blocker *b = arg;
	struct km_guard hot, g;
	char k[16];

	if (km_lock(b->km, "hot", 3, &hot) != 0)
		return NULL;
	atomic_store(&b->holding, 1);
	while (!atomic_load(&b->go))
		kt_sleep_us(1000);
	for (int i = 0; i < CHURN_KEYS; i++) {
		int n = snprintf(k, sizeof k, "c%d", i);

		if (km_lock(b->km, k, (size_t)n, &g) == 0)
			(void)km_unlock(&g);
	}
	(void)km_unlock(&hot);
	atomic_store(&b->done, 1);
	return NULL;
}

struct visit_state {
	struct blocker *b;
	int in_section;
	int lock_rc;
	int visits;
};

static int blocking_visit(const void *key, size_t len, unsigned holders, unsigned waiters,
			  int shared, void *arg)
{
	struct visit_state *v = arg;
	struct km_guard g;

	(void)holders;
	(void)waiters;
	(void)shared;
	v->visits++;
	if (km__in_read_section())
		v->in_section = 1;
	if (len == 3 && memcmp(key, "hot", 3) == 0) {
		atomic_store(&v->b->go, 1);
		v->lock_rc = km_lock(v->b->km, "hot", 3, &g);	/* waits for the churn */
		if (v->lock_rc == 0)
			(void)km_unlock(&g);
		return 1;
	}
	return 0;
}

struct query_run {
	struct km *km;
	struct visit_state *v;
	atomic_int done;
	int rc;
};

static void *run_query(void *arg)
{
	struct query_run *q = arg;

	q->rc = km_query(q->km, blocking_visit, q->v);
	atomic_store(&q->done, 1);
	return NULL;
}

Test(races, query_visitor_may_block_in_km_lock)
{
	struct blocker b = { .km = table(0, 1) };
	struct visit_state v = { .b = &b };
	struct query_run q = { .km = b.km, .v = &v };
	pthread_t th, tq;

	cr_assert_eq(pthread_create(&th, NULL, hold_then_churn, &b), 0);
	cr_assert(kt_wait_flag(&b.holding, 10000));
	cr_assert_eq(pthread_create(&tq, NULL, run_query, &q), 0);
	/* Before the fix the visitor waited inside a read-side section: grace
	 * periods stopped, the churn's releasers blocked in the reclamation
	 * back-pressure, and the holder never released "hot". */
	bool finished = kt_wait_flag(&q.done, 60000 * kt_time_scale());

	cr_assert(finished, "km_query with a visitor waiting in km_lock deadlocked "
		  "(holder done: %d)", atomic_load(&b.done));
	cr_assert_eq(pthread_join(tq, NULL), 0);
	cr_assert_eq(pthread_join(th, NULL), 0);
	cr_assert_eq(q.rc, 1, "the visitor's non-zero return must end the walk");
	cr_assert_eq(v.lock_rc, 0);
	cr_assert_eq(v.in_section, 0, "a visitor ran inside a read-side section");
	cr_assert_eq(km_destroy(b.km), 0);
}

/* ------------------------------------------------------------------ */
/* Defect 3: a head that only a direct grant serves (async, shared)     */
/* keeps newcomers out, whatever came before it in the queue.           */
/* ------------------------------------------------------------------ */

struct waiter_thread {
	struct km *km;
	int pause_awake;
	int try_on_release;
	atomic_int locked;
	int rc, unlock_rc;
};

static void *lock_then_unlock(void *arg)
{
	struct waiter_thread *w = arg;
	struct km_guard g;

	tl_pause_awake = w->pause_awake;
	w->rc = km_lock(w->km, "k", 1, &g);
	atomic_store(&w->locked, 1);
	if (w->rc == 0) {
		tl_try_on_dispatch = w->try_on_release;
		w->unlock_rc = km_unlock(&g);
		tl_try_on_dispatch = 0;
	}
	return NULL;
}

/* A woken exclusive head that takes the key must not clear HANDOFF when a
 * shared (async) request heads the queue after it. */
Test(races, woken_head_keeps_handoff_for_a_shared_async_head)
{
	struct waiter_thread w1 = { .pause_awake = 1, .try_on_release = 1 };
	struct queued_async a;
	struct km_lock_options shared = { .flags = KM_SHARED };
	struct km_guard g0;
	pthread_t t1;

	H.km = w1.km = table(0, 0);
	H.key = "k";
	H.len = 1;
	cr_assert_eq(km_lock(H.km, "k", 1, &g0), 0);
	cr_assert_eq(pthread_create(&t1, NULL, lock_then_unlock, &w1), 0);
	cr_assert(kt_wait_waiters(H.km, 1, 10000));
	cr_assert_eq(km_unlock(&g0), 0);	/* wakes w1: it stops awake */
	while (sem_wait(&H.paused) != 0)
		;
	/* The key is free and w1 is on its way: a shared request queues
	 * (never ahead of a waiter) and asks for direct grants. */
	memset(&a, 0, sizeof a);
	a.req.ready = count_ready;
	a.req.arg = &a;
	cr_assert_eq(km_acquire_async(H.km, "k", 1, &shared, &a.req), EINPROGRESS);
	sem_post(&H.resume);
	/* w1 takes the key, then releases it; between its release CAS and
	 * its dispatch, a newcomer's trylock must not take the key from the
	 * shared request now at the head. */
	cr_assert_eq(pthread_join(t1, NULL), 0);
	cr_assert_eq(w1.rc, 0);
	cr_assert_eq(atomic_load(&H.fired), 1);
	cr_assert_eq(atomic_load(&H.barged), 0,
		     "a trylock took the key while a shared async request headed the queue");
	cr_assert_eq(atomic_load(&a.calls), 1);
	cr_assert_eq(a.status, 0);
	cr_assert_eq(km_unlock(&a.req.guard), 0);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* A direct grant whose next waiter is sync-exclusive must not leave an
 * async request behind it unprotected once that waiter has had the key. */
Test(races, direct_grant_keeps_handoff_for_an_async_request_behind)
{
	struct waiter_thread w1 = { 0 }, w2 = { .try_on_release = 1 };
	struct queued_async a;
	struct km_guard g0;
	pthread_t t1, t2;

	H.km = w1.km = w2.km = table(0, 0);
	H.key = "k";
	H.len = 1;
	cr_assert_eq(km_lock(H.km, "k", 1, &g0), 0);
	cr_assert_eq(pthread_create(&t1, NULL, lock_then_unlock, &w1), 0);
	cr_assert(kt_wait_waiters(H.km, 1, 10000));
	cr_assert_eq(pthread_create(&t2, NULL, lock_then_unlock, &w2), 0);
	cr_assert(kt_wait_waiters(H.km, 2, 10000));
	memset(&a, 0, sizeof a);
	a.req.ready = count_ready;
	a.req.arg = &a;
	cr_assert_eq(km_acquire_async(H.km, "k", 1, NULL, &a.req), EINPROGRESS);
	/* HANDOFF (set by the async request): w1 is granted directly; then
	 * w2, then the async request must be. w2's release window is tried. */
	cr_assert_eq(km_unlock(&g0), 0);
	cr_assert_eq(pthread_join(t1, NULL), 0);
	cr_assert_eq(pthread_join(t2, NULL), 0);
	cr_assert_eq(w1.rc, 0);
	cr_assert_eq(w2.rc, 0);
	cr_assert_eq(atomic_load(&H.fired), 1);
	cr_assert_eq(atomic_load(&H.barged), 0,
		     "a trylock took the key while an async request headed the queue");
	cr_assert_eq(atomic_load(&a.calls), 1);
	cr_assert_eq(a.status, 0);
	cr_assert_eq(km_unlock(&a.req.guard), 0);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* The same bound under load: trylock loops hammer a hot key while an async
 * request and a shared request wait; both must be served promptly. */
struct hammer {
	struct km *km;
	atomic_int stop;
	long ops;
};

static void *trylock_loop(void *arg)
{
	struct hammer *h = arg;
	struct km_guard g;

	while (!atomic_load_explicit(&h->stop, memory_order_relaxed)) {
		if (km_trylock(h->km, "k", 1, &g) == 0) {
			h->ops++;
			(void)km_unlock(&g);
		}
	}
	return NULL;
}

/* A thread that locks "k" (shared or not), notes how long it waited, and
 * unlocks at once. */
struct timed_lock {
	struct km *km;
	int shared;
	atomic_int done;
	uint64_t waited_ns;
	int rc;
};

static void *lock_timed(void *arg)
{
	struct timed_lock *t = arg;
	struct km_guard g;
	uint64_t t0 = kt_now_ns();

	t->rc = t->shared ? km_lock_shared(t->km, "k", 1, &g) : km_lock(t->km, "k", 1, &g);
	t->waited_ns = kt_now_ns() - t0;
	if (t->rc == 0)
		(void)km_unlock(&g);
	atomic_store(&t->done, 1);
	return NULL;
}

Test(races, async_and_shared_waiters_are_served_under_trylock_hammering)
{
	enum { HAMMERS = 3, ROUNDS = 20 };
	struct hammer h = { .km = table(0, 0) };
	pthread_t th[HAMMERS];
	uint64_t worst_async = 0, worst_shared = 0;
	long limit_ms = 2000 * kt_time_scale();

	if (kt_on_valgrind()) {	/* one thread at a time: no hammering to speak of */
		cr_log_info("skipped under valgrind (a stress case)\n");
		cr_assert_eq(km_destroy(h.km), 0);
		return;
	}
	for (int i = 0; i < HAMMERS; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, trylock_loop, &h), 0);
	for (int r = 0; r < ROUNDS; r++) {
		struct queued_async a;
		struct timed_lock s = { .km = h.km, .shared = 1 };
		pthread_t ts;
		uint64_t t0 = kt_now_ns();

		memset(&a, 0, sizeof a);
		a.req.ready = count_ready;
		a.req.arg = &a;
		cr_assert_eq(pthread_create(&ts, NULL, lock_timed, &s), 0);
		int rc = km_acquire_async(h.km, "k", 1, NULL, &a.req);

		cr_assert(rc == 0 || rc == EINPROGRESS);
		if (rc == EINPROGRESS) {
			while (atomic_load(&a.calls) == 0 && kt_now_ns() - t0 < limit_ms * 1000000ull)
				kt_sleep_us(100);
			if (atomic_load(&a.calls) == 0) {
				atomic_store(&h.stop, 1);	/* let it through, then fail */
				while (atomic_load(&a.calls) == 0)
					kt_sleep_us(1000);
				worst_async = UINT64_MAX;
			}
		}
		uint64_t waited = kt_now_ns() - t0;

		if (worst_async != UINT64_MAX && waited > worst_async)
			worst_async = waited;
		cr_assert_eq(km_unlock(&a.req.guard), 0);
		if (!kt_wait_flag(&s.done, limit_ms)) {
			atomic_store(&h.stop, 1);
			worst_shared = UINT64_MAX;
		}
		cr_assert_eq(pthread_join(ts, NULL), 0);
		if (worst_shared != UINT64_MAX && s.waited_ns > worst_shared)
			worst_shared = s.waited_ns;
		if (atomic_load(&h.stop))
			break;
	}
	atomic_store(&h.stop, 1);
	for (int i = 0; i < HAMMERS; i++)
		cr_assert_eq(pthread_join(th[i], NULL), 0);
	cr_assert_neq(worst_async, UINT64_MAX, "an async request starved for %ld ms", limit_ms);
	cr_assert_neq(worst_shared, UINT64_MAX, "a shared request starved for %ld ms", limit_ms);
	cr_log_info("worst wait under hammering: async %.3f ms, shared %.3f ms\n",
		    worst_async / 1e6, worst_shared / 1e6);
	cr_assert_eq(km_destroy(h.km), 0);
}

/* ------------------------------------------------------------------ */
/* Defect 4: KM_RECURSIVE, a guard handed to another thread.            */
/* ------------------------------------------------------------------ */

static void *trylock_elsewhere(void *arg)
{
	struct km_guard g;
	int *rc = arg;

	*rc = km_trylock(H.km, "k", 1, &g);
	if (*rc == 0)
		(void)km_unlock(&g);
	return NULL;
}

Test(races, recursive_nested_lock_races_a_handed_over_unlock)
{
	struct km_guard g1, g2;
	int other = -1;

	H.km = table(KM_RECURSIVE, 0);
	cr_assert_eq(km_lock(H.km, "k", 1, &g1), 0);
	H.held = &g1;		/* handed to another thread, which unlocks it */
	tl_other_unlocks = 1;
	/* Between "I am the owner" and the nested count's increment, the
	 * other thread unlocks g1. The nested guard must still hold the key. */
	cr_assert_eq(km_lock(H.km, "k", 1, &g2), 0);
	tl_other_unlocks = 0;
	cr_assert_eq(atomic_load(&H.fired), 1);
	run_thread(trylock_elsewhere, &other);
	cr_assert_eq(other, EBUSY,
		     "the owner's nested lock returned while the key was free "
		     "(another thread's unlock of the handed-over guard: %d)", H.other_unlock_rc);
	cr_assert_eq(H.other_unlock_rc, EPERM,
		     "another thread unlocked an owner's hold on a KM_RECURSIVE table");
	cr_assert_eq(km_unlock(&g2), 0);
	cr_assert_eq(km_unlock(&g1), 0);
	run_thread(trylock_elsewhere, &other);
	cr_assert_eq(other, 0);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* ------------------------------------------------------------------ */
/* Defect 5: ready() unlocks its async hold, on every table kind.       */
/* ------------------------------------------------------------------ */

struct unlock_in_ready {
	struct km_request req;
	atomic_int calls;
	int status, unlock_rc;
};

static void unlock_ready(struct km_request *req, int status)
{
	struct unlock_in_ready *u = req->arg;

	u->status = status;
	u->unlock_rc = status == 0 ? km_unlock(&req->guard) : -1;
	atomic_fetch_add(&u->calls, 1);
}

struct async_issue {
	struct km *km;
	struct km_request *req;
	int rc;
};

static void *issue_async(void *arg)
{
	struct async_issue *a = arg;

	a->rc = km_acquire_async(a->km, "k", 1, NULL, a->req);
	return NULL;
}

struct port_drain {
	struct km_port *port;
	int ran;
};

static void *drain_port(void *arg)
{
	struct port_drain *p = arg;

	p->ran = km_port_run(p->port);
	return NULL;
}

Test(races, ready_unlocks_its_async_hold_on_every_table_kind)
{
	static const unsigned kinds[] = { 0, KM_FIFO, KM_RECURSIVE, KM_ERRORCHECK,
					  KM_RECURSIVE | KM_FIFO, KM_ERRORCHECK | KM_FIFO };

	for (unsigned k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
		for (int use_port = 0; use_port < 2; use_port++) {
			struct km *t = table(kinds[k], 0);
			struct unlock_in_ready u;
			struct async_issue a = { .km = t, .req = &u.req };
			struct port_drain pd = { 0 };
			struct km_guard g;
			int other = -1;

			memset(&u, 0, sizeof u);
			u.req.ready = unlock_ready;
			u.req.arg = &u;
			if (use_port)
				cr_assert_eq(km_port_create(&u.req.port), 0);
			cr_assert_eq(km_lock(t, "k", 1, &g), 0);
			/* Requested on one thread, granted on this one: ready()
			 * runs here (or on the port's drainer, a third thread). */
			run_thread(issue_async, &a);
			cr_assert_eq(a.rc, EINPROGRESS);
			cr_assert_eq(km_unlock(&g), 0);
			if (use_port) {
				pd.port = u.req.port;
				run_thread(drain_port, &pd);
				cr_assert_eq(pd.ran, 1);
			}
			cr_assert_eq(atomic_load(&u.calls), 1);
			cr_assert_eq(u.status, 0);
			cr_assert_eq(u.unlock_rc, 0, "flags 0x%x%s: km_unlock in ready() "
				     "returned %d", kinds[k], use_port ? " (port)" : "",
				     u.unlock_rc);
			H.km = t;
			run_thread(trylock_elsewhere, &other);
			cr_assert_eq(other, 0, "flags 0x%x: the key stayed held", kinds[k]);
			if (use_port)
				cr_assert_eq(km_port_destroy(u.req.port), 0);
			cr_assert_eq(km_destroy(t), 0);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Defect 6: reclamation rounds never overlap.                          */
/* ------------------------------------------------------------------ */

static void churn_keys(struct km *t, const char *prefix, int n)
{
	char k[32];
	struct km_guard g;

	for (int i = 0; i < n; i++) {
		int len = snprintf(k, sizeof k, "%s%d", prefix, i);

		cr_assert_eq(km_lock(t, k, (size_t)len, &g), 0);
		cr_assert_eq(km_unlock(&g), 0);
	}
}

struct destroyer {
	struct km *km;
	int pause_round;
	atomic_int done;
	int rc;
};

static void *destroy_table_thread(void *arg)
{
	struct destroyer *d = arg;

	tl_pause_round = d->pause_round;
	d->rc = km_destroy(d->km);
	tl_pause_round = 0;
	atomic_store(&d->done, 1);
	return NULL;
}

Test(races, reclaim_rounds_never_overlap)
{
	struct km *t1 = table(0, 1), *t3 = table(0, 1);
	struct destroyer f = { .km = table(0, 1), .pause_round = 1 };
	struct destroyer d = { .km = t1 };
	pthread_t tf, td;
	int rounds = 0;

	/* 1. No reclaimer thread can be made: a batch of t1 waits queued.
	 *    (A reclaimer thread left from earlier work in this process exits
	 *    after 100 ms without work: wait longer than that, then queue one
	 *    batch, until the library tries to start a thread for it.) */
	H.fail_create = 1;
	while (atomic_load(&H.create_calls) == 0) {
		kt_sleep_us(150000 * kt_time_scale());
		churn_keys(t1, rounds % 2 ? "a" : "b", 64);	/* one full batch */
		cr_assert(++rounds < 100, "the reclaimer never went idle");
	}
	/* 2. Another table's destroy reclaims it on its own thread (the
	 *    fallback round) and stops before the grace period. */
	cr_assert_eq(pthread_create(&tf, NULL, destroy_table_thread, &f), 0);
	while (sem_wait(&H.paused) != 0)
		;
	/* 3. A reclaimer thread can be made again and gets a later batch. */
	H.fail_create = 0;
	churn_keys(t3, "c", 64);
	/* 4. t1's destroy must wait for t1's batch, which the paused round
	 *    still holds: the reclaimer's later round must not answer for it. */
	cr_assert_eq(pthread_create(&td, NULL, destroy_table_thread, &d), 0);
	kt_sleep_us(200000 * kt_time_scale());
	int early = atomic_load(&d.done);

	sem_post(&H.resume);
	cr_assert_eq(pthread_join(tf, NULL), 0);
	cr_assert_eq(pthread_join(td, NULL), 0);
	cr_assert_eq(early, 0, "km_destroy returned while another round still "
		     "reclaimed the table's entries");
	cr_assert_eq(f.rc, 0);
	cr_assert_eq(d.rc, 0);
	cr_assert_eq(km_destroy(t3), 0);
}

/* ------------------------------------------------------------------ */
/* Defect 7: km_stats().pooled while the pool's entries move.           */
/* ------------------------------------------------------------------ */

Test(races, stats_pooled_stays_within_the_pool_bound)
{
	enum { POOL = 256, DEPTH = 1000 };
	struct km_stats st;

	H.km = table(KM_RECURSIVE, POOL);
	H.nested_depth = DEPTH;
	H.nested = calloc(DEPTH, sizeof *H.nested);
	cr_assert_not_null(H.nested);
	/* Fill this thread's pool: idle entries first, then evicted and
	 * reclaimed ones come back to this thread's stripe. */
	churn_keys(H.km, "p", 4 * POOL);
	cr_assert_eq(km__quiesce(H.km), 0);
	st = kt_stats(H.km);
	cr_assert_gt(st.pooled, 0);
	cr_assert_leq(st.pooled, POOL);
	/* Mid-count, the pool's top entry becomes a live key with DEPTH nested
	 * holds; the count must stay a count of pooled entries. */
	tl_pool_count = 1;
	st = kt_stats(H.km);
	tl_pool_count = 0;
	cr_assert_eq(atomic_load(&H.fired), 1);
	cr_assert_leq(st.pooled, POOL, "km_stats().pooled = %zu with pool_size %d",
		      st.pooled, POOL);
	for (int i = DEPTH - 1; i >= 0; i--)
		cr_assert_eq(km_unlock(&H.nested[i]), 0);
	free(H.nested);
	cr_assert_eq(km_destroy(H.km), 0);
}

/* ------------------------------------------------------------------ */
/* Found by model/wait.pml (sync_head): a parked exclusive head is never */
/* woken while bargers take every release; it must still get the key    */
/* within about the fairness bound.                                     */
/* ------------------------------------------------------------------ */

static __thread int tl_barge_in_window;	/* RELEASE_DISPATCH: take the key for the loop */
static struct km_guard g_barged;
static atomic_int g_barged_ok;

static int barge_hook(int point, void *arg)
{
	(void)arg;
	if (point == KM_HOOK_RELEASE_DISPATCH && tl_barge_in_window)
		atomic_store(&g_barged_ok, km_trylock(H.km, "k", 1, &g_barged) == 0);
	return 0;
}

Test(races, parked_head_is_served_while_bargers_take_every_release)
{
	struct timed_lock w = { 0 };
	struct km_guard g;
	pthread_t t;
	uint64_t limit = 500000000ull * (uint64_t)kt_time_scale(), t0;
	long rounds = 0;
	bool holding = true;

	H.km = w.km = table(0, 0);
	km__hook_set(barge_hook);
	cr_assert_eq(km_lock(H.km, "k", 1, &g), 0);
	cr_assert_eq(pthread_create(&t, NULL, lock_timed, &w), 0);
	cr_assert(kt_wait_waiters(H.km, 1, 10000));
	/* Every release of this loop is barged into between its release CAS
	 * and its dispatch (the hook takes the key for the next round), so
	 * no dispatch ever finds the key free to wake the head with. */
	tl_barge_in_window = 1;
	t0 = kt_now_ns();
	while (!atomic_load(&w.done) && kt_now_ns() - t0 < limit) {
		atomic_store(&g_barged_ok, 0);
		cr_assert_eq(km_unlock(&g), 0);
		if (!atomic_load(&g_barged_ok)) {
			/* The barge was refused: the head is being served. */
			holding = false;
			while (!atomic_load(&w.done) && kt_now_ns() - t0 < limit)
				kt_sleep_us(100);
			break;
		}
		g = g_barged;
		rounds++;
		kt_sleep_us(20);	/* hold it a little, as a real holder would */
	}
	tl_barge_in_window = 0;
	bool served = atomic_load(&w.done) != 0;

	if (holding)
		cr_assert_eq(km_unlock(&g), 0);	/* let it through (then fail) */
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(w.rc, 0);
	cr_assert(served, "the parked head waited %.0f ms while %ld releases were barged into",
		  limit / 1e6, rounds);
	cr_log_info("head served after %.3f ms, %ld barged releases\n", w.waited_ns / 1e6, rounds);
	cr_assert_eq(km_destroy(H.km), 0);
}
