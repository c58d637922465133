/*
 * Deadlines of async requests: one timer thread for the process, started on
 * demand and gone again once no deadline is pending (so an idle process, or
 * one about to dlclose the library, has no keymutex thread).
 *
 * A binary min-heap of (deadline, waiter) under one mutex; each waiter
 * remembers its heap index. Lock order: timer lock, then an entry's qlock
 * (firing); completions remove their waiter with the timer lock alone, and
 * nothing takes the timer lock while holding a qlock.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

struct km_timer_slot {
	uint64_t when;			/* CLOCK_MONOTONIC ns */
	struct km_waiter *w;
};

static pthread_mutex_t km_timer_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t km_timer_cond;
static pthread_once_t km_timer_once = PTHREAD_ONCE_INIT;
static struct km_timer_slot *km_heap;
static size_t km_heap_n, km_heap_cap;
static bool km_timer_running;
static bool km_timer_joinable, km_timer_stop;
static pthread_t km_timer_thread;

static void km_timer_atfork_child(void)
{
	/* The thread does not exist in the child; the pending deadlines are
	 * the parent's requests (their copies never complete here). */
	pthread_condattr_t a;

	/* The condvar too: a parent thread waiting on it at fork time would
	 * make the child's first signal wait for it for ever (glibc). */
	pthread_mutex_init(&km_timer_lock, NULL);
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&km_timer_cond, &a);
	pthread_condattr_destroy(&a);
	km_heap_n = 0;
	km_timer_running = false;
	km_timer_joinable = false;
}

__attribute__((destructor)) static void km_timer_fini(void)
{
	pthread_mutex_lock(&km_timer_lock);
	km_timer_stop = true;
	if (km_timer_running)
		pthread_cond_signal(&km_timer_cond);
	bool join = km_timer_joinable;

	km_timer_joinable = false;
	pthread_mutex_unlock(&km_timer_lock);
	if (join)
		pthread_join(km_timer_thread, NULL);
}

static void km_timer_init(void)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&km_timer_cond, &a);
	pthread_condattr_destroy(&a);
	pthread_atfork(NULL, NULL, km_timer_atfork_child);
}

static void km_heap_set(size_t i, struct km_timer_slot s)
{
	km_heap[i] = s;
	s.w->heap_idx = (uint32_t)(i + 1);
}

static void km_heap_up(size_t i)
{
	struct km_timer_slot s = km_heap[i];

	while (i > 0 && km_heap[(i - 1) / 2].when > s.when) {
		km_heap_set(i, km_heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	km_heap_set(i, s);
}

static void km_heap_down(size_t i)
{
	struct km_timer_slot s = km_heap[i];

	for (;;) {
		size_t c = 2 * i + 1;

		if (c >= km_heap_n)
			break;
		if (c + 1 < km_heap_n && km_heap[c + 1].when < km_heap[c].when)
			c++;
		if (km_heap[c].when >= s.when)
			break;
		km_heap_set(i, km_heap[c]);
		i = c;
	}
	km_heap_set(i, s);
}

static void km_heap_remove_at(size_t i)
{
	km_heap[i].w->heap_idx = 0;
	km_heap_n--;
	if (i == km_heap_n)
		return;
	km_heap_set(i, km_heap[km_heap_n]);
	km_heap_down(i);
	km_heap_up(km_heap[i].w->heap_idx - 1);
}

static void *km_timer_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&km_timer_lock);
	while (km_heap_n > 0 && !km_timer_stop) {
		uint64_t now = km_now_ns(), when = km_heap[0].when;

		if (when > now) {
			if (when > now + ((uint64_t)1 << 62))
				when = now + ((uint64_t)1 << 62);	/* keep the timespec sane */
			struct timespec ts = {
				.tv_sec = (time_t)(when / 1000000000u),
				.tv_nsec = (long)(when % 1000000000u),
			};

			pthread_cond_timedwait(&km_timer_cond, &km_timer_lock, &ts);
			continue;
		}
		struct km_waiter *w = km_heap[0].w;
		struct km_done done;

		km_heap_remove_at(0);
		km_hook(KM_HOOK_TIMER_FIRE, w);
		km_done_init(&done);
		/* Under the timer lock, so w cannot complete (and vanish) while
		 * we look at it; EALREADY if it was granted or cancelled. */
		(void)km_async_try_cancel(w, KM_W_TIMEDOUT, true, &done);
		pthread_mutex_unlock(&km_timer_lock);
		km_done_deliver(&done);
		pthread_mutex_lock(&km_timer_lock);
	}
	km_timer_running = false;
	pthread_mutex_unlock(&km_timer_lock);
	return NULL;
}

int km_timer_add(struct km_waiter *w, const struct timespec *deadline)
{
	uint64_t when = km_deadline_ns(deadline);

	if (when == UINT64_MAX)
		return 0;	/* never fires: no heap slot, no thread */
	pthread_once(&km_timer_once, km_timer_init);
	pthread_mutex_lock(&km_timer_lock);
	if (km_heap_n == km_heap_cap) {
		size_t cap = km_heap_cap ? km_heap_cap * 2 : 64;
		struct km_timer_slot *h = km_fault_hit() ? NULL : realloc(km_heap, cap * sizeof *h);

		if (h == NULL) {
			pthread_mutex_unlock(&km_timer_lock);
			return ENOMEM;
		}
		km_heap = h;
		km_heap_cap = cap;
	}
	km_heap[km_heap_n] = (struct km_timer_slot){ when, w };
	w->heap_idx = (uint32_t)(km_heap_n + 1);
	km_heap_n++;
	km_heap_up(km_heap_n - 1);
	if (!km_timer_running) {
		int r;

		if (km_timer_joinable)	/* left when idle: past its last touch */
			pthread_join(km_timer_thread, NULL);
		km_timer_joinable = false;
		r = km_fault_hit() ? EAGAIN : pthread_create(&km_timer_thread, NULL,
							      km_timer_main, NULL);
		if (r != 0) {
			km_heap_remove_at(w->heap_idx - 1);
			pthread_mutex_unlock(&km_timer_lock);
			return ENOMEM;
		}
		km_timer_running = true;
		km_timer_joinable = true;
	} else if (w->heap_idx == 1) {
		pthread_cond_signal(&km_timer_cond);	/* a new earliest deadline */
	}
	pthread_mutex_unlock(&km_timer_lock);
	return 0;
}

void km_timer_remove(struct km_waiter *w)
{
	pthread_mutex_lock(&km_timer_lock);
	if (w->heap_idx != 0) {
		bool was_first = w->heap_idx == 1;

		km_heap_remove_at(w->heap_idx - 1);
		if (was_first)	/* the thread sleeps until it: wake it to re-plan or exit */
			pthread_cond_signal(&km_timer_cond);
	}
	pthread_mutex_unlock(&km_timer_lock);
}
