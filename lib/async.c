/*
 * Asynchronous acquire, completions and ports: LockAsync for C.
 *
 * An async request waits in the same per-key queue as sync waiters; its
 * waiter node lives in km_request.priv and, while it waits, req->guard holds
 * scratch (table, owner, hash, flags). Async heads are always granted
 * directly (there is no thread to retry), by whoever makes the key grantable.
 *
 * Completion (grant, timeout, cancel) runs after every internal lock and
 * read-side section is dropped: the request leaves the timer heap and its
 * token, its guard is filled, and ready() runs on this thread (through a
 * per-thread trampoline, so ready() calling km_unlock that grants the next
 * async request queues it instead of recursing), or the request is queued
 * to its port, whose owner runs it in km_port_run.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"
#include "take.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct km_port {
	int fd;				/* eventfd: readable while completions wait */
	pthread_mutex_t lock;
	struct km_waiter *head, **tail;	/* completed requests, through ->next */
	unsigned long pending;		/* requests in flight for this port (atomic) */
};

static inline struct km_request *km_req_of(struct km_waiter *w)
{
	return km_container_of((void *)w, struct km_request, priv);
}

/* Completions of this thread waiting to run (the trampoline). */
static __thread struct {
	struct km_waiter *head, **tail;
	int running;
} km_tramp;

static void km_run_ready(struct km_waiter *w)
{
	if (km_tramp.running) {
		w->next = NULL;
		*km_tramp.tail = w;
		km_tramp.tail = &w->next;
		return;
	}
	km_tramp.running = 1;
	km_tramp.head = NULL;
	km_tramp.tail = &km_tramp.head;
	while (w != NULL) {
		struct km_request *req = km_req_of(w);

		req->ready(req, (int)w->futex);	/* req may be gone after this */
		w = km_tramp.head;
		if (w != NULL) {
			km_tramp.head = w->next;
			if (km_tramp.head == NULL)
				km_tramp.tail = &km_tramp.head;
		}
	}
	km_tramp.running = 0;
}

static void km_port_post(struct km_port *p, struct km_waiter *w)
{
	bool was_empty;

	pthread_mutex_lock(&p->lock);
	was_empty = p->head == NULL;
	w->next = NULL;
	*p->tail = w;
	p->tail = &w->next;
	if (was_empty) {
		uint64_t one = 1;

		/* Cannot fail short of a counter overflow, which the reset in
		 * km_port_run prevents. */
		(void)!write(p->fd, &one, sizeof one);
	}
	pthread_mutex_unlock(&p->lock);
}

void km_async_complete(struct km_waiter *w)
{
	struct km_request *req = km_req_of(w);
	struct km *km = (struct km *)req->guard.priv[0];
	const void *owner = (const void *)req->guard.priv[1];
	unsigned wflags = (unsigned)req->guard.priv[3];
	uint32_t st = km_load_acquire(&w->status);
	int status = st == KM_W_GRANTED ? 0 : st == KM_W_TIMEDOUT ? ETIMEDOUT : ECANCELED;
	struct km_port *port = req->port;

	if (w->flags & KM_WF_TIMED)
		km_timer_remove(w);
	if (w->token != NULL)
		km_token_unregister(w->token, w);
	memset(&req->guard, 0, sizeof req->guard);
	if (status == 0) {
		struct km_stripe *sp = km_my_stripe(km);

		km_guard_held(&req->guard, km, w->entry, wflags, owner);
		km_add_relaxed(&sp->acquired, 1);
		km_add_relaxed(&sp->contended, 1);
	} else {
		km_count(km, status);
	}
	w->futex = (uint32_t)status;
	km_store_release(&w->status, (uint32_t)KM_W_DONE);
	if (port != NULL)
		km_port_post(port, w);
	else
		km_run_ready(w);
}

/*
 * Take a waiting async request out of its queue with status why. registry:
 * called by the timer or a token, which hold their lock. A request still
 * being prepared (PREP) stays inside the read-side section in which it found
 * its entry until it has unregistered from both, and unregistering waits for
 * that lock: so while we hold it, w->entry is readable (not yet reclaimed)
 * and we may look under its qlock, where the request checks the token and
 * the deadline before it joins the queue.
 */
int km_async_try_cancel(struct km_waiter *w, uint32_t why, bool registry,
			struct km_done *done)
{
	struct km_request *req = km_req_of(w);
	struct km_entry *e;
	struct km *km;
	uint32_t st;
	bool dead;

	km_rcu_read_lock();
	/* Queued means the request holds a waiter count: the entry is alive
	 * now and, inside this section, stays readable. */
	st = km_load_acquire(&w->status);
	if (st != KM_W_QUEUED && !(registry && st == KM_W_PREP)) {
		km_rcu_read_unlock();
		return EALREADY;
	}
	e = w->entry;
	km_qlock(e);
	if (km_load_relaxed(&w->status) != KM_W_QUEUED) {
		/* Granted, completed, or still preparing: then its own check
		 * under this qlock, still to come, sees our token or deadline. */
		km_qunlock(e);
		km_rcu_read_unlock();
		return EALREADY;
	}
	km = (struct km *)req->guard.priv[0];	/* stable while queued */
	km_store_release(&w->status, why);
	dead = km_leave_queue(km, e, w, done);
	km_qunlock(e);
	if (dead)
		km_kill(km, e);
	km_rcu_read_unlock();
	km_done_async(done, w);
	return 0;
}

int km_request_cancel(struct km_request *req)
{
	struct km_done done;
	int r;

	if (req == NULL)
		return EINVAL;
	km_done_init(&done);
	r = km_async_try_cancel((struct km_waiter *)(void *)req->priv, KM_W_CANCELLED, false, &done);
	km_done_deliver(&done);
	return r;
}

/* Undo the registrations of a request that will not wait after all. */
static void km_async_unprepare(struct km_waiter *w, struct km_token *tok, struct km_port *port)
{
	if (w->flags & KM_WF_TIMED)
		km_timer_remove(w);
	if (tok != NULL)
		km_token_unregister(tok, w);
	if (port != NULL)
		__atomic_fetch_sub(&port->pending, 1, __ATOMIC_RELEASE);
}

int km_acquire_async(struct km *km, const void *key, size_t len,
		     const struct km_lock_options *opt, struct km_request *req)
{
	struct km_waiter *w;
	struct km_token *tok;
	const struct timespec *deadline;
	struct km_entry *e;
	const void *owner = NULL;
	unsigned flags, wflags;
	bool shared, nested;
	uint32_t h;
	uint64_t s;
	int rc;

	if (req == NULL)
		return EINVAL;
	/* A request that fails at once reads as never queued: a later
	 * km_request_cancel answers EALREADY. */
	memset(&req->guard, 0, sizeof req->guard);
	memset(req->priv, 0, sizeof req->priv);
	w = (struct km_waiter *)(void *)req->priv;
	if (km == NULL || req->ready == NULL || km_key_ok(key, len) != 0)
		return EINVAL;
	rc = km_check_lock_options(km, opt);
	if (rc != 0)
		return rc;
	flags = opt != NULL ? opt->flags : 0;
	shared = (flags & KM_SHARED) != 0;
	wflags = KM_WF_ASYNC | (shared ? KM_WF_SHARED : 0);
	tok = opt != NULL ? opt->cancel : NULL;
	deadline = opt != NULL ? opt->deadline : NULL;
	if (tok != NULL && km_token_cancelled(tok)) {
		km_count(km, ECANCELED);
		return ECANCELED;
	}
	/* An async hold's owner is opt->owner; without one the hold belongs
	 * to the request, not to the issuing thread: ready() runs on another
	 * thread and may unlock it there (no owner recorded: any thread may). */
	if ((km->flags & KM_OWNER_FLAGS) && opt != NULL)
		owner = opt->owner;
	h = km_hash(km, key, len);

	km_rcu_read_lock();
retry:
	rc = km_take_now(km, h, key, len, shared, owner, 0, &e, &nested);
	if (rc != EBUSY) {
		km_rcu_read_unlock();
		if (rc != 0)
			return rc;
		if (nested)
			km_guard_fill(&req->guard, km, e, 0, owner);
		else
			km_guard_held(&req->guard, km, e, wflags, owner);
		km_add_relaxed(&km_my_stripe(km)->acquired, 1);
		w->status = KM_W_DONE;
		return 0;
	}
	if (flags & KM_TRY) {
		km_rcu_read_unlock();
		return EBUSY;
	}
	if (km_deadline_passed(deadline)) {
		km_rcu_read_unlock();
		km_count(km, ETIMEDOUT);
		return ETIMEDOUT;
	}

	/* Queue. Register with the token and the timer first, so neither can
	 * miss us; both check our status under the qlock (PREP: not yet). */
	memset(req->priv, 0, sizeof req->priv);
	/* Every field the timer or a token may read is set before either
	 * can see the request. */
	w->flags = (uint16_t)(wflags | (deadline != NULL ? KM_WF_TIMED : 0));
	w->entry = e;
	w->status = KM_W_PREP;
	req->guard.priv[0] = (uintptr_t)km;
	req->guard.priv[1] = (uintptr_t)owner;
	req->guard.priv[3] = wflags;
	if (tok != NULL && km_token_register(tok, w) != 0) {
		km_rcu_read_unlock();
		memset(&req->guard, 0, sizeof req->guard);
		km_count(km, ECANCELED);
		return ECANCELED;
	}
	if (deadline != NULL && km_timer_add(w, deadline) != 0) {
		if (tok != NULL)
			km_token_unregister(tok, w);
		km_rcu_read_unlock();
		memset(&req->guard, 0, sizeof req->guard);
		return ENOMEM;
	}
	if (req->port != NULL)
		__atomic_fetch_add(&req->port->pending, 1, __ATOMIC_RELAXED);

	km_hook(KM_HOOK_ASYNC_PREPARED, req);
	km_qlock(e);
	s = km_load_acquire(&e->state);
	/* Join the queue or take the key; retries when the word changed. */
	for (;;) {
		if (km_s_dead(s)) {
			km_qunlock(e);
			km_async_unprepare(w, tok, req->port);
			memset(&req->guard, 0, sizeof req->guard);
			goto retry;
		}
		if (km_may_barge(km, s, shared)) {
			if (km_cas_acquire(&e->state, &s, km_s_take(s, shared, km->max_holders))) {
				rc = 0;
				break;
			}
			continue;
		}
		if (tok != NULL && km_token_cancelled(tok)) {
			rc = ECANCELED;
			break;
		}
		if (km_deadline_passed(deadline)) {
			rc = ETIMEDOUT;
			break;
		}
		if (km_s_waiters(s) >= km_waiter_limit(km)) {
			rc = EAGAIN;
			break;
		}
		/* Async requests are served only by direct grants: keep
		 * barging newcomers out until this one is (see km_dispatch). */
		if (km_cas_acquire(&e->state, &s, (s + KM_S_WAIT1) | KM_S_HANDOFF)) {
			km_queue_append(e, w);
			if (shared)
				e->qshared++;
			km_store_release(&w->status, (uint32_t)KM_W_QUEUED);
			rc = EINPROGRESS;
			break;
		}
	}
	km_qunlock(e);
	if (rc == EINPROGRESS) {
		km_rcu_read_unlock();
		return EINPROGRESS;
	}
	/* Not queued: out of the timer's and the token's reach before we
	 * leave the section. Until then either may still find us PREP and
	 * take e's qlock (it holds its registry lock meanwhile, which the
	 * unregistration waits for); e holds no count of ours, so after the
	 * section it may be reclaimed. Lock order: no qlock held here. */
	km_async_unprepare(w, tok, req->port);
	km_rcu_read_unlock();
	if (rc != 0)
		km_hook(KM_HOOK_ASYNC_LEFT, req);
	memset(&req->guard, 0, sizeof req->guard);
	w->status = KM_W_DONE;
	if (rc != 0) {
		km_count(km, rc);
		return rc;
	}
	km_guard_held(&req->guard, km, e, wflags, owner);	/* took it under the qlock */
	km_add_relaxed(&km_my_stripe(km)->acquired, 1);
	return 0;
}

int km_port_create(struct km_port **out)
{
	struct km_port *p;

	if (out == NULL)
		return EINVAL;
	p = km_malloc(sizeof *p);
	if (p == NULL)
		return ENOMEM;
	memset(p, 0, sizeof *p);
	p->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->fd < 0) {
		int err = errno;

		free(p);
		return err == ENOMEM ? ENOMEM : err;
	}
	pthread_mutex_init(&p->lock, NULL);
	p->tail = &p->head;
	*out = p;
	return 0;
}

int km_port_fd(const struct km_port *p)
{
	return p != NULL ? p->fd : -1;
}

int km_port_run(struct km_port *p)
{
	struct km_waiter *w;
	int n = 0;

	if (p == NULL)
		return -EINVAL;
	pthread_mutex_lock(&p->lock);
	w = p->head;
	p->head = NULL;
	p->tail = &p->head;
	if (w != NULL) {
		uint64_t v;

		(void)!read(p->fd, &v, sizeof v);	/* not readable once drained */
	}
	pthread_mutex_unlock(&p->lock);
	while (w != NULL) {
		struct km_waiter *next = w->next;

		if (km_tramp.running) {
			/* km_port_run called from inside a ready(): the caller
			 * asked for these now, so run them now (the trampoline
			 * still defers what they trigger). */
			struct km_request *req = km_req_of(w);

			req->ready(req, (int)w->futex);
		} else {
			km_run_ready(w);	/* w may be gone after this */
		}
		__atomic_fetch_sub(&p->pending, 1, __ATOMIC_RELEASE);
		n++;
		w = next;
	}
	return n;
}

int km_port_destroy(struct km_port *p)
{
	if (p == NULL)
		return EINVAL;
	if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) != 0)
		return EBUSY;
	close(p->fd);
	pthread_mutex_destroy(&p->lock);
	free(p);
	return 0;
}
