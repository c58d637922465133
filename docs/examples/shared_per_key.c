/*
 * Shared/exclusive per key: readers of a cached record share it, a writer
 * refreshing it excludes them. Readers check that a record is never seen
 * half-written (both halves equal) and that readers did overlap.
 */
#include <keymutex.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define RECORDS 4
#define READERS 6
#define WRITERS 2
#define ROUNDS 20000

static struct km *km;
static struct { long a, b; } rec[RECORDS];
static int readers_now[RECORDS], overlap, torn;

static void *reader(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; i < ROUNDS; i++) {
		unsigned r = (unsigned)rand_r(&seed) % RECORDS;
		struct km_guard g;

		km_lock_shared(km, &r, sizeof r, &g);
		if (__atomic_add_fetch(&readers_now[r], 1, __ATOMIC_RELAXED) > 1)
			__atomic_store_n(&overlap, 1, __ATOMIC_RELAXED);
		long a = rec[r].a;

		/* Read the record slowly, as a real reader parses or copies it: a
		 * writer slipping in would show as a torn read, and other readers
		 * have the time to come in alongside (the overlap). */
		for (volatile int spin = 0; spin < 200; spin++)
			;
		if (a != rec[r].b)
			__atomic_add_fetch(&torn, 1, __ATOMIC_RELAXED);
		__atomic_sub_fetch(&readers_now[r], 1, __ATOMIC_RELAXED);
		km_unlock(&g);
	}
	return NULL;
}

static void *writer(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; i < ROUNDS / 10; i++) {
		unsigned r = (unsigned)rand_r(&seed) % RECORDS;
		struct km_guard g;

		km_lock(km, &r, sizeof r, &g);
		rec[r].a++;
		for (volatile int spin = 0; spin < 100; spin++)
			;
		rec[r].b++;
		km_unlock(&g);
	}
	return NULL;
}

int main(void)
{
	pthread_t t[READERS + WRITERS];

	if (km_create(&km, NULL) != 0)
		return 1;
	for (int i = 0; i < READERS; i++)
		pthread_create(&t[i], NULL, reader, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < WRITERS; i++)
		pthread_create(&t[READERS + i], NULL, writer, (void *)(uintptr_t)(100 + i));
	for (int i = 0; i < READERS + WRITERS; i++)
		pthread_join(t[i], NULL);
	printf("shared_per_key: torn reads %d, readers overlapped: %s\n", torn, overlap ? "yes" : "no");
	return torn == 0 && overlap && km_destroy(km) == 0 ? 0 : 1;
}
