/*
 * Instruction counts of the hot paths, for valgrind --tool=callgrind:
 *   hotpath random N    lock+unlock of a random key among 1M, N times
 *   hotpath repeat N    lock+unlock of one recurring key (another held), N times
 *   hotpath async N     km_acquire_async (granted at once) + km_unlock of a
 *                       recurring key, N times
 *   hotpath pthread N   pthread_mutex_lock+unlock, N times
 * The scenarios of the CI gate (issue 12; tools/callgrind-gate.sh), all with
 * 8-byte keys and nothing else held unless said:
 *   hotpath new N       lock+unlock of a key never seen before, N times
 *                       (keys base, base + 1, ...; each dies on unlock)
 *   hotpath recur N     lock+unlock of a few (4) recurring keys in turn
 *   hotpath held1m N    1,000,000 keys locked and kept first, then as new
 * A second thread is alive throughout, parked in pthread_cond_wait (glibc's
 * single-thread fast path would flatter pthread mutexes). The scripts run
 * each mode twice (N and 2N) and print (Ir(2N) - Ir(N)) / N, so set-up cost
 * cancels out. Instrumentation is switched on (CALLGRIND_START_INSTRUMENTATION,
 * a no-op unless callgrind runs with --instr-atstart=no) just before the
 * measured loop and stays on to the end of the process, for every thread: the
 * library's reclaimer thread and teardown are counted, set-up (the 1M held
 * keys) runs uninstrumented, which only makes it faster.
 */
#define _GNU_SOURCE		/* ppoll */
#include <keymutex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <valgrind/callgrind.h>

static pthread_mutex_t idle_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cv = PTHREAD_COND_INITIALIZER;
static int idle_done;

static void *idle(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&idle_mu);
	while (!idle_done)
		pthread_cond_wait(&idle_cv, &idle_mu);
	pthread_mutex_unlock(&idle_mu);
	return NULL;
}

/*
 * liburcu-bp's grace period sleeps 10 ms (poll(NULL, 0, 10)) while a reader
 * is inside a read-side section. Under valgrind, which runs one thread at a
 * time, that happens whenever the measured thread was descheduled inside one,
 * and how much it then does in 10 ms of real time decides how many retired
 * entries the reclaimer returns to the pool in time: the count would follow
 * the machine's load. A yield instead keeps the schedule valgrind's own
 * (deterministic) and changes nothing else. Other polls are passed on.
 */
int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	if (fds == NULL && nfds == 0) {
		(void)timeout;
		sched_yield();
		return 0;
	}
	return ppoll(fds, nfds, timeout < 0 ? NULL
			: &(struct timespec){ timeout / 1000, timeout % 1000 * 1000000L }, NULL);
}

static void lock_unlock(struct km *km, uint64_t k)
{
	struct km_guard g;

	if (km_lock(km, &k, sizeof k, &g) != 0 || km_unlock(&g) != 0)
		abort();
}

static void never_called(struct km_request *req, int status)
{
	(void)req;
	(void)status;
	abort();
}

int main(int argc, char **argv)
{
	struct km *km;
	struct km_guard g;
	pthread_t t;
	long n;
	uint64_t x = 88172645463325252ull;

	if (argc != 3)
		return 2;
	n = atol(argv[2]);
	pthread_create(&t, NULL, idle, NULL);
	if (km_create(&km, NULL) != 0)
		return 1;
	if (strcmp(argv[1], "new") == 0) {
		CALLGRIND_START_INSTRUMENTATION;
		for (long i = 0; i < n; i++)
			lock_unlock(km, (uint64_t)1 << 40 | (uint64_t)i);
	} else if (strcmp(argv[1], "recur") == 0) {
		for (uint64_t k = 0; k < 4; k++)	/* each seen once before */
			lock_unlock(km, k);
		CALLGRIND_START_INSTRUMENTATION;
		for (long i = 0; i < n; i++)
			lock_unlock(km, (uint64_t)i & 3);
	} else if (strcmp(argv[1], "held1m") == 0) {
		enum { HELD = 1000000 };
		struct km_guard *held = malloc(HELD * sizeof *held);

		if (held == NULL)
			return 1;
		for (uint64_t k = 0; k < HELD; k++)
			if (km_lock(km, &k, sizeof k, &held[k]) != 0)
				return 1;
		CALLGRIND_START_INSTRUMENTATION;
		for (long i = 0; i < n; i++)
			lock_unlock(km, (uint64_t)1 << 40 | (uint64_t)i);
		/* The held keys are left to the process's exit (releasing them
		 * would only add a constant); the library's exit hook still
		 * reclaims every queued batch, counted. */
		return 0;
	} else if (strcmp(argv[1], "random") == 0) {
		for (long i = 0; i < n; i++) {
			uint64_t k;

			x ^= x << 13; x ^= x >> 7; x ^= x << 17;
			k = x % 1000000;
			km_lock(km, &k, sizeof k, &g);
			km_unlock(&g);
		}
	} else if (strcmp(argv[1], "repeat") == 0) {
		uint64_t k = 42, other = 7;
		struct km_guard keep;

		km_lock(km, &other, sizeof other, &keep);
		for (long i = 0; i < n; i++) {
			km_lock(km, &k, sizeof k, &g);
			km_unlock(&g);
		}
		km_unlock(&keep);
	} else if (strcmp(argv[1], "async") == 0) {
		uint64_t k = 42, other = 7;
		struct km_guard keep;
		struct km_request req;

		memset(&req, 0, sizeof req);
		req.ready = never_called;
		km_lock(km, &other, sizeof other, &keep);
		for (long i = 0; i < n; i++) {
			if (km_acquire_async(km, &k, sizeof k, NULL, &req) != 0)
				return 1;
			km_unlock(&req.guard);
		}
		km_unlock(&keep);
	} else {
		pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;

		CALLGRIND_START_INSTRUMENTATION;
		for (long i = 0; i < n; i++) {
			pthread_mutex_lock(&m);
			pthread_mutex_unlock(&m);
		}
	}
	km_destroy(km);
	pthread_mutex_lock(&idle_mu);
	idle_done = 1;
	pthread_cond_signal(&idle_cv);
	pthread_mutex_unlock(&idle_mu);
	pthread_join(t, NULL);
	return 0;
}
