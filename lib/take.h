/*
 * The front of every acquire, inlined into km_acquire and km_acquire_async
 * (the hot path: an out-of-line call with its pointer results cost ~75
 * instructions per lock+unlock under callgrind).
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_TAKE_H
#define KM_TAKE_H

#include "internal.h"
#include "table.h"

/*
 * The front of every acquire, sync or async, inside a read-side section:
 * find (or insert, born held) the key's entry and take a hold at once if no
 * queued request comes first, re-reading the word up to spin times while it
 * is only held. Returns 0 (held: *nested for an owner's recursive hold),
 * EBUSY (*ep must be waited for), EDEADLK or EINVAL (owner rules), ENOMEM.
 */
static inline __attribute__((always_inline)) int
km_take_now(struct km *km, uint32_t h, const void *key, size_t len, bool shared,
		const void *owner, unsigned spin, struct km_entry **ep, bool *nested)
{
	uint64_t born = km_s_take(0, shared, km->max_holders);

	*nested = false;
	for (;;) {		/* once more per dead entry met: never revive one */
		bool inserted = false;
		uintptr_t head;
		struct km_entry *e = km_table_find(km, h, key, len, &head);

		if (e == NULL) {	/* a new key (or a race with its death) */
			e = km_table_insert(km, h, key, len, born, head, &inserted);
			if (e == NULL)
				return ENOMEM;
		}
		*ep = e;
		if (inserted)
			return 0;
		if (owner != NULL && km_load_acquire(&e->owner) == owner) {
			/* Only this owner stores itself here, and clears it
			 * before releasing: it holds the key exclusively, and
			 * only it may release that hold (km_unlock_owner), so
			 * the count below cannot race a release. */
			if (km->flags & KM_ERRORCHECK)
				return EDEADLK;
			if (shared)
				return EINVAL;
			km_hook(KM_HOOK_NESTED, NULL);
			km_store_relaxed(&e->recursion, km_load_relaxed(&e->recursion) + 1);
			*nested = true;
			return 0;
		}
		uint64_t s = km_load_acquire(&e->state);

		/* Retries when another thread changed the word between our
		 * read and our CAS. */
		for (unsigned n = 0;; n++) {
			if (km_s_dead(s))
				break;
			if (km_may_barge(km, s, shared)) {
				if (km_cas_acquire(&e->state, &s,
						   km_s_take(s, shared, km->max_holders)))
					return 0;
				continue;
			}
			if (n >= spin || km_s_waiters(s) != 0)
				return EBUSY;
			km_cpu_relax();
			s = km_load_acquire(&e->state);
		}
	}
}

#endif /* KM_TAKE_H */
