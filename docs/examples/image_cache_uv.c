/*
 * image_cache_uv: image_cache.c on libuv instead of a hand-written epoll loop.
 *
 * The port's fd is watched with a uv_poll_t; its callback runs km_port_run,
 * so every ready() runs on the loop thread. A granted request's write goes to
 * libuv's thread pool (uv_queue_work); the after-work callback, back on the
 * loop thread, unlocks the guard, which queues the next waiter's completion
 * to the port. Client threads submit requests through a uv_async_t.
 *
 * Build: cc image_cache_uv.c $(pkg-config --cflags --libs keymutex libuv) -pthread
 * Usage: image_cache_uv [clients [requests-per-client [images]]]
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
#include <unistd.h>
#include <uv.h>

#include "keymutex.h"

#define MAX_IMAGES 64

struct client;

struct job {
	struct km_request req;		/* the async acquire */
	uv_work_t work;			/* the write, on libuv's pool */
	struct job *next;
	int image;
	struct client *owner;
};

struct client {
	pthread_t th;
	int id;
	pthread_mutex_t m;
	pthread_cond_t cv;
	bool replied;
};

static struct {
	uv_loop_t *loop;
	uv_poll_t port_poll;
	uv_async_t inbox_async;
	pthread_mutex_t inbox_m;
	struct job *inbox;
	struct km *km;
	struct km_port *port;
	pthread_t loop_thread;
	char dir[64];
	char url[MAX_IMAGES][96];
	char hash[MAX_IMAGES][17];
	atomic_int in_use[MAX_IMAGES];
	int clients, per_client, images;
	long total, done;
	long queued, at_once, bad;
	atomic_long writes, overlaps, eexist, io_errors, off_loop_ready;
} app;

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return h;
}

/* On a pool thread, holding the image's key. */
static void save_image(uv_work_t *w)
{
	struct job *j = w->data;
	char partial[160], final[160], body[160];
	int img = j->image, fd, n;

	if (atomic_exchange(&app.in_use[img], 1) != 0)
		atomic_fetch_add(&app.overlaps, 1);
	snprintf(partial, sizeof partial, "%s/%s.partial", app.dir, app.hash[img]);
	snprintf(final, sizeof final, "%s/%s.webp", app.dir, app.hash[img]);
	fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		atomic_fetch_add(errno == EEXIST ? &app.eexist : &app.io_errors, 1);
	} else {
		n = snprintf(body, sizeof body, "processed %s\n", app.url[img]);
		if (write(fd, body, (size_t)n) != n)
			atomic_fetch_add(&app.io_errors, 1);
		close(fd);
		if (rename(partial, final) != 0)
			atomic_fetch_add(&app.io_errors, 1);
		atomic_fetch_add(&app.writes, 1);
	}
	atomic_store(&app.in_use[img], 0);
}

static void finish(struct job *j)
{
	struct client *c = j->owner;

	pthread_mutex_lock(&c->m);
	c->replied = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->m);
	if (++app.done == app.total) {
		uv_close((uv_handle_t *)&app.port_poll, NULL);
		uv_close((uv_handle_t *)&app.inbox_async, NULL);
	}
}

/* Back on the loop thread: release the key; the next waiter's ready()
 * arrives through the port. */
static void saved(uv_work_t *w, int status)
{
	struct job *j = w->data;

	(void)status;
	if (km_unlock(&j->req.guard) != 0)
		app.bad++;
	finish(j);
}

static void image_ready(struct km_request *req, int status)
{
	struct job *j = req->arg;

	if (!pthread_equal(pthread_self(), app.loop_thread))
		atomic_fetch_add(&app.off_loop_ready, 1);
	if (status != 0) {
		app.bad++;
		finish(j);
		return;
	}
	j->work.data = j;
	uv_queue_work(app.loop, &j->work, save_image, saved);
}

static void port_readable(uv_poll_t *h, int status, int events)
{
	(void)h;
	(void)events;
	if (status == 0)
		km_port_run(app.port);
}

static void inbox_ready(uv_async_t *h)
{
	struct job *j;

	(void)h;
	pthread_mutex_lock(&app.inbox_m);
	j = app.inbox;
	app.inbox = NULL;
	pthread_mutex_unlock(&app.inbox_m);
	while (j != NULL) {
		struct job *next = j->next;
		const char *key = app.hash[j->image];
		int rc;

		memset(&j->req, 0, sizeof j->req);
		j->req.ready = image_ready;
		j->req.arg = j;
		j->req.port = app.port;
		rc = km_acquire_async(app.km, key, strlen(key), NULL, &j->req);
		if (rc == 0) {
			app.at_once++;
			image_ready(&j->req, 0);	/* same path as a grant through the port */
		} else if (rc == EINPROGRESS) {
			app.queued++;
		} else {
			app.bad++;
			finish(j);
		}
		j = next;
	}
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	uint64_t rng = 0x9E3779B97F4A7C15u * (uint64_t)(c->id + 1);
	struct job *j = calloc(1, sizeof *j);

	for (int i = 0; i < app.per_client && j != NULL; i++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		j->image = (rng & 1) ? 0 : (int)((rng >> 1) % (uint64_t)app.images);
		j->owner = c;
		c->replied = false;
		pthread_mutex_lock(&app.inbox_m);
		j->next = app.inbox;
		app.inbox = j;
		pthread_mutex_unlock(&app.inbox_m);
		uv_async_send(&app.inbox_async);
		pthread_mutex_lock(&c->m);
		while (!c->replied)
			pthread_cond_wait(&c->cv, &c->m);
		pthread_mutex_unlock(&c->m);
	}
	free(j);
	return NULL;
}

static int arg_or(int argc, char **argv, int i, int def, int max)
{
	int v = argc > i ? atoi(argv[i]) : def;

	return v < 1 ? def : v > max ? max : v;
}

int main(int argc, char **argv)
{
	struct client *clients;
	struct km_stats st;
	char path[160];
	int rc = 0;

	app.clients = arg_or(argc, argv, 1, 16, 1024);
	app.per_client = arg_or(argc, argv, 2, 100, 1000000);
	app.images = arg_or(argc, argv, 3, 8, MAX_IMAGES);
	app.total = (long)app.clients * app.per_client;
	snprintf(app.dir, sizeof app.dir, "/tmp/km-image-cache-uv-XXXXXX");
	if (mkdtemp(app.dir) == NULL) {
		perror("mkdtemp");
		return 2;
	}
	for (int i = 0; i < app.images; i++) {
		snprintf(app.url[i], sizeof app.url[i], "https://example.invalid/img/%d.jpg", i);
		snprintf(app.hash[i], sizeof app.hash[i], "%016" PRIx64, fnv1a(app.url[i]));
	}
	if (km_create(&app.km, NULL) != 0 || km_port_create(&app.port) != 0)
		return 2;
	app.loop = uv_default_loop();
	app.loop_thread = pthread_self();
	pthread_mutex_init(&app.inbox_m, NULL);
	uv_async_init(app.loop, &app.inbox_async, inbox_ready);
	uv_poll_init(app.loop, &app.port_poll, km_port_fd(app.port));
	uv_poll_start(&app.port_poll, UV_READABLE, port_readable);

	clients = calloc((size_t)app.clients, sizeof *clients);
	if (clients == NULL)
		return 2;
	for (int i = 0; i < app.clients; i++) {
		clients[i].id = i;
		pthread_mutex_init(&clients[i].m, NULL);
		pthread_cond_init(&clients[i].cv, NULL);
		pthread_create(&clients[i].th, NULL, client_main, &clients[i]);
	}
	uv_run(app.loop, UV_RUN_DEFAULT);	/* until every request is served */
	for (int i = 0; i < app.clients; i++)
		pthread_join(clients[i].th, NULL);

	km_stats(app.km, &st);
	if (atomic_load(&app.writes) != app.total || atomic_load(&app.overlaps) != 0 ||
	    atomic_load(&app.eexist) != 0 || atomic_load(&app.io_errors) != 0 ||
	    atomic_load(&app.off_loop_ready) != 0 || app.bad != 0 || st.keys != 0 ||
	    st.holders != 0 || st.waiters != 0 || km_port_destroy(app.port) != 0 ||
	    km_destroy(app.km) != 0)
		rc = 1;
	printf("image_cache_uv: %s: %ld requests for %d images from %d clients on libuv: "
	       "%ld saved, %ld waited for the key (%ld at once), %ld overlapping writers, "
	       "%ld EEXIST, %ld ready() off the loop thread\n",
	       rc == 0 ? "OK" : "FAILED", app.total, app.images, app.clients,
	       atomic_load(&app.writes), app.queued, app.at_once, atomic_load(&app.overlaps),
	       atomic_load(&app.eexist), atomic_load(&app.off_loop_ready));
	for (int i = 0; i < app.images; i++) {
		snprintf(path, sizeof path, "%s/%s.webp", app.dir, app.hash[i]);
		unlink(path);
		snprintf(path, sizeof path, "%s/%s.partial", app.dir, app.hash[i]);
		unlink(path);
	}
	rmdir(app.dir);
	uv_loop_close(app.loop);
	free(clients);
	return rc;
}
