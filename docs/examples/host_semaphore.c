/*
 * A keyed semaphore: at most 2 concurrent fetches per host, any number of
 * hosts in parallel (max_holders = 2). Sixteen threads fetch URLs of four
 * hosts; the program checks that no host ever had more than 2 fetches in
 * flight and that every host did reach 2.
 */
#include <keymutex.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 16
#define FETCHES 200
#define HOSTS 4
#define PER_HOST 2

static struct km *km;
static int in_flight[HOSTS], peak[HOSTS], errors;
static const char *hosts[HOSTS] = { "a.example", "b.example", "c.example", "d.example" };

static void *fetcher(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; i < FETCHES; i++) {
		int h = rand_r(&seed) % HOSTS;
		struct km_guard g;

		if (km_lock(km, hosts[h], strlen(hosts[h]), &g) != 0) {
			__atomic_add_fetch(&errors, 1, __ATOMIC_RELAXED);
			continue;
		}
		int now = __atomic_add_fetch(&in_flight[h], 1, __ATOMIC_RELAXED);
		int p = __atomic_load_n(&peak[h], __ATOMIC_RELAXED);

		while (now > p && !__atomic_compare_exchange_n(&peak[h], &p, now, false,
							       __ATOMIC_RELAXED, __ATOMIC_RELAXED))
			;
		nanosleep(&(struct timespec){ 0, 50000 }, NULL);	/* "the fetch" */
		__atomic_sub_fetch(&in_flight[h], 1, __ATOMIC_RELAXED);
		km_unlock(&g);
	}
	return NULL;
}

int main(void)
{
	struct km_options o = { .max_holders = PER_HOST };
	pthread_t t[THREADS];
	int ok = 1;

	if (km_create(&km, &o) != 0)
		return 1;
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, fetcher, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	for (int h = 0; h < HOSTS; h++) {
		printf("host_semaphore: %s peak %d in flight\n", hosts[h], peak[h]);
		ok = ok && peak[h] == PER_HOST;
	}
	return ok && errors == 0 && km_destroy(km) == 0 ? 0 : 1;
}
