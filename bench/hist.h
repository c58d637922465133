/*
 * km-bench: a log-linear histogram (HdrHistogram's layout, 32 sub-buckets per
 * power of two): values below 64 are exact, above that every bucket is at
 * most 1/32 (3.1 %) of its value wide. Unit-agnostic (the harness feeds it
 * clock ticks). One per thread, merged at the end; not thread-safe.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_BENCH_HIST_H
#define KM_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)				/* 32 */
#define HIST_EXACT (2u * HIST_SUB)				/* 0..63 exact */
#define HIST_BUCKETS (HIST_EXACT + (64 - HIST_SUB_BITS - 1) * HIST_SUB)

struct hist {
	uint64_t count, sum, min, max;
	uint64_t b[HIST_BUCKETS];
};

void hist_init(struct hist *h);
void hist_merge(struct hist *into, const struct hist *from);

static inline unsigned hist_index(uint64_t v)
{
	unsigned e, m;

	if (v < HIST_EXACT)
		return (unsigned)v;
	e = 63u - (unsigned)__builtin_clzll(v);		/* >= HIST_SUB_BITS + 1 */
	m = (unsigned)(v >> (e - HIST_SUB_BITS));	/* in [32, 63] */
	return HIST_EXACT + (e - HIST_SUB_BITS - 1) * HIST_SUB + (m - HIST_SUB);
}

static inline void hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	h->sum += v;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

/* The smallest and largest value that land in bucket i. */
uint64_t hist_bucket_low(unsigned i);
uint64_t hist_bucket_high(unsigned i);

/*
 * The q-quantile (0 < q <= 1) by nearest rank: the smallest recorded value v
 * such that at least ceil(q * count) values are <= v, reported as the upper
 * bound of v's bucket (never above the exact maximum). 0 when empty.
 */
uint64_t hist_quantile(const struct hist *h, double q);
double hist_mean(const struct hist *h);

#endif /* KM_BENCH_HIST_H */
