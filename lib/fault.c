/*
 * TEST ONLY (-Dfault_injection=true): make allocation sites fail on demand.
 *
 * km__fault_fail_after(n): the next n allocation sites succeed, the one after
 * fails (returns NULL / an error), then all succeed again. n < 0 disables.
 * km__fault_sites(): how many allocation sites were passed since the last
 * call to km__fault_fail_after, so a test can walk every site one by one.
 * These symbols exist only in fault-injection builds.
 *
 * SPDX-License-Identifier: MIT
 */
#include "internal.h"

static long km_fault_countdown = -1;	/* sites left before the failure */
static long km_fault_passed;

KM_API void km__fault_fail_after(long n);
KM_API long km__fault_sites(void);

void km__fault_fail_after(long n)
{
	__atomic_store_n(&km_fault_passed, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&km_fault_countdown, n, __ATOMIC_RELAXED);
}

long km__fault_sites(void)
{
	return __atomic_load_n(&km_fault_passed, __ATOMIC_RELAXED);
}

bool km_fault_hit(void)
{
	__atomic_fetch_add(&km_fault_passed, 1, __ATOMIC_RELAXED);
	if (__atomic_load_n(&km_fault_countdown, __ATOMIC_RELAXED) < 0)
		return false;
	return __atomic_sub_fetch(&km_fault_countdown, 1, __ATOMIC_RELAXED) == -1;
}
