/*
 * km-bench: the workload runner (one run = one strategy on one scenario
 * variant) and the pieces the command line and the self-tests share.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_BENCH_HARNESS_H
#define KM_BENCH_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "strategy.h"

/* ------------------------------------------------------------------ */
/* Clock                                                               */
/* ------------------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t bench_ticks(void)
{
	return __rdtsc();	/* invariant TSC (checked by bench_clock_init) */
}
#else
#include <time.h>
static inline uint64_t bench_ticks(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
#endif

/* Calibrates ticks against CLOCK_MONOTONIC (about 20 ms, once per process). */
void bench_clock_init(void);
double bench_ns_per_tick(void);
uint64_t bench_now_ns(void);		/* CLOCK_MONOTONIC */

/* ------------------------------------------------------------------ */
/* One run                                                             */
/* ------------------------------------------------------------------ */

enum bench_dist {
	DIST_UNIFORM,	/* keys 0..keys-1, uniformly */
	DIST_ZIPF,	/* keys 0..keys-1, rank r with probability ~ 1/(r+1)^s */
	DIST_UNIQUE,	/* a key never seen before on every acquire (churn) */
	DIST_HOLD,	/* one thread acquires keys 0..keys-1 and holds them all (memory) */
};

const char *bench_dist_name(enum bench_dist d);

struct bench_cfg {
	const char *scenario;	/* label for the report */
	unsigned threads;	/* working threads (an idle one is always alive besides) */
	uint64_t keys;		/* key-space size (HOLD: keys held at once) */
	enum bench_dist dist;
	double zipf_s;
	uint64_t inside_ns;	/* spin inside the critical section */
	uint64_t sleep_us;	/* sleep inside the critical section (I/O-like hold) */
	uint64_t outside_ns;	/* spin between a release and the next acquire */
	unsigned read_pct;	/* percent of acquires in shared mode (lock_shared), 0-100 */
	double duration_s;	/* stop after this long (0: only max_ops stops it) */
	uint64_t max_ops;	/* stop after this many acquires in total (0: none) */
	unsigned lat_every;	/* time one acquire in lat_every (1: all) */
	uint64_t seed;
	uint64_t rss_cap_kib;	/* stop early when RSS grew by more than this (0: none) */
	struct strat_params sp;	/* stripes, pool (expected_keys/threads filled in by bench_run) */
};

/* bench_result.status */
enum {
	RUN_OK = 0,
	RUN_SKIPPED,	/* the scenario makes no sense for the strategy */
	RUN_FAILED,	/* set-up failed, lock() errors, destroy failed */
	RUN_TIMEOUT,	/* the watchdog killed it (forked runs) */
	RUN_CRASHED,	/* the child died on a signal (forked runs) */
	RUN_CAPPED,	/* stopped early at the RSS cap; figures are for the shorter run */
};

const char *bench_status_name(int status);

/* Everything one run reports (plain data: it crosses a pipe from a child). */
struct bench_result {
	char strategy[16];
	char scenario[16];
	int variant;		/* index of the scenario variant (set by the caller) */
	unsigned threads;
	uint64_t keys, inside_ns, sleep_us, outside_ns;
	unsigned read_pct;
	enum bench_dist dist;
	double zipf_s;
	int status;

	uint64_t ops;		/* lock+unlock pairs completed */
	double elapsed_s;
	double ops_per_s;
	uint64_t thr_min, thr_max;	/* per-thread ops: fairness */
	uint64_t lat_samples;
	double lat_p50, lat_p99, lat_p999, lat_max, lat_mean;	/* ns, acquire (lock() call) */
	uint64_t violations;	/* critical sections that were not alone on their key
				   (shared ones: that met an exclusive one) */
	uint64_t reads;		/* shared acquires among ops */
	uint64_t overlaps;	/* shared sections that found another shared one inside:
				   proof that readers of one key really overlapped */
	int reads_exclusive;	/* the strategy has no shared mode: reads took lock() */
	int checked;		/* the occupancy check ran */
	uint64_t errors;	/* lock() failures */

	long long rss_base_kib;		/* RSS when the workers were released */
	long long rss_peak_kib;		/* peak growth over the base during the run */
	long long rss_end_kib;		/* growth at the end, before the strategy is destroyed */
	int rss_peak_exact;		/* peak from VmHWM (reset at the start), else sampled */
	long long keys_after;		/* strategy->keys() after the run; -1 n/a */
	long long keys_held;		/* HOLD: strategy->keys() with every key held */
	uint64_t held;			/* HOLD: keys held at once (fewer than keys if the time ran out) */
	double bytes_per_key;		/* HOLD: RSS growth / keys held */
	double hold_mean_ns;		/* mean critical-section length (timed ops) */
	double ideal_ops_per_s;		/* io: threads / mean hold, less real collisions */
	double cpu_share;		/* process CPU time / (elapsed x min(threads, CPUs)):
					   well below 1 for a run that never blocks means
					   the machine was busy with something else */

	char note[160];
};

void bench_result_init(struct bench_result *r, const struct strategy *s,
		       const struct bench_cfg *c);

/*
 * Runs one strategy on one workload in this process and fills *r. Returns
 * r->status. Starts the process-wide idle thread on first use. Never exits
 * the process; reports failures in r->status and r->note.
 */
int bench_run(const struct strategy *s, const struct bench_cfg *c, struct bench_result *r);

/* ------------------------------------------------------------------ */
/* Memory                                                              */
/* ------------------------------------------------------------------ */

long long bench_rss_kib(void);		/* VmRSS now, -1 if unknown */
long long bench_hwm_kib(void);		/* VmHWM, -1 if unknown */
int bench_hwm_reset(void);		/* 0 if /proc/self/clear_refs reset VmHWM */

/* ------------------------------------------------------------------ */
/* Command line (cli.c)                                                */
/* ------------------------------------------------------------------ */

/* The whole program; returns the exit status (0 ok, 1 violations, 2 usage). */
int bench_main(int argc, char **argv);

#endif /* KM_BENCH_HARNESS_H */
