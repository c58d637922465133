/*
 * The reclaimer: one library thread that turns retired entries back into
 * free memory after an RCU grace period.
 *
 * Why not call_rcu: liburcu's call_rcu worker sleeps 10 ms between rounds to
 * batch callbacks. Under churn that keeps tens of thousands of dead entries
 * in flight: they go cold in cache, overflow the pool and come back through
 * malloc/free across threads, and a lock+unlock of a new key cost about a
 * microsecond. This thread instead runs grace periods back to back while
 * batches are waiting (urcu_bp_synchronize_rcu, ~0.2 ms here), so about a
 * grace period's worth of entries is in flight and the pool can absorb it.
 *
 * Batches (64 dead entries, linked through ->link, the head naming its table
 * and stripe) are queued under a mutex, once per batch. The thread starts on
 * the first batch and exits after KM_RECLAIM_IDLE_MS without work, so an idle
 * process has no keymutex thread. km_reclaim_wait() waits until every batch
 * queued before the call is reclaimed (km_destroy, backpressure).
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

#define KM_RECLAIM_IDLE_MS 100

static pthread_mutex_t km_rc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t km_rc_work;	/* batches queued, or stop */
static pthread_cond_t km_rc_done;	/* a round was reclaimed */
static pthread_once_t km_rc_once = PTHREAD_ONCE_INIT;
static struct km_entry *km_rc_queue;	/* batch heads, linked through rcu.next */
static uint64_t km_rc_queued, km_rc_reclaimed; /* batches queued / reclaimed so far */
static bool km_rc_running;	/* a thread serves the queue */
static bool km_rc_in_round;	/* a round (the thread's or a fallback) is under way */
static bool km_rc_joinable;	/* km_rc_thread was started and not joined yet */
static bool km_rc_stop;		/* the library is being unloaded */
static pthread_t km_rc_thread;

static void km_rc_atfork_child(void)
{
	/* The thread does not exist in the child; queued batches are the
	 * parent's business (the child's copies are simply leaked). */
	pthread_condattr_t a;

	/* The condvars too: a parent thread waiting on one at fork time would
	 * make the child's first signal wait for it for ever (glibc). */
	pthread_mutex_init(&km_rc_lock, NULL);
	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&km_rc_work, &a);
	pthread_cond_init(&km_rc_done, &a);
	pthread_condattr_destroy(&a);
	km_rc_queue = NULL;
	km_rc_running = false;
	km_rc_in_round = false;
	km_rc_joinable = false;
	km_rc_reclaimed = km_rc_queued;
}

static void km_rc_init(void)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(&km_rc_work, &a);
	pthread_cond_init(&km_rc_done, &a);
	pthread_condattr_destroy(&a);
	/* urcu-bp needs its fork hooks, or a child's grace periods wait for
	 * parent threads that were inside a read-side section at fork time. */
	pthread_atfork(urcu_bp_before_fork, urcu_bp_after_fork_parent, urcu_bp_after_fork_child);
	pthread_atfork(NULL, NULL, km_rc_atfork_child);
}

/* Registered by km_create, so that fork works before the first batch too. */
void km_global_init(void)
{
	pthread_once(&km_rc_once, km_rc_init);
}

/* The library is unloaded (dlclose) or the process exits: no thread of ours
 * may outlive the code it runs. */
__attribute__((destructor)) static void km_rc_fini(void)
{
	pthread_mutex_lock(&km_rc_lock);
	km_rc_stop = true;
	if (km_rc_running)
		pthread_cond_signal(&km_rc_work);
	bool join = km_rc_joinable;

	km_rc_joinable = false;
	pthread_mutex_unlock(&km_rc_lock);
	if (join)
		pthread_join(km_rc_thread, NULL);
}

/*
 * One round, called and returning with km_rc_lock held, never while another
 * round is under way: take every queued batch, wait for a grace period
 * (every read-side section that could have seen these entries, unlinked
 * before they were queued, has ended), then pool or free them and wake
 * km_reclaim_wait.
 *
 * Rounds are serialised because km_rc_reclaimed is one number: a round
 * publishes "every batch queued before I started is reclaimed", which is
 * true only if no earlier round still holds some of them (a fallback round
 * in km_reclaim_wait beside a thread started later would otherwise let
 * km_destroy free a table whose batch the other round still reclaims).
 */
static void km_rc_round(void)
{
	struct km_entry *batches = km_rc_queue;
	uint64_t upto = km_rc_queued;

	km_rc_in_round = true;
	km_rc_queue = NULL;
	pthread_mutex_unlock(&km_rc_lock);
	km_hook(KM_HOOK_RECLAIM_ROUND, NULL);
	urcu_bp_synchronize_rcu();
	km_rcu_reclaim_begin();
	while (batches != NULL) {
		struct km_entry *next = batches->batch_next;

		km_reclaim_batch(batches);
		batches = next;
	}
	pthread_mutex_lock(&km_rc_lock);
	km_rc_reclaimed = upto;	/* rounds are serialised: upto only grows */
	km_rc_in_round = false;
	pthread_cond_broadcast(&km_rc_done);
}

static void *km_rc_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&km_rc_lock);
	for (;;) {
		if (km_rc_queue == NULL) {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_nsec += KM_RECLAIM_IDLE_MS * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			if (!km_rc_stop)
				pthread_cond_timedwait(&km_rc_work, &km_rc_lock, &ts);
			if (km_rc_queue == NULL)
				break;	/* idle or unloading: leave no thread behind */
			continue;
		}
		if (km_rc_in_round) {	/* a fallback round: ours comes after it */
			pthread_cond_wait(&km_rc_done, &km_rc_lock);
			continue;
		}
		km_rc_round();
	}
	km_rc_running = false;
	pthread_mutex_unlock(&km_rc_lock);
	return NULL;
}

void km_reclaim_enqueue(struct km_entry *batch)
{
	pthread_once(&km_rc_once, km_rc_init);
	pthread_mutex_lock(&km_rc_lock);
	batch->batch_next = km_rc_queue;
	km_rc_queue = batch;
	km_rc_queued++;
	if (!km_rc_running) {
		/* A thread that left on idle is joined (it is past its last
		 * touch of the lock) before the next one starts. */
		if (km_rc_joinable)
			pthread_join(km_rc_thread, NULL);
		km_rc_joinable = false;
		if (km_hook(KM_HOOK_RECLAIMER_CREATE, NULL) == 0 &&
		    pthread_create(&km_rc_thread, NULL, km_rc_main, NULL) == 0) {
			km_rc_running = true;
			km_rc_joinable = true;
		}
		/* If no thread can be made, the batch waits for the next
		 * enqueue or for km_reclaim_wait, which reclaims it itself. */
	} else {
		pthread_cond_signal(&km_rc_work);
	}
	pthread_mutex_unlock(&km_rc_lock);
}

/*
 * Wait until every batch queued before this call is reclaimed. Must not be
 * called inside a read-side section (the grace period would wait for us).
 */
void km_reclaim_wait(void)
{
	pthread_once(&km_rc_once, km_rc_init);
	pthread_mutex_lock(&km_rc_lock);
	uint64_t target = km_rc_queued;

	while (km_rc_reclaimed < target) {
		if (!km_rc_running && !km_rc_in_round) {
			km_rc_round();	/* no thread (creation failed): do it here */
			continue;
		}
		pthread_cond_wait(&km_rc_done, &km_rc_lock);
	}
	pthread_mutex_unlock(&km_rc_lock);
}
