/*
 * TEST ONLY (-Dtest_hooks=true): the hook itself, and a way for tests to
 * force reclamation. See testhook.h.
 *
 * km__hook_set(fn): install fn (NULL removes it). Tests install it while
 *   no other thread uses the library, and remove it the same way.
 * km__quiesce(km): hand every retired entry of the table to the reclaimer
 *   and wait until all are reclaimed (freed or pooled). Not inside a
 *   read-side section; returns 0, or EINVAL for NULL.
 * km__in_read_section(): non-zero inside a read-side section.
 *
 * These symbols exist only in test-hook builds.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

KM_API void km__hook_set(km__hook_fn *fn);
KM_API int km__quiesce(struct km *km);
KM_API int km__in_read_section(void);

static km__hook_fn *km_hook_fn;

void km__hook_set(km__hook_fn *fn)
{
	__atomic_store_n(&km_hook_fn, fn, __ATOMIC_SEQ_CST);
}

int km_hook(enum km_hook_point p, void *arg)
{
	km__hook_fn *fn = __atomic_load_n(&km_hook_fn, __ATOMIC_ACQUIRE);

	return fn != NULL ? fn((int)p, arg) : 0;
}

int km__quiesce(struct km *km)
{
	if (km == NULL)
		return EINVAL;
	km_retire_flush_all(km);
	km_reclaim_wait();
	return 0;
}

int km__in_read_section(void)
{
	return urcu_bp_read_ongoing();
}
