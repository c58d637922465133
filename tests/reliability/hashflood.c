/*
 * Hash flooding: keys crafted to collide under unkeyed hashes must cost
 * keymutex no more than random keys of the same lengths.
 *
 * Attack sets (N held keys + N probe keys each, all distinct):
 *   java31   strings of "Aa"/"BB" blocks: every one has the same 32-bit
 *            polynomial hash h = 31*h + c (Java's String.hashCode), the
 *            2011 HashDoS construction
 *   fnv1a    12-byte keys found by brute force with equal low 12 bits of
 *            FNV-1a-32: one bucket of any power-of-two table up to 4096
 *            buckets indexed by an unkeyed FNV-1a
 *   prefix   208-byte keys sharing a 200-byte prefix: collide under any hash
 *            that reads only the first 64 bytes
 * Baseline for each set: random bytes with the same length.
 *
 * Two measures, both relative to the set's baseline:
 *
 * 1. Chain shape, by counting (no clock). Entries are pushed at the head of
 *    their bucket and km_query walks shard by shard, bucket by bucket, each
 *    chain from its head; so keys sharing a bucket are visited consecutively,
 *    newest first. With the N keys held (inserted in a known order), the
 *    longest run of visits in strictly decreasing insertion order is at
 *    least the longest chain. A flooded table shows a run near N; a keyed
 *    hash shows a few. Bound: run(attack) <= max(4 * run(baseline), 16).
 *
 * 2. Cost, by thread CPU time (CLOCK_THREAD_CPUTIME_ID: time other
 *    processes take from us does not count). With the N keys held, each
 *    probe key is locked and unlocked (a walk of its bucket, an insert, a
 *    removal); rounds alternate attack and baseline and the best round of
 *    each is compared. Bound: attack <= 5 x baseline. A flooded chain costs
 *    O(N) per operation, so the ratio would be ~N/2 (thousands), while
 *    with a keyed hash both sets see chains of expected length
 *    N / buckets < 1 and the same hashing and memcmp cost per byte; 5x
 *    leaves room for cache and scheduling noise on a shared 2-core machine,
 *    and for both measured sides being tiny.
 *
 * Positive control: the same sets are run through a naive chained table
 * (4096 buckets, the unkeyed hash each set targets) in this file; its
 * attack/baseline ratio must exceed 20 (the sets really are floods), else
 * the test itself is broken.
 *
 * Prints a table and "N passed, N failed" last. KM_FLOOD_KEYS sets N
 * (default 4096).
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include "km_test.h"

#include <stdarg.h>

#define KLEN_MAX 208

struct keyset {
	const char *name;
	size_t n;		/* held + probe = 2n keys */
	unsigned char (*k)[KLEN_MAX];
	size_t *len;
	uint32_t (*naive)(const unsigned char *, size_t);
};

static unsigned passed, failed;

static void result(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void result(bool ok, const char *fmt, ...)
{
	va_list ap;

	printf("%s ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	if (ok)
		passed++;
	else
		failed++;
}

/* ---- the unkeyed hashes the sets target ---- */

static uint32_t h_java31(const unsigned char *p, size_t n)
{
	uint32_t h = 0;

	for (size_t i = 0; i < n; i++)
		h = 31 * h + p[i];
	return h;
}

static uint32_t h_fnv1a(const unsigned char *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

static uint32_t h_prefix64(const unsigned char *p, size_t n)
{
	return h_fnv1a(p, n < 64 ? n : 64);
}

/* ---- key sets ---- */

static struct keyset alloc_set(const char *name, size_t n,
			       uint32_t (*naive)(const unsigned char *, size_t))
{
	struct keyset s = { name, n, calloc(2 * n, KLEN_MAX), calloc(2 * n, sizeof(size_t)), naive };

	if (s.k == NULL || s.len == NULL) {
		printf("out of memory\n");
		exit(1);
	}
	return s;
}

static struct keyset make_java31(size_t n)
{
	struct keyset s = alloc_set("java31", n, h_java31);
	unsigned blocks = 1;

	while (((size_t)1 << blocks) < 2 * n)
		blocks++;
	for (size_t i = 0; i < 2 * n; i++) {
		for (unsigned b = 0; b < blocks; b++)
			memcpy(&s.k[i][2 * b], (i >> b) & 1 ? "BB" : "Aa", 2);
		s.len[i] = 2 * blocks;
	}
	return s;
}

static struct keyset make_fnv1a(size_t n)
{
	struct keyset s = alloc_set("fnv1a", n, h_fnv1a);
	uint64_t ctr = 0;

	for (size_t i = 0; i < 2 * n;) {
		unsigned char k[12];
		uint64_t v = ctr++;

		k[0] = 'f';
		for (int j = 1; j < 12; j++) {
			k[j] = (unsigned char)('a' + v % 26);
			v /= 26;
		}
		if ((h_fnv1a(k, 12) & 0xFFF) == 0) {
			memcpy(s.k[i], k, 12);
			s.len[i++] = 12;
		}
	}
	return s;
}

static struct keyset make_prefix(size_t n)
{
	struct keyset s = alloc_set("prefix", n, h_prefix64);

	for (size_t i = 0; i < 2 * n; i++) {
		memset(s.k[i], 'p', 200);
		memcpy(s.k[i] + 200, &i, sizeof i);
		s.len[i] = 208;
	}
	return s;
}

/* Random bytes, the same lengths as set a. */
static struct keyset make_random_like(const struct keyset *a, uint64_t *rng)
{
	struct keyset s = alloc_set("random", a->n, a->naive);

	for (size_t i = 0; i < 2 * a->n; i++) {
		s.len[i] = a->len[i];
		for (size_t j = 0; j < s.len[i]; j++)
			s.k[i][j] = (unsigned char)kt_rand(rng);
		if (s.len[i] >= 8)
			memcpy(s.k[i], &i, sizeof i);	/* distinct for sure */
	}
	return s;
}

static void free_set(struct keyset *s)
{
	free(s->k);
	free(s->len);
}

/* ---- measure 1: chain shape through km_query's visit order ---- */

struct order_ctx {
	const struct keyset *s;
	size_t *rank_of;	/* not used: rank found by search */
	long prev;
	size_t run, best;
};

static long find_rank(const struct keyset *s, const void *key, size_t len)
{
	/* held keys are indices 0..n-1; keys embed enough to search linearly
	 * only once per visit: n is a few thousand, fine */
	for (size_t i = 0; i < s->n; i++)
		if (s->len[i] == len && memcmp(s->k[i], key, len) == 0)
			return (long)i;
	return -1;
}

static int order_visit(const void *key, size_t len, unsigned holders, unsigned waiters,
		       int shared, void *arg)
{
	struct order_ctx *c = arg;
	long r = find_rank(c->s, key, len);

	(void)holders;
	(void)waiters;
	(void)shared;
	if (r >= 0 && c->prev >= 0 && r < c->prev)
		c->run++;
	else
		c->run = 1;
	if (c->run > c->best)
		c->best = c->run;
	c->prev = r;
	return 0;
}

static struct km *table_with(const struct keyset *s, struct km_guard *g)
{
	struct km_options o = { .expected_keys = s->n };
	struct km *km;

	if (km_create(&km, &o) != 0) {
		printf("km_create failed\n");
		exit(1);
	}
	for (size_t i = 0; i < s->n; i++)
		if (km_lock(km, s->k[i], s->len[i], &g[i]) != 0) {
			printf("km_lock failed\n");
			exit(1);
		}
	return km;
}

static size_t longest_run(const struct keyset *s)
{
	struct km_guard *g = calloc(s->n, sizeof *g);
	struct km *km = table_with(s, g);
	struct order_ctx c = { .s = s, .prev = -1 };

	km_query(km, order_visit, &c);
	km_unlock_all(g, s->n);
	km_destroy(km);
	free(g);
	return c.best;
}

/* ---- measure 2: CPU time per lock+unlock of a probe key ---- */

static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double km_probe_ns(struct km *km, const struct keyset *s)
{
	uint64_t t0 = cpu_ns();

	for (size_t i = s->n; i < 2 * s->n; i++) {
		struct km_guard g;

		if (km_lock(km, s->k[i], s->len[i], &g) != 0 || km_unlock(&g) != 0) {
			printf("probe lock failed\n");
			exit(1);
		}
	}
	return (double)(cpu_ns() - t0) / (double)s->n;
}

/* A naive chained table: the positive control. */
struct node {
	struct node *next;
	size_t len;
	const unsigned char *key;
};
#define NAIVE_BUCKETS 4096

static double naive_probe_ns(struct node **b, struct node *pool, const struct keyset *s)
{
	uint64_t t0 = cpu_ns();

	for (size_t i = s->n; i < 2 * s->n; i++) {
		struct node **pp = &b[s->naive(s->k[i], s->len[i]) & (NAIVE_BUCKETS - 1)];
		struct node *p;

		for (p = *pp; p != NULL; p = p->next)	/* find */
			if (p->len == s->len[i] && memcmp(p->key, s->k[i], p->len) == 0)
				break;
		if (p == NULL) {			/* insert, then remove */
			struct node *nn = &pool[i];

			nn->key = s->k[i];
			nn->len = s->len[i];
			nn->next = *pp;
			*pp = nn;
			*pp = nn->next;
		}
	}
	return (double)(cpu_ns() - t0) / (double)s->n;
}

static void naive_fill(struct node **b, struct node *pool, const struct keyset *s)
{
	memset(b, 0, NAIVE_BUCKETS * sizeof *b);
	for (size_t i = 0; i < s->n; i++) {
		struct node **pp = &b[s->naive(s->k[i], s->len[i]) & (NAIVE_BUCKETS - 1)];

		pool[i].key = s->k[i];
		pool[i].len = s->len[i];
		pool[i].next = *pp;
		*pp = &pool[i];
	}
}

static void measure(struct keyset *atk, struct keyset *base)
{
	struct km_guard *ga = calloc(atk->n, sizeof *ga), *gb = calloc(base->n, sizeof *gb);
	struct km *ka = table_with(atk, ga), *kb = table_with(base, gb);
	double best_a = 1e18, best_b = 1e18;

	for (int r = 0; r < 7; r++) {
		double a = km_probe_ns(ka, atk), b = km_probe_ns(kb, base);

		best_a = a < best_a ? a : best_a;
		best_b = b < best_b ? b : best_b;
	}
	km_unlock_all(ga, atk->n);
	km_unlock_all(gb, base->n);
	km_destroy(ka);
	km_destroy(kb);
	free(ga);
	free(gb);

	/* the control */
	struct node **bk = malloc(NAIVE_BUCKETS * sizeof *bk);
	struct node *pa = calloc(2 * atk->n, sizeof *pa), *pb = calloc(2 * base->n, sizeof *pb);
	double na = 1e18, nb = 1e18;

	for (int r = 0; r < 3; r++) {
		naive_fill(bk, pa, atk);
		double a = naive_probe_ns(bk, pa, atk);

		naive_fill(bk, pb, base);
		double b = naive_probe_ns(bk, pb, base);

		na = a < na ? a : na;
		nb = b < nb ? b : nb;
	}
	free(bk);
	free(pa);
	free(pb);

	size_t run_a = longest_run(atk), run_b = longest_run(base);
	size_t bound = 4 * run_b > 16 ? 4 * run_b : 16;

	printf("%-7s n=%zu  keymutex %7.1f ns vs %7.1f ns random (x%.2f)   naive %9.1f ns vs %6.1f ns (x%.0f)"
	       "   longest chain-order run %zu vs %zu\n",
	       atk->name, atk->n, best_a, best_b, best_a / best_b, na, nb, na / nb, run_a, run_b);
	result(na / nb > 20, "%s: the set floods a naive %s table (x%.0f > 20)", atk->name, atk->name,
	       na / nb);
	result(run_a <= bound, "%s: longest same-bucket run %zu <= %zu (baseline %zu)", atk->name,
	       run_a, bound, run_b);
	result(best_a <= 5.0 * best_b, "%s: lock+unlock %.1f ns <= 5 x %.1f ns of random keys",
	       atk->name, best_a, best_b);
}

int main(void)
{
	size_t n = (size_t)kt_env_long("KM_FLOOD_KEYS", 4096);
	uint64_t rng = kt_now_ns() | 1;
	struct keyset (*make[])(size_t) = { make_java31, make_fnv1a, make_prefix };

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof make / sizeof make[0]; i++) {
		struct keyset a = make[i](n);
		struct keyset b = make_random_like(&a, &rng);

		measure(&a, &b);
		free_set(&a);
		free_set(&b);
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
