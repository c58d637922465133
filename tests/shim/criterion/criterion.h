/*
 * A minimal, in-process stand-in for Criterion's test API, used for the
 * ThreadSanitizer build and with -Dcriterion_shim=true (the valgrind memcheck
 * run of scripts/test.sh): Criterion's sandbox (boxfort) cannot start under
 * TSAN ("Could not initialize inheritable arena", Snaipe/Criterion#274) and
 * does not work under valgrind, so the same test sources are compiled
 * against this header instead.
 *
 * Supported: Test(), TestSuite() with .init/.fini/.timeout/.disabled,
 * cr_assert*, cr_expect*, cr_log_*. Tests run one after another in one
 * process; the first failed assertion ends the run (it may happen on any
 * thread). The runner prints Criterion's closing "Synthesis:" line.
 *
 * SPDX-License-Identifier: MIT
 */
#ifndef KMCR_CRITERION_H
#define KMCR_CRITERION_H

#include <stdbool.h>
#include <stddef.h>

struct kmcr_opts {
	int dummy_;
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	bool disabled;
	const char *description;
};

struct kmcr_test {
	const char *suite, *name;
	void (*fn)(void);
	struct kmcr_opts opts;
	struct kmcr_test *next;
};

struct kmcr_suite {
	const char *name;
	struct kmcr_opts opts;
	struct kmcr_suite *next;
};

void kmcr_register(struct kmcr_test *t);
void kmcr_register_suite(struct kmcr_suite *s);
void kmcr_check(bool ok, bool fatal, const char *file, int line, const char *expr,
		const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void kmcr_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define Test(suite, name, ...)							\
	static void kmcr_fn_##suite##_##name(void);				\
	static struct kmcr_test kmcr_t_##suite##_##name = {			\
		#suite, #name, kmcr_fn_##suite##_##name,			\
		{ .dummy_ = 0, __VA_ARGS__ }, NULL };				\
	__attribute__((constructor)) static void kmcr_r_##suite##_##name(void)	\
	{ kmcr_register(&kmcr_t_##suite##_##name); }				\
	static void kmcr_fn_##suite##_##name(void)

#define TestSuite(suite, ...)							\
	static struct kmcr_suite kmcr_s_##suite = {				\
		#suite, { .dummy_ = 0, __VA_ARGS__ }, NULL };			\
	__attribute__((constructor)) static void kmcr_rs_##suite(void)		\
	{ kmcr_register_suite(&kmcr_s_##suite); }

#define kmcr_assert_(fatal, cond, text, ...) \
	kmcr_check(!!(cond), fatal, __FILE__, __LINE__, text, "" __VA_ARGS__)

#define cr_assert(cond, ...)		kmcr_assert_(true, cond, #cond, __VA_ARGS__)
#define cr_expect(cond, ...)		kmcr_assert_(false, cond, #cond, __VA_ARGS__)
#define cr_assert_not(cond, ...)	kmcr_assert_(true, !(cond), "!(" #cond ")", __VA_ARGS__)
#define cr_assert_fail(...)		kmcr_assert_(true, 0, "cr_assert_fail", __VA_ARGS__)
#define cr_assert_null(p, ...)		kmcr_assert_(true, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...)	kmcr_assert_(true, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_eq(a, b, ...)		kmcr_assert_(true, (a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)	kmcr_assert_(true, (a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)		kmcr_assert_(true, (a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)	kmcr_assert_(true, (a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)		kmcr_assert_(true, (a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)	kmcr_assert_(true, (a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...)		kmcr_assert_(false, (a) == (b), #a " == " #b, __VA_ARGS__)

#define cr_log_info(...)	kmcr_log("INFO", __VA_ARGS__)
#define cr_log_warn(...)	kmcr_log("WARN", __VA_ARGS__)
#define cr_log_error(...)	kmcr_log("ERR ", __VA_ARGS__)

#endif
