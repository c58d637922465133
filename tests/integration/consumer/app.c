/*
 * A tiny keymutex consumer, built against a staged install (pkg-config,
 * CMake) and as a Meson subproject by the integration tests. Prints one
 * line that the tests compare:
 *   keymutex <runtime version> busy=1 free=1 scoped=1
 * SPDX-License-Identifier: MIT
 */
#include <errno.h>
#include <stdio.h>

#include <keymutex.h>
#include <keymutex_scoped.h>

static int scoped_then_free(struct km *km)
{
	{
		KM_SCOPED_LOCK(rc, km, "k", 1);
		if (rc != 0)
			return 0;
	}
	struct km_guard g = KM_GUARD_INIT;
	int rc = km_trylock(km, "k", 1, &g);
	if (rc == 0)
		km_unlock(&g);
	return rc == 0;
}

int main(void)
{
	struct km *km;
	if (km_create(&km, NULL) != 0)
		return 2;
	struct km_guard g = KM_GUARD_INIT, g2 = KM_GUARD_INIT;
	if (km_lock(km, "k", 1, &g) != 0)
		return 3;
	int busy = km_trylock(km, "k", 1, &g2) == EBUSY;
	km_unlock(&g);
	int free_again = km_trylock(km, "k", 1, &g2) == 0;
	km_unlock(&g2);
	int scoped = scoped_then_free(km);
	unsigned v = km_version();
	printf("keymutex %u.%u.%u busy=%d free=%d scoped=%d\n", v >> 16, (v >> 8) & 0xffu, v & 0xffu,
	       busy, free_again, scoped);
	return km_destroy(km) != 0;
}
