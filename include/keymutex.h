/*
 * keymutex: locking by key.
 *
 * Work on the same key serializes, work on different keys runs in parallel,
 * and a key nobody holds or awaits costs nothing beyond a bounded pool.
 *
 * Conventions (every function below follows them):
 *
 *  - A function that can fail returns 0 or a positive errno value. It never
 *    aborts, never prints, and leaves the table as it was on every error path.
 *    Bad arguments (NULL where an object is required, a NULL key with len > 0,
 *    unknown flag bits, contradictory options) give EINVAL.
 *  - A key is the byte string (key, len), compared by content; len == 0 is a
 *    valid key. The bytes are copied: the caller's buffer may change or be
 *    freed as soon as the call returns.
 *  - Memory ordering: a successful acquire is an acquire operation and
 *    km_unlock a release operation on the key, as for pthread_mutex_lock and
 *    pthread_mutex_unlock: everything a holder of a key wrote before
 *    km_unlock is visible to the next holder of that key once its acquire
 *    returns. Different keys are not ordered with each other.
 *  - Every function is thread-safe. Nothing may use a table during or after
 *    km_destroy. No thread registers with anything; a thread may exit at any
 *    time (while holding a key, too: the key stays held until some thread
 *    unlocks its guard).
 *  - Locks are not thread-affine: a guard may be unlocked by another thread.
 *    Only KM_RECURSIVE / KM_ERRORCHECK tables track owners: there an
 *    exclusive hold (KM_ERRORCHECK: any hold) is released only by naming its
 *    owner (km_unlock_owner), and an async hold taken without an explicit
 *    owner has none (any thread may release it).
 *  - Deadlines are absolute CLOCK_MONOTONIC times. A deadline already passed
 *    means "try once": ETIMEDOUT if the key is not free.
 *  - Hashing is keyed with a per-table random seed (hash-flooding safe).
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KEYMUTEX_H
#define KEYMUTEX_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KM_VERSION_MAJOR 0
#define KM_VERSION_MINOR 1
#define KM_VERSION_PATCH 0

#if defined(KM_BUILDING_LIBRARY) && (defined(__GNUC__) || defined(__clang__))
#define KM_API __attribute__((visibility("default")))
#else
#define KM_API
#endif

/* ------------------------------------------------------------------ */
/* The table                                                           */
/* ------------------------------------------------------------------ */

struct km;		/* opaque */
struct km_token;	/* cancellation token */
struct km_port;		/* completion port for asynchronous acquires */

/* Table flags (km_options.flags). */
#define KM_FIFO       0x1u	/* hand the key to waiters strictly in arrival order (no barging;
				   shared mode: the Web Locks rule instead of phase-fair) */
#define KM_RECURSIVE  0x2u	/* an owner may re-acquire a key it holds exclusively; unlock as often */
#define KM_ERRORCHECK 0x4u	/* self re-acquire -> EDEADLK; unlock by another owner -> EPERM */

struct km_options {		/* all-zero (or a NULL pointer) = defaults */
	unsigned max_holders;	/* 0 or 1: a mutex per key; N > 1: N holders at once (keyed semaphore) */
	unsigned max_waiters;	/* per key; 0 = KM_MAX_WAITERS; past it, waiting acquires fail with EAGAIN */
	unsigned shards;	/* 0 = chosen from the CPU count; otherwise a power of two */
	size_t expected_keys;	/* sizing hint: keys held or awaited at once; 0 = default */
	size_t pool_size;	/* free entries kept for reuse; 0 = default (pooling is on by default) */
	size_t pool_prefill;	/* entries allocated by km_create (at most pool_size) */
	unsigned flags;		/* KM_FIFO | KM_RECURSIVE | KM_ERRORCHECK */
};

/* Largest accepted max_holders, max_waiters and shards. */
#define KM_MAX_HOLDERS 0xFFFFFu
#define KM_MAX_WAITERS 0xFFFFFu
#define KM_MAX_SHARDS  4096u

/**
 * km_create - make a keyed-lock table.
 * @out: receives the table.
 * @opt: options, or NULL for the defaults.
 *
 * Returns 0; EINVAL (NULL @out, unknown flags, KM_RECURSIVE together with
 * KM_ERRORCHECK, owner tracking with max_holders > 1, shards not a power of
 * two or above KM_MAX_SHARDS, max_holders or max_waiters above their limits,
 * pool_prefill above pool_size); ENOMEM. *out is untouched on failure.
 * Does not block. Not ordered with anything: publish the table to other
 * threads the usual way (a release store, a mutex, thread creation).
 */
KM_API int km_create(struct km **out, const struct km_options *opt);

/**
 * km_destroy - free a table.
 *
 * Returns 0 and frees everything; EBUSY while any key is held or awaited (the
 * table is untouched and still usable); EINVAL for NULL. Waits for the RCU
 * grace periods of the table's retired entries (rcu_barrier), so it may
 * block briefly; it must not be called from a ready() callback or while any
 * other call on the table is in progress.
 */
KM_API int km_destroy(struct km *km);

/* ------------------------------------------------------------------ */
/* Acquire and release                                                 */
/* ------------------------------------------------------------------ */

/* What a held key is: opaque. Zero-initialised = holds nothing. */
struct km_guard {
	uintptr_t priv[4];
};

#define KM_GUARD_INIT { { 0, 0, 0, 0 } }

/*
 * Acquire flags (km_lock_options.flags).
 *
 * KM_SHARED: shared (read) mode, mutex tables only (max_holders 0 or 1):
 * any number of shared holders, or one exclusive holder. The grant rule is
 * phase-fair by default:
 *  - a shared request is granted at once while only shared holders hold the
 *    key and no request waits on it (one CAS, no lock); otherwise it queues,
 *    so readers arriving while an exclusive request waits queue behind it;
 *  - when an exclusive holder leaves, every shared request waiting at that
 *    moment is granted together, also those queued behind the next
 *    exclusive request; that exclusive request goes next, once they left;
 *  - while a shared request waits, exclusive newcomers do not barge.
 * A reader waits for at most one writer phase; a writer for at most one
 * reader phase plus the writers ahead of it (and, between writers, the
 * barging allowed without KM_FIFO, bounded by the hand-off after ~1 ms).
 * Neither mode starves. On KM_FIFO tables the queue is served strictly in
 * order (the Web Locks rule): a shared request is granted only with no
 * exclusive request waiting ahead of it, together with the shared requests
 * queued right behind it.
 */
#define KM_SHARED 0x1u	/* shared (read) mode: any number of shared holders, no exclusive one */
#define KM_TRY    0x2u	/* do not wait: EBUSY if the key cannot be had at once */

struct km_lock_options {		/* all-zero (or NULL) = exclusive, wait for ever */
	unsigned flags;			/* KM_SHARED | KM_TRY */
	const struct timespec *deadline; /* CLOCK_MONOTONIC absolute; NULL = none */
	struct km_token *cancel;	/* NULL = not cancellable */
	const void *owner;		/* NULL = the calling thread (matters only with
					   KM_RECURSIVE / KM_ERRORCHECK) */
};

/**
 * km_acquire - acquire a key, waiting if needed.
 * @km:  the table.
 * @key: the key's bytes (may be NULL when @len is 0); copied.
 * @len: the key's length.
 * @opt: how to acquire (NULL: exclusive, wait for ever).
 * @g:   receives the hold. Written, never read: on success it holds the key,
 *       on failure it is zeroed.
 *
 * Returns 0 (g holds the key); EBUSY (KM_TRY and the key is not free);
 * ETIMEDOUT (the deadline passed first); ECANCELED (the token was or became
 * cancelled first); EAGAIN (the key already has max_waiters waiters);
 * EDEADLK (KM_ERRORCHECK and the owner already holds the key exclusively;
 * shared holds are not owner-tracked, so a shared re-acquire is not
 * detected); ENOMEM;
 * EINVAL (NULL @km or @g, NULL @key with @len > 0, unknown flags, KM_SHARED
 * on a table with max_holders > 1, an invalid deadline (tv_nsec outside
 * [0, 1e9)), KM_SHARED re-acquire of a key the owner holds exclusively on a
 * KM_RECURSIVE table).
 *
 * Blocking: blocks until the key is granted, the deadline passes or the
 * token is cancelled; spins briefly before it sleeps on a futex. Never
 * blocks with KM_TRY.
 * Memory ordering: success is an acquire operation on the key.
 * Failure holds nothing and changes nothing visible.
 */
KM_API int km_acquire(struct km *km, const void *key, size_t len,
		      const struct km_lock_options *opt, struct km_guard *g);

/**
 * km_unlock - release what a guard holds.
 *
 * Returns 0 and zeroes @g; EINVAL for NULL; EPERM if @g holds nothing (a
 * zeroed guard, a double unlock) or, on an owner table, if the calling
 * thread is not the owner of the hold (KM_RECURSIVE: exclusive holds;
 * KM_ERRORCHECK: every hold; an async hold taken without an explicit owner
 * has none and is never refused): nothing changes then. On a KM_RECURSIVE
 * table an owner's nested holds need one unlock each.
 *
 * Never blocks for long: it may briefly take the key's internal queue lock
 * to wake the next waiter (exactly the waiter(s) that can proceed).
 * Memory ordering: a release operation on the key.
 * On tables without owners the guard may be unlocked by any thread; on
 * owner tables, by its owner (km_unlock_owner for owners that are not the
 * calling thread). Any thread may call it.
 */
KM_API int km_unlock(struct km_guard *g);

/**
 * km_unlock_owner - km_unlock on behalf of a named owner.
 *
 * As km_unlock, except that on an owner table (KM_RECURSIVE, KM_ERRORCHECK)
 * the hold's owner is compared with @owner (NULL = the calling thread)
 * instead of the calling thread: for owners that are execution contexts
 * moving between threads. An owner's calls must not run concurrently with
 * each other (its nested acquire and its unlock are not atomic together).
 */
KM_API int km_unlock_owner(struct km_guard *g, const void *owner);

/* Shorthands, each exactly km_acquire with the matching options. */
KM_API int km_lock(struct km *km, const void *key, size_t len, struct km_guard *g);
/* KM_TRY: EBUSY if busy. */
KM_API int km_trylock(struct km *km, const void *key, size_t len, struct km_guard *g);
/* With a deadline: ETIMEDOUT once it passes. */
KM_API int km_timedlock(struct km *km, const void *key, size_t len,
			const struct timespec *deadline, struct km_guard *g);
/* KM_SHARED. */
KM_API int km_lock_shared(struct km *km, const void *key, size_t len, struct km_guard *g);
/* KM_SHARED | KM_TRY. */
KM_API int km_trylock_shared(struct km *km, const void *key, size_t len, struct km_guard *g);

/* ------------------------------------------------------------------ */
/* Several keys at once                                                */
/* ------------------------------------------------------------------ */

struct km_key {
	const void *ptr;
	size_t len;
};

/**
 * km_acquire_all - acquire n keys, all or none.
 * @keys:   the keys; each may appear only once.
 * @n:      how many (0 is valid and does nothing).
 * @opt:    applies to the whole set: KM_TRY, KM_SHARED, the deadline and
 *          the token bound the whole call.
 * @guards: n guards, written: guards[i] holds keys[i] on success; all zeroed
 *          on failure.
 *
 * Returns 0 or any code of km_acquire, and EINVAL for a repeated key or a
 * NULL @keys / @guards with n > 0. On any failure no key of the set is held.
 * Keys are taken in one canonical order (by the table's keyed hash, then by
 * bytes), so concurrent calls with overlapping sets never deadlock each other.
 * Blocking and memory ordering as km_acquire, for each key.
 */
KM_API int km_acquire_all(struct km *km, const struct km_key *keys, size_t n,
			  const struct km_lock_options *opt, struct km_guard *guards);

/**
 * km_unlock_all - unlock n guards.
 *
 * km_unlock on each guard, last first: unlocks (and zeroes) every guard that
 * km_unlock accepts. Returns 0, EINVAL for NULL @guards with n > 0, or the
 * first error km_unlock gave (EPERM for a guard that held nothing or, on an
 * owner table, for a hold the calling thread does not own: that guard is
 * left as it was); the other guards are still unlocked. Any thread may call
 * it.
 */
KM_API int km_unlock_all(struct km_guard *guards, size_t n);

/**
 * km_unlock_all_owner - km_unlock_all on behalf of a named owner.
 *
 * As km_unlock_all, with km_unlock_owner(g, @owner) on each guard: for sets
 * taken with an explicit opt->owner on a KM_RECURSIVE or KM_ERRORCHECK
 * table, or released on another thread than the owner's.
 */
KM_API int km_unlock_all_owner(struct km_guard *guards, size_t n, const void *owner);

/* ------------------------------------------------------------------ */
/* Cancellation                                                        */
/* ------------------------------------------------------------------ */

/**
 * km_token_create - make a cancellation token (not cancelled).
 * Returns 0, EINVAL (NULL @out), ENOMEM. Does not block.
 */
KM_API int km_token_create(struct km_token **out);

/**
 * km_token_cancel - cancel a token.
 *
 * Every wait (sync or async) using @t that has not been granted yet returns
 * ECANCELED now (sync waiters wake at once; async requests complete through
 * ready() with ECANCELED); every later acquire with @t fails ECANCELED.
 * Idempotent; NULL is ignored. Does not block (beyond internal locks);
 * ready() callbacks of requests without a port run on the calling thread
 * before it returns. A cancel is ordered after every grant it does not
 * cancel.
 */
KM_API void km_token_cancel(struct km_token *t);

/**
 * km_token_destroy - free a token.
 * Returns 0; EBUSY while a wait still uses @t (nothing changes); EINVAL for NULL.
 */
KM_API int km_token_destroy(struct km_token *t);

/* ------------------------------------------------------------------ */
/* Asynchronous acquire                                                */
/* ------------------------------------------------------------------ */

struct km_request;
typedef void km_ready_fn(struct km_request *req, int status);

struct km_request {		/* caller-owned; must stay valid until ready() has run */
	struct km_guard guard;	/* out: holds the key when status is 0 */
	km_ready_fn *ready;	/* in */
	void *arg;		/* in: the caller's */
	struct km_port *port;	/* in: where ready() runs; NULL = on the thread that grants */
	uintptr_t priv[8];
};

/**
 * km_acquire_async - acquire a key without blocking the caller.
 *
 * Returns 0: acquired at once, req->guard holds it, ready() is not called.
 * EINPROGRESS: the request waits in the key's queue (with the sync waiters);
 * ready(req, status) runs exactly once later, with status 0 (req->guard
 * holds the key), ETIMEDOUT (opt->deadline passed; the library's timer
 * thread fires it) or ECANCELED (token or km_request_cancel).
 * Any other value: failed at once, ready() is not called: EBUSY (KM_TRY on a
 * busy key), EAGAIN, EDEADLK, EINVAL (also a NULL req->ready), ENOMEM,
 * ECANCELED (token already cancelled), ETIMEDOUT (deadline already passed).
 *
 * Where ready() runs: with req->port == NULL, on the thread that grants the
 * key (usually the one calling km_unlock), the timer thread (ETIMEDOUT) or
 * the thread calling km_token_cancel / km_request_cancel (ECANCELED); never
 * under an internal lock, and never nested: a ready() that releases a key
 * whose next waiter is async queues that completion on the same thread, run
 * after the current ready() returns (bounded stack). With a port, ready()
 * runs only inside km_port_run on the port owner's thread.
 * ready() may call any km_ function, including km_unlock(&req->guard).
 * Owner tables: the hold's owner is opt->owner (unlock it with
 * km_unlock_owner(&req->guard, opt->owner)); without one the hold has no
 * owner, any thread may release it with km_unlock, and the request is not
 * matched against the issuing thread's holds (it queues; no nesting, no
 * EDEADLK).
 * Memory ordering: ready() with status 0 is ordered after the grant as a
 * successful km_acquire is.
 */
KM_API int km_acquire_async(struct km *km, const void *key, size_t len,
			    const struct km_lock_options *opt, struct km_request *req);

/**
 * km_request_cancel - cancel a waiting asynchronous request.
 *
 * Returns 0: the request was still waiting and ready() will run (or has run,
 * when this thread ran it) with ECANCELED; EALREADY: it was already granted
 * or completed; EINVAL for NULL. Does not block beyond internal locks.
 */
KM_API int km_request_cancel(struct km_request *req);

/**
 * km_port_create - make a completion port (an eventfd inside).
 * Returns 0, EINVAL, ENOMEM, or the errno of eventfd() (EMFILE, ENFILE).
 */
KM_API int km_port_create(struct km_port **out);

/**
 * km_port_fd - the port's file descriptor: readable while completions wait,
 * not once drained; for epoll/poll/libuv. -1 for NULL. Never read it yourself.
 */
KM_API int km_port_fd(const struct km_port *p);

/**
 * km_port_run - run the waiting ready() calls on this thread.
 * Returns how many ran (>= 0), or -EINVAL for NULL. Never blocks.
 * Completions queued while it runs are left for the next call.
 */
KM_API int km_port_run(struct km_port *p);

/**
 * km_port_destroy - free a port.
 * Returns 0; EBUSY while requests for it are pending (waiting, or completed
 * but not yet run by km_port_run): nothing changes; EINVAL for NULL.
 */
KM_API int km_port_destroy(struct km_port *p);

/* ------------------------------------------------------------------ */
/* Introspection                                                       */
/* ------------------------------------------------------------------ */

struct km_stats {
	size_t keys;		/* entries in the table: keys held or awaited now */
	size_t holders;		/* holds now (a shared key with 3 readers counts 3) */
	size_t waiters;		/* sync and async waits now */
	size_t pooled;		/* free entries kept for reuse */
	uint64_t acquired;	/* successful acquires since km_create */
	uint64_t contended;	/* of those, how many had to wait (queued or parked) first */
	uint64_t timeouts, cancels, rejected; /* ETIMEDOUT, ECANCELED, EAGAIN outcomes */
};

/**
 * km_stats - counters of a table.
 * Returns 0; EINVAL for NULL. Exact whenever no other call on the table is
 * in progress; while calls run, each field is a recent value (fields need not
 * be mutually consistent). Walks the table: O(shards + buckets + keys).
 * Never blocks; takes no lock that acquire or release takes.
 */
KM_API int km_stats(struct km *km, struct km_stats *out);

/* Called by km_query for each held or awaited key; non-zero stops the walk. */
typedef int km_visit_fn(const void *key, size_t len, unsigned holders,
			unsigned waiters, int shared, void *arg);

/**
 * km_query - visit a snapshot of the held and awaited keys.
 *
 * Calls @visit once for each key that was held or awaited during the walk,
 * with its bytes (valid only during the call), holders, waiters and whether
 * it is held in shared mode. Returns 0, or the first non-zero value @visit
 * returned; EINVAL for NULL @km or @visit; ENOMEM if the copy of a batch
 * of keys cannot be allocated (the keys visited until then were visited).
 * Safe under load: each key's figures are one atomic snapshot of its state
 * word; the set of keys is not a single instant.
 *
 * Blocking: @visit runs on the calling thread with no internal lock held and
 * outside any RCU read-side section (the walk copies a few buckets at a
 * time, then visits the copies), so it may block and may call any km_
 * function except km_destroy, including km_lock on a key it is visiting.
 * Any thread may call it.
 */
KM_API int km_query(struct km *km, km_visit_fn *visit, void *arg);

/* ------------------------------------------------------------------ */
/* Version                                                             */
/* ------------------------------------------------------------------ */

/* The library's version at run time, as (major << 16) | (minor << 8) | patch. */
KM_API unsigned km_version(void);

#ifdef __cplusplus
}
#endif

#endif /* KEYMUTEX_H */
