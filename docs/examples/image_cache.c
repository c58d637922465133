/*
 * image_cache: the seed's HttpModule in C, on an epoll event loop.
 *
 *     using (await this.locker.LockAsync(cachedPath)) {
 *         // Process and save a cached image.
 *     }
 *
 * Client threads stand for concurrent HTTP requests: each asks for one of a
 * few popular images, so many ask for the same one at once. The event-loop
 * thread never blocks: for each request it calls km_acquire_async on the
 * image's cache key (a hash of the URL) with a completion port whose fd is
 * in its epoll set. When the key is granted, ready() runs on the loop thread
 * (inside km_port_run, never on the thread that released the key) and hands
 * the write to a pool of writer threads; the writer saves the file and
 * unlocks the guard itself (keymutex locks are not thread-affine), which
 * queues the next waiter's completion to the port.
 *
 * A writer creates "<hash>.partial" with O_CREAT | O_EXCL: if another writer
 * were writing the same image, that open would fail with EEXIST, the POSIX
 * face of the seed's "The process cannot access the file ... because it is
 * being used by another process". A per-key in-use flag checks the same
 * thing in memory. The program exits 0, with a one-line summary, when every
 * request was served, no two writers ever overlapped on one key, every
 * ready() ran on the loop thread, and the table is empty at the end.
 *
 * Build: cc image_cache.c $(pkg-config --cflags --libs keymutex) -pthread
 * Usage: image_cache [clients [requests-per-client [images [writers]]]]
 *
 * SPDX-License-Identifier: MIT
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keymutex.h"

#define MAX_IMAGES 64

/* One HTTP request: "save the cached image for this URL". */
struct job {
	struct km_request req;	/* the async acquire (must outlive ready()) */
	struct job *next;	/* inbox / work queue link */
	int image;
	int client;
	struct client *owner;
};

struct client {
	pthread_t th;
	int id;
	pthread_mutex_t m;	/* the client waits for its reply */
	pthread_cond_t cv;
	bool replied;
	int status;
};

/* A queue between threads, with an eventfd to wake an epoll loop. */
struct queue {
	pthread_mutex_t m;
	pthread_cond_t cv;
	struct job *head, **tail;
	int efd;		/* -1: none (writers wait on cv instead) */
	bool closed;
};

static struct {
	struct km *km;
	struct km_port *port;
	pthread_t loop_thread;
	char dir[64];
	char url[MAX_IMAGES][96];
	char hash[MAX_IMAGES][17];		/* the cache key: the URL's hash, in hex */
	atomic_int in_use[MAX_IMAGES];		/* a writer is saving this image now */
	struct queue inbox;			/* clients -> loop */
	struct queue work;			/* loop -> writers */
	int clients, per_client, images, writers;

	atomic_long writes, overlaps, eexist, io_errors, off_loop_ready, at_once;
	atomic_long waited;			/* EINPROGRESS whose ready() has not run yet */
	atomic_long queued;			/* EINPROGRESS in all */
	atomic_long unlock_errors, bad_status;
} app;

/* ------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return h;
}

static void queue_init(struct queue *q, bool with_fd)
{
	pthread_mutex_init(&q->m, NULL);
	pthread_cond_init(&q->cv, NULL);
	q->head = NULL;
	q->tail = &q->head;
	q->efd = with_fd ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
	q->closed = false;
}

static void queue_push(struct queue *q, struct job *j)
{
	pthread_mutex_lock(&q->m);
	j->next = NULL;
	*q->tail = j;
	q->tail = &j->next;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->m);
	if (q->efd >= 0) {
		uint64_t one = 1;

		(void)!write(q->efd, &one, sizeof one);
	}
}

/* Take everything (non-blocking): for the event loop. */
static struct job *queue_take_all(struct queue *q)
{
	struct job *j;
	uint64_t v;

	(void)!read(q->efd, &v, sizeof v);
	pthread_mutex_lock(&q->m);
	j = q->head;
	q->head = NULL;
	q->tail = &q->head;
	pthread_mutex_unlock(&q->m);
	return j;
}

/* Take one, waiting: for the writers. NULL once closed and empty. */
static struct job *queue_pop(struct queue *q)
{
	struct job *j;

	pthread_mutex_lock(&q->m);
	while (q->head == NULL && !q->closed)
		pthread_cond_wait(&q->cv, &q->m);
	j = q->head;
	if (j != NULL) {
		q->head = j->next;
		if (q->head == NULL)
			q->tail = &q->head;
	}
	pthread_mutex_unlock(&q->m);
	return j;
}

static void reply(struct job *j, int status)
{
	struct client *c = j->owner;

	pthread_mutex_lock(&c->m);
	c->status = status;
	c->replied = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->m);
}

/* ------------------------------------------------------------------ */
/* Writers: the critical section, on a pool thread                     */
/* ------------------------------------------------------------------ */

static void save_image(struct job *j)
{
	char partial[160], final[160], body[256];
	int img = j->image, fd, n;

	if (atomic_exchange(&app.in_use[img], 1) != 0)
		atomic_fetch_add(&app.overlaps, 1);	/* two writers on one key */
	snprintf(partial, sizeof partial, "%s/%s.partial", app.dir, app.hash[img]);
	snprintf(final, sizeof final, "%s/%s.webp", app.dir, app.hash[img]);
	fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		if (errno == EEXIST)
			atomic_fetch_add(&app.eexist, 1);	/* "being used by another process" */
		else
			atomic_fetch_add(&app.io_errors, 1);
	} else {
		n = snprintf(body, sizeof body, "processed %s for client %d\n", app.url[img], j->client);
		/* "process" the image: a little work while the key is held */
		for (int i = 0; i < 4; i++)
			if (write(fd, body, (size_t)n) != n)
				atomic_fetch_add(&app.io_errors, 1);
		close(fd);
		if (rename(partial, final) != 0)
			atomic_fetch_add(&app.io_errors, 1);
		atomic_fetch_add(&app.writes, 1);
	}
	atomic_store(&app.in_use[img], 0);
}

static void *writer_main(void *arg)
{
	struct job *j;

	(void)arg;
	while ((j = queue_pop(&app.work)) != NULL) {
		save_image(j);
		/* unlocked here, on the writer: the next waiter's completion
		 * goes to the loop's port, not to this thread */
		if (km_unlock(&j->req.guard) != 0)
			atomic_fetch_add(&app.unlock_errors, 1);
		reply(j, 0);
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* The event loop                                                      */
/* ------------------------------------------------------------------ */

/* ready(): runs inside km_port_run, on the loop thread. The guard holds the
 * image's key: hand the write to the pool. */
static void image_ready(struct km_request *req, int status)
{
	struct job *j = req->arg;

	if (!pthread_equal(pthread_self(), app.loop_thread))
		atomic_fetch_add(&app.off_loop_ready, 1);
	if (status != 0) {		/* no deadline or token here: cannot happen */
		atomic_fetch_add(&app.bad_status, 1);
		reply(j, status);
		return;
	}
	queue_push(&app.work, j);
}

static void start_request(struct job *j)
{
	const char *key = app.hash[j->image];
	int rc;

	memset(&j->req, 0, sizeof j->req);
	j->req.ready = image_ready;
	j->req.arg = j;
	j->req.port = app.port;
	rc = km_acquire_async(app.km, key, strlen(key), NULL, &j->req);
	if (rc == EINPROGRESS) {
		atomic_fetch_add(&app.waited, 1);	/* image_ready() comes through the port */
		atomic_fetch_add(&app.queued, 1);
	} else if (rc == 0) {
		atomic_fetch_add(&app.at_once, 1);
		queue_push(&app.work, j);		/* free key: save right away */
	} else {
		atomic_fetch_add(&app.bad_status, 1);
		reply(j, rc);
	}
}

static int event_loop(long total)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN };
	long started = 0;

	if (ep < 0)
		return -1;
	ev.data.u32 = 1;
	epoll_ctl(ep, EPOLL_CTL_ADD, app.inbox.efd, &ev);
	ev.data.u32 = 2;
	epoll_ctl(ep, EPOLL_CTL_ADD, km_port_fd(app.port), &ev);

	/* Runs until every request has been started and its completion run:
	 * then nothing is pending on the port. */
	while (started < total || atomic_load(&app.waited) > 0) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, 1000);

		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u32 == 1) {
				for (struct job *j = queue_take_all(&app.inbox), *next; j != NULL; j = next) {
					next = j->next;
					start_request(j);
					started++;
				}
			} else {
				int ran = km_port_run(app.port);	/* image_ready() calls */

				if (ran > 0)
					atomic_fetch_sub(&app.waited, ran);
			}
		}
	}
	close(ep);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Clients                                                             */
/* ------------------------------------------------------------------ */

static void *client_main(void *arg)
{
	struct client *c = arg;
	uint64_t rng = 0x9E3779B97F4A7C15u * (uint64_t)(c->id + 1);
	struct job *j = malloc(sizeof *j);

	for (int i = 0; i < app.per_client && j != NULL; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		/* popular images: half of the requests go to image 0 */
		j->image = (rng & 1) ? 0 : (int)((rng >> 1) % (uint64_t)app.images);
		j->client = c->id;
		j->owner = c;
		c->replied = false;
		queue_push(&app.inbox, j);
		pthread_mutex_lock(&c->m);
		while (!c->replied)
			pthread_cond_wait(&c->cv, &c->m);
		pthread_mutex_unlock(&c->m);
		if (c->status != 0)
			break;
	}
	free(j);
	return NULL;
}

/* ------------------------------------------------------------------ */

static void remove_cache_dir(void)
{
	char path[160];

	for (int i = 0; i < app.images; i++) {
		snprintf(path, sizeof path, "%s/%s.webp", app.dir, app.hash[i]);
		unlink(path);
		snprintf(path, sizeof path, "%s/%s.partial", app.dir, app.hash[i]);
		unlink(path);
	}
	rmdir(app.dir);
}

static int arg_or(int argc, char **argv, int i, int def, int max)
{
	int v = argc > i ? atoi(argv[i]) : def;

	return v < 1 ? def : v > max ? max : v;
}

int main(int argc, char **argv)
{
	struct client *clients;
	pthread_t *writers;
	struct km_stats st;
	long total;
	int rc = 0;

	app.clients = arg_or(argc, argv, 1, 16, 1024);
	app.per_client = arg_or(argc, argv, 2, 100, 1000000);
	app.images = arg_or(argc, argv, 3, 8, MAX_IMAGES);
	app.writers = arg_or(argc, argv, 4, 4, 256);
	total = (long)app.clients * app.per_client;

	snprintf(app.dir, sizeof app.dir, "/tmp/km-image-cache-XXXXXX");
	if (mkdtemp(app.dir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	for (int i = 0; i < app.images; i++) {
		snprintf(app.url[i], sizeof app.url[i], "https://example.invalid/img/%d.jpg?width=%d", i,
			 100 * (i + 1));
		snprintf(app.hash[i], sizeof app.hash[i], "%016" PRIx64, fnv1a(app.url[i]));
	}
	if (km_create(&app.km, NULL) != 0 || km_port_create(&app.port) != 0) {
		fprintf(stderr, "image_cache: cannot create the table or the port\n");
		return 2;
	}
	app.loop_thread = pthread_self();
	queue_init(&app.inbox, true);
	queue_init(&app.work, false);
	if (app.inbox.efd < 0) {
		perror("eventfd");
		return 2;
	}

	writers = calloc((size_t)app.writers, sizeof *writers);
	clients = calloc((size_t)app.clients, sizeof *clients);
	if (writers == NULL || clients == NULL)
		return 2;
	for (int i = 0; i < app.writers; i++)
		pthread_create(&writers[i], NULL, writer_main, NULL);
	for (int i = 0; i < app.clients; i++) {
		clients[i].id = i;
		pthread_mutex_init(&clients[i].m, NULL);
		pthread_cond_init(&clients[i].cv, NULL);
		pthread_create(&clients[i].th, NULL, client_main, &clients[i]);
	}

	event_loop(total);

	for (int i = 0; i < app.clients; i++)
		pthread_join(clients[i].th, NULL);
	pthread_mutex_lock(&app.work.m);
	app.work.closed = true;
	pthread_cond_broadcast(&app.work.cv);
	pthread_mutex_unlock(&app.work.m);
	for (int i = 0; i < app.writers; i++)
		pthread_join(writers[i], NULL);

	km_stats(app.km, &st);
	if (atomic_load(&app.writes) != total || atomic_load(&app.overlaps) != 0 ||
	    atomic_load(&app.eexist) != 0 || atomic_load(&app.io_errors) != 0 ||
	    atomic_load(&app.off_loop_ready) != 0 || atomic_load(&app.bad_status) != 0 ||
	    atomic_load(&app.unlock_errors) != 0 || st.keys != 0 || st.holders != 0 ||
	    st.waiters != 0 || km_port_destroy(app.port) != 0 || km_destroy(app.km) != 0)
		rc = 1;
	printf("image_cache: %s: %ld requests for %d images from %d clients, %d writers: "
	       "%ld saved, %ld waited for the key (%ld at once), %ld overlapping writers, "
	       "%ld EEXIST, %ld ready() off the loop thread\n",
	       rc == 0 ? "OK" : "FAILED", total, app.images, app.clients, app.writers,
	       atomic_load(&app.writes), atomic_load(&app.queued), atomic_load(&app.at_once),
	       atomic_load(&app.overlaps), atomic_load(&app.eexist),
	       atomic_load(&app.off_loop_ready));
	remove_cache_dir();
	free(writers);
	free(clients);
	return rc;
}
