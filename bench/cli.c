/*
 * km-bench: the command line, the plan (scenario variants x strategies) and
 * its execution.
 *
 * Each run is forked into a child process by default: the child runs one
 * strategy on one variant and sends its bench_result back over a pipe. So
 * every run starts from a fresh heap (RSS growth and the VmHWM peak are the
 * run's own, nothing another strategy freed is reused), liburcu and the
 * library start from scratch, and a run that hangs or crashes is killed by
 * the parent's watchdog and reported instead of taking the whole comparison
 * down. --no-fork runs everything in this process (malloc_trim between runs;
 * RSS figures then still are growth over the run's own base).
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE 1	/* pipe2, strsignal */

#include "harness.h"
#include "report.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LIST 16
#define MAX_THREADS 1024u
#define MAX_KEYS (1ull << 28)

/* ------------------------------------------------------------------ */
/* Scenarios (bench.md)                                                */
/* ------------------------------------------------------------------ */

struct scenario {
	const char *name;
	const char *measures;
	unsigned threads[4];
	unsigned nthreads;
	uint64_t keys;
	enum bench_dist dist;
	double zipf_s;
	uint64_t inside[2];
	unsigned ninside;
	uint64_t sleep_us;
	unsigned lat_every;	/* time one acquire in N (contended scenarios: more often) */
	double full_s, quick_s;	/* duration of each run */
	uint64_t full_ops, quick_ops;	/* op budget of each run (0: none) */
	unsigned read_pct;	/* percent of acquires in shared mode */
};

static const struct scenario scenarios[] = {
	{ "uncontended", "cost of lock+unlock, entry created and removed each time",
	  { 1 }, 1, 1000000, DIST_UNIFORM, 0, { 0 }, 1, 0, 16, 2.0, 0.15, 0, 0, 0 },
	{ "repeat", "cost when keys recur",
	  { 1 }, 1, 1000, DIST_UNIFORM, 0, { 0 }, 1, 0, 16, 2.0, 0.15, 0, 0, 0 },
	{ "uniform", "throughput on independent keys",
	  { 2, 8, 64 }, 3, 1000000, DIST_UNIFORM, 0, { 100 }, 1, 0, 16, 2.0, 0.15, 0, 0, 0 },
	{ "zipf", "hot keys: throughput and p50/p99/p99.9 wait",
	  { 2, 8, 64 }, 3, 10000, DIST_ZIPF, 0.99, { 100 }, 1, 0, 4, 2.0, 0.15, 0, 0, 0 },
	{ "hotkey", "hand-off cost, collapse as threads grow, fairness",
	  { 2, 8, 64 }, 3, 1, DIST_UNIFORM, 0, { 0, 100 }, 2, 0, 4, 2.0, 0.15, 0, 0, 0 },
	{ "io", "false conflicts (striping) vs real parallelism",
	  { 64 }, 1, 10000, DIST_UNIFORM, 0, { 0 }, 1, 100, 1, 2.0, 0.2, 0, 0, 0 },
	{ "churn", "insert + remove + reclamation under load; RSS must stay flat",
	  { 2 }, 1, 1, DIST_UNIQUE, 0, { 0 }, 1, 0, 16, 60.0, 0.25, 10000000, 0, 0 },
	{ "memory", "bytes per held key; table back to zero keys after release",
	  { 1 }, 1, 1000000, DIST_HOLD, 0, { 0 }, 1, 0, 16, 120.0, 1.5, 0, 0, 0 },
	{ "shared", "read-mostly (90% shared, 10% exclusive) on hot keys: readers must overlap",
	  { 2, 8, 64 }, 3, 1000, DIST_ZIPF, 0.99, { 100, 1000 }, 2, 0, 4, 2.0, 0.15, 0, 0, 90 },
};

#define NSCEN (sizeof(scenarios) / sizeof(scenarios[0]))

/* ------------------------------------------------------------------ */
/* Options                                                             */
/* ------------------------------------------------------------------ */

struct opts {
	int quick, fork, quiet, list, help;
	int scen_on[NSCEN];
	const struct strategy *strats[16];
	unsigned nstrats;
	int default_strats;	/* no --strategy: reader-writer baselines only where reads are shared */

	uint64_t threads[MAX_LIST];
	unsigned nthreads;
	uint64_t inside[MAX_LIST];
	unsigned ninside;
	int has_keys, has_dist, has_zipf_s, has_sleep, has_outside, has_duration, has_ops;
	int has_lat_every, has_read_pct, rw_prefer_writer;
	uint64_t read_pct;
	uint64_t keys, sleep_us, outside_ns, ops, seed, stripes, pool, rss_cap_mib, km_keys, km_pool;
	uint64_t lat_every;
	enum bench_dist dist;
	double zipf_s, duration_s, timeout_s;
	const char *csv, *json, *plot;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("km-bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'km-bench --help'.\n", stderr);
	return 2;
}

static void usage(FILE *f)
{
	fputs(
"Usage: km-bench [OPTION]...\n"
"Compare keyed-locking strategies on the scenarios of bench.md.\n"
"\n"
"Selection:\n"
"  --quick               every scenario, every strategy, briefly (< 1 minute)\n"
"  --scenario LIST       comma-separated scenarios, or 'all' (default: all)\n"
"  --strategy LIST       comma-separated strategies, or 'all' (default: all;\n"
"                        rwglobal, rwstriped, rwlock only where reads are shared)\n"
"  --list                list scenarios and strategies, then exit\n"
"Workload (override every selected scenario's default):\n"
"  --threads LIST        working threads, e.g. 2,8,64 (memory is always 1)\n"
"  --keys N              key-space size (memory: keys held at once); k/M suffixes\n"
"  --dist uniform|zipf   key distribution (not for churn / memory)\n"
"  --zipf-s S            Zipf exponent (default 0.99)\n"
"  --inside-ns LIST      spin this long inside the critical section, e.g. 0,100\n"
"  --sleep-us N          sleep this long inside the critical section (I/O-like)\n"
"  --outside-ns N        spin this long between release and the next acquire\n"
"  --read-pct P          take P% of acquires in shared mode (shared: 90; others: 0)\n"
"  --duration T          per run: seconds, or with a unit (500ms, 2s); memory: a\n"
"                        cap on its acquire phase\n"
"  --ops N               per run: stop after N acquires in total\n"
"  --lat-every N         time one acquire in N (default per scenario: 1, 4 or 16)\n"
"  --seed N              random seed (default 1)\n"
"Strategies:\n"
"  --stripes N           striped: stripe count, a power of two (default 4096)\n"
"  --pool N              pooled: free locks kept for reuse (default 1024)\n"
"  --km-expected-keys N  keymutex: km_options.expected_keys (default 0: the library's)\n"
"  --km-pool N           keymutex: km_options.pool_size (default 0: the library's)\n"
"  --rw-prefer-writer    rwglobal, rwstriped, rwlock: glibc's writer-preferring\n"
"                        rwlocks (default: glibc's default, readers preferred)\n"
"Execution:\n"
"  --no-fork             run everything in this process (default: a child per run)\n"
"  --timeout S           watchdog per forked run in seconds (default: duration + 30)\n"
"  --rss-cap MIB         stop a run whose RSS grew by more (default 512; 0: none)\n"
"  -q, --quiet           no progress line\n"
"Output (the table always goes to stdout):\n"
"  --csv FILE            every figure of every run, one row per run\n"
"  --json FILE           the same, plus goals and the exclusion verdict\n"
"  --plot DIR            SVG charts through gnuplot (throughput vs threads, latency)\n"
"  -h, --help            this text\n"
"\n"
"Exit status: 0 done; 1 a strategy other than naive broke exclusion or a run\n"
"failed; 2 bad arguments. See docs/benchmarks.md for every column.\n", f);
}

/* Decimal integer with an optional k, M or G (x1000) suffix. */
static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	if (*end == 'k' || *end == 'K')
		mul = 1000, end++;
	else if (*end == 'M')
		mul = 1000000, end++;
	else if (*end == 'G')
		mul = 1000000000, end++;
	if (*end || (v && mul > UINT64_MAX / v))
		return -1;
	*out = (uint64_t)v * mul;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v))
		return -1;
	*out = v;
	return 0;
}

/* Seconds: "1.5", "1.5s", "500ms". */
static int parse_duration(const char *s, double *out)
{
	char buf[64];
	size_t n = s ? strlen(s) : 0;
	double mul = 1, v;

	if (!n || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n + 1);
	if (n > 2 && strcmp(buf + n - 2, "ms") == 0)
		mul = 1e-3, buf[n - 2] = '\0';
	else if (n > 1 && buf[n - 1] == 's')
		buf[n - 1] = '\0';
	if (parse_double(buf, &v) || v <= 0)
		return -1;
	*out = v * mul;
	return 0;
}

static int parse_list(const char *s, uint64_t *v, unsigned *n, uint64_t lo, uint64_t hi)
{
	char buf[256], *tok, *save = NULL;

	if (!s || !*s || strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	*n = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (*n == MAX_LIST || parse_u64(tok, &v[*n]) || v[*n] < lo || v[*n] > hi)
			return -1;
		(*n)++;
	}
	return *n ? 0 : -1;
}

static int scenario_index(const char *name)
{
	size_t i;

	for (i = 0; i < NSCEN; i++)
		if (strcmp(scenarios[i].name, name) == 0)
			return (int)i;
	return -1;
}

static int parse_scenarios(struct opts *o, const char *s)
{
	char buf[256], *tok, *save = NULL;
	size_t i;

	if (strlen(s) >= sizeof(buf))
		return usage_error("--scenario: list too long");
	strcpy(buf, s);
	memset(o->scen_on, 0, sizeof(o->scen_on));
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		int k = scenario_index(tok);

		if (strcmp(tok, "all") == 0) {
			for (i = 0; i < NSCEN; i++)
				o->scen_on[i] = 1;
			continue;
		}
		if (k < 0)
			return usage_error("unknown scenario '%s' (see --list)", tok);
		o->scen_on[k] = 1;
	}
	for (i = 0; i < NSCEN; i++)
		if (o->scen_on[i])
			return 0;
	return usage_error("--scenario: empty list");
}

static int parse_strategies(struct opts *o, const char *s)
{
	char buf[256], *tok, *save = NULL;
	const struct strategy *const *p;
	unsigned i;

	if (strlen(s) >= sizeof(buf))
		return usage_error("--strategy: list too long");
	strcpy(buf, s);
	o->nstrats = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		const struct strategy *st = bench_strategy_find(tok);

		if (strcmp(tok, "all") == 0) {
			for (p = bench_strategies; *p; p++) {
				for (i = 0; i < o->nstrats && o->strats[i] != *p; i++)
					;
				if (i == o->nstrats)
					o->strats[o->nstrats++] = *p;
			}
			continue;
		}
		if (!st)
			return usage_error("unknown strategy '%s' (see --list)", tok);
		for (i = 0; i < o->nstrats && o->strats[i] != st; i++)
			;
		if (i == o->nstrats)
			o->strats[o->nstrats++] = st;
	}
	return o->nstrats ? 0 : usage_error("--strategy: empty list");
}

/* Options that take a value. */
static const char *const valued[] = {
	"--scenario", "--strategy", "--threads", "--keys", "--dist", "--zipf-s",
	"--inside-ns", "--sleep-us", "--outside-ns", "--read-pct", "--duration", "--ops", "--lat-every",
	"--seed", "--stripes", "--pool", "--km-expected-keys", "--km-pool", "--timeout", "--rss-cap", "--csv", "--json",
	"--plot", NULL,
};

static int takes_value(const char *name)
{
	const char *const *v;

	for (v = valued; *v; v++)
		if (strcmp(*v, name) == 0)
			return 1;
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	int i;
	size_t k;

	memset(o, 0, sizeof(*o));
	o->fork = 1;
	o->seed = 1;
	o->rss_cap_mib = 512;
	o->zipf_s = 0.99;
	for (k = 0; k < NSCEN; k++)
		o->scen_on[k] = 1;

	for (i = 1; i < argc; i++) {
		char name[64];
		const char *arg = argv[i], *val = NULL, *eq;
		uint64_t u;
		int e;

		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			o->help = 1;
			continue;
		}
		if (strcmp(arg, "-q") == 0 || strcmp(arg, "--quiet") == 0) {
			o->quiet = 1;
			continue;
		}
		if (strncmp(arg, "--", 2) != 0 || !arg[2])
			return usage_error("unexpected argument '%s'", arg);
		eq = strchr(arg, '=');
		k = eq ? (size_t)(eq - arg) : strlen(arg);
		if (k >= sizeof(name))
			return usage_error("unknown option '%s'", arg);
		memcpy(name, arg, k);
		name[k] = '\0';
		if (takes_value(name)) {
			if (eq)
				val = eq + 1;
			else if (i + 1 < argc)
				val = argv[++i];
			else
				return usage_error("option '%s' needs a value", name);
		} else if (eq) {
			return usage_error("option '%s' takes no value", name);
		}

		if (strcmp(name, "--quick") == 0) {
			o->quick = 1;
		} else if (strcmp(name, "--list") == 0) {
			o->list = 1;
		} else if (strcmp(name, "--rw-prefer-writer") == 0) {
			o->rw_prefer_writer = 1;
		} else if (strcmp(name, "--no-fork") == 0) {
			o->fork = 0;
		} else if (strcmp(name, "--scenario") == 0) {
			if ((e = parse_scenarios(o, val)))
				return e;
		} else if (strcmp(name, "--strategy") == 0) {
			if ((e = parse_strategies(o, val)))
				return e;
		} else if (strcmp(name, "--threads") == 0) {
			if (parse_list(val, o->threads, &o->nthreads, 1, MAX_THREADS))
				return usage_error("--threads: want a list of counts in 1..%u, got '%s'",
						   MAX_THREADS, val);
		} else if (strcmp(name, "--inside-ns") == 0) {
			if (parse_list(val, o->inside, &o->ninside, 0, 1000000000))
				return usage_error("--inside-ns: want a list of nanoseconds in 0..1e9, got '%s'",
						   val);
		} else if (strcmp(name, "--keys") == 0) {
			if (parse_u64(val, &o->keys) || !o->keys || o->keys > MAX_KEYS)
				return usage_error("--keys: want a count in 1..%llu, got '%s'",
						   (unsigned long long)MAX_KEYS, val);
			o->has_keys = 1;
		} else if (strcmp(name, "--dist") == 0) {
			if (strcmp(val, "uniform") == 0)
				o->dist = DIST_UNIFORM;
			else if (strcmp(val, "zipf") == 0)
				o->dist = DIST_ZIPF;
			else
				return usage_error("--dist: want 'uniform' or 'zipf', got '%s'", val);
			o->has_dist = 1;
		} else if (strcmp(name, "--zipf-s") == 0) {
			if (parse_double(val, &o->zipf_s) || o->zipf_s <= 0 || o->zipf_s > 10)
				return usage_error("--zipf-s: want an exponent in (0, 10], got '%s'", val);
			o->has_zipf_s = 1;
		} else if (strcmp(name, "--sleep-us") == 0) {
			if (parse_u64(val, &o->sleep_us) || o->sleep_us > 1000000)
				return usage_error("--sleep-us: want microseconds in 0..1e6, got '%s'", val);
			o->has_sleep = 1;
		} else if (strcmp(name, "--outside-ns") == 0) {
			if (parse_u64(val, &o->outside_ns) || o->outside_ns > 1000000000)
				return usage_error("--outside-ns: want nanoseconds in 0..1e9, got '%s'", val);
			o->has_outside = 1;
		} else if (strcmp(name, "--read-pct") == 0) {
			if (parse_u64(val, &o->read_pct) || o->read_pct > 100)
				return usage_error("--read-pct: want a percentage in 0..100, got '%s'", val);
			o->has_read_pct = 1;
		} else if (strcmp(name, "--duration") == 0) {
			if (parse_duration(val, &o->duration_s) || o->duration_s > 3600)
				return usage_error("--duration: want a time in (0, 3600s], e.g. 0.5 or 500ms, got '%s'",
						   val);
			o->has_duration = 1;
		} else if (strcmp(name, "--ops") == 0) {
			if (parse_u64(val, &o->ops) || !o->ops)
				return usage_error("--ops: want a positive count, got '%s'", val);
			o->has_ops = 1;
		} else if (strcmp(name, "--lat-every") == 0) {
			if (parse_u64(val, &o->lat_every) || !o->lat_every || o->lat_every > 1000000)
				return usage_error("--lat-every: want a count in 1..1e6, got '%s'", val);
			o->has_lat_every = 1;
		} else if (strcmp(name, "--seed") == 0) {
			if (parse_u64(val, &o->seed))
				return usage_error("--seed: want a non-negative integer, got '%s'", val);
		} else if (strcmp(name, "--stripes") == 0) {
			if (parse_u64(val, &u) || !u || u > (1u << 24) || (u & (u - 1)))
				return usage_error("--stripes: want a power of two in 1..2^24, got '%s'", val);
			o->stripes = u;
		} else if (strcmp(name, "--pool") == 0) {
			if (parse_u64(val, &u) || u > (1u << 24))
				return usage_error("--pool: want a count in 0..2^24, got '%s'", val);
			o->pool = u;
		} else if (strcmp(name, "--km-expected-keys") == 0) {
			if (parse_u64(val, &o->km_keys) || o->km_keys > MAX_KEYS)
				return usage_error("--km-expected-keys: want a count in 0..%llu, got '%s'",
						   (unsigned long long)MAX_KEYS, val);
		} else if (strcmp(name, "--km-pool") == 0) {
			if (parse_u64(val, &o->km_pool) || o->km_pool > (1ull << 30))
				return usage_error("--km-pool: want a count in 0..2^30, got '%s'", val);
		} else if (strcmp(name, "--timeout") == 0) {
			if (parse_duration(val, &o->timeout_s) || o->timeout_s > 86400)
				return usage_error("--timeout: want seconds in (0, 86400], got '%s'", val);
		} else if (strcmp(name, "--rss-cap") == 0) {
			if (parse_u64(val, &o->rss_cap_mib) || o->rss_cap_mib > (1ull << 30))
				return usage_error("--rss-cap: want MiB (0: no cap), got '%s'", val);
		} else if (strcmp(name, "--csv") == 0) {
			o->csv = val;
		} else if (strcmp(name, "--json") == 0) {
			o->json = val;
		} else if (strcmp(name, "--plot") == 0) {
			o->plot = val;
		} else {
			return usage_error("unknown option '%s'", name);
		}
		if (val && !*val)
			return usage_error("option '%s' needs a non-empty value", name);
	}
	if (!o->nstrats) {
		parse_strategies(o, "all");
		o->default_strats = 1;
	}
	return 0;
}

static void list_all(void)
{
	const struct strategy *const *s;
	size_t i;

	puts("Scenarios:");
	for (i = 0; i < NSCEN; i++)
		printf("  %-12s %s\n", scenarios[i].name, scenarios[i].measures);
	puts("Strategies:");
	for (s = bench_strategies; *s; s++)
		printf("  %-12s %s\n", (*s)->name, (*s)->what);
}

/* ------------------------------------------------------------------ */
/* The plan                                                            */
/* ------------------------------------------------------------------ */

struct planned {
	struct bench_cfg cfg;
	const struct strategy *s;
	int variant;
	double timeout_s;
};

static size_t build_plan(const struct opts *o, struct planned **out)
{
	size_t n = 0, cap = 64, i;
	struct planned *p = malloc(cap * sizeof(*p));
	int variant = 0;

	if (!p)
		return 0;
	for (i = 0; i < NSCEN; i++) {
		const struct scenario *sc = &scenarios[i];
		uint64_t thr[MAX_LIST], ins[MAX_LIST];
		unsigned nthr, nins, a, b, k;

		if (!o->scen_on[i])
			continue;
		nthr = sc->nthreads;
		for (a = 0; a < nthr; a++)
			thr[a] = sc->threads[a];
		if (o->nthreads && sc->dist != DIST_HOLD) {
			nthr = o->nthreads;
			memcpy(thr, o->threads, sizeof(thr[0]) * nthr);
		}
		nins = sc->ninside;
		for (a = 0; a < nins; a++)
			ins[a] = sc->inside[a];
		if (o->ninside && sc->dist != DIST_HOLD) {
			nins = o->ninside;
			memcpy(ins, o->inside, sizeof(ins[0]) * nins);
		}
		for (b = 0; b < nins; b++) {
			for (a = 0; a < nthr; a++, variant++) {
				struct bench_cfg c;

				memset(&c, 0, sizeof(c));
				c.scenario = sc->name;
				c.threads = (unsigned)thr[a];
				c.keys = sc->keys;
				c.dist = sc->dist;
				c.zipf_s = sc->zipf_s;
				c.inside_ns = ins[b];
				c.sleep_us = sc->sleep_us;
				c.read_pct = sc->read_pct;
				c.lat_every = sc->lat_every;
				c.duration_s = o->quick ? sc->quick_s : sc->full_s;
				c.max_ops = o->quick ? sc->quick_ops : sc->full_ops;
				c.seed = o->seed;
				c.rss_cap_kib = o->rss_cap_mib * 1024;
				c.sp.stripes = (unsigned)o->stripes;
				c.sp.pool = (unsigned)o->pool;
				c.sp.km_expected_keys = o->km_keys;
				c.sp.km_pool = o->km_pool;
				c.sp.rw_prefer_writer = o->rw_prefer_writer;
				if (sc->dist != DIST_UNIQUE && o->has_keys)
					c.keys = o->keys;
				if ((sc->dist == DIST_UNIFORM || sc->dist == DIST_ZIPF) && o->has_dist)
					c.dist = o->dist;
				if (c.dist == DIST_ZIPF && (o->has_zipf_s || !c.zipf_s))
					c.zipf_s = o->zipf_s;
				if (o->has_duration && sc->dist == DIST_HOLD)
					c.duration_s = o->duration_s;	/* the acquire phase's time cap */
				if (sc->dist != DIST_HOLD) {
					if (o->has_sleep)
						c.sleep_us = o->sleep_us;
					if (o->has_outside)
						c.outside_ns = o->outside_ns;
					if (o->has_read_pct)
						c.read_pct = (unsigned)o->read_pct;
					if (o->has_duration) {
						c.duration_s = o->duration_s;
						if (!o->has_ops)
							c.max_ops = 0;
					}
					if (o->has_ops)
						c.max_ops = o->ops;
				}
				if (o->has_lat_every)
					c.lat_every = (unsigned)o->lat_every;
				for (k = 0; k < o->nstrats; k++) {
					if (o->default_strats && !c.read_pct &&
					    (o->strats[k]->flags & STRAT_RW_ONLY))
						continue;
					if (n == cap) {
						struct planned *q = realloc(p, 2 * cap * sizeof(*p));

						if (!q) {
							free(p);
							return 0;
						}
						p = q;
						cap *= 2;
					}
					p[n].cfg = c;
					p[n].s = o->strats[k];
					p[n].variant = variant;
					if (o->timeout_s > 0)
						p[n].timeout_s = o->timeout_s;
					else if (c.duration_s > 0)
						p[n].timeout_s = c.duration_s + 30;
					else
						p[n].timeout_s = 300;
					n++;
				}
			}
		}
	}
	*out = p;
	return n;
}

/* ------------------------------------------------------------------ */
/* Execution                                                           */
/* ------------------------------------------------------------------ */

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static void run_forked(const struct planned *pl, struct bench_result *r)
{
	int fd[2], st = 0;
	size_t got = 0;
	pid_t pid;
	uint64_t deadline;
	int timed_out = 0;

	if (pipe2(fd, O_CLOEXEC)) {
		bench_result_init(r, pl->s, &pl->cfg);
		r->status = RUN_FAILED;
		snprintf(r->note, sizeof(r->note), "pipe: %s", strerror(errno));
		return;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		close(fd[0]);
		close(fd[1]);
		bench_result_init(r, pl->s, &pl->cfg);
		r->status = RUN_FAILED;
		snprintf(r->note, sizeof(r->note), "fork: %s", strerror(errno));
		return;
	}
	if (pid == 0) {
		struct bench_result res;

		close(fd[0]);
		bench_run(pl->s, &pl->cfg, &res);
		_exit(write_all(fd[1], &res, sizeof(res)) ? 3 : 0);
	}
	close(fd[1]);
	deadline = bench_now_ns() + (uint64_t)(pl->timeout_s * 1e9);
	while (got < sizeof(*r)) {
		struct pollfd pfd = { fd[0], POLLIN, 0 };
		uint64_t now = bench_now_ns();
		ssize_t n;
		int e;

		if (now >= deadline) {
			timed_out = 1;
			break;
		}
		e = poll(&pfd, 1, (int)((deadline - now) / 1000000 + 1));
		if (e < 0 && errno == EINTR)
			continue;
		if (e == 0)
			continue;	/* the deadline check above decides */
		n = read(fd[0], (char *)r + got, sizeof(*r) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (timed_out)
		kill(pid, SIGKILL);
	close(fd[0]);
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (got == sizeof(*r) && !timed_out)
		return;
	bench_result_init(r, pl->s, &pl->cfg);
	if (timed_out) {
		r->status = RUN_TIMEOUT;
		snprintf(r->note, sizeof(r->note), "killed after %.0f s (hung?)", pl->timeout_s);
	} else if (WIFSIGNALED(st)) {
		r->status = RUN_CRASHED;
		snprintf(r->note, sizeof(r->note), "child died: %s", strsignal(WTERMSIG(st)));
	} else {
		r->status = RUN_FAILED;
		snprintf(r->note, sizeof(r->note), "child exited %d without a result",
			 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	}
}

static void variant_label(char *buf, size_t len, const struct bench_cfg *c)
{
	struct bench_result tmp;
	char work[48];

	memset(&tmp, 0, sizeof(tmp));
	tmp.inside_ns = c->inside_ns;
	tmp.sleep_us = c->sleep_us;
	tmp.outside_ns = c->outside_ns;
	fmt_work(work, sizeof(work), &tmp);
	snprintf(buf, len, "%s t=%u %s", c->scenario, c->threads, work);
}

static void progress(const struct opts *o, int tty, size_t i, size_t n, const struct planned *pl,
		     int new_variant)
{
	char label[96];

	if (o->quiet)
		return;
	variant_label(label, sizeof(label), &pl->cfg);
	if (tty)
		fprintf(stderr, "\r\033[K[%3zu/%zu] %-34s %s", i + 1, n, label, pl->s->name);
	else if (new_variant)
		fprintf(stderr, "km-bench: [%3zu/%zu] %s\n", i + 1, n, label);
	fflush(stderr);
}

static char *join_args(int argc, char **argv)
{
	size_t len = 1;
	int i;
	char *s;

	for (i = 0; i < argc; i++)
		len += strlen(argv[i]) + 3;
	s = malloc(len);
	if (!s)
		return NULL;
	s[0] = '\0';
	for (i = 0; i < argc; i++) {
		int plain = argv[i][0] && !strpbrk(argv[i], " \t'\"$\\");

		if (i)
			strcat(s, " ");
		if (!plain)
			strcat(s, "'");
		strcat(s, argv[i]);
		if (!plain)
			strcat(s, "'");
	}
	return s;
}

int bench_main(int argc, char **argv)
{
	struct opts o;
	struct planned *plan = NULL;
	struct bench_report rep;
	struct bench_exclusion x;
	struct bench_goal goals[64];
	size_t n, i, ng;
	int e, tty, status = 0, last_variant = -1;

	e = parse_args(argc, argv, &o);
	if (e)
		return e;
	if (o.help) {
		usage(stdout);
		return 0;
	}
	if (o.list) {
		list_all();
		return 0;
	}
	if (o.nthreads && o.scen_on[scenario_index("memory")] && !o.quiet)
		fputs("km-bench: note: --threads does not apply to 'memory' (one thread holds every key)\n",
		      stderr);
	n = build_plan(&o, &plan);
	if (!n) {
		fputs("km-bench: out of memory\n", stderr);
		return 1;
	}
	bench_clock_init();

	memset(&rep, 0, sizeof(rep));
	rep.r = calloc(n, sizeof(*rep.r));
	rep.ratio = calloc(n, sizeof(*rep.ratio));
	rep.command = join_args(argc, argv);
	rep.quick = o.quick;
	rep.forked = o.fork;
	rep.overridden = o.nthreads || o.ninside || o.has_keys || o.has_dist || o.has_zipf_s ||
			 o.has_sleep || o.has_outside || o.stripes || o.pool || o.km_keys ||
			 o.km_pool || o.has_read_pct || o.rw_prefer_writer;
	rep.n = n;
	if (!rep.r || !rep.ratio || !rep.command) {
		fputs("km-bench: out of memory\n", stderr);
		free(plan);
		return 1;
	}
	tty = isatty(STDERR_FILENO);
	for (i = 0; i < n; i++) {
		const struct planned *pl = &plan[i];

		progress(&o, tty, i, n, pl, pl->variant != last_variant);
		last_variant = pl->variant;
		if (pl->cfg.dist == DIST_HOLD && (pl->s->flags & STRAT_SINGLE_HOLD)) {
			bench_run(pl->s, &pl->cfg, &rep.r[i]);	/* returns at once: skipped */
		} else if (o.fork) {
			run_forked(pl, &rep.r[i]);
		} else {
			bench_run(pl->s, &pl->cfg, &rep.r[i]);
			malloc_trim(0);
		}
		rep.r[i].variant = pl->variant;
	}
	if (tty && !o.quiet)
		fputs("\r\033[K", stderr);

	report_ratios(&rep);
	report_exclusion(&rep, &x);
	ng = report_goals(&rep, goals, sizeof(goals) / sizeof(goals[0]));
	report_header(stdout, &rep);
	report_table(stdout, &rep);
	report_summary(stdout, &rep, &x, goals, ng);
	fflush(stdout);

	if (o.csv && report_csv(o.csv, &rep))
		status = 1;
	if (o.json && report_json(o.json, &rep, &x, goals, ng))
		status = 1;
	if (o.plot && report_plot(o.plot, &rep))
		status = 1;

	if (x.other_violations)
		status = 1;
	for (i = 0; i < n; i++) {
		int st = rep.r[i].status;

		if ((st == RUN_FAILED || st == RUN_TIMEOUT || st == RUN_CRASHED) &&
		    !(plan[i].s->flags & STRAT_NEGATIVE_CONTROL))
			status = 1;
	}
	free(plan);
	free(rep.r);
	free(rep.ratio);
	free((void *)rep.command);
	return status;
}
