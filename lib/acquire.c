/*
 * km_acquire, km_unlock and the shorthands.
 *
 * Acquire, fast path: look the key up (or insert a fresh entry that is born
 * held by us) and take a hold with one CAS on the state word. The CAS is the
 * linearisation point of the acquire; it is an acquire operation, so the
 * previous holder's writes (published by its release CAS) are visible.
 * Slow path: spin briefly re-reading the word, then queue and park (wait.c).
 *
 * Release: one CAS drops the hold; if that leaves nobody holding or waiting,
 * the same CAS sets DEAD (linearisation point of the removal), and the
 * releaser unlinks the entry and retires it through RCU; or, for a key this
 * thread killed recently (second sighting, km_release), it sets IDLEQ and
 * the entry waits in an idle ring for its key (pool.c). If waiters remain,
 * the releaser wakes or grants the next one.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"
#include "take.h"

#define KM_SPIN 100			/* state-word re-reads before queueing */

#define KM_G_SHARED ((uintptr_t)1)	/* guard priv[1] bit: a shared hold */

/*
 * The calling thread as an owner: a number drawn once per thread, never
 * reused (a TLS address would be: a new thread may get an exited one's),
 * tagged odd so that it cannot equal an aligned pointer used as an explicit
 * owner.
 */
static uintptr_t km_next_self;
static __thread uintptr_t km_self __attribute__((tls_model("initial-exec")));

static const void *km_thread_owner(void)
{
	uintptr_t s = km_self;

	if (km_unlikely(s == 0)) {
		s = (__atomic_add_fetch(&km_next_self, 1, __ATOMIC_RELAXED) << 1) | 1;
		km_self = s;
	}
	return (const void *)s;
}

const void *km_owner_of(const struct km_lock_options *opt)
{
	return opt != NULL && opt->owner != NULL ? opt->owner : km_thread_owner();
}

int km_key_ok(const void *key, size_t len)
{
	if (key == NULL && len > 0)
		return EINVAL;
	if (len > UINT32_MAX)
		return EINVAL;
	return 0;
}

int km_check_lock_options(const struct km *km, const struct km_lock_options *opt)
{
	if (opt == NULL)
		return 0;
	if (opt->flags & ~(KM_SHARED | KM_TRY))
		return EINVAL;
	if ((opt->flags & KM_SHARED) && km->max_holders > 1)
		return EINVAL;
	if (opt->deadline != NULL &&
	    (opt->deadline->tv_nsec < 0 || opt->deadline->tv_nsec >= 1000000000L))
		return EINVAL;
	return 0;
}

void km_count(struct km *km, int outcome)
{
	struct km_stripe *st = km_my_stripe(km);

	switch (outcome) {
	case ETIMEDOUT: km_add_relaxed(&st->timeouts, 1); break;
	case ECANCELED: km_add_relaxed(&st->cancels, 1); break;
	case EAGAIN: km_add_relaxed(&st->rejected, 1); break;
	default: break;
	}
}

void km_guard_fill(struct km_guard *g, struct km *km, struct km_entry *e,
		   unsigned wflags, const void *owner)
{
	g->priv[0] = (uintptr_t)km;
	g->priv[1] = (uintptr_t)e | ((wflags & KM_WF_SHARED) ? KM_G_SHARED : 0);
	g->priv[2] = 0;
	g->priv[3] = (uintptr_t)owner;
}

/* A hold was just taken (at once or granted): record its owner, fill g.
 * Only the owner of an exclusive hold writes owner and recursion, while it
 * holds the key; other owners only compare owner with themselves. */
void km_guard_held(struct km_guard *g, struct km *km, struct km_entry *e,
		   unsigned wflags, const void *owner)
{
	if (owner != NULL && !(wflags & KM_WF_SHARED)) {
		km_store_relaxed(&e->recursion, 0);
		/* Release: an owner that sees itself here (take.h, acquire
		 * load) sees the reset count too, even when the grant ran on
		 * another thread (an async request naming an owner). */
		km_store_release(&e->owner, owner);
	}
	km_guard_fill(g, km, e, wflags, owner);
}

/*
 * Admission to the idle ring on second sighting (issue 12, review note 7).
 * Keeping every released key idle made a stream of new keys pay, per
 * release, for the IDLEQ CAS, a ring exchange and a cold victim's eviction
 * (its CAS, unlink and retirement). Instead a release that leaves an entry
 * unused kills it and notes its hash here, in a small per-thread,
 * direct-mapped filter of keys this thread killed recently; a later release
 * of the same key (a fresh entry) that finds its hash noted keeps that entry
 * idle. A key that recurs within the filter's reach is thus idle from its
 * second release on; a new key costs one filter look-up and one store more
 * than with no idle ring.
 *
 * Nothing depends on the filter being right: a false positive (another key,
 * or another table, with the same slot and tag) only keeps one entry idle,
 * which the ring evicts in turn; a false negative (the slot was overwritten)
 * only costs one more kill, after which the key is noted again. So it is
 * plain per-thread memory, touched only by its thread with plain loads and
 * stores, never by km_destroy, and shared by every table the thread uses:
 * the hash is keyed by its table's secrets, and the table's address is mixed
 * in as well. 128 slots of 16-bit tags: 256 bytes of static TLS (review note
 * 9: keep the library's initial-exec TLS small).
 */
#define KM_SEEN_SLOTS 128		/* power of two */
static __thread uint16_t km_seen[KM_SEEN_SLOTS] __attribute__((tls_model("initial-exec")));

/* The filter's key for hash h of table km: slot from the low bits, tag from
 * the high ones (never 0, so that an empty slot never matches). */
static inline uint32_t km_seen_key(const struct km *km, uint32_t h)
{
	return h ^ ((uint32_t)((uintptr_t)km >> 6) * UINT32_C(0x9E3779B9));
}

static inline uint16_t km_seen_tag(uint32_t k)
{
	return (uint16_t)((k >> 16) | 1);
}

/*
 * Will a release that leaves the word n (idle: it set IDLEQ) touch e or the
 * table after its CAS? Then it must be inside a read-side section from
 * before that CAS on: once our hold is gone, e may die and, after a grace
 * period that does not wait for us, be reused. A release that leaves other
 * holders, or an idle entry idle, or a woken head on its way, touches
 * nothing afterwards and needs no section (review note 3 of the redesign).
 */
static inline bool km_release_follows(const struct km *km, uint64_t n, bool idle)
{
	return km_s_dead(n) || idle ||
	       (km_s_waiters(n) != 0 &&
		(!(n & KM_S_WAKING) || (n & KM_S_HANDOFF) || (km->flags & KM_FIFO)));
}

/* Drop one hold of e (see the file comment). */
static void km_release(struct km *km, struct km_entry *e)
{
	struct km_done done;
	uint16_t *seen = NULL, tag = 0;
	bool admit = false, idle, in_section = false;
	uint64_t s, n;

	s = km_load_relaxed(&e->state);
#ifdef KM_SEED_BUG
	/* TEST ONLY: the seed's bug, remove-then-release. The last holder takes
	 * the entry out of the table before releasing it, so a thread that
	 * already found it (and waits on it) will hold it while a newcomer
	 * creates a fresh entry for the same key: two holders. */
	km_rcu_read_lock();
	in_section = true;
	if (km_s_holders(s) == 1)
		km_table_unlink(km, e);
#endif
	/* Retries when waiters joined or left, or other holders changed the
	 * word. Release orders our critical section before the next holder's;
	 * acquire matters when this CAS kills the entry: it orders every
	 * earlier user's writes to it (a departed waiter's queue links, which
	 * share memory with the retire fields) before our retirement writes.
	 * On x86 both are the same locked instruction. */
	do {
		n = km_s_put(s);
		idle = false;
		/* Phase-fair: an exclusive hold ends while requests wait and a
		 * queued shared request may be among them (it keeps HANDOFF
		 * set): the readers queued now are owed the key before anything
		 * else. We dispatch below (HANDOFF), or whoever takes the qlock
		 * first does. */
		if ((s & KM_S_X) && km_s_waiters(n) != 0 && (n & KM_S_HANDOFF) &&
		    km_phase_fair(km))
			n |= KM_S_RPEND;
		if (km_s_unused(n) && !(n & KM_S_IDLEQ)) {
			if (seen == NULL && km->idle_limit != 0) {
				/* Kept idle only on its second sighting
				 * (above); looked up once, on the first
				 * try that would leave e unused, so a key
				 * held again (IDLEQ still set) skips it.
				 * We hold e, so its hash is stable. */
				uint32_t k = km_seen_key(km, km_load_relaxed(&e->hash));

				seen = &km_seen[k & (KM_SEEN_SLOTS - 1)];
				tag = km_seen_tag(k);
				admit = *seen == tag;
			}
			if (admit) {
				n |= KM_S_IDLEQ;	/* keep it, idle, for its key */
				idle = true;
			} else {
				n = KM_S_DEAD;
			}
		}
		/* Enter the section while our hold still pins e; a retry
		 * that no longer needs it just stays inside. */
		if (!in_section && km_release_follows(km, n, idle)) {
			km_rcu_read_lock();
			in_section = true;
		}
	} while (!km_cas_acq_rel(&e->state, &s, n));

	if (!in_section)
		return;		/* nothing follows: e is not touched again */
	km_done_init(&done);
	if (km_s_dead(n)) {
		if (seen != NULL)
			*seen = tag;		/* its first sighting: noted */
		km_kill(km, e);
	} else if (idle) {
		if (!km_idle_push(km, e))
			km_idle_evict(km, e);	/* no ring memory: do not keep it */
	} else if (km_release_follows(km, n, false)) {	/* waiters to serve */
		km_hook(KM_HOOK_RELEASE_DISPATCH, NULL);
		km_qlock(e);
		km_dispatch(km, e, &done);
		km_qunlock(e);
	}
	km_rcu_read_unlock();
	km_done_deliver(&done);	/* ready() never runs in a read-side section */
	km_reclaim_backpressure(km);
}

int km_acquire(struct km *km, const void *key, size_t len,
	       const struct km_lock_options *opt, struct km_guard *g)
{
	struct km_token *tok;
	struct km_entry *e;
	const void *owner = NULL;
	unsigned flags;
	bool shared, nested, contended = false;
	uint32_t h;
	int rc;

	if (g == NULL)
		return EINVAL;
	memset(g, 0, sizeof *g);
	if (km == NULL || km_key_ok(key, len) != 0)
		return EINVAL;
	rc = km_check_lock_options(km, opt);
	if (rc != 0)
		return rc;
	flags = opt != NULL ? opt->flags : 0;
	shared = (flags & KM_SHARED) != 0;
	tok = opt != NULL ? opt->cancel : NULL;
	if (tok != NULL && km_token_cancelled(tok)) {
		km_count(km, ECANCELED);
		return ECANCELED;
	}
	if (km->flags & KM_OWNER_FLAGS)
		owner = km_owner_of(opt);

	h = km_hash(km, key, len);
	km_rcu_read_lock();
retry:
	rc = km_take_now(km, h, key, len, shared, owner,
			 (flags & KM_TRY) ? 0 : KM_SPIN, &e, &nested);
	if (rc != EBUSY) {
		km_rcu_read_unlock();
		if (rc != 0)
			return rc;
		if (nested)
			km_guard_fill(g, km, e, 0, owner);
		else
			km_guard_held(g, km, e, shared ? KM_WF_SHARED : 0, owner);
		km_add_relaxed(&km_my_stripe(km)->acquired, 1);
		return 0;
	}
	if (flags & KM_TRY) {
		km_rcu_read_unlock();
		return EBUSY;
	}
	if (opt != NULL && km_deadline_passed(opt->deadline)) {
		km_rcu_read_unlock();
		km_count(km, ETIMEDOUT);
		return ETIMEDOUT;
	}
	rc = km_wait_sync(km, e, shared ? KM_WF_SHARED : 0,
			  opt != NULL ? opt->deadline : NULL, tok, &contended);
	if (rc == KM_RETRY)
		goto retry;
	if (rc != 0) {
		km_count(km, rc);
		return rc;
	}
	km_guard_held(g, km, e, shared ? KM_WF_SHARED : 0, owner);
	{
		struct km_stripe *st = km_my_stripe(km);

		km_add_relaxed(&st->acquired, 1);
		if (contended)
			km_add_relaxed(&st->contended, 1);
	}
	return 0;
}

int km_unlock_owner(struct km_guard *g, const void *owner)
{
	struct km_entry *e;
	struct km *km;
	bool shared, owned;

	if (g == NULL)
		return EINVAL;
	e = (struct km_entry *)(g->priv[1] & ~(uintptr_t)15);
	km = (struct km *)g->priv[0];
	if (e == NULL || km == NULL)
		return EPERM;
	shared = (g->priv[1] & KM_G_SHARED) != 0;
	/* On owner tables an exclusive hold with an owner is its owner's to
	 * release (KM_ERRORCHECK: shared holds too): another owner's unlock
	 * could otherwise race the owner's nested acquire, which reads owner,
	 * then counts. An async hold taken without an explicit owner has none:
	 * any thread may release it. */
	owned = (km->flags & KM_OWNER_FLAGS) && g->priv[3] != 0;
	if (owned && (!shared || (km->flags & KM_ERRORCHECK)) &&
	    (const void *)g->priv[3] != (owner != NULL ? owner : km_thread_owner()))
		return EPERM;
	memset(g, 0, sizeof *g);
	if (owned && !shared) {
		uint32_t nested = km_load_relaxed(&e->recursion);

		if (nested > 0) {		/* a nested hold of the owner */
			km_store_relaxed(&e->recursion, nested - 1);
			return 0;
		}
		km_store_relaxed(&e->owner, NULL);
	}
	km_release(km, e);
	return 0;
}

int km_unlock(struct km_guard *g)
{
	return km_unlock_owner(g, NULL);
}

int km_lock(struct km *km, const void *key, size_t len, struct km_guard *g)
{
	return km_acquire(km, key, len, NULL, g);
}

int km_trylock(struct km *km, const void *key, size_t len, struct km_guard *g)
{
	struct km_lock_options o = { .flags = KM_TRY };

	return km_acquire(km, key, len, &o, g);
}

int km_timedlock(struct km *km, const void *key, size_t len,
		 const struct timespec *deadline, struct km_guard *g)
{
	struct km_lock_options o = { .deadline = deadline };

	return km_acquire(km, key, len, &o, g);
}

int km_lock_shared(struct km *km, const void *key, size_t len, struct km_guard *g)
{
	struct km_lock_options o = { .flags = KM_SHARED };

	return km_acquire(km, key, len, &o, g);
}

int km_trylock_shared(struct km *km, const void *key, size_t len, struct km_guard *g)
{
	struct km_lock_options o = { .flags = KM_SHARED | KM_TRY };

	return km_acquire(km, key, len, &o, g);
}

unsigned km_version(void)
{
	return (KM_VERSION_MAJOR << 16) | (KM_VERSION_MINOR << 8) | KM_VERSION_PATCH;
}
