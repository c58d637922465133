/*
 * replace: the record-struct answer of seed 001, literally.
 *
 * The map (liburcu's lock-free cds_lfht, bulletproof RCU flavor) holds
 * immutable nodes (lock, refcount). Nothing is ever changed in place:
 *
 *   acquire: lookup; none -> add_unique(new lock, 1), retry if another won;
 *            found old -> replace(old, (old.lock, old.refs + 1)), retry on
 *            failure; then lock the lock.
 *   release: unlock the lock; lookup; refs == 1 -> del(old) (TryRemove(key,
 *            old)), else replace(old, (old.lock, old.refs - 1)); retry on
 *            failure.
 *
 * Every replaced or removed node is freed by call_rcu after a grace period,
 * like the garbage the C# version leaves to its collector. The lock object
 * (the SemaphoreSlim) carries the key bytes, shared by all the node versions
 * of one key; it is freed with the node whose removal dropped the last
 * reference, in that node's RCU callback (readers may still compare keys
 * through older versions until then).
 *
 * No _LGPL_SOURCE: the liburcu calls stay out-of-line, as a user of the
 * shared library would have them.
 *
 * SPDX-License-Identifier: MIT
 */
#include "strategy.h"

#include <urcu-bp.h>
#include <urcu/rculfhash.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct replace_lock {		/* the per-key lock, shared by the key's node versions */
	pthread_mutex_t m;
	uint64_t hash;
	size_t len;
	unsigned char key[];
};

struct replace_node {		/* immutable once published */
	struct cds_lfht_node ln;
	struct rcu_head rh;
	struct replace_lock *lk;
	unsigned long refs;	/* holders + waiters */
};

struct replace_key {
	const void *p;
	size_t len;
};

struct replace {
	struct cds_lfht *ht;
};

static int replace_match(struct cds_lfht_node *ln, const void *key)
{
	const struct replace_node *n = caa_container_of(ln, struct replace_node, ln);
	const struct replace_key *k = key;

	return n->lk->len == k->len && memcmp(n->lk->key, k->p, k->len) == 0;
}

static void replace_free_node(struct rcu_head *rh)
{
	free(caa_container_of(rh, struct replace_node, rh));
}

static void replace_free_node_and_lock(struct rcu_head *rh)
{
	struct replace_node *n = caa_container_of(rh, struct replace_node, rh);

	pthread_mutex_destroy(&n->lk->m);
	free(n->lk);
	free(n);
}

static struct replace_node *replace_node_new(struct replace_lock *lk, unsigned long refs)
{
	struct replace_node *n = malloc(sizeof(*n));

	if (n) {
		cds_lfht_node_init(&n->ln);
		n->lk = lk;
		n->refs = refs;
	}
	return n;
}

static void *replace_create(const struct strat_params *p, char *err, size_t errlen)
{
	struct replace *s = calloc(1, sizeof(*s));
	unsigned long init = 1024;

	(void)p;
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->ht = cds_lfht_new(init, 1, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING, NULL);
	if (!s->ht) {
		free(s);
		snprintf(err, errlen, "cds_lfht_new failed");
		return NULL;
	}
	return s;
}

static long long replace_keys(void *self)
{
	struct replace *s = self;
	long before, after;
	unsigned long count;

	rcu_read_lock();
	cds_lfht_count_nodes(s->ht, &before, &count, &after);
	rcu_read_unlock();
	return (long long)count;
}

static int replace_destroy(void *self)
{
	struct replace *s = self;

	if (replace_keys(s))
		return EBUSY;
	if (cds_lfht_destroy(s->ht, NULL))
		return EBUSY;
	rcu_barrier();		/* every deferred free has run */
	free(s);
	return 0;
}

static int replace_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	struct replace *s = self;
	struct replace_key k = { key, len };
	uint64_t hash = bench_hash(key, len);
	struct replace_lock *lk = NULL;
	struct cds_lfht_iter it;

	rcu_read_lock();
	for (;;) {
		struct cds_lfht_node *ln;
		struct replace_node *old, *n;

		cds_lfht_lookup(s->ht, (unsigned long)hash, replace_match, &k, &it);
		ln = cds_lfht_iter_get_node(&it);
		if (!ln) {	/* GetOrAdd's add: a fresh (lock, 1) */
			struct replace_lock *fresh = malloc(sizeof(*fresh) + len);

			n = fresh ? replace_node_new(fresh, 1) : NULL;
			if (!n) {
				free(fresh);
				rcu_read_unlock();
				return ENOMEM;
			}
			pthread_mutex_init(&fresh->m, NULL);
			fresh->hash = hash;
			fresh->len = len;
			memcpy(fresh->key, key, len);
			if (cds_lfht_add_unique(s->ht, (unsigned long)hash, replace_match, &k,
						&n->ln) == &n->ln) {
				lk = fresh;
				break;
			}
			/* Another thread added the key first: ours was never published. */
			pthread_mutex_destroy(&fresh->m);
			free(fresh);
			free(n);
			continue;
		}
		old = caa_container_of(ln, struct replace_node, ln);
		n = replace_node_new(old->lk, old->refs + 1);	/* TryUpdate(key, new, old) */
		if (!n) {
			rcu_read_unlock();
			return ENOMEM;
		}
		if (cds_lfht_replace(s->ht, &it, (unsigned long)hash, replace_match, &k,
				     &n->ln) == 0) {
			lk = n->lk;
			call_rcu(&old->rh, replace_free_node);
			break;
		}
		free(n);	/* lost the race: re-read and retry */
	}
	rcu_read_unlock();

	pthread_mutex_lock(&lk->m);
	h->p[0] = lk;
	return 0;
}

static void replace_unlock(void *self, struct bench_hold *h)
{
	struct replace *s = self;
	struct replace_lock *lk = h->p[0];
	struct replace_key k = { lk->key, lk->len };
	struct cds_lfht_iter it;

	pthread_mutex_unlock(&lk->m);	/* our reference keeps lk alive below */
	rcu_read_lock();
	for (;;) {
		struct cds_lfht_node *ln;
		struct replace_node *old, *n;

		cds_lfht_lookup(s->ht, (unsigned long)lk->hash, replace_match, &k, &it);
		ln = cds_lfht_iter_get_node(&it);
		if (!ln)
			break;	/* impossible while we hold a reference */
		old = caa_container_of(ln, struct replace_node, ln);
		if (old->refs == 1) {	/* TryRemove(key, old) */
			if (cds_lfht_del(s->ht, ln) == 0) {
				call_rcu(&old->rh, replace_free_node_and_lock);
				break;
			}
			continue;
		}
		n = replace_node_new(lk, old->refs - 1);
		if (!n)
			continue;	/* out of memory: keep trying, the count must drop */
		if (cds_lfht_replace(s->ht, &it, (unsigned long)lk->hash, replace_match, &k,
				     &n->ln) == 0) {
			call_rcu(&old->rh, replace_free_node);
			break;
		}
		free(n);
	}
	rcu_read_unlock();
}

const struct strategy strat_replace = {
	.name = "replace",
	.what = "immutable (lock, refcount) nodes in cds_lfht, cds_lfht_replace + call_rcu",
	.create = replace_create,
	.destroy = replace_destroy,
	.lock = replace_lock,
	.unlock = replace_unlock,
	.keys = replace_keys,
};
