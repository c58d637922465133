/*
 * km-bench: reports. The table on stdout, the exclusion verdict, the goals of
 * bench.md, and the CSV / JSON / gnuplot outputs.
 *
 * SPDX-License-Identifier: MIT
 */
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Formatting                                                          */
/* ------------------------------------------------------------------ */

void fmt_count(char *buf, size_t len, double v)
{
	if (!isfinite(v))
		snprintf(buf, len, "-");
	else if (v >= 1e9)
		snprintf(buf, len, "%.2fG", v / 1e9);
	else if (v >= 1e6)
		snprintf(buf, len, "%.2fM", v / 1e6);
	else if (v >= 1e4)
		snprintf(buf, len, "%.0fk", v / 1e3);
	else if (v >= 1e3)
		snprintf(buf, len, "%.1fk", v / 1e3);
	else
		snprintf(buf, len, "%.0f", v);
}

void fmt_ns(char *buf, size_t len, double ns)
{
	if (!isfinite(ns) || ns < 0)
		snprintf(buf, len, "-");
	else if (ns < 1e3)
		snprintf(buf, len, "%.0fns", ns);
	else if (ns < 1e4)
		snprintf(buf, len, "%.2fus", ns / 1e3);
	else if (ns < 1e6)
		snprintf(buf, len, "%.0fus", ns / 1e3);
	else if (ns < 1e9)
		snprintf(buf, len, "%.1fms", ns / 1e6);
	else
		snprintf(buf, len, "%.2fs", ns / 1e9);
}

void fmt_work(char *buf, size_t len, const struct bench_result *r)
{
	int n;

	if (r->sleep_us)
		n = snprintf(buf, len, "sleep%lluus", (unsigned long long)r->sleep_us);
	else if (r->inside_ns)
		n = snprintf(buf, len, "%lluns", (unsigned long long)r->inside_ns);
	else
		n = snprintf(buf, len, "0");
	if (r->outside_ns && n > 0 && (size_t)n < len)
		n += snprintf(buf + n, len - (size_t)n, "+out%llu", (unsigned long long)r->outside_ns);
	if (r->read_pct && n > 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n, " r%u", r->read_pct);
}

static int usable(const struct bench_result *r)
{
	return r && (r->status == RUN_OK || r->status == RUN_CAPPED);
}

/* A run whose threads should never block (no sleep, keys rarely shared, no
 * more threads than CPUs): it should get all the CPU it asks for. */
static int starved(const struct bench_result *r)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	return usable(r) && r->sleep_us == 0 && r->keys >= 1000 &&
	       (long)r->threads <= (ncpu > 0 ? ncpu : 1) && r->elapsed_s > 0 && r->cpu_share < 0.7;
}

/* Seconds of CPU the machine could give each thread during the run: below
 * a few scheduler slices, per-thread op counts measure the scheduler (which
 * threads it happened to run), not the lock. */
static double cpu_per_thread(const struct bench_result *r)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	double c = (double)(ncpu > 0 ? ncpu : 1);

	if (r->sleep_us)
		return INFINITY;	/* sleeping threads: the sleeps, not the CPU, pace them */
	if (c > r->threads)
		c = r->threads;
	return r->threads ? r->elapsed_s * c / r->threads : 0;
}

static int is_naive(const struct bench_result *r)
{
	return strcmp(r->strategy, "naive") == 0;
}

/* ------------------------------------------------------------------ */
/* Ratios, exclusion                                                   */
/* ------------------------------------------------------------------ */

void report_ratios(struct bench_report *rep)
{
	size_t i, j;

	for (i = 0; i < rep->n; i++) {
		const struct bench_result *km = NULL;

		rep->ratio[i] = NAN;
		for (j = 0; j < rep->n; j++)
			if (rep->r[j].variant == rep->r[i].variant &&
			    strcmp(rep->r[j].strategy, "keymutex") == 0)
				km = &rep->r[j];
		if (usable(km) && usable(&rep->r[i]) && km->ops_per_s > 0)
			rep->ratio[i] = rep->r[i].ops_per_s / km->ops_per_s;
	}
}

void report_exclusion(const struct bench_report *rep, struct bench_exclusion *x)
{
	size_t i;

	memset(x, 0, sizeof(*x));
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];

		if (!usable(r) || !r->checked)
			continue;
		if (is_naive(r)) {
			x->naive_runs++;
			x->naive_violations += r->violations;
			if (r->threads > 1 && r->dist != DIST_UNIQUE && r->dist != DIST_HOLD)
				x->naive_contended_runs++;
		} else {
			x->other_runs++;
			x->other_violations += r->violations;
		}
	}
	x->exercised = x->naive_violations > 0;
}

/* ------------------------------------------------------------------ */
/* Goals                                                               */
/* ------------------------------------------------------------------ */

static const struct bench_result *find(const struct bench_report *rep, const char *scen,
				       unsigned threads, long long inside, const char *strat)
{
	size_t i;

	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];

		if (strcmp(r->scenario, scen) == 0 && strcmp(r->strategy, strat) == 0 &&
		    (!threads || r->threads == threads) &&
		    (inside < 0 || r->inside_ns == (uint64_t)inside) && usable(r))
			return r;
	}
	return NULL;
}

static struct bench_goal *goal(struct bench_goal *g, size_t *n, size_t max, const char *what)
{
	struct bench_goal *x;

	if (*n >= max)
		return NULL;
	x = &g[(*n)++];
	snprintf(x->what, sizeof(x->what), "%s", what);
	x->detail[0] = '\0';
	x->verdict = GOAL_NA;
	return x;
}

/* keymutex's ops/s >= factor x other's. */
static void goal_ratio(struct bench_goal *g, const struct bench_result *km,
		       const struct bench_result *other, double factor)
{
	double q;

	if (!g)
		return;
	if (!km || !other || other->ops_per_s <= 0) {
		snprintf(g->detail, sizeof(g->detail), "no data");
		return;
	}
	q = km->ops_per_s / other->ops_per_s;
	snprintf(g->detail, sizeof(g->detail), "%.2fx (keymutex %.3gM/s, %s %.3gM/s)", q,
		 km->ops_per_s / 1e6, other->strategy, other->ops_per_s / 1e6);
	g->verdict = q >= factor ? GOAL_MET : GOAL_MISSED;
}

size_t report_goals(const struct bench_report *rep, struct bench_goal *g, size_t max)
{
	static const unsigned hot_t[] = { 2, 8, 64 };
	static const long long hot_in[] = { 0, 100 };
	char what[96];
	size_t n = 0;
	unsigned i, j;
	struct bench_goal *x;
	const struct bench_result *km, *o;

	km = find(rep, "uncontended", 1, -1, "keymutex");
	goal_ratio(goal(g, &n, max, "uncontended: >= 2x global ops/s"), km,
		   find(rep, "uncontended", 1, -1, "global"), 2.0);
	goal_ratio(goal(g, &n, max, "uncontended: >= 0.5x striped ops/s"), km,
		   find(rep, "uncontended", 1, -1, "striped"), 0.5);
	goal_ratio(goal(g, &n, max, "repeat: >= 0.7x striped ops/s"),
		   find(rep, "repeat", 1, -1, "keymutex"), find(rep, "repeat", 1, -1, "striped"), 0.7);

	for (i = 2; i <= 8; i += 6) {
		km = find(rep, "uniform", i, -1, "keymutex");
		snprintf(what, sizeof(what), "uniform, %u threads: >= 3x global ops/s", i);
		goal_ratio(goal(g, &n, max, what), km, find(rep, "uniform", i, -1, "global"), 3.0);
		snprintf(what, sizeof(what), "uniform, %u threads: >= 0.8x striped ops/s", i);
		goal_ratio(goal(g, &n, max, what), km, find(rep, "uniform", i, -1, "striped"), 0.8);
	}

	for (i = 8; i <= 64; i += 56) {
		km = find(rep, "zipf", i, -1, "keymutex");
		o = find(rep, "zipf", i, -1, "global");
		snprintf(what, sizeof(what), "zipf, %u threads: >= 2x global ops/s", i);
		goal_ratio(goal(g, &n, max, what), km, o, 2.0);
		snprintf(what, sizeof(what), "zipf, %u threads: p99.9 wait <= global's", i);
		x = goal(g, &n, max, what);
		if (x && km && o && km->lat_samples && o->lat_samples) {
			char a[16], b[16];

			fmt_ns(a, sizeof(a), km->lat_p999);
			fmt_ns(b, sizeof(b), o->lat_p999);
			snprintf(x->detail, sizeof(x->detail), "keymutex %s, global %s", a, b);
			x->verdict = km->lat_p999 <= o->lat_p999 ? GOAL_MET : GOAL_MISSED;
		} else if (x) {
			snprintf(x->detail, sizeof(x->detail), "no data");
		}
	}

	for (j = 0; j < 2; j++) {
		const struct bench_result *k2, *k64;
		double worst = INFINITY;
		unsigned worst_t = 0;
		int too_short = 0;

		for (i = 0; i < 3; i++) {
			snprintf(what, sizeof(what), "hotkey, %u threads, inside %lldns: >= 0.8x mutex",
				 hot_t[i], hot_in[j]);
			km = find(rep, "hotkey", hot_t[i], hot_in[j], "keymutex");
			goal_ratio(goal(g, &n, max, what), km,
				   find(rep, "hotkey", hot_t[i], hot_in[j], "mutex"), 0.8);
			if (km && cpu_per_thread(km) < 0.02) {
				too_short = 1;
				continue;
			}
			if (km && km->thr_max && (double)km->thr_min / (double)km->thr_max < worst) {
				worst = (double)km->thr_min / (double)km->thr_max;
				worst_t = hot_t[i];
			}
		}
		k2 = find(rep, "hotkey", 2, hot_in[j], "keymutex");
		k64 = find(rep, "hotkey", 64, hot_in[j], "keymutex");
		snprintf(what, sizeof(what), "hotkey, inside %lldns: 64 threads >= 0.5x 2 threads",
			 hot_in[j]);
		x = goal(g, &n, max, what);
		if (x && k2 && k64 && k2->ops_per_s > 0) {
			double q = k64->ops_per_s / k2->ops_per_s;

			snprintf(x->detail, sizeof(x->detail), "%.2fx (%.3gM/s at 64, %.3gM/s at 2)", q,
				 k64->ops_per_s / 1e6, k2->ops_per_s / 1e6);
			x->verdict = q >= 0.5 ? GOAL_MET : GOAL_MISSED;
		} else if (x) {
			snprintf(x->detail, sizeof(x->detail), "no data");
		}
		snprintf(what, sizeof(what), "hotkey, inside %lldns: per-thread min/max ops >= 0.5",
			 hot_in[j]);
		x = goal(g, &n, max, what);
		if (x && worst_t) {
			snprintf(x->detail, sizeof(x->detail), "worst %.2f (at %u threads)%s", worst,
				 worst_t, too_short ? "; runs too short to judge the others" : "");
			x->verdict = worst >= 0.5 ? GOAL_MET : GOAL_MISSED;
		} else if (x && too_short) {
			snprintf(x->detail, sizeof(x->detail),
				 "runs too short to judge (< 20 ms of CPU per thread): run without --quick");
		} else if (x) {
			snprintf(x->detail, sizeof(x->detail), "no data");
		}
	}

	km = find(rep, "io", 64, -1, "keymutex");
	x = goal(g, &n, max, "io: >= 0.9x ideal throughput (threads / hold, less collisions)");
	if (x && km && km->ideal_ops_per_s > 0) {
		double q = km->ops_per_s / km->ideal_ops_per_s;

		snprintf(x->detail, sizeof(x->detail), "%.2fx (%.0fk/s of %.0fk/s; mean hold %.0fus)",
			 q, km->ops_per_s / 1e3, km->ideal_ops_per_s / 1e3, km->hold_mean_ns / 1e3);
		x->verdict = q >= 0.9 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}
	goal_ratio(goal(g, &n, max, "io: above striped"), km, find(rep, "io", 64, -1, "striped"),
		   1.0 + 1e-9);

	km = find(rep, "churn", 0, -1, "keymutex");
	x = goal(g, &n, max, "churn: RSS growth < 16 MiB over 10M keys");
	if (x && km) {
		snprintf(x->detail, sizeof(x->detail), "peak +%.1f MiB over %.2fM keys%s",
			 (double)km->rss_peak_kib / 1024.0, (double)km->ops / 1e6,
			 km->ops < 10000000 ? " (fewer than 10M: run without --quick)" : "");
		x->verdict = km->rss_peak_kib < 16 * 1024 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}
	x = goal(g, &n, max, "churn: 0 keys in the table after");
	if (x && km && km->keys_after >= 0) {
		snprintf(x->detail, sizeof(x->detail), "km_stats().keys = %lld", km->keys_after);
		x->verdict = km->keys_after == 0 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}

	km = find(rep, "memory", 1, -1, "keymutex");
	x = goal(g, &n, max, "memory: <= 96 bytes per held key plus the key's length (8)");
	if (x && km && km->bytes_per_key > 0) {
		snprintf(x->detail, sizeof(x->detail), "%.1f bytes per key (%llu keys held)",
			 km->bytes_per_key, (unsigned long long)km->held);
		x->verdict = km->bytes_per_key <= 96 + 8 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}
	x = goal(g, &n, max, "memory: table back to 0 keys after release");
	if (x && km && km->keys_after >= 0) {
		snprintf(x->detail, sizeof(x->detail), "km_stats().keys = %lld", km->keys_after);
		x->verdict = km->keys_after == 0 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}

	/* Read-mostly (docs/benchmarks.md; issue 5), inside 100 ns. */
	for (i = 8; i <= 64; i += 56) {
		km = find(rep, "shared", i, 100, "keymutex");
		snprintf(what, sizeof(what), "shared, %u threads, inside 100ns: >= 2x rwglobal ops/s", i);
		goal_ratio(goal(g, &n, max, what), km, find(rep, "shared", i, 100, "rwglobal"), 2.0);
		snprintf(what, sizeof(what), "shared, %u threads, inside 100ns: >= 0.8x rwstriped ops/s", i);
		goal_ratio(goal(g, &n, max, what), km, find(rep, "shared", i, 100, "rwstriped"), 0.8);
	}
	km = find(rep, "shared", 64, 1000, "keymutex");
	x = goal(g, &n, max, "shared, 64 threads, inside 1000ns: readers of a key overlap");
	if (x && km && km->reads) {
		snprintf(x->detail, sizeof(x->detail), "%.1f%% of %llu shared sections met another",
			 100.0 * (double)km->overlaps / (double)km->reads,
			 (unsigned long long)km->reads);
		x->verdict = km->overlaps > 0 ? GOAL_MET : GOAL_MISSED;
	} else if (x) {
		snprintf(x->detail, sizeof(x->detail), "no data");
	}
	return n;
}

/* ------------------------------------------------------------------ */
/* Text                                                                */
/* ------------------------------------------------------------------ */

static void cpu_model(char *buf, size_t len)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "r");

	snprintf(buf, len, "unknown CPU");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *c = strchr(line, ':');

		if (strncmp(line, "model name", 10) == 0 && c) {
			c++;
			while (*c == ' ' || *c == '\t')
				c++;
			c[strcspn(c, "\n")] = '\0';
			snprintf(buf, len, "%s", c);
			break;
		}
	}
	fclose(f);
}

void report_header(FILE *f, const struct bench_report *rep)
{
	struct utsname u;
	char cpu[128];
	unsigned v = km_version();

	cpu_model(cpu, sizeof(cpu));
	if (uname(&u))
		snprintf(u.release, sizeof(u.release), "?");
	fprintf(f, "km-bench: keymutex %u.%u.%u on %ld CPUs (%s), Linux %s\n", v >> 16, (v >> 8) & 0xff,
		v & 0xff, sysconf(_SC_NPROCESSORS_ONLN), cpu, u.release);
	fprintf(f, "command:  %s\n", rep->command);
	fprintf(f, "%s; %s; ops/s = lock+unlock pairs per second; x km = ops/s / keymutex's;\n"
		"latency = time inside lock() (sampled); fair = per-thread min/max ops\n"
		"(~: under 20 ms of CPU per thread, too short to judge fairness);\n"
		"rss+ = peak RSS growth during the run (MiB); keys = entries left in the table\n\n",
		rep->quick ? "quick mode (brief runs: indicative figures)" : "full runs",
		rep->forked ? "one child process per run" : "all runs in one process");
}

void report_table(FILE *f, const struct bench_report *rep)
{
	size_t i;
	int last_variant = -1;
	const char *last_scen = "";

	fprintf(f, "%-11s %4s %-10s %-9s %8s %6s %6s %7s %7s %7s %7s %6s %7s %8s  %s\n", "scenario",
		"thr", "work", "strategy", "ops/s", "x km", "fair", "p50", "p99", "p99.9", "max",
		"viol", "rss+", "keys", "note");
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];
		char ops[16], q[16], fair[16], p50[16], p99[16], p999[16], mx[16], viol[16], rss[16],
			keys[24], work[32], extra[128] = "";

		if (strcmp(r->scenario, last_scen) != 0 && i)
			fputc('\n', f);
		last_scen = r->scenario;
		(void)last_variant;
		last_variant = r->variant;
		fmt_work(work, sizeof(work), r);
		if (!usable(r)) {
			fprintf(f, "%-11s %4u %-10s %-9s %8s  %s\n", r->scenario, r->threads, work,
				r->strategy, bench_status_name(r->status), r->note);
			continue;
		}
		fmt_count(ops, sizeof(ops), r->ops_per_s);
		if (isfinite(rep->ratio[i]))
			snprintf(q, sizeof(q), "%.2f", rep->ratio[i]);
		else
			snprintf(q, sizeof(q), "-");
		if (r->threads > 1 && r->thr_max)
			snprintf(fair, sizeof(fair), "%.2f%s", (double)r->thr_min / (double)r->thr_max,
				 cpu_per_thread(r) < 0.02 ? "~" : "");
		else
			snprintf(fair, sizeof(fair), "-");
		if (r->lat_samples) {
			fmt_ns(p50, sizeof(p50), r->lat_p50);
			fmt_ns(p99, sizeof(p99), r->lat_p99);
			fmt_ns(p999, sizeof(p999), r->lat_p999);
			fmt_ns(mx, sizeof(mx), r->lat_max);
		} else {
			strcpy(p50, "-");
			strcpy(p99, "-");
			strcpy(p999, "-");
			strcpy(mx, "-");
		}
		if (r->checked)
			snprintf(viol, sizeof(viol), "%llu", (unsigned long long)r->violations);
		else
			snprintf(viol, sizeof(viol), "-");
		snprintf(rss, sizeof(rss), "%.1f", (double)r->rss_peak_kib / 1024.0);
		if (r->keys_after >= 0)
			fmt_count(keys, sizeof(keys), (double)r->keys_after);
		else
			snprintf(keys, sizeof(keys), "-");
		if (r->dist == DIST_HOLD)
			snprintf(extra, sizeof(extra), "%.1f B/key, %llu held; ", r->bytes_per_key,
				 (unsigned long long)r->held);
		else if (r->ideal_ops_per_s > 0)
			snprintf(extra, sizeof(extra), "%.2fx ideal, hold %.0fus; ",
				 r->ops_per_s / r->ideal_ops_per_s, r->hold_mean_ns / 1e3);
		else if (r->dist == DIST_UNIQUE)
			snprintf(extra, sizeof(extra), "%.2fM new keys; ", (double)r->ops / 1e6);
		else if (r->reads && !r->reads_exclusive)
			snprintf(extra, sizeof(extra), "%.0f%% of reads overlapped; ",
				 100.0 * (double)r->overlaps / (double)r->reads);
		if (r->status == RUN_CAPPED)
			strncat(extra, "STOPPED EARLY; ", sizeof(extra) - strlen(extra) - 1);
		if (starved(r)) {
			size_t l = strlen(extra);

			snprintf(extra + l, sizeof(extra) - l, "cpu %.0f%%!; ", r->cpu_share * 100);
		}
		fprintf(f, "%-11s %4u %-10s %-9s %8s %6s %6s %7s %7s %7s %7s %6s %7s %8s  %s%s\n",
			r->scenario, r->threads, work, r->strategy, ops, q, fair, p50, p99, p999, mx,
			viol, rss, keys, extra, r->note);
	}
}

void report_summary(FILE *f, const struct bench_report *rep, const struct bench_exclusion *x,
		    const struct bench_goal *g, size_t ng)
{
	static const char *const verdict[] = { "MET", "MISSED", "n/a" };
	size_t i, met = 0, missed = 0;

	fputs("\nExclusion: ", f);
	if (x->exercised)
		fprintf(f, "naive broke it %llu times in %llu contended runs: the detector works.\n",
			x->naive_violations, x->naive_contended_runs);
	else if (!x->naive_runs)
		fputs("DETECTOR NOT EXERCISED: naive was not run, so 0 violations below prove nothing.\n",
		      f);
	else
		fprintf(f, "DETECTOR NOT EXERCISED: naive showed no violation (%llu contended runs), so "
			"0 violations below prove nothing.\n", x->naive_contended_runs);
	if (!x->other_violations) {
		fprintf(f, "           every other strategy: 0 violations in %llu runs.\n", x->other_runs);
	} else {
		fprintf(f, "           EXCLUSION BROKEN by a strategy other than naive:\n");
		for (i = 0; i < rep->n; i++) {
			const struct bench_result *r = &rep->r[i];
			char work[32];

			if (is_naive(r) || !r->violations)
				continue;
			fmt_work(work, sizeof(work), r);
			fprintf(f, "             %s on %s t=%u %s: %llu violations\n", r->strategy,
				r->scenario, r->threads, work, (unsigned long long)r->violations);
		}
	}
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];

		if (r->status == RUN_FAILED || r->status == RUN_TIMEOUT || r->status == RUN_CRASHED)
			fprintf(f, "Run %s: %s on %s t=%u: %s\n", bench_status_name(r->status),
				r->strategy, r->scenario, r->threads, r->note);
	}

	{
		size_t bad = 0, cand = 0;
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

		for (i = 0; i < rep->n; i++) {
			const struct bench_result *r = &rep->r[i];

			if (usable(r) && r->sleep_us == 0 && r->keys >= 1000 &&
			    (long)r->threads <= (ncpu > 0 ? ncpu : 1))
				cand++;
			bad += (size_t)starved(r);
		}
		if (bad)
			fprintf(f, "Machine: BUSY: %zu of %zu runs that never block got less than 70%% of "
				"the CPU they asked for (marked 'cpu N%%!'): other processes competed, "
				"so ops/s and ratios are unreliable; re-run on an idle machine.\n", bad, cand);
		else if (cand)
			fprintf(f, "Machine: quiet enough: each of the %zu runs that never block got at "
				"least 70%% of the CPU it asked for.\n", cand);
	}

	fprintf(f, "\nGoals (bench.md; the shared ones: docs/benchmarks.md), keymutex against the others in this run%s:\n",
		rep->overridden ? " (parameters overridden: indicative only)" : "");
	for (i = 0; i < ng; i++) {
		if (g[i].verdict == GOAL_MET)
			met++;
		else if (g[i].verdict == GOAL_MISSED)
			missed++;
		if (g[i].verdict == GOAL_NA && !strcmp(g[i].detail, "no data"))
			continue;
		fprintf(f, "  %-6s %-62s %s\n", verdict[g[i].verdict], g[i].what, g[i].detail);
	}
	fprintf(f, "  %zu met, %zu missed, %zu without data\n", met, missed, ng - met - missed);
}

/* ------------------------------------------------------------------ */
/* CSV, JSON                                                           */
/* ------------------------------------------------------------------ */

static void csv_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static void csv_num(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, ",%.6g", v);
	else
		fputs(",", f);
}

int report_csv(const char *path, const struct bench_report *rep)
{
	FILE *f = fopen(path, "w");
	size_t i;

	if (!f) {
		fprintf(stderr, "km-bench: --csv %s: %s\n", path, strerror(errno));
		return -1;
	}
	fputs("scenario,threads,keys,dist,zipf_s,inside_ns,sleep_us,outside_ns,strategy,status,"
	      "ops,elapsed_s,ops_per_s,ratio_to_keymutex,thread_min_ops,thread_max_ops,"
	      "lat_samples,lat_p50_ns,lat_p99_ns,lat_p999_ns,lat_max_ns,lat_mean_ns,"
	      "violations,checked,errors,rss_base_kib,rss_peak_growth_kib,rss_end_growth_kib,"
	      "rss_peak_exact,keys_after,keys_held,bytes_per_key,hold_mean_ns,ideal_ops_per_s,"
	      "cpu_share,read_pct,reads,overlaps,reads_exclusive,note\n",
	      f);
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];

		fprintf(f, "%s,%u,%llu,%s,%g,%llu,%llu,%llu,%s,%s,%llu", r->scenario, r->threads,
			(unsigned long long)r->keys, bench_dist_name(r->dist), r->zipf_s,
			(unsigned long long)r->inside_ns, (unsigned long long)r->sleep_us,
			(unsigned long long)r->outside_ns, r->strategy, bench_status_name(r->status),
			(unsigned long long)r->ops);
		csv_num(f, r->elapsed_s);
		csv_num(f, r->ops_per_s);
		csv_num(f, rep->ratio[i]);
		fprintf(f, ",%llu,%llu,%llu", (unsigned long long)r->thr_min,
			(unsigned long long)r->thr_max, (unsigned long long)r->lat_samples);
		csv_num(f, r->lat_p50);
		csv_num(f, r->lat_p99);
		csv_num(f, r->lat_p999);
		csv_num(f, r->lat_max);
		csv_num(f, r->lat_mean);
		fprintf(f, ",%llu,%d,%llu,%lld,%lld,%lld,%d,%lld,%lld", (unsigned long long)r->violations,
			r->checked, (unsigned long long)r->errors, r->rss_base_kib, r->rss_peak_kib,
			r->rss_end_kib, r->rss_peak_exact, r->keys_after, r->keys_held);
		csv_num(f, r->dist == DIST_HOLD ? r->bytes_per_key : NAN);
		csv_num(f, r->hold_mean_ns);
		csv_num(f, r->ideal_ops_per_s > 0 ? r->ideal_ops_per_s : NAN);
		csv_num(f, r->elapsed_s > 0 ? r->cpu_share : NAN);
		fprintf(f, ",%u,%llu,%llu,%d,", r->read_pct, (unsigned long long)r->reads,
			(unsigned long long)r->overlaps, r->reads_exclusive);
		csv_str(f, r->note);
		fputc('\n', f);
	}
	if (fclose(f)) {
		fprintf(stderr, "km-bench: --csv %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v, int comma)
{
	fprintf(f, "\"%s\": ", key);
	if (isfinite(v))
		fprintf(f, "%.6g", v);
	else
		fputs("null", f);
	if (comma)
		fputs(", ", f);
}

int report_json(const char *path, const struct bench_report *rep, const struct bench_exclusion *x,
		const struct bench_goal *g, size_t ng)
{
	static const char *const verdict[] = { "met", "missed", "n/a" };
	FILE *f = fopen(path, "w");
	struct utsname u;
	char cpu[128], date[32];
	time_t now = time(NULL);
	size_t i;

	if (!f) {
		fprintf(stderr, "km-bench: --json %s: %s\n", path, strerror(errno));
		return -1;
	}
	cpu_model(cpu, sizeof(cpu));
	if (uname(&u))
		snprintf(u.release, sizeof(u.release), "?");
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fputs("{\n  \"command\": ", f);
	json_str(f, rep->command);
	fprintf(f, ",\n  \"date\": \"%s\",\n  \"machine\": {\"cpus\": %ld, \"cpu\": ", date,
		sysconf(_SC_NPROCESSORS_ONLN));
	json_str(f, cpu);
	fputs(", \"kernel\": ", f);
	json_str(f, u.release);
	fprintf(f, "},\n  \"keymutex_version\": %u,\n  \"quick\": %s,\n  \"forked\": %s,\n",
		km_version(), rep->quick ? "true" : "false", rep->forked ? "true" : "false");
	fprintf(f, "  \"exclusion\": {\"detector_exercised\": %s, \"naive_violations\": %llu, "
		"\"naive_runs\": %llu, \"naive_contended_runs\": %llu, \"other_violations\": %llu, "
		"\"other_runs\": %llu},\n", x->exercised ? "true" : "false", x->naive_violations,
		x->naive_runs, x->naive_contended_runs, x->other_violations, x->other_runs);
	fputs("  \"goals\": [\n", f);
	for (i = 0; i < ng; i++) {
		fputs("    {\"goal\": ", f);
		json_str(f, g[i].what);
		fprintf(f, ", \"verdict\": \"%s\", \"detail\": ", verdict[g[i].verdict]);
		json_str(f, g[i].detail);
		fprintf(f, "}%s\n", i + 1 < ng ? "," : "");
	}
	fputs("  ],\n  \"results\": [\n", f);
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *r = &rep->r[i];

		fprintf(f, "    {\"scenario\": \"%s\", \"threads\": %u, \"keys\": %llu, \"dist\": \"%s\", ",
			r->scenario, r->threads, (unsigned long long)r->keys, bench_dist_name(r->dist));
		json_num(f, "zipf_s", r->zipf_s, 1);
		fprintf(f, "\"inside_ns\": %llu, \"sleep_us\": %llu, \"outside_ns\": %llu, "
			"\"strategy\": \"%s\", \"status\": \"%s\", \"ops\": %llu, ",
			(unsigned long long)r->inside_ns, (unsigned long long)r->sleep_us,
			(unsigned long long)r->outside_ns, r->strategy, bench_status_name(r->status),
			(unsigned long long)r->ops);
		json_num(f, "elapsed_s", r->elapsed_s, 1);
		json_num(f, "ops_per_s", r->ops_per_s, 1);
		json_num(f, "ratio_to_keymutex", rep->ratio[i], 1);
		fprintf(f, "\"thread_min_ops\": %llu, \"thread_max_ops\": %llu, \"lat_samples\": %llu, ",
			(unsigned long long)r->thr_min, (unsigned long long)r->thr_max,
			(unsigned long long)r->lat_samples);
		json_num(f, "lat_p50_ns", r->lat_p50, 1);
		json_num(f, "lat_p99_ns", r->lat_p99, 1);
		json_num(f, "lat_p999_ns", r->lat_p999, 1);
		json_num(f, "lat_max_ns", r->lat_max, 1);
		json_num(f, "lat_mean_ns", r->lat_mean, 1);
		fprintf(f, "\"violations\": %llu, \"checked\": %s, \"errors\": %llu, "
			"\"rss_base_kib\": %lld, \"rss_peak_growth_kib\": %lld, "
			"\"rss_end_growth_kib\": %lld, \"rss_peak_exact\": %s, ",
			(unsigned long long)r->violations, r->checked ? "true" : "false",
			(unsigned long long)r->errors, r->rss_base_kib, r->rss_peak_kib, r->rss_end_kib,
			r->rss_peak_exact ? "true" : "false");
		if (r->keys_after >= 0)
			fprintf(f, "\"keys_after\": %lld, ", r->keys_after);
		else
			fputs("\"keys_after\": null, ", f);
		if (r->dist == DIST_HOLD) {
			fprintf(f, "\"keys_held\": %lld, \"held\": %llu, ", r->keys_held,
				(unsigned long long)r->held);
			json_num(f, "bytes_per_key", r->bytes_per_key, 1);
		}
		json_num(f, "hold_mean_ns", r->hold_mean_ns, 1);
		json_num(f, "ideal_ops_per_s", r->ideal_ops_per_s > 0 ? r->ideal_ops_per_s : NAN, 1);
		json_num(f, "cpu_share", r->elapsed_s > 0 ? r->cpu_share : NAN, 1);
		fprintf(f, "\"read_pct\": %u, \"reads\": %llu, \"overlaps\": %llu, "
			"\"reads_exclusive\": %s, ", r->read_pct, (unsigned long long)r->reads,
			(unsigned long long)r->overlaps, r->reads_exclusive ? "true" : "false");
		fputs("\"note\": ", f);
		json_str(f, r->note);
		fprintf(f, "}%s\n", i + 1 < rep->n ? "," : "");
	}
	fputs("  ]\n}\n", f);
	if (fclose(f)) {
		fprintf(stderr, "km-bench: --json %s: %s\n", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Charts                                                              */
/* ------------------------------------------------------------------ */

static int mkdir_p(const char *path)
{
	char buf[4096];
	size_t i, n = strlen(path);

	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, path, n + 1);
	for (i = 1; i <= n; i++) {
		if (buf[i] == '/' || buf[i] == '\0') {
			char c = buf[i];

			buf[i] = '\0';
			if (mkdir(buf, 0777) && errno != EEXIST)
				return -1;
			buf[i] = c;
		}
	}
	return 0;
}

/* Same curve: same scenario and work, threads vary. */
static int same_curve(const struct bench_result *a, const struct bench_result *b)
{
	return strcmp(a->scenario, b->scenario) == 0 && a->inside_ns == b->inside_ns &&
	       a->sleep_us == b->sleep_us && a->outside_ns == b->outside_ns && a->keys == b->keys &&
	       a->dist == b->dist;
}

static void chart_name(char *buf, size_t len, const char *kind, const struct bench_result *r,
		       int with_threads)
{
	int n = snprintf(buf, len, "%s-%s", kind, r->scenario);

	if (with_threads && n > 0 && (size_t)n < len)
		n += snprintf(buf + n, len - (size_t)n, "-t%u", r->threads);
	if (r->sleep_us && n > 0 && (size_t)n < len)
		n += snprintf(buf + n, len - (size_t)n, "-sleep%llu", (unsigned long long)r->sleep_us);
	else if (r->inside_ns && n > 0 && (size_t)n < len)
		n += snprintf(buf + n, len - (size_t)n, "-in%llu", (unsigned long long)r->inside_ns);
	if (r->outside_ns && n > 0 && (size_t)n < len)
		snprintf(buf + n, len - (size_t)n, "-out%llu", (unsigned long long)r->outside_ns);
}

static FILE *open_in(const char *dir, const char *name, const char *ext)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/%s%s", dir, name, ext);
	return fopen(path, "w");
}

#define MAX_THREADS_LIST 16

static const char SVG_TERM[] =
	"set terminal svg size 900,520 dynamic noenhanced font 'sans,11' background rgb 'white'\n";

/* Throughput vs threads, one chart per curve that has two thread counts or more. */
static int plot_throughput(const char *dir, const struct bench_report *rep, FILE *gp, int *charts)
{
	size_t i, j, k;
	unsigned char *done = calloc(rep->n ? rep->n : 1, 1);

	if (!done)
		return -1;
	for (i = 0; i < rep->n; i++) {
		const struct bench_result *a = &rep->r[i];
		char name[128], work[32];
		const char *strats[16];
		unsigned threads[MAX_THREADS_LIST], nt = 0, ns = 0, t;
		FILE *d;

		if (done[i])
			continue;
		for (j = i; j < rep->n; j++) {
			const struct bench_result *b = &rep->r[j];

			if (!same_curve(a, b))
				continue;
			done[j] = 1;
			for (t = 0; t < nt && threads[t] != b->threads; t++)
				;
			if (t == nt && nt < MAX_THREADS_LIST)
				threads[nt++] = b->threads;
			for (k = 0; k < ns && strcmp(strats[k], b->strategy); k++)
				;
			if (k == ns && ns < 16)
				strats[ns++] = b->strategy;
		}
		if (nt < 2)
			continue;
		chart_name(name, sizeof(name), "throughput", a, 0);
		d = open_in(dir, name, ".dat");
		if (!d) {
			free(done);
			return -1;
		}
		fputs("threads", d);
		for (k = 0; k < ns; k++)
			fprintf(d, " %s", strats[k]);
		fputc('\n', d);
		for (t = 0; t < nt; t++) {
			fprintf(d, "%u", threads[t]);
			for (k = 0; k < ns; k++) {
				const struct bench_result *hit = NULL;

				for (j = 0; j < rep->n; j++) {
					const struct bench_result *b = &rep->r[j];

					if (same_curve(a, b) && b->threads == threads[t] &&
					    strcmp(b->strategy, strats[k]) == 0 && usable(b))
						hit = b;
				}
				if (hit && hit->ops_per_s > 0)
					fprintf(d, " %.6g", hit->ops_per_s);
				else
					fputs(" ?", d);
			}
			fputc('\n', d);
		}
		fclose(d);
		fmt_work(work, sizeof(work), a);
		fprintf(gp, "set output '%s.svg'\n", name);
		fprintf(gp, "set title '%s (inside: %s): throughput vs threads'\n", a->scenario, work);
		fputs("set xlabel 'threads'\nset ylabel 'ops/s (lock+unlock)'\n"
		      "set logscale x 2\nset logscale y\nset grid\nset key outside right\n"
		      "set style data linespoints\nset yrange [*:*]\nset xrange [*:*]\n", gp);
		fprintf(gp, "plot for [i=2:%u] '%s.dat' using 1:i with linespoints lw 2 title columnheader(i)\n",
			ns + 1, name);
		fputs("unset logscale x\nunset logscale y\n", gp);
		(*charts)++;
	}
	free(done);
	return 0;
}

/* Acquire-latency percentiles, one chart per variant. */
static int plot_latency(const char *dir, const struct bench_report *rep, FILE *gp, int *charts)
{
	size_t i, j;
	int last = -1;

	for (i = 0; i < rep->n; i++) {
		const struct bench_result *a = &rep->r[i];
		char name[128], work[32];
		FILE *d;
		int rows = 0;

		if (a->variant == last)
			continue;
		last = a->variant;
		chart_name(name, sizeof(name), "latency", a, 1);
		d = open_in(dir, name, ".dat");
		if (!d)
			return -1;
		fputs("strategy p50 p99 p99.9 max\n", d);
		for (j = i; j < rep->n && rep->r[j].variant == a->variant; j++) {
			const struct bench_result *b = &rep->r[j];

			if (!usable(b) || !b->lat_samples)
				continue;
			fprintf(d, "%s %.6g %.6g %.6g %.6g\n", b->strategy, fmax(b->lat_p50, 1),
				fmax(b->lat_p99, 1), fmax(b->lat_p999, 1), fmax(b->lat_max, 1));
			rows++;
		}
		fclose(d);
		if (!rows)
			continue;
		fmt_work(work, sizeof(work), a);
		fprintf(gp, "set output '%s.svg'\n", name);
		fprintf(gp, "set title '%s, %u threads (inside: %s): acquire latency'\n", a->scenario,
			a->threads, work);
		fputs("set xlabel 'strategy'\nset ylabel 'ns (log scale)'\nset logscale y\n"
		      "set yrange [1:*]\nset grid ytics\nset key outside right\n"
		      "set style data histograms\nset style histogram clustered gap 1\n"
		      "set style fill solid 0.85 border -1\nset xtics norotate nomirror\n", gp);
		fprintf(gp, "plot '%s.dat' using 2:xtic(1) title columnheader(2), '' using 3 title "
			"columnheader(3), '' using 4 title columnheader(4), '' using 5 title columnheader(5)\n",
			name);
		fputs("set xtics mirror\nunset logscale y\nset style data points\n", gp);
		(*charts)++;
	}
	return 0;
}

int report_plot(const char *dir, const struct bench_report *rep)
{
	char path[4200];
	FILE *gp;
	int charts = 0, st = 0;
	pid_t pid;

	if (mkdir_p(dir)) {
		fprintf(stderr, "km-bench: --plot %s: %s\n", dir, strerror(errno));
		return -1;
	}
	gp = open_in(dir, "charts", ".gp");
	if (!gp) {
		fprintf(stderr, "km-bench: --plot %s: %s\n", dir, strerror(errno));
		return -1;
	}
	fprintf(gp, "# km-bench charts; run from this directory: gnuplot charts.gp\n%s"
		"set datafile missing '?'\nset key autotitle columnheader\n", SVG_TERM);
	if (plot_throughput(dir, rep, gp, &charts) || plot_latency(dir, rep, gp, &charts)) {
		fclose(gp);
		fprintf(stderr, "km-bench: --plot %s: %s\n", dir, strerror(errno));
		return -1;
	}
	fclose(gp);

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		if (chdir(dir))
			_exit(126);
		if (null >= 0)
			dup2(null, STDOUT_FILENO);
		execlp("gnuplot", "gnuplot", "charts.gp", (char *)NULL);
		_exit(errno == ENOENT ? 127 : 126);
	}
	snprintf(path, sizeof(path), "%s/charts.gp", dir);
	if (pid < 0) {
		fprintf(stderr, "km-bench: --plot: fork: %s; data and %s written, no SVG\n",
			strerror(errno), path);
		return 0;
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		fprintf(stderr, "km-bench: gnuplot not found: no SVG charts; the data (*.dat) and "
			"the script (%s) are written, run gnuplot there once it is installed\n", path);
	else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		fprintf(stderr, "km-bench: gnuplot failed on %s: charts may be missing\n", path);
	else
		fprintf(stderr, "km-bench: %d SVG charts in %s/\n", charts, dir);
	return 0;
}
