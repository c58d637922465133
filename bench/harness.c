/*
 * km-bench: the workload runner.
 *
 * One run: create the strategy, start the working threads, hold them at a
 * gate until all are ready (their stacks, histograms and arenas exist, so the
 * RSS base excludes them), open the gate, stop them after the duration or the
 * op budget, join, measure, destroy. Every strategy runs this same loop:
 *
 *   pick a key (and, with read_pct, a mode) -> [time] lock() [time]
 *   -> occupancy++ (must have been 0) -> spin / sleep inside
 *   -> occupancy-- (must have been 1) -> unlock() -> spin outside
 *
 * The occupancy counters are the exclusion detector: one 32-bit counter per
 * key slot (the key's index; churn's keys are never shared, so there the
 * slot is the thread). Exclusive holders count 1 in the low half, shared
 * holders 1 in the high half. An exclusive section that finds anyone else
 * inside on entry, or sees anyone arrive before it leaves, counts one
 * violation; a shared section counts one if it meets an exclusive one.
 *
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"
#include "hist.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* Clock                                                               */
/* ------------------------------------------------------------------ */

static double ns_per_tick = 1.0;
static pthread_once_t clock_once = PTHREAD_ONCE_INIT;

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void clock_calibrate(void)
{
#if defined(__x86_64__) || defined(__i386__)
	struct timespec d = { 0, 20 * 1000 * 1000 };
	uint64_t n0 = bench_now_ns(), t0 = bench_ticks(), n1, t1;

	nanosleep(&d, NULL);
	n1 = bench_now_ns();
	t1 = bench_ticks();
	if (t1 > t0 && n1 > n0)
		ns_per_tick = (double)(n1 - n0) / (double)(t1 - t0);
#endif
}

void bench_clock_init(void)
{
	pthread_once(&clock_once, clock_calibrate);
}

double bench_ns_per_tick(void)
{
	bench_clock_init();
	return ns_per_tick;
}

static inline void spin_ticks(uint64_t t)
{
	uint64_t s = bench_ticks();

	while (bench_ticks() - s < t)
		__asm__ __volatile__("" ::: "memory");
}

/* ------------------------------------------------------------------ */
/* Memory                                                              */
/* ------------------------------------------------------------------ */

static long long status_field_kib(const char *field)
{
	char buf[4096], *p;
	size_t flen = strlen(field);
	ssize_t n;
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	for (p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, field, flen) == 0 && p[flen] == ':')
			return strtoll(p + flen + 1, NULL, 10);
	return -1;
}

long long bench_rss_kib(void)
{
	char buf[128];
	long long size, res;
	ssize_t n;
	int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return status_field_kib("VmRSS");
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	if (sscanf(buf, "%lld %lld", &size, &res) != 2)
		return -1;
	return res * (sysconf(_SC_PAGESIZE) / 1024);
}

long long bench_hwm_kib(void)
{
	return status_field_kib("VmHWM");
}

int bench_hwm_reset(void)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, "5", 1) == 1;	/* 5: reset the peak RSS to the current RSS */
	close(fd);
	return ok ? 0 : -1;
}

/*
 * Zeroed memory, resident now: a malloc + memset(0) may become a calloc
 * (compilers do that), whose fresh pages are only faulted in when first
 * written, i.e. during the run, where they would count as the strategy's
 * RSS growth. Write every page through a volatile pointer instead.
 */
static void *alloc_resident(size_t n)
{
	volatile unsigned char *p = calloc(n ? n : 1, 1);
	long page = sysconf(_SC_PAGESIZE);
	size_t i;

	if (page <= 0)
		page = 4096;
	if (p)
		for (i = 0; i < n; i += (size_t)page)
			p[i] = 0;
	return (void *)p;
}

/* ------------------------------------------------------------------ */
/* The idle thread                                                     */
/* ------------------------------------------------------------------ */

/*
 * glibc takes a single-thread fast path in a process with one thread, which
 * makes pthread mutexes look about three times cheaper; a second thread,
 * parked for good, keeps every run (single-threaded scenarios included)
 * honest.
 */
static pthread_once_t idle_once = PTHREAD_ONCE_INIT;

static void *idle_main(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static void idle_start(void)
{
	pthread_t t;

	if (pthread_create(&t, NULL, idle_main, NULL) == 0)
		pthread_detach(t);
}

/* ------------------------------------------------------------------ */
/* Keys                                                                */
/* ------------------------------------------------------------------ */

__extension__ typedef unsigned __int128 bench_u128;

/* wyrand: one multiply per number, good enough for picking keys. */
static inline uint64_t rng_next(uint64_t *s)
{
	bench_u128 t;

	*s += 0xa0761d6478bd642full;
	t = (bench_u128)*s * (*s ^ 0xe7037ed1a0b428dbull);
	return (uint64_t)(t >> 64) ^ (uint64_t)t;
}

static inline uint64_t rng_below(uint64_t *s, uint64_t n)
{
	return (uint64_t)(((bench_u128)rng_next(s) * n) >> 64);
}

/* cdf[i] = P(rank <= i) for Zipf(s) over n ranks. */
static double *zipf_cdf(uint64_t n, double s)
{
	double *cdf = malloc(n * sizeof(*cdf)), sum = 0;
	uint64_t i;

	if (!cdf)
		return NULL;
	for (i = 0; i < n; i++) {
		sum += 1.0 / pow((double)(i + 1), s);
		cdf[i] = sum;
	}
	for (i = 0; i < n; i++)
		cdf[i] /= sum;
	cdf[n - 1] = 1.0;
	return cdf;
}

static inline uint64_t zipf_pick(const double *cdf, uint64_t n, uint64_t *s)
{
	double u = (double)(rng_next(s) >> 11) * 0x1.0p-53;
	uint64_t lo = 0, hi = n - 1;

	while (lo < hi) {	/* first rank with cdf >= u */
		uint64_t mid = lo + (hi - lo) / 2;

		if (cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const char *bench_dist_name(enum bench_dist d)
{
	switch (d) {
	case DIST_UNIFORM: return "uniform";
	case DIST_ZIPF: return "zipf";
	case DIST_UNIQUE: return "unique";
	case DIST_HOLD: return "hold";
	}
	return "?";
}

const char *bench_status_name(int status)
{
	switch (status) {
	case RUN_OK: return "ok";
	case RUN_SKIPPED: return "skipped";
	case RUN_FAILED: return "failed";
	case RUN_TIMEOUT: return "timeout";
	case RUN_CRASHED: return "crashed";
	case RUN_CAPPED: return "rss-capped";
	}
	return "?";
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */
/* ------------------------------------------------------------------ */

struct run {
	const struct strategy *s;
	void *ctx;
	const struct bench_cfg *c;
	_Atomic uint32_t *occ;		/* the exclusion detector, one per key slot */
	const double *cdf;
	uint64_t inside_ticks, outside_ticks, quota;
	struct timespec sleep_ts;

	pthread_mutex_t gate_mu;
	pthread_cond_t gate_cv;
	unsigned ready;
	int go;

	long long held_rss;		/* HOLD: RSS with every key held */
	long long keys_held;		/* HOLD: strategy->keys() then */
	uint64_t held_n;		/* HOLD: keys actually held (the time cap may stop it early) */

	_Alignas(64) atomic_int stop;
	_Alignas(64) atomic_uint done;
};

struct worker {
	_Alignas(64) struct run *run;
	unsigned idx;
	int err;			/* first lock() error */
	uint64_t ops, viol, errors, t_end, hold_ticks, hold_n, reads, overlaps;
	struct hist hist;
};

static void gate_wait(struct run *r)
{
	pthread_mutex_lock(&r->gate_mu);
	r->ready++;
	pthread_cond_broadcast(&r->gate_cv);
	while (!r->go)
		pthread_cond_wait(&r->gate_cv, &r->gate_mu);
	pthread_mutex_unlock(&r->gate_mu);
}

#define OCC_EXCL   1u		/* an exclusive holder, in the low half */
#define OCC_SHARED 0x10000u	/* a shared holder, in the high half */
#define OCC_EXCL_MASK 0xffffu

/* Enter a key's critical section exclusively: 1 if anyone was already inside. */
static inline int occ_enter(struct run *r, uint64_t slot)
{
	return atomic_fetch_add_explicit(&r->occ[slot], OCC_EXCL, memory_order_relaxed) != 0;
}

/* Leave it: 1 if anyone came in meanwhile. */
static inline int occ_leave(struct run *r, uint64_t slot)
{
	return atomic_fetch_sub_explicit(&r->occ[slot], OCC_EXCL, memory_order_relaxed) != OCC_EXCL;
}

/* Enter in shared mode: bit 0 of the result set if an exclusive holder was
 * inside (a violation), bit 1 if another shared holder was (an overlap). */
static inline int occ_enter_shared(struct run *r, uint64_t slot)
{
	uint32_t old = atomic_fetch_add_explicit(&r->occ[slot], OCC_SHARED, memory_order_relaxed);

	return ((old & OCC_EXCL_MASK) != 0) | (old >= OCC_SHARED) << 1;
}

/* Leave shared mode: 1 if an exclusive holder came in meanwhile. */
static inline int occ_leave_shared(struct run *r, uint64_t slot)
{
	uint32_t old = atomic_fetch_sub_explicit(&r->occ[slot], OCC_SHARED, memory_order_relaxed);

	return (old & OCC_EXCL_MASK) != 0;
}

static void *hold_main(struct worker *w)
{
	struct run *r = w->run;
	const struct bench_cfg *c = r->c;
	uint64_t n = c->keys, i, cd = 1;
	struct bench_hold *h = alloc_resident(n * sizeof(*h));	/* not part of the growth */
	unsigned char *ok = alloc_resident(n);

	gate_wait(r);
	if (!h || !ok) {
		w->errors = 1;
		w->err = ENOMEM;
		goto out;
	}
	/* Acquire until every key is held or the run's time is up (then the
	 * figures are for the keys held so far). */
	for (i = 0; i < n && !atomic_load_explicit(&r->stop, memory_order_relaxed); i++) {
		uint64_t key = i, t0 = 0;
		int timed = --cd == 0, e;

		if (timed) {
			cd = c->lat_every;
			t0 = bench_ticks();
		}
		e = r->s->lock(r->ctx, &key, sizeof(key), &h[i]);
		if (e) {
			if (!w->errors++)
				w->err = e;
			continue;
		}
		if (timed)
			hist_add(&w->hist, bench_ticks() - t0);
		ok[i] = 1;
		r->held_n++;
		w->viol += (uint64_t)occ_enter(r, i);
	}
	r->held_rss = bench_rss_kib();
	r->keys_held = r->s->keys(r->ctx);
	for (i = 0; i < n; i++) {
		if (!ok[i])
			continue;
		w->viol += (uint64_t)occ_leave(r, i);
		r->s->unlock(r->ctx, &h[i]);
		w->ops++;
	}
out:
	w->t_end = bench_ticks();
	free(h);
	free(ok);
	atomic_fetch_add(&r->done, 1);
	return NULL;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct run *r = w->run;
	const struct bench_cfg *c = r->c;
	const struct strategy *s = r->s;
	void *ctx = r->ctx;
	const enum bench_dist dist = c->dist;
	const uint64_t keys = c->keys, quota = r->quota, threads = c->threads;
	const uint64_t inside = r->inside_ticks, outside = r->outside_ticks;
	const unsigned every = c->lat_every;
	const int sleeps = c->sleep_us > 0;
	const unsigned read_pct = c->read_pct;
	int (*const lock_shared)(void *, const void *, size_t, struct bench_hold *) =
		s->lock_shared ? s->lock_shared : s->lock;
	uint64_t rng = c->seed ^ (0x9E3779B97F4A7C15ull * (w->idx + 1));
	uint64_t n = 0, viol = 0, errors = 0, hold = 0, holdn = 0, reads = 0, overlaps = 0;
	unsigned cd = 1 + w->idx % every;

	if (dist == DIST_HOLD)
		return hold_main(w);
	rng_next(&rng);
	gate_wait(r);

	while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
		struct bench_hold h;
		uint64_t key, slot, t0 = 0, t1 = 0;
		int timed = --cd == 0, bad, e;
		int shared = read_pct && rng_below(&rng, 100) < read_pct;

		switch (dist) {
		case DIST_ZIPF:
			key = slot = zipf_pick(r->cdf, keys, &rng);
			break;
		case DIST_UNIQUE:
			key = (1ull << 40) + n * threads + w->idx;
			slot = w->idx;
			break;
		default:
			key = slot = rng_below(&rng, keys);
			break;
		}
		if (timed) {
			cd = every;
			t0 = bench_ticks();
		}
		e = shared ? lock_shared(ctx, &key, sizeof(key), &h) : s->lock(ctx, &key, sizeof(key), &h);
		if (e) {
			if (!errors++)
				w->err = e;
			if (errors > 1000)
				break;
			continue;
		}
		if (timed) {
			t1 = bench_ticks();
			hist_add(&w->hist, t1 - t0);
		}
		if (shared) {
			bad = occ_enter_shared(r, slot);
			overlaps += (uint64_t)(bad >> 1);
			bad &= 1;
			reads++;
		} else {
			bad = occ_enter(r, slot);
		}
		if (inside)
			spin_ticks(inside);
		if (sleeps)
			nanosleep(&r->sleep_ts, NULL);
		bad |= shared ? occ_leave_shared(r, slot) : occ_leave(r, slot);
		viol += (uint64_t)bad;
		if (timed) {
			hold += bench_ticks() - t1;
			holdn++;
		}
		s->unlock(ctx, &h);
		if (outside)
			spin_ticks(outside);
		if (++n >= quota)
			break;
	}
	w->t_end = bench_ticks();
	w->ops = n;
	w->viol = viol;
	w->errors = errors;
	w->hold_ticks = hold;
	w->hold_n = holdn;
	w->reads = reads;
	w->overlaps = overlaps;
	atomic_fetch_add(&r->done, 1);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* One run                                                             */
/* ------------------------------------------------------------------ */

void bench_result_init(struct bench_result *r, const struct strategy *s,
		       const struct bench_cfg *c)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->strategy, sizeof(r->strategy), "%s", s->name);
	snprintf(r->scenario, sizeof(r->scenario), "%s", c->scenario ? c->scenario : "custom");
	r->threads = c->threads;
	r->keys = c->keys;
	r->inside_ns = c->inside_ns;
	r->sleep_us = c->sleep_us;
	r->outside_ns = c->outside_ns;
	r->read_pct = c->read_pct;
	r->reads_exclusive = c->read_pct && !s->lock_shared;
	r->dist = c->dist;
	r->zipf_s = c->zipf_s;
	r->keys_after = -1;
	r->keys_held = -1;
	r->rss_base_kib = -1;
}

static void note_add(struct bench_result *r, const char *fmt, const char *arg)
{
	size_t n = strlen(r->note);

	if (n && n + 2 < sizeof(r->note)) {
		strcat(r->note, "; ");
		n += 2;
	}
	if (n < sizeof(r->note))
		snprintf(r->note + n, sizeof(r->note) - n, fmt, arg);
}

static double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };

	nanosleep(&ts, NULL);
}

int bench_run(const struct strategy *s, const struct bench_cfg *c, struct bench_result *r)
{
	struct run *run = NULL;
	struct worker *w = NULL;
	pthread_t *tids = NULL;
	struct strat_params sp = c->sp;
	struct hist all;
	char err[128] = "";
	uint64_t nslots, t0, t_end = 0, deadline_ns = 0, start_ns;
	unsigned created = 0, k;
	long long peak = -1, rss;
	int hwm_ok, capped = 0, e;
	double npt, cpu0 = 0;

	bench_result_init(r, s, c);
	if (!c->threads || !c->keys || !c->lat_every || c->read_pct > 100 ||
	    (c->dist == DIST_HOLD && (c->threads != 1 || c->read_pct))) {
		r->status = RUN_FAILED;
		note_add(r, "%s", "invalid configuration");
		return r->status;
	}
	if (c->dist == DIST_HOLD && (s->flags & STRAT_SINGLE_HOLD)) {
		r->status = RUN_SKIPPED;
		note_add(r, "%s", "cannot hold many keys at once (a thread would deadlock on its own lock)");
		return r->status;
	}
	bench_clock_init();
	npt = bench_ns_per_tick();
	pthread_once(&idle_once, idle_start);

	run = aligned_alloc(64, (sizeof(*run) + 63) & ~(size_t)63);
	if (!run)
		goto nomem;
	memset(run, 0, sizeof(*run));
	run->s = s;
	run->c = c;
	pthread_mutex_init(&run->gate_mu, NULL);
	pthread_cond_init(&run->gate_cv, NULL);
	run->keys_held = -1;
	run->held_rss = -1;
	run->inside_ticks = (uint64_t)((double)c->inside_ns / npt);
	run->outside_ticks = (uint64_t)((double)c->outside_ns / npt);
	run->sleep_ts.tv_sec = (time_t)(c->sleep_us / 1000000u);
	run->sleep_ts.tv_nsec = (long)(c->sleep_us % 1000000u) * 1000;
	run->quota = c->max_ops ? (c->max_ops + c->threads - 1) / c->threads : UINT64_MAX;

	nslots = c->dist == DIST_UNIQUE ? c->threads : c->keys;
	run->occ = alloc_resident(nslots * sizeof(*run->occ));
	if (!run->occ)
		goto nomem;
	if (c->dist == DIST_ZIPF) {
		run->cdf = zipf_cdf(c->keys, c->zipf_s);
		if (!run->cdf)
			goto nomem;
	}

	sp.threads = c->threads;
	sp.expected_keys = c->dist == DIST_UNIQUE ? (c->max_ops ? c->max_ops : 1u << 22) : c->keys;
	run->ctx = s->create(&sp, err, sizeof(err));
	if (!run->ctx) {
		r->status = RUN_FAILED;
		note_add(r, "create: %s", err);
		goto out;
	}

	w = aligned_alloc(64, c->threads * sizeof(*w));
	tids = calloc(c->threads, sizeof(*tids));
	if (!w || !tids)
		goto nomem_ctx;
	memset(w, 0, c->threads * sizeof(*w));
	for (k = 0; k < c->threads; k++) {
		w[k].run = run;
		w[k].idx = k;
		hist_init(&w[k].hist);
	}
	for (k = 0; k < c->threads; k++) {
		e = pthread_create(&tids[k], NULL, worker_main, &w[k]);
		if (e) {
			r->status = RUN_FAILED;
			note_add(r, "pthread_create: %s", strerror(e));
			atomic_store(&run->stop, 1);
			break;
		}
		created++;
	}

	/* Everyone at the gate: take the RSS base, open it. */
	pthread_mutex_lock(&run->gate_mu);
	while (run->ready < created)
		pthread_cond_wait(&run->gate_cv, &run->gate_mu);
	r->rss_base_kib = bench_rss_kib();
	hwm_ok = bench_hwm_reset() == 0;
	peak = r->rss_base_kib;
	run->go = 1;
	cpu0 = cpu_seconds();
	t0 = bench_ticks();
	start_ns = bench_now_ns();
	pthread_cond_broadcast(&run->gate_cv);
	pthread_mutex_unlock(&run->gate_mu);

	if (c->duration_s > 0)
		deadline_ns = start_ns + (uint64_t)(c->duration_s * 1e9);
	while (atomic_load(&run->done) < created && !atomic_load(&run->stop)) {
		uint64_t now = bench_now_ns(), nap = 10 * 1000 * 1000;

		if (deadline_ns && now >= deadline_ns)
			break;
		if (deadline_ns && deadline_ns - now < nap)
			nap = deadline_ns - now;
		sleep_ns(nap);
		rss = bench_rss_kib();
		if (rss > peak)
			peak = rss;
		if (c->rss_cap_kib && rss - r->rss_base_kib > (long long)c->rss_cap_kib) {
			capped = 1;
			break;
		}
	}
	atomic_store(&run->stop, 1);
	for (k = 0; k < created; k++)
		pthread_join(tids[k], NULL);

	/* Figures. */
	rss = bench_rss_kib();
	if (rss > peak)
		peak = rss;
	if (hwm_ok) {
		long long hwm = bench_hwm_kib();

		if (hwm > peak)
			peak = hwm;
	}
	r->rss_peak_exact = hwm_ok;
	r->rss_peak_kib = peak - r->rss_base_kib;
	r->rss_end_kib = rss - r->rss_base_kib;
	hist_init(&all);
	r->thr_min = UINT64_MAX;
	{
		uint64_t hold = 0, holdn = 0;

		for (k = 0; k < created; k++) {
			r->ops += w[k].ops;
			r->violations += w[k].viol;
			r->reads += w[k].reads;
			r->overlaps += w[k].overlaps;
			r->errors += w[k].errors;
			if (w[k].ops < r->thr_min)
				r->thr_min = w[k].ops;
			if (w[k].ops > r->thr_max)
				r->thr_max = w[k].ops;
			if (w[k].t_end > t_end)
				t_end = w[k].t_end;
			hist_merge(&all, &w[k].hist);
			hold += w[k].hold_ticks;
			holdn += w[k].hold_n;
			if (w[k].errors && !err[0])
				snprintf(err, sizeof(err), "%s", strerror(w[k].err));
		}
		if (!created)
			r->thr_min = 0;
		r->hold_mean_ns = holdn ? (double)hold / (double)holdn * npt : 0;
	}
	r->checked = 1;
	r->elapsed_s = t_end > t0 ? (double)(t_end - t0) * npt * 1e-9 : 0;
	r->ops_per_s = r->elapsed_s > 0 ? (double)r->ops / r->elapsed_s : 0;
	{
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		double want = (double)(ncpu > 0 && (long)c->threads > ncpu ? (unsigned)ncpu : c->threads);

		if (r->elapsed_s > 0)
			r->cpu_share = (cpu_seconds() - cpu0) / (r->elapsed_s * want);
	}
	r->lat_samples = all.count;
	r->lat_p50 = (double)hist_quantile(&all, 0.50) * npt;
	r->lat_p99 = (double)hist_quantile(&all, 0.99) * npt;
	r->lat_p999 = (double)hist_quantile(&all, 0.999) * npt;
	r->lat_max = (double)all.max * npt;
	r->lat_mean = hist_mean(&all) * npt;
	if (c->sleep_us && r->hold_mean_ns > 0) {
		/* Each thread could do one op per hold if no key were ever taken:
		 * less the chance that one of the other threads holds its key. */
		double p_free = pow(1.0 - 1.0 / (double)c->keys, (double)c->threads - 1);

		r->ideal_ops_per_s = (double)c->threads * 1e9 / r->hold_mean_ns * p_free;
	}
	if (c->dist == DIST_HOLD) {
		r->keys_held = run->keys_held;
		if (run->held_rss >= 0 && run->held_n)
			r->bytes_per_key = (double)(run->held_rss - r->rss_base_kib) * 1024.0 /
					   (double)run->held_n;
		r->held = run->held_n;
		if (run->held_n < c->keys) {
			char m[80];

			snprintf(m, sizeof(m), "time cap: held %llu of %llu keys",
				 (unsigned long long)run->held_n, (unsigned long long)c->keys);
			note_add(r, "%s", m);
		}
	}
	r->keys_after = s->keys(run->ctx);
	if (r->reads_exclusive)
		note_add(r, "%s", "no shared mode: reads exclusive");
	if (s->describe) {
		char d[96] = "";

		s->describe(run->ctx, d, sizeof(d));
		if (d[0])
			note_add(r, "%s", d);
	}
	if (r->errors) {
		char m[96];

		snprintf(m, sizeof(m), "%llu lock errors (%.60s)", (unsigned long long)r->errors, err);
		note_add(r, "%s", m);
		if (r->status == RUN_OK)
			r->status = RUN_FAILED;
	}
	if (capped) {
		char m[64];

		snprintf(m, sizeof(m), "stopped at the RSS cap (%llu MiB)",
			 (unsigned long long)(c->rss_cap_kib / 1024));
		note_add(r, "%s", m);
		if (r->status == RUN_OK)
			r->status = RUN_CAPPED;
	}
	e = s->destroy(run->ctx);
	run->ctx = NULL;
	if (e) {
		note_add(r, "destroy: %s", strerror(e));
		if (r->status == RUN_OK)
			r->status = RUN_FAILED;
	}
	goto out;

nomem_ctx:
	if (s->destroy(run->ctx) == 0)
		run->ctx = NULL;
nomem:
	r->status = RUN_FAILED;
	note_add(r, "%s", "out of memory");
out:
	free(tids);
	free(w);
	if (run) {
		free((void *)run->occ);
		free((void *)run->cdf);
		pthread_mutex_destroy(&run->gate_mu);
		pthread_cond_destroy(&run->gate_cv);
		free(run);
	}
	return r->status;
}
