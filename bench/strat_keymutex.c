/*
 * keymutex: this library (km_lock, km_lock_shared, km_unlock) with its
 * default options (what a user gets from km_create(&km, NULL));
 * --km-expected-keys and --km-pool set its sizing options. The guard lives
 * in place in the bench_hold.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <stdio.h>
#include <string.h>

_Static_assert(sizeof(struct km_guard) <= sizeof(struct bench_hold),
	       "a km_guard must fit in a bench_hold");

static void *keymutex_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct km_options o;
	struct km *km = NULL;
	int e;

	memset(&o, 0, sizeof(o));
	o.expected_keys = (size_t)p->km_expected_keys;
	o.pool_size = (size_t)p->km_pool;
	e = km_create(&km, &o);
	if (e) {
		snprintf(err, errlen, "km_create: %s", strerror(e));
		return NULL;
	}
	return km;
}

static int keymutex_destroy(void *self)
{
	return km_destroy(self);
}

static int keymutex_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	return km_lock(self, key, len, &h->km);
}

static int keymutex_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	return km_lock_shared(self, key, len, &h->km);
}

static void keymutex_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	km_unlock(&h->km);
}

static long long keymutex_keys(void *self)
{
	struct km_stats st;

	if (km_stats(self, &st))
		return -1;
	return (long long)st.keys;
}

static void keymutex_describe(void *self, char *buf, size_t len)
{
	struct km_stats st;

	if (km_stats(self, &st) == 0)
		snprintf(buf, len, "pooled=%zu contended=%llu/%llu", st.pooled,
			 (unsigned long long)st.contended, (unsigned long long)st.acquired);
	else if (len)
		buf[0] = '\0';
}

const struct strategy strat_keymutex = {
	.name = "keymutex",
	.what = "this library (km_lock / km_unlock, default options)",
	.create = keymutex_create,
	.destroy = keymutex_destroy,
	.lock = keymutex_lock,
	.lock_shared = keymutex_lock_shared,
	.unlock = keymutex_unlock,
	.keys = keymutex_keys,
	.describe = keymutex_describe,
};
