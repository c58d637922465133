/*
 * Unit tests: ENOMEM from km_create and km_acquire, built only with
 * -Dfault_injection=true (the library then exports km__fault_fail_after and
 * km__fault_sites, see lib/fault.c). Every allocation site is made to fail
 * in turn; each failure must give ENOMEM, leave *out / the guard as the
 * contract says, leak nothing (run under ASan) and leave the table usable.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include "km_test.h"

/* TEST ONLY symbols of fault-injection builds. */
void km__fault_fail_after(long n);
long km__fault_sites(void);

TestSuite(enomem, .timeout = 60);

Test(enomem, create_every_site)
{
	struct km_options o;
	long n, failures = 0;

	memset(&o, 0, sizeof o);
	o.shards = 4;
	o.pool_size = 8;
	o.pool_prefill = 8;
	for (n = 0; n < 10000; n++) {
		struct km *km = (struct km *)(uintptr_t)0x5EED;

		km__fault_fail_after(n);
		int rc = km_create(&km, &o);
		long sites = km__fault_sites();

		km__fault_fail_after(-1);
		if (rc == 0) {
			cr_assert_leq(sites, n, "km_create succeeded through a failed site");
			cr_assert_eq(kt_stats(km).pooled, 8);
			cr_assert_eq(km_destroy(km), 0);
			break;
		}
		cr_assert_eq(rc, ENOMEM, "site %ld: %d", n, rc);
		cr_assert_eq(km, (struct km *)(uintptr_t)0x5EED, "site %ld: *out touched", n);
		failures++;
	}
	/* the km, the shard array, 4 bucket arrays, 8 prefilled entries */
	cr_assert_geq(failures, 3, "only %ld allocation sites in km_create", failures);
}

Test(enomem, acquire_new_key)
{
	struct km *km;
	struct km_guard g, h;
	struct km_options o;

	memset(&o, 0, sizeof o);
	o.pool_size = 1;	/* and no prefill: a new key allocates its entry */
	cr_assert_eq(km_create(&km, &o), 0);
	for (int i = 0; i < 3; i++) {
		static const size_t lens[3] = { 5, 40, 200 };	/* pooled classes and exact */
		char key[200];

		memset(key, 'a' + i, sizeof key);
		kt_poison(&g);
		km__fault_fail_after(0);
		int rc = km_lock(km, key, lens[i], &g);

		km__fault_fail_after(-1);
		cr_assert_eq(rc, ENOMEM, "len %zu: %d", lens[i], rc);
		cr_assert(kt_guard_zero(&g), "len %zu: guard not zeroed", lens[i]);
		cr_assert_eq(km_unlock(&g), EPERM);
		/* nothing held, nothing counted */
		struct km_stats st = kt_stats(km);

		cr_assert_eq(st.keys, 0);
		cr_assert_eq(st.holders, 0);
		cr_assert_eq(st.acquired, 0);
		cr_assert_eq(st.timeouts + st.cancels + st.rejected, 0);
		/* the key still works */
		cr_assert_eq(km_lock(km, key, lens[i], &g), 0);
		/* a held key needs no allocation: KM_TRY on it gives EBUSY */
		km__fault_fail_after(0);
		rc = km_trylock(km, key, lens[i], &h);
		km__fault_fail_after(-1);
		cr_assert_eq(rc, EBUSY);
		cr_assert_eq(km_unlock(&g), 0);
		cr_assert_eq(kt_stats(km).acquired, 1);
		cr_assert_eq(km_destroy(km), 0);
		cr_assert_eq(km_create(&km, &o), 0);
	}
	cr_assert_eq(km_destroy(km), 0);
}
