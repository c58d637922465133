/*
 * dlopen / dlclose of the shared library (its path is argv[1]): after the
 * library was used and every table destroyed, dlclose must leave no thread
 * behind (count /proc/self/task before dlopen and after dlclose), and the
 * process must keep running (a thread left running code of an unmapped
 * library crashes it). This program does not link the library.
 *
 * Cases, each in a child process of its own (a crash fails the case only):
 *   plain    tables created, keys churned (entries retired through RCU),
 *            destroyed
 *   async    also async requests with deadlines: one that fires, one with a
 *            far deadline that is cancelled (the timer thread was sleeping
 *            until it)
 *   twice    dlopen/use/dlclose twice in a row
 *
 * Prints one line per case and "N passed, N failed" last.
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keymutex.h"	/* types only: every call goes through dlsym */

static const char *libpath;
static int failed_here;

#define FAIL(...) do { printf("    FAIL: " __VA_ARGS__); putchar('\n'); failed_here = 1; } while (0)

static int ntasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void list_tasks(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	while (d != NULL && (e = readdir(d)) != NULL) {
		char p[300], name[64] = "?";
		FILE *f;

		if (e->d_name[0] == '.' || atoi(e->d_name) == getpid())
			continue;
		snprintf(p, sizeof p, "/proc/self/task/%s/comm", e->d_name);
		f = fopen(p, "r");
		if (f != NULL) {
			if (fgets(name, sizeof name, f) != NULL)
				name[strcspn(name, "\n")] = 0;
			fclose(f);
		}
		printf("    thread left: tid %s \"%s\"\n", e->d_name, name);
	}
	if (d != NULL)
		closedir(d);
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

struct api {
	int (*create)(struct km **, const struct km_options *);
	int (*destroy)(struct km *);
	int (*lock)(struct km *, const void *, size_t, struct km_guard *);
	int (*unlock)(struct km_guard *);
	int (*acquire_async)(struct km *, const void *, size_t, const struct km_lock_options *,
			     struct km_request *);
	int (*request_cancel)(struct km_request *);
};

static atomic_int ready_calls;

static void on_ready(struct km_request *r, int status)
{
	(void)r;
	(void)status;
	atomic_fetch_add(&ready_calls, 1);
}

static struct timespec in_ms(long ms)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (ms % 1000) * 1000000;
	if (t.tv_nsec >= 1000000000) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000;
	}
	return t;
}

/* dlopen, use, dlclose; returns 0 if it could run */
static int use_once(int with_async)
{
	void *h = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
	struct api a;
	struct km *km;

	atomic_store(&ready_calls, 0);
	if (h == NULL) {
		FAIL("dlopen: %s", dlerror());
		return -1;
	}
	/* POSIX's way to store a dlsym result in a function pointer */
#define SYM(f, name) (*(void **)&(f) = dlsym(h, name))
	SYM(a.create, "km_create");
	SYM(a.destroy, "km_destroy");
	SYM(a.lock, "km_lock");
	SYM(a.unlock, "km_unlock");
	SYM(a.acquire_async, "km_acquire_async");
	SYM(a.request_cancel, "km_request_cancel");
	if (!a.create || !a.destroy || !a.lock || !a.unlock || !a.acquire_async ||
	    !a.request_cancel) {
		FAIL("dlsym: missing symbols");
		return -1;
	}
	if (a.create(&km, NULL) != 0) {
		FAIL("km_create");
		return -1;
	}
	for (int i = 0; i < 20000; i++) {
		char k[24];
		struct km_guard g;
		int n = snprintf(k, sizeof k, "key-%d", i);

		if (a.lock(km, k, (size_t)n, &g) == 0)
			a.unlock(&g);
	}
	if (with_async) {
		struct km_guard held;
		struct km_request r1, r2;
		struct timespec d1 = in_ms(30), d2 = in_ms(60000);
		struct km_lock_options o1 = { .deadline = &d1 }, o2 = { .deadline = &d2 };

		a.lock(km, "busy", 4, &held);
		memset(&r1, 0, sizeof r1);
		memset(&r2, 0, sizeof r2);
		r1.ready = r2.ready = on_ready;
		if (a.acquire_async(km, "busy", 4, &o1, &r1) != EINPROGRESS ||
		    a.acquire_async(km, "busy", 4, &o2, &r2) != EINPROGRESS)
			FAIL("km_acquire_async did not queue");
		for (int i = 0; i < 2000 && atomic_load(&ready_calls) < 1; i++)
			sleep_ms(1);
		if (a.request_cancel(&r2) != 0)
			FAIL("km_request_cancel");
		if (atomic_load(&ready_calls) != 2)
			FAIL("ready() ran %d times, expected 2", atomic_load(&ready_calls));
		a.unlock(&held);
	}
	if (a.destroy(km) != 0)
		FAIL("km_destroy");
	if (dlclose(h) != 0)
		FAIL("dlclose: %s", dlerror());
	return 0;
}

static void run_case(int with_async, int times)
{
	int before = ntasks();

	for (int i = 0; i < times; i++)
		if (use_once(with_async) != 0)
			return;
	/* threads may take a moment to finish exiting */
	int after = ntasks();

	for (int i = 0; i < 200 && after > before; i++) {
		sleep_ms(10);
		after = ntasks();
	}
	if (after != before) {
		FAIL("%d thread(s) before dlopen, %d after dlclose (waited 2 s)", before, after);
		list_tasks();
	}
	/* a left-over thread running unmapped code crashes us about now */
	sleep_ms(500);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int async, times;
	} cases[] = {
		{ "dlopen, use, destroy, dlclose", 0, 1 },
		{ "dlopen, use with async deadlines, destroy, dlclose", 1, 1 },
		{ "twice in a row", 1, 2 },
	};
	unsigned passed = 0, failed = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s path/to/libkeymutex.so\n", argv[0]);
		return 2;
	}
	libpath = argv[1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		printf("%s\n", cases[i].name);
		fflush(stdout);
		pid_t pid = fork();

		if (pid == 0) {
			alarm(30);
			run_case(cases[i].async, cases[i].times);
			fflush(stdout);
			_exit(failed_here);
		}
		int st = 0;

		waitpid(pid, &st, 0);
		bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;

		if (WIFSIGNALED(st))
			printf("    killed by signal %d (%s)\n", WTERMSIG(st), strsignal(WTERMSIG(st)));
		printf("  -> %s\n", ok ? "ok" : "FAILED");
		if (ok)
			passed++;
		else
			failed++;
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
