/*
 * Instruction counts of the hot paths, for valgrind --tool=callgrind:
 *   hotpath random N    lock+unlock of a random key among 1M, N times
 *   hotpath repeat N    lock+unlock of one recurring key (another held), N times
 *   hotpath async N     km_acquire_async (granted at once) + km_unlock of a
 *                       recurring key, N times
 *   hotpath pthread N   pthread_mutex_lock+unlock, N times
 * A second thread is alive throughout (glibc's single-thread fast path
 * would flatter pthread mutexes). tools/callgrind.sh runs each twice (N and
 * 2N) and prints the per-operation difference, so set-up cost cancels out.
 */
#include <keymutex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	if (strcmp(argv[1], "random") == 0) {
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
