/*
 * Per-key file writes in a thread pool: the seed's image cache, synchronous.
 *
 * Eight worker threads take "save this URL" jobs; a job writes the cached
 * file for hash(url). Two jobs for one URL must not write the same file at
 * once, while different URLs write in parallel. Each job locks its key
 * around write-to-temp + rename; the program checks that no file was ever
 * written by two threads at once (an O_EXCL temp file per key would fail
 * with EEXIST) and that every file ends complete.
 */
#include <keymutex.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKERS 8
#define JOBS 4000
#define URLS 16

static struct km *km;
static char dir[64];
static int next_job, failures;

static void save(unsigned url)
{
	char key[32], tmp[128], path[128], body[256];
	struct km_guard g;
	int len = snprintf(key, sizeof key, "url-%u", url);

	if (km_lock(km, key, (size_t)len, &g) != 0) {
		__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
		return;
	}
	/* Only one writer per key: the exclusive create of the temp file
	 * would fail with EEXIST if another thread were writing it now. */
	snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, key);
	snprintf(path, sizeof path, "%s/%s.webp", dir, key);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);

	if (fd < 0) {
		__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
	} else {
		int n = snprintf(body, sizeof body, "image for %s\n", key);

		if (write(fd, body, (size_t)n) != n)
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
		close(fd);
		if (rename(tmp, path) != 0)
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
	}
	km_unlock(&g);
}

static void *worker(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;

	while (__atomic_add_fetch(&next_job, 1, __ATOMIC_RELAXED) <= JOBS)
		save((unsigned)rand_r(&seed) % URLS);
	return NULL;
}

int main(void)
{
	pthread_t t[WORKERS];
	struct km_stats st;

	snprintf(dir, sizeof dir, "/tmp/km-example-XXXXXX");
	if (mkdtemp(dir) == NULL || km_create(&km, NULL) != 0)
		return 1;
	for (int i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	for (int i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
	km_stats(km, &st);
	printf("file_writes: %d jobs, %llu contended, %d failures, keys left %zu\n", JOBS,
	       (unsigned long long)st.contended, failures, st.keys);
	for (unsigned u = 0; u < URLS; u++) {
		char path[128];

		snprintf(path, sizeof path, "%s/url-%u.webp", dir, u);
		unlink(path);
	}
	rmdir(dir);
	return failures == 0 && st.keys == 0 && km_destroy(km) == 0 ? 0 : 1;
}
