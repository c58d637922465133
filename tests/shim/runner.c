/*
 * The runner of the Criterion stand-in (criterion/criterion.h beside this
 * file): runs every registered test in this process, in registration order,
 * honouring --filter GLOB (suite/name), and prints Criterion's Synthesis line.
 *
 * SPDX-License-Identifier: MIT
 */
#include <criterion/criterion.h>

#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct kmcr_test *kmcr_tests, **kmcr_tail = &kmcr_tests;
static struct kmcr_suite *kmcr_suites;
static int kmcr_tested, kmcr_passed, kmcr_failed;
static int kmcr_current_failed;	/* non-fatal failures of the running test */
static const struct kmcr_test *kmcr_current;

void kmcr_register(struct kmcr_test *t)
{
	*kmcr_tail = t;
	kmcr_tail = &t->next;
}

void kmcr_register_suite(struct kmcr_suite *s)
{
	s->next = kmcr_suites;
	kmcr_suites = s;
}

static void kmcr_synthesis(void)
{
	printf("[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0 \n",
	       kmcr_tested, kmcr_passed, kmcr_failed);
	fflush(stdout);
}

void kmcr_check(bool ok, bool fatal, const char *file, int line, const char *expr,
		const char *fmt, ...)
{
	va_list ap;

	if (ok)
		return;
	fprintf(stderr, "[----] %s:%d: Assertion Failed\n[----]   ", file, line);
	if (fmt[0] != '\0') {
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
	} else {
		fprintf(stderr, "The expression %s is false.", expr);
	}
	fprintf(stderr, "\n");
	if (!fatal) {
		__atomic_store_n(&kmcr_current_failed, 1, __ATOMIC_RELAXED);
		return;
	}
	/* Fatal: end the run here, whichever thread failed. */
	fprintf(stderr, "[FAIL] %s::%s\n", kmcr_current ? kmcr_current->suite : "?",
		kmcr_current ? kmcr_current->name : "?");
	kmcr_failed++;
	kmcr_synthesis();
	fflush(stderr);
	_exit(1);
}

void kmcr_log(const char *level, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "[%s] ", level);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}

static const struct kmcr_opts *kmcr_suite_opts(const char *name)
{
	for (struct kmcr_suite *s = kmcr_suites; s != NULL; s = s->next)
		if (strcmp(s->name, name) == 0)
			return &s->opts;
	return NULL;
}

int main(int argc, char **argv)
{
	const char *filter = NULL;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
			filter = argv[++i];
		else if (strncmp(argv[i], "--filter=", 9) == 0)
			filter = argv[i] + 9;
		/* -jN, --jobs, --verbose...: meaningless in process; ignored */
	}
	for (struct kmcr_test *t = kmcr_tests; t != NULL; t = t->next) {
		const struct kmcr_opts *so = kmcr_suite_opts(t->suite);
		void (*init)(void) = t->opts.init ? t->opts.init : so ? so->init : NULL;
		void (*fini)(void) = t->opts.fini ? t->opts.fini : so ? so->fini : NULL;
		char full[512];

		snprintf(full, sizeof full, "%s/%s", t->suite, t->name);
		if (filter != NULL && fnmatch(filter, full, 0) != 0)
			continue;
		if (t->opts.disabled || (so != NULL && so->disabled))
			continue;
		kmcr_current = t;
		kmcr_current_failed = 0;
		kmcr_tested++;
		fprintf(stderr, "[RUN ] %s::%s\n", t->suite, t->name);
		if (init)
			init();
		t->fn();
		if (fini)
			fini();
		if (__atomic_load_n(&kmcr_current_failed, __ATOMIC_RELAXED)) {
			kmcr_failed++;
			fprintf(stderr, "[FAIL] %s::%s\n", t->suite, t->name);
		} else {
			kmcr_passed++;
			fprintf(stderr, "[PASS] %s::%s\n", t->suite, t->name);
		}
	}
	kmcr_synthesis();
	return kmcr_failed != 0;
}
