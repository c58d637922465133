/*
 * Compiled by check-headers.sh as C11 and C17 (and as C++11 and C++17)
 * with -Wall -Wextra -Wpedantic -Werror and more: the public C headers must
 * compile cleanly wherever a consumer includes them.
 * SPDX-License-Identifier: MIT
 */
#include <keymutex.h>
#include <keymutex_scoped.h>
#include <keymutex.h> /* include guards */
#include <keymutex_scoped.h>

int km_header_check(struct km *km, const char *key, size_t len);

int km_header_check(struct km *km, const char *key, size_t len)
{
	struct km_lock_options o = { KM_TRY, NULL, NULL, NULL };
	struct km_guard g = KM_GUARD_INIT;
	int rc = km_acquire(km, key, len, &o, &g);
	if (rc == 0)
		rc = km_unlock(&g);
	{
		KM_SCOPED_LOCK(r1, km, key, len);
		KM_SCOPED_TRYLOCK(r2, km, "other", 5);
		KM_SCOPED_GUARD(g2);
		if (r1 != 0 || r2 != 0)
			return r1 ? r1 : r2;
		rc = km_trylock_shared(km, "third", 5, &g2);
	}
	return rc + (int)(km_version() >> 16);
}
