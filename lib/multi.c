/*
 * km_acquire_all / km_unlock_all: many keys, all or none.
 *
 * Deadlock freedom: every caller takes its keys in one canonical order, by
 * the table's keyed hash, then length, then bytes. Two calls with
 * overlapping sets therefore request their common keys in the same order,
 * and no cycle of waits can form among them.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

#include <stdlib.h>

struct km_slot {
	uint64_t h;
	size_t i;		/* index in the caller's arrays */
	const struct km_key *k;
};

static int km_slot_cmp(const void *a, const void *b)
{
	const struct km_slot *x = a, *y = b;

	if (x->h != y->h)
		return x->h < y->h ? -1 : 1;
	if (x->k->len != y->k->len)
		return x->k->len < y->k->len ? -1 : 1;
	if (x->k->len == 0)
		return 0;
	return memcmp(x->k->ptr, y->k->ptr, x->k->len);
}

int km_acquire_all(struct km *km, const struct km_key *keys, size_t n,
		   const struct km_lock_options *opt, struct km_guard *guards)
{
	struct km_slot stack[16], *order = stack;
	size_t i, got = 0;
	int rc;

	if (guards != NULL)
		memset(guards, 0, n * sizeof *guards);
	if (km == NULL || (n > 0 && (keys == NULL || guards == NULL)))
		return EINVAL;
	rc = km_check_lock_options(km, opt);
	if (rc != 0)
		return rc;
	for (i = 0; i < n; i++)
		if (km_key_ok(keys[i].ptr, keys[i].len) != 0)
			return EINVAL;
	if (n == 0)
		return 0;
	if (n > sizeof stack / sizeof stack[0]) {
		if (n > SIZE_MAX / sizeof *order)
			return ENOMEM;
		order = km_malloc(n * sizeof *order);
		if (order == NULL)
			return ENOMEM;
	}
	for (i = 0; i < n; i++)
		order[i] = (struct km_slot){ km_hash(km, keys[i].ptr, keys[i].len), i, &keys[i] };
	qsort(order, n, sizeof *order, km_slot_cmp);
	for (i = 1; i < n; i++) {
		if (km_slot_cmp(&order[i - 1], &order[i]) == 0) {
			rc = EINVAL;	/* a key appears twice */
			goto out;
		}
	}
	for (got = 0; got < n; got++) {
		const struct km_slot *s = &order[got];

		rc = km_acquire(km, s->k->ptr, s->k->len, opt, &guards[s->i]);
		if (rc != 0)
			break;
	}
	if (rc != 0) {
		while (got > 0)		/* release in reverse: all or none */
			(void)km_unlock_owner(&guards[order[--got].i],
					      opt != NULL ? opt->owner : NULL);
	}
out:
	if (order != stack)
		free(order);
	return rc;
}

int km_unlock_all_owner(struct km_guard *guards, size_t n, const void *owner)
{
	int first = 0;

	if (n > 0 && guards == NULL)
		return EINVAL;
	for (size_t i = n; i > 0; i--) {
		int r = km_unlock_owner(&guards[i - 1], owner);

		if (r != 0 && first == 0)
			first = r;
	}
	return first;
}

int km_unlock_all(struct km_guard *guards, size_t n)
{
	return km_unlock_all_owner(guards, n, NULL);
}
