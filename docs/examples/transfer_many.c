/*
 * Many keys at once: money transfers between accounts, each transfer
 * locking both accounts with km_acquire_all (all or none, canonical order,
 * so opposite transfers cannot deadlock). The total balance never changes.
 */
#include <keymutex.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define ACCOUNTS 8
#define THREADS 8
#define TRANSFERS 20000

static struct km *km;
static long balance[ACCOUNTS];

static void *teller(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	for (int i = 0; i < TRANSFERS; i++) {
		unsigned from = (unsigned)rand_r(&seed) % ACCOUNTS;
		unsigned to = (from + 1 + (unsigned)rand_r(&seed) % (ACCOUNTS - 1)) % ACCOUNTS;
		struct km_key keys[2] = { { &from, sizeof from }, { &to, sizeof to } };
		struct km_guard g[2];

		if (km_acquire_all(km, keys, 2, NULL, g) != 0)
			continue;
		balance[from] -= 10;
		balance[to] += 10;
		km_unlock_all(g, 2);
	}
	return NULL;
}

int main(void)
{
	pthread_t t[THREADS];
	long total = 0;

	if (km_create(&km, NULL) != 0)
		return 1;
	for (int a = 0; a < ACCOUNTS; a++)
		balance[a] = 1000;
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, teller, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	for (int a = 0; a < ACCOUNTS; a++)
		total += balance[a];
	printf("transfer_many: %d transfers, total balance %ld (expected %d)\n",
	       THREADS * TRANSFERS, total, ACCOUNTS * 1000);
	return total == ACCOUNTS * 1000 && km_destroy(km) == 0 ? 0 : 1;
}
