/*
 * Self-tests of the comparison harness (meson test --suite bench).
 *
 *  - the exclusion detector catches naive (the seed's broken original) on a
 *    short contended run, and shows 0 for global and keymutex;
 *  - in shared mode it catches readers that meet writers, and sees readers
 *    of one key overlap under every strategy that has a shared mode;
 *  - percentiles of the histogram are right on known data;
 *  - bad arguments are reported with exit status 2 (in-process and through
 *    the real km-bench binary);
 *  - a tiny end-to-end run writes its CSV and JSON.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hist.h"

extern char **environ;

/* ------------------------------------------------------------------ */
/* The detector                                                        */
/* ------------------------------------------------------------------ */

static struct bench_cfg hot_cfg(unsigned threads, double seconds)
{
	struct bench_cfg c;

	memset(&c, 0, sizeof(c));
	c.scenario = "hotkey";
	c.threads = threads;
	c.keys = 1;
	c.dist = DIST_UNIFORM;
	c.inside_ns = 200;
	c.duration_s = seconds;
	c.lat_every = 4;
	c.seed = 7;
	return c;
}

Test(detector, catches_naive, .timeout = 60)
{
	struct bench_cfg c = hot_cfg(4, 0.3);
	struct bench_result r;
	int attempt;

	/* The race needs a waiter to be woken while the holder re-creates the
	 * key; on a loaded machine one short run could in principle miss it, so
	 * allow three. */
	for (attempt = 0; attempt < 3; attempt++) {
		cr_assert_eq(bench_run(&strat_naive, &c, &r), RUN_OK, "naive run: %s", r.note);
		cr_assert(r.checked);
		cr_assert_gt(r.ops, 1000u, "naive made too little progress: %llu ops",
			     (unsigned long long)r.ops);
		if (r.violations > 0)
			break;
	}
	cr_assert_gt(r.violations, 0u, "the detector did not catch naive in 3 runs (%llu ops each)",
		     (unsigned long long)r.ops);
}

Test(detector, global_is_clean, .timeout = 60)
{
	struct bench_cfg c = hot_cfg(4, 0.3);
	struct bench_result r;

	cr_assert_eq(bench_run(&strat_global, &c, &r), RUN_OK, "global run: %s", r.note);
	cr_assert(r.checked);
	cr_assert_gt(r.ops, 1000u);
	cr_assert_eq(r.violations, 0u, "global: %llu violations", (unsigned long long)r.violations);
	cr_assert_eq(r.keys_after, 0);
}

Test(detector, keymutex_is_clean, .timeout = 60)
{
	struct bench_cfg c = hot_cfg(4, 0.3);
	struct bench_result r;

	cr_assert_eq(bench_run(&strat_keymutex, &c, &r), RUN_OK, "keymutex run: %s", r.note);
	cr_assert_gt(r.ops, 1000u);
	cr_assert_eq(r.violations, 0u, "keymutex: %llu violations", (unsigned long long)r.violations);
	cr_assert_eq(r.keys_after, 0);
}

/* Every strategy holds exclusion on a small contended key space. */
Test(detector, every_other_strategy_is_clean, .timeout = 120)
{
	const struct strategy *const *s;
	struct bench_cfg c = hot_cfg(4, 0.1);

	c.scenario = "zipf";
	c.keys = 64;
	c.dist = DIST_ZIPF;
	c.zipf_s = 0.99;
	for (s = bench_strategies; *s; s++) {
		struct bench_result r;

		if ((*s)->flags & STRAT_NEGATIVE_CONTROL)
			continue;
		cr_assert_eq(bench_run(*s, &c, &r), RUN_OK, "%s: %s", (*s)->name, r.note);
		cr_assert_eq(r.violations, 0u, "%s: %llu violations", (*s)->name,
			     (unsigned long long)r.violations);
		if (r.keys_after >= 0 && !((*s)->flags & STRAT_GROWS))
			cr_assert_eq(r.keys_after, 0, "%s: %lld keys left", (*s)->name, r.keys_after);
	}
}

Test(detector, memory_scenario_counts_keys, .timeout = 60)
{
	struct bench_cfg c;
	struct bench_result r;

	memset(&c, 0, sizeof(c));
	c.scenario = "memory";
	c.threads = 1;
	c.keys = 20000;
	c.dist = DIST_HOLD;
	c.lat_every = 16;
	cr_assert_eq(bench_run(&strat_keymutex, &c, &r), RUN_OK, "%s", r.note);
	cr_assert_eq(r.ops, 20000u);
	cr_assert_eq(r.keys_held, 20000);
	cr_assert_eq(r.keys_after, 0);
	cr_assert_eq(r.violations, 0u);
	cr_assert_eq(bench_run(&strat_striped, &c, &r), RUN_SKIPPED);
}

/* ------------------------------------------------------------------ */
/* The shared-mode detector                                            */
/* ------------------------------------------------------------------ */

/* A broken reader-writer lock: readers take nothing at all, so they meet
 * writers. The detector must see it. */
static pthread_mutex_t broken_rw_m = PTHREAD_MUTEX_INITIALIZER;

static void *broken_rw_create(const struct strat_params *p, char *err, size_t errlen)
{
	(void)p;
	(void)err;
	(void)errlen;
	return &broken_rw_m;
}

static int broken_rw_destroy(void *self)
{
	(void)self;
	return 0;
}

static int broken_rw_lock(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)key;
	(void)len;
	pthread_mutex_lock(self);
	h->p[0] = self;
	return 0;
}

static int broken_rw_lock_shared(void *self, const void *key, size_t len, struct bench_hold *h)
{
	(void)self;
	(void)key;
	(void)len;
	h->p[0] = NULL;
	return 0;
}

static void broken_rw_unlock(void *self, struct bench_hold *h)
{
	(void)self;
	if (h->p[0])
		pthread_mutex_unlock(h->p[0]);
}

static long long broken_rw_keys(void *self)
{
	(void)self;
	return -1;
}

static const struct strategy broken_rw = {
	.name = "broken_rw",
	.what = "test only: readers take no lock",
	.create = broken_rw_create,
	.destroy = broken_rw_destroy,
	.lock = broken_rw_lock,
	.lock_shared = broken_rw_lock_shared,
	.unlock = broken_rw_unlock,
	.keys = broken_rw_keys,
};

/* Read-mostly on a handful of keys, long enough sections that readers of
 * one key are often inside together (preempted inside, on a small machine). */
static struct bench_cfg shared_cfg(unsigned read_pct)
{
	struct bench_cfg c = hot_cfg(8, 0.2);

	c.scenario = "shared";
	c.keys = 4;
	c.inside_ns = 2000;
	c.read_pct = read_pct;
	return c;
}

Test(shared_detector, catches_readers_meeting_writers, .timeout = 60)
{
	struct bench_cfg c = shared_cfg(90);
	struct bench_result r;
	int attempt;

	for (attempt = 0; attempt < 3; attempt++) {
		cr_assert_eq(bench_run(&broken_rw, &c, &r), RUN_OK, "%s", r.note);
		if (r.violations > 0)
			break;
	}
	cr_assert_gt(r.violations, 0u, "a reader never met a writer in 3 runs (%llu ops each)",
		     (unsigned long long)r.ops);
	cr_assert_gt(r.overlaps, 0u);
}

/* Every strategy with a shared mode: readers overlap, never meet a writer;
 * one without: reads are exclusive, so nothing overlaps. */
Test(shared_detector, every_strategy_is_clean_and_readers_overlap, .timeout = 120)
{
	const struct strategy *const *s;
	struct bench_cfg c = shared_cfg(90);

	for (s = bench_strategies; *s; s++) {
		struct bench_result r;
		int attempt;

		if ((*s)->flags & STRAT_NEGATIVE_CONTROL)
			continue;
		/* An overlap needs two readers of one key inside at once: a
		 * loaded machine may schedule a short run without one. */
		for (attempt = 0; attempt < 5; attempt++) {
			cr_assert_eq(bench_run(*s, &c, &r), RUN_OK, "%s: %s", (*s)->name, r.note);
			cr_assert_eq(r.violations, 0u, "%s: %llu violations", (*s)->name,
				     (unsigned long long)r.violations);
			cr_assert_gt(r.reads, r.ops / 2, "%s: %llu reads of %llu ops", (*s)->name,
				     (unsigned long long)r.reads, (unsigned long long)r.ops);
			cr_assert_lt(r.reads, r.ops);
			if (!(*s)->lock_shared || r.overlaps > 0)
				break;
		}
		if ((*s)->lock_shared) {
			cr_assert_eq(r.reads_exclusive, 0);
			cr_assert_gt(r.overlaps, 0u, "%s: readers never overlapped (%llu reads)",
				     (*s)->name, (unsigned long long)r.reads);
		} else {
			cr_assert_eq(r.reads_exclusive, 1, "%s", (*s)->name);
			cr_assert_eq(r.overlaps, 0u, "%s: exclusive reads overlapped", (*s)->name);
		}
	}
}

Test(shared_detector, read_pct_out_of_range_is_refused)
{
	struct bench_cfg c = shared_cfg(101);
	struct bench_result r;

	cr_assert_eq(bench_run(&strat_keymutex, &c, &r), RUN_FAILED);
}

/* ------------------------------------------------------------------ */
/* Percentiles                                                         */
/* ------------------------------------------------------------------ */

Test(hist, exact_below_64)
{
	struct hist h;
	uint64_t v;

	hist_init(&h);
	for (v = 1; v <= 50; v++)
		hist_add(&h, v);
	cr_assert_eq(h.count, 50u);
	cr_assert_eq(hist_quantile(&h, 0.50), 25u);	/* nearest rank: ceil(0.5 * 50) = 25th */
	cr_assert_eq(hist_quantile(&h, 0.99), 50u);	/* ceil(49.5) = 50th */
	cr_assert_eq(hist_quantile(&h, 0.02), 1u);
	cr_assert_eq(hist_quantile(&h, 1.0), 50u);
	cr_assert_eq(h.min, 1u);
	cr_assert_eq(h.max, 50u);
	cr_assert_float_eq(hist_mean(&h), 25.5, 1e-9);
}

Test(hist, relative_error_bounded)
{
	static const double qs[] = { 0.5, 0.9, 0.99, 0.999 };
	struct hist h;
	uint64_t v;
	unsigned i;

	hist_init(&h);
	for (v = 1; v <= 100000; v++)
		hist_add(&h, v);
	for (i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
		uint64_t exact = (uint64_t)(qs[i] * 100000 + 0.5), got = hist_quantile(&h, qs[i]);

		/* The bucket's upper bound: never below, at most 1/32 above. */
		cr_assert_geq(got, exact, "q=%g: %llu < %llu", qs[i], (unsigned long long)got,
			      (unsigned long long)exact);
		cr_assert_leq((double)got, (double)exact * (1.0 + 1.0 / 32) + 1, "q=%g: %llu vs %llu",
			      qs[i], (unsigned long long)got, (unsigned long long)exact);
	}
	cr_assert_eq(hist_quantile(&h, 1.0), 100000u);
}

Test(hist, skewed_data_and_merge)
{
	struct hist a, b;
	unsigned i;

	hist_init(&a);
	hist_init(&b);
	/* 990 fast (40), 9 slow (10 000), 1 very slow (5 000 000), split in two. */
	for (i = 0; i < 990; i++)
		hist_add(i % 2 ? &a : &b, 40);
	for (i = 0; i < 9; i++)
		hist_add(&b, 10000);
	hist_add(&a, 5000000);
	hist_merge(&a, &b);
	cr_assert_eq(a.count, 1000u);
	cr_assert_eq(hist_quantile(&a, 0.50), 40u);
	cr_assert_eq(hist_quantile(&a, 0.99), 40u);		/* 990th value */
	cr_assert_geq(hist_quantile(&a, 0.995), 10000u);	/* 995th */
	cr_assert_leq(hist_quantile(&a, 0.995), 10000u + 10000u / 32);
	cr_assert_geq(hist_quantile(&a, 0.9999), 5000000u);	/* 1000th */
	cr_assert_eq(hist_quantile(&a, 1.0), 5000000u);
	cr_assert_eq(a.max, 5000000u);
	cr_assert_eq(a.min, 40u);
}

Test(hist, buckets_are_contiguous)
{
	unsigned i;

	for (i = 0; i + 1 < HIST_BUCKETS; i++) {
		cr_assert_eq(hist_bucket_high(i) + 1, hist_bucket_low(i + 1), "bucket %u", i);
		cr_assert_eq(hist_index(hist_bucket_low(i)), i);
		cr_assert_eq(hist_index(hist_bucket_high(i)), i);
	}
	cr_assert_eq(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
}

Test(hist, empty)
{
	struct hist h;

	hist_init(&h);
	cr_assert_eq(hist_quantile(&h, 0.5), 0u);
	cr_assert_float_eq(hist_mean(&h), 0.0, 1e-12);
}

/* ------------------------------------------------------------------ */
/* Arguments                                                           */
/* ------------------------------------------------------------------ */

static int run_main(const char *a0, ...)
{
	char *argv[32];
	int argc = 0;
	const char *a;
	va_list ap;

	argv[argc++] = (char *)"km-bench";
	va_start(ap, a0);
	for (a = a0; a && argc < 31; a = va_arg(ap, const char *))
		argv[argc++] = (char *)a;
	va_end(ap);
	argv[argc] = NULL;
	return bench_main(argc, argv);
}

Test(args, errors_exit_2, .init = cr_redirect_stderr)
{
	cr_assert_eq(run_main("--bogus", NULL), 2);
	cr_assert_eq(run_main("positional", NULL), 2);
	cr_assert_eq(run_main("--scenario", "nosuch", NULL), 2);
	cr_assert_eq(run_main("--scenario", NULL), 2);
	cr_assert_eq(run_main("--strategy", "zipf", NULL), 2);
	cr_assert_eq(run_main("--threads", "0", NULL), 2);
	cr_assert_eq(run_main("--threads", "2,x", NULL), 2);
	cr_assert_eq(run_main("--threads", "99999", NULL), 2);
	cr_assert_eq(run_main("--keys", "-5", NULL), 2);
	cr_assert_eq(run_main("--keys", "12q", NULL), 2);
	cr_assert_eq(run_main("--dist", "normal", NULL), 2);
	cr_assert_eq(run_main("--zipf-s", "0", NULL), 2);
	cr_assert_eq(run_main("--duration", "-1", NULL), 2);
	cr_assert_eq(run_main("--duration", "5parsecs", NULL), 2);
	cr_assert_eq(run_main("--stripes", "3", NULL), 2);
	cr_assert_eq(run_main("--quick=yes", NULL), 2);
	cr_assert_eq(run_main("--csv=", NULL), 2);
	cr_assert_eq(run_main("--lat-every", "0", NULL), 2);
	cr_assert_eq(run_main("--read-pct", "101", NULL), 2);
	cr_assert_eq(run_main("--read-pct", "x", NULL), 2);
}

Test(args, help_and_list_exit_0, .init = cr_redirect_stdout)
{
	cr_assert_eq(run_main("--help", NULL), 0);
	cr_assert_eq(run_main("--list", NULL), 0);
}

static int spawn_status(const char *const *args)
{
	const char *exe = getenv("KM_BENCH_EXE");
	char *argv[8];
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int st = 0, i;

	cr_assert(exe, "KM_BENCH_EXE is not set (run through meson test)");
	argv[0] = (char *)exe;
	for (i = 0; args[i] && i < 6; i++)
		argv[i + 1] = (char *)args[i];
	argv[i + 1] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
	cr_assert_eq(posix_spawn(&pid, exe, &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

Test(args, binary_exit_codes, .timeout = 30)
{
	static const char *const bad1[] = { "--threads", "none", NULL };
	static const char *const bad2[] = { "--frobnicate", NULL };
	static const char *const bad3[] = { "--strategy", "keymutex,nosuch", NULL };
	static const char *const help[] = { "--help", NULL };

	cr_assert_eq(spawn_status(bad1), 2);
	cr_assert_eq(spawn_status(bad2), 2);
	cr_assert_eq(spawn_status(bad3), 2);
	cr_assert_eq(spawn_status(help), 0);
}

/* ------------------------------------------------------------------ */
/* End to end                                                          */
/* ------------------------------------------------------------------ */

Test(end_to_end, tiny_run_writes_csv_and_json, .timeout = 60, .init = cr_redirect_stdout)
{
	char dir[] = "/tmp/km-bench-selftest-XXXXXX", csv[64], json[64];
	struct stat st;

	cr_assert(mkdtemp(dir));
	snprintf(csv, sizeof(csv), "%s/r.csv", dir);
	snprintf(json, sizeof(json), "%s/r.json", dir);
	cr_assert_eq(run_main("--scenario", "repeat,hotkey", "--strategy", "keymutex,global,naive",
			      "--threads", "2", "--inside-ns", "100", "--duration", "50ms", "--quiet",
			      "--csv", csv, "--json", json, NULL), 0);
	cr_assert_eq(stat(csv, &st), 0);
	cr_assert_gt(st.st_size, 100);
	cr_assert_eq(stat(json, &st), 0);
	cr_assert_gt(st.st_size, 100);
	unlink(csv);
	unlink(json);
	rmdir(dir);
}
