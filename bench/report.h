/*
 * km-bench: what the command line hands to the reports (report.c).
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KM_BENCH_REPORT_H
#define KM_BENCH_REPORT_H

#include <stdio.h>

#include "harness.h"

struct bench_report {
	struct bench_result *r;	/* every run, in plan order (variant by variant) */
	size_t n;
	double *ratio;		/* r[i].ops_per_s / keymutex's in the same variant; NAN if none */
	const char *command;	/* the command line, for the record */
	int quick, forked, overridden;
	unsigned lat_every_note;	/* 0: per-scenario defaults */
};

/* One bench.md goal, evaluated on this run. */
enum { GOAL_MET, GOAL_MISSED, GOAL_NA };

struct bench_goal {
	char what[96];		/* the goal, as bench.md states it */
	char detail[112];	/* the figures behind the verdict */
	int verdict;
};

/* Exclusion verdict of a whole run. */
struct bench_exclusion {
	unsigned long long naive_violations, naive_runs, naive_contended_runs;
	unsigned long long other_violations, other_runs;
	int exercised;		/* naive showed violations */
};

void report_ratios(struct bench_report *rep);
size_t report_goals(const struct bench_report *rep, struct bench_goal *g, size_t max);
void report_exclusion(const struct bench_report *rep, struct bench_exclusion *x);

void report_header(FILE *f, const struct bench_report *rep);
void report_table(FILE *f, const struct bench_report *rep);
void report_summary(FILE *f, const struct bench_report *rep, const struct bench_exclusion *x,
		    const struct bench_goal *g, size_t ng);

/* 0, or -1 with a message on stderr. */
int report_csv(const char *path, const struct bench_report *rep);
int report_json(const char *path, const struct bench_report *rep, const struct bench_exclusion *x,
		const struct bench_goal *g, size_t ng);
/* 0 (charts written, or gnuplot missing: said on stderr), -1 on an I/O error. */
int report_plot(const char *dir, const struct bench_report *rep);

/* "12.3M", "456k", "789" */
void fmt_count(char *buf, size_t len, double v);
/* "41ns", "1.23us", "4.5ms", "1.20s" */
void fmt_ns(char *buf, size_t len, double ns);
/* The variant's work column: "0", "100ns", "sleep 100us" (plus "+out Nns"). */
void fmt_work(char *buf, size_t len, const struct bench_result *r);

#endif /* KM_BENCH_REPORT_H */
