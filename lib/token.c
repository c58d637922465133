/*
 * Cancellation tokens.
 *
 * A token keeps the list of waits registered with it under its own mutex.
 * Lock order: token lock, then an entry's qlock (the cancel path); nothing
 * takes a token lock while holding a qlock. A sync waiter is flagged and
 * woken (it leaves the queue itself); an async request is taken out of its
 * queue here and completed with ECANCELED after the token lock is dropped.
 * A waiter stays registered until it has finished with the token, so the
 * canceller never touches a waiter that is gone.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

struct km_token {
	pthread_mutex_t lock;
	struct km_waiter *waits;	/* registered waits, doubly linked (tnext/tprev) */
	unsigned long users;		/* registered waits */
	int cancelled;			/* written under lock, read atomically */
};

int km_token_create(struct km_token **out)
{
	struct km_token *t;

	if (out == NULL)
		return EINVAL;
	t = km_malloc(sizeof *t);
	if (t == NULL)
		return ENOMEM;
	memset(t, 0, sizeof *t);
	pthread_mutex_init(&t->lock, NULL);
	*out = t;
	return 0;
}

bool km_token_cancelled(const struct km_token *t)
{
	return km_load_acquire(&t->cancelled) != 0;
}

int km_token_register(struct km_token *t, struct km_waiter *w)
{
	pthread_mutex_lock(&t->lock);
	if (t->cancelled) {
		pthread_mutex_unlock(&t->lock);
		return ECANCELED;
	}
	w->token = t;
	w->tprev = NULL;
	w->tnext = t->waits;
	if (t->waits != NULL)
		t->waits->tprev = w;
	t->waits = w;
	t->users++;
	pthread_mutex_unlock(&t->lock);
	return 0;
}

void km_token_unregister(struct km_token *t, struct km_waiter *w)
{
	pthread_mutex_lock(&t->lock);
	if (w->tprev != NULL)
		w->tprev->tnext = w->tnext;
	else
		t->waits = w->tnext;
	if (w->tnext != NULL)
		w->tnext->tprev = w->tprev;
	w->tnext = w->tprev = NULL;
	t->users--;
	pthread_mutex_unlock(&t->lock);
}

void km_token_cancel(struct km_token *t)
{
	struct km_done done;

	if (t == NULL)
		return;
	km_done_init(&done);
	pthread_mutex_lock(&t->lock);
	km_store_release(&t->cancelled, 1);
	for (struct km_waiter *w = t->waits; w != NULL; w = w->tnext) {
		if (km_load_relaxed(&w->flags) & KM_WF_ASYNC) {	/* WOKEN may change under the qlock */
			(void)km_async_try_cancel(w, KM_W_CANCELLED, true, &done);
		} else {
			/* The waiter stays registered (so alive) until it takes
			 * our lock to unregister: safe to touch it here. */
			km_store_relaxed(&w->cancel, 1);
			if (km_waiter_signal(w))
				km_futex_wake(&w->futex);
		}
	}
	pthread_mutex_unlock(&t->lock);
	km_done_deliver(&done);
}

int km_token_destroy(struct km_token *t)
{
	if (t == NULL)
		return EINVAL;
	pthread_mutex_lock(&t->lock);
	if (t->users != 0) {
		pthread_mutex_unlock(&t->lock);
		return EBUSY;
	}
	pthread_mutex_unlock(&t->lock);
	pthread_mutex_destroy(&t->lock);
	free(t);
	return 0;
}
