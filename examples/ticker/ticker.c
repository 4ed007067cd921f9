/*
 * ticker — a plugin-driven dlhost plugin that talks first: a thread of its
 * own sends a message every cfg milliseconds (dlhost_emit), and a request
 * streams a file back in chunks (dlhost_task_send).
 *
 * cfg: the tick period in ms ("" or 0: no ticks)
 *   "file:PATH"  the file's bytes as a stream of 64 KiB chunks; the answer's
 *                body is empty (rc 2 and the error text when it can't be read)
 *   "ticks"      how many ticks were sent, and how many were refused
 *
 * Messages never block the plugin: when JS does not keep up, dlhost_emit
 * says DLHOST_EAGAIN and this plugin drops that tick (counted). A stream's
 * reader that falls behind makes dlhost_task_send say DLHOST_EAGAIN: the
 * plugin waits until dlhost_task_writable; a reader that stops (break, an
 * abort) makes it say DLHOST_ECANCELLED, and the plugin stops reading the
 * file.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dlhost.h"

/* One per runtime (a library may run as several runtimes, which share its
 * globals): made by dlhost_init, freed by the poll thread once it is done. */
struct ticker {
    dlhost_queue *q;
    long period_ms;
    atomic_long sent, refused;
    atomic_int stopping;
    pthread_t tick_thread;
    int ticking;
};

static void *tick(void *arg)
{
    struct ticker *tk = arg;
    char msg[64];
    for (long n = 1; !atomic_load(&tk->stopping); n++) {
        struct timespec ts = { tk->period_ms / 1000, (tk->period_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
        int len = snprintf(msg, sizeof msg, "tick %ld", n);
        int rc = dlhost_emit(tk->q, msg, (size_t)len);
        if (rc == DLHOST_OK) atomic_fetch_add(&tk->sent, 1);
        else if (rc == DLHOST_ECLOSED) break;
        else atomic_fetch_add(&tk->refused, 1); /* JS is behind: drop this tick */
    }
    return NULL;
}

static void stream_file(dlhost_task *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        const char *why = strerror(errno);
        dlhost_task_respond(t, 2, strdup(why), strlen(why));
        return;
    }
    char *buf = malloc(65536);
    size_t n = 0;
    while (buf && (n = fread(buf, 1, 65536, f)) > 0) {
        int rc;
        while ((rc = dlhost_task_send(t, buf, n)) == DLHOST_EAGAIN)
            while (!dlhost_task_writable(t) && !dlhost_task_cancelled(t)) sched_yield();
        if (rc != DLHOST_OK) break; /* DLHOST_ECANCELLED: nobody reads any more */
    }
    free(buf);
    fclose(f);
    dlhost_task_respond(t, 0, NULL, 0);
}

static void *poll_loop(void *arg)
{
    struct ticker *tk = arg;
    dlhost_task *t;
    char path[4096];
    while ((t = dlhost_task_poll(tk->q)) != NULL) {
        size_t len;
        const char *req = dlhost_task_request(t, &len);
        if (len > 5 && len - 5 < sizeof path && memcmp(req, "file:", 5) == 0) {
            memcpy(path, req + 5, len - 5);
            path[len - 5] = 0;
            stream_file(t, path);
        } else if (len == 5 && memcmp(req, "ticks", 5) == 0) {
            char out[64];
            int n = snprintf(out, sizeof out, "%ld %ld", atomic_load(&tk->sent), atomic_load(&tk->refused));
            dlhost_task_respond(t, 0, strdup(out), (size_t)n);
        } else {
            dlhost_task_respond(t, 1, NULL, 0);
        }
    }
    /* The end: stop the ticker before the library goes. */
    atomic_store(&tk->stopping, 1);
    if (tk->ticking) pthread_join(tk->tick_thread, NULL);
    free(tk);
    return NULL;
}

int dlhost_init(const char *cfg, size_t cfg_len, dlhost_queue *q)
{
    if (dlhost_abi_version() < DLHOST_ABI_VERSION) return 2; /* needs dlhost_emit */
    (void)cfg_len;
    struct ticker *tk = calloc(1, sizeof *tk);
    if (!tk) return 12;
    tk->q = q;
    tk->period_ms = atol(cfg);
    /* The ticker first: the poll thread, which frees tk at the end, must
     * find it complete. */
    if (tk->period_ms > 0) tk->ticking = pthread_create(&tk->tick_thread, NULL, tick, tk) == 0;
    pthread_t poller;
    if (pthread_create(&poller, NULL, poll_loop, tk) != 0) {
        atomic_store(&tk->stopping, 1);
        if (tk->ticking) pthread_join(tk->tick_thread, NULL);
        free(tk);
        return 11;
    }
    pthread_detach(poller);
    return 0;
}
